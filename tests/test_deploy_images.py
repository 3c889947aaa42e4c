"""The signer-only image (deploy/Dockerfile, target ``signer``) carries the signer and none of the bot.

No Docker engine runs here, so the image is not built; what makes it correct is checked instead: its
install list is the signer's libraries only (with pyproject.toml's ranges), its stage copies no bot code,
and every signer module, and the commands it runs, work with the bot's libraries made unimportable.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

from keyturn.cli import COMMANDS as KEYTURN_COMMANDS
from keyturn.signer.__main__ import COMMANDS as SIGNER_COMMANDS

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
SIGNER_REQUIREMENTS = ROOT / "deploy" / "requirements-signer.txt"
# The bot's libraries (pyproject.toml's dependencies the signer must never need), by import name.
BOT_ONLY = {
    "slack_bolt": "slack_bolt",
    "slack_sdk": "slack_sdk",
    "redis": "redis",
    "aiohttp": "aiohttp",
    "uvicorn": "uvicorn",
    "starlette": "starlette",
    "apscheduler": "apscheduler",
    "httpx": "httpx",
    "prometheus-client": "prometheus_client",
    "hiredis": "hiredis",
    "uvloop": "uvloop",
}


def _requirements(lines: list[str]) -> dict[str, Requirement]:
    reqs = [Requirement(line) for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return {r.name.lower(): r for r in reqs}


def test_signer_install_list_is_the_signers_libraries_with_pyprojects_ranges() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    # The image installs the base (PyNaCl, rfc8785) plus the `signer` extra, with the same ranges.
    declared = _requirements([*project["dependencies"], *extras["signer"]])
    signer = _requirements(SIGNER_REQUIREMENTS.read_text().splitlines())
    assert set(signer) == {"pynacl", "cryptography", "pydantic", "pydantic-settings", "rfc8785"}
    assert set(signer) == set(declared)
    for name, req in signer.items():
        assert str(req.specifier) == str(declared[name].specifier), f"{name}: ranges differ from pyproject"
    assert not set(signer) & set(BOT_ONLY)
    # Every runtime dependency is either the signer's or known to be the bot's: a new one must be placed.
    runtime = [
        r for name in ("bot", "emulator", "github-approver") for r in extras[name] if "keyturn" not in r
    ]
    assert set(_requirements(runtime)) <= set(signer) | set(BOT_ONLY)


def _stage(name: str) -> str:
    text = DOCKERFILE.read_text()
    match = re.search(rf"^FROM \S+ AS {name}\n(.*?)(?=^FROM |\Z)", text, re.M | re.S)
    assert match, f"no stage {name!r} in deploy/Dockerfile"
    return match.group(1)


def test_signer_stage_copies_no_bot_code_and_installs_only_its_list() -> None:
    stage = _stage("signer")
    copies = re.findall(r"^COPY (.+?) \S+$", stage, re.M)
    assert copies == ["deploy/requirements-signer.txt", "keyturn/__init__.py", "signer"]
    installs = re.findall(r"pip install [^&\n]*", stage)
    assert installs == ["pip install --no-cache-dir -r requirements-signer.txt "]
    assert "USER keyturn" in stage
    assert '"python", "-m", "keyturn.signer"' in stage
    bot = _stage("bot")
    assert "COPY bot ./bot" in bot
    assert "COPY signer ./keyturn/signer" in stage  # the real files, under the one namespace
    assert DOCKERFILE.read_text().rstrip().endswith('CMD ["--help"]')  # the bot stage stays the default


BLOCKER = """
import importlib.abc, sys
BLOCKED = set(sys.argv[1].split(","))
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED or name.startswith(("keyturn.bot", "keyturn.emulator")):
            raise ImportError(f"{name} is not in the signer image")
        return None
sys.meta_path.insert(0, Block())
"""


def _run_without_the_bot(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    blocked = ",".join([*BOT_ONLY.values(), "bot", "emulator"])
    return subprocess.run(
        [sys.executable, "-c", BLOCKER + code, blocked, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_every_signer_module_imports_without_the_bots_libraries() -> None:
    code = """
import importlib, pkgutil, keyturn.signer as signer
# The GitHub approver is a process of its own (it holds the App key and talks to GitHub's API over httpx):
# it is not part of the signer image, which stays network-free (docs/security.md, GitHub protection rules).
skip = {"keyturn.signer.__main__", "keyturn.signer.github_approver"}
names = [m.name for m in pkgutil.walk_packages(signer.__path__, "keyturn.signer.") if m.name not in skip]
for name in names:
    importlib.import_module(name)
print(len(names))
"""
    done = _run_without_the_bot(code)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) >= 15


def test_python_m_signer_runs_its_commands_without_the_bot(tmp_path: Path) -> None:
    keyset = tmp_path / "keys.json"
    code = """
import runpy, sys
sys.argv = ["signer", *sys.argv[2:]]
runpy.run_module("keyturn.signer", run_name="__main__")
"""
    done = _run_without_the_bot(code, "--help")
    assert done.returncode == 0, done.stderr
    assert "signer" in done.stdout
    done = _run_without_the_bot(code, "keygen", "--out", str(keyset))
    assert done.returncode == 0, done.stderr
    assert keyset.stat().st_mode & 0o077 == 0
    done = _run_without_the_bot(code, "policy", "check", str(ROOT / "deploy" / "keyturn.example.toml"))
    assert done.returncode == 0, done.stderr + done.stdout


def test_python_m_signer_offers_exactly_keyturns_signer_side_commands() -> None:
    signer_side = {
        name: entry
        for name, entry in KEYTURN_COMMANDS.items()
        if entry[0].startswith("keyturn.signer.")
        and name != "github-approver"  # its own process, not the signer's
    }
    assert signer_side == SIGNER_COMMANDS
