"""Seventh review (fresh eyes on the GitHub event on the card and the opt-in GitHub rule; docs/security.md,
"Seventh review"). One test per attack, named after it, asserting the refusal the product gives.

Played: a branch or tag whose *name* reads, under the proven block's lock label, as ``refs/heads/main`` or
as a second ``*Started by:* push`` line (Unicode look-alikes, and full-width ``＊``/``：`` and no-break spaces
that the card's NFKC normalisation turns into mrkdwn bold, a colon and spaces); a policy ``events`` entry the
event grammar can never match.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from keyturn.signer import contract
from keyturn.signer import evidence as ev
from keyturn.signer.github_app import Arrival
from keyturn.signer.github_approver import Approver
from keyturn.signer.policy import Policy, PolicyError
from keyturn.signer.receipt import Scope
from tests.gate_fixtures import mint_receipt
from tests.test_review_findings_5 import _ask
from tests.test_review_findings_5 import _policy as oidc_policy
from tests.test_review_findings_card import (
    MAIN_ONLY,
    NOW,
    OPEN,
    _approve,
    _arrival,
    _card,
    _origin,
    _proven_texts,
    _refusal,
    _webhook,
)
from tests.test_review_findings_oidc_github import (
    GH_SHA,
    WEBHOOK_SECRET,
    WORKFLOW,
    SlowGitHub,
    _approver,
    _deliver,
)

# "main" with a Cyrillic а (U+0430): a branch anyone with push access can create, drawn as main.
LOOKALIKE_MAIN = "refs/heads/m\u0430in"
# A tag whose name, after NFKC (＊ -> *, ： -> :, no-break space -> space), is the proven block's own line.
FORGED_LINE = "refs/tags/v1\u00a0\uff0aStarted\u00a0by\uff1a\uff0a\u00a0push"


def test_attack_a_branch_spelled_like_main_reads_as_a_push_to_main_under_the_lock() -> None:
    """A push to a branch named ``mаin`` (Cyrillic а) in an environment without ``[environments.<name>.
    github]`` (the approvers are the check): the proven block showed ``*Ref:* refs/heads/mаin`` and
    ``*Started by:* push`` under ":lock: From GitHub's signed webhook (checked by Keyturn's signer)", a push
    to main to any reader, and the receipt followed. A proven ref the card cannot show as written is
    ``bad_origin``, at arrival, when the bot reads the claim, and at signing."""
    body = _webhook("push", LOOKALIKE_MAIN)
    origin = _origin(body)
    assert _refusal(lambda: _arrival(body, OPEN)) == "bad_origin"
    assert _refusal(lambda: ev.origin_claim(origin, OPEN)) == "bad_origin"
    assert _refusal(lambda: _approve(origin, [])) == "bad_origin"


def test_attack_a_tag_name_forges_a_started_by_push_line_in_the_proven_block() -> None:
    """A ``release`` run of a tag named ``v1␣＊Started␣by：＊␣push`` (no-break spaces): NFKC made it
    ``*Started by:* push`` in bold inside the *Ref* element, so the proven block read "Started by: push"
    before its real "Started by: release" line. Refused as ``bad_origin``."""
    body = _webhook("release", FORGED_LINE)
    origin = _origin(body)
    assert _refusal(lambda: _arrival(body, OPEN)) == "bad_origin"
    assert _refusal(lambda: _approve(origin, [])) == "bad_origin"


def test_attack_an_oidc_token_ref_forges_a_started_by_line() -> None:
    """The same through an OIDC token's ``ref`` (its proven block shows the ref the same way), even where
    the branch rule would refuse it anyway: the card's grammar comes first. (A no-break space was already
    refused as an unprintable claim, ``oidc_claim_missing``; full-width markup and look-alikes were not.)"""
    policy = oidc_policy("github")
    assert _refusal(lambda: _ask("github", policy, ref=FORGED_LINE)) == "oidc_claim_missing"
    assert _refusal(lambda: _ask("github", policy, ref=LOOKALIKE_MAIN)) == "bad_origin"
    assert _refusal(lambda: _ask("github", policy, ref="refs/heads/\uff0amain\uff0a")) == "bad_origin"


@pytest.mark.parametrize(
    "ref",
    [
        "refs/heads/main",
        "refs/heads/release/v1.2",
        "refs/tags/v1.2.3-rc.1",
        "refs/pull/123/merge",
        "refs/heads/feature_x",
        "refs/heads/gh-readonly-queue/main/pr-123-47efb71",
    ],
)
def test_an_ordinary_ref_is_shown_as_written(ref: str) -> None:
    """Refs as GitHub and GitLab write them pass and are shown verbatim under the lock label."""
    origin = _origin(_webhook("push", ref))
    assert f"*Ref:* {ref}" in _proven_texts(_card(origin))


@settings(max_examples=120, deadline=None)
@given(ref=st.text(max_size=30).map(lambda s: "refs/heads/" + s))
@example(ref=LOOKALIKE_MAIN)
@example(ref="refs/heads/_main_")
@example(ref="refs/heads/`main`")
def test_a_proven_ref_is_shown_exactly_as_written_or_refused(ref: str) -> None:
    """Property: whatever the webhook's ``ref``, the proven block shows it byte for byte (no normalisation,
    no markup) or the origin is ``bad_origin``."""
    origin = _origin(_webhook("push", ref))
    if not contract.REF_RE.match(ref):
        assert _refusal(lambda: ev.origin_claim(origin, OPEN)) == "bad_origin"
        return
    claim = ev.origin_claim(origin, OPEN)
    assert f"*Ref:* {claim.ref}" in _proven_texts(_card(origin))
    assert claim.ref == ref


def test_the_branch_rule_still_refuses_the_look_alike_first_or_the_grammar_does() -> None:
    """Under ``branches = ["main"]`` the look-alike never asks either way (exact comparison, or grammar)."""
    body = _webhook("push", LOOKALIKE_MAIN)
    assert _refusal(lambda: _arrival(body, MAIN_ONLY)) in {"bad_origin", "github_branch_not_allowed"}


# --- the policy's event names ---------------------------------------------------------------------------


def _github_table(events: list[str]) -> dict[str, object]:
    return {
        "version": 1,
        "environments": {
            "production": {
                "channel": "C0DEPLOYS",
                "approvers": ["U0ALICE"],
                "required_approvals": 1,
                "request_ttl": "30m",
                "receipt_ttl": "15m",
                "github": {"branches": ["main"], "events": events},
            }
        },
    }


@pytest.mark.parametrize("event", ["deploy2", "pull__request", "push_", "push extra"])
def test_a_policy_event_no_job_can_carry_is_invalid_policy(event: str) -> None:
    """``events = ["deploy2"]`` was accepted, yet no origin's event can match it (``contract.EVENT_RE``
    refuses such an event as ``bad_origin``): an operator believed a rule that admits nothing. Refused at
    load with the grammar in the message, for the github table and the oidc one alike."""
    with pytest.raises(PolicyError) as exc:
        Policy.from_data(_github_table([event]))
    assert exc.value.code == "invalid_policy"
    assert "lowercase words joined by single '_'" in str(exc.value)


def test_every_event_the_card_grammar_takes_is_a_valid_policy_event() -> None:
    assert Policy.from_data(_github_table(["pull_request_target", "push"])).environments


# --- the receipt names a scope, not the run whose card the approvers read ----------------------------------


PUSH, PRT = _webhook("push", run_id=42), _webhook("pull_request_target", run_id=43)


def _arrival_at_signer(body: bytes, delivery: str, timestamp: str = str(NOW)) -> Arrival:
    """The signer's arrival stamp of ``body`` (what its ``check_github`` answers the bot), as the hand-off
    names it."""
    return Arrival(timestamp, ev.github_stamp(WEBHOOK_SECRET, body, delivery, timestamp), WORKFLOW)


def _receipt_of(origin: ev.GitHubEvidence) -> bytes:
    """A genuine receipt of the request opened from ``origin`` (its quorum met)."""
    return mint_receipt(
        Scope("acme/web", GH_SHA, "production", WORKFLOW), request_id=ev.request_id_for(origin)
    )


PUSH_RECEIPT = _receipt_of(_origin(PUSH))  # the push run's request: delivery-42, stamped at NOW
PUSH_ARRIVAL = _arrival_at_signer(PUSH, "delivery-42")


async def _hand_over(
    run_id: int, receipt: bytes, arrival: Arrival, tmp_path: Path
) -> tuple[int, str | None, list[int]]:
    """Both runs wait at a fresh approver (their webhooks forwarded by the bot, the pull request's without the
    signer's arrival check); the bot hands ``receipt`` and ``arrival`` to run ``run_id``: the approver's
    status and code, and the runs GitHub was told to approve."""
    github = SlowGitHub(delay=0.0)
    async with httpx.AsyncClient(transport=httpx.MockTransport(github)) as client:
        approver = _approver(tmp_path, client)
        assert await _deliver(approver, PUSH, "delivery-42") == (200, None)
        assert await _deliver(approver, PRT, "delivery-43") == (200, None)
        answer = await approver.approve((run_id, "production"), receipt, arrival)
    return answer.status_code, json.loads(bytes(answer.body)).get("error"), github.approved


async def test_attack_a_push_runs_receipt_approves_a_pull_request_target_run_of_the_same_scope(
    tmp_path: Path,
) -> None:
    """A ``push`` run of main and a ``pull_request_target`` run (a fork's pull request: ``sha`` and workflow
    are main's, so the scope is the same) wait at the approver. The approvers read "*Started by:* push" on
    the push run's card (and an ``[environments.<name>.github]`` rule, checked on that request's origin,
    passes it); a compromised bot hands the receipt to the pull request's run instead, whose webhook it
    forwarded to the approver without the signer's arrival check. The approver checked the scope and that the
    request approved no other run, not that the request was opened for this run: approved. Now it recomputes
    the request's id from the webhook it kept for the run: the push run's arrival stamp is not the pull
    request's webhook's (``receipt_not_for_run``), nothing posted."""
    assert await _hand_over(43, PUSH_RECEIPT, PUSH_ARRIVAL, tmp_path) == (409, "receipt_not_for_run", [])


async def test_attack_the_pull_request_runs_own_arrival_stamp_with_the_push_runs_receipt(
    tmp_path: Path,
) -> None:
    """The same with a genuine arrival stamp of the pull request's webhook (the bot had the signer check it,
    as for any run): the stamp passes, the request id recomputed from it is not the receipt's."""
    arrival = _arrival_at_signer(PRT, "delivery-43")
    assert await _hand_over(43, PUSH_RECEIPT, arrival, tmp_path) == (409, "receipt_not_for_run", [])


