"""``keyturn verify`` exits 0 only after a completed verification, whatever its argument list holds.

A pipeline builds the argument list from CI variables; one that reaches argv must not open the gate. Named
attacks run as CI runs them (a fresh ``keyturn`` process); the property test drives ``verify_main``
in-process with argument lists mixing valid pieces, help options, ``--``, ``=`` forms, duplicates, junk and
empty strings, and checks each exit code against an oracle that knows how the list was built.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from keyturn.signer.cli import verify_main
from tests.signer.test_cli import _verify_args, keyturn
from tests.vectors import load

VALID = load.vector("valid_basic")


@pytest.fixture
def keys(tmp_path: Path) -> str:
    """The vectors' keyset, copied outside the checkout (the gate refuses one inside it)."""
    path = tmp_path / "keys.json"
    path.write_bytes(load.keyset_path().read_bytes())
    return str(path)


def _valid_argv(keys: str) -> list[str]:
    return _verify_args(VALID, str(VALID.path), keys)


# --- named attacks, in a fresh process ------------------------------------------------------------------


@pytest.mark.parametrize("option", ["--keys", "--repo", "--sha", "--env", "--workflow", "--at"])
@pytest.mark.parametrize("help_arg", ["-h", "--help"])
def test_help_as_option_value_is_usage_error(tmp_path: Path, keys: str, option: str, help_arg: str) -> None:
    """``--workflow -h`` (a CI variable holding ``-h``) is a usage error, never help and exit 0."""
    argv = _valid_argv(keys)
    argv[argv.index(option) + 1] = help_arg
    p = keyturn(argv, cwd=tmp_path)
    assert p.returncode == 2, p.stdout + p.stderr
    assert p.stdout == ""
    assert "must be the only argument" in p.stderr


def test_help_among_args_does_not_pass(tmp_path: Path, keys: str) -> None:
    """``-h``/``--help`` at any position of a complete verify command (dispatcher included) is exit 2."""
    valid = _valid_argv(keys)
    argvs = [[*valid[:i], h, *valid[i:]] for i in range(len(valid) + 1) for h in ("-h", "--help")]
    argvs += [[*valid, "--", "-h"], ["help", *valid]]
    results = _run_in_one_process(argvs, tmp_path)
    assert [(argv, rc) for argv, (rc, out, _) in zip(argvs, results, strict=True) if rc != 2 or out] == []


def test_help_alone_still_shows_help(tmp_path: Path) -> None:
    for argv in (["verify", "-h"], ["verify", "--help"], ["-h"], ["--help"], ["help"], ["audit", "-h"]):
        p = keyturn(argv, cwd=tmp_path)
        assert p.returncode == 0, argv
        assert "usage:" in p.stdout


