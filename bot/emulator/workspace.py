"""The emulated workspace (team, bot, users, user groups, channels), loaded from a TOML file.

The file format is documented in ``docs/emulator.md``; ``sample_workspace.toml`` is the one ``keyturn dev``
uses and whose ids the sample policy refers to. Loading checks ids, cross references and duplicates, so a typo
in the file is a clear :class:`WorkspaceError` at start-up rather than a confusing ``user_not_found`` later.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from datetime import UTC, tzinfo
from importlib import resources
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from keyturn.emulator.errors import WorkspaceError

SAMPLE_WORKSPACE = "sample_workspace.toml"

DEFAULT_SCOPES = (
    "commands",
    "chat:write",
    "chat:write.public",
    "users:read",
    "users:read.email",
    "usergroups:read",
    "im:write",
)

_USER_ID = re.compile(r"^[UW][A-Z0-9]{2,20}$")
_CHANNEL_ID = re.compile(r"^[CG][A-Z0-9]{2,20}$")
_GROUP_ID = re.compile(r"^S[A-Z0-9]{2,20}$")
_TEAM_ID = re.compile(r"^T[A-Z0-9]{2,20}$")
_BOT_ID = re.compile(r"^B[A-Z0-9]{2,20}$")
_APP_ID = re.compile(r"^A[A-Z0-9]{2,20}$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,79}$")


@dataclass(frozen=True)
class Team:
    """The workspace itself."""

    id: str
    name: str
    domain: str


@dataclass(frozen=True)
class BotIdentity:
    """The app's bot user, as ``auth.test`` reports it."""

    user_id: str
    bot_id: str
    app_id: str
    name: str
    scopes: tuple[str, ...]


@dataclass(frozen=True)
class User:
    """A workspace member."""

    id: str
    name: str
    real_name: str
    email: str | None
    is_bot: bool = False
    deleted: bool = False
    tz: str = "UTC"
    # Roles as users.info reports them: a guest is "restricted" (multi-channel) or "ultra restricted"
    # (single-channel); Slack documents these fields on every user object.
    is_admin: bool = False
    is_owner: bool = False
    is_restricted: bool = False
    is_ultra_restricted: bool = False
    updated: int = 0  # Unix seconds of the profile's last change (0: the emulator's start)


@dataclass(frozen=True)
class UserGroup:
    """A user group (``@handle``), as ``usergroups.users.list`` reports it."""

    id: str
    handle: str
    name: str
    users: tuple[str, ...]


@dataclass(frozen=True)
class Channel:
    """A public or private channel. ``members`` are user ids (the bot is always a member)."""

    id: str
    name: str
    members: tuple[str, ...]
    is_private: bool = False


@dataclass(frozen=True)
class Workspace:
    """A whole workspace file, validated."""

    team: Team
    bot: BotIdentity
    users: tuple[User, ...]
    groups: tuple[UserGroup, ...] = field(default=())
    channels: tuple[Channel, ...] = field(default=())

    def user(self, user_id: str) -> User | None:
        """The user with this id (including the bot user), or None."""
        return next((u for u in self.users if u.id == user_id), None)

    def user_by_email(self, email: str) -> User | None:
        """The user with this email (case-insensitive), or None."""
        wanted = email.strip().lower()
        return next((u for u in self.users if u.email and u.email.lower() == wanted), None)

    def group(self, group_id: str) -> UserGroup | None:
        """The user group with this id, or None."""
        return next((g for g in self.groups if g.id == group_id), None)

    def channel(self, ref: str) -> Channel | None:
        """The channel with this id, or this name (with or without ``#``), or None."""
        name = ref[1:] if ref.startswith("#") else ref
        return next((c for c in self.channels if ref == c.id or name == c.name), None)


