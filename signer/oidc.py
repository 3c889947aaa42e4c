"""OIDC ID tokens from CI platforms (GitHub Actions, GitLab CI): strict parsing and RS256 verification.

Implements issue 11, point 1, and docs/security.md "OIDC-proven requests". Pure: bytes, issuer keys and
``now`` go in; a :class:`VerifiedToken` comes out, or an :class:`OidcError` with a stable ``code`` is raised.
The issuer keys reach the signer only from the operator-pinned JWKS files its policy names (no network, no
key from the token header, nothing from the bot); loading those files is the service's job.

Why our own JOSE parsing rather than a JWT library: the checks Keyturn needs are few and must all be strict
(duplicate JSON members refused, base64url canonical and without padding, ``alg`` fixed per issuer before
any key is touched, ``jku``/``jwk``/``x5u``/``x5c``/``crit`` refused outright). General JWT libraries accept
padding or non-canonical base64, last-wins duplicate members, and choose the algorithm from the key or the
header unless every option is set; keeping the parser here, about a hundred lines with numbered steps, is
easier to review than auditing a library's defaults. The one primitive we do not write is RSA: RS256
signatures are checked with ``cryptography`` (imported only inside :func:`_rs256_verify`, so importing this
module stays stdlib-only and the bot can use the unverified claim readers).

Steps of :func:`verify_token` (numbered in the code):

1. compact form: three base64url parts, strict JSON objects, size bounded;
2. header: ``alg`` a string, ``kid`` a string, no key-bearing or critical members;
3. ``iss`` exactly one of the policy's issuers;
4. ``alg`` equal to that issuer's configured algorithm (``none`` and ``HS*`` can never be configured);
5. ``kid`` among the issuer's pinned keys, whose ``kty``/``alg`` fit the algorithm;
6. the RS256 signature over ``header.payload``;
7. ``aud`` equal to the issuer's configured audience;
8. ``exp``/``nbf``/``iat`` integers, checked against ``now`` with a small skew (when asked).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from keyturn.signer.errors import KeyturnError
from keyturn.signer.receipt import b64url_encode, no_duplicate_members
from keyturn.signer.words import Fact

__all__ = [
    "ALGORITHMS",
    "MAX_TOKEN_BYTES",
    "TOKEN_SKEW",
    "CiIdentity",
    "Issuer",
    "Jwks",
    "OidcError",
    "RsaKey",
    "VerifiedToken",
    "b64url_decode",
    "b64url_encode",
    "identity_from_claims",
    "parse_compact",
    "parse_jwks",
    "unverified_claims",
    "verify_token",
    "workflow_path",
]

Kind = Literal["github", "gitlab"]
ALGORITHMS = frozenset({"RS256"})  # what an issuer may be configured with; never "none", never HS*
MAX_TOKEN_BYTES = 16 * 1024
MAX_JWKS_BYTES = 256 * 1024
TOKEN_SKEW = 60  # seconds of clock difference tolerated on exp/nbf/iat
MAX_TOKEN_LIFETIME = 24 * 3600  # exp - iat; GitLab's tokens live as long as the job's timeout allows
MIN_RSA_BITS = 2048
# Header members that would let a token name its own key or demand processing we do not do.
_FORBIDDEN_HEADER = frozenset({"jku", "jwk", "x5u", "x5c", "crit", "b64", "zip", "enc"})
_B64URL = re.compile(r"\A[A-Za-z0-9_-]*\Z")
_DIGITS = re.compile(r"\A[0-9]{1,20}\Z")
_LOGIN = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")


class OidcError(KeyturnError):
    """An ID token or an issuer key set was refused. ``code`` names the check (``oidc_expired``, ...).

    ``fields`` maps a request-body field to what is wrong with it when a body disagrees with its token.
    """

    def __init__(
        self, code: str, reason: str, *, fields: Mapping[str, str] | None = None, **facts: Fact
    ) -> None:
        super().__init__(code=code, facts={"reason": reason, **facts})
        self.fields = dict(fields or {})


# --- base64url and JSON, strictly ---------------------------------------------------------------------------


def b64url_decode(text: str, what: str = "value", code: str = "oidc_malformed") -> bytes:
    """Decode base64url without padding, refusing anything but its one canonical spelling.

    Padding, the standard alphabet's ``+``/``/``, whitespace, an impossible length and non-zero trailing bits
    are all refused, so one byte string has exactly one accepted encoding.
    """
    if not _B64URL.match(text) or len(text) % 4 == 1:
        raise OidcError(code, "not_base64url", what=what)
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise OidcError(code, "not_base64url", what=what) from None
    if b64url_encode(raw) != text:  # trailing bits set: a second spelling of the same bytes
        raise OidcError(code, "not_canonical_base64url", what=what)
    return raw


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_object(raw: bytes, what: str, code: str = "oidc_malformed") -> dict[str, Any]:
    try:
        obj = json.loads(
            raw.decode("utf-8"), object_pairs_hook=no_duplicate_members, parse_constant=_reject_constant
        )
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise OidcError(code, "not_strict_json", what=what) from None
    if not isinstance(obj, dict):
        raise OidcError(code, "not_object", what=what)
    return obj


# --- the compact form ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompactJws:
    """A JWS in compact form, parsed but not verified."""

    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes = field(repr=False)
    signature: bytes = field(repr=False)


def parse_compact(token: str) -> CompactJws:
    """Parse ``header.payload.signature`` strictly (step 1 and 2); raises ``oidc_malformed``."""
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_BYTES or not token.isascii():
        raise OidcError("oidc_malformed", "token_size", limit=MAX_TOKEN_BYTES)
    parts = token.split(".")
    if len(parts) != 3:
        raise OidcError("oidc_malformed", "token_parts")
    header = _json_object(b64url_decode(parts[0], "token header"), "token header")
    claims = _json_object(b64url_decode(parts[1], "token payload"), "token payload")
    signature = b64url_decode(parts[2], "token signature")
    # 2. The header names an algorithm and a key id, and nothing that would bring its own key.
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise OidcError("oidc_malformed", "no_alg")
    bad = sorted(_FORBIDDEN_HEADER & header.keys())
    if bad:
        raise OidcError("oidc_bad_header", "member", name=repr(bad[0]))
    typ = header.get("typ")
    if typ is not None and typ != "JWT":
        raise OidcError("oidc_bad_header", "typ")
    return CompactJws(header, claims, f"{parts[0]}.{parts[1]}".encode("ascii"), signature)


def unverified_claims(token: str) -> dict[str, Any]:
    """The payload of a strictly parsed token, *signature not checked*. For the bot, which renders the card
    the signer will expect, and for the client filling a request body; never for a decision."""
    return parse_compact(token).claims


# --- issuer keys --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RsaKey:
    """One RSA public key from an issuer's JWKS."""

    kid: str
    n: int = field(repr=False)
    e: int

    @property
    def size_bytes(self) -> int:
        """Modulus length in bytes: the exact length of every RS256 signature under this key."""
        return (self.n.bit_length() + 7) // 8


