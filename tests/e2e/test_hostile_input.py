"""Hostile input against the running stack (issues 4 and 5): bad input gets a clear 4xx JSON answer naming
what was wrong, never a 5xx or a stack trace; every process stays up; no secret reaches a log or a
response; no untrusted text reaches Slack as markup; the CLIs fail with their documented exit codes and
no traceback.

The attackers modelled: a hostile or buggy CI job (it holds the CI secret, so its requests are signed), a
hostile Slack-side sender (requests signed with the stack's Slack signing secret, as if Slack had relayed
them), and anyone on the network (unsigned requests).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from keyturn.bot.cards import APPROVE_ACTION, DENY_ACTION, DENY_CALLBACK, REASON_ACTION, REASON_BLOCK
from tests.e2e.conftest import BOT_TOKEN, CI_SECRET, SHA, SLACK_SECRET, Stack, ci_headers, request_body
from tests.harness import KEYTURN, free_port, http_ok, start_process

SLACK = "/slack/events"
TEAM = "T0KEYTURN"
SECRETS = {"slack signing secret": SLACK_SECRET, "CI secret": CI_SECRET, "bot token": BOT_TOKEN}
# Markup that would ping, mention or link if it reached Slack unescaped.
MARKUP = ("<!channel>", "<!here>", "<!everyone>", "<@U0EVIL>", "<#C0EVIL>", "<http://evil.example|x>")
HOSTILE_TEXT = " ".join(MARKUP)
# What must never appear in any text Slack receives: the start of each of those sequences.
FORBIDDEN = ("<!channel", "<!here", "<!everyone", "<@U0EVIL", "<#C0EVIL", "<http://evil")


# --- helpers --------------------------------------------------------------------------------------------


def assert_clean_4xx(resp: httpx.Response, code: str | None = None, status: int | None = None) -> None:
    """A 4xx whose JSON body names what was wrong; no trace of Python internals."""
    assert 400 <= resp.status_code < 500, (resp.status_code, resp.text[:500])
    if status is not None:
        assert resp.status_code == status, (resp.status_code, resp.text[:500])
    assert resp.headers.get("content-type", "").startswith("application/json"), resp.headers
    data = resp.json()
    assert isinstance(data, dict), data
    assert isinstance(data.get("error"), str), data
    if code is not None:
        assert data["error"] == code, data
    assert "Traceback" not in resp.text
    assert 'File "' not in resp.text


def assert_bare_401(resp: httpx.Response) -> None:
    """The one authentication failure answer: it says nothing about why."""
    assert resp.status_code == 401, (resp.status_code, resp.text[:300])
    assert resp.json() == {"error": "unauthorized", "message": "authentication failed"}


def assert_up(stack: Stack) -> None:
    """The bot still serves."""
    assert stack.http.get(stack.bot_url + "/healthz").status_code == 200


def slack_sign(body: str, ts: int | None = None) -> dict[str, str]:
    """``X-Slack-*`` headers for ``body``, signed (v0) with the stack's signing secret."""
    stamp = str(int(time.time()) if ts is None else ts)
    sig = hmac.new(SLACK_SECRET.encode(), f"v0:{stamp}:{body}".encode(), hashlib.sha256).hexdigest()
    return {
        "X-Slack-Request-Timestamp": stamp,
        "X-Slack-Signature": f"v0={sig}",
        "Content-Type": "application/x-www-form-urlencoded",
    }


def post_slack(stack: Stack, body: str) -> httpx.Response:
    """A Slack-signed POST to the bot's Slack endpoint."""
    return stack.http.post(stack.bot_url + SLACK, content=body.encode(), headers=slack_sign(body))


def interaction(payload: Any) -> str:
    """An interactivity form body (``payload=<json>``)."""
    return urlencode({"payload": payload if isinstance(payload, str) else json.dumps(payload)})


def block_actions(action: Any, **over: Any) -> dict[str, Any]:
    """A ``block_actions`` payload from U0BOB in the deploy channel, with ``action`` as ``actions[0]``."""
    payload: dict[str, Any] = {
        "type": "block_actions",
        "team": {"id": TEAM, "domain": "acme"},
        "user": {"id": "U0BOB", "username": "bob", "team_id": TEAM},
        "channel": {"id": "C0DEPLOYS", "name": "deploys"},
        "container": {"type": "message", "channel_id": "C0DEPLOYS", "is_ephemeral": False},
        "trigger_id": "1.2.3",
        "actions": [action],
    }
    payload.update(over)
    return payload


def button(action_id: str = APPROVE_ACTION, value: Any = "req_01JV7Q4M4T7Z9X4P9G8N2D6R1A") -> dict[str, Any]:
    """A clicked button."""
    return {"type": "button", "action_id": action_id, "block_id": "kt_decision", "value": value}


def slash(text: str, user: str = "U0ALICE", response_url: str = "") -> str:
    """A ``/keyturn`` slash-command body."""
    return urlencode(
        {
            "token": "legacy",
            "team_id": TEAM,
            "channel_id": "C0DEPLOYS",
            "channel_name": "deploys",
            "user_id": user,
            "user_name": "alice",
            "command": "/keyturn",
            "text": text,
            "response_url": response_url,
            "trigger_id": "1.2.abc",
        }
    )


