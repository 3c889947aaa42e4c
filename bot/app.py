"""The Slack endpoint: `POST /slack/events` -> signer check -> Bolt `AsyncApp` -> listeners (ack, hand off).

Flow of one request (docs/slack.md):

1. Read the raw body and the ``X-Slack-Request-Timestamp`` / ``X-Slack-Signature`` headers. Missing or
   malformed headers (a non-numeric timestamp) are refused here with a clean 401 — Bolt's own verifier would
   answer 500 (platform facts §1.3). Over-large bodies get 413, non-UTF-8 bodies 400.
2. Ask the signer (``check_slack``): the bot holds no signing secret, so Bolt's request verification is off.
   A refusal is 401 ``{"error":"invalid request"}``; an unreachable signer is 503 — fail closed.
3. Dispatch to the ``AsyncApp``. Authorization is local (no ``auth.test`` before any ack); a
   ``before_authorize`` middleware re-parses slash commands whose body contains the substring ``payload``
   (Bolt quirk, platform facts §2.1); a middleware refuses other workspaces when the policy names one.
4. Listeners ack at once — nothing before the ack waits on Redis, the signer or Slack — and hand the work to a
   tracked asyncio task (``SlackEndpoint.drain`` waits for them; failures are logged, never lost silently).

Refusals (``keyturn.bot.ports.Refused``) become an ephemeral reply with the service's sentence, escaped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import parse_qsl

from pydantic import ValidationError
from slack_bolt.async_app import AsyncApp
from slack_bolt.authorization import AuthorizeResult
from slack_bolt.context.ack.async_ack import AsyncAck
from slack_bolt.context.respond.async_respond import AsyncRespond
from slack_bolt.request.async_internals import build_async_context
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.response import BoltResponse
from slack_sdk.web.async_client import AsyncWebClient
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from keyturn.bot.cards import (
    APPROVE_ACTION,
    DENY_ACTION,
    DENY_CALLBACK,
    REASON_ACTION,
    REASON_BLOCK,
    REASON_MAX,
)
from keyturn.bot.models import REQUEST_ID_RE, DeployRequest, OriginEvidence, RequestIn, SlackEvidence
from keyturn.bot.ports import Approvals, Messenger, Refused
from keyturn.bot.prefilter import SourceLimiter, plausible
from keyturn.bot.signer_client import signer_unavailable
from keyturn.bot.slack_text import CHANNEL_ID_RE, channel_mention, escape, is_user_id, safe
from keyturn.bot.store import StoreConflict, StoreUnavailable
from keyturn.signer import contract
from keyturn.signer.errors import KeyturnError
from keyturn.signer.policy import Policy

log = logging.getLogger("keyturn.slack")

# What an approver reads when Redis stayed unreachable through the store's retries: nothing was recorded.
STORE_DOWN_APPROVE = (
    "Keyturn cannot reach its database right now, so your approval was *not* recorded. "
    "Please click Approve again in a minute."
)
STORE_DOWN_DENY = (
    "Keyturn cannot reach its database right now, so your denial was *not* recorded. "
    "Please click Deny again in a minute."
)
MAX_BODY = 512 * 1024  # a click carries the whole card; 512 KiB is far above any real Slack request
_TS_RE = re.compile(r"\A[0-9]{1,12}\Z")
_SIG_RE = re.compile(r"\Av0=[0-9a-f]{64}\Z")
DEFAULT_WORKFLOW = contract.DEFAULT_WORKFLOW
# How long the deny listener may spend checking the click before opening the modal: the trigger_id lives
# 3 s from the click, and the modal call itself needs time too.
DENY_CHECK_BUDGET = 1.2


class SlackChecker(Protocol):
    """The part of ``keyturn.bot.signer_client.SignerClient`` the endpoint needs."""

    async def check_slack(self, body: str, timestamp: str, signature: str) -> None:
        """Return if the request is genuine; raise ``SignerRefused`` / ``SignerUnavailable`` otherwise."""
        ...


def _invalid() -> JSONResponse:
    return JSONResponse({"error": "invalid request"}, status_code=401)


def _too_many_failures(retry: int) -> JSONResponse:
    return JSONResponse(
        {"error": "too many failed signature checks from this address"},
        status_code=429,
        headers={"Retry-After": str(retry)},
    )


def _malformed(problem: str) -> JSONResponse:
    return JSONResponse({"error": "malformed payload", "message": problem}, status_code=400)


# Members that Slack always sends as JSON objects in an interactivity payload. Bolt and the listeners read
# them with ``.get``; a signed but malformed payload must get a 400, not crash a listener (a 5xx).
_OBJECT_MEMBERS = (
    "user", "team", "channel", "container", "view", "message",
    "enterprise", "state", "event", "workflow_step",
)  # fmt: skip


def _shape_problem(body: object) -> str | None:
    """Why a parsed Slack request body has a shape no Slack request has, or None if it looks sane."""
    if not isinstance(body, dict):
        return "the payload is not a JSON object"
    for key in ("type", "command", "callback_id", "trigger_id"):
        if body.get(key) is not None and not isinstance(body[key], str):
            return f"{key} must be a string"
    for key in _OBJECT_MEMBERS:
        if body.get(key) is not None and not isinstance(body[key], dict):
            return f"{key} must be an object"
    actions = body.get("actions")
    if actions is not None:
        if not isinstance(actions, list) or not actions or not all(isinstance(a, dict) for a in actions):
            return "actions must be a non-empty list of objects"
        for action in actions:
            for key in ("action_id", "block_id", "type"):
                if action.get(key) is not None and not isinstance(action[key], str):
                    return f"actions[].{key} must be a string"
    view = body.get("view")
    if isinstance(view, dict):
        if not isinstance(view.get("type"), str):  # Bolt reads view["type"] unguarded
            return "view.type must be a string"
        for key in ("callback_id", "private_metadata", "id"):
            if view.get(key) is not None and not isinstance(view[key], str):
                return f"view.{key} must be a string"
        state = view.get("state")
        if state is not None and not isinstance(state, dict):
            return "view.state must be an object"
    return None


def _to_starlette(resp: BoltResponse) -> Response:
    headers = {k: v[0] for k, v in resp.headers.items() if v and k.lower() != "content-length"}
    return Response(content=resp.body or "", status_code=resp.status, headers=headers)


def help_text(command: str) -> str:
    """The usage text for the slash command (escaped mrkdwn: ``<repo>`` must not reach Slack as markup)."""
    c = command
    return escape(
        f"*{c}* — deploy approvals\n"
        f"• `{c} request <repo> <sha> <environment> [workflow]` — ask for approval (the card goes to the "
        "environment's channel)\n"
        f"• `{c} status <request-id>` — where a request stands\n"
        f"• `{c} pending` — requests you may approve now\n"
        f"• `{c} help` — this message"
    )


def status_line(req: DeployRequest) -> str:
    """One escaped mrkdwn line describing a request (for ``status`` and ``pending``)."""
    s = req.scope
    line = (
        f"`{req.id}` — `{escape(s.repo)}` @ `{s.sha[:12]}` to *{escape(s.environment)}* "
        f"({escape(s.workflow)}): *{req.status.value}*, {len(req.approvals)} of {req.required_approvals}"
        " approvals"
    )
    if req.deny_reason:
        line += f" — reason: {safe(' '.join(req.deny_reason.split()), 300)}"
    if req.card_error and not req.status.final:
        line += f" — card not posted yet ({safe(req.card_error, 100)})"
    return line


def _form(raw: str) -> dict[str, str]:
    return dict(parse_qsl(raw, keep_blank_values=True))


async def _reparse_slash_command(req: AsyncBoltRequest, next: Callable[[], Awaitable[Any]]) -> Any:
    """``before_authorize``: re-parse slash commands whose body contains the substring ``payload``.

    Bolt parses any form body containing "payload" as an interactivity payload, so
    ``/keyturn request acme/payload-svc ...`` would arrive as ``{}`` and be unhandled (platform facts §2.1).
    """
    if not req.body and req.raw_body and not req.raw_body.lstrip().startswith("{"):
        params = _form(req.raw_body)
        if "payload" not in params and "command" in params:
            req.body = params
            req.context = build_async_context(req.context, req.body)
            req.context.pop("respond", None)  # built earlier without the response_url; rebuilt on use
    return await next()


class SlackEndpoint:
    """The ``/slack/events`` endpoint: ``handle(request)`` is a Starlette request -> response function."""

    def __init__(
        self,
        approvals: Approvals,
        messenger: Messenger,
        signer: SlackChecker,
        policy: Policy,
        client: AsyncWebClient | None = None,
        *,
        deny_check_budget: float = DENY_CHECK_BUDGET,
        sources: SourceLimiter | None = None,
    ) -> None:
        self.approvals = approvals
        # Failed signature checks per client address: a source over its budget gets 429 before the signer.
        # None (unit tests): no per-source limit; the bot always passes one built from its settings.
        self.sources = sources or SourceLimiter.off()
        self.messenger = messenger
        self.signer = signer
        self.policy = policy
        self.command = policy.slack.command
        self.deny_check_budget = deny_check_budget
        self._tasks: set[asyncio.Task[None]] = set()
        self._token = client.token if client is not None else None
        # Bolt's per-request client is a token-less copy pointed at the same API; listeners call Slack
        # through the messenger, never through it.
        base_url = client.base_url if client is not None else None
        bolt_client = AsyncWebClient(base_url=base_url) if base_url else AsyncWebClient()
        # Bolt injects listener arguments by parameter name and counts ``self`` among them, so bound methods
        # are wrapped in plain functions with exactly the parameters Bolt should pass.

        async def authorize(
            enterprise_id: str | None, team_id: str | None, user_id: str | None
        ) -> AuthorizeResult:
            # Local: one workspace, the bot token from config. No auth.test round trip before an ack.
            return AuthorizeResult(
                enterprise_id=enterprise_id, team_id=team_id, user_id=user_id, bot_token=self._token
            )

        async def reparse(req: AsyncBoltRequest, next: Callable[[], Awaitable[Any]]) -> Any:
            return await _reparse_slash_command(req, next)

        async def team_guard(req: AsyncBoltRequest, next: Callable[[], Awaitable[Any]]) -> Any:
            return await self._team_guard(req, next)

        async def on_approve(ack: AsyncAck, body: dict[str, Any], request: AsyncBoltRequest) -> None:
            await self._on_approve(ack, body, request)

        async def on_deny(ack: AsyncAck, body: dict[str, Any]) -> None:
            await self._on_deny(ack, body)

        async def on_deny_submit(ack: AsyncAck, body: dict[str, Any], request: AsyncBoltRequest) -> None:
            await self._on_deny_submit(ack, body, request)

        async def on_command(
            ack: AsyncAck, body: dict[str, Any], request: AsyncBoltRequest, respond: AsyncRespond
        ) -> None:
            await self._on_command(ack, body, request, respond)

        self.app = AsyncApp(
            client=bolt_client,
            authorize=authorize,
            before_authorize=reparse,
            request_verification_enabled=False,  # the signer verified the request already
            ssl_check_enabled=False,  # an unsigned ssl_check must not get a 200 either
            url_verification_enabled=False,  # no Events API subscriptions
            ignoring_self_events_enabled=False,
            process_before_response=True,  # listeners only ack and spawn: no 10 ms ack polling
            raise_error_for_unhandled_request=False,
            name="keyturn",
        )
        self.app.use(team_guard)
        self.app.action(APPROVE_ACTION)(on_approve)
        self.app.action(DENY_ACTION)(on_deny)
        self.app.view(DENY_CALLBACK)(on_deny_submit)
        self.app.command(self.command)(on_command)

    # -- HTTP edge -----------------------------------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        """Serve one ``POST /slack/events``: verify via the signer, dispatch to Bolt, convert the response."""
        if request.method != "POST":
            return JSONResponse({"error": "method not allowed"}, status_code=405)
        source = request.client.host if request.client is not None else ""
        retry = self.sources.blocked(source)
        if retry is not None:  # before the body is read: a flooding source costs as little as possible
            return _too_many_failures(retry)
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY):
            return JSONResponse({"error": "request too large"}, status_code=413)
        # Read in chunks and stop at the cap: a chunked body has no Content-Length to refuse up front.
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY:
                return JSONResponse({"error": "request too large"}, status_code=413)
            chunks.append(chunk)
        raw = b"".join(chunks)
        try:
            body = raw.decode("utf-8")
        except UnicodeDecodeError:
            return JSONResponse({"error": "body is not UTF-8"}, status_code=400)
        # Refused without a signer call: missing, malformed or far-from-now headers (issue 14, finding 2).
        timestamp = request.headers.get("x-slack-request-timestamp", "")
        signature = request.headers.get("x-slack-signature", "")
        if not plausible(timestamp, signature, kind="slack"):
            self.sources.acquire(source)  # a failure: it costs the address a token, kept
            return _invalid()
        # The token is taken just before the signer call (not before the body, which may trickle in) and
        # given back if the request is authentic: at most the bucket's worth of checks per address at once.
        retry = self.sources.acquire(source)
        if retry is not None:
            return _too_many_failures(retry)
        try:
            await self.signer.check_slack(body, timestamp, signature)
        except (KeyturnError, OSError, TimeoutError) as exc:
            if not signer_unavailable(exc):
                return _invalid()
            log.error("signer unavailable: refusing a Slack request")
            self.sources.release(source)  # not the sender's failure
            return JSONResponse({"error": "signer unavailable"}, status_code=503)
        self.sources.release(source)  # authentic: the token comes back
        headers: dict[str, str | Sequence[str]] = {k: v for k, v in request.headers.items()}
        try:
            # Bolt parses the body here: a ``payload`` that is not a JSON object raises.
            bolt_req = AsyncBoltRequest(body=body, headers=headers, mode="http")
        except Exception:  # any parse failure, RecursionError included, is the sender's fault
            return _malformed("the payload is not a JSON object")
        problem = _shape_problem(bolt_req.body)
        if problem is not None:
            return _malformed(problem)
        try:
            resp = await self.app.async_dispatch(bolt_req)
        except Exception:  # never a stack trace to Slack
            log.exception("Slack request dispatch failed")
            return JSONResponse({"error": "internal error"}, status_code=503)
        if resp.status >= 500:  # a listener or middleware crashed: logged by Bolt; no 500 leaves the bot
            log.error("Slack request answered %s by Bolt", resp.status)
            return JSONResponse({"error": "internal error"}, status_code=503)
        return _to_starlette(resp)

    async def __call__(self, request: Request) -> Response:
        """Same as ``handle``."""
        return await self.handle(request)

    # -- background work -----------------------------------------------------------------------------------

    def spawn(self, what: str, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` after the ack, tracked until done; an exception is logged with ``what``."""
        task = asyncio.get_running_loop().create_task(work, name=f"slack:{what}")
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._done(what, t))

    def _done(self, what: str, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("slack %s failed", what, exc_info=task.exception())

    async def drain(self, within: float = 10.0) -> None:
        """Wait up to ``within`` s for post-ack work to finish (shutdown, tests), then cancel what is left."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=within)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    async def _tell(self, channel: str | None, user_id: str, text: str) -> None:
        """Ephemeral reply in ``channel`` (or a DM when there is none); Slack trouble is only logged."""
        try:
            if channel:
                await self.messenger.ephemeral(channel, user_id, text)
            else:
                await self.messenger.send_dm(user_id, text)
        except Exception as exc:  # the user misses a notice; nothing else depends on it
            log.warning("could not tell %s: %s", user_id, getattr(exc, "code", type(exc).__name__))

    # -- middleware ----------------------------------------------------------------------------------------

    async def _team_guard(self, req: AsyncBoltRequest, next: Callable[[], Awaitable[Any]]) -> Any:
        expected = self.policy.slack.team_id
        if expected is not None and req.context.team_id != expected:
            log.warning("refused a Slack request from another workspace")
            return BoltResponse(status=403, body=json.dumps({"error": "wrong workspace"}))
        return await next()

    # -- approve -------------------------------------------------------------------------------------------

    async def _on_approve(self, ack: AsyncAck, body: dict[str, Any], request: AsyncBoltRequest) -> None:
        await ack()
        user_id = _text(_obj(body.get("user")).get("id"))
        channel = _click_channel(body)
        request_id = _action_value(body)
        ts = request.headers.get("x-slack-request-timestamp", [""])[0]
        sig = request.headers.get("x-slack-signature", [""])[0]
        evidence = SlackEvidence(body=request.raw_body, timestamp=ts, signature=sig)
        self.spawn("approve", self._approve(request_id, user_id, channel, evidence))

    async def _approve(
        self, request_id: str | None, user_id: str, channel: str | None, evidence: SlackEvidence
    ) -> None:
        if request_id is None or not is_user_id(user_id):
            await self._tell(channel, user_id, "This button does not belong to a Keyturn request.")
            return
        try:
            req = await self.approvals.approve(request_id, user_id, evidence)
        except Refused as refused:
            await self._tell(channel, user_id, escape(refused.message))
            return
        except (StoreUnavailable, StoreConflict):
            # The store already retried on fresh connections for its budget; say plainly that nothing was
            # counted, so the approver clicks again instead of assuming their approval landed.
            log.warning("approval by %s on %s not recorded: store unavailable", user_id, request_id)
            await self._tell(channel, user_id, STORE_DOWN_APPROVE)
            return
        if not req.status.final:
            await self._tell(
                channel,
                user_id,
                f"Your approval is recorded ({len(req.approvals)} of {req.required_approvals}).",
            )

    # -- deny ----------------------------------------------------------------------------------------------

    async def _on_deny(self, ack: AsyncAck, body: dict[str, Any]) -> None:
        await ack()
        user_id = _text(_obj(body.get("user")).get("id"))
        trigger_id = _text(body.get("trigger_id"))
        self.spawn("deny", self._open_deny(_action_value(body), user_id, _click_channel(body), trigger_id))

    async def _open_deny(
        self, request_id: str | None, user_id: str, channel: str | None, trigger_id: str
    ) -> None:
        if request_id is None or not is_user_id(user_id) or not trigger_id:
            await self._tell(channel, user_id, "This button does not belong to a Keyturn request.")
            return
        # Check first, so a non-approver or a click on a decided request gets its answer instead of a
        # modal whose submission would be refused. Bounded, so the 3 s trigger is never at risk.
        try:
            req = await asyncio.wait_for(
                self.approvals.check_can_decide(request_id, user_id), self.deny_check_budget
            )
        except Refused as refused:
            await self._tell(channel, user_id, escape(refused.message))
            return
        except TimeoutError:
            await self._tell(channel, user_id, "Keyturn is busy; please click Deny again.")
            return
        except (StoreUnavailable, StoreConflict):
            await self._tell(channel, user_id, STORE_DOWN_DENY)
            return
        try:
            await self.messenger.open_deny_modal(trigger_id, req)
        except Exception as exc:  # an expired or bogus trigger_id: Slack refuses the modal
            log.warning("could not open the deny modal: %s", getattr(exc, "code", type(exc).__name__))
            await self._tell(channel, user_id, "The deny form could not be opened; please click Deny again.")

    async def _on_deny_submit(self, ack: AsyncAck, body: dict[str, Any], request: AsyncBoltRequest) -> None:
        view = _obj(body.get("view"))
        request_id = _text(view.get("private_metadata"))
        values = _obj(_obj(view.get("state")).get("values"))
        value = _obj(_obj(values.get(REASON_BLOCK)).get(REASON_ACTION)).get("value")
        reason = value.strip() if isinstance(value, str) else ""
        if not reason:
            await ack(response_action="errors", errors={REASON_BLOCK: "Please say why you deny this deploy."})
            return
        if len(reason) > REASON_MAX:
            await ack(
                response_action="errors",
                errors={REASON_BLOCK: f"Please keep the reason under {REASON_MAX} characters."},
            )
            return
        if not REQUEST_ID_RE.fullmatch(request_id):
            await ack(response_action="errors", errors={REASON_BLOCK: "This form is not a Keyturn request."})
            return
        await ack()
        user_id = _text(_obj(body.get("user")).get("id"))
        # The submission as Slack signed it: the signer reads who denied and why from these bytes when it
        # records the denial, so the record does not rest on the bot's word.
        ts = request.headers.get("x-slack-request-timestamp", [""])[0]
        sig = request.headers.get("x-slack-signature", [""])[0]
        evidence = SlackEvidence(body=request.raw_body, timestamp=ts, signature=sig)
        self.spawn("deny_submit", self._deny(request_id, user_id, reason, evidence))

    async def _deny(self, request_id: str, user_id: str, reason: str, evidence: SlackEvidence) -> None:
        if not is_user_id(user_id):
            return
        try:
            await self.approvals.deny(request_id, user_id, reason, evidence)
        except (StoreUnavailable, StoreConflict):
            log.warning("denial by %s on %s not recorded: store unavailable", user_id, request_id)
            await self._tell(None, user_id, STORE_DOWN_DENY)
        except Refused as refused:
            # A modal has no channel: answer where the card is, else in a DM.
            channel = None
            try:
                card = (await self.approvals.get(request_id)).card
                channel = card.channel if card else None
            except Refused:
                pass
            await self._tell(channel, user_id, escape(refused.message))

    # -- slash command -------------------------------------------------------------------------------------

    async def _on_command(
        self, ack: AsyncAck, body: dict[str, Any], request: AsyncBoltRequest, respond: AsyncRespond
    ) -> None:
        words = _text(body.get("text")).split()
        sub = words[0].lower() if words else "help"
        user_id = _text(body.get("user_id"))
        if sub == "request" and len(words) in (4, 5):
            repo, sha, environment = words[1:4]
            workflow = words[4] if len(words) == 5 else DEFAULT_WORKFLOW
            try:
                request_in = RequestIn(
                    repo=repo,
                    sha=sha,
                    environment=environment,
                    workflow=workflow,
                    requester=f"slack:{user_id}",
                )
            except ValidationError as exc:
                await ack(text=_validation_text(exc, self.command), response_type="ephemeral")
                return
            ts = request.headers.get("x-slack-request-timestamp", [""])[0]
            sig = request.headers.get("x-slack-signature", [""])[0]
            origin = OriginEvidence(kind="slack_command", body=request.raw_body, timestamp=ts, signature=sig)
            await ack()
            self.spawn("command_request", self._request(request_in, origin, respond))
        elif sub == "status" and len(words) == 2 and REQUEST_ID_RE.fullmatch(words[1]):
            await ack()
            self.spawn("command_status", self._status(words[1], respond))
        elif sub == "pending" and len(words) == 1 and is_user_id(user_id):
            await ack()
            self.spawn("command_pending", self._pending(user_id, respond))
        else:
            await ack(text=help_text(self.command), response_type="ephemeral")

    async def _request(self, body: RequestIn, origin: OriginEvidence, respond: AsyncRespond) -> None:
        try:
            req, created = await self.approvals.create(body, origin)
        except Refused as refused:
            await respond(text=escape(refused.message), response_type="ephemeral")
            return
        env = self.policy.environments.get(req.scope.environment)
        mention = channel_mention(env.channel) if env else None
        where = f" in {mention}" if mention else ""
        if created:
            text = f"Requested `{req.id}`: the approval card is posted{where}."
        else:
            text = f"The same deploy is already waiting for approval as `{req.id}`{where}."
        await respond(text=text, response_type="ephemeral")

    async def _status(self, request_id: str, respond: AsyncRespond) -> None:
        try:
            req = await self.approvals.get(request_id)
        except Refused as refused:
            await respond(text=escape(refused.message), response_type="ephemeral")
            return
        await respond(text=status_line(req), response_type="ephemeral")

    async def _pending(self, user_id: str, respond: AsyncRespond) -> None:
        reqs = await self.approvals.pending_for(user_id)
        if not reqs:
            await respond(text="Nothing is waiting for your approval.", response_type="ephemeral")
            return
        lines = [status_line(r) for r in reqs[:20]]
        if len(reqs) > 20:
            lines.append(f"… and {len(reqs) - 20} more.")
        await respond(text="\n".join(lines), response_type="ephemeral")


def _obj(value: object) -> Mapping[str, Any]:
    """``value`` if it is a JSON object, else an empty one (payload members are untrusted in shape too)."""
    return value if isinstance(value, dict) else {}


def _text(value: object) -> str:
    """``value`` if it is a string, else ``""``."""
    return value if isinstance(value, str) else ""


def _click_channel(body: Mapping[str, Any]) -> str | None:
    channel = _obj(body.get("channel")).get("id") or _obj(body.get("container")).get("channel_id")
    return channel if isinstance(channel, str) and CHANNEL_ID_RE.fullmatch(channel) else None


def _action_value(body: Mapping[str, Any]) -> str | None:
    """The clicked button's request id (untrusted: only its shape is checked; the service rules)."""
    actions = body.get("actions") or []
    value = actions[0].get("value") if actions and isinstance(actions[0], dict) else None
    return value if isinstance(value, str) and REQUEST_ID_RE.fullmatch(value) else None


def _validation_text(exc: ValidationError, command: str) -> str:
    problems = "; ".join(
        f"{'.'.join(str(p) for p in err['loc'])}: {str(err['msg']).removeprefix('Value error, ')}"
        for err in exc.errors(include_url=False)
    )
    return f"Cannot request that: {safe(problems, 1000)}\n" + escape(
        f"Usage: `{command} request <repo> <sha> <environment> [workflow]`"
    )


def build_slack_endpoint(
    approvals: Approvals,
    messenger: Messenger,
    signer: SlackChecker,
    policy: Policy,
    client: AsyncWebClient | None = None,
    **options: Any,
) -> SlackEndpoint:
    """The ``/slack/events`` endpoint. Mount it with ``Route("/slack/events", ep.handle, methods=["POST"])``.

    ``client`` is the bot's ``AsyncWebClient`` (its token and base URL). On shutdown: ``await ep.drain()``.
    """
    return SlackEndpoint(approvals, messenger, signer, policy, client, **options)
