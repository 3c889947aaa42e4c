"""The complete record across real processes: a denial made in Slack, a cancel from the pipeline and an expiry
all land in the real signer's audit log, and ``keyturn audit show`` answers who refused what, when."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from keyturn.bot.cards import REASON_ACTION, REASON_BLOCK
from keyturn.signer.audit import outcome_rows, verify_file
from tests.e2e.conftest import Stack
from tests.harness import KEYTURN, wait_until


def _row(stack: Stack, rid: str) -> dict[str, Any]:
    audit = stack.workdir / "audit.jsonl"
    assert verify_file(audit) >= 1
    rows = [r for r in outcome_rows(audit.read_bytes()) if r["requestId"] == rid]
    assert len(rows) == 1, rows
    return rows[0]


def test_denial_cancel_and_expiry_reach_the_signers_audit_log(stack: Stack) -> None:
    denied = stack.card(stack.create()["requestId"])
    rid = denied["requestId"]
    since = len(stack.emulator.calls())
    stack.click("U0CAROL", denied, action="deny")
    view_id = stack.emulator.wait_for("views.open", since=since)["response"]["view"]["id"]
    stack.emulator.submit_view("U0CAROL", view_id, {REASON_BLOCK: {REASON_ACTION: "the canary is red"}})
    stack.wait_status(rid, "DENIED")
    # The bot records before it tells Slack, and the final state is visible before that: wait on the record.
    row = _wait_row(stack, rid)
    assert (row["outcome"], row["by"], row["reason"]) == ("denied", "slack:U0CAROL", "the canary is red")

    cancelled = stack.create()["requestId"]
    assert stack.post(f"/v1/requests/{cancelled}/cancel", b"").status_code == 200
    row = _wait_row(stack, cancelled)
    assert (row["outcome"], row["by"]) == ("cancelled", "ci_secret")

    expired = stack.create(environment="shortlived")["requestId"]  # request_ttl 3s
    stack.wait_status(expired, "EXPIRED")
    row = _wait_row(stack, expired)
    assert (row["outcome"], row["by"]) == ("expired", None)

    shown = subprocess.run(
        [*KEYTURN, "audit", "show", "--json", str(stack.workdir / "audit.jsonl")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    outcomes = {r["requestId"]: r["outcome"] for r in map(json.loads, shown.stdout.splitlines())}
    assert (outcomes[rid], outcomes[cancelled], outcomes[expired]) == ("denied", "cancelled", "expired")


def _wait_row(stack: Stack, rid: str) -> dict[str, Any]:
    """The request's row in the audit log, once the bot has recorded it (the log is another process's file:
    there is no event to await, so it is polled, bounded)."""
    audit = stack.workdir / "audit.jsonl"
    wait_until(
        lambda: any(r["requestId"] == rid for r in outcome_rows(audit.read_bytes())),
        10,
        f"the outcome of {rid} in the audit log",
    )
    return _row(stack, rid)
