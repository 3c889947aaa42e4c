"""Issue 14 finding 1: 1,100 half-open connections against a real ``keyturn bot`` whose open-file limit is
1,024 (as in the report). The bot must keep answering ``/healthz`` and signed CI calls within a bound, its
timers must keep firing (a request expires on time), its log must stay small, and SIGTERM must end it
within the shutdown grace even with half-sent bodies open. Loopback only; bounded (about 30 s).
"""

from __future__ import annotations

import json
import resource
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import harness
from tests.fixtures import policy_toml
from tests.harness import Proc, free_port, http_ok, start_process

CI_SECRET = "edge-ci-secret-0123456789abcdef0123456789"
SLACK_SECRET = "edge-slack-signing-secret-0123456789abcdef"
SHA = "4f8a2cd91ef7a2c7f3a5f0aa12d93b33f2d40e17"
POLICY = policy_toml("shortlived", request_ttl="6s", receipt_ttl="15m")
HALF_HEADERS = 1_000  # connections that send half a request head and stall
HALF_BODIES = 100  # connections that send a head and half a body and stall
BOT_NOFILE = 1_024  # the bot's open-file limit, as in the report
LEGIT_BOUND_S = 2.0  # /healthz and a signed CI call must answer within this while under attack
GRACE_S = 3.0  # KEYTURN_SHUTDOWN_GRACE in this test
# What the bot allows itself after SIGTERM (bot/server.py's lifespan): the grace, then at most 5 s draining
# Slack handlers and 5 s waiting for the approval service to go idle, plus 2 s of process slack. A bound
# tighter than the code's own (it was grace + 7 s) failed once in a CI rehearsal on a loaded 2-core machine.
SHUTDOWN_BOUND_S = GRACE_S + 5.0 + 5.0 + 2.0


@pytest.fixture
def edge_bot(redis_url: str, tmp_path: Path) -> Iterator[tuple[str, Proc]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with harness.signer_and_emulator(
        tmp_path, POLICY, slack_secret=SLACK_SECRET, ci_secret=CI_SECRET, bot_url=url
    ) as backends:
        launcher = (
            "import resource, sys, runpy; "
            f"resource.setrlimit(resource.RLIMIT_NOFILE, ({BOT_NOFILE}, {BOT_NOFILE})); "
            "sys.argv = ['keyturn', 'bot']; runpy.run_module('keyturn', run_name='__main__')"
        )
        bot = start_process(
            "bot",
            [sys.executable, "-c", launcher],
            backends.logs,
            env={
                "KEYTURN_REDIS_URL": f"{redis_url}?db=5",
                "KEYTURN_SIGNER_SOCKET": str(backends.signer_socket),
                "KEYTURN_POLICY": str(backends.policy),
                "KEYTURN_SLACK_BOT_TOKEN": "xoxb-keyturn-test-token",
                "KEYTURN_SLACK_API_URL": f"{backends.emulator_url}/api/",
                "KEYTURN_HOST": "127.0.0.1",
                "KEYTURN_PORT": str(port),
                "KEYTURN_DEV_MODE": "1",
                "KEYTURN_HTTP_HEADER_TIMEOUT": "20",  # longer than the test: they are held throughout
                "KEYTURN_HTTP_BODY_TIMEOUT": "20",
                "KEYTURN_SHUTDOWN_GRACE": str(GRACE_S),
                "KEYTURN_BACKSTOP_INTERVAL": "1",
            },
            ready=http_ok(f"{url}/readyz"),
            cwd=tmp_path,
        )
        backends.procs.append(bot)
        yield url, bot


def _open_half(port: int, payload: bytes) -> socket.socket | None:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect(("127.0.0.1", port))
        s.sendall(payload)
    except OSError:
        s.close()
        return None
    return s


def _timed(call: httpx.Response | None, started: float) -> float:
    return time.monotonic() - started


def test_half_open_flood_leaves_health_ci_timers_and_shutdown_bounded(edge_bot: tuple[str, Proc]) -> None:
    url, bot = edge_bot
    port = int(url.rsplit(":", 1)[1])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = HALF_HEADERS + HALF_BODIES + 512
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < want:
        pytest.skip("cannot raise this process's open-file limit enough")

    body = json.dumps(
        {"repo": "acme/web", "sha": SHA, "environment": "shortlived", "workflow": "deploy.yml",
         "requester": "github:alice"}
    ).encode()  # fmt: skip
    with httpx.Client(timeout=10) as http:
        resp = http.post(
            url + "/v1/requests",
            content=body,
            headers=harness.ci_headers(CI_SECRET, "POST", "/v1/requests", body),
        )
        assert resp.status_code == 202, resp.text
        rid = resp.json()["requestId"]
        log_before = len(bot.log())

        held: list[socket.socket] = []
        try:
            head = b"POST /v1/requests HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Keyturn-Timestamp: 1"
            half_body = b"POST /slack/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\nab"
            for i in range(HALF_HEADERS + HALF_BODIES):
                s = _open_half(port, half_body if i % 11 == 0 else head)
                if s is not None:
                    held.append(s)
            opened = len(held)

            worst = 0.0
            for _ in range(5):
                started = time.monotonic()
                assert http.get(url + "/healthz", timeout=LEGIT_BOUND_S).status_code == 200
                path = f"/v1/requests/{rid}"
                got = http.get(
                    url + path, headers=harness.ci_headers(CI_SECRET, "GET", path, b""), timeout=LEGIT_BOUND_S
                )
                assert got.status_code == 200, got.text
                worst = max(worst, time.monotonic() - started)
            assert worst < LEGIT_BOUND_S

            # The timers still fire: the request expires (6 s lifetime) while the flood is held open.
            path = f"/v1/requests/{rid}"
            deadline = time.monotonic() + 20
            status = ""
            while time.monotonic() < deadline:
                got = http.get(
                    url + path,
                    params={"wait": 5, "since": got.json()["version"]},
                    headers=harness.ci_headers(CI_SECRET, "GET", path, b""),
                    timeout=10,
                )
                status = got.json()["status"]
                if status == "EXPIRED":
                    break
            assert status == "EXPIRED"

            grown = len(bot.log()) - log_before
            assert grown < 200_000, bot.log()[-3000:]
            # The finding was a storm (41 MB of `accept() out of system resource` in 10 s). The edge keeps the
            # bot's files under its limit, but on a loaded machine a lone accept can still lose the race for
            # the last descriptor; a few such lines are tolerated, a storm is not (and the log bound above).
            assert bot.log().count("out of system resource") <= 5, bot.log()[-3000:]
            assert "lease step failed" not in bot.log()

            # SIGTERM with half-sent bodies still open: it ends within the bounds the bot sets itself.
            bot.popen.send_signal(signal.SIGTERM)
            stopped = time.monotonic()
            bot.popen.wait(SHUTDOWN_BOUND_S)
            took = time.monotonic() - stopped
            print(
                f"finding 1: {opened} half-open connections; worst /healthz + signed GET "
                f"{worst * 1000:.0f} ms; "
                f"expired on time; log grew {grown} bytes; SIGTERM exit in {took:.1f} s"
            )
        except BaseException:
            print(bot.log()[-5000:])
            raise
        finally:
            for s in held:
                s.close()
