"""The CI API (Starlette routes), health, readiness and metrics. Reference: docs/api.md.

Every ``/v1/requests…`` route is authenticated by the signer (design.md §6): the bot forwards the method, the
path, the raw body and the ``X-Keyturn-*`` headers and gets a yes or a no; any failure is the same bare 401.
Errors are JSON ``{"error": code, "message": ..., "fields"?: [...]}`` with a stable code, the status from the
one table ``HTTP_STATUS`` and the message from ``keyturn.signer.words``; bad input is a 4xx (an unlisted code
too), an unreachable Redis or signer a 503, and anything unexpected a 500 ``internal_error`` (logged without
request data) — never a stack trace.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any, Protocol

from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keyturn.bot.approvals import ApprovalService
from keyturn.bot.callbacks import CallbackPolicy, CallbackRefused
from keyturn.bot.metrics import Metrics
from keyturn.bot.models import REQUEST_ID_RE, DeployRequest, OriginEvidence, RequestIn, Status
from keyturn.bot.ports import Refused
from keyturn.bot.prefilter import SourceLimiter, plausible
from keyturn.bot.signer_client import signer_unavailable
from keyturn.bot.slack_token import SlackTokenCheck
from keyturn.bot.store import (
    ChangeFeed,
    LimitExceeded,
    RequestStore,
    SeenRequest,
    SignError,
    StoreUnavailable,
    owes_delivery,
)
from keyturn.signer.errors import KeyturnError
from keyturn.signer.evidence import (
    EvidenceError,
    OidcEvidence,
    check_same_oidc_job,
    origin_claim,
    parse_ci_request_body,
)
from keyturn.signer.oidc import unverified_claims
from keyturn.signer.receipt import format_time
from keyturn.signer.words import Fact, field_words

log = logging.getLogger(__name__)

MAX_WAIT_SECONDS = 60
# A long-poll re-reads the record at least this often, as a safety net should a notification be lost.
REREAD_SECONDS = 10.0


class ApiSigner(Protocol):
    """What the API asks of the signer client."""

    async def check_ci(self, method: str, path: str, body: bytes, timestamp: str, signature: str) -> None:
        """Return if the CI request is authentic and fresh; raise otherwise."""
        ...

    async def check_oidc(self, token: str, body: bytes | None) -> None:
        """Return if the OIDC token (and the body, when given) is accepted; raise otherwise."""
        ...

    async def keys(self) -> dict[str, Any]:
        """The public keyset (JWKS)."""
        ...

    async def checkpoint(self) -> dict[str, Any]:
        """The latest signed checkpoint of the audit log's head (DSSE envelope)."""
        ...

    async def health(self) -> Any:
        """Raise unless the signer answers."""
        ...


# The one table of HTTP statuses: a code's status wherever it is raised. A code not listed is a client fault
# (400, see status_of): bad input must never come back as a 5xx, so only the outages and the bot's own
# failure below are 5xx, and a test holds every code this module raises to this table and to the words.
HTTP_STATUS: dict[str, int] = {
    # the body or the query
    "malformed_body": 400,
    "bad_content_length": 400,
    "body_too_large": 413,
    "invalid_request": 422,
    "invalid_parameter": 422,
    "unknown_environment": 422,
    "oidc_body_mismatch": 422,
    "bad_origin": 422,
    # who is asking
    "unauthorized": 401,
    "ci_secret_not_allowed": 403,
    "not_an_approver": 403,
    "self_approval": 403,
    "bad_cancel": 403,
    "too_many_failures": 429,
    "too_many_pending": 429,
    "rate_limited": 429,
    # the request's state
    "unknown_request": 404,
    "replayed_request": 409,
    "not_pending": 409,
    "not_approved": 409,
    "already_approved": 409,
    "quorum_not_reached": 409,
    "reason_required": 422,
    "signing_in_progress": 409,
    "signing_failed": 409,
    "evidence_gone": 410,
    "receipt_gone": 410,
    # the GitHub webhook (bot/github.py)
    "payload_too_large": 413,
    "no_policy": 422,
    "scope_busy": 409,
    # Starlette's own
    "not_found": 404,
    "method_not_allowed": 405,
    # outages (retry later) and the bot's own failure: the only 5xx
    "signer_unavailable": 503,
    "store_unavailable": 503,
    "not_ready": 503,
    "shutting_down": 503,
    "approver_unavailable": 503,
    "approver_error": 502,
    "internal_error": 500,
}
CLIENT_FAULT = 400


