"""Click-to-receipt: ack → approval recorded → receipt signed, stored → card updated; 8 concurrent clicks.

Real processes (redis-server, signer, emulator, ``keyturn bot``; see ``bench_intake.keyturn_stack``). Each
round creates 8 requests in an environment needing one approval, waits for their cards, then 8 approvers'
clicks are delivered at once through the emulator's signed click path. A click is done when the emulator has
recorded the ``chat.update`` that shows the request APPROVED (the receipt is stored before that update).

* **floor**: the same click by a user who is not an approver — the emulator signs and delivers it, the bot
  verifies it with the signer and acks, and the follow-up work is a refusal. That is the cost of a click
  without recording, signing or updating.

Prints throughput (receipts/s) and p50/p99 latency, and the p99 ratio to the floor.

**1 click** (issue 13's target: p99 within 2× of the signer's fsync-bound floor plus one Slack call):
``--single N`` requests approved one at a time with nothing else running. Each request's CI waiter does
what ``keyturn request --wait`` does (long-poll until final, fetch the receipt, verify it offline with the
gate's own check);
the figure is the time from sending the approve click to that waiter holding the verified receipt. Its floor,
measured in the same run after each click: one in-process ``sign`` (every evidence check, Ed25519) appended to
an audit log with fsync in the same directory as the signer's, plus one ``chat.update`` round trip to the
emulator with the bot's own Slack client.

Usage: ``.venv/bin/python bench/bench_click_to_receipt.py [--rounds N] [--single N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import bench_signer  # noqa: E402
from bench.bench_intake import BenchStack, body_for, ci_headers, keyturn_stack, p  # noqa: E402
from keyturn.bot.messenger import make_web_client, slack_session  # noqa: E402
from keyturn.signer import evidence as ev  # noqa: E402
from keyturn.signer import gate  # noqa: E402
from keyturn.signer.audit import AuditLog  # noqa: E402
from keyturn.signer.keys import SigningKeyset  # noqa: E402
from keyturn.signer.receipt import Scope  # noqa: E402

CONCURRENCY = 8


async def _create_with_card(
    client: httpx.AsyncClient, bot_url: str, i: int, environment: str = "staging"
) -> dict[str, Any]:
    body = body_for(i, environment)
    resp = await client.post(
        f"{bot_url}/v1/requests", content=body, headers=ci_headers("POST", "/v1/requests", body)
    )
    data: dict[str, Any] = resp.json()
    path = f"/v1/requests/{data['requestId']}"
    while not data.get("card"):
        resp = await client.get(
            bot_url + path,
            params={"wait": 30, "since": data["version"]},
            headers=ci_headers("GET", path, b""),
        )
        data = resp.json()
    return data


async def _click(client: httpx.AsyncClient, emu: str, req: dict[str, Any], user: str) -> None:
    """``user`` clicks Approve on ``req``'s card (the emulator signs the click and delivers it to the bot)."""
    card = req["card"]
    resp = await client.post(
        f"{emu}/_emulator/click",
        json={"user": user, "channel": card["channel"], "ts": card["ts"], "action_id": "approve",
              "value": req["requestId"]},
    )  # fmt: skip
    resp.raise_for_status()


async def _click_until_updated(client: httpx.AsyncClient, emu: str, req: dict[str, Any], user: str) -> float:
    card = req["card"]
    t0 = time.perf_counter()
    since = len((await client.get(f"{emu}/_emulator/calls")).json()["calls"])
    await _click(client, emu, req, user)
    while True:  # the emulator's own long-poll for the next chat.update of this card
        waited = await client.get(
            f"{emu}/_emulator/wait",
            params={"method": "chat.update", "ts": card["ts"], "since": since, "timeout": 30},
            timeout=45,
        )
        call = waited.json().get("call") or {}
        since = int(call.get("seq", since)) if call else since
        if "APPROVED" in json.dumps(call.get("params", {})).upper() or waited.status_code != 200:
            return time.perf_counter() - t0


