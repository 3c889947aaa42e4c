"""Expiry, reminders and escalation through the real approval service, store and timers on a real Redis.

Slack is a recording messenger and the signer is never reached (no request gets to quorum). Time is a fake
clock; the leader lease and ticks are driven directly.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis

from keyturn.bot.approvals import ApprovalService
from keyturn.bot.models import DeployRequest, OriginEvidence, RequestIn, SlackEvidence, Status
from keyturn.bot.scheduler import DUE_KEY, JobContext, StaleLeader
from keyturn.bot.store import RequestStore
from keyturn.bot.timer_jobs import TimerJobs, TimerRunner, install, reminder
from keyturn.signer import wire
from keyturn.signer.policy import Policy
from tests.fixtures import Clock, RecordingMessenger

SHA = "4f8a2cd91ef7a2c7f3a5f0aa12d93b33f2d40e17"
POLICY = b"""
version = 1
[identities]
"github:alice" = "U0ALICE"
[environments.production]
channel = "C0DEPLOYS"
approvers = ["U0BOB", "U0CAROL", "U0ALICE"]
approver_groups = ["S0ONCALL"]
required_approvals = 2
request_ttl = "30m"
receipt_ttl = "15m"
remind_every = "10m"
escalate_after = 2
escalate_to = ["U0DAVE"]
escalate_to_groups = ["S0LEADS"]
[environments.quiet]
channel = "C0QUIET"
approvers = ["U0BOB"]
required_approvals = 1
request_ttl = "30m"
receipt_ttl = "15m"
[groups.S0ONCALL]
members = ["U0ERIN"]
"""
T0 = datetime(2026, 3, 2, 9, 0, 0, tzinfo=UTC)


class NoSigner:
    async def sign(
        self,
        request_id: str,
        origin: wire.CiOrigin | wire.SlackCommandOrigin | wire.OidcOrigin | wire.GitHubOrigin,
        approvals: Sequence[wire.SlackClick],
        emails: Mapping[str, str],
    ) -> dict[str, Any]:
        raise AssertionError("no request reaches quorum in these tests")

    async def record_outcome(
        self,
        request_id: str,
        outcome: str,
        origin: wire.CiOrigin | wire.SlackCommandOrigin | wire.OidcOrigin | wire.GitHubOrigin,
        *,
        denial: wire.SlackClick | None = None,
        cancel: wire.CiOrigin | wire.OidcCall | None = None,
    ) -> int:
        return 1  # the record is tested with a real signer (tests/e2e/test_outcome_record.py)


@dataclass
class World:
    service: ApprovalService
    messenger: RecordingMessenger
    clock: Clock
    runner: TimerRunner
    redis: aioredis.Redis
    store: RequestStore

    async def create(self, env: str = "production") -> DeployRequest:
        body = RequestIn.model_validate(
            {"repo": "acme/web", "sha": SHA, "environment": env, "workflow": "deploy.yml",
             "requester": "github:alice"}
        )  # fmt: skip
        origin = OriginEvidence(
            kind="ci", body="e30=", timestamp=str(int(self.clock.now.timestamp())), signature="v1=00",
            method="POST", path="/v1/requests",
        )  # fmt: skip
        req, is_new = await self.service.create(body, origin)
        assert is_new
        if self.messenger.card_ok:
            await asyncio.wait_for(self.messenger.posted.wait(), 5)
            await self.service.wait_idle()
        return req

    async def at(self, minutes: float) -> int:
        """Move the clock to T0 + minutes and run what is due; the number of jobs run."""
        self.clock.now = T0 + timedelta(minutes=minutes)
        assert await self.runner.timers.lease_step()
        ran = await self.runner.timers.tick()
        if self.messenger.card_ok:
            await self.service.wait_idle()
        return ran


@pytest.fixture
async def world(redis_url: str) -> AsyncIterator[World]:
    # A database of its own: the session's e2e bot (db 0) takes part in leader election too.
    client = aioredis.Redis.from_url(f"{redis_url}?db=7")
    messenger = RecordingMessenger(link="https://acme.slack.com/archives/C0DEPLOYS/p1000100")
    clock = Clock(T0)
    store = RequestStore(client, retention=timedelta(hours=1))
    policy = Policy.from_bytes(POLICY)
    service = ApprovalService(
        store,
        messenger,
        NoSigner(),
        policy,
        clock=clock,
        card_retry_first=timedelta(milliseconds=10),
        card_retry_max=timedelta(milliseconds=50),
    )
    hooks, runner = install(
        service=service, redis=client, policy=policy, messenger=messenger, store=store, clock=clock
    )
    service.hooks = hooks
    assert await runner.timers.lease_step()
    yield World(service, messenger, clock, runner, client, store)
    await runner.stop()
    await service.aclose()
    await client.aclose()


def test_reminder_times_regular_then_final_before_expiry() -> None:
    policy = Policy.from_bytes(POLICY)
    env = policy.environment("production")
    req = DeployRequest.model_validate(
        {"id": "req_01JAAAAAAAAAAAAAAAAAAAAAAA", "scope": {"repo": "acme/web", "sha": SHA,
         "environment": "production", "workflow": "w"}, "requester": "x", "created_at": T0,
         "expires_at": T0 + timedelta(minutes=30), "required_approvals": 2}
    )  # fmt: skip
    got = [reminder(req, env, n) for n in range(1, 5)]
    assert [(r.due - T0, r.final) if r else None for r in got] == [
        (timedelta(minutes=10), False),
        (timedelta(minutes=20), False),
        (timedelta(minutes=25), True),  # 5 min before expiry
        None,
    ]
    short = req.model_copy(update={"expires_at": T0 + timedelta(minutes=3)})
    assert [(r.due - T0, r.final) if r else None for r in (reminder(short, env, n) for n in (1, 2))] == [
        (timedelta(seconds=135), True),  # lead = ttl/4; no regular reminder fits before it
        None,
    ]
    assert reminder(req, policy.environment("quiet"), 1) is None  # no remind_every: no reminders


async def test_reminders_escalation_and_expiry_in_order(world: World) -> None:
    req = await world.create()
    m = world.messenger

    assert await world.at(9.9) == 0
    assert await world.at(10) == 1
    assert len(m.replies) == 1
    first = m.replies[0]
    assert first.startswith(":bell: Reminder: this deploy still needs 2 more approvals.")
    assert "<@U0BOB>" in first
    assert "<@U0CAROL>" in first
    assert "<@U0ERIN>" in first
    assert "<@U0ALICE>" not in first  # the requester cannot approve their own deploy
    assert "20m left" in first

    await world.service.approve(
        req.id, "U0BOB", SlackEvidence(body="payload=x", timestamp="1", signature="v0=0")
    )
    assert await world.at(20) == 1  # reminder 2 ...
    assert await world.at(20) == 1  # ... then the escalation it scheduled
    second, escalation = m.replies[1], m.replies[2]
    assert "needs 1 more approval." in second
    assert "<@U0BOB>" not in second
    assert "<@U0CAROL>" in second
    assert escalation.startswith(":rotating_light: Escalating: no decision after 2 reminders.")
    assert "<@U0DAVE>" in escalation
    assert "<!subteam^S0LEADS>" in escalation
    assert sorted(u for u, _ in m.dms) == ["U0DAVE", "U0FRANK"]
    link = "<https://acme.slack.com/archives/C0DEPLOYS/p1000100|Open the request>"
    assert all(text.endswith(link) and "10m left" in text for _, text in m.dms)

    assert await world.at(25) == 1
    assert m.replies[3].startswith(":alarm_clock: Last call: this deploy expires in 5m")
    assert await world.at(29.9) == 0
    assert await world.at(30) == 1
    assert (await world.service.get(req.id)).status is Status.EXPIRED
    assert await world.redis.zcard(DUE_KEY) == 0  # nothing left for the request
    assert len(m.replies) == 5  # the expiry notice from the service
    assert await world.at(120) == 0
    # The jobs said what happened (intents); the words above are the messenger's (keyturn.bot.notices).
    assert [i for i, _ in m.intents] == [
        "remind",
        "remind",
        "escalate",
        "escalate_dm",
        "escalate_dm",
        "remind",
        "announce_outcome",
    ]


EMU_LINK = "http://127.0.0.1:3000/#C0DEPLOYS/1.000100"
IN_CHANNEL = "The request is in <#C0DEPLOYS>."


@pytest.mark.parametrize(
    ("link", "expected"),
    [
        pytest.param(None, IN_CHANNEL, id="no-permalink"),
        pytest.param("javascript:alert(1)", IN_CHANNEL, id="not-http"),
        pytest.param("https://x.test/a|<!channel>", IN_CHANNEL, id="breaks-out"),
        pytest.param(EMU_LINK, f"<{EMU_LINK}|Open the request>", id="emulator"),
    ],
)
async def test_escalation_dm_links_to_the_card_or_names_its_channel(
    world: World, link: str | None, expected: str
) -> None:
    world.messenger.link = link
    req = await world.create()
    jobs = handlers(world)
    world.clock.now = T0 + timedelta(minutes=20)
    await jobs.escalate(
        JobContext("escalate", req.id, None, world.clock.now, world.runner.timers.fencing_token or 0)
    )
    assert world.messenger.dms
    assert all(text.endswith(expected) for _, text in world.messenger.dms)


async def test_a_decision_cancels_the_remaining_deadlines(world: World) -> None:
    req = await world.create()
    assert await world.redis.zcard(DUE_KEY) == 2  # expire + reminder 1
    await world.service.deny(req.id, "U0CAROL", "not today")
    assert await world.redis.zcard(DUE_KEY) == 0
    replies = len(world.messenger.replies)
    assert await world.at(60) == 0
    assert len(world.messenger.replies) == replies
    assert [u for u, _ in world.messenger.dms if u != "U0ALICE"] == []  # only the requester's outcome DM


async def test_reminder_runs_twice_but_is_sent_once(world: World) -> None:
    req = await world.create()
    jobs = handlers(world)
    world.clock.now = T0 + timedelta(minutes=10)
    ctx = JobContext("remind", req.id, 1, T0 + timedelta(minutes=10), world.runner.timers.fencing_token or 0)
    await jobs.remind(ctx)
    await jobs.remind(ctx)
    assert len(world.messenger.replies) == 1


async def test_ex_leader_token_sends_nothing(world: World) -> None:
    req = await world.create()
    jobs = handlers(world)
    world.clock.now = T0 + timedelta(minutes=10)
    stale = (world.runner.timers.fencing_token or 0) - 1
    with pytest.raises(StaleLeader):
        await jobs.remind(JobContext("remind", req.id, 1, world.clock.now, stale))
    assert world.messenger.replies == []


async def test_reminder_waits_for_the_card_instead_of_vanishing(world: World) -> None:
    world.messenger.card_ok = False
    req = await world.create()  # the card keeps failing in the background
    assert await world.at(10) == 1  # no card: retried later
    assert world.messenger.replies == []
    world.messenger.card_ok = True
    await asyncio.wait_for(world.messenger.posted.wait(), 10)
    await world.service.wait_idle()
    assert (await world.service.get(req.id)).card is not None
    assert await world.at(10.5) == 1
    assert len(world.messenger.replies) == 1


async def test_backstop_expires_a_request_that_has_no_deadline(world: World) -> None:
    req = await world.create()
    await world.runner.timers.cancel_all(req.id)  # as if on_created had failed
    world.clock.now = T0 + timedelta(minutes=31)
    assert await world.runner.sweep() == 1
    assert (await world.service.get(req.id)).status is Status.EXPIRED


def handlers(world: World) -> TimerJobs:
    jobs = TimerJobs(
        service=world.service,
        store=world.store,
        messenger=world.messenger,
        policy=Policy.from_bytes(POLICY),
        redis=world.redis,
        clock=world.clock,
    )
    jobs.timers = world.runner.timers
    return jobs
