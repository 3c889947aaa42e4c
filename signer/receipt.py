"""Receipt formats 1.0 and 1.1 (1.0 plus ``requesterProof``): model, strict parsing, signing bytes (RFC 8785
JCS + DSSE PAE), DSSE conversion.

Implements docs/design.md §3; the format is specified for other implementers in docs/receipt.md.
Standard library and ``rfc8785`` only: this module is on ``keyturn verify``'s import path, which CI runs on
every deploy (bench/bench_verify.py), so it imports no pydantic, Slack or Redis, and importing it does little
work: records are small ``__slots__`` classes (``Record``), because a ``NamedTuple`` or frozen dataclass is
built at import time (``dataclasses`` alone costs about a quarter of the verify floor), and identifiers are
checked against character sets rather than regular expressions, which every process would compile anew.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import rfc8785

from keyturn.signer.errors import VerificationError

if TYPE_CHECKING:  # annotations only (postponed by the __future__ import): nothing to load at run time
    from collections.abc import Callable
    from typing import Any, ClassVar

# The datetime types, also for the verify path's other modules, straight from CPython's C implementation: the
# ``datetime`` module first defines a pure-Python twin of every class and then replaces them with these very
# objects, which costs about 1 ms per process (bench/bench_verify.py).
if TYPE_CHECKING:
    from datetime import UTC as UTC
    from datetime import datetime as datetime
    from datetime import timedelta as timedelta
else:
    try:
        from _datetime import datetime as datetime
        from _datetime import timedelta as timedelta
        from _datetime import timezone

        UTC = timezone.utc
    except ImportError:  # an interpreter without the C implementation
        from datetime import UTC as UTC
        from datetime import datetime as datetime
        from datetime import timedelta as timedelta

RECEIPT_VERSION = "1.0"
# 1.1 adds one optional member, ``requesterProof``: how the requester was proven (issue 11). The signer
# writes 1.1 only when there is a proof, so receipts of CI-secret and Slack requests stay 1.0 and keep
# verifying with verifiers that know only 1.0.
RECEIPT_VERSION_PROVEN = "1.1"
RECEIPT_VERSIONS = frozenset({RECEIPT_VERSION, RECEIPT_VERSION_PROVEN})
PROOF_FIELDS = ("issuer", "subject", "run")
PAYLOAD_TYPE = "application/vnd.keyturn.receipt+json"
ALG_ED25519 = "Ed25519"
STATUS_APPROVED = "APPROVED"
MAX_RECEIPT_BYTES = 64 * 1024
MAX_APPROVALS = 100

TOP_LEVEL_MEMBERS = frozenset(
    {
        "version",
        "status",
        "requestId",
        "issuedAt",
        "expiresAt",
        "scope",
        "approver",
        "approvals",
        "requester",
        "signature",
    }
)
SCOPE_FIELDS = ("repo", "sha", "environment", "workflow")

# Explicit ASCII character sets (str.isdigit() and friends also accept non-ASCII digits and letters).
_DIGITS = frozenset("0123456789")
_LOWER_HEX = frozenset("0123456789abcdef")
_UPPER = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_UPPER_OR_UNDERSCORE = _UPPER | {"_"}
_BASE64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_CROCKFORD_SET = frozenset(_CROCKFORD)
# 'D' is any ASCII digit; every other character stands for itself.
_TIME_SHAPE = "DDDD-DD-DDTDD:DD:DDZ"
_MAX_TEXT = 256
_MAX_STATUS = 32
_MAX_KEY_ID = 128


def _malformed(reason: str, **facts: str | int) -> VerificationError:
    """A ``malformed`` refusal; ``reason`` (and the facts) pick its sentence in the words module."""
    return VerificationError("malformed", reason=reason, **facts)


def _show(value: object) -> str:
    """A short, safe rendering of an untrusted value for error messages."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_time_text(s: str) -> bool:
    return len(s) == len(_TIME_SHAPE) and all(
        c in _DIGITS if shape == "D" else c == shape for c, shape in zip(s, _TIME_SHAPE, strict=True)
    )


