"""Anchoring the audit log (issue 9, point 7): signed checkpoints of its head catch a log cut short, or
rewritten and re-chained, which the chain alone cannot; a torn last line is repaired at start, tampering not.

The attacks are made as an attacker with write access to the log would make them: cut lines, edit a record,
then recompute every later ``prev`` (``rechain``). The log and its checkpoints come from a real signer
process; ``keyturn audit verify`` runs as a real process and each test asserts the refusal code.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from keyturn.bot.signer_client import SignerClient
from keyturn.signer import checkpoint as cpmod
from keyturn.signer.audit import GENESIS, REWRITTEN, TRUNCATED, AuditLog, verify_file, verify_log
from keyturn.signer.errors import AuditError, KeyturnError, VerificationError
from keyturn.signer.keys import SigningKeyset, sign_checkpoint, sign_receipt
from keyturn.signer.keyset import key_id
from keyturn.signer.receipt import (
    PAYLOAD_TYPE,
    ApprovalEntry,
    ApproverRef,
    b64encode,
    canonical_json,
    pae,
    signed_payload,
    to_dsse,
    unsigned_receipt,
)
from keyturn.signer.verify import verify_receipt
from tests.harness import KEYTURN, ROOT, Proc, unix_socket_ready, wait_until
from tests.signer.conftest import (
    SCOPE,
    SignerFiles,
    ci_origin,
    ci_request_body,
    click,
    click_body,
    make_files,
    new_id,
    rid_of,
    start_signer,
)

NOW = datetime(2026, 2, 28, 16, 0, 0, tzinfo=UTC)


# --- helpers: what an attacker does, and the real commands ------------------------------------------------


def line_hash(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def rechain(records: Sequence[dict[str, Any]]) -> list[bytes]:
    """Lines of a log holding ``records``, every ``seq`` and ``prev`` recomputed: a forger's tool."""
    lines: list[bytes] = []
    prev = GENESIS
    for seq, record in enumerate(records, start=1):
        line = canonical_json({"seq": seq, "prev": prev, "record": record})
        lines.append(line + b"\n")
        prev = line_hash(line)
    return lines


def records_of(lines: Sequence[bytes]) -> list[dict[str, Any]]:
    return [json.loads(line)["record"] for line in lines]


def audit_verify(log: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``keyturn audit verify LOG ARGS`` as a process."""
    return subprocess.run(
        [*KEYTURN, "audit", "verify", str(log), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )


def assert_rejected(out: subprocess.CompletedProcess[str], code: str) -> str:
    assert out.returncode == 1, out
    assert out.stderr.startswith(f"REJECTED {code}: "), out.stderr
    return out.stderr


def envelope_parts(env: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    """A checkpoint envelope's payload object and signature."""
    payload = json.loads(base64.b64decode(env["payload"]))
    return payload, base64.b64decode(env["signatures"][0]["sig"])


def rewrap(payload: dict[str, Any], sig: bytes, kid: str) -> dict[str, Any]:
    """An envelope with ``payload`` (canonical, so only the signature can be wrong) and ``sig``."""
    return cpmod.envelope(canonical_json(payload), kid, sig)


def write_json(path: Path, obj: dict[str, Any]) -> Path:
    path.write_text(json.dumps(obj))
    return path


# --- a real signer's log and checkpoints ----------------------------------------------------------------


@dataclass
class Anchored:
    """A log of four receipts from a real signer, the checkpoint it served after each, and its keyset."""

    lines: list[bytes]
    checkpoints: list[dict[str, Any]]  # checkpoints[i] anchors entry seq i + 1
    keys: Path
    kid: str
    root: Path

    def log(self, tmp: Path, lines: Sequence[bytes] | None = None, name: str = "audit.jsonl") -> Path:
        path = tmp / name
        path.write_bytes(b"".join(self.lines if lines is None else lines))
        return path

    def latest(self, tmp: Path) -> Path:
        return write_json(tmp / "checkpoint.json", self.checkpoints[-1])

    def archive(self, tmp: Path) -> Path:
        d = tmp / "archive"
        d.mkdir()
        for i, env in enumerate(self.checkpoints, start=1):
            write_json(d / f"checkpoint-{i:04d}.json", env)
        return d


_ORIGINS = itertools.count()


async def sign_one(client: SignerClient) -> dict[str, Any]:
    t0 = int(time.time()) - 60
    # A distinct origin (and so request) per call: the signer gives a request one receipt, ever.
    origin = ci_origin(t0, ci_request_body(ref=f"refs/heads/anchor-{next(_ORIGINS)}"))
    clicks = [click(t0 + 10 + i, click_body(origin, u)) for i, u in enumerate(["U0BOB", "U0CAROL"])]
    return await client.sign(rid_of(origin), origin, clicks, {})


@pytest.fixture(scope="module")
def anchored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Anchored]:
    files = make_files()
    proc = start_signer(files, tmp_path_factory.mktemp("anchor-logs"))

    async def run() -> list[dict[str, Any]]:
        client = SignerClient(files.socket)
        try:
            checkpoints = []
            for _ in range(4):
                await sign_one(client)
                checkpoints.append(await client.checkpoint())
            health = await client.health()
            assert health.audit_seq == 4
            return checkpoints
        finally:
            await client.close()

    try:
        checkpoints = asyncio.run(run())
    finally:
        proc.stop()
    keys = SigningKeyset.load(files.keyset)
    public = write_json(files.root / "keys.public.json", keys.public_keyset().to_jwks())
    yield Anchored(
        files.audit.read_bytes().splitlines(keepends=True), checkpoints, public, keys.active_kid, files.root
    )
    shutil.rmtree(files.root, ignore_errors=True)