def _table(data: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = data.get(key)
    if not isinstance(value, dict):
        raise WorkspaceError(f"{where}: missing table [{key}]")
    return value


def _str(data: dict[str, Any], key: str, where: str, pattern: re.Pattern[str] | None = None) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise WorkspaceError(f"{where}: {key!r} must be a non-empty string")
    if pattern is not None and not pattern.match(value):
        raise WorkspaceError(f"{where}: {key} {value!r} is not a valid id or name")
    return value


def _str_list(data: dict[str, Any], key: str, where: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
    value = data.get(key, list(default))
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise WorkspaceError(f"{where}: {key!r} must be a list of strings")
    return tuple(value)


def _flag(data: dict[str, Any], key: str, where: str) -> bool:
    value = data.get(key, False)
    if not isinstance(value, bool):
        raise WorkspaceError(f"{where}: {key!r} must be true or false")
    return value


def _int(data: dict[str, Any], key: str, where: str) -> int:
    value = data.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise WorkspaceError(f"{where}: {key!r} must be a non-negative integer")
    return value


def zone(name: str) -> tzinfo:
    """The time zone called ``name`` (IANA); UTC needs no tz database, so it works on minimal images."""
    if name == "UTC":
        return UTC
    return ZoneInfo(name)


def _tz(data: dict[str, Any], where: str) -> str:
    # Checked at load time: users.info derives tz_offset and tz_label from it, and a typo should fail here.
    name = data.get("tz", "UTC")
    if not isinstance(name, str):
        raise WorkspaceError(f"{where}: 'tz' must be a string")
    try:
        zone(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise WorkspaceError(f"{where}: 'tz' {name!r} is not a known IANA time zone") from None
    return name


def _list_of_tables(data: dict[str, Any], key: str) -> list[dict[str, Any]]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise WorkspaceError(f"workspace: [[{key}]] must be an array of tables")
    return value


def parse_workspace(data: dict[str, Any]) -> Workspace:
    """Build a :class:`Workspace` from parsed TOML, or raise :class:`WorkspaceError`."""
    t = _table(data, "team", "workspace")
    team = Team(
        id=_str(t, "id", "[team]", _TEAM_ID),
        name=_str(t, "name", "[team]"),
        domain=_str(t, "domain", "[team]", _NAME) if "domain" in t else str(t["name"]).lower(),
    )
    b = _table(data, "bot", "workspace")
    bot = BotIdentity(
        user_id=_str(b, "user_id", "[bot]", _USER_ID),
        bot_id=_str(b, "bot_id", "[bot]", _BOT_ID),
        app_id=_str(b, "app_id", "[bot]", _APP_ID),
        name=_str(b, "name", "[bot]", _NAME),
        scopes=_str_list(b, "scopes", "[bot]", DEFAULT_SCOPES),
    )
    users: list[User] = []
    for i, u in enumerate(_list_of_tables(data, "users")):
        where = f"users[{i}]"
        email = u.get("email")
        if email is not None and (not isinstance(email, str) or "@" not in email):
            raise WorkspaceError(f"{where}: 'email' must be an address")
        name = _str(u, "name", where, _NAME)
        real_name = u.get("real_name", name)
        if not isinstance(real_name, str):
            raise WorkspaceError(f"{where}: 'real_name' must be a string")
        users.append(
            User(
                id=_str(u, "id", where, _USER_ID),
                name=name,
                real_name=real_name,
                email=email,
                is_bot=bool(u.get("is_bot", False)),
                deleted=bool(u.get("deleted", False)),
                tz=_tz(u, where),
                is_admin=_flag(u, "is_admin", where),
                is_owner=_flag(u, "is_owner", where),
                is_restricted=_flag(u, "is_restricted", where),
                is_ultra_restricted=_flag(u, "is_ultra_restricted", where),
                updated=_int(u, "updated", where),
            )
        )
    users.append(User(id=bot.user_id, name=bot.name, real_name=bot.name, email=None, is_bot=True))
    _unique([u.id for u in users], "user id")
    _unique([u.name for u in users], "user name")
    _unique([u.email.lower() for u in users if u.email], "user email")
    user_ids = {u.id for u in users}

    groups: list[UserGroup] = []
    for i, g in enumerate(_list_of_tables(data, "groups")):
        where = f"groups[{i}]"
        handle = _str(g, "handle", where, _NAME)
        members = _str_list(g, "users", where)
        _known(members, user_ids, where)
        groups.append(
            UserGroup(
                id=_str(g, "id", where, _GROUP_ID),
                handle=handle,
                name=str(g.get("name", handle)),
                users=members,
            )
        )
    _unique([g.id for g in groups], "group id")

    humans = tuple(u.id for u in users if not u.is_bot)
    channels: list[Channel] = []
    for i, c in enumerate(_list_of_tables(data, "channels")):
        where = f"channels[{i}]"
        name = _str(c, "name", where)
        name = name[1:] if name.startswith("#") else name
        if not _NAME.match(name):
            raise WorkspaceError(f"{where}: channel name {name!r} is not valid")
        members = _str_list(c, "members", where, humans)
        _known(members, user_ids, where)
        channels.append(
            Channel(
                id=_str(c, "id", where, _CHANNEL_ID),
                name=name,
                members=tuple(dict.fromkeys((*members, bot.user_id))),
                is_private=bool(c.get("is_private", False)),
            )
        )
    _unique([c.id for c in channels], "channel id")
    _unique([c.name for c in channels], "channel name")
    return Workspace(team=team, bot=bot, users=tuple(users), groups=tuple(groups), channels=tuple(channels))


def _unique(values: list[str], what: str) -> None:
    seen: set[str] = set()
    for v in values:
        if v in seen:
            raise WorkspaceError(f"workspace: duplicate {what} {v!r}")
        seen.add(v)


def _known(members: tuple[str, ...], user_ids: set[str], where: str) -> None:
    for m in members:
        if m not in user_ids:
            raise WorkspaceError(f"{where}: unknown user {m!r}")


def load_workspace(path: Path | None = None) -> Workspace:
    """Load a workspace TOML file; without a path, the packaged sample workspace."""
    try:
        if path is None:
            text = resources.files("keyturn.emulator").joinpath(SAMPLE_WORKSPACE).read_text("utf-8")
            where = SAMPLE_WORKSPACE
        else:
            text = path.read_text("utf-8")
            where = str(path)
    except OSError as exc:
        raise WorkspaceError(f"cannot read workspace file {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise WorkspaceError(f"{where}: not valid TOML: {exc}") from None
    return parse_workspace(data)
