"""Receipt format: times, ids, strict parsing, signing bytes, DSSE conversion."""

from __future__ import annotations

import base64
import copy
import json
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import keyturn.signer.receipt as rc
from keyturn.signer.errors import VerificationError
from keyturn.signer.receipt import (
    PAYLOAD_TYPE,
    ApprovalEntry,
    ApproverRef,
    Scope,
    b64decode,
    format_time,
    from_dsse,
    new_request_id,
    pae,
    parse_receipt,
    parse_time,
    signing_bytes,
    strict_loads,
    to_dsse,
    unsigned_receipt,
)
from tests.vectors import load

NOW = datetime(2026, 2, 28, 16, 0, 0, tzinfo=UTC)
SCOPE = Scope("acme/service", "4f8a2cd91ef7a2c7f3a5f0aa12d93b33f2d40e17", "production", "deploy.yml")


def _unsigned(**over: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "request_id": new_request_id(NOW),
        "status": "APPROVED",
        "issued_at": NOW,
        "expires_at": NOW + timedelta(hours=2),
        "scope": SCOPE,
        "approver": ApproverRef("U1", "a@example.com"),
        "approvals": [ApprovalEntry("U1", "a@example.com", NOW)],
        "requester": "github:alice",
        "key_id": "abc",
    }
    args.update(over)
    return unsigned_receipt(**args)


def test_time_round_trip_is_whole_seconds_utc() -> None:
    t = datetime(2026, 2, 28, 17, 0, 5, 987654, tzinfo=timezone(timedelta(hours=1)))
    assert format_time(t) == "2026-02-28T16:00:05Z"
    assert parse_time("2026-02-28T16:00:05Z") == datetime(2026, 2, 28, 16, 0, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    "text",
    [
        "2026-02-28T16:00:05+00:00",
        "2026-02-28T16:00:05.1Z",
        "2026-02-28 16:00:05Z",
        "2026-02-28t16:00:05z",
        "2026-02-30T16:00:05Z",
        "２026-02-28T16:00:05Z",  # non-ASCII digit
        "2026-02-28T16:00:05Z\n",
        "",
    ],
)
def test_parse_time_refuses_other_spellings(text: str) -> None:
    with pytest.raises(VerificationError) as exc:
        parse_time(text)
    assert exc.value.code == "malformed"


def test_format_time_refuses_naive_datetimes() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        format_time(datetime(2026, 1, 1))


def test_request_ids_are_sortable_ulids() -> None:
    a = new_request_id(NOW)
    b = new_request_id(NOW + timedelta(milliseconds=1))
    assert a.startswith("req_")
    assert len(a) == 30
    assert a[4:14] < b[4:14]  # the time part orders them
    assert new_request_id(NOW) != new_request_id(NOW)
    parse_receipt({**_unsigned(request_id=a)}, signed=False)


def test_pae_matches_dsse_spec_example() -> None:
    # The DSSE protocol document's example: PAE("http://example.com/HelloWorld", "hello world").
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


def test_signing_bytes_cover_everything_but_the_signature_value() -> None:
    r = _unsigned()
    signed = {**r, "signature": {**r["signature"], "value": "anything"}}
    assert signing_bytes(signed) == signing_bytes(r)
    body = signing_bytes(r).split(b" ", 4)
    assert body[:2] == [b"DSSEv1", str(len(PAYLOAD_TYPE)).encode()]
    payload = json.loads(signing_bytes(r).split(PAYLOAD_TYPE.encode() + b" ", 1)[1].split(b" ", 1)[1])
    assert payload["signature"] == {"alg": "Ed25519", "keyId": "abc"}
    assert payload["status"] == "APPROVED"


def test_unsigned_receipt_refuses_what_verify_would_refuse() -> None:
    with pytest.raises(VerificationError, match="sha"):
        _unsigned(scope=Scope("acme/service", "4F8A", "production", "deploy.yml"))
    with pytest.raises(VerificationError, match="approver must be one of approvals"):
        _unsigned(approver=ApproverRef("U9", "z@example.com"))
    with pytest.raises(VerificationError, match="expiresAt"):
        _unsigned(expires_at=NOW)
    with pytest.raises(VerificationError) as exc:
        _unsigned(alg="none")
    assert exc.value.code == "unsupported_alg"


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b'{"a":1,"a":2}', "duplicate member"),
        (b'{"a":1.5}', "fraction"),
        (b'{"a":1e3}', "fraction"),
        (b'{"a":Infinity}', "not JSON"),
        (b"\xff{}", "UTF-8"),
        (b"[1]", "object"),
        (b"[" * 50_000, "not valid JSON"),
        (b'{"a":"' + b"x" * 70_000 + b'"}', "larger than"),
    ],
)
def test_strict_loads_refusals(data: bytes, fragment: str) -> None:
    with pytest.raises(VerificationError, match=fragment) as exc:
        strict_loads(data)
    assert exc.value.code == "malformed"


