"""``keyturn policy pin-oidc-keys``: refresh the pinned JWKS file of each ``[oidc.issuers.<name>]``.

The signer has no network and takes issuer keys from nowhere but these files (docs/ci.md, "Pinned issuer
keys"). This admin command, run by an operator, fetches each issuer's discovery document
(``<issuer>/.well-known/openid-configuration``) and the ``jwks_uri`` it names, over https (plain http only
to loopback, for the emulator), checks that the document is the issuer's own (``issuer`` equal to the
policy's, byte for byte) and that every key fits the configured algorithm, then writes the file atomically.

Rotation: a key the issuer no longer publishes stays pinned for :data:`RETIRED_KEEP` after it was first seen
missing (the longest token lifetime the signer accepts), so tokens it signed just before the rotation still
verify; then it is dropped. The file stays a plain JWKS (``keys``) with one extra member, ``keyturn``, that
records when each kept key was retired. The signer must be restarted to load a refreshed file.

The decision (:func:`merge`) is pure; fetching and writing sit in :func:`pin_issuer`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from keyturn.signer import oidc
from keyturn.signer.errors import KeyturnError
from keyturn.signer.policy import OidcIssuer

RETIRED_KEEP = timedelta(seconds=oidc.MAX_TOKEN_LIFETIME)
MAX_DISCOVERY_BYTES = 64 * 1024


class PinError(KeyturnError):
    """The keys could not be pinned; nothing was written. Codes: ``oidc_discovery``, ``bad_oidc_keys``, ..."""


@dataclass(frozen=True)
class Merged:
    """The file to write and what changed."""

    document: dict[str, Any]
    added: tuple[str, ...]
    retired: tuple[str, ...]
    dropped: tuple[str, ...]


def _time(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def merge(fetched: Mapping[str, Any], pinned: Mapping[str, Any] | None, now: datetime) -> Merged:
    """The new pinned document: every fetched key, plus previously pinned keys the issuer dropped, kept for
    :data:`RETIRED_KEEP` after they were first seen missing."""
    new_keys = [dict(k) for k in fetched["keys"]]
    new_kids = {k["kid"] for k in new_keys}
    old_keys = [dict(k) for k in (pinned or {}).get("keys", []) if isinstance(k, dict)]
    meta = (pinned or {}).get("keyturn", {})
    retired_at: dict[str, str] = dict(meta.get("retired", {})) if isinstance(meta, dict) else {}
    keep: list[dict[str, Any]] = []
    retired_now: list[str] = []
    dropped: list[str] = []
    retired: dict[str, str] = {}
    for key in old_keys:
        kid = key.get("kid")
        if not isinstance(kid, str) or kid in new_kids:
            continue
        since = retired_at.get(kid)
        if since is None:
            since = _time(now)
            retired_now.append(kid)
        try:
            since_dt = datetime.strptime(since, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=now.tzinfo)
        except ValueError:
            since_dt = now
        if now - since_dt >= RETIRED_KEEP:
            dropped.append(kid)
            continue
        keep.append(key)
        retired[kid] = since
    old_kids = {k.get("kid") for k in old_keys}
    document = {"keys": new_keys + keep, "keyturn": {"pinnedAt": _time(now), "retired": retired}}
    return Merged(document, tuple(sorted(new_kids - old_kids)), tuple(retired_now), tuple(dropped))


Fetch = Callable[[str, str, int], bytes]  # (url, what, limit) -> body


def _default_fetch(url: str, what: str, limit: int) -> bytes:
    from keyturn.signer import gate

    if not gate.keyset_url_allowed(url):
        raise PinError(code="oidc_discovery", reason="pin_url", url=url)
    try:
        return gate.fetch_document(url, what=what, limit=limit, too_large=f"{what}_too_large")
    except gate.GateError as exc:
        raise PinError(code=exc.code, reason="relayed", detail=exc.message) from None


def pin_issuer(
    name: str,
    cfg: OidcIssuer,
    policy_path: Path,
    now: datetime,
    *,
    base_url: str | None = None,
    fetch: Fetch = _default_fetch,
    write: bool = True,
) -> Merged:
    """Fetch ``cfg``'s discovery document and key set, check them, merge with the pinned file and (``write``)
    replace it atomically. ``base_url`` fetches the discovery document from elsewhere than the issuer URL
    (the emulator on loopback); its ``issuer`` must still be the configured one."""
    base = (base_url or cfg.issuer).rstrip("/")
    raw = fetch(f"{base}/.well-known/openid-configuration", "oidc_discovery", MAX_DISCOVERY_BYTES)
    discovery = oidc._json_object(raw, "discovery document", "oidc_discovery")
    if discovery.get("issuer") != cfg.issuer:
        got = repr(discovery.get("issuer"))
        raise PinError(code="oidc_discovery", reason="pin_issuer", name=name, got=got, want=cfg.issuer)
    jwks_uri = discovery.get("jwks_uri")
    if not isinstance(jwks_uri, str):
        raise PinError(code="oidc_discovery", reason="pin_no_jwks_uri", name=name)
    data = fetch(jwks_uri, "oidc_keys", oidc.MAX_JWKS_BYTES)
    try:
        oidc.parse_jwks(data, cfg.algorithm)  # every key must fit: refuse rather than pin a surprise
    except oidc.OidcError as exc:
        raise PinError(code=exc.code, reason="pin_keys", name=name, detail=exc.message) from None
    fetched = json.loads(data)
    path = policy_path.parent / cfg.jwks_file
    pinned: dict[str, Any] | None = None
    if path.exists():
        try:
            pinned = json.loads(path.read_bytes())
        except (OSError, ValueError):
            pinned = None  # an unreadable old file holds no keys worth keeping
    merged = merge({"keys": fetched["keys"]}, pinned, now)
    oidc.parse_jwks(json.dumps(merged.document).encode(), cfg.algorithm)
    if write:
        _write(path, json.dumps(merged.document, indent=2, sort_keys=True) + "\n")
    return merged


def _write(path: Path, text: str) -> None:
    from keyturn.signer.pin_groups import write_atomically

    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.close(fd)
    write_atomically(str(path), text)
