"""The signer socket protocol, version 1 (design.md §5): frame models and framing helpers.

A frame is a 4-byte big-endian length, then that many bytes of UTF-8 JSON, at most :data:`MAX_FRAME` bytes.
Requests are ``{"v":1,"id":str,"op":str,...}``; replies are ``{"v":1,"id":str,"ok":true,"result":{...}}``
or ``{"v":1,"id":str,"ok":false,"error":{"code":str,"message":str}}``.

Both sides use this module: the signer to parse requests and build replies, the bot's client
(``bot/signer_client.py``) to build requests and parse replies. Every model is frozen and closed
(``extra="forbid"``) and strict (no ``"1"`` for ``1``), so an unknown field or a wrong type is refused with
``bad_request`` rather than guessed at.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    TypeAdapter,
    ValidationError,
)

from keyturn.signer.errors import KeyturnError
from keyturn.signer.receipt import no_duplicate_members
from keyturn.signer.words import Fact

__all__ = [
    "MAX_FRAME",
    "OPS",
    "PROTOCOL_VERSION",
    "CancelCall",
    "CheckCiRequest",
    "CheckGitHubRequest",
    "CheckOidcRequest",
    "CheckSlackRequest",
    "CheckpointRequest",
    "CheckpointResult",
    "CiOrigin",
    "ErrorBody",
    "ErrorReply",
    "GitHubOrigin",
    "GitHubStampResult",
    "HealthRequest",
    "HealthResult",
    "KeysRequest",
    "KeysResult",
    "MacCallbackRequest",
    "MacResult",
    "OidcCall",
    "OidcOrigin",
    "OkReply",
    "Origin",
    "OutcomeResult",
    "RecordOutcomeRequest",
    "Request",
    "SignRequest",
    "SignResult",
    "SlackClick",
    "SlackCommandOrigin",
    "WireError",
    "encode_frame",
    "error_reply",
    "ok_reply",
    "parse_reply",
    "parse_request",
    "read_frame",
]

PROTOCOL_VERSION = 1
MAX_FRAME = 1024 * 1024
_HEADER = 4
MAX_APPROVALS = 100  # far above any sane quorum; bounds the work one request can ask for


class WireError(KeyturnError):
    """A frame could not be read or understood. ``request_id`` is the frame's ``id`` when it had one.

    Codes: ``bad_frame`` (not UTF-8 JSON), ``frame_too_large``, ``truncated_frame``, ``bad_request`` (schema),
    ``unsupported_version``, ``unknown_op``, and on the client side ``bad_reply``.
    """

    def __init__(self, code: str, reason: str, request_id: str = "", **facts: Fact) -> None:
        super().__init__(code=code, facts={"reason": reason, **facts})
        self.request_id = request_id


def _b64(value: object) -> bytes:
    if isinstance(value, bytes):  # built in Python; JSON input is always a string
        return value
    if not isinstance(value, str):
        raise ValueError("must be a base64 string")
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError("must be standard base64") from None
    return raw


# Raw bytes travel as standard base64 strings.
B64Bytes = Annotated[
    bytes,
    BeforeValidator(_b64),
    PlainSerializer(lambda b: base64.b64encode(b).decode("ascii"), return_type=str),
]
Text = Annotated[str, Field(max_length=MAX_FRAME)]
Token = Annotated[str, Field(min_length=1, max_length=16 * 1024)]  # an OIDC ID token (compact JWS)
Short = Annotated[str, Field(max_length=2048)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class _Request(_Model):
    v: Literal[1] = 1
    id: Annotated[str, Field(min_length=1, max_length=128)]


class HealthRequest(_Request):
    """Is the signer up, and with which key and policy?"""

    op: Literal["health"] = "health"


class KeysRequest(_Request):
    """The public keyset (JWKS)."""

    op: Literal["keys"] = "keys"


class CheckpointRequest(_Request):
    """The latest signed checkpoint of the audit log's head (public: docs/security.md, "Anchoring")."""

    op: Literal["checkpoint"] = "checkpoint"


class CheckCiRequest(_Request):
    """Check a CI request as it arrives (HMAC v1, ±5 minutes)."""

    op: Literal["check_ci"] = "check_ci"
    method: Short
    path: Short
    body: B64Bytes
    timestamp: Short
    signature: Short


