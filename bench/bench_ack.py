"""Approve-click ack latency: Keyturn's /slack/events vs. a minimal Bolt AsyncApp that only acks.

Both apps run under uvicorn in one child process; the load comes from this process (aiohttp, keep-alive,
one connection per concurrent clicker), measured in interleaved rounds. Each click is a genuine signed
``block_actions`` body carrying a real card (about 4 KB), timestamp fresh.

* **floor**: ``AsyncApp(signing_secret=...)`` with Bolt's own in-process signature verification and a local
  ``authorize`` (no ``auth.test``), one listener ``@app.action("approve")`` that only calls ``ack()``, stock
  settings, served by Bolt's ASGI adapter.
* **keyturn**: ``keyturn.bot.app`` exactly as deployed: every request is checked by a **real signer
  process** over its Unix socket (``check_slack``; client pool of 32 connections), then dispatched to the
  listeners, which ack and hand off. The work after the ack is an in-memory stub (click-to-receipt is measured
  elsewhere).

Prints p50/p99 at 1, 8 and 32 concurrent clicks and the p99 ratio keyturn/floor (target <= 1.3).
Usage: ``.venv/bin/python bench/bench_ack.py [--requests N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import uvicorn
from slack_bolt.adapter.asgi.async_handler import AsyncSlackRequestHandler
from slack_bolt.async_app import AsyncApp
from slack_bolt.authorization import AuthorizeResult
from starlette.applications import Starlette
from starlette.routing import Route

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from keyturn.bot.app import build_slack_endpoint  # noqa: E402
from keyturn.bot.cards import render_card  # noqa: E402
from keyturn.bot.messenger import make_web_client  # noqa: E402
from keyturn.bot.models import CardRef, DeployRequest, Scope, SlackEvidence  # noqa: E402
from keyturn.bot.ports import Refused  # noqa: E402
from keyturn.bot.signer_client import SignerClient  # noqa: E402
from keyturn.emulator.interactions import slack_signature  # noqa: E402
from keyturn.signer.policy import Policy  # noqa: E402

POLICY_PATH = ROOT / "bot" / "dev_policy.toml"
POLICY = Policy.from_bytes(POLICY_PATH.read_bytes())
SHA = "4f2a9c0d3b8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a"
RID = "req_01JDQ4Z8Y3K6W2V7T5R9P0M1N2"
LEVELS = (1, 8, 32)
KEYTURN = [sys.executable, "-m", "keyturn"]


class StubApprovals:
    """Approvals whose work after the ack costs nothing: this benchmark is about the ack."""

    async def approve(self, request_id: str, user_id: str, evidence: SlackEvidence) -> Any:
        raise Refused("already_approved")

    def __getattr__(self, name: str) -> Any:
        raise NotImplementedError(name)


class StubMessenger:
    """A messenger that says nothing (ephemeral replies after the ack are not measured)."""

    async def ephemeral(self, channel: str, user_id: str, text: str) -> None:
        """Nothing."""

    def __getattr__(self, name: str) -> Any:
        raise NotImplementedError(name)


def click_body() -> str:
    """A realistic approve click: payload with the real card the bot would have posted."""
    now = datetime.now(UTC)
    req = DeployRequest(
        id=RID,
        scope=Scope(repo="acme/web", sha=SHA, environment="production", workflow="deploy"),
        requester="github:alice",
        requester_slack_id="U0ALICE",
        ref="refs/heads/main",
        run_url="https://ci.example/acme/web/actions/runs/42",
        title="Release 1.2",
        created_at=now,
        expires_at=now + timedelta(minutes=30),
        required_approvals=2,
        card=CardRef(channel="C0DEPLOYS", ts="1700000000.000100"),
    )
    card = render_card(req, POLICY, now)
    payload = {
        "type": "block_actions",
        "api_app_id": "A0KEYTURN",
        "team": {"id": "T0KEYTURN", "domain": "acme"},
        "user": {"id": "U0BOB", "username": "bob", "name": "bob", "team_id": "T0KEYTURN"},
        "channel": {"id": "C0DEPLOYS", "name": "deploys"},
        "container": {"type": "message", "message_ts": "1700000000.000100", "channel_id": "C0DEPLOYS"},
        "message": {"type": "message", "ts": "1700000000.000100", "text": card.text, "blocks": card.blocks},
        "trigger_id": "1.2.3",
        "response_url": "http://127.0.0.1:9/response/x",
        "actions": [
            {
                "type": "button",
                "action_id": "approve",
                "block_id": "kt_decision",
                "value": RID,
                "action_ts": "1700000001.000200",
            }
        ],
    }
    return urlencode({"payload": json.dumps(payload, separators=(",", ":"))})


def floor_app(secret: str) -> AsyncSlackRequestHandler:
    """The minimal Bolt AsyncApp that only acks, served by Bolt's own ASGI adapter on /slack/events."""

    async def authorize(enterprise_id: str | None, team_id: str | None) -> AuthorizeResult:
        return AuthorizeResult(enterprise_id=enterprise_id, team_id=team_id, bot_token="xoxb-bench")

    app = AsyncApp(signing_secret=secret, authorize=authorize, name="floor")

    async def approve(ack: Any) -> None:
        await ack()

    app.action("approve")(approve)
    return AsyncSlackRequestHandler(app)


