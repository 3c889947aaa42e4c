"""The bot's domain records: what a deploy request is, at every boundary (API in, Redis, API out).

Shared by the approval service (``bot/approvals.py``), the Redis store, the CI API and the Slack side (cards,
listeners). Security-relevant models are frozen and forbid unknown fields. See docs/design.md §8.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from keyturn.signer import contract

# The scope grammar is the signer's (signer/contract.py): the bot takes in exactly what the signer can sign.
REQUEST_ID_RE = contract.REQUEST_ID_RE


def _valid(problem: Callable[[str], str | None], what: str) -> AfterValidator:
    def check(value: str) -> str:
        if (why := problem(value)) is not None:
            raise ValueError(f"not a valid {what}: {why}")
        return value

    return AfterValidator(check)


def _request_id_problem(value: str) -> str | None:
    return None if contract.is_request_id(value) else "must be 'req_' + a ULID"


Repo = Annotated[str, _valid(contract.repo_problem, "repository (owner/name)")]
Sha = Annotated[str, _valid(contract.sha_problem, "commit sha (40 or 64 lowercase hex)")]
EnvName = Annotated[str, _valid(contract.environment_problem, "environment name")]
Workflow = Annotated[str, _valid(contract.workflow_problem, "workflow name")]
RequestId = Annotated[str, _valid(_request_id_problem, "request id (req_ + ULID)")]


class Status(StrEnum):
    """A request's status. Final states never change (see ``bot/lifecycle.py``)."""

    PENDING = "PENDING"
    APPROVED = "APPROVED"
    DENIED = "DENIED"
    EXPIRED = "EXPIRED"
    CANCELLED = "CANCELLED"

    @property
    def final(self) -> bool:
        """True for every state but PENDING."""
        return self is not Status.PENDING


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class Scope(_Frozen):
    """Exactly what a receipt authorizes: this repo, this commit, this environment, this workflow."""

    repo: Repo
    sha: Sha
    environment: EnvName
    workflow: Workflow


class RequestIn(_Frozen):
    """The body of ``POST /v1/requests`` (camelCase on the wire)."""

    repo: Repo
    sha: Sha
    environment: EnvName
    workflow: Workflow
    requester: str = Field(min_length=1, max_length=255)  # as the signer (signer/evidence.py)
    ref: str | None = Field(default=None, max_length=500)
    run_url: str | None = Field(default=None, alias="runUrl", max_length=2000)
    title: str | None = Field(default=None, max_length=500)
    callback_url: str | None = Field(default=None, alias="callbackUrl", max_length=2000)

    @property
    def scope(self) -> Scope:
        """The scope this request asks for."""
        return Scope(repo=self.repo, sha=self.sha, environment=self.environment, workflow=self.workflow)


class SlackEvidence(_Frozen):
    """A Slack request exactly as received (raw form body, signature headers), for the signer to re-check."""

    body: str
    timestamp: str
    signature: str


class OriginEvidence(_Frozen):
    """The request that started it all, as received: a CI API call or a slash command. See design.md §5."""

    kind: Literal["ci", "slack_command", "oidc", "github"]
    body: str  # base64 of the raw bytes for "ci", "oidc" and "github"; the raw form body for "slack_command"
    timestamp: str  # for "oidc": the token's iat (the request's lifetime starts there, as at the signer)
    signature: str  # for "oidc": the raw ID token
    method: str | None = None  # "ci" only
    path: str | None = None  # "ci" only
    # "github" only: the delivery id, the run's workflow path (as the approver read it) and the signer's
    # arrival stamp; ``timestamp`` is the arrival time it dates, ``signature`` GitHub's X-Hub-Signature-256.
    delivery: str | None = None
    workflow: str | None = None
    stamp: str | None = None


class Approval(_Frozen):
    """One counted approval."""

    user_id: str
    email: str | None = None
    at: datetime


class CardRef(_Frozen):
    """Where the request's card lives in Slack."""

    channel: str
    ts: str


class DeployRequest(BaseModel):
    """A deploy request as stored in Redis. Mutated only through ``bot/lifecycle.py`` transitions."""

    model_config = ConfigDict(extra="forbid")

    id: RequestId
    scope: Scope
    requester: str
    requester_slack_id: str | None = None
    # OIDC: the Slack user (by the policy) who started this run attempt when that is not the requester (a
    # re-run of another's run); refused as an approver like the requester, as the signer refuses them.
    started_by_slack_id: str | None = None
    ref: str | None = None
    run_url: str | None = None
    # OIDC and GitHub origins: the event that started the job, from the signed origin (the card shows it).
    event: str | None = None
    title: str | None = None
    callback_url: str | None = None
    origin_kind: Literal["ci", "slack_command", "oidc", "github"] = "ci"
    status: Status = Status.PENDING
    created_at: datetime
    expires_at: datetime
    required_approvals: int
    approvals: list[Approval] = Field(default_factory=list)
    decided_by: str | None = None
    decided_at: datetime | None = None
    deny_reason: str | None = None
    # The evidence of a denial or cancel as received (Slack's signed deny submission; the pipeline's cancel
    # call), kept until the signer has recorded the outcome in its audit log (docs/security.md, "The record").
    deny_evidence: SlackEvidence | None = None
    cancel_evidence: OriginEvidence | None = None
    receipt_id: str | None = None
    receipt_expires_at: datetime | None = None
    card: CardRef | None = None
    card_error: str | None = None
    version: int = 0  # bumped on every write; the compare-and-swap token

    def asked_by(self, user_id: str) -> bool:
        """Whether ``user_id`` asked for this deploy: the requester, or who started this run attempt."""
        return user_id in (self.requester_slack_id, self.started_by_slack_id)
