"""The fifth review's open risk, closed: the GitHub-origin card's event (docs/security.md, "Fifth review").
One test per attack, named after it, asserting the refusal the product gives.

Played: a run that is not a push to the branch — a ``pull_request_target`` run (a fork's pull request, run
with the base branch's ``ref``), a ``workflow_run`` run (started by another workflow's end), a run of another
branch — asking for production through the GitHub deployment protection rule; a webhook whose ``event``
holds markup; and a compromised bot posting a card without the line that names the event.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from starlette.requests import Request

from keyturn.bot.github import GitHubForwarder
from keyturn.emulator.echo import echo_blocks
from keyturn.signer import card, contract, github_app, wire
from keyturn.signer import evidence as ev
from keyturn.signer.errors import KeyturnError
from keyturn.signer.policy import Policy
from tests.signer.conftest import CI_SECRET, SLACK_SECRET, TEAM, at, click_body
from tests.test_review_findings_5 import EVENT, REF_BOUND, _ask, _event_claim
from tests.test_review_findings_5 import _policy as oidc_policy
from tests.test_review_findings_oidc_github import (
    A_ORIGIN,
    GH_SHA,
    WEBHOOK_SECRET,
    WORKFLOW,
    SlowGitHub,
    _approver,
)

NOW = 1_790_000_000
SECRETS = ev.Secrets(SLACK_SECRET, CI_SECRET, github_webhook_secret=WEBHOOK_SECRET)
APPROVALS, EXPIRES = "0 of 1", "14:05 UTC (in 25m)"


def _policy(github: dict[str, Any] | None = None) -> Policy:
    """Production with two approvers, one approval, and ``github`` as its ``[environments.production.github]``
    table (none: the table is absent, as in every install before it)."""
    production: dict[str, Any] = {
        "channel": "C0DEPLOYS",
        "approvers": ["U0ALICE", "U0BOB"],
        "required_approvals": 1,
        "request_ttl": "30m",
        "receipt_ttl": "15m",
    }
    if github is not None:
        production["github"] = github
    return Policy.from_data(
        {"version": 1, "slack": {"team_id": TEAM}, "environments": {"production": production}}
    )


MAIN_ONLY = _policy({"branches": ["main"]})
OPEN = _policy()


def _webhook(event: object = "push", ref: object = "refs/heads/main", run_id: int = 42) -> bytes:
    """GitHub's ``deployment_protection_rule`` webhook for run ``run_id`` of acme/web (``None``: the key is
    absent)."""
    doc: dict[str, Any] = {
        "action": "requested",
        "environment": "production",
        "event": event,
        "ref": ref,
        "sha": GH_SHA,
        "deployment_callback_url": (
            f"https://api.github.com/repos/acme/web/actions/runs/{run_id}/deployment_protection_rule"
        ),
        "deployment": {"id": 1000 + run_id, "sha": GH_SHA, "environment": "production"},
        "repository": {"full_name": "acme/web"},
        "installation": {"id": 7},
        "sender": {"login": "alice"},
    }
    for key in ("event", "ref"):
        if doc[key] is None:
            del doc[key]
    return json.dumps(doc).encode()


def _origin(body: bytes) -> ev.GitHubEvidence:
    """``body`` as the signer gets it back at signing: GitHub's signature, the signer's arrival stamp."""
    stamp = ev.github_stamp(WEBHOOK_SECRET, body, "delivery-42", str(NOW))
    sig = github_app.webhook_signature(WEBHOOK_SECRET, body)
    return ev.GitHubEvidence(body, "delivery-42", sig, WORKFLOW, str(NOW), stamp)


def _arrival(body: bytes, policy: Policy) -> github_app.Webhook:
    """The signer's ``check_github`` as the webhook arrives."""
    sig = github_app.webhook_signature(WEBHOOK_SECRET, body)
    return ev.check_github_webhook(WEBHOOK_SECRET, body, "delivery-42", sig, policy)


