"""The bot's async client of the signer socket (design.md §5).

The bot holds no private key and no shared secret: it asks the signer to check every inbound CI and Slack
request (``check_ci``, ``check_slack``), to sign receipts (``sign``) and to MAC CI callbacks
(``mac_callback``). Errors are typed: :class:`SignerUnavailable` when the signer cannot be reached or does not
answer in time (the bot should fail closed: 503, or retry later), :class:`SignerRefused` with the signer's
stable ``code`` when it answered no.

Connections are pooled (a few idle ones are kept) and each call uses one connection exclusively, so the
client is safe for concurrent use from one event loop. Imports only the key-free ``keyturn.signer.wire`` and
``keyturn.signer.errors`` (architecture rule, design.md §2).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from keyturn.signer import wire
from keyturn.signer.errors import KeyturnError

__all__ = ["SignerClient", "SignerHealth", "SignerRefused", "SignerUnavailable", "signer_unavailable"]


class SignerUnavailable(KeyturnError):
    """The signer could not be reached, hung up, answered garbage, or did not answer within the timeout."""

    code = "signer_unavailable"


# What the signer answers when it cannot say yes or no now: it ran out of time, or it is full (the client
# turns the latter into SignerUnavailable as it hangs up). Either is worth a retry; neither is a refusal.
UNAVAILABLE_CODES = frozenset({"signer_unavailable", "timeout", "too_many_connections"})


def signer_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means the signer could not answer (retry later; HTTP 503), not that it refused.

    The one test the bot makes (the CI API, the Slack listener, signing and recording outcomes): the client
    raises :class:`SignerUnavailable` for an unreachable, hung-up, garbled or slow socket; an ``OSError`` or
    ``TimeoutError`` from below it, or the signer's own ``timeout`` answer, means the same.
    """
    if isinstance(exc, OSError | TimeoutError):
        return True
    return isinstance(exc, KeyturnError) and exc.code in UNAVAILABLE_CODES


class SignerRefused(KeyturnError):
    """The signer answered with an error; ``code`` is its stable error code (e.g. ``bad_ci_signature``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message, code=code)


@dataclass(frozen=True)
class SignerHealth:
    """What ``health`` reports: the active key id, the SHA-256 of the signer's policy file, and the audit
    log's last durable entry (``audit_seq``) and its hash (``audit_head``)."""

    key_id: str
    policy_sha256: str
    audit_seq: int
    audit_head: str


class _Conn:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        self.writer.close()


_M = TypeVar("_M", bound=BaseModel)
_ORIGIN: TypeAdapter[wire.AnyOrigin] = TypeAdapter(wire.Origin)

# Error codes after which the signer closes the connection (design.md §5).
_HANG_UP_CODES = frozenset({"frame_too_large", "frame_timeout", "too_many_connections"})

OriginLike = wire.AnyOrigin | Mapping[str, Any]
ClickLike = wire.SlackClick | Mapping[str, Any]


