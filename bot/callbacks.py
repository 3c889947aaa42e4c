"""CI callbacks: on every final outcome, POST ``{requestId, status, receipt?}`` to the request's callbackUrl.

The body is signed like a CI request (design.md §6: headers ``X-Keyturn-Timestamp`` and
``X-Keyturn-Signature: v1=<hex>`` over ``v1:{timestamp}:POST:{path}:{body}``), but with the callback key the
signer derives from the CI secret (design.md §5, ``mac_callback``): the bot never holds the CI secret, and a
callback signature can never pass as a CI request. Every attempt is recorded in Redis
(``keyturn:req:{id}:callbacks``) and counted in the metrics.

Delivery goes through the Redis outbox (:class:`CallbackOutbox`, keys in bot/store.py): a bounded number of
workers per replica, claims with a lease, retries with exponential backoff scheduled in Redis (so they
survive restarts and move between replicas), a dead letter after the last attempt, and an
``X-Keyturn-Delivery`` id per callback for the receiver to dedupe by (delivery is at least once).

A callback URL comes from a CI job, so it must not let that job make the bot call internal services (SSRF).
:class:`CallbackPolicy` holds the rules (docs/security.md, "Callback URLs"): ``https://`` only (``http://`` in
dev mode), an optional host allowlist (``KEYTURN_CALLBACK_HOSTS``) checked when the request is made, and at
delivery the host's addresses must all be public unless the host is allowlisted or dev mode is on. The POST
then connects to exactly the addresses that were checked (a pinned resolver), so there is no second DNS
lookup for a rebinding attacker to answer differently.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import re
import socket
import time
import unicodedata
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from keyturn.bot.metrics import Metrics
from keyturn.bot.models import DeployRequest, Status
from keyturn.bot.store import RequestStore, StoreUnavailable, owes_delivery
from keyturn.signer.errors import KeyturnError
from keyturn.signer.words import Fact

log = logging.getLogger(__name__)

# The id of one callback (one per request, the same on every attempt): the receiver's dedupe key.
DELIVERY_HEADER = "X-Keyturn-Delivery"


class CallbackMac(Protocol):
    """The part of the signer client used here."""

    async def mac_callback(self, path: str, timestamp: str, body: bytes) -> Any:
        """``v1=<hex>`` (or ``{"signature": "v1=<hex>"}``) over the callback body."""
        ...


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolve = Callable[[str, int], Awaitable[list[str]]]

# One allowlist entry: a host name, "*.suffix", or an IP literal (IPv6 without brackets).
_HOST_PATTERN_RE = re.compile(r"(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")


class CallbackRefused(KeyturnError):
    """A callback URL or address the rules forbid: a stable ``code`` and its facts (``host``, ``ip``...);
    ``reason`` is the rule in words (``keyturn.signer.words``), shown against the ``callbackUrl`` field."""

    def __init__(self, code: str, **facts: Fact) -> None:
        super().__init__(code=code, facts=facts)
        self.reason = self.message


def parse_host_patterns(value: str) -> tuple[str, ...]:
    """``KEYTURN_CALLBACK_HOSTS``: comma-separated host names, ``*.suffix`` patterns or IP literals.

    Raises ``ValueError`` naming the first entry that is none of these (so the bot refuses to start).
    """
    out: list[str] = []
    for raw in value.split(","):
        entry = raw.strip().lower().rstrip(".")
        if not entry:
            continue
        try:
            out.append(str(ipaddress.ip_address(entry)))
            continue
        except ValueError:
            pass
        if not _HOST_PATTERN_RE.fullmatch(entry) or len(entry) > 253:
            raise ValueError(f"{raw.strip()!r} is not a host name, *.suffix pattern or IP address")
        out.append(entry)
    return tuple(dict.fromkeys(out))


def address_problem(ip: IPAddress) -> str | None:
    """Why a callback may not go to ``ip`` (e.g. ``"loopback"``), or None for a public unicast address."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return address_problem(ip.ipv4_mapped)  # ::ffff:127.0.0.1 is 127.0.0.1
    for label, bad in (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
        ("not globally routable", not ip.is_global),  # e.g. 100.64.0.0/10, 192.0.0.0/24, 2001:db8::/32
    ):
        if bad:
            return label
    return None