def slack_texts(obj: Any, out: list[str] | None = None) -> list[str]:
    """Every string under a ``text`` (or ``fallback``/``title``/``placeholder``) member, recursively."""
    out = [] if out is None else out
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key in ("text", "fallback", "pretext") and isinstance(value, str):
                out.append(value)
            elif isinstance(value, str) and key == "blocks":
                try:  # chat.* calls may carry blocks as a JSON string
                    slack_texts(json.loads(value), out)
                except ValueError:
                    out.append(value)
            else:
                slack_texts(value, out)
    elif isinstance(obj, list):
        for item in obj:
            slack_texts(item, out)
    return out


SLACK_WRITES = ("chat.postMessage", "chat.update", "chat.postEphemeral", "views.open", "response_url")


def assert_no_markup_reached_slack(stack: Stack) -> None:
    """No text Slack received (messages, updates, ephemerals, modals, response_url posts) holds our markup."""
    calls = [c for c in stack.emulator.calls() if c["method"] in SLACK_WRITES]
    texts = slack_texts([c["params"] for c in calls])
    for text in texts:
        for bad in FORBIDDEN:
            assert bad not in text, (bad, text[:500])


# --- the CI API: bodies ---------------------------------------------------------------------------------


def _nested(depth: int) -> bytes:
    return b'{"repo":' + b"[" * depth + b"]" * depth + b"}"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        pytest.param(b"not json", 400, "malformed_body", id="not-json"),
        pytest.param(b"", 400, "malformed_body", id="empty"),
        pytest.param(b"[]", 400, "malformed_body", id="array"),
        pytest.param(b"42", 400, "malformed_body", id="number"),
        pytest.param(b"null", 400, "malformed_body", id="null"),
        pytest.param(b'"a string"', 400, "malformed_body", id="string"),
        pytest.param(b"[" * 30_000, 400, "malformed_body", id="deep-array"),
        pytest.param(_nested(20_000), 400, "malformed_body", id="deep-member"),
        pytest.param(b'{"a":' * 10_000 + b"1" + b"}" * 10_000, 400, "malformed_body", id="deep-object"),
        pytest.param(b'{"repo":1' + b"0" * 5000 + b"}", 400, "malformed_body", id="huge-integer"),
        pytest.param(b'{"repo":1e999999}', 422, "invalid_request", id="huge-float"),
        pytest.param(b'{"repo":NaN}', 422, "invalid_request", id="nan"),
        pytest.param(b'{"repo":"a/b"\x00}', 400, "malformed_body", id="raw-nul"),
        pytest.param(b'{"repo":"\xff\xfe"}', 400, "malformed_body", id="invalid-utf8"),
        pytest.param(b"\xef\xbb\xbf{}", 400, "malformed_body", id="utf8-bom"),
        pytest.param('{"repo":"a/b"}'.encode("utf-16"), 400, "malformed_body", id="utf16"),
        pytest.param(b'{"repo":"a/b","repo":"c/d"}', 400, "malformed_body", id="duplicate-key"),
    ],
)
def test_malformed_create_bodies_are_4xx(stack: Stack, body: bytes, status: int, code: str) -> None:
    resp = stack.post("/v1/requests", body)
    assert_clean_4xx(resp, code, status)
    assert_up(stack)


@pytest.mark.parametrize(
    ("over", "fields"),
    [
        pytest.param({"repo": 1.5, "sha": 7, "environment": None}, {"repo", "sha"}, id="wrong-types"),
        pytest.param({"repo": ["acme/web"], "workflow": {"a": 1}}, {"repo", "workflow"}, id="containers"),
        pytest.param({"repo": "acme/we\u0000b"}, {"repo"}, id="nul-in-repo"),
        pytest.param({"requester": "github:al\u0000ice"}, {"requester"}, id="nul-in-requester"),
        pytest.param({"sha": SHA.upper()}, {"sha"}, id="uppercase-sha"),
        pytest.param({"environment": "../../etc"}, {"environment"}, id="traversal-env"),
        pytest.param({"callbackUrl": "file:///etc/passwd"}, {"callbackUrl"}, id="file-callback"),
        pytest.param({"requester": "x" * 10_000}, {"requester"}, id="long-requester"),
        pytest.param({"admin": True, "status": "APPROVED"}, {"admin", "status"}, id="extra-fields"),
    ],
)
def test_invalid_create_fields_are_422_naming_each_field(
    stack: Stack, over: dict[str, Any], fields: set[str]
) -> None:
    body = json.dumps({**request_body(), **over}).encode()
    resp = stack.post("/v1/requests", body)
    assert_clean_4xx(resp, "invalid_request", 422)
    assert fields <= {f["field"] for f in resp.json()["fields"]}
    assert_up(stack)


