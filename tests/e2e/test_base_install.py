"""The base install is what a CI job needs, and only that (issue 10: packages shaped like the trust boundary).

The wheel is built from this checkout and installed, without extras, into a fresh virtual environment. From
there the two CI commands run against the real stack: ``keyturn request --wait`` gets a receipt approved by
clicks, ``keyturn verify`` checks it. Nothing but PyNaCl (with its cffi), ``rfc8785`` and ``keyturn`` itself
is installed, and nothing but those and the standard library is imported. The install time against PyNaCl plus
``rfc8785`` alone is measured by ``bench/bench_install.py`` (a ratio, same run), not here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import CI_SECRET, SHA, Stack
from tests.harness import build_wheel, new_card_request_id

pytestmark = pytest.mark.slow

# pip's own distributions and the base install's: keyturn, PyNaCl (and what it is built on), RFC 8785.
ALLOWED_DISTRIBUTIONS = {"keyturn", "pynacl", "cffi", "pycparser", "rfc8785", "pip", "setuptools"}
# PyNaCl is nacl plus its compiled _sodium and cffi's _cffi_backend; _distutils_hack is the .pth hook of the
# setuptools every venv starts with (not loaded by keyturn).
ALLOWED_IMPORTS = {"keyturn", "nacl", "_sodium", "_cffi_backend", "rfc8785", "_distutils_hack"}
# Runs a keyturn command like the console script, then writes every module it loaded to the file in $MODULES.
RUN_AND_LIST_MODULES = (
    "import atexit, os, sys\n"
    "atexit.register(lambda: open(os.environ['MODULES'], 'w').write('\\n'.join(sorted(sys.modules))))\n"
    "from keyturn.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


@dataclass(frozen=True)
class BaseInstall:
    """A fresh virtual environment holding the keyturn wheel without extras."""

    venv: Path

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def distributions(self) -> set[str]:
        done = subprocess.run(
            [str(self.python), "-m", "pip", "list", "--format", "json"],
            capture_output=True, text=True, check=True, timeout=120,
        )  # fmt: skip
        return {d["name"].lower() for d in json.loads(done.stdout)}

    def keyturn(self, argv: list[str], modules: Path, **env: str) -> subprocess.Popen[str]:
        """Start ``keyturn <argv>`` from the fresh environment, outside this checkout."""
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("KEYTURN_", "PYTHON"))}
        return subprocess.Popen(
            [str(self.python), "-c", RUN_AND_LIST_MODULES, *argv],
            env=clean | {"MODULES": str(modules)} | env,
            cwd=self.venv,  # not the checkout: its folders must not be importable
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


def build_base_install(where: Path) -> BaseInstall:
    """Build the wheel from this checkout and install it, base only, into a new venv under ``where``."""
    wheel = build_wheel(where / "wheels")
    venv = where / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
        check=True, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    return BaseInstall(venv)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> BaseInstall:
    return build_base_install(tmp_path_factory.mktemp("base-install"))


def _third_party(modules_file: Path) -> set[str]:
    loaded = {m.split(".")[0] for m in modules_file.read_text().split()}
    return loaded - sys.stdlib_module_names - {"__main__"}


def test_base_install_holds_only_pynacl_and_rfc8785(base: BaseInstall) -> None:
    installed = base.distributions()
    assert installed - ALLOWED_DISTRIBUTIONS == set()
    assert {"keyturn", "pynacl", "rfc8785"} <= installed


def test_base_install_requests_and_verifies_a_receipt_loading_nothing_else(
    base: BaseInstall, stack: Stack, tmp_path: Path
) -> None:
    receipt = tmp_path / "receipt.json"
    keys = str(stack.keys_file)
    scope = ["--repo", "acme/web", "--sha", SHA, "--env", "production", "--workflow", "deploy.yml"]
    request_modules = tmp_path / "request.modules"
    since = len(stack.emulator.calls())
    proc = base.keyturn(
        ["request", "--url", stack.bot_url, *scope, "--requester", "github:alice", "--wait",
         "--timeout", "60", "--keys", keys, "--out", str(receipt)],
        request_modules, KEYTURN_CI_SECRET=CI_SECRET,
    )  # fmt: skip
    rid = new_card_request_id(stack.emulator, since, timeout=30)
    card = stack.card(rid)
    stack.click("U0BOB", card)
    stack.click("U0CAROL", card)
    _, stderr = proc.communicate(timeout=90)
    assert proc.returncode == 0, stderr

    verify_modules = tmp_path / "verify.modules"
    verify = base.keyturn(["verify", str(receipt), "--keys", keys, *scope], verify_modules)
    _, stderr = verify.communicate(timeout=60)
    assert verify.returncode == 0, stderr

    for modules in (request_modules, verify_modules):
        assert _third_party(modules) - ALLOWED_IMPORTS == set(), modules.name


def test_base_install_verify_still_fails_closed_on_another_sha(
    base: BaseInstall, stack: Stack, tmp_path: Path
) -> None:
    """The base install is the gate: without a receipt for exactly this deploy it exits non-zero."""
    missing = tmp_path / "none.json"
    scope = ["--repo", "acme/web", "--sha", "f" * 40, "--env", "production", "--workflow", "deploy.yml"]
    proc = base.keyturn(["verify", str(missing), "--keys", str(stack.keys_file), *scope], tmp_path / "m")
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert stderr.strip()


@pytest.mark.parametrize(
    ("command", "extra"),
    [("bot", "bot"), ("signer", "signer"), ("emulator", "emulator"), ("github-approver", "github-approver")],
)
def test_base_install_names_the_extra_a_command_needs(
    base: BaseInstall, tmp_path: Path, command: str, extra: str
) -> None:
    proc = base.keyturn([command, "--help"], tmp_path / "m")
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert f"pip install 'keyturn[{extra}]'" in stderr
    assert "Traceback" not in stderr
