"""The third review's open risks, closed: one test per attack, named after it, asserting the refusal the
product gives. Each was first committed as ``xfail(strict=True)`` (the product did not refuse), then fixed.

Played: a CI job started by an event no deny-list named (its OIDC token under a branch rule), and the bot's
own retry of a rejection that GitHub answered 5xx while the run was re-run (docs/security.md, "Fifth
review").
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from keyturn.bot.callbacks import refused
from keyturn.bot.github import GitHubForwarder
from keyturn.bot.models import DeployRequest, OriginEvidence, Status
from keyturn.signer import evidence as ev
from keyturn.signer.errors import KeyturnError
from keyturn.signer.github_approver import Approver, GitHubApi, create_app
from keyturn.signer.policy import Policy
from tests.bot.test_callbacks import deploy_request
from tests.oidc_tokens import claims_for, genuine
from tests.signer.conftest import at
from tests.signer.test_oidc import GITLAB_KEY, ISSUERS, KEY, NOW, POLICY_TOML, body_for
from tests.test_review_findings_oidc_github import (
    WORKFLOW,
    SlowGitHub,
    _approver,
    _deliver,
    _webhook,
    bound_receipt,
)

# --- OIDC: under a branch rule, only the events whose ref and sha name the code that runs ------------------

# The decision, from GitHub's "Events that trigger workflows" (GITHUB_REF/GITHUB_SHA per event) and GitLab's
# CI_PIPELINE_SOURCE values (the ID token's ``pipeline_source``); the reasons per event: docs/security.md.
REF_BOUND = {
    "github": ("push", "workflow_dispatch", "schedule"),
    "gitlab": ("push", "web", "schedule", "api", "trigger"),
}
# Events no deny-list named, whose ref names the default branch (or the project's branch) whatever code the
# event brings: an issue or a discussion comment anyone may write, another system's dispatch payload, a check
# or status of another run; GitLab's downstream pipeline of another project (GitLab's documentation once had
# it swapped with a child pipeline's value), a chat command, an external pull request.
UNLISTED = {
    "github": ("repository_dispatch", "issues", "discussion_comment", "check_suite", "deployment", "release"),
    "gitlab": ("pipeline", "chat", "external_pull_request_event", "external", "webide"),
}
# Any event name in the platforms' grammar (contract.EVENT_RE: lowercase words joined by single underscores;
# anything else is refused before any rule, as bad_origin: tests/test_review_findings_card.py).
EVENT = st.from_regex(r"\A[a-z]{1,12}(?:_[a-z]{1,12}){0,2}\Z") | st.sampled_from(
    sorted({e for kind in (REF_BOUND, UNLISTED) for events in kind.values() for e in events})
)


def _policy(kind: str, events: list[str] | None = None) -> Policy:
    """The test policy: production takes ``kind``'s tokens under ``branches = ["main"]``, and ``events``."""
    text = POLICY_TOML.replace('issuers = ["github"]', f'issuers = ["{kind}"]')
    if events:
        text = text.replace('branches = ["main"]', f'branches = ["main"]\nevents = {json.dumps(events)}')
    return Policy.from_bytes(text.encode())


def _ask(kind: str, policy: Policy, **claims: Any) -> ev.RequestClaim:
    """An OIDC request of a ``kind`` job on main with ``claims`` replaced (``None`` drops a claim)."""
    key = KEY if kind == "github" else GITLAB_KEY
    token = genuine(key, claims_for(kind, NOW, **claims))
    return ev.check_oidc_request(token, body_for({}, requester=f"{kind}:alice"), policy, ISSUERS, at(NOW))


def _event_claim(kind: str) -> str:
    return "event_name" if kind == "github" else "pipeline_source"


