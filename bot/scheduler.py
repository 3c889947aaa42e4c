"""Deadlines for pending requests (expiry, reminders, escalation), correct with several bot replicas.

Implements docs/design.md §9 "Scheduling"; the measurements behind the design are in docs/scheduling.md.

Why not APScheduler's RedisJobStore: a 3.x job store shared by several running schedulers runs a due job twice
or never (measured in ``bench/bench_scheduler.py jobstore``). So deadlines live in our own Redis structures:

* ``keyturn:{timers}:due`` — ZSET, score = due time (epoch ms), member = ``<kind>:<requestId>[:<n>]``.
* ``keyturn:{timers}:inflight`` — ZSET of claimed members, score = the claim's lease deadline (epoch ms);
  ``keyturn:{timers}:inflight_due`` (HASH member → original due ms) lets a re-queued item keep its due time.
* ``keyturn:{timers}:req:<requestId>`` — SET of the request's members, so ``cancel_all`` costs O(its jobs).
* ``keyturn:{timers}:cancelled:<requestId>`` — tombstone: once cancelled, nothing is scheduled for it again.
* ``keyturn:{timers}:leader`` / ``keyturn:{timers}:fence`` — the leader lease ``"<token>:<replica>:<nonce>"``
  and the fencing counter (INCR on every acquisition, so tokens only grow; if the counter is lost it restarts
  from the Redis server's clock in ms, above every earlier token unless leaders changed faster than 1/ms).

Every key carries the hash tag ``{timers}`` so each Lua script touches a single slot.

Exactly one replica (the lease holder) claims due members, with a Lua script that is fenced by the lease
value, so a paused ex-leader claims nothing. A claim moves at most ``batch_size`` members into the in-flight
set; completing removes them only if the claim is still the current one. A new leader first re-queues
everything left in flight by its predecessor, so a ``kill -9`` loses nothing: those jobs run late, once more.
Handlers must therefore be idempotent; effects that must happen at most once use :func:`once` with the job's
fencing token.

APScheduler (``AsyncIOScheduler``, memory job store) drives only two periodic jobs in each replica: the lease
step and the tick. The deadlines themselves never enter APScheduler.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from keyturn.bot.redisconn import ReloadingScript
from keyturn.signer.errors import KeyturnError
from keyturn.signer.words import Fact

log = logging.getLogger("keyturn.scheduler")

PREFIX = "keyturn:{timers}:"
DUE_KEY = PREFIX + "due"
INFLIGHT_KEY = PREFIX + "inflight"
INFLIGHT_DUE_KEY = PREFIX + "inflight_due"
ATTEMPTS_KEY = PREFIX + "attempts"
LEADER_KEY = PREFIX + "leader"
FENCE_KEY = PREFIX + "fence"

KIND_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
ONCE_NAME_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")

Clock = Callable[[], datetime]


class TimerError(KeyturnError):
    """A scheduling error with a stable ``code``."""

    code = "timer_error"

    def __init__(self, reason: str | None = None, /, **facts: Fact) -> None:
        # ``reason`` picks the sentence in ``keyturn.signer.words`` (none: the code's general one).
        super().__init__(facts={"reason": reason, **facts} if reason is not None else facts)


class BadJob(TimerError):
    """A job that cannot be scheduled: unknown kind, malformed request id or n, naive datetime."""

    code = "bad_job"


class StaleLeader(TimerError):
    """The fencing token no longer holds the leader lease: a newer leader exists, or the lease lapsed."""

    code = "stale_leader"


@dataclass(frozen=True)
class JobContext:
    """What a handler is told: which deadline fell due, and the fencing token it runs under."""

    kind: str
    request_id: str
    n: int | None
    due: datetime
    fencing_token: int


Handler = Callable[[JobContext], Awaitable[None]]


def member_for(kind: str, request_id: str, n: int | None = None) -> str:
    """The ZSET member naming one deadline: ``<kind>:<requestId>[:<n>]``. Raises ``BadJob`` on bad parts."""
    if not KIND_RE.fullmatch(kind):
        raise BadJob("kind", kind=repr(kind))
    if not REQUEST_ID_RE.fullmatch(request_id):
        raise BadJob("request_id")
    if n is None:
        return f"{kind}:{request_id}"
    if isinstance(n, bool) or not isinstance(n, int) or n < 1 or n > 1_000_000:
        raise BadJob("number", n=repr(n))
    return f"{kind}:{request_id}:{n}"


def parse_member(member: str) -> tuple[str, str, int | None]:
    """Inverse of :func:`member_for`. Raises ``BadJob`` for anything it would not have produced."""
    parts = member.split(":")
    if len(parts) == 2:
        kind, request_id = parts
        n: int | None = None
    elif len(parts) == 3 and parts[2].isdigit() and not parts[2].startswith("0"):
        kind, request_id, n = parts[0], parts[1], int(parts[2])
    else:
        raise BadJob("member")
    if member_for(kind, request_id, n) != member:
        raise BadJob("member")
    return kind, request_id, n


def req_key(request_id: str) -> str:
    """The SET of one request's pending members."""
    return f"{PREFIX}req:{request_id}"


