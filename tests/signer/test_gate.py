"""The gate (signer/gate.py): the one receipt check behind ``keyturn verify`` and ``keyturn request --wait``.

Each test is named after what an attacker tries; the gate must answer with the stable code shown.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from keyturn.signer import gate
from keyturn.signer.receipt import Scope
from tests.gate_fixtures import SCOPE, LoopbackServer, mint_receipt, write_keyset
from tests.harness import free_port
from tests.vectors import load


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with LoopbackServer() as s:
        yield s


@pytest.fixture(autouse=True)
def _outside_any_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The gate looks at the current directory and $GITHUB_WORKSPACE: run each test from a plain directory.
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GITHUB_WORKSPACE", raising=False)
    monkeypatch.delenv("CI_PROJECT_DIR", raising=False)


def _code(exc: pytest.ExceptionInfo[gate.GateError]) -> str:
    return exc.value.code


def test_keyset_file_inside_the_checkout_is_untrusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkout = tmp_path / "checkout"
    (checkout / ".git").mkdir(parents=True)
    keys = write_keyset(checkout)
    monkeypatch.chdir(checkout / ".git")  # anywhere below the work tree
    with pytest.raises(gate.GateError) as exc:
        gate.load_keyset("../keys.public.json", trust_keys_in_checkout=False)
    assert _code(exc) == "untrusted_keyset"
    assert len(gate.load_keyset(str(keys), trust_keys_in_checkout=True)) == len(load.keyset())


def test_keyset_file_under_github_workspace_is_untrusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    keys = write_keyset(workspace)
    monkeypatch.setenv("GITHUB_WORKSPACE", str(workspace))
    with pytest.raises(gate.GateError) as exc:
        gate.load_keyset(str(keys), trust_keys_in_checkout=False)
    assert _code(exc) == "untrusted_keyset"


def test_keyset_symlink_into_the_checkout_is_untrusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkout = tmp_path / "checkout"
    (checkout / ".git").mkdir(parents=True)
    keys = write_keyset(checkout)
    link = tmp_path / "pinned.json"
    link.symlink_to(keys)
    monkeypatch.chdir(checkout)
    with pytest.raises(gate.GateError) as exc:
        gate.load_keyset(str(link), trust_keys_in_checkout=False)
    assert _code(exc) == "untrusted_keyset"


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://keys.example.com/v1/keys", True),
        ("http://127.0.0.1:8080/v1/keys", True),
        ("http://localhost/v1/keys", True),
        ("http://[::1]:9/keys", True),
        ("http://keys.example.com/v1/keys", False),
        ("http://10.0.0.7/v1/keys", False),
        ("http://127.0.0.1.example.com/keys", False),
        ("ftp://keys.example.com/keys", False),
        ("file:///etc/keyturn/keys.json", False),
        ("https:///no-host", False),
        ("https://keys.example.com:port/keys", False),
    ],
)
def test_keyset_url_rule(url: str, allowed: bool) -> None:
    assert gate.keyset_url_allowed(url) is allowed


def test_plain_http_keyset_to_remote_host_is_refused_before_connecting() -> None:
    with pytest.raises(gate.GateError) as exc:
        gate.load_keyset("http://keys.example.com/v1/keys", trust_keys_in_checkout=False)
    assert _code(exc) == "bad_keyset_url"


@pytest.mark.parametrize("target", ["http://keys.example.com/keys", "file:///etc/passwd", "ftp://x/keys"])
def test_redirect_breaking_the_rule_is_refused(server: LoopbackServer, target: str) -> None:
    server.redirects["/r"] = target
    with pytest.raises(gate.GateError) as exc:
        gate.load_keyset(server.url + "/r", trust_keys_in_checkout=False)
    assert _code(exc) == "untrusted_keyset"
    assert "refusing redirect" in exc.value.message


def test_redirect_passing_the_rule_is_followed(server: LoopbackServer) -> None:
    server.redirects["/r"] = server.url + "/keys"
    assert len(gate.load_keyset(server.url + "/r", trust_keys_in_checkout=False)) == len(load.keyset())


def test_oversized_keyset_file_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (gate.MAX_KEYSET_BYTES + 1))
    with pytest.raises(gate.GateError) as exc:
        gate.load_keyset(str(big), trust_keys_in_checkout=False)
    assert _code(exc) == "bad_keyset"


@pytest.mark.parametrize(
    "content", [b"not json", b'{"keys": []}', b'{"keys": [{"kty": "OKP"}]}', b"[" * 100_000]
)
def test_unusable_keyset_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "k.json"
    path.write_bytes(content)
    with pytest.raises(gate.GateError) as exc:
        gate.load_keyset(str(path), trust_keys_in_checkout=False)
    assert _code(exc) == "bad_keyset"


def test_missing_keyset_file_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(gate.GateError) as exc:
        gate.load_keyset(str(tmp_path / "nope.json"), trust_keys_in_checkout=False)
    assert _code(exc) == "unreadable"


def test_unreachable_keyset_url_is_unavailable() -> None:
    with pytest.raises(gate.GateError) as exc:
        gate.load_keyset(f"http://127.0.0.1:{free_port()}/keys", trust_keys_in_checkout=False)
    assert _code(exc) == "keyset_unavailable"


def test_keyset_server_that_never_answers_hits_the_whole_fetch_deadline() -> None:
    # A listening socket nobody serves: the connection is accepted by the kernel, then silence.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/keys"
        with pytest.raises(gate.GateError) as exc:
            gate.load_keyset(url, trust_keys_in_checkout=False, deadline_s=0.3)
    # Either the per-read timeout or the whole-fetch deadline fires first (both are 0.3 s): same refusal.
    assert _code(exc) == "keyset_unavailable"


def test_dev_key_receipt_refused_unless_allowed() -> None:
    receipt = mint_receipt(key="development")
    now = datetime.now(UTC)
    with pytest.raises(gate.GateError) as exc:
        gate.check_receipt(receipt, load.keyset(), SCOPE, now, allow_dev_keys=False)
    assert _code(exc) == "dev_key"
    assert gate.check_receipt(receipt, load.keyset(), SCOPE, now, allow_dev_keys=True).scope == SCOPE


def test_receipt_for_another_commit_is_a_scope_mismatch() -> None:
    other = Scope(SCOPE.repo, "0" * 40, SCOPE.environment, SCOPE.workflow)
    with pytest.raises(gate.GateError) as exc:
        gate.check_receipt(mint_receipt(other), load.keyset(), SCOPE, datetime.now(UTC), allow_dev_keys=False)
    assert _code(exc) == "scope_mismatch:sha"


def test_a_surprise_while_verifying_is_a_refusal() -> None:
    naive_now = datetime(2026, 11, 30, 12, 0)  # verify_receipt raises ValueError on a naive time
    with pytest.raises(gate.GateError) as exc:
        gate.check_receipt(mint_receipt(), load.keyset(), SCOPE, naive_now, allow_dev_keys=False)
    assert _code(exc) == "internal_error"
