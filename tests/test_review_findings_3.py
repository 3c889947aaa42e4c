"""Third adversarial review (fresh eyes): one test per attack, named after it, asserting the refusal the
product gives. Each was first committed as ``xfail(strict=True)`` (the product did not refuse), then fixed.

Attackers played: a compromised bot (every frame to the signer and the GitHub approver, genuine Slack clicks
and GitHub webhooks replayed or withheld, any Redis write), a compromised Redis, a hostile CI job (its body,
an OIDC token of its own), and hostile argv for ``keyturn``.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from keyturn.signer import evidence as ev
from keyturn.signer.errors import KeyturnError
from keyturn.signer.policy import Policy
from tests.gate_fixtures import SCOPE, LoopbackServer, write_keyset
from tests.oidc_tokens import claims_for, genuine
from tests.signer.conftest import at
from tests.signer.test_oidc import GITLAB_KEY, ISSUERS, KEY, NOW, POLICY_TOML, body_for, refusal
from tests.test_review_findings_oidc_github import (
    LostAnswers,
    SlowGitHub,
    _approver,
    _deliver,
    _webhook,
    bound_receipt,
)

# --- the GitHub approver: a request approves one run attempt ----------------------------------------------


# Run 41's first attempt (deployment 1041) and its re-run (2041): each webhook's request and its receipt.
FIRST, RERUN = _webhook(41, deployment_id=1041), _webhook(41, deployment_id=2041)
RECEIPT, ARRIVAL = bound_receipt(FIRST, "delivery-a1")
OWN, OWN_ARRIVAL = bound_receipt(RERUN, "delivery-a2")
RECEIPT_REQUEST, OTHER_REQUEST = (str(json.loads(r)["requestId"]) for r in (RECEIPT, OWN))


class LostFirstAttempt(LostAnswers):
    """GitHub applies every review of run 41 but loses its answers until ``lose`` is cleared."""

    def __init__(self) -> None:
        super().__init__(delay=0.0)
        self.lose = True

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.lose:
            return await super().__call__(request)
        return await super(LostAnswers, self).__call__(request)


@pytest.mark.parametrize("rerun_webhook", ["delivered", "withheld"])
async def test_attack_spent_receipt_approves_the_rerun_after_a_lost_answer(
    tmp_path: Path, rerun_webhook: str
) -> None:
    """Run 41's first attempt (deployment 1041) was approved with request R, but GitHub's answer was lost
    (502: the run stays "waiting" in the approver's memory, R spent on attempt 1). The attempt deployed; a
    re-run (attempt 2, deployment 2041) now waits for a quorum of its own. Its genuine webhook was taken but
    did not replace the waiting attempt 1 (or a compromised bot withheld it), so a retry of R (the bot's
    outbox retries a 502) passed the "spent on this attempt" check, and GitHub's per-run review endpoint
    released attempt 2 with R."""
    github = LostFirstAttempt()
    async with httpx.AsyncClient(transport=httpx.MockTransport(github)) as client:
        approver = _approver(tmp_path, client)
        assert await _deliver(approver, FIRST, "delivery-a1") == (200, None)
        lost = await approver.approve((41, "production"), RECEIPT, ARRIVAL)
        assert (lost.status_code, json.loads(bytes(lost.body)).get("error")) == (502, "github_unavailable")
        assert set(github.approved) == {41}  # attempt 1 was approved at GitHub
        github.lose, github.approved = False, []
        github.attempts[41] = 2  # the re-run waits now
        expected = "run_attempt_changed"
        if rerun_webhook == "delivered":
            assert await _deliver(approver, RERUN, "delivery-a2") == (200, None)
            expected = "receipt_spent"
        again = await approver.approve((41, "production"), RECEIPT, ARRIVAL)
        assert (again.status_code, json.loads(bytes(again.body)).get("error")) == (409, expected)
    assert github.approved == []


async def test_a_rerun_with_its_own_receipt_is_approved_after_an_earlier_attempts_lost_answer(
    tmp_path: Path,
) -> None:
    """The fix must not strand the re-run: its own request's receipt approves it."""
    github = LostFirstAttempt()
    async with httpx.AsyncClient(transport=httpx.MockTransport(github)) as client:
        approver = _approver(tmp_path, client)
        assert await _deliver(approver, FIRST, "delivery-a1") == (200, None)
        assert (await approver.approve((41, "production"), RECEIPT, ARRIVAL)).status_code == 502
        github.lose, github.approved = False, []
        github.attempts[41] = 2
        assert await _deliver(approver, RERUN, "delivery-a2") == (200, None)
        answer = await approver.approve((41, "production"), OWN, OWN_ARRIVAL)
        assert answer.status_code == 200, bytes(answer.body)
    assert github.approved == [41]


async def test_the_checked_attempt_survives_a_restart_of_the_approver(tmp_path: Path) -> None:
    """The attempt a waiting run was checked at is kept in ``--state-file``: after a restart, a retry of the
    spent receipt still finds the run re-run and sends nothing."""
    from keyturn.signer.github_approver import Approver

    github = LostFirstAttempt()
    state = tmp_path / "approver-state.json"
    async with httpx.AsyncClient(transport=httpx.MockTransport(github)) as client:
        first = _approver(tmp_path, client)
        first.state_file = state
        assert await _deliver(first, FIRST, "delivery-a1") == (200, None)
        assert (await first.approve((41, "production"), RECEIPT, ARRIVAL)).status_code == 502
        github.lose, github.approved = False, []
        github.attempts[41] = 2
        again = Approver(first.s, first.api, first.now, state)  # a restart: everything from the file
        assert again.runs[(41, "production")].attempt == 1
        answer = await again.approve((41, "production"), RECEIPT, ARRIVAL)
        assert (answer.status_code, json.loads(bytes(answer.body)).get("error")) == (
            409,
            "run_attempt_changed",
        )
    assert github.approved == []


# --- OIDC: a branch rule speaks only for jobs whose ref is the code that runs -----------------------------


# The events this review refused by name (a deny-list then; the fifth review made the rule an allow-list).
THIRD_REVIEW_EVENTS = ("pull_request_target", "workflow_run", "issue_comment", "merge_request_event")
# Event names in the platforms' grammar (contract.EVENT_RE); any other is bad_origin before any rule
# (tests/test_review_findings_card.py).
EVENT_NAMES = st.from_regex(r"\A[a-z]{1,10}(?:_[a-z]{1,10}){0,2}\Z") | st.sampled_from(
    sorted({*THIRD_REVIEW_EVENTS, *ev.REF_BOUND_EVENTS["github"]})
)


@settings(max_examples=60, deadline=None)
@given(event=EVENT_NAMES, listed=st.lists(EVENT_NAMES, max_size=3, unique=True))
def test_a_branch_rule_admits_a_ref_unbound_event_only_when_listed(event: str, listed: list[str]) -> None:
    """Under ``branches = ["main"]``: with an ``events`` list, exactly the listed events ask; without one,
    none of those whose ``ref`` does not name their code; since the fifth review, only the events whose
    ``ref`` does (``REF_BOUND_EVENTS``: an allow-list, where this review had refused the ones it named)."""
    rule = f"\nevents = {json.dumps(listed)}" if listed else ""
    policy = Policy.from_bytes(
        POLICY_TOML.replace('branches = ["main"]', 'branches = ["main"]' + rule).encode()
    )
    token = genuine(KEY, claims_for("github", NOW, event_name=event))
    admitted = event in listed if listed else event in ev.REF_BOUND_EVENTS["github"]
    if admitted:
        ev.check_oidc_request(token, body_for({}), policy, ISSUERS, at(NOW))
        return
    with pytest.raises(KeyturnError) as exc:
        ev.check_oidc_request(token, body_for({}), policy, ISSUERS, at(NOW))
    assert exc.value.code == "oidc_event_not_allowed"


@pytest.mark.parametrize("event", ["workflow_run", "issue_comment"])
def test_attack_a_job_started_by_another_runs_event_passes_a_branch_rule(event: str) -> None:
    """Like ``pull_request_target``, a ``workflow_run`` job (started when another workflow, say a fork pull
    request's, finished) and an ``issue_comment`` job (a "/deploy" comment on a pull request) run with the
    default branch as their ``ref`` whatever code they then check out and build: the pull request's artifacts
    or head. Under ``branches = ["main"]`` without an ``events`` rule such a job's token passed as a push to
    main, so a pull request's code could ask for a production deploy as "main"."""
    token = genuine(KEY, claims_for("github", NOW, event_name=event))
    assert refusal(token).code == "oidc_event_not_allowed"
    # The event stays usable where the policy lists it knowingly.
    policy = Policy.from_bytes(
        POLICY_TOML.replace('branches = ["main"]', f'branches = ["main"]\nevents = ["{event}"]').encode()
    )
    assert (
        ev.check_oidc_request(token, body_for({}), policy, ISSUERS, at(NOW)).scope.environment == "production"
    )


def test_attack_a_forks_merge_request_job_named_main_passes_a_gitlab_branch_rule() -> None:
    """A GitLab merge request pipeline's ``ref`` is the source branch, which a fork may call ``main``; run in
    the parent project, GitLab versions before its fix of issue 548165 issued the job a token of the parent
    project. Under ``branches = ["main"]`` without an ``events`` rule that token passed as main's."""
    policy = Policy.from_bytes(POLICY_TOML.replace('issuers = ["github"]', 'issuers = ["gitlab"]').encode())
    claims = claims_for("gitlab", NOW, pipeline_source="merge_request_event")
    body = body_for({}, requester="gitlab:alice")
    with pytest.raises(KeyturnError) as exc:
        ev.check_oidc_request(genuine(GITLAB_KEY, claims), body, policy, ISSUERS, at(NOW))
    assert exc.value.code == "oidc_event_not_allowed"
    push = claims_for("gitlab", NOW)  # a push to main itself still asks
    assert ev.check_oidc_request(genuine(GITLAB_KEY, push), body, policy, ISSUERS, at(NOW)).event == "push"


# --- the gate: a keyset file the deployed checkout could replace ----------------------------------------


def test_attack_keyset_in_a_gitlab_project_dir_without_git_is_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A GitLab deploy job with ``GIT_STRATEGY: none`` runs in ``$CI_PROJECT_DIR`` holding the build job's
    artifacts and no ``.git``: a merge request's build could put its own ``keys.json`` there (with a receipt
    signed by its key). The gate looked for a git work tree and ``$GITHUB_WORKSPACE`` only, so it trusted the
    file; so it did for any job that ``cd``'d out of the checkout before verifying."""
    from keyturn.signer import gate

    project = tmp_path / "builds" / "acme" / "web"
    project.mkdir(parents=True)
    keys = write_keyset(project)
    monkeypatch.delenv("GITHUB_WORKSPACE", raising=False)
    monkeypatch.setenv("CI_PROJECT_DIR", str(project))
    monkeypatch.chdir(project)
    with pytest.raises(gate.GateError) as exc:
        gate.load_keyset(str(keys), trust_keys_in_checkout=False)
    assert exc.value.code == "untrusted_keyset"
    monkeypatch.chdir(tmp_path)  # from outside it too
    with pytest.raises(gate.GateError) as exc:
        gate.load_keyset(str(keys), trust_keys_in_checkout=False)
    assert exc.value.code == "untrusted_keyset"


