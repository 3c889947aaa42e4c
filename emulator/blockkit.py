"""Block Kit validation of raw JSON, with the limits Slack itself enforces.

``slack_sdk`` checks Block Kit *objects* client-side but sends plain dicts unchecked (platform facts §5.1), so
a bot that builds dicts learns about a 3001-character section only from Slack. The emulator answers the way
Slack does: every problem found, each as ``[ERROR] <what> [json-pointer:/blocks/3/text/text]``.

What Slack adds to blocks it stores (generated ids, defaults, escaping) is :mod:`keyturn.emulator.echo`'s job.
"""

from __future__ import annotations

from typing import Any

MAX_MESSAGE_BLOCKS = 50
MAX_VIEW_BLOCKS = 100
MAX_TEXT = 3000
MAX_FIELDS = 10
MAX_FIELD_TEXT = 2000
MAX_HEADER = 150
MAX_ID = 255
MAX_BUTTON_VALUE = 2000
MAX_BUTTON_TEXT = 75
MAX_ACTIONS_ELEMENTS = 25
MAX_CONTEXT_ELEMENTS = 10
MAX_VIEW_TITLE = 24
MAX_PRIVATE_METADATA = 3000
MAX_PLACEHOLDER = 150
MAX_LABEL = 2000
MAX_URL = 3000

BLOCK_TYPES = frozenset(
    {"section", "divider", "header", "context", "actions", "input", "image", "rich_text", "file", "video"}
)
INPUT_ELEMENTS = frozenset(
    {
        "plain_text_input",
        "static_select",
        "multi_static_select",
        "users_select",
        "multi_users_select",
        "conversations_select",
        "channels_select",
        "checkboxes",
        "radio_buttons",
        "datepicker",
        "timepicker",
        "number_input",
        "email_text_input",
        "url_text_input",
    }
)
ACTION_ELEMENTS = INPUT_ELEMENTS | {"button", "overflow"}


class BlockKitError(Exception):
    """Raw Block Kit JSON that Slack would refuse; ``messages`` are Slack-style error lines."""

    code = "invalid_blocks"

    def __init__(self, messages: list[str]) -> None:
        super().__init__("; ".join(messages))
        self.messages = messages


class InvalidBlocks(BlockKitError):
    """Message blocks that Slack refuses (``invalid_blocks``)."""

    code = "invalid_blocks"


class InvalidView(BlockKitError):
    """A view that Slack refuses (``views.open``/``views.update`` answer ``invalid_arguments``)."""

    code = "invalid_arguments"


