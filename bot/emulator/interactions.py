"""Acting as Slack toward the bot: the exact payloads Slack sends, form-encoded and signed (``v0``).

Pure functions: state and ``now`` in, payloads and signed requests out. Sending them is
:mod:`keyturn.emulator.core`'s job. Payload shapes follow Slack's interaction reference and platform facts §2.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from keyturn.emulator.errors import EmulatorError
from keyturn.emulator.state import Conversation, Ephemeral, Message, View, WorkspaceState
from keyturn.emulator.workspace import User

# The deprecated verification token Slack still puts in payloads. Not a secret: bots must not rely on it.
VERIFICATION_TOKEN = "emulator-verification-token"  # noqa: S105 - a public placeholder
CLICKABLE = frozenset({"button", "static_select", "overflow"})
FORM = "application/x-www-form-urlencoded"


def slack_signature(signing_secret: str, timestamp: str, body: str) -> str:
    """Slack's ``v0`` request signature: ``v0=`` + hex HMAC-SHA256 of ``v0:{timestamp}:{body}``."""
    base = f"v0:{timestamp}:{body}".encode()
    return "v0=" + hmac.new(signing_secret.encode(), base, hashlib.sha256).hexdigest()


def tamper(signature: str) -> str:
    """The signature with its last hex digit changed: same shape, wrong value."""
    last = signature[-1]
    return signature[:-1] + ("0" if last != "0" else "1")


@dataclass(frozen=True)
class SignedRequest:
    """A request as the emulator sends it to the bot (body already encoded; sign exactly these bytes)."""

    kind: str
    url: str | None
    body: str
    headers: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The request for the control API."""
        return {"kind": self.kind, "url": self.url, "headers": dict(self.headers), "body": self.body}


def sign_request(
    kind: str,
    url: str | None,
    body: str,
    signing_secret: str,
    timestamp: int,
    tamper_signature: bool = False,
) -> SignedRequest:
    """Attach Slack's headers to ``body``; with ``tamper_signature`` the signature is wrong on purpose."""
    ts = str(timestamp)
    sig = slack_signature(signing_secret, ts, body)
    headers = {
        "Content-Type": FORM,
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": tamper(sig) if tamper_signature else sig,
        "User-Agent": "Slackbot 1.0 (+https://api.slack.com/robots)",
    }
    return SignedRequest(kind, url, body, headers)


