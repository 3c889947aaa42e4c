"""Attacker-minded review of issues 11 (OIDC-proven CI requests) and 12 (the GitHub deployment protection
rule), and of ``record_outcome``: one test per attack, named after it, asserting the refusal the product
gives. Each was first committed as ``xfail(strict=True)`` (the product did not refuse), then fixed.

Attackers played: a hostile CI job of the same repository (a token of its own, for another environment, run
or commit), a compromised bot (holding every token and receipt it was ever shown, but no secret and no App
key), and a compromised Redis (the same as the bot).
"""

from __future__ import annotations

import asyncio
import functools
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyturn.emulator.echo import echo_view
from keyturn.emulator.oidc import Job
from keyturn.signer import card, github_app, oidc, wire
from keyturn.signer import evidence as ev
from keyturn.signer.errors import KeyturnError
from keyturn.signer.gate import load_keyset
from keyturn.signer.github_app import Arrival
from keyturn.signer.github_approver import Approver, GitHubApi, Settings
from keyturn.signer.policy import Policy
from keyturn.signer.receipt import Scope
from tests.e2e.test_oidc import OidcStack, oidc_stack, ostack  # noqa: F401 (fixtures)
from tests.e2e.test_oidc import body_for as e2e_body_for
from tests.gate_fixtures import mint_receipt, write_keyset
from tests.oidc_tokens import claims_for, genuine
from tests.signer.conftest import (
    CI_SECRET,
    OTHER_SHA,
    SHA,
    SLACK_SECRET,
    TEAM,
    as_evidence,
    at,
    ci_origin,
    ci_request_body,
    click,
    click_body,
    rid_of,
)
from tests.signer.conftest import POLICY as CI_POLICY
from tests.signer.test_oidc import ISSUERS, KEY, NOW, POLICY, POLICY_TOML, body_for

SECRETS = ev.Secrets(SLACK_SECRET, "unused-ci-secret-0123456789abcdef")

# --- record_outcome: an OIDC cancel must come from the job that asked -------------------------------------


def _origin(job: Job | None = None) -> ev.OidcEvidence:
    """A production request made by ``job``'s token at NOW."""
    return ev.OidcEvidence(genuine(KEY, claims_for("github", NOW, job=job)), body_for({}))


def _cancel(origin: ev.OidcEvidence, cancel_token: str) -> ev.OutcomeAssessment:
    return ev.assess_outcome(
        policy=POLICY,
        secrets=SECRETS,
        request_id=ev.request_id_for(origin),
        outcome="cancelled",
        origin=origin,
        denial=None,
        cancel=ev.OidcCall(cancel_token),
        now=at(NOW + 120),
        oidc_issuers=ISSUERS,
    )


def _cancel_refusal(origin: ev.OidcEvidence, cancel_token: str) -> str:
    with pytest.raises(KeyturnError) as exc:
        _cancel(origin, cancel_token)
    return str(exc.value.code)


def test_a_fresh_token_of_the_job_that_asked_cancels_its_request() -> None:
    """The legitimate cancel (a GitHub job asks for a new token; a GitLab job reuses its one) is recorded."""
    origin = _origin()
    done = _cancel(origin, genuine(KEY, claims_for("github", NOW + 60)))
    assert (done.outcome, done.by) == ("cancelled", "oidc:repo:acme/web:environment:production")


def test_a_staging_jobs_token_cannot_cancel_a_production_request_of_the_same_repository() -> None:
    """A job of the same repository running for *staging* (a lower bar: any branch may deploy there) held a
    token the signer accepted as the evidence of a production request's cancel: the request was closed on the
    record (``request_closed`` for its receipt) on the word of a job that never made it."""
    staging = genuine(KEY, claims_for("github", NOW + 60, job=Job(environment="staging")))
    assert _cancel_refusal(_origin(), staging) == "bad_cancel"


# One claim of the cancel token's job at a time differs from the requesting job's.
_OTHER_JOB = st.sampled_from(
    [
        {"environment": "staging"},
        {"environment": None},
        {"sha": "0" * 40},
        {"ref": "refs/heads/feature"},
        {"workflow": ".github/workflows/lint.yml"},
        {"actor": "mallory"},
        {"run_id": 1234567891},
        {"run_attempt": 2},
    ]
)