@pytest.mark.parametrize("field", ["requester", "title", "ref", "workflow"])
def test_lone_surrogate_escapes_are_malformed_json_text(stack: Stack, field: str) -> None:
    """Valid JSON syntax, but ``\\ud800`` alone is no Unicode text: a 4xx (naming the field where it can be
    named), never a 500 when the request would be stored or shown."""
    body = json.dumps(request_body(**{field: "a\ud800b"})).encode()
    assert b"\\ud800" in body
    resp = stack.post("/v1/requests", body)
    if resp.status_code == 422:
        assert_clean_4xx(resp, "invalid_request")
        assert [f["field"] for f in resp.json()["fields"]] == [field]
    else:
        assert_clean_4xx(resp, "malformed_body", 400)
    assert_up(stack)


def test_any_content_type_is_parsed_as_json(stack: Stack) -> None:
    """The documented curl recipe sends a form content type: the body is read as JSON all the same."""
    url = stack.bot_url + "/v1/requests"
    garbage = b"repo=acme/web&sha=" + SHA.encode()
    for ctype in ("application/x-www-form-urlencoded", "text/plain", "multipart/form-data; boundary=x"):
        headers = ci_headers("POST", "/v1/requests", garbage) | {"Content-Type": ctype}
        assert_clean_4xx(stack.http.post(url, content=garbage, headers=headers), "malformed_body", 400)
    body = json.dumps(request_body()).encode()
    headers = ci_headers("POST", "/v1/requests", body) | {"Content-Type": "text/plain"}
    assert stack.http.post(url, content=body, headers=headers).status_code == 202


def test_chunked_bodies_over_the_cap_are_413_without_content_length(stack: Stack) -> None:
    sent = 0

    def chunks() -> Iterator[bytes]:
        nonlocal sent
        for _ in range(64):  # 4 MiB offered; the bot must stop reading long before
            sent += 1
            yield b" " * 65_536

    headers = ci_headers("POST", "/v1/requests", b"")
    resp = stack.http.post(stack.bot_url + "/v1/requests", content=chunks(), headers=headers)
    assert "content-length" not in resp.request.headers
    assert_clean_4xx(resp, "body_too_large", 413)
    rid = stack.create()["requestId"]
    resp = stack.http.post(stack.bot_url + f"/v1/requests/{rid}/cancel", content=chunks(), headers=headers)
    assert_clean_4xx(resp, "body_too_large", 413)
    assert_up(stack)


def test_slack_endpoint_stops_reading_a_huge_chunked_body(stack: Stack) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(256):  # 16 MiB offered
            yield b"a" * 65_536

    resp = stack.http.post(stack.bot_url + SLACK, content=chunks(), headers=slack_sign(""))
    assert resp.status_code == 413, resp.text[:300]
    assert resp.json()["error"]
    assert_up(stack)


@pytest.mark.parametrize("declared", ["abc", "-1", "1" * 30])
def test_bad_content_length_is_refused(stack: Stack, declared: str) -> None:
    resp = _raw_http(
        stack,
        f"POST /v1/requests HTTP/1.1\r\nHost: x\r\nContent-Length: {declared}\r\n"
        "Connection: close\r\n\r\n{}".encode(),
    )
    assert resp.startswith(b"HTTP/1.1 4"), resp[:200]
    assert_up(stack)


def _raw_http(stack: Stack, request: bytes) -> bytes:
    """Send raw bytes to the bot and return everything it answers (headers and body)."""
    host, port = stack.bot_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


# --- the CI API: headers ----------------------------------------------------------------------------------


def _signed_create(stack: Stack) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(request_body()).encode()
    return body, ci_headers("POST", "/v1/requests", body)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"X-Keyturn-Timestamp": None, "X-Keyturn-Signature": None}, id="no-headers"),
        pytest.param({"X-Keyturn-Timestamp": None}, id="no-timestamp"),
        pytest.param({"X-Keyturn-Signature": None}, id="no-signature"),
        pytest.param({"X-Keyturn-Timestamp": "abc"}, id="ts-not-numeric"),
        pytest.param({"X-Keyturn-Timestamp": "-1700000000"}, id="ts-negative"),
        pytest.param({"X-Keyturn-Timestamp": "+1700000000"}, id="ts-plus"),
        pytest.param({"X-Keyturn-Timestamp": "1" * 31}, id="ts-huge"),
        pytest.param({"X-Keyturn-Timestamp": "9" * 5000}, id="ts-5000-digits"),
        pytest.param({"X-Keyturn-Timestamp": "1.7e9"}, id="ts-float"),
        pytest.param({"X-Keyturn-Timestamp": "0"}, id="ts-zero"),
        pytest.param({"X-Keyturn-Signature": "v1=" + "zz" * 32}, id="sig-not-hex"),
        pytest.param({"X-Keyturn-Signature": "v1="}, id="sig-empty-hex"),
        pytest.param({"X-Keyturn-Signature": "v0=" + "ab" * 32}, id="sig-wrong-scheme"),
        pytest.param({"X-Keyturn-Signature": "v1=" + "ab" * 5000}, id="sig-long"),
        pytest.param({"X-Keyturn-Signature": "garbage"}, id="sig-garbage"),
    ],
)
def test_bad_auth_headers_get_a_bare_401(stack: Stack, change: dict[str, str | None]) -> None:
    body, headers = _signed_create(stack)
    for name, value in change.items():
        if value is None:
            headers.pop(name)
        else:
            headers[name] = value
    assert_bare_401(stack.http.post(stack.bot_url + "/v1/requests", content=body, headers=headers))
    assert_up(stack)


