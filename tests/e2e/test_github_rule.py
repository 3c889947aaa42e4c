"""Keyturn as a GitHub deployment protection rule, with real processes: the e2e stack (signer, bot, Slack
emulator), ``keyturn github-emulator`` and ``keyturn github-approver``.

The ``through_the_bot`` tests are the whole flow: GitHub's webhook to the bot, checked by the approver and the
signer, a card, clicks, a receipt, and the bot's hand-off to the approver, which approves or rejects the run.
The others drive the approver directly (as the bot does) to reach its refusals one by one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from keyturn.bot.cards import REASON_ACTION, REASON_BLOCK
from keyturn.signer.github_app import app_jwt
from tests import harness
from tests.conftest import failed
from tests.e2e.conftest import GITHUB_WEBHOOK_SECRET, SHA, Stack
from tests.harness import KEYTURN, Proc, free_port

APP_ID = "424242"
WEBHOOK_SECRET = GITHUB_WEBHOOK_SECRET
WORKFLOW = ".github/workflows/deploy.yml"
OTHER_SHA = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class GitHubRig:
    """The GitHub emulator and the approver, with an HTTP client for both."""

    github_url: str
    approver_url: str
    procs: dict[str, Proc]
    http: httpx.Client
    approver_argv: list[str]
    logs: Path

    def restart_approver(self) -> None:
        """Stop the approver and start it again with the same state file."""
        self.procs["approver"].stop()
        self.procs["approver"] = harness.start_process(
            "github-approver",
            self.approver_argv,
            self.logs,
            ready=harness.http_ok(f"{self.approver_url}/healthz"),
        )

    def new_run(self, **spec: Any) -> dict[str, Any]:
        body = {"repo": "acme/web", "sha": SHA, "environment": "production", "workflow": WORKFLOW, **spec}
        resp = self.http.post(f"{self.github_url}/_github/runs", json=body)
        assert resp.status_code == 200, resp.text
        data: dict[str, Any] = resp.json()
        return data

    def deliver(self, run_id: int, **spec: Any) -> dict[str, Any]:
        """GitHub sends the run's webhook: to the approver (as the bot forwards it), or to ``url``."""
        body = {"run_id": run_id, "url": f"{self.approver_url}/webhook", **spec}
        resp = self.http.post(f"{self.github_url}/_github/deliver", json=body)
        assert resp.status_code == 200, resp.text
        data: dict[str, Any] = resp.json()
        return data

    def run(self, run_id: int) -> dict[str, Any]:
        data: dict[str, Any] = self.http.get(f"{self.github_url}/_github/runs/{run_id}").json()
        return data

    def calls(self) -> list[dict[str, Any]]:
        calls: list[dict[str, Any]] = self.http.get(f"{self.github_url}/_github/calls").json()["calls"]
        return calls

    def reviews_posted(self, run_id: int) -> list[dict[str, Any]]:
        path = f"/repos/acme/web/actions/runs/{run_id}/deployment_protection_rule"
        return [c for c in self.calls() if c["path"] == path and c["method"] == "POST"]

    def faults(self, **values: Any) -> None:
        assert self.http.post(f"{self.github_url}/_github/faults", json=values).status_code == 200

    def approve(self, run_id: int, receipt: bytes, environment: str = "production") -> httpx.Response:
        return self.http.post(f"{self.approver_url}/runs/{run_id}/{environment}/approve", content=receipt)

    def reject(
        self, run_id: int, reason: str, request_id: str | None = None, environment: str = "production"
    ) -> httpx.Response:
        body = {"reason": reason, "request_id": request_id}
        return self.http.post(f"{self.approver_url}/runs/{run_id}/{environment}/reject", json=body)