def tombstone_key(request_id: str) -> str:
    """Set by ``cancel_all``: the request takes no new deadlines."""
    return f"{PREFIX}cancelled:{request_id}"


def once_key(request_id: str, name: str) -> str:
    """A key for :func:`once`, e.g. ``once_key(rid, "remind:3")``; in the ``{timers}`` slot so the fence
    check and the set-if-absent are one atomic script."""
    if not REQUEST_ID_RE.fullmatch(request_id) or not ONCE_NAME_RE.fullmatch(name):
        raise BadJob("once_key")
    return f"{PREFIX}once:{request_id}:{name}"


def _ms(dt: datetime) -> int:
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise BadJob("naive")
    return round(dt.timestamp() * 1000)


def _from_ms(ms: float) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# --- Lua scripts ---------------------------------------------------------------------------------------
# Each returns plain values; every script that acts for the leader first compares the lease value.

# KEYS: due, reqset, tombstone. ARGV: due_ms, member.
_SCHEDULE = """
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[2])
return 1
"""

# KEYS: reqset, due, inflight, inflight_due, attempts, tombstone. ARGV: tombstone_ttl_s.
_CANCEL_ALL = """
local ms = redis.call('SMEMBERS', KEYS[1])
for _, m in ipairs(ms) do
  redis.call('ZREM', KEYS[2], m)
  redis.call('ZREM', KEYS[3], m)
  redis.call('HDEL', KEYS[4], m)
  redis.call('HDEL', KEYS[5], m)
end
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[6], '1', 'EX', ARGV[1])
return #ms
"""

# Acquire if free, renew if ours; always return the current holder's value.
# KEYS: leader, fence. ARGV: tag ("<replica>:<nonce>"), lease_ms.
_LEASE = """
local cur = redis.call('GET', KEYS[1])
if cur then
  local sep = string.find(cur, ':', 1, true)
  if sep and string.sub(cur, sep + 1) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
  end
  return cur
end
if redis.call('EXISTS', KEYS[2]) == 0 then
  -- A lost counter (Redis restarted empty) restarts above every earlier token: the server clock in ms.
  local t = redis.call('TIME')
  redis.call('SET', KEYS[2], tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
end
local v = redis.call('INCR', KEYS[2]) .. ':' .. ARGV[1]
redis.call('SET', KEYS[1], v, 'PX', ARGV[2])
return v
"""

# KEYS: leader. ARGV: lease value.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_REQUEUE_FN = """
local function requeue(m, fallback)
  local d = redis.call('HGET', KEYS[4], m)
  redis.call('ZREM', KEYS[3], m)
  redis.call('HDEL', KEYS[4], m)
  redis.call('ZADD', KEYS[2], 'NX', d or fallback, m)
end
"""

# Re-queue everything in flight (a new leader's first act: its predecessor's claims are void).
# KEYS: leader, due, inflight, inflight_due. ARGV: lease value, limit, now_ms.
_REQUEUE_ALL = (
    _REQUEUE_FN
    + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local ms = redis.call('ZRANGE', KEYS[3], 0, tonumber(ARGV[2]) - 1)
for _, m in ipairs(ms) do requeue(m, ARGV[3]) end
return #ms
"""
)

# Claim up to `limit` due members. Re-queues first any claim whose lease passed (a stuck job).
# KEYS: leader, due, inflight, inflight_due. ARGV: lease value, now_ms, claim_lease_until_ms, limit.
_CLAIM = (
    _REQUEUE_FN
    + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local stale = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[2], 'LIMIT', 0, ARGV[4])