@settings(max_examples=30, deadline=None)
@given(other=_OTHER_JOB, later=st.integers(0, 25 * 60))
def test_a_token_of_any_other_job_cannot_cancel_an_oidc_request(other: dict[str, Any], later: int) -> None:
    job = Job()
    job.update(other)
    token = genuine(KEY, claims_for("github", NOW + later, job=job))
    assert _cancel_refusal(_origin(), token) == "bad_cancel"


def test_through_the_bot_a_staging_jobs_token_cannot_cancel_a_production_request(
    ostack: OidcStack,  # noqa: F811 (the fixture)
) -> None:
    """Real processes: the bot refuses the other job's cancel itself (403 ``bad_cancel``) rather than close
    the request on its word, and the request still waits; the job that asked cancels it."""
    token = ostack.token()
    resp = ostack.post_oidc(token, e2e_body_for(token))
    assert resp.status_code == 202, resp.text
    rid = resp.json()["requestId"]
    ostack.job(environment="staging")
    other = ostack.http.post(
        f"{ostack.bot_url}/v1/requests/{rid}/cancel", headers={"Authorization": f"Bearer {ostack.token()}"}
    )
    assert (other.status_code, other.json()["error"]) == (403, "bad_cancel")
    assert ostack.get(f"/v1/requests/{rid}").json()["status"] == "PENDING"
    ostack.job(environment="production")
    own = ostack.http.post(
        f"{ostack.bot_url}/v1/requests/{rid}/cancel", headers={"Authorization": f"Bearer {ostack.token()}"}
    )
    assert (own.status_code, own.json()["status"]) == (200, "CANCELLED")


# --- self-approval: who started this run attempt ---------------------------------------------------------

RERUN_POLICY = Policy.from_bytes(
    POLICY_TOML.replace(
        '"github:alice" = "U0ALICE"', '"github:alice" = "U0ALICE"\n"github:bob" = "U0BOB"'
    ).encode()
)


def test_an_approver_who_re_ran_someone_elses_deploy_cannot_approve_it() -> None:
    """GitHub's ``actor`` is who started the run's *first* attempt; ``triggering_actor`` who started this one.
    Bob, an approver of production, re-runs a deploy run alice once started (an old commit of hers, say):
    the token says ``actor: alice``, ``triggering_actor: bob``; the requester is ``github:alice``, so bob's
    own approval counts, and with ``required_approvals = 1`` he deploys alone what he alone asked for."""
    token = genuine(KEY, claims_for("github", NOW, triggering_actor="bob", run_attempt="2"))
    origin = wire.OidcOrigin(token=token, body=body_for({}))
    c = click(NOW + 30, click_body(origin, "U0BOB", policy=RERUN_POLICY))
    with pytest.raises(KeyturnError) as exc:
        ev.assess(
            policy=RERUN_POLICY,
            secrets=SECRETS,
            request_id=rid_of(origin),
            origin=ev.OidcEvidence(token, origin.body),
            clicks=[ev.SlackEvidence(c.body, c.timestamp, c.signature)],
            emails={},
            now=at(NOW + 60),
            oidc_issuers=ISSUERS,
        )
    assert exc.value.code == "self_approval"


def test_through_the_bot_the_approver_who_re_ran_the_run_is_refused_and_another_approves(
    ostack: OidcStack,  # noqa: F811 (the fixture)
) -> None:
    """Real processes: bob re-ran alice's run; the bot refuses his click at once ("you requested this
    deploy", as the signer would), and carol's approval gets the receipt."""
    ostack.job(triggering_actor="bob", run_attempt=2)
    token = ostack.token()
    resp = ostack.post_oidc(token, e2e_body_for(token))
    assert resp.status_code == 202, resp.text
    req = ostack.card(resp.json()["requestId"])
    since = len(ostack.emulator.calls())
    ostack.click("U0BOB", req)
    call = ostack.emulator.wait_for("chat.postEphemeral", since=since, user="U0BOB")
    assert "requested this deploy" in json.dumps(call["params"])
    assert ostack.get(f"/v1/requests/{req['requestId']}").json()["approvalsCount"] == 0
    ostack.click("U0CAROL", req)
    assert ostack.wait_status(req["requestId"], "APPROVED")["requester"] == "github:alice"


