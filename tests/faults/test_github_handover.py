"""The hand-off of an outcome to the GitHub approver survives a kill -9 of either side.

The bot hands a final GitHub-origin request's outcome to ``keyturn github-approver`` through its Redis outbox
(bot/callbacks.py, bot/github.py): the receipt (approve) or the reason (reject). An HTTP proxy between the bot
and the approver makes the moment of the kill exact: armed, it catches the next hand-off and either holds it
unsent (the approver never saw it) or sends it and holds the approver's answer back (the approver acted, the
bot never learnt it), and says so through an event. Then the test kills the bot (or the approver) with
SIGKILL and starts it again.

Invariant: the run ends approved (or rejected) exactly once, with no second review posted to GitHub, and the
hand-off is settled in the outbox: nothing lost, nothing duplicated.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import harness
from tests.conftest import failed
from tests.e2e.conftest import GITHUB_WEBHOOK_SECRET
from tests.faults.conftest import FaultStack, build_stack, close_stack
from tests.github_rig import GitHubRig, start_github_rig, through_the_bot
from tests.harness import free_port

pytestmark = pytest.mark.slow

LEASE_S = 3  # a dead bot's claim on a hand-off lapses after this (short, for the test)


class HandoverProxy:
    """An HTTP proxy in front of the approver. Armed with :meth:`arm`, it catches the next hand-off (a POST
    to a run's ``approve`` or ``reject``) ``before`` sending it on, or ``after`` the approver answered, sets
    ``caught``, and never answers the bot: it holds the connection until ``release`` is set, then drops it.
    Everything else passes through; with the approver down, the bot gets a 502."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.mode: str | None = None
        self.caught = threading.Event()
        self.release = threading.Event()
        self.caught_path = ""
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                proxy.serve(self, b"")

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                proxy.serve(self, self.rfile.read(length))

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True, name="handover-proxy")

    def start(self) -> None:
        """Start serving."""
        self._thread.start()

    def close(self) -> None:
        """Release anything held and stop serving."""
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def arm(self, mode: str) -> None:
        """Catch the next hand-off ``before`` sending it on or ``after`` the approver's answer."""
        self.caught.clear()
        self.release.clear()
        self.mode = mode

    def serve(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        """Forward one request (or catch it: see the class docstring)."""
        handoff = handler.command == "POST" and handler.path.endswith(("/approve", "/reject"))
        mode = self.mode if handoff else None
        if mode is not None:
            self.mode = None
        if mode == "before":
            self._hold(handler)
            return
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in ("host", "content-length")}
        try:
            resp = httpx.request(
                handler.command, self.upstream + handler.path, content=body, headers=headers, timeout=30
            )
            status, content = resp.status_code, resp.content
        except httpx.HTTPError:
            status, content = 502, b'{"error": "proxy_upstream_down", "message": "the approver is down"}'
        if mode == "after":
            self._hold(handler)
            return
        handler.send_response(status)
        handler.send_header("content-type", "application/json")
        handler.send_header("content-length", str(len(content)))
        handler.end_headers()
        handler.wfile.write(content)

    def _hold(self, handler: BaseHTTPRequestHandler) -> None:
        self.caught_path = handler.path
        self.caught.set()
        self.release.wait(60)
        handler.close_connection = True  # dropped unanswered: to a live bot, a failed attempt


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The module's stack directory."""
    return tmp_path_factory.mktemp("ghhandover")


@pytest.fixture(scope="module")
def approver_port() -> int:
    """Where the approver listens (behind the proxy)."""
    return free_port()


@pytest.fixture(scope="module")
def proxy(approver_port: int) -> Iterator[HandoverProxy]:
    """The proxy between the bot and the approver."""
    held = HandoverProxy(f"http://127.0.0.1:{approver_port}")
    held.start()
    yield held
    held.close()


@pytest.fixture(scope="module")
def fault_stack(workdir: Path, proxy: HandoverProxy) -> Iterator[FaultStack]:
    """A stack whose bot reaches the approver through ``proxy``; a dead bot's hand-off lapses quickly and
    failed attempts are retried within a second."""
    bot_env = {
        "KEYTURN_GITHUB_APPROVER_URL": proxy.url,
        "KEYTURN_CALLBACK_LEASE": str(LEASE_S),
        "KEYTURN_CALLBACK_TIMEOUT": "2",
        "KEYTURN_CALLBACK_ATTEMPTS": "12",
        "KEYTURN_CALLBACK_RETRY_FIRST": "0.2",
        "KEYTURN_CALLBACK_RETRY_MAX": "1",
        "KEYTURN_CALLBACK_POLL_INTERVAL": "0.2",
    }
    signer_env = {"KEYTURN_GITHUB_WEBHOOK_SECRET": GITHUB_WEBHOOK_SECRET}
    stack = build_stack(workdir, signer_env=signer_env, bot_env=bot_env)
    yield stack
    close_stack(stack)


@pytest.fixture(scope="module")
def github(fault_stack: FaultStack, workdir: Path, approver_port: int) -> Iterator[GitHubRig]:
    """The GitHub emulator and the approver, with the stack's keyset and policy."""
    rig = start_github_rig(
        workdir / "github",
        approver_port=approver_port,
        keys_file=fault_stack.keys_file,
        policy=workdir / "keyturn.toml",
    )
    yield rig
    rig.close()


