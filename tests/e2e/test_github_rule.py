"""Keyturn as a GitHub deployment protection rule, with real processes: the e2e stack (signer, bot, Slack
emulator), ``keyturn github-emulator`` and ``keyturn github-approver``.

The ``through_the_bot`` tests are the whole flow: GitHub's webhook to the bot, checked by the approver and the
signer, a card, clicks, a receipt, and the bot's hand-off to the approver, which approves or rejects the run.
The others drive the approver directly (as the bot does) to reach its refusals one by one.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from keyturn.bot.cards import REASON_ACTION, REASON_BLOCK
from keyturn.signer.github_app import app_jwt
from tests import harness
from tests.conftest import failed
from tests.e2e.conftest import SHA, Stack
from tests.github_rig import (
    APP_ID,
    WORKFLOW,
    GitHubRig,
    app_key,
    arrival_of,
    start_github_rig,
    through_the_bot,
)

OTHER_SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def github_rig(e2e_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitHubRig]:
    rig = start_github_rig(
        tmp_path_factory.mktemp("github"),
        approver_port=e2e_stack.approver_port,
        keys_file=e2e_stack.keys_file,
        policy=e2e_stack.workdir / "keyturn.toml",
    )
    yield rig
    rig.close()


@pytest.fixture
def gh(github_rig: GitHubRig, stack: Stack, request: pytest.FixtureRequest) -> Iterator[GitHubRig]:
    """The rig with the GitHub emulator reset (the approver keeps its de-duplication memory, as in life)."""
    github_rig.http.post(f"{github_rig.github_url}/_github/reset")
    yield github_rig
    if failed(request):
        print("\n".join(f"===== {n} =====\n{p.log()[-20000:]}" for n, p in github_rig.procs.items()))
    dead = [name for name, p in github_rig.procs.items() if not p.alive()]
    assert not dead, f"processes died during the test: {dead}"


def _receipt_for(
    stack: Stack, environment: str = "production", sha: str = SHA, workflow: str = WORKFLOW
) -> tuple[str, bytes]:
    """A real receipt from the stack's signer: a CI request for the scope, approved by quorum."""
    created = stack.create(environment=environment, sha=sha, workflow=workflow)
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


def _quorum(gh: GitHubRig, stack: Stack, req: dict[str, Any], run_id: int) -> tuple[bytes, dict[str, str]]:
    """Both production approvers click; the bot's hand-off approves the run. The request's receipt and the
    arrival the hand-off named, for the tests' own (replayed, misdirected) hand-offs."""
    for user in ("U0BOB", "U0CAROL"):
        stack.click(user, req)
    stack.wait_status(req["requestId"], "APPROVED")
    _decided(gh, stack, run_id, "approved")
    receipt = stack.get(f"/v1/requests/{req['requestId']}/receipt")
    assert receipt.status_code == 200, receipt.text
    return receipt.content, arrival_of(stack, req["requestId"])


def test_a_run_is_approved_exactly_once_after_quorum_with_a_comment_linking_the_request(
    gh: GitHubRig, stack: Stack
) -> None:
    run_id, req = through_the_bot(gh, stack)
    # The scope comes from GitHub (the webhook, then the API's run and deployment): with the workflow path.
    assert req["scope"] == {"repo": "acme/web", "sha": SHA, "environment": "production", "workflow": WORKFLOW}
    rid = req["requestId"]
    stack.click("U0BOB", req)
    stack.wait_version(rid, req["version"])
    assert stack.get(f"/v1/requests/{rid}/receipt").status_code != 200  # no quorum, no receipt
    assert (
        gh.approve(run_id, b"", arrival=arrival_of(stack, rid)).status_code == 403
    )  # nothing to approve with
    receipt, arrival = _quorum(gh, stack, req, run_id)
    again = gh.approve(run_id, receipt, arrival=arrival)
    assert (again.status_code, again.json()["error"]) == (409, "already_decided")

    run = gh.run(run_id)
    assert run["status"] == "approved"
    approvals = [r for r in run["reviews"] if r["state"] is not None]
    assert len(approvals) == 1
    assert [r["body"].get("state") for r in gh.reviews_posted(run_id)] == [None, "approved"]
    review = approvals[0]
    assert (review["state"], review["environment_name"]) == ("approved", "production")
    assert f"(https://keyturn.example/requests/{rid})" in review["comment"]
    assert len(review["comment"]) <= 1024


