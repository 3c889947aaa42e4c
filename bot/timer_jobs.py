"""What happens when a request's deadlines fall due: expiry, reminders, escalation (docs/design.md §9).

``install(...)`` is called by ``bot/server.py``: it builds the replica's :class:`~bot.scheduler.Timers` with
the three handlers below and returns ``(hooks, runner)``. The approval service calls ``hooks.on_created``
after storing a new request (schedule its expiry and first reminder) and ``hooks.on_final`` once it reaches a
final state (drop its remaining deadlines). ``runner.start()``/``stop()`` follow the app's lifespan.

Every handler is idempotent and re-reads the request: a deadline for a decided, cancelled or expired request
does nothing. Expiry is the service's compare-and-swap transition. A reminder or escalation is sent at most
once: a fenced ``once`` key is set before the message goes out, so a paused ex-leader cannot send it too.

Reminders are chained: reminder n schedules n+1. Times come from the environment's ``remind_every`` counted
from the request's creation; the last one is a "final" reminder shortly before expiry. After
``escalate_after`` reminders, the ``escalate_to`` people are mentioned in the thread and sent a DM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import redis.asyncio as aioredis

from keyturn.bot import lifecycle
from keyturn.bot.approvals import ApprovalService
from keyturn.bot.models import DeployRequest
from keyturn.bot.ports import Messenger
from keyturn.bot.scheduler import JobContext, Timers, check_fence, once, once_key
from keyturn.bot.slack_text import is_user_id
from keyturn.bot.store import RequestStore
from keyturn.signer.errors import KeyturnError
from keyturn.signer.policy import Environment, Policy, UnknownEnvironment

log = logging.getLogger("keyturn.timer_jobs")

Clock = Callable[[], datetime]

FINAL_LEAD_MAX = timedelta(minutes=5)
ONCE_MARGIN_S = 86_400  # once-keys outlive the request by a day


class CardNotPosted(KeyturnError):
    """The request has no card yet (Slack trouble); the reminder is retried later rather than lost."""

    code = "card_not_posted"


@dataclass(frozen=True)
class Reminder:
    """When reminder number ``n`` falls due, and whether it is the final one before expiry."""

    n: int
    due: datetime
    final: bool


def reminder(request: DeployRequest, env: Environment, n: int) -> Reminder | None:
    """Reminder ``n`` (1-based) of ``request``, or None if there is none.

    Regular reminders fall every ``remind_every`` after creation; the final one falls ``lead`` before
    expiry, where ``lead = min(remind_every, 5m, ttl/4)``. A regular reminder closer than ``lead/2`` to the
    final one is dropped (the final one replaces it), so people are never pinged twice in a row.
    """
    every = env.remind_every
    if every is None or every <= timedelta(0) or n < 1:
        return None
    ttl = request.expires_at - request.created_at
    lead = min(every, FINAL_LEAD_MAX, ttl / 4)
    final_at = request.expires_at - lead
    if final_at <= request.created_at:
        return None

    def regular_fits(k: int) -> bool:
        return request.created_at + k * every <= final_at - lead / 2

    if regular_fits(n):
        return Reminder(n, request.created_at + n * every, final=False)
    if n == 1 or regular_fits(n - 1):
        return Reminder(n, final_at, final=True)
    return None


class TimerHooks:
    """The approval service's ``LifecycleHooks``: schedule on create, cancel on final."""

    def __init__(self, timers: Timers, policy: Policy) -> None:
        self._timers = timers
        self._policy = policy

    async def on_created(self, request: DeployRequest) -> None:
        """Schedule the request's expiry and its first reminder."""
        await self._timers.schedule("expire", request.id, request.expires_at)
        with contextlib.suppress(UnknownEnvironment):
            first = reminder(request, self._policy.environment(request.scope.environment), 1)
            if first is not None:
                await self._timers.schedule("remind", request.id, first.due, n=1)

    async def on_final(self, request: DeployRequest) -> None:
        """Drop every remaining deadline of the request."""
        await self._timers.cancel_all(request.id)


