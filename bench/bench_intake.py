"""Intake: ``POST /v1/requests`` → card posted (req/s, p99) vs. a minimal ASGI app doing one Redis write.

Both run as real processes against the same private redis-server, loaded from one client event loop
(httpx or, with ``--client aiohttp``, aiohttp; keep-alive, ``--concurrency`` workers, each request a
distinct commit so none is deduplicated).

* **floor**: a Starlette app under uvicorn whose ``POST /v1/requests`` reads the body and does one Redis
  ``SET``, then answers 202. No authentication, no validation, no Slack.
* **keyturn**: ``keyturn bot`` exactly as deployed, with a real signer process (the CI HMAC is checked over
  its socket) and the Slack emulator. A request counts as done when its card is posted: the client long-polls
  ``GET /v1/requests/{id}?wait=…&since=…`` until ``card`` is set (woken by Redis pub/sub).

Prints throughput and p50/p99 for both and the ratios. Usage:
``.venv/bin/python bench/bench_intake.py [--requests N] [--concurrency C] [--client httpx|aiohttp]``.

``--profile`` runs Keyturn's side only and counts what each request costs: Redis commands (redis-server's
``MONITOR``, by command name) and Slack Web API calls (the emulator's call log, by method).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import harness  # noqa: E402
from tests.harness import (  # noqa: E402
    Proc,
    free_port,
    redis_server,
    start_process,
)

CI_SECRET = "bench-ci-secret-0123456789abcdef0123456789"
SLACK_SECRET = "bench-slack-signing-secret-0123456789abcdef"
POLICY = """\
version = 1
[slack]
command = "/keyturn"
team_id = "T0KEYTURN"
[identities]
"github:alice" = "U0ALICE"
[environments.production]
channel = "C0DEPLOYS"
approvers = ["U0BOB", "U0CAROL"]
approver_groups = ["S0ONCALL"]
required_approvals = 2
request_ttl = "30m"
receipt_ttl = "15m"
[environments.staging]
channel = "C0STAGING"
approvers = ["U0BOB", "U0CAROL"]
required_approvals = 1
request_ttl = "30m"
receipt_ttl = "30m"
confirm_approve = false
[groups.S0ONCALL]
members = ["U0ERIN"]
"""

FLOOR_APP = """
import sys, redis.asyncio as aioredis, uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
r = aioredis.Redis.from_url(sys.argv[2])
n = 0
async def create(request):
    global n
    body = await request.body()
    n += 1
    await r.set(f"floor:{n}", body)
    return JSONResponse({"status": "PENDING"}, status_code=202)
app = Starlette(routes=[Route("/v1/requests", create, methods=["POST"])])
# The bot's stack (stack_description): h11, and the bot's event loop.
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False,
            http="h11", loop=sys.argv[3])
"""


def stack_description() -> str:
    """What serves both sides here: uvicorn's HTTP protocol, the event loop, redis-py's reply parser."""
    from redis.utils import HIREDIS_AVAILABLE

    from keyturn.bot.edge import event_loop

    return f"uvicorn h11 on {event_loop()}, redis-py parser {'hiredis' if HIREDIS_AVAILABLE else 'Python'}"


def ci_headers(method: str, path: str, body: bytes) -> dict[str, str]:
    """Signed ``X-Keyturn-*`` headers."""
    return harness.ci_headers(CI_SECRET, method, path, body)


@dataclass
class BenchStack:
    """The running processes."""

    bot_url: str
    emulator_url: str
    redis_url: str
    workdir: Path
    procs: dict[str, Proc]


@contextlib.contextmanager
def keyturn_stack() -> Iterator[BenchStack]:
    """redis-server, signer, emulator and bot on free ports in a temp dir."""
    with tempfile.TemporaryDirectory(prefix="keyturn-bench-") as tmp:
        work = Path(tmp)
        logs = work / "logs"
        policy = work / "keyturn.toml"
        policy.write_text(POLICY)
        keyset, _ = harness.keygen(work)
        bot_port = free_port()
        bot_url = f"http://127.0.0.1:{bot_port}"
        procs: dict[str, Proc] = {}
        with redis_server(work / "redis") as srv:
            try:
                procs["signer"], sock = harness.start_signer(
                    work, logs, policy=policy, keyset=keyset, slack_secret=SLACK_SECRET, ci_secret=CI_SECRET
                )
                procs["emulator"], emu_url = harness.start_emulator(
                    logs, slack_secret=SLACK_SECRET, bot_url=bot_url
                )
                procs["bot"] = harness.start_bot(
                    logs,
                    port=bot_port,
                    redis_url=srv.url,
                    signer_socket=sock,
                    policy=policy,
                    emulator_url=emu_url,
                    cwd=work,
                    env={"KEYTURN_LOG_LEVEL": "WARNING"},
                )
                yield BenchStack(bot_url, emu_url, srv.url, work, procs | {"redis": srv.proc})
            finally:
                for p in reversed(list(procs.values())):
                    p.stop()


def body_for(i: int, environment: str = "production") -> bytes:
    """A request body with a distinct sha per ``i``."""
    sha = hashlib.sha1(f"bench-{i}-{time.time_ns()}".encode()).hexdigest()  # noqa: S324 - just a fake sha
    return json.dumps(
        {"repo": "acme/web", "sha": sha, "environment": environment, "workflow": "deploy.yml",
         "requester": "github:alice"}
    ).encode()  # fmt: skip


class LoadClient:
    """The load generator's HTTP client, the same for the floor and Keyturn: httpx (the default, as for every
    figure before 2026-12-01) or aiohttp (``--client aiohttp``: about a fifth of httpx's CPU per request,
    which matters on two cores shared with the processes measured). Keep-alive, at most 2 × concurrency
    connections."""

    def __init__(self, kind: str, concurrency: int) -> None:
        self.kind = kind
        self._httpx: httpx.AsyncClient | None = None
        self._aiohttp: aiohttp.ClientSession | None = None
        if kind == "httpx":
            limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency * 2)
            self._httpx = httpx.AsyncClient(timeout=60, limits=limits)
        else:
            connector = aiohttp.TCPConnector(limit=concurrency * 2)
            self._aiohttp = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=60)
            )

    async def request(
        self, method: str, url: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        """One request; (status, body)."""
        if self._httpx is not None:
            resp = await self._httpx.request(method, url, content=body or None, headers=headers)
            return resp.status_code, resp.content
        assert self._aiohttp is not None
        async with self._aiohttp.request(method, url, data=body or None, headers=headers) as r:
            return r.status, await r.read()

    async def aclose(self) -> None:
        """Close the client's connections."""
        if self._httpx is not None:
            await self._httpx.aclose()
        if self._aiohttp is not None:
            await self._aiohttp.close()


