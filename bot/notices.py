"""What the bot tells people in Slack besides the card: outcomes, reminders, escalations, signing trouble.

The approval logic and the timer jobs say *what happened* through the Messenger's intent methods
(``announce_outcome``, ``remind``, ``escalate``, ``escalate_dm``, ``announce_sign_failure``); this module
decides the words and where they go, on top of the Messenger's primitives (``reply_in_thread``, ``send_dm``,
``permalink``). The sentences are pure functions of the request and a few facts (escaped mrkdwn, every
string the bot did not write escaped), so they are tested without Slack. ``SlackIntents`` is mixed into the
real messenger and into the tests' recording one, so both send the same words.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Protocol

from keyturn.bot.cards import format_duration, format_time
from keyturn.bot.models import CardRef, DeployRequest, Status
from keyturn.bot.slack_text import channel_mention, escape, group_mention, is_user_id, user_mention

log = logging.getLogger("keyturn.slack")

# A permalink fit to sit inside <url|label>: Slack's are https; the emulator's are http to its own page.
LINK_RE = re.compile(r"https?://[^\s<>|]{1,2000}")
MAX_MENTIONS = 20


def _what(request: DeployRequest) -> str:
    scope = request.scope
    return f"`{escape(scope.repo)}` @ `{escape(scope.sha[:12])}` to *{escape(scope.environment)}*"


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' if n != 1 else ''}"


def mentions(users: Sequence[str], groups: Sequence[str]) -> str:
    """Mentions of valid user ids (at most ``MAX_MENTIONS``, then "and N more") and of user groups."""
    parts = [user_mention(u) for u in users if is_user_id(u)][:MAX_MENTIONS]
    more = max(0, len(users) - MAX_MENTIONS)
    parts += [group_mention(g) for g in groups]
    text = " ".join(parts) or "the approvers"
    return f"{text} and {more} more" if more else text


def outcome_text(request: DeployRequest, ttl: timedelta | None = None) -> str:
    """One escaped mrkdwn sentence describing a final outcome (thread reply, DM)."""
    what = _what(request)
    if request.status is Status.APPROVED:
        who = ", ".join(user_mention(a.user_id) for a in request.approvals)
        return f":white_check_mark: Deploy of {what} approved by {who}. Receipt `{request.receipt_id}`."
    if request.status is Status.DENIED:
        by = user_mention(request.decided_by) if request.decided_by else "an approver"
        return f":no_entry: Deploy of {what} denied by {by}: {escape(request.deny_reason or '')}"
    if request.status is Status.EXPIRED:
        within = f" within {format_duration(ttl)}" if ttl else ""
        return f":hourglass: Deploy of {what} expired: no decision{within}."
    if request.status is Status.CANCELLED:
        return f":heavy_multiplication_x: Deploy of {what} was cancelled by the pipeline."
    return f"Deploy of {what} is pending."


def reminder_text(request: DeployRequest, who: str, now: datetime, *, final: bool) -> str:
    """A reminder in the card's thread: how many approvals are missing, who could give them, time left."""
    missing = max(1, request.required_approvals - len({a.user_id for a in request.approvals}))
    needs = _plural(missing, "more approval")
    left = format_duration(request.expires_at - now)
    at = format_time(request.expires_at, now)
    if final:
        return f":alarm_clock: Last call: this deploy expires in {left} ({at}), still needing {needs}. {who}"
    return f":bell: Reminder: this deploy still needs {needs}. {who}: {left} left (expires {at})."


def escalation_text(request: DeployRequest, who: str, after: int, now: datetime) -> str:
    """The escalation in the card's thread, mentioning the people it goes to."""
    left = format_duration(request.expires_at - now)
    return (
        f":rotating_light: Escalating: no decision after {_plural(after, 'reminder')}. "
        f"{who}, please take a look: {left} left."
    )


