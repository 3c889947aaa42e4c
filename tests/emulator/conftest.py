"""Fixtures: the emulator served by uvicorn in a thread (a real socket, an injectable clock), and a tiny
Bolt ``AsyncApp`` served the same way as "the bot"."""

from __future__ import annotations

import asyncio
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
from pydantic import SecretStr
from slack_bolt.adapter.asgi.async_handler import AsyncSlackRequestHandler
from slack_bolt.async_app import AsyncAck, AsyncApp
from slack_sdk.web.async_client import AsyncWebClient

from keyturn.emulator.app import create_app, emulator_of
from keyturn.emulator.client import EmulatorClient
from keyturn.emulator.clock import ManualClock
from keyturn.emulator.core import Emulator, EmulatorSettings
from tests.harness import wait_until

SIGNING_SECRET = "test-signing-secret-0123456789abcdef"
BOT_TOKEN = "xoxb-emulator-test-token"


@contextmanager
def serve_in_thread(app: Any, name: str) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on a free loopback port in a thread; yield its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=lambda: asyncio.run(server.serve(sockets=[sock])), name=name, daemon=True
    )
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), 10, f"{name} to listen")
        if not server.started:
            raise RuntimeError(f"{name} failed to start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@dataclass
class RunningEmulator:
    """An emulator serving on a real socket, with handles for assertions."""

    url: str
    emulator: Emulator
    clock: ManualClock
    client: EmulatorClient

    @property
    def api_url(self) -> str:
        """The base_url for slack_sdk clients."""
        return self.url + "/api/"


@pytest.fixture
def emu() -> Iterator[RunningEmulator]:
    """A fresh emulator (sample workspace, test signing secret) whose clock only moves when told to.

    The clock starts at the real time so that Bolt (which checks timestamps against the wall clock)
    accepts the emulator's signatures."""
    clock = ManualClock(time.time())
    settings = EmulatorSettings(signing_secret=SecretStr(SIGNING_SECRET))
    app = create_app(settings, clock=clock)
    with serve_in_thread(app, "emulator") as url, EmulatorClient(url) as client:
        yield RunningEmulator(url, emulator_of(app), clock, client)


@dataclass
class BotRecord:
    """What the test bot's listeners saw, in order."""

    bodies: list[dict[str, Any]] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, body: dict[str, Any]) -> None:
        """Remember one listener invocation."""
        with self.lock:
            self.kinds.append(kind)
            self.bodies.append(body)

    def of(self, kind: str) -> list[dict[str, Any]]:
        """Bodies received by listeners of ``kind``."""
        with self.lock:
            return [b for k, b in zip(self.kinds, self.bodies, strict=True) if k == kind]


def build_bot(api_url: str, record: BotRecord) -> AsyncApp:
    """A minimal approval bot: approve acks; deny opens a reason modal; the modal insists on a reason."""
    client = AsyncWebClient(token=BOT_TOKEN, base_url=api_url)
    app = AsyncApp(client=client, signing_secret=SIGNING_SECRET)

    @app.action("approve")
    async def approve(ack: AsyncAck, body: dict[str, Any]) -> None:
        record.add("approve", body)
        await ack()

    @app.action("deny")
    async def deny(ack: AsyncAck, body: dict[str, Any], client: AsyncWebClient) -> None:
        record.add("deny", body)
        await ack()
        await client.views_open(
            trigger_id=body["trigger_id"],
            view={
                "type": "modal",
                "callback_id": "deny_reason",
                "private_metadata": body["message"]["ts"],
                "title": {"type": "plain_text", "text": "Deny deploy"},
                "submit": {"type": "plain_text", "text": "Deny"},
                "blocks": [
                    {
                        "type": "input",
                        "block_id": "reason",
                        "label": {"type": "plain_text", "text": "Reason"},
                        "element": {"type": "plain_text_input", "action_id": "reason_input"},
                    }
                ],
            },
        )

    @app.view("deny_reason")
    async def deny_reason(ack: AsyncAck, body: dict[str, Any]) -> None:
        record.add("view", body)
        reason = body["view"]["state"]["values"]["reason"]["reason_input"]["value"]
        if not reason or not reason.strip():
            await ack(response_action="errors", errors={"reason": "Please give a reason"})
            return
        await ack()

    @app.command("/keyturn")
    async def command(ack: AsyncAck, body: dict[str, Any]) -> None:
        record.add("command", body)
        await ack(text=f"request received: {body['text']}")

    return app


@dataclass
class RunningBot:
    """The test bot, serving on a real socket, pointed at the emulator."""

    url: str
    record: BotRecord


@pytest.fixture
def bot(emu: RunningEmulator) -> Iterator[RunningBot]:
    """The Bolt test bot; the emulator is told its request URL."""
    record = BotRecord()
    handler = AsyncSlackRequestHandler(build_bot(emu.api_url, record))
    with serve_in_thread(handler, "bot") as url:
        emu.client.set_bot_url(url + "/slack/events")
        yield RunningBot(url + "/slack/events", record)


CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium driven by Playwright, one per test module (skips when it is not installed)."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("chromium not installed: apt-get install -y chromium to run the browser test")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh page (own context: no localStorage carried between tests)."""
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(10_000)
    try:
        yield page
    finally:
        context.close()
