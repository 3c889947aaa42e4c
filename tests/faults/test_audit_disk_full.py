"""The signer's audit disk fills up under a running stack, then space returns.

A tmpfs cannot be mounted unprivileged, so the disk is filled with a file size limit (``RLIMIT_FSIZE``, set
on the running signer with ``prlimit``): a write past it fails with ``EFBIG`` (Python ignores ``SIGXFSZ``)
after writing what fits, like ``ENOSPC`` on a full disk. The limit is set a little past the log's end, so
the append that meets it is cut mid-line, the worst case.

Invariant: no receipt without its audit entry; the approver is told plainly; the log's chain stays whole;
once space returns the same signer process records the next receipt (no restart).
"""

from __future__ import annotations

import json
import resource
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from tests.faults.conftest import FaultStack
from tests.harness import KEYTURN

pytestmark = pytest.mark.slow

# What fits of the next line before the "disk" is full: part of an entry, never a whole one.
ROOM_BYTES = 200


@contextmanager
def audit_disk_full(stack: FaultStack) -> Iterator[None]:
    """The signer's audit log cannot grow more than ``ROOM_BYTES`` until the block ends."""
    pid = stack.procs["signer"].popen.pid
    size = (stack.workdir / "audit.jsonl").stat().st_size
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (size + ROOM_BYTES, resource.RLIM_INFINITY))
    try:
        yield
    finally:
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


def receipts_for(stack: FaultStack, rid: str) -> list[dict[str, Any]]:
    """The receipts the signer recorded for ``rid``."""
    return [
        r["receipt"]
        for r in stack.audit_lines()
        if r.get("type") == "receipt_issued" and r["receipt"]["requestId"] == rid
    ]


def audit_verifies(stack: FaultStack) -> None:
    """``keyturn audit verify`` accepts the whole log: no torn line, the chain unbroken."""
    done = subprocess.run(
        [*KEYTURN, "audit", "verify", str(stack.workdir / "audit.jsonl")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_audit_disk_full_refuses_clearly_and_recovers_when_space_returns(fstack: FaultStack) -> None:
    # A first receipt, so the log is not empty and the fill-up meets a chain to keep whole.
    warm = fstack.card(fstack.create(environment="staging", sha="a1" * 20)["requestId"])
    fstack.click("U0BOB", warm)
    fstack.wait_status(warm["requestId"], "APPROVED", timeout=30)

    req = fstack.card(fstack.create(environment="staging", sha="a2" * 20)["requestId"])
    rid = req["requestId"]
    signer_pid = fstack.procs["signer"].popen.pid
    size_before = (fstack.workdir / "audit.jsonl").stat().st_size
    with audit_disk_full(fstack):
        for _ in range(2):  # refused each time, not only the first; the signer stays up
            since = len(fstack.emulator.calls())
            assert fstack.click("U0BOB", req).status == 200
            call = fstack.emulator.wait_for("chat.postEphemeral", since=since, user="U0BOB", timeout=30)
            text = json.dumps(call["params"])
            assert "no receipt could be issued (audit_log" in text, text
            assert "nothing was recorded" in text, text
            assert "Click Approve again" in text, text
            assert fstack.get(f"/v1/requests/{rid}").json()["status"] == "PENDING"
            assert receipts_for(fstack, rid) == []
            # The cut-off part of the line was taken back: the log is exactly as before, and verifies.
            assert (fstack.workdir / "audit.jsonl").stat().st_size == size_before
            audit_verifies(fstack)
            assert fstack.procs["signer"].alive()

    # Space is back: the next click is signed by the same signer process, once.
    assert fstack.procs["signer"].popen.pid == signer_pid
    fstack.click("U0BOB", req)
    done = fstack.wait_status(rid, "APPROVED", timeout=30)
    (receipt,) = receipts_for(fstack, rid)
    assert fstack.get(f"/v1/requests/{rid}/receipt").json() == receipt
    assert done["receiptId"]
    audit_verifies(fstack)
    assert not list(fstack.workdir.glob("audit.jsonl.torn-*"))  # nothing needed repair
