"""The signer socket under hostile or broken clients (issue 4): every bad frame gets an error code or a clean
close, nothing blocks other clients, and a valid ``health`` right after still succeeds.

Runs against one real ``keyturn signer`` process per module. Complements ``test_service.py`` (which covers
schema-level refusals) with the framing layer: truncation, lying length prefixes, silence, floods, text that
is JSON but not Unicode, numbers no parser should have to hold, and base64 that is almost base64.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyturn.signer import wire
from tests.harness import Proc
from tests.signer.conftest import HEALTH, RawConn, SignerFiles

Signer = tuple[SignerFiles, Proc]


@pytest.fixture
def conn(running_signer: Signer) -> Iterator[RawConn]:
    c = RawConn(running_signer[0].socket)
    yield c
    c.close()


def assert_healthy(signer: Signer) -> None:
    """A fresh client gets a valid ``health`` reply at once, and the process is alive."""
    fresh = RawConn(signer[0].socket, timeout=2.0)
    try:
        reply = fresh.ask(HEALTH)
    finally:
        fresh.close()
    assert reply["ok"] is True
    assert reply["id"] == "h"
    assert signer[1].alive()


def assert_error(reply: dict[str, Any], code: str) -> None:
    """A well-formed protocol error with ``code`` and a short message free of Python internals."""
    assert reply["v"] == 1
    assert reply["ok"] is False
    assert reply["error"]["code"] == code, reply
    message = reply["error"]["message"]
    assert len(message) <= 500, len(message)
    assert "Traceback" not in message


def assert_closed(c: RawConn) -> None:
    """The signer closed the connection (EOF) without sending anything more."""
    assert c.sock.recv(1) == b""


# --- framing ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "junk",
    [
        pytest.param(b"\x00", id="one-header-byte"),
        pytest.param(b"\x00\x00\x00", id="three-header-bytes"),
        pytest.param(b"\x00\x00\x00\x20", id="header-only"),
        pytest.param(b"\x00\x00\x00\x20" + HEALTH[:10], id="body-cut-short"),
        pytest.param(b"\x00\x01\x00\x00" + b"{" * 1000, id="prefix-64k-body-1k"),
        pytest.param(b"\x00\x0f\xff\xff" + b"[" * 100_000, id="prefix-1mib-body-100k"),
    ],
)
def test_truncated_frames_then_close_are_clean(running_signer: Signer, junk: bytes) -> None:
    c = RawConn(running_signer[0].socket)
    c.sock.sendall(junk)
    c.sock.shutdown(socket.SHUT_WR)  # the client is done: the frame will never be completed
    try:
        assert_closed(c)  # no reply to half a frame, and no hang: the signer closes its side too
    finally:
        c.close()
    assert_healthy(running_signer)


def test_zero_length_frame_is_bad_frame_and_the_connection_keeps_serving(conn: RawConn) -> None:
    assert_error(conn.ask(b""), "bad_frame")
    assert conn.ask(HEALTH)["ok"] is True


@pytest.mark.parametrize("size", [wire.MAX_FRAME + 1, 2**31, 2**32 - 1], ids=["max-plus-one", "2GiB", "4GiB"])
def test_huge_length_prefix_is_refused_without_reading_then_closed(
    running_signer: Signer, conn: RawConn, size: int
) -> None:
    started = time.monotonic()
    conn.sock.sendall(size.to_bytes(4, "big") + b"{}")
    reply = conn.recv()
    assert reply is not None
    assert_error(reply, "frame_too_large")
    assert reply["id"] == ""
    assert conn.recv() is None  # then it hangs up: the stream cannot be resynchronised
    assert time.monotonic() - started < 2  # it never waited for (or allocated) the announced bytes
    assert_healthy(running_signer)


def test_frame_of_exactly_the_maximum_size_is_read_and_refused_on_content(conn: RawConn) -> None:
    head = b'{"v":1,"id":"big","op":"health","pad":"'
    payload = head + b"x" * (wire.MAX_FRAME - len(head) - 2) + b'"}'
    assert len(payload) == wire.MAX_FRAME
    assert_error(conn.ask(payload), "bad_request")
    assert conn.ask(HEALTH)["ok"] is True


# --- silence, floods and slow readers -----------------------------------------------------------------------


def test_silent_and_stalled_clients_do_not_block_others(running_signer: Signer) -> None:
    path = running_signer[0].socket
    silent = [RawConn(path) for _ in range(20)]
    stalled = [RawConn(path) for _ in range(20)]
    for i, c in enumerate(stalled):  # half a header, or a header and part of the body, then nothing
        c.sock.sendall(b"\x00\x00" if i % 2 else b"\x00\x00\x00\x40" + HEALTH[:8])
    try:
        started = time.monotonic()
        for _ in range(5):
            assert_healthy(running_signer)
        assert time.monotonic() - started < 2
        # A silent client that finally speaks is still served.
        assert silent[0].ask(HEALTH)["ok"] is True
    finally:
        for c in silent + stalled:
            c.close()
    assert_healthy(running_signer)


def test_a_client_that_never_reads_its_replies_does_not_block_others(running_signer: Signer) -> None:
    hog = RawConn(running_signer[0].socket)
    hog.sock.setblocking(False)
    big = b'{"v":1,"id":"' + b"k" * 100 + b'","op":"keys"}'
    frame = len(big).to_bytes(4, "big") + big
    sent = 0
    try:
        # Pipeline requests and never read: the socket buffers fill up and the signer's writer blocks.
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            try:
                sent += hog.sock.send(frame * 64)
            except BlockingIOError:
                break
        assert sent > 0
        for _ in range(3):
            assert_healthy(running_signer)
    finally:
        hog.close()
    assert_healthy(running_signer)


def test_many_concurrent_garbage_connections(running_signer: Signer) -> None:
    path = running_signer[0].socket
    junk = [
        b"\xff\xff\xff\xff",
        b"\x00\x00\x00\x05hello",
        b"\x00\x00\x00\x02{}",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x00\x00\x00\x03\xff\xfe\xfd",
        b"\x00" * 64,
    ]
    errors: list[BaseException] = []

    def hammer(i: int) -> None:
        try:
            for j in range(5):
                c = RawConn(path)
                try:
                    c.sock.sendall(junk[(i + j) % len(junk)])
                    if j % 2:
                        c.sock.shutdown(socket.SHUT_WR)
                        while c.sock.recv(65536):
                            pass
                finally:
                    c.close()
        except OSError as exc:  # a refused connect would mean the signer stopped accepting
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    assert_healthy(running_signer)  # served while the flood is on
    for t in threads:
        t.join(30)
    assert not errors, errors[:3]
    assert_healthy(running_signer)


# --- JSON that parses badly ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        pytest.param(b'{"v":1' + b"0" * 5000 + b',"id":"x","op":"health"}', "bad_frame", id="5000-digit-int"),
        pytest.param(
            b'{"v":1' + b"0" * 4000 + b',"id":"x","op":"health"}', "unsupported_version", id="4000-digit-v"
        ),
        pytest.param(b'{"v":1e999,"id":"x","op":"health"}', "bad_request", id="v-infinity"),
        pytest.param(b'{"v":NaN,"id":"x","op":"health"}', "bad_request", id="v-nan"),
        pytest.param(b'{"v":1.0,"id":"x","op":"health"}', "bad_request", id="v-float"),
        pytest.param(b'{"v":true,"id":"x","op":"health"}', "bad_request", id="v-bool"),
        pytest.param(b'{"v":1,"id":7,"op":"health"}', "bad_request", id="id-number"),
        pytest.param(b'{"v":1,"id":"","op":"health"}', "bad_request", id="id-empty"),
        pytest.param(b'{"v":1,"id":"x","op":["health"]}', "bad_request", id="op-list"),
        pytest.param(b'{"v":1,"id":"x","op":"' + b"o" * 100_000 + b'"}', "unknown_op", id="op-huge"),
        pytest.param(b"[" * 200_000, "bad_frame", id="deep-array"),
        pytest.param(b'{"a":' * 50_000 + b"1" + b"}" * 50_000, "bad_frame", id="deep-object"),
        pytest.param(b"\xef\xbb\xbf" + HEALTH, "bad_frame", id="utf8-bom"),
        pytest.param(HEALTH.decode().encode("utf-16"), "bad_frame", id="utf16"),
        pytest.param(HEALTH + b"\x00", "bad_frame", id="trailing-nul"),
        pytest.param(HEALTH + HEALTH, "bad_frame", id="two-objects"),
        pytest.param(
            b'{"v":1,"id":"x","op":"check_slack","body":"b","timestamp":1'
            + b"0" * 3000
            + b',"signature":"s"}',
            "bad_request",
            id="timestamp-huge-int",
        ),
        pytest.param(
            b'{"v":1,"id":"x","op":"sign","requestId":"r","origin":{"kind":"ci"},'
            b'"approvals":[],"emails":{},"requestId":"s"}',
            "bad_frame",
            id="duplicate-nested-key",
        ),
    ],
)
def test_json_edge_cases_get_an_error_code(conn: RawConn, payload: bytes, code: str) -> None:
    assert_error(conn.ask(payload), code)
    assert conn.ask(HEALTH)["ok"] is True


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b'{"v":1,"id":"\\ud800","op":"health"}', id="surrogate-id"),
        pytest.param(b'{"v":1,"id":"x","op":"health","\\udfff":1}', id="surrogate-key"),
        pytest.param(
            b'{"v":1,"id":"x","op":"check_slack","body":"a\\ud800b","timestamp":"1","signature":"v0=00"}',
            id="surrogate-body",
        ),
        pytest.param(
            b'{"v":1,"id":"x","op":"mac_callback","path":"/\\udc00","timestamp":"1","body":""}',
            id="surrogate-path",
        ),
    ],
)
def test_lone_surrogate_escapes_are_refused_as_bad_frames(conn: RawConn, payload: bytes) -> None:
    """JSON syntax, but not Unicode text: refused up front, never an internal error or a dropped reply."""
    assert_error(conn.ask(payload), "bad_frame")
    assert conn.ask(HEALTH)["ok"] is True


def test_escaped_surrogate_pairs_are_ordinary_text(conn: RawConn) -> None:
    """A correctly paired escape (an emoji written as ``\\ud83d\\ude80``) is valid text, not refused."""
    reply = conn.ask(b'{"v":1,"id":"rocket-\\ud83d\\ude80","op":"health"}')
    assert reply["ok"] is True
    assert reply["id"] == "rocket-\U0001f680"


# --- base64 that is almost base64 ---------------------------------------------------------------------------


def _check_ci(body_b64: str) -> bytes:
    req = {
        "v": 1,
        "id": "b",
        "op": "check_ci",
        "method": "POST",
        "path": "/v1/requests",
        "body": body_b64,
        "timestamp": str(int(time.time())),
        "signature": "v1=" + "0" * 64,
    }
    return json.dumps(req).encode()


@pytest.mark.parametrize(
    "value",
    ["YQ", "YQ=", "YQ===", "Y Q==", "YQ==\n", "-_8=", "YQ==YQ==", "=", "é", "YQ\x00=", "Y" * 4001],
)
def test_bad_base64_is_bad_request(conn: RawConn, value: str) -> None:
    assert_error(conn.ask(_check_ci(value)), "bad_request")
    assert conn.ask(HEALTH)["ok"] is True


@pytest.mark.parametrize("raw", [b"", b"a", b"\x00\xff" * 1000])
def test_valid_base64_reaches_the_signature_check(conn: RawConn, raw: bytes) -> None:
    """Control for the test above: well-formed base64 parses, and the forged MAC is what gets refused."""
    assert_error(conn.ask(_check_ci(base64.b64encode(raw).decode())), "bad_ci_signature")


# --- anything at all ----------------------------------------------------------------------------------------


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    payload=st.one_of(
        st.binary(max_size=300),
        st.text(max_size=200).map(str.encode),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
            lambda inner: (
                st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
            ),
            max_leaves=20,
        ).map(lambda obj: json.dumps({"v": 1, "id": "f", "op": "sign", "x": obj}).encode()),
    )
)
def test_any_payload_gets_a_reply_and_the_connection_survives(conn: RawConn, payload: bytes) -> None:
    reply = conn.ask(payload)
    assert reply["ok"] is False
    assert reply["error"]["code"] in {"bad_frame", "bad_request", "unknown_op", "unsupported_version"}
    assert conn.ask(HEALTH)["ok"] is True