# --- record_outcome: the CI secret cannot close a request where the policy refuses the CI secret ---------


def test_the_ci_secret_cannot_cancel_a_request_where_the_policy_refuses_it() -> None:
    """Production takes only OIDC-proven requests (``ci_secret = false``): the shared secret of the other CI
    systems may not ask for it. It could still *cancel* any production request, on the record: a holder of
    the secret (any job of any repository configured with it) closed production deploys for good."""
    origin = _origin()
    rid = ev.request_id_for(origin)
    path = f"/v1/requests/{rid}/cancel"
    ts = str(NOW + 60)
    mac = ev.ci_signature(CI_SECRET, "POST", path, b"", ts)
    with pytest.raises(KeyturnError) as exc:
        ev.assess_outcome(
            policy=POLICY,
            secrets=ev.Secrets(SLACK_SECRET, CI_SECRET),
            request_id=rid,
            outcome="cancelled",
            origin=origin,
            denial=None,
            cancel=ev.CiEvidence("POST", path, b"", ts, mac),
            now=at(NOW + 120),
            oidc_issuers=ISSUERS,
        )
    assert exc.value.code == "ci_secret_not_allowed"


def test_through_the_bot_the_ci_secret_cannot_cancel_an_oidc_only_request(
    ostack: OidcStack,  # noqa: F811 (the fixture)
) -> None:
    token = ostack.token()
    resp = ostack.post_oidc(token, e2e_body_for(token))
    assert resp.status_code == 202, resp.text
    rid = resp.json()["requestId"]
    cancel = ostack.post(f"/v1/requests/{rid}/cancel", b"")
    assert (cancel.status_code, cancel.json()["error"]) == (403, "ci_secret_not_allowed")
    assert ostack.get(f"/v1/requests/{rid}").json()["status"] == "PENDING"


# --- claims -> workflow: two different workflows never map to one name ---------------------------------

_SEGMENT = st.text(alphabet="abcz09-_.", min_size=1, max_size=6).filter(lambda t: t not in {".", ".."})
_PATH = st.lists(_SEGMENT, min_size=1, max_size=4).map("/".join)


def _gitlab_workflow(project: str, config_project: str, config_path: str) -> str:
    ref_uri = f"gitlab.example.com/{config_project}//{config_path}@refs/heads/main"
    return oidc.workflow_path(ref_uri, project, "//", "ci_config_ref_uri")


def test_a_local_config_cannot_pass_for_the_central_one() -> None:
    """GitLab: the central deploy config ``.gitlab-ci.yml`` of project ``platform/ci`` (what production's
    gate names) and a file ``platform/ci/.gitlab-ci.yml`` inside ``acme/web`` itself (set as the project's CI
    config path) both mapped to the workflow ``platform/ci/.gitlab-ci.yml``: the project's own file passed for
    the central one in the receipt."""
    central = _gitlab_workflow("acme/web", "platform/ci", ".gitlab-ci.yml")
    local = _gitlab_workflow("acme/web", "acme/web", "platform/ci/.gitlab-ci.yml")
    assert central != local


@settings(max_examples=100, deadline=None)
@given(project=_PATH, other=_PATH, path=_PATH)
def test_no_local_gitlab_config_maps_to_another_projects_config(project: str, other: str, path: str) -> None:
    """Property: another project's config never maps to the name of a file of the project itself."""
    if other != project:
        assert _gitlab_workflow(project, other, path) != _gitlab_workflow(project, project, f"{other}/{path}")


_REPO = st.tuples(_SEGMENT, _SEGMENT).map("/".join)


@settings(max_examples=100, deadline=None)
@given(repo=_REPO, other=_REPO, own=_SEGMENT, foreign=_SEGMENT)
def test_no_own_github_workflow_maps_to_a_reusable_one(repo: str, other: str, own: str, foreign: str) -> None:
    """Property (GitHub keeps workflows in ``.github/workflows/``): a repository's own workflow never maps to
    the name of a reusable workflow from another repository."""

    def name(source: str, file: str) -> str:
        ref = f"{source}/.github/workflows/{file}@refs/heads/main"
        return oidc.workflow_path(ref, repo, "/", "job_workflow_ref")

    if other != repo:
        assert name(repo, own) != name(other, foreign)


