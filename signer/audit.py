"""The signer's append-only, hash-chained audit log (JSON lines), its verifier, and its anchors.

Each line is the RFC 8785 (JCS) form of ``{"seq": n, "prev": hex, "record": {...}}``: ``seq`` counts from 1,
``prev`` is the SHA-256 (hex) of the previous line's bytes (without its newline; 64 zeros for the first).
Changing, removing or reordering any line breaks the chain at the next line. The chain alone cannot reveal a
log cut short, nor one edited and re-chained from the edit on: whoever can write the file can recompute every
hash after it. Signed checkpoints of the head (``signer/checkpoint.py``), archived away from the signer,
anchor the log: :func:`verify_log` refuses a log that lacks an anchored entry (``audit_truncated``) or holds
another one in its place (``audit_rewritten``). A log's id is the hash of its first line (``GENESIS`` while
empty).

Appends are durable before they return (``fsync``): "no record, no receipt". Threads appending concurrently
share fsyncs (group commit): whoever syncs covers every line written before its sync began. After any write or
sync failure the log refuses further appends, since its on-disk state is then unknown. ``durable_head`` is the
last entry known to be on disk; only it is ever checkpointed, so no checkpoint anchors a line a crash could
still lose.

A last line without its newline is a torn write (a crash or a full disk mid-append). No receipt was returned
for it (an append returns only once its whole line is synced) and no checkpoint covers it, so the signer moves
those bytes aside at start and carries on (``AuditLog.open(..., repair_torn_tail_at=now)``). A broken chain
among the complete lines is tampering, never repaired. Docs: docs/security.md, "Anchoring the audit log".
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import threading
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from keyturn.signer.errors import AuditError, VerificationError
from keyturn.signer.receipt import canonical_json, strict_loads

if TYPE_CHECKING:
    from keyturn.signer.words import Fact

GENESIS = "0" * 64
MAX_LINE_BYTES = 1024 * 1024
_ENTRY_MEMBERS = frozenset({"seq", "prev", "record"})

# Codes of AuditError raised by the checks (stable; listed in docs/security.md).
CHAIN_BROKEN = "audit_chain_broken"
TORN_TAIL = "audit_torn_tail"
TRUNCATED = "audit_truncated"
REWRITTEN = "audit_rewritten"
UNREADABLE = "audit_unreadable"

# Record types (the ``type`` member of an entry's record): a receipt, or any other final outcome.
RECEIPT_ISSUED = "receipt_issued"
OUTCOME_RECORDED = "outcome_recorded"


def _line_hash(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def _check_line(line: bytes, number: int, expected_prev: str) -> None:
    """Check one line (without newline) as entry ``number``; raise ``AuditError`` naming it."""

    def broken(reason: str, **facts: Fact) -> AuditError:
        return AuditError(code=CHAIN_BROKEN, seq=number, line=number, facts={"reason": reason, **facts})

    try:
        entry = strict_loads(line, max_size=MAX_LINE_BYTES)
    except VerificationError as e:
        raise broken("not_json", detail=e.message) from None
    if set(entry) != _ENTRY_MEMBERS or not isinstance(entry["record"], dict):
        raise broken("members")
    if entry["seq"] != number or isinstance(entry["seq"], bool):
        raise broken("seq", found=repr(entry["seq"]))
    if entry["prev"] != expected_prev:
        raise broken("prev")


@dataclass(frozen=True)
class AuditHead:
    """Where a log stands: its id (hash of line 1, ``GENESIS`` when empty), its last ``seq`` and that line's
    hash (``head``; ``GENESIS`` when empty). What a checkpoint signs."""

    log: str
    seq: int
    head: str


class Anchor(Protocol):
    """What a verified checkpoint vouches for: log ``log`` had entry ``seq`` whose line hashes to ``head``."""

    @property
    def log(self) -> str: ...

    @property
    def seq(self) -> int: ...

    @property
    def head(self) -> str: ...


@dataclass(frozen=True)
class AuditScan:
    """A log's bytes, checked: its complete entries (chain intact), and the size of any torn tail.

    ``complete_size`` is the byte length up to and including the last newline; ``torn`` the bytes after it;
    ``hashes`` the line hash of each entry whose ``seq`` was asked for.
    """

    entries: int
    head: str
    log: str
    complete_size: int
    torn: int
    hashes: Mapping[int, str]

    @property
    def tip(self) -> AuditHead:
        """The last complete entry."""
        return AuditHead(self.log, self.entries, self.head)

    def check_anchor(self, anchor: Anchor) -> None:
        """Raise unless this log holds the entry ``anchor`` vouches for (same log, same line at ``seq``).

        ``audit_truncated``: the log ends before ``seq``. ``audit_rewritten``: the entry at ``seq`` (or the
        first entry, which names the log) is not the one signed. The scan must have been asked for ``seq``.
        """
        try:
            self._check_anchor(anchor)
        except AuditError as e:
            e.anchor = anchor
            raise

    def _check_anchor(self, anchor: Anchor) -> None:
        seq = anchor.seq
        if seq > self.entries:
            raise AuditError(code=TRUNCATED, seq=seq, entries=self.entries)
        if seq == 0:
            return  # a checkpoint of an empty log vouches for nothing
        if seq not in self.hashes:
            raise ValueError(f"scan was not asked for the hash of entry {seq}")
        # The chain makes entry seq's hash commit to every entry before it, entry 1 included: a different
        # log id is the same finding, reported at the first entry.
        if self.log != anchor.log:
            raise AuditError(code=REWRITTEN, reason="log_id", seq=1, line=1)
        if self.hashes[seq] != anchor.head:
            raise AuditError(code=REWRITTEN, reason="head", seq=seq, line=seq)


def scan(data: bytes, at: Collection[int] = ()) -> AuditScan:
    """Check the hash chain of a log's bytes (pure) and describe it; see :class:`AuditScan`.

    A torn tail (bytes after the last newline) is measured, not refused: callers decide. Raises
    ``AuditError`` (``audit_chain_broken``) naming the first broken complete entry.
    """
    lines = data.split(b"\n")
    torn = len(lines.pop())  # what follows the last newline: empty unless the last write was torn
    want = set(at)
    hashes: dict[int, str] = {}
    prev = first = GENESIS
    for number, line in enumerate(lines, start=1):
        _check_line(line, number, prev)
        prev = _line_hash(line)
        if number == 1:
            first = prev
        if number in want:
            hashes[number] = prev
    return AuditScan(len(lines), prev, first, len(data) - torn, torn, hashes)


def _torn_error(result: AuditScan) -> AuditError:
    n = result.entries + 1
    return AuditError(code=TORN_TAIL, reason="torn", seq=n, line=n, size=result.torn)


def verify_log(data: bytes, anchors: Iterable[Anchor] = ()) -> AuditScan:
    """Check a log's bytes against its chain and against every anchor (verified checkpoints); pure.

    Raises ``AuditError``, reporting tampering before a torn tail: ``audit_chain_broken``, then
    ``audit_truncated`` or ``audit_rewritten`` for the anchor of lowest ``seq`` that the log fails, then
    ``audit_torn_tail``. Returns the scan of an intact log.
    """
    ordered = sorted(anchors, key=lambda a: a.seq)
    result = scan(data, {a.seq for a in ordered})
    for anchor in ordered:
        result.check_anchor(anchor)
    if result.torn:
        raise _torn_error(result)
    return result


def _read(path: str | os.PathLike[str]) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise AuditError(code=UNREADABLE, path=os.fspath(path), error=e.strerror) from None


def verify_file(path: str | os.PathLike[str]) -> int:
    """Check the hash chain of the log at ``path``; return the number of entries.

    Raises ``AuditError`` naming the first broken entry (``e.seq``, ``e.line``), a torn last line or an
    unreadable file. Only the chain: anchors are checked by :func:`verify_log`.
    """
    return verify_log(_read(path)).entries


def issued_requests(path: str | os.PathLike[str]) -> dict[str, int]:
    """Each request id with a ``receipt_issued`` entry in the log at ``path``, mapped to that entry's seq.

    The signer reads this at start so it never issues a second receipt for a request (``Signer._sign``).
    Lines that are not such entries are skipped; the chain itself is checked by :meth:`AuditLog.open`.
    """
    out: dict[str, int] = {}
    with open(path, "rb") as f:
        for seq, line in enumerate(f, start=1):
            rid = _receipt_request_id(line)
            if rid is not None:
                out.setdefault(rid, seq)
    return out


def recorded_outcomes(path: str | os.PathLike[str]) -> dict[str, int]:
    """Each request id with an ``outcome_recorded`` entry (denied, cancelled, expired) in the log at ``path``,
    mapped to that entry's seq: the signer reads this at start so a request gets one final outcome, ever."""
    out: dict[str, int] = {}
    with open(path, "rb") as f:
        for seq, line in enumerate(f, start=1):
            try:
                record = strict_loads(line.rstrip(b"\n"), max_size=MAX_LINE_BYTES).get("record")
            except VerificationError:
                continue
            if isinstance(record, dict) and record.get("type") == OUTCOME_RECORDED:
                rid = record.get("requestId")
                if isinstance(rid, str):
                    out.setdefault(rid, seq)
    return out


