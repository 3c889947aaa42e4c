"""Release train: 3 bot replicas on one Redis, one signer, the Slack emulator, N pending requests at once,
approvers clicking at random (double-clicks, denies) over a fixed number of rounds, CI cancelling a few.

Real processes on loopback (redis-server, ``keyturn signer``, ``keyturn emulator``, three ``keyturn bot``);
bounded (``--requests``, ``--rounds``; a seeded RNG, so a run repeats). Each click is built and signed by the
emulator (``send=False``: a genuine ``block_actions`` body for the card the bot posted) and delivered to a
replica chosen at random, as a load balancer would; a deny goes through its modal (``views.open`` by the
replica that got the click, then ``view_submission`` to a random replica). Each request has a CI waiter, as
``keyturn request --wait`` does: it long-polls a random replica until the request is final and, if
APPROVED, fetches the receipt and verifies it offline with the gate's own check (``keyturn.signer.gate``).

1. Create N requests (environment ``train``: 2 of 4 approvers), spread over the replicas; wait for every card.
2. ``--rounds`` rounds; in each, every request gets at random: an approve (45 %), a double-click (the same
   approver twice at once, 15 %), a deny (4 %), a CI cancel (1 %), or nothing. A round's actions go out
   together (the burst) and the next round starts once they are all acknowledged.
3. A closing round: every approver clicks Approve on every request, so every request ends final.

Then the invariants (``check``): every request in exactly one final state, on the record (the signer's audit
log) exactly once and agreeing with Redis; receipts equal approved requests, each stored receipt is the one
on the record and the one CI verified; every counted approval was clicked by that approver, no one counted
twice; ``keyturn audit verify`` passes; each process's peak RSS within :data:`RSS_BOUND_MIB`.

Reported: the time from the last approve click to CI holding a verified receipt, p50/p99, at the burst
(every request approved in the run) and at 1 click (requests approved one at a time, nothing else running),
and each process's peak RSS. ``tests/faults/test_release_train.py`` runs the same at 50 requests.
Usage: ``.venv/bin/python bench/bench_release_train.py [--requests N] [--rounds R] [--seed S]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_click_to_receipt import Floor  # noqa: E402
from bench.bench_intake import CI_SECRET, SLACK_SECRET  # noqa: E402
from bench.bench_intake import POLICY as INTAKE_POLICY  # noqa: E402
from keyturn.bot.cards import REASON_ACTION, REASON_BLOCK  # noqa: E402
from keyturn.emulator.client import AsyncEmulatorClient, Delivery, EmulatorClientError  # noqa: E402
from keyturn.signer import gate  # noqa: E402
from keyturn.signer.receipt import Scope  # noqa: E402
from tests import harness  # noqa: E402
from tests.harness import Proc, free_port, redis_server  # noqa: E402

APPROVERS = ["U0BOB", "U0CAROL", "U0DAVE", "U0ERIN"]
REPLICAS = 3
# The intake bench's policy head (Slack workspace, identities), with an environment of its own.
POLICY = (
    INTAKE_POLICY.split("[environments.", 1)[0]
    + f"""[environments.train]