class CheckOidcRequest(_Request):
    """Check an OIDC-authenticated CI request as it arrives (issue 11): the token (against the keys pinned
    in the signer's own files, at the signer's time), the body's agreement with it, and the environment's
    OIDC rules. Without ``body`` only the token is checked (reads of a request's status)."""

    op: Literal["check_oidc"] = "check_oidc"
    token: Token
    body: B64Bytes | None = None


class CheckGitHubRequest(_Request):
    """Check a ``deployment_protection_rule`` webhook as it arrives (docs/github.md): GitHub's signature
    with the webhook secret, the payload, its environment's policy. Answered with the signer's arrival
    stamp, which dates the request (GitHub's signature carries no time)."""

    op: Literal["check_github"] = "check_github"
    body: B64Bytes
    delivery: Short
    signature: Short


class CheckSlackRequest(_Request):
    """Check a Slack request as it arrives (signature v0, ±5 minutes)."""

    op: Literal["check_slack"] = "check_slack"
    body: Text
    timestamp: Short
    signature: Short


class CiOrigin(_Model):
    """The originating CI request, exactly as the bot received it."""

    kind: Literal["ci"] = "ci"
    method: Short
    path: Short
    body: B64Bytes
    timestamp: Short
    signature: Short


class SlackCommandOrigin(_Model):
    """The originating ``/keyturn request ...`` slash command, exactly as the bot received it."""

    kind: Literal["slack_command"] = "slack_command"
    body: Text
    timestamp: Short
    signature: Short


class OidcOrigin(_Model):
    """The originating CI request authenticated by the job's OIDC ID token: the raw token and raw body.

    Closed like every frame model: a frame carrying keys, claims or an issuer of its own is refused
    (``bad_request``); the signer takes issuer keys only from its pinned files.
    """

    kind: Literal["oidc"] = "oidc"
    token: Token
    body: B64Bytes


class GitHubOrigin(_Model):
    """The originating GitHub webhook: raw body, delivery id, ``X-Hub-Signature-256``, the claimed workflow
    and the signer's arrival stamp (``check_github``)."""

    kind: Literal["github"] = "github"
    body: B64Bytes
    delivery: Short
    signature: Short
    workflow: Short
    timestamp: Short
    stamp: Short


class SlackClick(_Model):
    """One approve click exactly as received: raw form body and the ``X-Slack-*`` header values."""

    body: Text
    timestamp: Short
    signature: Short


# Any origin model: for annotations and isinstance checks; ``Origin`` is the same union as pydantic parses it.
AnyOrigin: TypeAlias = CiOrigin | SlackCommandOrigin | OidcOrigin | GitHubOrigin
Origin = Annotated[AnyOrigin, Field(discriminator="kind")]


class SignRequest(_Request):
    """Ask for a receipt, with all the evidence (issue 4, points 1-4).

    There is no group membership here: the signer admits group members only from the ``[groups]`` pinned in
    its own policy (docs/security.md), so a frame that still carries ``groupMembers`` is refused.
    """

    op: Literal["sign"] = "sign"
    requestId: Short
    origin: Origin
    approvals: Annotated[list[SlackClick], Field(max_length=MAX_APPROVALS)]
    emails: dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=320)]]


class OidcCall(_Model):
    """A call authenticated by an OIDC ID token alone (an OIDC pipeline's cancel): the raw token."""

    kind: Literal["oidc"] = "oidc"
    token: Token


CancelCall = Annotated[CiOrigin | OidcCall, Field(discriminator="kind")]


class RecordOutcomeRequest(_Request):
    """Record a final outcome other than approval in the audit log (docs/security.md, "The record").

    ``denied`` carries the deny modal's submission exactly as Slack signed it (``denial``); ``cancelled``
    the pipeline's cancel call as received (``cancel``); ``expired`` nothing but the origin: the signer's
    clock decides. The origin is always required, so the signer knows the request's scope and lifetime
    from signed bytes rather than from the bot.
    """

    op: Literal["record_outcome"] = "record_outcome"
    requestId: Short
    outcome: Literal["denied", "cancelled", "expired"]
    origin: Origin
    denial: SlackClick | None = None
    cancel: CancelCall | None = None


