"""The emulated workspace's mutable state, in memory: messages with threads, ephemeral messages, views,
trigger ids and response URLs.

Pure: no I/O and no clock. Every operation that depends on time takes ``now`` (Unix seconds). Lookups that
fail raise :class:`SlackError` with the code Slack would answer, so the Web API layer stays thin. The
workspace itself (users, groups, channels) comes from :mod:`keyturn.emulator.workspace`.
"""

from __future__ import annotations

import copy
import itertools
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from keyturn.emulator.echo import echo_blocks, echo_view, fallback_text
from keyturn.emulator.errors import SlackError
from keyturn.emulator.workspace import Workspace, load_workspace

__all__ = [
    "RESPONSE_URL_TTL",
    "RESPONSE_URL_USES",
    "TRIGGER_TTL",
    "Conversation",
    "Ephemeral",
    "Message",
    "ResponseTarget",
    "View",
    "WorkspaceState",
    "format_ts",
    "load_workspace",
]

TRIGGER_TTL = 3.0  # Slack: a trigger_id is good for 3 seconds, once
# Slack's documented shape of a trigger_id ("132456.7890123.abcdef"), which the emulator's ids also have.
TRIGGER_FORMAT = re.compile(r"[0-9]+\.[0-9]+\.[0-9a-f]+")
RESPONSE_URL_TTL = 30 * 60.0  # Slack: a response_url works for 30 minutes...
RESPONSE_URL_USES = 5  # ...and at most 5 times


def format_ts(micros: int) -> str:
    """A Slack ``ts`` string ("1700000000.000100") from integer microseconds."""
    return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"


@dataclass(frozen=True)
class Conversation:
    """A channel or DM that messages can be posted to."""

    id: str
    name: str
    is_im: bool
    members: tuple[str, ...]
    im_user: str | None = None


def message_text(text: str | None, blocks: list[dict[str, Any]]) -> tuple[str, bool]:
    """The stored ``text`` and whether Slack generated it: the app's text, or when it sent none, the fallback
    Slack builds from the (echoed) blocks (note §1.16, :func:`keyturn.emulator.echo.fallback_text`)."""
    if text:
        return text, False
    if blocks:
        return fallback_text(blocks), True
    return "", False


@dataclass
class Message:
    """A message in a channel or DM, as posted (blocks in the form Slack echoes them: keyturn.emulator.echo)."""

    channel: str
    ts: str
    text: str
    blocks: list[dict[str, Any]]
    user: str
    bot_id: str | None
    app_id: str | None
    team: str
    thread_ts: str | None = None
    replies: list[str] = field(default_factory=list)
    attachments: list[Any] | None = None
    metadata: dict[str, Any] | None = None
    edited: dict[str, str] | None = None
    text_generated: bool = False  # the app sent no text: Slack built it from the blocks (note §1.16)

    def to_slack(self) -> dict[str, Any]:
        """The message object as Slack returns it (``chat.postMessage`` and interaction payloads).

        Members and their order as in the 2023 capture (note §1.15, L): ``bot_id, type, text, user, ts,
        app_id, blocks, team``; ``attachments`` only when the app sent some (§1.14); ``edited`` after an
        update.
        """
        out: dict[str, Any] = {}
        if self.bot_id:
            out["bot_id"] = self.bot_id
        out.update(type="message", text=self.text, user=self.user, ts=self.ts)
        if self.bot_id:
            out["app_id"] = self.app_id
        out["blocks"] = copy.deepcopy(self.blocks)
        out["team"] = self.team
        if self.attachments:
            out["attachments"] = copy.deepcopy(self.attachments)
        if self.metadata:
            out["metadata"] = copy.deepcopy(self.metadata)
        if self.thread_ts:
            out["thread_ts"] = self.thread_ts
        if self.replies:
            out["reply_count"] = len(self.replies)
            out["latest_reply"] = self.replies[-1]
        if self.edited:
            out["edited"] = dict(self.edited)
        return out