def test_one_request_approves_one_run_and_status_comments_do_not_decide(gh: GitHubRig, stack: Stack) -> None:
    first, req = through_the_bot(gh, stack)
    second, _ = _waiting_run(gh)  # the same commit and environment again (a re-run, a second dispatch)
    status = gh.http.post(
        f"{gh.approver_url}/runs/{second}/production/status", json={"text": "waiting for *2* approvals"}
    )
    assert status.status_code == 200, status.text
    assert gh.run(second)["reviews"] == [
        {"state": None, "comment": "Keyturn: waiting for \\*2\\* approvals", "environment_name": "production"}
    ]
    assert gh.run(second)["status"] == "waiting"
    receipt, arrival = _quorum(gh, stack, req, first)
    spent = gh.approve(second, receipt, arrival=arrival)
    assert (spent.status_code, spent.json()["error"]) == (409, "receipt_spent")
    assert gh.run(second)["status"] == "waiting"
    # A re-run of the approved run is a new deployment: it waits again and needs a request of its own.
    assert gh.http.post(f"{gh.github_url}/_github/runs/{first}/rerun").status_code == 200
    assert gh.deliver(first)["status"] == 200
    rerun = gh.approve(first, receipt, arrival=arrival)
    assert (rerun.status_code, rerun.json()["error"]) == (409, "receipt_spent")


def test_a_restarted_approver_remembers_deliveries_waiting_runs_and_spent_requests(
    gh: GitHubRig, stack: Stack
) -> None:
    first = gh.new_run()
    delivered = gh.deliver(first["run_id"])
    second, req = through_the_bot(gh, stack)
    receipt, arrival = _quorum(gh, stack, req, second)
    gh.restart_approver()
    replayed = gh.deliver(first["run_id"], delivery=delivered["delivery"])
    assert (replayed["status"], replayed["body"]["error"]) == (409, "replayed_delivery")
    answer = gh.approve(first["run_id"], receipt, arrival=arrival)
    assert answer.json()["error"] == "receipt_spent"  # the run still waits
    # A receipt of the same scope whose request was not opened from this run's webhook (a CI request) does
    # not approve it either (seventh review), and nothing is posted.
    _, other = _receipt_for(stack)
    assert gh.approve(first["run_id"], other, arrival=arrival).json()["error"] == "receipt_not_for_run"
    assert gh.run(first["run_id"])["status"] == "waiting"
    assert gh.reviews_posted(first["run_id"]) == []


def test_a_replayed_approval_after_the_approver_lost_its_record_posts_no_second_review(
    gh: GitHubRig, stack: Stack
) -> None:
    """The approver crashed between GitHub's 204 and writing its state, and the bot hands the receipt over
    again: GitHub no longer waits, which is final (409), not a fault to retry, and no second review."""
    run_id, req = through_the_bot(gh, stack)
    before = gh.state_file.read_bytes()  # its record with the run still waiting
    receipt, arrival = _quorum(gh, stack, req, run_id)
    gh.procs["approver"].kill9()
    gh.state_file.write_bytes(before)  # the write the crash cut
    gh.start_approver()
    replay = gh.approve(run_id, receipt, arrival=arrival)
    assert (replay.status_code, replay.json()["error"]) == (409, "run_not_waiting")
    assert [r["state"] for r in gh.run(run_id)["reviews"]] == [None, "approved"]


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


def _decided(gh: GitHubRig, stack: Stack, run_id: int, status: str, timeout: float = 20.0) -> dict[str, Any]:
    """Wait (up to ``timeout`` seconds) for the bot's hand-off to decide the run, then for the bot's last
    outcome notice (the DM to the requester, alice): the hand-off may overtake the Slack notices, and a notice
    landing after the next test's reset would be counted there. The run."""
    run = gh.wait_run(run_id, status, timeout)
    stack.emulator.wait_for("chat.postMessage", timeout=10, channel="D0ALICE")
    return run