class MacCallbackRequest(_Request):
    """MAC a CI callback body with the derived callback key (design.md §5)."""

    op: Literal["mac_callback"] = "mac_callback"
    path: Short
    timestamp: Short
    body: B64Bytes


Request = Annotated[
    HealthRequest
    | KeysRequest
    | CheckpointRequest
    | CheckCiRequest
    | CheckSlackRequest
    | CheckOidcRequest
    | CheckGitHubRequest
    | SignRequest
    | RecordOutcomeRequest
    | MacCallbackRequest,
    Field(discriminator="op"),
]
OPS = frozenset(
    {
        "health",
        "keys",
        "checkpoint",
        "check_ci",
        "check_slack",
        "check_oidc",
        "check_github",
        "sign",
        "record_outcome",
        "mac_callback",
    }
)
_REQUEST: TypeAdapter[Request] = TypeAdapter(Request)


# --- results and replies ---------------------------------------------------------------------------------


class HealthResult(_Model):
    """``health`` result; ``auditSeq``/``auditHead`` are the audit log's last durable entry and its hash."""

    keyId: str
    policySha256: str
    auditSeq: int
    auditHead: str


class KeysResult(_Model):
    """``keys`` result: the public keyset as a JWKS."""

    jwks: dict[str, Any]


class CheckpointResult(_Model):
    """``checkpoint`` result: the DSSE envelope of the latest signed checkpoint (``signer/checkpoint.py``)."""

    checkpoint: dict[str, Any]


class SignResult(_Model):
    """``sign`` result: the signed receipt."""

    receipt: dict[str, Any]


class OutcomeResult(_Model):
    """``record_outcome`` result: the audit entry's ``seq`` and its record (the one already there, if this
    request's outcome was recorded before: recording is idempotent, one outcome per request)."""

    auditSeq: int
    record: dict[str, Any]


class GitHubStampResult(_Model):
    """``check_github`` result: the arrival time (Unix seconds) and the signer's stamp over it."""

    timestamp: str
    stamp: str
    runId: int


class MacResult(_Model):
    """``mac_callback`` result: ``v1=<hex>``."""

    signature: str


class ErrorBody(_Model):
    """The ``error`` member of a refusal."""

    code: str
    message: str


class OkReply(_Model):
    """A successful reply."""

    v: Literal[1] = 1
    id: str
    ok: Literal[True] = True
    result: dict[str, Any]


class ErrorReply(_Model):
    """A refusal or failure."""

    v: Literal[1] = 1
    id: str
    ok: Literal[False] = False
    error: ErrorBody


_REPLY: TypeAdapter[OkReply | ErrorReply] = TypeAdapter(
    Annotated[OkReply | ErrorReply, Field(discriminator="ok")]
)


def ok_reply(request_id: str, result: BaseModel | Mapping[str, Any]) -> OkReply:
    """The reply carrying ``result``."""
    body = result.model_dump(mode="json") if isinstance(result, BaseModel) else dict(result)
    return OkReply(id=request_id, result=body)


def error_reply(request_id: str, code: str, message: str) -> ErrorReply:
    """The reply refusing a request with a stable ``code``."""
    return ErrorReply(id=request_id, error=ErrorBody(code=code, message=message))


# --- parsing ----------------------------------------------------------------------------------------------


# A \uD800-\uDFFF escape: JSON syntax allows it alone, but a lone surrogate is no Unicode text.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")


def _is_text(obj: Any) -> bool:
    """True if every string in ``obj`` (keys included) encodes as UTF-8, i.e. has no lone surrogate."""
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return False
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True


def _loads(payload: bytes, code: str) -> Any:
    try:
        obj = json.loads(payload.decode("utf-8"), object_pairs_hook=no_duplicate_members)
    except UnicodeDecodeError:
        raise WireError(code, "not_utf8") from None
    except (ValueError, RecursionError) as exc:
        raise WireError(code, "not_json", detail=str(exc)[:200]) from None
    # Refused here, once: an id with a lone surrogate could not even be echoed in the reply (the reply would
    # not encode and the connection would drop), and a body with one cannot be MACed.
    if _SURROGATE_ESCAPE.search(payload) and not _is_text(obj):
        raise WireError(code, "surrogate")
    return obj


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False)[:5]:
        loc = ".".join(str(p) for p in err["loc"][1:] if not str(p).startswith("function-"))
        msg = "unknown field" if err["type"] == "extra_forbidden" else str(err["msg"])
        parts.append(f"{loc or 'frame'}: {msg}")
    return "; ".join(parts)