def _is_request_id(s: str) -> bool:
    """``req_`` + a ULID: 26 Crockford base32 characters, the first at most 7 (a ULID is 128 bits)."""
    return len(s) == 30 and s.startswith("req_") and s[4] in "01234567" and _CROCKFORD_SET.issuperset(s[5:])


def _is_sha(s: str) -> bool:
    """A full git object id: 40 (SHA-1) or 64 (SHA-256) lower-case hex digits."""
    return len(s) in (40, 64) and _LOWER_HEX.issuperset(s)


def _is_status(s: str) -> bool:
    """An upper-case word: a letter, then letters or underscores, at most 32 characters."""
    return 1 <= len(s) <= _MAX_STATUS and s[0] in _UPPER and _UPPER_OR_UNDERSCORE.issuperset(s)


def _is_key_id(s: str) -> bool:
    return 1 <= len(s) <= _MAX_KEY_ID and _BASE64URL.issuperset(s)


class Record:
    """Base of Keyturn's immutable, typed records (here, in signer.keyset and in signer.verify).

    Each subclass names its fields in order in ``_fields`` (also its ``__slots__``), declares their types,
    and has an explicit ``__init__`` (so mypy checks construction by position and keyword) that hands the
    values to ``_set``. Records compare equal when of the same type with equal fields, hash like the tuple of
    their fields, refuse assignment, and copy and pickle.
    """

    _fields: ClassVar[tuple[str, ...]] = ()
    __slots__ = ()

    def _set(self, *values: object) -> None:
        for name, value in zip(self._fields, values, strict=True):
            object.__setattr__(self, name, value)

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self._fields)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Record)
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __reduce__(self) -> tuple[type[Record], tuple[object, ...]]:
        # copy and pickle rebuild through __init__, since assignment is refused.
        return type(self), self._values()

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields)
        return f"{type(self).__name__}({fields})"


class Scope(Record):
    """Exactly what a receipt authorizes: this repo, this commit, this environment, this workflow."""

    _fields = ("repo", "sha", "environment", "workflow")
    __slots__ = _fields
    repo: str
    sha: str
    environment: str
    workflow: str

    def __init__(self, repo: str, sha: str, environment: str, workflow: str) -> None:
        self._set(repo, sha, environment, workflow)

    def to_json(self) -> dict[str, str]:
        """The receipt's ``scope`` member."""
        return {
            "repo": self.repo,
            "sha": self.sha,
            "environment": self.environment,
            "workflow": self.workflow,
        }


class RequesterProof(Record):
    """``requesterProof`` (format 1.1): the OIDC issuer, the token's subject and the run that asked."""

    _fields = PROOF_FIELDS
    __slots__ = _fields
    issuer: str
    subject: str
    run: str

    def __init__(self, issuer: str, subject: str, run: str) -> None:
        self._set(issuer, subject, run)

    def to_json(self) -> dict[str, str]:
        """The receipt's ``requesterProof`` member."""
        return {"issuer": self.issuer, "subject": self.subject, "run": self.run}


class ApproverRef(Record):
    """The approver whose click completed the quorum."""

    _fields = ("id", "email")
    __slots__ = _fields
    id: str
    email: str

    def __init__(self, id: str, email: str) -> None:
        self._set(id, email)

    def to_json(self) -> dict[str, str]:
        """The receipt's ``approver`` member."""
        return {"id": self.id, "email": self.email}


class ApprovalEntry(Record):
    """One approval that counted towards the quorum."""

    _fields = ("id", "email", "at")
    __slots__ = _fields
    id: str
    email: str
    at: datetime

    def __init__(self, id: str, email: str, at: datetime) -> None:
        self._set(id, email, at)

    def to_json(self) -> dict[str, str]:
        """One element of the receipt's ``approvals`` member."""
        return {"id": self.id, "email": self.email, "at": format_time(self.at)}


