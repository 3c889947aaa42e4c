"""The approval card and the deny modal (bot/cards.py): content per state, escaping, Block Kit limits."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyturn.bot.cards import card_facts, deny_modal, format_duration, render_card
from keyturn.bot.models import Approval, DeployRequest, Scope, Status
from keyturn.emulator.blockkit import validate_message_blocks, validate_view
from keyturn.signer.card import CardMismatch, check_clicked_card
from keyturn.signer.policy import Environment
from tests import fixtures
from tests.fixtures import DEV_POLICY, REQUEST_ID, SHA

POLICY = DEV_POLICY
PROD = POLICY.environment("production")  # confirm_approve = true
STAGING = POLICY.environment("staging")  # confirm_approve = false
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
RID = REQUEST_ID
INJECTIONS = ["feat/<!channel>", "<@U1>", "a&b", "<https://evil|x>", "<!here>", "<!subteam^S1>", "<#C1>"]


def make_request(**changes: Any) -> DeployRequest:
    """The shared test request at ``NOW``, with the free text a card shows."""
    free_text = {
        "ref": "refs/heads/main",
        "run_url": "https://ci.example/acme/web/runs/42",
        "title": "Release 1.2",
    }
    return fixtures.make_request(NOW, **(free_text | changes))


def texts(node: Any) -> Iterator[str]:
    """Every string inside a text object (plain_text or mrkdwn) anywhere in the blocks."""
    if isinstance(node, dict):
        if node.get("type") in ("mrkdwn", "plain_text") and isinstance(node.get("text"), str):
            yield node["text"]
        for value in node.values():
            yield from texts(value)
    elif isinstance(node, list):
        for item in node:
            yield from texts(item)


# The only markup the card may contain: mentions of the ids it was given, and links it built itself.
TRUSTED_MARKUP = re.compile(r"<@U0[A-Z]+>|<https://ci\.example/[^<>|]*\|View run>")


def assert_no_untrusted_markup(blocks: list[dict[str, Any]], fallback: str) -> None:
    for text in [*texts(blocks), fallback]:
        rest = TRUSTED_MARKUP.sub("", text)
        assert "<" not in rest, text
        assert ">" not in rest, text
        for raw in INJECTIONS:
            assert raw not in text, text


def actions(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [el for b in blocks if b["type"] == "actions" for el in b["elements"]]


def joined(blocks: list[dict[str, Any]]) -> str:
    return "\n".join(texts(blocks))


def test_pending_card_shows_scope_and_buttons() -> None:
    card = render_card(make_request(), POLICY, NOW + timedelta(minutes=1))
    validate_message_blocks(card.blocks)
    body = joined(card.blocks)
    for needle in ["acme/web", SHA, "production", "deploy", "refs/heads/main", "<@U0ALICE>", "0 of 2"]:
        assert needle in body
    assert "12:30 UTC (in 29m)" in body
    assert "<https://ci.example/acme/web/runs/42|View run>" in body
    approve, deny = actions(card.blocks)
    assert (approve["action_id"], approve["value"], approve["style"]) == ("approve", RID, "primary")
    assert (deny["action_id"], deny["value"], deny["style"]) == ("deny", RID, "danger")
    assert "confirm" in approve  # production asks for confirmation
    assert "approval needed" in card.text


def test_confirm_dialog_only_where_policy_asks() -> None:
    req = make_request(scope=Scope(repo="acme/web", sha=SHA, environment="staging", workflow="deploy"))
    approve, _ = actions(render_card(req, POLICY, NOW).blocks)
    assert "confirm" not in approve


def test_requester_without_slack_user_is_shown_escaped() -> None:
    card = render_card(make_request(requester="github:alice.b", requester_slack_id=None), POLICY, NOW)
    assert "github:alice.b" in joined(card.blocks)
    # Anything that is not an identity is not shown at all (it could name a repo beside the scope).
    card = render_card(make_request(requester="github:<!channel>", requester_slack_id=None), POLICY, NOW)
    assert "not an identity (not shown)" in joined(card.blocks)
    assert_no_untrusted_markup(card.blocks, card.text)


def test_approvals_so_far_lists_who() -> None:
    req = make_request(approvals=[Approval(user_id="U0BOB", at=NOW)])
    assert "1 of 2: <@U0BOB>" in joined(render_card(req, POLICY, NOW).blocks)


def test_approved_card_has_no_buttons_and_names_receipt() -> None:
    req = make_request(
        status=Status.APPROVED,
        approvals=[Approval(user_id="U0BOB", at=NOW), Approval(user_id="U0CAROL", at=NOW)],
        decided_at=NOW,
        receipt_id="rcpt_01JDQ5",
        receipt_expires_at=NOW + timedelta(minutes=15),
    )
    card = render_card(req, POLICY, NOW)
    validate_message_blocks(card.blocks)
    assert actions(card.blocks) == []
    body = joined(card.blocks)
    assert "*Approved* by <@U0BOB>, <@U0CAROL>" in body
    assert "`rcpt_01JDQ5`, valid until 12:15 UTC" in body
    assert "approved" in card.text


def test_denied_card_says_who_and_why_escaped() -> None:
    req = make_request(status=Status.DENIED, decided_by="U0BOB", deny_reason="no <!channel> & not today")
    card = render_card(req, POLICY, NOW)
    assert actions(card.blocks) == []
    body = joined(card.blocks)
    assert "*Denied* by <@U0BOB>" in body
    assert "no &lt;!channel&gt; &amp; not today" in body
    assert_no_untrusted_markup(card.blocks, card.text)


def test_expired_card() -> None:
    card = render_card(make_request(status=Status.EXPIRED), POLICY, NOW + timedelta(hours=1))
    assert actions(card.blocks) == []
    assert "Expired — no decision within 30m" in joined(card.blocks)
    assert "Expires" not in joined(card.blocks)


def test_expired_card_states_the_ttl_not_a_second_less() -> None:
    # Stored times a fraction of a second off the whole-second TTL once rendered as "4m 59s".
    created = NOW + timedelta(milliseconds=400)
    req = make_request(status=Status.EXPIRED, created_at=created, expires_at=NOW + timedelta(minutes=5))
    text = joined(render_card(req, POLICY, NOW + timedelta(hours=1)).blocks)
    assert "within 5m" in text
    assert "4m 59s" not in text


def test_cancelled_card() -> None:
    card = render_card(make_request(status=Status.CANCELLED), POLICY, NOW)
    assert actions(card.blocks) == []
    assert "*Cancelled*" in joined(card.blocks)
    assert "cancelled" in card.text


@pytest.mark.parametrize("raw", INJECTIONS)
@pytest.mark.parametrize("status", list(Status))
def test_untrusted_strings_never_reach_slack_unescaped(raw: str, status: Status) -> None:
    req = make_request(
        requester=f"github:{raw}",
        requester_slack_id=None,
        ref=raw,
        title=raw,
        run_url=raw,
        status=status,
        decided_by="U0BOB",
        deny_reason=raw,
        receipt_id=raw,
    )
    card = render_card(req, POLICY, NOW)
    validate_message_blocks(card.blocks)
    assert_no_untrusted_markup(card.blocks, card.text)


def test_malicious_run_url_is_not_a_link() -> None:
    card = render_card(make_request(run_url="javascript:alert(1)"), POLICY, NOW)
    assert "javascript:alert(1)" in joined(card.blocks)
    assert "<javascript" not in joined(card.blocks)


OTHER_SHA = "b" * 40


def signer_accepts(req: DeployRequest, blocks: list[dict[str, Any]], *, anyone: bool = False) -> None:
    """The signer's own check of a clicked card (signer.card), as it runs on the echo of this card."""
    env = POLICY.environment(req.scope.environment)
    check_clicked_card(
        {"type": "message", "blocks": blocks},
        card_facts(req, POLICY),
        environments=POLICY.environments.keys(),
        confirm=env.confirm_approve,
        required_approvals=env.required_approvals,
        may_approve=lambda uid: anyone or POLICY.authorizes(req.scope.environment, uid),
    )


