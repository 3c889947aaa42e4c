"""An independent model of what a person reads on a Slack card, for the card-attack tests.

Nothing here imports :mod:`keyturn.signer.card`: the point is to judge the trust core's renderer and its
check with rules written separately, so that a blind spot shared by both cannot hide itself.

* :func:`shown_texts` lists every string a card puts on screen (or behind a hover: a link target).
* :func:`reader_form` is the text as a reader takes it in: NFKC, every invisible or mark character dropped
  (format, control, private/unassigned, *all* nonspacing and enclosing marks, default-ignorables), and each
  look-alike letter read as the ASCII letter it imitates (:data:`CONFUSABLES`, a table written for these
  tests — deliberately wider than the scripts the renderer claims to cover).
* :func:`foreign_hashes`, :func:`foreign_environments`, :func:`emoji_codes` find what must not be shown;
  :func:`started_by` what the card says started the job.
* :func:`display_equivalent` and the two status grammars are the oracle for the mutation tests: what Slack's
  echo may change without changing the screen, and what the bot may legitimately write in the status part.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Collection, Iterator
from typing import Any

__all__ = [
    "APPROVALS_LABEL",
    "CONFUSABLES",
    "EXPIRES_LABEL",
    "approvals_ok",
    "display_equivalent",
    "emoji_codes",
    "expires_ok",
    "foreign_environments",
    "foreign_hashes",
    "reader_form",
    "shown_texts",
    "started_by",
]

APPROVALS_LABEL = "*Approvals*\n"
EXPIRES_LABEL = "*Expires*\n"


def _table(pairs: dict[str, str]) -> dict[str, str]:
    """``{"a": "аɑα"}`` -> ``{"а": "a", "ɑ": "a", "α": "a"}``."""
    return {look: ascii_ for ascii_, looks in pairs.items() for look in looks}


# What a reader takes each character for. Written from the look of the glyphs, script by script: Cyrillic,
# Greek, Armenian, Cherokee (capital and small), Coptic, Lisu, Canadian syllabics, Latin small capitals and
# other Latin letters, and the emoji-style negative squared / circled capitals. NFKC already folds fullwidth,
# mathematical, circled and squared forms, so those are not listed.
CONFUSABLES: dict[str, str] = _table(
    {
        "a": "аɑαᴀ",
        "b": "ЬьƅʙᏏ",
        "c": "сϲᴄⲥꮯ",
        "d": "ԁɗᴅᑯꓒ",
        "e": "еҽᴇ",
        "f": "ꜰ",
        "g": "ɡցɢ",
        "h": "һհʜ",
        "i": "іιɩɪ",
        "j": "јϳᴊ",
        "k": "кκᴋ",
        "l": "ʟǀӏ",
        "m": "ᴍ",
        "n": "ոпɴ",
        "o": "оοօσᴏⲟ",
        "p": "рρᴘⲣ",
        "q": "ԛզ",
        "r": "ʀг",
        "s": "ѕꜱ",
        "t": "ᴛ",
        "u": "υսᴜ",
        "v": "νѵᴠ",
        "w": "ԝѡᴡ",
        "x": "х",
        "y": "уүʏ",
        "z": "ᴢ",
        "A": "АΑᎪꓮᗅ\U0001f170\U0001f150",
        "B": "ВΒᏴꓐᗷ\U0001f171\U0001f151",
        "C": "СϹᏟⲤꓚᑕ\U0001f172\U0001f152",
        "D": "Ꭰꓓᗞᗪ\U0001f173\U0001f153",
        "E": "ЕΕᎬꓰ\U0001f174\U0001f154",
        "F": "Ϝꓝᖴᖵᖷ\U0001f175\U0001f155",
        "G": "ԌᏀꓖ\U0001f176\U0001f156",
        "H": "НΗᎻꓧ\U0001f177\U0001f157",
        "I": "ІΙӀꓲ\U0001f178\U0001f158",
        "J": "ЈᎫꓙᒍ\U0001f179\U0001f159",
        "K": "КΚᏦꓗ\U0001f17a\U0001f15a",
        "L": "ᏞꓡᒪⳐ\U0001f17b\U0001f15b",
        "M": "МΜᎷꓟ\U0001f17c\U0001f15c",
        "N": "ΝꓠᑎⲚ\U0001f17d\U0001f15d",
        "O": "ОΟՕⲞꓳ\U0001f17e\U0001f15e",
        "P": "РΡᏢⲢꓑᑭ\U0001f17f\U0001f15f",
        "Q": "Ԛⵕ\U0001f180\U0001f160",
        "R": "ᏒꓣᖇᎡ\U0001f181\U0001f161",
        "S": "ЅᏚꓢᔕ\U0001f182\U0001f162",
        "T": "ТΤᎢꓔ\U0001f183\U0001f163",
        "U": "Սꓴᑌሀ\U0001f184\U0001f164",
        "V": "ѴᏙꓦᐯ\U0001f185\U0001f165",
        "W": "ԜᎳꓪᗯ\U0001f186\U0001f166",
        "X": "ХΧꓫ\U0001f187\U0001f167",
        "Y": "ҮΥꓬ\U0001f188\U0001f168",
        "Z": "ΖᏃꓜ\U0001f189\U0001f169",
        "3": "ЗзƷ",
        "6": "б",
        "8": "ȣ",
    }
)

# Unicode's default-ignorable code points (DerivedCoreProperties), written out here rather than taken from
# the renderer; plus the braille blank, which draws nothing either.
_IGNORABLE = (
    (0x00AD, 0x00AD),
    (0x034F, 0x034F),
    (0x061C, 0x061C),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x206F),
    (0x2800, 0x2800),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0),
    (0xFFF0, 0xFFF8),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
)
# Categories a reader does not see as a character of their own: marks ride on the previous letter (an
# accented or boxed "0" still reads as "0"), the rest draw nothing.
_UNSEEN_CATEGORIES = frozenset({"Mn", "Me", "Cf", "Cc", "Cs", "Co", "Cn"})
_HEX_RUN = re.compile(r"[0-9a-f]{40,}")
# Slack draws ``:name:`` as an emoji picture (a custom emoji can picture any word).
_EMOJI = re.compile(r":[A-Za-z0-9_+'-]+:")
_LINK = re.compile(r"<([^<>|]*)(?:\|([^<>]*))?>")
_ENTITIES = (("&lt;", "<"), ("&gt;", ">"), ("&amp;", "&"))
_NOT_SHOWN_KEYS = frozenset({"type", "block_id", "action_id", "style", "emoji", "verbatim"})


def _unseen(ch: str) -> bool:
    cp = ord(ch)
    return unicodedata.category(ch) in _UNSEEN_CATEGORIES or any(lo <= cp <= hi for lo, hi in _IGNORABLE)


def reader_form(text: str) -> str:
    """``text`` as a reader takes it in (case kept): NFKC, whitespace as one space, unseen characters
    dropped, look-alikes read as ASCII."""
    out: list[str] = []
    for ch in unicodedata.normalize("NFKC", text):
        if ch.isspace():
            out.append(" ")
        elif not _unseen(ch):
            out.append(CONFUSABLES.get(ch, ch))
    return "".join(out)


def _strings(node: Any, key: str = "") -> Iterator[tuple[str, str, Any]]:
    """Every string leaf with the key it sits under and the object holding it."""
    if isinstance(node, list):
        for item in node:
            yield from _strings(item, key)
    elif isinstance(node, dict):
        for k, v in node.items():
            if isinstance(v, str):
                if k not in _NOT_SHOWN_KEYS:
                    yield k, v, node
            else:
                yield from _strings(v, k)


def _mrkdwn_shown(text: str) -> list[str]:
    """A mrkdwn text as shown: link labels in place of links (the targets listed too, they are one hover
    away), mentions dropped (Slack draws a person chip), entities decoded."""
    pieces: list[str] = []

    def link(m: re.Match[str]) -> str:
        target, label = m.group(1), m.group(2)
        if target.startswith(("@", "#", "!subteam")):
            return " "
        pieces.append(target)
        return label if label is not None else target

    shown = _LINK.sub(link, text)
    decoded = [shown, *pieces]
    for entity, ch in _ENTITIES:
        decoded = [d.replace(entity, ch) for d in decoded]
    return decoded


def shown_texts(blocks: Any) -> list[str]:
    """Every text the blocks put on screen (or one hover away), mrkdwn resolved."""
    out: list[str] = []
    for _key, value, holder in _strings(blocks):
        if holder.get("type") == "mrkdwn":
            out += _mrkdwn_shown(value)
        else:
            out.append(value)
    return out


def _hex_form(text: str) -> str:
    # A reader takes O/o for zero and l/I for one inside a long run of hex digits.
    read = reader_form(text)
    return "".join("0" if c in "oO" else "1" if c in "lI" else c.lower() for c in read)


def foreign_hashes(blocks: Any, own_sha: str) -> list[str]:
    """Runs of 40+ hex-looking characters shown anywhere on the card that are not ``own_sha``."""
    return [
        run for text in shown_texts(blocks) for run in _HEX_RUN.findall(_hex_form(text)) if run != own_sha
    ]


def foreign_environments(blocks: Any, own: str, environments: Collection[str]) -> list[str]:
    """Whole-word names of ``environments`` other than ``own`` shown anywhere on the card (any case, any
    look-alike, any invisible character inside)."""
    found: list[str] = []
    others = {e.lower() for e in environments} - {own.lower()}
    for text in shown_texts(blocks):
        read = reader_form(text).lower()
        for name in others:
            pattern = rf"(?<![^\W_]){re.escape(name)}(?![^\W_])"
            # Not part of the card's own environment name ("prod" inside "prod-eu").
            own_spans = [m.span() for m in re.finditer(re.escape(own.lower()), read)]
            for m in re.finditer(pattern, read):
                if not any(s <= m.start() and m.end() <= e for s, e in own_spans):
                    found.append(m.group(0))
    return found


def emoji_codes(blocks: Any) -> list[str]:
    """Emoji codes Slack would draw as pictures: in mrkdwn, and in plain text unless ``emoji`` is false."""
    codes: list[str] = []
    for _key, value, holder in _strings(blocks):
        drawn = holder.get("type") == "mrkdwn" or (
            holder.get("type") == "plain_text" and holder.get("emoji", True) is not False
        )
        if drawn:
            codes += _EMOJI.findall(value)
    return codes


# "Started by" (any emphasis, any case) and the word a reader takes for the event after it.
_STARTED_BY = re.compile(r"started by\W*(\S*)", re.IGNORECASE)


def started_by(blocks: Any) -> list[str]:
    """Every event the card says started the job, as a reader takes it in (``Started by: <event>``, with
    whatever emphasis, look-alikes or invisible characters), in the order shown."""
    return [
        m.group(1).strip("*_~`")
        for text in shown_texts(blocks)
        for m in _STARTED_BY.finditer(reader_form(text))
    ]


# --- the mutation oracle ---------------------------------------------------------------------------------


def display_equivalent(node: Any) -> Any:
    """``node`` without what cannot change the screen: ``verbatim`` (every card text is already escaped)
    and ``emoji`` on plain text without an emoji code; where there is a code, a missing ``emoji`` is true."""
    if isinstance(node, list):
        return [display_equivalent(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: display_equivalent(v) for k, v in node.items() if k != "verbatim"}
    if node.get("type") == "plain_text":
        text = node.get("text")
        if isinstance(text, str) and _EMOJI.search(text):
            out["emoji"] = node.get("emoji", True)
        else:
            out.pop("emoji", None)
    return out


_NUM = "[0-9]{1,3}"
_WHO = "<@[UW][A-Z0-9]{2,30}>"
_APPROVALS = re.compile(rf"{_NUM} of (?P<quorum>{_NUM})(?:: {_WHO}(?:, {_WHO})*(?: and {_NUM} more)?)?")
_DURATION = (
    "(?:[0-9]{1,5}d(?: [0-9]{1,2}h)?|[0-9]{1,2}h(?: [0-9]{1,2}m)?|[0-9]{1,2}m(?: [0-9]{1,2}s)?|[0-9]{1,2}s)"
)
_EXPIRES = re.compile(rf"(?:[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}} )?[0-9]{{2}}:[0-9]{{2}} UTC \(in {_DURATION}\)")


def approvals_ok(text: str, quorum: int, approver: Callable[[str], bool]) -> bool:
    """The approvals status text in Keyturn's grammar, out of this environment's ``quorum``, mentioning only
    users for whom ``approver`` holds (a mention shows a member's self-chosen name)."""
    m = _APPROVALS.fullmatch(text)
    mentioned = re.findall(r"<@([UW][A-Z0-9]{2,30})>", text)
    return m is not None and m.group("quorum") == str(quorum) and all(approver(u) for u in mentioned)


def expires_ok(text: str) -> bool:
    """The expiry status text in Keyturn's grammar."""
    return _EXPIRES.fullmatch(text) is not None
