"""``keyturn github-approver``: the only holder of the GitHub App key, bound by receipts.

The App registered as a deployment protection rule can approve any waiting run of its installations, so its
private key is an authorization capability (docs/security.md, "GitHub deployment protection rules"). This
small process holds it, with the webhook secret, and nothing else; it listens on loopback only and talks
only to GitHub's API. It approves a run **only** after it has itself verified a receipt with the gate of
``keyturn verify`` (``keyturn.signer.gate.check_receipt``) against the pinned public keyset, for exactly the
run's repository, sha, environment and workflow as GitHub's API reports them.

Routes (JSON answers; ``error`` is a stable code):

- ``POST /webhook``: a delivery exactly as GitHub sent it (the bot forwards the raw body and the headers).
  Checked (``X-Hub-Signature-256``, event, payload, environment policy), de-duplicated on
  ``X-GitHub-Delivery``, re-read from the API; answers the run id and the scope a receipt must name.
A run is waiting once per protected environment (a workflow may deploy to several), so the routes name both:

- ``POST /runs/{run_id}/{environment}/approve``: the body is a receipt, as ``keyturn verify`` reads it;
  the headers ``X-Keyturn-Arrival-Timestamp``, ``X-Keyturn-Arrival-Stamp`` and ``X-Keyturn-Arrival-Workflow``
  name the signer's arrival of the webhook the receipt's request was opened from (``github_app.Arrival``).
  Approves once.
- ``POST /runs/{run_id}/{environment}/reject``: ``{"reason": "...", "request_id": "req_…"?, "delivery":
  "…"?}``. Rejecting is fail-closed, so the bot's word suffices; ``delivery`` names the webhook the
  rejection answers, so a late one never lands on a newer attempt.
- ``POST /runs/{run_id}/{environment}/status``: ``{"text": "..."}``, a status-only comment on a waiting run.
- ``GET /runs/{run_id}/{environment}``, ``GET /healthz``.

A request approves one run attempt: its receipt names a scope, not a run, so the approver remembers which
attempt each request id approved (run, environment, deployment and ``run_attempt``) and refuses it for
another (``receipt_spent``). And the request must have been opened from the webhook kept for the waiting
run: the approver recomputes its id from that webhook and the hand-off's arrival (whose stamp it checks with
the webhook secret), else ``receipt_not_for_run`` (a receipt of another run of the same scope).

GitHub's review endpoint is per run, not per attempt, so an approval or a rejection is sent only while the
run is still at the attempt whose webhook was checked (and, for a rejection naming its delivery, was opened
from that webhook): ``run_attempt_changed``; a newer attempt's webhook replaces a waiting earlier one, and an
earlier one delivered after it is ``stale_webhook``.

GitHub API failures (5xx, rate limits, timeouts, network) are retried with exponential backoff and then
answered ``502 github_unavailable``: the run stays waiting, never approved by a fault.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from keyturn.signer import contract, evidence, github_app
from keyturn.signer.errors import KeyturnError
from keyturn.signer.gate import GateError, check_receipt, load_keyset
from keyturn.signer.github_app import Arrival, GitHubError, Webhook, arrival_from
from keyturn.signer.keyset import PublicKeyset
from keyturn.signer.receipt import Scope
from keyturn.signer.words import Fact

log = logging.getLogger("keyturn.github_approver")

DEFAULT_API = "https://api.github.com"
MAX_RECEIPT_BODY = 1024 * 1024
RETRY_STATUSES = frozenset({500, 502, 503, 504, 429})
MAX_RETRY_AFTER_S = 60.0  # a Retry-After beyond this is not waited out: the caller gets 502 and may retry


@dataclass
class Settings:
    """Everything the approver is configured with. ``repr`` hides the two secrets."""

    api_url: str
    app_id: str
    app_key_pem: bytes
    webhook_secret: str
    keyset: PublicKeyset
    environments: frozenset[str]
    allow_dev_keys: bool = False
    request_link: str | None = None  # e.g. "https://keyturn.example/requests/{request_id}"
    attempts: int = 4
    backoff_s: float = 0.25
    timeout_s: float = 10.0

    def __repr__(self) -> str:
        envs = sorted(self.environments)
        return f"Settings(api_url={self.api_url!r}, app_id={self.app_id!r}, environments={envs})"


@dataclass
class PendingRun:
    """A run the approver saw a checked webhook for, and what became of it."""

    webhook: Webhook
    status: str = "waiting"  # waiting -> approved | rejected
    comment: str | None = None
    # The run's ``run_attempt`` as GitHub's API reported it when the webhook was taken (None only from a
    # state file written before it was kept: such a run is never approved, fail closed).
    attempt: int | None = None
    # The webhook's signed body (base64), to recompute the id of the request opened from it (None only from
    # a state file written before it was kept: such a run is never approved, fail closed).
    body: str | None = None


RunKey = tuple[int, str]  # (run id, environment): what waits for one review


def run_key(webhook: Webhook) -> RunKey:
    """The key of the review ``webhook`` asks for."""
    return webhook.run_id, webhook.environment


def attempt_id(pending: PendingRun) -> str:
    """What one receipt may approve: this run, this environment, this deployment, this attempt (a re-run is
    a new attempt, and a new deployment, so it needs its own request)."""
    hook = pending.webhook
    return f"{hook.run_id}/{hook.environment}/{hook.deployment_id}/{pending.attempt}"


class GitHubUnavailable(KeyturnError):
    """The API did not answer usefully after every retry: code ``github_unavailable``, a ``reason`` and facts
    (the method, path, HTTP status; never a token)."""

    code = "github_unavailable"


def retry_delay(attempt: int, base_s: float, retry_after: str | None) -> float:
    """How long to wait before retry ``attempt`` (1-based): GitHub's ``Retry-After`` when it gives a usable
    one, else exponential backoff from ``base_s``."""
    if retry_after is not None and retry_after.isdigit():
        return min(float(retry_after), MAX_RETRY_AFTER_S)
    return float(base_s * (2 ** (attempt - 1)))


def is_retryable(status: int, headers: Mapping[str, str]) -> bool:
    """5xx and 429, and GitHub's rate-limit 403 (``X-RateLimit-Remaining: 0`` or a ``Retry-After``)."""
    if status in RETRY_STATUSES:
        return True
    return status == 403 and (headers.get("x-ratelimit-remaining") == "0" or "retry-after" in headers)


