"""Issue 14 finding 3: callbacks are durable (a Redis outbox) and bounded (a fixed number of deliveries).

Real processes where the process is the point: a ``keyturn bot`` killed with SIGKILL in the middle of its
deliveries, then started again, still delivers every callback; a receiver that stalls never sees more
connections at once than ``KEYTURN_CALLBACK_CONCURRENCY``. In-process: the dead letter after the last
attempt, and the delivery id that lets a receiver dedupe (delivery is at least once).

The receiver is a small asyncio HTTP server in a thread that counts open connections; in ``stall`` mode
it reads a request and never answers (the bot's attempt timeout ends it). Tests wait on its events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from keyturn.bot.callbacks import DELIVERY_HEADER, CallbackOutbox, CallbackPolicy, CallbackSender
from keyturn.bot.messenger import SLACK_MAX_CONNECTIONS
from keyturn.bot.metrics import Metrics
from keyturn.bot.store import OUTBOX_DUE_KEY, PENDING_KEY, RequestStore
from tests import harness
from tests.bot.test_callbacks import Mac, deploy_request
from tests.fixtures import STAGING_POLICY
from tests.harness import Proc, free_port

CI_SECRET = "outbox-ci-secret-0123456789abcdef0123456789"
SLACK_SECRET = "outbox-slack-signing-secret-0123456789abcdef"
POLICY = STAGING_POLICY
CONCURRENCY = 4


class Receiver:
    """A loopback HTTP endpoint for callbacks: ``ok`` answers 204, ``stall`` never answers, ``fail`` 500."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.open = 0
        self.max_open = 0
        self.connections = 0
        self.delivered: dict[str, list[str]] = {}  # requestId -> delivery ids of 2xx-answered POSTs
        self.changed = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="receiver")
        self._server: asyncio.AbstractServer | None = None
        self.port = 0

    def start(self) -> None:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0, backlog=512), self._loop
        )
        self._server = fut.result(10)
        self.port = self._server.sockets[0].getsockname()[1]

    def close(self) -> None:
        async def shut() -> None:
            if self._server is not None:
                self._server.close()
            # Stalled handlers end here, not when the loop is collected.
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shut(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def _note(self, delta: int) -> None:
        with self.changed:
            self.open += delta
            if delta > 0:
                self.connections += 1
            self.max_open = max(self.max_open, self.open)
            self.changed.notify_all()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._note(+1)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            headers = {}
            for line in head.decode("latin-1").split("\r\n")[1:]:
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            if self.mode == "stall":
                await reader.read()  # until the bot gives up and closes
                return
            status = 204 if self.mode == "ok" else 500
            writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
            if status == 204:
                rid = json.loads(body)["requestId"]
                with self.changed:
                    self.delivered.setdefault(rid, []).append(headers.get(DELIVERY_HEADER.lower(), ""))
                    self.changed.notify_all()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
            self._note(-1)

    def wait_for(self, pred: Any, timeout: float, what: str) -> None:
        """Wait (on the receiver's own notifications) until ``pred()`` holds."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while not pred():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{what}: open={self.open} delivered={len(self.delivered)}")
                self.changed.wait(left)


@dataclass
class Stack:
    tmp: Path
    redis_url: str
    signer_sock: Path
    emu_url: str
    policy: Path
    port: int
    procs: dict[str, Proc]
    http: httpx.Client

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start_bot(self, extra: dict[str, str] | None = None, name: str = "bot", port: int = 0) -> Proc:
        proc = harness.start_bot(
            self.tmp / "logs",
            name=name,
            port=port or self.port,
            redis_url=self.redis_url,
            signer_socket=self.signer_sock,
            policy=self.policy,
            emulator_url=self.emu_url,
            cwd=self.tmp,
            env={
                "KEYTURN_DEV_MODE": "1",
                "KEYTURN_LOG_LEVEL": "WARNING",
                "KEYTURN_CALLBACK_CONCURRENCY": str(CONCURRENCY),
                "KEYTURN_CALLBACK_TIMEOUT": "1",
                "KEYTURN_CALLBACK_LEASE": "2",
                "KEYTURN_CALLBACK_RETRY_FIRST": "0.2",
                "KEYTURN_CALLBACK_RETRY_MAX": "0.5",
                "KEYTURN_CALLBACK_ATTEMPTS": "30",
                "KEYTURN_CALLBACK_POLL_INTERVAL": "0.2",
                **(extra or {}),
            },
        )
        self.procs[name] = proc
        return proc

    def ci(self, method: str, path: str, body: bytes = b"") -> httpx.Response:
        headers = harness.ci_headers(CI_SECRET, method, path, body)
        return self.http.request(method, self.url + path, content=body or None, headers=headers)

    def create_and_cancel(self, n: int, callback: str) -> list[str]:
        ids = []
        for i in range(n):
            body = {
                "repo": "acme/web",
                "sha": f"{i:040x}",
                "environment": "staging",
                "workflow": "deploy.yml",
                "requester": "github:alice",
                "callbackUrl": callback,
            }
            resp = self.ci("POST", "/v1/requests", json.dumps(body).encode())
            assert resp.status_code == 202, resp.text
            ids.append(resp.json()["requestId"])
        for rid in ids:
            resp = self.ci("POST", f"/v1/requests/{rid}/cancel")
            assert resp.status_code == 200, resp.text
        return ids


@pytest.fixture
def stack(redis_url: str, tmp_path: Path) -> Iterator[Stack]:
    policy = tmp_path / "keyturn.toml"
    policy.write_text(POLICY)
    keyset, _ = harness.keygen(tmp_path)
    logs = tmp_path / "logs"
    procs: dict[str, Proc] = {}
    try:
        procs["signer"], sock = harness.start_signer(
            tmp_path, logs, policy=policy, keyset=keyset, slack_secret=SLACK_SECRET, ci_secret=CI_SECRET
        )
        procs["emulator"], emu_url = harness.start_emulator(logs, slack_secret=SLACK_SECRET)
        with httpx.Client(timeout=30) as http:
            # A database of its own: the session's e2e bot (db 0) runs an outbox too and would deliver ours.
            db_url = f"{redis_url}?db=8"
            yield Stack(tmp_path, db_url, sock, emu_url, policy, free_port(), procs, http)
    finally:
        for p in reversed(list(procs.values())):
            p.stop()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.start()
    yield r
    r.close()


def test_callbacks_survive_a_kill_mid_delivery_and_are_delivered_after_restart(
    stack: Stack, receiver: Receiver
) -> None:
    receiver.mode = "stall"
    bot = stack.start_bot()
    ids = stack.create_and_cancel(30, f"http://127.0.0.1:{receiver.port}/hook")
    # Mid-delivery: the bot holds its full quota of stalled deliveries.
    receiver.wait_for(lambda: receiver.open >= CONCURRENCY, 20, "deliveries in flight")
    bot.kill9()
    receiver.mode = "ok"
    stack.procs.pop("bot")
    stack.start_bot()
    receiver.wait_for(lambda: set(receiver.delivered) >= set(ids), 45, "every callback delivered")
    assert receiver.max_open <= CONCURRENCY
    # One delivery id per request, the same on every POST of it; distinct across requests.
    per_request = {rid: set(dids) for rid, dids in receiver.delivered.items()}
    assert all(len(d) == 1 and next(iter(d)).startswith("dlv_") for d in per_request.values())
    assert len({next(iter(d)) for d in per_request.values()}) == len(ids)
    view = stack.ci("GET", f"/v1/requests/{ids[0]}").json()
    assert view["callback"]["state"] == "delivered"
    assert view["callback"]["deliveryId"] == next(iter(per_request[ids[0]]))


def test_a_dead_replicas_deliveries_move_to_the_other_replica(stack: Stack, receiver: Receiver) -> None:
    receiver.mode = "stall"
    a = stack.start_bot(name="bot-a")
    b = stack.start_bot(name="bot-b", port=free_port())
    ids = stack.create_and_cancel(20, f"http://127.0.0.1:{receiver.port}/hook")
    # Both replicas hold their full quota of stalled deliveries.
    receiver.wait_for(lambda: receiver.open >= 2 * CONCURRENCY, 20, "both replicas delivering")
    a.kill9()
    receiver.mode = "ok"
    # bot-b alone, without a restart: bot-a's claims lapse with their lease and bot-b takes them.
    receiver.wait_for(lambda: set(receiver.delivered) >= set(ids), 45, "every callback delivered")
    assert b.alive()
    assert receiver.max_open <= 2 * CONCURRENCY


def test_a_stalling_receiver_never_holds_more_sockets_than_the_bound(
    stack: Stack, receiver: Receiver
) -> None:
    receiver.mode = "stall"
    bot = stack.start_bot()
    fds = Path(f"/proc/{bot.popen.pid}/fd")
    before = len(list(fds.iterdir()))
    stack.create_and_cancel(60, f"http://127.0.0.1:{receiver.port}/hook")
    # Several rounds of attempts (each cut off by the 1 s attempt timeout), never more than the bound open.
    receiver.wait_for(lambda: receiver.connections >= 5 * CONCURRENCY, 30, "rounds of attempts")
    during = len(list(fds.iterdir()))
    peers = _socket_peer_ports(bot.popen.pid)
    to_receiver = peers[receiver.port]
    to_slack = peers[urllib.parse.urlsplit(stack.emu_url).port or 0]
    assert receiver.max_open <= CONCURRENCY
    print(
        f"finding 3: bot open files {before} -> {during} with 60 callbacks stalled (bound {CONCURRENCY}); "
        f"sockets to the receiver {to_receiver}, to Slack {to_slack} (pool bound {SLACK_MAX_CONNECTIONS})"
    )
    assert to_receiver <= CONCURRENCY
    assert to_slack <= SLACK_MAX_CONNECTIONS  # one kept-alive Slack session, bounded by a constant
    # The bound's sockets, the Slack session's fixed pool, and the Redis and signer pools the calls warmed.
    assert during - before < 2 * CONCURRENCY + 10 + SLACK_MAX_CONNECTIONS
    metrics = stack.http.get(stack.url + "/metrics").text
    due = next(line for line in metrics.splitlines() if line.startswith("keyturn_callbacks_due "))
    assert float(due.split()[1]) > 0  # the rest wait in Redis, not in sockets


def _socket_peer_ports(pid: int) -> Counter[int]:
    """How many of ``pid``'s open TCP sockets are connected to each remote port (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports: Counter[int] = Counter()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                if fields[9] in inodes and fields[3] != "0A":  # not a listening socket
                    ports[int(fields[2].rsplit(":", 1)[1], 16)] += 1
    return ports


# --- in-process: dead letter ---------------------------------------------------------------------------


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RequestStore]:
    client = aioredis.Redis.from_url(f"{redis_url}?db=8")  # apart from the e2e bot's outbox (db 0)
    yield RequestStore(client, retention=timedelta(hours=1))
    await client.aclose()