class Receipt(Record):
    """A structurally valid receipt (not yet cryptographically verified)."""

    _fields = (
        "version",
        "status",
        "request_id",
        "issued_at",
        "expires_at",
        "scope",
        "approver",
        "approvals",
        "requester",
        "alg",
        "key_id",
        "signature_value",
        "requester_proof",
    )
    __slots__ = _fields
    version: str
    status: str
    request_id: str
    issued_at: datetime
    expires_at: datetime
    scope: Scope
    approver: ApproverRef
    approvals: tuple[ApprovalEntry, ...]
    requester: str
    alg: str
    key_id: str
    signature_value: str | None
    requester_proof: RequesterProof | None

    def __init__(
        self,
        version: str,
        status: str,
        request_id: str,
        issued_at: datetime,
        expires_at: datetime,
        scope: Scope,
        approver: ApproverRef,
        approvals: tuple[ApprovalEntry, ...],
        requester: str,
        alg: str,
        key_id: str,
        signature_value: str | None,
        requester_proof: RequesterProof | None = None,
    ) -> None:
        self._set(
            version,
            status,
            request_id,
            issued_at,
            expires_at,
            scope,
            approver,
            approvals,
            requester,
            alg,
            key_id,
            signature_value,
            requester_proof,
        )


# --- time and ids -----------------------------------------------------------------------------------------


def format_time(dt: datetime) -> str:
    """RFC 3339 UTC with ``Z`` and whole seconds; sub-second parts are dropped (floored).

    Raises ``ValueError`` for a naive datetime: a time without a zone is a programming error.
    """
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError("format_time needs a timezone-aware datetime")
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(s: str) -> datetime:
    """Parse exactly ``YYYY-MM-DDTHH:MM:SSZ`` into an aware UTC datetime; anything else is ``malformed``."""
    if not isinstance(s, str) or not _is_time_text(s):
        raise _malformed("time_shape", value=_show(s))
    try:
        y, mo, d, h, mi, sec = (
            int(s[0:4]),
            int(s[5:7]),
            int(s[8:10]),
            int(s[11:13]),
            int(s[14:16]),
            int(s[17:19]),
        )
        return datetime(y, mo, d, h, mi, sec, tzinfo=UTC)
    except ValueError:
        raise _malformed("time_range", value=_show(s)) from None


def new_request_id(now: datetime | None = None) -> str:
    """A fresh ``req_`` + ULID (48-bit millisecond time, 80 random bits, Crockford base32)."""
    ms = int(now.timestamp() * 1000) if now is not None else time.time_ns() // 1_000_000
    value = ((ms & ((1 << 48) - 1)) << 80) | int.from_bytes(os.urandom(10), "big")
    chars = [_CROCKFORD[(value >> (5 * i)) & 31] for i in range(25, -1, -1)]
    return "req_" + "".join(chars)


# --- base64 -----------------------------------------------------------------------------------------------


def b64encode(raw: bytes) -> str:
    """Standard base64 with padding (receipt signatures, DSSE)."""
    return base64.b64encode(raw).decode("ascii")


def b64decode(text: str) -> bytes:
    """Decode standard padded base64, refusing any non-canonical spelling (so one value has one encoding)."""
    if not isinstance(text, str) or not text.isascii():
        raise ValueError("not base64")
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error:
        raise ValueError("not base64") from None
    if b64encode(raw) != text:
        raise ValueError("non-canonical base64")
    return raw


def b64url_encode(raw: bytes) -> str:
    """base64url without padding (JWK members, thumbprints)."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Decode unpadded base64url, refusing any non-canonical spelling."""
    if not isinstance(text, str) or not text.isascii() or "=" in text:
        raise ValueError("not base64url")
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except binascii.Error:
        raise ValueError("not base64url") from None
    if b64url_encode(raw) != text:
        raise ValueError("non-canonical base64url")
    return raw


# --- strict JSON ------------------------------------------------------------------------------------------