class GitHubApi:
    """GitHub's REST API as the App: a JWT for installation tokens, tokens cached until near expiry."""

    def __init__(
        self,
        settings: Settings,
        client: httpx.AsyncClient,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self.s = settings
        self.client = client
        self.clock = clock
        self.sleep = sleep
        self._tokens: dict[int, tuple[str, float]] = {}

    async def _send(
        self, method: str, path: str, headers: dict[str, str], body: Any = None
    ) -> httpx.Response:
        """One logical call, retried on transient failures with backoff; raises ``GitHubUnavailable``."""
        url = self.s.api_url + path
        last = "no attempt"
        for attempt in range(1, self.s.attempts + 1):
            retry_after = None
            try:
                resp = await self.client.request(
                    method, url, headers=headers, json=body, timeout=self.s.timeout_s
                )
            except httpx.HTTPError as exc:
                last = type(exc).__name__
            else:
                if not is_retryable(resp.status_code, resp.headers):
                    return resp
                last = f"HTTP {resp.status_code}"
                retry_after = resp.headers.get("retry-after")
            log.warning(
                "github %s %s failed (%s), attempt %d/%d", method, path, last, attempt, self.s.attempts
            )
            if attempt < self.s.attempts:
                await self.sleep(retry_delay(attempt, self.s.backoff_s, retry_after))
        raise GitHubUnavailable(
            reason="retries", method=method, path=path, last=last, attempts=self.s.attempts
        )

    async def _token(self, installation_id: int) -> str:
        held = self._tokens.get(installation_id)
        if held is not None and held[1] > self.clock() + 60:
            return held[0]
        jwt = github_app.app_jwt(self.s.app_id, self.s.app_key_pem, int(self.clock()))
        resp = await self._send(
            "POST",
            f"/app/installations/{installation_id}/access_tokens",
            {"Authorization": f"Bearer {jwt}", "Accept": "application/vnd.github+json"},
        )
        if resp.status_code != 201:
            raise GitHubUnavailable(reason="token_refused", status=resp.status_code)
        token = (_json_object(resp) or {}).get("token")
        if not isinstance(token, str):
            raise GitHubUnavailable(reason="no_token")
        # GitHub's tokens last an hour; re-asking after 50 minutes needs no date parsing.
        self._tokens[installation_id] = (token, self.clock() + 3000)
        return token

    async def call(self, method: str, path: str, installation_id: int, body: Any = None) -> httpx.Response:
        """``method path`` with an installation token; a 401 drops the cached token and asks once more."""
        for _ in range(2):
            token = await self._token(installation_id)
            headers = {"Authorization": f"Bearer {token}", "Accept": "application/vnd.github+json"}
            resp = await self._send(method, path, headers, body)
            if resp.status_code != 401:
                return resp
            self._tokens.pop(installation_id, None)
        return resp

    async def read_json(self, path: str, installation_id: int) -> dict[str, Any]:
        """GET ``path`` as a JSON object; anything else is ``GitHubUnavailable``."""
        resp = await self.call("GET", path, installation_id)
        if resp.status_code != 200:
            raise GitHubUnavailable(reason="read_status", path=path, status=resp.status_code)
        data = _json_object(resp)
        if data is None:
            raise GitHubUnavailable(reason="read_not_object", path=path)
        return data


def _json_object(resp: httpx.Response) -> dict[str, Any] | None:
    """``resp``'s body as a JSON object, or None when it is none (not JSON: a proxy's page, a cut answer;
    or JSON of another type). Never raises: an answer GitHub did not mean is GitHub unavailable for the
    caller (502, retried; at webhook time the delivery's claim released), not an unhandled 500."""
    try:
        data = json.loads(resp.content)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _older(hook: Webhook, kept: PendingRun | None) -> bool:
    """Whether ``hook``'s deployment was created before the one of the webhook kept for its run: GitHub
    creates a re-run's deployment after the earlier attempt's, so the earlier webhook came late. Both times
    are GitHub-signed and from one clock; a webhook without one is not compared (as before)."""
    if kept is None or hook.created_at is None or kept.webhook.created_at is None:
        return False
    return hook.created_at < kept.webhook.created_at


def dump_state(runs: Mapping[RunKey, PendingRun], deliveries: set[str], spent: Mapping[str, str]) -> bytes:
    """The approver's memory as JSON (no secrets in it: ids, scopes, statuses and comments)."""
    return json.dumps(
        {
            "version": 1,
            "runs": [
                {
                    "webhook": asdict(r.webhook),
                    "status": r.status,
                    "comment": r.comment,
                    "attempt": r.attempt,
                    "body": r.body,
                }
                for r in runs.values()
            ],
            "deliveries": sorted(deliveries),
            "spent": spent,
        }
    ).encode()


def load_state(data: bytes) -> tuple[dict[RunKey, PendingRun], set[str], dict[str, str]]:
    """Parse :func:`dump_state`'s output; a file that does not parse stops the start (never a silent reset:
    forgetting spent requests would let a receipt approve a second run)."""
    obj = json.loads(data)
    if not isinstance(obj, dict) or obj.get("version") != 1:
        raise ValueError("not an approver state file (version 1)")
    runs = {}
    for item in obj["runs"]:
        hook = Webhook(**item["webhook"])
        attempt = item.get("attempt")
        attempt = attempt if type(attempt) is int else None
        body = item.get("body")
        body = body if isinstance(body, str) else None
        runs[run_key(hook)] = PendingRun(hook, str(item["status"]), item.get("comment"), attempt, body)
    spent = {str(k): str(v) for k, v in obj["spent"].items()}
    return runs, {str(d) for d in obj["deliveries"]}, spent


def _error(
    status: int, code: str, /, *, extra: Mapping[str, Any] | None = None, **facts: Fact
) -> JSONResponse:
    """The approver's JSON refusal: ``{"error": code, "message": words, **extra}``, its sentence rendered
    from the code and ``facts`` by the words module."""
    return _refusal(status, KeyturnError(code=code, facts=facts), **(extra or {}))


def _refusal(status: int, exc: KeyturnError, **extra: Any) -> JSONResponse:
    """Answer ``status`` with a refusal raised elsewhere (GitHub's, the gate's): its code and its words."""
    return JSONResponse({"error": exc.code, "message": exc.message, **extra}, status)


def _waiting(pending: PendingRun | None) -> PendingRun | JSONResponse:
    """``pending`` if it is a known run still waiting for a decision, else the answer refusing to decide."""
    if pending is None:
        return _error(404, "unknown_run")
    if pending.status != "waiting":
        return _error(409, "already_decided", decided=pending.status, extra={"decided": pending.status})
    return pending


async def _json_text(request: Request, name: str) -> tuple[dict[str, Any], str | None]:
    """The request's JSON object ({} if it is none) and its member ``name`` if that is a non-blank string."""
    try:
        data = json.loads(await request.body())
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return {}, None
    text = data.get(name)
    return data, text if isinstance(text, str) and text.strip() else None


class Approver:
    """The approver's state and decisions around the API; routes in :func:`create_app`."""

    def __init__(
        self,
        settings: Settings,
        api: GitHubApi,
        now: Callable[[], datetime],
        state_file: Path | None = None,
    ) -> None:
        self.s = settings
        self.state_file = state_file
        self.api = api
        self.now = now
        self.runs: dict[RunKey, PendingRun] = {}
        self.deliveries: set[str] = set()
        # request id -> the run its receipt approved. A receipt names a scope, not a run: bound here, one
        # request approves one run, so a re-run or a second dispatch of the same commit needs its own quorum.
        self.spent: dict[str, str] = {}
        self._locks: dict[RunKey, asyncio.Lock] = {}
        base = urlsplit(settings.api_url)
        self.api_base_path = base.path.rstrip("/")
        if state_file is not None and state_file.exists():
            self.runs, self.deliveries, self.spent = load_state(state_file.read_bytes())

    def _save(self) -> None:
        """Write the state (if a file is configured) before answering: a restart must not forget which
        deliveries were taken or which request approved which run. Atomic: a temp file, then a rename."""
        if self.state_file is None:
            return
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_bytes(dump_state(self.runs, self.deliveries, self.spent))
        os.replace(tmp, self.state_file)

    def _lock(self, key: RunKey) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    @contextlib.asynccontextmanager
    async def _deciding(self, key: RunKey) -> AsyncIterator[PendingRun | JSONResponse]:
        """The run waiting at ``key``, held under its lock while the caller decides it, or the answer refusing
        to decide it. An unknown run is refused before a lock is made for it; the status is read under the
        lock, so of two concurrent decisions of one run only the first finds it waiting."""
        pending = self.runs.get(key)
        if pending is None:
            yield _waiting(None)
            return
        async with self._lock(key):
            yield _waiting(pending)

    async def _read(self, webhook: Webhook, what: Literal["run", "deployment"]) -> dict[str, Any] | None:
        """GitHub's API's read of the webhook's run (``what`` ``run``) or deployment (None without one)."""
        if what == "run":
            path = f"/repos/{webhook.repo}/actions/runs/{webhook.run_id}"
        elif webhook.deployment_id is not None:
            path = f"/repos/{webhook.repo}/deployments/{webhook.deployment_id}"
        else:
            return None
        return await self.api.read_json(path, webhook.installation_id)

    async def read_run(self, webhook: Webhook) -> tuple[Scope, int]:
        """The run's scope and its current ``run_attempt`` as GitHub's API reports them now (never the bot's
        word, nor only the webhook's)."""
        run = await self._read(webhook, "run") or {}
        deployment = await self._read(webhook, "deployment")
        return github_app.run_scope(webhook, run, deployment), github_app.run_attempt(run)

    async def _at_checked_attempt(self, pending: PendingRun) -> dict[str, Any] | JSONResponse:
        """GitHub's API's read of the waiting run if it is still at the attempt whose webhook was checked, or
        the answer refusing to decide it: GitHub unreachable (502), no usable ``run_attempt`` (409), or
        another attempt (409 ``run_attempt_changed``): GitHub's review endpoint decides whatever attempt waits
        now, so only the checked one may be approved or rejected. All a rejection needs: it never waits on
        the deployment's read (deleted, or disagreeing with the webhook, the run is rejected all the same)."""
        try:
            run = await self._read(pending.webhook, "run") or {}
            attempt = github_app.run_attempt(run)
        except GitHubUnavailable as exc:
            return _refusal(502, exc)
        except GitHubError as exc:
            return _refusal(409, exc, fields=exc.fields)
        if pending.attempt is None or attempt != pending.attempt:
            return _error(409, "run_attempt_changed", attempt=attempt, checked=pending.attempt)
        return run

    async def _checked_scope(self, pending: PendingRun) -> Scope | JSONResponse:
        """The waiting run's scope as GitHub's API reports it now, for an approval's receipt, or the answer
        refusing to decide it (:meth:`_at_checked_attempt`'s, or the deployment's read failing or disagreeing
        with the webhook). The attempt first: after a re-run the checked attempt's deployment is not the run's
        any more, and is not needed to refuse."""
        run = await self._at_checked_attempt(pending)
        if isinstance(run, JSONResponse):
            return run
        try:
            return github_app.run_scope(pending.webhook, run, await self._read(pending.webhook, "deployment"))
        except GitHubUnavailable as exc:
            return _refusal(502, exc)
        except GitHubError as exc:
            return _refusal(409, exc, fields=exc.fields)

    async def webhook(self, headers: Mapping[str, str], body: bytes) -> JSONResponse:
        """Check a forwarded delivery; remember its run as waiting."""
        try:
            hook = github_app.check_webhook(
                self.s.webhook_secret,
                headers,
                body,
                api_base_path=self.api_base_path,
                environments=self.s.environments,
            )
        except GitHubError as exc:
            status = 401 if exc.code in ("missing_signature", "bad_signature") else 400
            status = 422 if exc.code == "no_policy" else status
            return _refusal(status, exc, fields=exc.fields)
        # X-GitHub-Delivery is not under GitHub's signature: a bot may send an old body under a new id, and
        # an approved run's old webhook would mark the run waiting as that (spent) attempt again, so the
        # spent receipt would approve whatever attempt waits now. The signed body is taken once too.
        taken = {hook.delivery, "sha256:" + hashlib.sha256(body).hexdigest()}
        if taken & self.deliveries:
            return _error(409, "replayed_delivery", delivery=hook.delivery)
        # Claimed before the API reads so a concurrent copy is refused; released if they fail, so the bot may
        # forward the same delivery again once GitHub answers.
        self.deliveries |= taken
        try:
            scope, attempt = await self.read_run(hook)
        except GitHubUnavailable as exc:
            self.deliveries -= taken
            return _refusal(502, exc)
        except GitHubError as exc:
            return _refusal(409, exc, fields=exc.fields)
        async with self._lock(run_key(hook)):
            if _older(hook, self.runs.get(run_key(hook))):
                # An earlier attempt's webhook, delivered late (or held back) after the re-run's: kept, it
                # would stand for the attempt GitHub reports now, and its request's rejection would reject
                # the re-run. Refused; the claim stays (a replay of it is as stale).
                return _error(409, "stale_webhook", deployment=hook.deployment_id)
            # A webhook never taken before is a newer attempt (or deployment) of the run: it replaces the
            # one kept, even a waiting one. Kept, the earlier attempt's request (spent on it, its approval's
            # answer lost) would pass the "spent on this attempt" check and approve the re-run waiting now.
            self.runs[run_key(hook)] = PendingRun(
                hook, attempt=attempt, body=base64.b64encode(body).decode("ascii")
            )
            self._save()
        log.info("run %s waiting: %s %s -> %s", hook.run_id, scope.repo, scope.sha, scope.environment)
        return JSONResponse(
            {
                "ok": True,
                "delivery": hook.delivery,
                "run_id": hook.run_id,
                "environment": hook.environment,
                "scope": scope.to_json(),
                "ref": hook.ref,
                "event": hook.event,
            }
        )

    def _opened_here(
        self, pending: PendingRun, arrival: Arrival, request_id: str, scope: Scope
    ) -> str | None:
        """Whether ``request_id`` was opened from the webhook kept for ``pending``, arriving at the signer as
        ``arrival`` says: None if so, else the reason it was not. The stamp is the signer's MAC keyed from
        the webhook secret, which the approver holds too; the id is recomputed with the signer's own
        function from the kept body and delivery, so a receipt of another run (another webhook) never
        matches (seventh review)."""
        try:
            body = base64.b64decode(pending.body or "", validate=True)
        except ValueError:
            body = b""
        if not body:
            return "no_webhook"
        hook, secret = pending.webhook, self.s.webhook_secret
        stamp = evidence.github_stamp(secret, body, hook.delivery, arrival.timestamp)
        if not hmac.compare_digest(stamp.encode(), arrival.stamp.encode()):
            return "stamp"
        if arrival.workflow != scope.workflow:
            return "workflow"
        origin = evidence.GitHubEvidence(
            body,
            hook.delivery,
            github_app.webhook_signature(secret, body),  # the only one check_webhook took for it
            arrival.workflow,
            arrival.timestamp,
            arrival.stamp,
        )
        same = hmac.compare_digest(evidence.request_id_for(origin).encode(), request_id.encode())
        return None if same else "request"

    async def approve(self, key: RunKey, receipt: bytes, arrival: Arrival) -> JSONResponse:
        """Approve the run waiting at ``key`` if ``receipt`` passes the gate for the run's scope as GitHub
        reports it and its request was opened from the run's kept webhook (``arrival``: its stamp)."""
        async with self._deciding(key) as pending:
            if isinstance(pending, JSONResponse):
                return pending
            scope = await self._checked_scope(pending)
            if isinstance(scope, JSONResponse):
                return scope
            try:
                verified = check_receipt(
                    receipt, self.s.keyset, scope, self.now(), allow_dev_keys=self.s.allow_dev_keys
                )
            except GateError as exc:
                log.warning("run %s/%s: receipt refused (%s)", key[0], key[1], exc.code)
                return _refusal(403, exc)
            approvers = [a.email or a.id for a in verified.approvals]
            link = self._link(verified.request_id)
            this_attempt = attempt_id(pending)
            rid = verified.request_id
            spent_on = self.spent.get(rid)
            if spent_on is not None and spent_on != this_attempt:
                return _error(409, "receipt_spent", request_id=rid, run=spent_on)
            # The scope is not the run: another waiting run of it (a pull_request_target run of main's sha,
            # its webhook forwarded without the signer's arrival check) must not take this request's receipt.
            problem = self._opened_here(pending, arrival, rid, scope)
            if problem is not None:
                log.warning("run %s/%s: request %s not opened for it (%s)", key[0], key[1], rid, problem)
                facts: dict[str, Fact] = {"reason": problem, "request_id": rid}
                if problem == "workflow":
                    facts |= {"workflow": arrival.workflow, "expected": scope.workflow}
                return _refusal(409, KeyturnError(code="receipt_not_for_run", facts=facts))
            # Spent *before* the review call, with no await between the check and this write: the lock is per
            # run, so a second run's approval with the same receipt may run meanwhile, and must find the
            # request taken. Never given back: a failed call may still have reached GitHub (a lost answer),
            # so the request stays bound to this run, which it may still approve on a retry.
            self.spent[rid] = this_attempt
            self._save()
            comment = github_app.approve_comment(rid, scope, approvers, link)
            return await self._review(pending, "approved", comment, rid)

    async def reject(
        self, key: RunKey, reason: str, request_id: str | None, delivery: str | None = None
    ) -> JSONResponse:
        """Reject the run waiting at ``key`` with ``reason``: fail-closed, so no receipt is needed. As for an
        approval, only the attempt it was meant for: ``delivery``, the webhook the bot opened the request
        from, must be the one kept for the waiting attempt, and GitHub must still report that attempt. A
        rejection retried after a re-run (GitHub answered 5xx the first time) would otherwise reject the new
        attempt, whose own request's approvers were never asked (``run_attempt_changed``, nothing posted)."""
        async with self._deciding(key) as pending:
            if isinstance(pending, JSONResponse):
                return pending
            if delivery is not None and delivery != pending.webhook.delivery:
                return _error(409, "run_attempt_changed", reason="delivery", delivery=delivery)
            run = await self._at_checked_attempt(pending)
            if isinstance(run, JSONResponse):
                return run
            rid = request_id if contract.is_request_id(request_id) else None
            comment = github_app.reject_comment(reason, rid, self._link(rid) if rid else None)
            return await self._review(pending, "rejected", comment, rid)

    async def status(self, key: RunKey, text: str) -> JSONResponse:
        """A status-only comment on a waiting run (no ``state``: it neither approves nor rejects). The text is
        the bot's: Markdown-escaped; GitHub takes at most 10 per deployment."""
        pending = _waiting(self.runs.get(key))
        if isinstance(pending, JSONResponse):
            return pending
        hook = pending.webhook
        body = {"environment_name": hook.environment, "comment": github_app.status_comment(text)}
        try:
            resp = await self.api.call("POST", hook.callback_path, hook.installation_id, body)
        except GitHubUnavailable as exc:
            return _refusal(502, exc)
        if resp.status_code != 204:
            return _error(502, "review_refused", reason="comment", status=resp.status_code)
        return JSONResponse({"ok": True, "run_id": key[0], "comment": body["comment"]})

    def _link(self, request_id: str) -> str | None:
        return self.s.request_link.format(request_id=request_id) if self.s.request_link else None

    async def _review(
        self, pending: PendingRun, state: str, comment: str, request_id: str | None
    ) -> JSONResponse:
        hook = pending.webhook
        body = {"environment_name": hook.environment, "state": state, "comment": comment}
        try:
            resp = await self.api.call("POST", hook.callback_path, hook.installation_id, body)
        except GitHubUnavailable as exc:
            return _refusal(502, exc)
        if resp.status_code == 422:
            # GitHub no longer waits for this review: an earlier answer of ours it took (a crash lost our
            # record of it, and the bot replays the outcome) or the run was cancelled there. Final: not a 5xx.
            return _error(409, "run_not_waiting")
        if resp.status_code != 204:
            return _error(502, "review_refused", reason="review", status=resp.status_code)
        pending.status, pending.comment = state, comment
        pending.body = None  # decided: no receipt is checked against it again, and the state file stays small
        self._save()
        log.info("run %s %s (request %s)", hook.run_id, state, request_id or "-")
        return JSONResponse({"ok": True, "run_id": hook.run_id, "state": state, "comment": comment})


def create_app(approver: Approver) -> Starlette:
    """The ASGI app (routes in the module docstring)."""

    def key(request: Request) -> RunKey:
        return int(request.path_params["run"]), str(request.path_params["environment"])

    async def webhook(request: Request) -> Response:
        body = await request.body()
        return await approver.webhook(dict(request.headers), body)

    async def approve(request: Request) -> Response:
        body = await request.body()
        if len(body) > MAX_RECEIPT_BODY:
            return _error(413, "too_large")
        arrival = arrival_from(request.headers)
        if isinstance(arrival, str):
            return _error(400, "bad_request", reason="arrival_header", name=arrival)
        return await approver.approve(key(request), body, arrival)

    async def reject(request: Request) -> Response:
        data, reason = await _json_text(request, "reason")
        if reason is None:
            return _error(400, "bad_request", reason="json_text", name="reason")
        delivery = data.get("delivery")
        if delivery is not None and (not isinstance(delivery, str) or not delivery.strip()):
            return _error(400, "bad_request", reason="json_text", name="delivery")
        return await approver.reject(key(request), reason, data.get("request_id"), delivery)

    async def status(request: Request) -> Response:
        _, text = await _json_text(request, "text")
        if text is None:
            return _error(400, "bad_request", reason="json_text", name="text")
        return await approver.status(key(request), text)

    async def get_run(request: Request) -> Response:
        pending = approver.runs.get(key(request))
        if pending is None:
            return _error(404, "unknown_run")
        return JSONResponse(
            {"run_id": pending.webhook.run_id, "status": pending.status, "comment": pending.comment}
        )

    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True})

    return Starlette(
        routes=[
            Route("/healthz", health),
            Route("/webhook", webhook, methods=["POST"]),
            Route("/runs/{run:int}/{environment}", get_run),
            Route("/runs/{run:int}/{environment}/approve", approve, methods=["POST"]),
            Route("/runs/{run:int}/{environment}/reject", reject, methods=["POST"]),
            Route("/runs/{run:int}/{environment}/status", status, methods=["POST"]),
        ]
    )


