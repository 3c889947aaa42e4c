"""``keyturn bot``: assemble the ASGI app (Slack endpoint, CI API, health, metrics) and serve it with uvicorn.

This is the one place that wires the parts together. Settings are read once in ``main`` and passed down; an
invalid configuration or policy stops the process at start with a one-line error and exit code 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import socket
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis
import uvicorn
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import Route

from keyturn.bot import timer_jobs
from keyturn.bot.api import Api, GuardMiddleware, http_error_handler
from keyturn.bot.approvals import ApprovalService, LifecycleHooks
from keyturn.bot.callbacks import CallbackOutbox, CallbackPolicy, CallbackSender, parse_host_patterns
from keyturn.bot.config import Settings, describe_error, signer_only_settings_found
from keyturn.bot.edge import BodyDeadlineMiddleware, ListenerSplitMiddleware, uvicorn_limits
from keyturn.bot.metrics import Metrics
from keyturn.bot.prefilter import SourceLimiter
from keyturn.bot.redisconn import make_redis
from keyturn.bot.slack_token import SlackTokenCheck
from keyturn.bot.store import ChangeFeed, RequestLimits, RequestStore, StoreUnavailable
from keyturn.signer.errors import KeyturnError
from keyturn.signer.policy import Policy, PolicyError, load_policy

log = logging.getLogger("keyturn.bot")

Clock = Callable[[], datetime]


DEV_MODE_WARNING = (
    "KEYTURN_DEV_MODE=1: NOT FOR PRODUCTION. Turned off: the refusal of placeholder Slack tokens, and "
    "every callbackUrl address check (http:// allowed; loopback, private, link-local and numeric-form "
    "hosts allowed at request time and at delivery)"
)


def utc_now() -> datetime:
    """The wall clock, timezone-aware."""
    return datetime.now(UTC)


@dataclass
class Components:
    """Everything the app is built from (tests reach in for the store and the service)."""

    settings: Settings
    policy: Policy
    redis: aioredis.Redis
    signer: Any
    store: RequestStore
    service: ApprovalService
    feed: ChangeFeed
    metrics: Metrics
    api: Api
    slack: Any
    background: list[Any] = field(default_factory=list)
    extra_clients: list[Any] = field(
        default_factory=list
    )  # anything with aclose(): Redis pools, HTTP clients


def _timers(
    service: ApprovalService, comps: Components, clock: Clock, *, own_pool: bool = True
) -> tuple[LifecycleHooks, timer_jobs.TimerRunner]:
    """The scheduler's hooks for the approval service and its start/stop runner
    (``keyturn.bot.timer_jobs``)."""
    # A pool of their own: the lease step and the deadlines keep their connections when every request
    # handler is waiting for one of the shared pool's (issue 14, finding 1).
    timers_redis = comps.redis
    if own_pool:
        timers_redis = make_redis(comps.settings, max_connections=comps.settings.timers_redis_max_connections)
        comps.extra_clients.append(timers_redis)
    return timer_jobs.install(
        service=service,
        redis=timers_redis,
        policy=comps.policy,
        messenger=service.messenger,
        store=comps.store,
        clock=clock,
        # Timer handlers share the Redis pool with the API: leave most of it to requests.
        concurrency=max(1, min(16, comps.settings.timers_redis_max_connections // 2)),
        sweep_s=comps.settings.backstop_interval,
    )


def build_app(
    settings: Settings,
    policy: Policy,
    *,
    clock: Clock = utc_now,
    redis_client: aioredis.Redis | None = None,
) -> tuple[Starlette, Components]:
    """Wire the bot: Redis store, signer client, Slack messenger and endpoint, approval service, API."""
    from keyturn.bot.app import build_slack_endpoint
    from keyturn.bot.messenger import SlackMessenger, make_web_client
    from keyturn.bot.signer_client import SignerClient

    metrics = Metrics()
    client = redis_client or make_redis(settings)
    signer = SignerClient(
        settings.signer_socket,
        timeout=settings.signer_timeout,
        pool_size=settings.signer_pool_size,
        max_checks=settings.signer_max_checks,
        max_signs=settings.signer_max_signs,
    )
    web = make_web_client(settings.slack_bot_token.get_secret_value(), settings.slack_api_url)
    messenger = SlackMessenger(web, policy, now=clock)
    store = RequestStore(
        client,
        retention=settings.retention,
        min_replicas=settings.redis_min_replicas,
        replica_timeout=settings.redis_replica_timeout,
        replica_budget=settings.redis_retry_budget,
    )
    callback_policy = CallbackPolicy(
        dev_mode=settings.dev_mode, hosts=parse_host_patterns(settings.callback_hosts)
    )
    sender = CallbackSender(
        store,
        signer,
        clock=clock,
        metrics=metrics,
        attempts=settings.callback_attempts,
        timeout=settings.callback_timeout,
        first_delay=settings.callback_retry_first,
        max_delay=settings.callback_retry_max,
        policy=callback_policy,
    )
    outbox = CallbackOutbox(
        store,
        sender,
        concurrency=settings.callback_concurrency,
        lease=settings.callback_lease,
        poll_interval=settings.callback_poll_interval,
        metrics=metrics,
    )
    service = ApprovalService(
        store,
        messenger,
        signer,
        policy,
        clock=clock,
        callbacks=outbox,
        metrics=metrics,
        card_retry_max=settings.card_retry_max,
        sign_lease=settings.sign_lease,
        limits=RequestLimits(
            per_requester=settings.max_pending_per_requester,
            per_repo=settings.max_pending_per_repo,
            total=settings.max_pending,
            rate_per_minute=settings.request_rate,
            burst=settings.request_burst,
        ),
    )
    feed = ChangeFeed(client)
    # One budget per client address across both endpoints: a flood split between them costs no more.
    sources = SourceLimiter(settings.source_burst, settings.source_rate)
    api = Api(
        service,
        store,
        signer,
        feed,
        metrics,
        base_url=settings.base_url,
        max_body=settings.max_body_bytes,
        callback_policy=callback_policy,
        sources=sources,
    )
    slack = build_slack_endpoint(
        service,
        messenger,
        signer,
        policy,
        web,
        sources=sources,
    )
    token_check = SlackTokenCheck(web, team_id=policy.slack.team_id)
    api.slack_token = token_check
    comps = Components(settings, policy, client, signer, store, service, feed, metrics, api, slack)

    # An injected client (tests) serves the timers too; a real deployment gives them a pool of their own.
    service.hooks, runner = _timers(service, comps, clock, own_pool=redis_client is None)
    comps.background.append(runner)
    comps.background.append(outbox)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await messenger.start()
        await token_check.start()
        await feed.start()
        with contextlib.suppress(StoreUnavailable):
            resumed = await service.resume(full=True)
            if resumed:
                log.info("resumed card posting for %d pending request(s)", resumed)
        for part in comps.background:
            await part.start()
        try:
            health = await signer.health()
            if getattr(health, "policy_sha256", policy.sha256) != policy.sha256:
                log.warning("the signer loaded a different policy file than the bot (sha256 differs)")
        except (KeyturnError, OSError):
            log.warning("the signer is not reachable yet; requests will get 503 until it is")
        try:
            yield
        finally:
            await token_check.stop()
            for part in reversed(comps.background):
                with contextlib.suppress(Exception):
                    await part.stop()
            with contextlib.suppress(Exception):
                await slack.drain(5.0)
            await service.wait_idle(5.0)
            await service.aclose()
            await feed.stop()
            with contextlib.suppress(Exception):
                await signer.close()
            with contextlib.suppress(Exception):
                await client.aclose()
            for extra in comps.extra_clients:
                with contextlib.suppress(Exception):
                    await extra.aclose()
            with contextlib.suppress(Exception):
                await messenger.aclose()

    split = (
        []
        if settings.internal_port is None
        else [Middleware(ListenerSplitMiddleware, internal_port=settings.internal_port)]
    )
    routes = [Route("/slack/events", slack.handle, methods=["POST"]), *api.routes()]
    if settings.github_approver_url:
        from keyturn.bot.github import GitHubForwarder

        forwarder = GitHubForwarder(settings.github_approver_url, signer=signer, service=service, store=store)
        outbox.github = forwarder  # outcomes of GitHub-origin requests go out through the outbox
        routes += forwarder.routes()
        comps.extra_clients.append(forwarder)
    app = Starlette(
        routes=routes,
        middleware=[
            *split,  # outermost: a path refused on this port never reaches the guard's counters
            Middleware(GuardMiddleware, metrics=metrics, closing=api.closing),
            # Inside the guard, so a body deadline is a 408 rather than the guard's 500.
            Middleware(BodyDeadlineMiddleware, body_timeout=settings.http_body_timeout),
        ],
        exception_handlers={HTTPException: http_error_handler},
        lifespan=lifespan,
    )
    return app, comps


class _Server(uvicorn.Server):
    """uvicorn, announcing readiness on stdout once it accepts connections, and telling the app at once when
    a signal asks it to stop (so long-polls end before the grace period, rather than being cancelled)."""

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None] | None = None) -> None:
        super().__init__(config)
        self._on_exit = on_exit
        self._loop: asyncio.AbstractEventLoop | None = None

    def handle_exit(self, sig: int, frame: Any) -> None:
        """uvicorn's signal handler (run between bytecodes of the loop's thread): hand over to the loop."""
        super().handle_exit(sig, frame)
        if self._on_exit is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._on_exit)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)
        if self.started:
            host, port = self.config.host, self.config.port
            with contextlib.suppress(Exception):
                host, port = self.servers[0].sockets[0].getsockname()[:2]
            print(f"bot ready on http://{host}:{port}", flush=True)
            for server in self.servers[1:]:  # uvicorn makes one asyncio server per socket given
                for sock in server.sockets:
                    ihost, iport = sock.getsockname()[:2]
                    print(f"bot internal listener (metrics, health) on http://{ihost}:{iport}", flush=True)


def bind_listener(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (IPv4 or IPv6 literal or name), address reuse on."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family, backlog=2048)
    except OSError as exc:
        raise SystemExit(f"keyturn bot: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    # Nagle off for every connection accepted on it (Linux copies the option to accepted sockets). asyncio
    # turns it off itself only for sockets whose protocol number says TCP, and ``create_server`` leaves it 0:
    # without this a kept-alive client waited out its delayed ACK (40 ms) for every response after its first,
    # whose head and body uvicorn writes separately.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.set_inheritable(True)
    return sock


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="keyturn bot",
        description="Run the Slack bot and the CI API. Configuration: KEYTURN_* variables or .env "
        "(see docs/configuration.md).",
    )
    p.add_argument("--host", help="listen address (overrides KEYTURN_HOST)")
    p.add_argument("--port", type=int, help="listen port (overrides KEYTURN_PORT)")
    p.add_argument("--env-file", help="read settings from this file instead of ./.env")
    return p


def load_settings(args: argparse.Namespace) -> Settings:
    """Settings from the environment and the .env file, with command-line overrides."""
    overrides: dict[str, Any] = {}
    if args.host:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    if args.env_file:
        return Settings(_env_file=args.env_file, **overrides)
    return Settings(**overrides)


def main(argv: Sequence[str] | None = None) -> int:
    """``keyturn bot``: exit 2 on invalid configuration or policy, else serve until stopped."""
    parser = _parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:
        return int(exc.code or 0) if exc.code in (0, None) else 2
    found = signer_only_settings_found(os.environ, args.env_file or ".env")
    if found:
        print(
            "keyturn bot: refusing to start: the signer's secrets or key are in the bot's configuration: "
            f"{', '.join(found)}; remove them (only the signer holds them: deploy/signer.env.example)",
            file=sys.stderr,
        )
        return 2
    try:
        settings = load_settings(args)
    except ValidationError as exc:
        print(f"keyturn bot: invalid configuration: {describe_error(exc)}", file=sys.stderr)
        return 2
    if args.env_file and not os.path.exists(args.env_file):
        print(f"keyturn bot: invalid configuration: no such env file {args.env_file}", file=sys.stderr)
        return 2
    try:
        policy = load_policy(settings.policy)
    except PolicyError as exc:
        print(f"keyturn bot: invalid policy: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    if settings.dev_mode:
        log.warning(DEV_MODE_WARNING)
    app, comps = build_app(settings, policy)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        log_level=settings.log_level.lower(),
        access_log=settings.log_level == "DEBUG",
        lifespan="on",
        server_header=False,
        **uvicorn_limits(
            max_connections=settings.http_max_connections,
            header_timeout=settings.http_header_timeout,
            keep_alive=settings.http_keep_alive,
            graceful_shutdown=settings.shutdown_grace,
            max_head_bytes=settings.http_max_head_bytes,
        ),
    )
    server = _Server(config, on_exit=comps.api.begin_shutdown)
    sockets: list[socket.socket] | None = None
    if settings.internal_port is not None:
        # One server on two sockets: one lifespan, one signal handler, one connection cap; the app routes
        # by the port a request arrived on (ListenerSplitMiddleware).
        sockets = [
            bind_listener(settings.host, settings.port),
            bind_listener(settings.internal_host, settings.internal_port),
        ]
    elif not settings.dev_mode:
        log.warning(
            "no internal listener (KEYTURN_INTERNAL_PORT): /metrics is served on the main port; "
            "keep it off the public proxy (docs/deploy.md)"
        )
    try:
        server.run(sockets=sockets)
    except KeyboardInterrupt:
        return 0
    return 0 if server.started else 1
