"""The approval use cases (implements ``keyturn.bot.ports.Approvals``): create, approve, deny, cancel, expire.

The service decides nothing the signer would not: it runs the same policy checks up front so a refused
click gets an immediate, specific answer, and at quorum it forwards the evidence (the original request and
every counted click, as received) to the signer, which rules. Each use case is safe to run twice: state
changes go through ``bot/lifecycle.py`` and the store's compare-and-swap; exactly one caller wins each
transition and only that caller performs its side effects (card update, notices, CI callback, hooks).

Slack trouble never loses a request: posting the card is retried in the background until it succeeds (the
request records ``card_error`` meanwhile), and other Slack calls are best-effort after the state is stored.
Signer trouble never drops an approval silently: the request stays pending with the error recorded and
shown, and the next click retries.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import logging
import secrets
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from keyturn.bot import lifecycle
from keyturn.bot.callbacks import CallbackOutbox
from keyturn.bot.metrics import Metrics
from keyturn.bot.models import (
    Approval,
    DeployRequest,
    OriginEvidence,
    RequestIn,
    SlackEvidence,
    Status,
)
from keyturn.bot.ports import Messenger, Refused
from keyturn.bot.signer_client import signer_unavailable
from keyturn.bot.store import (
    RequestLimits,
    RequestStore,
    SignError,
    SigningInProgress,
    StoreUnavailable,
    owes_delivery,
)
from keyturn.signer import wire
from keyturn.signer.errors import KeyturnError
from keyturn.signer.evidence import CiEvidence, GitHubEvidence, OidcEvidence, origin_claim, request_id_for
from keyturn.signer.evidence import SlackEvidence as SignedSlackRequest
from keyturn.signer.policy import Environment, Policy, UnknownEnvironment
from keyturn.signer.receipt import Receipt, parse_receipt

log = logging.getLogger(__name__)


class LifecycleHooks(Protocol):
    """Told when a request is created and when it reaches a final state (the scheduler's seam)."""

    async def on_created(self, request: DeployRequest) -> None:
        """A new pending request was stored (schedule its expiry and reminders)."""
        ...

    async def on_final(self, request: DeployRequest) -> None:
        """The request reached a final state (cancel its remaining timers)."""
        ...


class NoHooks:
    """Hooks that do nothing."""

    async def on_created(self, request: DeployRequest) -> None:
        """Nothing."""

    async def on_final(self, request: DeployRequest) -> None:
        """Nothing."""


class SignerPort(Protocol):
    """The part of the signer client the service uses (``bot/signer_client.py``)."""

    async def sign(
        self,
        request_id: str,
        origin: wire.CiOrigin | wire.SlackCommandOrigin | wire.OidcOrigin | wire.GitHubOrigin,
        approvals: Sequence[wire.SlackClick],
        emails: Mapping[str, str],
    ) -> dict[str, Any]:
        """Ask for a receipt; raises a ``KeyturnError`` with a code on refusal or outage."""
        ...

    async def record_outcome(
        self,
        request_id: str,
        outcome: str,
        origin: wire.CiOrigin | wire.SlackCommandOrigin | wire.OidcOrigin | wire.GitHubOrigin,
        *,
        denial: wire.SlackClick | None = None,
        cancel: wire.CiOrigin | wire.OidcCall | None = None,
    ) -> int:
        """Record a denial, cancel or expiry in the signer's audit log; its seq. Raises like ``sign``."""
        ...


def wire_origin(
    origin: OriginEvidence,
) -> wire.CiOrigin | wire.SlackCommandOrigin | wire.OidcOrigin | wire.GitHubOrigin:
    """The stored origin evidence in the signer's wire shape (CI bodies back to raw bytes)."""
    if origin.kind == "github":
        return wire.GitHubOrigin(
            body=base64.b64decode(origin.body),
            delivery=origin.delivery or "",
            signature=origin.signature,
            workflow=origin.workflow or "",
            timestamp=origin.timestamp,
            stamp=origin.stamp or "",
        )
    if origin.kind == "oidc":
        return wire.OidcOrigin(token=origin.signature, body=base64.b64decode(origin.body))
    if origin.kind == "ci":
        return wire.CiOrigin(
            method=origin.method or "",
            path=origin.path or "",
            body=base64.b64decode(origin.body),
            timestamp=origin.timestamp,
            signature=origin.signature,
        )
    return wire.SlackCommandOrigin(body=origin.body, timestamp=origin.timestamp, signature=origin.signature)


def origin_evidence(
    origin: OriginEvidence,
) -> CiEvidence | SignedSlackRequest | OidcEvidence | GitHubEvidence:
    """The stored origin as the trust core's evidence type (CI bodies back to raw bytes)."""
    if origin.kind == "github":
        return GitHubEvidence(
            base64.b64decode(origin.body),
            origin.delivery or "",
            origin.signature,
            origin.workflow or "",
            origin.timestamp,
            origin.stamp or "",
        )
    if origin.kind == "oidc":
        return OidcEvidence(origin.signature, base64.b64decode(origin.body))
    if origin.kind == "ci":
        return CiEvidence(
            origin.method or "",
            origin.path or "",
            base64.b64decode(origin.body),
            origin.timestamp,
            origin.signature,
        )
    return SignedSlackRequest(origin.body, origin.timestamp, origin.signature)


def wire_click(evidence: SlackEvidence) -> wire.SlackClick:
    """A stored click in the signer's wire shape."""
    return wire.SlackClick(body=evidence.body, timestamp=evidence.timestamp, signature=evidence.signature)


def receipt_id_of(receipt: Receipt) -> str:
    """A short, stable id for a receipt: ``rcpt_`` + 20 hex of the SHA-256 of its signature value."""
    return "rcpt_" + hashlib.sha256((receipt.signature_value or "").encode()).hexdigest()[:20]


def _requester_email(requester: str) -> str | None:
    candidate = requester.removeprefix("email:")
    return candidate.casefold() if "@" in candidate else None


def _origin_time(origin: OriginEvidence) -> datetime | None:
    try:
        t0 = int(origin.timestamp)
        if origin.kind == "github":
            # As the signer dates it (evidence._verify_github): the deployment's creation if earlier.
            from keyturn.signer.github_app import GitHubError, parse_payload

            with contextlib.suppress(GitHubError, ValueError):
                body = base64.b64decode(origin.body)
                created = parse_payload(
                    body, origin.delivery or "", api_base_path=None, environments=None
                ).created_at
                t0 = t0 if created is None else min(t0, created)
        return datetime.fromtimestamp(t0, UTC)
    except (ValueError, OverflowError, OSError):
        return None


class ApprovalService:
    """The approval use cases on top of the store, the messenger and the signer."""

    def __init__(
        self,
        store: RequestStore,
        messenger: Messenger,
        signer: SignerPort,
        policy: Policy,
        *,
        clock: Callable[[], datetime],
        hooks: LifecycleHooks | None = None,
        callbacks: CallbackOutbox | None = None,
        metrics: Metrics | None = None,
        card_retry_max: timedelta = timedelta(seconds=60),
        card_retry_first: timedelta = timedelta(seconds=1),
        card_lease: timedelta = timedelta(seconds=15),
        sign_lease: timedelta = timedelta(seconds=60),
        limits: RequestLimits | None = None,
    ) -> None:
        self._store = store
        self._messenger = messenger
        self._signer = signer
        self._policy = policy
        self._clock = clock
        self.hooks: LifecycleHooks = hooks or NoHooks()
        self._callbacks = callbacks
        self._metrics = metrics or Metrics()
        self._card_retry_max = card_retry_max.total_seconds()
        self._card_retry_first = card_retry_first.total_seconds()
        self._card_lease = card_lease  # how long a dead poster blocks others, beyond its retry delay
        self._sign_lease = sign_lease
        self._limits = limits  # None: no caps (unit tests); the bot always passes its settings' limits
        self._tasks: set[asyncio.Task[Any]] = set()
        self._posting: set[str] = set()

    @property
    def policy(self) -> Policy:
        """The bot's copy of the policy."""
        return self._policy

    @property
    def messenger(self) -> Messenger:
        """The messenger the service talks to Slack through."""
        return self._messenger

    @property
    def store(self) -> RequestStore:
        """The store the service keeps requests in."""
        return self._store

    # -- background work --------------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        self._metrics.background_tasks.set(len(self._tasks))

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            self._metrics.background_tasks.set(len(self._tasks))
            if not t.cancelled() and t.exception() is not None:
                log.error("background task %s failed: %r", name, t.exception())

        task.add_done_callback(done)
        return task

    async def wait_idle(self, within: float = 10.0) -> None:
        """Wait (at most ``within`` seconds) until no background task is running (tests, shutdown)."""
        deadline = asyncio.get_running_loop().time() + within
        while self._tasks and asyncio.get_running_loop().time() < deadline:
            await asyncio.wait(
                set(self._tasks), timeout=max(0.0, deadline - asyncio.get_running_loop().time())
            )

    async def aclose(self) -> None:
        """Cancel background work (card posting loops, callbacks); the state in Redis is unaffected."""
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    async def resume(self, *, full: bool = False) -> int:
        """Restart card posting for pending requests that have no card yet (at start-up, and from the
        leader's backstop, so a card whose posting replica died is still posted).

        The backstop reads the attention index (every request without a card, however many are pending);
        ``full`` (start-up) reads the whole pending index in pages and backfills the attention indexes, so
        requests stored by an older version are covered too.
        """
        started = 0
        if full:
            ids = await self._store.pending_ids()
        else:
            ids = await self._store.needs_card_ids()
        for page in range(0, len(ids), 500):
            reqs = [
                r for r in await self._store.get_many(ids[page : page + 500]) if r.status is Status.PENDING
            ]
            if full:
                await self._store.mark_needs_card([r for r in reqs if r.card is None])
                await self._store.mark_at_quorum([r for r in reqs if lifecycle.quorum_reached(r)])
            for req in reqs:
                if req.card is None:
                    self._start_posting(req.id)
                    started += 1
        return started

    async def finish_stuck(self) -> int:
        """The leader's backstop: finish signing for requests at quorum with no receipt and no recorded
        signer error, whose signing replica died (nobody holds the claim any more). Exactly once: the
        signing claim admits one signer call at a time and the final-state CAS one APPROVED write.
        Returns the number of requests it approved."""
        done = 0
        now = self._clock()
        for rid in await self._store.at_quorum_ids():
            req = await self._store.get(rid)
            if req is None or req.status is not Status.PENDING or not lifecycle.quorum_reached(req):
                continue
            if lifecycle.is_expired(req, now) or await self._store.sign_error(rid) is not None:
                continue  # expiry, or a person's next click, decides these
            if await self._store.signing_claimed(rid):
                continue  # a live replica is signing it (or its claim has not lapsed yet)
            log.info("backstop: finishing request %s left at quorum without a receipt", rid)
            try:
                result = await self._finish(req)
            except Refused:
                continue  # recorded as the request's sign error, shown on its card
            done += int(result.status is Status.APPROVED)
        return done

    async def _quietly(self, what: str, call: Awaitable[Any]) -> None:
        """Run a best-effort Slack call: the state is already stored, so a failure is logged, not raised."""
        try:
            await call
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("%s failed: %s", what, type(exc).__name__)

    # -- helpers ---------------------------------------------------------------------------------------

    def _environment(self, name: str) -> Environment:
        try:
            return self._policy.environment(name)
        except UnknownEnvironment:
            raise Refused("unknown_environment", environment=name) from None

    async def _load(self, request_id: str) -> DeployRequest:
        req = await self._store.get(request_id)
        if req is None:
            raise Refused("unknown_request")
        return req

    def _ensure_authorized(self, environment: str, user_id: str) -> None:
        # The policy's own rule, with the group members pinned in it: the signer asks its copy of the same
        # file, so a click refused here would be refused there, and one admitted here is admitted there.
        # Live Slack membership is not consulted (a user added to the group in Slack but not yet pinned is
        # refused until an admin runs `keyturn policy pin-groups`).
        self._environment(environment)  # Refused("unknown_environment") rather than a bare KeyturnError
        if not self._policy.authorizes(environment, user_id):
            raise Refused("not_an_approver", environment=environment)

    def _refused(self, exc: Refused) -> Refused:
        self._metrics.refusals.labels(exc.code).inc()
        return exc

    # -- create ----------------------------------------------------------------------------------------

    def _origin_facts(self, origin: OriginEvidence) -> dict[str, str | None]:
        """What the signed origin says beyond the body: for OIDC, who started this run attempt when not the
        requester (as a Slack user by the policy); for OIDC and GitHub, the event that started the job (the
        card shows it, as the signer renders it)."""
        evidence = origin_evidence(origin)
        if not isinstance(evidence, OidcEvidence | GitHubEvidence):
            return {}
        try:
            claim = origin_claim(evidence, self._policy)
        except KeyturnError:
            return {}  # the signer refuses such an origin anyway
        started = claim.triggered_by
        return {
            "started_by_slack_id": self._policy.resolve_requester(started) if started else None,
            "event": claim.event,
        }

    async def create(self, body: RequestIn, origin: OriginEvidence) -> tuple[DeployRequest, bool]:
        """Create a request (or return the pending one with the same scope); True if newly created."""
        env = self._environment(body.environment)
        now = self._clock()
        requester_slack_id = self._policy.resolve_requester(body.requester)
        email = _requester_email(body.requester)
        if requester_slack_id is None and email is not None:
            with contextlib.suppress(Exception):
                requester_slack_id = await self._messenger.user_by_email(email)
        # The signer dates the request's lifetime from the origin's own timestamp; so does the bot.
        start = now
        t0 = _origin_time(origin)
        if t0 is not None and t0 < now:
            start = t0
        request = lifecycle.new_request(
            # Bound to the origin (signer.evidence.request_id_for): the signer recomputes it at signing.
            request_id_for(origin_evidence(origin)),
            body,
            now=start,
            ttl=env.request_ttl,
            required_approvals=env.required_approvals,
            requester_slack_id=requester_slack_id,
            origin_kind=origin.kind,
        )
        request = request.model_copy(update={"created_at": now, **self._origin_facts(origin)})
        stored, created = await self._store.create_or_get(request, origin, now, self._limits)
        if created:
            self._metrics.requests_created.labels(body.environment).inc()
            await self._quietly("on_created hook", self.hooks.on_created(stored))
            self._start_posting(stored.id)
        return stored, created

    def _start_posting(self, request_id: str) -> None:
        if request_id in self._posting:
            return
        self._posting.add(request_id)
        self._spawn(self._post_card_until_done(request_id), f"post-card-{request_id}")

    async def _post_card_until_done(self, request_id: str) -> None:
        """Post the card, retrying with backoff until it is posted or the request is gone.

        Holds a lease in Redis while trying, so replicas never post the same card twice while alive; the
        leader's backstop (``resume``) takes over a card whose poster died.
        """
        delay = self._card_retry_first
        token = secrets.token_hex(8)
        try:
            while True:
                try:
                    lease = timedelta(seconds=delay) + self._card_lease
                    held, req = await self._store.hold_card_posting(request_id, token, lease)
                    if req is None or req.card is not None:
                        return
                    if not held:
                        return  # another replica is posting it
                except StoreUnavailable:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self._card_retry_max)
                    continue
                try:
                    card = await self._messenger.post_card(req)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self._metrics.card_post_failures.inc()
                    reason = getattr(exc, "slack_error", None) or type(exc).__name__
                    text = f"card not posted yet ({reason}); retrying"
                    log.warning("request %s: %s", request_id, text)
                    with contextlib.suppress(Refused, StoreUnavailable):
                        await self._store.transition(
                            request_id, functools.partial(lifecycle.with_card_error, error=text)
                        )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self._card_retry_max)
                    continue
                done, _ = await self._store.transition(
                    request_id,
                    functools.partial(lifecycle.with_card, channel=card.channel, ts=card.ts),
                    current=req,  # as read with the claim: usually still current, one round trip saved
                )
                if done.status.final:  # decided while the card was being posted: show the outcome
                    await self._quietly("update_card", self._messenger.update_card(done))
                return
        finally:
            self._posting.discard(request_id)
            with contextlib.suppress(StoreUnavailable):
                await self._store.release_card_posting(request_id, token)

    # -- approve ---------------------------------------------------------------------------------------

    async def approve(self, request_id: str, user_id: str, evidence: SlackEvidence) -> DeployRequest:
        """Record ``user_id``'s approval; sign and finish when the quorum is reached. Raises ``Refused``."""
        try:
            return await self._approve(request_id, user_id, evidence)
        except Refused as exc:
            raise self._refused(exc) from None

    async def _approve(self, request_id: str, user_id: str, evidence: SlackEvidence) -> DeployRequest:
        req = await self._load(request_id)
        now = self._clock()
        lifecycle.ensure_open(req, now)
        env = self._environment(req.scope.environment)
        self._ensure_authorized(req.scope.environment, user_id)
        if not env.allow_self_approval and req.asked_by(user_id):
            raise Refused("self_approval")
        email: str | None = None
        with contextlib.suppress(Exception):
            email = await self._messenger.user_email(user_id)
        requester_email = _requester_email(req.requester)
        if (
            not env.allow_self_approval
            and requester_email is not None
            and email is not None
            and email.casefold() == requester_email
        ):
            raise Refused("self_approval")
        approval = Approval(user_id=user_id, email=email, at=now)
        counted = {a.user_id for a in req.approvals}
        indexed = user_id not in counted and len(counted) + 1 >= req.required_approvals
        if indexed:
            # This click would reach the quorum: index the request *before* counting it. A count whose
            # answer is lost (Redis gone, or fewer replicas than KEYTURN_REDIS_MIN_REPLICAS acknowledged it)
            # may still have landed; the leader's backstop then finishes the request instead of leaving it
            # at quorum with nobody to sign it. An entry for a request short of quorum is skipped there.
            await self._store.mark_at_quorum([req])
        try:
            req = await self._store.add_approval(request_id, approval, evidence, now, current=req)
        except Refused as exc:
            if exc.code != "already_approved":
                raise
            # A repeated click after a failed signing attempt is the retry.
            current = await self._load(request_id)
            if current.status is Status.PENDING and lifecycle.quorum_reached(current):
                return await self._finish(current)
            raise
        self._metrics.approvals.labels(req.scope.environment).inc()
        if lifecycle.quorum_reached(req):
            # Indexed before signing: if this replica dies mid-signature, the leader's backstop finds it.
            if not indexed:  # (already indexed above when this click was foreseen to reach the quorum)
                await self._store.mark_at_quorum([req])
            return await self._finish(req)
        await self._quietly("update_card", self._messenger.update_card(req))
        return req

    async def _finish(self, req: DeployRequest) -> DeployRequest:
        """At quorum: take the signing claim, ask the signer, store the receipt and move to APPROVED."""
        token = await self._store.claim_signing(req.id, self._sign_lease)
        if token is None:
            # Another click is signing right now (it reports the outcome), or the request was decided.
            return await self._load(req.id)
        try:
            loaded, stored, origin = await self._store.signing_inputs(req.id)  # one round trip
            if loaded is None:
                raise Refused("unknown_request")
            current = loaded
            if current.status.final:
                return current
            if origin is None:
                raise Refused("evidence_gone")
            emails = {s.approval.user_id: s.approval.email for s in stored if s.approval.email}
            started = asyncio.get_running_loop().time()
            try:
                receipt = await self._signer.sign(
                    current.id, wire_origin(origin), [wire_click(s.evidence) for s in stored], emails
                )
            except (KeyturnError, OSError, TimeoutError) as exc:
                code = exc.code if isinstance(exc, KeyturnError) else "signer_unavailable"
                message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
                await self._signing_failed(current, code, message)
                raise Refused("signing_failed", cause=code, detail=message[:300]) from None
            self._metrics.sign_latency.observe(asyncio.get_running_loop().time() - started)
            # Parsed once into the receipt type (the verifier's own structure checks); the store keeps the
            # object as the signer sent it. A receipt that is malformed or for another request is never
            # stored or handed on: fail closed, the next click retries.
            try:
                typed: Receipt | None = parse_receipt(receipt)
            except (KeyturnError, ValueError):
                typed = None
            if typed is None or typed.request_id != current.id:
                detail = "the signer returned a malformed receipt"
                await self._signing_failed(current, "bad_receipt", detail)
                raise Refused("signing_failed", cause="bad_receipt", detail=detail)
            receipt_id, by, expires = receipt_id_of(typed), typed.approver.id, typed.expires_at
            done, changed = await self._store.transition(
                current.id,
                lambda r: lifecycle.mark_approved(
                    r,
                    by=by,
                    receipt_id=receipt_id,
                    receipt_expires_at=expires,
                    now=self._clock(),
                ),
                receipt=receipt,
                current=current,  # read under the signing claim: usually still current (CAS checks)
            )
            if changed:
                await self._on_final(done)
            return done
        finally:
            with contextlib.suppress(StoreUnavailable):
                await self._store.release_signing(req.id, token)

    async def _signing_failed(self, req: DeployRequest, code: str, message: str) -> None:
        self._metrics.sign_failures.labels(code).inc()
        log.warning("signing %s failed: %s", req.id, code)
        with contextlib.suppress(StoreUnavailable):
            await self._store.set_sign_error(
                req.id, SignError(code=code, message=message[:500], at=self._clock())
            )
        if req.card is not None:
            await self._quietly(
                "announce_sign_failure", self._messenger.announce_sign_failure(req, code, message)
            )

    # -- deny, cancel, expire --------------------------------------------------------------------------

    async def check_can_decide(self, request_id: str, user_id: str) -> DeployRequest:
        """Raise ``Refused`` unless ``user_id`` may decide this request now (checked before the modal)."""
        try:
            req = await self._load(request_id)
            lifecycle.ensure_open(req, self._clock())
            self._ensure_authorized(req.scope.environment, user_id)
            return req
        except Refused as exc:
            raise self._refused(exc) from None

    async def deny(
        self, request_id: str, user_id: str, reason: str, evidence: SlackEvidence | None = None
    ) -> DeployRequest:
        """Deny with a reason (required). Raises ``Refused``.

        ``evidence`` is the deny modal's submission as Slack signed it: kept with the request and shown to
        the signer, which records who denied and why from it (without it the denial stays in Redis only and
        the signer refuses to record it: ``bad_denial``)."""
        try:
            if not reason.strip():
                raise Refused("reason_required")
            req = await self._load(request_id)
            if not (req.status is Status.DENIED and req.decided_by == user_id):
                self._ensure_authorized(req.scope.environment, user_id)
            if req.status is Status.PENDING:
                await self._store.mark_unrecorded(request_id, self._clock())

            def event(r: DeployRequest) -> DeployRequest:
                new = lifecycle.deny(r, by=user_id, reason=reason, now=self._clock())
                # The evidence travels in the same compare-and-swap as the decision, so it is always the
                # evidence of the denial that won, never of a concurrent one that lost.
                return new if new == r else new.model_copy(update={"deny_evidence": evidence})

            done, changed = await self._final_transition(request_id, event)
        except Refused as exc:
            raise self._refused(exc) from None
        if changed:
            await self._on_final(done)
        return done

    async def cancel(self, request_id: str, evidence: OriginEvidence | None = None) -> DeployRequest:
        """Cancel a pending request (the pipeline gave up). Cancelling twice is a no-op.

        ``evidence`` is the cancel call as received (kind ``ci``: method, path, body, MAC headers; kind
        ``oidc``: the token in ``signature``), shown to the signer to record the cancel."""
        current = await self._store.get(request_id)
        if current is not None and current.status is Status.PENDING:
            await self._store.mark_unrecorded(request_id, self._clock())

        def event(r: DeployRequest) -> DeployRequest:
            new = lifecycle.cancel(r, now=self._clock())
            return new if new == r else new.model_copy(update={"cancel_evidence": evidence})

        done, changed = await self._final_transition(request_id, event)
        if changed:
            await self._on_final(done)
        return done

    async def _final_transition(
        self, request_id: str, event: Callable[[DeployRequest], DeployRequest], *, wait: bool = True
    ) -> tuple[DeployRequest, bool]:
        """A Deny/Cancel/Expire that waits for an in-flight signature's outcome, then re-decides.

        Decided order (docs/reliability.md, "Abuse and overload"): a signature whose claim was taken first
        wins, so the receipt in the audit log and the request's final state never disagree; a Deny/Cancel
        arriving meanwhile gets "already approved" (or proceeds, if the signer refused). The wait is bounded
        by the claim's lease; past it the answer is ``Refused("signing_in_progress")``.
        """
        for _ in range(3):
            try:
                return await self._store.transition(request_id, event, unless_signing=True)
            except SigningInProgress:
                if not wait:
                    break
                await self._store.wait_signing_released(request_id, self._sign_lease.total_seconds() + 1.0)
        raise Refused("signing_in_progress")

    async def expire(self, request_id: str) -> DeployRequest | None:
        """Expire the request if its lifetime is over; a no-op otherwise. Safe to call any number of times.

        Returns the request as it now stands, or None if it is unknown.
        """
        try:
            current = await self._store.get(request_id)
            if (
                current is not None
                and current.status is Status.PENDING
                and lifecycle.is_expired(current, self._clock())
            ):
                await self._store.mark_unrecorded(request_id, self._clock())
            # No wait: the timer slot is not held for a signature; its outcome decides, or expiry comes back.
            done, changed = await self._final_transition(
                request_id, lambda r: lifecycle.expire(r, now=self._clock()), wait=False
            )
        except Refused as exc:
            if exc.code == "signing_in_progress":
                return await self._store.get(request_id)  # still pending: the timer comes back
            return None
        if changed:
            await self._on_final(done)
        elif done.status.final:
            # Final, yet still listed as pending (the expiry job found it there): the replica that wrote the
            # outcome died before its follow-up. Owe its callback and tidy the indexes now (idempotent).
            with contextlib.suppress(StoreUnavailable):
                await self._store.settle_final(done)
        return done

    async def _on_final(self, request: DeployRequest) -> None:
        """Side effects of reaching a final state, run once by whoever made the transition."""
        self._metrics.decisions.labels(request.status.value).inc()
        if request.status is not Status.APPROVED:
            # First, before Slack: the record matters more than the notices. An approval is on the record
            # already (its receipt_issued entry, written before the receipt was returned).
            await self.record_outcome(request)
        ttl: timedelta | None = None
        with contextlib.suppress(Refused):
            ttl = self._environment(request.scope.environment).request_ttl
        if request.card is not None:
            await self._quietly("update_card", self._messenger.update_card(request))
        await self._quietly("announce_outcome", self._messenger.announce_outcome(request, ttl))
        if owes_delivery(request) and self._callbacks is not None:
            # The store enqueued the callback (or the GitHub hand-off) in the outbox right after the final
            # write; this only wakes this replica's delivery workers so it goes out at once rather than at
            # their next poll. In the outbox it survives this process dying before it is delivered.
            self._callbacks.wake()
        await self._quietly("on_final hook", self.hooks.on_final(request))

    # -- the record ------------------------------------------------------------------------------------

    async def record_outcome(self, request: DeployRequest) -> bool:
        """Have the signer record ``request``'s denial, cancel or expiry in its audit log; True once it is
        there (or never can be), False to try again later (the note in the store stays for the backstop).

        Never raises: the outcome is already decided and stored; only its record may lag. A signer outage
        (or a signer clock not yet past the lifetime: ``not_expired``) leaves the note for
        :meth:`record_unrecorded`. A refusal of the evidence (a forged or missing deny submission, a receipt
        already on the record) cannot be fixed by retrying: logged as an error, counted in
        ``keyturn_outcome_record_failures_total{code}``, the note dropped (docs/security.md, "The record").
        """
        outcome = {
            Status.DENIED: "denied",
            Status.CANCELLED: "cancelled",
            Status.EXPIRED: "expired",
        }.get(request.status)
        if outcome is None:
            return request.status is Status.APPROVED  # pending: not yet; approved: on the record already
        try:
            origin = await self._store.origin(request.id)
            if origin is None:
                log.error("outcome of %s NOT RECORDED: its origin evidence is gone", request.id)
                self._metrics.outcome_record_failures.labels("origin_gone").inc()
                await self._store.mark_recorded(request.id)
                return True
            denial = None if request.deny_evidence is None else wire_click(request.deny_evidence)
            cancel: wire.CiOrigin | wire.OidcCall | None = None
            ev = request.cancel_evidence
            if ev is not None and ev.kind == "oidc":
                cancel = wire.OidcCall(token=ev.signature)
            elif ev is not None:
                cancel = wire.CiOrigin(
                    method=ev.method or "",
                    path=ev.path or "",
                    body=base64.b64decode(ev.body),
                    timestamp=ev.timestamp,
                    signature=ev.signature,
                )
            seq = await self._signer.record_outcome(
                request.id, outcome, wire_origin(origin), denial=denial, cancel=cancel
            )
        except asyncio.CancelledError:
            raise
        except StoreUnavailable:
            log.warning("outcome of %s not recorded yet: store unavailable", request.id)
            return False
        except (OSError, TimeoutError) as exc:
            return self._record_failed(request.id, "signer_unavailable", str(exc), retry=True)
        except KeyturnError as exc:
            code = exc.code or "signer_error"
            retry = signer_unavailable(exc) or code == "not_expired"  # not expired yet: retried later
            if not self._record_failed(request.id, code, exc.message, retry=retry):
                return False
        except Exception as exc:  # a bug must not cost the transition; the note stays for the backstop
            return self._record_failed(request.id, "internal_error", type(exc).__name__, retry=True)
        else:
            log.info("outcome of %s (%s) recorded at audit seq %d", request.id, outcome, seq)
        with contextlib.suppress(StoreUnavailable):
            await self._store.mark_recorded(request.id)
        return True

    def _record_failed(self, request_id: str, code: str, message: str, *, retry: bool) -> bool:
        self._metrics.outcome_record_failures.labels(code[:40]).inc()
        if retry:
            log.warning("outcome of %s not recorded yet (%s); the backstop retries", request_id, code)
            return False
        log.error(
            "outcome of %s NOT RECORDED: the signer refused it: %s: %s", request_id, code, message[:200]
        )
        return True

    async def record_unrecorded(self) -> int:
        """The leader's backstop: record every decided outcome still missing from the signer's audit log
        (a signer outage, or a replica that died between the transition and the signer call). Returns how
        many notes it cleared."""
        cleared = 0
        for rid in await self._store.unrecorded_ids():
            req = await self._store.get(rid)
            if req is None:  # gone (retention): nothing left to record with
                await self._store.mark_recorded(rid)
                cleared += 1
                continue
            if req.status is Status.PENDING:
                continue  # noted before a transition that has not happened (or lost): decided later
            if req.status is Status.APPROVED or await self.record_outcome(req):
                if req.status is Status.APPROVED:
                    await self._store.mark_recorded(rid)
                cleared += 1
        return cleared

    # -- reads -----------------------------------------------------------------------------------------

    async def get(self, request_id: str) -> DeployRequest:
        """The request, or ``Refused("unknown_request")``."""
        return await self._load(request_id)

    async def pending_for(self, user_id: str) -> list[DeployRequest]:
        """Pending requests ``user_id`` may approve (and has not approved yet)."""
        now = self._clock()
        out: list[DeployRequest] = []
        for req in await self._store.get_many(await self._store.pending_ids()):
            if req.status.final or lifecycle.is_expired(req, now) or lifecycle.has_approved(req, user_id):
                continue
            try:
                env = self._environment(req.scope.environment)
                self._ensure_authorized(req.scope.environment, user_id)
            except Refused:
                continue
            if not env.allow_self_approval and req.asked_by(user_id):
                continue
            out.append(req)
        return out
