"""``keyturn request --wait`` goes through the same gate as ``keyturn verify`` (signer/gate.py).

Before the gate existed, ``request --wait`` checked receipts with its own code: it took a keyset from the
checkout, fetched a keyset over plain http from any host and followed redirects unchecked. Each attack is a
test named after it, run as CI runs the command (a fresh process) against a real loopback server that plays
the bot (approving at once) and the keyset host. A refused keyset must also mean that nothing was asked of
the approvers: the bot saw no POST.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import keyturn.bot.client
from keyturn.signer import gate
from keyturn.signer.cli import verify_main
from keyturn.signer.receipt import Scope
from tests.gate_fixtures import SCOPE, LoopbackServer, mint_receipt, write_keyset
from tests.harness import KEYTURN, free_port

SECRET = "request-gate-ci-secret-0123456789"


@pytest.fixture
def bot_server() -> Iterator[LoopbackServer]:
    with LoopbackServer() as s:
        yield s


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    """The test keyset in a plain directory (no checkout around it)."""
    d = tmp_path / "pinned"
    d.mkdir()
    return write_keyset(d)


def _argv(url: str, *extra: str, scope: Scope = SCOPE) -> list[str]:
    return [
        "request", "--url", url, "--repo", scope.repo, "--sha", scope.sha, "--env", scope.environment,
        "--workflow", scope.workflow, "--requester", "github:alice", *extra,
    ]  # fmt: skip


def request(argv: list[str], cwd: Path, workspace: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``keyturn ARGV`` in a fresh process with the CI secret set, as a pipeline does."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("GITHUB_WORKSPACE", "CI_PROJECT_DIR", "KEYTURN_CI_SECRET")
    }
    env["KEYTURN_CI_SECRET"] = SECRET
    if workspace is not None:
        env["GITHUB_WORKSPACE"] = str(workspace)
    return subprocess.run(
        [*KEYTURN, *argv], capture_output=True, text=True, cwd=cwd, env=env, timeout=60, check=False
    )


def test_request_wait_passes_with_a_receipt_the_gate_verifies(
    bot_server: LoopbackServer, keys: Path, tmp_path: Path
) -> None:
    out = tmp_path / "receipt.json"
    p = request(_argv(bot_server.url, "--wait", "--keys", str(keys), "--out", str(out)), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "OK req_" in p.stderr
    assert out.read_bytes() == bot_server.receipt


def test_request_wait_refuses_keyset_in_checkout(bot_server: LoopbackServer, tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    (checkout / ".git").mkdir(parents=True)
    keys = write_keyset(checkout)  # a pull request could replace this file
    argv = _argv(bot_server.url, "--wait", "--keys", "keys.public.json", "--out", str(tmp_path / "r.json"))
    p = request(argv, cwd=checkout)
    assert p.returncode == 2, p.stderr
    assert "REJECTED untrusted_keyset: " in p.stderr
    p = request(_argv(bot_server.url, "--wait", "--keys", str(keys)), cwd=tmp_path, workspace=checkout)
    assert p.returncode == 2, p.stderr
    assert "REJECTED untrusted_keyset: " in p.stderr
    assert bot_server.posted() == []
    # The same explicit override as keyturn verify.
    p = request([*argv, "--trust-keys-in-checkout"], cwd=checkout)
    assert p.returncode == 0, p.stderr


def test_request_wait_refuses_plain_http_keyset_to_remote_host(
    bot_server: LoopbackServer, tmp_path: Path
) -> None:
    p = request(_argv(bot_server.url, "--wait", "--keys", "http://keys.example.com/v1/keys"), cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    assert "REJECTED bad_keyset_url: " in p.stderr
    assert bot_server.posted() == []


@pytest.fixture
def keys_server() -> Iterator[LoopbackServer]:
    """A keyset host apart from the bot (the bot's own /v1/keys is refused: it would vouch for itself)."""
    with LoopbackServer() as s:
        yield s


def test_request_wait_refuses_redirect_to_http(
    bot_server: LoopbackServer, keys_server: LoopbackServer, tmp_path: Path
) -> None:
    keys_server.redirects["/keys-moved"] = "http://keys.example.com/v1/keys"
    p = request(_argv(bot_server.url, "--wait", "--keys", keys_server.url + "/keys-moved"), cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    assert "REJECTED untrusted_keyset: refusing redirect" in p.stderr
    assert bot_server.posted() == []


def test_request_wait_follows_a_redirect_that_passes_the_rule(
    bot_server: LoopbackServer, keys_server: LoopbackServer, tmp_path: Path
) -> None:
    keys_server.redirects["/keys-moved"] = keys_server.url + "/keys"
    argv = _argv(bot_server.url, "--wait", "--keys", keys_server.url + "/keys-moved", "--out", "r.json")
    p = request(argv, cwd=tmp_path)
    assert p.returncode == 0, p.stderr


def test_request_wait_refuses_dev_keys_without_flag(
    bot_server: LoopbackServer, keys: Path, tmp_path: Path
) -> None:
    bot_server.receipt = mint_receipt(key="development")
    argv = _argv(bot_server.url, "--wait", "--keys", str(keys), "--out", str(tmp_path / "r.json"))
    p = request(argv, cwd=tmp_path)
    assert p.returncode == 1, p.stderr
    assert "REJECTED dev_key: " in p.stderr
    assert not (tmp_path / "r.json").exists()
    p = request([*argv, "--allow-dev-keys"], cwd=tmp_path)  # keyturn dev's recipe
    assert p.returncode == 0, p.stderr


def test_request_wait_refuses_receipt_for_another_commit(
    bot_server: LoopbackServer, keys: Path, tmp_path: Path
) -> None:
    bot_server.receipt = mint_receipt(Scope(SCOPE.repo, "0" * 40, SCOPE.environment, SCOPE.workflow))
    p = request(_argv(bot_server.url, "--wait", "--keys", str(keys)), cwd=tmp_path)
    assert p.returncode == 1, p.stderr
    assert "REJECTED scope_mismatch:sha: " in p.stderr


def test_request_wait_unreachable_keyset_url_exits_3(bot_server: LoopbackServer, tmp_path: Path) -> None:
    p = request(_argv(bot_server.url, "--wait", "--keys", f"http://127.0.0.1:{free_port()}/k"), cwd=tmp_path)
    assert p.returncode == 3, p.stderr
    assert "REJECTED keyset_unavailable: " in p.stderr
    assert bot_server.posted() == []


@pytest.mark.parametrize(
    "extra",
    [
        ["--wait", "--keys", "KEYS", "-h"],
        ["-h", "--wait", "--keys", "KEYS"],
        ["--wait", "--keys", "KEYS", "--help"],
        ["--wait", "--keys", "KEYS", "--", "--help"],
        ["--wait", "--keys", "KEYS", "--title", "-h"],
        ["--wait", "--keys", "KEYS", "--he"],
    ],
)
def test_request_help_among_args_does_not_pass(
    bot_server: LoopbackServer, keys: Path, tmp_path: Path, extra: list[str]
) -> None:
    argv = _argv(bot_server.url, *[str(keys) if a == "KEYS" else a for a in extra])
    p = request(argv, cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    assert p.stdout == ""
    p = request(["-h", *argv], cwd=tmp_path)  # in front of the command, at the dispatcher
    assert p.returncode == 2
    assert bot_server.posted() == []


def test_request_workflow_help_as_value_is_usage_error(bot_server: LoopbackServer, tmp_path: Path) -> None:
    argv = _argv(bot_server.url, "--wait", "--keys", "k.json")
    argv[argv.index("--workflow") + 1] = "-h"
    p = request(argv, cwd=tmp_path)
    assert p.returncode == 2
    assert "must be the only argument" in p.stderr


@pytest.mark.parametrize(
    "extra",
    [
        ["--env", "staging"],  # a second scope value must not silently win
        ["--wait", "--wait"],
        ["--allow"],  # no abbreviations
        ["--wait=yes"],
        [""],
        ["stray"],
        ["--timeout", "soon"],
    ],
)
def test_malformed_request_argv_is_usage_error(
    bot_server: LoopbackServer, keys: Path, tmp_path: Path, extra: list[str]
) -> None:
    p = request(_argv(bot_server.url, "--keys", str(keys), *extra), cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    assert bot_server.posted() == []


def test_request_help_alone_shows_help(tmp_path: Path) -> None:
    for flag in ("-h", "--help"):
        p = request(["request", flag], cwd=tmp_path)
        assert p.returncode == 0
        assert "--trust-keys-in-checkout" in p.stdout


# --- one gate: both commands load and check through the same functions ---------------------------------


def test_verify_and_request_load_keysets_and_check_receipts_through_the_gate(
    bot_server: LoopbackServer, keys: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GITHUB_WORKSPACE", raising=False)
    monkeypatch.setenv("KEYTURN_CI_SECRET", SECRET)
    calls: list[tuple[str, str]] = []
    real_load, real_check = gate.load_keyset, gate.check_receipt

    def load_spy(source: str, **kw: Any) -> Any:
        calls.append(("load_keyset", source))
        return real_load(source, **kw)

    def check_spy(receipt: bytes, *args: Any, **kw: Any) -> Any:
        calls.append(("check_receipt", receipt.decode()[:1]))
        return real_check(receipt, *args, **kw)

    monkeypatch.setattr(gate, "load_keyset", load_spy)
    monkeypatch.setattr(gate, "check_receipt", check_spy)
    receipt = tmp_path / "receipt.json"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        rc_request = keyturn.bot.client.main(
            _argv(bot_server.url, "--wait", "--keys", str(keys), "--out", str(receipt))[1:]
        )
        verify_args = [str(receipt), "--keys", str(keys), "--repo", SCOPE.repo, "--sha", SCOPE.sha]
        rc_verify = verify_main([*verify_args, "--env", SCOPE.environment, "--workflow", SCOPE.workflow])
    assert (rc_request, rc_verify) == (0, 0)
    assert calls == [("load_keyset", str(keys)), ("check_receipt", "{")] * 2


# --- property: keyturn request never exits 0 without a verified receipt -----------------------------------

# The bot URL is a closed loopback port: anything that gets past argument parsing and the keyset fails to
# reach the bot (3), so the oracle can tell a well-formed argument list (3) from any other (2) exactly.
REQUIRED = ("--url", "--repo", "--sha", "--env", "--workflow", "--requester")
OPTIONAL = ("--keys", "--timeout", "--title")
FLAGS = ("--wait", "--allow-dev-keys", "--trust-keys-in-checkout")
CHECKED = {"--url", "--keys", "--timeout"}  # values the command itself checks before contacting the bot
BAD_VALUES = ["", "-h", "--help", "-x", "--wait"]
JUNK = ["-h", "--help", "--help=x", "--", "", "--bogus", "--wai", "stray", "-", "--keys"]


class Unit:
    """One option (with its value) or stray argument, and whether it belongs to a well-formed request."""

    def __init__(self, name: str, tokens: list[str], good: bool) -> None:
        self.name, self.tokens, self.good = name, tokens, good


@st.composite
def request_argvs(draw: st.DrawFn, right: dict[str, str]) -> list[Unit]:
    clean = draw(st.booleans())
    units: list[Unit] = []
    for name in (*REQUIRED, *OPTIONAL):
        count = (
            draw(st.sampled_from([1] if name in REQUIRED else [0, 1]))
            if clean
            else draw(st.sampled_from([1, 1, 0, 2] if name in REQUIRED else [0, 1, 2]))
        )
        for _ in range(count):
            value = right[name] if clean or draw(st.booleans()) else draw(st.sampled_from(BAD_VALUES))
            sep = draw(st.booleans())
            tokens = [name, value] if sep else [f"{name}={value}"]
            if value == right[name]:
                good = True
            elif sep or value == "":
                good = False  # option-like or empty: refused by the argument rules
            else:
                good = name not in CHECKED  # --repo=-h is a value; --url=-h is not a URL
            units.append(Unit(name, tokens, good))
    for flag in FLAGS:
        for _ in range(draw(st.sampled_from([0, 1] if clean else [0, 1, 2]))):
            units.append(Unit(flag, [flag], True))
    if not clean:
        units += [Unit("junk", [j], False) for j in draw(st.lists(st.sampled_from(JUNK), max_size=2))]
    return draw(st.permutations(units))


def expected_exit(units: list[Unit]) -> int:
    """3 for a well-formed request (it then fails to reach the bot), else 2."""
    if units and units[-1].tokens == ["--"]:
        units = units[:-1]  # "--" ending the options, with nothing after it, changes nothing
    names = [u.name for u in units]
    if not all(u.good for u in units) or len(set(names)) != len(names):
        return 2
    if not all(n in names for n in REQUIRED):
        return 2
    if "--wait" in names and "--keys" not in names:
        return 2  # --wait without a keyset: nothing could be verified
    return 3


@pytest.fixture
def request_property_inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GITHUB_WORKSPACE", raising=False)
    monkeypatch.setenv("KEYTURN_CI_SECRET", SECRET)
    return {
        "--url": f"http://127.0.0.1:{free_port()}",  # closed: nothing listens there
        "--repo": SCOPE.repo,
        "--sha": SCOPE.sha,
        "--env": SCOPE.environment,
        "--workflow": SCOPE.workflow,
        "--requester": "github:alice",
        "--keys": str(write_keyset(tmp_path)),
        "--timeout": "30m",
        "--title": "Release 1.2",
    }


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_request_never_exits_0_without_a_verified_receipt(
    request_property_inputs: dict[str, str], data: st.DataObject
) -> None:
    units = data.draw(request_argvs(request_property_inputs))
    argv = [t for u in units for t in u.tokens]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = keyturn.bot.client.main(argv)
    if argv in (["-h"], ["--help"]):
        assert rc == 0
        return
    expected = expected_exit(units)
    event(f"exit {expected}")
    assert rc == expected, (argv, rc, err.getvalue())