def _card(origin: ev.GitHubEvidence, policy: Policy = OPEN) -> list[dict[str, Any]]:
    """The card the bot posts for ``origin`` (rendered by the trust core), as Slack echoes it back."""
    facts = ev.card_facts(ev.request_id_for(origin), ev.origin_claim(origin, policy), origin, policy)
    blocks = card.render_pending(
        facts, environments=["production"], confirm=True, approvals=APPROVALS, expires=EXPIRES
    )
    return echo_blocks(blocks)


def _approve(origin: ev.GitHubEvidence, blocks: list[dict[str, Any]], policy: Policy = OPEN) -> ev.Assessment:
    """Bob clicks Approve on ``blocks``; the signer assesses the click for ``origin``."""
    rid = ev.request_id_for(origin)
    body = click_body(A_ORIGIN, "U0BOB", message={"type": "message", "blocks": blocks}, value=rid)
    ts = str(NOW + 30)
    return ev.assess(
        policy=policy,
        secrets=SECRETS,
        request_id=rid,
        origin=origin,
        clicks=[ev.SlackEvidence(body, ts, ev.slack_signature(SLACK_SECRET, body, ts))],
        emails={},
        now=at(NOW + 60),
    )


def _proven_texts(blocks: list[dict[str, Any]]) -> list[str]:
    """The texts of the card's proven block, as a person reads them top to bottom."""
    (block,) = [b for b in blocks if b.get("block_id") == card.PROVEN_BLOCK]
    return [e["text"] for e in block["elements"]]


def _refusal(call: Any) -> str:
    with pytest.raises(KeyturnError) as exc:
        call()
    return str(exc.value.code)


# --- the card names the event ------------------------------------------------------------------------------


def test_attack_a_pull_request_target_run_looks_like_a_push_to_main() -> None:
    """A ``pull_request_target`` run (a fork's pull request, run with main's ``ref`` and the base workflow)
    asked for production through the deployment protection rule; its card said only ``refs/heads/main``,
    under "Unverified", so the approvers saw a push to main. The card now names the event, with the ref and
    the run link, under the label of what proves them (GitHub's signed webhook); a card saying ``push``
    instead is refused at the click."""
    origin = _origin(_webhook("pull_request_target"))
    blocks = _card(origin)
    assert not [b for b in blocks if b.get("block_id") == card.UNVERIFIED_BLOCK]
    texts = _proven_texts(blocks)
    assert texts[0] == card.GITHUB_LABEL
    assert "*Started by:* pull_request_target" in texts
    assert "*Ref:* refs/heads/main" in texts
    assert _approve(origin, blocks).requester == "github:alice"
    disguised = json.loads(json.dumps(blocks).replace("pull_request_target", "push"))
    assert _refusal(lambda: _approve(origin, disguised)) == "card_mismatch"


def test_attack_a_bot_posts_the_card_without_the_started_by_line() -> None:
    """A compromised bot drops the "Started by" line from the card it posts (the approvers then guess the
    event from the ref); the signer renders the card from the signed webhook and refuses the click."""
    origin = _origin(_webhook("pull_request_target"))
    blocks = _card(origin)
    for block in blocks:
        if block.get("block_id") == card.PROVEN_BLOCK:
            block["elements"] = [e for e in block["elements"] if not e["text"].startswith(card.STARTED_BY)]
    assert _refusal(lambda: _approve(origin, blocks)) == "card_mismatch"


def test_attack_an_oidc_card_hides_the_event_of_the_job() -> None:
    """The same for an OIDC-proven request: the token's ``event_name`` is on the card, in its proven block."""
    claim = _ask("github", oidc_policy("github", ["pull_request_target"]), event_name="pull_request_target")
    facts = card.CardFacts(
        request_id="req_01KB0000000000000000000000",
        scope=claim.scope,
        requester=claim.requester,
        requester_user=None,
        origin_kind="oidc",
        ref=claim.ref,
        run_url=claim.run_url,
        event=claim.event,
    )
    blocks = card.render_pending(
        facts, environments=["production"], confirm=True, approvals=APPROVALS, expires=EXPIRES
    )
    assert _proven_texts(blocks)[0] == card.PROVEN_LABEL
    assert "*Started by:* pull_request_target" in _proven_texts(blocks)


