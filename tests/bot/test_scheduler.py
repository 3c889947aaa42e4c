"""Timers in one process against a real redis-server, with an injected clock driving due times.

The leader lease and the tick are driven directly (``lease_step()``, ``tick()``) so every step is explicit;
tests/bot/test_scheduler_replicas.py covers real processes, APScheduler and wall-clock timing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import pytest
import redis.asyncio as aioredis

from keyturn.bot.scheduler import (
    DUE_KEY,
    INFLIGHT_KEY,
    LEADER_KEY,
    BadJob,
    JobContext,
    StaleLeader,
    Timers,
    check_fence,
    once,
    once_key,
)
from tests.fixtures import RestartingRedis

T0 = datetime(2026, 1, 5, 9, 0, 0, tzinfo=UTC)


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class Recorder:
    """Handlers that record each run; optionally fail or hang on chosen calls."""

    def __init__(self) -> None:
        self.runs: list[JobContext] = []
        self.fail_next = 0
        self.hang: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def __call__(self, ctx: JobContext) -> None:
        self.entered.set()
        if self.hang is not None:
            await self.hang.wait()
        if self.fail_next > 0:
            self.fail_next -= 1
            raise RuntimeError("handler failed")
        self.runs.append(ctx)

    def members(self) -> list[str]:
        return [f"{c.kind}:{c.request_id}" + (f":{c.n}" if c.n else "") for c in self.runs]


@pytest.fixture
async def aredis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    # A database of its own: the session's e2e bot (db 0) takes part in leader election too.
    client = aioredis.Redis.from_url(f"{redis_url}?db=7")
    yield client
    await client.aclose()


MakeTimers = Callable[..., Timers]


@pytest.fixture
def make(aredis: aioredis.Redis) -> MakeTimers:
    def build(rec: Recorder, clock: FakeClock, replica: str = "a", **kw: object) -> Timers:
        handlers = {"expire": rec, "remind": rec, "escalate": rec}
        return Timers(aredis, handlers, clock=clock, replica_id=replica, **kw)  # type: ignore[arg-type]

    return build


async def test_job_runs_once_when_due_and_not_before(make: MakeTimers) -> None:
    clock, rec = FakeClock(), Recorder()
    t = make(rec, clock)
    assert await t.lease_step()
    assert await t.schedule("expire", "req_1", T0 + timedelta(seconds=30))
    assert await t.schedule("remind", "req_1", T0 + timedelta(seconds=10), n=1)

    assert await t.tick() == 0
    clock.advance(10)
    assert await t.tick() == 1
    assert rec.members() == ["remind:req_1:1"]
    ctx = rec.runs[0]
    assert (ctx.n, ctx.due, ctx.fencing_token) == (1, T0 + timedelta(seconds=10), t.fencing_token)

    clock.advance(20)
    assert await t.tick() == 1
    assert await t.tick() == 0
    assert rec.members() == ["remind:req_1:1", "expire:req_1"]


async def test_only_the_leader_runs_jobs(make: MakeTimers) -> None:
    clock, rec_a, rec_b = FakeClock(), Recorder(), Recorder()
    a, b = make(rec_a, clock, "a"), make(rec_b, clock, "b")
    assert await a.lease_step()
    assert not await b.lease_step()
    assert (a.is_leader, b.is_leader, b.fencing_token) == (True, False, None)
    await b.schedule("expire", "req_1", T0)  # any replica may schedule

    assert await b.tick() == 0
    assert await a.tick() == 1
    assert rec_a.members() == ["expire:req_1"]
    assert rec_b.runs == []


async def test_renewal_keeps_token_and_acquisition_increments_it(
    make: MakeTimers, aredis: aioredis.Redis
) -> None:
    clock = FakeClock()
    a, b = make(Recorder(), clock, "a"), make(Recorder(), clock, "b")
    assert await a.lease_step()
    first = a.fencing_token
    assert await a.lease_step()
    assert a.fencing_token == first
    await a.stop()  # hands the lease back
    assert await aredis.get(LEADER_KEY) is None
    assert await b.lease_step()
    assert b.fencing_token is not None
    assert first is not None
    assert b.fencing_token > first

    # Redis restarted empty: the counter restarts from the server clock, still above every earlier token.
    await b.stop()
    await aredis.flushdb()
    secs, micros = await aredis.time()
    assert await a.lease_step()
    assert a.fencing_token is not None
    assert a.fencing_token > secs * 1000 + micros // 1000


async def test_paused_ex_leader_is_fenced_out(make: MakeTimers, aredis: aioredis.Redis) -> None:
    clock, rec_a, rec_b = FakeClock(), Recorder(), Recorder()
    a, b = make(rec_a, clock, "a"), make(rec_b, clock, "b")
    assert await a.lease_step()
    old = a.fencing_token
    assert old is not None
    await a.schedule("expire", "req_1", T0)
    # a "pauses" past its lease: the key lapses and b takes over, while a still believes it leads.
    await aredis.delete(LEADER_KEY)
    assert await b.lease_step()
    assert a.is_leader

    assert await a.tick() == 0  # its claim is refused in Redis
    assert not a.is_leader
    with pytest.raises(StaleLeader) as err:
        await once(aredis, once_key("req_1", "remind:1"), 60, fencing_token=old)
    assert err.value.code == "stale_leader"
    with pytest.raises(StaleLeader):
        await check_fence(aredis, old)
    assert await aredis.exists(once_key("req_1", "remind:1")) == 0

    assert await b.tick() == 1
    assert rec_b.members() == ["expire:req_1"]
    new = b.fencing_token
    assert new is not None
    await check_fence(aredis, new)
    assert await once(aredis, once_key("req_1", "remind:1"), 60, fencing_token=new)
    assert not await once(aredis, once_key("req_1", "remind:1"), 60, fencing_token=new)


async def test_new_leader_reruns_what_a_dead_leader_had_claimed(
    make: MakeTimers, aredis: aioredis.Redis
) -> None:
    clock, rec_a, rec_b = FakeClock(), Recorder(), Recorder()
    rec_a.hang = asyncio.Event()  # a's handler never finishes: a dies mid-job
    a, b = make(rec_a, clock, "a"), make(rec_b, clock, "b")
    assert await a.lease_step()
    await a.schedule("remind", "req_1", T0 - timedelta(seconds=5), n=2)
    running = asyncio.create_task(a.tick())
    await rec_a.entered.wait()
    assert await aredis.zcard(INFLIGHT_KEY) == 1
    await a.stop(grace_s=0)  # a dies mid-job: the job is cancelled, its claim stays in flight
    await running
    assert await aredis.zcard(INFLIGHT_KEY) == 1

    assert await b.lease_step()
    assert await aredis.zcard(INFLIGHT_KEY) == 0
    assert await b.tick() == 1
    assert rec_b.members() == ["remind:req_1:2"]
    assert rec_b.runs[0].due == T0 - timedelta(seconds=5)  # keeps its original due time


async def test_cancel_all_drops_pending_jobs_and_refuses_new_ones(
    make: MakeTimers, aredis: aioredis.Redis
) -> None:
    clock, rec = FakeClock(), Recorder()
    t = make(rec, clock)
    assert await t.lease_step()
    for n in (1, 2):
        await t.schedule("remind", "req_1", T0 + timedelta(seconds=n), n=n)
    await t.schedule("expire", "req_1", T0 + timedelta(seconds=3))
    await t.schedule("expire", "req_2", T0 + timedelta(seconds=3))

    assert await t.cancel_all("req_1") == 3
    assert not await t.schedule("remind", "req_1", T0 + timedelta(seconds=4), n=3)
    clock.advance(10)
    assert await t.tick() == 1
    assert rec.members() == ["expire:req_2"]
    assert await t.cancel_all("req_1") == 0  # idempotent


async def test_cancel_while_running_leaves_nothing_behind(make: MakeTimers, aredis: aioredis.Redis) -> None:
    clock, rec = FakeClock(), Recorder()
    rec.hang = asyncio.Event()
    t = make(rec, clock)
    assert await t.lease_step()
    await t.schedule("expire", "req_1", T0)
    running = asyncio.create_task(t.tick())
    await rec.entered.wait()
    assert await t.cancel_all("req_1") == 1
    rec.hang.set()
    assert await running == 1
    assert await aredis.zcard(INFLIGHT_KEY) == 0
    assert await aredis.zcard(DUE_KEY) == 0


async def test_failed_job_is_retried_with_backoff_never_dropped(
    make: MakeTimers, aredis: aioredis.Redis
) -> None:
    clock, rec = FakeClock(), Recorder()
    rec.fail_next = 2
    t = make(rec, clock, retry_base_s=1.0, retry_max_s=60.0)
    assert await t.lease_step()
    await t.schedule("expire", "req_1", T0)

    assert await t.tick() == 1  # fails; retry in 1 s
    assert await t.tick() == 0
    clock.advance(1)
    assert await t.tick() == 1  # fails again; retry in 2 s
    clock.advance(1)
    assert await t.tick() == 0
    clock.advance(1)
    assert await t.tick() == 1
    assert rec.members() == ["expire:req_1"]
    clock.advance(600)
    assert await t.tick() == 0
    # Nothing is left over once it succeeded: no claim, no attempt counter, no index entry.
    assert sorted(k.decode() if isinstance(k, bytes) else k for k in await aredis.keys("*")) == [
        "keyturn:{timers}:fence",
        "keyturn:{timers}:leader",
    ]


async def test_hung_handler_is_timed_out_and_retried(make: MakeTimers) -> None:
    clock, rec = FakeClock(), Recorder()
    rec.hang = asyncio.Event()
    t = make(rec, clock, job_timeout_s=0.05)
    assert await t.lease_step()
    await t.schedule("escalate", "req_1", T0)
    assert await t.tick() == 1
    assert rec.runs == []
    rec.hang = None
    clock.advance(1)
    assert await t.tick() == 1
    assert rec.members() == ["escalate:req_1"]


@pytest.mark.parametrize("restarts", [1, 2, 4])
async def test_a_deadline_survives_redis_restarting_between_loading_a_script_and_running_it(
    redis_url: str, restarts: int
) -> None:
    """Redis restarts in quick succession (issue 13): every timer script (schedule, lease, claim, complete)
    finds an empty script cache more than once in one call. The deadline is still scheduled, runs once,
    and leaves nothing in flight to run again."""
    client = RestartingRedis.from_url(f"{redis_url}?db=7")
    assert isinstance(client, RestartingRedis)
    clock, rec = FakeClock(), Recorder()
    completing = False

    async def expire(ctx: JobContext) -> None:
        nonlocal completing
        await rec(ctx)
        client.restarts = restarts  # the flushes meet the script that completes the job
        completing = True

    try:
        t = Timers(client, {"expire": expire}, clock=clock, replica_id="a")
        client.restarts = restarts
        assert await t.lease_step()
        client.restarts = restarts
        assert await t.schedule("expire", "req_1", T0 + timedelta(seconds=5))
        clock.advance(5)
        client.restarts = restarts
        assert await t.tick() == 1
        assert completing
        assert client.restarts == 0
        assert rec.members() == ["expire:req_1"]
        assert await client.zcard(DUE_KEY) == 0
        assert await client.zcard(INFLIGHT_KEY) == 0
        clock.advance(3600)  # past any claim lease: nothing was left to be re-queued and run again
        assert await t.lease_step()
        assert await t.tick() == 0
        assert rec.members() == ["expire:req_1"]
    finally:
        await client.flushdb()
        await client.aclose()


async def test_rescheduling_moves_the_deadline(make: MakeTimers) -> None:
    clock, rec = FakeClock(), Recorder()
    t = make(rec, clock)
    assert await t.lease_step()
    await t.schedule("expire", "req_1", T0 + timedelta(seconds=10))
    await t.schedule("expire", "req_1", T0 + timedelta(seconds=20))
    clock.advance(10)
    assert await t.tick() == 0
    clock.advance(10)
    assert await t.tick() == 1
    assert await t.tick() == 0


async def test_thousand_jobs_due_in_one_second_each_run_once(make: MakeTimers) -> None:
    clock, rec = FakeClock(), Recorder()
    t = make(rec, clock, batch_size=256)
    assert await t.lease_step()
    for start in range(0, 1000, 50):  # stays well inside the client's connection pool
        await asyncio.gather(
            *(
                t.schedule("expire", f"req_{i}", T0 + timedelta(milliseconds=i))
                for i in range(start, start + 50)
            )
        )
    clock.advance(1)
    assert await t.tick() == 1000
    members = rec.members()
    assert len(members) == 1000
    assert set(members) == {f"expire:req_{i}" for i in range(1000)}


async def test_job_of_unknown_kind_waits_for_a_replica_that_knows_it(
    make: MakeTimers, aredis: aioredis.Redis
) -> None:
    clock, rec = FakeClock(), Recorder()
    t = make(rec, clock)
    assert await t.lease_step()
    # Written by a newer replica with a kind this one lacks (version skew during a rollout).
    await aredis.zadd(DUE_KEY, {"audit:req_1": T0.timestamp() * 1000})
    assert await t.tick() == 1
    assert await aredis.zscore(DUE_KEY, "audit:req_1") is not None  # retried later, not dropped


async def test_malformed_member_is_dropped(make: MakeTimers, aredis: aioredis.Redis) -> None:
    clock, rec = FakeClock(), Recorder()
    t = make(rec, clock)
    assert await t.lease_step()
    await aredis.zadd(DUE_KEY, {"garbage": 0, "expire:req_1:0": 0})
    assert await t.tick() == 2
    assert await aredis.zcard(DUE_KEY) == 0
    assert await aredis.zcard(INFLIGHT_KEY) == 0
    assert rec.runs == []


@pytest.mark.parametrize(
    ("kind", "request_id", "due", "n"),
    [
        ("reboot", "req_1", T0, None),  # no such handler
        ("expire", "req:1", T0, None),
        ("expire", "", T0, None),
        ("remind", "req_1", T0, 0),
        ("expire", "req_1", T0.replace(tzinfo=None), None),
    ],
)
async def test_bad_jobs_are_refused(
    make: MakeTimers, kind: str, request_id: str, due: datetime, n: int | None
) -> None:
    t = make(Recorder(), FakeClock())
    with pytest.raises(BadJob) as err:
        await t.schedule(kind, request_id, due, n)
    assert err.value.code == "bad_job"


async def test_once_is_set_if_absent(aredis: aioredis.Redis) -> None:
    key = once_key("req_1", "remind:1")
    assert await once(aredis, key, 60)
    assert not await once(aredis, key, 60)
    assert 0 < await aredis.ttl(key) <= 60


async def test_started_timers_run_jobs_on_the_wall_clock(aredis: aioredis.Redis) -> None:
    ran = asyncio.Event()
    seen: list[JobContext] = []

    async def handler(ctx: JobContext) -> None:
        seen.append(ctx)
        ran.set()

    t = Timers(aredis, {"expire": handler}, clock=lambda: datetime.now(UTC), tick_s=0.05, replica_id="solo")
    await t.start()
    try:
        assert t.is_leader
        await t.schedule("expire", "req_1", datetime.now(UTC) + timedelta(milliseconds=200))
        await asyncio.wait_for(ran.wait(), 5)
        assert [c.request_id for c in seen] == ["req_1"]
    finally:
        await t.stop()
    assert not t.is_leader
    assert await aredis.get(LEADER_KEY) is None
