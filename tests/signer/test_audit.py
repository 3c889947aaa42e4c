"""The hash-chained audit log: durable appends, tamper detection naming the first broken entry."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from keyturn.signer.audit import GENESIS, AuditLog, verify_file
from keyturn.signer.errors import AuditError
from tests.harness import wait_until


def _log(path: Path, n: int) -> list[bytes]:
    with AuditLog.open(path) as log:
        for i in range(n):
            assert log.append({"requestId": f"req_{i}", "kind": "receipt"}) == i + 1
    return path.read_bytes().splitlines(keepends=True)


def test_chain_links_each_entry_to_the_previous_one(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    lines = _log(path, 3)
    entries = [json.loads(line) for line in lines]
    assert [e["seq"] for e in entries] == [1, 2, 3]
    assert entries[0]["prev"] == GENESIS
    assert entries[1]["prev"] == hashlib.sha256(lines[0].rstrip(b"\n")).hexdigest()
    assert entries[2]["record"] == {"requestId": "req_2", "kind": "receipt"}
    assert verify_file(path) == 3
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)


def test_reopen_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _log(path, 2)
    with AuditLog.open(path) as log:
        assert log.seq == 2
        assert log.append({"n": 3}) == 3
    assert verify_file(path) == 3


def _broken(path: Path) -> AuditError:
    with pytest.raises(AuditError) as exc:
        verify_file(path)
    return exc.value


@pytest.mark.parametrize(
    ("tamper", "first_broken"),
    [
        # an edited entry is caught at the next entry, whose prev no longer matches
        (lambda ls: [ls[0], ls[1].replace(b"req_1", b"req_X"), *ls[2:]], 3),
        # a deleted entry leaves a gap in seq
        (lambda ls: [ls[0], *ls[2:]], 2),
        # reordered entries
        (lambda ls: [ls[0], ls[2], ls[1], *ls[3:]], 2),
        # a forged entry inserted with a plausible seq
        (lambda ls: [*ls[:2], ls[1], *ls[2:]], 3),
        # the first entry replaced
        (lambda ls: [ls[0].replace(b"req_0", b"req_Z"), *ls[1:]], 2),
        # garbage line
        (lambda ls: [*ls[:3], b"not json\n", *ls[4:]], 4),
    ],
)
def test_tampering_is_detected_at_the_first_broken_entry(
    tmp_path: Path, tamper: Callable[[list[bytes]], list[bytes]], first_broken: int
) -> None:
    path = tmp_path / "audit.jsonl"
    lines = _log(path, 5)
    path.write_bytes(b"".join(tamper(lines)))
    err = _broken(path)
    assert err.seq == first_broken
    assert err.line == first_broken
    assert f"entry seq {first_broken} (line {first_broken})" in str(err)


def test_open_refuses_a_broken_or_torn_log(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    lines = _log(path, 3)
    path.write_bytes(b"".join(lines)[:-5])  # a crash mid-write leaves no newline
    with pytest.raises(AuditError, match="incomplete last line"):
        AuditLog.open(path)
    path.write_bytes(lines[1] + lines[2])
    with pytest.raises(AuditError, match="entry seq 1"):
        AuditLog.open(path)


def test_only_one_writer_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog.open(path), pytest.raises(AuditError, match="in use"):
        AuditLog.open(path)
    AuditLog.open(path).close()  # released on close


def test_records_that_could_not_be_verified_are_refused(tmp_path: Path) -> None:
    with AuditLog.open(tmp_path / "audit.jsonl") as log:
        with pytest.raises(AuditError):
            log.append({"amount": 1.5})
        assert log.append({"ok": True}) == 1
    assert verify_file(tmp_path / "audit.jsonl") == 1


def test_concurrent_appends_keep_the_chain_and_share_fsyncs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog.open(path)
    real_fsync = os.fsync
    first_sync_started = threading.Event()
    release = threading.Event()
    calls: list[int] = []

    def gated_fsync(fd: int) -> None:
        # Hold the first fsync until the other appends have written their lines, so the group commit is
        # observable without relying on timing.
        calls.append(fd)
        if len(calls) == 1:
            first_sync_started.set()
            assert release.wait(10)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", gated_fsync)
    n = 40
    with ThreadPoolExecutor(max_workers=8) as pool:
        first = pool.submit(log.append, {"i": -1})
        assert first_sync_started.wait(10)
        rest = [pool.submit(log.append, {"i": i}) for i in range(n)]
        # The other 7 workers write their lines, then queue behind the held fsync.
        wait_until(lambda: log.seq >= 8, 10, "7 more appends to be written")
        release.set()
        seqs = [first.result(10)] + [f.result(10) for f in rest]
    log.close()
    assert sorted(seqs) == list(range(1, n + 2))
    assert verify_file(path) == n + 1
    assert len(calls) < n + 1  # at least one fsync covered several appends


def test_write_failure_makes_the_log_refuse_further_appends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = AuditLog.open(tmp_path / "audit.jsonl")

    def failing_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(AuditError, match="fsync failed"):
        log.append({"n": 1})
    monkeypatch.undo()
    with pytest.raises(AuditError, match="unusable"):
        log.append({"n": 2})
    log.close()


def test_a_full_disk_records_nothing_and_the_next_append_succeeds_once_there_is_room(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ENOSPC after part of the line was written: the torn part is cut off, the chain is unchanged, and the
    # log keeps working (an fsync failure, above, is different: the page cache may have lost entries).
    path = tmp_path / "audit.jsonl"
    log = AuditLog.open(path)
    log.append({"n": 1})
    before = path.read_bytes()
    head = log.head
    real_write = os.write

    def write_then_fill_up(fd: int, data: bytes | memoryview) -> int:
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", write_then_fill_up)
    for _ in range(2):
        with pytest.raises(AuditError, match="No space left on device; nothing was recorded"):
            log.append({"n": 2})
        assert path.read_bytes() == before
        assert (log.seq, log.head) == (1, head)
    monkeypatch.undo()
    assert log.append({"n": 2}) == 2
    log.close()
    assert verify_file(path) == 2


async def test_append_async(tmp_path: Path) -> None:
    with AuditLog.open(tmp_path / "audit.jsonl") as log:
        assert await log.append_async({"n": 1}) == 1
        assert log.head != GENESIS