# --- record_outcome: a denial is of the request whose deny form the approver saw -----------------------

# Two pending requests: A, the one approver bob means to deny, and B, the one a compromised bot wants closed.
B_SCOPE = Scope("acme/web", OTHER_SHA, "production", "deploy.yml")
A_SCOPE = Scope("acme/web", SHA, "production", "deploy.yml")
B_ORIGIN = ci_origin(NOW + 1, ci_request_body(B_SCOPE))
A_ORIGIN = ci_origin(NOW, ci_request_body(A_SCOPE))


def _deny_view(rid: str, scope: Scope) -> dict[str, Any]:
    """The deny form of request ``rid`` as Slack echoes it in the submission (what bob saw)."""
    return echo_view(card.render_deny_view(rid, scope))


def _submitted(view: dict[str, Any], user: str = "U0BOB", reason: str = "tests are red") -> ev.SlackEvidence:
    view = {**view, "state": {"values": {card.REASON_BLOCK: {card.REASON_ACTION: {"value": reason}}}}}
    payload = {"type": "view_submission", "team": {"id": TEAM}, "user": {"id": user}, "view": view}
    body = urlencode({"payload": json.dumps(payload)})
    ts = str(NOW + 30)
    return ev.SlackEvidence(body, ts, ev.slack_signature(SLACK_SECRET, body, ts))


def _record_denial(origin: Any, denial: ev.SlackEvidence) -> ev.OutcomeAssessment:
    evid = as_evidence(origin)
    return ev.assess_outcome(
        policy=CI_POLICY,
        secrets=ev.Secrets(SLACK_SECRET, CI_SECRET),
        request_id=ev.request_id_for(evid),
        outcome="denied",
        origin=evid,
        denial=denial,
        cancel=None,
        now=at(NOW + 60),
    )


def _denial_refusal(origin: Any, denial: ev.SlackEvidence) -> str:
    with pytest.raises(KeyturnError) as exc:
        _record_denial(origin, denial)
    return str(exc.value.code)


def test_a_deny_form_of_this_request_records_the_denial() -> None:
    done = _record_denial(B_ORIGIN, _submitted(_deny_view(rid_of(B_ORIGIN), B_SCOPE)))
    assert (done.outcome, done.by, done.reason) == ("denied", "slack:U0BOB", "tests are red")


def _a_form_for_b() -> dict[str, Any]:
    # The bot answers bob's Deny click on A's card with A's form, but B's id in private_metadata.
    return {**_deny_view(rid_of(A_ORIGIN), A_SCOPE), "private_metadata": rid_of(B_ORIGIN)}


def _approve_dialog_for_b() -> dict[str, Any]:
    # The bot answers bob's *Approve* click with a "confirm with a comment" dialog: a deny form of B inside.
    view = _deny_view(rid_of(B_ORIGIN), B_SCOPE)
    return {
        **view,
        "title": {"type": "plain_text", "text": "Approve deploy", "emoji": True},
        "submit": {"type": "plain_text", "text": "Approve", "emoji": True},
    }


def _deny_form_with_a_note_for_b() -> dict[str, Any]:
    view = _deny_view(rid_of(B_ORIGIN), B_SCOPE)
    note = {
        "type": "section",
        "block_id": "note",
        "text": {"type": "mrkdwn", "text": "This only snoozes the request for an hour."},
    }
    return {**view, "blocks": [note, *view["blocks"]]}


def _deny_form_without_blocks_for_b() -> dict[str, Any]:
    return {**_deny_view(rid_of(B_ORIGIN), B_SCOPE), "blocks": []}


@pytest.mark.parametrize(
    "view",
    [_a_form_for_b, _approve_dialog_for_b, _deny_form_with_a_note_for_b, _deny_form_without_blocks_for_b],
)
def test_a_compromised_bot_cannot_record_a_denial_the_approver_did_not_see(view: Any) -> None:
    """The deny form is the bot's to open (Slack lets any interaction of bob's open a modal), and the signer
    checked only its ``callback_id`` and ``private_metadata``: a bot could answer bob's Deny on request A
    (or his Approve, under an "Approve" title) with a form of request B, and the audit log said bob denied B,
    with his words, closing B for good (``request_closed``). The form must be the one the trust core renders
    for B: B's scope and id, "Deny", nothing else."""
    assert _denial_refusal(B_ORIGIN, _submitted(view())) == "deny_form_mismatch"


