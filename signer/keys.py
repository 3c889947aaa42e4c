"""Private signing keys: the ONLY module that touches Ed25519 private key material.

Implements docs/design.md §4. The private keyset file is JSON, ``{"keys": [JWK + "status", "createdAt",
"rotatedAt"?, "revokedAt"?]}``, mode 0600 or stricter, with exactly one ``active`` key and at most one
``next`` key, which alone carry ``d`` (the 32-byte seed, base64url): the file never keeps old private keys, so
a later leak of it cannot mint receipts under a retired key id.

Lifecycle (docs/keys.md): ``add_next`` creates the next key, published by ``keyturn keys export`` before it
signs; ``activate_next`` retires the active key and makes the next one active; the running signer notices the
changed file and switches without a restart (signer/service.py). Both changes rewrite the file atomically.

Nothing here logs, prints or puts key material into exception messages; ``repr`` shows key ids only.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey

from keyturn.signer import checkpoint as _checkpoint
from keyturn.signer.audit import fsync_dir, write_all
from keyturn.signer.errors import KeyFileError, KeysetError, KeyturnError, VerificationError
from keyturn.signer.keyset import (
    ACTIVE,
    NEXT,
    REVOKED,
    ROTATED,
    PublicKey,
    PublicKeyset,
    parse_public_jwk,
)
from keyturn.signer.receipt import (
    b64encode,
    b64url_decode,
    b64url_encode,
    parse_receipt,
    signing_bytes,
    strict_loads,
)

MAX_KEY_FILE_BYTES = 1024 * 1024
FILE_MODE = 0o600
# How long a retired key stays entitled to sign after ``activate_next``/``rotate`` (its ``rotatedAt`` is this
# far in the future). A running signer switches keys on its next request after the file changes, but a
# request that read the clock just before the switch may still be signed with the old key; the overlap keeps
# such a receipt valid under the keyset exported after the rotation. Emergencies revoke instead.
DEFAULT_ROTATION_GRACE = timedelta(seconds=60)
MAX_ROTATION_GRACE = timedelta(hours=1)


@dataclass(frozen=True)
class _Entry:
    public: PublicKey
    seed: bytes | None  # private; present for the active key

    def __repr__(self) -> str:
        return f"_Entry(kid={self.public.kid!r}, status={self.public.status!r})"

    def to_json(self) -> dict[str, Any]:
        jwk: dict[str, Any] = self.public.to_jwk()
        del jwk["use"], jwk["alg"]
        if self.seed is not None:
            jwk["d"] = b64url_encode(self.seed)
        return jwk


def _parse_entry(jwk: object, where: str) -> _Entry:
    try:
        public, has_d = parse_public_jwk(jwk, where)
    except KeysetError as e:
        raise KeyFileError(reason="relayed", detail=e.message) from None
    seed: bytes | None = None
    if has_d:
        assert isinstance(jwk, dict)
        try:
            seed = b64url_decode(jwk["d"])
        except ValueError:
            raise KeyFileError(reason="d_not_base64url", where=where) from None
        if len(seed) != 32:
            raise KeyFileError(reason="d_length", where=where)
        if bytes(SigningKey(seed).verify_key) != bytes(public.verify_key):
            raise KeyFileError(reason="x_not_of_d", where=where)
    return _Entry(public, seed)


def _new_entry(now: datetime, *, dev: bool, status: str = ACTIVE) -> _Entry:
    from keyturn.signer.keyset import key_id

    sk = SigningKey.generate()
    vk = sk.verify_key
    created = now.replace(microsecond=0)
    public = PublicKey(key_id(bytes(vk), dev=dev), status, created, None, None, vk)
    return _Entry(public, bytes(sk))


def _retired(entry: _Entry, at: datetime) -> _Entry:
    """``entry`` marked rotated at ``at``, without its private part."""
    p = entry.public
    return _Entry(PublicKey(p.kid, ROTATED, p.created_at, at, None, p.verify_key), None)


def _check_grace(grace: timedelta) -> None:
    if grace < timedelta(0) or grace > MAX_ROTATION_GRACE:
        raise KeyFileError(reason="grace", most=str(MAX_ROTATION_GRACE))


class SigningKeyset:
    """The signer's keys: exactly one active key signs; at most one next key waits, published, to take over;
    the rest are kept for the public keyset."""

    def __init__(self, entries: list[_Entry]) -> None:
        active = [e for e in entries if e.public.status == ACTIVE]
        if len(active) != 1:
            raise KeyFileError(reason="active_count", found=len(active))
        if active[0].seed is None:
            raise KeyFileError(reason="active_without_d")
        staged = [e for e in entries if e.public.status == NEXT]
        if len(staged) > 1:
            raise KeyFileError(reason="next_count", found=len(staged))
        if staged and staged[0].seed is None:
            raise KeyFileError(reason="next_without_d")
        if len({e.public.kid for e in entries}) != len(entries):
            raise KeyFileError(reason="duplicate_kid")
        self._entries = list(entries)
        self._active = active[0]
        self._next = staged[0] if staged else None
        self._signing_key = SigningKey(active[0].seed)

    def __repr__(self) -> str:
        return f"SigningKeyset(active_kid={self.active_kid!r}, keys={len(self._entries)})"

    @property
    def active_kid(self) -> str:
        """Key id of the key that signs."""
        return self._active.public.kid

    @property
    def next_kid(self) -> str | None:
        """Key id of the published key waiting to become active, if any."""
        return self._next.public.kid if self._next is not None else None

    def active_valid_at(self, at: datetime) -> bool:
        """Whether the active key may sign something issued at ``at`` (it was created by then)."""
        return self._active.public.valid_at(at)

    def sign(self, message: bytes) -> tuple[str, bytes]:
        """Sign ``message`` with the active key; return ``(kid, 64-byte signature)``."""
        return self.active_kid, self._signing_key.sign(message).signature

    def public_keyset(self) -> PublicKeyset:
        """The public keyset (JWKS) to hand to verifiers: every key, with status, no private parts."""
        return PublicKeyset([e.public for e in self._entries])

    def to_json(self) -> dict[str, Any]:
        """The private key file document (contains private key material: write only with ``_write``)."""
        return {"keys": [e.to_json() for e in self._entries]}

    # --- files ----------------------------------------------------------------------------------------------

    @classmethod
    def loads(cls, data: bytes) -> SigningKeyset:
        """Parse a private key file's bytes (no permission check; use ``load`` for files)."""
        try:
            obj = strict_loads(data, max_size=MAX_KEY_FILE_BYTES)
        except VerificationError as e:
            raise KeyFileError(reason="not_json", detail=e.message) from None
        keys = obj.get("keys")
        if not isinstance(keys, list) or not keys:
            raise KeyFileError(reason="no_keys")
        return cls([_parse_entry(k, f"keys[{i}]") for i, k in enumerate(keys)])

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SigningKeyset:
        """Load a private key file, refusing one readable or writable by group or others."""
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as e:
            raise KeyFileError(reason="cannot_open", path=os.fspath(path), error=e.strerror) from None
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise KeyFileError(reason="not_regular", path=os.fspath(path))
            if st.st_mode & 0o077:
                raise KeyFileError(
                    reason="too_open", path=os.fspath(path), mode=f"{stat.S_IMODE(st.st_mode):04o}"
                )
            data = f.read(MAX_KEY_FILE_BYTES + 1)
        return cls.loads(data)

    @classmethod
    def generate(cls, path: str | os.PathLike[str], *, dev: bool = False, now: datetime) -> SigningKeyset:
        """Create a new key file with one active key at ``path`` (mode 0600). Refuses to overwrite."""
        keys = cls([_new_entry(now, dev=dev)])
        _write_new(Path(path), keys.to_json())
        return keys

    @classmethod
    def add_next(cls, path: str | os.PathLike[str], now: datetime) -> SigningKeyset:
        """Add a ``next`` key (same dev-ness as the active one) to publish before it signs. Refuses if one is
        already staged."""
        old = cls.load(path)
        if old._next is not None:
            staged = old._next.public.kid
            raise KeyFileError(reason="next_already_staged", kid=staged)
        keys = cls([*old._entries, _new_entry(now, dev=old._active.public.is_dev, status=NEXT)])
        _replace(Path(path), keys.to_json())
        return keys

    @classmethod
    def activate_next(
        cls, path: str | os.PathLike[str], now: datetime, grace: timedelta = DEFAULT_ROTATION_GRACE
    ) -> SigningKeyset:
        """Make the staged ``next`` key active and mark the active key ``rotated`` at ``now + grace``,
        dropping its private part. Refuses when no next key is staged."""
        _check_grace(grace)
        old = cls.load(path)
        if old._next is None:
            raise KeyFileError(reason="no_next")
        return cls._switch(Path(path), old, old._next, now, grace)

    @classmethod
    def rotate(
        cls, path: str | os.PathLike[str], now: datetime, grace: timedelta = timedelta(0)
    ) -> SigningKeyset:
        """Mark the active key ``rotated`` at ``now + grace`` (dropping its private part) and add a new active
        key at once, unpublished: verifiers pinned to an older keyset refuse its receipts (``unknown_key``)
        until they fetch the new one. Prefer ``add_next`` + ``activate_next``. Refuses while a next key is
        staged (activate it instead). The new key is a dev key if the old one was.
        """
        _check_grace(grace)
        old = cls.load(path)
        if old._next is not None:
            raise KeyFileError(reason="next_staged", kid=old._next.public.kid)
        return cls._switch(Path(path), old, _new_entry(now, dev=old._active.public.is_dev), now, grace)

    @classmethod
    def _switch(
        cls, path: Path, old: SigningKeyset, successor: _Entry, now: datetime, grace: timedelta
    ) -> SigningKeyset:
        at = now.replace(microsecond=0) + grace
        if at < old._active.public.created_at:
            raise KeyFileError(reason="rotation_before_creation")
        p = successor.public
        promoted = _Entry(PublicKey(p.kid, ACTIVE, p.created_at, None, None, p.verify_key), successor.seed)
        entries: list[_Entry] = []
        for e in old._entries:
            if e is old._active:
                e = _retired(e, at)
            elif e is successor:
                e = promoted
            entries.append(e)
        if successor is not old._next:
            entries.append(promoted)
        keys = cls(entries)
        _replace(path, keys.to_json())
        return keys

    @classmethod
    def revoke(cls, path: str | os.PathLike[str], kid: str, now: datetime) -> SigningKeyset:
        """Mark key ``kid`` revoked at ``now``: it never verifies again. Revoking a revoked key is a no-op.

        A next key (e.g. one exposed before use) may be revoked; it loses its private part. The active key
        cannot be revoked directly: rotate first, so there is always exactly one signing key.
        """
        old = cls.load(path)
        target = next((e for e in old._entries if e.public.kid == kid), None)
        if target is None:
            raise KeyFileError(code="unknown_key", reason="key_file", kid=kid)
        if target.public.status == REVOKED:
            return old
        if target is old._active:
            raise KeyFileError(reason="revoke_active")
        p = target.public
        revoked = _Entry(
            PublicKey(p.kid, REVOKED, p.created_at, p.rotated_at, now.replace(microsecond=0), p.verify_key),
            None,
        )
        keys = cls([revoked if e is target else e for e in old._entries])
        _replace(Path(path), keys.to_json())
        return keys


