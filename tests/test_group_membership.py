"""Group membership is the policy's word, never the bot's (issue 9, point 5), held as a property.

Whatever membership a bot (or Slack, or whoever answers as Slack) claims, the set of users who may approve
is the policy's: listed approvers plus the members pinned in ``[groups]``. The signer refuses a frame that
carries a claim at all; the bot's early check, asked with any claim in its messenger, admits exactly whom the
signer's decision admits.
"""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyturn.bot import lifecycle
from keyturn.bot.approvals import ApprovalService
from keyturn.bot.models import DeployRequest, RequestIn
from keyturn.bot.ports import Refused
from keyturn.bot.store import RequestStore
from keyturn.signer import evidence as ev
from keyturn.signer import wire
from keyturn.signer.evidence import EvidenceError
from keyturn.signer.policy import Policy
from keyturn.signer.receipt import new_request_id
from tests.bot.test_approvals import FakeSigner
from tests.fixtures import Clock, RecordingMessenger
from tests.signer.conftest import (
    CI_SECRET,
    POLICY_TOML,
    SHA,
    SLACK_SECRET,
    at,
    ci_origin,
    click,
    click_body,
    rid_of,
)

POLICY = Policy.from_bytes(POLICY_TOML.encode())
SECRETS = ev.Secrets(SLACK_SECRET, CI_SECRET)
T0 = 1_780_000_000
# A listed approver (carol), pinned members (U0ONCALL, U0XTRA), and people a bot might vouch for. Bob is
# the other approver in every signer decision below and alice the requester, so neither is drawn.
KNOWN_USERS = ["U0CAROL", "U0MALLORY", "U0ONCALL", "U0XTRA", "U0ERIN", "W0GRID"]

user_ids = st.one_of(st.sampled_from(KNOWN_USERS), st.from_regex(r"U0[A-Z0-9]{2,8}", fullmatch=True)).filter(
    lambda u: u not in ("U0BOB", "U0ALICE")
)
group_ids = st.one_of(
    st.sampled_from(["S0ONCALL", "S0OTHER"]), st.from_regex(r"S0[A-Z0-9]{2,8}", fullmatch=True)
)
claims = st.dictionaries(group_ids, st.lists(user_ids, max_size=6), max_size=4)


class OneRequestStore:
    """Just enough of ``RequestStore`` for ``ApprovalService.check_can_decide``."""

    def __init__(self, request: DeployRequest) -> None:
        self.request = request

    async def get(self, request_id: str) -> DeployRequest | None:
        return self.request if request_id == self.request.id else None


def _bot_refusal(user: str, claimed: dict[str, list[str]]) -> str | None:
    """The code of the bot's early refusal of ``user``, with ``claimed`` as Slack's answer; None: admitted."""
    clock = Clock()
    body = RequestIn.model_validate(
        {"repo": "acme/web", "sha": SHA, "environment": "production", "workflow": "deploy.yml",
         "requester": "github:alice"}
    )  # fmt: skip
    request = lifecycle.new_request(
        new_request_id(), body, now=clock.now, ttl=timedelta(minutes=30), required_approvals=2
    )
    messenger = RecordingMessenger()
    messenger.groups = {g: frozenset(members) for g, members in claimed.items()}
    store = cast(RequestStore, OneRequestStore(request))
    service = ApprovalService(store, messenger, FakeSigner(), POLICY, clock=clock)

    async def check() -> str | None:
        try:
            await service.check_can_decide(request.id, user)
        except Refused as exc:
            return exc.code
        return None

    return asyncio.run(check())


def _signer_refusal(user: str) -> str | None:
    """The code of the signer's refusal of bob's and ``user``'s genuine clicks (a quorum of two); None if it
    would sign."""
    o = ci_origin(T0)
    rid = rid_of(o)
    clicks = [click(T0 + 10, click_body(o, "U0BOB")), click(T0 + 20, click_body(o, user))]
    try:
        ev.assess(
            policy=POLICY,
            secrets=SECRETS,
            request_id=rid,
            origin=ev.CiEvidence(o.method, o.path, o.body, o.timestamp, o.signature),
            clicks=[ev.SlackEvidence(c.body, c.timestamp, c.signature) for c in clicks],
            emails={},
            now=at(T0 + 60),
        )
    except EvidenceError as exc:
        return exc.code
    return None


def _frame_with_claim(user: str, claimed: dict[str, list[str]]) -> bytes:
    o = ci_origin(T0)
    frame = wire.SignRequest(
        id="p",
        requestId=rid_of(o),
        origin=o,
        approvals=[click(T0 + 10, click_body(o, user))],
        emails={},
    ).model_dump(mode="json")
    return json.dumps({**frame, "groupMembers": claimed}).encode()


@settings(max_examples=60, deadline=None)
@given(claimed=claims, user=user_ids)
def test_membership_claims_never_change_who_is_authorized(claimed: dict[str, list[str]], user: str) -> None:
    expected = POLICY.authorizes("production", user)
    # The signer: a frame carrying any claim is refused before any evidence is looked at ...
    with pytest.raises(wire.WireError) as exc:
        wire.parse_request(_frame_with_claim(user, claimed))
    assert exc.value.code == "bad_request"
    assert "groupMembers" in exc.value.message
    # ... and its decision, which has no way to take a claim, follows the pinned policy.
    assert _signer_refusal(user) == (None if expected else "not_authorized")
    # The bot's early check, with the claim as Slack's live answer, agrees with the signer.
    assert _bot_refusal(user, claimed) == (None if expected else "not_an_approver")
