"""Test data and fakes shared by several test modules: policy files, a fake clock, a recording messenger.

Plain values and classes, not pytest fixtures, so that a module can build its own variant (another
environment, another start time) without a fixture for each.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import redis.asyncio as aioredis

from keyturn.bot.models import CardRef, DeployRequest, Scope
from keyturn.bot.notices import SlackIntents
from keyturn.signer.policy import Policy
from tests.harness import ROOT

# The policy `keyturn dev` runs with (the emulator's sample workspace): production asks for a confirmation.
DEV_POLICY_PATH = ROOT / "bot" / "dev_policy.toml"
DEV_POLICY = Policy.from_bytes(DEV_POLICY_PATH.read_bytes())
SHA = "4f2a9c0d3b8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a"
REQUEST_ID = "req_01JDQ4Z8Y3K6W2V7T5R9P0M1N2"

# The header of the policies the process tests (tests/bot/test_*_replicas, _limits, ...) give the real bot
# and signer: the emulator's sample team, and one mapped CI identity (the requester of every test request).
POLICY_HEAD = """\
version = 1
[slack]
command = "/keyturn"
team_id = "T0KEYTURN"
[identities]
"github:alice" = "U0ALICE"
"""


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(value)  # a TOML basic string or integer, for the plain ASCII values used here


def policy_toml(
    environment: str = "staging",
    *,
    channel: str = "C0STAGING",
    approvers: tuple[str, ...] = ("U0BOB", "U0CAROL"),
    required_approvals: int = 1,
    request_ttl: str = "30m",
    receipt_ttl: str = "30m",
    **settings: Any,
) -> str:
    """A policy file with :data:`POLICY_HEAD` and one environment; ``settings`` are further keys of it
    (``allow_self_approval=False``, ``remind_every="2s"``, ...), written in the order given."""
    lines = [
        f"[environments.{environment}]",
        f"channel = {_toml_value(channel)}",
        f"approvers = {_toml_value(approvers)}",
        f"required_approvals = {required_approvals}",
        f"request_ttl = {_toml_value(request_ttl)}",
        f"receipt_ttl = {_toml_value(receipt_ttl)}",
        *(f"{key} = {_toml_value(value)}" for key, value in settings.items()),
    ]
    return POLICY_HEAD + "\n".join(lines) + "\n"


# One staging environment, one approval, no self-approval and no confirm step: the replica and abuse tests.
STAGING_POLICY = policy_toml(allow_self_approval=False, confirm_approve=False)


def make_request(now: datetime | None = None, **changes: Any) -> DeployRequest:
    """A pending request (``REQUEST_ID``) by alice (U0ALICE) to deploy acme/web at ``SHA`` to production,
    needing two approvals, created at ``now`` (default: the wall clock) for 30 minutes; ``changes`` are
    fields to set otherwise."""
    created = now or datetime.now(UTC)
    fields: dict[str, Any] = {
        "id": REQUEST_ID,
        "scope": Scope(repo="acme/web", sha=SHA, environment="production", workflow="deploy"),
        "requester": "github:alice",
        "requester_slack_id": "U0ALICE",
        "created_at": created,
        "expires_at": created + timedelta(minutes=30),
        "required_approvals": 2,
    }
    return DeployRequest(**(fields | changes))


class Clock:
    """A fake clock for ``clock=`` parameters: ``clock()`` is ``clock.now``, moved by tests."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw: float) -> None:
        """Move the clock forward (``timedelta`` keywords)."""
        self.now += timedelta(**kw)


# The Messenger's intent methods (keyturn.bot.notices.SlackIntents), recorded by RecordingMessenger.
INTENTS = ("announce_outcome", "remind", "escalate", "escalate_dm", "announce_sign_failure")


class RecordingMessenger(SlackIntents):
    """A ``keyturn.bot.ports.Messenger`` that records what would go to Slack.

    The intent methods (outcome, reminder, escalation...) are the real messenger's (``SlackIntents``), so they
    send the real words through the primitives recorded here; ``intents`` lists each as ``(intent, request
    id)``. ``calls`` lists every primitive call as ``(kind, what)``; ``replies`` the thread replies' text and
    ``dms`` the ``(user, text)`` of each DM. Tests steer Slack's side: ``card_ok = False`` fails every card
    post, ``fail_posts = n`` the next n; ``groups`` is what Slack says about user groups; ``link`` the
    permalink.
    """

    def __init__(self, *, link: str | None = None) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.intents: list[tuple[str, str]] = []
        for name in INTENTS:  # each intent is recorded, then runs as the real messenger's
            setattr(self, name, self._recorded(name, getattr(self, name)))
        self.replies: list[str] = []
        self.dms: list[tuple[str, str]] = []
        self.card_ok = True
        self.fail_posts = 0
        self.posted = asyncio.Event()
        self.link = link
        self.groups: dict[str, frozenset[str]] = {
            "S0ONCALL": frozenset({"U0ERIN"}),
            "S0LEADS": frozenset({"U0FRANK"}),
        }

    async def post_card(self, request: DeployRequest) -> CardRef:
        self.calls.append(("post_card", request.id))
        if not self.card_ok:
            raise RuntimeError("slack down")
        if self.fail_posts:
            self.fail_posts -= 1
            raise RuntimeError("slack down")
        self.posted.set()
        return CardRef(channel="C0DEPLOYS", ts="1.000100")

    async def update_card(self, request: DeployRequest) -> None:
        self.calls.append(("update_card", request.status))

    def _recorded(self, name: str, intent: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
        async def recorded(*args: Any, **kwargs: Any) -> None:
            request = next(a for a in args if isinstance(a, DeployRequest))
            self.intents.append((name, request.id))
            await intent(*args, **kwargs)

        return recorded

    async def reply_in_thread(self, card: CardRef, text: str) -> None:
        self.calls.append(("reply", text))
        self.replies.append(text)

    async def send_dm(self, user_id: str, text: str) -> None:
        self.calls.append(("dm", user_id))
        self.dms.append((user_id, text))

    async def ephemeral(self, channel: str, user_id: str, text: str) -> None:
        self.calls.append(("ephemeral", user_id))

    async def permalink(self, card: CardRef) -> str | None:
        return self.link

    async def open_deny_modal(self, trigger_id: str, request: DeployRequest) -> None:
        self.calls.append(("modal", trigger_id))

    async def group_members(self, group_id: str) -> frozenset[str]:
        self.calls.append(("group_members", group_id))
        return self.groups.get(group_id, frozenset())

    async def user_email(self, user_id: str) -> str | None:
        return f"{user_id.lower()}@example.com"

    async def user_by_email(self, email: str) -> str | None:
        return None


class RestartingRedis(aioredis.Redis):
    """A client whose next ``restarts`` script runs each meet a Redis that has just restarted: the script
    cache is empty when EVALSHA arrives, also right after the client loaded the script again."""

    restarts = 0

    async def evalsha(self, sha: str, numkeys: int, *keys_and_args: str) -> Any:  # type: ignore[override]
        if self.restarts > 0:
            self.restarts -= 1
            await self.script_flush()
        return await super().evalsha(sha, numkeys, *keys_and_args)
