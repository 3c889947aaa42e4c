"""verify_receipt against the golden vectors, mutation properties, and key lifecycle."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyturn.signer.errors import VerificationError
from keyturn.signer.keys import SigningKeyset, sign_receipt
from keyturn.signer.receipt import (
    ApprovalEntry,
    ApproverRef,
    Scope,
    canonical_json,
    new_request_id,
    unsigned_receipt,
)
from keyturn.signer.verify import verify_receipt
from tests.vectors import load

VECTORS = load.vectors()
KEYSET = load.keyset()
VALID = load.vector("valid_basic")
ROOT = Path(__file__).resolve().parents[2]


def test_vector_set_covers_the_required_attacks() -> None:
    names = {v.name for v in VECTORS}
    rejects = [v for v in VECTORS if v.code is not None]
    assert len(rejects) >= 25
    assert any(v.code is None for v in VECTORS)
    # The bypasses listed in issue 4's "Why", each with its own vector.
    for required in (
        "status_edited_after_signing",  # field outside the signature
        "expiry_extended_after_signing",
        "ambiguous_concatenation_field_shift",
        "alg_none",
        "alg_hmac_with_public_key",
        "signed_denied_accepted",
        "unknown_version",
        "revoked_key",
        "changed_commit",
        "commit_edited_after_signing",
    ):
        assert required in names


@pytest.mark.parametrize("vec", VECTORS, ids=[v.name for v in VECTORS])
def test_vector(vec: load.LoadedVector) -> None:
    if vec.code is None:
        verified = verify_receipt(
            vec.data,
            KEYSET,
            vec.scope,
            vec.now,
            allow_dev_keys=vec.allow_dev_keys,
            require_requester_proof=vec.require_oidc,
        )
        assert verified.status == "APPROVED"
        assert verified.scope == vec.scope
    else:
        with pytest.raises(VerificationError) as exc:
            verify_receipt(
                vec.data,
                KEYSET,
                vec.scope,
                vec.now,
                allow_dev_keys=vec.allow_dev_keys,
                require_requester_proof=vec.require_oidc,
            )
        assert exc.value.code == vec.code, str(exc.value)


def test_generator_check_mode_matches_committed_vectors() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests/vectors/generate.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr


def test_check_mode_detects_a_changed_byte(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.vectors import generate

    for name, data in generate.build().items():
        (tmp_path / name).write_bytes(data)
    monkeypatch.setattr(generate, "HERE", tmp_path)
    assert generate.main(["--check"]) == 0
    target = tmp_path / "valid_basic.json"
    changed = bytearray(target.read_bytes())
    changed[10] ^= 1
    target.write_bytes(bytes(changed))
    assert generate.main(["--check"]) == 1


def test_verified_receipt_carries_the_signed_facts() -> None:
    v = verify_receipt(VALID.data, KEYSET, VALID.scope, VALID.now)
    assert v.request_id == "req_01JV7Q4M4T7Z9X4P9G8N2D6R1A"
    assert v.approver == ApproverRef("U07F2B1D", "oncall@example.com")
    assert [a.id for a in v.approvals] == ["U0CAROL", "U07F2B1D"]
    assert v.expires_at == datetime(2026, 2, 28, 18, tzinfo=UTC)
    assert v.summary() == (
        "OK req_01JV7Q4M4T7Z9X4P9G8N2D6R1A approved by oncall@example.com expires 2026-02-28T18:00:00Z"
    )


def test_naive_now_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        verify_receipt(VALID.data, KEYSET, VALID.scope, datetime(2026, 2, 28, 16, 30))


# --- mutations ------------------------------------------------------------------------------------------


def _rejected(data: bytes) -> bool:
    try:
        verify_receipt(data, KEYSET, VALID.scope, VALID.now)
    except VerificationError:
        return True
    return False


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_single_byte_change_is_rejected(data: st.DataObject) -> None:
    raw = VALID.data
    i = data.draw(st.integers(0, len(raw) - 1), label="index")
    b = data.draw(st.integers(0, 255).filter(lambda x: x != raw[i]), label="byte")
    mutated = raw[:i] + bytes([b]) + raw[i + 1 :]
    assert _rejected(mutated)


def _leaf_paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in _leaf_paths(v, (*prefix, k))]
    if isinstance(obj, list):
        return [p for i, v in enumerate(obj) for p in _leaf_paths(v, (*prefix, i))]
    return [prefix]


BASE = json.loads(VALID.data)
LEAVES = _leaf_paths(BASE)
JSON_VALUES = st.one_of(
    st.text(max_size=40),
    st.integers(),
    st.booleans(),
    st.none(),
    st.lists(st.text(max_size=5), max_size=2),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
)


@settings(max_examples=300, deadline=None)
@given(path=st.sampled_from(LEAVES), value=JSON_VALUES)
def test_any_single_field_change_is_rejected(path: tuple[Any, ...], value: Any) -> None:
    mutated = json.loads(VALID.data)
    node = mutated
    for key in path[:-1]:
        node = node[key]
    if node[path[-1]] == value and type(node[path[-1]]) is type(value):
        return  # not a change
    node[path[-1]] = value
    assert _rejected(json.dumps(mutated).encode())


@settings(max_examples=100, deadline=None)
@given(name=st.text(min_size=1, max_size=12), value=JSON_VALUES)
def test_any_added_member_is_rejected(name: str, value: Any) -> None:
    mutated = json.loads(VALID.data)
    if name in mutated:
        return
    mutated[name] = value
    assert _rejected(json.dumps(mutated).encode())


# --- key lifecycle, end to end with real key files ------------------------------------------------------

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
SCOPE = Scope("acme/service", "4f8a2cd91ef7a2c7f3a5f0aa12d93b33f2d40e17", "production", "deploy.yml")


def _issue(keys: SigningKeyset, issued: datetime) -> bytes:
    approvals = [ApprovalEntry("U0BOB", "bob@example.com", issued)]
    unsigned = unsigned_receipt(
        request_id=new_request_id(issued),
        status="APPROVED",
        issued_at=issued,
        expires_at=issued + timedelta(hours=1),
        scope=SCOPE,
        approver=ApproverRef("U0BOB", "bob@example.com"),
        approvals=approvals,
        requester="github:alice",
        key_id=keys.active_kid,
    )
    return canonical_json(sign_receipt(keys, unsigned))


def _code(data: bytes, keys: SigningKeyset, now: datetime) -> str | None:
    try:
        verify_receipt(data, keys.public_keyset(), SCOPE, now)
    except VerificationError as e:
        return e.code
    return None


def test_rotated_key_verifies_only_receipts_issued_before_rotation(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    first = SigningKeyset.generate(path, now=T0)
    before = _issue(first, T0 + timedelta(minutes=10))
    rotated = SigningKeyset.rotate(path, T0 + timedelta(minutes=20))
    # The retired key can no longer sign (the file keeps no private part for it), so forge "after" with the
    # first keyset object still in memory: it must be refused.
    after = _issue(first, T0 + timedelta(minutes=30))
    new = _issue(rotated, T0 + timedelta(minutes=30))
    now = T0 + timedelta(minutes=35)
    assert _code(before, rotated, now) is None
    assert _code(after, rotated, now) == "key_not_valid_at_issue"
    assert _code(new, rotated, now) is None


def test_revoked_key_never_verifies(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    first = SigningKeyset.generate(path, now=T0)
    receipt = _issue(first, T0 + timedelta(minutes=10))
    SigningKeyset.rotate(path, T0 + timedelta(minutes=20))
    revoked = SigningKeyset.revoke(path, first.active_kid, T0 + timedelta(minutes=25))
    assert _code(receipt, revoked, T0 + timedelta(minutes=30)) == "revoked_key"
