"""Intake: ``POST /v1/requests`` → card posted (req/s, p99) vs. a minimal ASGI app doing one Redis write.

Both run as real processes against the same private redis-server, loaded from one client event loop
(httpx, keep-alive, ``--concurrency`` workers, each request a distinct commit so none is deduplicated).

* **floor**: a Starlette app under uvicorn whose ``POST /v1/requests`` reads the body and does one Redis
  ``SET``, then answers 202. No authentication, no validation, no Slack.
* **keyturn**: ``keyturn bot`` exactly as deployed, with a real signer process (the CI HMAC is checked over
  its socket) and the Slack emulator. A request counts as done when its card is posted: the client long-polls
  ``GET /v1/requests/{id}?wait=…&since=…`` until ``card`` is set (woken by Redis pub/sub).

Prints throughput and p50/p99 for both and the ratios. Usage:
``.venv/bin/python bench/bench_intake.py [--requests N] [--concurrency C]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
"""


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
                yield BenchStack(bot_url, emu_url, srv.url, work, procs)
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


async def run_load(
    n: int, concurrency: int, one: Callable[[httpx.AsyncClient, int], Awaitable[None]]
) -> tuple[float, list[float]]:
    """Run ``one(client, i)`` for i < n with ``concurrency`` workers; (elapsed s, latencies s)."""
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency * 2)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                t0 = time.perf_counter()
                await one(client, i)
                latencies.append(time.perf_counter() - t0)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started, latencies


def p(values: list[float], q: float) -> float:
    """The q-quantile (0..1) in milliseconds."""
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def intake_one(client: httpx.AsyncClient, bot_url: str, i: int) -> None:
    """POST a request, then long-poll until its card is posted."""
    body = body_for(i)
    resp = await client.post(
        f"{bot_url}/v1/requests", content=body, headers=ci_headers("POST", "/v1/requests", body)
    )
    data: dict[str, Any] = resp.json()
    if resp.status_code != 202:
        raise RuntimeError(f"intake failed: {resp.status_code} {data}")
    path = f"/v1/requests/{data['requestId']}"
    while not data.get("card"):
        resp = await client.get(
            bot_url + path,
            params={"wait": 30, "since": data["version"]},
            headers=ci_headers("GET", path, b""),
        )
        data = resp.json()


def main(argv: list[str]) -> int:
    """Run both measurements and print the figures."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args(argv)
    with keyturn_stack() as st:
        floor_port = free_port()
        floor = start_process(
            "floor", [sys.executable, "-c", FLOOR_APP, str(floor_port), st.redis_url], st.workdir / "logs",
            ready=lambda: _port_open(floor_port),
        )  # fmt: skip
        try:
            floor_url = f"http://127.0.0.1:{floor_port}"

            async def floor_one(client: httpx.AsyncClient, i: int) -> None:
                resp = await client.post(f"{floor_url}/v1/requests", content=body_for(i))
                resp.raise_for_status()

            async def keyturn_one(client: httpx.AsyncClient, i: int) -> None:
                await intake_one(client, st.bot_url, i)

            asyncio.run(run_load(20, args.concurrency, floor_one))  # warm-up
            asyncio.run(run_load(20, args.concurrency, keyturn_one))
            f_elapsed, f_lat = asyncio.run(run_load(args.requests, args.concurrency, floor_one))
            k_elapsed, k_lat = asyncio.run(run_load(args.requests, args.concurrency, keyturn_one))
        finally:
            floor.stop()
    f_rps, k_rps = args.requests / f_elapsed, args.requests / k_elapsed
    print(f"intake, {args.requests} requests at concurrency {args.concurrency}")
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


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    sys.exit(main(sys.argv[1:]))
