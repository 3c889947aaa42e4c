"""The emulated Slack Web API methods: parameters in, Slack-shaped JSON out.

Each handler takes the workspace state, the merged parameters (query + form + JSON) and ``now``; it returns
the success body or raises :class:`SlackError` with Slack's error code. Authentication, scopes, faults and
recording happen around these handlers in :mod:`keyturn.emulator.core`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from keyturn.emulator.blockkit import BlockKitError, validate_message_blocks, validate_view
from keyturn.emulator.errors import SlackError
from keyturn.emulator.state import WorkspaceState
from keyturn.emulator.workspace import User, zone

MAX_MESSAGE_TEXT = 40_000  # Slack truncates at 40k and answers msg_too_long beyond it

Params = dict[str, Any]
T = TypeVar("T")
Handler = Callable[[WorkspaceState, Params, float], dict[str, Any]]
LinkHandler = Callable[[WorkspaceState, Params, float, str], dict[str, Any]]


def _str(params: Params, name: str) -> str | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, bool | int | float):
        return str(value)
    if not isinstance(value, str):
        raise SlackError("invalid_arguments", [f"[ERROR] `{name}` must be a string [json-pointer:/{name}]"])
    return value


def _required(params: Params, name: str, error: str) -> str:
    """The string parameter ``name``; Slack's ``error`` when it is missing or empty."""
    value = _str(params, name)
    if value is None:
        raise SlackError(error)
    return value


def _lookup(params: Params, name: str, find: Callable[[str], T | None], error: str) -> T:
    """What ``find`` gives for the parameter ``name``; Slack's ``error`` if it is missing or unknown."""
    found = find(_required(params, name, error))
    if found is None:
        raise SlackError(error)
    return found


def _bool(params: Params, name: str) -> bool:
    value = params.get(name)
    if isinstance(value, bool):
        return value
    return isinstance(value, str) and value.lower() in ("1", "true", "yes")


def _json(params: Params, name: str, bad_code: str = "invalid_arguments") -> Any:
    """A JSON-valued parameter: a string (form or query) is parsed, a JSON body value taken as is."""
    value = params.get(name)
    if isinstance(value, str):
        if value.strip() == "":
            return None
        try:
            return json.loads(value)
        except (ValueError, RecursionError):  # not JSON, or nested too deep to parse
            raise SlackError(
                bad_code, [f"[ERROR] `{name}` is not valid JSON [json-pointer:/{name}]"]
            ) from None
    return value


def _blocks(params: Params) -> list[dict[str, Any]] | None:
    blocks = _json(params, "blocks", "invalid_blocks_format")
    if blocks is None:
        return None
    try:
        validate_message_blocks(blocks)
    except BlockKitError as exc:
        raise SlackError(exc.code, exc.messages) from None
    result: list[dict[str, Any]] = blocks
    return result


def _view(params: Params) -> dict[str, Any]:
    view = _json(params, "view")
    if view is None:
        raise SlackError("invalid_arguments", ["[ERROR] missing required field: view [json-pointer:/view]"])
    try:
        validate_view(view)
    except BlockKitError as exc:
        raise SlackError(exc.code, exc.messages) from None
    result: dict[str, Any] = view
    return result


def _attachments(params: Params) -> list[Any] | None:
    value = _json(params, "attachments")
    if value is not None and not isinstance(value, list):
        raise SlackError("invalid_attachments")
    return value


def _message_text(params: Params, blocks: list[Any] | None, attachments: list[Any] | None) -> str | None:
    text = _str(params, "text")
    if text is None and not blocks and not attachments:
        raise SlackError("no_text")
    if text is not None and len(text) > MAX_MESSAGE_TEXT:
        raise SlackError("msg_too_long")
    return text


def auth_test(state: WorkspaceState, params: Params, now: float) -> dict[str, Any]:
    """``auth.test``: who the bot is."""
    ws = state.workspace
    return {
        "ok": True,
        "url": f"https://{ws.team.domain}.slack.com/",
        "team": ws.team.name,
        "user": ws.bot.name,
        "team_id": ws.team.id,
        "user_id": ws.bot.user_id,
        "bot_id": ws.bot.bot_id,
        "is_enterprise_install": False,
    }


def chat_post_message(state: WorkspaceState, params: Params, now: float) -> dict[str, Any]:
    """``chat.postMessage``."""
    channel = _required(params, "channel", "channel_not_found")
    blocks = _blocks(params)
    attachments = _attachments(params)
    text = _message_text(params, blocks, attachments)
    metadata = _json(params, "metadata")
    msg = state.post_message(
        channel,
        text=text,
        blocks=blocks,
        now=now,
        thread_ts=_str(params, "thread_ts"),
        attachments=attachments,
        metadata=metadata if isinstance(metadata, dict) else None,
    )
    return {"ok": True, "channel": msg.channel, "ts": msg.ts, "message": msg.to_slack()}


