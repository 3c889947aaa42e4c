"""Timers across real processes on one real redis-server: replicas, kill -9, full stop and restart.

Each replica is this module run as a worker (``python -m tests.bot.test_scheduler_replicas``): it runs
``Timers`` with APScheduler on the wall clock and handlers that record every run and, guarded by a fenced
``once``, every effect. Tests wait on those records with BLPOP (an event), never on fixed sleeps.
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import json
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from keyturn.bot.scheduler import DUE_KEY, LEADER_KEY, JobContext, Timers, once, once_key
from tests.harness import Proc, start_process, wait_until

RUNS = "keyturn-test:runs"  # every handler run: member|replica|token|due_ms|ran_ms
EFFECTS = "keyturn-test:effects"  # effects that passed the fenced once guard: member
STARTED = "keyturn-test:started"  # members whose hanging handler began
READY = "keyturn-test:ready:"
CMD = "keyturn-test:cmd:"
KINDS = ("expire", "remind", "escalate", "hang")
ISOLATED_DB = 7  # the redis_url fixture flushes every database before and after each test


# --- the worker --------------------------------------------------------------------------------------------


async def _worker(url: str, replica: str, tick_s: float, lease_s: float, hang: bool) -> None:
    r = aioredis.Redis.from_url(url)

    async def record(ctx: JobContext) -> None:
        member = f"{ctx.kind}:{ctx.request_id}" + (f":{ctx.n}" if ctx.n else "")
        if ctx.kind == "hang" and hang:
            await r.rpush(STARTED, member)
            await asyncio.sleep(3600)
        ran_ms = int(time.time() * 1000)
        due_ms = int(ctx.due.timestamp() * 1000)
        await r.rpush(RUNS, f"{member}|{replica}|{ctx.fencing_token}|{due_ms}|{ran_ms}")
        key = once_key(ctx.request_id, f"{ctx.kind}.{ctx.n or 0}")
        if await once(r, key, 3600, fencing_token=ctx.fencing_token):
            await r.rpush(EFFECTS, member)

    timers = Timers(
        r,
        dict.fromkeys(KINDS, record),
        clock=lambda: datetime.now(UTC),
        tick_s=tick_s,
        lease_s=lease_s,
        replica_id=replica,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await timers.start()
    await r.set(READY + replica, "1")

    async def commands() -> None:
        # Lets a test ask this replica to schedule, as the approval flow in this process would. Polls for
        # the stop flag instead of being cancelled: cancelling a blocking BLPOP can hang redis-py's client.
        while not stop.is_set():
            item = await r.blpop([CMD + replica], timeout=0.2)
            if item is None:
                continue
            c = json.loads(item[1])
            due = datetime.fromtimestamp(c["due_ms"] / 1000, tz=UTC)
            await timers.schedule(c["kind"], c["request_id"], due, c.get("n"))

    cmd_task = asyncio.create_task(commands())
    await stop.wait()
    await cmd_task
    await timers.stop()
    await r.aclose()


def main() -> int:
    """Run one replica until SIGTERM."""
    p = argparse.ArgumentParser()
    p.add_argument("--redis", required=True)
    p.add_argument("--replica", required=True)
    p.add_argument("--tick", type=float, default=0.25)
    p.add_argument("--lease", type=float, default=5.0)
    p.add_argument("--hang", action="store_true", help="jobs of kind 'hang' never finish here")
    a = p.parse_args()
    faulthandler.register(signal.SIGUSR1)  # a hung replica's stacks, on demand, in its log
    asyncio.run(_worker(a.redis, a.replica, a.tick, a.lease, a.hang))
    return 0


# --- test helpers ------------------------------------------------------------------------------------------


@dataclass
class Run:
    member: str
    replica: str
    token: int
    due_ms: int
    ran_ms: int

    @classmethod
    def parse(cls, raw: bytes | str) -> Run:
        text = raw.decode() if isinstance(raw, bytes) else raw
        m, rep, tok, due, ran = text.split("|")
        return cls(m, rep, int(tok), int(due), int(ran))


def start_replica(
    name: str, redis_url: str, log_dir: Path, client: redis.Redis, *, lease: float = 5.0, hang: bool = False
) -> Proc:
    argv = [
        sys.executable,
        "-m",
        "tests.bot.test_scheduler_replicas",
        "--redis",
        redis_url,
        "--replica",
        name,
    ]
    argv += ["--lease", str(lease)] + (["--hang"] if hang else [])
    return start_process(f"replica-{name}", argv, log_dir, ready=lambda: bool(client.exists(READY + name)))


def leader_of(client: redis.Redis) -> str | None:
    value = client.get(LEADER_KEY)
    if value is None:
        return None
    text = value.decode() if isinstance(value, bytes) else str(value)
    return text.split(":")[1]


def collect(client: redis.Redis, key: str, count: int, timeout: float) -> list[bytes]:
    """Pop ``count`` records from ``key`` as they arrive, failing after ``timeout`` seconds in all."""
    out: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(out) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"only {len(out)} of {count} records on {key}")
        # Short blocking reads: redis-py 8's default socket timeout (5 s) would cut a longer BLPOP.
        item = client.blpop([key], timeout=min(max(left, 0.01), 1.0))
        if item is not None:
            raw = item[1]
            out.append(raw if isinstance(raw, bytes) else raw.encode())
    return out


def now_ms() -> int:
    return int(time.time() * 1000)


def send_schedule(client: redis.Redis, replica: str, kind: str, request_id: str, due_ms: int) -> None:
    client.rpush(CMD + replica, json.dumps({"kind": kind, "request_id": request_id, "due_ms": due_ms}))


@pytest.fixture
def turl(redis_url: str) -> str:
    """The test's Redis in a database of its own: the session's e2e bot (db 0) runs timers too."""
    return f"{redis_url}?db={ISOLATED_DB}"


@pytest.fixture
def tclient(turl: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(turl)
    yield client
    client.close()


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for p in started:
        p.stop()


async def schedule_direct(redis_url: str, jobs: list[tuple[str, str, datetime]]) -> None:
    """Schedule from the test process, through a Timers that never starts (a replica that does not lead)."""
    r = aioredis.Redis.from_url(redis_url)

    async def nothing(ctx: JobContext) -> None:
        return None

    t = Timers(r, dict.fromkeys(KINDS, nothing), clock=lambda: datetime.now(UTC), replica_id="test")
    for start in range(0, len(jobs), 50):
        await asyncio.gather(*(t.schedule(k, rid, due) for k, rid, due in jobs[start : start + 50]))
    await r.aclose()


# --- tests -------------------------------------------------------------------------------------------------


def test_job_scheduled_by_a_follower_runs_on_the_leader_within_a_second(
    turl: str, tclient: redis.Redis, log_dir: Path, procs: list[Proc]
) -> None:
    procs.append(start_replica("A", turl, log_dir, tclient))
    assert leader_of(tclient) == "A"
    procs.append(start_replica("B", turl, log_dir, tclient))
    assert leader_of(tclient) == "A"

    due = now_ms() + 300
    send_schedule(tclient, "B", "remind", "req_1", due)
    run = Run.parse(collect(tclient, RUNS, 1, 5)[0])
    assert (run.member, run.replica, run.due_ms) == ("remind:req_1", "A", due)
    assert 0 <= run.ran_ms - due < 1000


def test_three_replicas_run_a_thousand_jobs_due_in_one_second_exactly_once(
    turl: str, tclient: redis.Redis, log_dir: Path, procs: list[Proc]
) -> None:
    for name in ("A", "B", "C"):
        procs.append(start_replica(name, turl, log_dir, tclient))
    base = datetime.now(UTC) + timedelta(seconds=1)
    jobs = [("expire", f"req_{i}", base + timedelta(microseconds=900 * i)) for i in range(1000)]
    asyncio.run(schedule_direct(turl, jobs))

    effects = collect(tclient, EFFECTS, 1000, 20)
    assert Counter(effects) == Counter(f"expire:req_{i}".encode() for i in range(1000))
    runs = [Run.parse(x) for x in tclient.lrange(RUNS, 0, -1)]
    assert len(runs) == 1000  # delivered exactly once, not merely deduplicated by the once guard
    assert {r.replica for r in runs} == {"A"}  # lateness under load is measured in bench/, not asserted here


def test_kill_9_of_the_leader_hands_over_within_10s_and_loses_nothing(
    turl: str, tclient: redis.Redis, log_dir: Path, procs: list[Proc]
) -> None:
    a = start_replica("A", turl, log_dir, tclient, hang=True)
    procs.append(a)
    procs.append(start_replica("B", turl, log_dir, tclient))
    assert leader_of(tclient) == "A"
    start = now_ms()
    send_schedule(tclient, "A", "hang", "req_h", start)  # A claims it and dies holding it
    for i in range(10):
        send_schedule(tclient, "B", "expire", f"req_{i}", start + 200 + 400 * i)
    collect(tclient, STARTED, 1, 5)
    first = collect(tclient, EFFECTS, 1, 5)

    a.kill9()
    killed = time.monotonic()
    wait_until(lambda: leader_of(tclient) == "B", 10, "replica B to take the lease")
    assert time.monotonic() - killed < 10

    rest = collect(tclient, EFFECTS, 10, 15)
    assert Counter(first + rest) == Counter([b"hang:req_h"] + [f"expire:req_{i}".encode() for i in range(10)])
    runs = [Run.parse(x) for x in tclient.lrange(RUNS, 0, -1)]
    hang_runs = [r for r in runs if r.member == "hang:req_h"]
    assert [r.replica for r in hang_runs] == ["B"]  # re-queued from the dead leader's claim
    assert all(r.token > min(x.token for x in runs) for r in hang_runs)


def test_full_stop_then_one_replica_runs_what_fell_due_meanwhile(
    turl: str, tclient: redis.Redis, log_dir: Path, procs: list[Proc]
) -> None:
    a = start_replica("A", turl, log_dir, tclient)
    procs.append(a)
    due = now_ms() + 1500
    send_schedule(tclient, "A", "expire", "req_1", due)
    wait_until(lambda: tclient.zscore(DUE_KEY, "expire:req_1") is not None, 5, "A to schedule it")
    assert a.stop() == 0
    assert tclient.llen(RUNS) == 0
    assert leader_of(tclient) is None  # a clean stop hands the lease back

    time.sleep(max(0.0, (due - now_ms()) / 1000) + 0.5)  # the scenario: every replica down past the due time
    procs.append(start_replica("B", turl, log_dir, tclient))
    started = now_ms()
    run = Run.parse(collect(tclient, RUNS, 1, 5)[0])
    assert (run.member, run.replica) == ("expire:req_1", "B")
    assert run.ran_ms - started < 1000


if __name__ == "__main__":
    sys.exit(main())