@dataclass(frozen=True)
class Jwks:
    """An issuer's signing keys by ``kid``."""

    keys: Mapping[str, RsaKey]


def _uint(value: object, what: str) -> int:
    if not isinstance(value, str):
        raise OidcError("bad_oidc_keys", "uint_type", what=what)
    raw = b64url_decode(value, what, "bad_oidc_keys")
    if not raw or raw[0] == 0:  # RFC 7518 §6.3.1: no leading zero octets
        raise OidcError("bad_oidc_keys", "uint_form", what=what)
    return int.from_bytes(raw, "big")


def parse_jwks(data: bytes, algorithm: str) -> Jwks:
    """Parse a pinned JWKS strictly for ``algorithm`` (RS256): every key ``kty: RSA``, a unique ``kid``,
    ``alg`` (when present) equal to ``algorithm``, ``use`` (when present) ``sig``, a modulus of at least
    2048 bits. A key for anything else is refused rather than skipped: a pinned file is the operator's
    statement, and a surprise in it should stop the signer, not be ignored. Raises ``bad_oidc_keys``.
    """
    if algorithm not in ALGORITHMS:
        raise OidcError("bad_oidc_keys", "algorithm", algorithm=repr(algorithm))
    if len(data) > MAX_JWKS_BYTES:
        raise OidcError("bad_oidc_keys", "too_large")
    obj = _json_object(data, "key set", "bad_oidc_keys")
    raw_keys = obj.get("keys")
    if not isinstance(raw_keys, list) or not raw_keys:
        raise OidcError("bad_oidc_keys", "no_keys")
    keys: dict[str, RsaKey] = {}
    for i, jwk in enumerate(raw_keys):
        if not isinstance(jwk, dict):
            raise OidcError("bad_oidc_keys", "key_not_object", index=i)
        kid = jwk.get("kid")
        if not isinstance(kid, str) or not 1 <= len(kid) <= 256 or not kid.isprintable():
            raise OidcError("bad_oidc_keys", "no_kid", index=i)
        if kid in keys:
            raise OidcError("bad_oidc_keys", "kid_twice", kid=repr(kid))
        if jwk.get("kty") != "RSA":
            raise OidcError("bad_oidc_keys", "kty", kid=repr(kid), kty=repr(jwk.get("kty")))
        if "alg" in jwk and jwk["alg"] != algorithm:
            raise OidcError(
                "bad_oidc_keys", "key_alg", kid=repr(kid), alg=repr(jwk["alg"]), algorithm=algorithm
            )
        if "use" in jwk and jwk["use"] != "sig":
            raise OidcError("bad_oidc_keys", "not_signing", kid=repr(kid))
        if "d" in jwk or "p" in jwk:
            raise OidcError("bad_oidc_keys", "private", kid=repr(kid))
        n, e = _uint(jwk.get("n"), f"{kid}.n"), _uint(jwk.get("e"), f"{kid}.e")
        if n.bit_length() < MIN_RSA_BITS or e < 3 or e % 2 == 0:
            raise OidcError("bad_oidc_keys", "weak", kid=repr(kid))
        keys[kid] = RsaKey(kid, n, e)
    return Jwks(keys)