def chat_update(state: WorkspaceState, params: Params, now: float) -> dict[str, Any]:
    """``chat.update``: fields not given keep their value."""
    channel = _required(params, "channel", "channel_not_found")
    ts = _required(params, "ts", "message_not_found")
    blocks = _blocks(params)
    attachments = _attachments(params)
    text = _message_text(params, blocks, attachments)
    msg = state.update_message(channel, ts, now=now, text=text, blocks=blocks, attachments=attachments)
    return {"ok": True, "channel": msg.channel, "ts": msg.ts, "text": msg.text, "message": msg.to_slack()}


def chat_post_ephemeral(state: WorkspaceState, params: Params, now: float) -> dict[str, Any]:
    """``chat.postEphemeral``: every error is one of Slack's documented table for this method.

    That table has no ``user_not_found``: a user who does not exist, was deactivated or was never given is
    "not in the channel" (``user_not_in_channel``), which is what Slack answers for each.
    """
    channel = _required(params, "channel", "channel_not_found")
    state.conversation(channel)  # an unknown channel is refused before the user is looked at, as Slack does
    user = _required(params, "user", "user_not_in_channel")
    blocks = _blocks(params)
    text = _message_text(params, blocks, _attachments(params))
    eph = state.post_ephemeral(
        channel, user, text=text, blocks=blocks, now=now, thread_ts=_str(params, "thread_ts")
    )
    return {"ok": True, "message_ts": eph.ts}


def permalink(base_url: str, channel: str, ts: str) -> str:
    """The emulator's link to a message: its own page, which opens the conversation and highlights it."""
    return f"{base_url.rstrip('/')}/#{channel}/{ts}"


def chat_get_permalink(state: WorkspaceState, params: Params, now: float, base_url: str) -> dict[str, Any]:
    """``chat.getPermalink``: a link to an existing message (Slack needs no scope for it).

    Slack's permalinks point into its web client; the emulator's point at its own page (``base_url``),
    ``http://HOST:PORT/#<channel>/<ts>``, which scrolls to the message and highlights it.
    """
    channel = _required(params, "channel", "channel_not_found")
    conv = state.conversation(channel)
    ts = _str(params, "message_ts")
    if ts is None or state.message(conv.id, ts) is None:
        raise SlackError("message_not_found")
    return {"ok": True, "channel": conv.id, "permalink": permalink(base_url, conv.id, ts)}


def chat_delete(state: WorkspaceState, params: Params, now: float) -> dict[str, Any]:
    """``chat.delete``."""
    channel = _str(params, "channel")
    ts = _str(params, "ts")
    if channel is None:
        raise SlackError("channel_not_found")
    if ts is None:
        raise SlackError("message_not_found")
    conv = state.conversation(channel)
    state.delete_message(conv.id, ts)
    return {"ok": True, "channel": conv.id, "ts": ts}


def _triggered_view(state: WorkspaceState, params: Params, now: float) -> tuple[str, dict[str, Any]]:
    """The user whose ``trigger_id`` this call spends, and the view it opens (checked before the trigger is
    spent, so an invalid view leaves the trigger usable, as in Slack)."""
    trigger_id = _str(params, "trigger_id")
    if trigger_id is None:
        raise SlackError("invalid_arguments", ["[ERROR] missing required field: trigger_id"])
    view = _view(params)
    return state.consume_trigger(trigger_id, now), view


def views_open(state: WorkspaceState, params: Params, now: float) -> dict[str, Any]:
    """``views.open``: needs a fresh, unused ``trigger_id`` issued by the emulator."""
    user, view = _triggered_view(state, params, now)
    return {"ok": True, "view": state.open_view(user, view, now).to_slack()}


def views_push(state: WorkspaceState, params: Params, now: float) -> dict[str, Any]:
    """``views.push``: a new view on top of the user's open modal (at most 3 deep, as in Slack)."""
    user, view = _triggered_view(state, params, now)
    stack = [v for v in state.views.values() if v.user == user and v.is_open]
    if not stack:
        raise SlackError("not_found")
    top = stack[-1]
    if sum(1 for v in stack if v.root_view_id == top.root_view_id) >= 3:
        raise SlackError("push_limit_reached")
    return {"ok": True, "view": state.open_view(user, view, now, previous=top).to_slack()}