@pytest.mark.parametrize(("kind", "event"), [(k, e) for k, events in UNLISTED.items() for e in events])
def test_attack_a_job_of_an_event_nobody_listed_passes_a_branch_rule(kind: str, event: str) -> None:
    """The event rule under a branch rule refused five named events (``REF_UNBOUND_EVENTS``); any other
    passed as a push to main. A GitHub ``issues`` or ``discussion_comment`` job (anyone may open an issue) and
    a ``repository_dispatch`` job (another system's payload names what to build) run with the default
    branch as ``ref`` whatever code they then fetch; a GitLab ``pipeline`` job is another project's
    downstream pipeline (GitLab's documentation once had it swapped with ``parent_pipeline``, the fourth
    review's refused child of a fork's merge request). Refused unless the policy lists it in ``events``."""
    with pytest.raises(KeyturnError) as exc:
        _ask(kind, _policy(kind), **{_event_claim(kind): event})
    assert exc.value.code == "oidc_event_not_allowed"
    # The operator may still list it knowingly.
    assert _ask(kind, _policy(kind, [event]), **{_event_claim(kind): event}).event == event


@pytest.mark.parametrize("kind", ["github", "gitlab"])
def test_attack_a_token_without_an_event_claim_passes_a_branch_rule(kind: str) -> None:
    """A token that names no event (an older GitLab, an Enterprise Server without the claim, a platform
    change) says nothing about whether its ``ref`` is its code: it passed a branch rule. Refused now."""
    with pytest.raises(KeyturnError) as exc:
        _ask(kind, _policy(kind), **{_event_claim(kind): None})
    assert exc.value.code == "oidc_event_not_allowed"


@pytest.mark.parametrize(("kind", "event"), [("gitlab", "workflow_dispatch"), ("github", "web")])
def test_attack_another_platforms_event_name_passes_a_branch_rule(kind: str, event: str) -> None:
    """The allow-list is per platform: a GitLab pipeline whose source were ``workflow_dispatch`` (GitHub's
    name) is no GitLab event Keyturn knows, and a GitHub ``web`` event no GitHub one."""
    with pytest.raises(KeyturnError) as exc:
        _ask(kind, _policy(kind), **{_event_claim(kind): event})
    assert exc.value.code == "oidc_event_not_allowed"


@pytest.mark.parametrize(("kind", "event"), [(k, e) for k, events in REF_BOUND.items() for e in events])
def test_the_events_that_name_their_code_pass_a_branch_rule(kind: str, event: str) -> None:
    """The fix must not strand the ordinary deploys: a push, a manual run, a schedule (GitLab: also the UI's
    and the API's "Run pipeline" and a trigger token) of main still ask under ``branches`` alone."""
    assert _ask(kind, _policy(kind), **{_event_claim(kind): event}).event == event


@settings(max_examples=80, deadline=None)
@given(
    kind=st.sampled_from(["github", "gitlab"]),
    event=EVENT | st.none(),
    listed=st.lists(EVENT, max_size=3, unique=True),
)
@example(kind="github", event="repository_dispatch", listed=[])
@example(kind="gitlab", event="pipeline", listed=[])
def test_a_branch_rule_admits_exactly_the_listed_or_the_ref_bound_events(
    kind: str, event: str | None, listed: list[str]
) -> None:
    """Under ``branches = ["main"]``: with an ``events`` list, exactly the listed events ask (the operator's
    allow-list); without one, exactly the platform's events whose ``ref`` and ``sha`` name the code that
    runs. Every other event, an unknown one, or none at all, is ``oidc_event_not_allowed``."""
    admitted = event in listed if listed else event in REF_BOUND[kind]
    policy = _policy(kind, listed)
    if admitted:
        assert _ask(kind, policy, **{_event_claim(kind): event}).event == event
        return
    with pytest.raises(KeyturnError) as exc:
        _ask(kind, policy, **{_event_claim(kind): event})
    assert exc.value.code == "oidc_event_not_allowed"


def test_the_signers_allow_list_is_the_documented_one() -> None:
    """The signer's constant is the decision above, event for event (a change to it is a security change)."""
    assert {k: sorted(v) for k, v in ev.REF_BOUND_EVENTS.items()} == {
        k: sorted(v) for k, v in REF_BOUND.items()
    }


def test_without_a_branch_rule_every_event_asks_as_before() -> None:
    """The allow-list applies under a branch rule, where a ``ref`` is trusted to name the code; a rule
    without ``branches`` (staging here, any repository job) is unchanged."""
    policy = Policy.from_bytes(POLICY_TOML.replace('branches = ["main"]\n', "").encode())
    assert _ask("github", policy, event_name="repository_dispatch").event == "repository_dispatch"


