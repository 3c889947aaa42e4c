"""The request state machine: every transition, sticky final states, repeated events as no-ops."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from keyturn.bot import lifecycle
from keyturn.bot.models import Approval, DeployRequest, RequestIn, Status
from keyturn.bot.ports import Refused

NOW = datetime(2026, 2, 28, 16, 0, 0, tzinfo=UTC)
SHA = "4f8a2cd91ef7a2c7f3a5f0aa12d93b33f2d40e17"


def body(**over: str) -> RequestIn:
    data = {
        "repo": "acme/service",
        "sha": SHA,
        "environment": "production",
        "workflow": "deploy.yml",
        "requester": "github:alice",
    } | over
    return RequestIn.model_validate(data)


def pending(required: int = 2) -> DeployRequest:
    return lifecycle.new_request(
        "req_01JV7Q4M4T7Z9X4P9G8N2D6R1A",
        body(),
        now=NOW,
        ttl=timedelta(minutes=30),
        required_approvals=required,
        requester_slack_id="U0ALICE",
    )


def approval(user: str, at: datetime = NOW) -> Approval:
    return Approval(user_id=user, email=f"{user.lower()}@example.com", at=at)


def test_new_request_is_pending_with_lifetime() -> None:
    req = pending()
    assert req.status is Status.PENDING
    assert req.expires_at == NOW + timedelta(minutes=30)
    assert req.scope.sha == SHA
    assert req.approvals == []


def test_new_request_rejects_naive_time_and_bad_quorum() -> None:
    with pytest.raises(ValueError, match="timezone"):
        lifecycle.new_request(
            "req_01JV7Q4M4T7Z9X4P9G8N2D6R1A", body(), now=NOW.replace(tzinfo=None),
            ttl=timedelta(minutes=1), required_approvals=1,
        )  # fmt: skip
    with pytest.raises(ValueError, match="required_approvals"):
        lifecycle.new_request(
            "req_01JV7Q4M4T7Z9X4P9G8N2D6R1A", body(), now=NOW, ttl=timedelta(minutes=1),
            required_approvals=0,
        )  # fmt: skip


def test_approvals_count_once_per_user_until_quorum() -> None:
    req = lifecycle.add_approval(pending(), approval("U0BOB"), NOW)
    assert not lifecycle.quorum_reached(req)
    with pytest.raises(Refused) as exc:
        lifecycle.add_approval(req, approval("U0BOB"), NOW)
    assert exc.value.code == "already_approved"
    req = lifecycle.add_approval(req, approval("U0CAROL"), NOW)
    assert lifecycle.quorum_reached(req)
    assert [a.user_id for a in req.approvals] == ["U0BOB", "U0CAROL"]


def test_approve_after_expiry_is_refused() -> None:
    req = pending()
    with pytest.raises(Refused) as exc:
        lifecycle.add_approval(req, approval("U0BOB"), req.expires_at)
    assert exc.value.code == "not_pending"


def test_mark_approved_needs_quorum_and_is_idempotent() -> None:
    req = lifecycle.add_approval(pending(), approval("U0BOB"), NOW)
    with pytest.raises(Refused) as exc:
        lifecycle.mark_approved(req, by="U0BOB", receipt_id="r1", receipt_expires_at=NOW, now=NOW)
    assert exc.value.code == "quorum_not_reached"
    req = lifecycle.add_approval(req, approval("U0CAROL"), NOW)
    done = lifecycle.mark_approved(
        req, by="U0CAROL", receipt_id="r1", receipt_expires_at=NOW + timedelta(minutes=15), now=NOW
    )
    assert done.status is Status.APPROVED
    assert done.decided_by == "U0CAROL"
    again = lifecycle.mark_approved(
        done, by="U0BOB", receipt_id="r1", receipt_expires_at=NOW, now=NOW + timedelta(seconds=5)
    )
    assert again is done
    with pytest.raises(Refused):
        lifecycle.mark_approved(done, by="U0BOB", receipt_id="r2", receipt_expires_at=NOW, now=NOW)


def test_deny_requires_reason_and_records_who_and_why() -> None:
    with pytest.raises(Refused) as exc:
        lifecycle.deny(pending(), by="U0BOB", reason="   ", now=NOW)
    assert exc.value.code == "reason_required"
    denied = lifecycle.deny(pending(), by="U0BOB", reason="  tests are red  ", now=NOW)
    assert (denied.status, denied.decided_by, denied.deny_reason) == (Status.DENIED, "U0BOB", "tests are red")
    assert lifecycle.deny(denied, by="U0BOB", reason="again", now=NOW) is denied
    with pytest.raises(Refused) as exc:
        lifecycle.deny(denied, by="U0CAROL", reason="me too", now=NOW)
    assert exc.value.code == "not_pending"


def test_cancel_is_idempotent_and_cannot_undo_a_decision() -> None:
    cancelled = lifecycle.cancel(pending(), now=NOW)
    assert cancelled.status is Status.CANCELLED
    assert lifecycle.cancel(cancelled, now=NOW) is cancelled
    denied = lifecycle.deny(pending(), by="U0BOB", reason="no", now=NOW)
    with pytest.raises(Refused) as exc:
        lifecycle.cancel(denied, now=NOW)
    assert exc.value.code == "not_pending"


def test_expire_only_when_due_and_never_over_a_decision() -> None:
    req = pending()
    assert lifecycle.expire(req, now=NOW + timedelta(minutes=29)) is req
    expired = lifecycle.expire(req, now=req.expires_at)
    assert expired.status is Status.EXPIRED
    assert lifecycle.expire(expired, now=req.expires_at + timedelta(hours=1)) is expired
    denied = lifecycle.deny(req, by="U0BOB", reason="no", now=NOW)
    assert lifecycle.expire(denied, now=req.expires_at) is denied


@pytest.mark.parametrize(
    "final",
    [
        lambda r: lifecycle.deny(r, by="U0BOB", reason="no", now=NOW),
        lambda r: lifecycle.cancel(r, now=NOW),
        lambda r: lifecycle.expire(r, now=r.expires_at),
    ],
    ids=["denied", "cancelled", "expired"],
)
def test_final_states_are_sticky(final: object) -> None:
    assert callable(final)
    done: DeployRequest = final(pending())
    assert done.status.final
    with pytest.raises(Refused):
        lifecycle.add_approval(done, approval("U0CAROL"), NOW)
    with pytest.raises(Refused):
        lifecycle.deny(done, by="U0CAROL", reason="x", now=NOW)
    assert lifecycle.expire(done, now=done.expires_at + timedelta(days=1)).status is done.status


def test_card_bookkeeping() -> None:
    req = lifecycle.with_card_error(pending(), "rate_limited" * 100)
    assert req.card_error is not None
    assert len(req.card_error) <= 500
    req = lifecycle.with_card(req, channel="C0DEPLOYS", ts="1.2")
    assert req.card is not None
    assert (req.card.channel, req.card_error) == ("C0DEPLOYS", None)