@dataclass
class Scene:
    """One test's parts: the stack, the GitHub rig, the proxy, and a run waiting on its request's card."""

    stack: FaultStack
    gh: GitHubRig
    proxy: HandoverProxy
    run_id: int
    req: dict[str, Any]


@pytest.fixture
def scene(
    fstack: FaultStack, github: GitHubRig, proxy: HandoverProxy, request: pytest.FixtureRequest
) -> Iterator[Scene]:
    """A clean Redis (``fstack``), a reset GitHub emulator, a disarmed proxy, and a run GitHub delivered to
    the bot, waiting on the rule with its request's card posted."""
    proxy.mode = None
    github.http.post(f"{github.github_url}/_github/reset")
    run_id, req = through_the_bot(github, fstack)
    yield Scene(fstack, github, proxy, run_id, req)
    proxy.release.set()
    if failed(request):
        print("\n".join(f"===== {n} =====\n{p.log()[-20000:]}" for n, p in github.procs.items()))
    if not github.procs["approver"].alive():
        github.start_approver()  # for the next test, whatever this one left


def _settled(stack: FaultStack, request_id: str) -> dict[str, Any]:
    """Wait until the request's hand-off is settled in the outbox; its job."""

    def job() -> dict[str, Any]:
        data: dict[str, Any] = stack.get(f"/v1/requests/{request_id}").json().get("callback") or {}
        return data

    harness.wait_until(lambda: job().get("state") not in (None, "queued"), 30, "the hand-off to settle")
    return job()


def _decided_once(gh: GitHubRig, run_id: int, state: str) -> dict[str, Any]:
    """Assert the run is ``state`` by exactly one review (after the status comment), also in GitHub's record
    of the calls: no second review was posted; the run."""
    run = gh.wait_run(run_id, state, timeout=30)
    assert [r["state"] for r in run["reviews"]] == [None, state]
    assert [r["body"].get("state") for r in gh.reviews_posted(run_id)] == [None, state]
    return run


def _kill_bot_at_the_approval_handover(
    stack: FaultStack, proxy: HandoverProxy, req: dict[str, Any], mode: str
) -> None:
    """bob and carol approve; the proxy catches the hand-off of the receipt (``before`` or ``after`` the
    approver took it) and the bot is killed there."""

    def approve_by_quorum() -> None:
        for user in ("U0BOB", "U0CAROL"):
            stack.click(user, req)

    proxy.arm(mode)
    clicker = threading.Thread(target=approve_by_quorum, daemon=True)
    clicker.start()
    assert proxy.caught.wait(30), "the bot never handed the approval over"
    stack.procs["bot"].kill9()
    proxy.release.set()
    clicker.join(30)


def test_bot_killed_before_handing_over_the_approval_the_restarted_bot_approves_the_run_once(
    scene: Scene,
) -> None:
    rid = scene.req["requestId"]
    _kill_bot_at_the_approval_handover(scene.stack, scene.proxy, scene.req, "before")
    # Approved and its receipt stored, but the approver never got it: the run still waits.
    assert scene.gh.run(scene.run_id)["status"] == "waiting"

    scene.stack.restart_bot()  # nobody clicks again: the replacement replays the hand-off from the outbox
    run = _decided_once(scene.gh, scene.run_id, "approved")
    assert f"(https://keyturn.example/requests/{rid})" in run["reviews"][1]["comment"]
    job = _settled(scene.stack, rid)
    assert job["state"] == "delivered"
    assert job["attempts"] >= 2  # the lost attempt, then the replay


def test_bot_killed_after_the_approver_approved_the_replay_does_not_approve_twice(scene: Scene) -> None:
    _kill_bot_at_the_approval_handover(scene.stack, scene.proxy, scene.req, "after")
    assert scene.gh.run(scene.run_id)["status"] == "approved"  # the approver acted; the bot never heard

    scene.stack.restart_bot()
    job = _settled(scene.stack, scene.req["requestId"])
    # The replay reached the approver, which had decided the run already: settled, not approved again.
    assert (job["state"], job["last"]["status"]) == ("delivered", 409)
    _decided_once(scene.gh, scene.run_id, "approved")


def test_approver_killed_at_the_handover_the_run_is_rejected_once_it_is_back(scene: Scene) -> None:
    rid = scene.req["requestId"]
    scene.proxy.arm("before")
    cancelled = scene.stack.post(f"/v1/requests/{rid}/cancel", b"")  # the pipeline gave up
    assert cancelled.status_code == 200, cancelled.text
    assert scene.proxy.caught.wait(30), "the bot never handed the rejection over"
    scene.gh.procs["approver"].kill9()
    scene.proxy.release.set()  # the bot's attempt fails; its retries meet a dead approver (502) meanwhile
    scene.gh.start_approver()  # same state file: the run it was told about still waits

    run = _decided_once(scene.gh, scene.run_id, "rejected")
    assert run["reviews"][1]["comment"].startswith("Rejected by Keyturn: the request was cancelled")
    job = _settled(scene.stack, rid)
    assert (job["state"], job["last"]["status"]) == ("delivered", 200)
    assert job["attempts"] >= 2  # the one the kill cut, then the ones until the approver was back