@dataclass(frozen=True)
class Issuer:
    """One ``[oidc.issuers.<name>]`` of the policy, with its pinned keys."""

    name: str
    issuer: str
    audience: str
    algorithm: str
    kind: Kind
    keys: Jwks


def _rs256_verify(key: RsaKey, signing_input: bytes, signature: bytes) -> bool:
    # The only place that touches the RSA library; imported here so this module's import stays stdlib-only.
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    if len(signature) != key.size_bytes:
        return False
    public = rsa.RSAPublicNumbers(key.e, key.n).public_key()
    try:
        public.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


# --- verification -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifiedToken:
    """A token whose signature, issuer and audience were checked (and times, when asked)."""

    issuer: Issuer
    claims: Mapping[str, Any]
    issued_at: int
    expires_at: int


def _int_claim(claims: Mapping[str, Any], name: str) -> int:
    value = claims.get(name)
    if type(value) is not int or not 0 <= value < 2**40:  # bool is an int subclass; floats are refused
        raise OidcError("oidc_malformed", "seconds", name=repr(name))
    return value


def verify_token(
    token: str,
    issuers: Mapping[str, Issuer],
    now: datetime | None,
    *,
    skew: int = TOKEN_SKEW,
) -> VerifiedToken:
    """Verify ``token`` against the policy's issuers (steps 1-8 of the module docstring).

    ``now`` is the time to check ``exp``/``nbf``/``iat`` against; ``None`` skips those three checks (the
    signer does so at signing time, when the request's lifetime, counted from ``iat``, governs instead).
    """
    # 1-2. Strict compact form and header.
    jws = parse_compact(token)
    claims = jws.claims
    # 3. The issuer is one the policy names, by exact string.
    iss = claims.get("iss")
    issuer = next((i for i in issuers.values() if isinstance(iss, str) and i.issuer == iss), None)
    if issuer is None:
        raise OidcError("oidc_unknown_issuer", "issuer")
    # 4. The algorithm is the one this issuer uses: a token cannot choose it (no "none", no HS256 keyed
    #    with the public key).
    if jws.header["alg"] != issuer.algorithm:
        raise OidcError("oidc_bad_alg", "alg", algorithm=issuer.algorithm)
    # 5. The key is one of the issuer's pinned keys.
    kid = jws.header.get("kid")
    key = issuer.keys.keys.get(kid) if isinstance(kid, str) else None
    if key is None:
        raise OidcError("oidc_unknown_kid", "kid")
    # 6. The signature.
    if not _rs256_verify(key, jws.signing_input, jws.signature):
        raise OidcError("oidc_bad_signature", "signature")
    # 7. The audience is ours, exactly (a one-element list is the same statement).
    aud = claims.get("aud")
    if isinstance(aud, list) and len(aud) == 1:
        aud = aud[0]
    if aud != issuer.audience:
        raise OidcError("oidc_wrong_audience", "audience")
    # 8. Times: whole seconds; a lifetime that makes sense; inside it at ``now`` give or take ``skew``.
    exp = _int_claim(claims, "exp")
    iat = _int_claim(claims, "iat")
    nbf = _int_claim(claims, "nbf") if "nbf" in claims else None
    if not iat < exp <= iat + MAX_TOKEN_LIFETIME:
        raise OidcError("oidc_malformed", "lifetime")
    if now is not None:
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        t = now.timestamp()
        if t >= exp + skew:
            raise OidcError("oidc_expired", "expired")
        if (nbf is not None and nbf > t + skew) or iat > t + skew:
            raise OidcError("oidc_not_yet_valid", "not_yet_valid")
    return VerifiedToken(issuer, claims, iat, exp)


