"""How Slack echoes an app's Block Kit blocks: the one place the emulator turns blocks *as sent* into blocks
*as Slack stores and returns them* (``chat.postMessage``'s answer, ``message.blocks`` in ``block_actions``,
``view.blocks`` in ``view_submission``).

Every rule cites its item in ``shared/notes/slack-echoed-blocks.md`` ("note §1.4" = section 1, item 4).
Where the note says the behaviour is unknown, the decision taken here is marked **Decision** and repeated in
``docs/emulator.md`` ("How the emulator echoes blocks").

The functions are pure and deterministic: the same blocks always give the same generated ids (note §1.2:
generated ids look content-derived), and echoing an echo changes nothing (explicit ids are kept, defaults are
only added where missing, and entity escaping never escapes an entity twice). Input must already have passed
:mod:`keyturn.emulator.blockkit` validation; the echo only reshapes, it never refuses.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
from collections.abc import Iterable
from typing import Any

__all__ = [
    "ACTION_ELEMENTS",
    "IMAGE_EXTRAS",
    "echo_blocks",
    "echo_text",
    "echo_view",
    "escape_plain_text",
    "fallback_text",
    "generated_id",
]

# Elements that carry an action_id (note §1.3: "action_id generated too when omitted").
ACTION_ELEMENTS = frozenset(
    {
        "button",
        "overflow",
        "static_select",
        "multi_static_select",
        "external_select",
        "multi_external_select",
        "users_select",
        "multi_users_select",
        "conversations_select",
        "multi_conversations_select",
        "channels_select",
        "multi_channels_select",
        "checkboxes",
        "radio_buttons",
        "datepicker",
        "timepicker",
        "datetimepicker",
        "plain_text_input",
        "number_input",
        "email_text_input",
        "url_text_input",
        "rich_text_input",
        "file_input",
    }
)

# The image extras Slack adds after fetching an image (note §1.6, from J1/J4). The emulator fetches nothing,
# so these are fixed placeholders (J1's values); a strict comparison drops them (note, "What a strict
# equality check must normalise" 3). Values the app sent are kept.
IMAGE_EXTRAS: dict[str, Any] = {
    "fallback": "20x20px image",
    "image_width": 20,
    "image_height": 20,
    "image_bytes": 96,
}

# Slack's default for plain_text_input (note §1.6: added although never sent).
DEFAULT_DISPATCH_ACTION_CONFIG: dict[str, Any] = {"trigger_actions_on": ["on_enter_pressed"]}

# -- key order (note §1.7) -----------------------------------------------------------------------------------
# Slack writes keys in its own order. Known keys come first in the order below; keys not listed keep the order
# they were sent in, after the known ones. Orders marked "capture" were seen in the note's captures; the rest
# follow the same pattern (type, id, content) and are a decision.

_TEXT_ORDER = {"plain_text": ("type", "text", "emoji"), "mrkdwn": ("type", "text", "verbatim")}  # capture
_BLOCK_ORDER: dict[str, tuple[str, ...]] = {
    "section": ("type", "block_id", "text", "fields", "accessory"),  # capture (L, A, H)
    "header": ("type", "block_id", "text"),  # capture (L, A)
    "context": ("type", "block_id", "elements"),  # capture (L)
    "actions": ("type", "block_id", "elements"),  # capture (L, A, H)
    "divider": ("type", "block_id"),
    # capture (A, H)
    "input": ("type", "block_id", "label", "optional", "dispatch_action", "element", "hint"),
    "image": (
        "type",
        "block_id",
        "image_url",
        "slack_file",
        "alt_text",
        "title",
        *IMAGE_EXTRAS,
        "is_animated",
    ),
    "rich_text": ("type", "block_id", "elements"),  # capture (A, user messages)
}
_ELEMENT_ORDER: dict[str, tuple[str, ...]] = {
    # capture (L, A, H)
    "button": ("type", "action_id", "text", "style", "value", "url", "confirm", "accessibility_label"),
    "image": ("type", "image_url", "slack_file", "alt_text", *IMAGE_EXTRAS),  # J4
    "plain_text_input": (
        "type",
        "action_id",
        "placeholder",
        "initial_value",
        "multiline",
        "min_length",
        "max_length",
        "dispatch_action_config",
    ),  # capture (H: type, action_id, placeholder)
}
_DEFAULT_ELEMENT_ORDER = ("type", "action_id", "placeholder")  # capture (A: static_select action)
_CONFIRM_ORDER = ("title", "text", "confirm", "deny", "style")
_OPTION_ORDER = ("text", "value", "description", "url")  # capture (A: selected_option)
_OPTION_GROUP_ORDER = ("label", "options")
_VIEW_ORDER = ("type", "title", "close", "submit", "blocks")

_OPTION_LIST_KEYS = frozenset({"options", "initial_options"})
_OPTION_KEYS = frozenset({"initial_option", "selected_option"})

# -- text objects (note §1.4, §1.5, §1.8, §1.9) --------------------------------------------------------------

# A bare '&' (one that does not start one of Slack's three entities), '<' or '>'.
_UNESCAPED = re.compile(r"&(?!(?:amp|lt|gt);)|<|>")
_ENTITY = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def escape_plain_text(text: str) -> str:
    """``&``, ``<``, ``>`` as ``&amp;``, ``&lt;``, ``&gt;`` (note §1.9: plain_text comes back entity-escaped).

    **Decision** (the note: unknown whether already-escaped entities are escaped again): an ``&`` that already
    starts ``&amp;``, ``&lt;`` or ``&gt;`` is kept, so text an app escaped itself (as Slack's formatting docs
    ask) comes back unchanged and escaping is idempotent. Any other ``&`` (``&quot;``, ``&#39;``) is escaped.
    Whitespace, including tabs, newlines and trailing spaces, is kept (note §1.8).
    """
    return _UNESCAPED.sub(lambda m: _ENTITY[m.group(0)[0]], text)


def _ordered(obj: dict[str, Any], order: Iterable[str]) -> dict[str, Any]:
    """``obj`` with the keys of ``order`` first (those present), then the others in their sent order."""
    known = [k for k in order if k in obj]
    return {**{k: obj[k] for k in known}, **{k: v for k, v in obj.items() if k not in known}}


def echo_text(obj: dict[str, Any]) -> dict[str, Any]:
    """A text object as echoed.

    * plain_text: ``"emoji": true`` added when missing (note §1.4, §1.12); the text entity-escaped (§1.9).
      **Decision** (unknown in the note): an explicit ``"emoji": false`` is kept as sent.
    * mrkdwn: ``"verbatim": false`` added when missing (note §1.5); the text kept exactly as written,
      control sequences such as ``<@U…>`` and ``:tada:`` included (§1.9). **Decision**: an explicit
      ``"verbatim": true`` is kept as sent.
    """
    kind = obj.get("type")
    text = obj.get("text")
    if kind == "plain_text" and isinstance(text, str):
        out = {**obj, "text": escape_plain_text(text)}
        out.setdefault("emoji", True)
        return _ordered(out, _TEXT_ORDER["plain_text"])
    if kind == "mrkdwn":
        out = dict(obj)
        out.setdefault("verbatim", False)
        return _ordered(out, _TEXT_ORDER["mrkdwn"])
    return dict(obj)


# -- generated ids (note §1.1, §1.2, §1.3) -------------------------------------------------------------------


def _canonical(node: Any) -> bytes:
    return json.dumps(node, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def generated_id(content: Any, taken: set[str]) -> str:
    """A Slack-looking generated id for ``content``: 3-5 characters of the base64 alphabet (note §1.1).

    Derived from a SHA-256 of ``content``'s canonical JSON (note §1.2: one template gave the same ids in four
    messages), so the same blocks always get the same ids. **Decision** (the algorithm is unknown): when the
    id is already in ``taken`` (an explicit id, or two identical blocks in one message), the hash is salted
    with a counter until the id is free. The new id is added to ``taken``.
    """
    data = _canonical(content)
    salt = 0
    while True:
        digest = hashlib.sha256(data + (b"\x00%d" % salt if salt else b"")).digest()
        candidate = base64.b64encode(digest).decode()[: 3 + digest[-1] % 3]
        if candidate not in taken:
            taken.add(candidate)
            return candidate
        salt += 1


# -- elements and blocks -------------------------------------------------------------------------------------


def _echo_node(key: str, node: Any, action_ids: set[str]) -> Any:
    """Echo a value found under ``key`` inside an element (text objects, confirm, options, nested lists)."""
    if isinstance(node, list):
        if key in _OPTION_LIST_KEYS:
            return [_echo_option(o, action_ids) for o in node]
        if key == "option_groups":
            return [
                _ordered({k: _echo_node(k, v, action_ids) for k, v in g.items()}, _OPTION_GROUP_ORDER)
                if isinstance(g, dict)
                else g
                for g in node
            ]
        return [_echo_node(key, item, action_ids) for item in node]
    if not isinstance(node, dict):
        return node
    if node.get("type") in _TEXT_ORDER:
        return echo_text(node)
    if key in _OPTION_KEYS:
        return _echo_option(node, action_ids)
    if key == "confirm" and "type" not in node:
        # note "Unknown": how confirm is echoed inside message.blocks. Decision: like actions[].confirm in J2
        # (its text objects normalised, emoji added), keys in the documented order.
        return _ordered({k: _echo_node(k, v, action_ids) for k, v in node.items()}, _CONFIRM_ORDER)
    return {k: _echo_node(k, v, action_ids) for k, v in node.items()}


def _echo_option(opt: Any, action_ids: set[str]) -> Any:
    if not isinstance(opt, dict):
        return opt
    return _ordered({k: _echo_node(k, v, action_ids) for k, v in opt.items()}, _OPTION_ORDER)


def _echo_element(el: Any, action_ids: set[str]) -> Any:
    """An element (button, select, input, image …) as echoed.

    * interactive elements get an ``action_id`` when they have none (note §1.3), derived from the element;
    * button ``style``, ``value`` and ``url`` are kept byte for byte, and no ``value`` is added (note §1.10);
      **Decision** (unknown in the note): ``value`` strings are not entity-escaped;
    * plain_text_input gets the default ``dispatch_action_config`` (note §1.6);
    * image elements get the image extras (note §1.6);
    * keys in Slack's order (note §1.7).
    """
    if not isinstance(el, dict):
        return el
    kind = el.get("type")
    out = {k: _echo_node(k, v, action_ids) for k, v in el.items()}
    if kind == "plain_text_input":
        out.setdefault("dispatch_action_config", copy.deepcopy(DEFAULT_DISPATCH_ACTION_CONFIG))
    if kind == "image":
        for k, v in IMAGE_EXTRAS.items():
            out.setdefault(k, v)
    if kind in ACTION_ELEMENTS and "action_id" not in out:
        out["action_id"] = generated_id(out, action_ids)
    order = _ELEMENT_ORDER.get(str(kind), _DEFAULT_ELEMENT_ORDER)
    return _ordered(out, order)


def _echo_block(block: dict[str, Any], block_ids: set[str], action_ids: set[str]) -> dict[str, Any]:
    """One block as echoed; ``block_ids``/``action_ids`` are the ids already taken in the message."""
    kind = block.get("type")
    out: dict[str, Any] = {}
    for key, value in block.items():
        if key in ("text", "label", "hint", "title") and isinstance(value, dict):
            out[key] = echo_text(value)  # note §1.4/§1.5/§1.12: header, section, input label, image title
        elif key == "fields" and isinstance(value, list):
            # note §1.11: fields keep their order, each item normalised
            out[key] = [echo_text(f) if isinstance(f, dict) else f for f in value]
        elif key == "elements" and isinstance(value, list) and kind in ("actions", "context"):
            out[key] = [
                echo_text(e)
                if isinstance(e, dict) and e.get("type") in _TEXT_ORDER
                else _echo_element(e, action_ids)
                for e in value
            ]
        elif key in ("accessory", "element") and isinstance(value, dict):
            out[key] = _echo_element(value, action_ids)
        else:
            # rich_text elements and anything else: kept as sent (note "Unknown": rich_text echo; Decision)
            out[key] = value
    if kind == "input":
        out.setdefault("optional", False)  # note §1.6
        out.setdefault("dispatch_action", False)
    if kind == "image":
        for k, v in IMAGE_EXTRAS.items():
            out.setdefault(k, v)
        out.setdefault("is_animated", False)  # note §1.6 (J4: on image blocks)
    if "block_id" not in out:
        out["block_id"] = generated_id(out, block_ids)  # note §1.1: every block, dividers too
    return _ordered(out, _BLOCK_ORDER.get(str(kind), ("type", "block_id")))


def _explicit_ids(blocks: list[Any]) -> tuple[set[str], set[str]]:
    """The block_ids and action_ids the app set itself (generated ids must not collide with them)."""
    block_ids: set[str] = set()
    action_ids: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            aid = node.get("action_id")
            if isinstance(aid, str):
                action_ids.add(aid)
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    for block in blocks:
        if isinstance(block, dict):
            bid = block.get("block_id")
            if isinstance(bid, str):
                block_ids.add(bid)
            walk(block)
    return block_ids, action_ids


def echo_blocks(blocks: list[Any]) -> list[dict[str, Any]]:
    """``blocks`` (validated, as the app sent them) in the form Slack stores and echoes them.

    Applies note §1.1-§1.12 to every block: generated ``block_id``/``action_id`` where missing (explicit ones
    kept unchanged), text object defaults and escaping, input and image defaults, Slack's key order. Nothing
    is added at the message level (no ``attachments``, no rich_text: note §1.13, §1.14). Deterministic and
    idempotent: ``echo_blocks(echo_blocks(b)) == echo_blocks(b)``.
    """
    block_ids, action_ids = _explicit_ids(blocks)
    return [_echo_block(b, block_ids, action_ids) for b in blocks if isinstance(b, dict)]


def echo_view(spec: dict[str, Any]) -> dict[str, Any]:
    """A view (modal/home) as Slack stores it: its ``blocks`` echoed like a message's, and ``title``,
    ``close`` and ``submit`` normalised as text objects (note §3: "view.blocks is normalised the same way",
    "title/close/submit (emoji added)"). ``private_metadata`` is kept byte for byte (note §3)."""
    out = dict(spec)
    for key in ("title", "close", "submit"):
        if isinstance(out.get(key), dict):
            out[key] = echo_text(out[key])
    out["blocks"] = echo_blocks(spec.get("blocks") or [])
    return _ordered(out, _VIEW_ORDER)


# -- the message text when the app gave none (note §1.16) ----------------------------------------------------


def fallback_text(blocks: list[dict[str, Any]]) -> str:
    """The top-level ``text`` Slack builds when a message has blocks but the app sent no ``text``.

    From the captures (note §1.16, L and A): the shown texts in block order (header, section text and
    fields, context texts), each as stored (so plain_text is entity-escaped), then each button as
    ``"<label> button"``, all joined by single spaces; A (2025, the newest) ends with
    ``", with interactive elements"`` when the message has any. **Decision**: follow A (the older L capture
    lacks the suffix); other interactive elements (selects, overflows) count as interactive but add no words.
    """
    words: list[str] = []
    interactive = False

    def text_of(obj: Any) -> None:
        if isinstance(obj, dict) and obj.get("type") in _TEXT_ORDER and isinstance(obj.get("text"), str):
            words.append(obj["text"])

    def element(el: Any) -> None:
        nonlocal interactive
        if not isinstance(el, dict) or el.get("type") not in ACTION_ELEMENTS:
            return
        interactive = True
        if el.get("type") == "button" and isinstance(el.get("text"), dict):
            words.append(f"{el['text'].get('text', '')} button")

    for block in blocks:
        text_of(block.get("text"))
        for f in block.get("fields") or []:
            text_of(f)
        if block.get("type") == "context":
            for e in block.get("elements") or []:
                text_of(e)
        if block.get("type") == "actions":
            for e in block.get("elements") or []:
                element(e)
        element(block.get("accessory"))
        element(block.get("element"))
    text = " ".join(w for w in words if w)
    if interactive:
        text += ", with interactive elements"
    return text