@pytest.mark.parametrize(
    "change",
    [
        ["--help=x"],  # not help: an unknown option
        ["--he"],  # not an abbreviation of --help
        ["--json=1"],  # a flag takes no value
        ["--json", "--json"],  # repeated option
        ["--env", "staging"],  # repeated value option: the second must not silently win
        [""],  # an unset CI variable
        ["--repo="],  # empty value
        ["--", "second.json"],  # a second receipt
        ["-x"],  # unknown short option
    ],
)
def test_malformed_verify_argv_is_usage_error(tmp_path: Path, keys: str, change: list[str]) -> None:
    p = keyturn([*_valid_argv(keys), *change], cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    assert p.stdout == ""


def test_option_like_value_needs_the_equals_form(tmp_path: Path, keys: str) -> None:
    argv = _valid_argv(keys)
    argv[argv.index("--workflow") + 1] = "-deploy.yml"
    assert keyturn(argv, cwd=tmp_path).returncode == 2
    i = argv.index("--workflow")
    argv[i : i + 2] = ["--workflow=-deploy.yml"]  # accepted as a value: the receipt's workflow differs
    p = keyturn(argv, cwd=tmp_path)
    assert p.returncode == 1
    assert p.stderr.startswith("REJECTED scope_mismatch:workflow: ")


def test_equals_forms_and_trailing_double_dash_still_verify(tmp_path: Path, keys: str) -> None:
    argv = _valid_argv(keys)
    receipt = argv.pop(1)
    eq = [f"{a}={b}" for a, b in zip(argv[1::2], argv[2::2], strict=True)]
    p = keyturn(["verify", *eq, "--", receipt], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("OK req_")


def test_dispatcher_help_before_a_command_does_not_pass(tmp_path: Path, keys: str) -> None:
    for front in ("-h", "--help", "help"):
        p = keyturn([front, *_valid_argv(keys)], cwd=tmp_path)
        assert p.returncode == 2, front
        assert p.stdout == ""


def test_audit_verify_help_among_args_does_not_pass(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    log.write_bytes(b"")
    for argv in (
        ["audit", "verify", str(log), "-h"],
        ["audit", "verify", "-h"],
        ["audit", "-h", "verify", str(log)],
        ["audit", "verify", "--he"],
        ["audit", "verify", "--help=x", str(log)],
        ["audit", "verify", "-hx", str(log)],
        ["audit", "verify", "--", "-h"],
    ):
        p = keyturn(argv, cwd=tmp_path)
        assert p.returncode == 2, argv
        assert p.stdout == ""


# Runs many argument lists through the real ``keyturn`` entry point in one fresh interpreter.
_DRIVER = """
import contextlib, io, json, sys
import keyturn.cli
results = []
for argv in json.loads(sys.stdin.read()):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = keyturn.cli.main(argv)
    results.append([rc, out.getvalue(), err.getvalue()])
print(json.dumps(results))
"""


def _run_in_one_process(argvs: list[list[str]], cwd: Path) -> list[tuple[int, str, str]]:
    import subprocess

    from tests.signer.test_cli import _env

    proc = subprocess.run(
        [sys.executable, "-c", _DRIVER],
        input=json.dumps(argvs),
        capture_output=True,
        text=True,
        cwd=cwd,
        env=_env(),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return [tuple(r) for r in json.loads(proc.stdout)]


# --- property: exit 0 only for exactly a well-formed verify of the valid receipt ------------------------

# Each unit is one option (with its value) or one positional, as the generator placed it; the oracle
# decides from the units, not by parsing the flat list the way the parser does.
WRONG = {
    "--repo": "acme/other",
    "--sha": "0" * 40,
    "--env": "staging",
    "--workflow": "other.yml",
    "--at": "2026-03-01T00:00:00Z",  # after the receipt expired
}
BAD_VALUES = ["", "-h", "--help", "--json", "-x", "--keys"]
JUNK = ["-h", "--help", "--help=x", "-", "--", "", "--bogus", "--jso", "junk", "--keys", "--allow", "-H"]


class Unit:
    """One piece of a generated argument list and whether it belongs to a well-formed verify."""

    def __init__(self, kind: str, name: str, tokens: list[str], good: bool) -> None:
        self.kind, self.name, self.tokens, self.good = kind, name, tokens, good


@st.composite
def verify_argvs(draw: st.DrawFn, right: dict[str, str], wrong_receipt: str, wrong_keys: str) -> list[Unit]:
    """Units of a verify argument list. Half the time only the order, the ``=`` forms, the optional flags and
    a ``--`` vary (the oracle then usually expects a pass); otherwise any piece may be repeated, missing,
    wrong, option-like or empty, and junk is mixed in."""
    clean = draw(st.booleans())

    def pick(options: list[Any], fallback: Any) -> Any:
        return fallback if clean else draw(st.sampled_from(options))

    units: list[Unit] = []
    for name, value in right.items():
        if name == "receipt":
            continue
        for _ in range(pick([1, 1, 1, 0, 2], 1)):
            choice = pick(["right", "right", "wrong", "bad"], "right")
            if choice == "right":
                v = value
            elif choice == "wrong":
                v = wrong_keys if name == "--keys" else WRONG[name]
            else:
                v = draw(st.sampled_from(BAD_VALUES))
            form = draw(st.sampled_from(["sep", "eq"]))
            tokens = [name, v] if form == "sep" else [f"{name}={v}"]
            units.append(Unit("option", name, tokens, choice == "right"))
    for flag in ("--json", "--allow-dev-keys", "--trust-keys-in-checkout"):
        for _ in range(draw(st.sampled_from([0, 1] if clean else [0, 0, 1, 2]))):
            with_value = pick([False, False, False, True], False)
            units.append(Unit("flag", flag, [f"{flag}=1" if with_value else flag], not with_value))
    for _ in range(pick([1, 1, 1, 0, 2], 1)):
        choice = pick(["right", "right", "right", "wrong", "-h", ""], "right")
        path = {"right": right["receipt"], "wrong": wrong_receipt}.get(choice, choice)
        units.append(Unit("positional", "receipt", [path], choice == "right"))
    junk = (
        ["--"]
        if clean and draw(st.booleans())
        else []
        if clean
        else draw(st.lists(st.sampled_from(JUNK), max_size=2))
    )
    units += [Unit("junk", j, [j], False) for j in junk]
    return draw(st.permutations(units))


def oracle_passes(units: list[Unit]) -> bool:
    """Whether the units make exactly a well-formed verify of the valid receipt for the valid scope."""
    dashes = [i for i, u in enumerate(units) if u.kind == "junk" and u.name == "--"]
    others = [u for u in units if not (u.kind == "junk" and u.name == "--")]
    if len(dashes) > 1 or not all(u.good for u in others):
        return False
    if dashes and any(u.kind != "positional" for u in units[dashes[0] + 1 :]):
        return False  # after "--" everything is a positional: an option there is an extra receipt
    names = [u.name for u in others]
    required = ("--keys", "--repo", "--sha", "--env", "--workflow", "--at", "receipt")
    return all(names.count(n) == 1 for n in required) and len(set(names)) == len(names)


@contextlib.contextmanager
def _captured() -> Iterator[tuple[io.StringIO, io.StringIO]]:
    out, err = io.StringIO(), io.StringIO()
    stdin = sys.stdin
    sys.stdin = io.TextIOWrapper(io.BytesIO(b""))  # "-" reads an empty receipt, never the test's stdin
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            yield out, err
    finally:
        sys.stdin = stdin


@pytest.fixture
def property_inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, str], str, str]:
    monkeypatch.chdir(tmp_path)  # outside any checkout: the keyset file is then trusted
    monkeypatch.delenv("GITHUB_WORKSPACE", raising=False)
    keys = tmp_path / "keys.json"
    keys.write_bytes(load.keyset_path().read_bytes())
    stranger = json.loads(load.keyset_path().read_bytes())
    stranger["keys"] = [k for k in stranger["keys"] if k["kid"].startswith("dev-")]  # lacks the signing key
    wrong_keys = tmp_path / "other-keys.json"
    wrong_keys.write_text(json.dumps(stranger))
    right = {
        "--keys": str(keys),
        "--repo": VALID.scope.repo,
        "--sha": VALID.scope.sha,
        "--env": VALID.scope.environment,
        "--workflow": VALID.scope.workflow,
        "--at": VALID.at,
        "receipt": str(VALID.path),
    }
    return right, str(load.vector("status_edited_after_signing").path), str(wrong_keys)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_verify_exits_0_only_for_a_well_formed_verify_of_a_valid_receipt(
    property_inputs: tuple[dict[str, str], str, str], data: st.DataObject
) -> None:
    right, wrong_receipt, wrong_keys = property_inputs
    units = data.draw(verify_argvs(right, wrong_receipt, wrong_keys))
    argv = [t for u in units for t in u.tokens]
    with _captured() as (out, err):
        rc = verify_main(argv)
    if argv in (["-h"], ["--help"]):
        assert (rc, out.getvalue().startswith("usage:")) == (0, True)
        return
    passes = oracle_passes(units)
    event("well-formed verify of the valid receipt" if passes else "anything else")
    if passes:
        assert rc == 0, (argv, err.getvalue())
        assert out.getvalue().startswith(("OK req_", '{"approvals"')), argv
    else:
        assert rc in (1, 2), (argv, rc, out.getvalue(), err.getvalue())