def test_timestamp_of_the_signature_must_be_the_header_value(stack: Stack) -> None:
    """A signature made for ``0123`` does not pass as ``123`` (no numeric normalisation of the timestamp)."""
    body = json.dumps(request_body()).encode()
    ts = int(time.time())
    headers = ci_headers("POST", "/v1/requests", body, ts=ts)
    headers["X-Keyturn-Timestamp"] = "0" + str(ts)
    assert_bare_401(stack.http.post(stack.bot_url + "/v1/requests", content=body, headers=headers))


def test_very_long_and_non_ascii_header_values(stack: Stack) -> None:
    body, headers = _signed_create(stack)
    headers["X-Keyturn-Signature"] = "v1=" + "a" * 60_000
    resp = stack.http.post(stack.bot_url + "/v1/requests", content=body, headers=headers)
    assert 400 <= resp.status_code < 500, resp.status_code
    raw = (
        b"GET /v1/requests/req_01JV7Q4M4T7Z9X4P9G8N2D6R1A HTTP/1.1\r\nHost: x\r\n"
        b"X-Keyturn-Timestamp: \xff\xfe\r\nX-Keyturn-Signature: v1=\xc3\xa9\r\nConnection: close\r\n\r\n"
    )
    answer = _raw_http(stack, raw)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert_up(stack)


# --- the CI API: paths, methods and parameters -------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/nope", 404, "not_found"),
        ("GET", "/v1", 404, "not_found"),
        ("GET", "/v1/requests/..%2F..", 404, None),
        ("GET", "/v1/requests/..%2F..%2Fhealthz", 404, None),
        ("GET", "/v1/requests/%2e%2e/receipt", 404, None),
        ("GET", "/v1/requests/req_01jv7q4m4t7z9x4p9g8n2d6r1a", 404, "unknown_request"),
        ("GET", "/v1/requests/req_01JV7Q4M4T7Z9X4P9G8N2D6R1", 404, "unknown_request"),
        ("GET", "/v1/requests/req_01JV7Q4M4T7Z9X4P9G8N2D6R1A%0A", 404, "unknown_request"),
        ("GET", "/v1/requests/req_01JV7Q4M4T7Z9X4P9G8N2D6RIL", 404, "unknown_request"),
        ("GET", "/v1/requests/%00", 404, "unknown_request"),
        ("GET", "/v1/requests/" + "A" * 8000, 404, "unknown_request"),
        ("POST", "/v1/requests/req_%F0%9F%92%A5/cancel", 404, "unknown_request"),
        ("DELETE", "/v1/requests", 405, "method_not_allowed"),
        ("PUT", "/v1/requests/req_01JV7Q4M4T7Z9X4P9G8N2D6R1A", 405, "method_not_allowed"),
        ("GET", "/v1/requests/req_01JV7Q4M4T7Z9X4P9G8N2D6R1A/cancel", 405, "method_not_allowed"),
        ("POST", "/v1/keys", 405, "method_not_allowed"),
        ("POST", "/healthz", 405, "method_not_allowed"),
        ("GET", SLACK, 405, None),
        ("PATCH", SLACK, 405, None),
        ("OPTIONS", "/v1/requests", 405, "method_not_allowed"),
        ("TRACE", "/healthz", 405, "method_not_allowed"),
    ],
)
def test_unknown_paths_methods_and_ids_are_json_4xx(
    stack: Stack, method: str, path: str, status: int, code: str | None
) -> None:
    resp = stack.http.request(method, stack.bot_url + path, headers=ci_headers(method, path, b""))
    assert_clean_4xx(resp, code, status)
    assert_up(stack)


def test_a_well_formed_unknown_id_is_404_only_when_authenticated(stack: Stack) -> None:
    path = "/v1/requests/req_01JV7Q4M4T7Z9X4P9G8N2D6R1A"
    assert_clean_4xx(stack.get(path), "unknown_request", 404)
    assert_bare_401(stack.http.get(stack.bot_url + path))


@pytest.mark.parametrize(
    "params",
    [
        {"wait": "abc"},
        {"wait": "-1"},
        {"wait": "61"},
        {"wait": "1" * 5000},
        {"wait": "1.5"},
        {"wait": "1e3"},
        {"wait": "0x10"},
        {"wait": "\u0000"},
        {"since": "-5"},
        {"since": "9" * 40},
        {"wait": "5", "since": "nope"},
    ],
)
def test_bad_wait_and_since_are_422(stack: Stack, params: dict[str, str]) -> None:
    rid = stack.create()["requestId"]
    started = time.monotonic()
    resp = stack.get(f"/v1/requests/{rid}", params)
    assert_clean_4xx(resp, "invalid_parameter", 422)
    assert {f["field"] for f in resp.json()["fields"]} <= {"wait", "since"}
    assert time.monotonic() - started < 5  # refused, not waited on


