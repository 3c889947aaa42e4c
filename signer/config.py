"""Signer settings, read once from the process environment (prefix ``KEYTURN_``).

| variable | meaning |
|---|---|
| ``KEYTURN_SIGNER_SOCKET`` | path of the Unix socket to listen on |
| ``KEYTURN_SIGNER_SOCKET_GROUP`` | optional group (name or gid): socket becomes 0660 with that group |
| ``KEYTURN_SIGNER_KEYSET`` | private keyset file (mode 0600 or stricter) |
| ``KEYTURN_POLICY`` | the policy file ``keyturn.toml`` |
| ``KEYTURN_SLACK_SIGNING_SECRET`` | Slack's signing secret |
| ``KEYTURN_CI_SECRET`` | the CI shared secret |
| ``KEYTURN_AUDIT_LOG`` | the append-only audit log file |
| ``KEYTURN_SIGNER_REQUEST_TIMEOUT`` | seconds one request may take (default 5) |
| ``KEYTURN_SIGNER_FAKE_NOW_FILE`` | dev/test only, with ``KEYTURN_DEV_MODE=1``: clock from a file |

No ``.env`` file is read: the signer's secrets come from its own environment (or orchestrator secrets), never
from a file in the working directory that the bot might share.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from signer.errors import KeyturnError

__all__ = ["ConfigError", "SignerSettings", "load_settings"]

MIN_SECRET_LENGTH = 16
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
    audit_log: Path
    signer_request_timeout: float = Field(default=5.0, gt=0, le=120)
    dev_mode: bool = False
    signer_fake_now_file: Path | None = None

    @field_validator("slack_signing_secret", "ci_secret")
    @classmethod
    def _real_secret(cls, v: SecretStr) -> SecretStr:
        raw = v.get_secret_value()
        if raw != raw.strip():
            raise ValueError("must not start or end with whitespace")
        if len(raw) < MIN_SECRET_LENGTH:
            raise ValueError(f"must be at least {MIN_SECRET_LENGTH} characters")
        if raw.lower() in _PLACEHOLDERS:
            raise ValueError("is a placeholder, not a secret")
        return v

    @field_validator("signer_socket_group", "signer_fake_now_file", "dev_mode", mode="before")
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


def load_settings() -> SignerSettings:
    """Read the settings from the environment; raises :class:`ConfigError` naming each bad variable.

    Messages name variables, never values, so a mistyped secret is not echoed to the logs.
    """
    try:
        return SignerSettings()
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            name = "KEYTURN_" + "_".join(str(p) for p in err["loc"]).upper()
            msg = "is not set" if err["type"] == "missing" else str(err["msg"]).removeprefix("Value error, ")
            problems.append(f"{name} {msg}")
        raise ConfigError("; ".join(problems)) from None