channel = "C0DEPLOYS"
approvers = {json.dumps(APPROVERS)}
required_approvals = 2
request_ttl = "30m"
receipt_ttl = "30m"
confirm_approve = false
"""
)
T = TypeVar("T")
# Peak resident memory each process may reach in a run of up to 500 requests (MiB, VmHWM). Measured at 500
# requests (docs/benchmarks.md): bots 80-81, signer 41, emulator 78-79, redis-server 19-20; at 50: bots 75,
# emulator 54. About twice the measured peak: room for allocator noise, none for growth with the load.
RSS_BOUND_MIB = {"bot": 160, "signer": 96, "emulator": 160, "redis": 48}
FINAL = {"APPROVED", "DENIED", "CANCELLED", "EXPIRED"}


@dataclass
class TrainStack:
    """The running processes and what the load needs to reach them."""

    bot_urls: list[str]
    emulator_url: str
    workdir: Path
    public_keys: Path
    procs: dict[str, Proc]


@contextlib.contextmanager
def train_stack(workdir: Path | None = None, replicas: int = REPLICAS) -> Iterator[TrainStack]:
    """redis-server, signer, emulator and ``replicas`` bots sharing the Redis, on free loopback ports."""
    with contextlib.ExitStack() as stack:
        work = workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="keyturn-train-")))
        logs = work / "logs"
        policy = work / "keyturn.toml"
        policy.write_text(POLICY)
        keyset, public = harness.keygen(work)
        srv = stack.enter_context(redis_server(work / "redis"))
        procs: dict[str, Proc] = {"redis": srv.proc}
        stack.callback(lambda: [p.stop() for name, p in reversed(list(procs.items())) if name != "redis"])
        procs["signer"], sock = harness.start_signer(
            work, logs, policy=policy, keyset=keyset, slack_secret=SLACK_SECRET, ci_secret=CI_SECRET
        )
        ports = [free_port() for _ in range(replicas)]
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        # The emulator only builds and signs the clicks (send=False); the load picks the replica.
        procs["emulator"], emu_url = harness.start_emulator(logs, slack_secret=SLACK_SECRET, bot_url=urls[0])
        for i, port in enumerate(ports):
            procs[f"bot-{i}"] = harness.start_bot(
                logs,
                name=f"bot-{i}",
                port=port,
                redis_url=srv.url,
                signer_socket=sock,
                policy=policy,
                emulator_url=emu_url,
                cwd=work,
                env={"KEYTURN_LOG_LEVEL": "WARNING", "KEYTURN_BACKSTOP_INTERVAL": "1"},
            )
        yield TrainStack(urls, emu_url, work, public, procs)


@dataclass
class Req:
    """One request as the load sees it: what was clicked, and what CI saw."""

    rid: str
    sha: str
    card: dict[str, str]
    approve_clicks: dict[str, int] = field(default_factory=dict)  # approver -> clicks sent
    deny_clicks: set[str] = field(default_factory=set)
    cancelled_by_ci: bool = False
    last_approve_sent: list[float] = field(default_factory=list)  # monotonic send times
    status: str = "PENDING"
    ci_seen_at: float | None = None  # when CI's long-poll returned the final state
    ci_verified_at: float | None = None
    ci_receipt: dict[str, Any] | None = None
    ci_problem: str | None = None


@dataclass
class TrainResult:
    """What the run did and saw."""

    requests: list[Req]
    clicks: int
    elapsed: float
    burst_latencies: list[float]
    single_latencies: list[float] = field(default_factory=list)
    single_floor: list[float] = field(default_factory=list)  # sign + fsync + one chat.update, same run
    modals_refused: list[str] = field(default_factory=list)  # deny modals Slack would not open
    transport_retries: int = 0  # calls sent again after a broken connection
    seen_latencies: list[float] = field(default_factory=list)  # last click -> CI saw APPROVED
    load_cpu: float = 0.0  # CPU seconds of this process (the load generator) during the run


class Load:
    """The CI side and the approvers' side of the run, on one event loop."""

    def __init__(self, st: TrainStack, seed: int) -> None:
        self.st = st
        self.rng = random.Random(seed)
        # Idle connections are dropped before uvicorn's 5 s keep-alive closes them under us.
        limits = httpx.Limits(max_connections=1024, max_keepalive_connections=256, keepalive_expiry=2.0)
        self.http = httpx.AsyncClient(timeout=60, limits=limits)
        self.emu = AsyncEmulatorClient(st.emulator_url, timeout=60)
        self.keyset = gate.load_keyset(str(st.public_keys), trust_keys_in_checkout=True)
        self.clicks = 0
        self.errors: list[str] = []
        self.modals_refused: list[str] = []
        self.transport_retries = 0

    async def close(self) -> None:
        await self.http.aclose()
        await self.emu.aclose()

    async def _emu(self, call: Callable[[], Awaitable[T]]) -> T:
        """A call to the emulator's control API (building a signed click, or waiting for a recorded call:
        both safe to repeat), sent again if its kept-alive connection broke under the load generator."""
        for attempt in range(3):
            try:
                return await call()
            except httpx.TransportError:
                self.transport_retries += 1
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _bot(self) -> str:
        return self.rng.choice(self.st.bot_urls)

    async def _ci(self, method: str, path: str, body: bytes = b"", **params: Any) -> httpx.Response:
        """A signed CI call to a random replica; a connection that broke is retried (signed anew), as a
        pipeline retries: creates resolve to the pending request of their scope, cancels are idempotent."""
        for attempt in range(3):
            headers = harness.ci_headers(CI_SECRET, method, path, body)
            try:
                return await self.http.request(method, self._bot() + path, content=body or None,
                                               headers=headers, params=params or None)  # fmt: skip
            except httpx.TransportError:
                self.transport_retries += 1
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def create(self, i: int) -> Req:
        """POST a request (a distinct commit) and wait until its card is posted."""
        sha = hashlib.sha1(f"train-{i}-{time.time_ns()}".encode()).hexdigest()  # noqa: S324 - a fake sha
        body = json.dumps({"repo": "acme/web", "sha": sha, "environment": "train", "workflow": "deploy.yml",
                           "requester": "github:alice"}).encode()  # fmt: skip
        resp = await self._ci("POST", "/v1/requests", body)
        if resp.status_code != 202:
            raise RuntimeError(f"create {i}: {resp.status_code} {resp.text}")
        data: dict[str, Any] = resp.json()
        path = f"/v1/requests/{data['requestId']}"
        while not data.get("card"):
            data = (await self._ci("GET", path, wait=30, since=data["version"])).json()
        return Req(data["requestId"], sha, data["card"])

    async def deliver(self, built: dict[str, Any]) -> None:
        """POST a request the emulator built and signed to a random replica; it must be acknowledged."""
        req = built["request"]
        for attempt in range(3):
            url = self._bot() + "/slack/events"
            try:
                resp = await self.http.post(url, content=req["body"].encode(), headers=req["headers"])
                break
            except httpx.TransportError:
                # A broken connection: the approver clicks again (a repeat is counted once, like a
                # double-click). Counted and reported.
                self.transport_retries += 1
                if attempt == 2:
                    raise
        if resp.status_code != 200:
            self.errors.append(f"click not acknowledged: {resp.status_code} {resp.text[:200]}")

    async def _build_click(self, req: Req, user: str, action: str) -> Delivery | None:
        """The signed click, or None when the card no longer has the button (decided: Slack shows the
        approver the final card, so there is nothing to click)."""
        card = req.card
        try:
            return await self._emu(
                lambda: self.emu.click(user, card["channel"], card["ts"], action, req.rid, send=False)
            )
        except EmulatorClientError as exc:
            if exc.code == "action_not_found":
                return None
            raise

    async def approve(self, req: Req, user: str) -> None:
        built = await self._build_click(req, user, "approve")
        if built is None:
            return
        req.approve_clicks[user] = req.approve_clicks.get(user, 0) + 1
        req.last_approve_sent.append(time.monotonic())
        self.clicks += 1
        await self.deliver(built.raw)

    async def deny(self, req: Req, user: str) -> None:
        built = await self._build_click(req, user, "deny")
        if built is None:
            return
        self.clicks += 1
        tid = built.trigger_id
        await self.deliver(built.raw)
        try:  # the replica that got the click opens the modal, unless the request is decided already
            opened = await self._emu(lambda: self.emu.wait_for("views.open", timeout=10, trigger_id=tid))
        except TimeoutError:
            self.modals_refused.append("no views.open within 10 s")
            return
        answer = opened.get("response") or {}
        if "view" not in answer:  # Slack refused the modal (e.g. the trigger expired under the burst)
            self.modals_refused.append(str(answer.get("error")))
            return
        view_id = answer["view"]["id"]
        req.deny_clicks.add(user)
        values = {REASON_BLOCK: {REASON_ACTION: "the release train is late"}}
        submitted = await self._emu(lambda: self.emu.submit_view(user, view_id, values, send=False))
        await self.deliver(submitted.raw)

    async def cancel(self, req: Req) -> None:
        req.cancelled_by_ci = True
        resp = await self._ci("POST", f"/v1/requests/{req.rid}/cancel")
        if resp.status_code not in (200, 202, 409):
            self.errors.append(f"cancel {req.rid}: {resp.status_code} {resp.text[:200]}")

    async def ci_wait(self, req: Req) -> None:
        """``keyturn request --wait``: long-poll until final; if APPROVED, fetch and verify the receipt."""
        path = f"/v1/requests/{req.rid}"
        data: dict[str, Any] = (await self._ci("GET", path)).json()
        while data["status"] not in FINAL:
            data = (await self._ci("GET", path, wait=30, since=data["version"])).json()
        req.status = data["status"]
        req.ci_seen_at = time.monotonic()
        if req.status != "APPROVED":
            return
        raw = await self._ci("GET", f"{path}/receipt")
        try:
            scope = Scope(repo="acme/web", sha=req.sha, environment="train", workflow="deploy.yml")
            gate.check_receipt(raw.content, self.keyset, scope, datetime.now(UTC), allow_dev_keys=False)
        except gate.GateError as exc:
            req.ci_problem = f"{exc.code}: {exc.message}"
            return
        req.ci_verified_at = time.monotonic()
        req.ci_receipt = raw.json()

    def action(self, req: Req) -> list[Any]:
        """One approver's (or CI's) move on ``req`` this round, chosen at random."""
        r = self.rng.random()
        user = self.rng.choice(APPROVERS)
        if r < 0.45:
            return [self.approve(req, user)]
        if r < 0.60:
            return [self.approve(req, user), self.approve(req, user)]  # a double-click
        if r < 0.64:
            return [self.deny(req, user)]
        if r < 0.65:
            return [self.cancel(req)]
        return []


