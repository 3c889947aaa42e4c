"""``keyturn policy pin-oidc-keys``: discovery checks and key rotation (pure merge; fetch replaced)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from keyturn.emulator.oidc import IssuerKey
from keyturn.signer.pin_oidc import RETIRED_KEEP, PinError, merge, pin_issuer
from keyturn.signer.policy import OidcIssuer

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
A, B = IssuerKey.generate(), IssuerKey.generate()
CFG = OidcIssuer(
    issuer="https://token.example/gh",
    audience="aud",
    jwks_file="gh.jwks.json",
    algorithm="RS256",
    kind="github",
)


def _jwks(*keys: IssuerKey) -> dict[str, object]:
    return {"keys": [k.public_jwk() for k in keys]}


def test_a_rotated_key_stays_pinned_for_the_longest_token_lifetime_then_goes() -> None:
    first = merge(_jwks(A), None, NOW)
    assert first.added == (A.kid,)
    rotated = merge(_jwks(B), first.document, NOW)
    assert {k["kid"] for k in rotated.document["keys"]} == {A.kid, B.kid}
    assert rotated.retired == (A.kid,)
    later = merge(_jwks(B), rotated.document, NOW + RETIRED_KEEP - timedelta(seconds=1))
    assert A.kid in {k["kid"] for k in later.document["keys"]}
    gone = merge(_jwks(B), later.document, NOW + RETIRED_KEEP)
    assert gone.dropped == (A.kid,)
    assert [k["kid"] for k in gone.document["keys"]] == [B.kid]


def _fetcher(discovery: dict[str, object], jwks: dict[str, object]) -> object:
    def fetch(url: str, what: str, limit: int) -> bytes:
        return json.dumps(discovery if url.endswith("openid-configuration") else jwks).encode()

    return fetch


def test_pin_writes_the_file_and_refuses_another_issuers_document(tmp_path: Path) -> None:
    policy = tmp_path / "keyturn.toml"
    good = {"issuer": CFG.issuer, "jwks_uri": "https://token.example/gh/jwks"}
    pin_issuer("github", CFG, policy, NOW, fetch=_fetcher(good, _jwks(A)))  # type: ignore[arg-type]
    written = json.loads((tmp_path / "gh.jwks.json").read_text())
    assert [k["kid"] for k in written["keys"]] == [A.kid]
    evil = {**good, "issuer": "https://evil.example"}
    with pytest.raises(PinError) as exc:
        pin_issuer("github", CFG, policy, NOW, fetch=_fetcher(evil, _jwks(B)))  # type: ignore[arg-type]
    assert exc.value.code == "oidc_discovery"
    hs = {"keys": [{**B.public_jwk(), "alg": "HS256"}]}
    with pytest.raises(PinError):
        pin_issuer("github", CFG, policy, NOW, fetch=_fetcher(good, hs))  # type: ignore[arg-type]
    assert json.loads((tmp_path / "gh.jwks.json").read_text()) == written  # nothing written on refusal