def _read_secret(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read().strip()


def main(argv: Sequence[str] | None = None) -> int:
    """``keyturn github-approver``: serve the approver on loopback until interrupted."""
    import uvicorn

    from keyturn.signer.policy import load_policy

    p = argparse.ArgumentParser(
        prog="keyturn github-approver",
        description="Hold the GitHub App key; approve protected runs only on verified receipts.",
    )
    p.add_argument("--host", default="127.0.0.1", help="loopback address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8767, help="port (default 8767)")
    p.add_argument("--api-url", default=DEFAULT_API, help=f"GitHub's REST API (default {DEFAULT_API})")
    p.add_argument("--app-id", required=True, help="the GitHub App's id")
    p.add_argument(
        "--app-key", required=True, help="PEM file: the App's private key (readable by this user only)"
    )
    p.add_argument("--webhook-secret-file", required=True, help="file holding the App's webhook secret")
    p.add_argument(
        "--keys",
        required=True,
        help="the pinned public keyset (file or https URL), as for verify; never the bot's /v1/keys",
    )
    p.add_argument("--policy", required=True, help="keyturn.toml: only its environments are gated here")
    p.add_argument("--request-link", help="URL template of a request, with {request_id}, for review comments")
    p.add_argument(
        "--state-file",
        type=Path,
        help="JSON file keeping deliveries taken, waiting runs and spent requests across restarts",
    )
    p.add_argument("--allow-dev-keys", action="store_true", help="accept development keys (local runs only)")
    p.add_argument("--attempts", type=int, default=4, help="tries per GitHub API call (default 4)")
    p.add_argument("--backoff", type=float, default=0.25, help="first retry delay in seconds (default 0.25)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per GitHub API call (default 10)")
    args = p.parse_args(argv)
    if args.host not in ("127.0.0.1", "::1", "localhost"):
        p.error("--host must be a loopback address: only the bot on this machine talks to the approver")
    try:
        keyset = load_keyset(args.keys, trust_keys_in_checkout=False)
    except GateError as exc:
        p.error(f"--keys: {exc.message}")
    import stat

    try:
        mode = os.stat(args.app_key).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            p.error(f"--app-key {args.app_key} is readable by others: chmod 600 it (it can approve deploys)")
        with open(args.app_key, "rb") as f:
            app_key = f.read()
    except OSError as exc:
        p.error(f"--app-key: cannot read {args.app_key}: {exc.strerror}")
    settings = Settings(
        api_url=args.api_url.rstrip("/"),
        app_id=args.app_id,
        app_key_pem=app_key,
        webhook_secret=_read_secret(args.webhook_secret_file),
        keyset=keyset,
        environments=frozenset(load_policy(args.policy).environments),
        allow_dev_keys=args.allow_dev_keys,
        request_link=args.request_link,
        attempts=max(1, args.attempts),
        backoff_s=args.backoff,
        timeout_s=args.timeout,
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    client = httpx.AsyncClient(follow_redirects=False)
    try:
        approver = Approver(settings, GitHubApi(settings, client), lambda: datetime.now(UTC), args.state_file)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        p.error(f"--state-file {args.state_file}: unusable ({type(exc).__name__}: {exc})")
    print(f"github approver listening on http://{args.host}:{args.port}", flush=True)
    uvicorn.run(create_app(approver), host=args.host, port=args.port, log_level="warning")
    return 0