# --- property: whatever a hostile bot replays, withholds or retries, a request approves one attempt --------


class RerunningGitHub(SlowGitHub):
    """One run (41) whose attempts GitHub re-runs; reviews go to whichever attempt waits now (the endpoint is
    per run), may be applied while their answer is lost, and are recorded per request id."""

    def __init__(self) -> None:
        super().__init__(delay=0.0)
        self.attempt, self.waiting, self.lose = 1, True, False
        self.approved_by: dict[str, set[int]] = {}  # request id -> the attempts it released

    def deployment(self, attempt: int) -> int:
        return 1000 * attempt + 41

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.attempts[41] = self.attempt  # what GitHub's read of the run says
        if not request.url.path.endswith("/deployment_protection_rule"):
            return await super().__call__(request)
        if not self.waiting:
            return httpx.Response(422, json={"message": "No pending deployment requests"})
        comment = json.loads(request.content)["comment"]
        for rid in (RECEIPT_REQUEST, OTHER_REQUEST):
            if rid.removeprefix("req_") in comment:
                self.approved_by.setdefault(rid, set()).add(self.attempt)
        self.waiting = False
        if self.lose:
            raise httpx.ReadTimeout("the answer was lost", request=request)
        return httpx.Response(204)


STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("deliver"), st.integers(1, 4)),
        st.tuples(st.just("approve"), st.sampled_from([RECEIPT_REQUEST, OTHER_REQUEST])),
        st.tuples(st.just("rerun"), st.just(0)),
        st.tuples(st.just("lose"), st.booleans()),
    ),
    max_size=14,
)


