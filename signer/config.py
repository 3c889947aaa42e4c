"""Signer settings, read once from the process environment (prefix ``KEYTURN_``).

| variable | meaning |
|---|---|
| ``KEYTURN_SIGNER_SOCKET`` | path of the Unix socket to listen on |
| ``KEYTURN_SIGNER_SOCKET_GROUP`` | optional group (name or gid): socket becomes 0660 with that group |
| ``KEYTURN_SIGNER_KEYSET`` | private keyset file (mode 0600 or stricter) |
| ``KEYTURN_POLICY`` | the policy file ``keyturn.toml`` |
| ``KEYTURN_SLACK_SIGNING_SECRET`` | Slack's signing secret (or ``KEYTURN_SLACK_SIGNING_SECRET_FILE``) |
| ``KEYTURN_CI_SECRET`` | the CI shared secret (or ``KEYTURN_CI_SECRET_FILE``) |
| ``KEYTURN_GITHUB_WEBHOOK_SECRET`` | optional: the GitHub App's webhook secret (or ``_FILE``) |
| ``KEYTURN_AUDIT_LOG`` | the append-only audit log file |
| ``KEYTURN_SIGNER_REQUEST_TIMEOUT`` | seconds one request may take, and one frame to arrive (default 5) |
| ``KEYTURN_SIGNER_IDLE_TIMEOUT`` | seconds a connection may wait for its next request (default 300) |
| ``KEYTURN_SIGNER_MAX_CONNECTIONS`` | concurrent connections served (default 256); more are refused |
| ``KEYTURN_SIGNER_FAKE_NOW_FILE`` | dev/test only, with ``KEYTURN_DEV_MODE=1``: clock from a file |

No ``.env`` file is read: the signer's secrets come from its own environment (or orchestrator secrets), never
from a file in the working directory that the bot might share.

Container secrets: ``KEYTURN_SLACK_SIGNING_SECRET_FILE`` / ``KEYTURN_CI_SECRET_FILE`` name a file (e.g.
``/run/secrets/ci_secret``) whose content, trailing newlines removed, is the secret. Setting a variable and
its ``_FILE`` twin is refused, as is an unreadable, empty, oversized or non-UTF-8 file; the secret read from
a file passes the same checks (length, no placeholder). Only :func:`load_settings` honours the ``_FILE``
variables.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from keyturn.signer.errors import KeyturnError

__all__ = ["ConfigError", "SignerSettings", "load_settings"]

MIN_SECRET_LENGTH = 16
MAX_SECRET_FILE_BYTES = 64 * 1024  # far above any real secret; stops a mistaken /dev/zero or a log file
_SECRET_FIELDS = ("slack_signing_secret", "ci_secret", "github_webhook_secret")
_PLACEHOLDERS = frozenset({"changeme", "change-me", "secret", "xxx", "todo", "placeholder"})


class ConfigError(KeyturnError):
    """The signer's configuration is missing or invalid; it refuses to start."""

    code = "config"