def _encode(doc: Mapping[str, Any]) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode("utf-8")


def _write_fd(fd: int, data: bytes) -> None:
    os.fchmod(fd, FILE_MODE)
    write_all(fd, data)
    os.fsync(fd)


def _write_new(path: Path, doc: Mapping[str, Any]) -> None:
    """Create ``path`` with mode 0600 and write ``doc``; never overwrite."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
    except FileExistsError:
        raise KeyFileError(reason="exists", path=str(path)) from None
    except OSError as e:
        raise KeyFileError(reason="cannot_create", path=str(path), error=e.strerror) from None
    try:
        _write_fd(fd, _encode(doc))
    finally:
        os.close(fd)
    fsync_dir(path.parent)


def _replace(path: Path, doc: Mapping[str, Any]) -> None:
    """Atomically replace ``path`` (write a 0600 temp file beside it, fsync, rename, fsync the directory)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
    except OSError as e:
        raise KeyFileError(reason="cannot_write", path=str(path), error=e.strerror) from None
    try:
        try:
            _write_fd(fd, _encode(doc))
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def generate(path: str | os.PathLike[str], *, dev: bool = False, now: datetime) -> SigningKeyset:
    """Module-level alias of ``SigningKeyset.generate``."""
    return SigningKeyset.generate(path, dev=dev, now=now)


