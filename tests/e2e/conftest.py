"""The end-to-end stack: redis-server, ``keyturn signer``, ``keyturn emulator`` and ``keyturn bot``, as real
processes on free ports and temp sockets, with a temp policy and a fresh (non-dev) keyset.

One stack serves the whole e2e session (starting it costs a few seconds); the ``stack`` fixture hands each
test a clean Redis and a reset emulator, and prints every process's log when the test failed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot.emulator.client import EmulatorClient
from tests.conftest import failed
from tests.harness import KEYTURN, Proc, RedisServer, free_port, http_ok, start_process, unix_socket_ready

CI_SECRET = "e2e-ci-secret-0123456789abcdef0123456789"
SLACK_SECRET = "e2e-slack-signing-secret-0123456789abcdef"
BOT_TOKEN = "xoxb-e2e-bot-token"
SHA = "4f8a2cd91ef7a2c7f3a5f0aa12d93b33f2d40e17"

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
"""


def ci_headers(
    method: str, path: str, body: bytes, *, secret: str = CI_SECRET, ts: int | None = None
) -> dict[str, str]:
    """The ``X-Keyturn-*`` headers of a CI request (design.md §6)."""
    stamp = str(int(time.time()) if ts is None else ts)
    msg = f"v1:{stamp}:{method}:{path}:".encode() + body
    sig = hmac.new(secret.encode(), msg, hashlib.sha256).hexdigest()
    return {
        "X-Keyturn-Timestamp": stamp,
        "X-Keyturn-Signature": f"v1={sig}",
        "Content-Type": "application/json",
    }


def request_body(**over: Any) -> dict[str, Any]:
    """A valid ``POST /v1/requests`` body (production, requested by alice)."""
    base: dict[str, Any] = {
        "repo": "acme/web",
        "sha": SHA,
        "environment": "production",
        "workflow": "deploy.yml",
        "requester": "github:alice",
        "ref": "refs/heads/main",
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


def _keygen(workdir: Path) -> tuple[Path, Path]:
    keyset = workdir / "signing-keys.json"
    public = workdir / "keys.public.json"
    for argv in (
        [*KEYTURN, "keygen", "--out", str(keyset)],
        [*KEYTURN, "keys", "--key-file", str(keyset), "export", "--out", str(public)],
    ):
        done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"{argv} failed: {done.stderr}")
    return keyset, public


@pytest.fixture(scope="session")
def e2e_stack(redis_srv: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The long-lived stack (one per session)."""
    workdir = tmp_path_factory.mktemp("e2e")
    logs = workdir / "logs"
    policy = workdir / "keyturn.toml"
    policy.write_text(POLICY)
    keyset, public = _keygen(workdir)
    sock = workdir / "signer.sock"
    emu_port, bot_port = free_port(), free_port()
    bot_url = f"http://127.0.0.1:{bot_port}"
    emu_url = f"http://127.0.0.1:{emu_port}"
    procs: dict[str, Proc] = {}
    try:
        procs["signer"] = start_process(
            "signer",
            [*KEYTURN, "signer"],
            logs,
            env={
                "KEYTURN_SIGNER_SOCKET": str(sock),
                "KEYTURN_SIGNER_KEYSET": str(keyset),
                "KEYTURN_POLICY": str(policy),
                "KEYTURN_SLACK_SIGNING_SECRET": SLACK_SECRET,
                "KEYTURN_CI_SECRET": CI_SECRET,
                "KEYTURN_AUDIT_LOG": str(workdir / "audit.jsonl"),
            },
            ready=unix_socket_ready(sock),
        )
        procs["emulator"] = start_process(
            "emulator",
            [*KEYTURN, "emulator", "--port", str(emu_port), "--bot-url", f"{bot_url}/slack/events"],
            logs,
            env={"KEYTURN_SLACK_SIGNING_SECRET": SLACK_SECRET},
            ready=http_ok(f"{emu_url}/_emulator/state"),
        )
        procs["bot"] = start_process(
            "bot",
            [*KEYTURN, "bot"],
            logs,
            env={
                "KEYTURN_REDIS_URL": redis_srv.url,
                "KEYTURN_SIGNER_SOCKET": str(sock),
                "KEYTURN_POLICY": str(policy),
                "KEYTURN_SLACK_BOT_TOKEN": BOT_TOKEN,
                "KEYTURN_SLACK_API_URL": f"{emu_url}/api/",
                "KEYTURN_HOST": "127.0.0.1",
                "KEYTURN_PORT": str(bot_port),
                "KEYTURN_PUBLIC_URL": bot_url,
                "KEYTURN_CARD_RETRY_MAX": "1",
                "KEYTURN_CALLBACK_ATTEMPTS": "3",
                # The test receivers are plain http on 127.0.0.1: dev mode allows http and internal
                # addresses; the allowlist still refuses every other host (docs/security.md).
                "KEYTURN_DEV_MODE": "1",
                "KEYTURN_CALLBACK_HOSTS": "127.0.0.1",
            },
            ready=http_ok(f"{bot_url}/readyz"),
            cwd=workdir,
        )
    except Exception:
        for p in procs.values():
            p.stop()
        raise
    with EmulatorClient(emu_url) as emulator, httpx.Client(timeout=30) as http:
        yield Stack(bot_url, emulator, redis_srv, procs, workdir, public, http)
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