def test_signer_serves_a_checkpoint_of_each_durable_head(anchored: Anchored) -> None:
    keyset = SigningKeyset.load(anchored.root / "keys.json").public_keyset()
    assert (
        rechain(records_of(anchored.lines)) == anchored.lines
    )  # the forger's tool writes the signer's format
    for seq, env in enumerate(anchored.checkpoints, start=1):
        cp = cpmod.verify_checkpoint(json.dumps(env).encode(), keyset)
        assert (cp.seq, cp.head, cp.log) == (
            seq,
            line_hash(anchored.lines[seq - 1][:-1]),
            line_hash(anchored.lines[0][:-1]),
        )
        assert cp.key_id == anchored.kid


def test_intact_log_matches_every_checkpoint(anchored: Anchored, tmp_path: Path) -> None:
    log = anchored.log(tmp_path)
    out = audit_verify(log, "--checkpoint", str(anchored.archive(tmp_path)), "--keys", str(anchored.keys))
    assert out.returncode == 0, out.stderr
    head = line_hash(anchored.lines[-1][:-1])
    assert out.stdout.strip() == (
        f"OK 4 entries, head {head}; matches 4 signed checkpoint(s), the latest at seq 4 issued "
        f"{json.loads(base64.b64decode(anchored.checkpoints[-1]['payload']))['issuedAt']}"
    )
    # An older checkpoint still anchors what it saw; the entries after it are reported as not anchored yet.
    old = write_json(tmp_path / "old.json", anchored.checkpoints[1])
    out = audit_verify(log, "--checkpoint", str(old), "--keys", str(anchored.keys))
    assert out.returncode == 0, out.stderr
    assert "entries 3-4 not anchored yet" in out.stdout


# --- one test per attack --------------------------------------------------------------------------------


def test_truncated_log_detected_by_checkpoint(anchored: Anchored, tmp_path: Path) -> None:
    log = anchored.log(tmp_path, anchored.lines[:-1])  # the last receipt's entry dropped
    assert audit_verify(log).returncode == 0  # the gap the anchor closes: the chain alone says OK
    cp = anchored.latest(tmp_path)
    err = assert_rejected(audit_verify(log, "--checkpoint", str(cp), "--keys", str(anchored.keys)), TRUNCATED)
    assert "3 complete entries but a signed checkpoint anchors entry seq 4" in err
    assert f"checkpoint {cp}" in err
    empty = anchored.log(tmp_path, [], name="empty.jsonl")
    assert_rejected(audit_verify(empty, "--checkpoint", str(cp), "--keys", str(anchored.keys)), TRUNCATED)