def test_through_the_bot_a_run_is_approved_once_after_quorum(gh: GitHubRig, stack: Stack) -> None:
    run_id, req = through_the_bot(gh, stack)
    rid = req["requestId"]
    assert req["scope"] == {"repo": "acme/web", "sha": SHA, "environment": "production", "workflow": WORKFLOW}
    post = stack.emulator.wait_for("chat.postMessage", channel="C0DEPLOYS")
    assert "per GitHub's signed webhook" in json.dumps(post["params"])
    stack.click("U0BOB", req)
    stack.wait_version(rid, req["version"])
    assert gh.run(run_id)["status"] == "waiting"  # one approval is not a quorum
    stack.click("U0CAROL", req)
    stack.wait_status(rid, "APPROVED")
    run = _decided(gh, stack, run_id, "approved")
    status, approval = run["reviews"]
    assert status["state"] is None  # the status comment while it waited
    escaped = rid.replace("_", "\\_")  # Markdown-escaped: it renders as the id
    assert f"waiting for 2 approvals in Slack, request {escaped}" in status["comment"]
    assert approval["state"] == "approved"
    assert f"(https://keyturn.example/requests/{rid})" in approval["comment"]
    assert [r["body"].get("state") for r in gh.reviews_posted(run_id)] == [None, "approved"]


def _deny(stack: Stack, req: dict[str, Any], reason: str) -> None:
    """Bob denies the request in Slack with ``reason`` (the Deny button, then the form)."""
    since = len(stack.emulator.calls())
    stack.click("U0BOB", req, action="deny")
    view_id = stack.emulator.wait_for("views.open", since=since)["response"]["view"]["id"]
    stack.emulator.submit_view("U0BOB", view_id, {REASON_BLOCK: {REASON_ACTION: reason}})
    stack.wait_status(req["requestId"], "DENIED")


def test_through_the_bot_deny_rejects_with_the_reason(gh: GitHubRig, stack: Stack) -> None:
    run_id, req = through_the_bot(gh, stack)
    _deny(stack, req, "not on a Friday")
    run = _decided(gh, stack, run_id, "rejected")
    assert "denied by U0BOB: not on a Friday" in run["reviews"][-1]["comment"]


def test_through_the_bot_a_late_rejection_does_not_reject_the_rerun(gh: GitHubRig, stack: Stack) -> None:
    """The whole flow of tests/test_review_findings_5.py's attack, with real processes. Attempt 1 is denied;
    GitHub fails every call of the approver's first hand-off (502 to the bot, whose outbox retries after its
    backoff); the job is re-run meanwhile. The retried rejection finds the run at attempt 2 and is settled as
    final (``run_attempt_changed``) without a review; the re-run's own request approves attempt 2."""
    run_id, req = through_the_bot(gh, stack)
    gh.faults(server_errors=3)  # the approver tries 3 times per call: the first hand-off fails whole
    _deny(stack, req, "not this one")
    harness.wait_until(
        lambda: [c.get("status") for c in gh.calls()].count(502) == 3, 10, "the first hand-off to fail"
    )
    assert gh.http.post(f"{gh.github_url}/_github/runs/{run_id}/rerun").status_code == 200
    harness.wait_until(
        lambda: (
            (stack.get(f"/v1/requests/{req['requestId']}").json().get("callback") or {}).get("state")
            not in (None, "queued")
        ),
        30,
        "the retried hand-off to settle",
    )
    callback = stack.get(f"/v1/requests/{req['requestId']}").json()["callback"]
    assert callback["state"] == "refused", callback
    assert "run_attempt_changed" in json.dumps(callback)
    assert gh.run(run_id)["status"] == "waiting"
    assert [r["body"].get("state") for r in gh.reviews_posted(run_id)] == [None]  # the status comment only
    # The re-run's webhook opens its own request, whose quorum approves attempt 2.
    answer = gh.deliver(run_id, url=f"{stack.bot_url}/github/webhook")
    assert answer["status"] == 202, answer
    rerun = stack.card(answer["body"]["requestId"])
    for user in ("U0BOB", "U0CAROL"):
        stack.click(user, rerun)
    run = _decided(gh, stack, run_id, "approved")
    assert [r["state"] for r in run["reviews"]] == [None, None, "approved"]


def test_through_the_bot_expiry_rejects(gh: GitHubRig, stack: Stack) -> None:
    run_id, req = through_the_bot(gh, stack, environment="shortlived")
    stack.wait_status(req["requestId"], "EXPIRED", timeout=30)
    run = _decided(gh, stack, run_id, "rejected")
    assert "expired" in run["reviews"][-1]["comment"]


