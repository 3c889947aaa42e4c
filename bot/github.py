"""The bot's side of the GitHub deployment protection rule (docs/github.md): it carries, it decides nothing.

``POST /github/webhook`` takes GitHub's delivery and

1. hands the raw body and GitHub's headers, unchanged, to ``keyturn github-approver``
   (``KEYTURN_GITHUB_APPROVER_URL``, loopback only), which checks the signature, the payload and the
   environment's policy, refuses a delivery id it has taken, and answers the run's scope as GitHub's API
   reports it (the workflow path is not in the webhook); a refusal is returned as it came, and no request is
   opened;
2. has the signer check the same bytes (``check_github``: the signer holds the webhook secret too) and date
   their arrival with its stamp;
3. opens a request whose origin is the webhook itself (kind ``github``): the signer re-checks the signature
   and the stamp at signing time and takes repository, sha and environment from the signed payload.

When the request reaches a final state, its outcome is handed to the approver through the Redis outbox that
carries CI callbacks (bot/callbacks.py): the receipt with the signer's arrival of the run's webhook (the
approver verifies the receipt, recomputes from that webhook the id of the request opened from it, and approves
the run only if it is the receipt's) or the reason (it rejects the run), by
:meth:`GitHubForwarder.hand_over`, retried until the approver settles it, and replayed by whichever bot
process starts next if this one dies meanwhile. The bot holds neither the webhook secret nor the App key
(docs/security.md, "GitHub deployment protection rules").
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from keyturn.bot.api import CLIENT_FAULT, ApiError, status_of
from keyturn.bot.models import DeployRequest, OriginEvidence, RequestIn, Status
from keyturn.signer import github_app
from keyturn.signer.errors import KeyturnError
from keyturn.signer.evidence import GitHubEvidence, origin_claim, request_id_for
from keyturn.signer.words import Fact

log = logging.getLogger("keyturn.github")

# Only GitHub's own headers travel: the approver checks the signature over the body with these.
FORWARDED = (
    "content-type",
    "user-agent",
    "x-github-event",
    "x-github-delivery",
    "x-github-hook-id",
    "x-hub-signature-256",
)
MAX_WEBHOOK_BYTES = 1024 * 1024
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
HANDOFF_ATTEMPTS = 5  # the approver answers 502 while GitHub is down; the run keeps waiting meanwhile
HANDOFF_BACKOFF_S = 0.5
# The signer's refusals of a run at arrival that a re-run of the same job meets again (signer/evidence.py):
# the environment's GitHub rule, and an origin outside the card's grammar (a look-alike branch or tag name,
# an event name with markup), which comes from the same branch or tag every time.
RULE_REFUSALS = frozenset({"github_branch_not_allowed", "github_event_not_allowed", "bad_origin"})


def approver_url_problem(url: str) -> str | None:
    """What is wrong with ``url`` as the approver's address (None if usable): plain http to loopback, as
    the approver listens on loopback only and the webhook secret's check must not leave the machine."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "not a URL"
    if parts.scheme != "http" or parts.hostname not in LOOPBACK or parts.path not in ("", "/"):
        return "must be http://127.0.0.1:<port> (the approver listens on loopback only)"
    return None


def _error(
    code: str, message: str | None = None, *, default: int = CLIENT_FAULT, **facts: Fact
) -> JSONResponse:
    """The CI API's error shape, status from its one table (``keyturn.bot.api.HTTP_STATUS``); ``message``
    only for a sentence another part wrote (a relayed refusal), else the words module's."""
    status = status_of(code, default)
    return ApiError(code, message=message, http_status=status, facts=facts).response()


def final_reason(request: DeployRequest) -> str:
    """Why a request that was not approved ends: the text the run is rejected with."""
    if request.status is Status.DENIED:
        who = request.decided_by or "an approver"
        return f"denied by {who}: {request.deny_reason or 'no reason given'}"
    if request.status is Status.EXPIRED:
        return "the request expired without a decision"
    return "the request was cancelled"