LOST_THEN_RERUN = [
    ("deliver", 1),
    ("lose", True),
    ("approve", RECEIPT_REQUEST),
    ("rerun", 0),
    ("lose", False),
]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=STEPS)
@example(steps=[*LOST_THEN_RERUN, ("approve", RECEIPT_REQUEST)])  # the re-run's webhook withheld
@example(steps=[*LOST_THEN_RERUN, ("deliver", 2), ("approve", RECEIPT_REQUEST)])
@example(steps=[*LOST_THEN_RERUN, ("deliver", 2), ("deliver", 1), ("approve", RECEIPT_REQUEST)])
async def test_no_sequence_of_webhooks_reruns_and_retries_lets_a_request_approve_two_attempts(
    tmp_path: Path, steps: list[tuple[str, object]]
) -> None:
    """A hostile bot delivers genuine webhooks of any existing attempt (each at most once: GitHub signed it,
    the approver takes it once) in any order, withholds others, retries approvals with either of two genuine
    receipts for the run's scope, while GitHub re-runs the run and loses answers. No request id ever
    releases two attempts."""
    receipts = {RECEIPT_REQUEST: (RECEIPT, ARRIVAL), OTHER_REQUEST: (OWN, OWN_ARRIVAL)}
    github = RerunningGitHub()
    async with httpx.AsyncClient(transport=httpx.MockTransport(github)) as client:
        approver = _approver(tmp_path, client)
        approver.api.s.attempts = 1  # one try per call: a lost answer is a 502 at once
        for step, arg in steps:
            if step == "deliver" and isinstance(arg, int) and arg <= github.attempt:
                hook = _webhook(41, deployment_id=github.deployment(arg))
                await _deliver(approver, hook, f"delivery-a{arg}")
            elif step == "approve" and isinstance(arg, str):
                await approver.approve((41, "production"), *receipts[arg])
            elif step == "rerun":
                github.attempt, github.waiting = github.attempt + 1, True
            elif step == "lose" and isinstance(arg, bool):
                github.lose = arg
    assert all(len(attempts) <= 1 for attempts in github.approved_by.values()), github.approved_by


