"""The public keyset: Ed25519 verification keys with their status (JWKS, RFC 7517 / RFC 8037 OKP keys).

Implements docs/design.md §4 (public half). Standard library and PyNaCl only: on ``keyturn verify``'s path.
Rules: exactly the keys listed verify; ``active`` and ``next`` keys verify receipts issued from
``createdAt`` on; ``rotated`` keys verify receipts issued before ``rotatedAt``; ``revoked`` keys never
verify. A ``next`` key is published before it signs (docs/keys.md), so verifiers that pinned the keyset
already trust it on the day it becomes active: publishing a key is trusting it. A key's ``kid`` must be its
RFC 7638 thumbprint (``dev-`` + thumbprint for development keys), so an id can never silently name a
different key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from nacl.bindings import crypto_hash_sha256
from nacl.signing import VerifyKey

from keyturn.signer.errors import KeysetError, VerificationError
from keyturn.signer.receipt import (
    Record,
    b64url_decode,
    b64url_encode,
    format_time,
    parse_time,
    strict_object,
)

if TYPE_CHECKING:  # annotations only: keyturn verify's import path stays light (see signer/receipt.py)
    from collections.abc import Iterator
    from typing import Any

    from keyturn.signer.receipt import datetime

ACTIVE = "active"
NEXT = "next"
ROTATED = "rotated"
REVOKED = "revoked"
STATUSES = frozenset({ACTIVE, NEXT, ROTATED, REVOKED})
DEV_PREFIX = "dev-"
MAX_KEYSET_BYTES = 1024 * 1024


def thumbprint(public_key_bytes: bytes) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url) of an Ed25519 public key: over ``{"crv","kty","x"}``."""
    if len(public_key_bytes) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    # RFC 7638 §3: required members only, lexicographic order, no whitespace.
    canon = '{"crv":"Ed25519","kty":"OKP","x":"' + b64url_encode(public_key_bytes) + '"}'
    # PyNaCl's SHA-256 (already loaded for verification) keeps hashlib off the verify import path.
    return b64url_encode(crypto_hash_sha256(canon.encode("ascii")))


def key_id(public_key_bytes: bytes, *, dev: bool = False) -> str:
    """The key id Keyturn uses for a public key: its thumbprint, prefixed ``dev-`` for development keys."""
    return (DEV_PREFIX if dev else "") + thumbprint(public_key_bytes)


class PublicKey(Record):
    """One verification key and its lifecycle."""

    _fields = ("kid", "status", "created_at", "rotated_at", "revoked_at", "verify_key")
    __slots__ = _fields
    kid: str
    status: str
    created_at: datetime
    rotated_at: datetime | None
    revoked_at: datetime | None
    verify_key: VerifyKey

    def __init__(
        self,
        kid: str,
        status: str,
        created_at: datetime,
        rotated_at: datetime | None,
        revoked_at: datetime | None,
        verify_key: VerifyKey,
    ) -> None:
        self._set(kid, status, created_at, rotated_at, revoked_at, verify_key)

    @property
    def is_dev(self) -> bool:
        """True for development keys (refused by ``keyturn verify`` unless explicitly allowed)."""
        return self.kid.startswith(DEV_PREFIX)

    def valid_at(self, issued_at: datetime) -> bool:
        """Whether this key may have issued a receipt at ``issued_at`` (status and lifetime).

        A ``next`` key counts as active from its creation: the signer may switch to it at any moment after
        it was published, and a verifier pinned to that keyset must not fail the first receipts it signs.
        """
        if self.status == REVOKED or issued_at < self.created_at:
            return False
        return not (self.status == ROTATED and self.rotated_at is not None and issued_at >= self.rotated_at)

    def to_jwk(self) -> dict[str, str]:
        """The public JWK with Keyturn's status members."""
        jwk = {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": b64url_encode(bytes(self.verify_key)),
            "kid": self.kid,
            "use": "sig",
            "alg": "EdDSA",
            "status": self.status,
            "createdAt": format_time(self.created_at),
        }
        if self.rotated_at is not None:
            jwk["rotatedAt"] = format_time(self.rotated_at)
        if self.revoked_at is not None:
            jwk["revokedAt"] = format_time(self.revoked_at)
        return jwk


def _opt_time(jwk: Mapping[str, Any], name: str, where: str) -> datetime | None:
    if name not in jwk:
        return None
    try:
        return parse_time(jwk[name])
    except VerificationError as e:
        raise KeysetError(reason="time", where=where, name=name, detail=e.message) from None


