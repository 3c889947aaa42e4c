"""The bot's settings: environment variables with the ``KEYTURN_`` prefix, or an optional ``.env`` file.

Read once in ``keyturn.bot.server.main`` and passed down; nothing reads the environment at import time. Every
variable is documented in docs/configuration.md and listed in ``.env.example``. Secrets are ``SecretStr`` so
they never appear in a repr or a log line; a placeholder Slack token is refused outside dev mode.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_DURATION_RE = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_PLACEHOLDER_MARKERS = ("changeme", "change-me", "placeholder", "your-token", "xxxx", "example")


def parse_duration(value: object) -> timedelta:
    """Parse ``"45s"``, ``"30m"``, ``"2h"``, ``"1d"``, integer seconds or a timedelta (positive)."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool):
        raise ValueError("not a duration")
    elif isinstance(value, int):
        seconds = value
    elif isinstance(value, str):
        m = _DURATION_RE.fullmatch(value)
        if not m:
            raise ValueError('not a duration (use e.g. "45s", "30m", "2h", "1d" or seconds)')
        seconds = int(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    else:
        raise ValueError("not a duration")
    if seconds <= 0:
        raise ValueError("duration must be positive")
    return timedelta(seconds=seconds)


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


class Settings(BaseSettings):
    """Everything ``keyturn bot`` needs to run. See docs/configuration.md."""

    model_config = SettingsConfigDict(
        env_prefix="KEYTURN_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    dev_mode: bool = False
    redis_url: str = "redis://127.0.0.1:6379/0"
    # One pool per process, shared by the API, the change feed (holds one for good) and the timers. When
    # every connection is busy a caller waits up to redis_pool_timeout seconds, then gets a 503.
    redis_max_connections: int = Field(default=64, ge=8, le=10_000)
    redis_pool_timeout: float = Field(default=5.0, gt=0, le=60)
    # A command that meets a closed connection (Redis restarted, a failover) is retried on a fresh one, with
    # backoff, for at most this many seconds; then the caller gets a 503 (bot/redisconn.py).
    redis_retry_budget: float = Field(default=5.0, gt=0, le=60)
    # Redis Sentinel: "host:port,host:port" of the sentinels and the name of the monitored primary. When
    # set, the primary is discovered through them (and followed across a failover); redis_url is unused.
    redis_sentinels: str = ""
    redis_sentinel_master: str = ""
    redis_sentinel_db: int = Field(default=0, ge=0, le=15)
    # Durable writes on a replicated Redis (docs/operations.md): after each write the bot sends WAIT and
    # counts the write as failed unless this many replicas acknowledged it within redis_replica_timeout
    # seconds (re-sent until redis_retry_budget runs out). 0 (a single Redis): no WAIT.
    redis_min_replicas: int = Field(default=0, ge=0, le=16)
    redis_replica_timeout: float = Field(default=1.0, gt=0, le=30)
    signer_socket: Path = Path("/run/keyturn/signer.sock")
    policy: Path = Path("keyturn.toml")
    slack_bot_token: SecretStr = SecretStr("")
    slack_api_url: str = "https://slack.com/api/"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    public_url: str | None = None
    # The internal listener (docs/deploy.md): with internal_port set, /metrics is served only there (and
    # refused on the main port), so the port the reverse proxy forwards to never exposes it; /healthz and
    # /readyz answer on both, for probes of either port. Unset: everything on the main port (dev, tests).
    internal_host: str = "127.0.0.1"
    internal_port: int | None = Field(default=None, ge=0, le=65535)
    retention: Duration = timedelta(days=7)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    max_body_bytes: int = Field(default=64 * 1024, ge=1024, le=1024 * 1024)
    signer_timeout: float = Field(default=10.0, gt=0, le=120)
    # Idle connections kept to the signer. Each click's ack waits on one signature check, so a burst of
    # clicks needs about as many connections as clicks in flight (bench/bench_ack.py: 4 → p99 ×2.4 at 32).
    signer_pool_size: int = Field(default=32, ge=1, le=256)
    # Signer calls in flight per replica, in two lanes: checks of inbound (not yet authenticated) requests,
    # and signatures/MACs/health. Keep replicas x (both) under the signer's KEYTURN_SIGNER_MAX_CONNECTIONS.
    signer_max_checks: int = Field(default=32, ge=1, le=1024)
    signer_max_signs: int = Field(default=16, ge=1, le=1024)
    callback_attempts: int = Field(default=8, ge=1, le=30)
    # One callback attempt (lookup, MAC and POST) is cut off after callback_timeout s.
    callback_timeout: float = Field(default=10.0, gt=0, le=120)
    # The callback outbox (docs/api.md, "Callbacks"): deliveries in flight per replica (one socket each),
    # how long a claimed delivery is a replica's before another may take it (must exceed callback_timeout),
    # the backoff between attempts (doubling from the first delay up to the max), and how often a replica
    # looks for callbacks other replicas enqueued or left behind.
    # Request limits (docs/configuration.md, "Request limits"): pending requests per requester, per repo
    # and in all, and new requests per requester per minute (a token bucket holding request_burst).
    max_pending_per_requester: int = Field(default=20, ge=1, le=100_000)
    max_pending_per_repo: int = Field(default=50, ge=1, le=100_000)
    max_pending: int = Field(default=1000, ge=1, le=1_000_000)
    request_rate: float = Field(default=30.0, gt=0, le=100_000)
    request_burst: int = Field(default=10, ge=1, le=100_000)
    # Per client address (docs/configuration.md): failed authentications (or checks in flight) allowed in a
    # burst, and refilled per second; past them, that address gets 429 before any signer call.
    source_burst: int = Field(default=50, ge=1, le=1_000_000)
    source_rate: float = Field(default=10.0, gt=0, le=1_000_000)
    callback_concurrency: int = Field(default=16, ge=1, le=1024)
    callback_lease: float = Field(default=30.0, gt=0, le=3600)
    callback_retry_first: float = Field(default=1.0, gt=0, le=3600)
    callback_retry_max: float = Field(default=60.0, gt=0, le=86400)
    callback_poll_interval: float = Field(default=1.0, gt=0, le=60)
    # Comma-separated host names, "*.suffix" patterns or IP literals; empty: any public https host.
    callback_hosts: str = ""
    card_retry_max: Duration = timedelta(seconds=60)
    # How long a replica's signing claim lasts. A Deny/Cancel waits for a live claim (so the audit log and
    # the final state agree); a claim whose replica died lapses after this, and the leader's backstop
    # (every backstop_interval) finishes the signature. Must exceed signer_timeout.
    sign_lease: Duration = timedelta(seconds=30)
    # The HTTP edge (docs/configuration.md, "Limits at the edge"): a connection must send its request head
    # within http_header_timeout s and its body within http_body_timeout s; above http_max_connections
    # the oldest connection still waiting for a head is closed to make room.
    http_max_connections: int = Field(default=1024, ge=16, le=100_000)
    http_header_timeout: float = Field(default=10.0, gt=0, le=300)
    http_body_timeout: float = Field(default=30.0, gt=0, le=600)
    http_keep_alive: float = Field(default=5.0, gt=0, le=300)
    http_max_head_bytes: int = Field(default=16 * 1024, ge=1024, le=1024 * 1024)
    shutdown_grace: float = Field(default=10.0, gt=0, le=600)
    # The timers' own Redis pool, so a saturated HTTP side cannot starve the leader lease and deadlines.
    timers_redis_max_connections: int = Field(default=8, ge=2, le=1000)
    backstop_interval: float = Field(default=10.0, gt=0, le=3600)
    # keyturn github-approver (docs/github.md): POST /github/webhook forwards there; unset, no such route.
    github_approver_url: str | None = None

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("slack_api_url")
    @classmethod
    def _api_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return value if value.endswith("/") else value + "/"

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/")

    @field_validator("github_approver_url")
    @classmethod
    def _github_approver_url(cls, value: str | None) -> str | None:
        from keyturn.bot.github import approver_url_problem

        if not value:
            return None
        problem = approver_url_problem(value)
        if problem:
            raise ValueError(problem)
        return value.rstrip("/")

    @field_validator("callback_hosts")
    @classmethod
    def _callback_hosts(cls, value: str) -> str:
        from keyturn.bot.callbacks import parse_host_patterns

        return ",".join(parse_host_patterns(value))

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("redis_sentinels")
    @classmethod
    def _sentinels(cls, value: str) -> str:
        from keyturn.bot.redisconn import parse_sentinels

        return ",".join(f"{h}:{p}" for h, p in parse_sentinels(value))

    @model_validator(mode="after")
    def _sentinel_master(self) -> Settings:
        if self.redis_sentinels and not self.redis_sentinel_master:
            raise ValueError("KEYTURN_REDIS_SENTINEL_MASTER is required with KEYTURN_REDIS_SENTINELS")
        return self

    @model_validator(mode="after")
    def _lease_outlives_a_signer_call(self) -> Settings:
        if self.sign_lease.total_seconds() <= self.signer_timeout:
            raise ValueError("KEYTURN_SIGN_LEASE must be longer than KEYTURN_SIGNER_TIMEOUT")
        return self

    @model_validator(mode="after")
    def _callback_lease_outlives_an_attempt(self) -> Settings:
        # A live replica must settle its attempt before its claim lapses, or another replica repeats it.
        if self.callback_lease <= self.callback_timeout:
            raise ValueError("KEYTURN_CALLBACK_LEASE must be longer than KEYTURN_CALLBACK_TIMEOUT")
        return self

    @model_validator(mode="after")
    def _refuse_placeholder_token(self) -> Settings:
        token = self.slack_bot_token.get_secret_value()
        if self.dev_mode:
            return self
        lowered = token.lower()
        if not token:
            raise ValueError("KEYTURN_SLACK_BOT_TOKEN is required (or set KEYTURN_DEV_MODE=1)")
        if not token.startswith("xoxb-") or any(m in lowered for m in _PLACEHOLDER_MARKERS):
            raise ValueError(
                "KEYTURN_SLACK_BOT_TOKEN looks like a placeholder; set the bot's real xoxb- token"
            )
        return self

    @model_validator(mode="after")
    def _distinct_listeners(self) -> Settings:
        if self.internal_port is not None and self.internal_port == self.port:
            raise ValueError("KEYTURN_INTERNAL_PORT must differ from KEYTURN_PORT")
        return self

    @property
    def base_url(self) -> str:
        """The URL clients use to reach this bot (``PUBLIC_URL``, else built from host and port)."""
        return self.public_url or f"http://{self.host}:{self.port}"


# The signer's secrets and key (signer/config.py). The bot never needs them: it asks the signer to check Slack
# and CI signatures. Finding one in the bot's configuration means the two were set up from one file, which
# puts the secrets on the internet-facing side; refuse rather than start "working" that way.
SIGNER_ONLY_VARIABLES: tuple[str, ...] = tuple(
    name + suffix
    for name in (
        "KEYTURN_SLACK_SIGNING_SECRET",
        "KEYTURN_CI_SECRET",
        "KEYTURN_SIGNER_KEYSET",
        "KEYTURN_GITHUB_WEBHOOK_SECRET",
    )
    for suffix in ("", "_FILE")
)


def signer_only_settings_found(environ: Mapping[str, str], env_file: str | Path | None) -> list[str]:
    """The signer-only variables set (non-empty) in ``environ`` or in ``env_file`` (if it exists), each
    named with where it was found; never their values.

    Names match case-insensitively, as pydantic-settings reads them.
    """
    found: list[str] = []
    wanted = set(SIGNER_ONLY_VARIABLES)
    for key, value in environ.items():
        if key.upper() in wanted and value:
            found.append(f"{key.upper()} (environment)")
    if env_file is not None and Path(env_file).is_file():
        from dotenv import dotenv_values  # pydantic-settings' own .env parser

        for key, file_value in dotenv_values(env_file).items():
            if key.upper() in wanted and file_value:
                found.append(f"{key.upper()} ({env_file})")
    return sorted(found)


def describe_error(exc: Exception) -> str:
    """A one-line, secret-free description of a settings validation error."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        parts = []
        for err in exc.errors(include_input=False, include_url=False):
            loc = ".".join(str(x) for x in err.get("loc", ()))
            name = f"KEYTURN_{loc.upper()}" if loc else "settings"
            parts.append(f"{name}: {err.get('msg', 'invalid')}")
        return "; ".join(parts)
    return str(exc)