class _Checker:
    """Collects every problem, like Slack, instead of stopping at the first."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def err(self, ptr: str, what: str) -> None:
        self.errors.append(f"[ERROR] {what} [json-pointer:{ptr}]")

    def text(
        self,
        obj: Any,
        ptr: str,
        max_len: int = MAX_TEXT,
        plain_only: bool = False,
        required: bool = True,
    ) -> None:
        if obj is None:
            if required:
                self.err(ptr, "missing required field: text object")
            return
        if not isinstance(obj, dict):
            self.err(ptr, "must be a text object")
            return
        kind = obj.get("type")
        allowed = ("plain_text",) if plain_only else ("plain_text", "mrkdwn")
        if kind not in allowed:
            self.err(ptr + "/type", "must be one of " + ", ".join(allowed))
        text = obj.get("text")
        if not isinstance(text, str):
            self.err(ptr + "/text", "must be a string")
        elif len(text) < 1:
            self.err(ptr + "/text", "must be more than 0 characters")
        elif len(text) > max_len:
            self.err(ptr + "/text", f"must be less than {max_len + 1} characters")

    def ident(self, obj: dict[str, Any], key: str, ptr: str) -> None:
        value = obj.get(key)
        if value is None:
            return
        if not isinstance(value, str) or not value:
            self.err(f"{ptr}/{key}", "must be a non-empty string")
        elif len(value) > MAX_ID:
            self.err(f"{ptr}/{key}", f"must be less than {MAX_ID + 1} characters")

    def string(self, obj: dict[str, Any], key: str, ptr: str, max_len: int, required: bool = False) -> None:
        value = obj.get(key)
        if value is None:
            if required:
                self.err(f"{ptr}/{key}", "missing required field")
            return
        if not isinstance(value, str):
            self.err(f"{ptr}/{key}", "must be a string")
        elif len(value) > max_len:
            self.err(f"{ptr}/{key}", f"must be less than {max_len + 1} characters")

    def confirm(self, obj: Any, ptr: str) -> None:
        if not isinstance(obj, dict):
            self.err(ptr, "must be a confirmation object")
            return
        self.text(obj.get("title"), ptr + "/title", 100, plain_only=True)
        self.text(obj.get("text"), ptr + "/text", 300)
        self.text(obj.get("confirm"), ptr + "/confirm", 30, plain_only=True)
        self.text(obj.get("deny"), ptr + "/deny", 30, plain_only=True)
        if obj.get("style") not in (None, "primary", "danger"):
            self.err(ptr + "/style", "must be one of primary, danger")

    def options(self, opts: Any, ptr: str, lo: int, hi: int) -> None:
        if not isinstance(opts, list) or not lo <= len(opts) <= hi:
            self.err(ptr, f"must provide between {lo} and {hi} options")
            return
        for i, opt in enumerate(opts):
            p = f"{ptr}/{i}"
            if not isinstance(opt, dict):
                self.err(p, "must be an option object")
                continue
            self.text(opt.get("text"), p + "/text", 75)
            self.string(opt, "value", p, 150, required=True)

    def kind(self, obj: Any, ptr: str, what: str, allowed: frozenset[str]) -> str | None:
        """The ``type`` of an element or block object if it is one of ``allowed``; else an error and None."""
        if not isinstance(obj, dict):
            self.err(ptr, f"must be {'an' if what[0] in 'aeiou' else 'a'} {what} object")
            return None
        kind = obj.get("type")
        if kind not in allowed:
            self.err(ptr + "/type", f"unsupported {what} type {kind!r}")
            return None
        return str(kind)

    def element(self, el: Any, ptr: str, allowed: frozenset[str]) -> None:
        kind = self.kind(el, ptr, "element", allowed)
        if kind is None:
            return
        self.ident(el, "action_id", ptr)
        if kind == "button":
            self.text(el.get("text"), ptr + "/text", MAX_BUTTON_TEXT, plain_only=True)
            self.string(el, "value", ptr, MAX_BUTTON_VALUE)
            self.string(el, "url", ptr, MAX_URL)
            if el.get("style") not in (None, "primary", "danger"):
                self.err(ptr + "/style", "must be one of primary, danger")
            if "confirm" in el:
                self.confirm(el["confirm"], ptr + "/confirm")
        elif kind == "image":
            self.string(el, "image_url", ptr, MAX_URL, required="slack_file" not in el)
            self.string(el, "alt_text", ptr, MAX_LABEL, required=True)
        elif kind == "overflow":
            self.options(el.get("options"), ptr + "/options", 1, 5)
        elif kind in ("static_select", "multi_static_select"):
            if "option_groups" not in el:
                self.options(el.get("options"), ptr + "/options", 1, 100)
        elif kind == "plain_text_input":
            for key in ("min_length", "max_length"):
                value = el.get(key)
                if value is not None and (not isinstance(value, int) or not 0 <= value <= MAX_TEXT):
                    self.err(f"{ptr}/{key}", f"must be an integer between 0 and {MAX_TEXT}")
            self.string(el, "initial_value", ptr, MAX_TEXT)
        if "placeholder" in el:
            self.text(el["placeholder"], ptr + "/placeholder", MAX_PLACEHOLDER, plain_only=True)

    def block(self, block: Any, ptr: str, in_view: bool) -> None:
        kind = self.kind(block, ptr, "block", BLOCK_TYPES)
        if kind is None:
            return
        self.ident(block, "block_id", ptr)
        if kind == "section":
            if "text" not in block and "fields" not in block:
                self.err(ptr, "must provide either text or fields")
            if "text" in block:
                self.text(block["text"], ptr + "/text", MAX_TEXT)
            if "fields" in block:
                fields = block["fields"]
                if not isinstance(fields, list) or not 1 <= len(fields) <= MAX_FIELDS:
                    self.err(ptr + "/fields", f"must provide between 1 and {MAX_FIELDS} items")
                else:
                    for i, f in enumerate(fields):
                        self.text(f, f"{ptr}/fields/{i}", MAX_FIELD_TEXT)
            if "accessory" in block:
                self.element(block["accessory"], ptr + "/accessory", ACTION_ELEMENTS | {"image"})
        elif kind == "header":
            self.text(block.get("text"), ptr + "/text", MAX_HEADER, plain_only=True)
        elif kind == "context":
            elements = block.get("elements")
            if not isinstance(elements, list) or not 1 <= len(elements) <= MAX_CONTEXT_ELEMENTS:
                self.err(ptr + "/elements", f"must provide between 1 and {MAX_CONTEXT_ELEMENTS} items")
            else:
                for i, el in enumerate(elements):
                    p = f"{ptr}/elements/{i}"
                    if isinstance(el, dict) and el.get("type") == "image":
                        self.element(el, p, frozenset({"image"}))
                    else:
                        self.text(el, p, MAX_TEXT)
        elif kind == "actions":
            elements = block.get("elements")
            if not isinstance(elements, list) or not 1 <= len(elements) <= MAX_ACTIONS_ELEMENTS:
                self.err(ptr + "/elements", f"must provide between 1 and {MAX_ACTIONS_ELEMENTS} items")
            else:
                seen: set[str] = set()
                for i, el in enumerate(elements):
                    self.element(el, f"{ptr}/elements/{i}", ACTION_ELEMENTS)
                    self.unique_id(el, "action_id", f"{ptr}/elements/{i}", seen)
        elif kind == "input":
            self.text(block.get("label"), ptr + "/label", MAX_LABEL, plain_only=True)
            if "hint" in block:
                self.text(block["hint"], ptr + "/hint", MAX_LABEL, plain_only=True)
            if "element" not in block:
                self.err(ptr + "/element", "missing required field: element")
            else:
                self.element(block["element"], ptr + "/element", INPUT_ELEMENTS)
        elif kind == "image":
            self.string(block, "image_url", ptr, MAX_URL, required="slack_file" not in block)
            self.string(block, "alt_text", ptr, MAX_LABEL, required=True)
            if "title" in block:
                self.text(block["title"], ptr + "/title", MAX_LABEL, plain_only=True)

    def unique_id(self, obj: Any, key: str, ptr: str, seen: set[str]) -> None:
        """An error if ``obj``'s ``key`` (its action or block id) is one already in ``seen``; then add it."""
        value = obj.get(key) if isinstance(obj, dict) else None
        if isinstance(value, str):
            if value in seen:
                self.err(f"{ptr}/{key}", f"duplicate {key} {value!r}")
            seen.add(value)

    def blocks(self, blocks: Any, ptr: str, max_blocks: int, in_view: bool) -> None:
        if not isinstance(blocks, list):
            self.err(ptr, "must be an array of blocks")
            return
        if len(blocks) > max_blocks:
            self.err(ptr, f"no more than {max_blocks} items allowed")
        seen: set[str] = set()
        for i, block in enumerate(blocks):
            self.block(block, f"{ptr}/{i}", in_view)
            self.unique_id(block, "block_id", f"{ptr}/{i}", seen)