def views_update(state: WorkspaceState, params: Params, now: float) -> dict[str, Any]:
    """``views.update`` by ``view_id`` or ``external_id``, with an optional ``hash`` guard."""
    view_id = _str(params, "view_id")
    external_id = _str(params, "external_id")
    if view_id is None and external_id is None:
        raise SlackError("invalid_arguments", ["[ERROR] either view_id or external_id is required"])
    view = _view(params)
    current = state.find_view(view_id, external_id)
    if not current.is_open:
        raise SlackError("not_found")
    updated = state.update_view(view, now, view_id=current.id, hash_=_str(params, "hash"))
    return {"ok": True, "view": updated.to_slack()}


# Slack's palette of name colours; a user's colour is picked from it by id so it is stable across runs.
_COLORS = ("9f69e7", "4bbe2e", "e7392d", "3c989f", "674b1b", "e96699", "e0a729", "5b89d5")


def _tz_fields(tz_name: str, now: float) -> dict[str, Any]:
    """``tz``, ``tz_label`` and ``tz_offset`` (seconds east of UTC, at ``now``: it follows summer time)."""
    local = datetime.fromtimestamp(now, zone(tz_name))
    offset = local.utcoffset()
    label = "Coordinated Universal Time" if tz_name == "UTC" else (local.tzname() or tz_name)
    return {
        "tz": tz_name,
        "tz_label": label,
        "tz_offset": int(offset.total_seconds()) if offset is not None else 0,
    }


def user_object(state: WorkspaceState, user: User, with_email: bool, now: float) -> dict[str, Any]:
    """A user as ``users.info`` shows it (``profile.email`` only with the ``users:read.email`` scope).

    The fields are those of Slack's documented ``users.info`` example (roles, time zone with its offset,
    ``updated``, ``color``, profile images and status); images point at the emulator's own placeholder.
    """
    ws = state.workspace
    # Slack links images on its CDN; the emulator needs no network, so an inline empty picture stands in.
    avatar = "data:image/svg+xml,%3Csvg xmlns=%22http://www.w3.org/2000/svg%22/%3E"
    profile: dict[str, Any] = {
        "avatar_hash": user.id.lower()[-12:],
        "status_text": "",
        "status_emoji": "",
        "real_name": user.real_name,
        "display_name": user.name,
        "real_name_normalized": user.real_name,
        "display_name_normalized": user.name,
        "image_original": avatar,
        **{f"image_{size}": avatar for size in (24, 32, 48, 72, 192, 512)},
        "team": ws.team.id,
    }
    if user.is_bot:
        profile["bot_id"] = ws.bot.bot_id
    if with_email and user.email:
        profile["email"] = user.email
    return {
        "id": user.id,
        "team_id": ws.team.id,
        "name": user.name,
        "deleted": user.deleted,
        "color": _COLORS[sum(map(ord, user.id)) % len(_COLORS)],
        "real_name": user.real_name,
        **_tz_fields(user.tz, now),
        "profile": profile,
        "is_admin": user.is_admin,
        "is_owner": user.is_owner,
        "is_primary_owner": user.is_owner and user.is_admin,
        "is_restricted": user.is_restricted,
        "is_ultra_restricted": user.is_ultra_restricted,
        "is_bot": user.is_bot,
        "is_app_user": False,
        "updated": user.updated or int(state.started_at),
        "has_2fa": False,
    }


def users_info(state: WorkspaceState, params: Params, now: float) -> dict[str, Any]:
    """``users.info``."""
    user = _lookup(params, "user", state.workspace.user, "user_not_found")
    with_email = "users:read.email" in state.workspace.bot.scopes
    return {"ok": True, "user": user_object(state, user, with_email, now)}


def users_lookup_by_email(state: WorkspaceState, params: Params, now: float) -> dict[str, Any]:
    """``users.lookupByEmail`` (note Slack's plural ``users_not_found``)."""
    user = _lookup(params, "email", state.workspace.user_by_email, "users_not_found")
    return {"ok": True, "user": user_object(state, user, True, now)}


def usergroups_users_list(state: WorkspaceState, params: Params, now: float) -> dict[str, Any]:
    """``usergroups.users.list``."""
    group = _lookup(params, "usergroup", state.workspace.group, "no_such_subteam")
    return {"ok": True, "users": list(group.users)}


