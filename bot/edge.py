"""Bounds at the bot's HTTP edge (issue 14, finding 1): nobody holds the bot open without a secret.

* :func:`bounded_h11` — uvicorn's h11 protocol with a header deadline (a connection must deliver a complete
  request head within ``header_timeout`` of connecting, or of its previous response) and a connection cap:
  above ``max_connections`` the oldest connection still waiting for a request head is closed to make room
  (a legitimate client sends its head at once, so it is rarely the one waiting; a slow-loris one always is).
  If nothing is evictable the new connection is closed at once. Either way the process never runs out of
  file descriptors, so the accept loop never spins on ``EMFILE`` and the timers' Redis connections live.
  Connections that never completed a request are evicted before kept-alive ones between requests.
* :class:`BodyDeadlineMiddleware` — a whole request body must arrive within ``body_timeout``; otherwise
  408 ``body_timeout`` and the connection closes.
* :func:`raise_nofile_limit` — lift the soft open-file limit to the hard one at start.

The header phase is watched on h11's own state (``their_state is IDLE``: no complete request head yet).
"""

from __future__ import annotations

import asyncio
import logging
import resource
from typing import Any

import h11
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("keyturn.edge")

# File descriptors kept from HTTP connections for the rest of the bot: Redis pools (requests, timers,
# outbox), signer sockets, the Slack and callback clients, logs, the listening sockets, plus one accept batch
# (ACCEPT_BATCH). Measured: 256 left too little once the outbox, the internal listener and the GitHub
# forwarder arrived (EMFILE under a 1,100-connection flood).
FD_RESERVE = 384
ACCEPT_BATCH = 128


def raise_nofile_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def connection_cap(wanted: int, nofile: int) -> int:
    """The connection cap: ``wanted``, but never so many that HTTP could take the last descriptors."""
    return max(16, min(wanted, nofile - FD_RESERVE))


def bounded_h11(max_connections: int, header_timeout: float) -> type[H11Protocol]:
    """An h11 protocol class for ``uvicorn.Config(http=...)`` with a header deadline and a connection cap."""
    # Connections without a complete request head, oldest first: those that never sent one (evicted first)
    # and kept-alive ones between requests (bounded by the keep-alive timeout anyway; a client reusing
    # its pooled connection should not find it reset because strangers connected).
    fresh: dict[BoundedH11, None] = {}
    idle: dict[BoundedH11, None] = {}
    counts = {"evicted": 0, "refused": 0, "timed_out": 0}

    class BoundedH11(H11Protocol):
        """uvicorn's h11 protocol, bounded (see the module docstring)."""

        stats = counts
        _header_timer: asyncio.TimerHandle | None = None
        _served = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                victim = next(iter(fresh), None) or next(iter(idle), None)
                if victim is None:
                    counts["refused"] += 1
                    self._drop()
                    return
                counts["evicted"] += 1
                victim._drop()
            self._awaiting_head()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._check_phase()

        def on_response_complete(self) -> None:
            self._served = True
            super().on_response_complete()
            self._check_phase()

        def connection_lost(self, exc: Exception | None) -> None:
            self._head_received()
            super().connection_lost(exc)

        def _check_phase(self) -> None:
            if self.transport.is_closing():
                self._head_received()
            elif self.conn.their_state is h11.IDLE and (self.cycle is None or self.cycle.response_complete):
                self._awaiting_head()
            else:
                self._head_received()

        def _awaiting_head(self) -> None:
            (idle if self._served else fresh).setdefault(self, None)
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(header_timeout, self._head_too_slow)

        def _head_received(self) -> None:
            fresh.pop(self, None)
            idle.pop(self, None)
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _head_too_slow(self) -> None:
            self._header_timer = None
            if self in fresh or self in idle:
                counts["timed_out"] += 1
                self._drop()

        def _drop(self) -> None:
            self._head_received()
            self.connections.discard(self)
            if not self.transport.is_closing():
                self.transport.close()

    return BoundedH11


class BodyTimeout(Exception):
    """The request body did not arrive within the deadline."""

    code = "body_timeout"


class BodyDeadlineMiddleware:
    """A request's whole body must arrive within ``body_timeout`` seconds of the first read: else 408."""

    def __init__(self, app: ASGIApp, body_timeout: float) -> None:
        self.app = app
        self.body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        started = False

        async def bounded_receive() -> Message:
            nonlocal deadline
            if deadline is None:
                deadline = loop.time() + self.body_timeout
            try:
                async with asyncio.timeout_at(deadline):
                    return await receive()
            except TimeoutError:
                raise BodyTimeout from None

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, bounded_receive, tracking_send)
        except BodyTimeout:
            if started:
                raise
            response = JSONResponse(
                {"error": "body_timeout", "message": f"the body did not arrive within {self.body_timeout} s"},
                status_code=408,
                headers={"Connection": "close"},
            )
            await response(scope, receive, send)


def event_loop() -> str:
    """The event loop uvicorn runs the bot on: ``uvloop`` when installed (the bot extra brings it on Linux and
    macOS), else ``asyncio``. The HTTP protocol stays h11 either way (``bounded_h11``: its header deadline
    and connection cap are written against h11's state). bench/bench_intake.py gives its floor the same."""
    from importlib.util import find_spec

    return "uvloop" if find_spec("uvloop") is not None else "asyncio"


def uvicorn_limits(
    *,
    max_connections: int,
    header_timeout: float,
    keep_alive: float,
    graceful_shutdown: float,
    max_head_bytes: int,
) -> dict[str, Any]:
    """The ``uvicorn.Config`` options that bound the edge, and its event loop (docs/configuration.md)."""
    nofile = raise_nofile_limit()
    cap = connection_cap(max_connections, nofile)
    return {
        "http": bounded_h11(cap, header_timeout),
        "loop": event_loop(),
        # Requests in progress above this get 503 from uvicorn itself; connections are capped above.
        "limit_concurrency": cap + 1,
        "timeout_keep_alive": keep_alive,
        "timeout_graceful_shutdown": graceful_shutdown,
        "h11_max_incomplete_event_size": max_head_bytes,
        # asyncio accepts up to ``backlog`` sockets per wake-up before any protocol sees them, so the
        # batch must fit in the descriptors kept in reserve, or a burst could still hit EMFILE.
        "backlog": min(cap, ACCEPT_BATCH),
    }


# What the internal listener serves (docs/deploy.md, "The internal listener").
INTERNAL_PATHS = frozenset({"/metrics", "/healthz", "/readyz"})
# What the main port keeps of them: the probes, which reveal nothing (the proxy forwards none of the three).
_INTERNAL_ONLY = frozenset({"/metrics"})


class ListenerSplitMiddleware:
    """With an internal listener, route by the port a request arrived on (the ASGI ``server`` address).

    On the internal port only :data:`INTERNAL_PATHS` are served; on the main port ``/metrics`` is not. Both
    get a plain 404 otherwise, as for an unknown path, so the main port does not even admit metrics exist.
    """

    def __init__(self, app: ASGIApp, *, internal_port: int) -> None:
        self.app = app
        self.internal_port = internal_port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            server = scope.get("server")
            internal = server is not None and server[1] == self.internal_port
            path = scope.get("path", "")
            if (internal and path not in INTERNAL_PATHS) or (not internal and path in _INTERNAL_ONLY):
                response = JSONResponse({"error": {"code": "not_found", "message": "not found"}}, 404)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