class SignerClient:
    """Async client for the signer's Unix socket. ``timeout`` bounds each call, connecting included."""

    def __init__(
        self,
        socket_path: str | os.PathLike[str],
        timeout: float = 5.0,
        *,
        pool_size: int = 4,
        max_checks: int = 32,
        max_signs: int = 16,
    ) -> None:
        self.socket_path = Path(socket_path)
        self.timeout = timeout
        self._pool_size = pool_size
        self._idle: list[_Conn] = []
        # Two bounded lanes (issue 14, finding 2): checks of inbound requests, which anyone on the network
        # can cause, and everything else (signatures, callback MACs, health, keys), which only follows
        # authenticated work. A flood of bogus requests fills the first lane and never the second.
        self._check_slots = asyncio.Semaphore(max_checks)
        self._sign_slots = asyncio.Semaphore(max_signs)
        self._ids = itertools.count(1)
        self._prefix = f"c{os.getpid()}-"

    # --- operations ---------------------------------------------------------------------------------------

    async def health(self) -> SignerHealth:
        """The signer's active key id and policy hash."""
        result = await self._call(lambda rid: wire.HealthRequest(id=rid))
        parsed = self._result(wire.HealthResult, result)
        return SignerHealth(parsed.keyId, parsed.policySha256, parsed.auditSeq, parsed.auditHead)

    async def keys(self) -> dict[str, Any]:
        """The public keyset (JWKS) for ``GET /v1/keys``."""
        result = await self._call(lambda rid: wire.KeysRequest(id=rid))
        return self._result(wire.KeysResult, result).jwks

    async def checkpoint(self) -> dict[str, Any]:
        """The latest signed checkpoint of the audit log's head (a DSSE envelope) for
        ``GET /v1/audit/checkpoint``. The bot passes it on as is: only its signature gives it any worth."""
        result = await self._call(lambda rid: wire.CheckpointRequest(id=rid))
        return self._result(wire.CheckpointResult, result).checkpoint

    async def check_ci(self, method: str, path: str, body: bytes, timestamp: str, signature: str) -> None:
        """Check an inbound CI request (raw body, ``X-Keyturn-*`` header values; path without query).

        Returns if authentic and fresh; raises :class:`SignerRefused` (``bad_ci_signature``,
        ``stale_request``) otherwise.
        """
        await self._call(
            lambda rid: wire.CheckCiRequest(
                id=rid, method=method, path=path, body=body, timestamp=timestamp, signature=signature
            ),
            check=True,
        )

    async def check_oidc(self, token: str, body: bytes | None) -> None:
        """Check an inbound OIDC-authenticated CI request (the bearer token and the raw body; no body for a
        read). Raises :class:`SignerRefused` (``oidc_expired``, ``oidc_body_mismatch``, ...) if refused."""
        await self._call(lambda rid: wire.CheckOidcRequest(id=rid, token=token, body=body))

    async def check_slack(self, body: str, timestamp: str, signature: str) -> None:
        """Check an inbound Slack request (raw body, ``X-Slack-*`` header values).

        Raises :class:`SignerRefused` (``bad_slack_signature``, ``stale_request``) if it is not genuine.
        """
        await self._call(
            lambda rid: wire.CheckSlackRequest(id=rid, body=body, timestamp=timestamp, signature=signature),
            check=True,
        )

    async def sign(
        self,
        request_id: str,
        origin: OriginLike,
        approvals: Sequence[ClickLike],
        emails: Mapping[str, str],
    ) -> dict[str, Any]:
        """Ask for a receipt. ``origin``/``approvals`` are the raw evidence as received (wire models or dicts
        of the same shape; CI bodies as ``bytes``). Returns the signed receipt, or raises
        :class:`SignerRefused` naming the failed check (``card_mismatch``, ``self_approval``, ...)."""
        try:
            origin_model = (
                origin if isinstance(origin, wire.AnyOrigin) else _ORIGIN.validate_python(dict(origin))
            )
            clicks = [
                c if isinstance(c, wire.SlackClick) else wire.SlackClick.model_validate(dict(c))
                for c in approvals
            ]
        except ValidationError as exc:
            raise SignerRefused(
                "bad_request", f"malformed evidence: {exc.error_count()} problem(s)"
            ) from None
        result = await self._call(
            lambda rid: wire.SignRequest(
                id=rid,
                requestId=request_id,
                origin=origin_model,
                approvals=clicks,
                emails=dict(emails),
            )
        )
        return self._result(wire.SignResult, result).receipt

    async def record_outcome(
        self,
        request_id: str,
        outcome: str,
        origin: wire.AnyOrigin,
        *,
        denial: wire.SlackClick | None = None,
        cancel: wire.CiOrigin | wire.OidcCall | None = None,
    ) -> int:
        """Record a denial, cancel or expiry in the signer's audit log; return the entry's ``seq``.

        Idempotent at the signer (one outcome per request). Raises :class:`SignerRefused` when the evidence
        is refused (``bad_denial_signature``, ``not_expired``, ``already_approved``, ...) and
        :class:`SignerUnavailable` when the signer cannot be reached.
        """
        # An unknown outcome fails the model's validation inside _call: refused as bad_request, never sent.
        result = await self._call(
            lambda rid: wire.RecordOutcomeRequest.model_validate(
                {
                    "id": rid,
                    "requestId": request_id,
                    "outcome": outcome,
                    "origin": origin,
                    "denial": denial,
                    "cancel": cancel,
                }
            )
        )
        return self._result(wire.OutcomeResult, result).auditSeq

    async def check_github(self, body: bytes, delivery: str, signature: str) -> wire.GitHubStampResult:
        """Have the signer check a GitHub webhook as it arrives; its arrival stamp (the request's start)."""
        result = await self._call(
            lambda rid: wire.CheckGitHubRequest(id=rid, body=body, delivery=delivery, signature=signature),
            check=True,
        )
        return self._result(wire.GitHubStampResult, result)

    async def mac_callback(self, path: str, timestamp: str, body: bytes) -> str:
        """``v1=<hex>`` for a CI callback POST to ``path`` (sent as ``X-Keyturn-Signature``)."""
        result = await self._call(
            lambda rid: wire.MacCallbackRequest(id=rid, path=path, timestamp=timestamp, body=body)
        )
        return self._result(wire.MacResult, result).signature

    async def close(self) -> None:
        """Close pooled connections."""
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
        for conn in idle:
            with contextlib.suppress(OSError, ConnectionError):
                await conn.writer.wait_closed()

    # --- plumbing -----------------------------------------------------------------------------------------

    def _result(self, model: type[_M], result: dict[str, Any]) -> _M:
        try:
            return model.model_validate(result)
        except ValidationError:
            raise SignerUnavailable(f"the signer sent a malformed {model.__name__}") from None

    async def _call(self, build: Callable[[str], BaseModel], *, check: bool = False) -> dict[str, Any]:
        rid = f"{self._prefix}{next(self._ids)}"
        try:
            frame = wire.encode_frame(build(rid))
        except ValidationError as exc:
            raise SignerRefused("bad_request", f"invalid request: {exc.error_count()} problem(s)") from None
        except wire.WireError as exc:
            raise SignerRefused(exc.code, exc.message) from None
        try:
            async with asyncio.timeout(self.timeout), self._check_slots if check else self._sign_slots:
                reply = await self._exchange(frame)
        except TimeoutError:
            raise SignerUnavailable(f"no answer from the signer within {self.timeout} s") from None
        if reply.id != rid:
            raise SignerUnavailable("the signer answered another request")
        if isinstance(reply, wire.ErrorReply):
            raise SignerRefused(reply.error.code, reply.error.message)
        return reply.result

    async def _exchange(self, frame: bytes) -> wire.OkReply | wire.ErrorReply:
        # A pooled connection may have been closed by a restarted signer, or by the signer's idle timeout
        # (KEYTURN_SIGNER_IDLE_TIMEOUT) racing this call: retry on another (at last a fresh) connection.
        while True:
            conn, reused = await self._acquire()
            try:
                conn.writer.write(frame)
                await conn.writer.drain()
                payload = await wire.read_frame(conn.reader)
            except (OSError, ConnectionError, wire.WireError) as exc:
                conn.close()
                if reused:
                    continue
                raise SignerUnavailable(f"signer connection failed: {type(exc).__name__}") from None
            except BaseException:
                conn.close()  # cancelled mid-exchange: the stream position is unknown
                raise
            if payload is None:
                conn.close()
                if reused:
                    continue
                raise SignerUnavailable("the signer closed the connection")
            try:
                reply = wire.parse_reply(payload)
            except wire.WireError:
                conn.close()
                raise SignerUnavailable("the signer sent a malformed reply") from None
            if isinstance(reply, wire.ErrorReply) and reply.error.code in _HANG_UP_CODES:
                conn.close()  # the signer hangs up after these errors
                if reply.error.code == "too_many_connections":
                    raise SignerUnavailable("the signer is serving too many connections")
            else:
                self._release(conn)
            return reply

    async def _acquire(self) -> tuple[_Conn, bool]:
        while self._idle:
            conn = self._idle.pop()
            if not conn.writer.is_closing() and not conn.reader.at_eof():
                return conn, True
            conn.close()
        try:
            reader, writer = await asyncio.open_unix_connection(
                str(self.socket_path), limit=wire.MAX_FRAME + 8
            )
        except OSError as exc:
            raise SignerUnavailable(
                f"cannot connect to the signer at {self.socket_path}: {exc.strerror}"
            ) from None
        return _Conn(reader, writer), False

    def _release(self, conn: _Conn) -> None:
        if len(self._idle) < self._pool_size and not conn.writer.is_closing():
            self._idle.append(conn)
        else:
            conn.close()