def conversations_open(state: WorkspaceState, params: Params, now: float) -> dict[str, Any]:
    """``conversations.open`` for a DM with one user (multi-person DMs are not emulated)."""
    channel = _str(params, "channel")
    if channel is not None:
        conv = state.conversation(channel)
        if not conv.is_im:
            raise SlackError("channel_not_found")
        return {"ok": True, "no_op": True, "already_open": True, "channel": {"id": conv.id}}
    users = [u.strip() for u in (_str(params, "users") or "").split(",") if u.strip()]
    if not users:
        raise SlackError("users_list_not_supplied")
    for uid in users:
        if state.workspace.user(uid) is None:
            raise SlackError("user_not_found")
    if len(users) > 1:
        raise SlackError("invalid_arguments", ["[ERROR] the emulator opens DMs with one user only"])
    user = state.workspace.user(users[0])
    if user is None or user.is_bot:
        raise SlackError("cannot_dm_bot")
    conv = state.conversation(user.id)
    channel_obj: dict[str, Any] = {"id": conv.id}
    if _bool(params, "return_im"):
        channel_obj.update({"is_im": True, "user": user.id, "created": int(now), "is_open": True})
    return {"ok": True, "channel": channel_obj}


# The read scope that conversations.info needs for each kind of conversation (Slack: any one that covers it).
_READ_SCOPE = {"public": "channels:read", "private": "groups:read", "im": "im:read"}


def conversations_info(state: WorkspaceState, params: Params, now: float) -> dict[str, Any]:
    """``conversations.info`` for a channel or a DM with the bot, shaped like Slack's documented examples.

    The scope is checked here, not in :data:`METHODS`, because it depends on the conversation's kind.
    """
    ref = _required(params, "channel", "channel_not_found")
    # Only ids are accepted, as in Slack (names and user ids are for posting, not for lookups).
    if not ref.startswith(("C", "G", "D")):
        raise SlackError("channel_not_found")
    conv = state.conversation(ref)
    ws = state.workspace
    channel = ws.channel(conv.id)
    kind = "im" if conv.is_im else "private" if channel is not None and channel.is_private else "public"
    scopes = ws.bot.scopes
    if _READ_SCOPE[kind] not in scopes:
        raise SlackError("missing_scope", needed=_READ_SCOPE[kind], provided=",".join(scopes))
    created = int(state.started_at)
    if conv.is_im:
        body: dict[str, Any] = {
            "id": conv.id,
            "created": created,
            "is_im": True,
            "is_org_shared": False,
            "user": conv.im_user,
            "is_open": True,
            "priority": 0,
        }
    else:
        private = kind == "private"
        body = {
            "id": conv.id,
            "name": conv.name,
            "is_channel": not private,
            "is_group": private,
            "is_im": False,
            "is_mpim": False,
            "is_private": private,
            "created": created,
            "is_archived": False,
            "is_general": False,
            "unlinked": 0,
            "name_normalized": conv.name,
            "is_shared": False,
            "is_frozen": False,
            "is_org_shared": False,
            "is_pending_ext_shared": False,
            "pending_shared": [],
            "context_team_id": ws.team.id,
            "updated": created * 1000,  # Slack gives this one in milliseconds
            "parent_conversation": None,
            "creator": ws.bot.user_id,
            "is_ext_shared": False,
            "shared_team_ids": [ws.team.id],
            "pending_connected_team_ids": [],
            "is_member": ws.bot.user_id in conv.members,
            "topic": {"value": "", "creator": "", "last_set": 0},
            "purpose": {"value": "", "creator": "", "last_set": 0},
            "previous_names": [],
        }
    if _bool(params, "include_num_members"):
        body["num_members"] = len(conv.members)
    return {"ok": True, "channel": body}


# Methods whose answer links to the emulator itself: called with its public base URL as well.
LINK_METHODS: dict[str, tuple[LinkHandler, tuple[str, ...]]] = {
    "chat.getPermalink": (chat_get_permalink, ()),  # Slack: no scope required
}

# method -> (handler, scopes the bot token needs)
METHODS: dict[str, tuple[Handler, tuple[str, ...]]] = {
    "auth.test": (auth_test, ()),
    "chat.postMessage": (chat_post_message, ("chat:write",)),
    "chat.update": (chat_update, ("chat:write",)),
    "chat.postEphemeral": (chat_post_ephemeral, ("chat:write",)),
    "chat.delete": (chat_delete, ("chat:write",)),
    "views.open": (views_open, ()),
    "views.push": (views_push, ()),
    "views.update": (views_update, ()),
    "users.info": (users_info, ("users:read",)),
    "users.lookupByEmail": (users_lookup_by_email, ("users:read.email",)),
    "usergroups.users.list": (usergroups_users_list, ("usergroups:read",)),
    "conversations.open": (conversations_open, ("im:write",)),
    "conversations.info": (conversations_info, ()),  # scope depends on the channel: checked by the handler
}