def validate_message_blocks(blocks: Any) -> None:
    """Raise :class:`InvalidBlocks` if ``blocks`` (raw JSON) would be refused in a message."""
    checker = _Checker()
    checker.blocks(blocks, "/blocks", MAX_MESSAGE_BLOCKS, in_view=False)
    if checker.errors:
        raise InvalidBlocks(checker.errors)


def validate_view(view: Any) -> None:
    """Raise :class:`InvalidView` if ``view`` (raw JSON for views.open/update) would be refused."""
    checker = _Checker()
    if not isinstance(view, dict):
        raise InvalidView(["[ERROR] must be a view object [json-pointer:/view]"])
    kind = view.get("type")
    if kind not in ("modal", "home"):
        checker.err("/view/type", "must be one of modal, home")
    if kind == "modal":
        checker.text(view.get("title"), "/view/title", MAX_VIEW_TITLE, plain_only=True)
    for key in ("submit", "close"):
        if key in view:
            checker.text(view[key], f"/view/{key}", MAX_VIEW_TITLE, plain_only=True)
    checker.string(view, "private_metadata", "/view", MAX_PRIVATE_METADATA)
    checker.string(view, "callback_id", "/view", MAX_ID)
    checker.string(view, "external_id", "/view", MAX_ID)
    blocks = view.get("blocks")
    checker.blocks(blocks, "/view/blocks", MAX_VIEW_BLOCKS, in_view=True)
    has_input = isinstance(blocks, list) and any(
        isinstance(b, dict) and b.get("type") == "input" for b in blocks
    )
    if kind == "modal" and has_input and "submit" not in view:
        checker.err("/view/submit", "must provide submit when the view has input blocks")
    if checker.errors:
        raise InvalidView(checker.errors)
