"""The complete record (issue 15): denials, cancels and expiries reach the real signer's audit log, checked.

Each outcome is recorded from evidence the bot cannot forge (Slack's signature on the deny submission, the
CI MAC on the cancel call) or from the signer's own clock (expiry); one final outcome per request, ever, and
never both a receipt and a refusal. Lifetimes are exercised by backdating the evidence, never by sleeping.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from keyturn.bot.signer_client import SignerClient, SignerRefused
from keyturn.emulator.echo import echo_view
from keyturn.signer import card, wire
from keyturn.signer.audit import verify_file
from keyturn.signer.evidence import ci_signature, slack_signature
from tests.harness import KEYTURN, Proc
from tests.signer.conftest import (
    CI_SECRET,
    SCOPE,
    SLACK_SECRET,
    TEAM,
    SignerFiles,
    ci_origin,
    ci_request_body,
    click,
    click_body,
    rid_of,
    start_signer,
)

Signer = tuple[SignerFiles, Proc]


@pytest.fixture
async def client(running_signer: Signer) -> AsyncIterator[SignerClient]:
    c = SignerClient(running_signer[0].socket, timeout=5.0)
    yield c
    await c.close()


_RUN = iter(range(10**6))


def fresh_origin(t0: int) -> wire.CiOrigin:
    """A CI request of its own (a distinct ref), signed at ``t0``."""
    return ci_origin(t0, ci_request_body(ref=f"refs/heads/outcome-{next(_RUN)}"))


def deny_body(rid: str, user: str = "U0BOB", reason: str = "tests are red", team: str = TEAM) -> str:
    """The deny modal's submission as Slack sends it (form field ``payload``)."""
    payload = {
        "type": "view_submission",
        "team": {"id": team},
        "user": {"id": user},
        "view": {
            **echo_view(card.render_deny_view(rid, SCOPE)),  # the form the trust core renders, as echoed
            "id": "V0DENY",
            "state": {
                "values": {
                    card.REASON_BLOCK: {card.REASON_ACTION: {"type": "plain_text_input", "value": reason}}
                }
            },
        },
    }
    return urlencode({"payload": json.dumps(payload)})


def signed(body: str, ts: int, secret: str = SLACK_SECRET) -> wire.SlackClick:
    return wire.SlackClick(body=body, timestamp=str(ts), signature=slack_signature(secret, body, str(ts)))


def cancel_call(rid: str, ts: int, secret: str = CI_SECRET) -> wire.CiOrigin:
    path = f"/v1/requests/{rid}/cancel"
    sig = ci_signature(secret, "POST", path, b"", str(ts))
    return wire.CiOrigin(method="POST", path=path, body=b"", timestamp=str(ts), signature=sig)


def show(*args: str) -> subprocess.CompletedProcess[str]:
    """``keyturn audit show ARGS`` as an operator runs it."""
    return subprocess.run(
        [*KEYTURN, "audit", "show", *args], capture_output=True, text=True, timeout=60, check=False
    )


def records(files: SignerFiles) -> list[dict[str, Any]]:
    return [json.loads(line)["record"] for line in files.audit.read_bytes().splitlines()]


async def test_denial_is_recorded_with_who_and_why_from_the_signed_submission(
    running_signer: Signer, client: SignerClient
) -> None:
    files = running_signer[0]
    t0 = int(time.time()) - 60
    origin = fresh_origin(t0)
    rid = rid_of(origin)
    seq = await client.record_outcome(
        rid, "denied", origin, denial=signed(deny_body(rid, "U0BOB", "  tests are red "), t0 + 20)
    )
    rec = records(files)[seq - 1]
    assert rec["type"] == "outcome_recorded"
    assert (rec["outcome"], rec["requestId"], rec["by"], rec["reason"]) == (
        "denied",
        rid,
        "slack:U0BOB",
        "tests are red",
    )
    assert rec["scope"]["environment"] == "production"
    assert rec["requester"] == "github:alice"
    assert rec["decidedAt"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0 + 20))
    assert rec["evidence"]["decision"]["kind"] == "slack_deny_submission"
    # Idempotent: the bot's retry gets the same entry; another outcome for the request gets it too.
    assert await client.record_outcome(rid, "denied", origin, denial=signed(deny_body(rid), t0 + 30)) == seq
    # Never both: no receipt for a request denied on the record.
    clicks = [click(t0 + 10 + i, click_body(origin, u)) for i, u in enumerate(["U0BOB", "U0CAROL"])]
    with pytest.raises(SignerRefused) as exc:
        await client.sign(rid, origin, clicks, {})
    assert exc.value.code == "request_closed"
    assert verify_file(files.audit) == len(records(files))


@pytest.mark.parametrize(
    ("make", "code"),
    [
        # A compromised bot cannot forge who denied: it lacks Slack's signing secret.
        (
            lambda rid, t0: signed(deny_body(rid), t0 + 5, secret="not-the-slack-secret"),
            "bad_denial_signature",
        ),
        # Nor reuse a genuine submission of someone who may not decide this environment...
        (lambda rid, t0: signed(deny_body(rid, user="U0MALLORY"), t0 + 5), "not_authorized"),
        # ...nor one denying another request.
        (lambda rid, t0: signed(deny_body("req_01ARZ3NDEKTSV4RRFFQ69G5FAV"), t0 + 5), "wrong_request"),
        (lambda rid, t0: signed(deny_body(rid, team="T0OTHER"), t0 + 5), "wrong_team"),
        (lambda rid, t0: signed(deny_body(rid, reason="   "), t0 + 5), "bad_denial"),
        (lambda rid, t0: signed(deny_body(rid), t0 - 3600), "evidence_outside_lifetime"),
        (lambda rid, t0: None, "bad_denial"),
    ],
)
async def test_forged_or_foreign_denials_are_not_recorded(
    running_signer: Signer, client: SignerClient, make: Any, code: str
) -> None:
    files = running_signer[0]
    before = len(records(files))
    t0 = int(time.time()) - 60
    origin = fresh_origin(t0)
    rid = rid_of(origin)
    with pytest.raises(SignerRefused) as exc:
        await client.record_outcome(rid, "denied", origin, denial=make(rid, t0))
    assert exc.value.code == code
    assert len(records(files)) == before


