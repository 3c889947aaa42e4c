"""An OIDC issuer emulator: GitHub Actions and GitLab CI ID tokens for tests and ``keyturn dev``.

One process serves two issuers, ``<public base>/github`` and ``<public base>/gitlab`` (the ``iss`` values,
which need not be where the emulator listens: a policy's issuers are ``https://`` names). Under each:

- ``GET /<kind>/.well-known/openid-configuration``: the discovery document (``issuer``, ``jwks_uri``, ...);
- ``GET /<kind>/jwks``: the published keys (the current key and, after a rotation, the previous one);
- ``GET /<kind>/token?audience=…`` with ``Authorization: bearer <runtime token>``: GitHub's runtime token
  request (``$ACTIONS_ID_TOKEN_REQUEST_URL&audience=…`` with ``$ACTIONS_ID_TOKEN_REQUEST_TOKEN``), answered
  ``{"value": "<jwt>"}`` — for GitLab the same call stands in for the ``id_tokens`` variable;
- ``POST /_oidc/job`` sets the job the next tokens describe (repository, sha, environment, ...);
- ``POST /_oidc/faults`` sets the fault switches: ``rotate_key`` (a new key signs and is published, the old
  one stays published), ``expired`` (tokens already expired), ``wrong_audience``; ``POST /_oidc/reset``.

Claim sets follow the platforms' documented ID tokens: GitHub's ``repository``, ``sha``, ``ref``,
``job_workflow_ref``, ``environment``, ``actor``, ``run_id``, ``run_attempt``, ... and GitLab's
``project_path``, ``sha``, ``ref``/``ref_type``/``ref_path``, ``ci_config_ref_uri``, ``environment``,
``user_login``, ``pipeline_id``, .... Signing is RS256 with the emulator's own RSA keys (``cryptography``,
a dev tool dependency here as in the signer). A development tool: never an issuer for anything real.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from keyturn.signer.oidc import b64url_encode

Kind = Literal["github", "gitlab"]
KINDS: tuple[Kind, ...] = ("github", "gitlab")
DEFAULT_PUBLIC_BASE = "https://oidc.keyturn.test"
DEFAULT_RUNTIME_TOKEN = "keyturn-emulator-runtime-token"  # noqa: S105 - the emulator's fixed dev value
TOKEN_LIFETIME = 300  # seconds, as short-lived as the platforms' own


def _uint(value: int) -> str:
    return b64url_encode(value.to_bytes((value.bit_length() + 7) // 8, "big"))


@dataclass
class IssuerKey:
    """An RSA key the emulator signs with; ``kid`` is the RFC 7638 thumbprint of its public JWK."""

    private: rsa.RSAPrivateKey = field(repr=False)
    kid: str

    @classmethod
    def generate(cls) -> IssuerKey:
        """A fresh 2048-bit key."""
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        nums = private.public_key().public_numbers()
        members = json.dumps({"e": _uint(nums.e), "kty": "RSA", "n": _uint(nums.n)}, separators=(",", ":"))
        return cls(private, b64url_encode(hashlib.sha256(members.encode()).digest()))

    def public_jwk(self) -> dict[str, str]:
        """The public JWK, as an issuer publishes it."""
        nums = self.private.public_key().public_numbers()
        return {
            "kty": "RSA",
            "kid": self.kid,
            "alg": "RS256",
            "use": "sig",
            "n": _uint(nums.n),
            "e": _uint(nums.e),
        }

    def sign(self, header: Mapping[str, Any], claims: Mapping[str, Any]) -> str:
        """A compact JWS, RS256."""
        return sign_rs256(self.private, header, claims)


def encode_part(obj: Mapping[str, Any]) -> str:
    """One base64url JSON part of a compact JWS."""
    return b64url_encode(json.dumps(obj, separators=(",", ":")).encode())


def sign_rs256(private: rsa.RSAPrivateKey, header: Mapping[str, Any], claims: Mapping[str, Any]) -> str:
    """``header.payload.signature`` signed RS256 with ``private`` (whatever ``header`` says)."""
    signing_input = f"{encode_part(header)}.{encode_part(claims)}"
    sig = private.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64url_encode(sig)}"


@dataclass
class Job:
    """The CI job the next tokens describe."""

    repository: str = "acme/web"
    sha: str = "4f8a2cd91ef7a2c7f3a5f0aa12d93b33f2d40e17"
    environment: str | None = "production"
    ref: str = "refs/heads/main"
    workflow: str = ".github/workflows/deploy.yml"
    actor: str = "alice"
    triggering_actor: str | None = None  # who started this attempt (a re-run); None: the actor
    run_id: int = 1234567890
    run_attempt: int = 1
    pipeline_id: int = 987654

    def update(self, values: Mapping[str, Any]) -> None:
        """Set the given attributes; unknown names are a ``ValueError``."""
        for name, value in values.items():
            if name not in self.__dataclass_fields__:
                raise ValueError(f"unknown job field {name!r}")
            setattr(self, name, value)


def github_claims(
    job: Job, iss: str, audience: str, now: int, lifetime: int = TOKEN_LIFETIME
) -> dict[str, Any]:
    """GitHub Actions' documented ID token claims for ``job``."""
    owner = job.repository.split("/")[0]
    sub_tail = f"environment:{job.environment}" if job.environment else f"ref:{job.ref}"
    claims: dict[str, Any] = {
        "jti": secrets.token_hex(16),
        "sub": f"repo:{job.repository}:{sub_tail}",
        "aud": audience,
        "ref": job.ref,
        "sha": job.sha,
        "repository": job.repository,
        "repository_owner": owner,
        "repository_owner_id": "1001",
        "repository_id": "2002",
        "repository_visibility": "private",
        "run_id": str(job.run_id),
        "run_number": "7",
        "run_attempt": str(job.run_attempt),
        "actor": job.actor,
        "actor_id": "3003",
        "triggering_actor": job.triggering_actor or job.actor,
        "workflow": "deploy",
        "workflow_ref": f"{job.repository}/{job.workflow}@{job.ref}",
        "workflow_sha": job.sha,
        "job_workflow_ref": f"{job.repository}/{job.workflow}@{job.ref}",
        "job_workflow_sha": job.sha,
        "head_ref": "",
        "base_ref": "",
        "event_name": "push",
        "ref_type": "branch",
        "ref_protected": "true",
        "runner_environment": "github-hosted",
        "iss": iss,
        "nbf": now - 5,
        "exp": now + lifetime,
        "iat": now,
    }
    if job.environment:
        claims["environment"] = job.environment
    return claims


