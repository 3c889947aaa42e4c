"""The bot's Redis client: a bounded blocking pool, bounded retries on a fresh connection, and Sentinel.

One client per process (``make_redis``), shared by the store, the change feed and the timers.

Retries (docs/reliability.md "Redis restarted"): a connection the server closed (a restart, a failover, an
idle timeout on a proxy) fails the first command sent on it. redis-py can retry a command on the same
connection object after disconnecting it, which reconnects; :class:`BoundedRetry` does so on
``ConnectionError`` and ``TimeoutError`` with exponential backoff, for at most ``redis_retry_budget`` seconds,
then lets the error through (the store turns it into ``StoreUnavailable``: fail closed, as before).

A retried command may have run once already (the answer was lost, not the request), so every write the bot
sends must be safe to repeat. The store's Lua scripts are written for that (each says why in bot/store.py);
the scheduler's are too: ``_SCHEDULE``, ``_CANCEL_ALL``, ``_RELEASE``, ``_REQUEUE_ALL``, ``_COMPLETE`` and
``_FENCE`` are idempotent as they stand, ``_LEASE`` renews a lease whose tag is ours, a repeated ``_CLAIM``
or ``_RETRY`` leaves the first claim in flight until its lease lapses and it is re-queued (late, never lost),
and a repeated ``_ONCE`` answers "already done", so an at-most-once effect stays at most once.

Sentinel (docs/configuration.md): ``KEYTURN_REDIS_SENTINELS=host:port,host:port`` with
``KEYTURN_REDIS_SENTINEL_MASTER=<name>`` asks the sentinels for the primary and follows a failover: a write
that reaches a demoted primary is refused with READONLY, which redis-py's Sentinel connection reports as a
``ConnectionError``, so it is retried against the newly discovered primary within the same budget.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from keyturn.bot.config import Settings

T = TypeVar("T")

# redis-py's own default, made explicit: a command whose answer takes longer than this fails (and the store
# turns that into a 503). Pub/sub waits (the change feed) pass their own timeout and are not bound by it.
REDIS_SOCKET_TIMEOUT = 5.0
# A connect that hangs (a black-holed address) must not eat the whole retry budget in one attempt.
REDIS_CONNECT_TIMEOUT = 2.0
# Far above what the budget allows; only a guard against a zero-delay loop.
_MAX_ATTEMPTS = 1000
# How many times one script call loads its script again on NOSCRIPT (each a restart or failover that emptied
# Redis's script cache between the load and the run) before the call counts as failed.
SCRIPT_RELOADS = 5


class ReloadingScript:
    """A Lua script run with EVALSHA that survives Redis losing its script cache (the store's, the timers').

    redis-py loads a script again once on NOSCRIPT. Redis restarting again between that load and the run
    (restarts in quick succession, a failover to a replica that never saw the script) empties the cache once
    more. NOSCRIPT means the script did not run, so running it again is always safe, whatever it writes.
    Bounded by :data:`SCRIPT_RELOADS`: a cache that never keeps the script is an outage, and the last
    ``NoScriptError`` goes to the caller (a ``RedisError``: the store answers 503, the timers retry later).
    """

    def __init__(self, client: aioredis.Redis, text: str) -> None:
        self._client = client
        self._script = client.register_script(text)

    @property
    def sha(self) -> str:
        """The script's SHA-1 (for EVALSHA inside a pipeline)."""
        return str(self._script.sha)

    async def load(self) -> None:
        """Load the script into Redis's cache (after a NOSCRIPT seen in a pipeline)."""
        await self._client.script_load(self._script.script)

    async def __call__(self, *, keys: list[Any], args: list[Any]) -> Any:
        """Run the script with ``keys`` and ``args``; its reply."""
        for attempt in range(SCRIPT_RELOADS):
            try:
                return await self._script(keys=keys, args=args)
            except NoScriptError:
                if attempt == SCRIPT_RELOADS - 1:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover


class BoundedRetry(Retry):
    """redis-py's ``Retry`` with a time budget: retry ``ConnectionError``/``TimeoutError`` with exponential
    backoff (``first`` doubling up to ``cap`` seconds) until ``budget`` seconds have passed since the first
    attempt, then raise the last error. Each attempt is itself bounded by the socket timeouts, so a call
    gives up after about ``budget`` plus one socket timeout."""

    def __init__(self, budget: float, *, first: float = 0.02, cap: float = 0.5) -> None:
        super().__init__(
            ExponentialBackoff(cap=cap, base=first),
            _MAX_ATTEMPTS,
            (RedisConnectionError, RedisTimeoutError),
        )
        self.budget = budget

    async def call_with_retry(
        self,
        do: Callable[[], Awaitable[T]],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        """Run ``do``; on a supported error call ``fail`` (which disconnects) and try again, within budget."""
        deadline = time.monotonic() + self.budget
        failures = 0
        while True:
            try:
                return await do()
            except self._supported_errors as error:
                if is_retryable is not None and not is_retryable(error):
                    raise
                failures += 1
                if with_failure_count:
                    await fail(error, failures)
                else:
                    await fail(error)
                delay = self._backoff.compute(failures)
                if failures > self._retries or time.monotonic() + delay > deadline:
                    raise error
                await asyncio.sleep(delay)


class BlockingSentinelConnectionPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """Sentinel's pool with the blocking pool's wait: when every connection is busy a caller waits up to
    ``timeout`` seconds for one (as with a plain URL) instead of failing at once."""


def parse_sentinels(value: str) -> list[tuple[str, int]]:
    """``"h1:26379,h2:26379"`` → ``[("h1", 26379), ("h2", 26379)]`` (``[v6]:port`` accepted)."""
    out: list[tuple[str, int]] = []
    for raw in value.split(","):
        item = raw.strip()
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"not host:port: {item!r}")
        out.append((host.strip("[]"), int(port)))
    return out


def make_redis(
    settings: Settings, *, socket_timeout: float = REDIS_SOCKET_TIMEOUT, max_connections: int | None = None
) -> aioredis.Redis:
    """The process's async Redis client, on a bounded blocking pool, with bounded retries.

    redis-py's default pool raises as soon as its connections are all in use; a ``BlockingConnectionPool``
    makes the caller wait for one instead, but only ``redis_pool_timeout`` seconds: then redis-py raises
    ``ConnectionError``, which the store reports as ``StoreUnavailable`` (HTTP 503), never a hang or a 500.
    Waiting for a pooled connection is not retried: a full pool is overload, and retrying would only queue.
    """
    common: dict[str, Any] = {
        "max_connections": max_connections or settings.redis_max_connections,
        "timeout": settings.redis_pool_timeout,
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": min(REDIS_CONNECT_TIMEOUT, socket_timeout),
        "health_check_interval": 30,
        "retry": BoundedRetry(settings.redis_retry_budget),
    }
    if settings.redis_sentinels:
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            parse_sentinels(settings.redis_sentinels),
            sentinel_kwargs={
                "socket_timeout": min(1.0, socket_timeout),
                "socket_connect_timeout": min(1.0, socket_timeout),
            },
        )
        pool = BlockingSentinelConnectionPool(  # type: ignore[no-untyped-call]
            settings.redis_sentinel_master,
            sentinel,
            db=settings.redis_sentinel_db,
            **common,
        )
        return aioredis.Redis.from_pool(pool)
    blocking = aioredis.BlockingConnectionPool.from_url(settings.redis_url, **common)
    return aioredis.Redis.from_pool(blocking)