def test_pending_card_is_exactly_what_the_signer_expects() -> None:
    req = make_request(approvals=[Approval(user_id="U0BOB", at=NOW)])
    signer_accepts(req, render_card(req, POLICY, NOW).blocks)


def test_card_check_would_catch_a_card_for_another_scope() -> None:
    other = make_request(
        scope=Scope(repo="acme/web", sha=OTHER_SHA, environment="production", workflow="deploy")
    )
    with pytest.raises(CardMismatch):
        signer_accepts(make_request(), render_card(other, POLICY, NOW).blocks)


def test_foreign_hashes_in_free_text_are_defused() -> None:
    req = make_request(
        title=f"Revert {OTHER_SHA} and {SHA.upper()}",
        ref=f"refs/heads/{'c' * 64}",
        requester=f"github:{'d' * 40}",
        requester_slack_id=None,
        run_url=f"https://ci.example/acme/web/commit/{OTHER_SHA}",
    )
    card = render_card(req, POLICY, NOW)
    signer_accepts(req, card.blocks)
    body = joined(card.blocks)
    assert OTHER_SHA not in body
    assert SHA.upper() not in body
    assert "bbbbbbbbbbbb…" in body  # shortened, still recognisable
    assert f"ci.example/acme/web/commit/{OTHER_SHA[:12]}…" in body  # shown as text, not as a link


