"""Durable writes (``KEYTURN_REDIS_MIN_REPLICAS``): the store answers a write only once a replica holds it.

A real primary and a real replica (redis-server on loopback ports). The replica is frozen with SIGSTOP to
stand for a replica that lags or has gone (as in the window of an asynchronous failover): a write is then
reported as failed, never as done, and succeeds once the replica acknowledges it within the budget.
docs/operations.md, "The asynchronous failover window".
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis
from ulid import ULID

from keyturn.bot import lifecycle
from keyturn.bot.models import Approval, DeployRequest, OriginEvidence, RequestIn, SlackEvidence
from keyturn.bot.ports import Refused
from keyturn.bot.store import NotReplicated, RequestStore, StoreUnavailable, record_key
from tests import harness
from tests.harness import Proc, free_port, redis_pings, start_process, wait_until

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
ORIGIN = OriginEvidence(
    kind="ci", body="e30=", timestamp="1", signature="v1=00", method="POST", path="/v1/requests"
)


def _server(workdir: Path, name: str, port: int, *extra: str) -> Proc:
    argv = [harness.redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(workdir), *extra]  # fmt: skip
    return start_process(name, argv, workdir / "logs", ready=lambda: redis_pings(port))


class Pair:
    """A primary and one replica following it."""

    def __init__(self, workdir: Path) -> None:
        self.primary_port, self.replica_port = free_port(), free_port()
        self.primary = _server(workdir, "primary", self.primary_port)
        self.replica = _server(workdir, "replica", self.replica_port, "--replicaof", "127.0.0.1",
                               str(self.primary_port))  # fmt: skip
        wait_until(self._linked, 20, "the replica to sync")

    def _linked(self) -> bool:
        with redis.Redis(port=self.primary_port) as r:
            info = r.info("replication")
            return int(info["connected_slaves"]) == 1 and info["slave0"]["state"] == "online"

    def on_replica(self, key: str) -> bool:
        with redis.Redis(port=self.replica_port) as r:
            return bool(r.exists(key))

    def freeze(self) -> None:
        """SIGSTOP the replica: connected, but it acknowledges nothing."""
        os.kill(self.replica.popen.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.replica.popen.pid, signal.SIGCONT)

    def stop(self) -> None:
        self.thaw()
        self.replica.stop()
        self.primary.stop()


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    p = Pair(tmp_path_factory.mktemp("replicas"))
    yield p
    p.stop()


@pytest.fixture
async def client(pair: Pair) -> AsyncIterator[aioredis.Redis]:
    pair.thaw()
    c = aioredis.Redis(port=pair.primary_port)
    await c.flushall()
    yield c
    await c.aclose()


def _store(c: aioredis.Redis, *, timeout: float = 0.3, budget: float = 1.0) -> RequestStore:
    return RequestStore(
        c, retention=timedelta(hours=1), min_replicas=1, replica_timeout=timeout, replica_budget=budget
    )


def _request() -> DeployRequest:
    body = RequestIn.model_validate(
        {"repo": "acme/web", "sha": "ab" * 20, "environment": "production", "workflow": "deploy.yml",
         "requester": "github:alice"}
    )  # fmt: skip
    return lifecycle.new_request(f"req_{ULID()}", body, now=NOW, ttl=timedelta(hours=1), required_approvals=2)


def _click(user: str) -> tuple[Approval, SlackEvidence]:
    return (
        Approval(user_id=user, email=None, at=NOW),
        SlackEvidence(body=f"payload=click-by-{user}", timestamp="1", signature="v0=00"),
    )


async def test_every_write_is_on_the_replica_when_the_store_answers(
    pair: Pair, client: aioredis.Redis
) -> None:
    store = _store(client)
    req, created = await store.create_or_get(_request(), ORIGIN, NOW)
    assert created
    assert pair.on_replica(record_key(req.id))
    await store.add_approval(req.id, *_click("U0BOB"), NOW)
    with redis.Redis(port=pair.replica_port) as r:
        assert r.hexists(f"{record_key(req.id)}:approvals", "U0BOB")


async def test_a_write_no_replica_acknowledges_is_reported_failed(pair: Pair, client: aioredis.Redis) -> None:
    """A frozen replica: the click is reported as not counted (the approver is told to click again), after
    the budget; it was never reported as counted while it could still be lost."""
    store = _store(client, timeout=0.2, budget=0.8)
    req, _ = await store.create_or_get(_request(), ORIGIN, NOW)
    pair.freeze()
    started = time.monotonic()
    try:
        with pytest.raises(NotReplicated) as raised:
            await store.add_approval(req.id, *_click("U0BOB"), NOW)
    finally:
        pair.thaw()
    assert isinstance(raised.value, StoreUnavailable)  # the click handler's "not recorded, click again"
    assert 0.8 <= time.monotonic() - started < 3.0
    # No failover happened, so the primary kept the write: the approver's second click is told so.
    with pytest.raises(Refused) as again:
        await store.add_approval(req.id, *_click("U0BOB"), NOW)
    assert again.value.code == "already_approved"


async def test_a_write_acknowledged_within_the_budget_succeeds(pair: Pair, client: aioredis.Redis) -> None:
    """The replica comes back after the first WAIT timed out: the write is sent again (recognised as its
    own, so counted once) and answered as done once the replica holds it."""
    store = _store(client, timeout=0.2, budget=5.0)
    req, _ = await store.create_or_get(_request(), ORIGIN, NOW)
    pair.freeze()
    threading.Timer(0.5, pair.thaw).start()
    started = time.monotonic()
    done = await store.add_approval(req.id, *_click("U0BOB"), NOW)
    assert time.monotonic() - started >= 0.4  # it waited for the replica
    assert [a.user_id for a in done.approvals] == ["U0BOB"]
    assert done.version == req.version + 1  # counted once, although sent more than once
    with redis.Redis(port=pair.replica_port) as r:
        assert r.hexists(f"{record_key(req.id)}:approvals", "U0BOB")


async def test_without_replicas_asked_for_no_wait_is_sent(pair: Pair, client: aioredis.Redis) -> None:
    """The default (0): a frozen replica does not slow a write, as on a single Redis."""
    store = RequestStore(client, retention=timedelta(hours=1))
    pair.freeze()
    try:
        started = time.monotonic()
        req, created = await store.create_or_get(_request(), ORIGIN, NOW)
        await store.add_approval(req.id, *_click("U0BOB"), NOW)
        assert created
        assert time.monotonic() - started < 0.2
    finally:
        pair.thaw()