def _app_key(workdir: Path) -> tuple[Path, Path]:
    """A fresh App key: the private half for the approver (mode 0600), the public half for the emulator."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = workdir / "app.private-key.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    os.chmod(private, 0o600)
    public = workdir / "app.public-key.pem"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


@pytest.fixture(scope="module")
def github_rig(e2e_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitHubRig]:
    workdir = tmp_path_factory.mktemp("github")
    logs = workdir / "logs"
    private, public = _app_key(workdir)
    secret_file = workdir / "webhook-secret"
    secret_file.write_text(WEBHOOK_SECRET)
    gh_port, ap_port = free_port(), e2e_stack.approver_port
    gh_url, ap_url = f"http://127.0.0.1:{gh_port}", f"http://127.0.0.1:{ap_port}"
    procs: dict[str, Proc] = {}
    try:
        procs["github"] = harness.start_process(
            "github-emulator",
            [
                *KEYTURN,
                "github-emulator",
                *("--port", str(gh_port), "--app-id", APP_ID, "--app-public-key", str(public)),
                *("--webhook-secret-file", str(secret_file)),
            ],
            logs,
            ready=harness.http_ok(f"{gh_url}/healthz"),
        )
        approver_argv = [
            *KEYTURN,
            "github-approver",
            *("--port", str(ap_port), "--api-url", gh_url, "--app-id", APP_ID),
            *("--app-key", str(private), "--webhook-secret-file", str(secret_file)),
            *("--keys", str(e2e_stack.keys_file), "--policy", str(e2e_stack.workdir / "keyturn.toml")),
            *("--request-link", "https://keyturn.example/requests/{request_id}"),
            *("--attempts", "3", "--backoff", "0.05", "--timeout", "1"),
            *("--state-file", str(workdir / "approver-state.json")),
        ]
        procs["approver"] = harness.start_process(
            "github-approver", approver_argv, logs, ready=harness.http_ok(f"{ap_url}/healthz")
        )
    except Exception:
        for p in procs.values():
            p.stop()
        raise
    with httpx.Client(timeout=30) as http:
        yield GitHubRig(gh_url, ap_url, procs, http, approver_argv, logs)
    for p in reversed(list(procs.values())):
        p.stop()


@pytest.fixture
def gh(github_rig: GitHubRig, stack: Stack, request: pytest.FixtureRequest) -> Iterator[GitHubRig]:
    """The rig with the GitHub emulator reset (the approver keeps its de-duplication memory, as in life)."""
    github_rig.http.post(f"{github_rig.github_url}/_github/reset")
    yield github_rig
    if failed(request):
        print("\n".join(f"===== {n} =====\n{p.log()[-20000:]}" for n, p in github_rig.procs.items()))
    dead = [name for name, p in github_rig.procs.items() if not p.alive()]
    assert not dead, f"processes died during the test: {dead}"


def _receipt_for(stack: Stack, environment: str = "production", sha: str = SHA) -> tuple[str, bytes]:
    """A real receipt from the stack's signer: a CI request for the scope, approved by quorum."""
    created = stack.create(environment=environment, sha=sha, workflow=WORKFLOW)
    req = stack.card(created["requestId"])
    approvers = ["U0BOB", "U0CAROL"] if environment == "production" else ["U0BOB"]
    for user in approvers:
        stack.click(user, req)
    stack.wait_status(req["requestId"], "APPROVED")
    receipt = stack.get(f"/v1/requests/{req['requestId']}/receipt")
    assert receipt.status_code == 200, receipt.text
    return req["requestId"], receipt.content


def _waiting_run(gh: GitHubRig, **spec: Any) -> tuple[int, dict[str, Any]]:
    run = gh.new_run(**spec)
    answer = gh.deliver(run["run_id"])
    assert answer["status"] == 200, answer
    return run["run_id"], answer["body"]