def outcome_rows(data: bytes) -> list[dict[str, Any]]:
    """Who authorized or refused what, when: one row per final outcome in a log's bytes (pure).

    A ``receipt_issued`` entry is an approval (by the approvers its receipt names, at its issue time); an
    ``outcome_recorded`` entry a denial, cancel or expiry. Rows: ``seq``, ``outcome``, ``requestId``,
    ``scope``, ``requester``, ``by``, ``reason``, ``at`` (when it was decided), ``recordedAt``. The chain is
    checked first (:func:`scan`): a log that does not verify shows nothing.
    """
    scan(data)
    rows: list[dict[str, Any]] = []
    for seq, line in enumerate(data.split(b"\n")[:-1], start=1):
        record = strict_loads(line, max_size=MAX_LINE_BYTES)["record"]
        kind = record.get("type")
        if kind == RECEIPT_ISSUED and isinstance(record.get("receipt"), dict):
            receipt = record["receipt"]
            approvals = receipt.get("approvals")
            who = (
                [a.get("id") for a in approvals if isinstance(a, dict)] if isinstance(approvals, list) else []
            )
            rows.append(
                {
                    "seq": seq,
                    "outcome": "approved",
                    "requestId": receipt.get("requestId"),
                    "scope": receipt.get("scope"),
                    "requester": receipt.get("requester"),
                    "by": ",".join(f"slack:{w}" for w in who if isinstance(w, str)),
                    "reason": None,
                    "at": receipt.get("issuedAt"),
                    "recordedAt": receipt.get("issuedAt"),
                }
            )
        elif kind == OUTCOME_RECORDED:
            rows.append(
                {
                    "seq": seq,
                    "outcome": record.get("outcome"),
                    "requestId": record.get("requestId"),
                    "scope": record.get("scope"),
                    "requester": record.get("requester"),
                    "by": record.get("by"),
                    "reason": record.get("reason"),
                    "at": record.get("decidedAt"),
                    "recordedAt": record.get("recordedAt"),
                }
            )
    return rows