class SignerSettings(BaseSettings):
    """Everything the signer reads at start."""

    model_config = SettingsConfigDict(env_prefix="KEYTURN_", extra="ignore", frozen=True, env_file=None)

    signer_socket: Path
    signer_socket_group: str | None = None
    signer_keyset: Path
    policy: Path
    slack_signing_secret: SecretStr
    ci_secret: SecretStr
    # The GitHub App's webhook secret (docs/github.md), shared with keyturn github-approver; unset: the signer
    # refuses GitHub origins.
    github_webhook_secret: SecretStr | None = None
    audit_log: Path
    signer_request_timeout: float = Field(default=5.0, gt=0, le=120)
    signer_idle_timeout: float = Field(default=300.0, gt=0, le=86400)
    signer_max_connections: int = Field(default=256, ge=1, le=65536)
    dev_mode: bool = False
    signer_fake_now_file: Path | None = None

    @field_validator("slack_signing_secret", "ci_secret", "github_webhook_secret")
    @classmethod
    def _real_secret(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None:
            return v
        raw = v.get_secret_value()
        if raw != raw.strip():
            raise ValueError("must not start or end with whitespace")
        if len(raw) < MIN_SECRET_LENGTH:
            raise ValueError(f"must be at least {MIN_SECRET_LENGTH} characters")
        if raw.lower() in _PLACEHOLDERS:
            raise ValueError("is a placeholder, not a secret")
        return v

    @field_validator(
        "signer_socket_group", "signer_fake_now_file", "dev_mode", "github_webhook_secret", mode="before"
    )
    @classmethod
    def _empty_is_unset(cls, v: object, info: ValidationInfo) -> object:
        # An empty variable means "not set" (compose files and shells often export VAR=).
        if v == "":
            return False if info.field_name == "dev_mode" else None
        return v

    @property
    def fake_now_file(self) -> Path | None:
        """The fake-clock file, honoured only in dev mode (a production signer always uses the real clock)."""
        return self.signer_fake_now_file if self.dev_mode else None


def _env_get(environ: Mapping[str, str], name: str) -> str:
    # pydantic-settings matches variable names case-insensitively; so must the conflict check.
    for key, value in environ.items():
        if key.upper() == name:
            return value
    return ""


def _read_secret_file(var: str, path: str) -> str:
    """The secret in ``path``; raises :class:`ConfigError` naming ``var`` and the file, never its content."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SECRET_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(
            reason="secret_unreadable", var=var, path=path, error=exc.strerror or type(exc).__name__
        ) from None
    if len(data) > MAX_SECRET_FILE_BYTES:
        raise ConfigError(reason="secret_too_large", var=var, path=path, limit=MAX_SECRET_FILE_BYTES)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(reason="secret_not_utf8", var=var, path=path) from None
    secret = text.rstrip("\r\n")  # editors and `echo` add a final newline; other whitespace is refused
    if not secret:
        raise ConfigError(reason="secret_empty", var=var, path=path)
    return secret


def _secrets_from_files(environ: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """Secrets given as ``KEYTURN_*_FILE``: (values, file variable names, problems), each keyed by field.

    An empty variable counts as unset, as elsewhere in the signer's settings.
    """
    values: dict[str, str] = {}
    sources: dict[str, str] = {}
    problems: dict[str, str] = {}
    for field in _SECRET_FIELDS:
        var = f"KEYTURN_{field.upper()}"
        file_var = f"{var}_FILE"
        path = _env_get(environ, file_var)
        if not path:
            continue
        if _env_get(environ, var):
            problems[field] = ConfigError(reason="both_set", var=var, file_var=file_var).message
            continue
        try:
            values[field] = _read_secret_file(file_var, path)
        except ConfigError as exc:
            problems[field] = exc.message
            continue
        sources[field] = file_var
    return values, sources, problems


def load_settings(environ: Mapping[str, str] | None = None) -> SignerSettings:
    """Read the settings from the environment; raises :class:`ConfigError` naming each bad variable.

    ``environ`` is only for the ``_FILE`` variables' lookup (default ``os.environ``); the other variables are
    read by pydantic-settings from the process environment. Messages name variables and files, never values,
    so a mistyped secret is not echoed to the logs.
    """
    env = os.environ if environ is None else environ
    from_files, sources, file_problems = _secrets_from_files(env)
    problems = list(file_problems.values())
    try:
        # Values read from files are passed as init arguments, which take precedence over the environment.
        settings = SignerSettings(**from_files)  # type: ignore[arg-type]
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            field = "_".join(str(p) for p in err["loc"])
            if field in file_problems:
                continue  # already reported, more precisely
            name = sources.get(field, "KEYTURN_" + field.upper())
            if err["type"] != "missing":
                msg = str(err["msg"]).removeprefix("Value error, ")
            elif field in _SECRET_FIELDS:
                msg = f"is not set (nor {name}_FILE)"
            else:
                msg = "is not set"
            problems.append(f"{name} {msg}")
        raise ConfigError(reason="settings", problems="; ".join(problems)) from None
    if problems:
        raise ConfigError(reason="settings", problems="; ".join(problems))
    return settings