class GitHubForwarder:
    """The GitHub routes and the hand-off of outcomes to the approver."""

    def __init__(
        self,
        approver_url: str,
        *,
        signer: Any,
        service: Any,
        store: Any,
        client: httpx.AsyncClient | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self.approver_url = approver_url.rstrip("/")
        self.signer = signer
        self.service = service
        self.store = store
        self.client = client or httpx.AsyncClient(timeout=60)
        self.sleep = sleep

    async def webhook(self, request: Request) -> Response:
        """``POST /github/webhook`` (steps 1-3 of the module docstring)."""
        body = await request.body()
        if len(body) > MAX_WEBHOOK_BYTES:
            return _error("payload_too_large")
        headers = {k: v for k, v in request.headers.items() if k.lower() in FORWARDED}
        delivery = headers.get("x-github-delivery", "-")
        try:
            answer = await self.client.post(f"{self.approver_url}/webhook", content=body, headers=headers)
            data = answer.json()
        except httpx.HTTPError as exc:
            log.warning("github webhook %s: approver unreachable (%s)", delivery, type(exc).__name__)
            return _error("approver_unavailable")
        except ValueError:
            return _error("approver_error")
        if answer.status_code != 200 or not isinstance(data, dict):
            log.info(
                "github webhook %s refused: %s",
                delivery,
                data.get("error") if isinstance(data, dict) else "-",
            )
            return JSONResponse(data, answer.status_code)
        scope: dict[str, Any] = data["scope"] if isinstance(data.get("scope"), dict) else {}
        signature = headers.get("x-hub-signature-256", "")
        try:
            stamp = await self.signer.check_github(body, delivery, signature)
            origin = OriginEvidence(
                kind="github",
                body=base64.b64encode(body).decode("ascii"),
                timestamp=stamp.timestamp,
                signature=signature,
                delivery=delivery,
                workflow=str(scope.get("workflow", "")),
                stamp=stamp.stamp,
            )
            evidence = GitHubEvidence(
                body, delivery, signature, origin.workflow or "", origin.timestamp, origin.stamp or ""
            )
            claim = origin_claim(evidence, self.service.policy)
            req_in = RequestIn(
                repo=claim.scope.repo,
                sha=claim.scope.sha,
                environment=claim.scope.environment,
                workflow=claim.scope.workflow,
                requester=claim.requester,
                ref=claim.ref,
                run_url=claim.run_url,
            )
            req, created = await self.service.create(req_in, origin)
        except Exception as exc:
            # The approver took the delivery (a redelivery is a replay now), so the run would wait forever:
            # reject it with the reason instead. Fail-closed, and re-running the job asks again.
            code = exc.code if isinstance(exc, KeyturnError) and exc.code else type(exc).__name__
            log.warning("github webhook %s: no request opened (%s); rejecting the run", delivery, code)
            if code in RULE_REFUSALS:
                # The environment's [environments.<name>.github] rule, or the origin's grammar, refused this
                # run: re-running it cannot help, so the reason says which rule (docs/github.md).
                reason = f"Keyturn's policy refuses this run ({code}): {exc}"
            else:
                reason = f"Keyturn could not open a request ({code}); re-run the job to ask again"
            await self._post_outcome(
                data.get("run_id"),
                str(data.get("environment", "")),
                "reject",
                {"reason": reason, "delivery": delivery},
            )
            if isinstance(exc, KeyturnError):  # a refusal: its status from the one table (a 4xx)
                return _error(code, exc.message)
            return _error(code, "the request could not be opened", default=503)
        if not created and req.id != request_id_for(evidence):
            # One pending request per scope (bot/store.py): another run of this commit and environment waits
            # on it, and its outcome goes to that run only. This run is rejected, not left waiting forever.
            reason = f"another run of this commit for {req.scope.environment} is already waiting for approval"
            await self._post_outcome(
                data.get("run_id"),
                claim.scope.environment,
                "reject",
                {"reason": reason, "request_id": req.id, "delivery": delivery},
            )
            return _error("scope_busy", environment=req.scope.environment, request_id=req.id)
        log.info("github webhook %s: run %s -> request %s", delivery, data.get("run_id"), req.id)
        if created:
            await self._status(data.get("run_id"), req)
        return JSONResponse(
            {"ok": True, "requestId": req.id, "created": created, "runId": data.get("run_id")},
            status_code=202 if created else 200,
        )

    async def hand_over(self, request: DeployRequest, receipt: dict[str, Any] | None) -> dict[str, Any]:
        """One attempt at handing a final request's outcome to the approver: the receipt to approve the run
        with, or the reason to reject it. Called by the outbox (bot/callbacks.py) until it is settled, so a
        bot restart mid-handover replays it; the approver is idempotent (a second approve or reject of a
        decided run answers ``409 already_decided``), so a replay never decides twice.

        The attempt's record: ``outcome`` ``delivered`` (the approver took it, or the run was already
        decided), ``refused`` (a 4xx: final, retrying cannot help) or ``failed`` (unreachable, 5xx, or an
        approved request whose receipt Redis cannot give now: tried again later).
        """
        origin = await self.store.origin(request.id)
        if origin is None or origin.kind != "github":
            return {"outcome": "refused", "error": "handover_no_origin"}
        try:
            hook = github_app.parse_payload(
                base64.b64decode(origin.body),
                origin.delivery or "",
                api_base_path=None,
                environments=frozenset({request.scope.environment}),
            )
        except github_app.GitHubError as exc:
            log.error("github hand-off of %s: stored webhook unusable (%s)", request.id, exc.code)
            return {"outcome": "refused", "error": f"handover_{exc.code}"}
        if request.status is Status.APPROVED:
            if receipt is None:  # Redis lost it for now: try again later; an approval is never rejected
                log.error("github hand-off of %s: approved but its receipt could not be read", request.id)
                return {"outcome": "failed", "error": "receipt_unavailable"}
            kind, body = "approve", receipt
            # The signer's arrival of the request's webhook: the approver recomputes the request's id from
            # it and the webhook it kept for the run, so the receipt approves that run only (seventh review).
            headers = github_app.arrival_headers(origin.timestamp, origin.stamp or "", origin.workflow or "")
        else:
            # The webhook the request was opened from: the approver rejects only the attempt it kept for it,
            # so a rejection retried after a re-run never lands on the new attempt (run_attempt_changed).
            reason = final_reason(request)
            kind, body = "reject", {"reason": reason, "request_id": request.id, "delivery": hook.delivery}
            headers = {}
        status, error = await self._post_once(hook.run_id, hook.environment, kind, body, headers)
        record: dict[str, Any] = {"target": f"github {kind} run {hook.run_id}", "status": status}
        if status == 200 or error == "already_decided":
            return {**record, "outcome": "delivered"}
        if status is not None and status < 500:
            # A re-run since the request's webhook is routine (the new attempt has its own request).
            level = logging.WARNING if error == "run_attempt_changed" else logging.ERROR
            log.log(level, "github %s of run %s for %s refused: %s", kind, hook.run_id, request.id, error)
            return {**record, "outcome": "refused", "error": f"approver_{error}"}
        return {**record, "outcome": "failed", "error": error}

    async def _status(self, run_id: object, request: DeployRequest) -> None:
        """One status-only comment on the waiting run (it neither approves nor rejects): once, not retried,
        since it only informs."""
        if not isinstance(run_id, int):
            return
        env = quote(request.scope.environment, safe="")
        text = f"waiting for {request.required_approvals} approvals in Slack, request {request.id}"
        with contextlib.suppress(httpx.HTTPError):
            await self.client.post(f"{self.approver_url}/runs/{run_id}/{env}/status", json={"text": text})

    async def _post_once(
        self,
        run_id: int,
        environment: str,
        kind: str,
        body: dict[str, Any],
        headers: dict[str, str] | None = None,
    ) -> tuple[int | None, str]:
        """POST ``body`` to the approver's ``approve`` (a receipt, with the arrival ``headers``) or ``reject``
        route of the run, once: (HTTP status or None if unreachable, the approver's error code or what went
        wrong)."""
        url = f"{self.approver_url}/runs/{run_id}/{quote(environment, safe='')}/{kind}"
        outcome: tuple[int | None, str]
        try:
            resp = await self.client.post(url, content=json.dumps(body).encode(), headers=headers)
        except httpx.HTTPError as exc:
            outcome = (None, type(exc).__name__)
        else:
            try:
                data = resp.json()
            except ValueError:
                data = None
            code = data.get("error") if isinstance(data, dict) else None
            outcome = (resp.status_code, str(code or f"HTTP {resp.status_code}"))
        level = logging.INFO if outcome[0] == 200 else logging.WARNING
        log.log(level, "github %s of run %s: %s (%s)", kind, run_id, outcome[0] or "no answer", outcome[1])
        return outcome

    async def _post_outcome(self, run_id: object, environment: str, kind: str, body: dict[str, Any]) -> None:
        """:meth:`_post_once`, retried while the approver answers 5xx or cannot be reached: for the runs
        the webhook route rejects itself (no request exists for the outbox to carry)."""
        if not isinstance(run_id, int):
            return
        for attempt in range(1, HANDOFF_ATTEMPTS + 1):
            status, _ = await self._post_once(run_id, environment, kind, body)
            if status is not None and status < 500:
                return
            if attempt < HANDOFF_ATTEMPTS:
                await self.sleep(HANDOFF_BACKOFF_S * 2 ** (attempt - 1))

    def routes(self) -> list[Route]:
        """The bot's GitHub routes."""
        return [Route("/github/webhook", self.webhook, methods=["POST"])]

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self.client.aclose()