def test_repeated_query_parameters_do_not_confuse_the_wait(stack: Stack) -> None:
    rid = stack.create()["requestId"]
    resp = stack.http.get(
        stack.bot_url + f"/v1/requests/{rid}?wait=abc&wait=0",
        headers=ci_headers("GET", f"/v1/requests/{rid}", b""),
    )
    assert resp.status_code in (200, 422), resp.text
    if resp.status_code == 422:
        assert_clean_4xx(resp, "invalid_parameter")


# --- the Slack endpoint -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param("", id="empty"),
        pytest.param("foo=bar&baz=1", id="form-without-payload"),
        pytest.param("payload=", id="payload-empty"),
        pytest.param("payload=not%20json", id="payload-not-json"),
        pytest.param("payload=%7B", id="payload-truncated-json"),
        pytest.param(interaction([1, 2]), id="payload-array"),
        pytest.param(interaction(7), id="payload-number"),
        pytest.param(interaction("null"), id="payload-null"),
        pytest.param(interaction('"s"'), id="payload-string"),
        pytest.param(interaction("[" * 5000), id="payload-deep"),
        pytest.param(interaction({"type": "block_actions"}), id="actions-missing"),
        pytest.param(interaction(block_actions(None) | {"actions": "x"}), id="actions-string"),
        pytest.param(interaction(block_actions(None) | {"actions": []}), id="actions-empty"),
        pytest.param(interaction(block_actions(None) | {"actions": [1]}), id="action-number"),
        pytest.param(interaction(block_actions("approve")), id="action-string"),
        pytest.param(interaction(block_actions({"action_id": 5})), id="action-id-number"),
        pytest.param(interaction(block_actions({"action_id": None})), id="action-id-null"),
        pytest.param(interaction(block_actions(button("self_destruct"))), id="unknown-action"),
        pytest.param(interaction(block_actions(button(value="../../etc"))), id="value-not-an-id"),
        pytest.param(interaction(block_actions(button(value=None))), id="value-null"),
        pytest.param(interaction(block_actions(button(value={"a": 1}))), id="value-object"),
        pytest.param(interaction(block_actions(button(value="x" * 100_000))), id="value-huge"),
        pytest.param(interaction(block_actions(button(value=HOSTILE_TEXT))), id="value-markup"),
        pytest.param(interaction(block_actions(button(DENY_ACTION, value=HOSTILE_TEXT))), id="deny-markup"),
        pytest.param(interaction(block_actions(button(), user="U0BOB")), id="user-string"),
        pytest.param(interaction(block_actions(button(), user={"id": 7})), id="user-id-number"),
        pytest.param(interaction(block_actions(button(), user=None)), id="user-null"),
        pytest.param(interaction(block_actions(button(), team="T0KEYTURN")), id="team-string"),
        pytest.param(interaction(block_actions(button(), team=None)), id="team-null"),
        pytest.param(interaction(block_actions(button(), channel="C0DEPLOYS")), id="channel-string"),
        pytest.param(interaction(block_actions(button(), container=[1])), id="container-list"),
        pytest.param(interaction(block_actions(button(DENY_ACTION), trigger_id={"x": 1})), id="trigger-obj"),
        pytest.param(interaction(block_actions(button(), type=["block_actions"])), id="type-list"),
        pytest.param(interaction({"type": "view_submission", "team": {"id": TEAM}}), id="view-missing"),
        pytest.param(
            interaction({"type": "view_submission", "team": {"id": TEAM}, "view": "deny_reason"}),
            id="view-string",
        ),
        pytest.param(
            interaction(
                {"type": "view_submission", "team": {"id": TEAM}, "view": {"callback_id": DENY_CALLBACK}}
            ),
            id="view-without-state",
        ),
        pytest.param(
            interaction(
                {
                    "type": "view_submission",
                    "team": {"id": TEAM},
                    "user": {"id": "U0BOB"},
                    "view": {
                        "callback_id": DENY_CALLBACK,
                        "private_metadata": HOSTILE_TEXT,
                        "state": {"values": {REASON_BLOCK: {REASON_ACTION: {"value": HOSTILE_TEXT}}}},
                    },
                }
            ),
            id="view-bad-metadata",
        ),
        pytest.param(
            interaction(
                {
                    "type": "view_submission",
                    "team": {"id": TEAM},
                    "view": {
                        "callback_id": DENY_CALLBACK,
                        "state": {"values": {REASON_BLOCK: {REASON_ACTION: "not a dict"}}},
                    },
                }
            ),
            id="view-state-wrong-shape",
        ),
        pytest.param(
            interaction(
                {
                    "type": "view_submission",
                    "team": {"id": TEAM},
                    "view": {"callback_id": DENY_CALLBACK, "state": {"values": [1, 2]}},
                }
            ),
            id="view-values-list",
        ),
        pytest.param(
            interaction({"type": "shortcut", "callback_id": "x", "team": {"id": TEAM}}), id="shortcut"
        ),
        pytest.param(interaction({"type": "event_callback", "event": "x"}), id="event-string"),
        pytest.param(
            interaction({"type": "event_callback", "event": {"type": "message", "message": "x"}}),
            id="event-message-string",
        ),
        pytest.param('{"type":"block_actions","actions":[1]}', id="raw-json-body"),
        pytest.param("[1,2,3]", id="raw-json-array"),
        pytest.param('{"type":"url_verification","challenge":"x"}', id="url-verification"),
        pytest.param("ssl_check=1&token=x", id="ssl-check"),
        pytest.param("command=%2Fother&text=hi&team_id=" + TEAM, id="other-command"),
        pytest.param("command=%2Fkeyturn&text=help&team_id=T0OTHER&user_id=U0ALICE", id="other-team"),
        pytest.param("command=%2Fkeyturn&command=%2Fkeyturn&text=help", id="repeated-fields"),
        pytest.param("%%%=%%%&payload", id="bad-percent"),
    ],
)
def test_signed_slack_garbage_never_gets_a_5xx(stack: Stack, body: str) -> None:
    resp = post_slack(stack, body)
    assert resp.status_code < 500, (resp.status_code, resp.text[:300])
    if resp.status_code >= 400:
        assert "Traceback" not in resp.text
        if resp.content:
            assert isinstance(resp.json(), dict)
    assert_up(stack)


