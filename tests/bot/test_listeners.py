"""The Slack endpoint end to end: a running emulator and a real signer process, the endpoint under uvicorn.

The approval service is an in-memory fake (``FakeApprovals``) that records every call and applies the
policy's basic rules, so these tests are about the Slack side: signature checks via the signer, fast acks,
modals, the slash command, and what the user sees. The fake also runs the signer's own click parser and card
check on the evidence it receives, so the forwarded click is proven to be exactly what Slack signed.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.routing import Route

from keyturn.bot.app import SlackEndpoint, build_slack_endpoint
from keyturn.bot.cards import card_facts
from keyturn.bot.messenger import SlackMessenger, make_web_client
from keyturn.bot.models import (
    Approval,
    DeployRequest,
    OriginEvidence,
    RequestIn,
    Scope,
    SlackEvidence,
    Status,
)
from keyturn.bot.ports import Refused
from keyturn.bot.signer_client import SignerClient
from keyturn.emulator.client import AsyncEmulatorClient, Delivery
from keyturn.signer.evidence import parse_approve_click, parse_slash_request, verify_slack_request
from keyturn.signer.receipt import new_request_id
from keyturn.signer.words import words
from tests import harness
from tests.bot.test_messenger import ephemerals, message, views
from tests.fixtures import DEV_POLICY, DEV_POLICY_PATH
from tests.harness import free_port

POLICY_PATH = DEV_POLICY_PATH
POLICY = DEV_POLICY
SHA = "4f2a9c0d3b8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a"
TOKEN = "xoxb-keyturn-test"


@dataclass(frozen=True)
class Stack:
    secret: str
    signer_socket: Path
    emulator_url: str


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A real signer (dev keys, the dev policy) and a running emulator sharing one signing secret."""
    work = tmp_path_factory.mktemp("slack")
    secret = secrets.token_hex(16)
    keyset, _ = harness.keygen(work, dev=True)
    signer, sock = harness.start_signer(
        work,
        work,
        policy=POLICY_PATH,
        keyset=keyset,
        slack_secret=secret,
        ci_secret=secrets.token_hex(24),
        env={"KEYTURN_DEV_MODE": "1"},
    )
    emulator, url = harness.start_emulator(work, slack_secret=secret)
    yield Stack(secret, sock, url)
    emulator.stop()
    signer.stop()


class FakeApprovals:
    """In-memory ``Approvals``: records calls, applies approvers, self-approval and quorum, updates cards."""

    def __init__(self, messenger: SlackMessenger, secret: str) -> None:
        self.messenger = messenger
        self.secret = secret
        self.requests: dict[str, DeployRequest] = {}
        self.calls: list[tuple[str, Any]] = []
        self.evidence_checked: list[str] = []

    async def add(self, **changes: Any) -> DeployRequest:
        """A pending request with its card posted in the environment channel."""
        now = datetime.now(UTC)
        fields: dict[str, Any] = {
            "id": new_request_id(),
            "scope": Scope(repo="acme/web", sha=SHA, environment="production", workflow="deploy"),
            "requester": "github:alice",
            "requester_slack_id": "U0ALICE",
            "created_at": now,
            "expires_at": now + timedelta(minutes=30),
            "required_approvals": 2,
        } | changes
        req = DeployRequest(**fields)
        req.card = await self.messenger.post_card(req)
        self.requests[req.id] = req
        return req

    def _pending(self, request_id: str, user_id: str) -> DeployRequest:
        req = self.requests.get(request_id)
        if req is None:
            raise Refused("unknown_request")
        if req.status.final:
            raise Refused("not_pending", status=req.status.value)
        env = POLICY.environment(req.scope.environment)
        if req.requester_slack_id == user_id:
            raise Refused("self_approval")
        if user_id not in env.approvers and user_id != "U0ERIN":
            raise Refused("not_an_approver", environment=req.scope.environment)
        return req

    async def create(self, body: RequestIn, origin: OriginEvidence) -> tuple[DeployRequest, bool]:
        self.calls.append(("create", (body, origin)))
        req = await self.add(
            scope=body.scope, requester=body.requester, requester_slack_id=body.requester[len("slack:") :]
        )
        return req, True

    async def approve(self, request_id: str, user_id: str, evidence: SlackEvidence) -> DeployRequest:
        self.calls.append(("approve", (request_id, user_id, evidence)))
        req = self._pending(request_id, user_id)
        # What the signer will do with this evidence: verify the signature, parse the click, check the card.
        ts = verify_slack_request(
            self.secret, evidence.body, evidence.timestamp, evidence.signature, datetime.now(UTC)
        )
        parse_approve_click(evidence.body, ts, card_facts(req, POLICY), POLICY)
        self.evidence_checked.append(user_id)
        if any(a.user_id == user_id for a in req.approvals):
            raise Refused("already_approved")
        req.approvals.append(Approval(user_id=user_id, at=datetime.now(UTC)))
        if len(req.approvals) >= req.required_approvals:
            req.status = Status.APPROVED
        await self.messenger.update_card(req)
        return req

    async def deny(
        self, request_id: str, user_id: str, reason: str, evidence: SlackEvidence | None = None
    ) -> DeployRequest:
        self.calls.append(("deny", (request_id, user_id, reason)))
        req = self._pending(request_id, user_id)
        req.status, req.decided_by, req.deny_reason = Status.DENIED, user_id, reason
        await self.messenger.update_card(req)
        return req

    async def check_can_decide(self, request_id: str, user_id: str) -> DeployRequest:
        self.calls.append(("check_can_decide", (request_id, user_id)))
        return self._pending(request_id, user_id)

    async def cancel(self, request_id: str, evidence: OriginEvidence | None = None) -> DeployRequest:
        raise NotImplementedError

    async def get(self, request_id: str) -> DeployRequest:
        self.calls.append(("get", request_id))
        if request_id not in self.requests:
            raise Refused("unknown_request")
        return self.requests[request_id]

    async def pending_for(self, user_id: str) -> list[DeployRequest]:
        self.calls.append(("pending_for", user_id))
        return [r for r in self.requests.values() if not r.status.final]

    def called(self, name: str) -> list[Any]:
        return [args for n, args in self.calls if n == name]


