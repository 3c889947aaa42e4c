"""The CI API across real processes: dedupe, validation, authentication, and what Slack users see."""

from __future__ import annotations

import http.server
import json
import threading
import time
from typing import ClassVar

import httpx
import pytest

from signer.evidence import callback_signature
from tests.e2e.conftest import CI_SECRET, Stack, ci_headers, request_body


def test_duplicate_ci_request_returns_the_same_request_and_one_card(stack: Stack) -> None:
    body = json.dumps(request_body()).encode()
    first = stack.post("/v1/requests", body)
    second = stack.post("/v1/requests", body)
    assert (first.status_code, second.status_code) == (202, 200)
    assert first.json()["requestId"] == second.json()["requestId"]
    stack.card(first.json()["requestId"])
    third = stack.post("/v1/requests", body)
    assert third.status_code == 200
    posts = [c for c in stack.emulator.calls("chat.postMessage") if "thread_ts" not in c["params"]]
    assert len(posts) == 1


def test_unknown_environment_is_a_422_naming_the_field(stack: Stack) -> None:
    resp = stack.post("/v1/requests", json.dumps(request_body(environment="moon")).encode())
    assert resp.status_code == 422
    data = resp.json()
    assert data["error"] == "unknown_environment"
    assert [f["field"] for f in data["fields"]] == ["environment"]


def test_invalid_fields_are_each_named(stack: Stack) -> None:
    body = request_body(sha="not-a-sha", repo="no slash", extra="x")
    resp = stack.post("/v1/requests", json.dumps(body).encode())
    assert resp.status_code == 422
    fields = {f["field"] for f in resp.json()["fields"]}
    assert {"sha", "repo", "extra"} <= fields


def test_malformed_and_oversized_bodies(stack: Stack) -> None:
    for raw in (b"{not json", b"[1,2]", b'{"repo":"a/b","repo":"c/d"}', b"\xff\xfe"):
        resp = stack.post("/v1/requests", raw)
        assert resp.status_code == 400, raw
        assert resp.json()["error"] == "malformed_body"
    big = json.dumps(request_body(title="x" * 70_000)).encode()
    resp = stack.post("/v1/requests", big)
    assert resp.status_code == 413
    assert resp.json()["error"] == "body_too_large"


def test_bad_and_stale_ci_signatures_get_a_bare_401(stack: Stack) -> None:
    body = json.dumps(request_body()).encode()
    url = stack.bot_url + "/v1/requests"
    cases = {
        "wrong secret": ci_headers("POST", "/v1/requests", body, secret="not-" + CI_SECRET),
        # Margins of 10 s past the 300 s window: "+301" was accepted when the whole second ran out in
        # between (int() drops up to 1 s, and a loaded machine adds some).
        "stale": ci_headers("POST", "/v1/requests", body, ts=int(time.time()) - 310),
        "future": ci_headers("POST", "/v1/requests", body, ts=int(time.time()) + 310),
        "other path": ci_headers("POST", "/v1/requests/x", body),
        "missing": {"Content-Type": "application/json"},
    }
    for name, headers in cases.items():
        resp = stack.http.post(url, content=body, headers=headers)
        assert resp.status_code == 401, name
        assert resp.json() == {"error": "unauthorized", "message": "authentication failed"}, name
    tampered = ci_headers("POST", "/v1/requests", body)
    resp = stack.http.post(url, content=body.replace(b"acme/web", b"acme/wex"), headers=tampered)
    assert resp.status_code == 401
    assert stack.get("/v1/requests/req_01JV7Q4M4T7Z9X4P9G8N2D6R1A", secret="wrong").status_code == 401


def test_reads_receipt_cancel_and_keys(stack: Stack) -> None:
    assert stack.get("/v1/requests/req_01JV7Q4M4T7Z9X4P9G8N2D6R1A").status_code == 404
    assert stack.get("/v1/requests/not-an-id").status_code == 404
    created = stack.create()
    rid = created["requestId"]
    assert stack.get(f"/v1/requests/{rid}", {"wait": 61}).status_code == 422
    pending = stack.get(f"/v1/requests/{rid}/receipt")
    assert (pending.status_code, pending.json()["status"]) == (409, "PENDING")
    req = stack.card(rid)
    cancelled = stack.post(f"/v1/requests/{rid}/cancel", b"")
    assert (cancelled.status_code, cancelled.json()["status"]) == (200, "CANCELLED")
    assert stack.post(f"/v1/requests/{rid}/cancel", b"").status_code == 200  # idempotent
    stack.emulator.wait_for("chat.update", channel="C0DEPLOYS", ts=req["card"]["ts"])
    keys = httpx.get(stack.bot_url + "/v1/keys")
    assert keys.status_code == 200
    assert keys.json()["keys"][0]["kty"] == "OKP"
    assert httpx.get(stack.bot_url + "/nope").json()["error"] == "not_found"
    assert httpx.get(stack.bot_url + "/healthz").status_code == 200
    assert httpx.get(stack.bot_url + "/readyz").json()["status"] == "ready"
    assert "keyturn_requests_created_total" in httpx.get(stack.bot_url + "/metrics").text


