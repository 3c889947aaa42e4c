"""Pure checks of the evidence the signer is shown: CI and Slack signatures, request bodies, approve clicks.

Implements issue 4, "The signer" points 1-4, and design.md §5-6. Nothing here does I/O or reads a clock:
bytes, secrets and ``now`` go in; parsed, verified values come out, or a :class:`EvidenceError` with a stable
``code`` is raised. The service (``signer/service.py``) is the thin I/O layer around :func:`assess`.

The steps of :func:`assess` are numbered in comments against the issue's points 1-4. The card rule (point 3)
is spelled out in :func:`check_card` and in docs/security.md; the bot's card builder follows it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from keyturn.signer import card, contract, github_app, oidc
from keyturn.signer.errors import KeyturnError
from keyturn.signer.policy import Environment, Policy, is_slack_team_id, is_slack_user_id
from keyturn.signer.receipt import RequesterProof, Scope, no_duplicate_members
from keyturn.signer.words import Fact

__all__ = [
    "CALLBACK_KEY_LABEL",
    "CI_BODY_MAX",
    "DEFAULT_WORKFLOW",
    "MAX_SKEW",
    "OUTCOMES",
    "ApproveClick",
    "Assessment",
    "CiEvidence",
    "CiRequestBody",
    "CountedApproval",
    "EvidenceError",
    "GitHubEvidence",
    "OidcCall",
    "OidcEvidence",
    "OutcomeAssessment",
    "RequestClaim",
    "Secrets",
    "SlackEvidence",
    "assess",
    "assess_outcome",
    "callback_key",
    "callback_signature",
    "card_facts",
    "check_ci_secret_allowed",
    "check_github_webhook",
    "check_oidc_request",
    "check_same_oidc_job",
    "ci_signature",
    "github_stamp",
    "is_request_id",
    "origin_claim",
    "parse_approve_click",
    "parse_ci_request_body",
    "parse_deny_submission",
    "parse_slash_request",
    "parse_timestamp",
    "request_id_for",
    "slack_signature",
    "verify_ci_request",
    "verify_slack_request",
]

MAX_SKEW = 300  # seconds either side of "now" for a request or click as it arrives (design.md §6)
# How far the signer's clock may lag the newest evidence (the origin's or a click's signed time) at signing.
# Within it the receipt is dated at that evidence (hosts' clocks differ by a second or two); beyond it the
# signer's clock is wrong (stepped back) and signing is refused: a receipt is never dated before the request
# or the approvals it attests.
CLOCK_BEHIND_TOLERANCE = 30
CI_BODY_MAX = 64 * 1024  # the bot answers 413 above this; the signer refuses it as evidence too
DEFAULT_WORKFLOW = contract.DEFAULT_WORKFLOW
CALLBACK_KEY_LABEL = b"keyturn callback v1"
MAX_CLICK_BODY = 256 * 1024

_TS_RE = re.compile(r"\A[0-9]{1,12}\Z")  # ASCII digits only: int() would accept " 1", "+1", "1_0", "١"
_HEX_SIG_RE = re.compile(r"\A[0-9a-f]{64}\Z")
_METHOD_RE = re.compile(r"\A[A-Z]{1,16}\Z")
_PATH_RE = re.compile(r"\A/[\x21-\x7e]{0,2047}\Z")  # printable ASCII, no spaces; "?" is refused separately
_REQUESTER_RE = re.compile(r"\A[^\s<>&\x00-\x1f\x7f]{1,255}\Z")
_URL_RE = re.compile(r"\Ahttps?://[^\s<>|\"'`\x00-\x1f\x7f]{1,2040}\Z")
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
REQUEST_ID_LABEL = b"keyturn request id v1"
GITHUB_STAMP_LABEL = b"keyturn github arrival v1"
# Under a branch rule without an ``events`` list, the only events admitted, per platform: those whose job's
# ``ref`` and ``sha`` name the code that runs (the branch's head, or the commit pushed to it). An allow-list,
# so an event nobody thought of, an unknown one or none at all is refused (fail closed); the operator admits
# any other knowingly by listing it in ``events``. The reasons per event, in and out: docs/security.md,
# "Which events a branch rule admits". GitHub: a push, a manual run, a schedule (GitHub's "Events that
# trigger workflows": GITHUB_REF/GITHUB_SHA are the branch and its head). GitLab (``pipeline_source``): a
# push, and a pipeline run on a branch from the UI, the API, a schedule or a trigger token.
REF_BOUND_EVENTS: Mapping[str, frozenset[str]] = {
    "github": frozenset({"push", "workflow_dispatch", "schedule"}),
    "gitlab": frozenset({"push", "web", "api", "schedule", "trigger"}),
}


class EvidenceError(KeyturnError):
    """Evidence was refused. ``code`` names the check (``bad_ci_signature``, ``card_mismatch``, ...).

    ``fields`` maps a request-body field to what is wrong with it, when the refusal is about body fields.
    """

    def __init__(
        self,
        code: str,
        message: str | None = None,
        /,
        *,
        fields: Mapping[str, str] | None = None,
        facts: Mapping[str, Fact] | None = None,
        **more: Fact,
    ) -> None:
        super().__init__(message, code=code, facts=facts, **more)
        self.fields = dict(fields or {})


# --- primitives -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Secrets:
    """The two shared secrets the signer holds. Never logged: ``repr`` hides them."""

    slack_signing_secret: str = field(repr=False)
    ci_secret: str = field(repr=False)
    github_webhook_secret: str = field(default="", repr=False)  # empty: GitHub origins are refused


def parse_timestamp(value: object, code: str) -> int:
    """A signature timestamp as whole Unix seconds; anything but 1-12 ASCII digits raises ``code``."""
    if not isinstance(value, str) or not _TS_RE.match(value):
        raise EvidenceError(code, reason="timestamp")
    return int(value)


def _epoch(now: datetime) -> float:
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now.timestamp()


def _mac(key: bytes, message: bytes) -> str:
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def _check_sig(expected_hex: str, signature: object, prefix: str, code: str) -> None:
    if not isinstance(signature, str) or not signature.startswith(prefix):
        raise EvidenceError(code, reason="signature_shape", prefix=prefix)
    given = signature[len(prefix) :]
    # The shape check leaks nothing about the secret; the comparison itself is constant-time.
    if not _HEX_SIG_RE.match(given) or not hmac.compare_digest(given, expected_hex):
        raise EvidenceError(code, reason="signature_mismatch")


def _check_fresh(ts: int, now: datetime) -> None:
    if abs(_epoch(now) - ts) > MAX_SKEW:
        raise EvidenceError("stale_request", reason="skew", limit=MAX_SKEW)


def ci_signature(secret: str, method: str, path: str, body: bytes, timestamp: str) -> str:
    """``v1=<hex>``: HMAC-SHA256(secret, ``v1:{timestamp}:{METHOD}:{path}:{body}``) (design.md §6)."""
    message = f"v1:{timestamp}:{method}:{path}:".encode() + body
    return "v1=" + _mac(secret.encode(), message)


def slack_signature(secret: str, body: str, timestamp: str) -> str:
    """``v0=<hex>``: Slack's request signature, HMAC-SHA256(secret, ``v0:{timestamp}:{body}``)."""
    return "v0=" + _mac(secret.encode(), f"v0:{timestamp}:{body}".encode())