async def _rounds(bot_url: str, emu: str, rounds: int, floor: bool) -> tuple[float, list[float]]:
    latencies: list[float] = []
    elapsed = 0.0
    users = ["U0BOB", "U0CAROL"]
    async with httpx.AsyncClient(timeout=60) as client:
        for r in range(rounds):
            reqs = await asyncio.gather(
                *(_create_with_card(client, bot_url, r * 100 + i) for i in range(CONCURRENCY))
            )
            if floor:
                started = time.perf_counter()
                results = await asyncio.gather(*(_ack_only(client, emu, req) for req in reqs))
            else:
                started = time.perf_counter()
                results = await asyncio.gather(
                    *(_click_until_updated(client, emu, req, users[i % 2]) for i, req in enumerate(reqs))
                )
            elapsed += time.perf_counter() - started
            latencies.extend(results)
    return elapsed, latencies


async def _ack_only(client: httpx.AsyncClient, emu: str, req: dict[str, Any]) -> float:
    t0 = time.perf_counter()
    await _click(client, emu, req, "U0MALLORY")
    return time.perf_counter() - t0


async def _ci_wait(client: httpx.AsyncClient, st: BenchStack, req: dict[str, Any], keyset: Any) -> float:
    """``keyturn request --wait``: long-poll until final, fetch and verify the receipt; when it was done."""
    path = f"/v1/requests/{req['requestId']}"
    data = req
    while data["status"] not in ("APPROVED", "DENIED", "CANCELLED", "EXPIRED"):
        resp = await client.get(
            st.bot_url + path,
            params={"wait": 30, "since": data["version"]},
            headers=ci_headers("GET", path, b""),
        )
        data = resp.json()
    if data["status"] != "APPROVED":
        raise RuntimeError(f"{req['requestId']}: {data['status']}")
    raw = await client.get(f"{st.bot_url}{path}/receipt", headers=ci_headers("GET", f"{path}/receipt", b""))
    gate.check_receipt(raw.content, keyset, Scope(**req["scope"]), datetime.now(UTC), allow_dev_keys=False)
    return time.perf_counter()


class Floor:
    """Issue 13's 1-click floor: one in-process ``sign`` (fresh evidence, every check, Ed25519) appended to an
    audit log with fsync in ``workdir`` (the signer's directory: the same disk), plus one ``chat.update``
    round trip to the emulator with the bot's own Slack client, on a kept-alive session as the bot's."""

    def __init__(self, workdir: Path, emulator_url: str) -> None:
        self.keys = SigningKeyset.generate(workdir / "floor-keys.json", now=datetime.now(UTC))
        self.log = AuditLog.open(workdir / "floor-audit.jsonl")
        self.secrets = ev.Secrets(bench_signer.SLACK, bench_signer.CI)
        self.web = make_web_client("xoxb-keyturn-test-token", f"{emulator_url}/api/")

    def sign_once(self) -> float:
        """Seconds for one sign + audit append."""
        rid, origin, clicks = bench_signer.evidence_set(int(time.time()))
        t0 = time.perf_counter()
        receipt = bench_signer.sign_in_process(
            self.keys, bench_signer.BENCH_POLICY, self.secrets, rid, origin, clicks
        )
        self.log.append({"type": "receipt_issued", "receipt": receipt})
        return time.perf_counter() - t0

    async def measure(self, card: dict[str, str]) -> tuple[float, float]:
        """(sign + fsync, chat.update of ``card``) in seconds, one after the other."""
        signed = await asyncio.to_thread(self.sign_once)
        if self.web.session is None:  # the bot's bounded session (SlackMessenger.start), made in the loop
            self.web.session = slack_session(self.web.timeout)
        t0 = time.perf_counter()
        await self.web.chat_update(channel=card["channel"], ts=card["ts"], text="floor")
        return signed, time.perf_counter() - t0

    async def aclose(self) -> None:
        """Close the floor's audit log and Slack session."""
        self.log.close()
        session, self.web.session = self.web.session, None
        if session is not None:
            await session.close()


