"""ID tokens for tests: genuine ones from an emulated issuer's key, and the forgeries each attack test needs.

Shared by the pure tests (tests/signer/test_oidc.py) and the end-to-end ones (tests/e2e/test_oidc.py).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

from keyturn.emulator.oidc import IssuerKey, Job, encode_part, github_claims, gitlab_claims, sign_rs256
from keyturn.signer.oidc import b64url_encode

AUDIENCE = "https://keyturn.example"
GITHUB_ISS = "https://oidc.keyturn.test/github"
GITLAB_ISS = "https://oidc.keyturn.test/gitlab"


def claims_for(kind: str, now: int, *, job: Job | None = None, **over: Any) -> dict[str, Any]:
    """The documented claim set of ``kind`` for ``job`` at ``now``, with ``over`` replacing claims."""
    make = github_claims if kind == "github" else gitlab_claims
    iss = GITHUB_ISS if kind == "github" else GITLAB_ISS
    claims = make(job or Job(), iss, AUDIENCE, now)
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not None}


def genuine(key: IssuerKey, claims: Mapping[str, Any], **header: Any) -> str:
    """A token signed RS256 by ``key``, ``kid`` naming it (``header`` overrides)."""
    return sign_rs256(key.private, {"typ": "JWT", "alg": "RS256", "kid": key.kid, **header}, claims)


def alg_none(key: IssuerKey, claims: Mapping[str, Any]) -> str:
    """``alg: none`` and an empty signature."""
    return f"{encode_part({'typ': 'JWT', 'alg': 'none', 'kid': key.kid})}.{encode_part(claims)}."


def hs256_with_public_key(key: IssuerKey, claims: Mapping[str, Any]) -> str:
    """HS256, keyed with the issuer's *public* key as the HMAC secret (the classic algorithm confusion)."""
    jwk = key.public_jwk()
    signing_input = f"{encode_part({'typ': 'JWT', 'alg': 'HS256', 'kid': key.kid})}.{encode_part(claims)}"
    secrets = [json.dumps(jwk).encode(), jwk["n"].encode()]
    sig = hmac.new(secrets[0], signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url_encode(sig)}"


def forged(claims: Mapping[str, Any], kid: str) -> str:
    """Signed by a key the issuer never published, under a published ``kid``."""
    other = IssuerKey.generate()
    return sign_rs256(other.private, {"typ": "JWT", "alg": "RS256", "kid": kid}, claims)


def jwks_json(*keys: IssuerKey) -> bytes:
    """A JWKS file holding ``keys``' public halves."""
    return json.dumps({"keys": [k.public_jwk() for k in keys]}).encode()
