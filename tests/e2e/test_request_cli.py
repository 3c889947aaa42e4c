"""``keyturn request --wait`` end to end: every exit code, against the real stack."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import CI_SECRET, SHA, Stack
from tests.harness import KEYTURN, free_port, new_card_request_id


def _request(stack: Stack, *extra: str, env: str = "production") -> list[str]:
    return [
        *KEYTURN, "request", "--url", stack.bot_url, "--repo", "acme/web", "--sha", SHA, "--env", env,
        "--workflow", "deploy.yml", "--requester", "github:alice", *extra,
    ]  # fmt: skip


def _start(argv: list[str], secret: str | None = CI_SECRET) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "KEYTURN_CI_SECRET"}
    if secret is not None:
        env["KEYTURN_CI_SECRET"] = secret
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _pending_card(stack: Stack, since: int) -> dict[str, object]:
    """The request the running client created, once its card is posted after call ``since``."""
    return stack.card(new_card_request_id(stack.emulator, since))


def test_wait_approved_writes_a_verified_receipt(stack: Stack, tmp_path: Path) -> None:
    out = tmp_path / "receipt.json"
    since = len(stack.emulator.calls())
    proc = _start(
        _request(stack, "--wait", "--timeout", "60", "--keys", str(stack.keys_file), "--out", str(out))
    )
    req = _pending_card(stack, since)
    stack.click("U0BOB", req)
    stack.click("U0CAROL", req)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "waiting for approval 0/2" in stderr
    assert "OK req_" in stderr
    assert json.loads(out.read_text())["status"] == "APPROVED"


def test_wait_denied_exits_1(stack: Stack) -> None:
    since = len(stack.emulator.calls())
    proc = _start(_request(stack, "--wait", "--timeout", "60", "--keys", str(stack.keys_file)))
    req = _pending_card(stack, since)
    from keyturn.bot.cards import REASON_ACTION, REASON_BLOCK

    since = len(stack.emulator.calls())
    stack.click("U0BOB", req, action="deny")
    view = stack.emulator.wait_for("views.open", since=since)["response"]["view"]
    stack.emulator.submit_view("U0BOB", view["id"], {REASON_BLOCK: {REASON_ACTION: "freeze week"}})
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "DENIED" in stderr
    assert "freeze week" in stderr


def test_wait_expired_exits_1(stack: Stack) -> None:
    proc = _start(
        _request(stack, "--wait", "--timeout", "60", "--keys", str(stack.keys_file), env="shortlived")
    )
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1, stderr
    assert "EXPIRED" in stderr


def test_wait_timeout_exits_3(stack: Stack) -> None:
    started = time.monotonic()
    proc = _start(_request(stack, "--wait", "--timeout", "2", "--keys", str(stack.keys_file)))
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 3, stderr
    assert "timed out" in stderr
    assert time.monotonic() - started < 30


@pytest.mark.parametrize(
    ("extra", "secret", "code"),
    [
        (["--wait"], CI_SECRET, 2),  # no trusted keyset: fail closed before asking
        ([], None, 2),  # no secret
        ([], "wrong-secret", 2),  # refused signature
        (["--env", "moon"], CI_SECRET, 2),  # unknown environment
        ([], CI_SECRET, 1),  # submitted, but no receipt: never 0
    ],
    ids=["wait-without-keys", "no-secret", "bad-secret", "unknown-env", "no-wait"],
)
def test_usage_and_refusal_exit_codes(stack: Stack, extra: list[str], secret: str | None, code: int) -> None:
    argv = _request(stack, *extra)
    proc = _start(argv, secret)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr


def test_unreachable_bot_exits_3(stack: Stack) -> None:
    argv = _request(stack)
    argv[argv.index("--url") + 1] = f"http://127.0.0.1:{free_port()}"
    proc = _start(argv)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 3, stderr


def test_two_identical_runs_in_one_second_share_the_request(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two runs with the same arguments in the same second sign identical bytes: the bot accepts the first
    and answers the second 409 ``replayed_request`` naming the request, which the second then continues with
    (as a retried pipeline gets the pending request back)."""
    import types

    from keyturn.bot import client

    frozen = float(int(time.time()))
    clock = types.SimpleNamespace(time=lambda: frozen, monotonic=time.monotonic, sleep=time.sleep)
    monkeypatch.setattr(client, "time", clock)
    monkeypatch.setenv("KEYTURN_CI_SECRET", CI_SECRET)
    argv = _request(stack)[len(KEYTURN) + 1 :]
    assert client.main(argv) == 1  # submitted, not approved yet (no --wait)
    first = capsys.readouterr().out.strip()
    assert client.main(argv) == 1
    second = capsys.readouterr().out.strip()
    assert first.startswith("req_")
    assert second == first
    metrics = stack.http.get(stack.bot_url + "/metrics").text
    assert 'keyturn_refusals_total{code="replayed_request"}' in metrics
