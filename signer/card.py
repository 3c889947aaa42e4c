"""The approval card, rendered by the trust core and checked by equality: render, don't search.

One renderer, two users. The bot imports :func:`render_pending` to post the card approvers click; the signer
calls :func:`check_clicked_card` on the ``message`` Slack echoes back in every approve click, which re-renders
the card from the *signed origin* and compares. So what an approver clicked is exactly what this module
produced for this request, or there is no receipt (docs/security.md, "The card rule").

The card, top to bottom (block ids are fixed; Slack echoes explicit ids unchanged):

==================  ==========================================================  ===========================
block               shows                                                       comes from
==================  ==========================================================  ===========================
``kt_header``       ``:rocket: Deploy <repo> to <environment>`` (plain text)     the signed origin
``kt_scope``        repo, full sha, environment, workflow (plain text fields)    the signed origin
``kt_status``       requester; approvals so far; expiry (mrkdwn fields)          origin; status grammar
``kt_unverified``   title, ref, run link under an "Unverified" label (mrkdwn)   the signed origin (CI text)
``kt_proven``       (OIDC and GitHub origins, instead) ref, event, run link     the token's claims / the
                    under a label naming what proves them                        signed webhook
``kt_decision``     Approve (with a confirm dialog where the policy asks) / Deny the request id, the policy
``kt_footer``       the request id                                               the request id
==================  ==========================================================  ===========================

**The status part** (approvals so far, time left) changes between renders, so the signer cannot know it.
It is *re-rendered, not trusted*: :func:`check_clicked_card` reads the two status texts from the echo, accepts
them only if they match a strict grammar (digits, ``of``, user mentions, a clock time, a duration — nothing
that can spell a repo, commit, environment or workflow), renders the whole card with them and compares. A
compromised bot can thus misstate how many people approved or how long is left; it cannot add a word.

**Free text** (title, ref, run URL, the CI requester name) is written by whoever holds the CI secret. It is
shown only under a label saying it is unverified, after :func:`unverified_text`: Unicode normalised (NFKC),
invisible and format characters removed, emoji codes broken, any hash-like run of 40+ characters other than
the scope's sha shortened, any other environment the policy knows replaced, Slack control characters escaped.

**OIDC origins** (issue 11) show no body text at all: the body travels beside the token unsigned, so a
compromised bot could rewrite it. Their ``kt_proven`` block shows only the ref, the event that started the
job (``*Started by:* push``) and the run link derived from the verified token's claims, under a label saying
so; the requester is labelled as proven by the token. **GitHub origins** show the same three from the
deployment protection rule's webhook, whose signature the signer checks, under "From GitHub's signed
webhook". An event outside ``contract.EVENT_RE``, or a ref outside ``contract.REF_RE`` (ASCII only: a
look-alike ``mаin`` or full-width ``＊`` would read as main or as markup under the lock), is never rendered
(``bad_origin``).

**Normalisation** before comparing (``../shared/notes/slack-echoed-blocks.md``): parse both sides as JSON
(key order and ``\\/`` do not matter); ignore ``verbatim`` (every mrkdwn text here contains nothing Slack
would auto-link differently); ignore ``emoji`` on a plain_text object whose text holds no emoji code (there it
changes nothing on screen) — where it does hold one, the echoed flag must equal the rendered one, with a
missing flag meaning ``true``. Nothing else is tolerated: a message with attachments or files, an extra or
missing block, a changed character, a generated id in place of ours, is refused.

Pure and stdlib-only: no I/O, no clock (times are parameters), importable by the bot and the signer alike.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from keyturn.signer import contract
from keyturn.signer.errors import KeyturnError
from keyturn.signer.receipt import Scope
from keyturn.signer.words import Fact

__all__ = [
    "APPROVE_ACTION",
    "DECISION_BLOCK",
    "DENY_ACTION",
    "DENY_PROMPT_BLOCK",
    "FOOTER_BLOCK",
    "GITHUB_LABEL",
    "HEADER_BLOCK",
    "PROVEN_BLOCK",
    "SCOPE_BLOCK",
    "STATUS_BLOCK",
    "UNVERIFIED_BLOCK",
    "CardFacts",
    "CardMismatch",
    "approvals_text",
    "check_clicked_card",
    "check_deny_view",
    "expires_text",
    "format_duration",
    "format_time",
    "normalize_blocks",
    "render_deny_view",
    "render_pending",
    "scope_fields",
    "unverified_text",
]

HEADER_BLOCK = "kt_header"
SCOPE_BLOCK = "kt_scope"
STATUS_BLOCK = "kt_status"
UNVERIFIED_BLOCK = "kt_unverified"
PROVEN_BLOCK = "kt_proven"
DECISION_BLOCK = "kt_decision"
FOOTER_BLOCK = "kt_footer"
APPROVE_ACTION = "approve"
DENY_ACTION = "deny"
# The deny form (render_deny_view; the bot opens it): its submission, signed by Slack with the form as shown,
# is the evidence of a denial the signer records (signer/evidence.py, assess_outcome), so the signer checks
# the form is this request's (check_deny_view) and both sides read the reason from the same places.
DENY_CALLBACK = "deny_reason"
DENY_PROMPT_BLOCK = "kt_deny"
DENY_PROMPT = "*Deny this deploy?* The requester and the pipeline will see your reason."
# Slack's defaults on an echoed input block and text input (slack-echoed-blocks.md §1.6): never sent by us.
_INPUT_DEFAULTS = {"dispatch_action": False}
_TEXT_INPUT_DEFAULTS = {"dispatch_action_config": {"trigger_actions_on": ["on_enter_pressed"]}}
_VIEW_SHOWN = ("title", "submit", "close", "blocks")
REASON_BLOCK = "reason"
REASON_ACTION = "reason_input"
REASON_MAX = 1000

APPROVALS_LABEL = "*Approvals*\n"
EXPIRES_LABEL = "*Expires*\n"
UNVERIFIED_LABEL = ":warning: *Unverified* (written by the pipeline, not checked by Keyturn)"
PROVEN_LABEL = ":lock: *From the job's OIDC token* (checked by Keyturn's signer)"
GITHUB_LABEL = ":lock: *From GitHub's signed webhook* (checked by Keyturn's signer)"
STARTED_BY = "*Started by:* "
NO_EVENT = "no event named"
# The origins whose card shows the event that started the job, under the label of what proves it.
_PROVEN_LABELS = {"oidc": PROVEN_LABEL, "github": GITHUB_LABEL}
OTHER_ENVIRONMENT = "[other environment]"
ELLIPSIS = "…"

# Budgets (characters, after escaping) for the free-text pieces; all well inside Block Kit's 2000/3000.
TITLE_MAX = 400
REF_MAX = 300
REQUESTER_MAX = 200
RUN_URL_MAX = 1500
MENTIONS_MAX = 1900

_USER_ID = r"[UW][A-Z0-9]{2,30}"
_USER_ID_RE = re.compile(rf"\A{_USER_ID}\Z")
_MENTION = rf"<@{_USER_ID}>"
_MENTION_RE = re.compile(rf"<@({_USER_ID})>")
# The only texts the status part may hold. Neither can spell a repo, commit, environment or workflow.
_APPROVALS_RE = re.compile(
    rf"\A[0-9]{{1,3}} of [0-9]{{1,3}}(?:: {_MENTION}(?:, {_MENTION})*(?: and [0-9]{{1,3}} more)?)?\Z"
)
_EXPIRES_RE = re.compile(
    r"\A(?:[0-9]{4}-[0-9]{2}-[0-9]{2} )?[0-9]{2}:[0-9]{2} UTC \(in "
    r"(?:[0-9]{1,5}d(?: [0-9]{1,2}h)?|[0-9]{1,2}h(?: [0-9]{1,2}m)?"
    r"|[0-9]{1,2}m(?: [0-9]{1,2}s)?|[0-9]{1,2}s)\)\Z"
)
# A Slack emoji code: ``:name:``. In mrkdwn, and in plain_text with emoji on, Slack draws it as a picture
# (custom emoji are pictures a workspace member uploads: one could show any word).
_EMOJI_CODE_RE = re.compile(r":[^\s:]+:")
# Any ``:name:`` — custom emoji names need not be ASCII.
_EMOJI_START_RE = re.compile(r":(?=[^\s:]+:)")
_RATIO = "\u2236"  # ∶ — shown in place of the colon that would start an emoji code
_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
_ESCAPE_RE = re.compile(r"[&<>]")
_IDENTITY_RE = re.compile(
    r"\A(?:[a-z][a-z0-9-]{0,30}:[A-Za-z0-9][A-Za-z0-9._-]{0,99}|[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9.-]{1,190})\Z"
)
_URL_RE = re.compile(r"\Ahttps://[A-Za-z0-9.-]{1,253}(?::[0-9]{1,5})?(?:/[\x21-\x7e]*)?\Z")
_URL_FORBIDDEN = frozenset("<>|\"'`\\")


class CardMismatch(KeyturnError):
    """The clicked message is not the card this module renders for the request (code ``card_mismatch``)."""

    code = "card_mismatch"

    def __init__(self, reason: str, **facts: Fact) -> None:
        super().__init__(code="card_mismatch", facts={"reason": reason, **facts})


@dataclass(frozen=True)
class CardFacts:
    """Everything a pending card shows that comes from the signed origin (and the request id bound to it).

    ``requester_user`` is the Slack user the *policy* maps the requester to (``slack:U…`` or
    ``[identities]``), never a lookup the bot made: the signer must be able to render the same card.
    ``origin_kind`` is ``"ci"`` (the requester is the pipeline's claim), ``"slack_command"`` (Slack-proven)
    or ``"oidc"`` (proven by the job's ID token; ``ref`` and ``run_url`` then come from its claims).
    """

    request_id: str
    scope: Scope
    requester: str
    requester_user: str | None
    origin_kind: str
    title: str | None = None
    ref: str | None = None
    run_url: str | None = None
    event: str | None = None  # oidc and github origins: the event that started the job (contract.EVENT_RE)


# --- text ---------------------------------------------------------------------------------------------------


def _escape(text: str) -> str:
    return _ESCAPE_RE.sub(lambda m: _ESCAPES[m.group(0)], text)


def _invisible(ch: str) -> bool:
    """Characters a person cannot see that could glue or split what they read: Unicode format characters
    (zero-width space and joiners, soft hyphen, word joiner, bidi controls, ...), the combining grapheme
    joiner, variation selectors, Hangul fillers and other default-ignorable code points."""
    cp = ord(ch)
    return (
        unicodedata.category(ch) in ("Cf", "Cc", "Cs", "Co", "Cn")
        or cp == 0x034F
        or 0x115F <= cp <= 0x1160
        or 0x17B4 <= cp <= 0x17B5
        or 0x180B <= cp <= 0x180F
        or cp in (0x3164, 0xFFA0, 0x2800)
        or 0xFE00 <= cp <= 0xFE0F
        or 0xE0000 <= cp <= 0xE0FFF
    )


# Latin look-alikes that NFKC leaves alone (Cyrillic, Greek, Armenian, Cherokee and Latin letters), mapped to
# the ASCII letter or digit a reader would take them for. Used only to *find* things to defuse, never shown.
_LOOKALIKES = {
    **dict.fromkeys("аɑαа", "a"),
    **dict.fromkeys("ƅЬьᏏ", "b"),
    **dict.fromkeys("сϲᴄⅽⲥ", "c"),
    **dict.fromkeys("ԁɗⅾ", "d"),
    **dict.fromkeys("еҽℯ", "e"),
    **dict.fromkeys("ſ", "f"),
    **dict.fromkeys("ɡց", "g"),
    **dict.fromkeys("һհ", "h"),
    **dict.fromkeys("іıιⅰ", "i"),
    **dict.fromkeys("ӏ", "l"),  # palochka: a stroke, read as l or 1
    **dict.fromkeys("јϳ", "j"),
    **dict.fromkeys("κк", "k"),
    **dict.fromkeys("ⅼ", "l"),
    **dict.fromkeys("ⅿ", "m"),
    **dict.fromkeys("ոп", "n"),
    **dict.fromkeys("οоօσⲟ", "o"),
    **dict.fromkeys("рρⲣ", "p"),
    **dict.fromkeys("ԛ", "q"),
    **dict.fromkeys("гᴦꭇⲅ", "r"),
    **dict.fromkeys("τтᴛ", "t"),
    **dict.fromkeys("ѕ", "s"),
    **dict.fromkeys("υս", "u"),
    **dict.fromkeys("νѵⅴ", "v"),
    **dict.fromkeys("ԝѡ", "w"),
    **dict.fromkeys("хⅹ", "x"),
    **dict.fromkeys("уү", "y"),
    **dict.fromkeys("ᴢ", "z"),
    **dict.fromkeys("АΑᎪ", "A"),
    **dict.fromkeys("ВΒᏴ", "B"),
    **dict.fromkeys("СϹᏟⅭ", "C"),
    **dict.fromkeys("ᎠⅮ", "D"),
    **dict.fromkeys("ЕΕᎬ", "E"),
    **dict.fromkeys("Ϝ", "F"),
    **dict.fromkeys("ԌᏀ", "G"),
    **dict.fromkeys("НΗᎻ", "H"),
    **dict.fromkeys("ІΙӀⅠ", "I"),
    **dict.fromkeys("ЈᎫ", "J"),
    **dict.fromkeys("КΚᏦ", "K"),
    **dict.fromkeys("ⅬᏞ", "L"),
    **dict.fromkeys("МΜᎷⅯ", "M"),
    **dict.fromkeys("ΝᏁ", "N"),
    **dict.fromkeys("ОΟՕ", "O"),
    **dict.fromkeys("РΡᏢ", "P"),
    **dict.fromkeys("ЅᏚ", "S"),
    **dict.fromkeys("ТΤᎢ", "T"),
    **dict.fromkeys("ХΧ", "X"),
    **dict.fromkeys("ΥҮ", "Y"),
    **dict.fromkeys("ΖᏃ", "Z"),
    # Lisu capitals, Canadian syllabics and Coptic letters that read as Latin ones.
    **dict(zip("ꓐꓑꓓꓔꓖꓗꓙꓚꓜꓝꓟꓠꓡꓢꓣꓦꓧꓪꓫꓬꓮꓰꓲꓳꓴ", "BPDTGKJCZFMNLSRVHWXYAEIOU", strict=True)),
    **dict(zip("ᗩᗷᑕᗪᗞᕮᖴᕼᒍᒪᗰᑎᑭᑫᖇᔕᑌᐯᗯ᙭ᘔ", "ABCDDEFHJLMNPQRSUVWXZ", strict=True)),
    **dict(zip("ⲀⲂⲈⲒⲔⲘⲚⲞⲢⲤⲦⲨⲬⲁⲉⲓⲕⲛⲧⲭ", "ABEIKMNOPCTYXaeiknt" + "x", strict=True)),
    **dict.fromkeys("Зз", "3"),
    **dict.fromkeys("б", "6"),
    **dict.fromkeys("ȣ", "8"),
}
# Characters a reader could take for a hex digit inside a long hex run: 0-9 a-f A-F, plus o/O (zero) and
# l/I (one), whatever script they come from.
_HEXISH = frozenset("0123456789abcdefABCDEFoOlI")


def _skeleton_char(ch: str) -> str:
    """The ASCII letter or digit a reader would take ``ch`` for, or ``ch`` itself.

    In order: ASCII as is; the look-alike table; any decimal digit of any script as its value (Malayalam ൦ is
    a 0); NFKD without combining marks (accented and compatibility forms); a character whose Unicode name
    says it is a Latin letter (``NEGATIVE SQUARED LATIN CAPITAL LETTER P``, ``LATIN LETTER SMALL CAPITAL R``).
    """
    if ch.isascii():
        return ch
    if ch in _LOOKALIKES:
        return _LOOKALIKES[ch]
    digit = unicodedata.digit(ch, None)
    if digit is not None:
        return str(digit)
    base = "".join(c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c))
    if len(base) == 1 and base.isascii():
        return base
    name = unicodedata.name(ch, "")
    m = _LATIN_NAME_RE.search(name)
    if m:
        return m.group(1).lower() if "SMALL" in name else m.group(1)
    return ch


_LATIN_NAME_RE = re.compile(r"\bLATIN\b.*\bLETTER\b(?: [A-Z]+)*? ([A-Z])\Z")


def _runs(flags: Sequence[bool]) -> Iterable[tuple[int, int]]:
    start = None
    for i, flag in enumerate([*flags, False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            yield start, i
            start = None


def _defuse(text: str, scope: Scope, environments: Collection[str]) -> str:
    """Shorten foreign hash-like runs and replace other environments' names in cleaned ``text``.

    Detection reads a *skeleton* of the text (each look-alike as the ASCII character a reader would see;
    combining marks skipped), so a commit written with Cyrillic letters is found as well. Environment names
    are matched longest first, so ``prod-eu`` is found as itself and not as ``prod`` plus ``-eu``; a name is
    a whole word when its neighbours are not ASCII letters or digits *as written* (``production٠`` reads as
    ``production.``).
    """
    # Hashes first: cutting one ends a word, so a name glued to it (``<sha>production``) becomes whole.
    kept, skel = _skeleton(text)
    for s, e in reversed(list(_runs([c in _HEXISH for c in skel]))):
        a, b = kept[s], kept[e - 1] + 1
        if e - s >= 40 and text[a:b] != scope.sha:
            text = text[:a] + text[a : a + 12] + ELLIPSIS + text[b:]
    kept, skel = _skeleton(text)
    # Per character, so indexes stay aligned with ``skel`` (str.casefold can lengthen: "ß" -> "ss").
    lower = "".join(c.lower() if len(c.lower()) == 1 else c for c in skel)
    original = "".join(text[i] for i in kept)
    own = scope.environment.lower()
    names = sorted({n.lower() for n in environments} | {own}, key=len, reverse=True)
    for s, e, name in sorted(_environments_in(lower, original, names), reverse=True):
        if name != own:
            text = text[: kept[s]] + OTHER_ENVIRONMENT + text[kept[e - 1] + 1 :]
    return text


def _skeleton(text: str) -> tuple[list[int], str]:
    """The indexes of ``text`` a reader sees as characters (marks of any kind skipped: enclosing and some
    nonspacing marks have combining class 0) and the skeleton of those characters."""
    kept = [i for i, ch in enumerate(text) if not unicodedata.category(ch).startswith("M")]
    return kept, "".join(_skeleton_char(text[i]) for i in kept)


def _ascii_alnum(ch: str) -> bool:
    return ch.isascii() and ch.isalnum()


def _environments_in(lower: str, original: str, names: Sequence[str]) -> list[tuple[int, int, str]]:
    """Whole-word occurrences of ``names`` (lower-case) in the lower-cased skeleton ``lower``; a match that
    overlaps an earlier one is skipped, so callers pass the longest names first. Word boundaries are read
    in ``original`` (same indexes): only an ASCII letter or digit continues a word."""
    found: list[tuple[int, int, str]] = []
    for name in names:
        if not name:
            continue
        start = lower.find(name)
        while start != -1:
            end = start + len(name)
            before = start == 0 or not _ascii_alnum(original[start - 1])
            after = end == len(lower) or not _ascii_alnum(original[end])
            if before and after and not any(start < fe and fs < end for fs, fe, _ in found):
                found.append((start, end, name))
            start = lower.find(name, start + 1)
    return found


def _clean(text: str) -> str:
    nfkc = unicodedata.normalize("NFKC", text)
    cleaned = "".join(ch for ch in nfkc if not _invisible(ch) or ch in "\t\n\r")
    return " ".join(cleaned.split())


def _shown(cleaned: str, scope: Scope, environments: Collection[str]) -> str:
    return _escape(_EMOJI_START_RE.sub(_RATIO, _defuse(cleaned, scope, environments)))


def unverified_text(text: str, scope: Scope, environments: Collection[str], limit: int) -> str:
    """Untrusted one-line text made safe to show in mrkdwn next to this scope.

    NFKC-normalised; invisible/format characters removed; whitespace collapsed to single spaces; hash-like
    runs of 40+ characters other than ``scope.sha`` cut to 12 characters and ``…``; whole-word names of the
    policy's *other* environments replaced by ``[other environment]``; the colon opening an emoji code
    replaced by ``∶`` so Slack shows the code as text; ``&``, ``<``, ``>`` escaped; at most ``limit`` chars.

    Too long a text loses whole words from its end (then ``…``), never part of one: a cut inside a word
    could turn ``production-eu`` into ``production…``. A single word longer than ``limit`` is shown as ``…``.
    """
    cleaned = _clean(text)
    shown = _shown(cleaned, scope, environments)
    if len(shown) <= limit:
        return shown
    words = cleaned.split(" ")
    lo, hi = 0, len(words) - 1  # the largest number of leading words that fits, by bisection
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(_shown(" ".join(words[:mid]), scope, environments)) + 2 <= limit:
            lo = mid
        else:
            hi = mid - 1
    return _shown(" ".join(words[:lo]), scope, environments) + " " + ELLIPSIS if lo else ELLIPSIS


# --- status texts -------------------------------------------------------------------------------------------


def format_duration(delta: timedelta) -> str:
    """A short human duration: ``45s``, ``4m 59s``, ``30m``, ``1h 5m``, ``2d 3h`` (rounded down, >= 0)."""
    seconds = max(0, int(delta.total_seconds()))
    days, rem = divmod(seconds, 86400)
    hours, rem = divmod(rem, 3600)
    minutes, secs = divmod(rem, 60)
    if days:
        return f"{days}d {hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h {minutes}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m {secs}s" if secs and minutes < 5 else f"{minutes}m"
    return f"{secs}s"


def format_time(when: datetime, now: datetime) -> str:
    """``14:05 UTC`` on the same UTC day as ``now``, else ``2026-11-26 14:05 UTC``."""
    utc = when.astimezone(UTC)
    if utc.date() == now.astimezone(UTC).date():
        return utc.strftime("%H:%M UTC")
    return utc.strftime("%Y-%m-%d %H:%M UTC")


def expires_text(expires_at: datetime, now: datetime) -> str:
    """The status part's expiry: ``14:05 UTC (in 4m 59s)``."""
    return f"{format_time(expires_at, now)} (in {format_duration(expires_at - now)})"


def approvals_text(user_ids: Sequence[str], required: int) -> str:
    """The status part's approvals: ``0 of 2``, ``1 of 2: <@U0BOB>``; ``… and 3 more`` past the budget.

    Only Slack user ids are shown (as mentions); anything else is counted but not named.
    """
    count = f"{len(user_ids)} of {required}"
    named = [u for u in user_ids if _USER_ID_RE.match(u)]
    if not named:
        return count
    shown: list[str] = []
    used = len(count) + 2
    for i, uid in enumerate(named):
        piece = f"<@{uid}>"
        if used + len(piece) + 2 + len(f" and {len(named)} more") > MENTIONS_MAX and shown:
            return f"{count}: {', '.join(shown)} and {len(named) - i} more"
        shown.append(piece)
        used += len(piece) + 2
    return f"{count}: {', '.join(shown)}"


# --- blocks -------------------------------------------------------------------------------------------------


def _plain(text: str) -> dict[str, Any]:
    # emoji is stated only where it matters (the text holds an emoji code); see the module docstring.
    obj: dict[str, Any] = {"type": "plain_text", "text": text}
    if _EMOJI_CODE_RE.search(text):
        obj["emoji"] = False
    return obj


def _mrkdwn(text: str) -> dict[str, Any]:
    # verbatim: Slack must not auto-link or auto-mention anything; the only markup is what this module wrote.
    return {"type": "mrkdwn", "text": text, "verbatim": True}


def scope_fields(scope: Scope) -> list[dict[str, Any]]:
    """The scope part: four plain-text fields, label and value, with no markup Slack would interpret.

    The values are validated identifiers (no ``&<>``, no spaces); a workflow holding ``:name:`` is sent with
    ``"emoji": false`` so Slack shows it as text.
    """
    return [
        _plain(f"Repository\n{scope.repo}"),
        _plain(f"Commit\n{scope.sha}"),
        _plain(f"Environment\n{scope.environment}"),
        _plain(f"Workflow\n{scope.workflow}"),
    ]


def _header_text(scope: Scope, emoji: str) -> str:
    # Block Kit caps a header at 150 characters. Nothing is ever cut (a cut could turn ``production-eu``
    # into ``production…``): a header that would not fit leaves the repo to the scope block below.
    full = f"{emoji} Deploy {scope.repo} to {scope.environment}"
    return full if len(full) <= 150 else f"{emoji} Deploy to {scope.environment}"


def header_block(scope: Scope, emoji: str = ":rocket:") -> dict[str, Any]:
    """The header: ``<emoji> Deploy <repo> to <environment>`` (plain text; repo and environment hold no
    colon, so the only emoji is the one given)."""
    return {
        "type": "header",
        "block_id": HEADER_BLOCK,
        "text": {"type": "plain_text", "text": _header_text(scope, emoji)},
    }


def requester_field(facts: CardFacts, environments: Collection[str]) -> dict[str, Any]:
    """``Requested by``: a mention when the policy maps the requester to a Slack user, else the name as text.

    For a CI origin the label says it is the pipeline's claim: the CI secret's holder chooses it.
    """
    label = {
        "slack_command": "*Requested by*",
        "oidc": "*Requested by* (per the job's OIDC token)",
        "github": "*Requested by* (who triggered the run, per GitHub's signed webhook)",
    }.get(facts.origin_kind, "*Requested by* (unverified: the pipeline's claim)")
    if facts.requester_user and _USER_ID_RE.match(facts.requester_user):
        who = f"<@{facts.requester_user}>"
    elif _IDENTITY_RE.match(facts.requester):
        who = unverified_text(facts.requester, facts.scope, environments, REQUESTER_MAX) or "unknown"
    else:
        # Only an identity (``provider:name``, an e-mail address) is shown: anything else could name a repo
        # or workflow beside the verified scope.
        who = "a name that is not an identity (not shown)"
    return _mrkdwn(f"{label}\n{who}")


def _run_link(url: str, scope: Scope, environments: Collection[str]) -> str:
    """``<url|View run>`` for a plain https URL; anything else, or a URL naming another commit or
    environment, is shown as unverified text instead of hidden behind a label."""
    shown = unverified_text(url, scope, environments, RUN_URL_MAX)
    if _URL_RE.match(url) and not (_URL_FORBIDDEN & set(url)) and shown == _escape(url):
        return f"<{_escape(url)}|View run>"
    return shown


def _started_by(event: str | None) -> dict[str, Any]:
    """``*Started by:* <event>``: the event that started the job, so a pull request's run never looks like a
    push to a branch. Only ``contract.EVENT_RE`` is ever shown (lowercase words joined by single ``_``: no
    markup, no italics, no line break); anything else is refused as ``bad_origin`` before rendering."""
    if event is None:
        return _mrkdwn(STARTED_BY + NO_EVENT)
    if problem := contract.event_problem(event):
        raise KeyturnError(code="bad_origin", reason="bad_event", detail=problem)
    return _mrkdwn(STARTED_BY + event)


def unverified_block(facts: CardFacts, environments: Collection[str]) -> dict[str, Any] | None:
    """The title, ref and run link, under the "Unverified" label; ``None`` when the origin has none.

    For an OIDC origin: the claim-derived ref, the event that started the job and the run link under the
    "From the job's OIDC token" label, and never a title (defused all the same: a claim is proven, not
    harmless). For a GitHub origin: the same three, from the webhook whose signature the signer checked,
    under "From GitHub's signed webhook".
    """
    scope = facts.scope
    proven = _PROVEN_LABELS.get(facts.origin_kind)
    parts: list[dict[str, Any]] = []
    if facts.title and proven is None:
        parts.append(_mrkdwn("*Title:* " + unverified_text(facts.title, scope, environments, TITLE_MAX)))
    if facts.ref:
        if proven is not None and (problem := contract.ref_problem(facts.ref)):
            # Under the lock label the ref must read as written: no look-alike, nothing NFKC makes markup.
            raise KeyturnError(code="bad_origin", reason="bad_ref", detail=problem)
        parts.append(_mrkdwn("*Ref:* " + unverified_text(facts.ref, scope, environments, REF_MAX)))
    if proven is not None:
        parts.append(_started_by(facts.event))
    if facts.run_url:
        parts.append(_mrkdwn("*Run:* " + _run_link(facts.run_url, scope, environments)))
    if not parts:
        return None
    block_id, label = (UNVERIFIED_BLOCK, UNVERIFIED_LABEL) if proven is None else (PROVEN_BLOCK, proven)
    return {"type": "context", "block_id": block_id, "elements": [_mrkdwn(label), *parts]}


def footer_block(request_id: str) -> dict[str, Any]:
    """The footer: the request id."""
    return {"type": "context", "block_id": FOOTER_BLOCK, "elements": [_mrkdwn(f"Request `{request_id}`")]}


def _decision_block(facts: CardFacts, confirm: bool) -> dict[str, Any]:
    scope = facts.scope
    approve: dict[str, Any] = {
        "type": "button",
        "action_id": APPROVE_ACTION,
        "text": {"type": "plain_text", "text": "Approve"},
        "style": "primary",
        "value": facts.request_id,
    }
    if confirm:
        approve["confirm"] = {
            "title": {"type": "plain_text", "text": "Approve this deploy?"},
            "text": _plain(
                f"Deploy {scope.repo} at {scope.sha} to {scope.environment} with workflow {scope.workflow}."
            ),
            "confirm": {"type": "plain_text", "text": "Approve"},
            "deny": {"type": "plain_text", "text": "Cancel"},
        }
    deny = {
        "type": "button",
        "action_id": DENY_ACTION,
        "text": {"type": "plain_text", "text": "Deny"},
        "style": "danger",
        "value": facts.request_id,
    }
    return {"type": "actions", "block_id": DECISION_BLOCK, "elements": [approve, deny]}


def render_pending(
    facts: CardFacts,
    *,
    environments: Collection[str],
    confirm: bool,
    approvals: str,
    expires: str,
) -> list[dict[str, Any]]:
    """The pending card's blocks, exactly as the bot posts them and the signer expects them back.

    ``environments`` is every environment name the policy defines (for defusing free text); ``confirm`` is
    the environment's ``confirm_approve``; ``approvals`` and ``expires`` are the status texts
    (:func:`approvals_text`, :func:`expires_text`). Raises ``ValueError`` if a status text is outside its
    grammar, so the bot can never post a card the signer would refuse for that reason.
    """
    if not _APPROVALS_RE.match(approvals):
        raise ValueError(f"approvals text outside its grammar: {approvals!r}")
    if not _EXPIRES_RE.match(expires):
        raise ValueError(f"expires text outside its grammar: {expires!r}")
    status = {
        "type": "section",
        "block_id": STATUS_BLOCK,
        "fields": [
            requester_field(facts, environments),
            _mrkdwn(APPROVALS_LABEL + approvals),
            _mrkdwn(EXPIRES_LABEL + expires),
        ],
    }
    blocks: list[dict[str, Any]] = [
        header_block(facts.scope),
        {"type": "section", "block_id": SCOPE_BLOCK, "fields": scope_fields(facts.scope)},
        status,
    ]
    unverified = unverified_block(facts, environments)
    if unverified is not None:
        blocks.append(unverified)
    blocks += [_decision_block(facts, confirm), footer_block(facts.request_id)]
    return blocks


def render_deny_view(request_id: str, scope: Scope) -> dict[str, Any]:
    """The deny form of ``request_id``, exactly as the bot opens it and the signer expects it back: "Deny"
    as title and button, the scope as the card shows it, the request id, and the reason input."""
    reason = {
        "type": "input",
        "block_id": REASON_BLOCK,
        "label": _plain("Reason"),
        "optional": False,
        "element": {
            "type": "plain_text_input",
            "action_id": REASON_ACTION,
            "multiline": True,
            "max_length": REASON_MAX,
            "placeholder": _plain("Why should this deploy not go ahead?"),
        },
    }
    return {
        "type": "modal",
        "callback_id": DENY_CALLBACK,
        "private_metadata": request_id,
        "title": _plain("Deny deploy"),
        "submit": _plain("Deny"),
        "close": _plain("Cancel"),
        "blocks": [
            {"type": "section", "block_id": DENY_PROMPT_BLOCK, "text": _mrkdwn(DENY_PROMPT)},
            {"type": "section", "block_id": SCOPE_BLOCK, "fields": scope_fields(scope)},
            footer_block(request_id),
            reason,
        ],
    }


def _without_defaults(node: Any, defaults: Mapping[str, Any]) -> Any:
    if not isinstance(node, dict):
        return node
    return {k: v for k, v in node.items() if not (k in defaults and v == defaults[k])}


def _input_as_sent(block: Any) -> Any:
    # An echoed input block without the defaults Slack adds to it and to its text input.
    if not isinstance(block, dict) or block.get("type") != "input" or "element" not in block:
        return block
    element = _without_defaults(block["element"], _TEXT_INPUT_DEFAULTS)
    return {**_without_defaults(block, _INPUT_DEFAULTS), "element": element}


def _shown_view_part(key: str, value: Any) -> Any:
    """A part of an echoed view as compared: Slack's input defaults out, then :func:`normalize_blocks`."""
    if key == "blocks" and isinstance(value, list):
        value = [_input_as_sent(b) for b in value]
    return normalize_blocks(value)


def check_deny_view(view: Mapping[str, Any], request_id: str, scope: Scope) -> None:
    """Refuse (:class:`CardMismatch`) unless the submitted ``view`` showed exactly the deny form of
    ``request_id`` (:func:`render_deny_view`): its title, buttons and blocks, after Slack's echo defaults.

    The bot opens the form, and Slack lets any interaction of a member open one: without this, a bot could
    answer a Deny on one request (or an Approve, under an "Approve" title) with a form of another, and the
    record would say that member denied it.
    """
    expected = render_deny_view(request_id, scope)
    for key in _VIEW_SHOWN:
        if _shown_view_part(key, view.get(key)) != normalize_blocks(expected[key]):
            raise CardMismatch("deny_view", part=key)


# --- the check ----------------------------------------------------------------------------------------------


def normalize_blocks(node: Any) -> Any:
    """Blocks as compared: ``verbatim`` dropped everywhere; ``emoji`` dropped on plain_text whose text holds
    no emoji code, and made explicit (missing = ``true``) where it does. Everything else is kept as is."""
    if isinstance(node, list):
        return [normalize_blocks(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: normalize_blocks(v) for k, v in node.items() if k != "verbatim"}
    if out.get("type") == "plain_text":
        text = out.get("text")
        if isinstance(text, str) and _EMOJI_CODE_RE.search(text):
            out["emoji"] = out.get("emoji", True)
        else:
            out.pop("emoji", None)
    return out


def _status_texts(blocks: list[Any]) -> tuple[str, str]:
    """The approvals and expiry texts of the echoed card's status block (grammar is checked by the render)."""
    for block in blocks:
        if isinstance(block, dict) and block.get("block_id") == STATUS_BLOCK:
            fields = block.get("fields")
            if isinstance(fields, list) and len(fields) == 3 and all(isinstance(f, dict) for f in fields):
                approvals, expires = fields[1].get("text"), fields[2].get("text")
                if (
                    isinstance(approvals, str)
                    and isinstance(expires, str)
                    and approvals.startswith(APPROVALS_LABEL)
                    and expires.startswith(EXPIRES_LABEL)
                ):
                    return approvals[len(APPROVALS_LABEL) :], expires[len(EXPIRES_LABEL) :]
            break
    raise CardMismatch("no_status")


def check_clicked_card(
    message: object,
    facts: CardFacts,
    *,
    environments: Collection[str],
    confirm: bool,
    required_approvals: int,
    may_approve: Callable[[str], bool],
) -> None:
    """Refuse (:class:`CardMismatch`) unless ``message`` — the ``message`` object of an approve click, as
    Slack sent it — is exactly the pending card :func:`render_pending` makes for ``facts``.

    1. ``message`` is an object with a list of ``blocks``, and no ``attachments``, ``files``, ``username``
       or ``icons`` (an ephemeral card has no ``message`` and cannot approve).
    2. The status texts are read from the echo; each must match its grammar, the approvals count must be
       out of this environment's ``required_approvals``, and every user it mentions must be one who
       ``may_approve`` here (Slack draws a mention as the member's self-chosen display name: only approvers
       may appear).
    3. The card is rendered from ``facts`` with those status texts and compared, after
       :func:`normalize_blocks` on both sides, for equality.
    """
    if not isinstance(message, Mapping):
        raise CardMismatch("no_message")
    for extra in ("attachments", "files"):
        if message.get(extra) not in (None, []):
            raise CardMismatch("extra_part", part=extra)
    # A poster-chosen sender name or picture (chat.postMessage username/icon_*) is shown above the card.
    for sender in ("username", "icons"):
        if sender in message:
            raise CardMismatch("own_sender", part=sender)
    blocks = message.get("blocks")
    if not isinstance(blocks, list):
        raise CardMismatch("no_blocks")
    approvals, expires = _status_texts(blocks)
    # "N of M" or "N of M: <@U…>, …": M must be this environment's quorum.
    if not _APPROVALS_RE.match(approvals) or approvals.split(" ")[2].rstrip(":") != str(required_approvals):
        raise CardMismatch("approvals_line")
    if not all(may_approve(uid) for uid in _MENTION_RE.findall(approvals)):
        raise CardMismatch("approvals_names")
    if not _EXPIRES_RE.match(expires):
        raise CardMismatch("expiry_line")
    expected = render_pending(
        facts, environments=environments, confirm=confirm, approvals=approvals, expires=expires
    )
    got = normalize_blocks(blocks)
    want = normalize_blocks(expected)
    if got != want:
        raise _first_difference(got, want)


def _first_difference(got: list[Any], want: list[Any]) -> CardMismatch:
    """The refusal naming the first block that differs (for logs and the refusal message)."""
    if len(got) != len(want):
        return CardMismatch("block_count", got=len(got), want=len(want))
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        if g != w:
            return CardMismatch("block", block=str(w.get("block_id", i) if isinstance(w, dict) else i))
    return CardMismatch("differs")  # pragma: no cover
