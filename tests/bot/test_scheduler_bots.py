"""Reminders, escalation and expiry through two real ``keyturn bot`` replicas, the signer and the emulator.

Both replicas share one Redis (a database of their own). A request created through replica A, with demo
timings (8 s lifetime, a reminder every 2 s, escalation after the first), must produce each reminder, the
escalation and the expiry exactly once in Slack, whichever replica leads.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot.emulator.client import EmulatorClient
from tests.harness import KEYTURN, Proc, free_port, http_ok, start_process, unix_socket_ready

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
    keyset = tmp_path / "keys.json"
    done = subprocess.run(
        [*KEYTURN, "keygen", "--out", str(keyset)], capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    sock = tmp_path / "signer.sock"
    logs = tmp_path / "logs"
    emu_port = free_port()
    emu_url = f"http://127.0.0.1:{emu_port}"
    procs: dict[str, Proc] = {}
    try:
        procs["signer"] = start_process(
            "signer",
            [*KEYTURN, "signer"],
            logs,
            env={
                "KEYTURN_SIGNER_SOCKET": str(sock),
                "KEYTURN_SIGNER_KEYSET": str(keyset),
                "KEYTURN_POLICY": str(policy),
                "KEYTURN_SLACK_SIGNING_SECRET": SLACK_SECRET,
                "KEYTURN_CI_SECRET": CI_SECRET,
                "KEYTURN_AUDIT_LOG": str(tmp_path / "audit.jsonl"),
            },
            ready=unix_socket_ready(sock),
        )
        ports = [free_port(), free_port()]
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        procs["emulator"] = start_process(
            "emulator",
            [*KEYTURN, "emulator", "--port", str(emu_port), "--bot-url", f"{urls[0]}/slack/events"],
            logs,
            env={"KEYTURN_SLACK_SIGNING_SECRET": SLACK_SECRET},
            ready=http_ok(f"{emu_url}/_emulator/state"),
        )
        for name, port, url in zip(("bot-a", "bot-b"), ports, urls, strict=True):
            procs[name] = start_process(
                name,
                [*KEYTURN, "bot"],
                logs,
                env={
                    # A database of its own: the session's e2e bot (db 0) runs timers too.
                    "KEYTURN_REDIS_URL": f"{redis_url}?db=7",
                    "KEYTURN_SIGNER_SOCKET": str(sock),
                    "KEYTURN_POLICY": str(policy),
                    "KEYTURN_SLACK_BOT_TOKEN": "xoxb-sched-test-token",
                    "KEYTURN_SLACK_API_URL": f"{emu_url}/api/",
                    "KEYTURN_HOST": "127.0.0.1",
                    "KEYTURN_PORT": str(port),
                    "KEYTURN_PUBLIC_URL": url,
                },
                ready=http_ok(f"{url}/readyz"),
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
    stamp = str(int(time.time()))
    sig = hmac.new(CI_SECRET.encode(), f"v1:{stamp}:POST:{path}:".encode() + raw, hashlib.sha256).hexdigest()
    headers = {
        "X-Keyturn-Timestamp": stamp,
        "X-Keyturn-Signature": f"v1={sig}",
        "Content-Type": "application/json",
    }
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