for _, m in ipairs(stale) do requeue(m, ARGV[2]) end
local items = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[2], 'WITHSCORES', 'LIMIT', 0, ARGV[4])
for i = 1, #items, 2 do
  redis.call('ZREM', KEYS[2], items[i])
  redis.call('ZADD', KEYS[3], ARGV[3], items[i])
  redis.call('HSET', KEYS[4], items[i], items[i + 1])
end
return items
"""
)

# Done: drop the claim if it is still ours (same lease deadline), and the request's index entry unless the
# member was scheduled again meanwhile.
# KEYS: inflight, inflight_due, attempts, reqset, due. ARGV: member, claim_lease_until_ms.
_COMPLETE = """
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if (not s) or tonumber(s) ~= tonumber(ARGV[2]) then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
if not redis.call('ZSCORE', KEYS[5], ARGV[1]) then redis.call('SREM', KEYS[4], ARGV[1]) end
return 1
"""

# Failed: put the claim back with exponential backoff (capped); never drop it.
# KEYS: inflight, inflight_due, attempts, due. ARGV: member, claim_lease_until_ms, now_ms, base_ms, max_ms.
_RETRY = """
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if (not s) or tonumber(s) ~= tonumber(ARGV[2]) then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
local a = redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
local delay = math.min(tonumber(ARGV[4]) * 2 ^ math.min(a - 1, 30), tonumber(ARGV[5]))
redis.call('ZADD', KEYS[4], 'NX', tonumber(ARGV[3]) + delay, ARGV[1])
return a
"""

# KEYS: leader, key. ARGV: fencing token ('' = unfenced), ttl_s.
_ONCE = """
if ARGV[1] ~= '' then
  local cur = redis.call('GET', KEYS[1])
  if (not cur) or string.match(cur, '^(%d+):') ~= ARGV[1] then return -1 end