# --- a GitHub-origin request's requester: the run's sender, or no request -------------------------------

GH_POLICY = Policy.from_data(
    {
        "version": 1,
        "slack": {"team_id": TEAM},
        "identities": {"github:alice_acme": "U0ALICE"},
        "environments": {
            "production": {
                "channel": "C0DEPLOYS",
                "approvers": ["U0ALICE", "U0BOB"],
                "required_approvals": 1,
                "request_ttl": "30m",
                "receipt_ttl": "15m",
            }
        },
    }
)


def _github_origin(sender: object) -> ev.GitHubEvidence:
    """A webhook of run 42, signed by GitHub, triggered by ``sender`` (absent when None), stamped at NOW."""
    doc = json.loads(_webhook(42))
    if sender is None:
        del doc["sender"]
    else:
        doc["sender"] = {"login": sender, "id": 5}
    body = json.dumps(doc).encode()
    stamp = ev.github_stamp(WEBHOOK_SECRET, body, "delivery-42", str(NOW))
    sig = github_app.webhook_signature(WEBHOOK_SECRET, body)
    return ev.GitHubEvidence(body, "delivery-42", sig, WORKFLOW, str(NOW), stamp)


def _approve_github(origin: ev.GitHubEvidence, user: str) -> ev.Assessment:
    rid = ev.request_id_for(origin)
    facts = ev.card_facts(rid, ev.origin_claim(origin, GH_POLICY), origin, GH_POLICY)
    blocks = card.render_pending(
        facts,
        environments=["production"],
        confirm=GH_POLICY.environment("production").confirm_approve,
        approvals="0 of 1",
        expires="14:05 UTC (in 25m)",
    )
    body = click_body(A_ORIGIN, user, message={"type": "message", "blocks": blocks}, value=rid)
    ts = str(NOW + 30)
    return ev.assess(
        policy=GH_POLICY,
        secrets=ev.Secrets(SLACK_SECRET, CI_SECRET, github_webhook_secret=WEBHOOK_SECRET),
        request_id=rid,
        origin=origin,
        clicks=[ev.SlackEvidence(body, ts, ev.slack_signature(SLACK_SECRET, body, ts))],
        emails={},
        now=at(NOW + 60),
    )


def test_another_approver_approves_a_github_run() -> None:
    assert _approve_github(_github_origin("alice_acme"), "U0BOB").requester == "github:alice_acme"


def test_a_managed_user_cannot_approve_the_run_she_triggered() -> None:
    """Enterprise Managed Users' logins hold an underscore (``alice_acme``). The webhook's login grammar had
    none, so the run's sender was dropped and the requester became ``github:unknown``, which maps to no one:
    alice approved the deploy of the run she triggered herself."""
    with pytest.raises(KeyturnError) as exc:
        _approve_github(_github_origin("alice_acme"), "U0ALICE")
    assert exc.value.code == "self_approval"


@pytest.mark.parametrize("sender", [None, "", "alice acme", "<@U0BOB>", 5])
def test_a_webhook_without_a_readable_sender_opens_no_request(sender: object) -> None:
    """Who triggered the run is the requester the self-approval rule needs: without it, no request."""
    with pytest.raises(KeyturnError) as exc:
        ev.origin_claim(_github_origin(sender), GH_POLICY)
    assert exc.value.code == "bad_origin"


@settings(max_examples=60, deadline=None)
@given(login=st.text(alphabet=st.sampled_from("aZ09-_.[]@ <>:\u00e9"), max_size=12))
def test_a_github_requester_is_the_sender_exactly_or_there_is_no_request(login: str) -> None:
    """Property: whatever the sender's login, the requester is ``github:<that login>`` or nothing at all."""
    if github_app._LOGIN_RE.match(login):
        assert ev.origin_claim(_github_origin(login), GH_POLICY).requester == f"github:{login}"
    else:
        with pytest.raises(KeyturnError) as exc:
            ev.origin_claim(_github_origin(login), GH_POLICY)
        assert exc.value.code == "bad_origin"


# --- the GitHub approver: one request approves one run, even raced --------------------------------------

