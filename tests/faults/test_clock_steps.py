"""The signer's clock stepped forward and back under a running stack (NTP correcting a bad clock, a VM
resumed from a snapshot). The signer's dev fake clock file (``KEYTURN_SIGNER_FAKE_NOW_FILE``) stands for the
host clock; the bot, the emulator and the test keep the real one, as other hosts would.

Invariant: no receipt is ever issued outside its request's lifetime, and never dated before the request it
approves; each refusal is clear to the approver; once the clock is right again, the next click approves.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from tests.faults.conftest import POLICY, FaultStack, build_stack, close_stack

pytestmark = pytest.mark.slow

REQUEST_TTL_S = 120
# One more environment: a short lifetime, so that a forward step past it stays inside the ±300 s window in
# which the signer accepts Slack's signatures (a larger step is refused earlier, as a stale click).
BRIEF = f"""
[environments.brief]
channel = "C0STAGING"
approvers = ["U0BOB", "U0CAROL"]
required_approvals = 1
request_ttl = "{REQUEST_TTL_S}s"
receipt_ttl = "10m"
confirm_approve = false
"""


@pytest.fixture(scope="module")
def fault_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    """A stack whose signer reads the time from ``<workdir>/now`` (dev mode)."""
    workdir = tmp_path_factory.mktemp("clock")
    now_file = workdir / "now"
    now_file.write_text(str(time.time()))
    env = {"KEYTURN_DEV_MODE": "1", "KEYTURN_SIGNER_FAKE_NOW_FILE": str(now_file)}
    stack = build_stack(workdir, signer_env=env, policy_text=POLICY + BRIEF)
    # A production key is older than any clock step: backdate the fresh one a day (its id, a thumbprint of
    # the public key, does not change), or a step back would only meet "key created after issue time".
    for path in (stack.keyset, stack.keys_file):
        assert path is not None
        data = json.loads(path.read_text())
        for key in data["keys"]:
            key["createdAt"] = "2000-01-01T00:00:00Z"
        path.write_text(json.dumps(data))
    stack.restart_signer()
    yield stack
    close_stack(stack)


def set_clock(stack: FaultStack, when: float) -> None:
    """Step the signer's clock to ``when`` (Unix seconds); it reads the file on every call."""
    (stack.workdir / "now").write_text(str(when))


def receipts_for(stack: FaultStack, rid: str) -> list[dict[str, Any]]:
    """The receipts the signer recorded for ``rid``."""
    return [
        r["receipt"]
        for r in stack.audit_lines()
        if r.get("type") == "receipt_issued" and r["receipt"]["requestId"] == rid
    ]


def epoch(stamp: str) -> float:
    """A receipt's RFC 3339 time as Unix seconds."""
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S%z").timestamp()


def ephemeral_after(stack: FaultStack, since: int, user: str) -> str:
    """The text of the next ephemeral message the bot sends ``user``."""
    call = stack.emulator.wait_for("chat.postEphemeral", since=since, user=user, timeout=30)
    return json.dumps(call["params"])


def new_request(stack: FaultStack, tag: int) -> tuple[dict[str, Any], float]:
    """A ``brief`` request with its card posted, and the (real) time just before it was made."""
    set_clock(stack, time.time())
    made = time.time()
    req = stack.card(stack.create(environment="brief", sha=f"{tag:02x}" * 20)["requestId"])
    return req, made


def approve_once_the_clock_is_right(stack: FaultStack, req: dict[str, Any], made: float) -> dict[str, Any]:
    """Put the clock right, click again: APPROVED with one receipt inside the request's lifetime."""
    rid = req["requestId"]
    set_clock(stack, time.time())
    stack.click("U0BOB", req)
    stack.wait_status(rid, "APPROVED", timeout=30)
    (receipt,) = receipts_for(stack, rid)
    issued = epoch(receipt["issuedAt"])
    assert int(made) <= issued <= made + REQUEST_TTL_S, (made, receipt["issuedAt"])
    stored = stack.get(f"/v1/requests/{rid}/receipt").json()
    assert stored["issuedAt"] == receipt["issuedAt"]
    return receipt


def test_clock_stepped_forward_past_the_lifetime_refuses_then_recovers(fstack: FaultStack) -> None:
    req, made = new_request(fstack, 1)
    set_clock(fstack, made + REQUEST_TTL_S + 60)  # past the lifetime, inside the ±300 s click window
    since = len(fstack.emulator.calls())
    assert fstack.click("U0BOB", req).status == 200
    text = ephemeral_after(fstack, since, "U0BOB")
    assert "no receipt could be issued (request_expired" in text, text
    assert "Click Approve again" in text
    assert receipts_for(fstack, req["requestId"]) == []
    approve_once_the_clock_is_right(fstack, req, made)


def test_clock_stepped_back_before_the_request_refuses_then_recovers(fstack: FaultStack) -> None:
    # 250 s back: inside the window in which Slack's signature is accepted, so the click is recorded, and
    # only the signing can tell. Before the fix the signer issued a receipt dated 4 minutes before the
    # request it approved (issuedAt < the request's creation and its approval).
    req, made = new_request(fstack, 2)
    set_clock(fstack, made - 250)
    since = len(fstack.emulator.calls())
    assert fstack.click("U0BOB", req).status == 200
    text = ephemeral_after(fstack, since, "U0BOB")
    assert "no receipt could be issued (clock_behind" in text, text
    assert receipts_for(fstack, req["requestId"]) == []
    approve_once_the_clock_is_right(fstack, req, made)


@pytest.mark.parametrize("step", [+2 * 3600.0, -2 * 3600.0])
def test_a_large_clock_step_refuses_every_signed_call_until_corrected(
    fstack: FaultStack, step: float
) -> None:
    # Two hours either way: every inbound signature is outside the signer's ±300 s window, so Slack's click
    # and CI's calls are refused at the door (401), nothing is recorded and nothing signed.
    req, made = new_request(fstack, 3 if step > 0 else 4)
    rid = req["requestId"]
    set_clock(fstack, made + step)
    assert fstack.click("U0BOB", req).status == 401
    assert fstack.get(f"/v1/requests/{rid}").status_code == 401
    assert receipts_for(fstack, rid) == []
    set_clock(fstack, time.time())
    assert fstack.get(f"/v1/requests/{rid}").json()["approvalsCount"] == 0  # the refused click never counted
    approve_once_the_clock_is_right(fstack, req, made)
