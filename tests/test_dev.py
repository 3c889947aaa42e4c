"""`make demo` works: `keyturn dev` brings up the whole stack, and its printed recipe gets a verified receipt.

This is the README's five-minute tour, run by a machine: start `keyturn dev`, paste the `keyturn request`
command it prints, approve as two people in the emulator, and get exit 0 with a receipt that verifies only
with `--allow-dev-keys`; the same with the OIDC recipe, whose token comes from the OIDC issuer emulator and
whose receipt passes `--require-oidc`. Ctrl-C (SIGINT) stops everything and removes the temp directory.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from keyturn.emulator.client import EmulatorClient
from tests.harness import KEYTURN, Proc, start_process, wait_until

FAST_POLICY = """
version = 1
[slack]
command = "/keyturn"
[environments.staging]
channel = "C0STAGING"
approvers = ["U0BOB", "U0CAROL"]
required_approvals = 1
request_ttl = "9s"
receipt_ttl = "5m"
remind_every = "2s"
escalate_after = 1
escalate_to = ["U0DAVE"]
"""


@pytest.fixture
def dev_args() -> list[str]:
    """Extra `keyturn dev` arguments (overridden by tests that need another policy)."""
    return []


@pytest.fixture
def dev(log_dir: Path, request: pytest.FixtureRequest, dev_args: list[str]) -> Iterator[tuple[Proc, str]]:
    """A running `keyturn dev` (on free ports) and its banner text."""
    ports = ["--emulator-port", "0", "--bot-port", "0", "--oidc-port", "0"]
    proc = start_process(
        "dev",
        [*KEYTURN, "dev", *ports, *_resolve(dev_args, log_dir)],
        log_dir,
        env={"KEYTURN_REDIS_URL": "", "NO_COLOR": "1"},
        ready=lambda: "Ctrl-C stops everything" in (log_dir / "dev.log").read_text(errors="replace"),
        ready_timeout=60,
    )
    try:
        yield proc, proc.log()
    finally:
        proc.stop(signal.SIGINT)
        if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
            print(proc.log())


def _resolve(args: list[str], workdir: Path) -> list[str]:
    """Replace the placeholder policy name ``FAST`` with a file holding ``FAST_POLICY``."""
    if "FAST" not in args:
        return args
    policy = workdir / "fast.toml"
    policy.write_text(FAST_POLICY)
    return [str(policy) if a == "FAST" else a for a in args]


def _field(banner: str, pattern: str) -> str:
    match = re.search(pattern, banner, re.S)
    assert match, f"banner lacks {pattern!r}:\n{banner}"
    return match.group(1)


def test_demo_recipe_yields_a_verified_dev_receipt(dev: tuple[Proc, str], tmp_path: Path) -> None:
    proc, banner = dev
    emulator_url = _field(banner, r"Slack emulator\s+(http://\S+)")
    keys = _field(banner, r"Public keyset\s+(\S+)")
    command = _field(banner, r"(KEYTURN_CI_SECRET=.*?--out receipt\.json)")
    command = command.replace("\\\n", " ").replace(".venv/bin/keyturn", " ".join(KEYTURN))
    secret = _field(command, r"KEYTURN_CI_SECRET=(\S+)")
    argv = command.split()[1:]
    argv[argv.index("receipt.json")] = str(tmp_path / "receipt.json")
    sha = argv[argv.index("--sha") + 1]

    waiting = subprocess.Popen(
        argv, env={"KEYTURN_CI_SECRET": secret, "PATH": "/usr/bin:/bin"}, stderr=subprocess.PIPE, text=True
    )
    try:
        with EmulatorClient(emulator_url) as slack:
            post = slack.wait_for("chat.postMessage", timeout=20)
            channel, ts = post["response"]["channel"], post["response"]["ts"]
            card = slack.message(channel, ts)
            assert sha in json.dumps(card["blocks"])
            # The tour's step 4: a non-approver's click changes nothing and says why, to her alone.
            assert slack.click("U0MALLORY", channel, ts, "approve").status == 200
            slack.wait_for("chat.postEphemeral", timeout=10, user="U0MALLORY")
            [refusal] = slack.ephemerals("U0MALLORY")
            assert "not an approver for production" in json.dumps(refusal)
            for approver in ("U0BOB", "U0CAROL"):
                assert slack.click(approver, channel, ts, "approve").status == 200
        _, stderr = waiting.communicate(timeout=60)
    finally:
        if waiting.poll() is None:
            waiting.kill()
    assert waiting.returncode == 0, stderr
    receipt = tmp_path / "receipt.json"
    verify = [*KEYTURN, "verify", str(receipt), "--keys", keys, "--repo", "acme/web", "--sha", sha]
    verify += ["--env", "production", "--workflow", "deploy.yml"]
    ok = subprocess.run([*verify, "--allow-dev-keys"], capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("OK req_")
    refused = subprocess.run(verify, capture_output=True, text=True, check=False)
    assert refused.returncode == 1
    assert "dev_key" in refused.stderr

    workdir = _field(banner, r"(/tmp/keyturn-dev-[^/\s]+)/")
    proc.stop(signal.SIGINT)
    wait_until(lambda: not Path(workdir).exists(), 10, "the dev temp dir to be removed")
    assert proc.popen.returncode == 0
    assert sys.executable  # the same interpreter ran every child


def test_demo_oidc_recipe_yields_a_receipt_that_requires_oidc(dev: tuple[Proc, str], tmp_path: Path) -> None:
    """The banner's second recipe: a GitHub-style job proves itself with a token from the OIDC emulator."""
    _, banner = dev
    emulator_url = _field(banner, r"Slack emulator\s+(http://\S+)")
    command = _field(banner, r"(ACTIONS_ID_TOKEN_REQUEST_URL=.*?--out receipt-oidc\.json)")
    words = command.replace("\\\n", " ").replace(".venv/bin/keyturn", " ".join(KEYTURN)).split()
    env = dict(w.split("=", 1) for w in words[:2])
    assert set(env) == {"ACTIONS_ID_TOKEN_REQUEST_URL", "ACTIONS_ID_TOKEN_REQUEST_TOKEN"}
    argv = words[2:]
    assert "--oidc" in argv
    assert "--requester" not in argv  # everything comes from the token
    receipt = tmp_path / "receipt-oidc.json"
    argv[argv.index("receipt-oidc.json")] = str(receipt)

    # No KEYTURN_CI_SECRET anywhere: the token is the only credential.
    waiting = subprocess.Popen(argv, env={**env, "PATH": "/usr/bin:/bin"}, stderr=subprocess.PIPE, text=True)
    try:
        with EmulatorClient(emulator_url) as slack:
            post = slack.wait_for("chat.postMessage", timeout=20)
            channel, ts = post["response"]["channel"], post["response"]["ts"]
            shown = json.dumps(slack.message(channel, ts)["blocks"])
            assert "From the job's OIDC token" in shown
            for approver in ("U0BOB", "U0CAROL"):
                assert slack.click(approver, channel, ts, "approve").status == 200
        _, stderr = waiting.communicate(timeout=60)
    finally:
        if waiting.poll() is None:
            waiting.kill()
    assert waiting.returncode == 0, stderr
    assert json.loads(receipt.read_text())["requesterProof"]["issuer"] == "https://oidc.keyturn.test/github"

    verify = _field(banner, r"(\.venv/bin/keyturn verify receipt-oidc\.json.*?deploy\.yml)\n")
    argv = verify.replace("\\\n", " ").replace(".venv/bin/keyturn", " ".join(KEYTURN)).split()
    argv[argv.index("receipt-oidc.json")] = str(receipt)
    assert "--require-oidc" in argv
    ok = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("OK req_")