# Arbitrary text, and text made of hex digits (hash-like runs the signer's card rule refuses).
HUGE = st.one_of(
    st.text(min_size=0, max_size=6000),
    st.text(alphabet="0123456789abcdefABCDEF&<> /", min_size=0, max_size=3000),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    requester=HUGE.filter(bool),
    ref=HUGE,
    title=HUGE,
    reason=HUGE,
    run_path=HUGE,
    approvers=st.integers(min_value=0, max_value=60),
    status=st.sampled_from(list(Status)),
)
def test_huge_inputs_stay_within_block_kit_limits(
    requester: str, ref: str, title: str, reason: str, run_path: str, approvers: int, status: Status
) -> None:
    req = make_request(
        requester=requester,
        requester_slack_id=None,
        ref=ref or None,
        title=title or None,
        run_url="https://ci.example/" + run_path,
        deny_reason=reason or None,
        decided_by="U0BOB",
        status=status,
        required_approvals=50,
        approvals=[Approval(user_id=f"U0X{i:04d}", at=NOW) for i in range(approvers)],
        receipt_id="rcpt_" + title[:3000],
        receipt_expires_at=NOW,
    )
    card = render_card(req, POLICY, NOW)  # to_dict() enforces slack_sdk's limits
    validate_message_blocks(card.blocks)  # and the emulator enforces Slack's
    if status is Status.PENDING:
        # and the signer accepts the card it expects (these made-up approvers count as approvers here)
        signer_accepts(req, card.blocks, anyone=True)
    assert len(card.blocks) <= 50
    assert len(card.text) <= 3000
    for block in card.blocks:
        for f in block.get("fields", []):
            assert len(f["text"]) <= 2000
        if block["type"] == "header":
            assert len(block["text"]["text"]) <= 150
        if block["type"] == "section" and "text" in block:
            assert len(block["text"]["text"]) <= 3000


def test_deny_modal_shape() -> None:
    view = deny_modal(make_request())
    validate_view(view)
    assert view["callback_id"] == "deny_reason"
    assert view["private_metadata"] == RID
    (inp,) = [b for b in view["blocks"] if b["type"] == "input"]
    assert inp["block_id"] == "reason"
    assert inp["element"]["action_id"] == "reason_input"
    assert inp["element"]["type"] == "plain_text_input"
    assert inp["optional"] is False


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (timedelta(seconds=45), "45s"),
        (timedelta(minutes=30), "30m"),
        (timedelta(minutes=2, seconds=5), "2m 5s"),
        (timedelta(hours=1, minutes=5), "1h 5m"),
        (timedelta(days=1), "1d"),
        (timedelta(seconds=-5), "0s"),
    ],
)
def test_format_duration(delta: timedelta, text: str) -> None:
    assert format_duration(delta) == text


def test_environment_type_is_the_policy_model() -> None:
    assert isinstance(PROD, Environment)