# --- the GitHub approver: a late rejection must not land on the re-run ------------------------------------


class FlakyReviews(SlowGitHub):
    """GitHub's API: reads answered at once; every review answered 503 (nothing applied) while ``down``, then
    applied. ``reviews`` lists what was applied: (run, the attempt waiting then, state)."""

    def __init__(self) -> None:
        super().__init__(delay=0.0)
        self.down = True
        self.reviews: list[tuple[int, int, str]] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if not path.endswith("/deployment_protection_rule"):
            return await super().__call__(request)
        if self.down:
            return httpx.Response(503, json={"message": "Service Unavailable"})
        run_id = int(path.split("/")[6])
        state = str(json.loads(request.content).get("state", "comment"))
        self.reviews.append((run_id, self.attempts.get(run_id, 1), state))
        return httpx.Response(204)


class OneOrigin:
    """The bot's store as the hand-off reads it: the stored webhook each request was opened by."""

    def __init__(self) -> None:
        self.origins: dict[str, OriginEvidence] = {}

    async def origin(self, request_id: str) -> OriginEvidence | None:
        return self.origins.get(request_id)


def _denied(store: OneOrigin, webhook: bytes, delivery: str) -> DeployRequest:
    """A request opened by ``webhook`` (GitHub origin, as the bot stores it), denied in Slack."""
    req = deploy_request("").model_copy(
        update={
            "callback_url": None,
            "origin_kind": "github",
            "status": Status.DENIED,
            "decided_by": "U0BOB",
            "deny_reason": "tests are red",
        }
    )
    store.origins[req.id] = OriginEvidence(
        kind="github",
        body=base64.b64encode(webhook).decode(),
        timestamp="0",
        signature="sha256=" + "0" * 64,
        delivery=delivery,
        workflow=WORKFLOW,
    )
    return req


def _no_wait_approver(tmp_path: Path, client: httpx.AsyncClient) -> Approver:
    """The test approver, its retries of GitHub's 5xx without the backoff's sleeps."""

    async def no_sleep(_: float) -> None:
        return None

    approver = _approver(tmp_path, client)
    approver.api = GitHubApi(approver.s, client, sleep=no_sleep)
    return approver


@dataclass
class Rig:
    """Run 41 waiting at attempt 1 (deployment 1041, delivery ``delivery-a1``) in a real approver app, GitHub
    down for reviews, and the bot's hand-off with request ``denied`` opened by that webhook."""

    github: FlakyReviews
    approver: Approver
    bot: GitHubForwarder
    denied: DeployRequest


@contextlib.asynccontextmanager
async def _rig(tmp_path: Path, github: FlakyReviews | None = None) -> AsyncIterator[Rig]:
    github, store, first = github or FlakyReviews(), OneOrigin(), _webhook(41, deployment_id=1041)
    async with httpx.AsyncClient(transport=httpx.MockTransport(github)) as gh_client:
        approver = _no_wait_approver(tmp_path, gh_client)
        transport = httpx.ASGITransport(app=create_app(approver))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            bot = GitHubForwarder("http://127.0.0.1", signer=None, service=None, store=store, client=client)
            assert await _deliver(approver, first, "delivery-a1") == (200, None)
            yield Rig(github, approver, bot, _denied(store, first, "delivery-a1"))


