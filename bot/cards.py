"""The approval card and the deny modal, as Block Kit (pure: request + policy + now -> blocks).

The pending card — the one with the Approve button — is rendered by the trust core (``keyturn.signer.card``),
the same code the signer runs to check every approve click: the signer accepts a click only when the clicked
message is exactly that card for the request's signed origin ("render, don't search"; docs/security.md). So
this module adds nothing of its own to a pending card. Cards in a final state (approved, denied, expired,
cancelled) have no Approve button; they reuse the trust core's header, scope fields, unverified free text and
footer, and add the outcome. Every string the bot did not write is escaped (``keyturn.bot.slack_text``) or
passed through ``keyturn.signer.card.unverified_text``. See docs/slack.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from keyturn.bot.models import DeployRequest, Status
from keyturn.bot.slack_text import escape, one_line, safe, truncate, user_mention
from keyturn.signer import card as trusted
from keyturn.signer.card import (
    APPROVE_ACTION,
    DECISION_BLOCK,
    DENY_ACTION,
    DENY_CALLBACK,
    REASON_ACTION,
    REASON_BLOCK,
    REASON_MAX,
    format_duration,
    format_time,
)
from keyturn.signer.policy import Policy
from keyturn.signer.receipt import Scope

__all__ = [
    "APPROVE_ACTION",
    "DECISION_BLOCK",
    "DENY_ACTION",
    "DENY_CALLBACK",
    "REASON_ACTION",
    "REASON_BLOCK",
    "REASON_MAX",
    "Card",
    "card_facts",
    "card_text",
    "deny_modal",
    "format_duration",
    "format_time",
    "render_card",
]


# Block Kit limits (platform facts §5.1).
SECTION_MAX = 3000
FALLBACK_MAX = 3000

_REASON_SHOWN_MAX = 1500


@dataclass(frozen=True)
class Card:
    """A rendered card: Block Kit blocks (plain dicts, already validated) and the escaped fallback text."""

    blocks: list[dict[str, Any]]
    text: str


def _scope(request: DeployRequest) -> Scope:
    s = request.scope
    return Scope(s.repo, s.sha, s.environment, s.workflow)


def card_facts(request: DeployRequest, policy: Policy) -> trusted.CardFacts:
    """What the card shows from the request's origin. The requester is mapped to a Slack user by the policy
    only (never by an e-mail lookup), because the signer must render the very same card."""
    return trusted.CardFacts(
        request_id=request.id,
        scope=_scope(request),
        requester=request.requester,
        requester_user=policy.resolve_requester(request.requester),
        origin_kind=request.origin_kind,
        title=request.title,
        ref=request.ref,
        run_url=request.run_url,
        event=request.event,
    )


def _mrkdwn(text: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": text, "verbatim": True}


def _people(user_ids: list[str], budget: int) -> str:
    """Mentions of validated user ids, joined, never cut mid-mention: ``… and 3 more`` past ``budget``."""
    shown: list[str] = []
    used = 0
    for i, uid in enumerate(user_ids):
        try:
            piece = user_mention(uid)
        except ValueError:
            piece = safe(uid, 40)
        more = f" and {len(user_ids) - i} more"
        if used + len(piece) + 2 + len(more) > budget and shown:
            return ", ".join(shown) + more
        shown.append(piece)
        used += len(piece) + 2
    return ", ".join(shown)


def _outcome(request: DeployRequest, now: datetime) -> dict[str, Any]:
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
        # Round to whole seconds: policy TTLs are whole seconds, while the stored times may differ from
        # them by a fraction (format_duration rounds down, which turned "5m" into "4m 59s").
        ttl = format_duration(
            timedelta(seconds=round((request.expires_at - request.created_at).total_seconds()))
        )
        text = f":hourglass: Expired — no decision within {ttl}."
    else:  # CANCELLED
        text = ":no_entry_sign: *Cancelled* — the pipeline withdrew this request."
    return {"type": "section", "block_id": "kt_outcome", "text": _mrkdwn(truncate(text, SECTION_MAX))}


_HEADER_EMOJI = {
    Status.PENDING: ":rocket:",
    Status.APPROVED: ":white_check_mark:",
    Status.DENIED: ":no_entry:",
    Status.EXPIRED: ":hourglass:",
    Status.CANCELLED: ":no_entry_sign:",
}


def _final_blocks(request: DeployRequest, policy: Policy, now: datetime) -> list[dict[str, Any]]:
    facts = card_facts(request, policy)
    names = policy.environments.keys()
    status = {
        "type": "section",
        "block_id": trusted.STATUS_BLOCK,
        "fields": [
            trusted.requester_field(facts, names),
            _mrkdwn(
                trusted.APPROVALS_LABEL
                + trusted.approvals_text([a.user_id for a in request.approvals], request.required_approvals)
            ),
        ],
    }
    blocks = [
        trusted.header_block(facts.scope, _HEADER_EMOJI[request.status]),
        {"type": "section", "block_id": trusted.SCOPE_BLOCK, "fields": trusted.scope_fields(facts.scope)},
        status,
    ]
    unverified = trusted.unverified_block(facts, names)
    if unverified is not None:
        blocks.append(unverified)
    return [*blocks, _outcome(request, now), trusted.footer_block(request.id)]


def card_text(request: DeployRequest, policy: Policy) -> str:
    """The top-level ``text`` (notification fallback; Slack parses it as mrkdwn, so it is escaped too)."""
    scope = _scope(request)
    state = {
        Status.PENDING: "approval needed",
        Status.APPROVED: "approved",
        Status.DENIED: "denied",
        Status.EXPIRED: "expired",
        Status.CANCELLED: "cancelled",
    }[request.status]
    text = escape(f"Deploy {scope.repo}@{scope.sha[:12]} to {scope.environment}: {state}")
    if request.title:
        text += " — " + trusted.unverified_text(request.title, scope, policy.environments.keys(), 400)
    return truncate(text, FALLBACK_MAX)


def render_card(request: DeployRequest, policy: Policy, now: datetime) -> Card:
    """The card for ``request`` in its current state.

    Pending: exactly :func:`keyturn.signer.card.render_pending` — the card the signer expects back in every
    approve click. Final: the same header, scope and free text with the outcome in place of the buttons.
    """
    if request.status is Status.PENDING:
        env = policy.environment(request.scope.environment)
        blocks = trusted.render_pending(
            card_facts(request, policy),
            environments=policy.environments.keys(),
            confirm=env.confirm_approve,
            approvals=trusted.approvals_text([a.user_id for a in request.approvals], env.required_approvals),
            expires=trusted.expires_text(request.expires_at, now),
        )
    else:
        blocks = _final_blocks(request, policy, now)
    return Card(blocks=blocks, text=card_text(request, policy))


def deny_modal(request: DeployRequest) -> dict[str, Any]:
    """The deny-with-reason modal, as the trust core renders it (the signer checks the submitted form is
    exactly this one before recording a denial); ``private_metadata`` carries the request id back."""
    return trusted.render_deny_view(request.id, _scope(request))