@asynccontextmanager
async def serve(endpoint: SlackEndpoint, port: int) -> AsyncIterator[None]:
    """Serve the endpoint with uvicorn on ``port`` inside this event loop."""
    app = Starlette(routes=[Route("/slack/events", endpoint.handle, methods=["POST"])])
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:  # readiness of a server we started: nothing to await but its flag
        if task.done():
            task.result()
        await asyncio.sleep(0.005)
    try:
        yield
    finally:
        server.should_exit = True
        server.force_exit = True  # do not wait for the emulator's idle keep-alive connections
        await task


@dataclass
class Bot:
    url: str
    endpoint: SlackEndpoint
    approvals: FakeApprovals
    emu: AsyncEmulatorClient


@pytest.fixture
async def bot(stack: Stack) -> AsyncIterator[Bot]:
    emu = AsyncEmulatorClient(stack.emulator_url)
    await emu.reset()
    client = make_web_client(TOKEN, emu.api_url)
    messenger = SlackMessenger(client, POLICY)
    approvals = FakeApprovals(messenger, stack.secret)
    signer = SignerClient(stack.signer_socket)
    endpoint = build_slack_endpoint(approvals, messenger, signer, POLICY, client)
    port = free_port()
    url = f"http://127.0.0.1:{port}/slack/events"
    await emu.set_bot_url(url)
    async with serve(endpoint, port):
        yield Bot(url, endpoint, approvals, emu)
        await endpoint.drain()
    await signer.close()
    await emu.aclose()


def elapsed_ms(d: Delivery) -> float:
    return float(d.raw["elapsed_ms"])


async def test_approve_acks_fast_even_when_chat_update_is_slow(bot: Bot) -> None:
    req = await bot.approvals.add()
    assert req.card is not None
    await bot.emu.fault("chat.update", latency=1.5, times=1)
    started = time.monotonic()
    d = await bot.emu.click("U0BOB", "C0DEPLOYS", req.card.ts, "approve")
    assert d.status == 200
    assert elapsed_ms(d) < 1000
    await bot.endpoint.drain()
    assert time.monotonic() - started >= 1.5  # the slow update really happened after the ack
    assert bot.approvals.evidence_checked == ["U0BOB"]
    assert "1 of 2: <@U0BOB>" in str((await message(bot.emu, "C0DEPLOYS", req.card.ts))["blocks"])
    assert any("recorded (1 of 2)" in e["text"] for e in await ephemerals(bot.emu, "U0BOB"))


async def test_simultaneous_clicks_all_get_200(bot: Bot) -> None:
    req = await bot.approvals.add(required_approvals=50)
    assert req.card is not None
    users = ["U0BOB", "U0CAROL", "U0ERIN", "U0MALLORY", "U0ALICE", "U0DAVE", "U0BOB", "U0CAROL"]
    ts = req.card.ts
    deliveries = await asyncio.gather(*(bot.emu.click(u, "C0DEPLOYS", ts, "approve") for u in users))
    assert [d.status for d in deliveries] == [200] * len(users)
    await bot.endpoint.drain()
    assert sorted(u for _, u, _ in bot.approvals.called("approve")) == sorted(users)
    assert sorted(a.user_id for a in req.approvals) == ["U0BOB", "U0CAROL", "U0ERIN"]