def status_of(code: str, default: int = CLIENT_FAULT) -> int:
    """The HTTP status of ``code``: the table's, 403 for a refused OIDC claim or GitHub run
    (``oidc_*_not_allowed``, ``github_*_not_allowed``: families the signer may grow), else ``default`` — a
    4xx, since an unlisted code is a refusal, not an outage (``_check_oidc`` passes 401: whatever the signer
    refused a token for, it is not authenticated)."""
    if code in HTTP_STATUS:
        return HTTP_STATUS[code]
    if code.startswith(("oidc_", "github_")) and code.endswith("_not_allowed"):
        return 403
    return default


class ApiError(KeyturnError):
    """An HTTP error: a stable code and its facts (the sentence comes from ``keyturn.signer.words``, the
    status from ``HTTP_STATUS``), rendered as JSON ``{"error": code, "message": ..., "fields"?: [...]}``
    plus ``extra``."""

    def __init__(
        self,
        code: str,
        *,
        message: str | None = None,
        http_status: int | None = None,
        fields: list[dict[str, str]] | None = None,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        facts: Mapping[str, Fact] | None = None,
        **more: Fact,
    ) -> None:
        # ``message``: a sentence another part already wrote (a signer refusal relayed as it came).
        super().__init__(message, code=code, facts=facts, **more)
        self.http_status = http_status if http_status is not None else status_of(code)
        self.fields = fields
        self.extra = extra or {}
        self.headers = headers

    @classmethod
    def relay(
        cls, exc: KeyturnError, *, default: int = CLIENT_FAULT, fields: list[dict[str, str]] | None = None
    ) -> ApiError:
        """Answer with another part's refusal (the signer's, the service's): its code, facts and words."""
        status = status_of(exc.code, default)
        return cls(exc.code, message=exc.message, http_status=status, fields=fields, facts=exc.facts)

    def response(self) -> JSONResponse:
        """The JSON response for this error."""
        body: dict[str, Any] = {"error": self.code, "message": self.message}
        if self.fields is not None:
            body["fields"] = self.fields
        body.update(self.extra)
        return JSONResponse(body, status_code=self.http_status, headers=self.headers)


async def _public(fetch: Callable[[], Awaitable[dict[str, Any]]], cache_control: str) -> Response:
    """Public data the signer holds (no auth), or 503 when the signer cannot be reached."""
    try:
        document = await fetch()
    except (KeyturnError, OSError):
        raise ApiError("signer_unavailable") from None
    return JSONResponse(document, headers={"Cache-Control": cache_control})


def _replayed(seen: SeenRequest) -> ApiError:
    if seen.request_id is None:
        return ApiError("replayed_request")
    return ApiError(
        "replayed_request",
        action=seen.action,
        request_id=seen.request_id,
        extra={"requestId": seen.request_id},
    )


# The claims naming a token's repository: its issuer, and GitHub's or GitLab's name and id for it.
_REPOSITORY_CLAIMS = ("iss", "repository", "repository_id", "project_path", "project_id")


def _same_repository(origin_token: str, token: str) -> bool:
    """Whether ``token`` (verified by the signer) comes from the repository whose ``origin_token`` (verified
    when the request was made) made the request: same issuer, same repository name and id."""
    try:
        made, asks = unverified_claims(origin_token), unverified_claims(token)
    except KeyturnError:
        return False
    return isinstance(made.get("iss"), str) and all(made.get(c) == asks.get(c) for c in _REPOSITORY_CLAIMS)


def _time(dt: datetime | None) -> str | None:
    return None if dt is None else format_time(dt)


