"""``keyturn policy pin-groups``: pin the members of every approver group into the policy (docs/policy.md).

The signer admits a member of an ``approver_groups`` group only if the user is listed in the policy's own
``[groups.<id>]`` table; it never asks Slack and never takes membership from the bot (docs/security.md). This
admin command is how those tables are written: it asks Slack's ``usergroups.users.list`` for each group and
prints the ``[groups]`` tables, or with ``--write`` replaces them in the file.

Fail closed: any Slack error (an ``ok: false`` answer, a non-200 status, a rate limit, an unreadable answer, a
user id of an unexpected shape), or a result that would make the policy invalid (e.g. a group shrank below a
quorum), stops the command with a non-zero status and leaves the file untouched. The Slack bot token comes
from ``KEYTURN_SLACK_BOT_TOKEN`` only (a flag would show up in process lists and shell history) and is sent
only to an ``https://`` API URL, or plain ``http://`` on loopback (the emulator in tests and ``keyturn dev``).

The parts are separate so tests can drive each: :func:`pin` (pure but for the injected ``fetch``),
:func:`fetch_members` (the one HTTP call), :func:`replace_groups_section` (text editing, checked by
re-parsing) and :func:`write_atomically`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from keyturn.signer.errors import KeyturnError
from keyturn.signer.policy import Policy, PolicyError, is_slack_group_id, is_slack_user_id

if TYPE_CHECKING:
    from keyturn.signer.words import Fact

__all__ = [
    "DEFAULT_API_URL",
    "TOKEN_ENV",
    "PinError",
    "PinResult",
    "check_api_url",
    "fetch_members",
    "pin",
    "render_groups",
    "replace_groups_section",
    "write_atomically",
]

DEFAULT_API_URL = "https://slack.com/api/"
TOKEN_ENV = "KEYTURN_SLACK_BOT_TOKEN"  # noqa: S105 - the variable's name, not a secret
API_URL_ENV = "KEYTURN_SLACK_API_URL"
MAX_POLICY_BYTES = 1024 * 1024
MAX_ANSWER_BYTES = 4 * 1024 * 1024  # 10 000 members of ~12 characters fit many times over
HTTP_TIMEOUT_S = 10.0
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
_INLINE_WIDTH = 100  # longer member lists are written one id per line, for readable diffs

_HEADER_RE = re.compile(r"^\s*\[")
_FIRST_KEY_RE = re.compile(r"""^\s*\[\[?\s*(?:"([^"]*)"|'([^']*)'|([A-Za-z0-9_-]+))""")

_APPEND_COMMENT = (
    "# Members of approver_groups, pinned: the signer admits a group member only if listed here.\n"
    "# Written by `keyturn policy pin-groups` from Slack's usergroups.users.list (docs/policy.md).\n"
)


class PinError(KeyturnError):
    """Pinning failed; nothing was written. ``code``: ``slack_error``, ``bad_policy``, ``unsafe_edit``."""


@dataclass(frozen=True)
class PinResult:
    """What a successful pin produced."""

    members: dict[str, tuple[str, ...]]  # group id -> sorted member ids, as Slack answered
    section: str  # the rendered [groups.<id>] tables
    text: str | None  # the whole new policy text, or None when the file could not be edited safely
    changes: tuple[str, ...]  # one line per group, for the operator to review


