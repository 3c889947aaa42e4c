"""Issue 14 finding 6 and the backstop of finding 5, on a real Redis with an in-process service.

The card backstop and ``/keyturn pending`` must see every pending request, not the 1,000 that expire
soonest; the quorum backstop must finish a request at quorum exactly once however many replicas run it.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
import redis.asyncio as aioredis

from keyturn.bot import lifecycle
from keyturn.bot.approvals import ApprovalService
from keyturn.bot.models import Approval, RequestIn, Status
from keyturn.bot.ports import Refused
from keyturn.bot.store import RequestStore
from keyturn.signer.policy import Policy
from tests.bot.test_approvals import POLICY, FakeSigner, click, origin
from tests.fixtures import Clock, RecordingMessenger

MANY = 1_100  # more than the old window of 1,000
TARGET_RANK = 1_010  # the one whose card failed: ranked past the old window by expiry


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RequestStore]:
    client = aioredis.Redis.from_url(redis_url)
    yield RequestStore(client, retention=timedelta(hours=1))
    await client.aclose()


def service_on(
    store: RequestStore, messenger: RecordingMessenger, signer: FakeSigner, clock: Clock
) -> ApprovalService:
    return ApprovalService(
        store,
        messenger,
        signer,
        Policy.from_bytes(POLICY),
        clock=clock,
        card_retry_first=timedelta(milliseconds=10),
        sign_lease=timedelta(seconds=5),
    )


def rid(i: int) -> str:
    """A well-formed request id (``req_`` + 26 Crockford base32 digits), in the order of ``i``."""
    return f"req_{i:026d}"


def body(i: int) -> RequestIn:
    sha = hashlib.sha1(str(i).encode()).hexdigest()
    return RequestIn.model_validate(
        {"repo": "acme/web", "sha": sha, "environment": "production", "workflow": "deploy.yml",
         "requester": "github:alice"}
    )  # fmt: skip


async def test_card_backstop_and_pending_list_see_more_than_a_thousand(store: RequestStore) -> None:
    clock = Clock()
    ids: list[str] = []
    for i in range(MANY):
        # Expiry grows with i, so the pending index ranks them in creation order.
        req = lifecycle.new_request(
            rid(i), body(i), now=clock.now, ttl=timedelta(minutes=30, seconds=i), required_approvals=2
        )
        stored, created = await store.create_or_get(req, origin(clock), clock.now)
        assert created
        ids.append(stored.id)
    target = ids[TARGET_RANK - 1]
    posted = functools.partial(lifecycle.with_card, channel="C0DEPLOYS", ts="1.000100")
    others = [r for r in ids if r != target]
    for start in range(0, len(others), 50):  # bounded concurrency: the client's pool is finite
        await asyncio.gather(*(store.transition(r, posted) for r in others[start : start + 50]))

    assert await store.needs_card_ids() == [target]
    messenger, signer = RecordingMessenger(), FakeSigner()
    service = service_on(store, messenger, signer, clock)
    try:
        assert await service.resume() == 1  # the leader's backstop pass
        await service.wait_idle()
        assert messenger.calls == [("post_card", target)]
        assert (await store.get(target)) is not None
        assert await store.needs_card_ids() == []

        visible = await service.pending_for("U0BOB")
        assert len(visible) == MANY
        assert len(await store.pending_ids()) == MANY
    finally:
        await service.aclose()


async def test_quorum_backstop_finishes_once_across_replicas(store: RequestStore) -> None:
    clock = Clock()
    req = lifecycle.new_request(
        rid(900_001), body(1), now=clock.now, ttl=timedelta(minutes=30), required_approvals=2
    )
    await store.create_or_get(req, origin(clock), clock.now)
    for user in ("U0BOB", "U0CAROL"):
        await store.add_approval(req.id, Approval(user_id=user, at=clock.now), click(user), clock.now)
    at_quorum = await store.get(req.id)
    assert at_quorum is not None
    # As a replica does right before it signs, and then dies: indexed, no claim left, no error recorded.
    await store.mark_at_quorum([at_quorum])

    signer = FakeSigner()
    replicas = [service_on(store, RecordingMessenger(), signer, clock) for _ in range(3)]
    try:
        done = await asyncio.gather(*(s.finish_stuck() for s in replicas))
        assert sum(done) == 1
        assert len(signer.calls) == 1
        final = await store.get(req.id)
        assert final is not None
        assert final.status is Status.APPROVED
        assert await store.at_quorum_ids() == []
        assert await asyncio.gather(*(s.finish_stuck() for s in replicas)) == [0, 0, 0]
    finally:
        for s in replicas:
            await s.aclose()


async def test_a_cancel_waits_for_the_signature_in_flight_and_loses_to_it(store: RequestStore) -> None:
    clock = Clock()
    req = lifecycle.new_request(
        rid(900_002), body(2), now=clock.now, ttl=timedelta(minutes=30), required_approvals=1
    )
    await store.create_or_get(req, origin(clock), clock.now)
    await store.add_approval(req.id, Approval(user_id="U0BOB", at=clock.now), click("U0BOB"), clock.now)
    token = await store.claim_signing(req.id, timedelta(seconds=5))
    assert token is not None
    service = service_on(store, RecordingMessenger(), FakeSigner(), clock)
    try:
        cancel = asyncio.create_task(service.cancel(req.id))
        await asyncio.sleep(0)  # let it hit the claim
        assert not cancel.done()
        await store.transition(
            req.id,
            lambda r: lifecycle.mark_approved(
                r, by="U0BOB", receipt_id="rcpt_x", receipt_expires_at=clock.now, now=clock.now
            ),
            receipt={"requestId": req.id},
        )
        await store.release_signing(req.id, token)
        with pytest.raises(Refused) as exc:
            await asyncio.wait_for(cancel, 5)
        assert exc.value.code == "not_pending"
        final = await store.get(req.id)
        assert final is not None
        assert final.status is Status.APPROVED
    finally:
        await service.aclose()
