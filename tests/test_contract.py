"""The bot takes in exactly what the signer can sign (issue 10's drift bugs): one contract, held by property.

Before the contract, ``/keyturn request my.org/web <sha> production`` got a card the signer refused at quorum
(``bad_origin``), and a CI request with workflow ``.github/workflows/deploy.yml`` or ``deploy@v1`` passed the
signer but got 422 from the bot.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlencode

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from keyturn.bot.models import RequestIn
from keyturn.signer.evidence import EvidenceError, parse_ci_request_body, parse_slash_request
from keyturn.signer.policy import Policy

ROOT = Path(__file__).resolve().parent.parent
POLICY = Policy.from_bytes((ROOT / "bot" / "dev_policy.toml").read_bytes())
SHA = "4f8a2cd91ef7a2c7f3a5f0aa12d93b33f2d40e17"

# Characters near the edges of each grammar: separators, dots, '@', ':', '+', case, unicode, spaces.
PIECE = st.text(alphabet="abcXYZ019._-/@:+ é\t", min_size=0, max_size=12)
REPO = st.one_of(st.just("acme/web"), st.just("my.org/web"), st.just("acme/.."), PIECE)
SHA_ = st.one_of(st.just(SHA), st.just(SHA.upper()), st.just(SHA[:12]), st.just("a" * 64), PIECE)
ENV = st.one_of(st.just("production"), st.just("-prod"), PIECE)
WORKFLOW = st.one_of(
    st.just("deploy.yml"),
    st.just(".github/workflows/deploy.yml"),
    st.just("deploy@v1"),
    st.just("a b"),
    PIECE,
)
REQUESTER = st.one_of(st.just("github:alice"), st.just("x" * 255), st.just("x" * 256), st.just("slack:U1"))


def bot_accepts_ci(body: bytes) -> bool:
    """What the bot's CI API does with a body: the signer's parse, then its own model."""
    try:
        parse_ci_request_body(body)
        RequestIn.model_validate_json(body)
    except (EvidenceError, ValidationError):
        return False
    return True


def signer_accepts_ci(body: bytes) -> bool:
    try:
        parse_ci_request_body(body)
    except EvidenceError:
        return False
    return True


@settings(max_examples=400, deadline=None)
@given(repo=REPO, sha=SHA_, environment=ENV, workflow=WORKFLOW, requester=REQUESTER)
def test_bot_takes_in_exactly_the_ci_requests_the_signer_accepts(
    repo: str, sha: str, environment: str, workflow: str, requester: str
) -> None:
    body = json.dumps(
        {"repo": repo, "sha": sha, "environment": environment, "workflow": workflow, "requester": requester}
    ).encode()
    assert bot_accepts_ci(body) == signer_accepts_ci(body)


def bot_accepts_slash(text: str) -> bool:
    """The bot's slash listener (bot/app.py ``_on_command``): split, then the shared model."""
    from keyturn.bot.app import DEFAULT_WORKFLOW

    words = text.split()
    if not words or words[0].lower() != "request" or len(words) not in (4, 5):
        return False
    repo, sha, environment = words[1:4]
    workflow = words[4] if len(words) == 5 else DEFAULT_WORKFLOW
    try:
        RequestIn(repo=repo, sha=sha, environment=environment, workflow=workflow, requester="slack:U0ALICE")
    except ValidationError:
        return False
    return True


def signer_accepts_slash(text: str) -> bool:
    body = urlencode(
        {"command": "/keyturn", "text": text, "user_id": "U0ALICE", "team_id": POLICY.slack.team_id or ""}
    )
    try:
        parse_slash_request(body, POLICY)
    except EvidenceError:
        return False
    return True


@settings(max_examples=400, deadline=None)
@given(
    verb=st.sampled_from(["request", "REQUEST", "status"]),
    repo=REPO,
    sha=SHA_,
    environment=ENV,
    workflow=st.one_of(st.none(), WORKFLOW),
)
def test_bot_takes_in_exactly_the_slash_commands_the_signer_accepts(
    verb: str, repo: str, sha: str, environment: str, workflow: str | None
) -> None:
    text = " ".join(w for w in (verb, repo, sha, environment, workflow) if w is not None)
    assert bot_accepts_slash(text) == signer_accepts_slash(text)


def test_the_drift_bugs_of_issue_10() -> None:
    assert not bot_accepts_slash(f"request my.org/web {SHA} production")
    for workflow in (".github/workflows/deploy.yml", "deploy@v1"):
        body = json.dumps(
            {
                "repo": "acme/web",
                "sha": SHA,
                "environment": "production",
                "workflow": workflow,
                "requester": "github:alice",
            }
        ).encode()
        assert bot_accepts_ci(body)