def parse_public_jwk(jwk: object, where: str = "key") -> tuple[PublicKey, bool]:
    """Parse one JWK entry into a ``PublicKey``; also return whether it carried private material ``d``.

    Unknown JWK members are ignored (RFC 7517 §4); everything Keyturn relies on is checked strictly.
    """
    if not isinstance(jwk, dict):
        raise KeysetError(reason="key_not_object", where=where)
    if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
        raise KeysetError(reason="key_type", where=where)
    if "use" in jwk and jwk["use"] != "sig":
        raise KeysetError(reason="use", where=where)
    if "alg" in jwk and jwk["alg"] != "EdDSA":
        raise KeysetError(reason="alg", where=where)
    try:
        x = b64url_decode(jwk.get("x"))  # type: ignore[arg-type]
    except ValueError:
        raise KeysetError(reason="x_not_base64url", where=where) from None
    if len(x) != 32:
        raise KeysetError(reason="x_length", where=where)
    kid = jwk.get("kid")
    tp = thumbprint(x)
    if kid not in (tp, DEV_PREFIX + tp):
        raise KeysetError(reason="kid", where=where)
    assert isinstance(kid, str)
    status = jwk.get("status")
    if status not in STATUSES:
        raise KeysetError(reason="status", where=where)
    assert isinstance(status, str)
    if "createdAt" not in jwk:
        raise KeysetError(reason="no_created_at", where=where)
    created = _opt_time(jwk, "createdAt", where)
    assert created is not None
    rotated = _opt_time(jwk, "rotatedAt", where)
    revoked = _opt_time(jwk, "revokedAt", where)
    if status == ROTATED and rotated is None:
        raise KeysetError(reason="no_rotated_at", where=where)
    if status == REVOKED and revoked is None:
        raise KeysetError(reason="no_revoked_at", where=where)
    if status in (ACTIVE, NEXT) and (rotated is not None or revoked is not None):
        raise KeysetError(reason="live_with_end", where=where, status=status)
    if rotated is not None and rotated < created:
        raise KeysetError(reason="rotated_before_created", where=where)
    key = PublicKey(kid, status, created, rotated, revoked, VerifyKey(x))
    return key, "d" in jwk


class PublicKeyset:
    """An immutable set of verification keys, looked up by key id."""

    def __init__(self, keys: list[PublicKey]) -> None:
        by_kid: dict[str, PublicKey] = {}
        for key in keys:
            if key.kid in by_kid:
                raise KeysetError(reason="duplicate_kid", kid=key.kid)
            by_kid[key.kid] = key
        self._keys = by_kid

    @classmethod
    def from_jwks(cls, data: bytes | Mapping[str, Any]) -> PublicKeyset:
        """Load a JWKS (``{"keys": [...]}``) from bytes or a parsed mapping. Raises ``KeysetError``.

        A keyset containing private key material (``d``) is refused: it must never reach CI.
        """
        obj = strict_object(data, MAX_KEYSET_BYTES, lambda why: KeysetError(reason="not_json", detail=why))
        keys = obj.get("keys") if isinstance(obj, Mapping) else None
        if not isinstance(keys, list) or not keys:
            raise KeysetError(reason="no_keys")
        parsed: list[PublicKey] = []
        for i, jwk in enumerate(keys):
            key, private = parse_public_jwk(jwk, f"keys[{i}]")
            if private:
                raise KeysetError(reason="private_material")
            parsed.append(key)
        return cls(parsed)

    def get(self, kid: str) -> PublicKey | None:
        """The key with id ``kid``, or None."""
        return self._keys.get(kid)

    def trusted(self, kid: str, *, allow_dev_keys: bool = False) -> PublicKey:
        """The key with id ``kid`` if it may vouch for anything: known, not revoked, a development key only
        when ``allow_dev_keys``. Raises ``VerificationError`` (``unknown_key``, ``revoked_key``, ``dev_key``).

        Whether it was valid when the signed thing was issued is the caller's next step (``valid_at``)."""
        key = self._keys.get(kid)
        if key is None:
            raise VerificationError("unknown_key", kid=kid)
        if key.status == REVOKED:
            raise VerificationError("revoked_key", kid=kid)
        if key.is_dev and not allow_dev_keys:
            raise VerificationError("dev_key", kid=kid)
        return key

    def __iter__(self) -> Iterator[PublicKey]:
        return iter(self._keys.values())

    def __len__(self) -> int:
        return len(self._keys)

    def to_jwks(self) -> dict[str, Any]:
        """The JWKS document (what CI fetches)."""
        return {"keys": [k.to_jwk() for k in self._keys.values()]}
