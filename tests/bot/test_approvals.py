"""Approval use cases on a real Redis, with a recording messenger and a scripted signer in-process.

The full path through real processes is in tests/e2e/; here the failure modes that are hard to provoke there:
the signer refusing or down at quorum, Slack failing to post the card, hooks and callbacks.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis

from keyturn.bot.approvals import ApprovalService
from keyturn.bot.models import CardRef, DeployRequest, OriginEvidence, RequestIn, SlackEvidence, Status
from keyturn.bot.notices import outcome_text
from keyturn.bot.ports import Refused
from keyturn.bot.signer_client import SignerRefused, SignerUnavailable
from keyturn.bot.store import NotReplicated, RequestStore, StoreUnavailable
from keyturn.signer import gate, wire
from keyturn.signer.policy import Policy
from keyturn.signer.receipt import Scope, format_time
from tests.fixtures import Clock, RecordingMessenger
from tests.vectors import generate, load

SHA = "4f8a2cd91ef7a2c7f3a5f0aa12d93b33f2d40e17"
SCOPE = Scope("acme/web", SHA, "production", "deploy.yml")  # what body() asks for
POLICY = b"""
version = 1
[identities]
"github:alice" = "U0ALICE"
[environments.production]
channel = "C0DEPLOYS"
approvers = ["U0BOB", "U0CAROL", "U0ALICE"]
approver_groups = ["S0ONCALL"]
required_approvals = 2
request_ttl = "30m"
receipt_ttl = "15m"
[groups.S0ONCALL]
members = ["U0ERIN"]
"""


class FakeSigner:
    """The signer's ``sign``/``record_outcome`` in-process, or raising what it is told to.

    ``sign`` returns a real receipt for ``scope``, signed by the fixed "primary" test-vector key
    (tests/vectors/generate.py), so what the bot stores and hands on would pass ``keyturn verify`` against the
    test keyset: a test can check the bot keeps a receipt byte-for-byte verifiable, not just receipt-shaped.
    """

    def __init__(self, scope: Scope = SCOPE) -> None:
        self.scope = scope
        self.fail: Exception | None = None
        self.calls: list[tuple[str, int]] = []
        self.outcomes: list[tuple[str, str]] = []
        self.outcome_fail: Exception | None = None
        self.tamper: Callable[[dict[str, Any]], dict[str, Any]] | None = None  # a signer answering wrongly

    async def record_outcome(
        self,
        request_id: str,
        outcome: str,
        origin: wire.CiOrigin | wire.SlackCommandOrigin | wire.OidcOrigin | wire.GitHubOrigin,
        *,
        denial: wire.SlackClick | None = None,
        cancel: wire.CiOrigin | wire.OidcCall | None = None,
    ) -> int:
        if self.outcome_fail is not None:
            raise self.outcome_fail
        self.outcomes.append((request_id, outcome))
        return len(self.outcomes)

    async def sign(
        self,
        request_id: str,
        origin: wire.CiOrigin | wire.SlackCommandOrigin | wire.OidcOrigin | wire.GitHubOrigin,
        approvals: Sequence[wire.SlackClick],
        emails: Mapping[str, str],
    ) -> dict[str, Any]:
        self.calls.append((request_id, len(approvals)))
        if self.fail is not None:
            raise self.fail
        now = datetime.now(UTC).replace(microsecond=0)
        # The tests' clicks are "payload=<user id>" (see click()); the last one is the approver.
        users = [a.body.removeprefix("payload=") for a in approvals]
        entries = [{"id": u, "email": emails.get(u, ""), "at": format_time(now)} for u in users]
        receipt = generate.signed(
            "primary",
            requestId=request_id,
            issuedAt=format_time(now),
            expiresAt=format_time(now + timedelta(minutes=15)),
            scope_repo=self.scope.repo,
            scope_sha=self.scope.sha,
            scope_environment=self.scope.environment,
            scope_workflow=self.scope.workflow,
            approver={"id": users[-1], "email": emails.get(users[-1], "")},
            approvals=entries,
        )
        return receipt if self.tamper is None else self.tamper(receipt)


@pytest.fixture
async def parts(
    redis_url: str,
) -> AsyncIterator[tuple[ApprovalService, RecordingMessenger, FakeSigner, Clock]]:
    client = aioredis.Redis.from_url(redis_url)
    messenger, signer, clock = RecordingMessenger(), FakeSigner(), Clock()
    service = ApprovalService(
        RequestStore(client, retention=timedelta(hours=1)),
        messenger,
        signer,
        Policy.from_bytes(POLICY),
        clock=clock,
        card_retry_first=timedelta(milliseconds=10),
        card_retry_max=timedelta(milliseconds=50),
    )
    yield service, messenger, signer, clock
    await service.aclose()
    await client.aclose()


def body(requester: str = "github:alice") -> RequestIn:
    return RequestIn.model_validate(
        {"repo": "acme/web", "sha": SHA, "environment": "production", "workflow": "deploy.yml",
         "requester": requester}
    )  # fmt: skip


def origin(clock: Clock) -> OriginEvidence:
    return OriginEvidence(
        kind="ci", body="e30=", timestamp=str(int(clock.now.timestamp())), signature="v1=00",
        method="POST", path="/v1/requests",
    )  # fmt: skip


def click(user: str) -> SlackEvidence:
    return SlackEvidence(body=f"payload={user}", timestamp="1", signature="v0=00")


async def created(service: ApprovalService, messenger: RecordingMessenger, clock: Clock) -> DeployRequest:
    req, is_new = await service.create(body(), origin(clock))
    assert is_new
    await asyncio.wait_for(messenger.posted.wait(), 5)
    await service.wait_idle()
    return await service.get(req.id)


async def test_signer_refusal_keeps_request_pending_and_next_click_retries(
    parts: tuple[ApprovalService, RecordingMessenger, FakeSigner, Clock],
) -> None:
    service, messenger, signer, clock = parts
    req = await created(service, messenger, clock)
    assert req.card is not None
    await service.approve(req.id, "U0BOB", click("U0BOB"))
    signer.fail = SignerRefused("card_mismatch", "the card lied")
    with pytest.raises(Refused) as exc:
        await service.approve(req.id, "U0CAROL", click("U0CAROL"))
    assert exc.value.code == "signing_failed"
    assert exc.value.facts == {"cause": "card_mismatch", "detail": "the card lied"}
    after = await service.get(req.id)
    assert after.status is Status.PENDING
    assert len(after.approvals) == 2
    error = await service.store.sign_error(req.id)
    assert error is not None
    assert error.code == "card_mismatch"
    assert ("announce_sign_failure", req.id) in messenger.intents
    assert any(kind == "reply" and "card_mismatch" in str(text) for kind, text in messenger.calls)

    signer.fail = SignerUnavailable("down")
    with pytest.raises(Refused, match="signer_unavailable"):
        await service.approve(req.id, "U0CAROL", click("U0CAROL"))
    signer.fail = None
    done = await service.approve(req.id, "U0CAROL", click("U0CAROL"))  # the retry
    assert done.status is Status.APPROVED
    assert done.receipt_id is not None
    assert await service.store.sign_error(req.id) is None
    # The service says what happened; the messenger words it (thread and requester's DM alike).
    assert messenger.intents.count(("announce_outcome", req.id)) == 1
    assert messenger.dms == [("U0ALICE", outcome_text(done))]
    assert messenger.replies[-1] == f"<@U0ALICE> {outcome_text(done)}"
    assert [n for _, n in signer.calls] == [2, 2, 2]


async def test_the_receipt_the_bot_stores_verifies_for_exactly_the_requests_scope(
    parts: tuple[ApprovalService, RecordingMessenger, FakeSigner, Clock],
) -> None:
    """What the bot keeps and hands to CI is the signer's receipt, byte-for-byte verifiable: the same gate as
    ``keyturn verify`` accepts it for the request's scope and refuses it for any other sha."""
    service, messenger, _, clock = parts
    req = await created(service, messenger, clock)
    await service.approve(req.id, "U0BOB", click("U0BOB"))
    done = await service.approve(req.id, "U0CAROL", click("U0CAROL"))
    assert done.status is Status.APPROVED
    stored = await service.store.receipt(req.id)
    assert stored is not None
    raw = json.dumps(stored).encode()
    now = datetime.now(UTC)
    verified = gate.check_receipt(raw, load.keyset(), SCOPE, now, allow_dev_keys=False)
    assert verified.request_id == req.id
    assert verified.approver.id == "U0CAROL"
    other = Scope(SCOPE.repo, "f" * 40, SCOPE.environment, SCOPE.workflow)
    with pytest.raises(gate.GateError) as exc:
        gate.check_receipt(raw, load.keyset(), other, now, allow_dev_keys=False)
    assert exc.value.code == "scope_mismatch:sha"