async def run_load(
    n: int, concurrency: int, one: Callable[[LoadClient, int], Awaitable[None]], client_kind: str = "httpx"
) -> tuple[float, list[float]]:
    """Run ``one(client, i)`` for i < n with ``concurrency`` workers; (elapsed s, latencies s)."""
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    client = LoadClient(client_kind, concurrency)

    async def worker() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            t0 = time.perf_counter()
            await one(client, i)
            latencies.append(time.perf_counter() - t0)

    try:
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started, latencies
    finally:
        await client.aclose()


def p(values: list[float], q: float) -> float:
    """The q-quantile (0..1) in milliseconds."""
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def intake_one(client: LoadClient, bot_url: str, i: int) -> None:
    """POST a request, then long-poll until its card is posted."""
    body = body_for(i)
    headers = ci_headers("POST", "/v1/requests", body)
    status, raw = await client.request("POST", f"{bot_url}/v1/requests", body, headers)
    data: dict[str, Any] = json.loads(raw)
    if status != 202:
        raise RuntimeError(f"intake failed: {status} {data}")
    path = f"/v1/requests/{data['requestId']}"
    while not data.get("card"):
        url = f"{bot_url}{path}?wait=30&since={data['version']}"
        _, raw = await client.request("GET", url, headers=ci_headers("GET", path, b""))
        data = json.loads(raw)