def test_rechained_log_detected_by_checkpoint(anchored: Anchored, tmp_path: Path) -> None:
    records = records_of(anchored.lines)
    # Entry 2 is removed and the rest re-chained; a copy of the last record pads the log to its old length.
    forged = rechain([records[0], records[2], records[3], {**records[3], "policySha256": "0" * 64}])
    log = anchored.log(tmp_path, forged)
    assert audit_verify(log).returncode == 0
    out = audit_verify(log, "--checkpoint", str(anchored.latest(tmp_path)), "--keys", str(anchored.keys))
    assert "entry seq 4 (line 4) is not the entry a signed checkpoint anchors there" in assert_rejected(
        out, REWRITTEN
    )
    # Cut short, then new entries appended past the anchored seq: still caught, as a rewrite.
    grown = anchored.log(
        tmp_path, rechain([*records[:2], {"type": "forged"}, {"type": "forged"}, {}]), "b.jsonl"
    )
    out = audit_verify(grown, "--checkpoint", str(anchored.latest(tmp_path)), "--keys", str(anchored.keys))
    assert_rejected(out, REWRITTEN)


def test_edited_entry_rechained_detected(anchored: Anchored, tmp_path: Path) -> None:
    records = records_of(anchored.lines)
    edited = json.loads(json.dumps(records))
    edited[1]["receipt"]["scope"]["sha"] = "0" * 40  # what a receipt was issued for, rewritten
    log = anchored.log(tmp_path, rechain(edited))
    assert audit_verify(log).returncode == 0
    out = audit_verify(log, "--checkpoint", str(anchored.latest(tmp_path)), "--keys", str(anchored.keys))
    assert_rejected(out, REWRITTEN)
    # With a checkpoint archived after every receipt, the first failing one names the edited entry.
    out = audit_verify(log, "--checkpoint", str(anchored.archive(tmp_path)), "--keys", str(anchored.keys))
    assert "entry seq 2 (line 2)" in assert_rejected(out, REWRITTEN)
    # The first entry edited: it names the log, so the log id no longer matches either.
    edited = json.loads(json.dumps(records))
    edited[0]["policySha256"] = "1" * 64
    log = anchored.log(tmp_path, rechain(edited), "first.jsonl")
    out = audit_verify(log, "--checkpoint", str(anchored.latest(tmp_path)), "--keys", str(anchored.keys))
    assert "entry seq 1 (line 1)" in assert_rejected(out, REWRITTEN)


def test_forged_checkpoint_refused(anchored: Anchored, tmp_path: Path) -> None:
    log = anchored.log(tmp_path, anchored.lines[:-1])  # the truncated log the forger wants to pass
    payload, sig = envelope_parts(anchored.checkpoints[-1])
    payload.update(seq=3, head=line_hash(anchored.lines[2][:-1]))  # claims the log ended at seq 3
    keys = ("--keys", str(anchored.keys))
    edited = write_json(tmp_path / "edited.json", rewrap(payload, sig, anchored.kid))
    assert "signature does not verify" in assert_rejected(
        audit_verify(log, "--checkpoint", str(edited), *keys), "bad_checkpoint"
    )
    # Signed with the forger's own key under the signer's key id: the signer's public key refuses it.
    own = SigningKey.generate()
    body = canonical_json(payload)
    stolen_kid = write_json(
        tmp_path / "own.json",
        cpmod.envelope(body, anchored.kid, own.sign(cpmod.signing_bytes(body)).signature),
    )
    assert_rejected(audit_verify(log, "--checkpoint", str(stolen_kid), *keys), "bad_checkpoint")
    # Signed with the forger's own key under its own id: not a key the operator trusts.
    payload["keyId"] = key_id(bytes(own.verify_key))
    body = canonical_json(payload)
    own_kid = write_json(
        tmp_path / "own-kid.json",
        cpmod.envelope(body, payload["keyId"], own.sign(cpmod.signing_bytes(body)).signature),
    )
    assert_rejected(audit_verify(log, "--checkpoint", str(own_kid), *keys), "unknown_key")
    # And any checkpoint that does not verify is a refusal, even next to one that does.
    out = audit_verify(
        anchored.log(tmp_path),
        "--checkpoint",
        str(anchored.latest(tmp_path)),
        "--checkpoint",
        str(edited),
        *keys,
    )
    assert_rejected(out, "bad_checkpoint")