def canonical_host(host: str) -> str:
    """The host as a resolver would see it: Unicode compatibility forms folded (``ｌocalhost`` is
    ``localhost``), lower case, without trailing dots."""
    return unicodedata.normalize("NFKC", host).casefold().rstrip(".")


_LEGACY_IPV4_RE = re.compile(r"\A(?:0x[0-9a-f]*|[0-9]+)(?:\.(?:0x[0-9a-f]*|[0-9]+)){0,3}\Z")


def legacy_ip_literal(host: str) -> IPAddress | None:
    """The address an IP literal names, in every spelling a C resolver accepts: dotted quad, IPv6, and the
    legacy IPv4 forms ``inet_aton`` takes (``2130706433``, ``0x7f.0.0.1``, ``0177.0.0.1``, ``127.1``).
    None for a name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _LEGACY_IPV4_RE.fullmatch(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            # Digits the resolver will not take as an address (e.g. out of range): not a usable name
            # either, and never to be resolved as one.
            return ipaddress.IPv4Address("0.0.0.0")
    return None


@dataclass(frozen=True)
class CallbackPolicy:
    """Where callbacks may go. The default is the strict one: https, any public host, no internal address.

    ``dev_mode`` allows ``http://`` and internal addresses (``keyturn dev``, tests). ``hosts`` is the
    allowlist: when set, only matching hosts are accepted; an allowlisted host may resolve to internal
    addresses.
    """

    dev_mode: bool = False
    hosts: tuple[str, ...] = ()

    def allowlisted(self, host: str) -> bool:
        """True if ``host`` (lower case, no trailing dot) matches an allowlist entry."""
        for pattern in self.hosts:
            if pattern.startswith("*."):
                if host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                    return True
            elif host == pattern:
                return True
        return False

    def check_url(self, url: str) -> tuple[str, int]:
        """The URL's host and port if the rules allow it; raise ``CallbackRefused`` otherwise.

        Checked when a request is made (422 naming ``callbackUrl``) and again before delivery.
        """
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise CallbackRefused("callback_url_invalid", problem="unparsable") from None
        schemes = ("https", "http") if self.dev_mode else ("https",)
        if parts.scheme not in schemes:
            raise CallbackRefused("callback_url_scheme", dev_mode=self.dev_mode)
        if parts.username is not None or parts.password is not None:
            raise CallbackRefused("callback_url_invalid", problem="credentials")
        host = canonical_host(parts.hostname or "")
        if not host:
            raise CallbackRefused("callback_url_invalid", problem="no_host")
        if self.hosts and not self.allowlisted(host):
            raise CallbackRefused("callback_host_not_allowed", host=host)
        if not self.dev_mode and not self.allowlisted(host):
            if host == "localhost" or host.endswith(".localhost"):
                raise CallbackRefused("callback_address_refused", host=host, problem="loopback name")
            literal = legacy_ip_literal(host)
            if literal is not None:
                self.check_addresses(host, [literal])
        return host, port if port is not None else (443 if parts.scheme == "https" else 80)

    def check_addresses(self, host: str, addresses: Iterable[IPAddress]) -> None:
        """Raise ``CallbackRefused`` if any address of ``host`` is internal (unless allowed by dev/allowlist).

        Every address must pass, not just one: the connection may use any of them.
        """
        if self.dev_mode or self.allowlisted(host):
            return
        for ip in addresses:
            problem = address_problem(ip)
            if problem is not None:
                raise CallbackRefused("callback_address_refused", host=host, ip=str(ip), problem=problem)


async def system_resolve(host: str, port: int) -> list[str]:
    """The host's addresses from the system resolver (one lookup; an IP literal is returned as is)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class _PinnedResolver(AbstractResolver):
    """An aiohttp resolver answering with the addresses already checked: the POST goes where we looked."""

    def __init__(self) -> None:
        self.addresses: list[IPAddress] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if not self.addresses:
            raise OSError("no checked address for the callback host")
        return [
            {
                "hostname": host,
                "host": str(ip),
                "port": port,
                "family": socket.AF_INET6 if ip.version == 6 else socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
            for ip in self.addresses
        ]

    async def close(self) -> None:
        return None


def callback_body(request: DeployRequest, receipt: dict[str, Any] | None) -> bytes:
    """The exact bytes POSTed to the callback URL."""
    payload: dict[str, Any] = {"requestId": request.id, "status": request.status.value}
    if receipt is not None:
        payload["receipt"] = receipt
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


def refused(record: dict[str, Any]) -> bool:
    """True if an attempt failed on a rule (a URL or address the policy refuses, or the GitHub approver's
    4xx): retrying cannot make it acceptable, so the delivery is settled as refused rather than retried."""
    return record["outcome"] in ("invalid_url", "refused") or str(record.get("error", "")).startswith(
        "callback_"
    )


class Handover(Protocol):
    """The GitHub hand-off (bot/github.py, ``GitHubForwarder``) as the outbox drives it."""

    async def hand_over(self, request: DeployRequest, receipt: dict[str, Any] | None) -> dict[str, Any]:
        """One attempt; its record's ``outcome`` (``delivered``, ``refused`` or ``failed``) and details."""
        ...


class CallbackSender:
    """Delivers callbacks with retries. ``deliver`` is meant to run as a background task."""

    def __init__(
        self,
        store: RequestStore,
        signer: CallbackMac,
        *,
        clock: Callable[[], datetime],
        metrics: Metrics | None = None,
        attempts: int = 8,
        timeout: float = 10.0,
        first_delay: float = 1.0,
        max_delay: float = 60.0,
        policy: CallbackPolicy | None = None,
        resolve: Resolve = system_resolve,
    ) -> None:
        self._policy = policy or CallbackPolicy()
        self._resolve = resolve
        self._store = store
        self._signer = signer
        self._clock = clock
        self._metrics = metrics
        self._attempts = attempts
        self._timeout = timeout
        self._first_delay = first_delay
        self._max_delay = max_delay

    async def _signature(self, path: str, timestamp: str, body: bytes) -> str:
        result = await self._signer.mac_callback(path, timestamp, body)
        if isinstance(result, dict):
            result = result.get("signature")
        if not isinstance(result, str) or not result.startswith("v1="):
            raise ValueError("the signer returned no callback signature")
        return result

    async def _record(self, request_id: str, attempt: dict[str, Any]) -> None:
        if self._metrics is not None:
            self._metrics.callback_attempts.labels(attempt["outcome"]).inc()
        try:
            await self._store.record_callback_attempt(request_id, attempt)
        except StoreUnavailable:
            log.warning("could not record callback attempt %s for %s", attempt["attempt"], request_id)

    async def _checked_addresses(self, host: str, port: int) -> list[IPAddress]:
        """Resolve ``host`` once and check every address (``CallbackRefused``); OSError if DNS fails."""
        try:
            addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in await self._resolve(host, port)]
        except ValueError:
            raise OSError(f"the resolver returned a non-address for {host}") from None
        if not addresses:
            raise OSError(f"no address for {host}")
        self._policy.check_addresses(host, addresses)
        return addresses

    async def attempt(
        self, request: DeployRequest, receipt: dict[str, Any] | None, number: int, delivery_id: str = ""
    ) -> dict[str, Any]:
        """One delivery attempt, on a connection of its own that is closed afterwards; the attempt's record
        (also appended to the request's log). ``outcome`` is ``delivered``, ``failed`` or ``invalid_url``;
        see :func:`refused` for the failures not worth retrying. The whole attempt (lookup, MAC, POST) is
        bounded by the timeout, so a delivery worker's lease can be sized to outlast it.
        """
        at = self._clock()
        record: dict[str, Any] = {"attempt": number, "at": at.isoformat()}
        url = request.callback_url or ""
        try:
            host, port = self._policy.check_url(url)
        except CallbackRefused as exc:
            record.update(outcome="invalid_url", error=exc.code, reason=exc.reason)
            await self._record(request.id, record)
            log.warning("callback for %s refused: %s", request.id, exc.reason)
            return record
        path = urlsplit(url).path or "/"
        body = callback_body(request, receipt)
        resolver = _PinnedResolver()
        # One connection at most, closed after the answer: a worker never holds more than one socket.
        connector = aiohttp.TCPConnector(resolver=resolver, use_dns_cache=False, force_close=True, limit=1)
        headers = {"Content-Type": "application/json"}
        if delivery_id:
            headers[DELIVERY_HEADER] = delivery_id
        try:
            async with (
                asyncio.timeout(self._timeout),
                aiohttp.ClientSession(connector=connector) as session,
            ):
                resolver.addresses = await self._checked_addresses(host, port)
                timestamp = str(int(at.timestamp()))
                headers["X-Keyturn-Timestamp"] = timestamp
                headers["X-Keyturn-Signature"] = await self._signature(path, timestamp, body)
                async with session.post(url, data=body, headers=headers, allow_redirects=False) as resp:
                    record["status"] = resp.status
                    ok = 200 <= resp.status < 300
            record["outcome"] = "delivered" if ok else "failed"
        except asyncio.CancelledError:
            raise
        except CallbackRefused as exc:
            record.update(outcome="failed", error=exc.code, reason=exc.reason)
            log.warning("callback for %s refused: %s", request.id, exc.reason)
        except Exception as exc:  # any other failure is one failed attempt; the caller retries
            record.update(outcome="failed", error=type(exc).__name__)
        finally:
            if not connector.closed:
                await connector.close()
        await self._record(request.id, record)
        return record

    async def attempt_by(
        self, request_id: str, number: int, deliver: Callable[[], Awaitable[dict[str, Any]]]
    ) -> dict[str, Any]:
        """One attempt made by ``deliver`` rather than a POST to a callback URL (the GitHub hand-off): bounded
        by the same timeout and recorded like a callback attempt. Any exception is a failed attempt."""
        record: dict[str, Any] = {"attempt": number, "at": self._clock().isoformat()}
        try:
            async with asyncio.timeout(self._timeout):
                record.update(await deliver())
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # one failed attempt; the outbox retries
            record.update(outcome="failed", error=type(exc).__name__)
        await self._record(request_id, record)
        return record

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based): doubling, capped."""
        return float(min(self._first_delay * 2 ** max(0, attempt - 1), self._max_delay))

    @property
    def attempts(self) -> int:
        """Attempts before a callback is dead-lettered."""
        return self._attempts

    async def deliver(self, request: DeployRequest, receipt: dict[str, Any] | None = None) -> bool:
        """POST the outcome to ``request.callback_url`` until a 2xx answer or the attempts run out, in this
        task (retries in memory; the bot itself delivers through :class:`CallbackOutbox`).

        A URL or address the policy refuses is recorded once and not retried.
        """
        if not request.callback_url:
            return False
        for number in range(1, self._attempts + 1):
            record = await self.attempt(request, receipt, number)
            if record["outcome"] == "delivered":
                return True
            if refused(record):
                return False
            if number < self._attempts:
                await asyncio.sleep(self.backoff(number))
        log.warning("callback for %s not delivered after %d attempts", request.id, self._attempts)
        return False


class CallbackOutbox:
    """Delivers the callbacks the store's outbox owes, with a bounded number of workers per replica.

    Every replica runs one; they share the work through ``keyturn:outbox:due`` (bot/store.py). A worker
    claims a due callback with a lease, makes one attempt, and then either settles it (delivered, refused,
    or dead-lettered after the last attempt) or re-schedules it after a backoff, all in Redis: retries
    survive a restart, and a claim whose replica died falls due again when its lease ends and is taken by
    any replica. Delivery is at least once: a replica that dies after the receiver's 2xx but before
    settling, or that stalls past its lease, leads to a second POST with the same ``X-Keyturn-Delivery``
    id, by which the receiver dedupes (docs/api.md, "Callbacks").
    """

    def __init__(
        self,
        store: RequestStore,
        sender: CallbackSender,
        *,
        concurrency: int = 16,
        lease: float = 30.0,
        poll_interval: float = 1.0,
        metrics: Metrics | None = None,
    ) -> None:
        self._store = store
        self._sender = sender
        self._concurrency = concurrency
        self._lease = lease
        self._poll = poll_interval
        self._metrics = metrics
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(concurrency)
        self._workers: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        # The GitHub hand-off (bot/github.py), set by the server when an approver is configured: the outcome
        # of a request a protection rule's webhook opened goes there instead of to a callback URL.
        self.github: Handover | None = None

    @property
    def in_flight(self) -> int:
        """Deliveries this replica is making right now (never more than ``concurrency``)."""
        return len(self._workers)

    def wake(self) -> None:
        """Look for due callbacks now (a final outcome was just enqueued) rather than at the next poll."""
        self._wake.set()

    async def start(self) -> None:
        """Start the claim loop."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="callback-outbox")

    async def stop(self) -> None:
        """Stop claiming and cancel deliveries in flight; their leases lapse and another replica (or this
        one, restarted) makes the attempt again."""
        tasks = [t for t in (self._task, *self._workers) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self._claim_some()
                if self._failing:
                    log.info("callback outbox: claiming again")
                self._failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: keep the loop alive, try again at the next poll
                if not self._failing:  # once per outage, not once per poll
                    log.warning("callback outbox: claim failed (%s); retrying", type(exc).__name__)
                self._failing = True
            # Wait for a wake-up (a local final outcome, or a worker freeing a slot) or the poll interval,
            # which is how other replicas' enqueues and lapsed leases are noticed.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll)
            self._wake.clear()

    async def _claim_some(self) -> None:
        free = self._concurrency - len(self._workers)
        if free <= 0:
            return
        ids, token = await self._store.claim_callbacks(free, timedelta(seconds=self._lease))
        for request_id in ids:
            await self._slots.acquire()  # never blocks long: at most ``free`` ids were claimed
            task = asyncio.create_task(self._work(request_id, token), name=f"callback-{request_id}")
            self._workers.add(task)
            task.add_done_callback(self._done)
        if self._metrics is not None:
            with contextlib.suppress(StoreUnavailable):
                due, dead = await self._store.callback_backlog()
                self._metrics.callbacks_due.set(due)
                self._metrics.callbacks_dead.set(dead)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._workers.discard(task)
        self._slots.release()
        self._wake.set()  # a slot is free: claim more if any are due
        if not task.cancelled() and task.exception() is not None:
            log.error("callback delivery failed", exc_info=task.exception())

    def _hand_over(
        self, request: DeployRequest, receipt: dict[str, Any] | None
    ) -> Callable[[], Awaitable[dict[str, Any]]]:
        async def attempt() -> dict[str, Any]:
            if self.github is None:  # a bot started without KEYTURN_GITHUB_APPROVER_URL: kept for one with it
                return {"outcome": "failed", "error": "github_approver_not_configured"}
            return await self.github.hand_over(request, receipt)

        return attempt

    async def _work(self, request_id: str, token: int) -> None:
        try:
            job = await self._store.begin_callback(request_id)
            request = await self._store.get(request_id) if job is not None else None
        except StoreUnavailable:
            return  # the lease lapses and the attempt is made again
        if job is None or request is None or not owes_delivery(request):
            with contextlib.suppress(StoreUnavailable):
                await self._store.drop_callback(request_id, token)
            return
        receipt = None
        if request.status is Status.APPROVED:
            with contextlib.suppress(StoreUnavailable):
                receipt = await self._store.receipt(request_id)
        number = int(job.get("attempts", "1"))
        if request.origin_kind == "github":
            record = await self._sender.attempt_by(request_id, number, self._hand_over(request, receipt))
        else:
            record = await self._sender.attempt(request, receipt, number, job.get("delivery_id", ""))
        outcome = record["outcome"]
        retry_at: int | None = None
        if outcome == "delivered":
            state = "delivered"
        elif refused(record):
            state = "refused"
        elif number >= self._sender.attempts:
            state = "dead"
        else:
            state = "queued"
            retry_at = int((time.time() + self._sender.backoff(number)) * 1000)
        try:
            ours = await self._store.finish_callback(request_id, token, state, record, retry_at)
        except StoreUnavailable:
            return  # the lease lapses; the next attempt repeats this one (the receiver dedupes)
        if ours and state == "dead":
            log.warning(
                "callback for %s dead-lettered after %d attempts (last: %s)",
                request_id, number, record.get("error") or record.get("status"),
            )  # fmt: skip
            if self._metrics is not None:
                self._metrics.callback_dead_letters.inc()
