"""Click-to-receipt: ack → approval recorded → receipt signed, stored → card updated; 8 concurrent clicks.

Real processes (redis-server, signer, emulator, ``keyturn bot``; see ``bench_intake.keyturn_stack``). Each
round creates 8 requests in an environment needing one approval, waits for their cards, then 8 approvers'
clicks are delivered at once through the emulator's signed click path. A click is done when the emulator has
recorded the ``chat.update`` that shows the request APPROVED (the receipt is stored before that update).

* **floor**: the same click by a user who is not an approver — the emulator signs and delivers it, the bot
  verifies it with the signer and acks, and the follow-up work is a refusal. That is the cost of a click
  without recording, signing or updating.

Prints throughput (receipts/s) and p50/p99 latency, and the p99 ratio to the floor.
Usage: ``.venv/bin/python bench/bench_click_to_receipt.py [--rounds N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_intake import body_for, ci_headers, keyturn_stack, p  # noqa: E402

CONCURRENCY = 8


async def _create_with_card(client: httpx.AsyncClient, bot_url: str, i: int) -> dict[str, Any]:
    body = body_for(i, "staging")
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


async def _click_until_updated(client: httpx.AsyncClient, emu: str, req: dict[str, Any], user: str) -> float:
    card = req["card"]
    t0 = time.perf_counter()
    since = len((await client.get(f"{emu}/_emulator/calls")).json()["calls"])
    resp = await client.post(
        f"{emu}/_emulator/click",
        json={"user": user, "channel": card["channel"], "ts": card["ts"], "action_id": "approve",
              "value": req["requestId"]},
    )  # fmt: skip
    resp.raise_for_status()
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
    card = req["card"]
    t0 = time.perf_counter()
    resp = await client.post(
        f"{emu}/_emulator/click",
        json={"user": "U0MALLORY", "channel": card["channel"], "ts": card["ts"], "action_id": "approve",
              "value": req["requestId"]},
    )  # fmt: skip
    resp.raise_for_status()
    return time.perf_counter() - t0


def main(argv: list[str]) -> int:
    """Measure and print."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    with keyturn_stack() as st:
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
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
