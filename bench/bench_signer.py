"""Signer throughput: ``sign`` over the Unix socket (evidence checks + Ed25519 + audit fsync) at 1 and 8
concurrent clients, against the in-process floor measured in the same run.

Floors (same machine, same process, same evidence):
* ``in-process sign``: ``assess`` + ``unsigned_receipt`` + ``sign_receipt`` — every check and the signature,
  no socket, no audit log. The socket figures are divided by this one.
* ``in-process sign + audit``: the same plus ``AuditLog.append`` (write + fsync), one thread and 8 threads,
  to show what the audit log costs and how its group commit batches fsyncs.

How fsync is batched: ``AuditLog.append`` writes the line under a lock, then syncs; a thread whose line was
already covered by another thread's fsync (begun after its write) returns without syncing. The signer calls
it through ``asyncio.to_thread``, so concurrent ``sign`` requests share fsyncs. Usage:
``.venv/bin/python bench/bench_signer.py [--seconds S]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from keyturn.bot.signer_client import SignerClient  # noqa: E402
from keyturn.signer import evidence as ev  # noqa: E402
from keyturn.signer import wire  # noqa: E402
from keyturn.signer.audit import AuditLog  # noqa: E402
from keyturn.signer.keys import SigningKeyset, sign_receipt  # noqa: E402
from keyturn.signer.policy import Policy  # noqa: E402
from keyturn.signer.receipt import (  # noqa: E402
    STATUS_APPROVED,
    ApprovalEntry,
    ApproverRef,
    unsigned_receipt,
)
from tests.signer.conftest import click_body, rid_of  # noqa: E402

SLACK = "bench-slack-signing-secret-0123456789"
CI = "bench-ci-secret-0123456789abcdefghij"
SHA = "4f8a2cd91ef7a2c7f3a5f0aa12d93b33f2d40e17"
POLICY = """\
version = 1
[environments.production]
channel = "C0DEPLOYS"
approvers = ["U0BOB", "U0CAROL"]
required_approvals = 2
request_ttl = "1h"
receipt_ttl = "15m"
"""
BENCH_POLICY = Policy.from_bytes(POLICY.encode())
SCOPE = {"repo": "acme/web", "sha": SHA, "environment": "production", "workflow": "deploy.yml"}


def evidence_set(t0: int) -> tuple[str, wire.CiOrigin, list[wire.SlackClick]]:
    """A fresh CI origin with its bound request id and two signed approve clicks on its true card (the
    evidence the bot would hand over; built by the signer tests' helpers, so the bench cannot drift)."""
    title = f"bench {os.urandom(6).hex()}"  # distinct requests: a repeated one is answered from the record
    body = json.dumps({**SCOPE, "requester": "github:alice", "title": title}).encode()
    ts = str(t0)
    origin = wire.CiOrigin(
        method="POST",
        path="/v1/requests",
        body=body,
        timestamp=ts,
        signature=ev.ci_signature(CI, "POST", "/v1/requests", body, ts),
    )
    clicks = []
    for i, user in enumerate(("U0BOB", "U0CAROL")):
        cbody = click_body(origin, user, policy=BENCH_POLICY)
        cts = str(t0 + 1 + i)
        clicks.append(
            wire.SlackClick(body=cbody, timestamp=cts, signature=ev.slack_signature(SLACK, cbody, cts))
        )
    return rid_of(origin), origin, clicks


def timed(seconds: float, step: Callable[[], None]) -> float:
    """Run ``step`` repeatedly for about ``seconds``; return operations per second."""
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        step()
        n += 1
    return n / elapsed


def in_process_floor(keys: SigningKeyset, policy: Policy, seconds: float, t0: int) -> float:
    """assess + sign, no socket, no audit."""
    sets = [evidence_set(t0) for _ in range(200)]
    secrets = ev.Secrets(SLACK, CI)
    i = 0

    def step() -> None:
        nonlocal i
        rid, o, clicks = sets[i % len(sets)]
        i += 1
        sign_in_process(keys, policy, secrets, rid, o, clicks)

    return timed(seconds, step)


def sign_in_process(
    keys: SigningKeyset,
    policy: Policy,
    secrets: ev.Secrets,
    rid: str,
    o: wire.CiOrigin,
    clicks: list[wire.SlackClick],
) -> dict[str, object]:
    """The same work the service does for ``sign``, minus the socket and the audit log."""
    d = ev.assess(
        policy=policy,
        secrets=secrets,
        request_id=rid,
        origin=ev.CiEvidence(o.method, o.path, o.body, o.timestamp, o.signature),
        clicks=[ev.SlackEvidence(c.body, c.timestamp, c.signature) for c in clicks],
        emails={},
        now=datetime.now(UTC),
    )
    unsigned = unsigned_receipt(
        request_id=d.request_id,
        status=STATUS_APPROVED,
        issued_at=d.issued_at,
        expires_at=d.expires_at,
        scope=d.scope,
        approver=ApproverRef(d.approver.user_id, d.approver.email),
        approvals=[ApprovalEntry(a.user_id, a.email, a.at) for a in d.approvals],
        requester=d.requester,
        key_id=keys.active_kid,
    )
    return sign_receipt(keys, unsigned)


def in_process_with_audit(
    keys: SigningKeyset, policy: Policy, audit_path: Path, seconds: float, threads: int, t0: int
) -> float:
    """assess + sign + audit append (fsync), from ``threads`` threads at once."""
    sets = [evidence_set(t0) for _ in range(200)]
    secrets = ev.Secrets(SLACK, CI)
    log = AuditLog.open(audit_path)
    counts = [0] * threads
    stop = time.perf_counter() + seconds

    def worker(k: int) -> None:
        i = k
        while time.perf_counter() < stop:
            rid, o, clicks = sets[i % len(sets)]
            receipt = sign_in_process(keys, policy, secrets, rid, o, clicks)
            log.append({"type": "receipt_issued", "receipt": receipt})
            counts[k] += 1
            i += threads

    start = time.perf_counter()
    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - start
    log.close()
    return sum(counts) / elapsed


async def over_socket(sock: Path, seconds: float, clients: int, t0: int) -> float:
    """``sign`` requests through ``SignerClient`` from ``clients`` concurrent tasks."""
    sets = [evidence_set(t0) for _ in range(400)]
    client = SignerClient(sock, timeout=10.0, pool_size=clients)
    done = 0
    stop = time.perf_counter() + seconds

    async def worker(k: int) -> None:
        nonlocal done
        i = k
        while time.perf_counter() < stop:
            rid, o, clicks = sets[i % len(sets)]
            await client.sign(rid, o, clicks, {})
            done += 1
            i += clients

    await client.health()  # connect outside the timed region
    start = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(clients)))
    elapsed = time.perf_counter() - start
    await client.close()
    return done / elapsed