async def _bounded(coros: list[Any], limit: int) -> None:
    sem = asyncio.Semaphore(limit)

    async def one(c: Any) -> None:
        async with sem:
            await c

    await asyncio.gather(*(one(c) for c in coros))


async def run_train(st: TrainStack, *, requests: int, rounds: int, seed: int) -> TrainResult:
    """The release train (module docstring); the requests as the load saw them and the latencies."""
    load = Load(st, seed)
    waiters: list[asyncio.Task[None]] = []
    try:
        sem = asyncio.Semaphore(16)  # CI pipelines starting together, not all of them in one instant

        async def create(i: int) -> Req:
            async with sem:
                return await load.create(i)

        reqs = list(await asyncio.gather(*(create(i) for i in range(requests))))
        waiters = [asyncio.create_task(load.ci_wait(r)) for r in reqs]
        started, cpu = time.monotonic(), time.process_time()
        for _ in range(rounds):
            moves: list[Any] = []
            for req in reqs:
                moves.extend(load.action(req))
            await _bounded(moves, 256)  # the burst: the round's clicks all in flight together
        closing = [load.approve(req, user) for req in reqs for user in APPROVERS]
        load.rng.shuffle(closing)
        await _bounded(closing, 256)
        await asyncio.wait_for(asyncio.gather(*waiters), 300)
        elapsed = time.monotonic() - started
        if load.errors:
            raise RuntimeError(f"{len(load.errors)} errors, first: {load.errors[0]}")
        latencies = [x for r in reqs if (x := _latency(r)) is not None]
        return TrainResult(
            reqs,
            load.clicks,
            elapsed,
            latencies,
            modals_refused=load.modals_refused,
            transport_retries=load.transport_retries,
            seen_latencies=[x for r in reqs if (x := _latency(r, seen=True)) is not None],
            load_cpu=time.process_time() - cpu,
        )
    finally:
        for w in waiters:
            w.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
        await load.close()