def test_garbage_clicks_leave_no_trace_and_no_markup(stack: Stack) -> None:
    """After a round of malformed clicks and submissions, nothing changed and Slack got no markup."""
    rid = stack.card(stack.create()["requestId"])["requestId"]
    bodies = [
        interaction(block_actions(button(value=rid), user={"id": HOSTILE_TEXT})),
        interaction(block_actions(button(value=rid), user={"id": "U0MALLORY"}, channel={"id": HOSTILE_TEXT})),
        interaction(block_actions(button(DENY_ACTION, value=rid), trigger_id=HOSTILE_TEXT)),
        interaction(block_actions(button(value=HOSTILE_TEXT))),
    ]
    for body in bodies:
        assert post_slack(stack, body).status_code < 500
    data = stack.get(f"/v1/requests/{rid}").json()
    assert data["status"] == "PENDING"
    assert data["approvalsCount"] == 0
    assert_no_markup_reached_slack(stack)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(HOSTILE_TEXT, id="markup"),
        pytest.param("status " + HOSTILE_TEXT, id="status-markup"),
        pytest.param("status <!channel>", id="status-channel"),
        pytest.param(f"request acme/<!channel> {SHA} production", id="request-markup-repo"),
        pytest.param(f"request acme/web {SHA} <!here> <@U0EVIL>", id="request-markup-env"),
        pytest.param(f"request acme/web {SHA} production <http://evil.example|x>", id="request-markup-wf"),
        pytest.param(f"request acme/web {SHA} moon", id="request-unknown-env"),
        pytest.param("request " + "a/" + "b" * 300 + f" {SHA} production", id="request-long-repo"),
        pytest.param("pending <!everyone>", id="pending-extra"),
        pytest.param("🚀 déploie ✓ \u202e\u0000 <#C0EVIL>", id="unicode"),
        pytest.param("x" * 10_000 + " <!channel>", id="10k"),
        pytest.param("help " * 2000, id="many-words"),
    ],
)
def test_slash_commands_with_weird_text(stack: Stack, text: str) -> None:
    emu = stack.emulator.api_url.removesuffix("/api/").removesuffix("/api")
    body = slash(text, response_url=f"{emu}/_emulator/response/hostile")
    resp = post_slack(stack, body)
    assert resp.status_code == 200, (resp.status_code, resp.text[:300])
    for bad in FORBIDDEN:
        assert bad not in resp.text
    if text.startswith(("status", "request", "pending")):
        # Work after the ack answers through response_url; wait for it when the command was understood.
        with_reply = resp.text == ""
        if with_reply:
            stack.emulator.wait_for("response_url", timeout=10)
    assert_no_markup_reached_slack(stack)
    assert_up(stack)


def test_untrusted_text_never_reaches_slack_as_markup_through_a_whole_flow(stack: Stack) -> None:
    """Hostile CI fields, a hostile deny reason and hostile command text through post, update, DM, modal."""
    req = stack.card(
        stack.create(
            ref="feat/" + HOSTILE_TEXT[:200],
            title=HOSTILE_TEXT,
            runUrl="https://ci.example/run/1?a=1&b=*x*",
            requester="alice@example.com",
        )["requestId"]
    )
    rid = req["requestId"]
    since = len(stack.emulator.calls())
    stack.click("U0BOB", req, action="deny")
    view = stack.emulator.wait_for("views.open", since=since)["response"]["view"]
    stack.emulator.submit_view("U0BOB", view["id"], {REASON_BLOCK: {REASON_ACTION: HOSTILE_TEXT}})
    stack.wait_status(rid, "DENIED")
    stack.emulator.command("U0BOB", "C0DEPLOYS", "/keyturn", f"status {rid}")
    stack.emulator.wait_for("response_url", timeout=10)
    assert_no_markup_reached_slack(stack)


# --- secrets --------------------------------------------------------------------------------------------