HOSTILE_EVENTS = [
    "<!channel>",
    "push\n*Ref:* refs/heads/main",
    "push*",
    "Push",
    "push ",
    ":rocket:",
    "p" * 65,
    "",
    "pus\u200bh",
    "_push_",
    "pull__request",
]


@pytest.mark.parametrize("event", HOSTILE_EVENTS)
def test_attack_a_hostile_event_string_reaches_the_card(event: str) -> None:
    """The webhook's ``event`` is GitHub's word, but the card must never carry markup, a line break that
    forges a line, an emoji code, italics (``_push_``) or a long text from it: anything outside
    ``contract.EVENT_RE`` (lowercase words joined by single ``_``, at most 64 characters) is refused as
    ``bad_origin`` at arrival, when the bot reads the claim, at signing, and by the renderer itself."""
    body = _webhook(event)
    origin = _origin(body)
    assert _refusal(lambda: _arrival(body, OPEN)) == "bad_origin"
    assert _refusal(lambda: ev.origin_claim(origin, OPEN)) == "bad_origin"
    assert _refusal(lambda: _approve(origin, [])) == "bad_origin"
    facts = card.CardFacts(
        "req_01KB0000000000000000000000",
        ev.origin_claim(_origin(_webhook()), OPEN).scope,
        "github:alice",
        None,
        "github",
        event=event,
    )
    assert (
        _refusal(
            lambda: card.render_pending(
                facts, environments=["production"], confirm=True, approvals=APPROVALS, expires=EXPIRES
            )
        )
        == "bad_origin"
    )


@pytest.mark.parametrize("event", [*(e for e in HOSTILE_EVENTS if e), "deploy2"])
def test_attack_a_hostile_event_name_in_an_oidc_token_reaches_the_card(event: str) -> None:
    """The same grammar for an OIDC token's ``event_name`` (its card shows it too): ``bad_origin``. (An
    empty claim is read as no event: ``oidc_event_not_allowed`` under a branch rule, as before.)"""
    assert _refusal(lambda: _ask("github", oidc_policy("github"), event_name=event)) == "bad_origin"


@settings(max_examples=80, deadline=None)
@given(event=st.text(max_size=70))
@example(event="pull_request_target")
@example(event="a" * 64)
def test_a_card_shows_an_event_exactly_or_there_is_no_request(event: str) -> None:
    """Property: whatever the webhook's ``event``, the card's line is ``*Started by:* <that event>`` (the
    only text of its element) or the origin is ``bad_origin``."""
    origin = _origin(_webhook(event))
    if contract.EVENT_RE.match(event):
        assert f"*Started by:* {event}" in _proven_texts(_card(origin))
    else:
        assert _refusal(lambda: ev.origin_claim(origin, OPEN)) == "bad_origin"


def test_a_webhook_without_an_event_says_so_on_the_card() -> None:
    """A payload without ``event`` opens a request only where no rule needs the event, and its card says no
    event was named (the reader is never left to assume one)."""
    origin = _origin(_webhook(None))
    assert ev.origin_claim(origin, OPEN).event is None
    assert f"{card.STARTED_BY}{card.NO_EVENT}" in _proven_texts(_card(origin))
    assert _refusal(lambda: _arrival(_webhook(None), MAIN_ONLY)) == "github_event_not_allowed"


# --- the opt-in rule ---------------------------------------------------------------------------------------


