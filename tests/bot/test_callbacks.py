"""Callback URLs are no SSRF vector: URL rules, address rules, and delivery on a real socket and Redis.

Delivery tests resolve host names with an injected resolver (a fake DNS) and post to a real local aiohttp
server, so they show the POST goes to the address that was checked and never looks the name up again.
"""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from pydantic import ValidationError
from ulid import ULID

from keyturn.bot import lifecycle
from keyturn.bot.callbacks import (
    CallbackPolicy,
    CallbackRefused,
    CallbackSender,
    address_problem,
    parse_host_patterns,
)
from keyturn.bot.config import Settings, describe_error
from keyturn.bot.models import DeployRequest, RequestIn
from keyturn.bot.store import RequestStore
from tests.harness import free_port

SHA = "4f8a2cd91ef7a2c7f3a5f0aa12d93b33f2d40e17"
STRICT = CallbackPolicy()
DEV = CallbackPolicy(dev_mode=True)
DEV_LISTED = CallbackPolicy(dev_mode=True, hosts=("127.0.0.1",))
LISTED = CallbackPolicy(hosts=parse_host_patterns("ci.example.com, *.hooks.example.org,10.1.2.3"))


def refusal(policy: CallbackPolicy, url: str) -> str | None:
    try:
        policy.check_url(url)
    except CallbackRefused as exc:
        return exc.code
    return None


@pytest.mark.parametrize(
    ("policy", "url", "code"),
    [
        (STRICT, "https://ci.example.com/hook", None),
        (STRICT, "https://CI.Example.com./hook?x=1", None),
        (STRICT, "http://ci.example.com/hook", "callback_url_scheme"),
        (DEV, "http://127.0.0.1:8080/hook", None),
        (STRICT, "ftp://ci.example.com/hook", "callback_url_scheme"),
        (DEV, "file:///etc/passwd", "callback_url_scheme"),
        (STRICT, "https://user:pw@ci.example.com/hook", "callback_url_invalid"),
        (STRICT, "https:///hook", "callback_url_invalid"),
        (STRICT, "https://ci.example.com:99999/hook", "callback_url_invalid"),
        (STRICT, "https://127.0.0.1/hook", "callback_address_refused"),
        (STRICT, "https://[::1]/hook", "callback_address_refused"),
        (STRICT, "https://[::ffff:169.254.169.254]/latest/meta-data", "callback_address_refused"),
        (STRICT, "https://169.254.169.254/latest/meta-data", "callback_address_refused"),
        (STRICT, "https://localhost/hook", "callback_address_refused"),
        (STRICT, "https://admin.localhost/hook", "callback_address_refused"),
        (STRICT, "https://93.184.216.34/hook", None),
        (LISTED, "https://ci.example.com/hook", None),
        (LISTED, "https://a.b.hooks.example.org/hook", None),
        (LISTED, "https://hooks.example.org/hook", "callback_host_not_allowed"),  # *.x is subdomains only
        (LISTED, "https://evilhooks.example.org/hook", "callback_host_not_allowed"),
        (LISTED, "https://ci.example.com.evil.test/hook", "callback_host_not_allowed"),
        (LISTED, "https://10.1.2.3/hook", None),  # explicitly allowlisted: internal is the operator's call
        (LISTED, "http://ci.example.com/hook", "callback_url_scheme"),
        (DEV_LISTED, "http://127.0.0.2/hook", "callback_host_not_allowed"),
    ],
)  # fmt: skip
def test_url_rules(policy: CallbackPolicy, url: str, code: str | None) -> None:
    assert refusal(policy, url) == code


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.0.0.7", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fd00::1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("240.0.0.1", "private"),  # reserved (Python counts 240/4 as private too)
        ("100.64.0.1", "not globally routable"),  # carrier-grade NAT
        ("::ffff:10.0.0.1", "private"),  # IPv4-mapped
        ("93.184.216.34", None),
        ("2606:2800:220:1:248:1893:25c8:1946", None),
    ],
)
def test_address_rules(address: str, problem: str | None) -> None:
    assert address_problem(ipaddress.ip_address(address)) == problem


def test_every_resolved_address_must_pass_unless_allowlisted_or_dev() -> None:
    mixed = [ipaddress.ip_address("93.184.216.34"), ipaddress.ip_address("10.0.0.1")]
    with pytest.raises(CallbackRefused) as exc:
        STRICT.check_addresses("ci.example.com", mixed)
    assert exc.value.reason == "ci.example.com resolves to 10.0.0.1, a private address"
    DEV.check_addresses("ci.example.com", mixed)
    LISTED.check_addresses("ci.example.com", mixed)