end
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[2]) then return 1 end
return 0
"""

# KEYS: leader. ARGV: fencing token.
_FENCE = """
local cur = redis.call('GET', KEYS[1])
if cur and string.match(cur, '^(%d+):') == ARGV[1] then return 1 end
return 0
"""


async def once(redis: aioredis.Redis, key: str, ttl_s: int, *, fencing_token: int | None = None) -> bool:
    """Set ``key`` if absent (for ``ttl_s`` seconds); True only for the one caller that set it.

    Use it right before an effect that must happen at most once (reminder n, an escalation DM). With
    ``fencing_token`` the set happens only while that token still holds the leader lease — otherwise
    ``StaleLeader`` is raised and nothing is set — so a paused ex-leader cannot act. Build fenced keys with
    :func:`once_key` (same Redis slot as the lease).
    """
    if ttl_s < 1:
        raise BadJob("ttl")
    token = "" if fencing_token is None else str(int(fencing_token))
    result = await redis.eval(_ONCE, 2, LEADER_KEY, key, token, str(int(ttl_s)))
    if int(result) < 0:
        raise StaleLeader("fence")
    return int(result) == 1


async def check_fence(redis: aioredis.Redis, fencing_token: int) -> None:
    """Raise ``StaleLeader`` unless ``fencing_token`` still holds the leader lease."""
    ok = await redis.eval(_FENCE, 1, LEADER_KEY, str(int(fencing_token)))
    if int(ok) != 1:
        raise StaleLeader("fence")


class Timers:
    """Durable deadlines in Redis, run by whichever replica holds the leader lease.

    Every replica constructs one (same ``handlers``), calls ``start()`` once its event loop runs and
    ``stop()`` on shutdown. Any replica may ``schedule`` and ``cancel_all``; only the leader runs handlers.
    Delivery is at least once (exactly once while the leader lives); handlers must be idempotent.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        handlers: Mapping[str, Handler],
        *,
        clock: Clock,
        tick_s: float = 0.25,
        lease_s: float = 5.0,
        replica_id: str,
        batch_size: int = 256,
        concurrency: int = 32,
        job_timeout_s: float = 30.0,
        retry_base_s: float = 1.0,
        retry_max_s: float = 300.0,
        cancelled_ttl_s: int = 86_400,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """Configure; nothing touches Redis until ``start()`` (or ``lease_step()``/``tick()`` in tests).

        ``tick_s``: how often the leader looks for due deadlines (lateness is at most about this).
        ``lease_s``: leader lease; renewed every ``lease_s / 3``, so a dead leader is replaced within
        about ``lease_s * 4 / 3``. ``job_timeout_s``: a handler running longer is cancelled and retried.
        ``cancelled_ttl_s``: how long ``cancel_all`` keeps refusing new deadlines for the request.
        ``concurrency``: handlers run at once; keep it well below the Redis client's connection pool
        (redis-py's asyncio pool refuses, rather than waits, past ``max_connections``, default 100).
        """
        for name in handlers:
            if not KIND_RE.fullmatch(name):
                raise BadJob("kind", kind=repr(name))
        if not (0 < tick_s <= 60 and 0.3 <= lease_s <= 600 and job_timeout_s > 0):
            raise ValueError("tick_s, lease_s or job_timeout_s out of range")
        if not (1 <= batch_size <= 10_000 and concurrency >= 1):
            raise ValueError("batch_size or concurrency out of range")
        if ":" in replica_id or not replica_id:
            raise ValueError("replica_id must be non-empty and contain no ':'")
        self._handlers = dict(handlers)
        self._clock = clock
        self._tick_s = tick_s
        self._lease_s = lease_s
        self._renew_s = lease_s / 3
        self._replica_id = replica_id
        # The nonce keeps two replicas misconfigured with the same id from both believing they lead.
        self._tag = f"{replica_id}:{secrets.token_hex(4)}"
        self._batch_size = batch_size
        self._concurrency = concurrency
        self._jobs: set[asyncio.Task[None]] = set()
        self._job_timeout_s = job_timeout_s
        # A claim outlives a handler's timeout, so a live leader's claims are only re-queued when stuck.
        self._claim_lease_ms = int((job_timeout_s * 2 + lease_s) * 1000)
        self._retry_base_ms = int(retry_base_s * 1000)
        self._retry_max_ms = int(retry_max_s * 1000)
        self._cancelled_ttl_s = int(cancelled_ttl_s)
        self._monotonic = monotonic

        self._lease_value: str | None = None
        self._token: int | None = None
        self._lease_valid_until = 0.0
        self._scheduler: AsyncIOScheduler | None = None
        self._tick_task: asyncio.Task[int] | None = None
        self._lease_lock = asyncio.Lock()

        self._s_schedule = ReloadingScript(redis, _SCHEDULE)
        self._s_cancel = ReloadingScript(redis, _CANCEL_ALL)
        self._s_lease = ReloadingScript(redis, _LEASE)
        self._s_release = ReloadingScript(redis, _RELEASE)
        self._s_requeue_all = ReloadingScript(redis, _REQUEUE_ALL)
        self._s_claim = ReloadingScript(redis, _CLAIM)
        self._s_complete = ReloadingScript(redis, _COMPLETE)
        self._s_retry = ReloadingScript(redis, _RETRY)

    # --- public interface ----------------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        """True while this replica holds the lease (by its own conservative local reckoning)."""
        return self._lease_value is not None and self._monotonic() < self._lease_valid_until

    @property
    def fencing_token(self) -> int | None:
        """The token of the lease this replica holds, or None."""
        return self._token if self.is_leader else None

    async def schedule(self, kind: str, request_id: str, due: datetime, n: int | None = None) -> bool:
        """Make deadline ``kind`` (number ``n``) of ``request_id`` fall due at ``due``.

        Scheduling the same (kind, request, n) again moves it. Returns False (and schedules nothing) if the
        request was cancelled with ``cancel_all``. Raises ``BadJob`` for an unknown kind or bad input.
        """
        if kind not in self._handlers:
            raise BadJob("no_handler", kind=repr(kind))
        member = member_for(kind, request_id, n)
        due_ms = _ms(due)
        done = await self._s_schedule(
            keys=[DUE_KEY, req_key(request_id), tombstone_key(request_id)], args=[due_ms, member]
        )
        return int(done) == 1

    async def cancel_all(self, request_id: str) -> int:
        """Drop every remaining deadline of ``request_id`` (decided, cancelled, expired); refuse new ones.

        Returns how many were dropped. A handler already running for it finishes; handlers check the
        request's state, so that run changes nothing.
        """
        member_for("x", request_id)  # validates the id
        dropped = await self._s_cancel(
            keys=[
                req_key(request_id),
                DUE_KEY,
                INFLIGHT_KEY,
                INFLIGHT_DUE_KEY,
                ATTEMPTS_KEY,
                tombstone_key(request_id),
            ],
            args=[self._cancelled_ttl_s],
        )
        return int(dropped)

    async def start(self) -> None:
        """Take part in leader election and, while leader, run due deadlines. Needs a running event loop."""
        if self._scheduler is not None:
            return
        try:
            await self.lease_step()
        except Exception:  # Redis unreachable at start: keep the process up, the lease job retries.
            log.exception("timers: first lease attempt failed")
        # Both jobs must run late rather than never (misfire_grace_time=None): a late lease step or tick
        # still does the right thing, since each reads the current state from Redis. coalesce=True folds a
        # backlog of missed runs into one; max_instances=1 keeps a slow Redis from piling up lease steps.
        # APScheduler logs every run of every job at INFO (8 lines a second here); keep its warnings only,
        # unless the operator configured those loggers explicitly.
        for name in ("apscheduler.executors.default", "apscheduler.scheduler"):
            lib_log = logging.getLogger(name)
            if lib_log.level == logging.NOTSET:
                lib_log.setLevel(logging.WARNING)
        sched = AsyncIOScheduler(
            timezone=UTC, job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None}
        )
        sched.add_job(
            self._lease_job,
            "interval",
            seconds=self._renew_s,
            id="keyturn-timers-lease",
            replace_existing=True,
        )
        sched.add_job(
            self._tick_job, "interval", seconds=self._tick_s, id="keyturn-timers-tick", replace_existing=True
        )
        sched.start()
        self._scheduler = sched

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop ticking, give running jobs ``grace_s`` to finish, and hand the lease back.

        Jobs still running after the grace are cancelled; their claims stay in flight and the next leader
        re-queues them, so they run again rather than vanish.
        """
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None
        pending = [t for t in (self._tick_task, *self._jobs) if t is not None and not t.done()]
        if pending:
            _, late = await asyncio.wait(pending, timeout=grace_s)
            for task in late:
                task.cancel()
            if late:
                # Bounded: a task cancelled inside a redis-py call has been seen never to finish.
                await asyncio.wait(late, timeout=1.0)
        value = self._lease_value
        self._lease_value = None
        self._token = None
        if value is not None:
            # Releasing lets another replica take over at its next lease step instead of after lease_s.
            try:
                await self._s_release(keys=[LEADER_KEY], args=[value])
            except Exception:
                log.warning("timers: could not release the leader lease; it lapses in %.1fs", self._lease_s)

    # --- the two periodic steps (public so tests and the bench can drive them directly) -----------------

    async def lease_step(self) -> bool:
        """Acquire the lease if free, renew it if ours. Returns whether this replica leads afterwards."""
        async with self._lease_lock:
            started = self._monotonic()
            value = _text(await self._s_lease(keys=[LEADER_KEY, FENCE_KEY], args=[self._tag, self._lease_ms]))
            token_s, _, tag = value.partition(":")
            if tag != self._tag:
                if self._lease_value is not None:
                    log.warning("timers: %s lost the leader lease", self._replica_id)
                self._lease_value = None
                self._token = None
                return False
            if value != self._lease_value:
                # A new term: every claim in flight belongs to a previous leader, who may be dead.
                requeued = await self._requeue_all(value)
                log.info(
                    "timers: %s is leader (token %s), re-queued %d in-flight",
                    self._replica_id,
                    token_s,
                    requeued,
                )
                self._lease_value = value
                self._token = int(token_s)
            # Count validity from before the request: the server's expiry is later than this, never earlier.
            self._lease_valid_until = started + self._lease_s * 0.9
            return True

    async def tick(self, *, wait: bool = True) -> int:
        """If leader, run everything due now. Returns how many jobs were claimed.

        Claims never exceed free handler slots (``concurrency``): a claimed job is always running, and a
        slow handler delays nothing but itself. While the last claim came back full the tick keeps going,
        claiming again as slots free up, so a burst of due jobs drains without waiting for the next tick.
        ``wait=True`` (tests, the bench) returns only once the claimed jobs finished.
        """
        started: list[asyncio.Task[None]] = []
        while True:
            value, token = self._lease_value, self._token
            if value is None or token is None or not self.is_leader:
                break
            room = min(self._batch_size, self._concurrency - len(self._jobs))
            if room <= 0:
                await asyncio.wait(list(self._jobs), return_when=asyncio.FIRST_COMPLETED)
                continue
            now_ms = _ms(self._clock())
            until_ms = now_ms + self._claim_lease_ms
            items = await self._s_claim(
                keys=[LEADER_KEY, DUE_KEY, INFLIGHT_KEY, INFLIGHT_DUE_KEY],
                args=[value, now_ms, until_ms, room],
            )
            if not isinstance(items, list):  # -1: fenced out, someone else leads now
                log.warning("timers: %s was fenced out of a claim", self._replica_id)
                self._lease_value = None
                self._token = None
                break
            for i in range(0, len(items), 2):
                job = asyncio.create_task(
                    self._run_one(_text(items[i]), float(items[i + 1]), until_ms, token)
                )
                self._jobs.add(job)
                job.add_done_callback(self._jobs.discard)
                started.append(job)
            if len(items) // 2 < room:
                break
        if wait and started:
            await asyncio.wait(started)
        return len(started)

    async def drain(self) -> None:
        """Wait until no job started by this replica is running (tests and the bench)."""
        while self._jobs:
            await asyncio.wait(list(self._jobs))

    # --- internals -----------------------------------------------------------------------------------

    @property
    def _lease_ms(self) -> int:
        return int(self._lease_s * 1000)

    async def _requeue_all(self, value: str) -> int:
        total = 0
        while True:
            n = int(
                await self._s_requeue_all(
                    keys=[LEADER_KEY, DUE_KEY, INFLIGHT_KEY, INFLIGHT_DUE_KEY],
                    args=[value, 1000, _ms(self._clock())],
                )
            )
            if n <= 0:
                return total
            total += n

    async def _lease_job(self) -> None:
        try:
            await self.lease_step()
        except Exception as exc:  # Redis trouble: leadership lapses by itself via _lease_valid_until.
            log.warning("timers: lease step failed: %s", type(exc).__name__)

    async def _tick_job(self) -> None:
        # The claim runs as its own task so a slow Redis never makes APScheduler skip (and log) runs.
        if self._tick_task is not None and not self._tick_task.done():
            return
        if not self.is_leader:
            return
        self._tick_task = asyncio.create_task(self._guarded_tick())

    async def _guarded_tick(self) -> int:
        try:
            return await self.tick(wait=False)
        except Exception as exc:
            log.warning("timers: tick failed: %s", type(exc).__name__)
            return 0

    async def _run_one(self, member: str, due_ms: float, until_ms: int, token: int) -> None:
        try:
            await self._run_claimed(member, due_ms, until_ms, token)
        except Exception as exc:  # Redis trouble while completing: the claim lapses and is re-queued.
            log.warning("timers: %s: bookkeeping failed (%s)", member, type(exc).__name__)

    async def _run_claimed(self, member: str, due_ms: float, until_ms: int, token: int) -> None:
        try:
            kind, request_id, n = parse_member(member)
        except BadJob:
            log.error("timers: dropping malformed job member")
            await self._complete(member, "", until_ms)
            return
        handler = self._handlers.get(kind)
        try:
            if handler is None:
                raise BadJob("no_handler", kind=repr(kind))
            ctx = JobContext(kind, request_id, n, _from_ms(due_ms), token)
            await asyncio.wait_for(handler(ctx), self._job_timeout_s)
        except StaleLeader:
            # Our term ended mid-job; the new leader re-queued this claim and runs it.
            log.info("timers: %s stopped: fenced out", member)
            return
        except Exception as exc:
            attempts = await self._s_retry(
                keys=[INFLIGHT_KEY, INFLIGHT_DUE_KEY, ATTEMPTS_KEY, DUE_KEY],
                args=[member, until_ms, _ms(self._clock()), self._retry_base_ms, self._retry_max_ms],
            )
            log.warning(
                "timers: %s failed (%s), attempt %s, will retry", member, type(exc).__name__, attempts
            )
            return
        await self._complete(member, request_id, until_ms)

    async def _complete(self, member: str, request_id: str, until_ms: int) -> None:
        reqset = req_key(request_id) if request_id else PREFIX + "req:"
        await self._s_complete(
            keys=[INFLIGHT_KEY, INFLIGHT_DUE_KEY, ATTEMPTS_KEY, reqset, DUE_KEY], args=[member, until_ms]
        )
