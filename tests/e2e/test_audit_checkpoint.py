"""The audit log's signed checkpoint, published by the real bot and archived as an operator would."""

from __future__ import annotations

import subprocess
from pathlib import Path

from keyturn.signer import checkpoint as cpmod
from keyturn.signer.audit import verify_file
from keyturn.signer.keyset import PublicKeyset
from tests.e2e.conftest import Stack
from tests.harness import KEYTURN, ROOT


def keyturn(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KEYTURN, *args], capture_output=True, text=True, timeout=60, check=False, cwd=ROOT
    )


def test_checkpoint_served_by_bot(stack: Stack, tmp_path: Path) -> None:
    keyset = PublicKeyset.from_jwks(stack.keys_file.read_bytes())
    resp = stack.http.get(f"{stack.bot_url}/v1/audit/checkpoint")  # no authentication, like /v1/keys
    assert resp.status_code == 200
    assert resp.headers["cache-control"] == "no-store"
    before = cpmod.verify_checkpoint(resp.content, keyset)

    # One approved deploy: the checkpoint served moves on to cover its audit entry.
    req = stack.card(stack.create(environment="staging")["requestId"])
    stack.click("U0BOB", req)
    stack.wait_status(req["requestId"], "APPROVED")
    log = stack.workdir / "audit.jsonl"
    after = cpmod.verify_checkpoint(stack.http.get(f"{stack.bot_url}/v1/audit/checkpoint").content, keyset)
    assert after.seq == before.seq + 1 == verify_file(log)

    # The operator's routine: archive it with `keyturn audit checkpoint`, check the log against the archive.
    archive = tmp_path / "archive"
    archive.mkdir()
    keys = str(stack.keys_file)
    saved = keyturn(
        "audit", "checkpoint", "--url", stack.bot_url, "--keys", keys, "--out", str(archive / "1.json")
    )
    assert saved.returncode == 0, saved.stderr
    assert saved.stdout.startswith(f"OK checkpoint seq {after.seq} head {after.head} ")
    again = keyturn(
        "audit", "checkpoint", "--url", stack.bot_url, "--keys", keys, "--out", str(archive / "1.json")
    )
    assert again.returncode == 1  # an archived checkpoint is never overwritten
    assert again.stderr.startswith("REJECTED unwritable: ")
    checked = keyturn("audit", "verify", str(log), "--checkpoint", str(archive), "--keys", keys)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith(
        f"OK {after.seq} entries, head {after.head}; matches 1 signed checkpoint(s)"
    )
