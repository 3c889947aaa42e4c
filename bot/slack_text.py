"""Text for Slack: escaping, truncation and the few markup sequences the bot builds itself.

Slack treats only ``&``, ``<`` and ``>`` as control characters in ``text`` and mrkdwn (platform facts
§5.2), so escaping replaces exactly those three. Everything the bot shows that it did not write itself (repo,
ref, title, requester name, deny reason, user-typed command text) passes through ``escape`` before it is
placed in any text object, so ``feat/<!channel>`` reaches Slack as ``feat/&lt;!channel&gt;`` and pings nobody.

Markup the bot does write on purpose (user and group mentions, links) is built here only from values that are
validated first: a mention only from an id matching Slack's id shape, a link only from an http(s) URL.
See docs/slack.md.
"""

from __future__ import annotations

import re
from urllib.parse import quote, urlsplit

ELLIPSIS = "…"

_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
_ESCAPE_RE = re.compile(r"[&<>]")
# The longest sequence escape() produces is "&amp;" (5 chars): a cut can land inside one only within the
# last 4 characters before the cut point.
_LONGEST_ESCAPE = max(len(v) for v in _ESCAPES.values())

USER_ID_RE = re.compile(r"^[UW][A-Z0-9]{2,30}$")
GROUP_ID_RE = re.compile(r"^S[A-Z0-9]{2,30}$")
CHANNEL_ID_RE = re.compile(r"^[CGD][A-Z0-9]{2,30}$")
# A channel that ``<#…>`` can link to: public (C…) or private (G…), not a DM.
LINKABLE_CHANNEL_RE = re.compile(r"^[CG][A-Z0-9]{2,30}$")

# Characters that would end or split Slack's <url|label> markup, or that Slack would read as markup, inside a
# URL: percent-encode them rather than trust the URL.
_URL_UNSAFE = re.compile(r"[\s<>|\"'`\x00-\x1f\x7f]")
# Characters that must stay literal in a URL we re-quote (RFC 3986 reserved + unreserved, and '%').
_URL_SAFE_CHARS = "/:?#[]@!$&()*+,;=-._~%"


class UnsafeSlackId(ValueError):
    """An id handed to a mention builder does not look like a Slack id; it is never placed in markup."""

    code = "unsafe_slack_id"


def escape(text: str) -> str:
    """Escape ``&``, ``<`` and ``>`` for Slack ``text``/mrkdwn (and nothing else)."""
    return _ESCAPE_RE.sub(lambda m: _ESCAPES[m.group(0)], text)


def truncate(text: str, limit: int, ellipsis: str = ELLIPSIS) -> str:
    """Shorten already-escaped ``text`` to at most ``limit`` characters, ending with ``ellipsis`` when cut.

    Never cuts an escape sequence (``&amp;``, ``&lt;``, ``&gt;``) in half: a half sequence such as ``&l``
    would show as garbage, and ``&`` alone could combine with following text.
    """
    if limit < len(ellipsis):
        raise ValueError(f"limit {limit} is shorter than the ellipsis")
    if len(text) <= limit:
        return text
    cut = limit - len(ellipsis)
    head = text[:cut]
    amp = head.rfind("&", max(0, cut - _LONGEST_ESCAPE + 1))
    if amp != -1 and ";" not in head[amp:]:
        # Only an escape sequence we produced can start with '&' in escaped text; it straddles the cut.
        head = head[:amp]
    return head + ellipsis


def safe(text: str, limit: int) -> str:
    """Escape untrusted ``text`` and truncate the result to ``limit`` characters."""
    return truncate(escape(text), limit)


def one_line(text: str) -> str:
    """Collapse newlines and tabs to spaces, so a value cannot start a mrkdwn block quote on its own line."""
    return " ".join(text.split())


def user_mention(user_id: str) -> str:
    """``<@U…>`` for a validated Slack user id; raises ``UnsafeSlackId`` otherwise."""
    if not USER_ID_RE.fullmatch(user_id):
        raise UnsafeSlackId(f"not a Slack user id: {user_id!r}")
    return f"<@{user_id}>"


def group_mention(group_id: str) -> str:
    """``<!subteam^S…>`` for a validated Slack user-group id; raises ``UnsafeSlackId`` otherwise."""
    if not GROUP_ID_RE.fullmatch(group_id):
        raise UnsafeSlackId(f"not a Slack user group id: {group_id!r}")
    return f"<!subteam^{group_id}>"


def channel_mention(channel_id: str) -> str | None:
    """``<#C…>`` for a linkable channel id, or None for anything else (the caller then says nothing)."""
    return f"<#{channel_id}>" if LINKABLE_CHANNEL_RE.fullmatch(channel_id) else None


def is_user_id(value: str) -> bool:
    """True if ``value`` has the shape of a Slack user id (``U…`` or ``W…``)."""
    return USER_ID_RE.fullmatch(value) is not None


def user_or_name(value: str, limit: int = 200) -> str:
    """A mention if ``value`` is a Slack user id, else ``value`` escaped and truncated (outside identity)."""
    return user_mention(value) if is_user_id(value) else safe(value, limit)


def safe_url(url: str) -> str | None:
    """``url`` made safe to place inside ``<…|…>`` markup, or None unless it is an absolute http(s) URL.

    Characters that could close or split the markup are percent-encoded; ``&`` is escaped as Slack requires.
    """
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    quoted = quote(url.strip(), safe=_URL_SAFE_CHARS)
    if _URL_UNSAFE.search(quoted):  # pragma: no cover - quote() encodes all of these
        return None
    return escape(quoted)


def link(url: str, label: str, limit: int = 3000) -> str:
    """A mrkdwn link ``<url|label>`` when ``url`` is http(s) and fits; otherwise the label (or URL) as text.

    ``label`` is untrusted text: it is escaped, so it can neither close the link nor add markup. The result
    never exceeds ``limit`` characters.
    """
    target = safe_url(url)
    label_text = escape(one_line(label)) or "link"
    if target is None:
        return truncate(escape(one_line(url)), limit)
    room = limit - len(target) - 3
    if room < 10:  # the URL alone eats the budget: show it as plain text rather than a broken link
        return truncate(escape(one_line(url)), limit)
    return f"<{target}|{truncate(label_text, room)}>"