def test_strict_loads_accepts_plain_objects() -> None:
    assert strict_loads(b' {"a": [1, "x", null, true]} \n') == {"a": [1, "x", None, True]}


def test_dsse_round_trip_is_lossless() -> None:
    receipt = json.loads(load.vector("valid_basic").data)
    env = to_dsse(receipt)
    assert env["payloadType"] == PAYLOAD_TYPE
    assert env["signatures"] == [
        {"keyid": receipt["signature"]["keyId"], "sig": receipt["signature"]["value"]}
    ]
    # The DSSE signature covers PAE(payloadType, payload): exactly the receipt's signing bytes.
    assert pae(env["payloadType"], base64.b64decode(env["payload"])) == signing_bytes(receipt)
    assert from_dsse(env) == receipt


def test_b64decode_refuses_non_canonical_spellings() -> None:
    assert b64decode("AQ==") == b"\x01"
    for bad in ("AR==", "AQ", "AQ==\n", "A Q==", "AQ=="[::-1], "-_8="):
        with pytest.raises(ValueError, match="base64"):
            b64decode(bad)


# --- records and identifier checks (kept cheap to import: see the module docstring) ------------------------


def test_records_are_immutable_values() -> None:
    a = ApprovalEntry("U1", "a@example.com", NOW)
    same = ApprovalEntry(id="U1", email="a@example.com", at=NOW)
    assert a == same
    assert len({a, same}) == 1
    assert a != ApprovalEntry("U2", "a@example.com", NOW)
    assert ApproverRef("U1", "a@example.com") != ("U1", "a@example.com")  # a record is not a tuple
    assert repr(ApproverRef("U1", "a@example.com")) == "ApproverRef(id='U1', email='a@example.com')"
    with pytest.raises(AttributeError):
        SCOPE.sha = "0" * 40
    with pytest.raises(AttributeError):
        del SCOPE.repo
    assert copy.deepcopy(a) == a
    assert copy.copy(SCOPE) == SCOPE


# The checks as regular expressions: the specification the cheaper character-set checks must match exactly.
_SPEC = {
    rc._is_time_text: r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z",
    rc._is_request_id: r"req_[0-7][0-9A-HJKMNP-TV-Z]{25}",
    rc._is_sha: r"(?:[0-9a-f]{40}|[0-9a-f]{64})",
    rc._is_status: r"[A-Z][A-Z_]{0,31}",
    rc._is_key_id: r"[A-Za-z0-9_-]{1,128}",
}
# ASCII near misses plus look-alikes that str.isdigit()/isalpha() would accept.
_CHARS = "0179afAFHIJLOUVZ_-:Tqr\u0663\uff21\u00e9 \n"
_NEAR = {
    rc._is_time_text: "2026-02-28T16:00:05Z",
    rc._is_request_id: "req_01JV7Q4M4T7Z9X4P9G8N2D6R1A",
    rc._is_sha: "4f8a2cd91ef7a2c7f3a5f0aa12d93b33f2d40e17",
    rc._is_status: "APPROVED_X",
    rc._is_key_id: "jK7moQyWjzOfDUkb6iCmNfyyZFKctIrvW9DMLcHYsMw",
}


@pytest.mark.parametrize("check", list(_SPEC), ids=lambda f: f.__name__)
@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_identifier_checks_match_their_regular_expressions(check: Any, data: st.DataObject) -> None:
    valid = _NEAR[check]
    # Mostly a valid value with one character replaced, dropped or added; sometimes a random string.
    i = data.draw(st.integers(0, len(valid)))
    c = data.draw(st.sampled_from(_CHARS))
    s = data.draw(
        st.sampled_from(
            [valid, valid[:i] + c + valid[i + 1 :], valid[:i] + valid[i + 1 :], valid[:i] + c + valid[i:]]
        )
        | st.text(alphabet=_CHARS, max_size=70)
    )
    assert check(s) == (re.fullmatch(_SPEC[check], s) is not None), repr(s)