class TimerJobs:
    """The handlers for ``expire``, ``remind`` and ``escalate`` deadlines."""

    def __init__(
        self,
        *,
        service: ApprovalService,
        store: RequestStore,
        messenger: Messenger,
        policy: Policy,
        redis: aioredis.Redis,
        clock: Clock,
    ) -> None:
        self._service = service
        self._store = store
        self._messenger = messenger
        self._policy = policy
        self._redis = redis
        self._clock = clock
        self.timers: Timers | None = None  # set by install(); handlers chain reminders through it

    def handlers(self) -> dict[str, Callable[[JobContext], Awaitable[None]]]:
        """The handler of each job kind."""
        return {"expire": self.expire, "remind": self.remind, "escalate": self.escalate}

    async def expire(self, ctx: JobContext) -> None:
        """Expire the request (a no-op unless it is pending and past its lifetime)."""
        await check_fence(self._redis, ctx.fencing_token)
        req = await self._service.expire(ctx.request_id)
        if req is not None and not req.status.final and self.timers is not None:
            # Not due yet by this replica's clock (skew, or a lifetime moved): come back at the stored time.
            await self.timers.schedule("expire", req.id, max(req.expires_at, self._clock()))

    async def remind(self, ctx: JobContext) -> None:
        """Reply in the card's thread, mentioning the approvers who have not acted, with the time left."""
        now = self._clock()
        req, env = await self._open_request(ctx.request_id, now)
        if req is None or env is None or ctx.n is None:
            return
        this = reminder(req, env, ctx.n)
        nxt = reminder(req, env, ctx.n + 1)
        if nxt is not None and self.timers is not None:
            await self.timers.schedule("remind", req.id, nxt.due, n=nxt.n)
        if ctx.n == env.escalate_after and (env.escalate_to or env.escalate_to_groups) and self.timers:
            await self.timers.schedule("escalate", req.id, now)
        if req.card is None:
            raise CardNotPosted()
        if not await once(
            self._redis,
            self._once(req, f"remind:{ctx.n}"),
            self._ttl(req, now),
            fencing_token=ctx.fencing_token,
        ):
            return
        waiting, unresolved = await self._waiting_on(req, env)
        final = this.final if this is not None else False
        await self._messenger.remind(req, waiting=waiting, groups=unresolved, now=now, final=final)

    async def escalate(self, ctx: JobContext) -> None:
        """Mention ``escalate_to`` in the thread and DM each of them a link to the card."""
        now = self._clock()
        req, env = await self._open_request(ctx.request_id, now)
        if req is None or env is None:
            return
        if req.card is None:
            raise CardNotPosted()
        ttl = self._ttl(req, now)
        users, groups = list(env.escalate_to), list(env.escalate_to_groups)
        after = env.escalate_after
        if await once(self._redis, self._once(req, "escalate"), ttl, fencing_token=ctx.fencing_token):
            await self._messenger.escalate(req, users=users, groups=groups, after=after, now=now)
        for group in groups:
            try:
                users += sorted(await self._messenger.group_members(group))
            except Exception as exc:  # the group was mentioned in the thread; DMs go to whoever resolves
                log.warning("escalation: members of %s unavailable (%s)", group, type(exc).__name__)
        for user in dict.fromkeys(u for u in users if is_user_id(u)):
            # Per-user guard: one failed DM does not stop the others, and none is sent twice.
            if await once(
                self._redis, self._once(req, f"escalate.dm.{user}"), ttl, fencing_token=ctx.fencing_token
            ):
                try:
                    await self._messenger.escalate_dm(user, req, after=after, now=now)
                except Exception as exc:
                    log.warning("escalation DM to %s failed (%s)", user, type(exc).__name__)

    # --- helpers ---------------------------------------------------------------------------------------

    async def _open_request(
        self, request_id: str, now: datetime
    ) -> tuple[DeployRequest | None, Environment | None]:
        req = await self._store.get(request_id)
        if req is None or req.status.final or lifecycle.is_expired(req, now):
            return None, None  # nothing to remind about; the expire deadline handles the rest
        try:
            return req, self._policy.environment(req.scope.environment)
        except UnknownEnvironment:
            return None, None

    @staticmethod
    def _once(req: DeployRequest, name: str) -> str:
        return once_key(req.id, name)

    @staticmethod
    def _ttl(req: DeployRequest, now: datetime) -> int:
        return max(1, int((req.expires_at - now).total_seconds())) + ONCE_MARGIN_S

    async def _waiting_on(self, req: DeployRequest, env: Environment) -> tuple[list[str], list[str]]:
        """Approvers who have not acted (user ids), and approver groups that could not be resolved."""
        users = list(env.approvers)
        unresolved: list[str] = []
        for group in env.approver_groups:
            try:
                users += sorted(await self._messenger.group_members(group))
            except Exception as exc:
                log.warning("reminder: members of %s unavailable (%s)", group, type(exc).__name__)
                unresolved.append(group)
        done = {a.user_id for a in req.approvals}
        if not env.allow_self_approval:
            done.update(u for u in (req.requester_slack_id, req.started_by_slack_id) if u)
        waiting = [u for u in dict.fromkeys(users) if u not in done and is_user_id(u)]
        return waiting, unresolved