def test_attack_a_workflow_run_run_passes_a_production_branch_rule() -> None:
    """A ``workflow_run`` run (started when another workflow ends, with the default branch's ``ref``
    whatever that workflow built) asked for production under ``[environments.production.github] branches =
    ["main"]``: refused at arrival, at signing and when an outcome is recorded."""
    body = _webhook("workflow_run")
    origin = _origin(body)
    assert _refusal(lambda: _arrival(body, MAIN_ONLY)) == "github_event_not_allowed"
    blocks = _card(origin, OPEN)  # a card posted before the table was added
    assert _refusal(lambda: _approve(origin, blocks, MAIN_ONLY)) == "github_event_not_allowed"
    assert (
        _refusal(
            lambda: ev.assess_outcome(
                policy=MAIN_ONLY,
                secrets=SECRETS,
                request_id=ev.request_id_for(origin),
                outcome="expired",
                origin=origin,
                denial=None,
                cancel=None,
                now=at(NOW + 3600),
            )
        )
        == "github_event_not_allowed"
    )
    # Listed knowingly, it asks.
    listed = _policy({"branches": ["main"], "events": ["workflow_run"]})
    assert _arrival(body, listed).event == "workflow_run"
    assert _approve(origin, blocks, listed).requester == "github:alice"


@pytest.mark.parametrize("ref", ["refs/heads/feature", "refs/heads/main-old", "refs/tags/main", "main", None])
def test_attack_a_run_of_another_ref_passes_a_production_branch_rule(ref: str | None) -> None:
    """A push to another branch (or a tag, or no ref at all) asked for production under ``branches =
    ["main"]``: the approvers were the only check. Refused as ``github_branch_not_allowed``."""
    body = _webhook("push", ref)
    origin = _origin(body)
    assert _refusal(lambda: _arrival(body, MAIN_ONLY)) == "github_branch_not_allowed"
    assert _refusal(lambda: _approve(origin, _card(origin), MAIN_ONLY)) == "github_branch_not_allowed"


@pytest.mark.parametrize("event", ["push", "workflow_dispatch", "schedule"])
def test_a_push_a_manual_run_and_a_schedule_of_main_pass_the_branch_rule(event: str) -> None:
    body = _webhook(event)
    assert _arrival(body, MAIN_ONLY).ref == "refs/heads/main"
    origin = _origin(body)
    assert _approve(origin, _card(origin, MAIN_ONLY), MAIN_ONLY).requester == "github:alice"


def test_without_the_table_every_run_asks_as_before() -> None:
    """Opt-in: an install without ``[environments.<name>.github]`` keeps today's behaviour (the approvers
    decide), so the upgrade breaks no one."""
    body = _webhook("workflow_run", "refs/heads/feature")
    assert _arrival(body, OPEN).event == "workflow_run"
    origin = _origin(body)
    assert _approve(origin, _card(origin)).requester == "github:alice"


@settings(max_examples=80, deadline=None)
@given(event=EVENT | st.none(), listed=st.lists(EVENT, max_size=3, unique=True))
@example(event="pull_request_target", listed=[])
@example(event="workflow_run", listed=[])
@example(event="repository_dispatch", listed=["repository_dispatch"])
def test_the_github_rule_is_the_oidc_rule(event: str | None, listed: list[str]) -> None:
    """Property, shared with the OIDC one (tests/test_review_findings_5.py): under ``branches = ["main"]``,
    a GitHub run with ``event`` asks exactly when a GitHub job's token with that ``event_name`` would —
    listed, or without a list one of ``REF_BOUND_EVENTS["github"]`` — else ``github_event_not_allowed``."""
    admitted = event in listed if listed else event in REF_BOUND["github"]
    github_policy = _policy({"branches": ["main"], "events": listed})
    body = _webhook(event)
    try:
        oidc_answer = _ask("github", oidc_policy("github", listed), **{_event_claim("github"): event}).event
    except KeyturnError as exc:
        oidc_answer = exc.code
    try:
        github_answer = _arrival(body, github_policy).event
    except KeyturnError as exc:
        github_answer = exc.code
    if admitted:
        assert oidc_answer == github_answer == event
    else:
        assert (oidc_answer, github_answer) == ("oidc_event_not_allowed", "github_event_not_allowed")


# --- the bot: a run the rule refuses is rejected at once, and no request is opened ------------------------