def _receipt(kid: str) -> dict[str, Any]:
    return unsigned_receipt(
        request_id=new_id(),
        status="APPROVED",
        issued_at=NOW,
        expires_at=NOW + timedelta(minutes=15),
        scope=SCOPE,
        approver=ApproverRef("U0BOB", ""),
        approvals=[ApprovalEntry("U0BOB", "", NOW)],
        requester="github:alice",
        key_id=kid,
    )


def _checkpoint_body(kid: str) -> dict[str, Any]:
    head = line_hash(b"line one")
    return cpmod.unsigned_checkpoint(log=head, seq=1, head=head, issued_at=NOW, key_id=kid)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> SigningKeyset:
    return SigningKeyset.generate(tmp_path_factory.mktemp("keys") / "keys.json", now=NOW - timedelta(days=1))


def test_checkpoint_signature_is_not_a_receipt_signature(keys: SigningKeyset) -> None:
    keyset = keys.public_keyset()
    unsigned = _receipt(keys.active_kid)
    # The key signs the receipt's very bytes, but as a checkpoint: that signature is no receipt signature.
    _kid, sig = keys.sign(cpmod.signing_bytes(signed_payload(unsigned)))
    forged = {**unsigned, "signature": {**unsigned["signature"], "value": b64encode(sig)}}
    with pytest.raises(VerificationError) as exc:
        verify_receipt(json.dumps(forged).encode(), keyset, SCOPE, NOW)
    assert exc.value.code == "bad_signature"
    genuine = sign_receipt(keys, unsigned)  # the same receipt signed as a receipt verifies
    assert (
        verify_receipt(json.dumps(genuine).encode(), keyset, SCOPE, NOW).request_id == unsigned["requestId"]
    )
    # A real checkpoint envelope relabelled as a receipt is refused too, and the checkpoint signer will not
    # sign a receipt body at all.
    env = sign_checkpoint(keys, _checkpoint_body(keys.active_kid))
    with pytest.raises(VerificationError) as exc:
        verify_receipt(json.dumps({**env, "payloadType": PAYLOAD_TYPE}).encode(), keyset, SCOPE, NOW)
    assert exc.value.code == "malformed"
    with pytest.raises(VerificationError) as exc:
        sign_checkpoint(keys, unsigned)
    assert exc.value.code == "bad_checkpoint"


def test_receipt_signature_is_not_a_checkpoint_signature(keys: SigningKeyset) -> None:
    keyset = keys.public_keyset()
    body = cpmod.payload_bytes(_checkpoint_body(keys.active_kid))
    # The key signs the checkpoint's very bytes, but as a receipt: that signature is no checkpoint signature.
    _kid, sig = keys.sign(pae(PAYLOAD_TYPE, body))
    with pytest.raises(VerificationError) as exc:
        cpmod.verify_checkpoint(cpmod.envelope(body, keys.active_kid, sig), keyset)
    assert exc.value.code == "bad_checkpoint"
    assert "signature does not verify" in exc.value.message
    genuine = sign_checkpoint(keys, _checkpoint_body(keys.active_kid))
    assert cpmod.verify_checkpoint(genuine, keyset).seq == 1
    # A real receipt's DSSE envelope relabelled as a checkpoint is refused, and the receipt signer will not
    # sign a checkpoint body at all.
    receipt_env = to_dsse(sign_receipt(keys, _receipt(keys.active_kid)))
    with pytest.raises(VerificationError) as exc:
        cpmod.verify_checkpoint({**receipt_env, "payloadType": cpmod.CHECKPOINT_PAYLOAD_TYPE}, keyset)
    assert exc.value.code == "bad_checkpoint"
    with pytest.raises(KeyturnError):
        sign_receipt(keys, _checkpoint_body(keys.active_kid))