def test_allowlist_setting_is_validated_at_start() -> None:
    s = Settings(dev_mode=True, callback_hosts=" CI.example.com ,*.hooks.example.org,, ::1 ")
    assert parse_host_patterns(s.callback_hosts) == ("ci.example.com", "*.hooks.example.org", "::1")
    for bad in ("https://ci.example.com", "ci.example.com/hook", "*evil.com", "a b", "host:443"):
        with pytest.raises(ValidationError) as err:
            Settings(dev_mode=True, callback_hosts=bad)
        assert "KEYTURN_CALLBACK_HOSTS" in describe_error(err.value)


# --- delivery ---------------------------------------------------------------------------------------------


class Mac:
    async def mac_callback(self, path: str, timestamp: str, body: bytes) -> str:
        return "v1=" + "0" * 64


class FakeDns:
    """Answers from a table; counts lookups. A name not in the table fails like NXDOMAIN."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.lookups: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        if host not in self.table:
            raise OSError(f"no such host {host}")
        return self.table[host]


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RequestStore]:
    client = aioredis.Redis.from_url(redis_url)
    yield RequestStore(client, retention=timedelta(hours=1))
    await client.aclose()


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[int, list[web.Request]]]:
    """A local HTTP server that records each request and answers 204."""
    got: list[web.Request] = []

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        got.append(request)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield port, got
    await runner.cleanup()


def deploy_request(callback_url: str) -> DeployRequest:
    body = RequestIn.model_validate(
        {"repo": "acme/web", "sha": SHA, "environment": "production", "workflow": "deploy.yml",
         "requester": "github:alice", "callbackUrl": callback_url}
    )  # fmt: skip
    now = datetime.now(UTC)
    return lifecycle.new_request(
        f"req_{ULID()}", body, now=now, ttl=timedelta(minutes=30), required_approvals=1
    )


def sender(store: RequestStore, policy: CallbackPolicy, dns: FakeDns, **kw: Any) -> CallbackSender:
    return CallbackSender(
        store, Mac(), clock=lambda: datetime.now(UTC), policy=policy, resolve=dns, first_delay=0.01, **kw
    )


async def test_a_name_resolving_to_an_internal_address_is_refused_once_not_retried(
    store: RequestStore,
) -> None:
    dns = FakeDns({"ci.example.com": ["93.184.216.34", "127.0.0.1"]})
    req = deploy_request("https://ci.example.com/hook")
    assert not await sender(store, STRICT, dns, attempts=5).deliver(req)
    [attempt] = await store.callback_attempts(req.id)
    assert attempt["outcome"] == "failed"
    assert attempt["error"] == "callback_address_refused"
    assert attempt["reason"] == "ci.example.com resolves to 127.0.0.1, a loopback address"
    assert dns.lookups == ["ci.example.com"]


async def test_a_url_the_rules_refuse_is_recorded_without_a_lookup(store: RequestStore) -> None:
    dns = FakeDns({})
    req = deploy_request("http://ci.example.com/hook")  # stored before the rules, say
    assert not await sender(store, STRICT, dns).deliver(req)
    [attempt] = await store.callback_attempts(req.id)
    assert (attempt["outcome"], attempt["error"]) == ("invalid_url", "callback_url_scheme")
    assert dns.lookups == []


async def test_dns_failure_is_retried(store: RequestStore) -> None:
    dns = FakeDns({})
    req = deploy_request("https://gone.example.com/hook")
    assert not await sender(store, STRICT, dns, attempts=3).deliver(req)
    attempts = await store.callback_attempts(req.id)
    assert [(a["outcome"], a["error"]) for a in attempts] == [("failed", "OSError")] * 3


async def test_the_post_goes_to_the_checked_address_without_a_second_lookup(
    store: RequestStore, receiver: tuple[int, list[web.Request]]
) -> None:
    port, got = receiver
    # "callback.test" exists only in the fake DNS: the system resolver could not find it.
    dns = FakeDns({"callback.test": ["127.0.0.1"]})
    req = deploy_request(f"http://callback.test:{port}/hook")
    assert await sender(store, DEV, dns).deliver(req)
    [request] = got
    assert request.headers["Host"] == f"callback.test:{port}"
    assert request.headers["X-Keyturn-Signature"].startswith("v1=")
    assert dns.lookups == ["callback.test"]
    [attempt] = await store.callback_attempts(req.id)
    assert (attempt["outcome"], attempt["status"]) == ("delivered", 204)


async def test_an_allowlisted_host_may_be_internal_outside_dev_mode(store: RequestStore) -> None:
    dns = FakeDns({"ci.internal": ["127.0.0.1"]})
    policy = CallbackPolicy(hosts=("ci.internal",))
    req = deploy_request(f"https://ci.internal:{free_port()}/hook")
    # The loopback address passes the check; the connection then fails (nothing listens on that port), and
    # that ordinary failure is retried, unlike a refusal.
    assert not await sender(store, policy, dns, attempts=2, timeout=0.5).deliver(req)
    attempts = await store.callback_attempts(req.id)
    assert len(attempts) == 2
    assert all(a["outcome"] == "failed" and a["error"] != "callback_address_refused" for a in attempts)