def test_a_run_is_approved_exactly_once_after_quorum_with_a_comment_linking_the_request(
    gh: GitHubRig, stack: Stack
) -> None:
    run_id, checked = _waiting_run(gh)
    # The scope comes from GitHub (the webhook, then the API's run and deployment): with the workflow path.
    assert checked["scope"] == {
        "repo": "acme/web",
        "sha": SHA,
        "environment": "production",
        "workflow": WORKFLOW,
    }

    created = stack.create(**{"environment": "production", "workflow": WORKFLOW})
    req = stack.card(created["requestId"])
    stack.click("U0BOB", req)
    stack.wait_version(req["requestId"], req["version"])
    assert stack.get(f"/v1/requests/{req['requestId']}/receipt").status_code != 200  # no quorum, no receipt
    assert gh.approve(run_id, b"").status_code == 403  # and nothing to approve with
    stack.click("U0CAROL", req)
    stack.wait_status(req["requestId"], "APPROVED")
    receipt = stack.get(f"/v1/requests/{req['requestId']}/receipt").content

    ok = gh.approve(run_id, receipt)
    assert ok.status_code == 200, ok.text
    again = gh.approve(run_id, receipt)
    assert (again.status_code, again.json()["error"]) == (409, "already_decided")

    run = gh.run(run_id)
    assert run["status"] == "approved"
    assert len(run["reviews"]) == 1
    assert len(gh.reviews_posted(run_id)) == 1
    review = run["reviews"][0]
    assert (review["state"], review["environment_name"]) == ("approved", "production")
    rid = req["requestId"]
    assert f"(https://keyturn.example/requests/{rid})" in review["comment"]
    assert len(review["comment"]) <= 1024


def test_one_request_approves_one_run_and_status_comments_do_not_decide(gh: GitHubRig, stack: Stack) -> None:
    first, _ = _waiting_run(gh)
    second, _ = _waiting_run(gh)  # the same commit and environment again (a re-run, a second dispatch)
    status = gh.http.post(
        f"{gh.approver_url}/runs/{first}/production/status", json={"text": "waiting for *2* approvals"}
    )
    assert status.status_code == 200, status.text
    assert gh.run(first)["reviews"] == [
        {"state": None, "comment": "Keyturn: waiting for \\*2\\* approvals", "environment_name": "production"}
    ]
    assert gh.run(first)["status"] == "waiting"
    _, receipt = _receipt_for(stack)
    assert gh.approve(first, receipt).status_code == 200
    spent = gh.approve(second, receipt)
    assert (spent.status_code, spent.json()["error"]) == (409, "receipt_spent")
    assert gh.run(second)["status"] == "waiting"
    # A re-run of the approved run is a new deployment: it waits again and needs a request of its own.
    assert gh.http.post(f"{gh.github_url}/_github/runs/{first}/rerun").status_code == 200
    assert gh.deliver(first)["status"] == 200
    rerun = gh.approve(first, receipt)
    assert (rerun.status_code, rerun.json()["error"]) == (409, "receipt_spent")


def test_a_restarted_approver_remembers_deliveries_waiting_runs_and_spent_requests(
    gh: GitHubRig, stack: Stack
) -> None:
    first = gh.new_run()
    delivered = gh.deliver(first["run_id"])
    second, _ = _waiting_run(gh)
    _, receipt = _receipt_for(stack)
    assert gh.approve(second, receipt).status_code == 200
    gh.restart_approver()
    replayed = gh.deliver(first["run_id"], delivery=delivered["delivery"])
    assert (replayed["status"], replayed["body"]["error"]) == (409, "replayed_delivery")
    assert gh.approve(first["run_id"], receipt).json()["error"] == "receipt_spent"  # the run still waits
    _, fresh = _receipt_for(stack)
    assert gh.approve(first["run_id"], fresh).status_code == 200
    assert [r["state"] for r in gh.run(first["run_id"])["reviews"]] == ["approved"]


def test_deny_rejects_the_run_with_the_reason(gh: GitHubRig, stack: Stack) -> None:
    run_id, _ = _waiting_run(gh)
    req = stack.card(stack.create(workflow=WORKFLOW)["requestId"])
    since = len(stack.emulator.calls())
    stack.click("U0BOB", req, action="deny")
    view_id = stack.emulator.wait_for("views.open", since=since)["response"]["view"]["id"]
    stack.emulator.submit_view("U0BOB", view_id, {REASON_BLOCK: {REASON_ACTION: "tests are *red*"}})
    denied = stack.wait_status(req["requestId"], "DENIED")

    resp = gh.reject(run_id, f"denied by {denied['decidedBy']}: {denied['denyReason']}", req["requestId"])
    assert resp.status_code == 200, resp.text
    run = gh.run(run_id)
    assert run["status"] == "rejected"
    assert "denied by U0BOB: tests are \\*red\\*" in run["reviews"][0]["comment"]
    # Once rejected, not even a valid receipt approves it.
    _, receipt = _receipt_for(stack)
    assert gh.approve(run_id, receipt).json()["error"] == "already_decided"
    assert [r["state"] for r in gh.run(run_id)["reviews"]] == ["rejected"]