def main(argv: list[str]) -> int:
    """Measure and print the figures; exit 0 unless the signer failed to run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=2.0, help="duration of each measurement")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="ktb-", dir="/tmp"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        keyset = root / "keys.json"
        keys = SigningKeyset.generate(keyset, now=datetime(2026, 1, 1, tzinfo=UTC))
        (root / "keyturn.toml").write_text(POLICY)
        policy = BENCH_POLICY
        t0 = int(time.time()) - 5

        floor = in_process_floor(keys, policy, args.seconds, t0)
        audit1 = in_process_with_audit(keys, policy, root / "a1.jsonl", args.seconds, 1, t0)
        audit8 = in_process_with_audit(keys, policy, root / "a8.jsonl", args.seconds, 8, t0)

        sock = root / "s.sock"
        env = {
            **os.environ,
            "KEYTURN_SIGNER_SOCKET": str(sock),
            "KEYTURN_SIGNER_KEYSET": str(keyset),
            "KEYTURN_POLICY": str(root / "keyturn.toml"),
            "KEYTURN_SLACK_SIGNING_SECRET": SLACK,
            "KEYTURN_CI_SECRET": CI,
            "KEYTURN_AUDIT_LOG": str(root / "audit.jsonl"),
        }
        log_path = root / "signer.log"
        with log_path.open("wb") as log:  # a file, not a pipe: an undrained pipe would stall the signer
            proc = subprocess.Popen(
                [sys.executable, "-m", "keyturn", "signer"], env=env, cwd=ROOT, stdout=log, stderr=log
            )
        deadline = time.monotonic() + 20
        while "signer ready" not in log_path.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                print(f"signer did not start:\n{log_path.read_text()}", file=sys.stderr)
                return 1
            time.sleep(0.05)  # polling a child's readiness
        sock1 = asyncio.run(over_socket(sock, args.seconds, 1, t0))
        sock8 = asyncio.run(over_socket(sock, args.seconds, 8, t0))
        entries = sum(1 for _ in (root / "audit.jsonl").open("rb"))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(root, ignore_errors=True)

    print(f"in-process sign floor (checks + Ed25519, no audit): {floor:9.0f} signs/s")
    print(f"in-process sign + audit fsync, 1 thread:            {audit1:9.0f} signs/s")
    print(f"in-process sign + audit fsync, 8 threads:           {audit8:9.0f} signs/s  (group commit)")
    print(f"socket sign + audit fsync, 1 client:                {sock1:9.0f} signs/s")
    print(f"socket sign + audit fsync, 8 clients:               {sock8:9.0f} signs/s")
    print(f"audit entries written by the signer: {entries}")
    print(f"ratio floor / socket (1 client):  {floor / sock1:6.2f}x")
    print(f"ratio floor / socket (8 clients): {floor / sock8:6.2f}x")
    # Issue 13: over the socket at >= 0.5x the in-process rate with the same fsync (same concurrency).
    print(f"ratio socket / in-process + fsync (1): {sock1 / audit1:6.2f}  (target >= 0.5)")
    print(f"ratio socket / in-process + fsync (8): {sock8 / audit8:6.2f}  (target >= 0.5)")
    print(f"group-commit gain, socket 8 vs 1 clients:      {sock8 / sock1:5.2f}x")
    print(f"group-commit gain, in-process 8 vs 1 threads:  {audit8 / audit1:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
