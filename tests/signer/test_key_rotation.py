"""Key rotation without a failed deploy (issue 15, docs/keys.md): the ``next`` key's lifecycle in the key file
and the public keyset, what each status verifies, and the running signer switching keys without a restart
while sign requests are in flight.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from keyturn.bot.signer_client import SignerClient
from keyturn.signer.errors import KeyFileError, KeysetError, VerificationError
from keyturn.signer.keys import SigningKeyset, sign_receipt
from keyturn.signer.keyset import PublicKeyset
from keyturn.signer.receipt import (
    STATUS_APPROVED,
    ApprovalEntry,
    ApproverRef,
    new_request_id,
    unsigned_receipt,
)
from keyturn.signer.service import _reload_refusal
from keyturn.signer.verify import verify_receipt
from tests.harness import KEYTURN, Proc, wait_until
from tests.signer.conftest import (
    SCOPE,
    SignerFiles,
    ci_origin,
    ci_request_body,
    click,
    click_body,
    make_files,
    rid_of,
)
from tests.signer.conftest import start_signer as start_signer_process

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def _statuses(keys: SigningKeyset) -> dict[str, str]:
    return {k.kid: k.status for k in keys.public_keyset()}


def _receipt(keys: SigningKeyset, issued_at: datetime) -> bytes:
    """A receipt for SCOPE signed by the active key of ``keys``, issued at ``issued_at``."""
    unsigned = unsigned_receipt(
        request_id=new_request_id(),
        status=STATUS_APPROVED,
        issued_at=issued_at,
        expires_at=issued_at + timedelta(minutes=15),
        scope=SCOPE,
        approver=ApproverRef("U0BOB", ""),
        approvals=[ApprovalEntry("U0BOB", "", issued_at)],
        requester="github:alice",
        key_id=keys.active_kid,
    )
    return json.dumps(sign_receipt(keys, unsigned)).encode()


def _verify(data: bytes, keyset: PublicKeyset, at: datetime) -> str:
    """The key id of a receipt that verifies, at ``at`` (raises ``VerificationError`` otherwise)."""
    return verify_receipt(data, keyset, SCOPE, at).key_id


# --- the key file ------------------------------------------------------------------------------------------


def test_add_next_publishes_a_second_key_that_does_not_sign_yet(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    first = SigningKeyset.generate(path, now=T0)
    staged = SigningKeyset.add_next(path, T0 + timedelta(days=1))
    assert staged.active_kid == first.active_kid  # still signing with the old key
    assert staged.next_kid is not None
    assert _statuses(staged) == {first.active_kid: "active", staged.next_kid: "next"}
    doc = json.loads(path.read_text())
    assert all("d" in k for k in doc["keys"])  # the next key's private part waits in the file
    jwks = staged.public_keyset().to_jwks()
    assert all("d" not in k for k in jwks["keys"])
    assert PublicKeyset.from_jwks(json.dumps(jwks).encode()).to_jwks() == jwks
    with pytest.raises(KeyFileError, match="already staged"):
        SigningKeyset.add_next(path, T0 + timedelta(days=2))
    with pytest.raises(KeyFileError, match="activate-next"):
        SigningKeyset.rotate(path, T0 + timedelta(days=2))


def test_activate_next_retires_the_active_key_after_the_grace(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    first = SigningKeyset.generate(path, now=T0)
    with pytest.raises(KeyFileError, match="add-next"):
        SigningKeyset.activate_next(path, T0)
    staged = SigningKeyset.add_next(path, T0 + timedelta(days=1))
    at = T0 + timedelta(days=8)
    done = SigningKeyset.activate_next(path, at, timedelta(seconds=60))
    assert done.active_kid == staged.next_kid
    assert done.next_kid is None
    old = done.public_keyset().get(first.active_kid)
    assert old is not None
    assert old.status == "rotated"
    assert old.rotated_at == at + timedelta(seconds=60)
    new = done.public_keyset().get(done.active_kid)
    assert new is not None
    assert new.created_at == T0 + timedelta(days=1)  # its life began when it was published
    doc = {k["kid"]: k for k in json.loads(path.read_text())["keys"]}
    assert "d" not in doc[first.active_kid]  # the retired private key is gone from the file
    assert "d" in doc[done.active_kid]
    with pytest.raises(KeyFileError, match="grace"):
        SigningKeyset.activate_next(path, at, timedelta(hours=2))


def test_a_next_key_can_be_revoked_before_it_signs(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    SigningKeyset.generate(path, now=T0)
    staged = SigningKeyset.add_next(path, T0 + timedelta(days=1))
    assert staged.next_kid is not None
    revoked = SigningKeyset.revoke(path, staged.next_kid, T0 + timedelta(days=2))
    assert revoked.next_kid is None
    assert _statuses(revoked)[staged.next_kid] == "revoked"
    assert "d" not in json.loads(path.read_text())["keys"][1]
    SigningKeyset.add_next(path, T0 + timedelta(days=3))  # and a fresh one staged in its place


@pytest.mark.parametrize(
    ("statuses", "fragment"),
    [(["active", "next", "next"], "at most one next"), (["active", "next-without-d"], "next key lacks")],
)
def test_key_file_refusals_for_next_keys(tmp_path: Path, statuses: list[str], fragment: str) -> None:
    path = tmp_path / "keys.json"
    SigningKeyset.generate(path, now=T0)
    doc = json.loads(path.read_text())
    for status in statuses[1:]:
        other = tmp_path / f"o{len(doc['keys'])}.json"
        SigningKeyset.generate(other, now=T0)
        entry = json.loads(other.read_text())["keys"][0]
        entry["status"] = "next"
        if status == "next-without-d":
            del entry["d"]
        doc["keys"].append(entry)
    path.write_text(json.dumps(doc))
    with pytest.raises(KeyFileError, match=fragment):
        SigningKeyset.load(path)


def test_public_next_key_with_rotation_times_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    SigningKeyset.generate(path, now=T0)
    jwks = SigningKeyset.add_next(path, T0).public_keyset().to_jwks()
    jwks["keys"][1]["rotatedAt"] = "2026-04-01T00:00:00Z"
    with pytest.raises(KeysetError, match="status next"):
        PublicKeyset.from_jwks(jwks)


# --- what verifies -----------------------------------------------------------------------------------------


def test_every_receipt_verifies_under_the_pre_published_and_the_post_rotation_keyset(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    old_keys = SigningKeyset.generate(path, now=T0)
    staged = SigningKeyset.add_next(path, T0 + timedelta(days=1))
    pinned = staged.public_keyset()  # what CI pinned before the switch: active + next

    before = _receipt(old_keys, T0 + timedelta(days=2))
    switch = T0 + timedelta(days=7)
    new_keys = SigningKeyset.activate_next(path, switch, timedelta(seconds=60))
    after_export = new_keys.public_keyset()
    in_grace = _receipt(staged, switch + timedelta(seconds=30))  # the old key, a request in flight
    by_new = _receipt(new_keys, switch + timedelta(seconds=1))

    for keyset in (pinned, after_export):
        assert _verify(before, keyset, T0 + timedelta(days=2, minutes=1)) == old_keys.active_kid
        assert _verify(in_grace, keyset, switch + timedelta(minutes=1)) == old_keys.active_kid
        assert _verify(by_new, keyset, switch + timedelta(minutes=1)) == new_keys.active_kid

    # After the grace the retired key is refused by the new keyset (the pinned one cannot know yet).
    late = _receipt(staged, switch + timedelta(seconds=61))
    with pytest.raises(VerificationError) as exc:
        _verify(late, after_export, switch + timedelta(minutes=2))
    assert exc.value.code == "key_not_valid_at_issue"

    # A next key does not vouch for receipts dated before it existed.
    early = _receipt(new_keys, T0 + timedelta(hours=1))
    with pytest.raises(VerificationError) as exc:
        _verify(early, pinned, T0 + timedelta(hours=1, minutes=1))
    assert exc.value.code == "key_not_valid_at_issue"

    # Revocation: the old key's receipts stop verifying at once under the keyset that says so.
    revoked = SigningKeyset.revoke(path, old_keys.active_kid, switch + timedelta(days=1)).public_keyset()
    with pytest.raises(VerificationError) as exc:
        _verify(before, revoked, T0 + timedelta(days=2, minutes=1))
    assert exc.value.code == "revoked_key"


def test_a_reload_only_moves_the_key_file_forward(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    original = SigningKeyset.generate(path, now=T0)
    staged = SigningKeyset.add_next(path, T0 + timedelta(hours=1))
    switched = SigningKeyset.activate_next(path, T0 + timedelta(hours=2))
    assert _reload_refusal(original, staged) is None
    assert _reload_refusal(staged, switched) is None
    refusal = _reload_refusal(switched, staged)  # a restored backup would re-activate the retired key
    assert refusal is not None
    assert "go back" in refusal
    unrelated = SigningKeyset.generate(tmp_path / "other.json", now=T0)
    refusal = _reload_refusal(switched, unrelated)
    assert refusal is not None
    assert "restart" in refusal


# --- the running signer ------------------------------------------------------------------------------------


@pytest.fixture
def signer_env(tmp_path: Path) -> Iterator[tuple[SignerFiles, Proc]]:
    files = make_files(keyset_now=datetime.now(UTC) - timedelta(days=1))
    proc = start_signer_process(files, tmp_path / "logs")
    yield files, proc
    proc.stop()


def _keys_cli(files: SignerFiles, *args: str) -> str:
    done = subprocess.run(
        [*KEYTURN, "keys", "--key-file", str(files.keyset), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


async def _sign_one(client: SignerClient, i: int) -> dict[str, Any]:
    t0 = int(time.time()) - 40
    # A request of its own each time (the signer gives a request one receipt, ever).
    origin = ci_origin(t0, ci_request_body(ref=f"refs/heads/load-{i}-{time.monotonic_ns()}"))
    clicks = [click(t0 + 10 + j, click_body(origin, u)) for j, u in enumerate(["U0BOB", "U0CAROL"])]
    return await client.sign(rid_of(origin), origin, clicks, {})


@pytest.mark.slow
async def test_rotation_under_load_never_fails_a_verifier_pinned_to_the_published_keyset(
    signer_env: tuple[SignerFiles, Proc],
) -> None:
    files, proc = signer_env
    client = SignerClient(files.socket, timeout=10.0)
    try:
        first_kid = (await client.health()).key_id
        _keys_cli(files, "add-next")
        pinned = PublicKeyset.from_jwks(await client.keys())  # the signer publishes the next key at once
        assert {k.status for k in pinned} == {"active", "next"}
        assert PublicKeyset.from_jwks(_keys_cli(files, "export").encode()).to_jwks() == pinned.to_jwks()

        receipts: list[dict[str, Any]] = []
        stop = asyncio.Event()
        counter = iter(range(10_000))

        async def worker() -> None:
            while not stop.is_set():
                receipts.append(await _sign_one(client, next(counter)))

        workers = [asyncio.create_task(worker()) for _ in range(4)]
        await asyncio.sleep(0.5)
        await asyncio.to_thread(_keys_cli, files, "activate-next")  # no restart, no signal
        await asyncio.sleep(0.5)
        os.kill(proc.popen.pid, signal.SIGHUP)  # a redundant SIGHUP changes nothing
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.gather(*workers)  # any refusal raises here and fails the test

        second_kid = (await client.health()).key_id
        assert second_kid != first_kid
        kids = [r["signature"]["keyId"] for r in receipts]
        assert first_kid in kids
        assert second_kid in kids
        assert kids.index(second_kid) > kids.index(first_kid)
        assert kids[-1] == second_kid

        rotated = PublicKeyset.from_jwks(await client.keys())
        now = datetime.now(UTC)
        for r in receipts:
            data = json.dumps(r).encode()
            assert _verify(data, pinned, now) == r["signature"]["keyId"]
            assert _verify(data, rotated, now) == r["signature"]["keyId"]

        # A broken key file is refused on SIGHUP: the signer keeps its keys and says so loudly.
        good = files.keyset.read_bytes()
        broken = files.keyset.with_name("broken.json")
        broken.write_text('{"keys": []}')
        os.chmod(broken, 0o600)
        os.replace(broken, files.keyset)
        os.kill(proc.popen.pid, signal.SIGHUP)
        wait_until(lambda: "KEY FILE RELOAD FAILED" in proc.log(), 10, "the reload failure in the log")
        assert (await _sign_one(client, 9_999))["signature"]["keyId"] == second_kid
        fixed = files.keyset.with_name("fixed.json")
        fixed.write_bytes(good)
        os.chmod(fixed, 0o600)
        os.replace(fixed, files.keyset)

        # Revocation is published by the running signer as soon as the file says so.
        _keys_cli(files, "revoke", "--", first_kid)  # a kid may start with "-"
        after = PublicKeyset.from_jwks(await client.keys())
        revoked = after.get(first_kid)
        assert revoked is not None
        assert revoked.status == "revoked"
        assert proc.alive()
    finally:
        await client.close()