# --- keyturn request --wait: the bot being gated cannot also vouch for the keys ----------------------------


def test_attack_request_wait_trusts_the_keyset_the_compromised_bot_serves(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``keyturn request --url B --wait --keys B/v1/keys`` (the natural pairing: the bot serves
    ``GET /v1/keys``, and ``keyturn verify --help`` called it a trusted place) takes the receipt *and* the
    keys that verify it from the bot it is gating: a compromised bot answers APPROVED at once with a receipt
    signed by a key of its own and serves that key, and the gate exited 0 with no approval at all. Refused
    before anything is asked: a usage error naming ``untrusted_keyset``, and no request posted."""
    from keyturn.bot import client

    monkeypatch.setenv(client.SECRET_ENV, "s" * 32)
    with LoopbackServer() as bot:  # approves everything, serves a receipt and the key that signed it
        scope = [
            "--repo",
            SCOPE.repo,
            "--sha",
            SCOPE.sha,
            "--env",
            SCOPE.environment,
            "--workflow",
            SCOPE.workflow,
        ]
        argv = [
            "--url",
            bot.url,
            *scope,
            "--requester",
            "github:alice",
            "--wait",
            "--keys",
            bot.url + "/keys",
        ]
        assert client.main(argv) == client.USAGE
        assert bot.posted() == []
    assert "untrusted_keyset" in capsys.readouterr().err