WORKFLOW = ".github/workflows/deploy.yml"
WEBHOOK_SECRET = "webhook-secret-for-tests"
GH_SHA = SHA


def _webhook(run_id: int, deployment_id: int | None = None) -> bytes:
    return json.dumps(
        {
            "action": "requested",
            "environment": "production",
            "event": "push",
            "ref": "refs/heads/main",
            "sha": GH_SHA,
            "deployment_callback_url": (
                f"https://api.github.com/repos/acme/web/actions/runs/{run_id}/deployment_protection_rule"
            ),
            "deployment": {"id": deployment_id or 1000 + run_id, "sha": GH_SHA, "environment": "production"},
            "repository": {"full_name": "acme/web"},
            "installation": {"id": 7},
            "sender": {"login": "alice"},
        }
    ).encode()


class SlowGitHub:
    """GitHub's API as the approver uses it, answering every read at once and each review after ``delay``:
    the window in which a hostile bot's second approval call arrives."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.approved: list[int] = []
        self.attempts: dict[int, int] = {}  # run id -> its run_attempt (1 unless a test re-runs it)

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/access_tokens"):
            return httpx.Response(201, json={"token": "ghs_test"})
        if "/deployments/" in path:
            dep = int(path.rsplit("/", 1)[1])
            return httpx.Response(200, json={"id": dep, "sha": GH_SHA, "environment": "production"})
        if path.endswith("/deployment_protection_rule"):
            await asyncio.sleep(self.delay)
            if json.loads(request.content).get("state") == "approved":
                self.approved.append(int(path.split("/")[6]))
            return httpx.Response(204)
        run_id = int(path.rsplit("/", 1)[1])
        run = {"id": run_id, "head_sha": GH_SHA, "path": WORKFLOW, "repository": {"full_name": "acme/web"}}
        run["run_attempt"] = self.attempts.get(run_id, 1)
        return httpx.Response(200, json=run)


@functools.cache  # one 2048-bit key per test process: generating it dominated the approver's tests
def _app_key() -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _approver(tmp_path: Path, client: httpx.AsyncClient) -> Approver:
    settings_ = Settings(
        api_url="https://api.github.test",
        app_id="1",
        app_key_pem=_app_key(),
        webhook_secret=WEBHOOK_SECRET,
        keyset=load_keyset(str(write_keyset(tmp_path)), trust_keys_in_checkout=True),
        environments=frozenset({"production"}),
    )
    return Approver(settings_, GitHubApi(settings_, client), lambda: datetime.now(UTC))


async def _deliver(approver: Approver, body: bytes, delivery: str) -> tuple[int, str | None]:
    headers = {
        "X-GitHub-Event": github_app.EVENT,
        "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": github_app.webhook_signature(WEBHOOK_SECRET, body),
    }
    answer = await approver.webhook(headers, body)
    return answer.status_code, json.loads(bytes(answer.body)).get("error")


ARRIVED = "1790000000"  # when the signer stamped a webhook's arrival, in these tests


def arrival_of(body: bytes, delivery: str, workflow: str = WORKFLOW, timestamp: str = ARRIVED) -> Arrival:
    """What the bot's hand-off names for webhook ``body`` (``delivery``): the signer's arrival stamp."""
    return Arrival(timestamp, ev.github_stamp(WEBHOOK_SECRET, body, delivery, timestamp), workflow)


def bound_receipt(body: bytes, delivery: str) -> tuple[bytes, Arrival]:
    """A receipt of the request opened from webhook ``body`` (``delivery``), and the arrival the bot's
    hand-off names with it: what the approver approves that run with."""
    arrival = arrival_of(body, delivery)
    sig = github_app.webhook_signature(WEBHOOK_SECRET, body)
    origin = ev.GitHubEvidence(body, delivery, sig, WORKFLOW, arrival.timestamp, arrival.stamp)
    scope = Scope("acme/web", GH_SHA, "production", WORKFLOW)
    return mint_receipt(scope, request_id=ev.request_id_for(origin)), arrival


# Run 41's request (webhook "delivery-41"): the receipt a compromised bot also holds for the scope.
RECEIPT, ARRIVAL = bound_receipt(_webhook(41), "delivery-41")


async def test_one_receipt_raced_at_two_waiting_runs_approves_only_one(tmp_path: Path) -> None:
    """A compromised bot holds one receipt for the scope of two waiting runs (a re-run, a second dispatch of
    the same commit). Sent to both at once, each approval passed the "request already approved a run" check
    before either had recorded itself (the lock is per run, the memory per request): both runs approved."""
    github = SlowGitHub(delay=0.2)
    async with httpx.AsyncClient(transport=httpx.MockTransport(github)) as client:
        approver = _approver(tmp_path, client)
        for run_id in (41, 42):
            assert await _deliver(approver, _webhook(run_id), f"delivery-{run_id}") == (200, None)
        answers = await asyncio.gather(
            approver.approve((41, "production"), RECEIPT, ARRIVAL),
            approver.approve((42, "production"), RECEIPT, ARRIVAL),
        )
    outcomes = sorted((a.status_code, json.loads(bytes(a.body)).get("error")) for a in answers)
    assert outcomes == [(200, None), (409, "receipt_spent")]
    assert len(github.approved) == 1


class LostAnswers(SlowGitHub):
    """GitHub applies every review of run 41, but its answers never arrive (a timeout, a reset connection)."""

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        answer = await super().__call__(request)
        if request.url.path.endswith("/41/deployment_protection_rule"):
            raise httpx.ReadTimeout("the answer was lost", request=request)
        return answer


async def test_a_receipt_whose_approval_answer_was_lost_cannot_approve_a_second_run(tmp_path: Path) -> None:
    """The approval of run 41 reached GitHub, but its answer did not (502 to the bot): the approver gave the
    request back as unspent, so a compromised bot's second try with the same receipt at run 42 (same
    scope) approved that run too. Fail closed: a request stays spent on the run it was sent for."""
    github = LostAnswers(delay=0.0)
    async with httpx.AsyncClient(transport=httpx.MockTransport(github)) as client:
        approver = _approver(tmp_path, client)
        for run_id in (41, 42):
            assert await _deliver(approver, _webhook(run_id), f"delivery-{run_id}") == (200, None)
        lost = await approver.approve((41, "production"), RECEIPT, ARRIVAL)
        assert (lost.status_code, json.loads(bytes(lost.body)).get("error")) == (502, "github_unavailable")
        second = await approver.approve((42, "production"), RECEIPT, ARRIVAL)
        assert (second.status_code, json.loads(bytes(second.body)).get("error")) == (409, "receipt_spent")
    assert set(github.approved) == {41}


async def test_an_old_webhook_under_a_new_delivery_id_cannot_approve_a_rerun_with_the_spent_receipt(
    tmp_path: Path,
) -> None:
    """``X-GitHub-Delivery`` is not covered by GitHub's signature. Run 41's first attempt (deployment 1041)
    was approved with request R. Its re-run (attempt 2, deployment 2041) waits for a quorum of its own; a
    compromised bot withholds that webhook and sends attempt 1's again under a fresh delivery id: the
    approver took it as new, marked run 41 waiting *as attempt 1*, and R, spent on attempt 1, approved it —
    GitHub's review endpoint is per run, so the approval released attempt 2 without any approval of it."""
    github = SlowGitHub(delay=0.0)
    async with httpx.AsyncClient(transport=httpx.MockTransport(github)) as client:
        approver = _approver(tmp_path, client)
        first = _webhook(41, deployment_id=1041)
        receipt, arrival = bound_receipt(first, "delivery-a1")
        assert await _deliver(approver, first, "delivery-a1") == (200, None)
        assert (await approver.approve((41, "production"), receipt, arrival)).status_code == 200
        # Attempt 2 now waits at GitHub; the bot shows the approver attempt 1's webhook again.
        assert await _deliver(approver, first, "delivery-forged") == (409, "replayed_delivery")
        again = await approver.approve((41, "production"), receipt, arrival)
        assert (again.status_code, json.loads(bytes(again.body)).get("error")) == (409, "already_decided")
        # The genuine webhook of attempt 2 opens the run again, and R does not approve it.
        assert await _deliver(approver, _webhook(41, deployment_id=2041), "delivery-a2") == (200, None)
        spent = await approver.approve((41, "production"), receipt, arrival)
        assert (spent.status_code, json.loads(bytes(spent.body)).get("error")) == (409, "receipt_spent")
    assert github.approved == [41]