@pytest.mark.parametrize("dev_args", [["--policy", "FAST"]])
def test_demo_shows_reminders_escalation_and_expiry(dev: tuple[Proc, str], dev_args: list[str]) -> None:
    _, banner = dev
    emulator_url = _field(banner, r"Slack emulator\s+(http://\S+)")
    sha = "0123456789abcdef0123456789abcdef01234567"
    with EmulatorClient(emulator_url) as slack:
        answer = slack.command("U0ALICE", "C0STAGING", "/keyturn", f"request acme/web {sha} staging")
        assert answer.status == 200
        card = slack.wait_for("chat.postMessage", timeout=10, channel="C0STAGING")
        ts = card["response"]["ts"]

        reminder = slack.wait_for("chat.postMessage", timeout=10, thread_ts=ts)
        text = json.dumps(reminder["params"])
        assert "<@U0BOB>" in text
        assert "<@U0CAROL>" in text
        assert "<@U0ALICE>" not in text  # the requester is not asked to approve her own deploy

        dm = slack.wait_for("conversations.open", timeout=10)
        assert "U0DAVE" in json.dumps(dm["params"])

        since = 0
        while True:  # each card update is awaited; the request expires at 9 s
            update = slack.wait_for("chat.update", timeout=15, since=since, ts=ts)
            since = update["seq"]
            if "Expired" in json.dumps(update["params"]):
                break
        message = slack.message("C0STAGING", ts)
        assert "Expired" in json.dumps(message)
        assert '"approve"' not in json.dumps(message["blocks"])  # the buttons are gone


def test_demo_shows_a_github_run_released_by_clicks(dev: tuple[Proc, str]) -> None:
    """The banner's GitHub recipe: a run waits on the protection rule until bob and carol approve."""
    import httpx

    _, banner = dev
    emulator_url = _field(banner, r"Slack emulator\s+(http://\S+)")
    runs_url = _field(banner, r"curl -s -X POST (http://\S+/_github/runs) ")
    make = json.loads(_field(banner, r"_github/runs -H 'content-type: application/json' \\\s+-d '(\{.*?\})'"))
    deliver_url = _field(banner, r"curl -s -X POST (http://\S+/_github/deliver) ")
    deliver = json.loads(
        _field(banner, r"_github/deliver -H 'content-type: application/json' \\\s+-d '(\{.*?\})'")
    )
    with httpx.Client(timeout=30) as http, EmulatorClient(emulator_url) as slack:
        assert http.post(runs_url, json=make).status_code == 200
        answer = http.post(deliver_url, json=deliver).json()
        assert answer["status"] == 202, answer
        post = slack.wait_for("chat.postMessage", timeout=20)
        channel, ts = post["response"]["channel"], post["response"]["ts"]
        run_url = f"{runs_url}/{make['run_id']}"
        assert http.get(run_url).json()["status"] == "waiting"
        assert slack.click("U0BOB", channel, ts, "approve").status == 200
        assert http.get(run_url).json()["status"] == "waiting"  # one approval of two releases nothing
        assert slack.click("U0CAROL", channel, ts, "approve").status == 200
        wait_until(lambda: http.get(run_url).json()["status"] == "approved", 30, "the run")
        reviews = http.get(run_url).json()["reviews"]
        # Released once, by the receipt of the request the webhook opened.
        assert [r["state"] for r in reviews] == [None, "approved"]
        assert f"Keyturn receipt `{answer['body']['requestId']}` verified" in reviews[1]["comment"]