def parse_request(payload: bytes) -> Request:
    """Parse one request frame's payload; raises :class:`WireError` with the code to answer with."""
    obj = _loads(payload, "bad_frame")
    if not isinstance(obj, dict):
        raise WireError("bad_request", "not_object")
    rid = obj.get("id")
    request_id = rid if isinstance(rid, str) and len(rid) <= 128 else ""
    v = obj.get("v")
    if type(v) is not int:  # bool is an int subclass: `true` is no version
        raise WireError("bad_request", "version_type", request_id)
    if v != PROTOCOL_VERSION:
        shown = str(v) if -(10**6) < v < 10**6 else "out of range"  # no 4000-digit echo
        raise WireError(
            "unsupported_version", "protocol", request_id, version=shown, supported=PROTOCOL_VERSION
        )
    op = obj.get("op")
    if not isinstance(op, str):
        raise WireError("bad_request", "op_type", request_id)
    if op not in OPS:
        raise WireError("unknown_op", "op", request_id, op=repr(op[:40]))
    if op == "sign" and "groupMembers" in obj:
        # A bot from before membership was pinned: say why, rather than only "unknown field".
        raise WireError(
            "bad_request",
            "group_members",
            request_id,
        )
    try:
        return _REQUEST.validate_python(obj)
    except ValidationError as exc:
        raise WireError("bad_request", "schema", request_id, detail=_describe(exc)) from None


def parse_reply(payload: bytes) -> OkReply | ErrorReply:
    """Parse one reply frame's payload (client side); raises ``WireError("bad_reply")``."""
    obj = _loads(payload, "bad_reply")
    try:
        return _REPLY.validate_python(obj)
    except ValidationError as exc:
        raise WireError("bad_reply", "schema", detail=_describe(exc)) from None


# --- framing ----------------------------------------------------------------------------------------------


def encode_frame(message: BaseModel | Mapping[str, Any]) -> bytes:
    """Length-prefixed UTF-8 JSON for ``message``; raises ``frame_too_large`` above :data:`MAX_FRAME`."""
    obj = message.model_dump(mode="json") if isinstance(message, BaseModel) else message
    data = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    if len(data) > MAX_FRAME:
        raise WireError("frame_too_large", "size", size=len(data), limit=MAX_FRAME)
    return len(data).to_bytes(_HEADER, "big") + data


async def read_frame(
    reader: asyncio.StreamReader,
    max_size: int = MAX_FRAME,
    *,
    idle_timeout: float | None = None,
    frame_timeout: float | None = None,
) -> bytes | None:
    """Read one frame's payload; ``None`` on a clean end of stream between frames.

    Raises ``frame_too_large`` as soon as the header announces more than ``max_size`` (the payload is not
    read, so the caller must close the connection) and ``truncated_frame`` if the stream ends mid-frame.
    With ``idle_timeout``, raises ``idle_timeout`` when no first byte arrives in time; with ``frame_timeout``,
    raises ``frame_timeout`` when the rest of the frame does not (after either the stream is unusable).
    """
    try:
        async with asyncio.timeout(idle_timeout):
            first = await reader.readexactly(1)
    except asyncio.IncompleteReadError:
        return None
    except TimeoutError:
        raise WireError("idle_timeout", "idle", seconds=idle_timeout) from None
    try:
        async with asyncio.timeout(frame_timeout):
            try:
                header = first + await reader.readexactly(_HEADER - 1)
            except asyncio.IncompleteReadError:
                raise WireError("truncated_frame", "header") from None
            size = int.from_bytes(header, "big")
            if size > max_size:
                raise WireError("frame_too_large", "size", size=size, limit=max_size)
            try:
                return await reader.readexactly(size)
            except asyncio.IncompleteReadError:
                raise WireError("truncated_frame", "body") from None
    except TimeoutError:
        raise WireError("frame_timeout", "frame", seconds=frame_timeout) from None