def _latency(req: Req, seen: bool = False) -> float | None:
    """Seconds from the last approve click sent before CI held the verified receipt (with ``seen``: before
    CI's long-poll returned APPROVED); None if the request was not approved."""
    end = req.ci_seen_at if seen else req.ci_verified_at
    if end is None or req.ci_verified_at is None:
        return None
    before = [t for t in req.last_approve_sent if t <= end]
    return end - max(before) if before else None


async def single_click(st: TrainStack, n: int, seed: int) -> tuple[list[float], list[float]]:
    """``n`` requests approved one at a time with nothing else running: the first approval, then the CI
    waiter, then the final click; seconds from that click to CI holding the verified receipt, and after
    each the floor (bench_click_to_receipt.Floor: one in-process sign with fsync + one chat.update)."""
    load = Load(st, seed)
    floor = Floor(st.workdir, st.emulator_url)
    out: list[float] = []
    floors: list[float] = []
    try:
        for i in range(n):
            req = await load.create(10_000 + i)
            path = f"/v1/requests/{req.rid}"
            version = (await load._ci("GET", path)).json()["version"]
            await load.approve(req, "U0BOB")
            while (data := (await load._ci("GET", path, wait=10, since=version)).json())[
                "approvalsCount"
            ] < 1:
                version = data["version"]
            waiter = asyncio.create_task(load.ci_wait(req))
            await load.approve(req, "U0CAROL")
            await asyncio.wait_for(waiter, 60)
            if req.ci_verified_at is None:
                raise RuntimeError(f"{req.rid}: {req.status} {req.ci_problem}")
            out.append(req.ci_verified_at - req.last_approve_sent[-1])
            floors.append(sum(await floor.measure(req.card)))
    finally:
        await floor.aclose()
        await load.close()
    return out, floors