def test_expiry_rejects_the_run(gh: GitHubRig, stack: Stack) -> None:
    run_id, _ = _waiting_run(gh, environment="shortlived")
    req = stack.card(stack.create(environment="shortlived", workflow=WORKFLOW)["requestId"])
    stack.wait_status(req["requestId"], "EXPIRED", timeout=30)
    expired = gh.reject(run_id, "the request expired without a decision", req["requestId"], "shortlived")
    assert expired.status_code == 200
    assert gh.run(run_id)["status"] == "rejected"
    assert "expired" in gh.run(run_id)["reviews"][0]["comment"]


@pytest.mark.parametrize(
    ("spec", "status", "code"),
    [
        ({"signature": "bad"}, 401, "bad_signature"),
        ({"signature": "missing"}, 401, "missing_signature"),
        ({"event": "push"}, 400, "unsupported_event"),
        ({"raw": '{"action": "requested", "environment": "production"}'}, 400, "malformed_payload"),
        ({"raw": "not json"}, 400, "malformed_payload"),
    ],
)
def test_refused_webhooks_leave_no_waiting_run(
    gh: GitHubRig, spec: dict[str, Any], status: int, code: str
) -> None:
    run = gh.new_run()
    answer = gh.deliver(run["run_id"], **spec)
    assert (answer["status"], answer["body"]["error"]) == (status, code), answer
    assert answer["body"]["message"]
    assert gh.http.get(f"{gh.approver_url}/runs/{run['run_id']}/production").status_code == 404
    assert gh.calls() == []  # refused before any API call


def _through_the_bot(gh: GitHubRig, stack: Stack, **spec: Any) -> tuple[int, dict[str, Any]]:
    """GitHub delivers a new run's webhook to the bot; the run id and the request's card."""
    run = gh.new_run(**spec)
    answer = gh.deliver(run["run_id"], url=f"{stack.bot_url}/github/webhook")
    assert answer["status"] == 202, answer
    return run["run_id"], stack.card(answer["body"]["requestId"])


def _wait_run(gh: GitHubRig, run_id: int, status: str) -> dict[str, Any]:
    """Wait for the bot's hand-off to reach GitHub (another process: polled, as harness waits do)."""
    harness.wait_until(lambda: gh.run(run_id)["status"] == status, 20, f"run {run_id} to be {status}")
    return gh.run(run_id)


def test_through_the_bot_a_run_is_approved_once_after_quorum(gh: GitHubRig, stack: Stack) -> None:
    run_id, req = _through_the_bot(gh, stack)
    rid = req["requestId"]
    assert req["scope"] == {"repo": "acme/web", "sha": SHA, "environment": "production", "workflow": WORKFLOW}
    post = stack.emulator.wait_for("chat.postMessage", channel="C0DEPLOYS")
    assert "per GitHub's signed webhook" in json.dumps(post["params"])
    stack.click("U0BOB", req)
    stack.wait_version(rid, req["version"])
    assert gh.run(run_id)["status"] == "waiting"  # one approval is not a quorum
    stack.click("U0CAROL", req)
    stack.wait_status(rid, "APPROVED")
    run = _wait_run(gh, run_id, "approved")
    status, approval = run["reviews"]
    assert status["state"] is None  # the status comment while it waited
    escaped = rid.replace("_", "\\_")  # Markdown-escaped: it renders as the id
    assert f"waiting for 2 approvals in Slack, request {escaped}" in status["comment"]
    assert approval["state"] == "approved"
    assert f"(https://keyturn.example/requests/{rid})" in approval["comment"]
    assert [r["body"].get("state") for r in gh.reviews_posted(run_id)] == [None, "approved"]