async def test_the_push_runs_receipt_approves_the_push_run(tmp_path: Path) -> None:
    """The honest hand-off: the receipt of the run's own request, with its webhook's arrival, approves it."""
    assert await _hand_over(42, PUSH_RECEIPT, PUSH_ARRIVAL, tmp_path) == (200, None, [42])


_TAMPERED = st.one_of(
    st.tuples(st.just("timestamp"), st.from_regex(r"\A[0-9]{1,12}\Z"), st.booleans()),
    st.tuples(st.just("stamp"), st.from_regex(r"\A[0-9a-f]{64}\Z"), st.just(False)),
    st.tuples(st.just("workflow"), st.from_regex(contract.WORKFLOW_RE), st.just(False)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(run_id=st.sampled_from([42, 43]), tamper=_TAMPERED)
@example(run_id=42, tamper=("timestamp", str(NOW + 1), True))  # re-stamped by the signer a second later
@example(run_id=42, tamper=("timestamp", "0" + str(NOW), False))  # the same time, spelled otherwise
@example(run_id=42, tamper=("workflow", ".github/workflows/other.yml", False))
async def test_no_other_runs_receipt_and_no_tampered_arrival_approves_a_run(
    tmp_path: Path, run_id: int, tamper: tuple[str, str, bool]
) -> None:
    """Property: the push run's receipt with its arrival altered in any field (a timestamp the signer even
    stamped anew, ``restamp``), handed to either waiting run, is refused ``receipt_not_for_run``, nothing
    posted; unaltered, it approves the push run only."""
    field, value, restamp = tamper
    arrival = dataclasses.replace(PUSH_ARRIVAL, **{field: value})
    if restamp:
        arrival = _arrival_at_signer(PUSH, "delivery-42", value)
    if arrival == PUSH_ARRIVAL:
        expected = (200, None, [42]) if run_id == 42 else (409, "receipt_not_for_run", [])
    else:
        expected = (409, "receipt_not_for_run", [])
    assert await _hand_over(run_id, PUSH_RECEIPT, arrival, tmp_path) == expected


async def test_a_run_kept_without_its_webhook_body_is_never_approved(tmp_path: Path) -> None:
    """A run an earlier approver kept (its state file has no webhook body) cannot be bound to a request:
    refused ``receipt_not_for_run`` even with its own receipt, nothing posted (fail closed; the upgrade note
    says to drain pending runs). The body survives a restart otherwise."""
    github = SlowGitHub(delay=0.0)
    state = tmp_path / "approver-state.json"
    async with httpx.AsyncClient(transport=httpx.MockTransport(github)) as client:
        first = _approver(tmp_path, client)
        first.state_file = state
        assert await _deliver(first, PUSH, "delivery-42") == (200, None)
        assert Approver(first.s, first.api, first.now, state).runs[(42, "production")].body is not None
        old = json.loads(state.read_bytes())
        for run in old["runs"]:
            del run["body"]
        state.write_text(json.dumps(old))
        again = Approver(first.s, first.api, first.now, state)  # a restart onto the earlier file
        answer = await again.approve((42, "production"), PUSH_RECEIPT, PUSH_ARRIVAL)
    assert (answer.status_code, json.loads(bytes(answer.body))["error"]) == (409, "receipt_not_for_run")
    assert github.approved == []
