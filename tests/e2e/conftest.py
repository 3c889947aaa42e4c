"""The end-to-end stack: redis-server, ``keyturn signer``, ``keyturn emulator`` and ``keyturn bot``, as real
processes on free ports and temp sockets, with a temp policy and a fresh (non-dev) keyset.

One stack serves the whole e2e session (starting it costs a few seconds); the ``stack`` fixture hands each
test a clean Redis and a reset emulator, and prints every process's log when the test failed.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from keyturn.emulator.client import EmulatorClient
from tests import harness
from tests.conftest import failed
from tests.harness import Proc, RedisServer, free_port

CI_SECRET = "e2e-ci-secret-0123456789abcdef0123456789"
SLACK_SECRET = "e2e-slack-signing-secret-0123456789abcdef"
BOT_TOKEN = "xoxb-e2e-bot-token"
SHA = "4f8a2cd91ef7a2c7f3a5f0aa12d93b33f2d40e17"
GITHUB_WEBHOOK_SECRET = (
    "e2e-github-webhook-secret-0123456789"  # the signer's and the approver's (GitHub rule)
)

POLICY = """\
version = 1

[slack]
command = "/keyturn"
team_id = "T0KEYTURN"

[identities]
"github:alice" = "U0ALICE"

[environments.production]
channel = "C0DEPLOYS"
approvers = ["U0BOB", "U0CAROL"]
approver_groups = ["S0ONCALL"]
required_approvals = 2
request_ttl = "30m"
receipt_ttl = "15m"
allow_self_approval = false
confirm_approve = true

[environments.staging]
channel = "C0STAGING"
approvers = ["U0BOB", "U0CAROL", "U0ALICE"]
required_approvals = 1
request_ttl = "30m"
receipt_ttl = "30m"
allow_self_approval = false
confirm_approve = false

[environments.shortlived]
channel = "C0STAGING"
approvers = ["U0BOB", "U0CAROL"]
required_approvals = 1
request_ttl = "3s"
receipt_ttl = "15m"

# The opt-in GitHub rule: only pushes, manual runs and schedules of main (tests/e2e/test_github_rule.py).
[environments.guarded]
channel = "C0DEPLOYS"
approvers = ["U0BOB", "U0CAROL"]
required_approvals = 1
request_ttl = "30m"
receipt_ttl = "15m"

[environments.guarded.github]
branches = ["main"]

[groups.S0ONCALL]
members = ["U0ERIN"]
"""


def ci_headers(
    method: str, path: str, body: bytes, *, secret: str = CI_SECRET, ts: int | None = None
) -> dict[str, str]:
    """The ``X-Keyturn-*`` headers of a CI request (design.md §6), with the stack's CI secret by default."""
    return harness.ci_headers(secret, method, path, body, ts)


_RUNS = itertools.count(1)


