"""A GitHub emulator for deployment protection rules: tests and local runs (docs/github.md).

It plays the part of GitHub an App registered as a custom deployment protection rule talks to:

- **webhooks**: ``POST /_github/deliver`` sends a ``deployment_protection_rule`` (``requested``) delivery for
  a waiting run to a URL, shaped as GitHub documents it (platform facts §8.1: ``X-GitHub-Event``,
  ``X-GitHub-Delivery``, ``X-Hub-Signature-256``, ``User-Agent: GitHub-Hookshot/…``), signed with the
  webhook secret — or, on request, with a bad signature, none, a chosen delivery id or a raw body;
- **the App's API** (checked like GitHub: an RS256 App JWT against the App's public key, then installation
  tokens): ``POST /app/installations/{id}/access_tokens``, ``GET /repos/{o}/{r}/actions/runs/{id}``,
  ``GET /repos/{o}/{r}/deployments/{id}`` and the review callback ``POST
  /repos/{o}/{r}/actions/runs/{id}/deployment_protection_rule`` (``environment_name``, ``state``
  ``approved|rejected`` or none for a status comment, ``comment`` ≤ 1024 characters; ``204``);
- **control**: ``POST /_github/runs`` makes a waiting run (and its deployment), ``GET /_github/runs/{id}`` its
  state and reviews, ``POST /_github/runs/{id}/rerun`` re-runs it (a new deployment, waiting again),
  ``GET /_github/calls`` every API call recorded, ``POST /_github/faults`` the switches
  (``server_errors``/``rate_limited``: the next N API calls answer 502 / 403 rate-limited with
  ``Retry-After``; ``slow_s``: each API answer is held that long), ``POST /_github/reset``.

A development tool: it holds no secret of anything real.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import secrets
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from keyturn.signer.github_app import MAX_COMMENT, webhook_signature

DEFAULT_APP_ID = "424242"
DEFAULT_INSTALLATION = 12345678
TOKEN_LIFETIME_S = 3600  # installation tokens last an hour on GitHub
MAX_STATUS_COMMENTS = 10  # status-only comments per deployment


@dataclass
class Run:
    """A workflow run waiting on the protection rule for one environment."""

    run_id: int
    repo: str
    sha: str
    environment: str
    workflow: str
    deployment_id: int
    installation_id: int
    ref: str = "refs/heads/main"
    event: str = "push"
    sender: str = "alice"
    created_at: int = 0  # the deployment's creation (Unix seconds); set by new_run and rerun
    attempt: int = 1  # run_attempt: one more per re-run
    status: str = "waiting"  # waiting -> approved | rejected, once
    reviews: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Faults:
    """Fault switches of the API endpoints (not of the control routes)."""

    server_errors: int = 0
    rate_limited: int = 0
    slow_s: float = 0.0


def _b64url_decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def check_app_jwt(token: str, public_key: rsa.RSAPublicKey, app_id: str, now: int) -> str | None:
    """What is wrong with an App JWT (None when GitHub would take it): RS256 by the App's key, ``iss`` the
    App id, issued no later than now (60 s of drift) and expiring within 10 minutes of issue."""
    try:
        head_b64, body_b64, sig_b64 = token.split(".")
        header = json.loads(_b64url_decode(head_b64))
        claims = json.loads(_b64url_decode(body_b64))
        signature = _b64url_decode(sig_b64)
    except (ValueError, TypeError):
        return "A JSON web token could not be decoded"
    if not isinstance(header, dict) or header.get("alg") != "RS256" or not isinstance(claims, dict):
        return "'alg' must be RS256"
    try:
        public_key.verify(signature, f"{head_b64}.{body_b64}".encode(), padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return "A JSON web token could not be decoded"
    iat, exp = claims.get("iat"), claims.get("exp")
    if str(claims.get("iss")) != app_id:
        return "'Issuer' claim ('iss') must be the App id"
    if not isinstance(iat, int) or not isinstance(exp, int) or iat > now + 60 or exp <= now:
        return "'Expiration time' claim ('exp') is too far in the future or in the past"
    if exp - iat > 600:
        return "'Expiration time' claim ('exp') is too far in the future"
    return None


class GitHubEmulator:
    """The emulator's state; ``now`` is a parameter of every time-dependent decision."""

    def __init__(self, webhook_secret: str, app_public_key: rsa.RSAPublicKey, app_id: str) -> None:
        self.webhook_secret = webhook_secret
        self.app_public_key = app_public_key
        self.app_id = app_id
        self.reset()

    def reset(self) -> None:
        """No runs, tokens, calls or faults. Run and deployment ids keep counting: as on GitHub, an id is
        never reused, so a client that remembers runs across a reset cannot confuse two."""
        self.runs: dict[int, Run] = {}
        self.tokens: dict[str, tuple[int, int]] = {}  # token -> (installation id, expires at)
        self.calls: list[dict[str, Any]] = []
        self.faults = Faults()
        if not hasattr(self, "_next_run"):
            self._next_run = 9000
            self._next_deployment = 100000

    def new_run(self, spec: Mapping[str, Any]) -> Run:
        """A waiting run from ``spec`` (repo, sha, environment, workflow; optional ids, ref, event)."""
        self._next_run += 1
        self._next_deployment += 1
        run = Run(
            run_id=int(spec.get("run_id", self._next_run)),
            repo=str(spec["repo"]),
            sha=str(spec["sha"]),
            environment=str(spec["environment"]),
            workflow=str(spec.get("workflow", ".github/workflows/deploy.yml")),
            deployment_id=int(spec.get("deployment_id", self._next_deployment)),
            installation_id=int(spec.get("installation_id", DEFAULT_INSTALLATION)),
            ref=str(spec.get("ref", "refs/heads/main")),
            event=str(spec.get("event", "push")),
            created_at=int(spec.get("created_at", time.time())),
        )
        self.runs[run.run_id] = run
        return run

    def payload(self, run: Run, api_base: str) -> dict[str, Any]:
        """The ``deployment_protection_rule`` (``requested``) payload of ``run`` (platform facts §8.1)."""
        owner, name = run.repo.split("/", 1)
        return {
            "action": "requested",
            "environment": run.environment,
            "event": run.event,
            "ref": run.ref,
            "sha": run.sha,
            "deployment_callback_url": (
                f"{api_base}/repos/{run.repo}/actions/runs/{run.run_id}/deployment_protection_rule"
            ),
            "deployment": {
                "id": run.deployment_id,
                "sha": run.sha,
                "ref": run.ref.removeprefix("refs/heads/"),
                "environment": run.environment,
                "creator": {"login": run.sender, "id": 5},
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(run.created_at)),
            },
            "pull_requests": [],
            "repository": {"id": 7, "name": name, "full_name": run.repo, "owner": {"login": owner}},
            "installation": {"id": run.installation_id},
            "sender": {"login": run.sender, "id": 5},
        }

    def issue_token(self, installation_id: int, now: int) -> tuple[str, int]:
        """A fresh installation access token for ``installation_id``."""
        token = "ghs_" + secrets.token_urlsafe(27)
        self.tokens[token] = (installation_id, now + TOKEN_LIFETIME_S)
        return token, now + TOKEN_LIFETIME_S

    def token_problem(self, authorization: str, run: Run | None, now: int) -> str | None:
        """Why ``authorization`` may not act on ``run`` (None when it may)."""
        scheme, _, token = authorization.partition(" ")
        held = self.tokens.get(token) if scheme.lower() in ("token", "bearer") else None
        if held is None or held[1] <= now:
            return "Bad credentials"
        if run is not None and held[0] != run.installation_id:
            return "Resource not accessible by integration"
        return None

    def review(self, run: Run, body: object) -> tuple[int, dict[str, Any] | None]:
        """Apply a review callback body to ``run``: (HTTP status, error body or None)."""
        if not isinstance(body, dict):
            return 400, {"message": "Problems parsing JSON"}
        env, state, comment = body.get("environment_name"), body.get("state"), body.get("comment")
        if env != run.environment:
            return 422, {"message": "environment_name is not the run's waiting environment"}
        if state not in (None, "approved", "rejected"):
            return 422, {"message": "state must be approved or rejected"}
        if comment is not None and (not isinstance(comment, str) or len(comment) > MAX_COMMENT):
            return 422, {"message": f"comment must be a string of at most {MAX_COMMENT} characters"}
        if state is None:
            if comment is None:
                return 422, {"message": "comment is required without state"}
            if sum(1 for r in run.reviews if r["state"] is None) >= MAX_STATUS_COMMENTS:
                return 422, {"message": "too many status comments"}
        elif run.status != "waiting":
            return 422, {"message": f"the run is no longer waiting ({run.status})"}
        run.reviews.append({"state": state, "comment": comment, "environment_name": env})
        if state is not None:
            run.status = state
        return 204, None


