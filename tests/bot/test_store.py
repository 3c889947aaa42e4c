"""The Redis store against a real redis-server: dedupe, CAS transitions, atomic approvals, claims, TTLs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import redis
import redis.asyncio as aioredis
from ulid import ULID

from keyturn.bot import lifecycle
from keyturn.bot.models import Approval, DeployRequest, OriginEvidence, RequestIn, SlackEvidence, Status
from keyturn.bot.ports import Refused
from keyturn.bot.store import (
    REPLAY_TTL,
    ChangeFeed,
    RequestStore,
    SignError,
    StoreUnavailable,
    ci_seen_key,
    record_key,
    scope_key,
)
from tests.fixtures import RestartingRedis

NOW = datetime.now(UTC).replace(microsecond=0)
SHA = "4f8a2cd91ef7a2c7f3a5f0aa12d93b33f2d40e17"
ORIGIN = OriginEvidence(
    kind="ci", body="e30=", timestamp="1", signature="v1=00", method="POST", path="/v1/requests"
)


def new_id() -> str:
    return f"req_{ULID()}"


def make(sha: str = SHA, required: int = 2, ttl: timedelta = timedelta(minutes=30)) -> DeployRequest:
    body = RequestIn.model_validate(
        {"repo": "acme/web", "sha": sha, "environment": "production", "workflow": "deploy.yml",
         "requester": "github:alice"}
    )  # fmt: skip
    return lifecycle.new_request(new_id(), body, now=NOW, ttl=ttl, required_approvals=required)


def click(user: str) -> tuple[Approval, SlackEvidence]:
    return (
        Approval(user_id=user, email=None, at=NOW),
        SlackEvidence(body=f"payload=click-by-{user}", timestamp="1", signature="v0=00"),
    )


@pytest.fixture
async def aredis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def store(aredis: aioredis.Redis) -> RequestStore:
    return RequestStore(aredis, retention=timedelta(hours=1))


async def test_create_then_read_back(store: RequestStore) -> None:
    req, created = await store.create_or_get(make(), ORIGIN, NOW)
    assert created
    assert req.version == 1
    assert await store.get(req.id) == req
    assert await store.origin(req.id) == ORIGIN
    assert await store.pending_ids() == [req.id]
    assert await store.get("req_01JV7Q4M4T7Z9X4P9G8N2D6R1A") is None


async def test_concurrent_duplicates_make_exactly_one_request(store: RequestStore) -> None:
    results = await asyncio.gather(*(store.create_or_get(make(), ORIGIN, NOW) for _ in range(20)))
    ids = {r.id for r, _ in results}
    assert len(ids) == 1
    assert sum(created for _, created in results) == 1
    assert await store.pending_ids() == list(ids)


async def test_a_decided_scope_can_be_requested_again(store: RequestStore) -> None:
    first, _ = await store.create_or_get(make(), ORIGIN, NOW)
    await store.transition(first.id, lambda r: lifecycle.cancel(r, now=NOW))
    second, created = await store.create_or_get(make(), ORIGIN, NOW)
    assert created
    assert second.id != first.id
    other, created_other = await store.create_or_get(make(sha="a" * 40), ORIGIN, NOW)
    assert created_other
    assert other.id != second.id


async def test_time_expired_pending_request_is_not_reused(store: RequestStore) -> None:
    first, _ = await store.create_or_get(make(ttl=timedelta(seconds=5)), ORIGIN, NOW)
    later = NOW + timedelta(seconds=6)
    second, created = await store.create_or_get(make(), ORIGIN, later)
    assert created
    assert second.id != first.id


async def test_twenty_concurrent_approvals_and_duplicates_lose_nothing(store: RequestStore) -> None:
    req, _ = await store.create_or_get(make(required=20), ORIGIN, NOW)
    users = [f"U{i:03d}" for i in range(20)]

    async def approve(user: str) -> str:
        a, ev = click(user)
        try:
            await store.add_approval(req.id, a, ev, NOW)
            return "ok"
        except Refused as exc:
            return exc.code

    outcomes = await asyncio.gather(*(approve(u) for u in users + users))
    assert outcomes.count("ok") == 20
    assert outcomes.count("already_approved") == 20
    final = await store.get(req.id)
    assert final is not None
    assert sorted(a.user_id for a in final.approvals) == users
    assert final.version == 21
    stored = await store.approvals(req.id)
    assert sorted(s.approval.user_id for s in stored) == users
    assert all(s.evidence.body == f"payload=click-by-{s.approval.user_id}" for s in stored)


async def test_only_one_signing_claim_at_a_time(store: RequestStore) -> None:
    req, _ = await store.create_or_get(make(), ORIGIN, NOW)
    tokens = await asyncio.gather(*(store.claim_signing(req.id, timedelta(seconds=30)) for _ in range(8)))
    winners = [t for t in tokens if t is not None]
    assert len(winners) == 1
    await store.release_signing(req.id, "not-the-token")
    assert await store.claim_signing(req.id, timedelta(seconds=30)) is None
    await store.release_signing(req.id, winners[0])
    assert await store.claim_signing(req.id, timedelta(seconds=30)) is not None


async def test_receipt_and_approval_in_one_step_and_final_is_sticky(
    store: RequestStore, redis_client: redis.Redis
) -> None:
    req, _ = await store.create_or_get(make(required=1), ORIGIN, NOW)
    a, ev = click("U0BOB")
    await store.add_approval(req.id, a, ev, NOW)
    receipt = {"requestId": req.id, "status": "APPROVED"}
    done, changed = await store.transition(
        req.id,
        lambda r: lifecycle.mark_approved(
            r, by="U0BOB", receipt_id="rc1", receipt_expires_at=NOW + timedelta(minutes=15), now=NOW
        ),
        receipt=receipt,
    )
    assert changed
    assert done.status is Status.APPROVED
    assert await store.receipt(req.id) == receipt
    assert await store.pending_ids() == []
    # Decided requests are kept for the retention, not forever.
    ttl = redis_client.ttl(record_key(req.id))
    assert 0 < ttl <= 3600
    # The scope is free again, and nothing moves a final request.
    assert redis_client.get(scope_key(req.scope)) is None
    with pytest.raises(Refused):
        await store.transition(req.id, lambda r: lifecycle.cancel(r, now=NOW))
    again, changed = await store.transition(
        req.id,
        lambda r: lifecycle.mark_approved(r, by="U0BOB", receipt_id="rc1", receipt_expires_at=NOW, now=NOW),
    )
    assert not changed
    assert again == done


async def test_script_refuses_status_change_of_a_final_record(store: RequestStore) -> None:
    """Even a caller that skips the lifecycle cannot move a final record."""
    req, _ = await store.create_or_get(make(), ORIGIN, NOW)
    cancelled, _ = await store.transition(req.id, lambda r: lifecycle.cancel(r, now=NOW))
    calls = 0

    def rogue(r: DeployRequest) -> DeployRequest:
        nonlocal calls
        calls += 1
        if calls > 3:
            raise Refused("gave_up", "stop")
        return r.model_copy(update={"status": Status.APPROVED})

    with pytest.raises(Refused, match="stop"):
        await store.transition(req.id, rogue)
    assert (await store.get(req.id)) == cancelled


async def test_concurrent_transitions_one_winner(store: RequestStore) -> None:
    req, _ = await store.create_or_get(make(), ORIGIN, NOW)

    async def deny(user: str) -> str:
        try:
            await store.transition(req.id, lambda r: lifecycle.deny(r, by=user, reason="no", now=NOW))
            return user
        except Refused:
            return "refused"

    results = await asyncio.gather(*(deny(f"U{i}") for i in range(10)))
    winners = [r for r in results if r != "refused"]
    assert len(winners) == 1
    final = await store.get(req.id)
    assert final is not None
    assert final.decided_by == winners[0]


async def test_sign_error_recorded_while_pending_only(store: RequestStore) -> None:
    req, _ = await store.create_or_get(make(), ORIGIN, NOW)
    err = SignError(code="signer_unavailable", message="down", at=NOW)
    await store.set_sign_error(req.id, err)
    assert await store.sign_error(req.id) == err
    await store.set_sign_error(req.id, None)
    assert await store.sign_error(req.id) is None
    await store.transition(req.id, lambda r: lifecycle.cancel(r, now=NOW))
    await store.set_sign_error(req.id, err)
    assert await store.sign_error(req.id) is None


async def test_callback_attempts_are_logged(store: RequestStore) -> None:
    req, _ = await store.create_or_get(make(), ORIGIN, NOW)
    await store.record_callback_attempt(req.id, {"attempt": 1, "status": 500})
    await store.record_callback_attempt(req.id, {"attempt": 2, "status": 204})
    assert [a["status"] for a in await store.callback_attempts(req.id)] == [500, 204]


async def test_change_feed_wakes_a_waiter(store: RequestStore, aredis: aioredis.Redis) -> None:
    feed = ChangeFeed(aredis)
    await feed.start()
    try:
        req, _ = await store.create_or_get(make(), ORIGIN, NOW)
        async with feed.watch(req.id) as changed:
            assert not changed.is_set()
            a, ev = click("U0BOB")
            await store.add_approval(req.id, a, ev, NOW)
            await asyncio.wait_for(changed.wait(), 5)
    finally:
        await feed.stop()


async def test_due_ids_follow_expiry(store: RequestStore) -> None:
    soon, _ = await store.create_or_get(make(ttl=timedelta(seconds=10)), ORIGIN, NOW)
    await store.create_or_get(make(sha="b" * 40), ORIGIN, NOW)
    assert await store.due_ids(NOW) == []
    assert await store.due_ids(NOW + timedelta(seconds=10)) == [soon.id]


async def test_unreachable_redis_is_a_clear_error() -> None:
    client = aioredis.Redis.from_url("unix:///nonexistent/keyturn-test.sock")
    try:
        with pytest.raises(StoreUnavailable):
            await RequestStore(client, retention=timedelta(hours=1)).get(new_id())
    finally:
        await client.aclose()


async def test_ci_request_claim_is_once_and_outlives_the_signature_window(
    store: RequestStore, aredis: aioredis.Redis
) -> None:
    sig = "v1=" + "ab" * 32
    rid = new_id()
    assert await store.claim_ci_request(sig) is None  # first time: go ahead
    in_flight = await store.claim_ci_request(sig)
    assert in_flight is not None
    assert in_flight.request_id is None  # the first copy has not finished
    await store.bind_ci_request(sig, "create", rid)
    seen = await store.claim_ci_request(sig)
    assert seen is not None
    assert (seen.action, seen.request_id) == ("create", rid)
    # Kept longer than the ±300 s a signature is fresh for, and the key holds no part of the signature.
    assert 600 < await aredis.ttl(ci_seen_key(sig)) <= REPLAY_TTL.total_seconds()
    assert sig.encode() not in b"".join([k async for k in aredis.scan_iter("keyturn:ci_seen:*")])
    # A claim that acted is not released; one that failed before acting is.
    await store.release_ci_request(sig)
    assert await store.claim_ci_request(sig) is not None
    other = "v1=" + "cd" * 32
    assert await store.claim_ci_request(other) is None
    await store.release_ci_request(other)
    assert await store.claim_ci_request(other) is None


@pytest.mark.parametrize("restarts", [1, 2, 3])
async def test_a_click_survives_redis_restarting_between_loading_a_script_and_running_it(
    redis_url: str, restarts: int
) -> None:
    """Redis restarts in quick succession (routine maintenance, issue 13): the store's write scripts find
    an empty script cache more than once in one call. The click is counted once, never refused."""
    client = RestartingRedis.from_url(redis_url)
    assert isinstance(client, RestartingRedis)
    try:
        store = RequestStore(client, retention=timedelta(hours=1))
        req, _ = await store.create_or_get(make(sha="c" * 40), ORIGIN, NOW)
        client.restarts = restarts
        done = await store.add_approval(req.id, *click("U0BOB"), NOW)
        assert [a.user_id for a in done.approvals] == ["U0BOB"]
        assert client.restarts == 0
    finally:
        await client.aclose()
