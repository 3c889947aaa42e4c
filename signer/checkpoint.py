"""Signed checkpoints of the audit log's head: format, signing bytes and verification (pure).

A checkpoint says "the audit log ``log`` had entry ``seq``, whose line hashes to ``head``, at ``issuedAt``",
signed by the signer's active key. Archived away from the signer, checkpoints anchor the log: a log that
later lacks entry ``seq`` was cut short, one that holds a different line there was rewritten
(``keyturn.signer.audit.verify_log``). Operator routine: docs/security.md, "Anchoring the audit log".

A checkpoint travels as a DSSE envelope whose payload is the JCS form of

    {"type": "keyturn.audit.checkpoint", "version": "1", "log": hex, "seq": n, "head": hex,
     "issuedAt": "YYYY-MM-DDTHH:MM:SSZ", "keyId": kid}

and whose signature is Ed25519 over ``PAE("application/vnd.keyturn.audit-checkpoint+json", payload)``. The
payload type differs from the receipt's, so a checkpoint signature never verifies as a receipt signature and
a receipt signature never as a checkpoint's, whatever the bytes (domain separation, as DSSE intends).

``log`` is the SHA-256 (hex) of the log's first line and ``head`` that of line ``seq`` (both 64 zeros for an
empty log, ``seq`` 0). Signing happens in ``keyturn.signer.keys.sign_checkpoint``, the only code touching the
key. Standard library, PyNaCl and ``rfc8785`` only; no file, network or clock access.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from nacl.exceptions import BadSignatureError

from keyturn.signer.audit import GENESIS
from keyturn.signer.errors import VerificationError
from keyturn.signer.keyset import PublicKeyset
from keyturn.signer.receipt import (
    Record,
    b64decode,
    b64encode,
    canonical_json,
    format_time,
    pae,
    parse_time,
    strict_loads,
    strict_object,
)

if TYPE_CHECKING:
    from typing import Any

    from keyturn.signer.receipt import datetime
    from keyturn.signer.words import Fact

CHECKPOINT_TYPE = "keyturn.audit.checkpoint"
CHECKPOINT_VERSION = "1"
CHECKPOINT_PAYLOAD_TYPE = "application/vnd.keyturn.audit-checkpoint+json"
MAX_CHECKPOINT_BYTES = 16 * 1024

_MEMBERS = frozenset({"type", "version", "log", "seq", "head", "issuedAt", "keyId"})
_ENVELOPE_MEMBERS = frozenset({"payloadType", "payload", "signatures"})
_LOWER_HEX = frozenset("0123456789abcdef")
_BASE64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_MAX_SEQ = 2**53 - 1  # JSON integers beyond this are not portable


class Checkpoint(Record):
    """What a checkpoint claims (verified, once ``verify_checkpoint`` returns it): log id, entry, hash, time,
    key."""

    _fields = ("log", "seq", "head", "issued_at", "key_id")
    __slots__ = _fields
    log: str
    seq: int
    head: str
    issued_at: datetime
    key_id: str

    def __init__(self, log: str, seq: int, head: str, issued_at: datetime, key_id: str) -> None:
        self._set(log, seq, head, issued_at, key_id)


def _bad(reason: str, **facts: Fact) -> VerificationError:
    return VerificationError("bad_checkpoint", reason=reason, **facts)


def _is_hash(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and _LOWER_HEX.issuperset(value)


def parse_checkpoint(obj: object) -> Checkpoint:
    """Check a checkpoint payload's structure and return it typed; raises ``VerificationError``
    (``bad_checkpoint``). Does not check any signature."""
    if not isinstance(obj, dict):
        raise _bad("payload_not_object")
    if obj.keys() != _MEMBERS:
        missing, unknown = sorted(_MEMBERS - obj.keys()), sorted(obj.keys() - _MEMBERS)
        raise (
            _bad("payload_lacks", members=str(missing))
            if missing
            else _bad("payload_unknown", members=str(unknown[:3]))
        )
    if obj["type"] != CHECKPOINT_TYPE:
        raise _bad("type", type=CHECKPOINT_TYPE)
    if obj["version"] != CHECKPOINT_VERSION:
        raise _bad("version", version=str(obj["version"])[:20])
    seq = obj["seq"]
    if type(seq) is not int or not 0 <= seq <= _MAX_SEQ:
        raise _bad("seq")
    log, head = obj["log"], obj["head"]
    if not _is_hash(log) or not _is_hash(head):
        raise _bad("hashes")
    assert isinstance(log, str)
    assert isinstance(head, str)
    # The three describe one log: empty (all GENESIS), or entry 1 both names the log and is the head at seq 1.
    if (seq == 0) != (log == GENESIS) or (seq == 0) != (head == GENESIS) or (seq == 1 and log != head):
        raise _bad("inconsistent")
    key_id = obj["keyId"]
    if not isinstance(key_id, str) or not 1 <= len(key_id) <= 128 or not _BASE64URL.issuperset(key_id):
        raise _bad("key_id")
    try:
        issued_at = parse_time(obj["issuedAt"])
    except VerificationError as e:
        raise _bad("issued_at", detail=e.message) from None
    return Checkpoint(log, seq, head, issued_at, key_id)


def unsigned_checkpoint(*, log: str, seq: int, head: str, issued_at: datetime, key_id: str) -> dict[str, Any]:
    """The payload object of a checkpoint, checked by the rules a verifier applies (raises otherwise)."""
    body: dict[str, Any] = {
        "type": CHECKPOINT_TYPE,
        "version": CHECKPOINT_VERSION,
        "log": log,
        "seq": seq,
        "head": head,
        "issuedAt": format_time(issued_at),
        "keyId": key_id,
    }
    parse_checkpoint(body)
    return body


def payload_bytes(body: Mapping[str, Any]) -> bytes:
    """The DSSE payload: the JCS bytes of the checkpoint object."""
    return canonical_json(dict(body))


def signing_bytes(payload: bytes) -> bytes:
    """What the Ed25519 signature covers: ``PAE(CHECKPOINT_PAYLOAD_TYPE, payload)``."""
    return pae(CHECKPOINT_PAYLOAD_TYPE, payload)


def envelope(payload: bytes, key_id: str, signature: bytes) -> dict[str, Any]:
    """The DSSE envelope that publishes a signed checkpoint."""
    return {
        "payloadType": CHECKPOINT_PAYLOAD_TYPE,
        "payload": b64encode(payload),
        "signatures": [{"keyid": key_id, "sig": b64encode(signature)}],
    }


def verify_checkpoint(
    data: bytes | Mapping[str, Any], keyset: PublicKeyset, *, allow_dev_keys: bool = False
) -> Checkpoint:
    """Verify a checkpoint envelope (bytes or parsed) against a trusted keyset; return what it vouches for.

    Raises ``VerificationError``: ``bad_checkpoint`` (malformed, another payload type, a signature that does
    not verify), ``unknown_key``, ``revoked_key``, ``dev_key`` (unless ``allow_dev_keys``),
    ``key_not_valid_at_issue``.
    """
    # 1. Strict parse of the envelope: one JSON object, no duplicate names or floats, exactly its members.
    env = strict_object(data, MAX_CHECKPOINT_BYTES, lambda why: _bad("not_envelope", detail=why))
    if not isinstance(env, Mapping) or env.keys() != _ENVELOPE_MEMBERS:
        raise _bad("envelope_members")
    # 2. Its own payload type: a receipt (or anything else signed by the same key) is not a checkpoint.
    if env["payloadType"] != CHECKPOINT_PAYLOAD_TYPE:
        raise _bad("payload_type", got=str(env["payloadType"])[:80], want=CHECKPOINT_PAYLOAD_TYPE)
    sigs = env["signatures"]
    if not isinstance(sigs, list) or len(sigs) != 1 or not isinstance(sigs[0], dict):
        raise _bad("signature_count")
    if sigs[0].keys() != {"keyid", "sig"}:
        raise _bad("signature_members")
    try:
        payload = b64decode(env["payload"])
        sig = b64decode(sigs[0]["sig"])
    except ValueError:
        raise _bad("base64") from None
    # 3. The payload: strict JSON in its canonical form, with exactly the checkpoint members.
    try:
        body = strict_loads(payload, max_size=MAX_CHECKPOINT_BYTES)
    except VerificationError as e:
        raise _bad("payload", detail=e.message) from None
    if canonical_json(body) != payload:
        raise _bad("not_canonical")
    checkpoint = parse_checkpoint(body)
    if sigs[0]["keyid"] != checkpoint.key_id:
        raise _bad("keyid_differs")
    # 4. The key: known, not revoked, a development key only when allowed.
    key = keyset.trusted(checkpoint.key_id, allow_dev_keys=allow_dev_keys)
    # 5. The signature, over the checkpoint's own PAE.
    if len(sig) != 64:
        raise _bad("signature_length")
    try:
        key.verify_key.verify(signing_bytes(payload), sig)
    except BadSignatureError:
        raise _bad("signature_mismatch") from None
    # 6. The key was entitled to sign then (a rotated key only before its rotation).
    if not key.valid_at(checkpoint.issued_at):
        raise VerificationError(
            "key_not_valid_at_issue", kid=key.kid, key_status=key.status, at=format_time(checkpoint.issued_at)
        )
    return checkpoint