def _public_key(pem: bytes) -> rsa.RSAPublicKey:
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("the App public key must be RSA")
    return key


def create_github_app(emulator: GitHubEmulator, clock: Any = time.time) -> Starlette:
    """The ASGI app serving ``emulator`` (routes in the module docstring)."""

    async def api(request: Request) -> Response:
        """Every API route: record, apply the faults, then dispatch."""
        raw = await request.body()
        # ``at`` (this process's monotonic clock) lets a test measure the caller's backoff between calls.
        call: dict[str, Any] = {"method": request.method, "path": request.url.path, "at": time.monotonic()}
        if raw:
            try:
                call["body"] = json.loads(raw)
            except ValueError:
                call["body"] = raw.decode(errors="replace")
        emulator.calls.append(call)
        faults = emulator.faults
        if faults.slow_s > 0:
            await asyncio.sleep(faults.slow_s)  # the fault itself: an answer that takes this long
        if faults.server_errors > 0:
            faults.server_errors -= 1
            call["status"] = 502
            return JSONResponse({"message": "Server Error"}, 502)
        if faults.rate_limited > 0:
            faults.rate_limited -= 1
            call["status"] = 403
            headers = {"Retry-After": "1", "X-RateLimit-Remaining": "0"}
            return JSONResponse({"message": "API rate limit exceeded"}, 403, headers=headers)
        response = _dispatch(request, raw, int(clock()))
        call["status"] = response.status_code
        return response

    def _dispatch(request: Request, raw: bytes, now: int) -> Response:
        p = request.path_params
        auth = request.headers.get("authorization", "")
        if request.url.path.startswith("/app/installations/"):
            scheme, _, jwt = auth.partition(" ")
            problem = "A JSON web token could not be decoded" if scheme.lower() != "bearer" else None
            problem = problem or check_app_jwt(jwt, emulator.app_public_key, emulator.app_id, now)
            if problem:
                return JSONResponse({"message": problem}, 401)
            token, expires = emulator.issue_token(int(p["installation"]), now)
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires))
            return JSONResponse({"token": token, "expires_at": stamp, "permissions": {}}, 201)
        repo = f"{p['owner']}/{p['repo']}"
        if "run" in p:
            run = emulator.runs.get(int(p["run"]))
        else:
            run = next((r for r in emulator.runs.values() if r.deployment_id == int(p["deployment"])), None)
        if run is None or run.repo != repo:
            problem = emulator.token_problem(auth, None, now)
            return JSONResponse({"message": problem or "Not Found"}, 401 if problem else 404)
        problem = emulator.token_problem(auth, run, now)
        if problem:
            return JSONResponse({"message": problem}, 401 if problem == "Bad credentials" else 403)
        if request.method == "POST":
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
            status, error = emulator.review(run, body)
            return Response(status_code=204) if error is None else JSONResponse(error, status)
        if "deployment" in p:
            return JSONResponse(
                {
                    "id": run.deployment_id,
                    "sha": run.sha,
                    "ref": run.ref.removeprefix("refs/heads/"),
                    "environment": run.environment,
                    "task": "deploy",
                }
            )
        return JSONResponse(
            {
                "id": run.run_id,
                "name": run.workflow.rsplit("/", 1)[-1],
                "head_sha": run.sha,
                "run_attempt": run.attempt,
                "head_branch": run.ref.removeprefix("refs/heads/"),
                "path": run.workflow,
                "event": run.event,
                "status": run.status,
                "repository": {"full_name": run.repo, "name": run.repo.split("/", 1)[1]},
            }
        )

    async def new_run(request: Request) -> Response:
        try:
            body = await request.json()
            run = emulator.new_run(body)
        except (ValueError, KeyError, TypeError) as exc:
            return JSONResponse({"error": "bad_request", "message": str(exc)}, 400)
        return JSONResponse(asdict(run))

    async def rerun(request: Request) -> Response:
        """Re-run a run: the same run id, commit and environment, a new deployment, waiting again."""
        run = emulator.runs.get(int(request.path_params["run"]))
        if run is None:
            return JSONResponse({"error": "not_found"}, 404)
        emulator._next_deployment += 1
        run.deployment_id, run.status = emulator._next_deployment, "waiting"
        run.attempt += 1
        run.created_at = int(time.time())
        return JSONResponse(asdict(run))

    async def get_run(request: Request) -> Response:
        run = emulator.runs.get(int(request.path_params["run"]))
        return JSONResponse(asdict(run)) if run else JSONResponse({"error": "not_found"}, 404)

    async def deliver(request: Request) -> Response:
        """Send a run's webhook to ``url``; answer what that URL answered."""
        import httpx

        spec = await request.json()
        run = emulator.runs.get(int(spec.get("run_id", 0)))
        if run is None or not isinstance(spec.get("url"), str):
            return JSONResponse({"error": "bad_request", "message": "run_id of a run, and url"}, 400)
        api_base = str(request.base_url).rstrip("/")
        raw = spec["raw"].encode() if isinstance(spec.get("raw"), str) else None
        body = raw if raw is not None else json.dumps(emulator.payload(run, api_base)).encode()
        delivery = str(spec.get("delivery") or uuid.uuid4())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "GitHub-Hookshot/keyturn-emulator",
            "X-GitHub-Event": str(spec.get("event", "deployment_protection_rule")),
            "X-GitHub-Delivery": delivery,
            "X-GitHub-Hook-ID": "1",
        }
        signature = spec.get("signature", "valid")
        if signature == "valid":
            headers["X-Hub-Signature-256"] = webhook_signature(emulator.webhook_secret, body)
        elif signature == "bad":
            headers["X-Hub-Signature-256"] = webhook_signature("not-the-secret", body)
        async with httpx.AsyncClient(timeout=30) as client:
            answer = await client.post(spec["url"], content=body, headers=headers)
        try:
            answered: Any = answer.json()
        except ValueError:
            answered = answer.text
        return JSONResponse({"delivery": delivery, "status": answer.status_code, "body": answered})

    async def calls(request: Request) -> Response:
        return JSONResponse({"calls": emulator.calls})

    async def set_faults(request: Request) -> Response:
        body = await request.json()
        allowed = {"server_errors", "rate_limited", "slow_s"}
        if not isinstance(body, dict) or not set(body) <= allowed:
            return JSONResponse({"error": "bad_request", "message": f"faults are {sorted(allowed)}"}, 400)
        emulator.faults = Faults(**{**asdict(emulator.faults), **body})
        return JSONResponse({"ok": True})

    async def reset(request: Request) -> Response:
        emulator.reset()
        return JSONResponse({"ok": True})

    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True, "app_id": emulator.app_id})

    run_base = "/repos/{owner}/{repo}/actions/runs/{run:int}"
    return Starlette(
        routes=[
            Route("/healthz", health),
            Route("/_github/runs", new_run, methods=["POST"]),
            Route("/_github/runs/{run:int}", get_run),
            Route("/_github/runs/{run:int}/rerun", rerun, methods=["POST"]),
            Route("/_github/deliver", deliver, methods=["POST"]),
            Route("/_github/calls", calls),
            Route("/_github/faults", set_faults, methods=["POST"]),
            Route("/_github/reset", reset, methods=["POST"]),
            Route("/app/installations/{installation:int}/access_tokens", api, methods=["POST"]),
            Route(run_base, api),
            Route(run_base + "/deployment_protection_rule", api, methods=["POST"]),
            Route("/repos/{owner}/{repo}/deployments/{deployment:int}", api),
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``keyturn github-emulator``: serve the GitHub emulator until interrupted."""
    import uvicorn

    p = argparse.ArgumentParser(prog="keyturn github-emulator", description="Run the GitHub emulator.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8766, help="port (default 8766)")
    p.add_argument(
        "--app-id", default=DEFAULT_APP_ID, help=f"the App id JWTs must name (default {DEFAULT_APP_ID})"
    )
    p.add_argument(
        "--app-public-key", required=True, help="PEM file: the App's public key (JWTs are checked)"
    )
    p.add_argument(
        "--webhook-secret-file",
        required=True,
        help="file holding the webhook secret deliveries are signed with",
    )
    args = p.parse_args(argv)
    with open(args.app_public_key, "rb") as f:
        public_key = _public_key(f.read())
    with open(args.webhook_secret_file, encoding="utf-8") as f:
        secret = f.read().strip()
    app = create_github_app(GitHubEmulator(secret, public_key, args.app_id))
    print(f"github emulator listening on http://{args.host}:{args.port}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
