"""Offline receipt verification: bytes + trusted keyset + expected scope + now -> VerifiedReceipt, or raise.

Implements docs/design.md §3 and the numbered steps of docs/receipt.md ("Verifying a receipt"). Pure: no file,
network or clock access (the caller passes ``now``), standard library + PyNaCl + ``rfc8785`` only. Every
refusal is a ``VerificationError`` with a stable code; nothing else is ever returned for a bad receipt.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nacl.exceptions import BadSignatureError

from keyturn.signer.errors import VerificationError
from keyturn.signer.keyset import PublicKeyset
from keyturn.signer.receipt import (
    MAX_RECEIPT_BYTES,
    SCOPE_FIELDS,
    STATUS_APPROVED,
    ApprovalEntry,
    ApproverRef,
    Record,
    RequesterProof,
    Scope,
    b64decode,
    format_time,
    from_dsse,
    is_dsse,
    parse_receipt,
    signing_bytes,
    strict_loads,
    timedelta,
)

if TYPE_CHECKING:  # annotations only: keyturn verify's import path stays light (see signer/receipt.py)
    from typing import Any

    from keyturn.signer.receipt import datetime

# A receipt may live at most this long, whatever it claims. This bounds what a leaked *rotated* key could
# still do: receipts backdated before its rotation stop verifying at most this long after the rotation.
MAX_LIFETIME = timedelta(hours=24)


class VerifiedReceipt(Record):
    """A receipt that passed every check for the expected scope at the given time."""

    _fields = (
        "request_id",
        "status",
        "scope",
        "approver",
        "approvals",
        "issued_at",
        "expires_at",
        "key_id",
        "raw",
        "requester_proof",
    )
    __slots__ = _fields
    request_id: str
    status: str
    scope: Scope
    approver: ApproverRef
    approvals: tuple[ApprovalEntry, ...]
    issued_at: datetime
    expires_at: datetime
    key_id: str
    raw: dict[str, Any]
    requester_proof: RequesterProof | None

    def __init__(
        self,
        request_id: str,
        status: str,
        scope: Scope,
        approver: ApproverRef,
        approvals: tuple[ApprovalEntry, ...],
        issued_at: datetime,
        expires_at: datetime,
        key_id: str,
        raw: dict[str, Any],
        requester_proof: RequesterProof | None = None,
    ) -> None:
        self._set(
            request_id,
            status,
            scope,
            approver,
            approvals,
            issued_at,
            expires_at,
            key_id,
            raw,
            requester_proof,
        )

    def summary(self) -> str:
        """The one-line success message of ``keyturn verify``."""
        who = self.approver.email or self.approver.id
        return f"OK {self.request_id} approved by {who} expires {format_time(self.expires_at)}"


def verify_receipt(
    data: bytes,
    keyset: PublicKeyset,
    expected: Scope,
    now: datetime,
    *,
    allow_dev_keys: bool = False,
    max_skew_s: int = 60,
    require_requester_proof: bool = False,
) -> VerifiedReceipt:
    """Verify a receipt (plain JSON or a DSSE envelope) against a trusted keyset, the scope being deployed
    and the time ``now``. Returns the verified receipt or raises ``VerificationError``.

    ``keyset`` must come from a trusted place (the signer's ``/v1/keys`` or a pinned file), never from the
    checkout being deployed. ``require_requester_proof`` refuses (``requester_not_proven``) a receipt whose
    requester was not proven by an OIDC token (format 1.0, or 1.1 without ``requesterProof``).
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("verify_receipt needs a timezone-aware 'now'")

    # 1. Strict parse: UTF-8, size cap, no duplicate names, no floats; DSSE envelopes are unwrapped.
    obj = strict_loads(data, max_size=MAX_RECEIPT_BYTES)
    if is_dsse(obj):
        obj = from_dsse(obj)
    # 2-3. Structure, known version, Ed25519 only (unknown members anywhere are refused).
    receipt = parse_receipt(obj, signed=True)
    assert receipt.signature_value is not None

    # 4. The key is known and not revoked; development keys only when explicitly allowed.
    key = keyset.trusted(receipt.key_id, allow_dev_keys=allow_dev_keys)

    # 5. The signature covers PAE(type, JCS(receipt minus signature.value)): every other member is signed.
    try:
        sig = b64decode(receipt.signature_value)
    except ValueError:
        raise VerificationError("bad_signature", reason="not_base64") from None
    if len(sig) != 64:
        raise VerificationError("bad_signature", reason="length")
    try:
        key.verify_key.verify(signing_bytes(obj), sig)
    except BadSignatureError:
        raise VerificationError("bad_signature", reason="mismatch") from None

    # 6. Only an approval authorizes a deploy; a signed DENIED (or any other status) is a refusal.
    if receipt.status != STATUS_APPROVED:
        raise VerificationError("not_approved", reason="receipt", status=receipt.status)

    # 7. The key was entitled to sign at issuedAt (created before, and not yet rotated away).
    if not key.valid_at(receipt.issued_at):
        raise VerificationError(
            "key_not_valid_at_issue", kid=key.kid, key_status=key.status, at=format_time(receipt.issued_at)
        )
    if receipt.expires_at - receipt.issued_at > MAX_LIFETIME:
        raise VerificationError("lifetime_too_long", limit=str(MAX_LIFETIME))

    # 8-9. Time window, with a small allowance for the signer's clock running ahead.
    if receipt.issued_at > now + timedelta(seconds=max_skew_s):
        raise VerificationError("not_yet_valid", at=format_time(receipt.issued_at))
    if now >= receipt.expires_at:
        raise VerificationError("expired", at=format_time(receipt.expires_at))

    # 10. Scope: byte-for-byte equality of each field with what is being deployed.
    for field in SCOPE_FIELDS:
        got, want = getattr(receipt.scope, field), getattr(expected, field)
        if got != want:
            raise VerificationError(f"scope_mismatch:{field}", field=field, got=repr(got), want=repr(want))

    # 11. When asked: the requester was proven by the job's OIDC token (the signer says so, under signature).
    if require_requester_proof and receipt.requester_proof is None:
        raise VerificationError("requester_not_proven")

    return VerifiedReceipt(
        request_id=receipt.request_id,
        status=receipt.status,
        scope=receipt.scope,
        approver=receipt.approver,
        approvals=receipt.approvals,
        issued_at=receipt.issued_at,
        expires_at=receipt.expires_at,
        key_id=receipt.key_id,
        raw=obj,
        requester_proof=receipt.requester_proof,
    )