async def test_the_last_failed_attempt_dead_letters_the_callback(
    store: RequestStore, receiver: Receiver
) -> None:
    receiver.mode = "fail"
    metrics = Metrics()

    async def dns(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    sender = CallbackSender(
        store, Mac(), clock=lambda: datetime.now(UTC), policy=CallbackPolicy(dev_mode=True), resolve=dns,
        attempts=3, first_delay=0.05, max_delay=0.05, timeout=2, metrics=metrics,
    )  # fmt: skip
    outbox = CallbackOutbox(store, sender, concurrency=2, lease=5, poll_interval=0.05, metrics=metrics)
    req = deploy_request(f"http://127.0.0.1:{receiver.port}/hook")
    await _store_final(store, req)  # the final write enqueues the callback
    queued = await store.callback_job(req.id)
    assert queued is not None
    assert queued["state"] == "queued"
    assert queued["attempts"] == 0
    await outbox.start()
    try:
        for _ in range(200):
            job = await store.callback_job(req.id)
            if job is not None and job["state"] == "dead":
                break
            await asyncio.sleep(0.05)
    finally:
        await outbox.stop()
    assert job is not None
    assert job["state"] == "dead"
    assert job["attempts"] == 3
    assert job["last"]["status"] == 500
    assert await store.redis.zscore(OUTBOX_DUE_KEY, req.id) is None
    assert metrics.callback_dead_letters._value.get() == 1
    assert await store.callback_backlog() == (0, 1)
    # Enqueueing again (a repair, a retry) does not revive a settled job.
    assert await store.enqueue_callback(req.id) == "dead"


async def _store_final(store: RequestStore, req: Any) -> None:
    from keyturn.bot import lifecycle
    from keyturn.bot.models import OriginEvidence

    origin = OriginEvidence(kind="ci", body="", timestamp="0", signature="v1=" + "0" * 64)
    created, _ = await store.create_or_get(req, origin, datetime.now(UTC))
    await store.transition(created.id, lambda r: lifecycle.cancel(r, now=datetime.now(UTC)))


async def test_a_final_request_left_without_its_outbox_entry_is_repaired(store: RequestStore) -> None:
    # As if the replica died right after the final write: no job, no due entry, still in the pending index.
    req = deploy_request("https://ci.example.com/hook")
    await _store_final(store, req)
    await store.redis.delete(f"keyturn:req:{{{req.id}}}:outbox")
    await store.redis.zrem(OUTBOX_DUE_KEY, req.id)
    await store.redis.zadd(PENDING_KEY, {req.id: 1})
    final = await store.get(req.id)
    assert final is not None
    await store.settle_final(final)  # what the expiry job's call does for a final request
    job = await store.callback_job(req.id)
    assert job is not None
    assert job["state"] == "queued"
    assert await store.redis.zscore(OUTBOX_DUE_KEY, req.id) is not None
    assert await store.redis.zscore(PENDING_KEY, req.id) is None
    # Twice is once: the same job and delivery id.
    await store.settle_final(final)
    assert await store.callback_job(req.id) == job


# --- in-process: the GitHub hand-off rides the same outbox ---------------------------------------------


class ScriptedHandover:
    """The GitHub hand-off (bot/github.py) as a test double: answers each attempt from a script."""

    def __init__(self, *outcomes: dict[str, Any]) -> None:
        self.outcomes = list(outcomes)
        self.attempts = 0

    async def hand_over(self, request: Any, receipt: dict[str, Any] | None) -> dict[str, Any]:
        self.attempts += 1
        return self.outcomes.pop(0)


async def _handover_settles(store: RequestStore, handover: ScriptedHandover) -> dict[str, Any]:
    """A GitHub-origin request cancelled (its final write enqueues the hand-off) and the outbox run until the
    job is settled; the job."""
    from keyturn.bot import lifecycle
    from keyturn.bot.models import OriginEvidence

    req = deploy_request("").model_copy(update={"callback_url": None, "origin_kind": "github"})
    origin = OriginEvidence(kind="github", body="", timestamp="0", signature="sha256=" + "0" * 64)
    created, _ = await store.create_or_get(req, origin, datetime.now(UTC))
    await store.transition(created.id, lambda r: lifecycle.cancel(r, now=datetime.now(UTC)))
    sender = CallbackSender(
        store, Mac(), clock=lambda: datetime.now(UTC), attempts=4, first_delay=0.05, max_delay=0.05, timeout=2
    )
    outbox = CallbackOutbox(store, sender, concurrency=2, lease=5, poll_interval=0.05)
    outbox.github = handover
    await outbox.start()
    try:
        for _ in range(200):
            job = await store.callback_job(req.id)
            if job is not None and job["state"] != "queued":
                break
            await asyncio.sleep(0.05)
    finally:
        await outbox.stop()
    assert job is not None
    return job


async def test_a_github_handover_is_retried_until_the_approver_takes_it(store: RequestStore) -> None:
    failed = {"outcome": "failed", "error": "ConnectError"}
    handover = ScriptedHandover(failed, failed, {"outcome": "delivered", "status": 200})
    job = await _handover_settles(store, handover)
    assert (job["state"], job["attempts"], handover.attempts) == ("delivered", 3, 3)


@pytest.mark.parametrize(
    ("status", "error"),
    # run_attempt_changed: the run was re-run since the request's webhook; a rejection of the old attempt
    # must not be retried until it lands on the new one (tests/test_review_findings_5.py).
    [(403, "approver_bad_signature"), (409, "approver_run_attempt_changed")],
)
async def test_a_github_handover_the_approver_refuses_is_settled_not_retried(
    store: RequestStore, status: int, error: str
) -> None:
    refusal = {"outcome": "refused", "status": status, "error": error}
    handover = ScriptedHandover(refusal)
    job = await _handover_settles(store, handover)
    assert (job["state"], job["attempts"], handover.attempts) == ("refused", 1, 1)
    assert job["last"]["error"] == error