def _receipt_request_id(line: bytes) -> str | None:
    try:
        record = strict_loads(line.rstrip(b"\n"), max_size=MAX_LINE_BYTES).get("record")
    except VerificationError:
        return None
    if not isinstance(record, dict) or record.get("type") != "receipt_issued":
        return None
    receipt = record.get("receipt")
    rid = receipt.get("requestId") if isinstance(receipt, dict) else None
    return rid if isinstance(rid, str) else None


def read_entry(path: str | os.PathLike[str], seq: int) -> dict[str, Any]:
    """The record of entry ``seq`` of the log at ``path`` (raises ``AuditError`` if there is none)."""
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            if number == seq:
                try:
                    record = strict_loads(line.rstrip(b"\n"), max_size=MAX_LINE_BYTES)["record"]
                except (VerificationError, KeyError):
                    break
                if isinstance(record, dict):
                    return record
                break
    raise AuditError(reason="no_entry", path=os.fspath(path), seq=seq, line=seq)


@dataclass(frozen=True)
class TornTail:
    """A torn last line that ``AuditLog.open`` moved aside: its size in bytes and the file now holding it."""

    size: int
    aside: Path


class AuditLog:
    """An open audit log. One process at a time (an exclusive ``flock``); thread-safe within it."""

    def __init__(self, fd: int, path: Path, tip: AuditHead, repaired: TornTail | None = None) -> None:
        self._fd = fd
        self._path = path
        self._log = tip.log
        self._seq = tip.seq
        self._head = tip.head
        self._durable = tip  # everything read at open is on disk
        self._written = 0  # bytes appended by this process
        self._synced = 0  # bytes known durable
        self._write_lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._failed: str | None = None
        self._size = os.fstat(fd).st_size  # where the last whole entry ends: a failed append is cut back here
        self.repaired = repaired  # the torn last line moved aside at open, if there was one

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, repair_torn_tail_at: datetime | None = None) -> AuditLog:
        """Open (creating, mode 0600) the log at ``path``, verify its whole chain, and take an exclusive lock.

        Refuses a broken chain (``audit_chain_broken``) or a log another process holds. A torn last line
        (no newline) is refused (``audit_torn_tail``) unless ``repair_torn_tail_at`` is given: its bytes are
        then moved to ``<path>.torn-<unix seconds of that time>`` (fsynced) and the log is truncated to its
        last complete line (fsynced); ``repaired`` says so, for the caller to report.
        """
        p = Path(path)
        try:
            fd = os.open(p, os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        except OSError as e:
            raise AuditError(reason="cannot_open", path=str(p), error=e.strerror) from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise AuditError(reason="in_use", path=str(p)) from None
            chunks: list[bytes] = []
            offset = 0
            while chunk := os.pread(fd, 1 << 20, offset):
                chunks.append(chunk)
                offset += len(chunk)
            data = b"".join(chunks)
            result = scan(data)
            repaired = None
            if result.torn:
                if repair_torn_tail_at is None:
                    raise _torn_error(result)
                repaired = _move_aside(fd, p, data, result.complete_size, repair_torn_tail_at)
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, p, result.tip, repaired)

    @property
    def path(self) -> Path:
        """Where the log lives."""
        return self._path

    @property
    def seq(self) -> int:
        """Sequence number of the last entry written (0 when empty)."""
        return self._seq

    @property
    def head(self) -> str:
        """SHA-256 (hex) of the last line written."""
        return self._head

    @property
    def durable_head(self) -> AuditHead:
        """The last entry known to be on disk: the only head a checkpoint may vouch for."""
        return self._durable

    def append(self, record: Mapping[str, Any]) -> int:
        """Append ``record`` as the next entry and return its ``seq`` once it is durable on disk."""
        if self._failed is not None:
            raise AuditError(reason="failed", failure=self._failed)
        with self._write_lock:
            if self._failed is not None:
                raise AuditError(reason="failed", failure=self._failed)
            seq = self._seq + 1
            try:
                line = canonical_json({"seq": seq, "prev": self._head, "record": dict(record)})
                strict_loads(line, max_size=MAX_LINE_BYTES)  # never write a line verify_file would refuse
            except VerificationError as e:
                raise AuditError(reason="record", detail=e.message) from None
            try:
                write_all(self._fd, line + b"\n")
            except OSError as e:
                # A full disk (ENOSPC, EDQUOT, EFBIG) may have let part of the line through. Cut the file
                # back to the entries before it (shrinking needs no space): the chain is as it was, nothing
                # was recorded, and the next append, once there is room, simply tries again. Only if even
                # that fails is the log left unusable (the torn tail is then repaired at the next start).
                if not self._roll_back():
                    self._failed = f"write failed: {e.strerror}"
                raise AuditError(reason="write", error=e.strerror) from None
            self._size += len(line) + 1
            self._seq, self._head = seq, _line_hash(line)
            if seq == 1:
                self._log = self._head
            self._written += len(line) + 1
            mine = self._written
        self._sync_until(mine)
        return seq

    def _roll_back(self) -> bool:
        """Truncate the file to ``self._size`` (the end of the last whole entry); whether that worked."""
        try:
            os.ftruncate(self._fd, self._size)
            return os.fstat(self._fd).st_size == self._size
        except OSError:
            return False

    async def append_async(self, record: Mapping[str, Any]) -> int:
        """``append`` from asyncio code without blocking the event loop (fsyncs are shared between calls)."""
        return await asyncio.to_thread(self.append, record)

    def _sync_until(self, position: int) -> None:
        with self._sync_lock:
            if self._synced >= position:
                return  # another thread's fsync, begun after our write, already covered it
            with self._write_lock:  # a consistent snapshot: the head of exactly the bytes the fsync covers
                target = self._written
                head = AuditHead(self._log, self._seq, self._head)
            try:
                os.fsync(self._fd)
            except OSError as e:
                self._failed = f"fsync failed: {e.strerror}"
                raise AuditError(reason="fsync", error=e.strerror) from None
            self._synced = target
            self._durable = head

    def close(self) -> None:
        """Release the lock and close the file."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` (``os.write`` may write only part of it)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def fsync_dir(directory: Path) -> None:
    """Make a file created or renamed in ``directory`` durable (best effort: some filesystems refuse)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _move_aside(fd: int, path: Path, data: bytes, keep: int, now: datetime) -> TornTail:
    """Save the bytes of ``data`` after ``keep`` beside the log (fsynced), then cut them from it (fsynced).

    In that order, so a crash in between leaves the bytes in both places, never in neither; the next start
    then finds the tail again and saves a second copy.
    """
    torn = data[keep:]
    stamp = int(now.timestamp())
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        for n in range(1000):
            aside = path.with_name(f"{path.name}.torn-{stamp}" + (f"-{n}" if n else ""))
            try:
                out = os.open(aside, flags, 0o600)
                break
            except FileExistsError:
                continue
        else:
            raise AuditError(reason="too_many_aside", path=str(path), stamp=stamp)
        try:
            write_all(out, torn)
            os.fsync(out)
        finally:
            os.close(out)
        fsync_dir(path.parent)
        os.ftruncate(fd, keep)
        os.fsync(fd)
    except OSError as e:
        raise AuditError(code=TORN_TAIL, reason="move_aside", path=str(path), error=e.strerror) from None
    return TornTail(len(torn), aside)