class ServerThread(threading.Thread):
    """Both uvicorn servers on one event loop (in the child process)."""

    def __init__(self, secret: str, signer_socket: Path) -> None:
        super().__init__(daemon=True)
        self.secret = secret
        self.signer_socket = signer_socket
        self.ports = {"floor": free_port(), "keyturn": free_port()}
        self.ready = threading.Event()
        self.servers: list[uvicorn.Server] = []

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        signer = SignerClient(self.signer_socket, pool_size=32)
        client = make_web_client("xoxb-bench", "http://127.0.0.1:9/api/")
        endpoint = build_slack_endpoint(StubApprovals(), StubMessenger(), signer, POLICY, client)
        keyturn = Starlette(routes=[Route("/slack/events", endpoint.handle, methods=["POST"])])
        apps: dict[str, Any] = {"floor": floor_app(self.secret), "keyturn": keyturn}
        for name, app in apps.items():
            cfg = uvicorn.Config(
                app, host="127.0.0.1", port=self.ports[name], log_level="error", lifespan="off"
            )
            self.servers.append(uvicorn.Server(cfg))
        tasks = [asyncio.create_task(s.serve()) for s in self.servers]
        while not all(s.started for s in self.servers):  # noqa: ASYNC110 - uvicorn exposes only a flag
            await asyncio.sleep(0.01)
        self.ready.set()
        await asyncio.gather(*tasks)
        await endpoint.drain()
        await signer.close()

    def stop(self) -> None:
        for s in self.servers:
            s.should_exit = True
            s.force_exit = True


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def run_load(url: str, secret: str, body: str, concurrency: int, total: int) -> list[float]:
    """``total`` clicks from ``concurrency`` clickers; latency of each (seconds). Any non-200 aborts."""
    latencies: list[float] = []
    per_worker = total // concurrency
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for _ in range(per_worker):
                ts = str(int(time.time()))
                headers = {
                    "Content-Type": "application/x-www-form-urlencoded",
                    "X-Slack-Request-Timestamp": ts,
                    "X-Slack-Signature": slack_signature(secret, ts, body),
                }
                started = time.perf_counter()
                async with session.post(url, data=body.encode(), headers=headers) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"{url} answered {resp.status}: {(await resp.read())[:200]!r}")
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def start_signer(work: Path, secret: str) -> subprocess.Popen[bytes]:
    keyset = work / "keys.json"
    subprocess.run([*KEYTURN, "keygen", "--dev", "--out", str(keyset)], check=True, capture_output=True)
    sock = work / "signer.sock"
    env = dict(os.environ) | {
        "KEYTURN_DEV_MODE": "1",
        "KEYTURN_SIGNER_SOCKET": str(sock),
        "KEYTURN_SIGNER_KEYSET": str(keyset),
        "KEYTURN_POLICY": str(POLICY_PATH),
        "KEYTURN_SLACK_SIGNING_SECRET": secret,
        "KEYTURN_CI_SECRET": secrets.token_hex(24),
        "KEYTURN_AUDIT_LOG": str(work / "audit.jsonl"),
    }
    proc = subprocess.Popen(
        [*KEYTURN, "signer"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 20
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("signer did not start")
        time.sleep(0.05)
    return proc


async def measure(ports: dict[str, int], secret: str, requests: int) -> int:
    """Warm up, then measure both apps at each concurrency level, interleaved; print the table."""
    body = click_body()
    urls = {name: f"http://127.0.0.1:{port}/slack/events" for name, port in ports.items()}
    for url in urls.values():  # warm up both (imports, first-request setup, connection pools)
        await run_load(url, secret, body, 4, 200)
    print(f"approve-click ack latency, body {len(body)} bytes, {requests} clicks per level (ms)")
    head = f"{'floor p50':>9} {'floor p99':>9} | {'keyturn p50':>11} {'keyturn p99':>11}"
    print(f"{'clickers':>8} | {head} | p99 ratio")
    worst = 0.0
    for level in LEVELS:
        total = max(level, requests - requests % level)
        # Interleave rounds so drift (CPU frequency, other load) hits both sides alike.
        samples: dict[str, list[float]] = {"floor": [], "keyturn": []}
        for _ in range(4):
            for name in ("floor", "keyturn"):
                samples[name] += await run_load(urls[name], secret, body, level, total // 4 or level)
        f50, f99 = pct(samples["floor"], 0.5), pct(samples["floor"], 0.99)
        k50, k99 = pct(samples["keyturn"], 0.5), pct(samples["keyturn"], 0.99)
        ratio = k99 / f99
        worst = max(worst, ratio)
        print(f"{level:>8} | {f50:>9.2f} {f99:>9.2f} | {k50:>11.2f} {k99:>11.2f} | {ratio:.2f}")
    print(f"worst p99 ratio {worst:.2f} (target <= 1.3): {'OK' if worst <= 1.3 else 'ABOVE TARGET'}")
    return 0


def serve_main(secret: str, signer_socket: str) -> int:
    """Child-process mode: run both servers, print their ports, serve until killed."""
    servers = ServerThread(secret, Path(signer_socket))
    servers.start()
    if not servers.ready.wait(20):
        return 1
    print(json.dumps(servers.ports), flush=True)
    servers.join()
    return 0


def main() -> int:
    """Run the benchmark; exit 0 when it ran (the ratio is reported, not asserted)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--requests", type=int, default=800, help="clicks per concurrency level (default 800)")
    p.add_argument("--serve", nargs=2, metavar=("SECRET", "SOCKET"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        return serve_main(*args.serve)
    secret = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="keyturn-bench-") as tmp:
        signer = start_signer(Path(tmp), secret)
        # The servers run in their own process so the load generator does not share their GIL.
        child = subprocess.Popen(
            [sys.executable, __file__, "--serve", secret, str(Path(tmp) / "signer.sock")],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        try:
            assert child.stdout is not None
            line = child.stdout.readline()
            if not line:
                raise RuntimeError("servers did not start")
            ports = json.loads(line)
            return asyncio.run(measure(ports, secret, args.requests))
        finally:
            child.terminate()
            child.wait(10)
            signer.terminate()
            signer.wait(10)


if __name__ == "__main__":
    sys.exit(main())
