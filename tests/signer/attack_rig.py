"""A compromised bot holding no secret, against a real signer and a real Slack emulator.

The attacker owns the bot process: it holds the bot token (so it can post any message through Slack's Web
API), it talks to the signer socket, and it sees every request Slack delivers to the bot's URL. It does *not*
hold the Slack signing secret or the CI secret. So everything it hands the signer is either a genuine CI
request it forwarded, or a genuine Slack click — made by a real approver on whatever message the attacker
posted, and signed by Slack (here: ``keyturn emulator``) over the ``message`` as Slack stored it.

* :class:`CaptureServer` stands in for the bot's Slack request URL: it records the raw body and the two
  ``X-Slack-*`` headers of every delivery, hands them over through a queue, and answers 200.
* :class:`Rig` is the module's long-lived processes: one ``keyturn signer`` (with :data:`ATTACK_POLICY`, whose
  workspace is the emulator's sample one) and one ``keyturn emulator`` delivering to the capture server.
* :class:`Attacker` is one test's handle on them: post, have approvers click, spend the clicks.
"""

from __future__ import annotations

import json
import queue
import shutil
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import count
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import httpx

from keyturn.bot.signer_client import SignerClient, SignerRefused
from keyturn.emulator.client import Delivery
from keyturn.signer import wire
from keyturn.signer.card import APPROVE_ACTION
from keyturn.signer.evidence import github_stamp, slack_signature
from keyturn.signer.github_app import webhook_signature
from keyturn.signer.policy import Policy
from keyturn.signer.receipt import Scope
from tests.harness import Proc, start_emulator
from tests.signer.conftest import (
    SHA,
    SLACK_SECRET,
    SignerFiles,
    ci_origin,
    ci_request_body,
    make_files,
    start_signer,
)

__all__ = [
    "APPROVERS",
    "ATTACK_POLICY",
    "BOT_TOKEN",
    "CHANNEL",
    "ENVIRONMENTS",
    "GITHUB_SECRET",
    "TEAM",
    "Attacker",
    "CaptureServer",
    "Captured",
    "Rig",
    "echoed_message",
    "new_github_origin",
    "new_origin",
    "reforge_click",
    "start_rig",
]

TEAM = "T0KEYTURN"  # the emulator's sample workspace
CHANNEL = "C0DEPLOYS"
BOT_TOKEN = "xoxb-the-attacker-holds-only-the-bot-token"

ATTACK_POLICY_TOML = """\
version = 1

[slack]
command = "/keyturn"
team_id = "T0KEYTURN"

[identities]
"github:alice" = "U0ALICE"
"github:bob" = "U0BOB"

[environments.production]
channel = "C0DEPLOYS"
approvers = ["U0BOB", "U0CAROL"]
required_approvals = 2
request_ttl = "30m"
receipt_ttl = "15m"
confirm_approve = true

[environments.staging]
channel = "C0STAGING"
approvers = ["U0BOB", "U0CAROL"]
required_approvals = 1
request_ttl = "30m"
receipt_ttl = "1h"
confirm_approve = false

[environments.prod-eu]
channel = "C0DEPLOYS"
approvers = ["U0BOB", "U0CAROL"]
required_approvals = 1
request_ttl = "30m"
receipt_ttl = "15m"
"""
ATTACK_POLICY = Policy.from_bytes(ATTACK_POLICY_TOML.encode())
ENVIRONMENTS = tuple(ATTACK_POLICY.environments.keys())
# Who clicks Approve for a card of each environment: exactly the quorum, so an accepted attack would end in a
# receipt rather than in ``insufficient_approvals``.
APPROVERS = {"production": ("U0BOB", "U0CAROL"), "staging": ("U0BOB",), "prod-eu": ("U0BOB",)}

_RUNS = count(1)
_TLS = ssl.create_default_context()


GITHUB_SECRET = "attack-rig-github-webhook-secret"


