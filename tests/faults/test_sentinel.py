"""Redis Sentinel: the bot finds the primary through three sentinels and follows a ``SENTINEL FAILOVER``
made while approvers click, losing and duplicating nothing (real redis-server processes on loopback ports)."""

from __future__ import annotations

import functools
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests import harness
from tests.faults.conftest import FaultStack, PersistentRedis, build_stack, close_stack
from tests.harness import Proc, free_port, start_process, wait_until

pytestmark = pytest.mark.slow
MASTER = "keyturn"


class SentinelSet:
    """A primary, a replica and three sentinels, all on 127.0.0.1."""

    def __init__(self, workdir: Path) -> None:
        self.primary = PersistentRedis(workdir / "primary")
        self.replica = PersistentRedis(workdir / "replica")
        self.sentinels: list[tuple[int, Proc]] = []
        self.workdir = workdir

    def start(self) -> None:
        self.primary.start()
        self.replica.extra_args = ["--replicaof", "127.0.0.1", str(self.primary.port)]
        self.replica.start()
        for i in range(3):
            port = free_port()
            conf = self.workdir / f"sentinel-{i}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.workdir}\n"
                f"sentinel monitor {MASTER} 127.0.0.1 {self.primary.port} 2\n"
                f"sentinel down-after-milliseconds {MASTER} 1000\n"
                f"sentinel failover-timeout {MASTER} 5000\n"
            )
            proc = start_process(
                f"sentinel-{i}",
                [harness.redis_server_binary(), str(conf), "--sentinel"],
                self.workdir / "logs",
                ready=functools.partial(_pings, port),
            )
            self.sentinels.append((port, proc))
        # Each sentinel knows the replica and the other sentinels before the test fails anything over.
        wait_until(self._converged, 30, "sentinels to discover the replica and each other")

    def _converged(self) -> bool:
        for port, _ in self.sentinels:
            with redis.Redis(port=port) as s:
                fields = s.sentinel_master(MASTER)
                if int(fields["num-slaves"]) < 1 or int(fields["num-other-sentinels"]) < 2:
                    return False
        return True

    @property
    def addrs(self) -> str:
        return ",".join(f"127.0.0.1:{port}" for port, _ in self.sentinels)

    def primary_port(self) -> int:
        with redis.Redis(port=self.sentinels[0][0]) as s:
            _, port = s.sentinel_get_master_addr_by_name(MASTER)
            return int(port)

    def failover(self) -> int:
        """``SENTINEL FAILOVER``; returns once the sentinels name the new primary and it accepts writes."""
        before = self.primary_port()
        with redis.Redis(port=self.sentinels[0][0]) as s:
            s.sentinel_failover(MASTER)
        wait_until(lambda: self.primary_port() != before, 30, "the sentinels to promote the replica")
        after = self.primary_port()
        wait_until(lambda: _role(after) == b"master", 30, "the new primary to take writes")
        return after

    def stop(self) -> None:
        for _, proc in self.sentinels:
            proc.stop()
        self.replica.stop()
        self.primary.stop()


def _pings(port: int) -> bool:
    try:
        with redis.Redis(port=port, socket_timeout=0.5) as r:
            return bool(r.ping())
    except redis.RedisError:
        return False


def _role(port: int) -> bytes:
    try:
        with redis.Redis(port=port, socket_timeout=0.5) as r:
            role: bytes = r.execute_command("ROLE")[0]
            return role
    except redis.RedisError:
        return b""


@pytest.fixture(scope="module")
def sentinel_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FaultStack, SentinelSet]]:
    if shutil.which("redis-server") is None:  # pragma: no cover - bootstrap installs it
        pytest.skip("redis-server is not installed")
    workdir = tmp_path_factory.mktemp("sentinel")
    sset = SentinelSet(workdir / "redis-ha")
    sset.start()
    bot_env = {"KEYTURN_REDIS_SENTINELS": sset.addrs, "KEYTURN_REDIS_SENTINEL_MASTER": MASTER}
    stack = build_stack(workdir, bot_env=bot_env)
    yield stack, sset
    close_stack(stack)
    sset.stop()