def request_view(req: DeployRequest, base_url: str, error: SignError | None = None) -> dict[str, Any]:
    """The public JSON shape of a request (``GET /v1/requests/{id}``)."""
    link = f"{base_url}/v1/requests/{req.id}"
    return {
        "requestId": req.id,
        "status": req.status.value,
        "scope": req.scope.model_dump(),
        "requester": req.requester,
        "ref": req.ref,
        "runUrl": req.run_url,
        "title": req.title,
        "createdAt": _time(req.created_at),
        "expiresAt": _time(req.expires_at),
        "requiredApprovals": req.required_approvals,
        "approvalsCount": len(req.approvals),
        "approvals": [{"userId": a.user_id, "email": a.email, "at": _time(a.at)} for a in req.approvals],
        "decidedBy": req.decided_by,
        "decidedAt": _time(req.decided_at),
        "denyReason": req.deny_reason,
        "receiptId": req.receipt_id,
        "receiptExpiresAt": _time(req.receipt_expires_at),
        "card": None if req.card is None else {"channel": req.card.channel, "ts": req.card.ts},
        "cardError": req.card_error,
        "error": None
        if error is None
        else {"code": error.code, "message": error.message, "at": _time(error.at)},
        "version": req.version,
        "links": {"self": link, "receipt": f"{link}/receipt", "cancel": f"{link}/cancel"},
    }


def _client(request: Request) -> str:
    """The client's address as the server saw it (behind a proxy: from its forwarded headers, if trusted)."""
    return request.client.host if request.client is not None else ""


def _field_list(fields: object, message: str) -> list[dict[str, str]]:
    if isinstance(fields, dict) and fields:
        return [{"field": str(k), "message": str(v)} for k, v in fields.items()]
    return [{"field": "body", "message": message}]