def escalation_dm_text(request: DeployRequest, after: int, now: datetime, link: str) -> str:
    """The escalation sent to one person, with a link to the card (``link``, may be empty)."""
    left = format_duration(request.expires_at - now)
    return (
        f":rotating_light: A deploy of {_what(request)} needs a decision: no decision after "
        f"{_plural(after, 'reminder')}, {left} left. {link}"
    )


def sign_failure_text(code: str, detail: str) -> str:
    """The thread notice when the quorum is reached but the signer issued no receipt."""
    return (
        f":warning: The quorum is reached but no receipt could be issued "
        f"(`{escape(code)}`: {escape(detail[:300])}). The approvals are kept; "
        "click Approve again to retry."
    )


def card_link(card: CardRef, url: str | None) -> str:
    """A link to the card: its permalink when it is one, else a mention of its channel (a native link)."""
    if isinstance(url, str) and LINK_RE.fullmatch(url):
        return f"<{escape(url)}|Open the request>"
    mention = channel_mention(card.channel)
    return f"The request is in {mention}." if mention else ""


class _Primitives(Protocol):
    async def reply_in_thread(self, card: CardRef, text: str) -> None: ...

    async def send_dm(self, user_id: str, text: str) -> None: ...

    async def permalink(self, card: CardRef) -> str | None: ...


def _card(request: DeployRequest) -> CardRef:
    if request.card is None:  # the callers check first (a reminder waits for the card; see timer_jobs)
        raise ValueError(f"request {request.id} has no card to reply to")
    return request.card


class SlackIntents:
    """The Messenger's intent methods, in Slack words, over its primitives (mixed into a messenger)."""

    async def announce_outcome(
        self: _Primitives, request: DeployRequest, ttl: timedelta | None = None
    ) -> None:
        """A final outcome: in the card's thread (mentioning the requester) and by DM to the requester.

        Both are tried; the first failure is raised after the other was attempted."""
        text = outcome_text(request, ttl)
        failed: Exception | None = None
        if request.card is not None:
            mention = f"{user_mention(request.requester_slack_id)} " if request.requester_slack_id else ""
            try:
                await self.reply_in_thread(request.card, mention + text)
            except Exception as exc:
                failed = exc
        if request.requester_slack_id:
            try:
                await self.send_dm(request.requester_slack_id, text)
            except Exception as exc:
                failed = failed or exc
        if failed is not None:
            raise failed

    async def remind(
        self: _Primitives,
        request: DeployRequest,
        *,
        waiting: Sequence[str],
        groups: Sequence[str],
        now: datetime,
        final: bool,
    ) -> None:
        """Remind in the card's thread: ``waiting`` (users) and ``groups`` are who could still approve."""
        text = reminder_text(request, mentions(waiting, groups), now, final=final)
        await self.reply_in_thread(_card(request), text)

    async def escalate(
        self: _Primitives,
        request: DeployRequest,
        *,
        users: Sequence[str],
        groups: Sequence[str],
        after: int,
        now: datetime,
    ) -> None:
        """Escalate in the card's thread, mentioning ``users`` and ``groups``: no decision after ``after``
        reminders."""
        await self.reply_in_thread(
            _card(request), escalation_text(request, mentions(users, groups), after, now)
        )

    async def escalate_dm(
        self: _Primitives, user_id: str, request: DeployRequest, *, after: int, now: datetime
    ) -> None:
        """Ask ``user_id`` directly for a decision, with a link to the card."""
        card = _card(request)
        try:
            url = await self.permalink(card)
        except Exception as exc:  # a link is a convenience: the DM goes out without it
            log.warning("permalink unavailable (%s)", type(exc).__name__)
            url = None
        await self.send_dm(user_id, escalation_dm_text(request, after, now, card_link(card, url)))

    async def announce_sign_failure(
        self: _Primitives, request: DeployRequest, code: str, detail: str
    ) -> None:
        """The quorum is reached but no receipt was issued (``code``, the signer's ``detail``): say so in
        the thread; the approvals are kept and the next click retries."""
        await self.reply_in_thread(_card(request), sign_failure_text(code, detail))