def callback_key(ci_secret: str) -> bytes:
    """The callback MAC key, ``HMAC-SHA256(ci_secret, "keyturn callback v1")`` (design.md §5).

    Derived, so that a callback signature is never a valid CI request signature.
    """
    return hmac.new(ci_secret.encode(), CALLBACK_KEY_LABEL, hashlib.sha256).digest()


def callback_signature(ci_secret: str, path: str, timestamp: str, body: bytes) -> str:
    """``v1=<hex>`` over ``v1:{timestamp}:POST:{path}:{body}`` with :func:`callback_key` (design.md §6)."""
    _check_ci_shape("POST", path)
    parse_timestamp(timestamp, "bad_request")
    message = f"v1:{timestamp}:POST:{path}:".encode() + body
    return "v1=" + _mac(callback_key(ci_secret), message)


def _check_ci_shape(method: str, path: str) -> None:
    if not _METHOD_RE.match(method):
        raise EvidenceError("bad_ci_signature", reason="method")
    if not _PATH_RE.match(path) or "?" in path:
        raise EvidenceError("bad_ci_signature", reason="path")


def _verify_ci_mac(secret: str, method: str, path: str, body: bytes, timestamp: str, signature: str) -> int:
    _check_ci_shape(method, path)
    ts = parse_timestamp(timestamp, "bad_ci_signature")
    expected = ci_signature(secret, method, path, body, timestamp)[3:]
    _check_sig(expected, signature, "v1=", "bad_ci_signature")
    return ts


def _verify_slack_mac(secret: str, body: str, timestamp: str, signature: str, code: str) -> int:
    ts = parse_timestamp(timestamp, code)
    expected = slack_signature(secret, body, timestamp)[3:]
    _check_sig(expected, signature, "v0=", code)
    return ts


def verify_ci_request(
    secret: str, method: str, path: str, body: bytes, timestamp: str, signature: str, now: datetime
) -> int:
    """Check a CI request as it arrives: the v1 HMAC, and the timestamp within ±5 minutes of ``now``.

    Returns the timestamp. Raises ``bad_ci_signature`` or ``stale_request``. The MAC is checked first, so an
    unauthenticated caller learns nothing about the window.
    """
    ts = _verify_ci_mac(secret, method, path, body, timestamp, signature)
    _check_fresh(ts, now)
    return ts


def verify_slack_request(secret: str, body: str, timestamp: str, signature: str, now: datetime) -> int:
    """Check a Slack request as it arrives: the v0 signature and ±5 minutes. Returns the timestamp.

    Raises ``bad_slack_signature`` (also for a non-numeric timestamp) or ``stale_request``.
    """
    ts = _verify_slack_mac(secret, body, timestamp, signature, "bad_slack_signature")
    _check_fresh(ts, now)
    return ts


# --- strict parsing helpers -------------------------------------------------------------------------------


def _strict_json(text: str | bytes, code: str, what: str) -> Any:
    # Duplicate names are refused: two parsers picking different duplicates is a classic bypass.
    try:
        return json.loads(text, object_pairs_hook=no_duplicate_members)
    except (ValueError, RecursionError) as exc:
        raise EvidenceError(code, reason="not_json", what=what, detail=str(exc)) from None


def _parse_form(body: str, code: str, what: str) -> dict[str, str]:
    try:
        pairs = parse_qsl(
            body, keep_blank_values=True, strict_parsing=True, errors="strict", max_num_fields=64
        )
    except (ValueError, UnicodeDecodeError):
        raise EvidenceError(code, reason="not_form", what=what) from None
    out: dict[str, str] = {}
    for key, value in pairs:
        if key in out:
            raise EvidenceError(code, reason="repeated_field", what=what, name=repr(key))
        out[key] = value
    return out


def is_request_id(value: object) -> bool:
    """True if ``value`` is ``req_`` + a ULID (upper-case Crockford base32)."""
    return contract.is_request_id(value)


# --- the CI request body ----------------------------------------------------------------------------------