def slack_json(payload: Any) -> str:
    """JSON as Slack writes it in interaction payloads: compact, keys in insertion order (the emulator builds
    them in Slack's order, note §1.7), and ``/`` escaped as ``\\/`` (note §1.7; captures H, L, A).

    Replacing every ``/`` is safe: outside strings JSON has no ``/``, and inside a string ``\\/`` is a valid
    escape of ``/`` (an original backslash is already doubled, so ``\\`` + ``/`` cannot merge with it)."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).replace("/", "\\/")


def interactivity_body(payload: dict[str, Any]) -> str:
    """``payload=<json>``, form-encoded once, as Slack posts interactions."""
    return urlencode({"payload": slack_json(payload)})


def _user(state: WorkspaceState, user: User) -> dict[str, Any]:
    return {"id": user.id, "username": user.name, "name": user.name, "team_id": state.workspace.team.id}


def _team(state: WorkspaceState) -> dict[str, Any]:
    return {"id": state.workspace.team.id, "domain": state.workspace.team.domain}


def find_action(
    blocks: list[dict[str, Any]], action_id: str, value: str | None
) -> tuple[str, dict[str, Any], dict[str, Any] | None]:
    """The interactive element with ``action_id`` (and, for buttons, ``value`` if given): its block_id, the
    element, and for selects/overflows the option chosen by ``value``. Raises ``action_not_found``."""
    for block in blocks:
        candidates: list[dict[str, Any]] = []
        if block.get("type") == "actions":
            candidates = [e for e in block.get("elements", []) if isinstance(e, dict)]
        elif block.get("type") == "section" and isinstance(block.get("accessory"), dict):
            candidates = [block["accessory"]]
        for el in candidates:
            if el.get("type") not in CLICKABLE or el.get("action_id") != action_id:
                continue
            if el["type"] == "button":
                if value is None or el.get("value") == value:
                    return str(block["block_id"]), el, None
                continue
            options = [o for o in el.get("options", []) if isinstance(o, dict)]
            for group in el.get("option_groups", []):
                options += [o for o in group.get("options", []) if isinstance(o, dict)]
            chosen = next((o for o in options if o.get("value") == value), None)
            if chosen is not None:
                return str(block["block_id"]), el, chosen
    detail = f" with value {value!r}" if value is not None else ""
    raise EmulatorError("action_not_found", f"no clickable element {action_id!r}{detail} here", 404)


def block_actions_payload(
    state: WorkspaceState,
    *,
    user: User,
    conv: Conversation,
    source: Message | Ephemeral,
    action_id: str,
    value: str | None,
    trigger_id: str,
    response_url: str,
    now: float,
) -> dict[str, Any]:
    """The ``block_actions`` payload of ``user`` clicking ``action_id`` on ``source`` as stored."""
    block_id, el, option = find_action(source.blocks, action_id, value)
    action: dict[str, Any]
    if el["type"] == "button":
        # Key order of the captures (H 2020, A 2025):
        # action_id, block_id, text, value, style, type, action_ts.
        action = {"action_id": action_id, "block_id": block_id, "text": copy.deepcopy(el.get("text"))}
        if "value" in el:
            action["value"] = el["value"]
        if "style" in el:
            action["style"] = el["style"]
        action["type"] = el["type"]
    else:
        # Key order of the select capture (A 2025): type, action_id, block_id, selected_option, placeholder.
        action = {"type": el["type"], "action_id": action_id, "block_id": block_id}
        action["selected_option"] = copy.deepcopy(option)
        if "placeholder" in el:
            action["placeholder"] = copy.deepcopy(el["placeholder"])
    action["action_ts"] = state.next_ts(now)
    is_ephemeral = isinstance(source, Ephemeral)
    container: dict[str, Any] = {
        "type": "message",
        "message_ts": source.ts,
        "channel_id": conv.id,
        "is_ephemeral": is_ephemeral,
    }
    if source.thread_ts:
        container["thread_ts"] = source.thread_ts
    payload: dict[str, Any] = {
        "type": "block_actions",
        "user": _user(state, user),
        "api_app_id": state.workspace.bot.app_id,
        "token": VERIFICATION_TOKEN,
        "container": container,
        "trigger_id": trigger_id,
        "team": _team(state),
        "enterprise": None,
        "is_enterprise_install": False,
        "channel": {"id": conv.id, "name": conv.name},
    }
    if isinstance(source, Message):  # Slack omits the message for ephemeral sources
        payload["message"] = source.to_slack()
    payload["state"] = {"values": {}}
    payload["response_url"] = response_url
    payload["actions"] = [action]
    return payload


def submission_values(view: View, values: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``view.state.values`` for a submission: each input block's element typed as Slack reports it.

    ``values`` is ``{block_id: {action_id: value}}``; inputs not given are reported empty. Raises
    ``unknown_input`` for a block/action the view does not have."""
    inputs: dict[str, dict[str, Any]] = {}
    for block in view.spec.get("blocks", []):
        el = block.get("element")
        if block.get("type") == "input" and isinstance(el, dict) and "action_id" in el:
            inputs.setdefault(str(block["block_id"]), {})[str(el["action_id"])] = el
    for bid, actions in values.items():
        for aid in actions:
            if aid not in inputs.get(bid, {}):
                raise EmulatorError("unknown_input", f"the view has no input {bid}/{aid}", 400)
    out: dict[str, Any] = {}
    for bid, actions in inputs.items():
        for aid, el in actions.items():
            given = values.get(bid, {}).get(aid)
            kind = el.get("type")
            entry: dict[str, Any] = {"type": kind}
            if kind in ("static_select", "radio_buttons"):
                opts = [o for o in el.get("options", []) if isinstance(o, dict)]
                entry["selected_option"] = next((o for o in opts if o.get("value") == given), None)
            elif kind in ("users_select", "conversations_select", "channels_select"):
                key = {"users_select": "selected_user", "channels_select": "selected_channel"}
                entry[key.get(str(kind), "selected_conversation")] = given
            else:
                entry["value"] = None if given is None else str(given)
            out.setdefault(bid, {})[aid] = entry
    return out


def view_submission_payload(
    state: WorkspaceState, *, user: User, view: View, trigger_id: str
) -> dict[str, Any]:
    """The ``view_submission`` payload for ``view`` (its ``state_values`` already set)."""
    return {
        "type": "view_submission",
        "team": _team(state),
        "user": _user(state, user),
        "api_app_id": state.workspace.bot.app_id,
        "token": VERIFICATION_TOKEN,
        "trigger_id": trigger_id,
        "view": view.to_slack(),
        "response_urls": [],
        "is_enterprise_install": False,
        "enterprise": None,
    }


def command_body(
    state: WorkspaceState,
    *,
    user: User,
    conv: Conversation,
    command: str,
    text: str,
    response_url: str,
    trigger_id: str,
) -> str:
    """A slash command's form body: Slack's fields in Slack's order, url-encoded exactly once."""
    ws = state.workspace
    fields = [
        ("token", VERIFICATION_TOKEN),
        ("team_id", ws.team.id),
        ("team_domain", ws.team.domain),
        ("channel_id", conv.id),
        ("channel_name", conv.name),
        ("user_id", user.id),
        ("user_name", user.name),
        ("command", command),
        ("text", text),
        ("api_app_id", ws.bot.app_id),
        ("is_enterprise_install", "false"),
        ("response_url", response_url),
        ("trigger_id", trigger_id),
    ]
    return urlencode(fields)
