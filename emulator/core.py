"""The emulator: state, faults and recorder, the Web API call path, and the acting-as-Slack deliveries.

HTTP-free apart from the outbound POSTs to the bot (aiohttp, a runtime dependency):
:mod:`keyturn.emulator.app` turns requests into calls on :class:`Emulator` and its answers into responses.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from pydantic import SecretStr

from keyturn.emulator.blockkit import BlockKitError, validate_message_blocks, validate_view
from keyturn.emulator.clock import Clock, SystemClock
from keyturn.emulator.errors import EmulatorError, SlackError
from keyturn.emulator.faults import Faults
from keyturn.emulator.interactions import (
    SignedRequest,
    block_actions_payload,
    command_body,
    interactivity_body,
    sign_request,
    submission_values,
    view_submission_payload,
)
from keyturn.emulator.recorder import Recorder
from keyturn.emulator.state import TRIGGER_TTL, Conversation, Message, WorkspaceState
from keyturn.emulator.webapi import LINK_METHODS, METHODS
from keyturn.emulator.workspace import User, Workspace, load_workspace

ACK_TIMEOUT = 3.0  # Slack gives up on the bot's answer after 3 s
MAX_DELIVERIES = 1000


@dataclass(frozen=True)
class EmulatorSettings:
    """How the emulator runs. Read once (``__main__``) and passed in."""

    workspace: Workspace = field(default_factory=load_workspace)
    signing_secret: SecretStr | None = None
    bot_url: str | None = None  # the bot's Slack request URL, e.g. http://127.0.0.1:3001/slack/events
    public_url: str | None = None  # base of response_urls; default: the URL the emulator was reached at
    bot_token: SecretStr | None = None  # if set, the only accepted token; otherwise any xoxb- token
    trigger_ttl: float = TRIGGER_TTL
    ack_timeout: float = ACK_TIMEOUT


@dataclass(frozen=True)
class ApiAnswer:
    """An HTTP answer of the emulated Web API."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str]


def _parse_ack(text: str, content_type: str) -> Any:
    """The bot's ack body: JSON if it is JSON, else the text (Bolt answers text/plain for ``ack("x")``)."""
    if not text:
        return None
    if "json" in content_type or text.lstrip().startswith("{"):
        try:
            return json.loads(text)
        except (ValueError, RecursionError):
            return text
    return text


