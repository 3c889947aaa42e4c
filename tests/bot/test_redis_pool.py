"""The bot's Redis client (``keyturn.bot.redisconn.make_redis``) on a real redis-server, through the CI API's routes.

* When every pooled connection is busy, a request waits at most ``KEYTURN_REDIS_POOL_TIMEOUT`` and then gets a
  clean 503 ``store_unavailable`` (redis-py's default pool would raise at once; an unbounded one would hang).
* A long-poll outlives the client's socket timeout: the change feed's pub/sub wait is not cut off by it, so a
  quiet ``?wait=N`` ends after N seconds with the unchanged request, and a late change still wakes it at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from starlette.applications import Starlette
from ulid import ULID

from keyturn.bot import lifecycle
from keyturn.bot.api import Api
from keyturn.bot.config import Settings
from keyturn.bot.metrics import Metrics
from keyturn.bot.models import Approval, DeployRequest, OriginEvidence, RequestIn, SlackEvidence
from keyturn.bot.redisconn import make_redis
from keyturn.bot.store import ChangeFeed, RequestStore

SHA = "4f8a2cd91ef7a2c7f3a5f0aa12d93b33f2d40e17"
ORIGIN = OriginEvidence(
    kind="ci", body="e30=", timestamp="1", signature="v1=00", method="POST", path="/v1/requests"
)


def auth() -> dict[str, str]:
    """Plausible CI signature headers (fresh, well-formed), which the bot's cheap pre-check lets through to
    the (accepting) signer."""
    return {"X-Keyturn-Timestamp": str(int(time.time())), "X-Keyturn-Signature": "v1=" + "0" * 64}


SOCKET_TIMEOUT = 1.0  # production uses 5 s; the mechanism is the same, the test is 5x faster


class AcceptingSigner:
    """Accepts every CI signature: these tests are about Redis, not authentication."""

    async def check_ci(self, method: str, path: str, body: bytes, timestamp: str, signature: str) -> None:
        return None

    async def keys(self) -> dict[str, Any]:
        return {"keys": []}

    async def checkpoint(self) -> dict[str, Any]:
        return {}

    async def health(self) -> Any:
        return None


@dataclass
class Bot:
    http: httpx.AsyncClient
    redis: aioredis.Redis
    store: RequestStore
    feed: ChangeFeed


def settings(redis_url: str, **over: Any) -> Settings:
    return Settings(dev_mode=True, redis_url=redis_url, **over)


@pytest.fixture
async def bot(redis_url: str) -> AsyncIterator[Bot]:
    client = make_redis(
        settings(redis_url, redis_max_connections=8, redis_pool_timeout=0.5), socket_timeout=SOCKET_TIMEOUT
    )
    store = RequestStore(client, retention=timedelta(hours=1))
    feed = ChangeFeed(client)
    await feed.start()
    # The status and long-poll routes never reach the approval service.
    api = Api(None, store, AcceptingSigner(), feed, Metrics(), base_url="http://bot.test")  # type: ignore[arg-type]
    app = Starlette(routes=api.routes())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bot.test") as http:
        yield Bot(http, client, store, feed)
    await feed.stop()
    await client.aclose()


async def pending_request(store: RequestStore) -> DeployRequest:
    body = RequestIn.model_validate(
        {"repo": "acme/web", "sha": SHA, "environment": "production", "workflow": "deploy.yml",
         "requester": "github:alice"}
    )  # fmt: skip
    now = datetime.now(UTC)
    req = lifecycle.new_request(
        f"req_{ULID()}", body, now=now, ttl=timedelta(minutes=30), required_approvals=2
    )
    stored, _ = await store.create_or_get(req, ORIGIN, now)
    return stored


def test_the_pool_is_bounded_and_blocking() -> None:
    client = make_redis(settings("redis://127.0.0.1:1/0"))
    pool = client.connection_pool
    assert isinstance(pool, aioredis.BlockingConnectionPool)
    assert (pool.max_connections, pool.timeout) == (64, 5.0)  # the documented defaults
    assert pool.connection_kwargs["socket_timeout"] == 5.0


async def test_an_exhausted_pool_is_a_prompt_503_then_recovers(bot: Bot) -> None:
    req = await pending_request(bot.store)

    # Occupy every connection the feed does not hold: blocking pops on a key nobody pushes to.
    async def hold(i: int) -> None:
        await bot.redis.blpop([f"nothing:{i}"], timeout=0.8)

    holders = [asyncio.create_task(hold(i)) for i in range(7)]
    await asyncio.sleep(0.1)  # let them take their connections (a pop that returns early only weakens this)
    started = time.monotonic()
    resp = await bot.http.get(f"/v1/requests/{req.id}", headers=auth())
    waited = time.monotonic() - started
    assert resp.status_code == 503, resp.text
    assert resp.json()["error"] == "store_unavailable"
    assert 0.4 <= waited < 3.0  # waited for a connection, for the pool timeout only
    await asyncio.gather(*holders)
    resp = await bot.http.get(f"/v1/requests/{req.id}", headers=auth())
    assert resp.status_code == 200
    assert resp.json()["requestId"] == req.id


async def test_a_quiet_long_poll_outlives_the_socket_timeout(
    bot: Bot, caplog: pytest.LogCaptureFixture
) -> None:
    req = await pending_request(bot.store)
    caplog.set_level(logging.WARNING, logger="keyturn")
    wait = int(SOCKET_TIMEOUT * 2)
    started = time.monotonic()
    resp = await bot.http.get(f"/v1/requests/{req.id}", params={"wait": wait}, headers=auth())
    assert resp.status_code == 200, resp.text
    assert resp.json()["version"] == req.version
    assert time.monotonic() - started >= wait - 0.05

    # A change arriving after the socket timeout has passed still wakes the waiter promptly.
    async def approve_later() -> float:
        await asyncio.sleep(SOCKET_TIMEOUT * 1.5)  # the delay under test, not synchronization
        approval = Approval(user_id="U0BOB", email=None, at=datetime.now(UTC))
        evidence = SlackEvidence(body="payload=x", timestamp="1", signature="v0=00")
        await bot.store.add_approval(req.id, approval, evidence, datetime.now(UTC))
        return time.monotonic()

    later = asyncio.create_task(approve_later())
    resp = await bot.http.get(f"/v1/requests/{req.id}", params={"wait": 30}, headers=auth())
    woke = time.monotonic()
    changed_at = await later
    assert resp.json()["approvalsCount"] == 1
    assert woke - changed_at < 1.0  # woken by the feed, not by the 10 s safety re-read
    assert not [r for r in caplog.records if "lost its subscription" in r.getMessage()]


async def test_replay_guard_with_redis_down_is_503_and_accepts_nothing() -> None:
    """A create is remembered in Redis before anything is done; with Redis unreachable it cannot be, so the
    answer is 503 ``store_unavailable`` (fail closed), never an unguarded create."""
    client = make_redis(settings("redis://127.0.0.1:1/0", redis_pool_timeout=0.5), socket_timeout=0.5)
    store = RequestStore(client, retention=timedelta(hours=1))
    # The approval service is never reached: the replay claim comes first.
    api = Api(None, store, AcceptingSigner(), ChangeFeed(client), Metrics(), base_url="http://bot.test")  # type: ignore[arg-type]
    app = Starlette(routes=api.routes())
    body = (
        b'{"repo":"acme/web","sha":"' + SHA.encode() + b'","environment":"production",'
        b'"workflow":"deploy.yml","requester":"github:alice"}'
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bot.test") as http:
        resp = await http.post("/v1/requests", content=body, headers=auth())
    await client.aclose()
    assert resp.status_code == 503, resp.text
    assert resp.json()["error"] == "store_unavailable"