class ArrivalSigner:
    """The signer's ``check_github`` op, as signer/service.py answers it (the check, then the stamp)."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    async def check_github(self, body: bytes, delivery: str, signature: str) -> wire.GitHubStampResult:
        hook = ev.check_github_webhook(WEBHOOK_SECRET, body, delivery, signature, self.policy)
        stamp = ev.github_stamp(WEBHOOK_SECRET, body, delivery, str(NOW))
        return wire.GitHubStampResult(timestamp=str(NOW), stamp=stamp, runId=hook.run_id)


class NoService:
    """The bot's request service: must not be asked to open anything."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.created: list[Any] = []

    async def create(self, *args: Any) -> Any:
        self.created.append(args)
        raise AssertionError("a refused run opened a request")


class Reviews(SlowGitHub):
    """GitHub's API recording every review the approver posts: (run, state, comment)."""

    def __init__(self) -> None:
        super().__init__(delay=0.0)
        self.reviews: list[tuple[int, str, str]] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/deployment_protection_rule"):
            doc = json.loads(request.content)
            self.reviews.append(
                (int(request.url.path.split("/")[6]), doc.get("state", ""), doc.get("comment", ""))
            )
        return await super().__call__(request)


async def _through_the_bot(tmp_path: Any, body: bytes, policy: Policy) -> tuple[NoService, Reviews, Any]:
    """GitHub delivers ``body`` to the bot's webhook route, with the signer's arrival check under ``policy``
    and the real approver app in front of a GitHub that records reviews: (the bot's request service, GitHub,
    the bot's answer)."""
    from keyturn.signer.github_approver import create_app

    github = Reviews()
    run_id = json.loads(body)["deployment"]["id"] - 1000
    async with httpx.AsyncClient(transport=httpx.MockTransport(github)) as gh_client:
        approver = _approver(tmp_path, gh_client)
        transport = httpx.ASGITransport(app=create_app(approver))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            service = NoService(policy)
            bot = GitHubForwarder(
                "http://127.0.0.1", signer=ArrivalSigner(policy), service=service, store=None, client=client
            )
            answer = await bot.webhook(_request(body, f"delivery-{run_id}"))
    return service, github, answer


async def test_attack_a_workflow_run_run_waits_for_approvers_under_the_rule(tmp_path: Any) -> None:
    """Under ``branches = ["main"]`` the bot took a ``workflow_run`` webhook, opened a request and posted a
    card; now the signer's arrival check refuses it, the bot rejects the run with the rule's reason (as for
    ``scope_busy``) and opens no request."""
    service, github, answer = await _through_the_bot(tmp_path, _webhook("workflow_run", run_id=43), MAIN_ONLY)
    assert answer.status_code == 403
    assert json.loads(bytes(answer.body))["error"] == "github_event_not_allowed"
    assert service.created == []
    [(run, state, comment)] = github.reviews
    assert (run, state) == (43, "rejected")
    shown = comment.replace("\\", "")  # the approver escapes GitHub's Markdown
    assert "github_event_not_allowed" in shown
    assert "a workflow_run job may not ask" in shown


async def test_a_run_from_a_look_alike_branch_is_rejected_without_asking_for_a_re_run(tmp_path: Any) -> None:
    """A run whose ref the card cannot show (``bad_origin``: a Cyrillic letter in ``main``) is rejected at
    arrival; the reason names the refusal and does not tell anyone to re-run the job, which would meet the
    same refusal (the seventh review's note)."""
    body = _webhook("push", ref="refs/heads/m\u0430in", run_id=44)
    service, github, answer = await _through_the_bot(tmp_path, body, OPEN)
    assert answer.status_code == 422
    assert json.loads(bytes(answer.body))["error"] == "bad_origin"
    assert service.created == []
    [(run, state, comment)] = github.reviews
    assert (run, state) == (44, "rejected")
    shown = comment.replace("\\", "")
    assert "bad_origin" in shown
    assert "re-run" not in shown


def _request(body: bytes, delivery: str) -> Request:
    """``POST /github/webhook`` as GitHub sends it."""
    headers = {
        "content-type": "application/json",
        "x-github-event": github_app.EVENT,
        "x-github-delivery": delivery,
        "x-hub-signature-256": github_app.webhook_signature(WEBHOOK_SECRET, body),
    }
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/github/webhook",
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
    }
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(scope, receive)
