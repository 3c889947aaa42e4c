"""The signer as a real process: the wire protocol under abuse, every sign refusal, receipts that verify and
are in the audit log, and start-up refusals.

Evidence is signed with the test secrets at timestamps relative to the real clock; lifetime limits are
exercised by backdating the evidence (or, once, with the dev-mode fake clock), never by sleeping.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import os
import socket
import stat
import subprocess
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from keyturn.bot.signer_client import SignerClient, SignerRefused, SignerUnavailable
from keyturn.signer import wire
from keyturn.signer.audit import AuditLog, verify_file
from keyturn.signer.evidence import Secrets, ci_signature, slack_signature
from keyturn.signer.keys import SigningKeyset
from keyturn.signer.keyset import PublicKeyset
from keyturn.signer.policy import Policy
from keyturn.signer.receipt import Scope
from keyturn.signer.service import Signer as SignerService
from keyturn.signer.verify import verify_receipt
from tests.harness import KEYTURN, Proc, unix_socket_ready, wait_until
from tests.signer.conftest import (
    CI_SECRET,
    HEALTH,
    OTHER_SHA,
    SCOPE,
    SHA,
    SLACK_SECRET,
    RawConn,
    SignerFiles,
    ci_origin,
    ci_request_body,
    click,
    click_body,
    new_id,
    rid_of,
    slash_body,
    slash_origin,
    start_signer,
    true_card,
)

Signer = tuple[SignerFiles, Proc]


@pytest.fixture
async def client(running_signer: Signer) -> AsyncIterator[SignerClient]:
    c = SignerClient(running_signer[0].socket, timeout=5.0)
    yield c
    await c.close()


def now_s() -> int:
    return int(time.time())


def remove(path: Path) -> None:
    """Delete ``path`` if it exists (a socket file included)."""
    if os.path.lexists(path):
        os.unlink(path)


def audit_lines(files: SignerFiles) -> list[dict[str, Any]]:
    if not files.audit.exists():
        return []
    return [json.loads(line) for line in files.audit.read_bytes().splitlines()]


# --- raw frames -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"\x00garbage{", "bad_frame"),
        (b"", "bad_frame"),
        (b"\xff\xfe\xfd", "bad_frame"),
        (b'"just a string"', "bad_request"),
        (b'{"v":1,"id":"x","op":"health","extra":true}', "bad_request"),
        (b'{"v":1,"id":"x","op":"check_slack","body":7,"timestamp":"1","signature":"v0=0"}', "bad_request"),
        (
            b'{"v":1,"id":"x","op":"check_ci","method":"POST","path":"/","body":"%%%","timestamp":"1","signature":"s"}',
            "bad_request",
        ),
        (b'{"v":"1","id":"x","op":"health"}', "bad_request"),
        (b'{"v":2,"id":"x","op":"health"}', "unsupported_version"),
        (b'{"v":1,"id":"x","op":"self_destruct"}', "unknown_op"),
        (b'{"v":1,"id":"x","op":"sign","requestId":"r"}', "bad_request"),
        (b'{"v":1,"v":1,"id":"x","op":"health"}', "bad_frame"),
    ],
)
def test_bad_frames_get_an_error_and_the_connection_keeps_serving(
    running_signer: Signer, payload: bytes, code: str
) -> None:
    raw = RawConn(running_signer[0].socket)
    try:
        reply = raw.ask(payload)
        assert reply["ok"] is False
        assert reply["error"]["code"] == code
        assert reply["v"] == 1
        ok = raw.ask(HEALTH)
        assert ok["ok"] is True
        assert ok["id"] == "h"
    finally:
        raw.close()


def test_error_replies_echo_the_request_id(running_signer: Signer) -> None:
    raw = RawConn(running_signer[0].socket)
    try:
        assert raw.ask(b'{"v":9,"id":"abc","op":"health"}')["id"] == "abc"
    finally:
        raw.close()


def test_oversized_frame_is_refused_then_closed(running_signer: Signer) -> None:
    raw = RawConn(running_signer[0].socket)
    try:
        raw.sock.sendall((wire.MAX_FRAME + 1).to_bytes(4, "big") + b"{")
        reply = raw.recv()
        assert reply is not None
        assert reply["error"]["code"] == "frame_too_large"
        assert raw.recv() is None  # then the signer hangs up
    finally:
        raw.close()
    fresh = RawConn(running_signer[0].socket)
    try:
        assert fresh.ask(HEALTH)["ok"] is True
    finally:
        fresh.close()


def test_truncated_frames_and_dropped_connections_do_not_hurt(running_signer: Signer) -> None:
    for junk in (b"\x00\x00", b'\x00\x00\x00\x10{"v":1'):
        raw = RawConn(running_signer[0].socket)
        raw.sock.sendall(junk)
        raw.close()
    raw = RawConn(running_signer[0].socket)
    try:
        assert raw.ask(HEALTH)["ok"] is True
    finally:
        raw.close()
    assert running_signer[1].alive()


def test_pipelined_requests_are_answered_in_order(running_signer: Signer) -> None:
    raw = RawConn(running_signer[0].socket)
    try:
        for i in range(5):
            raw.send_frame(b'{"v":1,"id":"p%d","op":"health"}' % i)
        ids = [r["id"] for r in (raw.recv() for _ in range(5)) if r is not None]
        assert ids == [f"p{i}" for i in range(5)]
    finally:
        raw.close()


# --- simple ops -----------------------------------------------------------------------------------------


async def test_health_and_keys(running_signer: Signer, client: SignerClient) -> None:
    files = running_signer[0]
    keys = SigningKeyset.load(files.keyset)
    health = await client.health()
    assert health.key_id == keys.active_kid
    assert health.policy_sha256 == hashlib.sha256(files.policy.read_bytes()).hexdigest()
    jwks = await client.keys()
    assert [k["kid"] for k in jwks["keys"]] == [keys.active_kid]
    assert all("d" not in k for k in jwks["keys"])


async def test_check_ci(client: SignerClient) -> None:
    body, ts = ci_request_body(), str(now_s())
    sig = ci_signature(CI_SECRET, "POST", "/v1/requests", body, ts)
    await client.check_ci("POST", "/v1/requests", body, ts, sig)
    with pytest.raises(SignerRefused) as exc:
        await client.check_ci("POST", "/v1/requests", body + b" ", ts, sig)
    assert exc.value.code == "bad_ci_signature"
    old = str(now_s() - 400)
    with pytest.raises(SignerRefused) as exc:
        await client.check_ci(
            "POST", "/v1/requests", body, old, ci_signature(CI_SECRET, "POST", "/v1/requests", body, old)
        )
    assert exc.value.code == "stale_request"


async def test_check_slack(client: SignerClient) -> None:
    body, ts = slash_body("help"), str(now_s())
    await client.check_slack(body, ts, slack_signature(SLACK_SECRET, body, ts))
    for bad_ts, sig in ((ts, "v0=" + "0" * 64), ("abc", slack_signature(SLACK_SECRET, body, "abc"))):
        with pytest.raises(SignerRefused) as exc:
            await client.check_slack(body, bad_ts, sig)
        assert exc.value.code == "bad_slack_signature"


async def test_mac_callback_uses_the_derived_key(client: SignerClient) -> None:
    body, ts = b'{"requestId":"x","status":"APPROVED"}', str(now_s())
    sig = await client.mac_callback("/hooks/deploy", ts, body)
    assert sig.startswith("v1=")
    assert sig != ci_signature(CI_SECRET, "POST", "/hooks/deploy", body, ts)
    key = hmac.new(CI_SECRET.encode(), b"keyturn callback v1", hashlib.sha256).digest()
    expected = hmac.new(key, f"v1:{ts}:POST:/hooks/deploy:".encode() + body, hashlib.sha256).hexdigest()
    assert sig == "v1=" + expected


# --- sign -----------------------------------------------------------------------------------------------


async def sign(
    client: SignerClient,
    users: list[str],
    *,
    t0: int | None = None,
    rid: str | None = None,
    origin: wire.CiOrigin | wire.SlackCommandOrigin | None = None,
    clicks: list[wire.SlackClick] | None = None,
    emails: dict[str, str] | None = None,
) -> dict[str, Any]:
    t0 = now_s() - 60 if t0 is None else t0
    origin = origin or ci_origin(t0)
    rid = rid or rid_of(origin)
    if clicks is None:
        clicks = [click(t0 + 10 + i, click_body(origin, u)) for i, u in enumerate(users)]
    return await client.sign(rid, origin, clicks, emails or {})


async def test_valid_two_of_n_yields_a_verifiable_receipt_recorded_in_the_audit_log(
    running_signer: Signer, client: SignerClient
) -> None:
    files = running_signer[0]
    before = len(audit_lines(files))
    receipt = await sign(
        client, ["U0BOB", "U0CAROL"], emails={"U0BOB": "bob@example.com", "U0CAROL": "carol@example.com"}
    )
    keyset = PublicKeyset.from_jwks(await client.keys())
    verified = verify_receipt(json.dumps(receipt).encode(), keyset, SCOPE, datetime.now(UTC))
    assert verified.approver.id == "U0CAROL"
    assert verified.approver.email == "carol@example.com"
    assert [a.id for a in verified.approvals] == ["U0BOB", "U0CAROL"]
    assert receipt["requester"] == "github:alice"
    assert (verified.expires_at - verified.issued_at).total_seconds() == 15 * 60
    assert abs(verified.issued_at.timestamp() - time.time()) < 5  # the signer's clock
    lines = audit_lines(files)
    assert len(lines) == before + 1
    assert lines[-1]["record"]["receipt"] == receipt
    assert lines[-1]["record"]["type"] == "receipt_issued"
    assert verify_file(files.audit) == len(lines)


async def test_slash_command_origin_and_pinned_group_member(client: SignerClient) -> None:
    t0 = now_s() - 30
    origin = slash_origin(t0, slash_body(f"request acme/web {SHA} production deploy.yml", user="U0DAVE"))
    receipt = await sign(client, ["U0BOB", "U0ONCALL"], t0=t0, origin=origin)  # U0ONCALL: pinned
    assert receipt["requester"] == "slack:U0DAVE"
    assert receipt["approver"]["id"] == "U0ONCALL"


_FRAMES = itertools.count()


def _sign_frame(users: list[str], **extra: Any) -> bytes:
    """A complete, genuinely signed ``sign`` frame (CI origin, one approve click per user), plus ``extra``."""
    t0 = now_s() - 60
    origin = ci_origin(t0, ci_request_body(ref=f"refs/heads/frame-{next(_FRAMES)}"))  # a request of its own
    frame = wire.SignRequest(
        id="s1",
        requestId=rid_of(origin),
        origin=origin,
        approvals=[click(t0 + 10 + i, click_body(origin, u)) for i, u in enumerate(users)],
        emails={},
    ).model_dump(mode="json")
    return json.dumps({**frame, **extra}).encode()


def test_bot_claimed_group_membership_does_not_admit(running_signer: Signer) -> None:
    """A (compromised or old) bot vouches that mallory is in the on-call group. The frame carrying that claim
    is refused outright, naming the field; without it, her genuine click is refused as not_authorized,
    because the signer knows group members only from the [groups] pinned in its own policy."""
    files = running_signer[0]
    before = len(audit_lines(files))
    conn = RawConn(files.socket)
    try:
        claimed = conn.ask(_sign_frame(["U0BOB", "U0MALLORY"], groupMembers={"S0ONCALL": ["U0MALLORY"]}))
        assert claimed["ok"] is False
        assert claimed["error"]["code"] == "bad_request"
        assert "groupMembers" in claimed["error"]["message"]
        assert "pinned" in claimed["error"]["message"]
        plain = conn.ask(_sign_frame(["U0BOB", "U0MALLORY"]))
        assert plain["ok"] is False
        assert plain["error"]["code"] == "not_authorized"
        assert "U0MALLORY" in plain["error"]["message"]
        pinned = conn.ask(_sign_frame(["U0BOB", "U0ONCALL"]))  # the control: a pinned member is admitted
        assert pinned["ok"] is True, pinned
        assert conn.ask(HEALTH)["ok"] is True
    finally:
        conn.close()
    assert len(audit_lines(files)) == before + 1  # only the control's receipt


async def test_concurrent_signs_all_succeed_and_are_all_recorded(
    running_signer: Signer, client: SignerClient
) -> None:
    files = running_signer[0]
    before = len(audit_lines(files))
    t0 = now_s() - 60
    origins = [ci_origin(t0, ci_request_body(ref=f"refs/heads/concurrent-{i}")) for i in range(8)]
    receipts = await asyncio.gather(
        *(sign(client, ["U0BOB", "U0CAROL"], t0=t0, origin=origin) for origin in origins)
    )
    assert len({r["requestId"] for r in receipts}) == 8
    recorded = {line["record"]["receipt"]["requestId"] for line in audit_lines(files)[before:]}
    assert recorded == {r["requestId"] for r in receipts}


def refusal_cases() -> list[tuple[str, str, dict[str, Any]]]:
    """(name, expected code, how to build the evidence relative to t0)."""
    return [
        ("forged CI evidence", "bad_ci_signature", {"origin_secret": "not-the-ci-secret-00000000"}),
        ("request lifetime over", "request_expired", {"t0_ago": 31 * 60}),
        ("click after the lifetime", "evidence_outside_lifetime", {"click_offsets": [10, 30 * 60 + 5]}),
        ("click before the request", "evidence_outside_lifetime", {"click_offsets": [-5, 10]}),
        ("forged click", "bad_click_signature", {"click_secret": "not-the-slack-secret-0000"}),
        ("click naming another request", "wrong_request", {"click_rid": "other"}),
        ("self-approval", "self_approval", {"users": ["U0BOB", "U0ALICE"]}),
        ("unauthorized user", "not_authorized", {"users": ["U0BOB", "U0MALLORY"]}),
        ("under quorum", "insufficient_approvals", {"users": ["U0BOB"]}),
        ("same user twice", "insufficient_approvals", {"users": ["U0BOB", "U0BOB"]}),
        ("lying card", "card_mismatch", {"card_sha": OTHER_SHA}),
        ("unknown environment", "unknown_environment", {"environment": "moon"}),
    ]


@pytest.mark.parametrize(("name", "code", "how"), refusal_cases(), ids=[c[0] for c in refusal_cases()])
async def test_sign_refusals_record_nothing_and_the_signer_keeps_serving(
    running_signer: Signer, client: SignerClient, name: str, code: str, how: dict[str, Any]
) -> None:
    files = running_signer[0]
    before = len(audit_lines(files))
    t0 = now_s() - how.get("t0_ago", 60)
    scope = Scope("acme/web", SHA, how.get("environment", "production"), "deploy.yml")
    body = ci_request_body(scope)
    sig = ci_signature(how.get("origin_secret", CI_SECRET), "POST", "/v1/requests", body, str(t0))
    origin = wire.CiOrigin(method="POST", path="/v1/requests", body=body, timestamp=str(t0), signature=sig)
    rid = rid_of(origin)
    users = how.get("users", ["U0BOB", "U0CAROL"])
    offsets = how.get("click_offsets", [10 + i for i in range(len(users))])
    # Another request of the same scope but another commit: its true card, and clicks on it.
    other = ci_origin(t0 + 1, ci_request_body(Scope("acme/web", OTHER_SHA, scope.environment, "deploy.yml")))
    blocks = true_card(other) if how.get("card_sha") else None
    if "environment" in how:
        blocks = []  # no card can be rendered for an environment the policy does not know
    clicked = other if how.get("click_rid") else origin
    clicks = [
        click(
            t0 + off,
            click_body(clicked, u, blocks=blocks, value=rid_of(clicked)),
            secret=how.get("click_secret", SLACK_SECRET),
        )
        for u, off in zip(users, offsets, strict=True)
    ]
    with pytest.raises(SignerRefused) as exc:
        await sign(client, users, rid=rid, origin=origin, clicks=clicks)
    assert exc.value.code == code, exc.value.message
    assert len(audit_lines(files)) == before  # no receipt, no record
    assert (await client.health()).key_id


async def test_malformed_evidence_is_refused_client_side_and_server_side(client: SignerClient) -> None:
    with pytest.raises(SignerRefused) as exc:
        await client.sign(new_id(), {"kind": "ci", "method": "POST"}, [], {})
    assert exc.value.code == "bad_request"
    with pytest.raises(SignerRefused) as exc:
        await client.sign("req_nope", ci_origin(now_s()), [], {})
    assert exc.value.code == "bad_request"


# --- start-up and the socket ----------------------------------------------------------------------------


def run_signer_once(files: SignerFiles, **env: str) -> subprocess.CompletedProcess[str]:
    """Start a signer expected to refuse; return its exit status and output."""
    return subprocess.run(
        [*KEYTURN, "signer"],
        env={**os.environ, **files.env(**env)},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_refuses_to_start_on_a_group_readable_key_file(signer_files: SignerFiles) -> None:
    signer_files.keyset.chmod(0o640)
    out = run_signer_once(signer_files)
    assert out.returncode == 2
    assert "key_file" in out.stderr
    assert "chmod 600" in out.stderr
    assert not signer_files.socket.exists()


def test_refuses_to_start_on_an_invalid_policy(signer_files: SignerFiles) -> None:
    signer_files.policy.write_text(
        signer_files.policy.read_text().replace("required_approvals = 2", "required_approvals = 0")
    )
    out = run_signer_once(signer_files)
    assert out.returncode == 2
    assert "environments.production.required_approvals: must be >= 1" in out.stderr


def test_refuses_to_start_without_secrets_and_never_echoes_them(signer_files: SignerFiles) -> None:
    out = run_signer_once(signer_files, KEYTURN_CI_SECRET="", KEYTURN_SLACK_SIGNING_SECRET="short-secret")
    assert out.returncode == 2
    assert "KEYTURN_CI_SECRET" in out.stderr
    assert "KEYTURN_SLACK_SIGNING_SECRET" in out.stderr
    assert "short-secret" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_refuses_to_replace_a_file_that_is_not_a_socket(signer_files: SignerFiles) -> None:
    signer_files.socket.write_text("precious")
    out = run_signer_once(signer_files)
    assert out.returncode == 2
    # The one line the operator sees names the code and the path (the words module's sentence).
    assert f"refusing to start: config: {signer_files.socket} exists and is not a socket" in out.stderr
    assert signer_files.socket.read_text() == "precious"


def test_socket_is_0600_a_stale_socket_is_replaced_and_a_live_one_is_not(
    signer_files: SignerFiles, log_dir: Path
) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(signer_files.socket))
    stale.close()  # leaves a socket file nobody listens on
    proc = start_signer(signer_files, log_dir)
    try:
        assert stat.S_IMODE(signer_files.socket.stat().st_mode) == 0o600
        wait_until(lambda: "signer ready on" in proc.log(), 10, "the ready line")
        assert f"signer ready on {signer_files.socket} key " in proc.log()
        second = run_signer_once(signer_files, KEYTURN_AUDIT_LOG=str(signer_files.root / "other.jsonl"))
        assert second.returncode == 2
        assert "another process is listening" in second.stderr
        assert unix_socket_ready(signer_files.socket)()
    finally:
        assert proc.stop() == 0
    assert not signer_files.socket.exists()  # removed on a clean shutdown


async def test_fake_clock_is_honoured_only_in_dev_mode(signer_files: SignerFiles, log_dir: Path) -> None:
    now_file = signer_files.root / "now"
    t0 = now_s() - 60
    now_file.write_text(str(t0 + 120))
    env = {"KEYTURN_SIGNER_FAKE_NOW_FILE": str(now_file)}
    proc = start_signer(signer_files, log_dir, name="dev-signer", KEYTURN_DEV_MODE="1", **env)
    client = SignerClient(signer_files.socket)
    try:
        receipt = await sign(client, ["U0BOB", "U0CAROL"], t0=t0)
        assert receipt["issuedAt"] == datetime.fromtimestamp(t0 + 120, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        now_file.write_text(str(t0 + 30 * 60))  # the request's lifetime is over by the signer's clock
        with pytest.raises(SignerRefused) as exc:
            await sign(client, ["U0BOB", "U0CAROL"], t0=t0)
        assert exc.value.code == "request_expired"
        now_file.write_text("garbage")
        with pytest.raises(SignerRefused) as exc:
            await sign(client, ["U0BOB", "U0CAROL"], t0=t0)
        assert exc.value.code == "clock_unavailable"
    finally:
        await client.close()
        proc.stop()
    # Without dev mode the same variable is ignored: the real clock signs.
    prod = start_signer(signer_files, log_dir, name="prod-signer", **env)
    client = SignerClient(signer_files.socket)
    try:
        # Another request (the first one has its receipt already, and keeps it).
        origin = ci_origin(now_s() - 60, ci_request_body(ref="refs/heads/real-clock"))
        receipt = await sign(client, ["U0BOB", "U0CAROL"], origin=origin)
        assert (
            abs(datetime.strptime(receipt["issuedAt"], "%Y-%m-%dT%H:%M:%S%z").timestamp() - time.time()) < 5
        )
    finally:
        await client.close()
        prod.stop()


async def test_client_reports_an_absent_signer_and_recovers_after_a_restart(
    signer_files: SignerFiles, log_dir: Path
) -> None:
    client = SignerClient(signer_files.socket, timeout=2.0)
    try:
        with pytest.raises(SignerUnavailable) as exc:
            await client.health()
        assert exc.value.code == "signer_unavailable"
        first = start_signer(signer_files, log_dir, name="first")
        await client.health()  # leaves a pooled connection
        first.stop()
        second = start_signer(signer_files, log_dir, name="second")
        try:
            assert (await client.health()).key_id  # the stale pooled connection is replaced transparently
        finally:
            second.stop()
    finally:
        await client.close()


async def test_client_times_out_on_a_signer_that_never_answers() -> None:
    path = Path(f"/tmp/kt-mute-{os.getpid()}.sock")
    remove(path)
    accepted: list[asyncio.StreamWriter] = []

    async def mute(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        accepted.append(w)

    server = await asyncio.start_unix_server(mute, path=str(path))
    client = SignerClient(path, timeout=0.3)
    try:
        with pytest.raises(SignerUnavailable, match=r"within 0\.3 s"):
            await client.health()
    finally:
        await client.close()
        for w in accepted:
            w.close()
        server.close()
        await server.wait_closed()
        remove(path)


def test_socket_group_makes_it_0660_and_an_unknown_group_is_refused(
    signer_files: SignerFiles, log_dir: Path
) -> None:
    gid = os.getgid()
    proc = start_signer(signer_files, log_dir, KEYTURN_SIGNER_SOCKET_GROUP=str(gid))
    try:
        st = signer_files.socket.stat()
        assert stat.S_IMODE(st.st_mode) == 0o660
        assert st.st_gid == gid
    finally:
        proc.stop()
    out = run_signer_once(signer_files, KEYTURN_SIGNER_SOCKET_GROUP="no-such-group-keyturn")
    assert out.returncode == 2
    assert "no-such-group-keyturn" in out.stderr


class _Misbehaving(SignerService):
    """A signer whose handler hangs or crashes, to test how the service answers."""

    mode: str = "hang"

    async def handle(self, request: wire.Request) -> dict[str, Any]:
        if self.mode == "hang":
            await asyncio.Event().wait()
        raise RuntimeError("secret-looking detail that must not reach the reply")


@pytest.mark.parametrize(("mode", "code"), [("hang", "timeout"), ("crash", "internal_error")])
async def test_hung_or_crashing_requests_get_error_replies(
    signer_files: SignerFiles, mode: str, code: str
) -> None:
    audit = AuditLog.open(signer_files.root / "unit-audit.jsonl")
    try:
        svc = _Misbehaving(
            keys=SigningKeyset.load(signer_files.keyset),
            policy=Policy.from_bytes(signer_files.policy.read_bytes()),
            secrets=Secrets(SLACK_SECRET, CI_SECRET),
            audit=audit,
            timeout=0.05,
        )
        svc.mode = mode
        reply = await svc.reply_to(HEALTH)
    finally:
        audit.close()
    assert isinstance(reply, wire.ErrorReply)
    assert reply.error.code == code
    assert reply.id == "h"
    assert "secret-looking" not in reply.error.message


async def test_one_receipt_per_request_even_when_asked_again_and_after_a_restart(
    signer_files: SignerFiles, log_dir: Path
) -> None:
    """A bot that died after the signer recorded a receipt, but before storing it, asks again (its backstop
    does). The answer is the receipt already issued — concurrently, sequentially and after a restart of the
    signer — and the audit log holds one entry for the request: nothing duplicated on the record."""
    proc = start_signer(signer_files, log_dir)
    try:
        client = SignerClient(signer_files.socket, timeout=5.0)
        t0 = now_s() - 60
        origin = ci_origin(t0)
        rid = rid_of(origin)
        clicks = [click(t0 + 10 + i, click_body(origin, u)) for i, u in enumerate(["U0BOB", "U0CAROL"])]
        first, second = await asyncio.gather(
            client.sign(rid, origin, clicks, {}), client.sign(rid, origin, clicks, {})
        )
        third = await client.sign(rid, origin, clicks, {})
        await client.close()
    finally:
        proc.stop()
    assert first == second == third
    proc = start_signer(signer_files, log_dir, name="signer-again")
    try:
        client = SignerClient(signer_files.socket, timeout=5.0)
        after_restart = await client.sign(rid, origin, clicks, {})
        await client.close()
    finally:
        proc.stop()
    assert after_restart == first
    lines = audit_lines(signer_files)
    assert sum(line["record"]["receipt"]["requestId"] == rid for line in lines) == 1
    assert verify_file(signer_files.audit) == len(lines)