# --- claims -> what a request may ask for -------------------------------------------------------------------


@dataclass(frozen=True)
class CiIdentity:
    """What a verified token proves about the job, mapped to Keyturn's terms (docs/ci.md, "What each
    claim binds")."""

    repo: str
    sha: str
    workflow: str
    environment: str | None
    requester: str
    ref: str
    subject: str
    run: str
    run_url: str
    # GitHub: ``triggering_actor`` when it is not ``actor`` (someone re-ran another's run): who asked for
    # *this* attempt, refused as an approver of it like the requester (``actor`` started the first attempt).
    triggered_by: str | None = None
    # GitHub ``event_name`` / GitLab ``pipeline_source``: the event that started the job (policy ``events``).
    event: str | None = None


def _str_claim(claims: Mapping[str, Any], name: str) -> str:
    value = claims.get(name)
    if not isinstance(value, str) or not value or len(value) > 1024 or not value.isprintable():
        raise OidcError("oidc_claim_missing", "claim", name=repr(name))
    return value


def workflow_path(ref_uri: str, repo: str, separator: str, claim: str) -> str:
    """``<repo><separator><path>@<ref>`` -> ``<path>``; from another repository, ``<other repo><sep><path>``.

    GitHub's ``job_workflow_ref`` is ``owner/repo/.github/workflows/x.yml@refs/heads/main`` (separator
    ``/``); GitLab's ``ci_config_ref_uri`` is ``host/group/project//.gitlab-ci.yml@refs/heads/main``
    (separator ``//``, after the host). A workflow from another repository (a reusable workflow, an
    included config) keeps that repository in its name, so it can never pass for this repository's own:
    on GitHub an own workflow starts with ``.github/``, which no ``owner/repo`` does; on GitLab a config
    file may live at any path, so the other project stays separated by ``//``, which no file path holds
    (``group/ci//deploy.yml`` is project ``group/ci``'s file, ``group/ci/deploy.yml`` this project's own).
    """
    before, at, _ref = ref_uri.rpartition("@")
    if not at or not before:
        raise OidcError("oidc_claim_missing", "no_ref", claim=repr(claim))
    if separator == "//":
        source, sep, path = before.partition("//")
        if not sep or not path:
            raise OidcError("oidc_claim_missing", "no_path", claim=repr(claim))
        source = source.split("/", 1)[1] if "/" in source else ""  # drop the host
    else:
        owner, _, rest = before.partition("/")
        name, _, path = rest.partition("/")
        source = f"{owner}/{name}"
        if not path:
            raise OidcError("oidc_claim_missing", "no_workflow", claim=repr(claim))
    return path if source == repo else f"{source}{separator}{path}"