def test_through_the_bot_cancel_rejects_with_the_reason(gh: GitHubRig, stack: Stack) -> None:
    run_id, req = through_the_bot(gh, stack)
    rid = req["requestId"]
    cancelled = stack.post(f"/v1/requests/{rid}/cancel", b"")  # the pipeline gave up
    assert cancelled.status_code == 200, cancelled.text
    run = _decided(gh, stack, run_id, "rejected")
    status, rejection = run["reviews"]
    assert (status["state"], rejection["state"]) == (None, "rejected")
    assert rejection["comment"].startswith("Rejected by Keyturn: the request was cancelled")
    assert f"(https://keyturn.example/requests/{rid})" in rejection["comment"]
    # The hand-off went through the outbox and is settled there: nothing left to replay.
    harness.wait_until(lambda: _handover(stack, rid)["state"] == "delivered", 10, "the hand-off to settle")
    assert [r["body"].get("state") for r in gh.reviews_posted(run_id)] == [None, "rejected"]


def _handover(stack: Stack, request_id: str) -> dict[str, Any]:
    """The request's hand-off to the approver as the bot's API shows its outbox job."""
    job: dict[str, Any] = stack.get(f"/v1/requests/{request_id}").json()["callback"]
    return job


def _cards_posted(stack: Stack) -> int:
    """Cards posted to production's channel (not thread replies: a previous test's outcome notice may land
    late, after the emulator's reset)."""
    posts = stack.emulator.calls("chat.postMessage")
    return sum(
        1 for c in posts if c["params"].get("channel") == "C0DEPLOYS" and not c["params"].get("thread_ts")
    )


def _requests_opened(stack: Stack) -> int:
    """How many requests the bot holds in Redis (their records: ``keyturn:req:{id}``)."""
    with stack.redis.client() as client:
        return sum(1 for key in client.scan_iter("keyturn:req:*") if key.endswith(b"}"))


@pytest.mark.parametrize(
    ("run", "delivery", "status", "code"),
    [
        ({}, {"signature": "bad"}, 401, "bad_signature"),
        ({}, {"signature": "missing"}, 401, "missing_signature"),
        ({"environment": "qa"}, {}, 422, "no_policy"),
        ({}, {"raw": '{"action": "requested"}'}, 400, "malformed_payload"),
        ({}, {"raw": "not json"}, 400, "malformed_payload"),
    ],
    ids=[
        "bad_signature",
        "missing_signature",
        "environment_without_policy",
        "payload_missing_fields",
        "not_json",
    ],
)
def test_through_the_bot_a_refused_webhook_opens_no_request_and_posts_no_card(
    gh: GitHubRig, stack: Stack, run: dict[str, Any], delivery: dict[str, Any], status: int, code: str
) -> None:
    answer = gh.deliver(gh.new_run(**run)["run_id"], url=f"{stack.bot_url}/github/webhook", **delivery)
    assert (answer["status"], answer["body"]["error"]) == (status, code), answer
    assert answer["body"]["message"]  # a clear error, not only a code
    assert _requests_opened(stack) == 0
    assert _cards_posted(stack) == 0


@pytest.mark.parametrize(
    ("run", "code"),
    [
        ({"event": "workflow_run"}, "github_event_not_allowed"),
        ({"event": "pull_request_target"}, "github_event_not_allowed"),
        ({"ref": "refs/heads/feature"}, "github_branch_not_allowed"),
    ],
    ids=["workflow_run", "pull_request_target", "another_branch"],
)
def test_through_the_bot_a_run_the_github_rule_refuses_is_rejected_and_opens_no_request(
    gh: GitHubRig, stack: Stack, run: dict[str, Any], code: str
) -> None:
    """``[environments.guarded.github] branches = ["main"]``: the signer's arrival check refuses the run, the
    bot rejects it at once with the rule's reason and opens no request (docs/github.md)."""
    run_id = gh.new_run(environment="guarded", **run)["run_id"]
    answer = gh.deliver(run_id, url=f"{stack.bot_url}/github/webhook")
    assert (answer["status"], answer["body"]["error"]) == (403, code), answer
    rejected = gh.wait_run(run_id, "rejected")
    assert code.replace("_", "\\_") in rejected["reviews"][-1]["comment"]
    assert _requests_opened(stack) == 0
    assert _cards_posted(stack) == 0