def new_github_origin(
    environment: str = "production", *, event: str | None = "push", ref: str = "refs/heads/main"
) -> wire.GitHubOrigin:
    """A genuine deployment-protection-rule webhook (signed with the webhook secret, as GitHub does) for a
    fresh run, stamped by the signer's key a moment ago: what the bot stores after ``check_github``."""
    run = next(_RUNS)
    doc: dict[str, Any] = {
        "action": "requested",
        "environment": environment,
        "ref": ref,
        "sha": SHA,
        "deployment_callback_url": (
            f"https://api.github.com/repos/acme/web/actions/runs/{run}/deployment_protection_rule"
        ),
        "repository": {"full_name": "acme/web"},
        "installation": {"id": 7},
        "sender": {"login": "alice"},
    }
    if event is not None:
        doc["event"] = event
    body = json.dumps(doc).encode()
    ts, delivery = str(int(time.time()) - 2), f"delivery-{run}"
    return wire.GitHubOrigin(
        body=body,
        delivery=delivery,
        signature=webhook_signature(GITHUB_SECRET, body),
        workflow=".github/workflows/deploy.yml",
        timestamp=ts,
        stamp=github_stamp(GITHUB_SECRET, body, delivery, ts),
    )


def new_origin(
    environment: str = "production",
    *,
    sha: str = SHA,
    requester: str = "github:alice",
    workflow: str = "deploy.yml",
    ts: int | None = None,
    **extra: Any,
) -> wire.CiOrigin:
    """A genuine CI request (signed with the CI secret, as the pipeline does), dated a moment ago so that
    clicks made now fall inside its lifetime. Each carries its own run URL unless ``extra`` says otherwise,
    so each is a distinct request."""
    fields: dict[str, Any] = {"runUrl": f"https://ci.example/acme/web/runs/{next(_RUNS)}", **extra}
    body = ci_request_body(Scope("acme/web", sha, environment, workflow), requester, **fields)
    return ci_origin(int(time.time()) - 2 if ts is None else ts, body)


@dataclass(frozen=True)
class Captured:
    """One request Slack delivered to the bot's URL, exactly as received."""

    path: str
    body: str
    timestamp: str
    signature: str


def _handler(sink: queue.Queue[Captured]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length).decode("utf-8")
            # Recorded before answering: the emulator's click call returns only after our answer, so by then
            # the delivery is already in the queue.
            sink.put(
                Captured(
                    self.path,
                    body,
                    self.headers.get("X-Slack-Request-Timestamp", ""),
                    self.headers.get("X-Slack-Signature", ""),
                )
            )
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the emulator's own log records every delivery."""

    return Handler