@pytest.mark.parametrize(
    ("user", "says"),
    [
        ("U0MALLORY", words("not_an_approver", {"environment": "production"})),
        ("U0ALICE", words("self_approval")),
    ],
)
async def test_refused_click_gets_an_ephemeral_reason(bot: Bot, user: str, says: str) -> None:
    """The service refuses with a code and facts; the approver reads the words module's sentence."""
    assert says in (
        "You are not an approver for production.",
        "You requested this deploy, so you cannot approve it.",
    )
    req = await bot.approvals.add()
    assert req.card is not None
    d = await bot.emu.click(user, "C0DEPLOYS", req.card.ts, "approve")
    assert d.status == 200
    await bot.endpoint.drain()
    assert [e["text"] for e in await ephemerals(bot.emu, user)] == [says]
    assert req.approvals == []


async def test_click_on_a_decided_request_gets_a_friendly_reply(bot: Bot) -> None:
    req = await bot.approvals.add()
    assert req.card is not None
    ts = req.card.ts
    req.status = Status.EXPIRED
    await bot.emu.click("U0BOB", "C0DEPLOYS", ts, "approve")
    await bot.endpoint.drain()
    assert [e["text"] for e in await ephemerals(bot.emu, "U0BOB")] == [
        "This request is expired; nothing was changed."
    ]


async def test_deny_opens_the_modal_with_the_incoming_trigger(bot: Bot) -> None:
    req = await bot.approvals.add()
    assert req.card is not None
    d = await bot.emu.click("U0BOB", "C0DEPLOYS", req.card.ts, "deny")
    assert d.status == 200
    await bot.endpoint.drain()
    call = await bot.emu.wait_for("views.open", timeout=5)
    assert call["params"]["trigger_id"] == d.trigger_id
    (view,) = await views(bot.emu, "U0BOB")
    assert view["callback_id"] == "deny_reason"
    assert view["private_metadata"] == req.id


async def test_deny_by_a_non_approver_opens_no_modal(bot: Bot) -> None:
    req = await bot.approvals.add()
    assert req.card is not None
    await bot.emu.click("U0MALLORY", "C0DEPLOYS", req.card.ts, "deny")
    await bot.endpoint.drain()
    assert await views(bot.emu, "U0MALLORY") == []
    assert [e["text"] for e in await ephemerals(bot.emu, "U0MALLORY")] == [
        words("not_an_approver", {"environment": "production"})
    ]


async def _open_modal(bot: Bot) -> tuple[DeployRequest, str]:
    req = await bot.approvals.add()
    assert req.card is not None
    await bot.emu.click("U0BOB", "C0DEPLOYS", req.card.ts, "deny")
    await bot.endpoint.drain()
    (view,) = await views(bot.emu, "U0BOB")
    return req, str(view["id"])


async def test_empty_reason_keeps_the_modal_open_with_an_inline_error(bot: Bot) -> None:
    req, view_id = await _open_modal(bot)
    d = await bot.emu.submit_view("U0BOB", view_id, {"reason": {"reason_input": "   "}})
    assert d.status == 200
    assert d.json == {
        "response_action": "errors",
        "errors": {"reason": "Please say why you deny this deploy."},
    }
    assert d.view is not None
    assert d.view["is_open"] is True
    assert bot.approvals.called("deny") == []
    assert req.status is Status.PENDING


async def test_reason_denies_and_updates_the_card(bot: Bot) -> None:
    req, view_id = await _open_modal(bot)
    d = await bot.emu.submit_view("U0BOB", view_id, {"reason": {"reason_input": "not <!channel> today"}})
    assert d.status == 200
    assert d.view is not None
    assert d.view["is_open"] is False
    await bot.endpoint.drain()
    assert bot.approvals.called("deny") == [(req.id, "U0BOB", "not <!channel> today")]
    assert req.card is not None
    blocks = str((await message(bot.emu, "C0DEPLOYS", req.card.ts))["blocks"])
    assert "not &lt;!channel&gt; today" in blocks
    assert "<!channel>" not in blocks


async def test_slash_command_request_with_payload_in_text(bot: Bot) -> None:
    text = f"request acme/payload-svc {SHA} production"
    d = await bot.emu.command("U0ALICE", "C0DEPLOYS", "/keyturn", text)
    assert d.status == 200
    await bot.endpoint.drain()
    ((body, origin),) = bot.approvals.called("create")
    assert (body.repo, body.sha, body.environment, body.workflow) == (
        "acme/payload-svc",
        SHA,
        "production",
        "manual",
    )
    assert body.requester == "slack:U0ALICE"
    assert origin.kind == "slack_command"
    claim = parse_slash_request(origin.body, POLICY)  # the signer accepts this evidence as the origin
    assert claim.requester == "slack:U0ALICE"
    (created,) = bot.approvals.requests.values()
    replies = [e["text"] for e in await ephemerals(bot.emu, "U0ALICE")]
    assert any(created.id in t and "<#C0DEPLOYS>" in t for t in replies)