class Emulator:
    """One emulated Slack workspace with its Web API and its interactions toward one bot."""

    def __init__(self, settings: EmulatorSettings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        self.state = WorkspaceState(settings.workspace, settings.trigger_ttl, started_at=self.clock.now())
        self.faults = Faults()
        self.recorder = Recorder()
        self.bot_url = settings.bot_url
        self.deliveries: list[dict[str, Any]] = []
        self._session: aiohttp.ClientSession | None = None

    async def aclose(self) -> None:
        """Close the outbound HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def reset(self) -> None:
        """Forget messages, views, calls, deliveries and faults (the workspace and bot URL stay)."""
        self.state.reset()
        self.recorder.clear()
        self.faults.clear()
        self.deliveries = []

    # -- Web API ---------------------------------------------------------------------------------------------

    def _scope_header(self) -> dict[str, str]:
        return {"x-oauth-scopes": ",".join(self.state.workspace.bot.scopes)}

    def _check_token(self, token: str | None) -> None:
        if not token:
            raise SlackError("not_authed")
        expected = self.settings.bot_token
        if expected is not None:
            if token != expected.get_secret_value():
                raise SlackError("invalid_auth")
        elif not token.startswith("xoxb-") or len(token) <= len("xoxb-"):
            raise SlackError("invalid_auth")

    def public_base(self, base_url: str | None) -> str:
        """The emulator's own URL as links show it: ``public_url`` if set, else the URL it was reached at."""
        return (self.settings.public_url or base_url or "http://localhost").rstrip("/")

    async def call_api(
        self, method: str, params: dict[str, Any], token: str | None, *, base_url: str | None = None
    ) -> ApiAnswer:
        """Run one Web API call: auth, scopes, faults, the method, and recording. Never raises.

        ``base_url`` is the URL the call reached the emulator at; links in answers (permalinks) use it.
        """
        status, headers = 200, self._scope_header()
        try:
            entry = METHODS.get(method)
            link = LINK_METHODS.get(method)
            if entry is None and link is None:
                raise SlackError("unknown_method", req_method=method)
            self._check_token(token)
            needed = entry[1] if entry is not None else link[1] if link is not None else ()
            missing = [s for s in needed if s not in self.state.workspace.bot.scopes]
            if missing:
                raise SlackError(
                    "missing_scope", needed=",".join(missing), provided=headers["x-oauth-scopes"]
                )
            fault = self.faults.take(method)
            if fault is not None:
                if fault.latency:
                    await asyncio.sleep(fault.latency)  # simulated slowness, not synchronization
                if fault.status == 429:
                    status = 429
                    headers["Retry-After"] = str(fault.retry_after)
                    raise SlackError(fault.error or "ratelimited")
                if fault.status != 200:
                    status = fault.status
                    raise SlackError(fault.error or "internal_error")
                if fault.error:
                    raise SlackError(fault.error)
            if link is not None:
                body = link[0](self.state, params, self.clock.now(), self.public_base(base_url))
            elif entry is not None:
                body = entry[0](self.state, params, self.clock.now())
        except SlackError as exc:
            body = exc.body()
        await self.recorder.record(method, params, token, self.clock.now(), status, body)
        return ApiAnswer(status, body, headers)

    # -- response_url ----------------------------------------------------------------------------------------

    async def post_response(self, target_id: str, params: Any) -> tuple[int, str]:
        """Handle a POST to a response URL; apply ``replace_original``/``delete_original`` or post anew.

        Returns (HTTP status, text body) as Slack answers: ``ok`` or an error word."""
        now = self.clock.now()
        status, answer = 200, "ok"
        recorded = params if isinstance(params, dict) else {"_body": params}
        try:
            if not isinstance(params, dict):
                raise SlackError("invalid_payload")
            fault = self.faults.take("response_url")
            if fault is not None:
                if fault.latency:
                    await asyncio.sleep(fault.latency)
                if fault.status != 200 or fault.error:
                    status = fault.status if fault.status != 200 else 400
                    raise SlackError(fault.error or "internal_error")
            target = self.state.use_response_target(target_id, now)
            self._apply_response(target.channel, target.user, target.message_ts, target.is_ephemeral, params)
            target.posts.append(params)
        except SlackError as exc:
            if status == 200:
                status = 404 if exc.code in ("expired_url", "used_url") else 400
            answer = exc.code
        await self.recorder.record(
            "response_url", {**recorded, "response_url_id": target_id}, None, now, status, answer
        )
        return status, answer

    def _apply_response(
        self, channel: str, user: str, message_ts: str | None, is_ephemeral: bool, params: dict[str, Any]
    ) -> None:
        now = self.clock.now()
        blocks = params.get("blocks")
        if blocks is not None:
            try:
                validate_message_blocks(blocks)
            except BlockKitError:
                raise SlackError("invalid_blocks") from None
        text = params.get("text")
        if text is not None and not isinstance(text, str):
            raise SlackError("invalid_payload")
        if params.get("delete_original") in (True, "true"):
            if message_ts is None:
                raise SlackError("no_original_message")
            if is_ephemeral:
                self.state.delete_ephemeral(channel, message_ts)
            else:
                self.state.delete_message(channel, message_ts)
            return
        if not text and not blocks:
            raise SlackError("no_text")
        if params.get("replace_original") in (True, "true") and message_ts is not None:
            if is_ephemeral:
                eph = self.state.ephemeral(channel, message_ts, user)
                if eph is None:
                    raise SlackError("message_not_found")
                self.state.replace_ephemeral(eph, text or None, blocks)
            else:
                self.state.update_message(
                    channel, message_ts, now=now, text=text or None, blocks=blocks or [], replace=True
                )
            return
        thread_ts = params.get("thread_ts") if isinstance(params.get("thread_ts"), str) else None
        if params.get("response_type") == "in_channel":
            self.state.post_message(channel, text=text or None, blocks=blocks, now=now, thread_ts=thread_ts)
        else:
            self.state.post_ephemeral(
                channel, user, text=text or None, blocks=blocks, now=now, thread_ts=thread_ts
            )

    # -- acting as Slack -------------------------------------------------------------------------------------

    def _user(self, user_id: str) -> User:
        user = self.state.workspace.user(user_id)
        if user is None or user.is_bot or user.deleted:
            raise EmulatorError("user_not_found", f"no such user in the workspace: {user_id!r}", 404)
        return user

    def _conversation(self, ref: str, user: User) -> Conversation:
        try:
            conv = self.state.conversation(ref)
        except SlackError:
            raise EmulatorError("channel_not_found", f"no such channel: {ref!r}", 404) from None
        if user.id not in conv.members:
            raise EmulatorError("not_in_channel", f"{user.name} is not a member of {conv.name}", 403)
        return conv

    def _secret(self) -> str:
        secret = self.settings.signing_secret
        if secret is None or not secret.get_secret_value().strip():
            raise EmulatorError("signing_secret_not_set", "the emulator has no Slack signing secret", 409)
        return secret.get_secret_value()

    def _timestamp(self, timestamp: int | None) -> int:
        return int(self.clock.now()) if timestamp is None else timestamp

    async def _deliver(self, req: SignedRequest, send: bool) -> dict[str, Any]:
        """POST ``req`` to the bot exactly as built; record and return what happened."""
        result: dict[str, Any] = {"ok": True, "request": req.to_json(), "response": None}
        if send:
            if req.url is None:
                raise EmulatorError("bot_url_not_set", "the emulator has no bot URL to send to", 409)
            if self._session is None:
                self._session = aiohttp.ClientSession()
            started = time.monotonic()
            try:
                timeout = aiohttp.ClientTimeout(total=self.settings.ack_timeout)
                async with self._session.post(
                    req.url,
                    data=req.body.encode(),
                    headers=req.headers,
                    timeout=timeout,
                    allow_redirects=False,
                ) as resp:
                    text = await resp.text(errors="replace")
                    content_type = resp.headers.get("Content-Type", "")
                    result["response"] = {
                        "status": resp.status,
                        "headers": dict(resp.headers),
                        "body": text,
                        "json": _parse_ack(text, content_type) if "json" in content_type else None,
                    }
            except TimeoutError:
                result.update(ok=False, error="bot_timeout")
            except aiohttp.ClientError as exc:
                result.update(ok=False, error="bot_unreachable", message=type(exc).__name__)
            result["elapsed_ms"] = round((time.monotonic() - started) * 1000, 1)
            self.deliveries.append(result)
            del self.deliveries[:-MAX_DELIVERIES]
        return result

    async def _sign_and_deliver(
        self, kind: str, body: str, secret: str, timestamp: int | None, tamper_signature: bool, send: bool
    ) -> dict[str, Any]:
        """Sign ``body`` as Slack would (at ``timestamp``, or now); deliver it to the bot if ``send``."""
        req = sign_request(kind, self.bot_url, body, secret, self._timestamp(timestamp), tamper_signature)
        return await self._deliver(req, send)

    async def click(
        self,
        *,
        user: str,
        channel: str,
        ts: str,
        action_id: str,
        value: str | None = None,
        base_url: str,
        send: bool = True,
        timestamp: int | None = None,
        tamper_signature: bool = False,
    ) -> dict[str, Any]:
        """``user`` clicks ``action_id`` on the stored message ``(channel, ts)``: signed ``block_actions``."""
        acting = self._user(user)
        conv = self._conversation(channel, acting)
        source: Any = self.state.message(conv.id, ts) or self.state.ephemeral(conv.id, ts, acting.id)
        if source is None:
            raise EmulatorError("message_not_found", f"no message {ts} in {conv.name} for {acting.name}", 404)
        secret = self._secret()
        now, trigger_id, response_url = self._issue(
            acting, conv, base_url, message_ts=ts, is_ephemeral=not isinstance(source, Message)
        )
        payload = block_actions_payload(
            self.state,
            user=acting,
            conv=conv,
            source=source,
            action_id=action_id,
            value=value,
            trigger_id=trigger_id,
            response_url=response_url,
            now=now,
        )
        result = await self._sign_and_deliver(
            "block_actions", interactivity_body(payload), secret, timestamp, tamper_signature, send
        )
        result["trigger_id"] = trigger_id
        return result

    async def submit_view(
        self,
        *,
        user: str,
        view_id: str,
        values: dict[str, dict[str, Any]],
        send: bool = True,
        timestamp: int | None = None,
        tamper_signature: bool = False,
    ) -> dict[str, Any]:
        """``user`` submits the open view ``view_id`` with ``values``: a signed ``view_submission``.

        Applies the bot's ack as Slack does: close (empty 200), ``errors`` (view stays open, errors shown),
        ``update``, ``push`` or ``clear``."""
        acting = self._user(user)
        view = self.state.views.get(view_id)
        if view is None or not view.is_open:
            raise EmulatorError("view_not_found", f"no open view {view_id!r}", 404)
        if view.user != acting.id:
            raise EmulatorError("view_not_found", f"view {view_id} is not open for {acting.name}", 404)
        secret = self._secret()
        now = self.clock.now()
        view.state_values = submission_values(view, values)
        trigger_id = self.state.issue_trigger(acting.id, now)
        payload = view_submission_payload(self.state, user=acting, view=view, trigger_id=trigger_id)
        result = await self._sign_and_deliver(
            "view_submission", interactivity_body(payload), secret, timestamp, tamper_signature, send
        )
        response = result.get("response")
        if response is not None and response["status"] == 200:
            result["view_outcome"] = self._apply_view_ack(view.id, response["body"])
        return result

    def _apply_view_ack(self, view_id: str, body: str) -> str:
        view = self.state.views[view_id]
        ack = _parse_ack(body, "")
        if ack is None:
            self.state.close_view(view)
            return "closed"
        action = ack.get("response_action") if isinstance(ack, dict) else None
        if action == "errors":
            errors = ack.get("errors")
            if not isinstance(errors, dict) or not all(isinstance(v, str) for v in errors.values()):
                return "invalid_ack"
            self.state.set_view_errors(view, {str(k): v for k, v in errors.items()})
            return "errors"
        if action == "clear":
            self.state.close_view(view, clear=True)
            return "cleared"
        if action in ("update", "push") and isinstance(ack, dict):
            try:
                validate_view(ack.get("view"))
            except BlockKitError:
                return "invalid_ack"
            now = self.clock.now()
            if action == "update":
                self.state.update_view(ack["view"], now, view_id=view.id)
                return "updated"
            self.state.open_view(view.user, ack["view"], now, previous=view)
            return "pushed"
        return "invalid_ack"

    def close_view(self, *, user: str, view_id: str) -> None:
        """``user`` dismisses the modal (``view_closed`` is not sent)."""
        acting = self._user(user)
        view = self.state.views.get(view_id)
        if view is None or view.user != acting.id:
            raise EmulatorError("view_not_found", f"no view {view_id!r} for {acting.name}", 404)
        self.state.close_view(view, clear=True)

    async def command(
        self,
        *,
        user: str,
        channel: str,
        command: str,
        text: str = "",
        base_url: str,
        send: bool = True,
        timestamp: int | None = None,
        tamper_signature: bool = False,
    ) -> dict[str, Any]:
        """``user`` types ``command text`` in ``channel``: a signed slash command form body.

        The bot's ack is shown as Slack shows it: text or an ephemeral/in_channel JSON message; an error
        status becomes Slack's "failed with the error" ephemeral notice."""
        if not command.startswith("/") or len(command) < 2 or any(c.isspace() for c in command):
            raise EmulatorError("invalid_command", "a command looks like /name", 400)
        acting = self._user(user)
        conv = self._conversation(channel, acting)
        secret = self._secret()
        _, trigger_id, response_url = self._issue(acting, conv, base_url)
        body = command_body(
            self.state,
            user=acting,
            conv=conv,
            command=command,
            text=text,
            response_url=response_url,
            trigger_id=trigger_id,
        )
        result = await self._sign_and_deliver(
            "slash_command", body, secret, timestamp, tamper_signature, send
        )
        result["trigger_id"] = trigger_id
        if send:
            self._show_command_ack(conv, acting, command, result)
        return result

    def _show_command_ack(self, conv: Conversation, user: User, command: str, result: dict[str, Any]) -> None:
        now = self.clock.now()
        response = result.get("response")
        if response is None or response["status"] != 200:
            error = "dispatch_failed" if response is not None else "operation_timeout"
            self.state.post_ephemeral(
                conv.id, user.id, text=f'{command} failed with the error "{error}"', blocks=None, now=now
            )
            return
        ack = _parse_ack(response["body"], response["headers"].get("Content-Type", ""))
        if isinstance(ack, str):
            self.state.post_ephemeral(conv.id, user.id, text=ack, blocks=None, now=now)
        elif isinstance(ack, dict) and (ack.get("text") or ack.get("blocks")):
            text = str(ack.get("text") or "") or None
            blocks = ack.get("blocks")
            try:
                if blocks is not None:
                    validate_message_blocks(blocks)
            except BlockKitError:
                result["ack_error"] = "invalid_blocks"
                return
            if ack.get("response_type") == "in_channel":
                self.state.post_message(conv.id, text=text, blocks=blocks, now=now)
            else:
                self.state.post_ephemeral(conv.id, user.id, text=text, blocks=blocks, now=now)

    def _issue(
        self, acting: User, conv: Conversation, base_url: str, **target: Any
    ) -> tuple[float, str, str]:
        """The time, a trigger id and a response URL for one interaction of ``acting`` in ``conv``, issued as
        Slack issues them (``target``: what the response URL may replace; see ``issue_response_target``)."""
        now = self.clock.now()
        trigger_id = self.state.issue_trigger(acting.id, now)
        response_target = self.state.issue_response_target(conv.id, acting.id, now, **target)
        return now, trigger_id, self._response_url(base_url, response_target.id)

    def _response_url(self, base_url: str, target_id: str) -> str:
        base = (self.settings.public_url or base_url).rstrip("/")
        return f"{base}/_emulator/response/{target_id}"