def audit_records(st: TrainStack) -> list[dict[str, Any]]:
    """The signer's audit log records, in order."""
    path = st.workdir / "audit.jsonl"
    return [json.loads(line)["record"] for line in path.read_text().splitlines() if line.strip()]


def wait_recorded(st: TrainStack, rids: set[str], timeout: float = 120) -> None:
    """Wait until the audit log has a record for each of ``rids`` (denials, cancels are recorded by the bot
    after the final write, or by the leader's backstop)."""
    harness.wait_until(
        lambda: rids <= {_rid(r) for r in audit_records(st)}, timeout, "every outcome on record"
    )


def _rid(record: dict[str, Any]) -> str:
    """The request an audit record is about (a receipt's, or an outcome's)."""
    if record.get("type") == "receipt_issued":
        return str(record["receipt"]["requestId"])
    return str(record.get("requestId") or "")


def peak_rss_mib(st: TrainStack) -> dict[str, float]:
    """Each process's peak resident set (VmHWM), MiB."""
    out: dict[str, float] = {}
    for name, proc in st.procs.items():
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{proc.popen.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    out[name] = int(line.split()[1]) / 1024
    return out


def cpu_seconds(st: TrainStack) -> dict[str, float]:
    """CPU time (user + system) each process has used so far: where the run's time went."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for name, proc in st.procs.items():
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{proc.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
            out[name] = (int(fields[11]) + int(fields[12])) / tick
    return out


def ephemeral_summary(st: TrainStack) -> dict[str, int]:
    """What the approvers were told (ephemeral messages), by the first words of each text."""
    out: dict[str, int] = {}
    with httpx.Client(base_url=st.emulator_url, timeout=60) as http:
        for user in APPROVERS:
            for eph in http.get("/_emulator/state", params={"user": user}).json()["ephemerals"]:
                words = " ".join(str(eph.get("text", "")).split()[:5])
                out[words] = out.get(words, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def check(st: TrainStack, result: TrainResult) -> list[str]:
    """Every invariant of the run (module docstring); the problems found (empty: all hold)."""
    problems: list[str] = []
    reqs = {r.rid: r for r in result.requests}
    wait_recorded(st, set(reqs))
    records = audit_records(st)
    issued: dict[str, list[dict[str, Any]]] = {}
    outcomes: dict[str, list[str]] = {}
    for rec in records:
        if rec.get("type") == "receipt_issued":
            issued.setdefault(rec["receipt"]["requestId"], []).append(rec["receipt"])
        elif rec.get("type") == "outcome_recorded":
            outcomes.setdefault(_rid(rec), []).append(str(rec.get("outcome")))
    with httpx.Client(timeout=30) as http:
        for rid, req in reqs.items():
            path = f"/v1/requests/{rid}"
            view = http.get(
                st.bot_urls[0] + path, headers=harness.ci_headers(CI_SECRET, "GET", path, b"")
            ).json()
            status = view["status"]
            on_record = len(issued.get(rid, [])) + len(outcomes.get(rid, []))
            if status not in FINAL or status != req.status:
                problems.append(f"{rid}: store {status}, CI saw {req.status}")
            if on_record != 1:
                problems.append(f"{rid}: {on_record} records in the audit log ({status})")
            if status == "APPROVED":
                if req.ci_receipt is None or issued.get(rid) != [req.ci_receipt]:
                    problems.append(
                        f"{rid}: CI's verified receipt is not the one on record ({req.ci_problem})"
                    )
            elif rid in issued or outcomes.get(rid) != [status.lower()]:
                problems.append(
                    f"{rid}: {status}, on record {outcomes.get(rid)} and {len(issued.get(rid, []))} receipts"
                )
            if status == "DENIED" and view.get("decidedBy") not in req.deny_clicks:
                problems.append(f"{rid}: denied by {view.get('decidedBy')}, who submitted no denial")
            if status == "CANCELLED" and not req.cancelled_by_ci:
                problems.append(f"{rid}: cancelled, but CI never cancelled it")
            counted = [a["userId"] for a in view["approvals"]]
            if len(counted) != len(set(counted)) or not set(counted) <= set(req.approve_clicks):
                problems.append(f"{rid}: approvals {counted}, clicks {req.approve_clicks}")
    approved = sum(r.status == "APPROVED" for r in reqs.values())
    receipts = sum(len(v) for rid, v in issued.items() if rid in reqs)
    if receipts != approved:
        problems.append(f"{receipts} receipts issued for {approved} approved requests")
    verify = subprocess.run(
        [*harness.KEYTURN, "audit", "verify", str(st.workdir / "audit.jsonl")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    if verify.returncode != 0:
        problems.append(f"keyturn audit verify: {verify.stdout}{verify.stderr}")
    for name, mib in peak_rss_mib(st).items():
        bound = RSS_BOUND_MIB[name.split("-")[0]]
        if mib > bound:
            problems.append(f"{name}: peak RSS {mib:.0f} MiB above its bound {bound} MiB")
    return problems


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1), in milliseconds."""
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(result: TrainResult, rss: dict[str, float]) -> str:
    """The figures, one per line."""
    by_status: dict[str, int] = {}
    for r in result.requests:
        by_status[r.status] = by_status.get(r.status, 0) + 1
    lines = [
        f"release train: {len(result.requests)} requests, {REPLICAS} bot replicas, {result.clicks} clicks "
        f"in {result.elapsed:.1f}s; final states {dict(sorted(by_status.items()))}; "
        f"deny modals refused by Slack: {len(result.modals_refused)} {sorted(set(result.modals_refused))}; "
        f"calls sent again after a broken connection: {result.transport_retries}",
        f"  last click -> CI verified receipt, burst ({len(result.burst_latencies)} approved): "
        f"p50 {pct(result.burst_latencies, 0.5):7.1f} ms  p99 {pct(result.burst_latencies, 0.99):7.1f} ms",
    ]
    if result.seen_latencies:
        s = result.seen_latencies
        lines.append(f"    of which until CI's long-poll returned APPROVED: p50 {pct(s, 0.5):7.1f} ms  "
                     f"p99 {pct(s, 0.99):7.1f} ms; load generator CPU {result.load_cpu:.1f}s")  # fmt: skip
    if result.single_latencies:
        s = result.single_latencies
        lines.append(
            f"  last click -> CI verified receipt, 1 click ({len(s)} requests one at a time): "
            f"p50 {pct(s, 0.5):7.1f} ms  p99 {pct(s, 0.99):7.1f} ms"
        )
    if result.single_floor:
        f, s = result.single_floor, result.single_latencies
        lines.append(
            f"    floor (in-process sign + audit fsync + one chat.update): p50 {pct(f, 0.5):7.1f} ms  "
            f"p99 {pct(f, 0.99):7.1f} ms; ratio p99 {pct(s, 0.99) / pct(f, 0.99):.2f}x (target ≤ 2), "
            f"p50 {pct(s, 0.5) / pct(f, 0.5):.2f}x"
        )
    lines.append("  peak RSS MiB: " + ", ".join(f"{k} {v:.0f} (bound {RSS_BOUND_MIB[k.split('-')[0]]})"
                                                 for k, v in sorted(rss.items())))  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """Run, check, print; non-zero if an invariant failed."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--single", type=int, default=30, help="requests approved one at a time, for 1 click")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--workdir", type=Path, help="keep the processes' logs and the audit log here")
    args = ap.parse_args(argv)
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    with train_stack(args.workdir) as st:
        result = asyncio.run(run_train(st, requests=args.requests, rounds=args.rounds, seed=args.seed))
        result.single_latencies, result.single_floor = asyncio.run(single_click(st, args.single, args.seed))
        problems = check(st, result)
        print(report(result, peak_rss_mib(st)))
        print(f"  approvers were told: {ephemeral_summary(st)}")
        print("  CPU seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(cpu_seconds(st).items())))
        print(f"  load average at the end: {os.getloadavg()[0]:.2f} (2 shared cores: figures are noisy)")
    for p in problems:
        print("INVARIANT BROKEN:", p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