def _fields_from_validation(exc: ValidationError) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    seen: set[str] = set()
    for err in exc.errors(include_url=False, include_input=False):
        name = ".".join(str(p) for p in err["loc"]) or "body"
        if name in seen:
            continue
        seen.add(name)
        msg = "required" if err["type"] == "missing" else str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        out.append({"field": name, "message": msg})
    return out


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refusing (413) anything over ``limit`` bytes without reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise ApiError("body_too_large", limit=limit)
        except ValueError:
            raise ApiError("bad_content_length") from None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError("body_too_large", limit=limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _int_param(request: Request, name: str, low: int, high: int) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        facts: dict[str, Fact] = {"name": name, "low": low, "high": high}
        field = {"field": name, "message": field_words("invalid_parameter", facts)}
        raise ApiError("invalid_parameter", fields=[field], facts=facts)
    return value


def _ci_evidence(request: Request, body: bytes, timestamp: str, signature: str) -> OriginEvidence:
    """A MAC-signed CI call exactly as received, kept as evidence the signer can check again."""
    return OriginEvidence(
        kind="ci",
        body=base64.b64encode(body).decode("ascii"),
        timestamp=timestamp,
        signature=signature,
        method=request.method,
        path=request.url.path,
    )


class Api:
    """The CI API's handlers and their dependencies."""

    def __init__(
        self,
        service: ApprovalService,
        store: RequestStore,
        signer: ApiSigner,
        feed: ChangeFeed,
        metrics: Metrics,
        *,
        base_url: str,
        max_body: int = 64 * 1024,
        callback_policy: CallbackPolicy | None = None,
        sources: SourceLimiter | None = None,
    ) -> None:
        self.service = service
        self.callback_policy = callback_policy or CallbackPolicy()  # strict unless told otherwise
        # Failed authentications per client address, refused before the signer once a source has too many.
        # None (unit tests): no per-source limit; the bot always passes one built from its settings.
        self.sources = sources or SourceLimiter.off()
        self.store = store
        self.signer = signer
        self.feed = feed
        self.metrics = metrics
        self.base_url = base_url.rstrip("/")
        self.max_body = max_body
        # Set by bot/server.py: the start-time check of the Slack token, reported by /readyz.
        self.slack_token: SlackTokenCheck | None = None
        # Set when the server begins to shut down (SIGTERM): long-polls answer at once rather than hold the
        # connection until uvicorn's grace runs out and it cancels them (a traceback each).
        self.closing = asyncio.Event()

    def begin_shutdown(self) -> None:
        """The server is stopping: answer every long-poll now with the request as it stands."""
        self.closing.set()
        self.feed.wake_all()

    # -- plumbing --------------------------------------------------------------------------------------

    def _too_many_failures(self, retry: int) -> ApiError:
        self.metrics.refusals.labels("too_many_failures").inc()
        return ApiError(
            "too_many_failures",
            extra={"limit": "source", "retryAfter": retry},
            headers={"Retry-After": str(retry)},
        )

    def _source_gate(self, request: Request) -> None:
        """429 ``too_many_failures`` before anything is read if the client's address has failed too often
        lately (takes no token: a slow body must not hold one)."""
        retry = self.sources.blocked(_client(request))
        if retry is not None:
            raise self._too_many_failures(retry)

    def _source_take(self, request: Request) -> None:
        """Take the address's token for this request's signer check (once per request), or 429."""
        if getattr(request.state, "source_held", False):
            return
        retry = self.sources.acquire(_client(request))
        if retry is not None:
            raise self._too_many_failures(retry)
        request.state.source_held = True

    def _source_ok(self, request: Request) -> None:
        """The request authenticated (or the signer was away: not its failure): give the token back."""
        if getattr(request.state, "source_held", False):
            request.state.source_held = False
            self.sources.release(_client(request))

    def _bearer(self, request: Request) -> str | None:
        """The OIDC ID token of ``Authorization: Bearer <token>``, or None when the header is absent.

        Every authenticated route starts here, so the per-source gate runs before anything else."""
        self._source_gate(request)
        auth = request.headers.get("authorization")
        if auth is None:
            return None
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token or len(token) > 16 * 1024:
            raise ApiError("unauthorized")
        return token

    async def _check_oidc(self, token: str, body: bytes | None) -> None:
        """Ask the signer about an OIDC-authenticated call. A refused token is a 401 that names the code (the
        caller holds a token the platform issued; the code tells it what to fix, and leaks no secret); a body
        that disagrees with its token is a 422 naming the fields."""
        try:
            await self.signer.check_oidc(token, body)
        except KeyturnError as exc:
            if signer_unavailable(exc):
                raise ApiError("signer_unavailable") from None
            self.metrics.refusals.labels(exc.code[:40]).inc()
            fields = getattr(exc, "fields", None)
            if exc.code == "oidc_body_mismatch" and body is not None:
                # The reply carries a code and a message only; the same pure check names the fields here.
                try:
                    origin_claim(OidcEvidence(token, body), self.service.policy)
                except KeyturnError as mine:
                    fields = getattr(mine, "fields", None)
            if exc.code in ("oidc_body_mismatch", "bad_origin"):
                raise ApiError.relay(exc, fields=_field_list(fields, exc.message)) from None
            # Whatever else the signer refused the token for, the caller is not authenticated: 401.
            raise ApiError.relay(exc, default=401) from None
        except OSError:
            raise ApiError("signer_unavailable") from None

    async def _authenticate_read(self, request: Request, req_id: str) -> None:
        """Authenticate a read or a cancel: the CI MAC, or an OIDC token of the repository that made the
        request: the same issuer and the same repository (name and id) as the token it was made with."""
        token = self._bearer(request)
        if token is None:
            await self._authenticate(request, b"")
            return
        self._source_take(request)
        await self._check_oidc(token, None)
        self._source_ok(request)
        req = await self._load(req_id)
        origin = await self.store.origin(req_id) if req.origin_kind == "oidc" else None
        # A repository *name* is not an identity across issuers: a GitLab project may share a GitHub
        # repository's path, and a deleted repository's name can be taken again. Others' requests are 404.
        if origin is None or not _same_repository(origin.signature, token):
            raise ApiError("unknown_request")

    def _precheck(self, request: Request) -> None:
        """Refuse (401) what the signer would certainly refuse, before reading a body or calling it."""
        timestamp = request.headers.get("x-keyturn-timestamp", "")
        signature = request.headers.get("x-keyturn-signature", "")
        if not plausible(timestamp, signature, kind="ci"):
            self.metrics.refusals.labels("implausible_signature").inc()
            self.sources.acquire(_client(request))  # a failure: it costs the address a token, kept
            raise ApiError("unauthorized")

    async def _authenticate(self, request: Request, body: bytes) -> tuple[str, str]:
        self._precheck(request)
        timestamp = request.headers.get("x-keyturn-timestamp", "")
        signature = request.headers.get("x-keyturn-signature", "")
        self._source_take(request)
        try:
            await self.signer.check_ci(request.method, request.url.path, body, timestamp, signature)
        except KeyturnError as exc:
            if signer_unavailable(exc):
                self._source_ok(request)  # not the sender's failure
                raise ApiError("signer_unavailable") from None
            if exc.code == "ci_secret_not_allowed":
                # Refused after the MAC checked out: the sender holds the secret, and must learn that this
                # environment takes only OIDC-proven requests, not hunt for a wrong secret or clock.
                self._source_ok(request)
                raise ApiError("ci_secret_not_allowed") from None
            raise ApiError("unauthorized") from None
        except OSError:
            raise ApiError("signer_unavailable") from None
        self._source_ok(request)
        return timestamp, signature

    async def _accept_once(self, signature: str) -> None:
        """Remember this signed state-changing request before acting on it; 409 ``replayed_request`` if it was
        seen before. The MAC's ±300 s window alone would let anyone who saw the bytes send them again (say,
        recreate a request already decided); this makes each signed request count once. Redis down: 503."""
        seen = await self.store.claim_ci_request(signature)
        if seen is not None:
            self.metrics.refusals.labels("replayed_request").inc()
            raise _replayed(seen)

    async def _acted(self, signature: str, action: str, request_id: str) -> None:
        try:
            await self.store.bind_ci_request(signature, action, request_id)
        except StoreUnavailable:  # the claim stays "in flight": a replay is still refused, less helpfully
            log.warning("could not record what a signed %s request did", action)

    async def _failed(self, signature: str) -> None:
        try:
            await self.store.release_ci_request(signature)
        except StoreUnavailable:  # the claim lapses after REPLAY_TTL; the client signs a new request anyway
            log.warning("could not release the replay claim of a failed request")

    def _request_id(self, request: Request) -> str:
        rid = str(request.path_params.get("request_id", ""))
        if not REQUEST_ID_RE.fullmatch(rid):
            raise ApiError("unknown_request")
        return rid

    async def _load(self, rid: str) -> DeployRequest:
        req = await self.store.get(rid)
        if req is None:
            raise ApiError("unknown_request")
        return req

    async def _load_with_error(self, rid: str) -> tuple[DeployRequest, SignError | None]:
        req, error = await self.store.get_with_sign_error(rid)
        if req is None:
            raise ApiError("unknown_request")
        return req, error

    async def _view(
        self, req: DeployRequest, error: SignError | None = None, *, error_read: bool = False
    ) -> dict[str, Any]:
        """The request as the API shows it; ``error_read``: ``error`` was read with ``req`` (or cannot exist
        yet), so it is not read again."""
        if not error_read and req.status is Status.PENDING:
            error = await self.store.sign_error(req.id)
        view = request_view(req, self.base_url, error)
        if owes_delivery(req):
            # The callback's delivery: its id (the receiver's dedupe key), state (queued, delivered, dead
            # after the last attempt, refused by the URL rules), attempts so far and the last attempt.
            view["callback"] = await self.store.callback_job(req.id)
        return view

    # -- handlers --------------------------------------------------------------------------------------

    async def create(self, request: Request) -> Response:
        """``POST /v1/requests``: 202 with a new request, 200 with the pending one of the same scope."""
        token = self._bearer(request)
        if token is None:  # an OIDC call carries no MAC headers: the signer checks its token instead
            self._precheck(request)
        body = await read_body(request, self.max_body)
        if token is not None:
            self._source_take(request)
            await self._check_oidc(token, body)
            self._source_ok(request)
            timestamp, signature = "", ""
        else:
            timestamp, signature = await self._authenticate(request, body)
        try:
            parse_ci_request_body(body)
        except EvidenceError as exc:
            if exc.fields:
                fields = [{"field": k, "message": v} for k, v in exc.fields.items()]
                raise ApiError("invalid_request", fields=fields, facts=exc.facts) from None
            raise ApiError("malformed_body", facts=exc.facts) from None  # said by the parser's reason
        try:
            req_in = RequestIn.model_validate_json(body)
        except ValidationError as exc:
            if any(err["type"] == "json_invalid" for err in exc.errors()):
                # What the signer's parser let through but pydantic's does not, e.g. a lone surrogate escape.
                raise ApiError("malformed_body") from None
            fields = _fields_from_validation(exc)
            detail = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
            raise ApiError("invalid_request", fields=fields, detail=detail) from None
        if req_in.callback_url is not None:
            try:
                self.callback_policy.check_url(req_in.callback_url)
            except CallbackRefused as exc:
                detail = f"callbackUrl: {exc.reason}"
                field = {"field": "callbackUrl", "message": exc.reason}
                raise ApiError("invalid_request", fields=[field], detail=detail) from None
        if token is not None:
            # What the card shows comes from the token's claims (the signer renders it so too): the ref and
            # run link it proves, and none of the body's free text (docs/security.md, "OIDC-proven requests").
            try:
                claim = origin_claim(OidcEvidence(token, body), self.service.policy)
            except KeyturnError as exc:  # the signer accepted it: only a policy out of step gets here
                raise ApiError.relay(exc, default=422) from None
            req_in = req_in.model_copy(update={"ref": claim.ref, "run_url": claim.run_url, "title": None})
            iat = unverified_claims(token).get("iat")
            origin = OriginEvidence(
                kind="oidc",
                body=base64.b64encode(body).decode("ascii"),
                timestamp=str(iat),
                signature=token,
            )
            # The replay key: one token and body create one request, whoever sends them again.
            signature = "oidc:" + hashlib.sha256(token.encode() + b"\0" + body).hexdigest()
        else:
            origin = _ci_evidence(request, body, timestamp, signature)
        await self._accept_once(signature)
        try:
            req, created = await self.service.create(req_in, origin)
        except Exception as exc:
            await self._failed(signature)  # nothing was created: the same bytes may be sent again
            if isinstance(exc, LimitExceeded):
                raise ApiError(
                    exc.code,
                    facts=exc.facts,
                    extra={"limit": exc.limit, "retryAfter": exc.retry_after},
                    headers={"Retry-After": str(exc.retry_after)},
                ) from None
            if isinstance(exc, Refused) and exc.code == "unknown_environment":
                field = {"field": "environment", "message": field_words(exc.code, exc.facts)}
                raise ApiError(exc.code, fields=[field], facts=exc.facts) from None
            raise
        await self._acted(signature, "create", req.id)
        view = await self._view(req, error_read=created)  # created just now: nothing was signed yet
        return JSONResponse(view, status_code=202 if created else 200)

    async def status(self, request: Request) -> Response:
        """``GET /v1/requests/{id}[?wait=N[&since=V]]``: the request; with ``wait``, after its next change."""
        rid = self._request_id(request)
        await self._authenticate_read(request, rid)
        wait = _int_param(request, "wait", 0, MAX_WAIT_SECONDS) or 0
        since = _int_param(request, "since", 0, 2**53)
        if wait:
            req, error = await self._wait_for_change(rid, since, wait)
        else:
            req, error = await self._load_with_error(rid)
        return JSONResponse(await self._view(req, error, error_read=True))

    async def _wait_for_change(
        self, rid: str, version: int | None, wait: int
    ) -> tuple[DeployRequest, SignError | None]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        self.metrics.long_polls.inc()
        try:
            return await self._wait_loop(rid, version, deadline)
        finally:
            self.metrics.long_polls.dec()

    async def _wait_loop(
        self, rid: str, version: int | None, deadline: float
    ) -> tuple[DeployRequest, SignError | None]:
        """The request (and its signer failure) once it is final or no longer at ``version`` (None: the
        version it has now), or as it stands at ``deadline``. One read per wake-up."""
        loop = asyncio.get_running_loop()
        async with self.feed.watch(rid) as changed:
            while True:
                changed.clear()  # before the read, so a write after it still wakes us
                req, error = await self._load_with_error(rid)
                if version is None:
                    version = req.version
                remaining = deadline - loop.time()
                if req.status.final or req.version != version or remaining <= 0 or self.closing.is_set():
                    return req, error
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), min(remaining, REREAD_SECONDS))

    async def receipt(self, request: Request) -> Response:
        """``GET /v1/requests/{id}/receipt``: the receipt, or 409 with the status."""
        rid = self._request_id(request)
        await self._authenticate_read(request, rid)
        req, receipt = await self.store.get_with_receipt(rid)  # one round trip
        if req is None:
            raise ApiError("unknown_request")
        if req.status is not Status.APPROVED:
            raise ApiError(
                "not_approved", reason="request", status=req.status.value, extra={"status": req.status.value}
            )
        if receipt is None:
            raise ApiError("receipt_gone", extra={"status": req.status.value})
        return JSONResponse(receipt)

    async def cancel(self, request: Request) -> Response:
        """``POST /v1/requests/{id}/cancel``: CANCELLED (cancelling twice is fine)."""
        rid = self._request_id(request)
        token = self._bearer(request)
        if token is None:  # an OIDC call carries no MAC headers: the signer checks its token instead
            self._precheck(request)
        body = await read_body(request, self.max_body)
        if token is not None:
            await self._authenticate_read(request, rid)
            # Any job of the repository may read; only the job that asked may give up (the signer refuses
            # to record any other's cancel, so a cancel here would be one the record never shows).
            origin = await self.store.origin(rid)
            try:
                check_same_oidc_job(origin.signature if origin else "", token, self.service.policy)
            except KeyturnError as exc:  # bad_cancel; any other refusal of the token is a 403 here too
                raise ApiError.relay(exc, default=403) from None
            signature = "oidc-cancel:" + hashlib.sha256(token.encode() + b"\0" + rid.encode()).hexdigest()
            # The token is the evidence: the signer checks it again before recording the cancel.
            evidence = OriginEvidence(kind="oidc", body="", timestamp="", signature=token)
        else:
            timestamp, signature = await self._authenticate(request, body)
            evidence = _ci_evidence(request, body, timestamp, signature)
        loaded = await self._load(rid)
        env = self.service.policy.environments.get(loaded.scope.environment)
        if token is None and env is not None and not env.ci_secret:
            # As the signer would refuse to record it: the shared secret may not close this environment's
            # requests, so the bot does not close them either (docs/security.md, "The record").
            raise ApiError("ci_secret_not_allowed")
        await self._accept_once(signature)
        try:
            req = await self.service.cancel(rid, evidence)
        except Exception as exc:
            await self._failed(signature)  # nothing was cancelled: a replay gets the same answer again
            if isinstance(exc, Refused) and exc.code == "not_pending":
                current = await self._load(rid)
                state = current.status.value
                raise ApiError("not_pending", status=state, extra={"status": state}) from None
            raise
        await self._acted(signature, "cancel", rid)
        return JSONResponse(await self._view(req))

    async def keys(self, request: Request) -> Response:
        """``GET /v1/keys``: the public keyset (no auth)."""
        return await _public(self.signer.keys, "public, max-age=60")

    async def audit_checkpoint(self, request: Request) -> Response:
        """``GET /v1/audit/checkpoint``: the signer's latest signed checkpoint of its audit log (no auth).

        Public data (a signed hash and a count), served like ``/v1/keys`` so operators can archive it away
        from the signer. Never cached: it changes with every receipt.
        """
        return await _public(self.signer.checkpoint, "no-store")

    async def healthz(self, request: Request) -> Response:
        """Liveness: the process serves HTTP."""
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        """Readiness: Redis and the signer answer, and Slack accepted the bot token at start.

        Also reports, for the operator (docs/policy.md, "Changing the policy"): the SHA-256 of the policy the
        signer loaded (``policySha256``) and of the bot's copy (``botPolicySha256``), the signer's active key
        and its audit log's durable head. None of it is secret; the endpoint is not proxied (docs/deploy.md).
        """
        checks: dict[str, str] = {}
        info: dict[str, Any] = {"botPolicySha256": self.service.policy.sha256}
        try:
            await asyncio.wait_for(self.store.ping(), 2.0)
            checks["redis"] = "ok"
        except (StoreUnavailable, TimeoutError):
            checks["redis"] = "unavailable"
        try:
            health = await asyncio.wait_for(self.signer.health(), 2.0)
            checks["signer"] = "ok"
            info.update(
                policySha256=getattr(health, "policy_sha256", None),
                keyId=getattr(health, "key_id", None),
                auditSeq=getattr(health, "audit_seq", None),
                auditHead=getattr(health, "audit_head", None),
            )
        except (KeyturnError, OSError, TimeoutError):
            checks["signer"] = "unavailable"
        if self.slack_token is not None:
            checks["slack"] = self.slack_token.report
        if all(v == "ok" for v in checks.values()):
            return JSONResponse({"status": "ready", **checks, **info})
        down = ", ".join(k for k, v in checks.items() if v != "ok")
        return ApiError("not_ready", down=down, extra={**checks, **info}).response()

    async def metrics_endpoint(self, request: Request) -> Response:
        """Prometheus exposition."""
        return Response(self.metrics.render(), media_type=self.metrics.content_type)

    def routes(self) -> list[BaseRoute]:
        """The API's routes, each wrapped so errors become JSON."""
        w = self._wrap
        return [
            Route("/v1/requests", w(self.create), methods=["POST"]),
            Route("/v1/requests/{request_id}", w(self.status), methods=["GET"]),
            Route("/v1/requests/{request_id}/receipt", w(self.receipt), methods=["GET"]),
            Route("/v1/requests/{request_id}/cancel", w(self.cancel), methods=["POST"]),
            Route("/v1/keys", w(self.keys), methods=["GET"]),
            Route("/v1/audit/checkpoint", w(self.audit_checkpoint), methods=["GET"]),
            Route("/healthz", w(self.healthz), methods=["GET"]),
            Route("/readyz", w(self.readyz), methods=["GET"]),
            Route("/metrics", w(self.metrics_endpoint), methods=["GET"]),
        ]

    def _wrap(
        self, handler: Callable[[Request], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except ApiError as exc:
                return exc.response()
            except Refused as exc:
                return ApiError.relay(exc).response()
            except StoreUnavailable:
                return ApiError("store_unavailable").response()

        endpoint.__name__ = handler.__name__
        endpoint.__doc__ = handler.__doc__
        return endpoint


async def http_error_handler(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 as JSON."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    code = {404: "not_found", 405: "method_not_allowed"}.get(status, "http_error")
    detail = exc.detail if isinstance(exc, HTTPException) else "error"
    return JSONResponse({"error": code, "message": str(detail)}, status_code=status)


class GuardMiddleware:
    """Outermost ASGI middleware: per-route metrics, and a JSON 500 instead of any unhandled exception.

    The exception is logged by type and route only: request bodies and headers may carry secrets.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, closing: asyncio.Event | None = None) -> None:
        self.app = app
        self.metrics = metrics
        self.closing = closing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = int(message["status"])
                response_started = True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except asyncio.CancelledError:
            if self.closing is None or not self.closing.is_set():
                raise
            # uvicorn cancels what still runs when the shutdown grace is over. Expected then: one line, a 503
            # if nothing was sent yet, and no traceback (uvicorn logs one for any exception reaching it).
            route = getattr(scope.get("route"), "path", "unmatched")
            log.warning("%s %s cut short by shutdown", scope.get("method"), route)
            if not response_started:
                status = 503
                response = ApiError(
                    "shutting_down", headers={"Connection": "close", "Retry-After": "1"}
                ).response()
                with contextlib.suppress(Exception):
                    await response(scope, receive, send)
        except Exception as exc:
            route = getattr(scope.get("route"), "path", "unmatched")
            log.error("internal error on %s %s: %s", scope.get("method"), route, type(exc).__name__)
            if not response_started:
                status = 500
                response = ApiError("internal_error").response()
                await response(scope, receive, send)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.http_requests.labels(route, str(status)).inc()
            self.metrics.http_latency.labels(route).observe(time.perf_counter() - started)