def gitlab_claims(
    job: Job, iss: str, audience: str, now: int, lifetime: int = TOKEN_LIFETIME
) -> dict[str, Any]:
    """GitLab CI's documented ``id_tokens`` claims for ``job``."""
    host = iss.split("://", 1)[-1].split("/", 1)[0]
    kind, _, name = job.ref.removeprefix("refs/").partition("/")
    ref_type = {"heads": "branch", "tags": "tag"}.get(kind, "branch")
    claims: dict[str, Any] = {
        "namespace_id": "72",
        "namespace_path": job.repository.split("/")[0],
        "project_id": "20",
        "project_path": job.repository,
        "user_id": "5",
        "user_login": job.actor,
        "user_email": f"{job.actor}@example.test",
        "user_access_level": "maintainer",
        "pipeline_id": str(job.pipeline_id),
        "pipeline_source": "push",
        "job_id": "302",
        "ref": name,
        "ref_type": ref_type,
        "ref_path": job.ref,
        "ref_protected": "true",
        "runner_id": 1,
        "runner_environment": "gitlab-hosted",
        "sha": job.sha,
        "project_visibility": "private",
        "ci_config_ref_uri": f"{host}/{job.repository}//{job.workflow}@{job.ref}",
        "ci_config_sha": job.sha,
        "jti": secrets.token_hex(16),
        "iss": iss,
        "iat": now,
        "nbf": now - 5,
        "exp": now + lifetime,
        "sub": f"project_path:{job.repository}:ref_type:{ref_type}:ref:{name}",
        "aud": audience,
    }
    if job.environment:
        claims["environment"] = job.environment
        claims["environment_protected"] = "true"
        claims["deployment_tier"] = "production"
    return claims


@dataclass
class Faults:
    """Fault switches."""

    expired: bool = False
    wrong_audience: bool = False


@dataclass
class Issuer:
    """One emulated issuer: its keys (published and current) and what it signs."""

    kind: Kind
    iss: str
    current: IssuerKey
    published: list[IssuerKey]

    def rotate(self) -> None:
        """A new key signs from now on; the previous ones stay published (as the platforms do)."""
        self.current = IssuerKey.generate()
        self.published.insert(0, self.current)

    def jwks(self) -> dict[str, Any]:
        """The published key set."""
        return {"keys": [k.public_jwk() for k in self.published]}


class OidcEmulator:
    """The emulator's state: two issuers, the job, the faults; ``now`` is a parameter of minting."""

    def __init__(
        self, public_base: str = DEFAULT_PUBLIC_BASE, runtime_token: str = DEFAULT_RUNTIME_TOKEN
    ) -> None:
        self.public_base = public_base.rstrip("/")
        self.runtime_token = runtime_token
        self.issuers: dict[str, Issuer] = {}
        self.reset()

    def reset(self) -> None:
        """Back to the first key of each issuer (made once, so files pinned from it stay valid), the
        default job and no faults: a rotation is undone."""
        if not self.issuers:
            for kind in KINDS:
                key = IssuerKey.generate()
                self.issuers[kind] = Issuer(kind, f"{self.public_base}/{kind}", key, [key])
        for issuer in self.issuers.values():
            first = issuer.published[-1]
            issuer.current, issuer.published = first, [first]
        self.job = Job()
        self.faults = Faults()

    def mint(self, kind: str, audience: str, now: int) -> str:
        """A token for the current job from ``kind``'s issuer, with the fault switches applied."""
        issuer = self.issuers[kind]
        aud = "https://not-keyturn.example" if self.faults.wrong_audience else audience
        at = now - 2 * TOKEN_LIFETIME if self.faults.expired else now
        make = github_claims if kind == "github" else gitlab_claims
        claims = make(self.job, issuer.iss, aud, at)
        header = {"typ": "JWT", "alg": "RS256", "kid": issuer.current.kid}
        return issuer.current.sign(header, claims)