class TimerRunner:
    """Starts and stops the replica's timers, plus a slow backstop sweep (expiry index, orphaned cards).

    The backstop (leader only, every ``sweep_s``) expires pending requests that have no expire deadline:
    created before the scheduler was installed, or whose ``on_created`` hook failed (one ``ZRANGEBYSCORE``
    on the store's pending index); posts cards nobody is posting, and finishes signing for requests left
    at quorum by a replica that died mid-signature (both read whole attention indexes, not a window).
    """

    def __init__(
        self,
        timers: Timers,
        service: ApprovalService,
        store: RequestStore,
        clock: Clock,
        sweep_s: float = 10.0,
    ) -> None:
        self.timers = timers
        self._service = service
        self._store = store
        self._clock = clock
        self._sweep_s = sweep_s
        self._task: asyncio.Task[None] | None = None

    async def sweep(self) -> int:
        """Expire what the store says is due, and restart posting of cards nobody is posting (a replica
        died mid-post); leader only. The number expired."""
        if not self.timers.is_leader:
            return 0
        n = 0
        for rid in await self._store.due_ids(self._clock()):
            req = await self._service.expire(rid)
            n += int(req is not None and req.status.final)
        await self._service.resume()
        finished = await self._service.finish_stuck()
        if finished:
            log.info("backstop approved %d request(s) whose signing replica died", finished)
        recorded = await self._service.record_unrecorded()
        if recorded:
            log.info("backstop recorded %d outcome(s) in the signer's audit log", recorded)
        return n

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_s)
            try:
                if await self.sweep():
                    log.info("expiry backstop expired requests that had no deadline")
            except Exception as exc:
                log.warning("expiry backstop failed: %s", type(exc).__name__)

    async def start(self) -> None:
        """Join leader election, run deadlines while leader, start the backstop."""
        await self.timers.start()
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="keyturn-expiry-backstop")

    async def stop(self) -> None:
        """Stop the backstop and the timers (hands the leader lease back)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.timers.stop()


def replica_name() -> str:
    """A readable replica id for logs and the lease value: host and pid."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}"


def install(
    *,
    service: ApprovalService,
    redis: aioredis.Redis,
    policy: Policy,
    messenger: Messenger,
    store: RequestStore,
    clock: Clock,
    sweep_s: float = 10.0,
    **timer_options: Any,
) -> tuple[TimerHooks, TimerRunner]:
    """Build this replica's timers; return the service's hooks and the start/stop runner.

    ``timer_options`` go to :class:`~bot.scheduler.Timers` (e.g. ``tick_s``, ``lease_s``). Handler
    concurrency defaults to 16; ``bot/server.py`` passes a quarter of ``KEYTURN_REDIS_MAX_CONNECTIONS`` (the
    pool shared with the app), capped at 16.
    """
    jobs = TimerJobs(
        service=service, store=store, messenger=messenger, policy=policy, redis=redis, clock=clock
    )
    options: dict[str, Any] = {"replica_id": replica_name(), "concurrency": 16}
    options.update(timer_options)
    timers = Timers(redis, jobs.handlers(), clock=clock, **options)
    jobs.timers = timers
    return TimerHooks(timers, policy), TimerRunner(timers, service, store, clock, sweep_s=sweep_s)
