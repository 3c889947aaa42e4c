"""The one state machine of a deploy request: pure functions, time passed in, no I/O.

PENDING → APPROVED | DENIED | EXPIRED | CANCELLED. Final states are sticky: nothing moves a request out of
one. Every transition takes a ``DeployRequest``, the event and ``now``, and returns the new request or raises
``Refused`` with a stable code and facts (no prose here: the words live in ``keyturn.signer.words``).
Repeating the event that produced the current final state is a no-op (the same request comes back), so a
retried webhook, a replayed scheduler job or a double-click changes nothing.

The returned request has the same ``version`` as the input: the store bumps it when it writes (its
compare-and-swap token, see ``bot/store.py``). See docs/design.md §8.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

from keyturn.bot.models import Approval, CardRef, DeployRequest, RequestIn, Status
from keyturn.bot.ports import Refused

MAX_REASON_CHARS = 2000


def _aware(now: datetime) -> datetime:
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now


def is_expired(request: DeployRequest, now: datetime) -> bool:
    """True once the request's lifetime is over (it can no longer be approved)."""
    return _aware(now) >= request.expires_at


def _refuse_final(request: DeployRequest) -> Refused:
    return Refused("not_pending", status=request.status.value)


def ensure_open(request: DeployRequest, now: datetime) -> None:
    """Raise ``Refused("not_pending")`` unless the request is pending and inside its lifetime."""
    if request.status.final:
        raise _refuse_final(request)
    if is_expired(request, now):
        raise Refused("not_pending", status=Status.EXPIRED.value)  # stored as pending, over in fact


def new_request(
    request_id: str,
    body: RequestIn,
    *,
    now: datetime,
    ttl: timedelta,
    required_approvals: int,
    requester_slack_id: str | None = None,
    origin_kind: Literal["ci", "slack_command", "oidc", "github"] = "ci",
) -> DeployRequest:
    """A fresh PENDING request for ``body``, expiring ``ttl`` after ``now``."""
    if required_approvals < 1:
        raise ValueError("required_approvals must be at least 1")
    if ttl <= timedelta(0):
        raise ValueError("ttl must be positive")
    now = _aware(now)
    return DeployRequest(
        id=request_id,
        scope=body.scope,
        requester=body.requester,
        requester_slack_id=requester_slack_id,
        ref=body.ref,
        run_url=body.run_url,
        title=body.title,
        callback_url=body.callback_url,
        origin_kind=origin_kind,
        status=Status.PENDING,
        created_at=now,
        expires_at=now + ttl,
        required_approvals=required_approvals,
    )


def has_approved(request: DeployRequest, user_id: str) -> bool:
    """True if ``user_id``'s approval is already counted."""
    return any(a.user_id == user_id for a in request.approvals)


def quorum_reached(request: DeployRequest) -> bool:
    """True when enough distinct approvals are counted to ask the signer for a receipt."""
    return len({a.user_id for a in request.approvals}) >= request.required_approvals


def add_approval(request: DeployRequest, approval: Approval, now: datetime) -> DeployRequest:
    """Count ``approval``. Refused if the request is not open or the user already approved."""
    ensure_open(request, now)
    if has_approved(request, approval.user_id):
        raise Refused("already_approved")
    return request.model_copy(update={"approvals": [*request.approvals, approval]})


def mark_approved(
    request: DeployRequest,
    *,
    by: str,
    receipt_id: str,
    receipt_expires_at: datetime,
    now: datetime,
) -> DeployRequest:
    """Move to APPROVED once the signer issued a receipt. Repeating it with the same receipt is a no-op."""
    if request.status is Status.APPROVED and request.receipt_id == receipt_id:
        return request
    ensure_open(request, now)
    if not quorum_reached(request):
        raise Refused("quorum_not_reached")
    return request.model_copy(
        update={
            "status": Status.APPROVED,
            "decided_by": by,
            "decided_at": _aware(now),
            "receipt_id": receipt_id,
            "receipt_expires_at": receipt_expires_at,
        }
    )


def deny(request: DeployRequest, *, by: str, reason: str, now: datetime) -> DeployRequest:
    """Move to DENIED with a required reason. The same user denying again is a no-op."""
    reason = reason.strip()
    if request.status is Status.DENIED and request.decided_by == by:
        return request
    if not reason:
        raise Refused("reason_required")
    if request.status.final:
        raise _refuse_final(request)
    # A denial after expiry would be harmless, but the outcome must be the expiry the scheduler reports.
    ensure_open(request, now)
    return request.model_copy(
        update={
            "status": Status.DENIED,
            "decided_by": by,
            "decided_at": _aware(now),
            "deny_reason": reason[:MAX_REASON_CHARS],
        }
    )


def cancel(request: DeployRequest, *, now: datetime, by: str | None = None) -> DeployRequest:
    """Move to CANCELLED (the pipeline gave up). Cancelling a cancelled request is a no-op."""
    if request.status is Status.CANCELLED:
        return request
    if request.status.final:
        raise _refuse_final(request)
    return request.model_copy(
        update={"status": Status.CANCELLED, "decided_by": by, "decided_at": _aware(now)}
    )


def expire(request: DeployRequest, *, now: datetime) -> DeployRequest:
    """Move to EXPIRED if the lifetime is over; otherwise (not due yet, or already final) a no-op."""
    if request.status.final or not is_expired(request, now):
        return request
    return request.model_copy(update={"status": Status.EXPIRED, "decided_at": _aware(now)})


def with_card(request: DeployRequest, *, channel: str, ts: str) -> DeployRequest:
    """Record where the card was posted (clears a previous posting error)."""
    return request.model_copy(update={"card": CardRef(channel=channel, ts=ts), "card_error": None})


def with_card_error(request: DeployRequest, error: str) -> DeployRequest:
    """Record why the card could not be posted yet (the request stays pending; posting is retried)."""
    return request.model_copy(update={"card_error": error[:500]})