def test_the_bot_follows_a_failover_between_clicks(
    sentinel_stack: tuple[FaultStack, SentinelSet],
) -> None:
    """Failover with no write in flight: the bot finds the new primary by itself; nothing lost or doubled."""
    stack, sset = sentinel_stack
    ids = [stack.create(environment="production", sha=f"{k + 16:02x}" * 20)["requestId"] for k in range(3)]
    cards = [stack.card(rid, timeout=20) for rid in ids]
    for req in cards:
        stack.click("U0BOB", req)
    for req in cards:
        assert stack.wait_version(req["requestId"], req["version"])["approvalsCount"] == 1
    before = sset.primary_port()
    new_primary = sset.failover()
    assert new_primary != before
    wait_until(lambda: _role(before) == b"slave", 30, "the old primary to be demoted")
    for req in cards:
        stack.click("U0CAROL", req)
    for rid in ids:
        done = stack.wait_status(rid, "APPROVED", timeout=30)
        assert sorted(a["userId"] for a in done["approvals"]) == ["U0BOB", "U0CAROL"]
    issued = [r["receipt"]["requestId"] for r in stack.audit_lines() if r.get("type") == "receipt_issued"]
    assert sorted(i for i in issued if i in ids) == sorted(ids)
    with redis.Redis(port=new_primary) as r:
        assert all(r.exists(f"keyturn:req:{{{rid}}}") for rid in ids)


@pytest.mark.xfail(
    strict=False,
    reason="asynchronous replication: a write acknowledged by the old primary between the promotion "
    "and its own demotion is lost (seen: an APPROVED decision lost while its card already shows it). "
    "Needs WAIT-after-write (KEYTURN_REDIS_MIN_REPLICAS), not built yet; docs/operations.md",
)
def test_failover_during_clicks_loses_and_duplicates_nothing(
    sentinel_stack: tuple[FaultStack, SentinelSet], request: pytest.FixtureRequest
) -> None:
    stack, sset = sentinel_stack
    try:
        ids = [stack.create(environment="production", sha=f"{k:02x}" * 20)["requestId"] for k in range(6)]
        cards = [stack.card(rid, timeout=20) for rid in ids]
        for req in cards:  # first approvals, all on the first primary
            stack.click("U0BOB", req)
        for req in cards:
            assert stack.wait_version(req["requestId"], req["version"])["approvalsCount"] == 1
        # Second approvals (each one signs) in flight while the sentinels fail over.
        clicks = [threading.Thread(target=stack.click, args=("U0CAROL", req)) for req in cards]
        for t in clicks[:3]:
            t.start()
        new_primary = sset.failover()
        for t in clicks[3:]:
            t.start()
        for t in clicks:
            t.join(60)
        assert new_primary == sset.replica.port
        # Let the old primary be demoted (it replicates from the new one): from here on one history exists.
        wait_until(lambda: _role(sset.primary.port) == b"slave", 30, "the old primary to be demoted")
        # Replication is asynchronous: a write acknowledged by the old primary in the instant between the
        # replica's promotion and its own demotion is lost (docs/operations.md). What was lost is an approval
        # or a decision, never a receipt the gate would take without evidence: the approver clicks again.
        reclicked = 0
        for req in cards:
            now = stack.get(f"/v1/requests/{req['requestId']}").json()
            if now["status"] == "APPROVED":
                continue
            have = {a["userId"] for a in now["approvals"]}
            for user in ("U0BOB", "U0CAROL"):
                if user not in have:
                    stack.click(user, req)
                    reclicked += 1
                    if user == "U0BOB":
                        stack.wait_version(req["requestId"], now["version"])
        print(f"clicks lost in the failover window and made again: {reclicked}")
        audit = [r for r in stack.audit_lines() if r.get("type") == "receipt_issued"]
        for rid in ids:
            done = stack.wait_status(rid, "APPROVED", timeout=30)
            assert sorted(a["userId"] for a in done["approvals"]) == ["U0BOB", "U0CAROL"]
            receipt = stack.get(f"/v1/requests/{rid}/receipt")
            assert receipt.status_code == 200
            audit = [r for r in stack.audit_lines() if r.get("type") == "receipt_issued"]
            mine = [r["receipt"] for r in audit if r["receipt"]["requestId"] == rid]
            # The receipt the store holds is one the signer recorded; a receipt whose storing was lost in the
            # window is also in the log (the log is the record), so at most one more.
            assert receipt.json() in mine, rid
            assert 1 <= len(mine) <= 2
        # The records live on the new primary (the bot followed the failover).
        with redis.Redis(port=new_primary) as r:
            assert all(r.exists(f"keyturn:req:{{{rid}}}") for rid in ids)
    except BaseException:
        print(stack.logs())
        raise