def test_no_secret_in_any_log_or_error_response(stack: Stack) -> None:
    answers: list[str] = []
    # A full approval flow.
    req = stack.card(stack.create()["requestId"])
    stack.click("U0BOB", req)
    stack.click("U0CAROL", req)
    stack.wait_status(req["requestId"], "APPROVED")
    answers.append(stack.get(f"/v1/requests/{req['requestId']}/receipt").text)
    # Error paths: every refusal a client can provoke.
    body = json.dumps(request_body()).encode()
    bad = ci_headers("POST", "/v1/requests", body, secret="wrong")
    answers.append(stack.http.post(stack.bot_url + "/v1/requests", content=body, headers=bad).text)
    answers.append(stack.post("/v1/requests", b"{").text)
    answers.append(stack.post("/v1/requests", json.dumps(request_body(sha="x")).encode()).text)
    answers.append(post_slack(stack, "payload=%7B").text)
    answers.append(stack.http.post(stack.bot_url + SLACK, content=b"x", headers=slack_sign("y")).text)
    answers.append(stack.http.get(stack.bot_url + "/readyz").text)
    answers.append(stack.http.get(stack.bot_url + "/metrics").text)
    for delivery in stack.emulator.deliveries():
        answers.append(json.dumps(delivery.get("response")))
    answers.append(json.dumps(stack.emulator.calls()))
    logs = stack.logs()
    for what, secret in SECRETS.items():
        assert secret not in logs, f"the {what} is in a process log"
        for text in answers:
            assert secret not in text, f"the {what} is in a response"


