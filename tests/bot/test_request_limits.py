"""Issue 14 finding 4: request limits, through a real ``keyturn bot``, the real signer and the emulator.

Small limits (3 pending per requester, 5 per repo, 8 in all; 6 new requests a minute per requester in
bursts of 4) so each is reached in a few calls. Each refusal is a 429 with ``Retry-After`` and a JSON error
naming the limit, nothing is stored and no card is posted; the slash command gets the same sentence as an
ephemeral reply. A cancelled request frees its place at once.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from keyturn.bot.store import PENDING_KEY
from keyturn.emulator.client import EmulatorClient
from tests import harness
from tests.fixtures import policy_toml
from tests.harness import free_port

CI_SECRET = "limits-ci-secret-0123456789abcdef0123456789"
SLACK_SECRET = "limits-slack-signing-secret-0123456789abcdef"
POLICY = policy_toml(
    approvers=("U0BOB", "U0CAROL", "U0ALICE"), allow_self_approval=False, confirm_approve=False
)
LIMITS = {
    "KEYTURN_MAX_PENDING_PER_REQUESTER": "3",
    "KEYTURN_MAX_PENDING_PER_REPO": "5",
    "KEYTURN_MAX_PENDING": "8",
    "KEYTURN_REQUEST_RATE": "6",
    "KEYTURN_REQUEST_BURST": "4",
}


@dataclass
class Stack:
    url: str
    redis_url: str
    http: httpx.Client
    emulator: EmulatorClient
    seq: int = 0

    def ci(self, method: str, path: str, body: bytes = b"") -> httpx.Response:
        headers = harness.ci_headers(CI_SECRET, method, path, body)
        return self.http.request(method, self.url + path, content=body or None, headers=headers)

    def create(self, requester: str, repo: str) -> httpx.Response:
        self.seq += 1
        body = {
            "repo": repo,
            "sha": f"{self.seq:040x}",
            "environment": "staging",
            "workflow": "deploy.yml",
            "requester": requester,
        }
        return self.ci("POST", "/v1/requests", json.dumps(body).encode())

    def cancel(self, rid: str) -> None:
        resp = self.ci("POST", f"/v1/requests/{rid}/cancel")
        assert resp.status_code == 200, resp.text


@pytest.fixture
def stack(redis_url: str, tmp_path: Path) -> Iterator[Stack]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    redis_url = f"{redis_url}?db=9"  # a database of its own, apart from the session's e2e bot (db 0)
    with harness.signer_and_emulator(
        tmp_path, POLICY, slack_secret=SLACK_SECRET, ci_secret=CI_SECRET, bot_url=url
    ) as backends:
        backends.start_bot(port=port, redis_url=redis_url, env={"KEYTURN_DEV_MODE": "1", **LIMITS})
        with httpx.Client(timeout=30) as http, EmulatorClient(backends.emulator_url) as emu:
            yield Stack(url, redis_url, http, emu)


def refused(resp: httpx.Response, limit: str) -> dict[str, Any]:
    assert resp.status_code == 429, resp.text
    data: dict[str, Any] = resp.json()
    assert data["limit"] == limit
    assert data["error"] == ("rate_limited" if limit == "rate" else "too_many_pending")
    assert int(resp.headers["Retry-After"]) == data["retryAfter"] >= 1
    return data


def test_caps_and_rate_answer_429_naming_the_limit(stack: Stack) -> None:
    # Per requester: the 4th pending request of one requester is refused; a cancel frees a place.
    ids = [stack.create("github:alice", "acme/one").json()["requestId"] for _ in range(3)]
    data = refused(stack.create("github:alice", "acme/one"), "requester")
    assert "github:alice has 3 pending requests" in data["message"]
    assert data["retryAfter"] > 60  # until the oldest of them expires (30 min), not a blind guess
    stack.cancel(ids[0])
    assert stack.create("github:alice", "acme/one").status_code == 202

    # Rate: four at once (the burst), the fifth within the minute is refused, whatever was cancelled.
    for _ in range(4):
        resp = stack.create("github:carol", "acme/two")
        assert resp.status_code == 202, resp.text
        stack.cancel(resp.json()["requestId"])
    data = refused(stack.create("github:carol", "acme/two"), "rate")
    assert 1 <= data["retryAfter"] <= 11  # one token at 6 a minute

    # Per repo: 5 pending in acme/three from two requesters; a third requester is refused there.
    for who, n in (("github:dave", 3), ("github:erin", 2)):
        for _ in range(n):
            assert stack.create(who, "acme/three").status_code == 202
    refused(stack.create("github:frank", "acme/three"), "repo")

    # In all: alice 3 + acme/three 5 = 8 pending; anyone, anywhere, is refused.
    data = refused(stack.create("github:gina", "acme/four"), "total")
    assert "8 pending requests" in data["message"]

    # Nothing was stored for the refusals: exactly the 8 accepted ones are pending.
    with redis.Redis.from_url(stack.redis_url) as client:
        assert client.zcard(PENDING_KEY) == 8

    # The slash command hears the same limit, ephemerally.
    sha = "f" * 40
    answer = stack.emulator.command("U0ALICE", "C0STAGING", "/keyturn", f"request acme/web {sha} staging")
    assert answer.status == 200
    reply = stack.emulator.wait_for("response_url", timeout=10)
    text = json.dumps(reply["params"])
    assert "8 pending requests" in text
    assert "ephemeral" in text
