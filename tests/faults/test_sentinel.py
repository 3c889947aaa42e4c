"""Redis Sentinel: the bot finds the primary through three sentinels and follows a ``SENTINEL FAILOVER``
made while approvers click, losing and duplicating nothing (real redis-server processes on loopback ports)."""

from __future__ import annotations

import functools
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests import harness
from tests.faults.conftest import FaultStack, PersistentRedis, build_stack, close_stack
from tests.faults.test_audit_disk_full import audit_verifies
from tests.harness import Proc, free_port, redis_pings, start_process, wait_until

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
                ready=functools.partial(redis_pings, port),
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


def _replica_online(primary: int) -> bool:
    """True once ``primary`` has a replica that finished its sync: from then on a write can be acknowledged
    by a replica (``KEYTURN_REDIS_MIN_REPLICAS=1``); until then every write fails closed."""
    try:
        with redis.Redis(port=primary, socket_timeout=0.5) as r:
            info = r.info("replication")
    except redis.RedisError:
        return False
    return any(
        isinstance(v, dict) and v.get("state") == "online" for k, v in info.items() if k.startswith("slave")
    )


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
    bot_env = {
        "KEYTURN_REDIS_SENTINELS": sset.addrs,
        "KEYTURN_REDIS_SENTINEL_MASTER": MASTER,
        # Durable writes: each write waits for the replica (docs/operations.md).
        "KEYTURN_REDIS_MIN_REPLICAS": "1",
    }
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
    wait_until(lambda: _replica_online(new_primary), 30, "the old primary to sync as a replica")
    for req in cards:
        stack.click("U0CAROL", req)
    for rid in ids:
        done = stack.wait_status(rid, "APPROVED", timeout=30)
        assert sorted(a["userId"] for a in done["approvals"]) == ["U0BOB", "U0CAROL"]
    issued = [r["receipt"]["requestId"] for r in stack.audit_lines() if r.get("type") == "receipt_issued"]
    assert sorted(i for i in issued if i in ids) == sorted(ids)
    with redis.Redis(port=new_primary) as r:
        assert all(r.exists(f"keyturn:req:{{{rid}}}") for rid in ids)


def _card_says_approved(stack: FaultStack, req: dict[str, object]) -> bool:
    card = req["card"]
    assert isinstance(card, dict)
    return "*Approved*" in json.dumps(stack.emulator.message(card["channel"], card["ts"]))


def test_failover_during_clicks_loses_and_duplicates_nothing(
    sentinel_stack: tuple[FaultStack, SentinelSet],
) -> None:
    """``SENTINEL FAILOVER`` while six final approvals are in flight, with ``KEYTURN_REDIS_MIN_REPLICAS=1``.

    Every write waits for the replica (WAIT), so what an approver was told survives the failover: a card
    showing APPROVED stays approved, with its receipt stored; a click answered "recorded" stays counted. A
    click whose write could not be confirmed on a replica is answered "not recorded, click again", and the
    approver clicks again. Exactly one receipt per request on the record (the signer's audit log), and it is
    the one the store holds. Before WAIT: an APPROVED decision was lost (the request read PENDING again while
    its card showed it approved and the audit log held its receipt)."""
    stack, sset = sentinel_stack
    try:
        ids = [stack.create(environment="production", sha=f"{k:02x}" * 20)["requestId"] for k in range(6)]
        cards = [stack.card(rid, timeout=20) for rid in ids]
        for req in cards:  # first approvals, all on the first primary
            stack.click("U0BOB", req)
        for req in cards:
            assert stack.wait_version(req["requestId"], req["version"])["approvalsCount"] == 1
        told_before = len(stack.emulator.ephemerals("U0CAROL"))
        # Second approvals (each one signs) in flight while the sentinels fail over.
        clicks = [threading.Thread(target=stack.click, args=("U0CAROL", req)) for req in cards]
        old_primary = sset.primary_port()  # the module's first test may have failed over already
        for t in clicks[:3]:
            t.start()
        new_primary = sset.failover()
        for t in clicks[3:]:
            t.start()
        for t in clicks:
            t.join(60)
        assert new_primary != old_primary

        # Each click ends in what its approver sees: the card turns APPROVED, or an ephemeral answer.
        def settled() -> bool:
            told = len(stack.emulator.ephemerals("U0CAROL")) - told_before
            return told + sum(_card_says_approved(stack, req) for req in cards) >= len(cards)

        wait_until(settled, 60, "every click in the failover window to be answered")
        # From here on one history exists: the old primary replicates from the new one.
        wait_until(lambda: _role(old_primary) == b"slave", 30, "the old primary to be demoted")
        wait_until(lambda: _replica_online(new_primary), 30, "the old primary to sync as a replica")
        answers = [json.dumps(e) for e in stack.emulator.ephemerals("U0CAROL")[told_before:]]
        shown_approved = [req for req in cards if _card_says_approved(stack, req)]
        # What the card said survived: no re-click needed for these.
        for req in shown_approved:
            now = stack.get(f"/v1/requests/{req['requestId']}").json()
            assert now["status"] == "APPROVED", (now, answers)
        reclicked = 0
        for req in cards:
            if req in shown_approved:
                continue
            now = stack.get(f"/v1/requests/{req['requestId']}").json()
            # BOB's approval was acknowledged (and replicated) before the failover: still counted.
            assert "U0BOB" in {a["userId"] for a in now["approvals"]}, now
            if now["status"] != "APPROVED":
                stack.click("U0CAROL", req)
                reclicked += 1
        print(f"answers in the failover window: {answers}; clicks made again: {reclicked}")
        for rid in ids:
            done = stack.wait_status(rid, "APPROVED", timeout=30)
            assert sorted(a["userId"] for a in done["approvals"]) == ["U0BOB", "U0CAROL"]
            receipt = stack.get(f"/v1/requests/{rid}/receipt")
            assert receipt.status_code == 200
            mine = [
                r["receipt"]
                for r in stack.audit_lines()
                if r.get("type") == "receipt_issued" and r["receipt"]["requestId"] == rid
            ]
            # One receipt on the record, and the store holds that one (never one the record lacks).
            assert mine == [receipt.json()], rid
        # The records live on the new primary (the bot followed the failover) and on its replica.
        with redis.Redis(port=new_primary) as r:
            assert all(r.exists(f"keyturn:req:{{{rid}}}") for rid in ids)
        audit_verifies(stack)
    except BaseException:
        print(stack.logs())
        raise