def test_through_the_bot_a_push_to_main_passes_the_github_rule_and_its_card_names_the_event(
    gh: GitHubRig, stack: Stack
) -> None:
    run_id, req = through_the_bot(gh, stack, environment="guarded", event="push")
    post = stack.emulator.wait_for("chat.postMessage", channel="C0DEPLOYS")
    shown = json.dumps(post["params"])
    assert "From GitHub's signed webhook" in shown
    assert "*Started by:* push" in shown
    stack.click("U0BOB", req)
    stack.wait_status(req["requestId"], "APPROVED")
    _decided(gh, stack, run_id, "approved")


def test_through_the_bot_a_pull_request_target_runs_card_names_its_event(gh: GitHubRig, stack: Stack) -> None:
    """Without the table (production) the run asks as before, and its card says what started it."""
    _, req = through_the_bot(gh, stack, event="pull_request_target")
    post = stack.emulator.wait_for("chat.postMessage", channel="C0DEPLOYS")
    assert "*Started by:* pull_request_target" in json.dumps(post["params"])
    assert req["requestId"]


def test_through_the_bot_a_replayed_delivery_opens_no_second_request(gh: GitHubRig, stack: Stack) -> None:
    url = f"{stack.bot_url}/github/webhook"
    good = gh.new_run()
    first = gh.deliver(good["run_id"], url=url)
    assert first["status"] == 202
    stack.card(first["body"]["requestId"])  # the genuine delivery's card is up
    replay = gh.deliver(good["run_id"], url=url, delivery=first["delivery"])
    assert (replay["status"], replay["body"]["error"]) == (409, "replayed_delivery")
    assert replay["body"]["message"]
    assert _requests_opened(stack) == 1
    assert _cards_posted(stack) == 1


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


@pytest.mark.parametrize(
    ("environment", "sha", "workflow", "field"),
    [
        ("staging", SHA, WORKFLOW, "environment"),
        ("production", OTHER_SHA, WORKFLOW, "sha"),
        ("production", SHA, ".github/workflows/other.yml", "workflow"),
    ],
    ids=["another_environment", "another_sha", "another_workflow"],
)
def test_a_receipt_for_another_scope_is_refused_by_the_approver(
    gh: GitHubRig, stack: Stack, environment: str, sha: str, workflow: str, field: str
) -> None:
    run_id, _ = _waiting_run(gh)
    _, receipt = _receipt_for(stack, environment, sha, workflow)
    refused = gh.approve(run_id, receipt)
    assert (refused.status_code, refused.json()["error"]) == (403, f"scope_mismatch:{field}"), refused.text
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
    _, _public = app_key(tmp_path)
    own_key = tmp_path / "app.private-key.pem"
    jwt = app_jwt(APP_ID, own_key.read_bytes(), int(__import__("time").time()))
    token = gh.http.post(
        f"{gh.github_url}/app/installations/12345678/access_tokens",
        headers={"Authorization": f"Bearer {jwt}"},
    )
    assert token.status_code == 401
    assert gh.run(run_id)["status"] == "waiting"
    assert gh.reviews_posted(run_id) == []


def test_a_compromised_bot_handing_over_a_receipt_for_another_scope_gets_no_approval(
    gh: GitHubRig, stack: Stack
) -> None:
    """What the bot's own store says is the bot's word: a compromised bot marks the run's request approved,
    with a genuine receipt for staging, and hands it over through its outbox. The approver refuses it (403,
    final), and the run waits."""
    run_id, req = through_the_bot(gh, stack)
    rid = req["requestId"]
    _, other = _receipt_for(stack, "staging")
    key = f"keyturn:req:{{{rid}}}"
    with stack.redis.client() as r:
        data = json.loads(r.hget(key, "data"))
        data["status"] = "APPROVED"
        r.hset(key, mapping={"status": "APPROVED", "data": json.dumps(data)})
        r.set(f"{key}:receipt", other)
        r.hset(f"{key}:outbox", mapping={"state": "queued", "delivery_id": "dlv_forged", "attempts": 0})
        r.zadd("keyturn:outbox:due", {rid: 0})
    harness.wait_until(lambda: _handover(stack, rid)["state"] != "queued", 10, "the forged hand-off")
    job = _handover(stack, rid)
    assert (job["state"], job["last"]["error"]) == ("refused", "approver_scope_mismatch:environment")
    assert job["attempts"] == 1  # a refusal is final: not retried
    assert gh.run(run_id)["status"] == "waiting"
    assert [r["body"].get("state") for r in gh.reviews_posted(run_id)] == [None]  # the status comment only