def test_through_the_bot_deny_rejects_with_the_reason(gh: GitHubRig, stack: Stack) -> None:
    run_id, req = _through_the_bot(gh, stack)
    since = len(stack.emulator.calls())
    stack.click("U0BOB", req, action="deny")
    view_id = stack.emulator.wait_for("views.open", since=since)["response"]["view"]["id"]
    stack.emulator.submit_view("U0BOB", view_id, {REASON_BLOCK: {REASON_ACTION: "not on a Friday"}})
    stack.wait_status(req["requestId"], "DENIED")
    run = _wait_run(gh, run_id, "rejected")
    assert "denied by U0BOB: not on a Friday" in run["reviews"][-1]["comment"]


def test_through_the_bot_expiry_rejects(gh: GitHubRig, stack: Stack) -> None:
    run_id, req = _through_the_bot(gh, stack, environment="shortlived")
    stack.wait_status(req["requestId"], "EXPIRED", timeout=30)
    run = _wait_run(gh, run_id, "rejected")
    assert "expired" in run["reviews"][-1]["comment"]


def test_through_the_bot_refused_webhooks_open_no_request(gh: GitHubRig, stack: Stack) -> None:
    url = f"{stack.bot_url}/github/webhook"
    bad = gh.deliver(gh.new_run()["run_id"], url=url, signature="bad")
    assert (bad["status"], bad["body"]["error"]) == (401, "bad_signature")
    no_policy = gh.deliver(gh.new_run(environment="qa")["run_id"], url=url)
    assert (no_policy["status"], no_policy["body"]["error"]) == (422, "no_policy")
    malformed = gh.deliver(gh.new_run()["run_id"], url=url, raw='{"action": "requested"}')
    assert (malformed["status"], malformed["body"]["error"]) == (400, "malformed_payload")
    good = gh.new_run()
    first = gh.deliver(good["run_id"], url=url)
    assert first["status"] == 202
    replay = gh.deliver(good["run_id"], url=url, delivery=first["delivery"])
    assert (replay["status"], replay["body"]["error"]) == (409, "replayed_delivery")
    assert len(stack.emulator.calls("chat.postMessage")) <= 1  # only the genuine delivery's card


def test_an_environment_without_policy_is_refused(gh: GitHubRig) -> None:
    run = gh.new_run(environment="qa")
    answer = gh.deliver(run["run_id"])
    assert (answer["status"], answer["body"]["error"]) == (422, "no_policy")
    assert "qa" in answer["body"]["message"]


def test_a_replayed_delivery_is_refused(gh: GitHubRig) -> None:
    run = gh.new_run()
    first = gh.deliver(run["run_id"], delivery="a1b2c3d4-0000-4000-8000-000000000001")
    assert first["status"] == 200
    again = gh.deliver(run["run_id"], delivery="a1b2c3d4-0000-4000-8000-000000000001")
    assert (again["status"], again["body"]["error"]) == (409, "replayed_delivery")


def test_receipts_for_another_sha_or_environment_are_refused(gh: GitHubRig, stack: Stack) -> None:
    run_id, _ = _waiting_run(gh)
    for environment, sha in (("staging", SHA), ("production", OTHER_SHA)):
        _, receipt = _receipt_for(stack, environment, sha)
        refused = gh.approve(run_id, receipt)
        field = "environment" if environment != "production" else "sha"
        assert (refused.status_code, refused.json()["error"]) == (403, f"scope_mismatch:{field}"), (
            refused.text
        )
    assert gh.run(run_id)["status"] == "waiting"
    assert gh.reviews_posted(run_id) == []


def test_a_compromised_bot_cannot_get_a_run_approved_without_its_receipt(
    gh: GitHubRig, stack: Stack, tmp_path: Path
) -> None:
    """The bot's credentials reach the approver and the bot's API; neither gets the run approved."""
    run_id, _ = _waiting_run(gh)
    _, receipt = _receipt_for(stack, "staging")
    forged = json.loads(receipt)
    forged["scope"]["environment"] = "production"  # edit the scope: the signature no longer covers it
    attempts = [b"", b"{}", json.dumps(forged).encode(), receipt]
    for body in attempts:
        assert gh.approve(run_id, body).status_code == 403
    # A webhook of its own making (no webhook secret) is refused, so it cannot open a run of its choosing.
    assert gh.deliver(run_id, signature="bad")["status"] == 401
    # Nor can it talk to GitHub as the App: a JWT from any key but the App's gets no installation token.
    _, _public = _app_key(tmp_path)
    own_key = tmp_path / "app.private-key.pem"
    jwt = app_jwt(APP_ID, own_key.read_bytes(), int(__import__("time").time()))
    token = gh.http.post(
        f"{gh.github_url}/app/installations/12345678/access_tokens",
        headers={"Authorization": f"Bearer {jwt}"},
    )
    assert token.status_code == 401
    assert gh.run(run_id)["status"] == "waiting"
    assert gh.reviews_posted(run_id) == []