async def single_clicks(st: BenchStack, n: int) -> tuple[list[float], list[float], list[float]]:
    """``n`` requests approved one at a time: (click → CI holds the verified receipt, sign floor, Slack call
    floor), seconds each, the floors measured right after each click."""
    keyset = gate.load_keyset(str(st.workdir / "keys.public.json"), trust_keys_in_checkout=True)
    floor = Floor(st.workdir, st.emulator_url)
    latencies: list[float] = []
    signs: list[float] = []
    updates: list[float] = []
    async with httpx.AsyncClient(timeout=60) as client:
        for i in range(n + 2):  # the first two warm up the connections and the code paths
            req = await _create_with_card(client, st.bot_url, 50_000 + i, "staging")
            waiter = asyncio.create_task(_ci_wait(client, st, req, keyset))
            await asyncio.sleep(0.05)  # CI is already waiting when the approver clicks, as in a pipeline
            t0 = time.perf_counter()
            await _click(client, st.emulator_url, req, "U0BOB")
            done = await asyncio.wait_for(waiter, 60)
            s, u = await floor.measure(req["card"])
            if i >= 2:
                latencies.append(done - t0)
                signs.append(s)
                updates.append(u)
    await floor.aclose()
    return latencies, signs, updates


def report_single(latencies: list[float], signs: list[float], updates: list[float]) -> float:
    """Print the 1-click figures; the p99 ratio to the floor."""
    floor = [a + b for a, b in zip(signs, updates, strict=True)]
    ratio = p(latencies, 0.99) / p(floor, 0.99)
    print(f"1 click, {len(latencies)} requests one at a time")
    for name, values in (
        ("floor: in-process sign + audit fsync", signs),
        ("       one chat.update round trip   ", updates),
        ("       sum                          ", floor),
    ):
        print(f"  {name}  p50 {p(values, 0.5):6.1f} ms  p99 {p(values, 0.99):6.1f} ms")
    print(
        f"  keyturn: click → CI holds a verified receipt  p50 {p(latencies, 0.5):6.1f} ms  "
        f"p99 {p(latencies, 0.99):6.1f} ms  mean {1000 * statistics.mean(latencies):6.1f} ms"
    )
    print(
        f"  ratio keyturn/floor: p99 {ratio:.2f}x (target ≤ 2), p50 {p(latencies, 0.5) / p(floor, 0.5):.2f}x"
    )
    return ratio


def main(argv: list[str]) -> int:
    """Measure and print."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--single", type=int, default=30, help="requests approved one at a time (0: skip)")
    ap.add_argument("--only-single", action="store_true", help="skip the rounds of 8 concurrent clicks")
    args = ap.parse_args(argv)
    with keyturn_stack() as st:
        if args.single:
            single = asyncio.run(single_clicks(st, args.single))
        if args.only_single:
            report_single(*single)
            return 0
        asyncio.run(_rounds(st.bot_url, st.emulator_url, 1, floor=False))  # warm-up
        f_elapsed, f_lat = asyncio.run(_rounds(st.bot_url, st.emulator_url, args.rounds, floor=True))
        k_elapsed, k_lat = asyncio.run(_rounds(st.bot_url, st.emulator_url, args.rounds, floor=False))
    n = len(k_lat)
    print(f"click-to-receipt, {n} clicks in rounds of {CONCURRENCY} concurrent")
    print(
        f"  floor   (verified click, ack, refusal): p50 {p(f_lat, 0.5):6.1f} ms  p99 {p(f_lat, 0.99):6.1f} ms"
    )
    print(
        f"  keyturn (ack → receipt → card updated):  {n / k_elapsed:6.1f} receipts/s  "
        f"p50 {p(k_lat, 0.5):6.1f} ms  p99 {p(k_lat, 0.99):6.1f} ms"
    )
    print(
        f"  ratio p99 keyturn/floor: {p(k_lat, 0.99) / p(f_lat, 0.99):.1f}x  (floor elapsed {f_elapsed:.2f}s)"
    )
    if args.single:
        report_single(*single)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
