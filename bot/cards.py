"""The approval card and the deny modal, as Block Kit (pure: request + environment policy + now -> blocks).

Built from ``slack_sdk.models.blocks`` objects and serialized with ``to_dict()``, which runs slack_sdk's own
limit checks; the limits it does not check (section fields, context elements, 50 blocks per message) are kept
here by construction. Every string the bot did not write is escaped (``bot.slack_text``) and truncated within
its Block Kit limit; mentions are built only from validated Slack ids, links only from http(s) URLs.

The signer's card check (``signer/evidence.py``) reads the blocks of the message an approve click came from
and requires them to show the request's repo, full sha, environment and workflow; the "facts" section shows
each of them verbatim (they are validated identifiers, so escaping never changes them). The same rule refuses
a card that shows any *other* full-length commit hash, so hash-like runs in free text (a title "revert
<sha>", a ref) are shortened to 12 characters, and a run URL naming another commit is shown without a link.
See docs/slack.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ConfirmObject,
    ContextBlock,
    HeaderBlock,
    InputBlock,
    MarkdownTextObject,
    PlainTextInputElement,
    PlainTextObject,
    SectionBlock,
)
from slack_sdk.models.views import View

from bot.models import DeployRequest, Status
from bot.slack_text import escape, is_user_id, link, one_line, safe, truncate, user_mention
from signer.policy import Environment

# Action and callback ids: the Bolt listeners in bot/app.py route on these.
APPROVE_ACTION = "approve"
DENY_ACTION = "deny"
DECISION_BLOCK = "decision"
FACTS_BLOCK = "facts"
DENY_CALLBACK = "deny_reason"
REASON_BLOCK = "reason"
REASON_ACTION = "reason_input"
REASON_MAX = 1000

# Block Kit limits (platform facts §5.1).
HEADER_MAX = 150
SECTION_MAX = 3000
FIELD_MAX = 2000
CONFIRM_TEXT_MAX = 300
CONFIRM_TITLE_MAX = 100
FALLBACK_MAX = 3000
MAX_BLOCKS = 50

# Budgets for untrusted values inside one field (each field also carries its label).
_REF_MAX = 500
_TITLE_MAX = 600
_REQUESTER_MAX = 200
_REASON_SHOWN_MAX = 1500


# The signer's card rule (signer/evidence.py check_card) splits texts into ASCII alphanumeric runs and refuses
# any run that is a 40- or 64-character hex string other than the request's sha.
_ALNUM_RUN = re.compile(r"[A-Za-z0-9]+")
_HASH_LIKE = re.compile(r"\A(?:[0-9a-fA-F]{40}|[0-9a-fA-F]{64})\Z")


def _foreign_hashes(text: str, sha: str) -> bool:
    return any(_HASH_LIKE.match(run) and run != sha for run in _ALNUM_RUN.findall(text))


def defuse_hashes(text: str, sha: str) -> str:
    """Shorten every full-length hash-like run in ``text`` other than ``sha`` to 12 characters plus ``…``."""

    def shorten(m: re.Match[str]) -> str:
        run = m.group(0)
        return run[:12] + "…" if _HASH_LIKE.match(run) and run != sha else run

    return _ALNUM_RUN.sub(shorten, text)


def _defuse_blocks(node: Any, sha: str) -> Any:
    """Apply ``defuse_hashes`` to every text object in serialized blocks (only ever shortens a text)."""
    if isinstance(node, dict):
        out = {k: _defuse_blocks(v, sha) for k, v in node.items()}
        if node.get("type") in ("mrkdwn", "plain_text") and isinstance(node.get("text"), str):
            out["text"] = defuse_hashes(node["text"], sha)
        return out
    if isinstance(node, list):
        return [_defuse_blocks(item, sha) for item in node]
    return node


@dataclass(frozen=True)
class Card:
    """A rendered card: Block Kit blocks (plain dicts, already validated) and the escaped fallback text."""

    blocks: list[dict[str, Any]]
    text: str


def format_duration(delta: timedelta) -> str:
    """A short human duration: ``45s``, ``30m``, ``1h 5m``, ``2d 3h`` (rounded down; never negative)."""
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


def _mrkdwn(text: str) -> MarkdownTextObject:
    # verbatim: Slack must not auto-link or auto-mention anything; the only markup is what we wrote.
    return MarkdownTextObject(text=text, verbatim=True)


def _requester(request: DeployRequest) -> str:
    """The requester as a mention when they map to a Slack user, else their CI identity, escaped."""
    if request.requester_slack_id and is_user_id(request.requester_slack_id):
        return user_mention(request.requester_slack_id)
    return safe(one_line(request.requester), _REQUESTER_MAX) or "unknown"


def _people(user_ids: list[str], budget: int) -> str:
    """Mentions of validated user ids, joined, never cut mid-mention: ``… and 3 more`` past ``budget``."""
    shown: list[str] = []
    used = 0
    for i, uid in enumerate(user_ids):
        piece = user_mention(uid) if is_user_id(uid) else safe(uid, 40)
        more = f" and {len(user_ids) - i} more"
        if used + len(piece) + 2 + len(more) > budget and shown:
            return ", ".join(shown) + more
        shown.append(piece)
        used += len(piece) + 2
    return ", ".join(shown)


def _approvals_line(request: DeployRequest) -> str:
    count = f"{len(request.approvals)} of {request.required_approvals}"
    if not request.approvals:
        return count
    who = _people([a.user_id for a in request.approvals], FIELD_MAX - 40)
    return f"{count}: {who}"


def _field(label: str, value: str) -> MarkdownTextObject:
    return _mrkdwn(truncate(f"*{label}*\n{value}", FIELD_MAX))


def _facts(request: DeployRequest, now: datetime) -> SectionBlock:
    """The request's scope and context: the fields the signer's card check looks for."""
    scope = request.scope
    fields = [
        _field("Repository", f"`{scope.repo}`"),
        _field("Commit", f"`{scope.sha}`"),
        _field("Environment", f"`{scope.environment}`"),
        _field("Workflow", f"`{scope.workflow}`"),
        _field("Requested by", _requester(request)),
        _field("Approvals", _approvals_line(request)),
    ]
    if request.ref:
        fields.append(_field("Ref", f"`{safe(one_line(request.ref), _REF_MAX)}`"))
    if request.run_url and _foreign_hashes(request.run_url, scope.sha):
        # A link to another commit would make the card fail the signer's check; show it as text instead.
        fields.append(_field("Run", safe(defuse_hashes(one_line(request.run_url), scope.sha), 500)))
    elif request.run_url:
        fields.append(_field("Run", link(request.run_url, "View run", FIELD_MAX - 10)))
    if request.status is Status.PENDING:
        left = format_duration(request.expires_at - now)
        fields.append(_field("Expires", f"{format_time(request.expires_at, now)} (in {left})"))
    return SectionBlock(block_id=FACTS_BLOCK, fields=fields)


def _summary(request: DeployRequest) -> SectionBlock:
    scope = request.scope
    text = (
        f"{_requester(request)} wants to deploy *{scope.repo}* at `{scope.sha[:12]}` "
        f"to *{scope.environment}*."
    )
    if request.title:
        text += f"\n{safe(one_line(request.title), _TITLE_MAX)}"
    return SectionBlock(block_id="summary", text=_mrkdwn(truncate(text, SECTION_MAX)))


def _decision_buttons(request: DeployRequest, env: Environment) -> ActionsBlock:
    scope = request.scope
    confirm = None
    if env.confirm_approve:
        confirm = ConfirmObject(
            title=truncate("Approve this deploy?", CONFIRM_TITLE_MAX),
            text=_mrkdwn(
                truncate(
                    f"Deploy `{scope.repo}` at `{scope.sha[:12]}` to *{scope.environment}*"
                    f" ({scope.workflow}).",
                    CONFIRM_TEXT_MAX,
                )
            ),
            confirm="Approve",
            deny="Cancel",
        )
    return ActionsBlock(
        block_id=DECISION_BLOCK,
        elements=[
            ButtonElement(
                text="Approve",
                action_id=APPROVE_ACTION,
                value=request.id,
                style="primary",
                confirm=confirm,
            ),
            ButtonElement(text="Deny", action_id=DENY_ACTION, value=request.id, style="danger"),
        ],
    )


def _outcome(request: DeployRequest, now: datetime) -> SectionBlock:
    """The final state, in place of the buttons."""
    if request.status is Status.APPROVED:
        who = _people([a.user_id for a in request.approvals], 1500)
        text = f":white_check_mark: *Approved* by {who}."
        if request.receipt_id:
            text += f"\nReceipt `{safe(request.receipt_id, 100)}`"
            if request.receipt_expires_at:
                text += f", valid until {format_time(request.receipt_expires_at, now)}"
            text += "."
    elif request.status is Status.DENIED:
        who = _people([request.decided_by], 100) if request.decided_by else "someone"
        text = f":no_entry: *Denied* by {who}."
        if request.deny_reason:
            text += f"\nReason: {safe(one_line(request.deny_reason), _REASON_SHOWN_MAX)}"
    elif request.status is Status.EXPIRED:
        ttl = format_duration(request.expires_at - request.created_at)
        text = f":hourglass: Expired — no decision within {ttl}."
    else:  # CANCELLED
        text = ":no_entry_sign: *Cancelled* — the pipeline withdrew this request."
    return SectionBlock(block_id="outcome", text=_mrkdwn(truncate(text, SECTION_MAX)))


def _footer(request: DeployRequest) -> ContextBlock:
    parts = [f"Request `{request.id}`"]
    if request.status is Status.PENDING and request.card_error:
        parts.append("Slack trouble: " + safe(one_line(request.card_error), 200))
    return ContextBlock(block_id="footer", elements=[_mrkdwn(" · ".join(parts))])


_HEADER_EMOJI = {
    Status.PENDING: ":rocket:",
    Status.APPROVED: ":white_check_mark:",
    Status.DENIED: ":no_entry:",
    Status.EXPIRED: ":hourglass:",
    Status.CANCELLED: ":no_entry_sign:",
}


def card_blocks(request: DeployRequest, env: Environment, now: datetime) -> list[Block]:
    """The card as Block Kit objects: header, summary, facts, buttons (pending) or outcome, footer."""
    scope = request.scope
    header = HeaderBlock(
        block_id="header",
        text=PlainTextObject(
            text=truncate(
                escape(f"{_HEADER_EMOJI[request.status]} Deploy {scope.repo} to {scope.environment}"),
                HEADER_MAX,
            ),
            emoji=True,
        ),
    )
    action: Block = (
        _decision_buttons(request, env) if request.status is Status.PENDING else _outcome(request, now)
    )
    return [header, _summary(request), _facts(request, now), action, _footer(request)]


def card_text(request: DeployRequest) -> str:
    """The top-level ``text`` (notification fallback; Slack parses it as mrkdwn, so it is escaped too)."""
    scope = request.scope
    state = {
        Status.PENDING: "approval needed",
        Status.APPROVED: "approved",
        Status.DENIED: "denied",
        Status.EXPIRED: "expired",
        Status.CANCELLED: "cancelled",
    }[request.status]
    text = f"Deploy {scope.repo}@{scope.sha[:12]} to {scope.environment}: {state}"
    if request.title:
        text += f" — {one_line(request.title)}"
    return truncate(escape(text), FALLBACK_MAX)


def render_card(request: DeployRequest, env: Environment, now: datetime) -> Card:
    """The card for ``request`` in its current state, validated (``to_dict()`` raises on a broken limit)."""
    blocks = [b.to_dict() for b in card_blocks(request, env, now)]
    if len(blocks) > MAX_BLOCKS:  # pragma: no cover - the layout has a fixed number of blocks
        raise ValueError("card has more than 50 blocks")
    sha = request.scope.sha
    return Card(blocks=_defuse_blocks(blocks, sha), text=defuse_hashes(card_text(request), sha))


def deny_modal(request: DeployRequest) -> dict[str, Any]:
    """The deny-with-reason modal; ``private_metadata`` carries the request id back to the submission."""
    scope = request.scope
    view = View(
        type="modal",
        callback_id=DENY_CALLBACK,
        private_metadata=request.id,
        title=PlainTextObject(text="Deny deploy"),
        submit=PlainTextObject(text="Deny"),
        close=PlainTextObject(text="Cancel"),
        blocks=[
            SectionBlock(
                block_id="what",
                text=_mrkdwn(
                    truncate(
                        f"Deny deploying *{scope.repo}* at `{scope.sha[:12]}` to *{scope.environment}*?"
                        " The requester and the pipeline will see your reason.",
                        SECTION_MAX,
                    )
                ),
            ),
            InputBlock(
                block_id=REASON_BLOCK,
                label=PlainTextObject(text="Reason"),
                element=PlainTextInputElement(
                    action_id=REASON_ACTION,
                    multiline=True,
                    max_length=REASON_MAX,
                    placeholder=PlainTextObject(text="Why should this deploy not go ahead?"),
                ),
                optional=False,
            ),
        ],
    )
    out: dict[str, Any] = view.to_dict()
    return out
