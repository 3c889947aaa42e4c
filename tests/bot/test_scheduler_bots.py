"""Reminders, escalation and expiry through two real ``keyturn bot`` replicas, the signer and the emulator.

Both replicas share one Redis (a database of their own). A request created through replica A, with demo
timings (8 s lifetime, a reminder every 2 s, escalation after the first), must produce each reminder, the
escalation and the expiry exactly once in Slack, whichever replica leads; killing the leader (kill -9) or
stopping every replica past the expiry still expires the request, with exactly one EXPIRED callback to CI.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from keyturn.emulator.client import EmulatorClient
from tests import harness
from tests.fixtures import policy_toml
from tests.harness import Proc, free_port, wait_until

CI_SECRET = "sched-ci-secret-0123456789abcdef0123456789"
SLACK_SECRET = "sched-slack-signing-secret-0123456789abcdef"
SHA = "4f8a2cd91ef7a2c7f3a5f0aa12d93b33f2d40e17"
POLICY = policy_toml(
    "timed",
    channel="C0DEPLOYS",
    required_approvals=2,
    request_ttl="8s",
    receipt_ttl="15m",
    remind_every="2s",
    escalate_after=1,
    escalate_to=["U0DAVE"],
)


@dataclass
class Bots:
    urls: list[str]
    emulator: EmulatorClient
    procs: dict[str, Proc]
    start: Callable[[str], None]  # (re)start replica "bot-a" or "bot-b"
    redis: redis.Redis

    def logs(self) -> str:
        return "\n".join(f"--- {n}\n{p.log()[-4000:]}" for n, p in self.procs.items())

    def leader(self) -> str:
        """The name of the replica holding the scheduler lease (``<token>:<host>-<pid>:<nonce>``)."""
        value = self.redis.get("keyturn:{timers}:leader")
        assert value is not None, "no replica holds the lease"
        text = value.decode() if isinstance(value, bytes) else str(value)
        pid = int(text.split(":")[1].rsplit("-", 1)[1])
        return next(n for n, p in self.procs.items() if n.startswith("bot-") and p.popen.pid == pid)


@pytest.fixture
def bots(redis_url: str, tmp_path: Path) -> Iterator[Bots]:
    policy = tmp_path / "keyturn.toml"
    policy.write_text(POLICY)
    keyset, _ = harness.keygen(tmp_path)
    logs = tmp_path / "logs"
    ports = {"bot-a": free_port(), "bot-b": free_port()}
    urls = [f"http://127.0.0.1:{p}" for p in ports.values()]
    procs: dict[str, Proc] = {}
    db_url = f"{redis_url}?db=7"  # a database of its own: the session's e2e bot (db 0) runs timers too

    def start(name: str) -> None:
        procs[name] = harness.start_bot(
            logs,
            name=name,
            port=ports[name],
            redis_url=db_url,
            signer_socket=sock,
            policy=policy,
            emulator_url=emu_url,
            cwd=tmp_path,
            # Callbacks go to a plain-http receiver on 127.0.0.1 in these tests.
            env={"KEYTURN_DEV_MODE": "1", "KEYTURN_CALLBACK_HOSTS": "127.0.0.1"},
        )

    try:
        procs["signer"], sock = harness.start_signer(
            tmp_path, logs, policy=policy, keyset=keyset, slack_secret=SLACK_SECRET, ci_secret=CI_SECRET
        )
        procs["emulator"], emu_url = harness.start_emulator(logs, slack_secret=SLACK_SECRET, bot_url=urls[0])
        for name in ports:
            start(name)
    except Exception:
        for p in procs.values():
            p.stop()
        raise
    with EmulatorClient(emu_url) as emulator, redis.Redis.from_url(db_url) as client:
        yield Bots(urls, emulator, procs, start, client)
    for p in reversed(list(procs.values())):
        p.stop()


class CallbackReceiver:
    """A local HTTP endpoint that records the bot's outcome callbacks; ``wait`` blocks on a queue."""

    def __init__(self) -> None:
        self.bodies: queue.Queue[dict[str, Any]] = queue.Queue()
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                received.put(json.loads(self.rfile.read(length)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/keyturn-callback"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, timeout: float) -> dict[str, Any]:
        return self.bodies.get(timeout=timeout)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def callbacks() -> Iterator[CallbackReceiver]:
    receiver = CallbackReceiver()
    yield receiver
    receiver.close()


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


def wait_expired_card(bots: Bots, timeout: float) -> None:
    """Await the card update that says the request expired."""
    since, deadline = 0, time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        update = bots.emulator.wait_for("chat.update", timeout=max(0.1, left), since=since)
        since = update["seq"]
        if "Expired" in json.dumps(update["params"]):
            return


def create_timed(bots: Bots, callback_url: str) -> dict[str, Any]:
    resp = ci_post(
        bots.urls[0],
        "/v1/requests",
        {"repo": "acme/web", "sha": SHA, "environment": "timed", "workflow": "deploy.yml",
         "requester": "github:alice", "callbackUrl": callback_url},
    )  # fmt: skip
    assert resp.status_code == 202, resp.text
    data: dict[str, Any] = resp.json()
    # Wait until the card is stored (not just posted), so a kill now tests the timers' takeover; a poster
    # dying between Slack's answer and the store is covered in tests/bot/test_approvals.py.
    path = f"/v1/requests/{data['requestId']}"
    deadline = time.monotonic() + 10
    while True:
        current = httpx.get(
            bots.urls[0] + path, headers=harness.ci_headers(CI_SECRET, "GET", path, b"")
        ).json()
        if current.get("card") or time.monotonic() > deadline:
            break
        since = {"wait": 5, "since": current["version"]}
        httpx.get(
            bots.urls[0] + path,
            params=since,
            headers=harness.ci_headers(CI_SECRET, "GET", path, b""),
            timeout=15,
        )
    assert current.get("card"), current
    return data


def test_kill_9_of_the_leader_bot_still_expires_the_request_and_calls_back_once(
    bots: Bots, callbacks: CallbackReceiver
) -> None:
    try:
        created = create_timed(bots, callbacks.url)
        leader = bots.leader()
        bots.procs[leader].kill9()
        wait_expired_card(bots, timeout=25)
        outcome = callbacks.wait(timeout=15)
        assert outcome["requestId"] == created["requestId"]
        assert outcome["status"] == "EXPIRED"
        assert "receipt" not in outcome or outcome["receipt"] is None
        survivor = next(n for n in ("bot-a", "bot-b") if n != leader)
        assert bots.leader() == survivor
        with pytest.raises(queue.Empty):  # exactly once: no second callback
            callbacks.wait(timeout=2)
    except BaseException:
        print(bots.logs())
        raise


def test_full_stop_then_restart_past_expiry_expires_at_once(bots: Bots, callbacks: CallbackReceiver) -> None:
    try:
        created = create_timed(bots, callbacks.url)
        for name in ("bot-a", "bot-b"):
            bots.procs[name].stop()
        expires = datetime.fromisoformat(created["expiresAt"].replace("Z", "+00:00")).timestamp()
        # Nothing runs while every replica is down; wait for the wall clock to pass the expiry.
        wait_until(lambda: time.time() > expires + 1, timeout=20, what="the request's expiry to pass")
        restarted = time.monotonic()
        bots.start("bot-b")
        wait_expired_card(bots, timeout=10)
        assert time.monotonic() - restarted < 10
        outcome = callbacks.wait(timeout=15)
        assert (outcome["requestId"], outcome["status"]) == (created["requestId"], "EXPIRED")
    except BaseException:
        print(bots.logs())
        raise