@dataclass
class Ephemeral:
    """An ephemeral message, seen only by ``user``."""

    channel: str
    ts: str
    user: str
    text: str
    blocks: list[dict[str, Any]]
    thread_ts: str | None = None

    def to_slack(self) -> dict[str, Any]:
        """The ephemeral message as the emulator's state view shows it."""
        out: dict[str, Any] = {
            "type": "message",
            "subtype": "ephemeral",
            "text": self.text,
            "ts": self.ts,
            "user": self.user,
            "blocks": copy.deepcopy(self.blocks),
        }
        if self.thread_ts:
            out["thread_ts"] = self.thread_ts
        return out


@dataclass
class View:
    """A modal opened by ``views.open`` for ``user``."""

    id: str
    team_id: str
    user: str
    app_id: str
    bot_id: str
    spec: dict[str, Any]
    hash: str
    root_view_id: str
    previous_view_id: str | None = None
    state_values: dict[str, Any] = field(default_factory=dict)
    is_open: bool = True
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def callback_id(self) -> str:
        """The view's callback_id ("" when unset, as Slack reports it)."""
        return str(self.spec.get("callback_id", ""))

    def to_slack(self) -> dict[str, Any]:
        """The view object as Slack returns it (``views.open`` and ``view_submission`` payloads)."""
        spec = self.spec
        out: dict[str, Any] = {
            "id": self.id,
            "team_id": self.team_id,
            "type": spec.get("type", "modal"),
            "blocks": copy.deepcopy(spec.get("blocks", [])),
            "private_metadata": spec.get("private_metadata", ""),
            "callback_id": self.callback_id,
            "state": {"values": copy.deepcopy(self.state_values)},
            "hash": self.hash,
            "title": copy.deepcopy(spec.get("title")),
            "clear_on_close": bool(spec.get("clear_on_close", False)),
            "notify_on_close": bool(spec.get("notify_on_close", False)),
            "close": copy.deepcopy(spec.get("close")),
            "submit": copy.deepcopy(spec.get("submit")),
            "previous_view_id": self.previous_view_id,
            "root_view_id": self.root_view_id,
            "app_id": self.app_id,
            "external_id": spec.get("external_id", ""),
            "app_installed_team_id": self.team_id,
            "bot_id": self.bot_id,
        }
        return out


@dataclass
class ResponseTarget:
    """Where a ``response_url`` posts go: the source message (if any), its channel and the acting user."""

    id: str
    channel: str
    user: str
    message_ts: str | None
    is_ephemeral: bool
    created_at: float
    uses: int = 0
    posts: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Trigger:
    user: str
    issued_at: float
    used: bool = False


