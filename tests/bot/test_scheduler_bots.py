"""Reminders, escalation and expiry through two real ``keyturn bot`` replicas, the signer and the emulator.

Both replicas share one Redis (a database of their own). A request created through replica A, with demo
timings (8 s lifetime, a reminder every 2 s, escalation after the first), must produce each reminder, the
escalation and the expiry exactly once in Slack, whichever replica leads.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot.emulator.client import EmulatorClient
from tests import harness
from tests.harness import Proc, free_port

CI_SECRET = "sched-ci-secret-0123456789abcdef0123456789"
SLACK_SECRET = "sched-slack-signing-secret-0123456789abcdef"
SHA = "4f8a2cd91ef7a2c7f3a5f0aa12d93b33f2d40e17"
POLICY = """\
version = 1
[slack]
command = "/keyturn"
team_id = "T0KEYTURN"
[identities]
"github:alice" = "U0ALICE"
[environments.timed]
channel = "C0DEPLOYS"
approvers = ["U0BOB", "U0CAROL"]
required_approvals = 2
request_ttl = "8s"
receipt_ttl = "15m"
remind_every = "2s"
escalate_after = 1
escalate_to = ["U0DAVE"]
"""


@dataclass
class Bots:
    urls: list[str]
    emulator: EmulatorClient
    procs: dict[str, Proc]

    def logs(self) -> str:
        return "\n".join(f"--- {n}\n{p.log()[-4000:]}" for n, p in self.procs.items())


@pytest.fixture
def bots(redis_url: str, tmp_path: Path) -> Iterator[Bots]:
    policy = tmp_path / "keyturn.toml"
    policy.write_text(POLICY)
    keyset, _ = harness.keygen(tmp_path)
    logs = tmp_path / "logs"
    ports = [free_port(), free_port()]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    procs: dict[str, Proc] = {}
    try:
        procs["signer"], sock = harness.start_signer(
            tmp_path, logs, policy=policy, keyset=keyset, slack_secret=SLACK_SECRET, ci_secret=CI_SECRET
        )
        procs["emulator"], emu_url = harness.start_emulator(logs, slack_secret=SLACK_SECRET, bot_url=urls[0])
        for name, port in zip(("bot-a", "bot-b"), ports, strict=True):
            procs[name] = harness.start_bot(
                logs,
                name=name,
                port=port,
                # A database of its own: the session's e2e bot (db 0) runs timers too.
                redis_url=f"{redis_url}?db=7",
                signer_socket=sock,
                policy=policy,
                emulator_url=emu_url,
                cwd=tmp_path,
            )
    except Exception:
        for p in procs.values():
            p.stop()
        raise
    with EmulatorClient(emu_url) as emulator:
        yield Bots(urls, emulator, procs)
    for p in reversed(list(procs.values())):
        p.stop()


def ci_post(url: str, path: str, body: dict[str, Any]) -> httpx.Response:
    raw = json.dumps(body).encode()
    headers = harness.ci_headers(CI_SECRET, "POST", path, raw)
    return httpx.post(url + path, content=raw, headers=headers, timeout=30)


def texts(calls: list[dict[str, Any]]) -> list[str]:
    return [str((c.get("params") or c.get("request") or {}).get("text", "")) for c in calls]


def test_two_replicas_remind_escalate_and_expire_once_each(bots: Bots) -> None:
    resp = ci_post(
        bots.urls[0],
        "/v1/requests",
        {"repo": "acme/web", "sha": SHA, "environment": "timed", "workflow": "deploy.yml",
         "requester": "github:alice"},
    )  # fmt: skip
    assert resp.status_code in (200, 202), resp.text
    # The card's expiry update is the last thing to happen; wait for it, then count everything.
    try:
        bots.emulator.wait_for("chat.update", timeout=20)
        deadline = time.monotonic() + 15
        while True:
            seen = bots.emulator.calls()  # one snapshot: checked, then waited on from its end
            if any("expired" in t for t in texts([c for c in seen if c.get("method") == "chat.postMessage"])):
                break
            left = max(0.1, deadline - time.monotonic())
            bots.emulator.wait_for("chat.postMessage", timeout=left, since=len(seen))
        posts = texts(bots.emulator.calls("chat.postMessage"))
        assert sum(t.startswith(":bell: Reminder") for t in posts) == 2, posts
        assert sum(t.startswith(":alarm_clock: Last call") for t in posts) == 1, posts
        assert sum(t.startswith(":rotating_light: Escalating") for t in posts) == 1, posts
        [dm] = [t for t in posts if t.startswith(":rotating_light: A deploy")]
        # The DM links to the card itself: the emulator's permalink is its page, opened at the card.
        card = next(
            c for c in bots.emulator.calls("chat.postMessage") if "thread_ts" not in (c.get("params") or {})
        )
        card_ts = card["response"]["ts"]
        assert dm.endswith(f"<{bots.emulator.base_url}/#C0DEPLOYS/{card_ts}|Open the request>"), dm
        assert sum("expired" in t for t in posts) >= 1, posts
        first = next(t for t in posts if t.startswith(":bell:"))
        assert "<@U0BOB>" in first
        assert "<@U0CAROL>" in first
        assert len(bots.emulator.calls("conversations.open")) >= 1
    except BaseException:
        print(bots.logs())
        for c in bots.emulator.calls():
            print("slack call:", c.get("method"), texts([c]))
        raise