async def test_cancel_needs_the_pipelines_mac_on_this_requests_cancel_path(
    running_signer: Signer, client: SignerClient
) -> None:
    files = running_signer[0]
    t0 = int(time.time()) - 60
    origin = fresh_origin(t0)
    rid = rid_of(origin)
    for bad, code in (
        (cancel_call(rid, t0 + 5, secret="wrong-ci-secret"), "bad_ci_signature"),
        (cancel_call("req_01ARZ3NDEKTSV4RRFFQ69G5FAV", t0 + 5), "bad_cancel"),
    ):
        with pytest.raises(SignerRefused) as exc:
            await client.record_outcome(rid, "cancelled", origin, cancel=bad)
        assert exc.value.code == code
    seq = await client.record_outcome(rid, "cancelled", origin, cancel=cancel_call(rid, t0 + 5))
    rec = records(files)[seq - 1]
    assert (rec["outcome"], rec["by"], rec["reason"]) == ("cancelled", "ci_secret", None)
    assert rec["evidence"]["decision"]["path"] == f"/v1/requests/{rid}/cancel"


async def test_expiry_is_dated_by_the_signers_clock_against_the_origins_lifetime(
    running_signer: Signer, client: SignerClient
) -> None:
    files = running_signer[0]
    live = fresh_origin(int(time.time()) - 60)  # production: request_ttl 30m
    with pytest.raises(SignerRefused) as exc:
        await client.record_outcome(rid_of(live), "expired", live)
    assert exc.value.code == "not_expired"
    t0 = int(time.time()) - 31 * 60
    old = fresh_origin(t0)
    seq = await client.record_outcome(rid_of(old), "expired", old)
    rec = records(files)[seq - 1]
    assert (rec["outcome"], rec["by"]) == ("expired", None)
    assert rec["decidedAt"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0 + 30 * 60))
    assert rec["recordedAt"] >= rec["decidedAt"]
    # The origin is checked: a bot cannot record an expiry for a request nobody made.
    forged = ci_origin(t0, ci_request_body(ref="refs/heads/forged"), secret="wrong-ci-secret")
    with pytest.raises(SignerRefused) as exc:
        await client.record_outcome(rid_of(forged), "expired", forged)
    assert exc.value.code == "bad_ci_signature"


async def test_no_refusal_recorded_over_a_receipt(running_signer: Signer, client: SignerClient) -> None:
    t0 = int(time.time()) - 60
    origin = fresh_origin(t0)
    rid = rid_of(origin)
    clicks = [click(t0 + 10 + i, click_body(origin, u)) for i, u in enumerate(["U0BOB", "U0CAROL"])]
    await client.sign(rid, origin, clicks, {})
    with pytest.raises(SignerRefused) as exc:
        await client.record_outcome(rid, "cancelled", origin, cancel=cancel_call(rid, t0 + 30))
    assert exc.value.code == "already_approved"


async def test_audit_show_answers_who_authorized_or_refused_what_when(
    running_signer: Signer, client: SignerClient
) -> None:
    files = running_signer[0]
    t0 = int(time.time()) - 60
    origin = fresh_origin(t0)
    rid = rid_of(origin)
    await client.record_outcome(
        rid, "denied", origin, denial=signed(deny_body(rid, "U0CAROL", "not today"), t0 + 9)
    )
    shown = await asyncio.to_thread(show, str(files.audit))
    assert shown.returncode == 0, shown.stderr
    line = next(row for row in shown.stdout.splitlines() if rid in row)
    for part in ("DENIED", "slack:U0CAROL", "not today", "acme/web"):
        assert part in line
    as_json = await asyncio.to_thread(show, "--json", "--request", rid, str(files.audit))
    assert as_json.returncode == 0, as_json.stderr
    rows = [json.loads(r) for r in as_json.stdout.splitlines()]
    assert [r["outcome"] for r in rows] == ["denied"]


async def test_one_outcome_per_request_also_after_a_restart(signer_files: SignerFiles, log_dir: Path) -> None:
    """The signer reads the outcomes on record at start: after a restart, a repeated record gets the same
    entry and a receipt is still refused."""
    t0 = int(time.time()) - 60
    origin = fresh_origin(t0)
    rid = rid_of(origin)
    proc = start_signer(signer_files, log_dir)
    try:
        client = SignerClient(signer_files.socket, timeout=5.0)
        seq = await client.record_outcome(rid, "cancelled", origin, cancel=cancel_call(rid, t0 + 5))
        await client.close()
    finally:
        proc.stop()
    proc = start_signer(signer_files, log_dir, name="signer-again")
    try:
        client = SignerClient(signer_files.socket, timeout=5.0)
        again = await client.record_outcome(rid, "cancelled", origin, cancel=cancel_call(rid, t0 + 9))
        clicks = [click(t0 + 10 + i, click_body(origin, u)) for i, u in enumerate(["U0BOB", "U0CAROL"])]
        with pytest.raises(SignerRefused) as exc:
            await client.sign(rid, origin, clicks, {})
        await client.close()
    finally:
        proc.stop()
    assert again == seq
    assert exc.value.code == "request_closed"
    assert sum(r.get("requestId") == rid for r in records(signer_files)) == 1
