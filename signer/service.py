"""The signer process: an asyncio Unix-socket server speaking the wire protocol (design.md §5, issue 4).

This is the I/O edge. Decisions are made by the pure :func:`keyturn.signer.evidence.assess`; this module reads
frames, calls it with the signer's own clock, signs with ``keyturn.signer.keys``, records in
``keyturn.signer.audit`` and writes the reply. Every bad frame gets an error reply and the connection keeps
serving, except an oversized frame (its payload is never read, so the stream cannot be resynchronised) or one
whose bytes stop arriving (``frame_timeout``): error reply, then close. Idle connections are closed quietly;
past the connection cap new ones get ``too_many_connections`` and are closed.

Order for ``sign`` (issue 4, point 5): assess → sign → append to the audit log and fsync → re-sign the
checkpoint of the log's head → reply. No record, no receipt: if the append fails the reply is an error and the
receipt is dropped. The signer holds a signed checkpoint of its durable head from start on and serves the
latest with the ``checkpoint`` op (docs/security.md, "Anchoring the audit log"). At start a torn last line of
the log is moved aside with a warning; a broken chain is a refusal to start.

Keys are reloaded without a restart (docs/keys.md): on SIGHUP, and before every ``sign`` and checkpoint when
the key file's identity (inode, size, mtime) changed since it was last read. A reload is all or nothing: a
file that does not load keeps the keys held, with an error in the log naming the key still signing.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import hashlib
import logging
import os
import signal
import socket
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from keyturn.signer import evidence, oidc, wire
from keyturn.signer.audit import (
    OUTCOME_RECORDED,
    AuditHead,
    AuditLog,
    issued_requests,
    read_entry,
    recorded_outcomes,
)
from keyturn.signer.checkpoint import unsigned_checkpoint
from keyturn.signer.errors import KeyturnError
from keyturn.signer.keys import SigningKeyset, sign_checkpoint, sign_receipt
from keyturn.signer.policy import Policy, PolicyError, PolicyIssue, load_policy
from keyturn.signer.receipt import STATUS_APPROVED, ApprovalEntry, ApproverRef, format_time, unsigned_receipt
from keyturn.signer.words import Fact, words

__all__ = [
    "Clock",
    "ServiceError",
    "Signer",
    "SignerServer",
    "bind_socket",
    "file_clock",
    "run",
    "system_clock",
]

log = logging.getLogger("keyturn.signer")

Clock = Callable[[], datetime]


class ServiceError(KeyturnError):
    """The signer cannot start or cannot serve (socket in use, clock unreadable, ...)."""

    code = "signer_error"

    def __init__(self, code: str, reason: str, **facts: Fact) -> None:
        super().__init__(code=code, facts={"reason": reason, **facts})


def system_clock() -> datetime:
    """The real clock (UTC)."""
    return datetime.now(UTC)


def file_clock(path: Path) -> Clock:
    """A dev/test clock reading Unix seconds from ``path`` on every call (``KEYTURN_SIGNER_FAKE_NOW_FILE``).

    An unreadable or malformed file is a refusal (``clock_unavailable``), never a fall-back to the real clock.
    """

    def now() -> datetime:
        try:
            text = path.read_text().strip()
            return datetime.fromtimestamp(float(text), UTC)
        except (OSError, ValueError, OverflowError):
            raise ServiceError("clock_unavailable", "fake_clock", path=str(path)) from None

    return now


FileIdentity = tuple[int, int, int, int]


def _identity(path: Path) -> FileIdentity | None:
    """What tells a replaced or rewritten key file from the one read: device, inode, size, mtime (ns).

    ``os.stat`` follows symlinks, so a Kubernetes secret volume's swapped ``..data`` link counts as a change.
    """
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


_RANK = {"next": 0, "active": 1, "rotated": 2, "revoked": 3}


def _reload_refusal(old: SigningKeyset, new: SigningKeyset) -> str | None:
    """Why ``new`` must not replace ``old`` in a running signer, or None.

    A key file only moves forward: the key signing now stays listed (else the receipts it signed would lose
    their key), and no key goes back in its lifecycle (a restored backup would re-activate a retired key).
    Switching to an unrelated key file takes a restart, on purpose.
    """
    after = {k.kid: k.status for k in new.public_keyset()}
    if old.active_kid not in after:
        return f"the new file lacks the active key {old.active_kid}; restart the signer to change key files"
    for key in old.public_keyset():
        status = after.get(key.kid)
        if status is not None and _RANK[status] < _RANK[key.status]:
            return f"key {key.kid} would go back from {key.status} to {status}"
    return None


@dataclass
class Signer:
    """Answers parsed requests. Holds the keys, policy, secrets and audit log; keeps no per-request state.

    With ``key_file`` set, the keys follow that file (see :meth:`reload_keys`).
    """

    keys: SigningKeyset
    policy: Policy
    secrets: evidence.Secrets
    audit: AuditLog
    clock: Clock = system_clock
    timeout: float = 5.0
    key_file: Path | None = None
    # The policy's OIDC issuers with the keys from their pinned files, read at start (load_oidc_issuers).
    oidc_issuers: dict[str, oidc.Issuer] = field(default_factory=dict)
    _checkpoint: dict[str, Any] | None = field(default=None, init=False, repr=False)
    _checkpoint_head: AuditHead | None = field(default=None, init=False, repr=False)
    _key_file_seen: FileIdentity | None = field(default=None, init=False, repr=False)
    # One receipt per request, ever: request id -> the audit seq of its receipt (read from the log at start),
    # and the signs in progress, so two at once for one request yield one receipt.
    _issued: dict[str, int] = field(default_factory=dict, init=False, repr=False)
    # Likewise one other final outcome (denied, cancelled, expired) per request, and never both: a request
    # with a recorded refusal gets no receipt, and one with a receipt gets no recorded refusal.
    _outcomes: dict[str, int] = field(default_factory=dict, init=False, repr=False)
    _signing: tuple[asyncio.Lock, ...] = field(
        default_factory=lambda: tuple(asyncio.Lock() for _ in range(64)), init=False, repr=False
    )

    def __post_init__(self) -> None:
        self._issued = issued_requests(self.audit.path)
        self._outcomes = recorded_outcomes(self.audit.path)
        if self.key_file is not None:
            self._key_file_seen = _identity(self.key_file)

    def reload_keys(self, *, force: bool = False) -> bool:
        """Re-read the key file if it changed (or always, with ``force``: SIGHUP); return whether the keys
        held changed.

        All or nothing: a file that is missing, unreadable, too open or invalid keeps the keys held and logs
        an error once per version of the file (so a broken file does not flood the log on every request).
        """
        if self.key_file is None:
            return False
        seen = _identity(self.key_file)
        if not force and seen == self._key_file_seen:
            return False
        self._key_file_seen = seen
        try:
            keys = SigningKeyset.load(self.key_file)
        except KeyturnError as exc:
            log.error(
                "KEY FILE RELOAD FAILED, still signing with %s: %s: %s",
                self.keys.active_kid,
                exc.code,
                exc.message,
            )
            return False
        old = self.keys
        refusal = _reload_refusal(old, keys)
        if refusal is not None:
            log.error("KEY FILE RELOAD REFUSED, still signing with %s: %s", old.active_kid, refusal)
            return False
        changed = keys.public_keyset().to_jwks() != old.public_keyset().to_jwks()
        self.keys = keys
        if keys.active_kid != old.active_kid:
            self._checkpoint = None  # re-signed by the new key on next use
            log.warning("keys reloaded: now signing with %s (was %s)", keys.active_kid, old.active_kid)
        log.info(
            "keys reloaded from %s: active %s, next %s, %d key(s)%s",
            self.key_file,
            keys.active_kid,
            keys.next_kid or "none",
            len(keys.public_keyset()),
            "" if changed else " (unchanged)",
        )
        return changed

    def checkpoint(self) -> dict[str, Any]:
        """The signed checkpoint (DSSE envelope) of the audit log's durable head, re-signed when it moved.

        The durable head only grows, so the checkpoint held never goes back. Raises ``KeyturnError`` if the
        clock cannot be read (then the previous checkpoint, if any, stays held).
        """
        self.reload_keys()
        head = self.audit.durable_head
        if self._checkpoint is None or self._checkpoint_head != head:
            keys = self.keys
            unsigned = unsigned_checkpoint(
                log=head.log,
                seq=head.seq,
                head=head.head,
                issued_at=self.clock(),
                key_id=keys.active_kid,
            )
            self._checkpoint, self._checkpoint_head = sign_checkpoint(keys, unsigned), head
        return self._checkpoint

    async def reply_to(self, payload: bytes) -> wire.OkReply | wire.ErrorReply:
        """The reply to one frame payload. Never raises: every failure becomes an error reply."""
        try:
            request = wire.parse_request(payload)
        except wire.WireError as exc:
            return wire.error_reply(exc.request_id, exc.code, exc.message)
        try:
            result = await asyncio.wait_for(self.handle(request), self.timeout)
        except KeyturnError as exc:
            if request.op in ("sign", "record_outcome"):
                rid = getattr(request, "requestId", "?")[:40]
                log.info("%s %s refused: %s", request.op, rid, exc.code)
            return wire.error_reply(request.id, exc.code, exc.message)
        except TimeoutError:
            log.warning("%s %s timed out after %ss", request.op, request.id[:40], self.timeout)
            return wire.error_reply(request.id, "timeout", words("timeout", {"seconds": self.timeout}))
        except Exception as exc:  # a bug must cost one reply, not the process
            log.error("%s failed: %s", request.op, type(exc).__name__)
            return wire.error_reply(
                request.id, "internal_error", words("internal_error", {"reason": "signer"})
            )
        return wire.ok_reply(request.id, result)

    async def handle(self, request: wire.Request) -> BaseModel | dict[str, Any]:
        """Run one request; raises :class:`KeyturnError` subclasses with the code to answer with."""
        if isinstance(request, wire.HealthRequest):
            self.reload_keys()  # report the key that signs now, not the one loaded at start
            head = self.audit.durable_head
            return wire.HealthResult(
                keyId=self.keys.active_kid,
                policySha256=self.policy.sha256,
                auditSeq=head.seq,
                auditHead=head.head,
            )
        if isinstance(request, wire.KeysRequest):
            self.reload_keys()  # so a revocation is published as soon as the file says so
            return wire.KeysResult(jwks=self.keys.public_keyset().to_jwks())
        if isinstance(request, wire.CheckpointRequest):
            return wire.CheckpointResult(checkpoint=self.checkpoint())
        if isinstance(request, wire.CheckCiRequest):
            evidence.verify_ci_request(
                self.secrets.ci_secret,
                request.method,
                request.path,
                request.body,
                request.timestamp,
                request.signature,
                self.clock(),
            )
            if (request.method, request.path) == ("POST", "/v1/requests"):
                evidence.check_ci_secret_allowed(request.body, self.policy)
            return {}
        if isinstance(request, wire.CheckOidcRequest):
            if request.body is None:
                oidc.verify_token(request.token, self.oidc_issuers, self.clock())
            else:
                evidence.check_oidc_request(
                    request.token, request.body, self.policy, self.oidc_issuers, self.clock()
                )
            return {}
        if isinstance(request, wire.CheckSlackRequest):
            evidence.verify_slack_request(
                self.secrets.slack_signing_secret,
                request.body,
                request.timestamp,
                request.signature,
                self.clock(),
            )
            return {}
        if isinstance(request, wire.CheckGitHubRequest):
            hook = evidence.check_github_webhook(
                self.secrets.github_webhook_secret,
                request.body,
                request.delivery,
                request.signature,
                self.policy,
            )
            ts = str(int(self.clock().timestamp()))
            stamp = evidence.github_stamp(
                self.secrets.github_webhook_secret, request.body, request.delivery, ts
            )
            return wire.GitHubStampResult(timestamp=ts, stamp=stamp, runId=hook.run_id)
        if isinstance(request, wire.MacCallbackRequest):
            sig = evidence.callback_signature(
                self.secrets.ci_secret, request.path, request.timestamp, request.body
            )
            return wire.MacResult(signature=sig)
        if isinstance(request, wire.RecordOutcomeRequest):
            return await self._record_outcome(request)
        return await self._sign(request)

    async def _sign(self, request: wire.SignRequest) -> wire.SignResult:
        origin = _origin_evidence(request.origin)
        clicks = [evidence.SlackEvidence(c.body, c.timestamp, c.signature) for c in request.approvals]
        # Look at the key file before reading the clock: a rotation written before this point is honoured,
        # and one written after it falls within the retired key's grace (signer/keys.py).
        self.reload_keys()
        keys = self.keys  # one keyset for this receipt, even if a SIGHUP swaps it mid-request
        decision = evidence.assess(
            policy=self.policy,
            secrets=self.secrets,
            request_id=request.requestId,
            origin=origin,
            clicks=clicks,
            emails=request.emails,
            now=self.clock(),
            oidc_issuers=self.oidc_issuers,
        )
        unsigned = unsigned_receipt(
            request_id=decision.request_id,
            status=STATUS_APPROVED,
            issued_at=decision.issued_at,
            expires_at=decision.expires_at,
            scope=decision.scope,
            approver=ApproverRef(decision.approver.user_id, decision.approver.email),
            approvals=[ApprovalEntry(a.user_id, a.email, a.at) for a in decision.approvals],
            requester=decision.requester,
            key_id=keys.active_kid,
            requester_proof=decision.requester_proof,
        )
        if not keys.active_valid_at(decision.issued_at):
            # A key created "in the future" by a skewed clock: refuse rather than issue a receipt that no
            # verifier would accept.
            raise ServiceError("key_not_valid_at_issue", "active_key", kid=keys.active_kid)
        # Striped locks: the same request always takes the same one, so its signs run one after the other.
        async with self._signing[hash(decision.request_id) % len(self._signing)]:
            return await self._issue(decision.request_id, keys, unsigned, request)

    async def _issue(
        self, request_id: str, keys: SigningKeyset, unsigned: dict[str, Any], request: wire.SignRequest
    ) -> wire.SignResult:
        """Sign and record ``unsigned`` — or, if this request already has a receipt, return that one.

        A bot that died after the signer recorded a receipt but before storing it asks again (its backstop
        does); a second receipt for the same request would be a second authorization on the record. So the
        answer is the receipt already issued, read back from the audit log (it is the record).
        """
        if request_id in self._outcomes:
            # Denied, cancelled or expired on the record: a receipt now would contradict the log.
            raise ServiceError(
                "request_closed", "outcome", request_id=request_id, seq=self._outcomes[request_id]
            )
        if request_id in self._issued:
            seq_before = self._issued[request_id]
            record = await asyncio.to_thread(read_entry, self.audit.path, seq_before)
            log.info(
                "sign %s: already issued at audit seq %d; the same receipt again", request_id, seq_before
            )
            return wire.SignResult(receipt=record["receipt"])
        receipt = sign_receipt(keys, unsigned)
        # Record first: the receipt leaves this process only once its audit entry is on disk.
        seq = await self.audit.append_async(_audit_record(receipt, request, self.policy.sha256))
        self._issued[request_id] = seq
        log.info("sign %s ok: audit seq %d", request_id, seq)
        try:
            self.checkpoint()  # so the checkpoint served covers this receipt's entry from now on
        except KeyturnError as exc:  # the receipt is recorded: it is returned; the next call re-signs
            log.warning("checkpoint of audit seq %d not signed: %s", seq, exc.code)
        return wire.SignResult(receipt=receipt)

    async def _record_outcome(self, request: wire.RecordOutcomeRequest) -> wire.OutcomeResult:
        """Check and record a denial, cancel or expiry (docs/security.md, "The record"): one per request.

        Checked like a sign (``evidence.assess_outcome``), appended and fsynced, the checkpoint re-signed.
        A request already closed on the record gets that record back (the bot's retries are idempotent); one
        with a receipt is refused (``already_approved``), so the log never says both.
        """
        origin = _origin_evidence(request.origin)
        denial = request.denial
        cancel: evidence.CiEvidence | evidence.OidcCall | None = None
        if isinstance(request.cancel, wire.CiOrigin):
            c = request.cancel
            cancel = evidence.CiEvidence(c.method, c.path, c.body, c.timestamp, c.signature)
        elif isinstance(request.cancel, wire.OidcCall):
            cancel = evidence.OidcCall(request.cancel.token)
        now = self.clock()
        decision = evidence.assess_outcome(
            policy=self.policy,
            secrets=self.secrets,
            request_id=request.requestId,
            outcome=request.outcome,
            origin=origin,
            denial=None
            if denial is None
            else evidence.SlackEvidence(denial.body, denial.timestamp, denial.signature),
            cancel=cancel,
            now=now,
            oidc_issuers=self.oidc_issuers,
        )
        rid = decision.request_id
        async with self._signing[hash(rid) % len(self._signing)]:
            if rid in self._issued:
                raise ServiceError("already_approved", "receipt", request_id=rid, seq=self._issued[rid])
            if rid in self._outcomes:
                seq = self._outcomes[rid]
                record = await asyncio.to_thread(read_entry, self.audit.path, seq)
                return wire.OutcomeResult(auditSeq=seq, record=record)
            record = _outcome_record(decision, request, self.policy.sha256, now)
            seq = await self.audit.append_async(record)
            self._outcomes[rid] = seq
        log.info("record_outcome %s %s: audit seq %d", rid, decision.outcome, seq)
        try:
            self.checkpoint()
        except KeyturnError as exc:  # recorded: the next call re-signs the checkpoint
            log.warning("checkpoint of audit seq %d not signed: %s", seq, exc.code)
        return wire.OutcomeResult(auditSeq=seq, record=record)


def _origin_evidence(
    o: wire.AnyOrigin,
) -> evidence.Origin:
    """A frame's origin as the trust core's evidence type."""
    if isinstance(o, wire.CiOrigin):
        return evidence.CiEvidence(o.method, o.path, o.body, o.timestamp, o.signature)
    if isinstance(o, wire.OidcOrigin):
        return evidence.OidcEvidence(o.token, o.body)
    if isinstance(o, wire.GitHubOrigin):
        return evidence.GitHubEvidence(o.body, o.delivery, o.signature, o.workflow, o.timestamp, o.stamp)
    return evidence.SlackEvidence(o.body, o.timestamp, o.signature)


def _outcome_record(
    decision: evidence.OutcomeAssessment,
    request: wire.RecordOutcomeRequest,
    policy_sha256: str,
    now: datetime,
) -> dict[str, Any]:
    """What the audit log keeps for a denial, cancel or expiry: who, why, when (the evidence's signed time
    and the signer's clock), the request's scope, the policy, and digests of the evidence (as receipts)."""
    scope = decision.scope
    o = request.origin
    if isinstance(o, wire.OidcOrigin):
        origin: dict[str, Any] = {"kind": o.kind, "tokenSha256": _digest(o.token), "sha256": _digest(o.body)}
    else:
        origin = {"kind": o.kind, "timestamp": o.timestamp, "sha256": _digest(o.body)}
    proof: dict[str, Any] | None = None
    if request.denial is not None:
        d = request.denial
        proof = {"kind": "slack_deny_submission", "timestamp": d.timestamp, "sha256": _digest(d.body)}
    elif isinstance(request.cancel, wire.CiOrigin):
        c = request.cancel
        proof = {"kind": "ci_cancel", "timestamp": c.timestamp, "sha256": _digest(c.body), "path": c.path}
    elif isinstance(request.cancel, wire.OidcCall):
        proof = {"kind": "oidc_cancel", "tokenSha256": _digest(request.cancel.token)}
    return {
        "type": OUTCOME_RECORDED,
        "outcome": decision.outcome,
        "requestId": decision.request_id,
        "scope": {
            "repo": scope.repo,
            "sha": scope.sha,
            "environment": scope.environment,
            "workflow": scope.workflow,
        },
        "requester": decision.requester,
        "by": decision.by,
        "reason": decision.reason,
        "decidedAt": format_time(decision.decided_at),
        "requestDeadline": format_time(decision.request_deadline),
        "recordedAt": format_time(now),
        "policySha256": policy_sha256,
        "evidence": {"origin": origin, "decision": proof},
    }


def _digest(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def _audit_record(receipt: dict[str, Any], request: wire.SignRequest, policy_sha256: str) -> dict[str, Any]:
    """What the audit log keeps for an issued receipt: the receipt, the policy, and digests of the evidence.

    Digests (not raw bodies) keep entries small and free of short-lived Slack URLs and trigger ids, while
    still binding each receipt to the exact bytes the bot holds as evidence.
    """
    o = request.origin
    if isinstance(o, wire.OidcOrigin):
        # The token's digest, not the token: it may still be a valid bearer credential for a while.
        origin = {"kind": o.kind, "tokenSha256": _digest(o.token), "sha256": _digest(o.body)}
    else:
        origin = {"kind": o.kind, "timestamp": o.timestamp, "sha256": _digest(o.body)}
    return {
        "type": "receipt_issued",
        "receipt": receipt,
        "policySha256": policy_sha256,
        "evidence": {
            "origin": origin,
            "approvals": [{"timestamp": c.timestamp, "sha256": _digest(c.body)} for c in request.approvals],
        },
    }


# --- the socket ---------------------------------------------------------------------------------------------


def _resolve_gid(group: str) -> int:
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ServiceError("config", "no_group", group=repr(group)) from None


def bind_socket(path: Path, group: str | None = None) -> socket.socket:
    """Create the listening Unix socket at ``path``: mode 0600, or 0660 owned by ``group``.

    A stale socket file (nobody listening) is replaced; a live one, or a path that is not a socket, is
    refused rather than deleted. The socket is created under a 0177 umask, so it is never accessible to
    others even for an instant.
    """
    gid = _resolve_gid(group) if group else None
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None:
        if not stat.S_ISSOCK(st.st_mode):
            raise ServiceError("config", "not_socket", path=str(path))
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(path))
            except OSError:
                pass  # nobody is listening: stale
            else:
                raise ServiceError("config", "in_use", path=str(path))
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise ServiceError("config", "listen", path=str(path), detail=str(exc.strerror or exc)) from None
    finally:
        os.umask(old_umask)
    try:
        if gid is not None:
            os.chown(path, -1, gid)
            os.chmod(path, 0o660)
        else:
            os.chmod(path, 0o600)
    except OSError as exc:
        sock.close()
        path.unlink(missing_ok=True)
        raise ServiceError("config", "permissions", path=str(path), detail=exc.strerror) from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


class SignerServer:
    """Serves a :class:`Signer` on a Unix socket: concurrent connections, requests answered in order.

    A connection that sends nothing for ``idle_timeout`` seconds, or stops reading its replies for as long, is
    closed; so is one whose frame does not arrive in full within the signer's request timeout. At most
    ``max_connections`` are served at once: the next one gets a ``too_many_connections`` error and is closed.
    """

    def __init__(
        self,
        signer: Signer,
        path: Path,
        group: str | None = None,
        *,
        idle_timeout: float = 300.0,
        max_connections: int = 256,
    ) -> None:
        self.signer = signer
        self.path = path
        self.group = group
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self._server: asyncio.Server | None = None
        self._inode: int | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._at_capacity = False  # warn once per episode of refusals, not once per refused connection

    async def start(self) -> None:
        """Bind and start accepting."""
        sock = bind_socket(self.path, self.group)
        self._inode = os.stat(self.path).st_ino
        self._server = await asyncio.start_unix_server(self._serve, sock=sock)

    async def _send(self, writer: asyncio.StreamWriter, frame: bytes) -> None:
        # A peer that does not read its replies is as idle as one that does not write.
        writer.write(frame)
        await asyncio.wait_for(writer.drain(), self.idle_timeout)

    async def _refuse(self, writer: asyncio.StreamWriter) -> None:
        if not self._at_capacity:
            self._at_capacity = True
            log.warning("%d connections open: refusing new ones", len(self._connections))
        limit = {"limit": self.max_connections}
        reply = wire.error_reply("", "too_many_connections", words("too_many_connections", limit))
        with contextlib.suppress(Exception):
            writer.write(wire.encode_frame(reply))
            await asyncio.wait_for(writer.drain(), 1.0)
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._connections) >= self.max_connections:
            await self._refuse(writer)
            return
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            while True:
                try:
                    payload = await wire.read_frame(
                        reader, idle_timeout=self.idle_timeout, frame_timeout=self.signer.timeout
                    )
                except wire.WireError as exc:
                    if exc.code == "idle_timeout":
                        log.debug("closing a connection idle for %s s", self.idle_timeout)
                    elif exc.code in ("frame_too_large", "frame_timeout"):
                        await self._send(
                            writer, wire.encode_frame(wire.error_reply("", exc.code, exc.message))
                        )
                    return  # the stream is out of sync (or idle): close
                if payload is None:
                    return
                reply = await self.signer.reply_to(payload)
                try:
                    frame = wire.encode_frame(reply)
                except wire.WireError as exc:
                    frame = wire.encode_frame(wire.error_reply(reply.id, exc.code, exc.message))
                await self._send(writer, frame)
        except TimeoutError:
            log.debug("closing a connection that has not read its replies for %s s", self.idle_timeout)
            return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            if task is not None:
                self._connections.discard(task)
                if len(self._connections) < self.max_connections:
                    self._at_capacity = False
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def close(self) -> None:
        """Stop accepting, end open connections, and remove the socket file if it is still ours."""
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == self._inode:
                self.path.unlink()


# --- the process --------------------------------------------------------------------------------------------


def load_oidc_issuers(policy: Policy, policy_path: Path) -> dict[str, oidc.Issuer]:
    """The policy's ``[oidc.issuers]`` with their pinned key sets, read from the files the policy names
    (relative to the policy's directory). A missing or bad file is a refusal to start (``invalid_policy``):
    the signer has no network and no other source of issuer keys (docs/ci.md, "Pinned issuer keys")."""
    out: dict[str, oidc.Issuer] = {}
    for name, cfg in policy.oidc.issuers.items():
        path = policy_path.parent / cfg.jwks_file
        where = f"oidc.issuers.{name}.jwks_file"
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise PolicyError(
                str(policy_path), [PolicyIssue(where, f"cannot read {path}: {exc.strerror}")]
            ) from None
        try:
            keys = oidc.parse_jwks(data, cfg.algorithm)
        except oidc.OidcError as exc:
            raise PolicyError(str(policy_path), [PolicyIssue(where, f"{path}: {exc.message}")]) from None
        out[name] = oidc.Issuer(name, cfg.issuer, cfg.audience, cfg.algorithm, cfg.kind, keys)
    return out


def _load(
    settings: Any,
) -> tuple[SigningKeyset, Policy, evidence.Secrets, AuditLog, Clock, dict[str, oidc.Issuer]]:
    keys = SigningKeyset.load(settings.signer_keyset)
    policy = load_policy(settings.policy)
    issuers = load_oidc_issuers(policy, Path(settings.policy))
    github = settings.github_webhook_secret
    secrets = evidence.Secrets(
        settings.slack_signing_secret.get_secret_value(),
        settings.ci_secret.get_secret_value(),
        github.get_secret_value() if github is not None else "",
    )
    clock: Clock = system_clock
    fake = settings.fake_now_file
    if fake is not None:
        clock = file_clock(Path(fake))
        clock()  # refuse to start on an unreadable fake clock rather than fail every request
        print(
            f"keyturn signer: WARNING: dev mode, the clock is read from {fake}", file=sys.stderr, flush=True
        )
    audit = AuditLog.open(settings.audit_log, repair_torn_tail_at=clock())
    if audit.repaired is not None:
        # Loud, once, at start: an operator should know. No checkpoint can cover these bytes (only synced
        # entries are checkpointed) and no receipt was returned for them.
        log.warning(
            "AUDIT LOG TORN TAIL REPAIRED: %d bytes after entry seq %d of %s had no newline (a write cut "
            "short by a crash or a full disk; no receipt was returned for it); moved aside to %s",
            audit.repaired.size,
            audit.seq,
            settings.audit_log,
            audit.repaired.aside,
        )
    return keys, policy, secrets, audit, clock, issuers


async def _serve_until_signalled(server: SignerServer) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # SIGHUP: re-read the key file now (e.g. to publish a revocation at once, or after fixing a bad file).
    loop.add_signal_handler(signal.SIGHUP, lambda: server.signer.reload_keys(force=True))
    await server.start()
    print(f"signer ready on {server.path} key {server.signer.keys.active_kid}", flush=True)
    try:
        await stop.wait()
    finally:
        await server.close()


def run(settings: Any) -> int:
    """Load everything, serve until SIGTERM/SIGINT, return the exit code (2 when refusing to start).

    ``settings`` is a :class:`keyturn.signer.config.SignerSettings`. A start-up refusal prints one line
    naming the problem (never a secret) and returns 2.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        keys, policy, secrets, audit, clock, issuers = _load(settings)
    except KeyturnError as exc:
        print(f"keyturn signer: refusing to start: {exc.code}: {exc.message}", file=sys.stderr, flush=True)
        return 2
    signer = Signer(
        keys,
        policy,
        secrets,
        audit,
        clock,
        settings.signer_request_timeout,
        key_file=Path(settings.signer_keyset),
        oidc_issuers=issuers,
    )
    try:
        signer.checkpoint()  # hold a checkpoint of the head from the start
    except KeyturnError as exc:
        audit.close()
        print(f"keyturn signer: refusing to start: {exc.code}: {exc.message}", file=sys.stderr, flush=True)
        return 2
    server = SignerServer(
        signer,
        Path(settings.signer_socket),
        settings.signer_socket_group,
        idle_timeout=settings.signer_idle_timeout,
        max_connections=settings.signer_max_connections,
    )
    try:
        asyncio.run(_serve_until_signalled(server))
    except KeyturnError as exc:
        print(f"keyturn signer: refusing to start: {exc.code}: {exc.message}", file=sys.stderr, flush=True)
        return 2
    finally:
        audit.close()
    return 0
