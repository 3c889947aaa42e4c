"""SIGTERM under load (issue 15): the bot ends its long-polls at once with the request as it stands, cuts what
still runs when the shutdown grace is over with a one-line warning, and logs no ``CancelledError`` traceback.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests import harness
from tests.e2e.conftest import BOT_TOKEN, Stack, ci_headers, request_body
from tests.harness import free_port, wait_until


def _gauge(url: str, name: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return -1.0


def test_sigterm_under_load_logs_no_traceback(e2e_stack: Stack, tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    bot = harness.start_bot(
        tmp_path / "logs",
        port=port,
        redis_url=e2e_stack.redis.url,
        signer_socket=e2e_stack.workdir / "signer.sock",
        policy=e2e_stack.workdir / "keyturn.toml",
        emulator_url=e2e_stack.emulator.base_url,
        cwd=tmp_path,
        name="bot-sigterm",
        env={"KEYTURN_SLACK_BOT_TOKEN": BOT_TOKEN, "KEYTURN_SHUTDOWN_GRACE": "2"},
    )
    try:
        rids = []
        with httpx.Client(timeout=30) as http:
            for _ in range(8):
                body = json.dumps(request_body()).encode()
                resp = http.post(
                    url + "/v1/requests", content=body, headers=ci_headers("POST", "/v1/requests", body)
                )
                assert resp.status_code in (200, 202), resp.text
                rids.append(resp.json()["requestId"])
        answers: list[int] = []
        polling = threading.Barrier(len(rids) + 1)

        def long_poll(rid: str) -> None:
            path = f"/v1/requests/{rid}"
            with httpx.Client(timeout=60) as http:
                version = http.get(url + path, headers=ci_headers("GET", path, b"")).json()["version"]
                polling.wait()
                resp = http.get(
                    url + path, params={"wait": 55, "since": version}, headers=ci_headers("GET", path, b"")
                )
                answers.append(resp.status_code)

        threads = [threading.Thread(target=long_poll, args=(rid,)) for rid in rids]
        for t in threads:
            t.start()
        polling.wait()
        # A request whose body never finishes: still running when the grace is over, so uvicorn cancels it.
        stuck = socket.create_connection(("127.0.0.1", port))
        head = ci_headers("POST", "/v1/requests", b"{}")  # plausible headers: the bot starts reading the body
        stuck.sendall(
            b"POST /v1/requests HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + b"".join(f"{k}: {v}\r\n".encode() for k, v in head.items())
            + b"Content-Length: 1000\r\n\r\n{"
        )
        # Every long-poll parked in the bot (its gauge; another process: polled), and the stuck body read.
        wait_until(lambda: _gauge(url, "keyturn_long_polls") == len(rids), 10, "the long-polls to be waiting")
        started = time.monotonic()
        code = bot.stop(signal.SIGTERM, timeout=30)
        took = time.monotonic() - started
        for t in threads:
            t.join(10)
        stuck.close()
    finally:
        bot.stop()
    log = bot.log()
    assert "Traceback" not in log, log
    assert "CancelledError" not in log, log
    assert answers == [200] * len(rids)  # answered with the request as it stands, not cut off
    assert took < 10, f"shutdown took {took:.1f} s"
    assert code in (0, -signal.SIGTERM), log
    if "cut short by shutdown" not in log:
        pytest.fail(f"the stuck request was not reported: {log}")
