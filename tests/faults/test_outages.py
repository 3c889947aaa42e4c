"""Outages of Redis, the signer and Slack under a running bot: refused clearly, recovered without a restart,
nothing lost, nothing duplicated."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time

import pytest

from keyturn.bot.app import STORE_DOWN_APPROVE
from tests.e2e.conftest import CI_SECRET, SHA
from tests.faults.conftest import FaultStack
from tests.harness import KEYTURN, wait_until

pytestmark = pytest.mark.slow


def _keyturn_request(stack: FaultStack, run: str) -> subprocess.CompletedProcess[str]:
    argv = [
        *KEYTURN, "request", "--url", stack.bot_url, "--repo", "acme/web", "--sha", SHA, "--env", "staging",
        "--workflow", "deploy.yml", "--requester", "github:alice", "--run-url", run,
    ]  # fmt: skip
    env = {**os.environ, "KEYTURN_CI_SECRET": CI_SECRET}
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=90, check=False)


def test_redis_down_refuses_clearly_and_recovers_without_a_bot_restart(fstack: FaultStack) -> None:
    req = fstack.card(fstack.create()["requestId"])
    rid = req["requestId"]
    fstack.persistent.stop()

    # Intake: 503 store_unavailable once the retry budget is spent (fail closed), never a 500 or a hang.
    started = time.monotonic()
    body = json.dumps(
        {"repo": "acme/web", "sha": "d" * 40, "environment": "staging", "workflow": "deploy.yml",
         "requester": "github:alice", "runUrl": "https://ci.example/r/down", "ref": "refs/heads/down"}
    ).encode()  # fmt: skip
    resp = fstack.post("/v1/requests", body)
    assert resp.status_code == 503, resp.text
    assert resp.json()["error"] == "store_unavailable"
    assert time.monotonic() - started < 30
    # The pipeline's client says "unreachable": exit 3.
    done = _keyturn_request(fstack, "https://ci.example/r/cli-down")
    assert done.returncode == 3, (done.returncode, done.stderr)

    # A click: acked (Slack shows no error), then a plain ephemeral saying it was not recorded.
    since = len(fstack.emulator.calls())
    assert fstack.click("U0BOB", req).status == 200
    call = fstack.emulator.wait_for("chat.postEphemeral", since=since, user="U0BOB", timeout=30)
    assert "not* recorded" in json.dumps(call["params"]), call
    assert STORE_DOWN_APPROVE.split(",")[0] in call["params"]["text"]

    # Back: the same bot process serves again; the refused click was not counted, the next one is.
    fstack.persistent.start()
    assert fstack.get(f"/v1/requests/{rid}").json()["approvalsCount"] == 0
    fstack.click("U0BOB", req)
    assert fstack.wait_version(rid, req["version"])["approvalsCount"] == 1
    up = _keyturn_request(fstack, "https://ci.example/r/cli-up")
    assert "is PENDING" in up.stderr, (up.returncode, up.stderr)  # reached and created (no --wait)
    assert fstack.post("/v1/requests", body).status_code == 202


def test_signer_killed_mid_burst_then_restarted(fstack: FaultStack) -> None:
    """Eight single-approver requests clicked at once; the signer is SIGKILLed in the middle of the burst."""
    cards = [
        fstack.card(fstack.create(environment="staging", sha=f"{k:02x}" * 20)["requestId"], timeout=20)
        for k in range(8)
    ]
    clicks = [threading.Thread(target=fstack.click, args=("U0BOB", req)) for req in cards]
    for t in clicks[:4]:
        t.start()
    fstack.procs["signer"].kill9()
    for t in clicks[4:]:
        t.start()  # refused: the Slack check needs the signer, so the bot answers Slack 503
    for t in clicks:
        t.join(60)
    fstack.restart_signer()
    # Whatever was not signed is retried by clicking again (the card and the thread ask for it).
    for req in cards:
        if fstack.get(f"/v1/requests/{req['requestId']}").json()["status"] != "APPROVED":
            fstack.click("U0BOB", req)
    for req in cards:
        rid = req["requestId"]
        fstack.wait_status(rid, "APPROVED", timeout=30)
        receipt = fstack.get(f"/v1/requests/{rid}/receipt").json()
        stored_sig = json.dumps(receipt, sort_keys=True)
        audit = fstack.audit_lines()
        mine = [r for r in audit if r.get("type") == "receipt_issued" and r["receipt"]["requestId"] == rid]
        # No receipt without an audit record: the stored receipt is in the log. A signer killed after its
        # fsync but before replying leaves one more record whose receipt never left the process.
        assert any(json.dumps(r["receipt"], sort_keys=True) == stored_sig for r in mine), rid
        assert 1 <= len(mine) <= 2
    verify = subprocess.run(
        [*KEYTURN, "audit", "verify", str(fstack.workdir / "audit.jsonl")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_slack_storms_and_slow_answers_lose_no_card_and_no_approval(fstack: FaultStack) -> None:
    """429s, 5xx and a slow Slack while requests arrive and approvers click: every card is posted once."""
    fstack.emulator.fault("chat.postMessage", status=429, retry_after=1, times=3)
    fstack.emulator.fault("chat.update", status=503, error="service_unavailable", times=4)
    fstack.emulator.fault("chat.postEphemeral", latency=1.5, times=4)
    ids = [fstack.create(environment="staging", sha=f"{k:02x}" * 20)["requestId"] for k in range(4)]
    cards = [fstack.card(rid, timeout=30) for rid in ids]
    for req in cards:
        fstack.click("U0BOB", req)
    for rid in ids:
        fstack.wait_status(rid, "APPROVED", timeout=30)
    posts = [
        c for c in fstack.emulator.calls("chat.postMessage") if c.get("ok", c.get("response", {}).get("ok"))
    ]
    top_level = [c for c in posts if "thread_ts" not in c["params"]]
    assert len(top_level) == len(ids)  # one card each, none duplicated by the retries
    issued = [r["receipt"]["requestId"] for r in fstack.audit_lines() if r.get("type") == "receipt_issued"]
    assert sorted(i for i in issued if i in ids) == sorted(ids)  # one receipt each (the log is the module's)


def test_an_expiry_while_the_signer_is_down_is_recorded_when_it_returns(fstack: FaultStack) -> None:
    """The complete record (issue 15): an outcome decided while the signer is down is not lost. The request
    expires in Redis on time; the bot's note stays; the leader's backstop records it once the signer is
    back."""
    rid = fstack.card(fstack.create(environment="shortlived")["requestId"], timeout=20)["requestId"]
    since = len(fstack.emulator.calls())
    fstack.procs["signer"].kill9()
    # The card is updated to "expired" when the request expires: the bot's own event, seen at the emulator.
    fstack.emulator.wait_for("chat.update", timeout=20, since=since)
    assert not [r for r in fstack.audit_lines() if r.get("requestId") == rid]
    fstack.restart_signer()
    wait_until(  # the audit log is another process's file: polled, bounded by the backstop interval
        lambda: any(r.get("requestId") == rid for r in fstack.audit_lines()), 40, "the expiry on the record"
    )
    [record] = [r for r in fstack.audit_lines() if r.get("requestId") == rid]
    assert (record["type"], record["outcome"]) == ("outcome_recorded", "expired")
    assert fstack.get(f"/v1/requests/{rid}").json()["status"] == "EXPIRED"