def test_api_faults_are_retried_and_never_turn_into_an_approval(gh: GitHubRig, stack: Stack) -> None:
    run_id, req = through_the_bot(gh, stack)
    rid = req["requestId"]
    _, receipt = _receipt_for(stack, sha=OTHER_SHA)  # its scope is another: a fault must not let it pass
    _, wrong = _receipt_for(stack, "staging")

    # Faults on every try: a 502 to the caller (before any receipt is read), the run still waiting, and no
    # review posted.
    gh.faults(server_errors=100)
    down = gh.approve(run_id, receipt, arrival=arrival_of(stack, rid))
    assert (down.status_code, down.json()["error"]) == (502, "github_unavailable")
    gh.faults(server_errors=0, slow_s=1.5)  # slower than the approver's 1 s timeout
    slow = gh.approve(run_id, receipt, arrival=arrival_of(stack, rid))
    assert (slow.status_code, slow.json()["error"]) == (502, "github_unavailable")
    gh.faults(slow_s=0.0)
    assert gh.run(run_id)["status"] == "waiting"
    assert [r["body"].get("state") for r in gh.reviews_posted(run_id)] == [None]  # the status comment only

    # A fault does not make a wrong receipt pass either.
    gh.faults(server_errors=1)
    assert gh.approve(run_id, wrong).json()["error"] == "scope_mismatch:environment"

    # Transient faults (a 502, a rate limit with Retry-After) are retried with backoff: the bot's hand-off
    # of the quorum's receipt approves the run once.
    before = len(gh.calls())
    gh.faults(server_errors=1, rate_limited=1)
    _quorum(gh, stack, req, run_id)
    calls = gh.calls()[before:]
    # Each fault was followed by a retry, after a wait: the exponential backoff (--backoff 0.05) after the
    # 502, GitHub's Retry-After (1 s) after the rate limit.
    waited = {
        c["status"]: after["at"] - c["at"]
        for c, after in itertools.pairwise(calls)
        if c["status"] in (502, 403)
    }
    assert waited.keys() == {502, 403}, calls
    assert waited[502] >= 0.05
    assert waited[403] >= 1.0
    assert [r["state"] for r in gh.run(run_id)["reviews"]] == [None, "approved"]


def test_through_the_bot_a_second_run_of_a_waiting_scope_is_rejected_not_orphaned(
    gh: GitHubRig, stack: Stack
) -> None:
    first, req = through_the_bot(gh, stack)
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
    the run is approved once when GitHub answers. The receipt is what approves; the faults only delay it.

    4 faults, the approver trying 3 times per call: the first hand-off fails whole (its read of the run), the
    second (the outbox's, after its 1 s backoff) meets one more and then GitHub. It was 5, which left the
    second hand-off no spare try: under load one more failure (the approver's 1 s timeout on a starved
    emulator) failed it, and the third, the stack's last (KEYTURN_CALLBACK_ATTEMPTS=3), was the only one
    left before the dead letter. The wait covers the slowest success (3 hand-offs of 3 calls of 3 tries at
    the 1 s timeout, the 1 s and 2 s backoffs: about 30 s); a run never approved still fails it."""
    run_id, req = through_the_bot(gh, stack)
    stack.click("U0BOB", req)
    stack.wait_version(req["requestId"], req["version"])
    gh.faults(server_errors=4)
    stack.click("U0CAROL", req)
    run = _decided(gh, stack, run_id, "approved", timeout=40)
    assert [r["state"] for r in run["reviews"]] == [None, "approved"]
    calls = gh.calls()
    assert [c.get("status") for c in calls].count(502) == 4
    # The faults hit the approval's read of the run, across two hand-offs: never the review itself.
    assert {c["path"] for c in calls if c.get("status") == 502} == {f"/repos/acme/web/actions/runs/{run_id}"}
    assert len(gh.reviews_posted(run_id)) == 2  # the status comment and the one approval


def test_through_the_bot_an_old_deployment_is_not_revived(gh: GitHubRig, stack: Stack) -> None:
    """A webhook for a deployment created before the request lifetime is dated by GitHub's own time, not by
    when the bot (or someone) presents it: the request expires and the run is rejected."""
    import time

    run_id, req = through_the_bot(gh, stack, created_at=int(time.time()) - 3600)  # production: 30 min
    stack.wait_status(req["requestId"], "EXPIRED", timeout=30)
    assert "expired" in _decided(gh, stack, run_id, "rejected")["reviews"][-1]["comment"]