def identity_from_claims(kind: Kind, web_base: str, claims: Mapping[str, Any]) -> CiIdentity:
    """Map a verified token's claims to repository, commit, workflow, environment, requester and run.

    GitHub: ``repository``, ``sha``, ``job_workflow_ref``, ``environment``, ``actor``, ``ref``,
    ``run_id``/``run_attempt``. GitLab: ``project_path``, ``sha``, ``ci_config_ref_uri``, ``environment``,
    ``user_login``, ``ref_path`` (or ``ref_type``+``ref``), ``pipeline_id``. ``web_base`` is where the
    platform shows runs (``https://github.com``, or the GitLab instance). Raises ``oidc_claim_missing``.
    """
    subject = _str_claim(claims, "sub")
    sha = _str_claim(claims, "sha")
    env = claims.get("environment")
    environment = env if isinstance(env, str) and env else None
    if kind == "github":
        repo = _str_claim(claims, "repository")
        workflow = workflow_path(_str_claim(claims, "job_workflow_ref"), repo, "/", "job_workflow_ref")
        actor = _str_claim(claims, "actor")
        ref = _str_claim(claims, "ref")
        run_id, attempt = _str_claim(claims, "run_id"), _str_claim(claims, "run_attempt")
        if not _DIGITS.match(run_id) or not _DIGITS.match(attempt):
            raise OidcError("oidc_claim_missing", "run_numbers")
        run = f"{run_id}/{attempt}"
        run_url = f"{web_base}/{repo}/actions/runs/{run_id}/attempts/{attempt}"
        trigger = claims.get("triggering_actor", actor)
        if not isinstance(trigger, str) or not _LOGIN.match(trigger):
            raise OidcError("oidc_claim_missing", "login", claim="triggering_actor")
        triggered_by = f"github:{trigger}" if trigger != actor else None
    else:
        repo = _str_claim(claims, "project_path")
        workflow = workflow_path(_str_claim(claims, "ci_config_ref_uri"), repo, "//", "ci_config_ref_uri")
        actor = _str_claim(claims, "user_login")
        ref_path = claims.get("ref_path")
        if isinstance(ref_path, str) and ref_path.startswith("refs/"):
            ref = ref_path
        else:
            ref_dir = {"branch": "heads", "tag": "tags"}.get(str(claims.get("ref_type")))
            if ref_dir is None:
                raise OidcError("oidc_claim_missing", "claim", name="'ref_type'")
            ref = f"refs/{ref_dir}/{_str_claim(claims, 'ref')}"
        run = _str_claim(claims, "pipeline_id")
        if not _DIGITS.match(run):
            raise OidcError("oidc_claim_missing", "pipeline_number")
        run_url = f"{web_base}/{repo}/-/pipelines/{run}"
        triggered_by = None
    if not _LOGIN.match(actor):
        raise OidcError("oidc_claim_missing", "login", claim="actor")
    event = claims.get("event_name" if kind == "github" else "pipeline_source")
    return CiIdentity(
        repo=repo,
        sha=sha,
        workflow=workflow,
        environment=environment,
        requester=f"{kind}:{actor}",
        ref=ref,
        subject=subject,
        run=run,
        run_url=run_url,
        triggered_by=triggered_by,
        event=event if isinstance(event, str) and event else None,
    )