def create_oidc_app(emulator: OidcEmulator, clock: Any = time.time) -> Starlette:
    """The ASGI app serving ``emulator`` (routes in the module docstring)."""

    def _issuer(request: Request) -> Issuer:
        kind = request.path_params["kind"]
        if kind not in emulator.issuers:
            raise _NotFound
        return emulator.issuers[kind]

    async def discovery(request: Request) -> Response:
        try:
            issuer = _issuer(request)
        except _NotFound:
            return JSONResponse({"error": "not_found"}, 404)
        base = str(request.base_url).rstrip("/") + f"/{issuer.kind}"
        return JSONResponse(
            {
                "issuer": issuer.iss,
                "jwks_uri": f"{base}/jwks",
                "subject_types_supported": ["public", "pairwise"],
                "response_types_supported": ["id_token"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "claims_supported": [
                    "sub",
                    "aud",
                    "exp",
                    "iat",
                    "iss",
                    "jti",
                    "nbf",
                    "ref",
                    "sha",
                    "repository",
                ],
                "scopes_supported": ["openid"],
            }
        )

    async def jwks(request: Request) -> Response:
        try:
            return JSONResponse(_issuer(request).jwks())
        except _NotFound:
            return JSONResponse({"error": "not_found"}, 404)

    async def token(request: Request) -> Response:
        try:
            issuer = _issuer(request)
        except _NotFound:
            return JSONResponse({"error": "not_found"}, 404)
        auth = request.headers.get("authorization", "")
        scheme, _, given = auth.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(given, emulator.runtime_token):
            return JSONResponse({"message": "Bad credentials"}, 401)
        audience = request.query_params.get("audience")
        if not audience:
            return JSONResponse({"message": "audience is required"}, 400)
        return JSONResponse({"value": emulator.mint(issuer.kind, audience, int(clock()))})

    async def set_job(request: Request) -> Response:
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("a JSON object")
            emulator.job.update(body)
        except ValueError as exc:
            return JSONResponse({"error": "bad_request", "message": str(exc)}, 400)
        return JSONResponse({"ok": True})

    async def set_faults(request: Request) -> Response:
        try:
            body = await request.json()
            if not isinstance(body, dict) or not set(body) <= {"rotate_key", "expired", "wrong_audience"}:
                raise ValueError("faults are rotate_key, expired, wrong_audience")
            if any(not isinstance(v, bool) for v in body.values()):
                raise ValueError("fault switches are true or false")
        except ValueError as exc:
            return JSONResponse({"error": "bad_request", "message": str(exc)}, 400)
        if body.get("rotate_key"):
            for issuer in emulator.issuers.values():
                issuer.rotate()
        emulator.faults.expired = body.get("expired", emulator.faults.expired)
        emulator.faults.wrong_audience = body.get("wrong_audience", emulator.faults.wrong_audience)
        return JSONResponse({"ok": True})

    async def reset(request: Request) -> Response:
        emulator.reset()
        return JSONResponse({"ok": True})

    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True, "issuers": {k: i.iss for k, i in emulator.issuers.items()}})

    return Starlette(
        routes=[
            Route("/healthz", health),
            Route("/_oidc/job", set_job, methods=["POST"]),
            Route("/_oidc/faults", set_faults, methods=["POST"]),
            Route("/_oidc/reset", reset, methods=["POST"]),
            Route("/{kind}/.well-known/openid-configuration", discovery),
            Route("/{kind}/jwks", jwks),
            Route("/{kind}/token", token),
        ]
    )


class _NotFound(Exception):
    pass


def main(argv: Sequence[str] | None = None) -> int:
    """``keyturn oidc-emulator``: serve the OIDC issuer emulator until interrupted."""
    import sys

    from keyturn.emulator.__main__ import listen, serve

    p = argparse.ArgumentParser(prog="keyturn oidc-emulator", description="Run the OIDC issuer emulator.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    p.add_argument(
        "--public-base",
        default=DEFAULT_PUBLIC_BASE,
        help=f"issuer names' base (default {DEFAULT_PUBLIC_BASE})",
    )
    p.add_argument(
        "--runtime-token", default=DEFAULT_RUNTIME_TOKEN, help="the bearer token the token endpoint wants"
    )
    args = p.parse_args(argv)
    app = create_oidc_app(OidcEmulator(args.public_base, args.runtime_token))
    # Bound here, and announced only once uvicorn serves on it: `keyturn dev` pins the keys right after the
    # ready line, so the line must mean "answers now" (and --port 0 must name the port it got).
    try:
        sock = listen(args.host, args.port)
    except OSError as exc:
        print(
            f"keyturn oidc-emulator: cannot listen on {args.host}:{args.port}: {exc.strerror}",
            file=sys.stderr,
        )
        return 2
    return serve(app, sock, args.host, "oidc emulator")