def test_dev_key_checkpoint_refused_without_flag(tmp_path: Path) -> None:
    dev = SigningKeyset.generate(tmp_path / "dev-keys.json", dev=True, now=NOW)
    with AuditLog.open(tmp_path / "audit.jsonl") as log:
        log.append({"type": "receipt_issued", "n": 1})
        head = log.durable_head
    env = sign_checkpoint(
        dev,
        cpmod.unsigned_checkpoint(
            log=head.log,
            seq=head.seq,
            head=head.head,
            issued_at=NOW + timedelta(hours=1),
            key_id=dev.active_kid,
        ),
    )
    cp = write_json(tmp_path / "cp.json", env)
    keys = write_json(tmp_path / "keys.public.json", dev.public_keyset().to_jwks())
    args = ("--checkpoint", str(cp), "--keys", str(keys))
    assert "development key" in assert_rejected(audit_verify(tmp_path / "audit.jsonl", *args), "dev_key")
    out = audit_verify(tmp_path / "audit.jsonl", *args, "--allow-dev-keys")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("OK 1 entries")


# --- start-up: a torn tail is repaired, a broken chain is not --------------------------------------------


def start_signer_stderr(files: SignerFiles, log_dir: Path) -> Proc:
    """``keyturn signer`` with stderr alone in its log (stdout discarded), once its socket accepts."""
    err = log_dir / "signer.stderr"
    with err.open("wb") as f:
        popen = subprocess.Popen(
            [*KEYTURN, "signer"],
            env={**os.environ, **files.env(), "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.DEVNULL,
            stderr=f,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            start_new_session=True,
        )
    proc = Proc("signer", popen, err)
    ready = unix_socket_ready(files.socket)
    wait_until(lambda: not proc.alive() or ready(), 20, "the signer to listen")
    assert proc.alive(), proc.log()
    return proc


async def test_torn_tail_repaired_at_start_with_warning(signer_files: SignerFiles, log_dir: Path) -> None:
    first = start_signer(signer_files, log_dir, name="first")
    client = SignerClient(signer_files.socket)
    try:
        await sign_one(client)
        await sign_one(client)
    finally:
        await client.close()
        first.stop()
    complete = signer_files.audit.read_bytes()
    torn = b'{"prev":"' + hashlib.sha256(b"x").hexdigest().encode() + b'","record":{"evidence":{"appr'
    signer_files.audit.write_bytes(complete + torn)  # a write cut short: the disk filled up mid-line

    proc = start_signer_stderr(signer_files, log_dir)
    client = SignerClient(signer_files.socket)
    try:
        asides = list(signer_files.root.glob("audit.jsonl.torn-*"))
        assert len(asides) == 1
        assert asides[0].read_bytes() == torn
        assert oct(asides[0].stat().st_mode & 0o777) == oct(0o600)
        warning = [line for line in proc.log().splitlines() if "TORN TAIL" in line]
        assert len(warning) == 1, proc.log()
        assert " WARNING " in warning[0]
        assert f"{len(torn)} bytes after entry seq 2" in warning[0]
        assert str(asides[0]) in warning[0]
        assert signer_files.audit.read_bytes() == complete
        # The next receipt chains onto entry 2, and the checkpoint served covers it.
        receipt = await sign_one(client)
        lines = signer_files.audit.read_bytes().splitlines()
        assert verify_file(signer_files.audit) == 3
        assert json.loads(lines[2])["prev"] == line_hash(lines[1])
        assert json.loads(lines[2])["record"]["receipt"] == receipt
        health = await client.health()
        assert (health.audit_seq, health.audit_head) == (3, line_hash(lines[2]))
        env = await client.checkpoint()
        keyset = SigningKeyset.load(signer_files.keyset).public_keyset()
        verify_log(signer_files.audit.read_bytes(), [cpmod.verify_checkpoint(env, keyset)])
    finally:
        await client.close()
        assert proc.stop() == 0


def test_broken_chain_still_refuses_start(signer_files: SignerFiles) -> None:
    with AuditLog.open(signer_files.audit) as log:
        for i in range(3):
            log.append({"type": "receipt_issued", "n": i})
    lines = signer_files.audit.read_bytes().splitlines(keepends=True)
    tampered = lines[0] + lines[1].replace(b'"n":1', b'"n":7') + lines[2] + b'{"seq":4,"pr'
    signer_files.audit.write_bytes(tampered)  # an edit (not re-chained), and a torn tail to hide behind
    out = subprocess.run(
        [*KEYTURN, "signer"],
        env={**os.environ, **signer_files.env()},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2
    assert "refusing to start: audit_chain_broken: entry seq 3 (line 3)" in out.stderr
    assert signer_files.audit.read_bytes() == tampered  # nothing repaired, nothing moved
    assert not list(signer_files.root.glob("audit.jsonl.torn-*"))
    assert not signer_files.socket.exists()


def test_open_refuses_a_torn_tail_unless_asked_to_repair(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog.open(path) as log:
        log.append({"n": 1})
    path.write_bytes(path.read_bytes() + b'{"seq":2')
    with pytest.raises(AuditError) as exc:
        AuditLog.open(path)
    assert exc.value.code == "audit_torn_tail"
    assert_rejected(audit_verify(path), "audit_torn_tail")
    (tmp_path / f"audit.jsonl.torn-{int(NOW.timestamp())}").write_bytes(b"an earlier repair")
    with AuditLog.open(path, repair_torn_tail_at=NOW) as log:
        assert log.repaired is not None
        assert log.repaired.size == 8
        assert log.repaired.aside.name == f"audit.jsonl.torn-{int(NOW.timestamp())}-1"  # never overwritten
        assert (log.seq, log.durable_head.seq) == (1, 1)
        assert log.append({"n": 2}) == 2
    assert verify_file(path) == 2


# --- the property ---------------------------------------------------------------------------------------

RECORD = st.dictionaries(
    st.sampled_from(["a", "b", "c"]), st.integers(-5, 5) | st.text(max_size=4), max_size=3
)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), records=st.lists(RECORD, min_size=1, max_size=10))
def test_any_cut_or_rechained_edit_below_a_checkpoint_is_detected(
    keys: SigningKeyset, data: st.DataObject, records: list[dict[str, Any]]
) -> None:
    records = [{**r, "i": i} for i, r in enumerate(records)]  # distinct entries
    n = len(records)
    k = data.draw(st.integers(1, n), label="k")
    lines = rechain(records)
    env = sign_checkpoint(
        keys,
        cpmod.unsigned_checkpoint(
            log=line_hash(lines[0][:-1]),
            seq=k,
            head=line_hash(lines[k - 1][:-1]),
            issued_at=NOW,
            key_id=keys.active_kid,
        ),
    )
    anchor = cpmod.verify_checkpoint(env, keys.public_keyset())

    def check(new_records: list[dict[str, Any]]) -> str | None:
        try:
            verify_log(b"".join(rechain(new_records)), [anchor])
        except AuditError as e:
            return e.code
        return None

    # Cut below k (new, different entries may be chained on afterwards): caught.
    m = data.draw(st.integers(0, k - 1), label="cut to")
    extra = [{"forged": j} for j in range(data.draw(st.integers(0, 3), label="appended"))]
    assert check(records[:m] + extra) == (TRUNCATED if m + len(extra) < k else REWRITTEN)
    # Cut at any byte before the end of line k, even mid-line (a tail that then looks torn): caught.
    cut = data.draw(st.integers(0, len(b"".join(lines[:k])) - 1), label="byte cut")
    with pytest.raises(AuditError) as exc:
        verify_log(b"".join(lines)[:cut], [anchor])
    assert exc.value.code == TRUNCATED
    # Any entry at or below k changed, the chain recomputed after it: caught.
    i = data.draw(st.integers(0, k - 1), label="edited index")
    edited = [*records[:i], {**records[i], "i": -1}, *records[i + 1 :]]
    assert check(edited) == REWRITTEN
    # The log growing past k is what the checkpoint expects.
    more = [{"later": j} for j in range(data.draw(st.integers(0, 3), label="grown by"))]
    assert check(records + more) is None
    assert check(records) is None