def test_long_poll_returns_on_change_not_on_timeout(stack: Stack) -> None:
    req = stack.card(stack.create()["requestId"])
    rid = req["requestId"]
    started = time.monotonic()
    stack.post(f"/v1/requests/{rid}/cancel", b"")
    data = stack.get(f"/v1/requests/{rid}", {"wait": 30, "since": req["version"]}).json()
    assert data["status"] == "CANCELLED"
    assert time.monotonic() - started < 10


def test_branch_with_mass_mention_is_rendered_harmless(stack: Stack) -> None:
    req = stack.card(
        stack.create(ref="feat/<!channel>", title="<@U0DAVE> <!here> <https://evil.example|click>")[
            "requestId"
        ]
    )
    stack.click("U0BOB", req)
    stack.wait_version(req["requestId"], req["version"])
    calls = stack.emulator.calls("chat.postMessage") + stack.emulator.calls("chat.update")
    assert calls
    dumped = json.dumps([c["params"] for c in calls])
    assert "feat/&lt;!channel&gt;" in dumped
    for bad in ("<!channel>", "<!here>", "<@U0DAVE>", "<https://evil"):
        assert bad not in dumped


def test_slack_request_with_bad_signature_is_refused(stack: Stack) -> None:
    req = stack.card(stack.create()["requestId"])
    card = req["card"]
    delivery = stack.emulator.click(
        "U0BOB", card["channel"], card["ts"], "approve", req["requestId"], tamper_signature=True
    )
    assert delivery.status == 401
    stale = stack.emulator.click(
        "U0BOB", card["channel"], card["ts"], "approve", req["requestId"], timestamp=int(time.time()) - 400
    )
    assert stale.status == 401
    assert stack.get(f"/v1/requests/{req['requestId']}").json()["approvalsCount"] == 0


def test_slash_command_with_payload_in_text(stack: Stack) -> None:
    sha = "b" * 40
    delivery = stack.emulator.command(
        "U0ALICE", "C0DEPLOYS", "/keyturn", f"request acme/payload-svc {sha} staging"
    )
    assert delivery.status == 200
    post = stack.emulator.wait_for("chat.postMessage", channel="C0STAGING")
    assert "acme/payload-svc" in json.dumps(post["params"])


def test_slack_429_then_success_still_posts_the_card(stack: Stack) -> None:
    stack.emulator.fault("chat.postMessage", status=429, retry_after=1, times=2)
    req = stack.card(stack.create()["requestId"], timeout=20)
    assert req["card"]["channel"] == "C0DEPLOYS"
    assert req["cardError"] is None


class _Receiver(http.server.BaseHTTPRequestHandler):
    """A CI endpoint that fails its first delivery, then accepts."""

    got: ClassVar[list[tuple[dict[str, str], bytes]]] = []
    arrived = threading.Event()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        type(self).got.append(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(500 if len(type(self).got) == 1 else 204)
        self.end_headers()
        if len(type(self).got) > 1:
            type(self).arrived.set()

    def log_message(self, *args: object) -> None:
        pass


def test_callback_is_signed_retried_and_recorded(stack: Stack) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hooks/keyturn?run=1"
        req = stack.card(stack.create(callbackUrl=url)["requestId"])
        stack.post(f"/v1/requests/{req['requestId']}/cancel", b"")
        assert _Receiver.arrived.wait(15)
    finally:
        server.shutdown()
    headers, body = _Receiver.got[-1]
    assert json.loads(body) == {"requestId": req["requestId"], "status": "CANCELLED"}
    expected = callback_signature(CI_SECRET, "/hooks/keyturn", headers["x-keyturn-timestamp"], body)
    assert headers["x-keyturn-signature"] == expected
    assert len(_Receiver.got) == 2


@pytest.mark.parametrize(
    "url",
    ["http://localhost:9/hook", "http://169.254.169.254/latest/meta-data/", "https://ci.example.com/hook"],
)
def test_callback_to_a_host_outside_the_allowlist_is_422_naming_callback_url(stack: Stack, url: str) -> None:
    resp = stack.post("/v1/requests", json.dumps(request_body(callbackUrl=url)).encode())
    assert resp.status_code == 422, resp.text
    data = resp.json()
    assert data["error"] == "invalid_request"
    [field] = data["fields"]
    assert field["field"] == "callbackUrl"
    assert "KEYTURN_CALLBACK_HOSTS" in field["message"]
    assert stack.emulator.calls("chat.postMessage") == []  # refused before anything was created
