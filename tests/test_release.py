"""The release (issue 15): licence, version, changelog, the hash-pinned CI requirements, and `make dist`'s
sdist and wheel passing `twine check`."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.harness import KEYTURN, ROOT

CI_REQUIREMENTS = ROOT / "deploy" / "requirements-ci.txt"
_HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")


def _pins() -> dict[str, tuple[str, list[str]]]:
    """``deploy/requirements-ci.txt`` as {name: (version, hashes)}; asserts each line's shape."""
    text = CI_REQUIREMENTS.read_text()
    pins: dict[str, tuple[str, list[str]]] = {}
    for entry in text.replace("\\\n", " ").splitlines():
        entry = entry.split("#", 1)[0].strip()
        if not entry:
            continue
        spec, *options = entry.split()
        assert all(_HASH.fullmatch(o) for o in options), f"only sha256 hashes may follow {spec}"
        assert options, f"{spec} has no --hash"
        req = Requirement(spec)
        (specifier,) = req.specifier
        assert specifier.operator == "==", f"{spec} is not pinned to one version"
        name = canonicalize_name(req.name)
        assert name not in pins, f"{name} listed twice"
        pins[name] = (specifier.version, [o.split(":", 1)[1] for o in options])
    return pins


def _closure(names: list[str]) -> set[str]:
    """The installed distributions ``names`` need at run time (no extras), themselves included."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        for raw in importlib.metadata.requires(name) or []:
            req = Requirement(raw)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def test_ci_requirements_pin_every_package_of_the_verifier_with_hashes() -> None:
    pins = _pins()
    assert {"pynacl", "rfc8785"} <= pins.keys()
    assert _closure(["pynacl", "rfc8785"]) <= pins.keys(), "a dependency of the verifier is not pinned"
    # The pinned versions are the ones keyturn declares it works with.
    declared: dict[str, Requirement] = {
        canonicalize_name(r.name): r
        for r in map(Requirement, importlib.metadata.requires("keyturn") or [])
        if r.marker is None
    }
    for name in ("pynacl", "rfc8785"):
        assert declared[name].specifier.contains(pins[name][0]), f"{name} pin outside pyproject's range"


def test_keyturn_version_comes_from_the_package_metadata() -> None:
    done = subprocess.run([*KEYTURN, "--version"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"keyturn {importlib.metadata.version('keyturn')}"
    extra = subprocess.run(
        [*KEYTURN, "--version", "verify"], capture_output=True, text=True, timeout=60, check=False
    )
    assert extra.returncode == 2  # like -h: alone only, so it can never stand in for a gate that passed


def test_licence_and_changelog_ship() -> None:
    licence = (ROOT / "LICENSE").read_text()
    assert "Apache License" in licence
    assert "Version 2.0, January 2004" in licence
    assert "END OF TERMS AND CONDITIONS" in licence  # the full text, not a stub
    assert "## [Unreleased]" in (ROOT / "CHANGELOG.md").read_text()


@pytest.mark.slow
def test_sdist_and_wheel_build_and_pass_twine_check(tmp_path: Path) -> None:
    if importlib.util.find_spec("build") is None or importlib.util.find_spec("twine") is None:
        pytest.skip("build/twine not installed: re-run ./scripts/bootstrap.sh (dev extras)")
    out = tmp_path / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    files = sorted(out.iterdir())
    version = importlib.metadata.version("keyturn")
    assert [f.name for f in files] == [f"keyturn-{version}-py3-none-any.whl", f"keyturn-{version}.tar.gz"]
    checked = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *map(str, files)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    with zipfile.ZipFile(files[0]) as wheel:
        names = wheel.namelist()
    assert f"keyturn-{version}.dist-info/licenses/LICENSE" in names
    assert not [n for n in names if n.startswith("tests/")]
    # One import namespace: nothing installed under a generic top-level name such as `bot` or `signer`.
    assert {n.split("/")[0] for n in names} == {"keyturn", f"keyturn-{version}.dist-info"}
    assert {"keyturn/signer/verify.py", "keyturn/bot/server.py", "keyturn/emulator/app.py"} <= set(names)


def _extra_distributions(extras: dict[str, list[str]], name: str) -> set[str]:
    """The distributions an extra brings, following ``keyturn[...]`` self-references."""
    found: set[str] = set()
    for line in extras[name]:
        req = Requirement(line)
        if canonicalize_name(req.name) == "keyturn":
            for inner in req.extras:
                found |= _extra_distributions(extras, inner)
        else:
            found.add(canonicalize_name(req.name))
    return found


def test_the_dispatchers_extra_table_matches_pyproject() -> None:
    """``keyturn <command>`` names the extra to install from its own table of import names; each name it
    checks must be a library that extra really brings, or the hint would send a user to the wrong extra."""
    import tomllib

    from keyturn.cli import COMMANDS, EXTRA_MODULES, EXTRAS

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for extra, modules in EXTRA_MODULES.items():
        brought = _extra_distributions(extras, extra)
        assert {canonicalize_name(m) for m in modules} <= brought, extra
    assert set(EXTRAS.values()) <= set(extras)
    assert set(EXTRAS) | {"verify", "receipt", "request"} == set(COMMANDS)