def request_body(**over: Any) -> dict[str, Any]:
    """A valid ``POST /v1/requests`` body (production, requested by alice), each from a new CI run.

    A distinct ``runUrl`` per body, as real pipelines send: two identical bodies signed in the same second are
    the *same* request (its id is bound to the signed bytes), so tests that want two requests must differ.
    """
    base: dict[str, Any] = {
        "repo": "acme/web",
        "sha": SHA,
        "environment": "production",
        "workflow": "deploy.yml",
        "requester": "github:alice",
        "ref": "refs/heads/main",
        "runUrl": f"https://ci.example/acme/web/runs/{next(_RUNS)}",
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


@dataclass
class Stack:
    """Handles on the running stack."""

    bot_url: str
    emulator: EmulatorClient
    redis: RedisServer
    procs: dict[str, Proc]
    workdir: Path
    keys_file: Path
    http: httpx.Client
    approver_port: int = (
        0  # where tests/e2e/test_github_rule.py starts keyturn github-approver; the bot forwards there
    )

    def post(self, path: str, body: bytes, **kw: Any) -> httpx.Response:
        """A signed CI POST."""
        headers = ci_headers("POST", path, body, **kw)
        return self.http.post(self.bot_url + path, content=body, headers=headers)

    def get(self, path: str, params: dict[str, Any] | None = None, **kw: Any) -> httpx.Response:
        """A signed CI GET (the signature covers the path without the query string)."""
        headers = ci_headers("GET", path, b"", **kw)
        return self.http.get(self.bot_url + path, params=params, headers=headers, timeout=90)

    def create(self, **over: Any) -> dict[str, Any]:
        """Create a request; the response JSON (asserting 200/202)."""
        resp = self.post("/v1/requests", json.dumps(request_body(**over)).encode())
        assert resp.status_code in (200, 202), resp.text
        data: dict[str, Any] = resp.json()
        return data

    def card(self, request_id: str, timeout: float = 10.0) -> dict[str, Any]:
        """Wait until the request's card is posted; the request JSON (with ``card``)."""
        deadline = time.monotonic() + timeout
        while True:
            data: dict[str, Any] = self.get(f"/v1/requests/{request_id}").json()
            if data.get("card"):
                return data
            if time.monotonic() > deadline:
                raise TimeoutError(f"no card for {request_id}: {data}")
            # Long-poll for the next change rather than sleeping.
            self.get(f"/v1/requests/{request_id}", {"wait": 5, "since": data["version"]})

    def wait_status(self, request_id: str, status: str, timeout: float = 15.0) -> dict[str, Any]:
        """Long-poll until the request has ``status``."""
        deadline = time.monotonic() + timeout
        data: dict[str, Any] = self.get(f"/v1/requests/{request_id}").json()
        while data["status"] != status:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{request_id} is {data['status']}, wanted {status}: {data}")
            data = self.get(f"/v1/requests/{request_id}", {"wait": 5, "since": data["version"]}).json()
        return data

    def wait_version(self, request_id: str, since: int, timeout: float = 10.0) -> dict[str, Any]:
        """Long-poll until the request's version moves past ``since``."""
        data: dict[str, Any] = self.get(
            f"/v1/requests/{request_id}", {"wait": int(timeout), "since": since}
        ).json()
        return data

    def click(self, user: str, request: dict[str, Any], action: str = "approve") -> Any:
        """``user`` clicks a button on the card the bot posted."""
        card = request["card"]
        return self.emulator.click(user, card["channel"], card["ts"], action, request["requestId"])

    def logs(self) -> str:
        """Every process's log."""
        return "\n".join(f"===== {name} =====\n{p.log()[-20000:]}" for name, p in self.procs.items())


@pytest.fixture(scope="session")
def e2e_stack(redis_srv: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The long-lived stack (one per session)."""
    workdir = tmp_path_factory.mktemp("e2e")
    logs = workdir / "logs"
    policy = workdir / "keyturn.toml"
    policy.write_text(POLICY)
    keyset, public = harness.keygen(workdir)
    bot_port = free_port()
    approver_port = free_port()
    bot_url = f"http://127.0.0.1:{bot_port}"
    procs: dict[str, Proc] = {}
    try:
        procs["signer"], sock = harness.start_signer(
            workdir,
            logs,
            policy=policy,
            keyset=keyset,
            slack_secret=SLACK_SECRET,
            ci_secret=CI_SECRET,
            env={"KEYTURN_GITHUB_WEBHOOK_SECRET": GITHUB_WEBHOOK_SECRET},
        )
        procs["emulator"], emu_url = harness.start_emulator(logs, slack_secret=SLACK_SECRET, bot_url=bot_url)
        procs["bot"] = harness.start_bot(
            logs,
            port=bot_port,
            redis_url=redis_srv.url,
            signer_socket=sock,
            policy=policy,
            emulator_url=emu_url,
            cwd=workdir,
            env={
                "KEYTURN_SLACK_BOT_TOKEN": BOT_TOKEN,
                "KEYTURN_CARD_RETRY_MAX": "1",
                "KEYTURN_CALLBACK_ATTEMPTS": "3",
                # The test receivers are plain http on 127.0.0.1, which the strict callback rules refuse.
                "KEYTURN_DEV_MODE": "1",
                "KEYTURN_CALLBACK_HOSTS": "127.0.0.1",
                "KEYTURN_GITHUB_APPROVER_URL": f"http://127.0.0.1:{approver_port}",
            },
        )
    except Exception:
        for p in procs.values():
            p.stop()
        raise
    with EmulatorClient(emu_url) as emulator, httpx.Client(timeout=30) as http:
        yield Stack(bot_url, emulator, redis_srv, procs, workdir, public, http, approver_port)
    for p in reversed(list(procs.values())):
        p.stop()


@pytest.fixture
def stack(e2e_stack: Stack, request: pytest.FixtureRequest) -> Iterator[Stack]:
    """The stack with a clean Redis and a reset emulator; logs printed if the test fails."""
    client = e2e_stack.redis.client()
    client.flushall()
    e2e_stack.emulator.reset()
    e2e_stack.emulator.set_bot_url(f"{e2e_stack.bot_url}/slack/events")
    yield e2e_stack
    if failed(request):
        print(e2e_stack.logs())
    dead = [name for name, p in e2e_stack.procs.items() if not p.alive()]
    client.close()
    assert not dead, f"processes died during the test: {dead}\n{e2e_stack.logs()}"
