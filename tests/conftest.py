"""Shared fixtures: a private redis-server per session, a clean database per test, log dumps on failure."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
import redis

from tests.harness import RedisServer, redis_server


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, object, object]:
    """Keep each phase's report on the item, so fixtures can tell whether the test failed."""
    rep = yield
    setattr(item, "rep_" + call.when, rep)
    return rep


def failed(request: pytest.FixtureRequest) -> bool:
    """True if the test using this fixture failed in setup or call."""
    node = request.node
    return any(getattr(getattr(node, f"rep_{w}", None), "failed", False) for w in ("setup", "call"))


@pytest.fixture(scope="session")
def redis_srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One private redis-server for the whole session."""
    with redis_server(tmp_path_factory.mktemp("redis")) as srv:
        yield srv


@pytest.fixture
def redis_url(redis_srv: RedisServer) -> Iterator[str]:
    """A Redis URL whose database is empty when the test starts and is flushed after it."""
    client = redis_srv.client()
    client.flushall()
    yield redis_srv.url
    client.flushall()
    client.close()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A synchronous client on the test's clean database."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    """Where this test's processes write their logs."""
    d = tmp_path / "logs"
    d.mkdir()
    return d