async def test_slash_command_bad_request_answers_inline(bot: Bot) -> None:
    d = await bot.emu.command("U0ALICE", "C0DEPLOYS", "/keyturn", "request acme/web nothex production")
    assert d.status == 200
    assert "Cannot request that" in d.body
    assert "&lt;repo&gt;" in d.body
    assert "<repo>" not in d.body
    assert bot.approvals.called("create") == []


@pytest.mark.parametrize("text", ["", "help", "bogus <!channel>", "status", "request a b"])
async def test_slash_command_help_for_anything_else(bot: Bot, text: str) -> None:
    d = await bot.emu.command("U0BOB", "C0DEPLOYS", "/keyturn", text)
    assert d.status == 200
    assert "/keyturn request &lt;repo&gt;" in d.body
    assert bot.approvals.calls == []


async def test_slash_command_status_and_pending(bot: Bot) -> None:
    req = await bot.approvals.add()
    await bot.emu.command("U0BOB", "C0DEPLOYS", "/keyturn", f"status {req.id}")
    await bot.emu.command("U0BOB", "C0DEPLOYS", "/keyturn", "pending")
    await bot.emu.command("U0BOB", "C0DEPLOYS", "/keyturn", "status req_00000000000000000000000000")
    await bot.endpoint.drain()
    texts = [e["text"] for e in await ephemerals(bot.emu, "U0BOB")]
    assert sum(req.id in t and "*PENDING*, 0 of 2" in t for t in texts) == 2
    assert words("unknown_request") in texts


async def test_bad_signature_is_refused_401(bot: Bot) -> None:
    req = await bot.approvals.add()
    assert req.card is not None
    d = await bot.emu.click("U0BOB", "C0DEPLOYS", req.card.ts, "approve", tamper_signature=True)
    assert d.status == 401
    assert d.json == {"error": "invalid request"}
    assert bot.approvals.calls == []


async def test_stale_request_is_refused_401(bot: Bot) -> None:
    d = await bot.emu.command("U0BOB", "C0DEPLOYS", "/keyturn", "help", timestamp=int(time.time()) - 301)
    assert d.status == 401


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Slack-Request-Timestamp": "abc", "X-Slack-Signature": "v0=" + "0" * 64},
        {"X-Slack-Request-Timestamp": "1e9", "X-Slack-Signature": "v0=" + "0" * 64},
        {"X-Slack-Signature": "v0=" + "0" * 64},
        {"X-Slack-Request-Timestamp": str(int(time.time()))},
        {},
    ],
)
async def test_malformed_or_missing_headers_get_a_clean_4xx(bot: Bot, headers: dict[str, str]) -> None:
    async with httpx.AsyncClient() as http:
        resp = await http.post(
            bot.url,
            content="command=%2Fkeyturn&text=help",
            headers={"Content-Type": "application/x-www-form-urlencoded", **headers},
        )
    assert resp.status_code == 401
    assert resp.json() == {"error": "invalid request"}


async def test_oversized_and_non_utf8_bodies(bot: Bot) -> None:
    async with httpx.AsyncClient() as http:
        big = await http.post(bot.url, content=b"a" * (600 * 1024))
        bad = await http.post(
            bot.url,
            content=b"\xff\xfe",
            headers={"X-Slack-Request-Timestamp": "1", "X-Slack-Signature": "v0=" + "0" * 64},
        )
    assert big.status_code == 413
    assert bad.status_code == 400


async def test_signer_unavailable_is_503(stack: Stack, tmp_path: Path) -> None:
    emu = AsyncEmulatorClient(stack.emulator_url)
    await emu.reset()
    client = make_web_client(TOKEN, emu.api_url)
    messenger = SlackMessenger(client, POLICY)
    approvals = FakeApprovals(messenger, stack.secret)
    signer = SignerClient(tmp_path / "no-signer.sock", timeout=1.0)
    endpoint = build_slack_endpoint(approvals, messenger, signer, POLICY, client)
    port = free_port()
    await emu.set_bot_url(f"http://127.0.0.1:{port}/slack/events")
    async with serve(endpoint, port):
        d = await emu.command("U0BOB", "C0DEPLOYS", "/keyturn", "help")
    assert d.status == 503
    assert approvals.calls == []
    await emu.aclose()
