"""Issue 14 finding 2 (rest): a source flooding bad signatures is refused before the signer, per address.

Real processes: the signer, the emulator and one ``keyturn bot`` with ``KEYTURN_SOURCE_BURST=20`` and
``KEYTURN_SOURCE_RATE=5``. The flood comes from 127.0.0.2 (another loopback address): 32 threads sending
60 KiB bodies with well-formed, fresh, wrong signatures to both endpoints, which pass every cheap check and
would each cost a signer call. Legitimate CI calls and approve clicks come from 127.0.0.1 meanwhile and
must complete within a stated bound; the flood's signer calls (its 401s) stay within burst + rate × time.
"""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from keyturn.bot.cards import APPROVE_ACTION
from keyturn.bot.prefilter import SourceLimiter
from keyturn.emulator.client import EmulatorClient
from tests import harness
from tests.fixtures import STAGING_POLICY
from tests.harness import Proc, free_port

CI_SECRET = "source-ci-secret-0123456789abcdef0123456789"
SLACK_SECRET = "source-slack-signing-secret-0123456789abcdef"
POLICY = STAGING_POLICY
BURST, RATE = 20, 5
FLOOD_S = 8.0
FLOOD_THREADS = 32
BOUND_S = 3.0  # each legitimate call (CI create, click ack, click -> APPROVED) while the flood runs


def test_source_limiter_refuses_after_the_burst_and_forgives_at_the_rate() -> None:
    now = [0.0]
    limiter = SourceLimiter(3, 2.0, max_sources=2, clock=lambda: now[0])
    assert limiter.blocked("a") is None
    assert [limiter.acquire("a") for _ in range(4)] == [None, None, None, 1]
    assert limiter.blocked("a") == 1  # looking takes nothing
    assert limiter.acquire("b") is None  # another address is not affected
    limiter.release("b")  # b authenticated: its token is back
    now[0] = 0.5  # one token back at 2 a second
    assert limiter.acquire("a") is None
    assert limiter.acquire("a") == 1
    assert limiter.acquire("c") is None  # a third address: the least recently seen ("b") is forgotten
    assert SourceLimiter.off().acquire("a") is None


@pytest.fixture
def stack(redis_url: str, tmp_path: Path) -> Iterator[tuple[str, EmulatorClient, list[Proc]]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    redis_url = f"{redis_url}?db=10"  # a database of its own, apart from the session's e2e bot (db 0)
    env = {
        "KEYTURN_DEV_MODE": "1",
        "KEYTURN_LOG_LEVEL": "WARNING",
        "KEYTURN_SOURCE_BURST": str(BURST),
        "KEYTURN_SOURCE_RATE": str(RATE),
    }
    with harness.signer_and_emulator(
        tmp_path, POLICY, slack_secret=SLACK_SECRET, ci_secret=CI_SECRET, bot_url=url
    ) as backends:
        backends.start_bot(port=port, redis_url=redis_url, env=env)
        with EmulatorClient(backends.emulator_url) as emu:
            yield url, emu, backends.procs


def _flood(url: str, stop: threading.Event, counts: Counter[int]) -> None:
    """Bad signatures from 127.0.0.2 until ``stop``: CI creates and Slack events in turn."""
    transport = httpx.HTTPTransport(local_address="127.0.0.2")
    body = b'{"pad":"' + b"x" * 60_000 + b'"}'
    lock = threading.Lock()
    with httpx.Client(transport=transport, timeout=10) as client:
        i = 0
        while not stop.is_set():
            i += 1
            stamp = str(int(time.time()))
            if i % 2:
                path = "/v1/requests"
                headers = {"X-Keyturn-Timestamp": stamp, "X-Keyturn-Signature": "v1=" + "ab" * 32}
            else:
                path = "/slack/events"
                headers = {"X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": "v0=" + "cd" * 32}
            try:
                status = client.post(url + path, content=body, headers=headers).status_code
            except httpx.HTTPError:
                status = 0
            with lock:
                counts[status] += 1


def test_a_bad_signature_flood_from_one_source_spares_the_signer_and_legitimate_traffic(
    stack: tuple[str, EmulatorClient, list[Proc]],
) -> None:
    url, emu, procs = stack
    stop = threading.Event()
    counts: Counter[int] = Counter()
    worst: dict[str, float] = {"create": 0.0, "ack": 0.0, "approved": 0.0}
    with (
        httpx.Client(timeout=30) as http,
        concurrent.futures.ThreadPoolExecutor(FLOOD_THREADS) as pool,
    ):

        def ci(method: str, path: str, body: bytes = b"", **params: Any) -> httpx.Response:
            headers = harness.ci_headers(CI_SECRET, method, path, body)
            return http.request(method, url + path, content=body or None, headers=headers, params=params)

        started = time.monotonic()
        floods = [pool.submit(_flood, url, stop, counts) for _ in range(FLOOD_THREADS)]
        n = 0
        try:
            while time.monotonic() - started < FLOOD_S:
                n += 1
                body = json.dumps({
                    "repo": "acme/web", "sha": f"{n:040x}", "environment": "staging",
                    "workflow": "deploy.yml", "requester": "github:alice",
                }).encode()  # fmt: skip
                t0 = time.monotonic()
                resp = ci("POST", "/v1/requests", body)
                worst["create"] = max(worst["create"], time.monotonic() - t0)
                assert resp.status_code == 202, resp.text
                view = resp.json()
                rid = view["requestId"]
                while not view.get("card"):
                    view = ci("GET", f"/v1/requests/{rid}", wait=5, since=view["version"]).json()
                card = view["card"]
                built = emu.click("U0BOB", card["channel"], card["ts"], APPROVE_ACTION, rid, send=False)
                t0 = time.monotonic()
                ack = http.post(
                    url + "/slack/events",
                    content=built.request["body"].encode(),
                    headers=built.request["headers"],
                )
                worst["ack"] = max(worst["ack"], time.monotonic() - t0)
                assert ack.status_code == 200, ack.text
                while view["status"] == "PENDING":
                    view = ci("GET", f"/v1/requests/{rid}", wait=5, since=view["version"]).json()
                worst["approved"] = max(worst["approved"], time.monotonic() - t0)
                assert view["status"] == "APPROVED", view
        finally:
            stop.set()
            for f in floods:
                f.result(30)
        elapsed = time.monotonic() - started
    assert all(p.alive() for p in procs)
    print(
        f"flood: {sum(counts.values())} requests in {elapsed:.1f} s ({dict(counts)}); "
        f"{n} legitimate rounds; worst create {worst['create'] * 1000:.0f} ms, "
        f"ack {worst['ack'] * 1000:.0f} ms, click->APPROVED {worst['approved'] * 1000:.0f} ms"
    )
    # The flood's signer calls: the 401s (each a signer refusal), bounded by the bucket.
    assert counts[401] <= BURST + RATE * elapsed + 2, counts
    assert counts[429] > 10 * counts[401], counts
    assert max(worst.values()) < BOUND_S, worst