class _Refused(ValueError):
    """A strict-JSON refusal from inside ``json.loads`` (a ``ValueError``, so JSON callers catch it as such);
    ``str()`` is the ``malformed`` sentence for ``reason`` and ``facts``."""

    def __init__(self, reason: str, **facts: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.facts = facts

    def __str__(self) -> str:
        return str(_malformed(self.reason, **self.facts))


def no_duplicate_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` for ``json.loads`` refusing a repeated member name (a ``ValueError``): two
    parsers picking different duplicates is a classic bypass. The one copy every strict parser here uses."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Refused("duplicate_member", name=_show(key))
        out[key] = value
    return out


def _no_float(text: str) -> Any:
    raise _Refused("float", value=_show(text))


def _no_constant(text: str) -> Any:
    raise _Refused("constant", value=text)


def strict_loads(data: bytes, max_size: int = MAX_RECEIPT_BYTES) -> dict[str, Any]:
    """Parse a JSON object from bytes: UTF-8 only, at most ``max_size`` bytes, no duplicate member names,
    no floats or NaN/Infinity. Raises ``VerificationError("malformed")``."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise _malformed("not_bytes")
    if len(data) > max_size:
        raise _malformed("too_large", limit=max_size)
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise _malformed("not_utf8") from None
    try:
        obj = json.loads(
            text, object_pairs_hook=no_duplicate_members, parse_float=_no_float, parse_constant=_no_constant
        )
    except _Refused as e:
        raise _malformed(e.reason, **e.facts) from None
    except json.JSONDecodeError as e:
        raise _malformed("not_json", detail=e.msg, line=e.lineno, column=e.colno) from None
    except (ValueError, RecursionError) as e:
        raise _malformed("not_json_type", detail=type(e).__name__) from None
    if not isinstance(obj, dict):
        raise _malformed("not_object", where="top level")
    return obj


def strict_object(
    data: bytes | Mapping[str, Any], max_size: int, refuse: Callable[[str], Exception]
) -> Mapping[str, Any]:
    """``data`` parsed by :func:`strict_loads` when it is bytes, a failure raised as ``refuse(reason)`` so the
    caller names what it expected; as given when the caller parsed it already."""
    if not isinstance(data, bytes | bytearray):
        return data
    try:
        return strict_loads(bytes(data), max_size=max_size)
    except VerificationError as e:
        raise refuse(str(e)) from None


def canonical_json(obj: Any) -> bytes:
    """RFC 8785 (JCS) bytes of ``obj``; anything JCS cannot represent exactly is ``malformed``."""
    try:
        return rfc8785.dumps(obj)
    except (ValueError, TypeError, UnicodeError, RecursionError) as e:
        raise _malformed("not_canonicalizable", detail=type(e).__name__) from None


# --- structure --------------------------------------------------------------------------------------------


def _members(
    obj: object, where: str, required: frozenset[str], optional: frozenset[str] = frozenset()
) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise _malformed("not_object", where=where)
    missing = sorted(required - obj.keys())
    if missing:
        raise _malformed("missing_member", where=where, name=repr(missing[0]))
    unknown = sorted(obj.keys() - required - optional)
    if unknown:
        raise _malformed("unknown_member", where=where, name=_show(unknown[0]))
    return obj


def _text(
    obj: Mapping[str, Any], key: str, where: str, *, allow_empty: bool = False, limit: int = _MAX_TEXT
) -> str:
    value = obj[key]
    if not isinstance(value, str):
        raise _malformed("not_string", member=f"{where}.{key}")
    if (not value and not allow_empty) or len(value) > limit:
        raise _malformed("text_length", member=f"{where}.{key}", limit=limit)
    # isprintable() refuses control, format (e.g. bidi overrides), separator and surrogate characters.
    if not value.isprintable():
        raise _malformed("not_printable", member=f"{where}.{key}")
    return value


def _scope(obj: object) -> Scope:
    m = _members(obj, "scope", frozenset(SCOPE_FIELDS))
    sha = m["sha"]
    if not isinstance(sha, str) or not _is_sha(sha):
        raise _malformed("bad_sha")
    return Scope(
        repo=_text(m, "repo", "scope"),
        sha=sha,
        environment=_text(m, "environment", "scope"),
        workflow=_text(m, "workflow", "scope"),
    )


def _person(obj: object, where: str) -> tuple[str, str]:
    m = _members(obj, where, frozenset({"id", "email"}), frozenset({"at"}))
    return _text(m, "id", where), _text(m, "email", where, allow_empty=True, limit=320)


def parse_receipt(obj: object, *, signed: bool = True) -> Receipt:
    """Check a parsed receipt's structure and return it typed.

    ``signed=True`` requires ``signature.value``; ``signed=False`` requires its absence. Raises
    ``VerificationError`` with code ``malformed``, ``unsupported_version`` or ``unsupported_alg``. Version
    and algorithm are checked first so a future format is reported as such, not as malformed.
    """
    if not isinstance(obj, dict):
        raise _malformed("not_object", where="receipt")
    if "version" not in obj:
        raise _malformed("missing_member", where="receipt", name="'version'")
    version = obj["version"]
    if not isinstance(version, str) or version not in RECEIPT_VERSIONS:
        raise VerificationError("unsupported_version", version=_show(obj["version"]))
    sig = obj.get("signature")
    if not isinstance(sig, dict) or "alg" not in sig:
        raise _malformed("missing_member", where="receipt", name="signature.alg")
    if sig["alg"] != ALG_ED25519 or not isinstance(sig["alg"], str):
        raise VerificationError("unsupported_alg", alg=_show(sig["alg"]))

    optional = frozenset({"requesterProof"}) if version == RECEIPT_VERSION_PROVEN else frozenset()
    top = _members(obj, "receipt", TOP_LEVEL_MEMBERS, optional)
    sig = _members(top["signature"], "signature", frozenset({"alg", "keyId"}), frozenset({"value"}))
    key_id = sig["keyId"]
    if not isinstance(key_id, str) or not _is_key_id(key_id):
        raise _malformed("bad_key_id", limit=_MAX_KEY_ID)
    value = sig.get("value")
    if signed and not isinstance(value, str):
        raise _malformed("not_string", member="signature.value")
    if not signed and "value" in sig:
        raise _malformed("unsigned_with_value")

    status = top["status"]
    if not isinstance(status, str) or not _is_status(status):
        raise _malformed("bad_status")
    request_id = top["requestId"]
    if not isinstance(request_id, str) or not _is_request_id(request_id):
        raise _malformed("bad_request_id")
    issued_at = parse_time(top["issuedAt"])
    expires_at = parse_time(top["expiresAt"])
    if expires_at <= issued_at:
        raise _malformed("expires_before_issued")

    approver = ApproverRef(*_person(top["approver"], "approver"))
    if "at" in top["approver"]:
        raise _malformed("unknown_member", where="approver", name="'at'")
    raw_approvals = top["approvals"]
    if not isinstance(raw_approvals, list) or not 1 <= len(raw_approvals) <= MAX_APPROVALS:
        raise _malformed("approvals_length", limit=MAX_APPROVALS)
    approvals: list[ApprovalEntry] = []
    for i, entry in enumerate(raw_approvals):
        uid, email = _person(entry, f"approvals[{i}]")
        if "at" not in entry:
            raise _malformed("missing_member", where=f"approvals[{i}]", name="'at'")
        approvals.append(ApprovalEntry(uid, email, parse_time(entry["at"])))
    if len({a.id for a in approvals}) != len(approvals):
        raise _malformed("approvals_repeat")
    if not any(a.id == approver.id and a.email == approver.email for a in approvals):
        raise _malformed("approver_not_in_approvals")

    proof: RequesterProof | None = None
    if "requesterProof" in top:
        p = _members(top["requesterProof"], "requesterProof", frozenset(PROOF_FIELDS))
        proof = RequesterProof(*(_text(p, f, "requesterProof", limit=1024) for f in PROOF_FIELDS))

    return Receipt(
        version=version,
        status=status,
        request_id=request_id,
        issued_at=issued_at,
        expires_at=expires_at,
        scope=_scope(top["scope"]),
        approver=approver,
        approvals=tuple(approvals),
        requester=_text(top, "requester", "receipt"),
        alg=ALG_ED25519,
        key_id=key_id,
        signature_value=value if signed else None,
        requester_proof=proof,
    )


def unsigned_receipt(
    *,
    request_id: str,
    status: str,
    issued_at: datetime,
    expires_at: datetime,
    scope: Scope,
    approver: ApproverRef,
    approvals: Sequence[ApprovalEntry],
    requester: str,
    alg: str = ALG_ED25519,
    key_id: str,
    requester_proof: RequesterProof | None = None,
) -> dict[str, Any]:
    """Build a receipt without ``signature.value``, checked by the same rules ``keyturn verify`` applies.

    With ``requester_proof`` the receipt is format 1.1 and carries ``requesterProof``; without, 1.0.
    Raises ``VerificationError`` (code ``malformed`` etc.) rather than produce a receipt no verifier accepts.
    """
    receipt: dict[str, Any] = {
        "version": RECEIPT_VERSION if requester_proof is None else RECEIPT_VERSION_PROVEN,
        "status": status,
        "requestId": request_id,
        "issuedAt": format_time(issued_at),
        "expiresAt": format_time(expires_at),
        "scope": scope.to_json(),
        "approver": approver.to_json(),
        "approvals": [a.to_json() for a in approvals],
        "requester": requester,
        "signature": {"alg": alg, "keyId": key_id},
    }
    if requester_proof is not None:
        receipt["requesterProof"] = requester_proof.to_json()
    parse_receipt(receipt, signed=False)
    return receipt


# --- signing bytes and DSSE -------------------------------------------------------------------------------


def pae(payload_type: str, body: bytes) -> bytes:
    """DSSE pre-authentication encoding: ``"DSSEv1" SP len(type) SP type SP len(body) SP body``."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(body), body)


def _without_value(receipt: Mapping[str, Any]) -> dict[str, Any]:
    sig = receipt.get("signature")
    if not isinstance(sig, Mapping):
        raise _malformed("missing_member", where="receipt", name="a signature object")
    body = {k: v for k, v in receipt.items() if k != "signature"}
    body["signature"] = {k: v for k, v in sig.items() if k != "value"}
    return body


def signed_payload(receipt: Mapping[str, Any]) -> bytes:
    """JCS bytes of the receipt with only ``signature.value`` removed: the DSSE payload."""
    return canonical_json(_without_value(receipt))


def signing_bytes(receipt: Mapping[str, Any]) -> bytes:
    """The bytes an Ed25519 signature covers: ``PAE(PAYLOAD_TYPE, JCS(receipt minus signature.value))``."""
    return pae(PAYLOAD_TYPE, signed_payload(receipt))


def to_dsse(receipt: Mapping[str, Any]) -> dict[str, Any]:
    """Convert a signed receipt to a DSSE envelope (lossless: ``from_dsse(to_dsse(r)) == r``)."""
    parsed = parse_receipt(dict(receipt), signed=True)
    assert parsed.signature_value is not None
    return {
        "payloadType": PAYLOAD_TYPE,
        "payload": b64encode(signed_payload(receipt)),
        "signatures": [{"keyid": parsed.key_id, "sig": parsed.signature_value}],
    }


def is_dsse(obj: Mapping[str, Any]) -> bool:
    """True if ``obj`` looks like a DSSE envelope rather than a plain receipt."""
    return "payloadType" in obj or "payload" in obj or "signatures" in obj


def from_dsse(envelope: Mapping[str, Any]) -> dict[str, Any]:
    """Convert a DSSE envelope back to a plain receipt. The payload must be the receipt's canonical (JCS)
    bytes, so both forms sign the very same bytes. Raises ``VerificationError("malformed")``."""
    env = _members(dict(envelope), "envelope", frozenset({"payloadType", "payload", "signatures"}))
    if env["payloadType"] != PAYLOAD_TYPE:
        raise _malformed("payload_type", expected=repr(PAYLOAD_TYPE))
    try:
        payload = b64decode(env["payload"])
    except ValueError:
        raise _malformed("envelope_base64") from None
    sigs = env["signatures"]
    if not isinstance(sigs, list) or len(sigs) != 1:
        raise _malformed("envelope_signatures")
    entry = _members(sigs[0], "signatures[0]", frozenset({"keyid", "sig"}))
    if not isinstance(entry["sig"], str) or not isinstance(entry["keyid"], str):
        raise _malformed("envelope_signature_strings")
    receipt = strict_loads(payload)
    if canonical_json(receipt) != payload:
        raise _malformed("envelope_not_canonical")
    sig = receipt.get("signature")
    if not isinstance(sig, dict) or "value" in sig:
        raise _malformed("envelope_with_value")
    if sig.get("keyId") != entry["keyid"]:
        raise _malformed("envelope_key_id")
    sig["value"] = entry["sig"]
    return receipt
