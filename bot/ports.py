"""The two seams inside the bot, as protocols.

* ``Messenger``: everything the approval logic needs from Slack (implemented in ``bot/messenger.py``).
  The approval logic never builds Block Kit or calls the Web API itself.
* ``Approvals``: the use cases the Slack listeners and the CI API call (implemented in ``bot/approvals.py``).
  Listeners ack, parse and delegate; the service rules, and refuses with ``Refused`` (a stable ``code`` plus
  facts; the sentence to show the user comes from ``keyturn.signer.words``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Protocol

from keyturn.bot.models import CardRef, DeployRequest, OriginEvidence, RequestIn, SlackEvidence
from keyturn.signer.errors import KeyturnError
from keyturn.signer.words import Fact


class Refused(KeyturnError):
    """A user action that changes nothing: a stable ``code`` and its ``facts``; the sentence to show
    (ephemeral in Slack, the ``message`` of a 4xx in the API) is rendered from them by
    ``keyturn.signer.words``.

    Codes: ``not_an_approver``, ``self_approval``, ``already_approved``, ``not_pending`` (already decided,
    expired or cancelled; fact ``status``), ``unknown_request``, ``unknown_environment`` (fact
    ``environment``), ``reason_required``, ``quorum_not_reached``, ``signing_failed``,
    ``signing_in_progress``, ``evidence_gone``.
    """

    def __init__(self, code: str, message: str | None = None, /, **facts: Fact) -> None:
        # ``message``: a sentence used as given (a test's stand-in); Keyturn's raise sites pass none.
        super().__init__(message, code=code, facts=facts)


class Messenger(Protocol):
    """What the approval logic asks of Slack. Every method retries Slack trouble (429/5xx) itself.

    The approval logic says what happened through the intent methods (``announce_outcome``, ``remind``,
    ``escalate``...); the messenger decides the words (``keyturn.bot.notices``) and where they go."""

    async def post_card(self, request: DeployRequest) -> CardRef:
        """Post the request's card in its environment's channel and return where it lives."""
        ...

    async def update_card(self, request: DeployRequest) -> None:
        """Re-render the card in place from the request's current state (approvals, outcome)."""
        ...

    async def announce_outcome(self, request: DeployRequest, ttl: timedelta | None = None) -> None:
        """Tell the card's thread and the requester the request's final outcome (``ttl``: its lifetime, for
        an expiry)."""
        ...

    async def remind(
        self,
        request: DeployRequest,
        *,
        waiting: Sequence[str],
        groups: Sequence[str],
        now: datetime,
        final: bool,
    ) -> None:
        """Remind the approvers who have not acted (``waiting`` users, unresolved ``groups``) in the thread;
        ``final``: the last call before expiry."""
        ...

    async def escalate(
        self,
        request: DeployRequest,
        *,
        users: Sequence[str],
        groups: Sequence[str],
        after: int,
        now: datetime,
    ) -> None:
        """Escalate in the thread to ``users`` and ``groups``: no decision after ``after`` reminders."""
        ...

    async def escalate_dm(self, user_id: str, request: DeployRequest, *, after: int, now: datetime) -> None:
        """Ask one escalation contact directly for a decision, with a link to the card."""
        ...

    async def announce_sign_failure(self, request: DeployRequest, code: str, detail: str) -> None:
        """The quorum is reached but the signer issued no receipt (``code``, its ``detail``): say so."""
        ...

    async def reply_in_thread(self, card: CardRef, text: str) -> None:
        """Post ``text`` (already escaped mrkdwn) as a reply in the card's thread."""
        ...

    async def send_dm(self, user_id: str, text: str) -> None:
        """Open a DM with ``user_id`` and post ``text`` (already escaped mrkdwn)."""
        ...

    async def ephemeral(self, channel: str, user_id: str, text: str) -> None:
        """Show ``text`` to one user only."""
        ...

    async def permalink(self, card: CardRef) -> str | None:
        """A link to the card's message (``chat.getPermalink``), or None if Slack cannot give one."""
        ...

    async def open_deny_modal(self, trigger_id: str, request: DeployRequest) -> None:
        """Open the deny-with-reason modal. Must be called within 3 s of the click (trigger_id lifetime)."""
        ...

    async def group_members(self, group_id: str) -> frozenset[str]:
        """Members of a Slack user group (briefly cached)."""
        ...

    async def user_email(self, user_id: str) -> str | None:
        """The user's email, if Slack shares it."""
        ...

    async def user_by_email(self, email: str) -> str | None:
        """The Slack user id for an email, or None (``users_not_found``)."""
        ...


class Approvals(Protocol):
    """The approval use cases. Every method is safe to run twice."""

    async def create(self, body: RequestIn, origin: OriginEvidence) -> tuple[DeployRequest, bool]:
        """Create a request (or return the pending one with the same scope); True if newly created."""
        ...

    async def approve(self, request_id: str, user_id: str, evidence: SlackEvidence) -> DeployRequest:
        """Record ``user_id``'s approval; sign and finish when the quorum is reached. Raises ``Refused``."""
        ...

    async def deny(
        self, request_id: str, user_id: str, reason: str, evidence: SlackEvidence | None = None
    ) -> DeployRequest:
        """Deny with a reason; ``evidence``: the signed deny submission (the record). Raises ``Refused``."""
        ...

    async def check_can_decide(self, request_id: str, user_id: str) -> DeployRequest:
        """Raise ``Refused`` unless ``user_id`` may decide this request now (checked before the modal)."""
        ...

    async def cancel(self, request_id: str, evidence: OriginEvidence | None = None) -> DeployRequest:
        """Cancel a pending request (the pipeline gave up); ``evidence``: the cancel call, for the record."""
        ...

    async def get(self, request_id: str) -> DeployRequest:
        """The request, or ``Refused("unknown_request")``."""
        ...

    async def pending_for(self, user_id: str) -> list[DeployRequest]:
        """Pending requests ``user_id`` may approve."""
        ...
