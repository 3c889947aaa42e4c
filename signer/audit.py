"""The signer's append-only, hash-chained audit log (JSON lines), and its verifier.

Each line is the RFC 8785 (JCS) form of ``{"seq": n, "prev": hex, "record": {...}}``: ``seq`` counts from 1,
``prev`` is the SHA-256 (hex) of the previous line's bytes (without its newline; 64 zeros for the first).
Changing, removing or reordering any line breaks the chain at the next line. The chain cannot by itself reveal
a removed or edited *last* entry: compare the head (``AuditLog.head``) with a copy kept elsewhere for that.

Appends are durable before they return (``fsync``): "no record, no receipt". Threads appending concurrently
share fsyncs (group commit): whoever syncs covers every line written before its sync began. After any write or
sync failure the log refuses further appends, since its on-disk state is then unknown.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from signer.errors import AuditError, VerificationError
from signer.receipt import canonical_json, strict_loads

GENESIS = "0" * 64
MAX_LINE_BYTES = 1024 * 1024
_ENTRY_MEMBERS = frozenset({"seq", "prev", "record"})


def _line_hash(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def _check_line(line: bytes, number: int, expected_prev: str) -> None:
    """Check one line (without newline) as entry ``number``; raise ``AuditError`` naming it."""
    where = f"entry seq {number} (line {number})"
    try:
        entry = strict_loads(line, max_size=MAX_LINE_BYTES)
    except VerificationError as e:
        raise AuditError(f"{where}: not a JSON object: {e}", seq=number, line=number) from None
    if set(entry) != _ENTRY_MEMBERS or not isinstance(entry["record"], dict):
        raise AuditError(f"{where}: must have exactly seq, prev and record", seq=number, line=number)
    if entry["seq"] != number or isinstance(entry["seq"], bool):
        raise AuditError(
            f"{where}: has seq {entry['seq']!r}; entries missing or reordered", seq=number, line=number
        )
    if entry["prev"] != expected_prev:
        raise AuditError(
            f"{where}: prev does not match the previous entry's hash; it or the entry before it was altered",
            seq=number,
            line=number,
        )


def _scan(data: bytes) -> tuple[int, str]:
    """Verify a whole log's bytes; return (entries, hash of the last line)."""
    if not data:
        return 0, GENESIS
    lines = data.split(b"\n")
    if lines[-1] != b"":
        n = len(lines)
        raise AuditError(f"entry seq {n} (line {n}): incomplete last line (no newline)", seq=n, line=n)
    prev = GENESIS
    for i, line in enumerate(lines[:-1], start=1):
        _check_line(line, i, prev)
        prev = _line_hash(line)
    return len(lines) - 1, prev


def verify_file(path: str | os.PathLike[str]) -> int:
    """Check the hash chain of the log at ``path``; return the number of entries.

    Raises ``AuditError`` naming the first broken entry (``e.seq``, ``e.line``) or an unreadable file.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise AuditError(f"cannot read audit log {os.fspath(path)}: {e.strerror}") from None
    return _scan(data)[0]


class AuditLog:
    """An open audit log. One process at a time (an exclusive ``flock``); thread-safe within it."""

    def __init__(self, fd: int, path: Path, seq: int, head: str) -> None:
        self._fd = fd
        self._path = path
        self._seq = seq
        self._head = head
        self._written = 0  # bytes appended by this process
        self._synced = 0  # bytes known durable
        self._write_lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._failed: str | None = None

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> AuditLog:
        """Open (creating, mode 0600) the log at ``path``, verify its whole chain, and take an exclusive lock.

        Refuses a broken chain, an incomplete last line or a log another process holds.
        """
        p = Path(path)
        try:
            fd = os.open(p, os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        except OSError as e:
            raise AuditError(f"cannot open audit log {p}: {e.strerror}") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise AuditError(f"audit log {p} is in use by another process") from None
            chunks: list[bytes] = []
            offset = 0
            while chunk := os.pread(fd, 1 << 20, offset):
                chunks.append(chunk)
                offset += len(chunk)
            seq, head = _scan(b"".join(chunks))
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, p, seq, head)

    @property
    def seq(self) -> int:
        """Sequence number of the last entry (0 when empty)."""
        return self._seq

    @property
    def head(self) -> str:
        """SHA-256 (hex) of the last line: keep a copy elsewhere to detect truncation of the tail."""
        return self._head

    def append(self, record: Mapping[str, Any]) -> int:
        """Append ``record`` as the next entry and return its ``seq`` once it is durable on disk."""
        if self._failed is not None:
            raise AuditError(f"audit log unusable after an earlier failure: {self._failed}")
        with self._write_lock:
            if self._failed is not None:
                raise AuditError(f"audit log unusable after an earlier failure: {self._failed}")
            seq = self._seq + 1
            try:
                line = canonical_json({"seq": seq, "prev": self._head, "record": dict(record)})
                strict_loads(line, max_size=MAX_LINE_BYTES)  # never write a line verify_file would refuse
            except VerificationError as e:
                raise AuditError(f"record cannot be logged: {e}") from None
            try:
                _write_all(self._fd, line + b"\n")
            except OSError as e:
                self._failed = f"write failed: {e.strerror}"
                raise AuditError(f"audit log write failed: {e.strerror}") from None
            self._seq, self._head = seq, _line_hash(line)
            self._written += len(line) + 1
            mine = self._written
        self._sync_until(mine)
        return seq

    async def append_async(self, record: Mapping[str, Any]) -> int:
        """``append`` from asyncio code without blocking the event loop (fsyncs are shared between calls)."""
        return await asyncio.to_thread(self.append, record)

    def _sync_until(self, position: int) -> None:
        with self._sync_lock:
            if self._synced >= position:
                return  # another thread's fsync, begun after our write, already covered it
            target = self._written  # everything written so far is covered by the fsync below
            try:
                os.fsync(self._fd)
            except OSError as e:
                self._failed = f"fsync failed: {e.strerror}"
                raise AuditError(f"audit log fsync failed: {e.strerror}") from None
            self._synced = target

    def close(self) -> None:
        """Release the lock and close the file."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