def test_api_faults_are_retried_and_never_turn_into_an_approval(gh: GitHubRig, stack: Stack) -> None:
    run_id, _ = _waiting_run(gh)
    _, receipt = _receipt_for(stack)
    _, wrong = _receipt_for(stack, "staging")

    # Faults on every try: a 502 to the caller, the run still waiting, and no review posted.
    gh.faults(server_errors=100)
    down = gh.approve(run_id, receipt)
    assert (down.status_code, down.json()["error"]) == (502, "github_unavailable")
    gh.faults(server_errors=0, slow_s=1.5)  # slower than the approver's 1 s timeout
    slow = gh.approve(run_id, receipt)
    assert (slow.status_code, slow.json()["error"]) == (502, "github_unavailable")
    gh.faults(slow_s=0.0)
    assert gh.run(run_id)["status"] == "waiting"
    assert gh.reviews_posted(run_id) == []

    # A fault does not make a wrong receipt pass either.
    gh.faults(server_errors=1)
    assert gh.approve(run_id, wrong).json()["error"] == "scope_mismatch:environment"

    # Transient faults (a 502, a rate limit with Retry-After) are retried with backoff: approved once.
    before = len(gh.calls())
    gh.faults(server_errors=1, rate_limited=1)
    ok = gh.approve(run_id, receipt)
    assert ok.status_code == 200, ok.text
    statuses = [c.get("status") for c in gh.calls()[before:]]
    assert 502 in statuses
    assert 403 in statuses
    assert [r["state"] for r in gh.run(run_id)["reviews"]] == ["approved"]


def test_through_the_bot_a_second_run_of_a_waiting_scope_is_rejected_not_orphaned(
    gh: GitHubRig, stack: Stack
) -> None:
    first, req = _through_the_bot(gh, stack)
    second = gh.new_run()
    answer = gh.deliver(second["run_id"], url=f"{stack.bot_url}/github/webhook")
    assert (answer["status"], answer["body"]["error"]) == (409, "scope_busy")
    run = gh.run(second["run_id"])
    assert run["status"] == "rejected"
    assert req["requestId"] in run["reviews"][0]["comment"]
    assert gh.run(first)["status"] == "waiting"


def test_through_the_bot_github_faults_delay_the_approval_but_never_make_one(
    gh: GitHubRig, stack: Stack
) -> None:
    """GitHub fails more often than the approver retries: the approver answers 502, the bot tries again, and
    the run is approved once when GitHub answers. The receipt is what approves; the faults only delay it."""
    run_id, req = _through_the_bot(gh, stack)
    stack.click("U0BOB", req)
    stack.wait_version(req["requestId"], req["version"])
    gh.faults(server_errors=5)  # the approver tries 3 times per call: its first hand-off fails whole
    stack.click("U0CAROL", req)
    run = _wait_run(gh, run_id, "approved")
    assert [r["state"] for r in run["reviews"]] == [None, "approved"]
    statuses = [c.get("status") for c in gh.calls()]
    assert statuses.count(502) == 5
    assert len(gh.reviews_posted(run_id)) == 2  # the status comment and the one approval


def test_through_the_bot_an_old_deployment_is_not_revived(gh: GitHubRig, stack: Stack) -> None:
    """A webhook for a deployment created before the request lifetime is dated by GitHub's own time, not by
    when the bot (or someone) presents it: the request expires and the run is rejected."""
    import time

    run_id, req = _through_the_bot(gh, stack, created_at=int(time.time()) - 3600)  # production: 30 min
    stack.wait_status(req["requestId"], "EXPIRED", timeout=30)
    assert "expired" in _wait_run(gh, run_id, "rejected")["reviews"][-1]["comment"]