def rotate(path: str | os.PathLike[str], now: datetime) -> SigningKeyset:
    """Module-level alias of ``SigningKeyset.rotate``."""
    return SigningKeyset.rotate(path, now)


def add_next(path: str | os.PathLike[str], now: datetime) -> SigningKeyset:
    """Module-level alias of ``SigningKeyset.add_next``."""
    return SigningKeyset.add_next(path, now)


def activate_next(
    path: str | os.PathLike[str], now: datetime, grace: timedelta = DEFAULT_ROTATION_GRACE
) -> SigningKeyset:
    """Module-level alias of ``SigningKeyset.activate_next``."""
    return SigningKeyset.activate_next(path, now, grace)


def revoke(path: str | os.PathLike[str], kid: str, now: datetime) -> SigningKeyset:
    """Module-level alias of ``SigningKeyset.revoke``."""
    return SigningKeyset.revoke(path, kid, now)


def sign_receipt(keys: SigningKeyset, unsigned: Mapping[str, Any]) -> dict[str, Any]:
    """Sign an unsigned receipt (from ``unsigned_receipt``) with the active key; return the signed receipt.

    The receipt must name the active key (``signature.keyId``) and pass the verifier's structure checks.
    """
    parse_receipt(dict(unsigned), signed=False)
    if unsigned["signature"]["keyId"] != keys.active_kid:
        raise KeyturnError(code="key_mismatch", what="receipt")
    _kid, sig = keys.sign(signing_bytes(unsigned))
    signed = dict(unsigned)
    signed["signature"] = {**unsigned["signature"], "value": b64encode(sig)}
    return signed


def sign_checkpoint(keys: SigningKeyset, unsigned: Mapping[str, Any]) -> dict[str, Any]:
    """Sign a checkpoint of the audit log's head (from ``keyturn.signer.checkpoint.unsigned_checkpoint``)
    with the active key; return its DSSE envelope.

    The signature covers the checkpoint's own payload type (never the receipt's), so neither kind of
    signature can stand in for the other. The checkpoint must name the active key and be well formed.
    """
    parsed = _checkpoint.parse_checkpoint(dict(unsigned))
    if parsed.key_id != keys.active_kid:
        raise KeyturnError(code="key_mismatch", what="checkpoint")
    payload = _checkpoint.payload_bytes(unsigned)
    kid, sig = keys.sign(_checkpoint.signing_bytes(payload))
    return _checkpoint.envelope(payload, kid, sig)
