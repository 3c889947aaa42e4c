"""Deadline machinery (bot/scheduler.py) on a private redis-server, each figure next to its floor.

Sections (all by default; pick with ``--only``):

* ``jobstore``: why not APScheduler's RedisJobStore. Two 3.x schedulers share one store: jobs present at
  start run twice; a job added by a scheduler that then goes away is never run by the survivor.
* ``lateness``: 10,000 pending deadlines falling due over 10 s, run by a started leader (APScheduler tick
  every 0.25 s). p50/p99/max of (ran − due). Floor: the tick period's own quantization (a uniform wait in
  [0, tick), so p50 ≈ tick/2, p99 ≈ tick).
* ``memory``: Redis ``used_memory`` per pending request (an ``expire`` plus a ``remind`` deadline each).
* ``idle``: the leader's CPU while nothing is due, over a fixed window, with 10,000 deadlines pending.
* ``tick``: cost of a tick when nothing is due, against the number pending (0 … 100,000), next to a bare
  ``ZRANGEBYSCORE … LIMIT`` round trip (the floor); and the cost of claiming k due jobs.

Usage: ``.venv/bin/python bench/bench_scheduler.py [--only SECTION ...] [--pending N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
import redis.asyncio as aioredis  # noqa: E402

from keyturn.bot.scheduler import DUE_KEY, JobContext, Timers  # noqa: E402
from tests.harness import redis_server  # noqa: E402

TICK_S = 0.25


def _now() -> datetime:
    return datetime.now(UTC)


def _rid(i: int) -> str:
    # The shape of a real id: req_ + 26 Crockford base32 characters.
    return "req_01J" + f"{i:023d}"


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def _schedule_many(t: Timers, jobs: Sequence[tuple[str, str, datetime, int | None]]) -> None:
    for start in range(0, len(jobs), 64):  # inside the client's connection pool
        await asyncio.gather(*(t.schedule(k, rid, due, n) for k, rid, due, n in jobs[start : start + 64]))


# --- jobstore ----------------------------------------------------------------------------------------------

_FIRED: dict[str, int] = {}
_FIRED_LOCK = threading.Lock()


def jobstore_fired(job_id: str) -> None:
    """The job APScheduler runs (imported by reference from the store): count one execution."""
    with _FIRED_LOCK:
        _FIRED[job_id] = _FIRED.get(job_id, 0) + 1


def bench_jobstore(socket_path: str, client: redis.Redis) -> None:
    """Two BackgroundSchedulers on one RedisJobStore: count double fires, crashed threads, misses."""
    from apscheduler.jobstores.redis import RedisJobStore
    from apscheduler.schedulers.background import BackgroundScheduler

    crashes: list[str] = []
    threading.excepthook = lambda args: crashes.append(getattr(args.exc_type, "__name__", "?"))
    logging.getLogger("apscheduler").setLevel(logging.CRITICAL)

    def make() -> BackgroundScheduler:
        store = RedisJobStore(unix_socket_path=socket_path)
        return BackgroundScheduler(jobstores={"default": store}, timezone=UTC)

    n = 20
    # 1. Jobs already in the store when both replicas start (e.g. after a deploy).
    for trial in range(2):
        client.flushall()
        crashes.clear()
        seed = make()
        seed.start(paused=True)
        due = _now() + timedelta(seconds=1.5)
        for i in range(n):
            jid = f"a{trial}.{i}"
            seed.add_job(jobstore_fired, "date", run_date=due, args=[jid], id=jid, misfire_grace_time=None)
        seed.shutdown(wait=False)
        a, b = make(), make()
        a.start()
        b.start()
        time.sleep(3)
        counts = [_FIRED.get(f"a{trial}.{i}", 0) for i in range(n)]
        print(
            f"jobstore  shared store, {n} jobs present at start: {sum(counts)} executions,"
            f" {sum(1 for c in counts if c > 1)} ran twice, {sum(1 for c in counts if c == 0)} never;"
            f" scheduler threads crashed: {len(crashes)} ({', '.join(sorted(set(crashes))) or '-'})"
        )
        a.shutdown(wait=False)
        b.shutdown(wait=False)

    # 2. Replica B adds jobs and goes away; replica A, idle since start, never looks at the store again.
    client.flushall()
    a = make()
    a.start()
    time.sleep(0.3)  # A has woken, found nothing, and sleeps until told otherwise
    b = make()
    b.start(paused=True)
    due = _now() + timedelta(seconds=1)
    for i in range(n):
        b.add_job(jobstore_fired, "date", run_date=due, args=[f"b{i}"], id=f"b{i}", misfire_grace_time=None)
    b.shutdown(wait=False)
    time.sleep(3)
    ran_b = sum(_FIRED.get(f"b{i}", 0) for i in range(n))
    print(
        f"jobstore  {n} jobs added by a replica that then stopped: survivor ran {ran_b} of {n} (2 s past due)"
    )
    a.shutdown(wait=False)
    time.sleep(0.2)
    print("jobstore  => a 3.x job store cannot be shared by replicas; deadlines live in our own ZSET")


# --- lateness ----------------------------------------------------------------------------------------------


async def bench_lateness(url: str, client: redis.Redis, pending: int) -> None:
    """Run ``pending`` deadlines due over 10 s through a started leader; print lateness percentiles."""
    client.flushall()
    r = aioredis.Redis.from_url(url, max_connections=200)
    lateness: list[float] = []
    done = asyncio.Event()

    async def handler(ctx: JobContext) -> None:
        lateness.append((_now() - ctx.due).total_seconds())
        await r.incr("bench:ran")  # one Redis write, as a real handler's once-guard would do
        if len(lateness) == pending:
            done.set()

    t = Timers(r, {"expire": handler}, clock=_now, tick_s=TICK_S, replica_id="bench")
    await t.start()
    start = _now() + timedelta(seconds=pending / 1000 + 2)  # after scheduling is over, even on a busy box
    spread = 10.0
    jobs = [
        ("expire", _rid(i), start + timedelta(seconds=spread * i / pending), None) for i in range(pending)
    ]
    began = time.monotonic()
    await _schedule_many(t, jobs)
    sched_s = time.monotonic() - began
    assert _now() < start, "scheduling overran the lead time; lateness would be meaningless"
    await asyncio.wait_for(done.wait(), spread + 60)
    await t.stop()
    await r.aclose()
    p50, p99, mx = _pct(lateness, 50), _pct(lateness, 99), max(lateness)
    print(f"lateness  scheduled {pending} deadlines in {sched_s:.2f}s ({pending / sched_s:.0f}/s)")
    print(
        f"lateness  {pending} jobs due over {spread:.0f}s: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms,"
        f" max {mx * 1000:.0f} ms (target p99 <= 1000 ms)"
    )
    print(
        f"lateness  floor (tick {TICK_S * 1000:.0f} ms quantization): p50 {TICK_S / 2 * 1000:.0f} ms,"
        f" p99 {TICK_S * 0.99 * 1000:.0f} ms -> ratio p99 {p99 / (TICK_S * 0.99):.2f}"
    )
    ran = int(client.get("bench:ran") or 0)
    print(f"lateness  executions {ran} for {pending} deadlines")


# --- memory ------------------------------------------------------------------------------------------------


async def bench_memory(url: str, client: redis.Redis, pending: int) -> None:
    """``used_memory`` before and after ``pending`` requests with two deadlines each."""
    client.flushall()
    r = aioredis.Redis.from_url(url)

    async def nothing(ctx: JobContext) -> None:
        return None

    t = Timers(r, {"expire": nothing, "remind": nothing}, clock=_now, replica_id="bench")
    before = int(client.info("memory")["used_memory"])
    far = _now() + timedelta(hours=1)
    jobs: list[tuple[str, str, datetime, int | None]] = []
    for i in range(pending):
        jobs += [("expire", _rid(i), far, None), ("remind", _rid(i), far - timedelta(minutes=30), 1)]
    await _schedule_many(t, jobs)
    after = int(client.info("memory")["used_memory"])
    per = (after - before) / pending
    await r.aclose()
    # Floor: the same members in a bare ZSET (no per-request index), measured the same way.
    client.flushall()
    before2 = int(client.info("memory")["used_memory"])
    pipe = client.pipeline(transaction=False)
    for i in range(pending):
        pipe.zadd("floor:due", {f"expire:{_rid(i)}": 1, f"remind:{_rid(i)}:1": 2})
    pipe.execute()
    floor = (int(client.info("memory")["used_memory"]) - before2) / pending
    print(
        f"memory    {per:.0f} B per pending request (expire + remind); bare ZSET of the same members"
        f" {floor:.0f} B -> ratio {per / floor:.2f}"
    )


# --- idle --------------------------------------------------------------------------------------------------


async def bench_idle(url: str, client: redis.Redis, pending: int, window_s: float = 5.0) -> None:
    """Process CPU of a started leader with ``pending`` future deadlines and nothing due."""
    client.flushall()
    r = aioredis.Redis.from_url(url)

    async def nothing(ctx: JobContext) -> None:
        return None

    t = Timers(r, {"expire": nothing}, clock=_now, tick_s=TICK_S, replica_id="bench")
    far = _now() + timedelta(hours=1)
    await _schedule_many(t, [("expire", _rid(i), far, None) for i in range(pending)])
    await t.start()
    await asyncio.sleep(1)  # settle: first lease step, imports, first ticks
    redis_cpu0 = _redis_cpu(client)
    cpu0, wall0 = time.process_time(), time.monotonic()
    await asyncio.sleep(window_s)  # the measurement window itself
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    redis_cpu = _redis_cpu(client) - redis_cpu0
    await t.stop()
    await r.aclose()
    print(
        f"idle      leader CPU {cpu / wall * 100:.2f}% of one core over {wall:.1f}s"
        f" ({cpu / (wall / TICK_S) * 1e6:.0f} us per tick, {pending} pending);"
        f" redis-server {redis_cpu / wall * 100:.2f}%"
    )


def _redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


# --- tick cost ---------------------------------------------------------------------------------------------


async def _timeit(fn: Callable[[], object], runs: int) -> float:
    """Median seconds of ``await fn()`` over ``runs`` calls."""
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        await fn()  # type: ignore[misc]
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


async def bench_tick(url: str, client: redis.Redis) -> None:
    """Idle tick cost against pending count, and claim cost against due count, with their floors."""
    r = aioredis.Redis.from_url(url)
    ran = 0

    async def nothing(ctx: JobContext) -> None:
        nonlocal ran
        ran += 1

    print("tick      pending   tick(idle)   bare ZRANGEBYSCORE   ratio")
    for pending in (0, 1_000, 10_000, 100_000):
        client.flushall()
        if pending:
            far = (time.time() + 3600) * 1000
            pipe = client.pipeline(transaction=False)
            for i in range(pending):
                pipe.zadd(DUE_KEY, {f"expire:{_rid(i)}": far})
            pipe.execute()
        t = Timers(r, {"expire": nothing}, clock=_now, replica_id="bench")
        await t.lease_step()
        now_ms = str(int(time.time() * 1000))

        async def bare(now_ms: str = now_ms) -> object:
            return await r.zrangebyscore(DUE_KEY, "-inf", now_ms, start=0, num=256)

        tick_s = await _timeit(t.tick, 300)
        floor_s = await _timeit(bare, 300)
        print(
            f"tick      {pending:>7}   {tick_s * 1e6:7.0f} us   {floor_s * 1e6:12.0f} us"
            f"       {tick_s / floor_s:.2f}"
        )
        await t.stop()

    print("tick      due k (100,000 pending)   tick    per job   (second of two runs: warm connection pool)")
    for k in (1, 10, 100, 1000):
        for _attempt in range(2):
            client.flushall()
            far = (time.time() + 3600) * 1000
            pipe = client.pipeline(transaction=False)
            for i in range(100_000):
                pipe.zadd(DUE_KEY, {f"expire:{_rid(i)}": far})
            for i in range(k):
                pipe.zadd(DUE_KEY, {f"expire:{_rid(200_000 + i)}": 0})
            pipe.execute()
            t = Timers(r, {"expire": nothing}, clock=_now, replica_id="bench")
            await t.lease_step()
            t0 = time.perf_counter()
            got = await t.tick()
            el = time.perf_counter() - t0
            await t.stop()
            if got != k:
                raise RuntimeError(f"claimed {got} of {k}")
        print(f"tick      {k:>5}                     {el * 1000:6.1f} ms {el / k * 1e6:6.0f} us")
    await r.aclose()


# --- main --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run the chosen sections against a private redis-server and print their figures."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--only", nargs="*", choices=["jobstore", "lateness", "memory", "idle", "tick"], default=None
    )
    p.add_argument("--pending", type=int, default=10_000)
    a = p.parse_args(argv)
    sections = a.only or ["jobstore", "lateness", "memory", "idle", "tick"]
    with tempfile.TemporaryDirectory() as tmp, redis_server(Path(tmp)) as srv:
        client = srv.client()
        print(f"redis-server {client.info('server')['redis_version']}, tick {TICK_S * 1000:.0f} ms")
        if "jobstore" in sections:
            bench_jobstore(str(srv.socket_path), client)
        if "lateness" in sections:
            asyncio.run(bench_lateness(srv.url, client, a.pending))
        if "memory" in sections:
            asyncio.run(bench_memory(srv.url, client, a.pending))
        if "idle" in sections:
            asyncio.run(bench_idle(srv.url, client, a.pending))
        if "tick" in sections:
            asyncio.run(bench_tick(srv.url, client))
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