@pytest.mark.parametrize("rerun_webhook", ["delivered", "withheld", "delivered_before_the_first_try"])
async def test_attack_a_late_rejection_rejects_the_rerun(tmp_path: Path, rerun_webhook: str) -> None:
    """Run 41's first attempt (deployment 1041) was denied in Slack; the bot handed the rejection over and
    GitHub answered 5xx (nothing applied), so the outbox retries it. Meanwhile someone re-ran the job: attempt
    2 (deployment 2041) waits for a quorum of its own. The approver rejected on the bot's word without reading
    the run, and GitHub's review endpoint is per run: the retried rejection rejected attempt 2, whose own
    request's approvers were never asked. Now the approver re-reads ``run_attempt`` and checks the request's
    webhook is the one it recorded for the waiting attempt: ``run_attempt_changed``, no review posted, and the
    bot's outbox settles the hand-off as refused with that code (no endless retry)."""
    async with _rig(tmp_path) as rig:
        if rerun_webhook != "delivered_before_the_first_try":
            lost = await rig.bot.hand_over(rig.denied, None)
            assert (lost["outcome"], lost["status"]) == ("failed", 502)
        rig.github.down = False
        rig.github.attempts[41] = 2  # the re-run waits now
        if rerun_webhook.startswith("delivered"):
            rerun = _webhook(41, deployment_id=2041)
            assert await _deliver(rig.approver, rerun, "delivery-a2") == (200, None)
        late = await rig.bot.hand_over(rig.denied, None)
        assert (late["outcome"], late.get("status"), late.get("error")) == (
            "refused",
            409,
            "approver_run_attempt_changed",
        )
        assert refused(late)  # the outbox settles it: retrying cannot make it right
        assert rig.github.reviews == []
        if rerun_webhook.startswith("delivered"):  # the re-run's own request still decides it
            own, arrival = bound_receipt(rerun, "delivery-a2")
            assert (await rig.approver.approve((41, "production"), own, arrival)).status_code == 200
            assert rig.github.reviews == [(41, 2, "approved")]


async def test_a_rejection_of_the_waiting_attempt_is_posted_after_a_5xx(tmp_path: Path) -> None:
    """The fix must not strand the ordinary retry: GitHub answered 5xx, nothing moved on, the retried
    rejection rejects the attempt it was for."""
    async with _rig(tmp_path) as rig:
        assert (await rig.bot.hand_over(rig.denied, None))["outcome"] == "failed"
        rig.github.down = False
        assert (await rig.bot.hand_over(rig.denied, None))["outcome"] == "delivered"
        assert rig.github.reviews == [(41, 1, "rejected")]


# Between two hand-overs of the rejection: GitHub goes down or comes back, the job is re-run, the re-run's
# webhook reaches the approver (or not).
STEP = st.sampled_from(["handover", "github_down", "github_up", "rerun", "deliver_rerun"])


@settings(max_examples=40, deadline=None)
@given(steps=st.lists(STEP, max_size=10))
@example(steps=["handover", "github_up", "rerun", "deliver_rerun", "handover"])
@example(steps=["github_up", "rerun", "handover"])
def test_a_rejection_lands_on_its_own_attempt_or_nowhere(steps: list[str]) -> None:
    """Whatever GitHub's faults, re-runs and webhooks in between: a rejection of the request opened by attempt
    1's webhook is posted only while attempt 1 waits, at most once; each hand-over's answer is ``failed``
    (retry: GitHub down), ``delivered``, or final (``refused``: ``run_attempt_changed``)."""

    async def play(tmp_path: Path) -> None:
        async with _rig(tmp_path) as rig:
            attempt, delivered = 1, 1  # GitHub's run_attempt; the newest attempt whose webhook was taken
            for step in [*steps, "github_up", "handover"]:
                if step == "handover":
                    answer = await rig.bot.hand_over(rig.denied, None)
                    assert answer["outcome"] in ("failed", "delivered", "refused")
                    if answer["outcome"] == "refused":
                        assert answer["error"] == "approver_run_attempt_changed"
                        assert attempt > 1
                elif step.startswith("github"):
                    rig.github.down = step == "github_down"
                elif step == "rerun":
                    attempt += 1
                    rig.github.attempts[41] = attempt
                elif delivered < attempt:  # the newest re-run's webhook reaches the approver
                    delivered = attempt
                    hook = _webhook(41, deployment_id=1000 * attempt + 41)
                    assert await _deliver(rig.approver, hook, f"delivery-a{attempt}") == (200, None)
            assert rig.github.reviews in ([], [(41, 1, "rejected")])
            # Never re-run before the last (healthy) hand-over: the rejection was posted.
            if attempt == 1:
                assert rig.github.reviews == [(41, 1, "rejected")]

    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(play(Path(tmp)))