class WorkspaceState:
    """Everything that changes while the emulator runs. Not thread-safe: use it from one event loop."""

    def __init__(
        self, workspace: Workspace, trigger_ttl: float = TRIGGER_TTL, started_at: float = 0.0
    ) -> None:
        self.workspace = workspace
        self.trigger_ttl = trigger_ttl
        # "created"/"updated" stamps of channels and users that the workspace file does not date.
        self.started_at = started_at
        self.reset()

    def reset(self) -> None:
        """Forget every message, view, trigger and response URL (the workspace stays)."""
        self.messages: dict[tuple[str, str], Message] = {}
        self.channel_order: dict[str, list[str]] = {}
        self.ephemerals: dict[tuple[str, str], Ephemeral] = {}
        self.views: dict[str, View] = {}
        self.response_targets: dict[str, ResponseTarget] = {}
        self._triggers: dict[str, _Trigger] = {}
        self._last_ts_us = 0
        self._ids = itertools.count(1)
        self.version = 0

    def _changed(self) -> None:
        self.version += 1

    def next_ts(self, now: float) -> str:
        """A fresh ``ts``: from ``now``, strictly greater than every ``ts`` issued before."""
        us = max(int(now * 1_000_000), self._last_ts_us + 1)
        self._last_ts_us = us
        return format_ts(us)

    # -- conversations ---------------------------------------------------------------------------------------

    def im_id(self, user_id: str) -> str:
        """The id of the bot's DM with ``user_id`` (stable, readable: U0ALICE -> D0ALICE)."""
        return "D" + user_id[1:]

    def conversation(self, ref: str) -> Conversation:
        """Resolve a channel id, ``#name``, DM id, or user id (meaning the DM with that user)."""
        ws = self.workspace
        channel = ws.channel(ref)
        if channel is not None:
            return Conversation(channel.id, channel.name, False, channel.members)
        user = None
        if ref.startswith("D"):
            user = next((u for u in ws.users if self.im_id(u.id) == ref), None)
        elif ref.startswith(("U", "W")):
            user = ws.user(ref)
        if user is not None and not user.is_bot:
            return Conversation(
                self.im_id(user.id), "directmessage", True, (user.id, ws.bot.user_id), user.id
            )
        raise SlackError("channel_not_found")

    # -- messages --------------------------------------------------------------------------------------------

    def message(self, channel: str, ts: str) -> Message | None:
        """The stored message, or None."""
        return self.messages.get((channel, ts))

    def post_message(
        self,
        channel: str,
        *,
        text: str | None,
        blocks: list[dict[str, Any]] | None,
        now: float,
        thread_ts: str | None = None,
        attachments: list[Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Message:
        """Post as the bot. ``blocks`` must be valid already; ``thread_ts`` must name a message here.

        ``blocks`` are stored as Slack echoes them; without ``text``, the fallback built from them."""
        conv = self.conversation(channel)
        root: Message | None = None
        if thread_ts is not None:
            root = self.messages.get((conv.id, thread_ts))
            if root is None:
                raise SlackError("thread_not_found")
            if root.thread_ts and root.thread_ts != root.ts:  # a reply: the thread is its root's
                root = self.messages[(conv.id, root.thread_ts)]
        bot = self.workspace.bot
        echoed = echo_blocks(blocks or [])
        stored_text, generated = message_text(text, echoed)
        msg = Message(
            channel=conv.id,
            ts=self.next_ts(now),
            text=stored_text,
            text_generated=generated,
            blocks=echoed,
            user=bot.user_id,
            bot_id=bot.bot_id,
            app_id=bot.app_id,
            team=self.workspace.team.id,
            attachments=attachments,
            metadata=metadata,
        )
        if root is not None:
            root.thread_ts = root.ts
            root.replies.append(msg.ts)
            msg.thread_ts = root.ts
        self.messages[(conv.id, msg.ts)] = msg
        self.channel_order.setdefault(conv.id, []).append(msg.ts)
        self._changed()
        return msg

    def update_message(
        self,
        channel: str,
        ts: str,
        *,
        now: float,
        text: str | None = None,
        blocks: list[dict[str, Any]] | None = None,
        attachments: list[Any] | None = None,
        replace: bool = False,
    ) -> Message:
        """Edit a bot message; fields left as None keep their old value (as Slack's chat.update does).

        Exceptions: a text Slack generated from the old blocks is generated again from new blocks (Decision:
        the fallback describes the blocks it was built from), and so is a text not given with ``replace``
        (``replace_original`` replaces the whole message). ``edited`` is set as in the captures (note
        §1.15: the bot id as ``user``, a whole-second ``ts``)."""
        conv = self.conversation(channel)
        msg = self.messages.get((conv.id, ts))
        if msg is None:
            raise SlackError("message_not_found")
        if msg.user != self.workspace.bot.user_id:
            raise SlackError("cant_update_message")
        if blocks is not None:
            msg.blocks = echo_blocks(blocks)
        if text:
            msg.text, msg.text_generated = text, False
        elif blocks is not None and (replace or msg.text_generated or not msg.text):
            msg.text, msg.text_generated = message_text(None, msg.blocks)
        if attachments is not None:
            msg.attachments = attachments
        bot = self.workspace.bot
        msg.edited = {"user": bot.bot_id or bot.user_id, "ts": f"{int(now)}.000000"}
        self._changed()
        return msg

    def delete_message(self, channel: str, ts: str) -> None:
        """Delete a message (and, as Slack shows it, leave its replies)."""
        msg = self.messages.pop((channel, ts), None)
        if msg is None:
            raise SlackError("message_not_found")
        self.channel_order[channel].remove(ts)
        self._changed()

    def post_ephemeral(
        self,
        channel: str,
        user: str,
        *,
        text: str | None,
        blocks: list[dict[str, Any]] | None,
        now: float,
        thread_ts: str | None = None,
    ) -> Ephemeral:
        """Show a message to ``user`` only, in ``channel``."""
        conv = self.conversation(channel)
        target = self.workspace.user(user)
        # Slack's chat.postEphemeral table has no user_not_found: an unknown or deactivated user is simply
        # not among the channel's members.
        if target is None or target.deleted or user not in conv.members:
            raise SlackError("user_not_in_channel")
        echoed = echo_blocks(blocks or [])
        eph = Ephemeral(
            channel=conv.id,
            ts=self.next_ts(now),
            user=user,
            text=message_text(text, echoed)[0],
            blocks=echoed,
            thread_ts=thread_ts,
        )
        self.ephemerals[(conv.id, eph.ts)] = eph
        self._changed()
        return eph

    def ephemeral(self, channel: str, ts: str, user: str) -> Ephemeral | None:
        """The ephemeral message shown to ``user``, or None."""
        eph = self.ephemerals.get((channel, ts))
        return eph if eph is not None and eph.user == user else None

    # -- triggers --------------------------------------------------------------------------------------------

    def issue_trigger(self, user: str, now: float) -> str:
        """A new trigger id for ``user``: valid for ``trigger_ttl`` seconds, once."""
        trigger_id = f"{next(self._ids)}.{int(now)}.{secrets.token_hex(16)}"
        self._triggers[trigger_id] = _Trigger(user=user, issued_at=now)
        return trigger_id

    def consume_trigger(self, trigger_id: str, now: float) -> str:
        """Use up a trigger id and return its user.

        The errors are those of Slack's ``views.open`` table: ``invalid_trigger_id`` for one not of the form
        ``132456.7890123.abcdef``, ``exchanged_trigger_id`` for one already used, ``expired_trigger_id`` past
        its 3 s; a well-formed id that Slack never issued gets the ``invalid_arguments`` of Slack's example.
        """
        if not TRIGGER_FORMAT.fullmatch(trigger_id):
            raise SlackError("invalid_trigger_id")
        trig = self._triggers.get(trigger_id)
        if trig is None:
            raise SlackError("invalid_arguments", ["invalid `trigger_id`"])
        if trig.used:
            raise SlackError("exchanged_trigger_id")
        if now - trig.issued_at > self.trigger_ttl:
            raise SlackError("expired_trigger_id")
        trig.used = True
        return trig.user

    # -- views -----------------------------------------------------------------------------------------------

    def open_view(self, user: str, spec: dict[str, Any], now: float, previous: View | None = None) -> View:
        """Open (or push, with ``previous``) a modal for ``user``. ``spec`` must be valid already."""
        bot = self.workspace.bot
        view_id = f"V{next(self._ids):010d}"
        spec = echo_view(spec)
        view = View(
            id=view_id,
            team_id=self.workspace.team.id,
            user=user,
            app_id=bot.app_id,
            bot_id=bot.bot_id,
            spec=spec,
            hash=f"{int(now)}.{secrets.token_hex(4)}",
            root_view_id=previous.root_view_id if previous else view_id,
            previous_view_id=previous.id if previous else None,
        )
        self.views[view_id] = view
        self._changed()
        return view

    def find_view(self, view_id: str | None = None, external_id: str | None = None) -> View:
        """The view by id or external_id; Slack's ``not_found`` otherwise."""
        for view in self.views.values():
            if (view_id and view.id == view_id) or (
                external_id and view.spec.get("external_id") == external_id
            ):
                return view
        raise SlackError("not_found")

    def update_view(
        self,
        spec: dict[str, Any],
        now: float,
        *,
        view_id: str | None = None,
        external_id: str | None = None,
        hash_: str | None = None,
    ) -> View:
        """Replace a view's contents; ``hash_`` guards against lost updates (``hash_conflict``)."""
        view = self.find_view(view_id, external_id)
        if hash_ is not None and hash_ != view.hash:
            raise SlackError("hash_conflict")
        view.spec = echo_view(spec)
        view.hash = f"{int(now)}.{secrets.token_hex(4)}"
        view.errors = {}
        self._changed()
        return view

    def close_view(self, view: View, *, clear: bool = False) -> None:
        """Close ``view`` (with ``clear``: its whole stack)."""
        for v in self.views.values():
            if v.id == view.id or (clear and v.root_view_id == view.root_view_id):
                v.is_open = False
        self._changed()

    def set_view_errors(self, view: View, errors: dict[str, str]) -> None:
        """Keep ``view`` open and show ``errors`` (input block_id -> text) under its inputs."""
        view.errors = dict(errors)
        self._changed()

    # -- response URLs ---------------------------------------------------------------------------------------

    def issue_response_target(
        self, channel: str, user: str, now: float, message_ts: str | None = None, is_ephemeral: bool = False
    ) -> ResponseTarget:
        """A new response URL target for an interaction or command."""
        target = ResponseTarget(
            id=secrets.token_urlsafe(18),
            channel=channel,
            user=user,
            message_ts=message_ts,
            is_ephemeral=is_ephemeral,
            created_at=now,
        )
        self.response_targets[target.id] = target
        return target

    def use_response_target(self, target_id: str, now: float) -> ResponseTarget:
        """Count one use of a response URL; ``expired_url`` / ``used_url`` as Slack answers."""
        target = self.response_targets.get(target_id)
        if target is None or now - target.created_at > RESPONSE_URL_TTL:
            raise SlackError("expired_url")
        if target.uses >= RESPONSE_URL_USES:
            raise SlackError("used_url")
        target.uses += 1
        return target

    def delete_ephemeral(self, channel: str, ts: str) -> None:
        """Remove an ephemeral message."""
        self.ephemerals.pop((channel, ts), None)
        self._changed()

    def replace_ephemeral(
        self, eph: Ephemeral, text: str | None, blocks: list[dict[str, Any]] | None
    ) -> None:
        """Replace an ephemeral message's content (``replace_original`` from its response URL)."""
        eph.blocks = echo_blocks(blocks or [])
        eph.text = message_text(text, eph.blocks)[0]
        self._changed()

    # -- snapshot --------------------------------------------------------------------------------------------

    def _thread(self, msg: Message) -> dict[str, Any]:
        out = msg.to_slack()
        out["channel"] = msg.channel
        out["replies"] = [
            {**self.messages[(msg.channel, r)].to_slack(), "channel": msg.channel}
            for r in msg.replies
            if (msg.channel, r) in self.messages
        ]
        return out

    def conversation_messages(self, channel: str) -> list[dict[str, Any]]:
        """Top-level messages of a conversation in order, each with its thread replies."""
        out = []
        for ts in self.channel_order.get(channel, []):
            msg = self.messages[(channel, ts)]
            if msg.thread_ts is None or msg.thread_ts == msg.ts:
                out.append(self._thread(msg))
        return out

    def snapshot(self, user: str | None = None) -> dict[str, Any]:
        """Everything a viewer needs: the workspace, conversations with threads, and (for ``user``) the
        ephemeral messages and open views that only that user sees."""
        ws = self.workspace
        channels = [
            {
                "id": c.id,
                "name": c.name,
                "is_im": False,
                "members": list(c.members),
                "messages": self.conversation_messages(c.id),
            }
            for c in ws.channels
        ]
        ims = []
        for u in ws.users:
            im = self.im_id(u.id)
            if not u.is_bot and (user is None or u.id == user) and self.channel_order.get(im):
                ims.append(
                    {
                        "id": im,
                        "name": u.name,
                        "is_im": True,
                        "user": u.id,
                        "messages": self.conversation_messages(im),
                    }
                )
        ephemerals = [
            {**e.to_slack(), "channel": e.channel}
            for e in self.ephemerals.values()
            if user is None or e.user == user
        ]
        views = [
            {**v.to_slack(), "user": v.user, "is_open": v.is_open, "errors": dict(v.errors)}
            for v in self.views.values()
            if v.is_open and (user is None or v.user == user)
        ]
        return {
            "version": self.version,
            "team": {"id": ws.team.id, "name": ws.team.name, "domain": ws.team.domain},
            "bot": {"user_id": ws.bot.user_id, "bot_id": ws.bot.bot_id, "name": ws.bot.name},
            "users": [
                {"id": u.id, "name": u.name, "real_name": u.real_name, "is_bot": u.is_bot} for u in ws.users
            ],
            "groups": [{"id": g.id, "handle": g.handle, "users": list(g.users)} for g in ws.groups],
            "channels": channels,
            "ims": ims,
            "ephemerals": ephemerals,
            "views": views,
        }