class CiRequestBody(BaseModel):
    """``POST /v1/requests``: the fields a pipeline sends (issue 5, "CI API"). Strict and closed.

    The bot validates the same body with this model, so the bot and the signer never disagree about what a
    request asked for.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    repo: str
    sha: str
    environment: str
    workflow: str
    requester: str
    ref: str | None = Field(default=None, min_length=1, max_length=255)
    runUrl: str | None = Field(default=None, max_length=2048)
    title: str | None = Field(default=None, min_length=1, max_length=300)
    callbackUrl: str | None = Field(default=None, max_length=2048)

    @field_validator(*contract.SCOPE_FIELD_PROBLEMS)
    @classmethod
    def _scope_field(cls, v: str, info: ValidationInfo) -> str:
        if problem := contract.SCOPE_FIELD_PROBLEMS[str(info.field_name)](v):
            raise ValueError(problem)
        return v

    @field_validator("requester")
    @classmethod
    def _requester(cls, v: str) -> str:
        if not _REQUESTER_RE.match(v):
            raise ValueError("must be 1-255 characters without spaces, '<', '>' or '&'")
        if v.lower().startswith("slack:"):
            # ``slack:U…`` means "proven by Slack's signature" (slash commands); a pipeline cannot claim it.
            raise ValueError("must not start with 'slack:' (reserved for requesters Slack proves)")
        return v

    @field_validator("runUrl", "callbackUrl")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not _URL_RE.match(v):
            raise ValueError("must be an http(s) URL")
        return v

    @property
    def scope(self) -> Scope:
        """The scope a receipt for this request would authorize."""
        return Scope(self.repo, self.sha, self.environment, self.workflow)


@dataclass(frozen=True)
class RequestClaim:
    """What an origin request asks for: the scope, who asked, and the free text the card shows with it."""

    scope: Scope
    requester: str
    team_id: str | None = None
    title: str | None = None
    ref: str | None = None
    run_url: str | None = None
    proof: RequesterProof | None = None  # how the requester was proven, for OIDC origins
    issuer_name: str | None = None  # the policy's name of the OIDC issuer
    triggered_by: str | None = None  # OIDC: who started this run attempt, when not the requester
    # OIDC and GitHub: the event that started the job (event_name, pipeline_source, the webhook's event)
    event: str | None = None


def parse_ci_request_body(body: bytes) -> CiRequestBody:
    """Parse a ``POST /v1/requests`` body strictly (UTF-8 JSON object, no duplicate names, closed schema).

    Raises ``EvidenceError("bad_request_body")`` whose ``fields`` maps each bad field to its problem.
    """
    if len(body) > CI_BODY_MAX:
        raise EvidenceError("bad_request_body", reason="too_large", limit=CI_BODY_MAX)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise EvidenceError("bad_request_body", reason="not_utf8") from None
    obj = _strict_json(text, "bad_request_body", "body")
    if not isinstance(obj, dict):
        raise EvidenceError("bad_request_body", reason="not_object")
    try:
        return CiRequestBody.model_validate(obj)
    except ValidationError as exc:
        fields: dict[str, str] = {}
        for err in exc.errors(include_url=False):
            name = ".".join(str(p) for p in err["loc"]) or "body"
            msg = "required" if err["type"] == "missing" else str(err["msg"]).removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown field"
            fields.setdefault(name, msg)
        detail = "; ".join(f"{k}: {v}" for k, v in fields.items())
        raise EvidenceError("bad_request_body", reason="fields", detail=detail, fields=fields) from None


# --- the slash command ------------------------------------------------------------------------------------


def parse_slash_request(body: str, policy: Policy) -> RequestClaim:
    """Parse ``/keyturn request <repo> <sha> <environment> [workflow]`` from a slash-command form body.

    The body is parsed as a form, whatever it contains: unlike Bolt's heuristic, the substring ``payload``
    anywhere in it (``text=... payload-svc``) changes nothing. The command must be the policy's
    ``slack.command`` and, if the policy names a workspace, come from it. The requester is
    ``slack:<user_id>``. Raises ``EvidenceError("bad_origin")``.
    """
    form = _parse_form(body, "bad_origin", "slash command")
    if "payload" in form:
        raise EvidenceError("bad_origin", reason="not_slash")
    if form.get("command") != policy.slack.command:
        raise EvidenceError("bad_origin", reason="other_command", command=policy.slack.command)
    user_id = form.get("user_id", "")
    if not is_slack_user_id(user_id):
        raise EvidenceError("bad_origin", reason="slash_user")
    team_id = form.get("team_id") or None
    _check_team(team_id, policy, "bad_origin", "slash command")
    words = form.get("text", "").split()
    if len(words) not in (4, 5) or words[0].lower() != "request":
        raise EvidenceError("bad_origin", reason="slash_grammar", command=policy.slack.command)
    repo, sha, environment = words[1:4]
    workflow = words[4] if len(words) == 5 else DEFAULT_WORKFLOW
    problems = contract.scope_problems(repo, sha, environment, workflow)
    if problems:
        detail = "; ".join(f"{k}: {v}" for k, v in problems.items())
        raise EvidenceError("bad_origin", reason="fields", detail=detail, fields=problems)
    return RequestClaim(Scope(repo, sha, environment, workflow), f"slack:{user_id}", team_id)


def _check_team(team_id: str | None, policy: Policy, code: str, what: str) -> None:
    expected = policy.slack.team_id
    if expected is not None and team_id != expected:
        raise EvidenceError(code, reason="other_team", what=what)


# --- the approve click and the card -----------------------------------------------------------------------


@dataclass(frozen=True)
class ApproveClick:
    """A genuine approve click: who clicked, in which workspace, on which request, and when (signed ts)."""

    user_id: str
    team_id: str | None
    request_id: str
    at: int


def _slack_actor(payload: Mapping[str, Any], policy: Policy, code: str, what: str) -> tuple[str, str | None]:
    """Who acted in a Slack interaction payload, and in which workspace: ``user.id`` must be a Slack user id
    (``code`` otherwise), ``team.id`` a team id if present and the policy's workspace if it names one
    (``wrong_team``). Shared by approve clicks and deny submissions."""
    user = payload.get("user")
    user_id = user.get("id") if isinstance(user, dict) else None
    if not isinstance(user_id, str) or not is_slack_user_id(user_id):
        raise EvidenceError(code, reason="no_user", what=what)
    team = payload.get("team")
    team_id = team.get("id") if isinstance(team, dict) else None
    if team_id is not None and (not isinstance(team_id, str) or not is_slack_team_id(team_id)):
        raise EvidenceError(code, reason="bad_team", what=what)
    _check_team(team_id, policy, "wrong_team", what)
    return user_id, team_id


def parse_approve_click(body: str, timestamp: int, facts: card.CardFacts, policy: Policy) -> ApproveClick:
    """Parse an approve click's raw form body (already signature-checked) and run the card check.

    Requires: a single ``payload`` form field holding a JSON object (duplicate names refused) with
    ``type == "block_actions"``, exactly one action with ``action_id == "approve"`` in the card's decision
    block and ``value ==`` the request id, a ``user.id`` that is a Slack user id, the policy's workspace if it
    names one, and a ``message`` that is exactly the card :mod:`keyturn.signer.card` renders for ``facts``
    (:func:`keyturn.signer.card.check_clicked_card`). Codes: ``bad_click``, ``wrong_request``, ``wrong_team``,
    ``card_mismatch``.
    """
    form = _parse_form(body, "bad_click", "click")
    if set(form) != {"payload"}:
        raise EvidenceError("bad_click", reason="click_form")
    payload = _strict_json(form["payload"], "bad_click", "click payload")
    if not isinstance(payload, dict) or payload.get("type") != "block_actions":
        raise EvidenceError("bad_click", reason="not_block_actions")
    actions = payload.get("actions")
    if not isinstance(actions, list) or len(actions) != 1 or not isinstance(actions[0], dict):
        raise EvidenceError("bad_click", reason="actions")
    action = actions[0]
    if action.get("action_id") != card.APPROVE_ACTION or action.get("block_id") != card.DECISION_BLOCK:
        raise EvidenceError("bad_click", reason="not_approve_button")
    request_id = facts.request_id
    if action.get("value") != request_id:
        raise EvidenceError("wrong_request", reason="click")
    user_id, team_id = _slack_actor(payload, policy, "bad_click", "the click")
    env = policy.environment(facts.scope.environment)
    try:
        card.check_clicked_card(
            payload.get("message"),
            facts,
            environments=policy.environments.keys(),
            confirm=env.confirm_approve,
            required_approvals=env.required_approvals,
            may_approve=lambda uid: policy.authorizes(facts.scope.environment, uid),
        )
    except card.CardMismatch as exc:
        raise EvidenceError("card_mismatch", facts=exc.facts) from None
    return ApproveClick(user_id, team_id, request_id, timestamp)


# --- the sign decision ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CiEvidence:
    """The original CI request as the bot received it (design.md §5 ``Origin`` kind ``ci``)."""

    method: str
    path: str
    body: bytes
    timestamp: str
    signature: str


@dataclass(frozen=True)
class SlackEvidence:
    """A Slack request as the bot received it: a slash command or an approve click."""

    body: str
    timestamp: str
    signature: str


@dataclass(frozen=True)
class OidcEvidence:
    """A CI request authenticated by the job's OIDC ID token (issue 11): the raw token and the raw body.

    The body is *not* signed by anything: only what the token proves may reach the card or the receipt.
    """

    token: str = field(repr=False)  # a bearer credential until it expires: never logged
    body: bytes


@dataclass(frozen=True)
class GitHubEvidence:
    """A ``deployment_protection_rule`` webhook as GitHub delivered it (docs/security.md, "GitHub deployment
    protection rules"): the raw body, its delivery id and ``X-Hub-Signature-256``; the run's workflow path
    (not in the webhook: the bot's claim, which the approver checks against GitHub's API); and the signer's
    arrival stamp, because GitHub's signature carries no time and the request's lifetime needs a start.
    """

    body: bytes
    delivery: str
    signature: str
    workflow: str
    timestamp: str  # when the signer first saw the webhook (the request's lifetime starts there)
    stamp: str = field(repr=False)  # github_stamp() over the body, delivery and timestamp


Origin = CiEvidence | SlackEvidence | OidcEvidence | GitHubEvidence


def github_stamp(secret: str, body: bytes, delivery: str, timestamp: str) -> str:
    """The signer's MAC dating a webhook's arrival, keyed by a key derived from the webhook secret (a
    stamp is never a webhook signature). Only the signer can make one, so a bot cannot re-date a webhook."""
    key = hmac.new(secret.encode(), GITHUB_STAMP_LABEL, hashlib.sha256).digest()
    return _mac(key, _frame(hashlib.sha256(body).digest(), delivery.encode(), timestamp.encode()))


def check_github_webhook(
    secret: str, body: bytes, delivery: str, signature: str, policy: Policy
) -> github_app.Webhook:
    """A webhook as it arrives at the signer: GitHub's signature, then the payload and its environment's
    policy. Raises ``EvidenceError`` with the approver's codes (``bad_signature``, ``no_policy``, ...), or
    ``bad_origin`` (an event the card cannot show) and ``github_*_not_allowed`` (the environment's
    ``[environments.<name>.github]`` rule)."""
    try:
        github_app.check_signature(secret, signature, body)
        hook = github_app.parse_payload(
            body, delivery, api_base_path=None, environments=frozenset(policy.environments)
        )
    except github_app.GitHubError as exc:
        raise EvidenceError(exc.code, reason="relayed", detail=exc.message, fields=exc.fields) from None
    # The environment's GitHub rule, as at signing: a run it refuses opens no request.
    env = policy.environment(hook.environment)
    _check_github_allowed(env, _checked_ref(hook.ref), _checked_event(hook.event))
    return hook


def _verify_github(secret: str, origin: GitHubEvidence) -> int:
    """The webhook's signature and the signer's own arrival stamp; the time the request's lifetime starts:
    the arrival, or the deployment's creation (GitHub-signed) when earlier. A stamp only proves the signer
    saw the webhook then, and the bot may show an old webhook again; the deployment's own time bounds that."""
    try:
        github_app.check_signature(secret, origin.signature, origin.body)
    except github_app.GitHubError as exc:
        raise EvidenceError(exc.code, reason="relayed", detail=exc.message) from None
    ts = parse_timestamp(origin.timestamp, "bad_github_stamp")
    expected = github_stamp(secret, origin.body, origin.delivery, origin.timestamp)
    if not hmac.compare_digest(expected, origin.stamp if isinstance(origin.stamp, str) else ""):
        raise EvidenceError("bad_github_stamp", reason="stamp_mismatch")
    try:
        created = github_app.parse_payload(
            origin.body, origin.delivery, api_base_path=None, environments=None
        ).created_at
    except github_app.GitHubError as exc:
        raise EvidenceError("bad_origin", reason="relayed", detail=exc.message, fields=exc.fields) from None
    return ts if created is None else min(ts, created)


def _frame(*parts: bytes) -> bytes:
    # Length-prefixed, so no two different origins frame to the same bytes.
    return b"".join(len(p).to_bytes(8, "big") + p for p in parts)


def _oidc_iat(token: str) -> str:
    """The token's ``iat`` as text, read without checking the signature (for the id's time part only)."""
    try:
        iat = oidc.unverified_claims(token).get("iat")
    except oidc.OidcError:
        return "0"
    return str(iat) if type(iat) is int and 0 <= iat < 2**40 else "0"


def request_id_for(origin: Origin) -> str:
    """The request id bound to ``origin``: ``req_`` + a ULID whose time is the origin's signed timestamp and
    whose 80 random bits are the first 80 bits of SHA-256 over the whole origin as received.

    The bot mints ids with this function and the signer recomputes it, so clicks collected for one request
    (whose card shows its id) cannot be spent on another origin, whatever Redis or the bot says.
    """
    if isinstance(origin, GitHubEvidence):
        # The webhook's signature covers the body; the delivery and the claimed workflow are framed in too, so
        # a bot naming another workflow for the same webhook makes another request (and another card).
        timestamp, signature = origin.timestamp, origin.signature
        kind = b"github"
        body = _frame(origin.body, origin.delivery.encode(), origin.workflow.encode())
    elif isinstance(origin, OidcEvidence):
        # The token is the signature and its iat the timestamp. The body is left out on purpose: it is
        # unsigned, and all it may say that counts must equal the token's claims, so one token is one request
        # whatever body travels with it (a bot rewriting the body gets the same id and the same card).
        timestamp, signature = _oidc_iat(origin.token), origin.token
        kind, body = b"oidc", b""
    else:
        timestamp, signature = origin.timestamp, origin.signature
        if isinstance(origin, CiEvidence):
            kind, body = b"ci", _frame(origin.method.encode(), origin.path.encode(), origin.body)
        else:
            kind, body = b"slack_command", origin.body.encode()
    digest = hashlib.sha256(
        _frame(REQUEST_ID_LABEL, kind, timestamp.encode(), signature.encode(), body)
    ).digest()
    seconds = int(timestamp) if _TS_RE.match(timestamp) else 0
    value = (((seconds * 1000) & (2**48 - 1)) << 80) | int.from_bytes(digest[:10], "big")
    chars = [_CROCKFORD[(value >> (5 * i)) & 31] for i in range(25, -1, -1)]
    return "req_" + "".join(chars)


def _web_base(policy: Policy, name: str) -> str:
    cfg = policy.oidc.issuers[name]
    if cfg.web_url:
        return cfg.web_url
    return "https://github.com" if cfg.kind == "github" else cfg.issuer


def _oidc_identity(token: str, policy: Policy) -> tuple[str, oidc.CiIdentity]:
    """The policy's name for ``token``'s issuer and the job its claims describe (signature not checked here:
    the callers verify it, or render only what the signer will verify)."""
    claims = oidc.unverified_claims(token)
    iss = claims.get("iss")
    name = next((n for n, i in policy.oidc.issuers.items() if isinstance(iss, str) and i.issuer == iss), None)
    if name is None:
        raise oidc.OidcError("oidc_unknown_issuer", "issuer")
    return name, oidc.identity_from_claims(policy.oidc.issuers[name].kind, _web_base(policy, name), claims)


def check_same_oidc_job(origin_token: str, call_token: str, policy: Policy) -> None:
    """Refuse (``bad_cancel``) unless ``call_token`` was issued to the very job whose ``origin_token`` made
    the request: same issuer, repository, commit, workflow, environment, ref, actor, subject and run.

    Any job of a repository can get a token for Keyturn's audience (a staging job, a branch's lint job): a
    token of the same repository proves only that *some* job of it asked, not that the pipeline that made
    this request gave it up. Within one job every such claim is the same (a GitHub job asks for a fresh
    token; a GitLab job reuses its one), so the legitimate cancel still passes. Signatures are the caller's.
    """
    try:
        first = _oidc_identity(origin_token, policy)
        second = _oidc_identity(call_token, policy)
    except oidc.OidcError as exc:
        raise EvidenceError("bad_cancel", reason="token_unusable", detail=exc.message) from None
    if first != second:
        raise EvidenceError("bad_cancel", reason="other_job")


def _oidc_claim(origin: OidcEvidence, policy: Policy) -> RequestClaim:
    """What an OIDC origin asks for: everything from the token's claims; the body must agree with them."""
    name, who = _oidc_identity(origin.token, policy)
    cfg = policy.oidc.issuers[name]
    if who.environment is None:
        raise oidc.OidcError("oidc_claim_missing", "environment")
    problems = contract.scope_problems(who.repo, who.sha, who.environment, who.workflow)
    if problems:
        detail = "; ".join(f"{k}: {v}" for k, v in problems.items())
        raise oidc.OidcError("oidc_claim_unusable", "claims", detail=detail, fields=problems)
    try:
        body = parse_ci_request_body(origin.body)
    except EvidenceError as exc:
        raise EvidenceError("bad_origin", reason="relayed", detail=exc.message, fields=exc.fields) from None
    # A body that disagrees with its token is refused, naming the field: never silently "corrected".
    proven = {
        "repo": who.repo,
        "sha": who.sha,
        "environment": who.environment,
        "workflow": who.workflow,
        "requester": who.requester,
    }
    mismatched = {k: f"the token says {v!r}" for k, v in proven.items() if getattr(body, k) != v}
    if mismatched:
        raise EvidenceError(
            "oidc_body_mismatch", reason="body", names=", ".join(sorted(mismatched)), fields=mismatched
        )
    return RequestClaim(
        Scope(who.repo, who.sha, who.environment, who.workflow),
        who.requester,
        None,
        # No body free text for OIDC origins: the body is unsigned, so a bot could rewrite it. The card shows
        # the ref and the run link derived from the claims instead (docs/security.md, "OIDC-proven requests").
        title=None,
        ref=_checked_ref(who.ref),
        run_url=who.run_url,
        proof=RequesterProof(issuer=cfg.issuer, subject=who.subject, run=who.run),
        issuer_name=name,
        triggered_by=who.triggered_by,
        event=_checked_event(who.event),
    )


def origin_claim(origin: Origin, policy: Policy) -> RequestClaim:
    """What ``origin`` asks for, parsed from its bytes exactly as :func:`assess` parses it, *without*
    checking its signature (the bot uses this to render the card the signer will expect; the signer checks
    the signature first). Raises ``EvidenceError("bad_origin")`` (OIDC origins: also ``OidcError`` codes and
    ``oidc_body_mismatch``)."""
    if isinstance(origin, OidcEvidence):
        return _oidc_claim(origin, policy)
    if isinstance(origin, GitHubEvidence):
        return _github_claim(origin, policy)
    if isinstance(origin, CiEvidence):
        if (origin.method, origin.path) != ("POST", "/v1/requests"):
            raise EvidenceError("bad_origin", reason="not_create")
        try:
            body = parse_ci_request_body(origin.body)
        except EvidenceError as exc:
            raise EvidenceError(
                "bad_origin", reason="relayed", detail=exc.message, fields=exc.fields
            ) from None
        return RequestClaim(
            body.scope, body.requester, None, title=body.title, ref=body.ref, run_url=body.runUrl
        )
    return parse_slash_request(origin.body, policy)


def _github_claim(origin: GitHubEvidence, policy: Policy) -> RequestClaim:
    """What a GitHub origin asks for: repository, sha and environment from the signed payload, the workflow
    as claimed (checked by the approver against the run), the requester the user who triggered the run."""
    try:
        hook = github_app.parse_payload(
            origin.body, origin.delivery, api_base_path=None, environments=frozenset(policy.environments)
        )
    except github_app.GitHubError as exc:
        raise EvidenceError("bad_origin", reason="relayed", detail=exc.message, fields=exc.fields) from None
    problem = contract.workflow_problem(origin.workflow)
    if problem:
        raise EvidenceError("bad_origin", reason="workflow", detail=problem, fields={"workflow": problem})
    return RequestClaim(
        Scope(hook.repo, hook.sha, hook.environment, origin.workflow),
        f"github:{hook.sender}",
        None,
        title=None,
        ref=_checked_ref(hook.ref),
        run_url=f"https://github.com/{hook.repo}/actions/runs/{hook.run_id}",
        event=_checked_event(hook.event),
    )


def _checked_event(event: str | None) -> str | None:
    """The event that started the job, as the card may show it; anything outside ``contract.EVENT_RE``
    (markup, a line break, a long text) is refused before anything renders it."""
    if event is not None and (problem := contract.event_problem(event)):
        raise EvidenceError("bad_origin", reason="bad_event", detail=problem)
    return event


def _checked_ref(ref: str | None) -> str | None:
    """A proven origin's ref, as the card shows it under the lock label; anything outside
    ``contract.REF_RE`` (a look-alike letter, full-width markup NFKC would turn into mrkdwn, a no-break space)
    is refused before anything renders it: it could read as another branch or forge a line."""
    if ref is not None and (problem := contract.ref_problem(ref)):
        raise EvidenceError("bad_origin", reason="bad_ref", detail=problem)
    return ref


def _origin_kind(origin: Origin) -> str:
    if isinstance(origin, GitHubEvidence):
        return "github"
    if isinstance(origin, OidcEvidence):
        return "oidc"
    return "ci" if isinstance(origin, CiEvidence) else "slack_command"


def card_facts(request_id: str, claim: RequestClaim, origin: Origin, policy: Policy) -> card.CardFacts:
    """The facts the card shows for this origin: the scope, the requester (mapped to a Slack user only by the
    policy), the origin's free text and the request id."""
    return card.CardFacts(
        request_id=request_id,
        scope=claim.scope,
        requester=claim.requester,
        requester_user=policy.resolve_requester(claim.requester),
        origin_kind=_origin_kind(origin),
        title=claim.title,
        ref=claim.ref,
        run_url=claim.run_url,
        event=claim.event,
    )


@dataclass(frozen=True)
class CountedApproval:
    """An approval that counted towards the quorum."""

    user_id: str
    email: str
    at: datetime


@dataclass(frozen=True)
class Assessment:
    """Everything the signer needs to write a receipt; produced only when every check passed."""

    request_id: str
    scope: Scope
    requester: str
    approvals: tuple[CountedApproval, ...]
    approver: CountedApproval
    issued_at: datetime
    expires_at: datetime
    request_deadline: datetime
    requester_proof: RequesterProof | None = None


# The codes of the branch-and-event rule, per origin that has one (``_check_branch_rule``).
_BRANCH_RULE_CODES: Mapping[str, tuple[str, str]] = {
    "oidc": ("oidc_branch_not_allowed", "oidc_event_not_allowed"),
    "github": ("github_branch_not_allowed", "github_event_not_allowed"),
}


def _check_branch_rule(
    table: str,
    platform: str | None,
    branches: Sequence[str],
    events: Sequence[str],
    ref: str | None,
    event: str | None,
) -> None:
    """The branch-and-event rule of an ``[environments.<name>.<table>]`` table (``oidc`` or ``github``), one
    function for both origins: ``ref`` must name one of ``branches`` (when listed), and ``event`` be in
    ``events`` or, with a branch rule and no ``events``, in ``REF_BOUND_EVENTS[platform]``."""
    branch_code, event_code = _BRANCH_RULE_CODES[table]
    if branches and ref not in {f"refs/heads/{b}" for b in branches}:
        raise EvidenceError(branch_code, reason="rule", what="branch")
    # An event rule is an allowlist; an origin naming no event matches none. With only a branch rule, only a
    # job whose ref names the code that runs may ask: the branch rule cannot speak for any other.
    if events and event not in events:
        raise EvidenceError(event_code, reason="event")
    if branches and not events:
        if event is None:
            raise EvidenceError(event_code, reason="no_event", table=table)
        if platform is None or event not in REF_BOUND_EVENTS[platform]:
            raise EvidenceError(event_code, reason="ref_unbound", event=event, table=table)


def _check_oidc_allowed(policy: Policy, env: Environment, claim: RequestClaim) -> None:
    """The environment's ``[environments.<name>.oidc]`` rules: issuer, repository, branch, event."""
    rules = env.oidc
    if rules is None or claim.issuer_name not in rules.issuers:
        raise EvidenceError("oidc_issuer_not_allowed", reason="rule", what="issuer")
    if rules.repositories and claim.scope.repo not in rules.repositories:
        raise EvidenceError("oidc_repository_not_allowed", reason="rule", what="repository")
    issuer = policy.oidc.issuers.get(claim.issuer_name or "")
    kind = issuer.kind if issuer is not None else None
    _check_branch_rule("oidc", kind, rules.branches, rules.events, claim.ref, claim.event)


def _check_github_allowed(env: Environment, ref: str | None, event: str | None) -> None:
    """The environment's ``[environments.<name>.github]`` rule, if it has one (opt-in: without it the
    approvers are the check): the webhook's ``ref`` and ``event``, as GitHub signed them."""
    if env.github is not None:
        _check_branch_rule("github", "github", env.github.branches, env.github.events, ref, event)


def _check_ci_secret_allowed(env: Environment) -> None:
    if not env.ci_secret:
        raise EvidenceError("ci_secret_not_allowed", reason="oidc_only")


def check_ci_secret_allowed(body: bytes, policy: Policy) -> None:
    """Refuse, as the request arrives, a shared-secret request for an environment with ``ci_secret =
    false``. A body that does not parse is left to the usual refusals."""
    try:
        parsed = parse_ci_request_body(body)
    except EvidenceError:
        return
    env = policy.environments.get(parsed.environment)
    if env is not None:
        _check_ci_secret_allowed(env)


def check_oidc_request(
    token: str, body: bytes, policy: Policy, issuers: Mapping[str, oidc.Issuer], now: datetime
) -> RequestClaim:
    """Check an OIDC-authenticated ``POST /v1/requests`` as it arrives: the token (signature, issuer,
    audience, times at ``now``), the body's agreement with it, and the environment's OIDC rules."""
    oidc.verify_token(token, issuers, now)
    claim = _oidc_claim(OidcEvidence(token, body), policy)
    _check_oidc_allowed(policy, policy.environment(claim.scope.environment), claim)
    return claim


def _requester_email(requester: str) -> str | None:
    candidate = requester.removeprefix("email:")
    return candidate.casefold() if "@" in candidate else None


def _verified_origin(
    policy: Policy,
    secrets: Secrets,
    request_id: str,
    origin: Origin,
    oidc_issuers: Mapping[str, oidc.Issuer] | None,
) -> tuple[int, RequestClaim, Environment]:
    """Check that ``origin`` is authentic and bound to ``request_id``; return its signed time ``t0`` (the
    start of the request's lifetime), what it asks for, and its environment. Shared by :func:`assess` and
    :func:`assess_outcome`, so a receipt and a recorded refusal stand on the same checks of the origin."""
    if not is_request_id(request_id):
        raise EvidenceError("bad_request", reason="request_id")
    if isinstance(origin, OidcEvidence):
        # The token's times are checked as it arrives; here the request's lifetime, from iat, governs.
        t0 = oidc.verify_token(origin.token, oidc_issuers or {}, None).issued_at
    elif isinstance(origin, GitHubEvidence):
        t0 = _verify_github(secrets.github_webhook_secret, origin)
    elif isinstance(origin, CiEvidence):
        t0 = _verify_ci_mac(
            secrets.ci_secret, origin.method, origin.path, origin.body, origin.timestamp, origin.signature
        )
    else:
        t0 = _verify_slack_mac(
            secrets.slack_signing_secret,
            origin.body,
            origin.timestamp,
            origin.signature,
            "bad_slack_signature",
        )
    claim = origin_claim(origin, policy)
    env = policy.environment(claim.scope.environment)  # raises unknown_environment
    if isinstance(origin, OidcEvidence):
        _check_oidc_allowed(policy, env, claim)
    elif isinstance(origin, GitHubEvidence):
        _check_github_allowed(env, claim.ref, claim.event)
    elif isinstance(origin, CiEvidence):
        _check_ci_secret_allowed(env)
    # The request id is a function of the origin: clicks on this request's card name this id (and the card
    # shows it), so they cannot be combined with any other origin.
    if request_id != request_id_for(origin):
        raise EvidenceError("request_id_mismatch", reason="origin")
    return t0, claim, env


def assess(
    *,
    policy: Policy,
    secrets: Secrets,
    request_id: str,
    origin: Origin,
    clicks: Sequence[SlackEvidence],
    emails: Mapping[str, str],
    now: datetime,
    oidc_issuers: Mapping[str, oidc.Issuer] | None = None,
) -> Assessment:
    """Decide whether a receipt may be issued; return what it says, or raise :class:`EvidenceError`.

    Who may approve comes from ``policy`` alone: listed approvers and the group members pinned in its
    ``[groups]`` (the bot supplies no membership). ``emails`` come from the bot (which asked Slack); see
    docs/security.md for how far they are trusted: an email can only refuse (a requester match) or label an
    approver, never admit one. ``oidc_issuers`` are the policy's issuers with the keys pinned in the
    signer's own files (never from the bot).
    """
    now_s = _epoch(now)
    # 1. The request is authentic; its scope and requester come from its own signed bytes.
    t0, claim, env = _verified_origin(policy, secrets, request_id, origin, oidc_issuers)
    facts = card_facts(request_id, claim, origin, policy)

    # Freshness at signing time is the request's own lifetime [t0, t0 + request_ttl], by the signer's clock.
    deadline = t0 + env.request_ttl.total_seconds()
    if t0 > now_s + MAX_SKEW:
        raise EvidenceError("evidence_outside_lifetime", reason="future")
    if now_s >= deadline:
        raise EvidenceError("request_expired", reason="ttl")

    # 2./3. Each approval is a genuine approve click on this request's card, inside the request lifetime.
    if not clicks:
        raise EvidenceError("insufficient_approvals", reason="none")
    parsed: list[ApproveClick] = []
    for i, click in enumerate(clicks):
        if len(click.body) > MAX_CLICK_BODY:
            raise EvidenceError("bad_click", reason="too_large", index=i)
        try:
            ts = _verify_slack_mac(
                secrets.slack_signing_secret,
                click.body,
                click.timestamp,
                click.signature,
                "bad_click_signature",
            )
        except EvidenceError as exc:
            raise EvidenceError(exc.code, reason="approval", index=i, detail=exc.message) from None
        if not t0 <= ts <= deadline:
            raise EvidenceError("evidence_outside_lifetime", reason="approval_time", index=i)
        try:
            parsed.append(parse_approve_click(click.body, ts, facts, policy))
        except EvidenceError as exc:
            raise EvidenceError(
                exc.code, reason="approval", index=i, detail=exc.message, fields=exc.fields
            ) from None

    # 4. Policy: every clicker is authorized and not the requester; distinct users reach the quorum.
    requester_uid = policy.resolve_requester(claim.requester)
    requester_mail = _requester_email(claim.requester)
    # Whoever started this run attempt asked for this deploy too (a re-run of another's run).
    trigger_uid = policy.resolve_requester(claim.triggered_by) if claim.triggered_by else None
    first_click: dict[str, ApproveClick] = {}
    for click_ in sorted(parsed, key=lambda c: c.at):  # stable: equal times keep the order given
        uid = click_.user_id
        if not policy.authorizes(claim.scope.environment, uid):
            raise EvidenceError(
                "not_authorized", reason="approve", user=uid, environment=claim.scope.environment
            )
        if not env.allow_self_approval and (
            uid in (requester_uid, trigger_uid)
            or (requester_mail is not None and emails.get(uid, "").casefold() == requester_mail)
        ):
            raise EvidenceError("self_approval", reason="self", user=uid)
        first_click.setdefault(uid, click_)  # a repeated click by the same user counts once
    if len(first_click) < env.required_approvals:
        raise EvidenceError(
            "insufficient_approvals", reason="quorum", count=len(first_click), required=env.required_approvals
        )
    counted = tuple(
        CountedApproval(c.user_id, emails.get(c.user_id, ""), datetime.fromtimestamp(c.at, UTC))
        for c in list(first_click.values())[: env.required_approvals]
    )
    newest = max([t0, *(c.at for c in parsed)])
    if now_s + CLOCK_BEHIND_TOLERANCE < newest:
        raise EvidenceError("clock_behind", reason="evidence", seconds=int(newest - now_s))
    issued_at = datetime.fromtimestamp(int(max(now_s, newest)), UTC)
    return Assessment(
        request_id=request_id,
        scope=claim.scope,
        requester=claim.requester,
        approvals=counted,
        approver=counted[-1],  # the click that completed the quorum
        issued_at=issued_at,
        # The receipt lives receipt_ttl from issue, not capped by the request lifetime (docs/security.md).
        expires_at=issued_at + timedelta(seconds=int(env.receipt_ttl.total_seconds())),
        request_deadline=datetime.fromtimestamp(deadline, UTC),
        requester_proof=claim.proof,
    )


# --- final outcomes other than approval (the audit log's complete record) -------------------------------

OUTCOMES = ("denied", "cancelled", "expired")


@dataclass(frozen=True)
class OidcCall:
    """A call authenticated by a job's OIDC ID token alone (an OIDC pipeline's cancel): the raw token."""

    token: str = field(repr=False)  # a bearer credential until it expires: never logged


@dataclass(frozen=True)
class OutcomeAssessment:
    """A final outcome other than approval, checked: what the audit log records for it.

    ``decided_at`` is when it happened: the signed timestamp of the deny submission or the cancel call, or
    for an expiry the end of the request's lifetime. ``by`` and ``reason`` come from the signed deny
    submission itself (never from the bot's word); ``by`` for a cancel is the requester the origin names.
    """

    request_id: str
    outcome: str
    scope: Scope
    requester: str
    decided_at: datetime
    request_deadline: datetime
    by: str | None = None
    reason: str | None = None


def parse_deny_submission(body: str, request_id: str, policy: Policy, scope: Scope) -> tuple[str, str]:
    """Who denied ``request_id`` and why, from the deny modal's submission (raw form body, signature already
    checked): ``(user_id, reason)``.

    Requires a single ``payload`` form field holding a ``view_submission`` of the deny modal
    (``callback_id``) whose ``private_metadata`` is this request and whose shown form is exactly this
    request's (:func:`card.check_deny_view`: the member saw "Deny" and this scope), a valid user who may
    decide this environment by the policy, the policy's workspace if it names one, and a reason of 1 to
    :data:`card.REASON_MAX` characters (after trimming, as the bot trims). Codes: ``bad_denial``,
    ``wrong_request``, ``deny_form_mismatch``, ``wrong_team``, ``not_authorized``.
    """
    form = _parse_form(body, "bad_denial", "deny submission")
    if set(form) != {"payload"}:
        raise EvidenceError("bad_denial", reason="deny_form")
    payload = _strict_json(form["payload"], "bad_denial", "deny submission payload")
    if not isinstance(payload, dict) or payload.get("type") != "view_submission":
        raise EvidenceError("bad_denial", reason="not_view_submission")
    view = payload.get("view")
    if not isinstance(view, dict) or view.get("callback_id") != card.DENY_CALLBACK:
        raise EvidenceError("bad_denial", reason="not_deny_form")
    if view.get("private_metadata") != request_id:
        raise EvidenceError("wrong_request", reason="denial")
    try:
        card.check_deny_view(view, request_id, scope)
    except card.CardMismatch as exc:
        raise EvidenceError("deny_form_mismatch", reason="relayed", detail=str(exc)) from None
    environment = scope.environment
    user_id, _ = _slack_actor(payload, policy, "bad_denial", "the submission")
    state = view.get("state")
    values = state.get("values") if isinstance(state, dict) else None
    block = values.get(card.REASON_BLOCK) if isinstance(values, dict) else None
    action = block.get(card.REASON_ACTION) if isinstance(block, dict) else None
    value = action.get("value") if isinstance(action, dict) else None
    reason = value.strip() if isinstance(value, str) else ""
    if not reason or len(reason) > card.REASON_MAX:
        raise EvidenceError("bad_denial", reason="reason_length", limit=card.REASON_MAX)
    if not policy.authorizes(environment, user_id):
        raise EvidenceError("not_authorized", reason="decide", user=user_id, environment=environment)
    return user_id, reason


def _within_lifetime(ts: int, t0: int, deadline: float, what: str) -> None:
    # Lenient by MAX_SKEW at both ends, unlike approvals: the bot already accepted this refusal by its own
    # clock, and refusing to *record* it over a few seconds of skew would lose it from the log, while a
    # recorded refusal authorizes nothing.
    if not t0 - MAX_SKEW <= ts <= deadline + MAX_SKEW:
        raise EvidenceError("evidence_outside_lifetime", reason="outcome_time", what=what)


def assess_outcome(
    *,
    policy: Policy,
    secrets: Secrets,
    request_id: str,
    outcome: str,
    origin: Origin,
    denial: SlackEvidence | None,
    cancel: CiEvidence | OidcCall | None,
    now: datetime,
    oidc_issuers: Mapping[str, oidc.Issuer] | None = None,
) -> OutcomeAssessment:
    """Check the evidence of a denial, a cancel or an expiry of ``request_id``; return what to record.

    The origin is checked as for a receipt (authentic, bound to the id). Then: ``denied`` needs the deny
    submission signed by Slack (who and why are read from it, see :func:`parse_deny_submission`);
    ``cancelled`` needs the pipeline's cancel call for this request (the CI MAC, or for an OIDC request a
    token issued to the job that made the request); ``expired`` needs nothing but the signer's clock past the
    request's lifetime. Evidence is not checked for freshness against ``now``: the bot may retry recording
    long after the fact, and one outcome per request is enforced by the service, not by time.
    """
    if outcome not in OUTCOMES:
        raise EvidenceError("bad_request", reason="outcome", outcomes=", ".join(OUTCOMES))
    now_s = _epoch(now)
    t0, claim, env = _verified_origin(policy, secrets, request_id, origin, oidc_issuers)
    deadline = t0 + env.request_ttl.total_seconds()

    def made(decided_at: int | float, by: str | None = None, reason: str | None = None) -> OutcomeAssessment:
        return OutcomeAssessment(
            request_id=request_id,
            outcome=outcome,
            scope=claim.scope,
            requester=claim.requester,
            decided_at=datetime.fromtimestamp(decided_at, UTC),
            request_deadline=datetime.fromtimestamp(deadline, UTC),
            by=by,
            reason=reason,
        )

    if outcome == "expired":
        if now_s < deadline:
            raise EvidenceError("not_expired", reason="clock")
        return made(deadline)
    if outcome == "denied":
        if denial is None:
            raise EvidenceError("bad_denial", reason="no_submission")
        if len(denial.body) > MAX_CLICK_BODY:
            raise EvidenceError("bad_denial", reason="submission_too_large")
        ts = _verify_slack_mac(
            secrets.slack_signing_secret,
            denial.body,
            denial.timestamp,
            denial.signature,
            "bad_denial_signature",
        )
        _within_lifetime(ts, t0, deadline, "denial")
        user_id, reason = parse_deny_submission(denial.body, request_id, policy, claim.scope)
        return made(ts, f"slack:{user_id}", reason)
    if cancel is None:
        raise EvidenceError("bad_cancel", reason="no_call")
    if isinstance(cancel, OidcCall):
        if not isinstance(origin, OidcEvidence):
            raise EvidenceError("bad_cancel", reason="token_for_secret")
        verified = oidc.verify_token(cancel.token, oidc_issuers or {}, None)
        check_same_oidc_job(origin.token, cancel.token, policy)
        ts = verified.issued_at
        who = f"oidc:{verified.claims.get('sub')}"
    else:
        if (cancel.method, cancel.path) != ("POST", f"/v1/requests/{request_id}/cancel"):
            raise EvidenceError("bad_cancel", reason="not_cancel_path")
        # An environment that refuses the shared secret's requests refuses its cancels too: otherwise any
        # holder of it (any job of any repository using it) could close that environment's requests.
        _check_ci_secret_allowed(env)
        ts = _verify_ci_mac(
            secrets.ci_secret, cancel.method, cancel.path, cancel.body, cancel.timestamp, cancel.signature
        )
        who = "ci_secret"  # anyone holding the CI secret: the log says so rather than naming a person
    _within_lifetime(ts, t0, deadline, "cancel")
    return made(ts, who)