@pytest.mark.parametrize(
    "tamper",
    [
        lambda r: {**r, "requestId": "req_01JV7Q4M4T7Z9X4P9G8N2D6R1A"},  # another request's receipt
        lambda r: {k: v for k, v in r.items() if k != "expiresAt"},  # malformed
        lambda r: {**r, "version": "9.9"},  # a format this bot does not know
    ],
    ids=["another-request", "malformed", "unknown-version"],
)
async def test_a_receipt_the_signer_got_wrong_is_never_stored(
    parts: tuple[ApprovalService, RecordingMessenger, FakeSigner, Clock],
    tamper: Callable[[dict[str, Any]], dict[str, Any]],
) -> None:
    service, messenger, signer, clock = parts
    req = await created(service, messenger, clock)
    await service.approve(req.id, "U0BOB", click("U0BOB"))
    signer.tamper = tamper
    with pytest.raises(Refused) as exc:
        await service.approve(req.id, "U0CAROL", click("U0CAROL"))
    assert exc.value.code == "signing_failed"
    assert (await service.get(req.id)).status is Status.PENDING
    assert await service.store.receipt(req.id) is None
    error = await service.store.sign_error(req.id)
    assert error is not None
    assert error.code == "bad_receipt"


async def test_a_final_click_whose_answer_was_lost_is_finished_by_the_backstop(
    parts: tuple[ApprovalService, RecordingMessenger, FakeSigner, Clock], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The click that reaches quorum lands in Redis but its answer is lost (Redis gone, or no replica
    acknowledged it in time: ``NotReplicated``). The approver is told it failed; the request was indexed
    for the leader's backstop *before* the click was counted, so the backstop finishes it."""
    service, messenger, signer, clock = parts
    req = await created(service, messenger, clock)
    await service.approve(req.id, "U0BOB", click("U0BOB"))
    store = service.store
    landed = store.add_approval

    async def lands_then_fails(*args: Any, **kwargs: Any) -> DeployRequest:
        await landed(*args, **kwargs)
        raise NotReplicated("redis: fewer than 1 replica(s) acknowledged the write (0)")

    monkeypatch.setattr(store, "add_approval", lands_then_fails)
    with pytest.raises(StoreUnavailable):
        await service.approve(req.id, "U0CAROL", click("U0CAROL"))
    assert req.id in await store.at_quorum_ids()
    assert await service.finish_stuck() == 1
    done = await service.get(req.id)
    assert done.status is Status.APPROVED
    assert [n for _, n in signer.calls] == [2]


async def test_refusals_have_specific_codes(
    parts: tuple[ApprovalService, RecordingMessenger, FakeSigner, Clock],
) -> None:
    service, messenger, _, clock = parts
    req = await created(service, messenger, clock)
    for user, code, facts in (
        ("U0ALICE", "self_approval", {}),
        ("U0MALLORY", "not_an_approver", {"environment": "production"}),
    ):
        with pytest.raises(Refused) as exc:
            await service.approve(req.id, user, click(user))
        assert (exc.value.code, exc.value.facts) == (code, facts)
    await service.approve(req.id, "U0ERIN", click("U0ERIN"))  # via S0ONCALL
    with pytest.raises(Refused) as exc:
        await service.approve(req.id, "U0ERIN", click("U0ERIN"))
    assert exc.value.code == "already_approved"
    with pytest.raises(Refused) as exc:
        await service.deny(req.id, "U0BOB", "  ")
    assert exc.value.code == "reason_required"
    with pytest.raises(Refused) as exc:
        await service.approve("req_01JV7Q4M4T7Z9X4P9G8N2D6R1A", "U0BOB", click("U0BOB"))
    assert exc.value.code == "unknown_request"
    assert [r.id for r in await service.pending_for("U0BOB")] == [req.id]
    assert await service.pending_for("U0ERIN") == []


async def test_precheck_uses_the_pinned_membership_not_slack(
    parts: tuple[ApprovalService, RecordingMessenger, FakeSigner, Clock],
) -> None:
    """Slack (or whoever answers as Slack) says mallory joined on-call and erin left: the early check still
    follows the policy's pinned [groups], exactly as the signer will, and never asks Slack."""
    service, messenger, _, clock = parts
    req = await created(service, messenger, clock)
    messenger.groups = {"S0ONCALL": frozenset({"U0MALLORY"})}
    with pytest.raises(Refused) as exc:
        await service.check_can_decide(req.id, "U0MALLORY")
    assert exc.value.code == "not_an_approver"
    assert await service.pending_for("U0MALLORY") == []
    assert (await service.check_can_decide(req.id, "U0ERIN")).id == req.id
    await service.approve(req.id, "U0ERIN", click("U0ERIN"))
    assert not [c for c in messenger.calls if c[0] == "group_members"]


async def test_card_posting_is_retried_and_the_error_is_visible(
    parts: tuple[ApprovalService, RecordingMessenger, FakeSigner, Clock],
) -> None:
    service, messenger, _, clock = parts
    messenger.fail_posts = 3
    req, _ = await service.create(body(), origin(clock))
    await asyncio.wait_for(messenger.posted.wait(), 5)
    await service.wait_idle()
    after = await service.get(req.id)
    assert after.card is not None
    assert after.card_error is None
    assert [c for c in messenger.calls if c[0] == "post_card"] == [("post_card", req.id)] * 4


async def test_expire_is_idempotent_and_only_when_due(
    parts: tuple[ApprovalService, RecordingMessenger, FakeSigner, Clock],
) -> None:
    service, messenger, _, clock = parts
    req = await created(service, messenger, clock)
    assert (await service.expire(req.id)) == req  # not due: nothing changes
    clock.now = req.expires_at
    results = await asyncio.gather(*(service.expire(req.id) for _ in range(5)))
    assert all(r is not None and r.status is Status.EXPIRED for r in results)
    assert [c for c in messenger.calls if c == ("update_card", Status.EXPIRED)] == [
        ("update_card", Status.EXPIRED)
    ]
    assert await service.expire("req_01JV7Q4M4T7Z9X4P9G8N2D6R1A") is None


async def test_hooks_hear_creation_and_the_final_state_once(
    parts: tuple[ApprovalService, RecordingMessenger, FakeSigner, Clock],
) -> None:
    service, messenger, _, clock = parts
    seen: list[tuple[str, Status]] = []

    class Hooks:
        async def on_created(self, request: DeployRequest) -> None:
            seen.append(("created", request.status))

        async def on_final(self, request: DeployRequest) -> None:
            seen.append(("final", request.status))

    service.hooks = Hooks()
    req = await created(service, messenger, clock)
    await service.cancel(req.id)
    await service.cancel(req.id)
    assert seen == [("created", Status.PENDING), ("final", Status.CANCELLED)]


class HangingMessenger(RecordingMessenger):
    """A replica whose Slack call never returns (it is about to die mid-post)."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()

    async def post_card(self, request: DeployRequest) -> CardRef:
        self.calls.append(("post_card", request.id))
        self.entered.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_a_card_whose_poster_died_is_posted_by_another_replica_never_twice_by_live_ones(
    redis_url: str,
) -> None:
    client = aioredis.Redis.from_url(redis_url)
    store = RequestStore(client, retention=timedelta(hours=1))
    policy, clock = Policy.from_bytes(POLICY), Clock()
    dying, survivor = HangingMessenger(), RecordingMessenger()
    a = ApprovalService(store, dying, FakeSigner(), policy, clock=clock)
    b = ApprovalService(store, survivor, FakeSigner(), policy, clock=clock)
    try:
        req, _ = await a.create(body(), origin(clock))
        await asyncio.wait_for(dying.entered.wait(), 5)
        # A is alive and posting: B's backstop must not post a second card.
        await b.resume()
        await b.wait_idle()
        assert survivor.calls == []
        # A dies without releasing its claim; the claim lapses (its key expires), and B's backstop takes over.
        await client.delete(f"keyturn:req:{{{req.id}}}:card_posting")
        assert await b.resume() == 1
        await asyncio.wait_for(survivor.posted.wait(), 5)
        await b.wait_idle()
        assert (await b.get(req.id)).card is not None
        assert survivor.calls == [("post_card", req.id)]
    finally:
        await a.aclose()
        await b.aclose()
        await client.aclose()


async def test_every_refusal_is_sent_to_the_signer_once_and_an_outage_is_retried_by_the_backstop(
    parts: tuple[ApprovalService, RecordingMessenger, FakeSigner, Clock],
) -> None:
    """Denied, cancelled, expired: each reaches the signer's record once, with its evidence; a signer outage
    loses nothing (the note stays in Redis and the leader's backstop records it later); a refusal of the
    evidence is not retried forever."""
    service, messenger, signer, clock = parts
    denied = await created(service, messenger, clock)
    submission = SlackEvidence(body="payload=deny", timestamp="1", signature="v0=00")
    await service.deny(denied.id, "U0BOB", "tests are red", submission)
    await service.deny(denied.id, "U0BOB", "tests are red", submission)  # a replay changes nothing
    assert (await service.get(denied.id)).deny_evidence == submission
    assert signer.outcomes == [(denied.id, "denied")]

    signer.outcome_fail = SignerUnavailable("down")
    clock.now += timedelta(seconds=1)  # a new origin, so a request of its own
    cancelled = await created(service, messenger, clock)
    await service.cancel(cancelled.id, OriginEvidence(kind="ci", body="", timestamp="1", signature="v1=00"))
    assert (await service.get(cancelled.id)).status is Status.CANCELLED  # decided, whatever the signer
    assert await service.store.unrecorded_ids() == [cancelled.id]
    assert await service.record_unrecorded() == 0  # still down: kept
    signer.outcome_fail = None
    assert await service.record_unrecorded() == 1
    assert signer.outcomes[-1] == (cancelled.id, "cancelled")
    assert await service.store.unrecorded_ids() == []

    clock.now += timedelta(seconds=1)
    expired = await created(service, messenger, clock)
    signer.outcome_fail = SignerRefused("bad_denial", "forged")  # a refusal: logged, counted, not retried
    clock.now = expired.expires_at
    assert (await service.expire(expired.id) or expired).status is Status.EXPIRED
    assert await service.store.unrecorded_ids() == []
