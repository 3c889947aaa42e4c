"""``SlackMessenger``: the approval logic's only way to talk to Slack (implements
``keyturn.bot.ports.Messenger``).

Every Web API call goes through one retry loop: HTTP 429 waits the ``Retry-After`` Slack asks for (capped),
5xx, transient ``ok:false`` errors and connection errors back off exponentially with jitter (capped), up to a
fixed number of attempts. Anything else Slack refuses becomes a typed ``SlackError`` subclass with a stable
``code``; callers branch on the class or the code, never on Slack's message. Nothing here logs the token or
message bodies. Time (clock, sleep) is injected so tests need not wait. See docs/slack.md.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from keyturn.bot.cards import deny_modal, render_card
from keyturn.bot.models import CardRef, DeployRequest
from keyturn.bot.notices import SlackIntents
from keyturn.signer.errors import KeyturnError
from keyturn.signer.policy import Policy

log = logging.getLogger("keyturn.slack")

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]
Now = Callable[[], datetime]

# The bot's one HTTP session for Slack (``SlackMessenger.start``) holds at most this many connections, in use
# and idle together: the bot talks to one host (Slack's Web API, or the emulator), and aiohttp reuses an idle
# connection before it opens one, so the connector's per-host limit bounds the sockets. A call beyond the
# limit waits for a free connection within its own timeout. Eight in flight is far above what Slack's rate
# limits let one app sustain; a stalled callback receiver or a burst of clicks cannot widen it
# (tests/bot/test_callback_outbox.py counts the bot's open files with this bound).
SLACK_MAX_CONNECTIONS = 8
# An idle connection is closed after this many seconds (Slack's load balancers drop idle ones anyway; a call
# that meets one closed under it fails with a connection error, which ``SlackMessenger.call`` retries).
SLACK_KEEPALIVE_SECONDS = 10.0

# Slack ``ok:false`` errors that mean "try again later", not "you asked for something wrong".
_TRANSIENT = frozenset(
    {"ratelimited", "rate_limited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)
_NOT_FOUND = frozenset(
    {
        "channel_not_found",
        "message_not_found",
        "user_not_found",
        "users_not_found",
        "no_such_subteam",
        "subteam_not_found",
        "not_in_channel",
        "is_archived",
        "user_not_in_channel",
    }
)
_AUTH = frozenset(
    {
        "invalid_auth",
        "not_authed",
        "token_revoked",
        "token_expired",
        "account_inactive",
        "missing_scope",
        "not_allowed_token_type",
        "no_permission",
    }
)


class SlackError(KeyturnError):
    """Slack refused a call or could not be reached. ``code`` is stable; ``slack_error`` is Slack's word.

    The facts (``method``, ``slack_error``, ``status``) are worded by ``keyturn.signer.words``."""

    code = "slack_error"

    def __init__(self, method: str, slack_error: str, status: int | None = None) -> None:
        super().__init__(method=method, slack_error=slack_error, status=status)
        self.method = method
        self.slack_error = slack_error
        self.status = status


class SlackNotFound(SlackError):
    """The channel, message, user or user group does not exist (or the bot cannot see it)."""

    code = "slack_not_found"


class SlackAuthError(SlackError):
    """The bot token is invalid, revoked or lacks a scope: an operator must fix the installation."""

    code = "slack_auth"


class SlackUnavailable(SlackError):
    """Slack kept answering 429/5xx, or could not be reached, for every attempt."""

    code = "slack_unavailable"


class SlackRejected(SlackError):
    """Slack refused the call as malformed or not allowed now (``invalid_blocks``, expired trigger, ...)."""

    code = "slack_rejected"


class CardMissing(SlackError):
    """``update_card`` was asked to update a request whose card was never posted."""

    code = "card_missing"


def _classify(method: str, slack_error: str, status: int | None) -> SlackError:
    if slack_error in _NOT_FOUND:
        return SlackNotFound(method, slack_error, status)
    if slack_error in _AUTH:
        return SlackAuthError(method, slack_error, status)
    return SlackRejected(method, slack_error, status)


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try: ``attempts`` in all; backoff ``base * 2**n`` capped at ``cap`` seconds, with jitter.

    ``max_retry_after`` caps how long a single ``Retry-After`` is honoured, so one call cannot stall for
    minutes; ``deadline`` (seconds, optional) bounds the whole call, retries included.
    """

    attempts: int = 5
    base: float = 0.25
    cap: float = 8.0
    max_retry_after: float = 30.0
    deadline: float | None = None

    def backoff(self, attempt: int) -> float:
        """The wait before retry number ``attempt`` (0-based): full jitter over the capped exponential."""
        ceiling: float = min(self.cap, self.base * (2**attempt))
        return ceiling / 2 + random.random() * ceiling / 2