def test_no_secret_in_a_debug_level_bot_log(stack: Stack, tmp_path: Path) -> None:
    """A second bot at DEBUG (Bolt, slack_sdk, uvicorn access log all verbose) serves a whole approval: its
    log holds no secret either. The signer logs at one fixed level, covered by the test above."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    bot = start_process(
        "bot-debug",
        [*KEYTURN, "bot"],
        tmp_path / "logs",
        env={
            "KEYTURN_REDIS_URL": stack.redis.url,
            "KEYTURN_SIGNER_SOCKET": str(stack.workdir / "signer.sock"),
            "KEYTURN_POLICY": str(stack.workdir / "keyturn.toml"),
            "KEYTURN_SLACK_BOT_TOKEN": BOT_TOKEN,
            "KEYTURN_SLACK_API_URL": stack.emulator.api_url,
            "KEYTURN_HOST": "127.0.0.1",
            "KEYTURN_PORT": str(port),
            "KEYTURN_PUBLIC_URL": url,
            "KEYTURN_LOG_LEVEL": "DEBUG",
        },
        ready=http_ok(f"{url}/readyz"),
        cwd=tmp_path,
    )
    try:
        stack.emulator.set_bot_url(f"{url}/slack/events")
        body = json.dumps(request_body(environment="staging")).encode()
        resp = stack.http.post(
            url + "/v1/requests", content=body, headers=ci_headers("POST", "/v1/requests", body)
        )
        assert resp.status_code == 202, resp.text
        req = stack.card(resp.json()["requestId"])
        stack.click("U0BOB", req)
        stack.wait_status(req["requestId"], "APPROVED")
        post_slack(stack, "payload=%7B")  # an error path, at DEBUG
    finally:
        bot.stop()
    log = bot.log()
    assert "DEBUG" in log  # the level took effect
    for what, secret in SECRETS.items():
        assert secret not in log, f"the {what} is in the DEBUG bot log"


# --- the CLIs -------------------------------------------------------------------------------------------


def _keyturn(argv: list[str], timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("KEYTURN_")} | env
    return subprocess.run(
        [*KEYTURN, *argv], capture_output=True, text=True, timeout=timeout, check=False, env=full_env
    )


def _verify_argv(receipt: str, keys: str) -> list[str]:
    return [
        "verify", receipt, "--keys", keys, "--repo", "acme/web", "--sha", SHA, "--env", "production",
        "--workflow", "deploy.yml",
    ]  # fmt: skip


def _garbage_files(root: Path) -> dict[str, str]:
    root.mkdir(parents=True, exist_ok=True)
    files = {
        "missing": root / "missing.json",
        "directory": root / "dir",
        "empty": root / "empty.json",
        "binary": root / "binary.json",
        "not-json": root / "text.json",
        "json-array": root / "array.json",
        "deep": root / "deep.json",
        "huge-int": root / "int.json",
        "big": root / "big.json",
    }
    files["directory"].mkdir(exist_ok=True)
    files["empty"].write_bytes(b"")
    files["binary"].write_bytes(bytes(range(256)) * 4)
    files["not-json"].write_text("hello")
    files["json-array"].write_text("[1,2,3]")
    files["deep"].write_text("[" * 50_000)
    files["huge-int"].write_text('{"keys":[' + "1" * 6000 + "]}")
    files["big"].write_bytes(b" " * (2 * 1024 * 1024))
    if os.geteuid() != 0:  # root reads a mode-000 file anyway
        files["unreadable"] = root / "unreadable.json"
        files["unreadable"].write_text("{}")
        files["unreadable"].chmod(0)
    return {name: str(p) for name, p in files.items()}


def test_verify_cli_refuses_garbage_inputs_without_a_traceback(stack: Stack, tmp_path: Path) -> None:
    garbage = _garbage_files(tmp_path / "g")
    keys = str(stack.keys_file)
    receipt = tmp_path / "receipt.json"
    receipt.write_text("{}")
    cases = [_verify_argv(g, keys) for g in garbage.values()]
    cases += [_verify_argv(str(receipt), g) for g in garbage.values()]
    cases += [_verify_argv("/dev/zero", keys), _verify_argv(str(receipt), "/dev/zero")]
    for argv in cases:
        done = _keyturn(argv)
        assert done.returncode == 1, (argv, done.returncode, done.stderr)
        assert done.stderr.startswith("REJECTED "), (argv, done.stderr)
        assert "Traceback" not in done.stderr, done.stderr


def _request_argv(stack: Stack, *extra: str) -> list[str]:
    return [
        "request", "--url", stack.bot_url, "--repo", "acme/web", "--sha", SHA, "--env", "production",
        "--workflow", "deploy.yml", "--requester", "github:alice", *extra,
    ]  # fmt: skip


def test_request_cli_refuses_garbage_keysets_without_a_traceback(stack: Stack, tmp_path: Path) -> None:
    garbage = _garbage_files(tmp_path / "g")
    for name, path in garbage.items():
        done = _keyturn(_request_argv(stack, "--wait", "--keys", path), KEYTURN_CI_SECRET=CI_SECRET)
        assert done.returncode == 2, (name, done.returncode, done.stderr)
        assert "Traceback" not in done.stderr, done.stderr
    # Garbage from the bot side of the conversation: a bot URL that is not a bot.
    for url in ("http://127.0.0.1:1", "http://[::1", "http://127.0.0.1:notaport"):
        argv = _request_argv(stack)
        argv[argv.index("--url") + 1] = url
        done = _keyturn(argv, KEYTURN_CI_SECRET=CI_SECRET)
        assert done.returncode in (2, 3), (url, done.returncode, done.stderr)
        assert "Traceback" not in done.stderr, done.stderr


class _HangingServer:
    """A TCP server that accepts connections and then says nothing (or trickles bytes), forever."""

    def __init__(self, trickle: bool = False) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.trickle = trickle
        self.stop = threading.Event()
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.conns.append(conn)
            if self.trickle:
                threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        try:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
            while not self.stop.wait(0.5):
                conn.sendall(b" ")
        except OSError:
            return

    def close(self) -> None:
        self.stop.set()
        for c in self.conns:
            c.close()
        self.sock.close()


def test_hanging_keyset_urls_end_in_bounded_time(stack: Stack, tmp_path: Path) -> None:
    """A keyset server that never answers, and one that trickles a byte every half second (each read is
    within any socket timeout): both CLIs give up within their 10 s fetch deadline. Run side by side."""
    servers = [_HangingServer(trickle=False), _HangingServer(trickle=True)]
    receipt = tmp_path / "receipt.json"
    receipt.write_text("{}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYTURN_")}
    procs: list[tuple[str, subprocess.Popen[str]]] = []
    try:
        started = time.monotonic()
        for server in servers:
            url = f"http://127.0.0.1:{server.port}/keys"
            for name, argv in (
                ("verify", _verify_argv(str(receipt), url)),
                ("request", _request_argv(stack, "--wait", "--keys", url)),
            ):
                proc = subprocess.Popen(
                    [*KEYTURN, *argv],
                    stderr=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    text=True,
                    env=env | {"KEYTURN_CI_SECRET": CI_SECRET},
                )
                procs.append((name, proc))
        results = [(name, *p.communicate(timeout=40), p.returncode) for name, p in procs]
        elapsed = time.monotonic() - started
    finally:
        for _, p in procs:
            if p.poll() is None:
                p.kill()
        for server in servers:
            server.close()
    for name, _, err, code in results:
        assert "Traceback" not in err
        if name == "verify":
            assert code == 1, err
            assert err.startswith("REJECTED keyset_unavailable"), err
        else:
            assert code == 3, err
            assert "keyset_unavailable" in err, err  # the one gate's code, as verify says it
    assert elapsed < 25
    # Nothing was asked of the approvers: the keyset is checked before the request is made.
    assert not stack.emulator.calls("chat.postMessage")


# --- the emulator (a product feature: `keyturn emulator`, `keyturn dev`) -----------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/api/chat.postMessage",
        "/api/views.open",
        "/_emulator/click",
        "/_emulator/command",
        "/_emulator/faults",
        "/_emulator/response/x",
    ],
)
def test_emulator_answers_deep_json_without_a_500(stack: Stack, path: str) -> None:
    base = stack.emulator.api_url.removesuffix("/").removesuffix("/api")
    auth = {"Authorization": f"Bearer {BOT_TOKEN}"}
    deep = "[" * 5000
    resp = stack.http.post(base + path, content=deep, headers=auth | {"Content-Type": "application/json"})
    assert resp.status_code < 500, resp.text[:300]
    if path.startswith("/api/"):  # a JSON-valued parameter nested too deep is Slack's "not valid JSON"
        form = {"channel": "C0DEPLOYS", "trigger_id": "1.2.3", "blocks": deep, "view": deep}
        resp = stack.http.post(base + path, data=form, headers=auth)
        assert resp.status_code == 200, resp.text[:300]
        assert resp.json()["ok"] is False
    assert stack.emulator.state()["channels"]