def check_api_url(url: str) -> str:
    """The API base URL with a trailing slash; raises ``PinError("bad_api_url")`` unless it is ``https://``
    (or ``http://`` to loopback): the bot token must not travel in clear text."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        host = None
        parts = None
    ok = parts is not None and bool(host) and not parts.username and not parts.password
    if ok and parts is not None and parts.scheme == "https":
        return url if url.endswith("/") else url + "/"
    if ok and parts is not None and parts.scheme == "http" and host in _LOOPBACK:
        return url if url.endswith("/") else url + "/"
    raise PinError(code="bad_api_url")


def fetch_members(api_url: str, token: str, group_id: str, *, timeout: float = HTTP_TIMEOUT_S) -> list[str]:
    """Members of Slack user group ``group_id`` via ``usergroups.users.list``; raises
    ``PinError("slack_error")`` for any failure. Redirects are refused, so the token is never re-sent to
    another address."""
    import http.client
    import urllib.error
    import urllib.parse
    import urllib.request

    class _NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
            raise PinError(code="slack_error", reason="redirect", status=code)

    method = "usergroups.users.list"
    what: dict[str, Fact] = {"method": method, "group": group_id}  # the call every failure names
    body = urllib.parse.urlencode({"usergroup": group_id}).encode()
    request = urllib.request.Request(  # noqa: S310 - scheme checked by check_api_url
        check_api_url(api_url) + method,
        data=body,
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
            "User-Agent": "keyturn-pin-groups/1",
        },
        method="POST",
    )
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=timeout) as resp:
            raw: bytes = resp.read(MAX_ANSWER_BYTES + 1)
    except urllib.error.HTTPError as exc:
        if exc.code == 429:
            after = str(exc.headers.get("Retry-After", "?"))[:20]
            raise PinError(code="slack_error", facts=what, reason="rate_limited", retry_after=after) from None
        answer = _slack_error_code(exc.read(MAX_ANSWER_BYTES))
        raise PinError(
            code="slack_error", facts=what, reason="http", status=exc.code, answer=answer
        ) from None
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", None) or type(exc).__name__
        raise PinError(
            code="slack_error", facts=what, reason="unreachable", api_url=api_url, error=str(reason)
        ) from None
    if len(raw) > MAX_ANSWER_BYTES:
        raise PinError(code="slack_error", facts=what, reason="too_large", limit=MAX_ANSWER_BYTES)
    try:
        answer = json.loads(raw)
    except (ValueError, RecursionError):
        raise PinError(code="slack_error", facts=what, reason="not_json") from None
    if not isinstance(answer, dict) or answer.get("ok") is not True:
        error = answer.get("error") if isinstance(answer, dict) else None
        shown = error if isinstance(error, str) and len(error) <= 100 else "no error code"
        raise PinError(code="slack_error", facts=what, reason="refused", answer=shown)
    users = answer.get("users")
    if not isinstance(users, list) or not all(isinstance(u, str) for u in users):
        raise PinError(code="slack_error", facts=what, reason="no_users")
    odd = [u for u in users if not is_slack_user_id(u)]
    if odd:
        raise PinError(code="slack_error", facts=what, reason="bad_user", user=odd[0][:40])
    return users


def _slack_error_code(raw: bytes) -> str:
    """Slack's ``error`` in an HTTP error's body, or "" when it gives none (or an odd one)."""
    try:
        answer = json.loads(raw)
    except (ValueError, RecursionError):
        return ""
    error = answer.get("error") if isinstance(answer, dict) else None
    return error if isinstance(error, str) and len(error) <= 100 else ""


def approver_group_ids(document: Mapping[str, Any]) -> list[str]:
    """Every group id named in any environment's ``approver_groups``, sorted; read from the raw document so
    a policy whose groups are not pinned yet (and so does not validate) can be pinned. Raises
    ``PinError("bad_policy")`` for an entry that is not a Slack user-group id (nothing is sent to Slack)."""
    envs = document.get("environments")
    found: set[str] = set()
    if not isinstance(envs, dict):
        return []
    for name, env in envs.items():
        groups = env.get("approver_groups", []) if isinstance(env, dict) else []
        if not isinstance(groups, list):
            raise PinError(code="bad_policy", reason="groups_not_list", name=str(name))
        for group in groups:
            if not isinstance(group, str) or not is_slack_group_id(group):
                raise PinError(code="bad_policy", reason="not_group", name=str(name), group=str(group)[:40])
            found.add(group)
    return sorted(found)


def render_groups(members: Mapping[str, Sequence[str]]) -> str:
    """The ``[groups.<id>]`` tables for ``members`` (ids are checked, so nothing needs TOML escaping)."""
    out: list[str] = []
    for group in sorted(members):
        if not is_slack_group_id(group):
            raise PinError(code="bad_policy", reason="render_group", group=group[:40])
        ids = sorted(members[group])
        if not all(is_slack_user_id(u) for u in ids):
            raise PinError(code="bad_policy", reason="member", group=group)
        inline = "members = [" + ", ".join(f'"{u}"' for u in ids) + "]"
        if len(inline) > _INLINE_WIDTH:
            inline = "members = [\n" + "".join(f'    "{u}",\n' for u in ids) + "]"
        out.append(f"[groups.{group}]\n{inline}\n")
    return "\n".join(out)


def _is_groups_header(line: str) -> bool | None:
    """None if ``line`` is no table header; else whether the table is ``groups`` or below it."""
    if not _HEADER_RE.match(line):
        return None
    m = _FIRST_KEY_RE.match(line)
    if m is None:
        return None  # e.g. a line of a multi-line array; the re-parse check catches any misreading
    return next(g for g in m.groups() if g is not None) == "groups"


def replace_groups_section(text: str, section: str) -> str:
    """``text`` with every ``[groups…]`` table replaced by ``section`` (where the first was, or appended).

    Comments and blank lines just before the next other table stay with that table. The result is checked by
    parsing both versions: everything but ``groups`` must be equal and ``groups`` must be exactly what
    ``section`` says, else ``PinError("unsafe_edit")`` (e.g. ``groups`` written as dotted keys or inline).
    """
    lines = text.splitlines(keepends=True)
    kept: list[str] = []
    insert_at: int | None = None
    i = 0
    while i < len(lines):
        if _is_groups_header(lines[i]):
            if insert_at is None:
                insert_at = len(kept)
            j = i + 1
            while j < len(lines) and _is_groups_header(lines[j]) is None:
                j += 1
            if j < len(lines) and _is_groups_header(lines[j]) is False:
                # Keep the comments and blank lines that introduce the next table.
                k = j
                while k > i + 1 and (lines[k - 1].strip() == "" or lines[k - 1].lstrip().startswith("#")):
                    k -= 1
                kept.extend(lines[k:j])
            i = j
            continue
        kept.append(lines[i])
        i += 1
    if insert_at is None:
        body = "".join(kept)
        if body and not body.endswith("\n"):
            body += "\n"
        new = body + ("\n" if body.strip() else "") + _APPEND_COMMENT + section
    else:
        before = "".join(kept[:insert_at])
        after = "".join(kept[insert_at:])
        if before and not before.endswith("\n"):
            before += "\n"
        new = before + section + ("\n" if after.strip() and not after.startswith("\n") else "") + after
    _check_edit(text, new, section)
    return new


def _check_edit(old: str, new: str, section: str) -> None:
    try:
        before, after, wanted = tomllib.loads(old), tomllib.loads(new), tomllib.loads(section)
    except tomllib.TOMLDecodeError:
        before, after, wanted = {}, None, {}
    if after is None or _without_groups(before) != _without_groups(after):
        raise PinError(code="unsafe_edit", reason="cannot_replace")
    if after.get("groups", {}) != wanted.get("groups", {}):
        raise PinError(code="unsafe_edit", reason="not_held")


def _without_groups(document: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in document.items() if k != "groups"}


def _describe_change(group: str, old: Sequence[str] | None, new: Sequence[str]) -> str:
    n = f"{len(new)} member{'s' if len(new) != 1 else ''}"
    if old is None:
        return f"{group}: {n} (newly pinned)"
    added, removed = sorted(set(new) - set(old)), sorted(set(old) - set(new))
    if not added and not removed:
        return f"{group}: {n} (unchanged)"
    parts = ([f"added {', '.join(added)}"] if added else []) + (
        [f"removed {', '.join(removed)}"] if removed else []
    )
    return f"{group}: {n} ({'; '.join(parts)})"


def _old_members(document: Mapping[str, Any]) -> dict[str, list[str]]:
    groups = document.get("groups")
    out: dict[str, list[str]] = {}
    if isinstance(groups, dict):
        for gid, table in groups.items():
            members = table.get("members") if isinstance(table, dict) else None
            if isinstance(members, list):
                out[gid] = [m for m in members if isinstance(m, str)]
    return out


def pin(text: str, fetch: Callable[[str], Sequence[str]], source: str = "<policy>") -> PinResult:
    """Ask ``fetch`` for the members of every approver group in policy ``text``; the new ``[groups]`` tables.

    The result is validated as a whole policy before it is returned (``PinError("bad_policy")`` listing every
    problem otherwise, e.g. a quorum no longer reachable). Groups no environment names are dropped.
    """
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PinError(code="bad_policy", reason="toml", source=source, detail=str(exc)) from None
    members = {g: tuple(sorted(set(fetch(g)))) for g in approver_group_ids(document)}
    section = render_groups(members)
    candidate = dict(document)
    candidate.pop("groups", None)
    if members:
        candidate["groups"] = {g: {"members": list(m)} for g, m in members.items()}
    try:
        Policy.from_data(candidate, source)
    except PolicyError as exc:
        lines = "; ".join(str(i) for i in exc.issues)
        raise PinError(code="bad_policy", reason="invalid", source=source, problems=lines) from None
    try:
        new_text: str | None = replace_groups_section(text, section)
    except PinError:
        new_text = None
    old = _old_members(document)
    changes = tuple(_describe_change(g, old.get(g), m) for g, m in members.items())
    changes += tuple(f"{g}: unpinned (no environment names it)" for g in sorted(set(old) - set(members)))
    return PinResult(members=members, section=section, text=new_text, changes=changes)


def write_atomically(path: str, text: str) -> None:
    """Replace the file at ``path`` with ``text``: a temp file in the same directory with the same mode,
    fsynced, then renamed over it, so a reader sees the old file or the new one, never half of one."""
    directory = os.path.dirname(os.path.abspath(path))
    mode = os.stat(path).st_mode & 0o7777
    fd, tmp = tempfile.mkstemp(prefix=".keyturn-policy-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