# trigger_id lives 3 s and is single use: a modal is opened promptly or not at all.
MODAL_RETRY = RetryPolicy(attempts=3, base=0.1, cap=0.5, max_retry_after=1.0, deadline=2.5)


def _retry_after(exc: SlackApiError) -> float | None:
    headers = getattr(exc.response, "headers", None) or {}
    for key, value in dict(headers).items():
        if str(key).lower() == "retry-after":
            raw = value[0] if isinstance(value, list | tuple) else value
            try:
                return max(0.0, float(raw))
            except (TypeError, ValueError):
                return None
    return None


class _TtlCache:
    """A tiny time-bounded cache (per key), so a burst of clicks asks Slack once per group."""

    def __init__(self, ttl: float, clock: Clock) -> None:
        self.ttl = ttl
        self.clock = clock
        self._items: dict[str, tuple[float, Any]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def get(self, key: str) -> tuple[bool, Any]:
        item = self._items.get(key)
        if item is None or self.clock() >= item[0]:
            return False, None
        return True, item[1]

    def put(self, key: str, value: Any) -> None:
        self._items[key] = (self.clock() + self.ttl, value)

    def lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())


class SlackMessenger(SlackIntents):
    """Posts and updates cards, replies, DMs and modals; looks up groups and emails. See ``Messenger``; the
    intent methods (outcomes, reminders, escalations) come from ``keyturn.bot.notices.SlackIntents``.

    ``client`` is an ``AsyncWebClient`` pointed at Slack (or the emulator); build one with
    ``make_web_client``. ``policy`` says which channel each environment's cards go to and whether Approve
    asks for confirmation.
    """

    def __init__(
        self,
        client: AsyncWebClient,
        policy: Policy,
        *,
        retry: RetryPolicy | None = None,
        group_ttl: float = 60.0,
        email_ttl: float = 300.0,
        now: Now | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.client = client
        self.policy = policy
        self.retry = retry or RetryPolicy()
        self._now: Now = now or (lambda: datetime.now(UTC))
        self._clock = clock
        self._sleep = sleep
        self._groups = _TtlCache(group_ttl, clock)
        self._emails = _TtlCache(email_ttl, clock)

    async def start(self) -> None:
        """Open one kept-alive HTTP session for all of this process's Slack calls (bounded: see
        ``SLACK_MAX_CONNECTIONS``).

        Without it slack_sdk opens and closes a session, so a new TCP (and TLS) connection, for every call:
        a round trip or more per card, reply and update, and about a tenth of the bot's CPU per request in
        bench/bench_intake.py's profile.
        """
        session = self.client.session
        if session is None or session.closed:
            self.client.session = slack_session(self.client.timeout)

    async def aclose(self) -> None:
        """Close the session ``start`` opened (later calls open one per call again, as before ``start``)."""
        session, self.client.session = self.client.session, None
        if session is not None:
            await session.close()

    async def call(
        self, method: str, fn: Callable[[], Awaitable[AsyncSlackResponse]], retry: RetryPolicy | None = None
    ) -> AsyncSlackResponse:
        """Run one Web API call with the retry policy; raise a typed ``SlackError`` when it cannot succeed."""
        policy = retry or self.retry
        started = self._clock()
        last: SlackError = SlackUnavailable(method, "no_attempt")
        for attempt in range(policy.attempts):
            wait: float
            try:
                return await fn()
            except SlackApiError as exc:
                status = getattr(exc.response, "status_code", None)
                error = str((exc.response.get("error") if exc.response is not None else None) or "")
                if status == 429 or error in ("ratelimited", "rate_limited"):
                    after = _retry_after(exc)
                    wait = min(
                        policy.max_retry_after, after if after is not None else policy.backoff(attempt)
                    )
                    last = SlackUnavailable(method, "ratelimited", status)
                elif (status is not None and status >= 500) or error in _TRANSIENT:
                    wait = policy.backoff(attempt)
                    last = SlackUnavailable(method, error or "server_error", status)
                else:
                    raise _classify(method, error or f"http_{status}", status) from None
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                wait = policy.backoff(attempt)
                last = SlackUnavailable(method, f"connection_error:{type(exc).__name__}")
            if attempt + 1 >= policy.attempts:
                break
            if policy.deadline is not None and self._clock() - started + wait > policy.deadline:
                break
            log.warning("slack %s: %s, retrying in %.2fs", method, last.slack_error, wait)
            await self._sleep(wait)
        raise last

    # -- cards ---------------------------------------------------------------------------------------------

    async def post_card(self, request: DeployRequest) -> CardRef:
        """Post the card in the environment's channel; return where it lives."""
        env = self.policy.environment(request.scope.environment)
        card = render_card(request, self.policy, self._now())
        resp = await self.call(
            "chat.postMessage",
            lambda: self.client.chat_postMessage(
                channel=env.channel,
                blocks=card.blocks,
                text=card.text,
                unfurl_links=False,
                unfurl_media=False,
            ),
        )
        return CardRef(channel=str(resp["channel"]), ts=str(resp["ts"]))

    async def update_card(self, request: DeployRequest) -> None:
        """Re-render the card in place from the request's current state."""
        if request.card is None:
            raise CardMissing("chat.update", "no_card")
        card_ref = request.card
        card = render_card(request, self.policy, self._now())
        await self.call(
            "chat.update",
            lambda: self.client.chat_update(
                channel=card_ref.channel, ts=card_ref.ts, blocks=card.blocks, text=card.text
            ),
        )

    # -- messages ------------------------------------------------------------------------------------------

    async def reply_in_thread(self, card: CardRef, text: str) -> None:
        """Post ``text`` (escaped mrkdwn) as a reply in the card's thread."""
        await self.call(
            "chat.postMessage",
            lambda: self.client.chat_postMessage(channel=card.channel, thread_ts=card.ts, text=text),
        )

    async def send_dm(self, user_id: str, text: str) -> None:
        """Open a DM with ``user_id`` and post ``text`` (escaped mrkdwn)."""
        opened = await self.call("conversations.open", lambda: self.client.conversations_open(users=user_id))
        channel = opened.get("channel") or {}
        channel_id = channel.get("id") if isinstance(channel, dict) else None
        if not channel_id:
            raise SlackRejected("conversations.open", "no_channel_in_response")
        await self.call(
            "chat.postMessage", lambda: self.client.chat_postMessage(channel=str(channel_id), text=text)
        )

    async def ephemeral(self, channel: str, user_id: str, text: str) -> None:
        """Show ``text`` (escaped mrkdwn) to ``user_id`` only, in ``channel``."""
        await self.call(
            "chat.postEphemeral",
            lambda: self.client.chat_postEphemeral(channel=channel, user=user_id, text=text),
        )

    async def permalink(self, card: CardRef) -> str | None:
        """A link to the card's message, or None when Slack cannot give one (gone, unreachable, refused).

        ``chat.getPermalink`` needs no scope. A link is only a convenience in a message, so every failure,
        after the usual retries, is None rather than an error.
        """
        try:
            resp = await self.call(
                "chat.getPermalink",
                lambda: self.client.chat_getPermalink(channel=card.channel, message_ts=card.ts),
            )
        except SlackError as exc:
            log.warning("slack chat.getPermalink: %s", exc.slack_error)
            return None
        link = resp.get("permalink")
        return link if isinstance(link, str) and link else None

    async def open_deny_modal(self, trigger_id: str, request: DeployRequest) -> None:
        """Open the deny-with-reason modal now (the trigger lives 3 s; retries stay inside that window)."""
        view = deny_modal(request)
        await self.call(
            "views.open", lambda: self.client.views_open(trigger_id=trigger_id, view=view), MODAL_RETRY
        )

    # -- lookups -------------------------------------------------------------------------------------------

    async def group_members(self, group_id: str) -> frozenset[str]:
        """Members of a Slack user group, cached for ``group_ttl`` seconds."""
        hit, value = self._groups.get(group_id)
        if hit:
            return frozenset(value)
        async with self._groups.lock(group_id):  # one Slack call per group per burst of clicks
            hit, value = self._groups.get(group_id)
            if hit:
                return frozenset(value)
            resp = await self.call(
                "usergroups.users.list", lambda: self.client.usergroups_users_list(usergroup=group_id)
            )
            users = resp.get("users") or []
            members = frozenset(str(u) for u in users if isinstance(u, str))
            self._groups.put(group_id, members)
            return members

    async def user_email(self, user_id: str) -> str | None:
        """The user's email, if Slack shares it (``users:read.email``); None for unknown users."""
        hit, value = self._emails.get(user_id)
        if hit:
            return value if isinstance(value, str) else None
        try:
            resp = await self.call("users.info", lambda: self.client.users_info(user=user_id))
        except SlackNotFound:
            return None
        user = resp.get("user") or {}
        profile = user.get("profile") if isinstance(user, dict) else None
        email = profile.get("email") if isinstance(profile, dict) else None
        result = email if isinstance(email, str) and email else None
        self._emails.put(user_id, result)
        return result

    async def user_by_email(self, email: str) -> str | None:
        """The Slack user id for ``email``, or None when Slack knows no such user (``users_not_found``)."""
        try:
            resp = await self.call(
                "users.lookupByEmail", lambda: self.client.users_lookupByEmail(email=email)
            )
        except SlackNotFound:
            return None
        user = resp.get("user") or {}
        uid = user.get("id") if isinstance(user, dict) else None
        return uid if isinstance(uid, str) and uid else None


def slack_session(timeout: float) -> aiohttp.ClientSession:
    """The bot's Slack session: at most ``SLACK_MAX_CONNECTIONS`` sockets, idle ones closed after
    ``SLACK_KEEPALIVE_SECONDS``, every call bounded by ``timeout`` seconds (waiting for a socket included)."""
    connector = aiohttp.TCPConnector(
        limit=SLACK_MAX_CONNECTIONS,
        limit_per_host=SLACK_MAX_CONNECTIONS,
        keepalive_timeout=SLACK_KEEPALIVE_SECONDS,
    )
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout))


def make_web_client(token: str, base_url: str | None = None, timeout: int = 10) -> AsyncWebClient:
    """An ``AsyncWebClient`` for the messenger: ``base_url`` points it at the emulator in tests and dev.

    slack_sdk's own retry handlers are off (``retry_handlers=[]``): every retry (429, 5xx, connection
    errors) happens in ``SlackMessenger.call``, once, with its injected sleep and its caps.
    """
    if base_url:
        return AsyncWebClient(
            token=token, base_url=base_url.rstrip("/") + "/", timeout=timeout, retry_handlers=[]
        )
    return AsyncWebClient(token=token, timeout=timeout, retry_handlers=[])