class CaptureServer:
    """A tiny HTTP server on 127.0.0.1 playing the bot's Slack request URL."""

    def __init__(self) -> None:
        self.deliveries: queue.Queue[Captured] = queue.Queue()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.deliveries))
        self._thread = threading.Thread(target=self._server.serve_forever, name="capture", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """Base URL (the emulator appends ``/slack/events``)."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def take(self) -> Captured:
        """The oldest delivery not yet taken; it must have arrived already (see the handler)."""
        try:
            return self.deliveries.get_nowait()
        except queue.Empty:
            raise AssertionError(
                "the emulator reported a delivery the capture server never received"
            ) from None

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@dataclass
class Rig:
    """The module's real processes."""

    files: SignerFiles
    signer: Proc
    emulator: Proc
    emulator_url: str
    capture: CaptureServer

    def audit_lines(self) -> int:
        """How many records the signer's audit log holds."""
        return len(self.files.audit.read_bytes().splitlines()) if self.files.audit.exists() else 0

    def logs(self) -> str:
        """Both processes' logs (for a failed test)."""
        return f"== signer ==\n{self.signer.log()[-5000:]}\n== emulator ==\n{self.emulator.log()[-5000:]}"

    def stop(self) -> None:
        """Stop everything and remove the signer's files."""
        self.emulator.stop()
        self.signer.stop()
        self.capture.stop()
        shutil.rmtree(self.files.root, ignore_errors=True)


def start_rig(log_dir: Path) -> Rig:
    """Start the signer (attack policy, test secrets) and the emulator (signing with the same Slack secret,
    delivering to a fresh capture server)."""
    files = make_files()
    files.policy.write_text(ATTACK_POLICY_TOML)
    capture = CaptureServer()
    signer = start_signer(files, log_dir, name="attack-signer", KEYTURN_GITHUB_WEBHOOK_SECRET=GITHUB_SECRET)
    try:
        emulator, url = start_emulator(log_dir, slack_secret=SLACK_SECRET, bot_url=capture.url)
    except Exception:
        signer.stop()
        capture.stop()
        raise
    return Rig(files, signer, emulator, url, capture)


class Attacker:
    """One test's compromised bot: the bot token, the signer socket, the deliveries — no secret."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        # One HTTP client for the Web API (with the bot token) and the emulator's click endpoint (which is
        # the approver's hand, not the attacker's). The shared TLS context only saves building one per test
        # (~0.1 s each); every URL here is plain http on 127.0.0.1.
        self.http = httpx.AsyncClient(base_url=rig.emulator_url, verify=_TLS, timeout=30.0)
        self.signer = SignerClient(rig.files.socket, timeout=10.0)

    async def aclose(self) -> None:
        """Close both clients."""
        await self.http.aclose()
        await self.signer.close()

    async def post(
        self,
        blocks: list[dict[str, Any]] | None,
        *,
        attachments: list[dict[str, Any]] | None = None,
        ephemeral_for: str | None = None,
    ) -> str:
        """Post a message with the Web API as the bot; its ``ts``. Slack must accept it (else the attack is
        not one a real workspace would show)."""
        params: dict[str, Any] = {"channel": CHANNEL, "text": "Deploy approval"}
        if blocks is not None:
            params["blocks"] = blocks
        if attachments is not None:
            params["attachments"] = attachments
        method = "chat.postMessage"
        if ephemeral_for is not None:
            method, params["user"] = "chat.postEphemeral", ephemeral_for
        resp = await self.http.post(
            f"/api/{method}", json=params, headers={"Authorization": f"Bearer {BOT_TOKEN}"}
        )
        data = resp.json()
        assert data["ok"] is True, data
        return str(data["ts"] if "ts" in data else data["message_ts"])

    async def click(self, ts: str, user: str, value: str | None = None) -> wire.SlackClick:
        """``user`` clicks Approve on message ``ts``; the genuine signed click, as the bot's URL got it."""
        asked = {"user": user, "channel": CHANNEL, "ts": ts, "action_id": APPROVE_ACTION, "value": value}
        resp = await self.http.post("/_emulator/click", json=asked)
        delivery = Delivery(resp.json())
        assert resp.status_code == 200, delivery.raw
        assert delivery.status == 200, delivery.raw
        got = self.rig.capture.take()
        # What the emulator says it sent is what arrived, signature included.
        assert got.body == delivery.request["body"]
        assert got.signature == delivery.request["headers"]["X-Slack-Signature"]
        assert got.path == "/slack/events"
        return wire.SlackClick(body=got.body, timestamp=got.timestamp, signature=got.signature)

    async def clicks(self, ts: str, users: Sequence[str], value: str | None = None) -> list[wire.SlackClick]:
        """Each of ``users`` clicks Approve on ``ts``, in order."""
        return [await self.click(ts, u, value) for u in users]

    async def refusal(
        self,
        origin: wire.CiOrigin | wire.SlackCommandOrigin | wire.OidcOrigin | wire.GitHubOrigin,
        clicks: list[wire.SlackClick],
        rid: str,
    ) -> str:
        """Spend ``clicks`` on ``origin`` under ``rid``; the signer's refusal code. A receipt is a bypass."""
        before = self.rig.audit_lines()
        try:
            receipt = await self.signer.sign(rid, origin, clicks, {})
        except SignerRefused as exc:
            assert self.rig.audit_lines() == before, "a refused sign left an audit record"
            return exc.code
        raise AssertionError(f"BYPASS: the signer issued a receipt: {json.dumps(receipt)}")


def reforge_click(genuine: wire.SlackClick, message: dict[str, Any] | None) -> wire.SlackClick:
    """The click Slack would send if the clicked message were ``message`` (``None``: no message at all).

    For what the emulator cannot store — a ``markdown`` block, a message posted under a custom ``username``
    or icon — the test plays Slack itself: it takes a genuine emulator click, swaps the echoed message, and
    signs the result with the signing secret exactly as Slack would. Only the test, never the attacker, can
    do this; it shows what the signer decides when such a message is genuinely clicked.
    """
    form = dict(parse_qsl(genuine.body, keep_blank_values=True, strict_parsing=True))
    payload = json.loads(form["payload"])
    if message is None:
        payload.pop("message", None)
    else:
        payload["message"] = message
    body = urlencode({"payload": json.dumps(payload, separators=(",", ":"), ensure_ascii=False)})
    return wire.SlackClick(
        body=body,
        timestamp=genuine.timestamp,
        signature=slack_signature(SLACK_SECRET, body, genuine.timestamp),
    )


def echoed_message(genuine: wire.SlackClick) -> dict[str, Any]:
    """The ``message`` object a genuine click carries."""
    form = dict(parse_qsl(genuine.body, keep_blank_values=True, strict_parsing=True))
    message: dict[str, Any] = json.loads(form["payload"])["message"]
    return message