def main(argv: list[str]) -> int:
    """Run both measurements and print the figures."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--profile", action="store_true", help="count Redis commands and Slack calls per request")
    ap.add_argument(
        "--client", choices=("httpx", "aiohttp"), default="httpx", help="the load generator's client"
    )
    ap.add_argument("--py-spy", type=Path, metavar="FILE", help="with --profile: the bot's sampled stacks")
    args = ap.parse_args(argv)
    if args.profile:
        return profile(args.requests, args.concurrency, args.py_spy, args.client)
    from keyturn.bot.edge import event_loop

    with keyturn_stack() as st:
        floor_port = free_port()
        floor = start_process(
            "floor", [sys.executable, "-c", FLOOR_APP, str(floor_port), st.redis_url, event_loop()],
            st.workdir / "logs",
            ready=lambda: _port_open(floor_port),
        )  # fmt: skip
        try:
            floor_url = f"http://127.0.0.1:{floor_port}"

            async def floor_one(client: LoadClient, i: int) -> None:
                status, _ = await client.request("POST", f"{floor_url}/v1/requests", body_for(i))
                if status != 202:
                    raise RuntimeError(f"floor answered {status}")

            async def keyturn_one(client: LoadClient, i: int) -> None:
                await intake_one(client, st.bot_url, i)

            kind = args.client
            asyncio.run(run_load(20, args.concurrency, floor_one, kind))  # warm-up
            asyncio.run(run_load(20, args.concurrency, keyturn_one, kind))
            f_elapsed, f_lat = asyncio.run(run_load(args.requests, args.concurrency, floor_one, kind))
            k_elapsed, k_lat = asyncio.run(run_load(args.requests, args.concurrency, keyturn_one, kind))
        finally:
            floor.stop()
    f_rps, k_rps = args.requests / f_elapsed, args.requests / k_elapsed
    print(
        f"intake, {args.requests} requests at concurrency {args.concurrency}, load generator's client "
        f"{args.client}; both served by: {stack_description()}"
    )
    for name, rps, lat in (
        ("floor   (POST + one Redis SET)", f_rps, f_lat),
        ("keyturn (POST → card posted)  ", k_rps, k_lat),
    ):
        print(f"  {name}: {rps:8.1f} req/s  p50 {p(lat, 0.5):6.1f} ms  p99 {p(lat, 0.99):6.1f} ms")
    print(
        f"  ratio keyturn/floor: throughput {k_rps / f_rps:.2f}x, p99 {p(k_lat, 0.99) / p(f_lat, 0.99):.1f}x"
    )
    print(f"  mean keyturn latency {statistics.mean(k_lat) * 1000:.1f} ms")
    return 0


def profile(n: int, concurrency: int, py_spy_out: Path | None = None, client_kind: str = "httpx") -> int:
    """Print the CPU each process spends, the Redis commands (by name) and Slack calls (by method) per
    request, Keyturn side only; with ``py_spy_out``, also sample the bot's stacks there (needs py-spy)."""
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) if py_spy_out else None
    if py_spy_out and py_spy is None:
        raise SystemExit("--py-spy needs py-spy: .venv/bin/pip install py-spy")
    from keyturn.emulator.client import EmulatorClient

    with keyturn_stack() as st:

        async def keyturn_one(client: LoadClient, i: int) -> None:
            await intake_one(client, st.bot_url, i)

        asyncio.run(
            run_load(20, concurrency, keyturn_one, client_kind)
        )  # warm-up: scripts loaded, pools filled
        emulator = EmulatorClient(st.emulator_url)
        since = len(emulator.calls())
        sock = st.redis_url.removeprefix("unix://")
        out = st.workdir / "monitor.log"
        with out.open("wb") as sink:
            monitor = subprocess.Popen(["redis-cli", "-s", sock, "monitor"], stdout=sink)
            spy = None
            if py_spy:  # sampled stacks of the bot, collapsed ("folded") for a flame graph or a summary
                spy = subprocess.Popen(
                    [py_spy, "record", "--pid", str(st.procs["bot"].popen.pid), "--format", "raw",
                     "--rate", "200", "--output", str(py_spy_out), "--nonblocking"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
            try:
                time.sleep(0.5)  # MONITOR attached before the first request
                cpu_before, load_before = cpu_seconds(st.procs), time.process_time()
                elapsed, _ = asyncio.run(run_load(n, concurrency, keyturn_one, client_kind))
                cpu = {k: v - cpu_before.get(k, 0.0) for k, v in cpu_seconds(st.procs).items()}
                cpu["load generator"] = time.process_time() - load_before
                time.sleep(1.0)  # the last card's trailing writes
            finally:
                monitor.terminate()
                monitor.wait()
                if spy is not None:
                    spy.send_signal(signal.SIGINT)
                    spy.wait(timeout=60)
        sent: Counter[str] = Counter()  # round trips: what the bot sent (scripts count once)
        in_lua: Counter[str] = Counter()  # what those scripts ran inside redis-server
        for line in out.read_text(errors="replace").splitlines():
            parts = line.split('"')
            if len(parts) > 1:
                name = parts[1].upper()
                (in_lua if "[0 lua]" in parts[0] else sent)[name] += 1
        slack = Counter(c["method"] for c in emulator.calls(since=since))
    print(f"intake profile, {n} requests at concurrency {concurrency}: {n / elapsed:.1f} req/s (MONITOR on)")
    print(f"  stack: {stack_description()}; load generator's client {client_kind}")
    print("  CPU ms per request: " + ", ".join(f"{k} {1000 * v / n:.1f}" for k, v in cpu.items()))
    for title, counts in (("commands the bot sent", sent), ("commands run inside its scripts", in_lua)):
        print(f"  redis {title}, per request: {sum(counts.values()) / n:.1f}")
        for name, count in counts.most_common():
            print(f"    {name:<24} {count / n:6.2f}")
    print(f"  slack calls per request: {sum(slack.values()) / n:.2f}")
    for name, count in slack.most_common():
        print(f"    {name:<24} {count / n:6.2f}")
    return 0


def cpu_seconds(procs: dict[str, Proc]) -> dict[str, float]:
    """CPU time (user + system) each process has used so far."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for name, proc in procs.items():
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{proc.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
            out[name] = (int(fields[11]) + int(fields[12])) / tick
    return out


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    sys.exit(main(sys.argv[1:]))
