"""The lines the design draws between parts (docs/design.md §2), held by tests.

The signer is the trust core: it never imports the bot, and the bot never loads the code that touches the
private key. ``keyturn verify`` runs on every deploy, so its import path stays light.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NAMESPACED = ("bot", "signer", "emulator")
KEY_HOLDING = {"keyturn.signer.keys", "keyturn.signer.service", "keyturn.signer.cli", "keyturn.signer.config"}


def imported_modules(path: Path) -> set[str]:
    """Every module a source file imports (absolute names; relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    folders = path.relative_to(ROOT).with_suffix("").parts[:-1]
    # The source folders are the packages keyturn.bot, keyturn.signer and keyturn.emulator.
    package = ".".join(("keyturn", *folders) if folders and folders[0] in NAMESPACED else folders)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def sources(package: str) -> list[Path]:
    """The Python files of a top-level package."""
    return sorted((ROOT / package).rglob("*.py"))


def _importing(packages: tuple[str, ...], banned: tuple[str, ...]) -> dict[str, list[str]]:
    """Files of ``packages`` that import any module under one of the ``banned`` prefixes."""
    offenders = {
        str(p.relative_to(ROOT)): sorted(
            m for m in imported_modules(p) if any(m == b or m.startswith(b + ".") for b in banned)
        )
        for package in packages
        for p in sources(package)
    }
    return {k: v for k, v in offenders.items() if v}


def test_signer_never_imports_bot_or_emulator() -> None:
    assert _importing(("signer",), ("keyturn.bot", "keyturn.emulator")) == {}


def test_bot_never_imports_the_emulator() -> None:
    """The emulator is a test and demo tool in its own folder; the bot runs the same with or without it."""
    assert _importing(("bot",), ("keyturn.emulator",)) == {}


def test_nothing_imports_a_generic_top_level_name() -> None:
    """Every import goes through the ``keyturn`` namespace: ``bot``, ``signer`` and ``emulator`` resolve from
    a checkout (the folders are on the path) but are not installed, so such an import would pass here and fail
    in the wheel, or load a module twice under two names."""
    packages = ("bot", "signer", "emulator", "tests", "bench")
    files = [p for package in packages for p in sorted((ROOT / package).rglob("*.py"))]
    files += sorted((ROOT / "keyturn").glob("*.py"))  # its folders are links to the three above
    offenders = {
        str(p.relative_to(ROOT)): sorted(m for m in imported_modules(p) if m.split(".")[0] in NAMESPACED)
        for p in files
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_commands_import_through_strings_resolve() -> None:
    """The ``keyturn`` dispatcher imports each command by a string: each names a module and a function."""
    from keyturn.cli import COMMANDS

    for name, (target, _) in COMMANDS.items():
        module_name, func = target.split(":")
        assert module_name.split(".")[0] == "keyturn", name
        path = ROOT / (module_name.replace(".", "/") + ".py")
        assert path.exists(), (name, path)
        assert func in _names_defined(path), (name, target)


def _names_defined(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}


def test_bot_never_imports_key_holding_signer_code() -> None:
    offenders = {str(p.relative_to(ROOT)): sorted(imported_modules(p) & KEY_HOLDING) for p in sources("bot")}
    assert {k: v for k, v in offenders.items() if v} == {}


def _loaded_after_import(module: str) -> set[str]:
    code = f"import sys, {module}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return set(out.stdout.split())


@pytest.mark.parametrize(
    "module", ["keyturn.signer.verify", "keyturn.signer.receipt", "keyturn.signer.keyset"]
)
def test_verify_path_is_light(module: str) -> None:
    heavy = {"pydantic", "slack_sdk", "slack_bolt", "redis", "apscheduler", "starlette", "uvicorn", "aiohttp"}
    heavy |= {"cryptography"}  # RSA is for OIDC tokens at the signer; a receipt needs only PyNaCl
    loaded = {m.split(".")[0] for m in _loaded_after_import(module)}
    assert loaded & heavy == set()


def test_verify_cli_loads_little_beyond_pynacl() -> None:
    """What ``keyturn verify`` imports beyond the benchmark's floor (PyNaCl), as in an installed package: run
    without ``site`` so the development install's path hooks (which load pathlib) do not hide anything."""
    code = (
        "import sys\nfrom nacl.signing import VerifyKey\nbefore = set(sys.modules)\n"
        "import keyturn.cli, keyturn.signer.cli, keyturn.signer.verify\n"
        "print('\\n'.join(sorted(set(sys.modules) - before)))"
    )
    paths = sysconfig.get_paths()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), paths["purelib"], paths["platlib"]])}
    out = subprocess.run(
        [sys.executable, "-S", "-c", code], capture_output=True, text=True, check=True, cwd=ROOT, env=env
    )
    added = {m.split(".")[0] for m in out.stdout.split()}
    # json and rfc8785 (with math) do the work; _datetime is the C datetime types without the datetime module.
    # Not here, each costing a CI deploy milliseconds: datetime, dataclasses, pathlib, argparse, hashlib, ...
    expected = {"keyturn", "json", "_json", "rfc8785", "math", "_datetime", "__future__", "importlib"}
    assert added - expected == set()


def test_running_bot_never_loads_the_private_key_code() -> None:
    loaded = _loaded_after_import("keyturn.bot.server")
    assert loaded & KEY_HOLDING == set()


@pytest.mark.parametrize(
    "module",
    [
        "keyturn.bot.lifecycle",
        "keyturn.bot.cards",
        "keyturn.bot.notices",
        "keyturn.bot.slack_text",
        "keyturn.signer.evidence",
        "keyturn.signer.oidc",
        "keyturn.signer.card",
        "keyturn.signer.words",
    ],
)
def test_pure_modules_do_no_io(module: str) -> None:
    io = {"redis", "socket", "asyncio", "aiohttp", "httpx", "urllib3", "starlette", "uvicorn"}
    path = ROOT / (module.replace(".", "/") + ".py")
    direct = {m.split(".")[0] for m in imported_modules(path)}
    assert direct & io == set()


def test_importing_the_oidc_parser_loads_no_rsa_library() -> None:
    """The bot reads token claims (unverified, to render the card) through signer.oidc; only verifying a
    signature, in the signer, loads ``cryptography``."""
    loaded = {m.split(".")[0] for m in _loaded_after_import("keyturn.signer.oidc")}
    assert "cryptography" not in loaded


def _names_used(path: Path) -> set[str]:
    """Every name a source file refers to: plain names, attributes and imported names."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            found.add(node.id)
        elif isinstance(node, ast.Attribute):
            found.add(node.attr)
        elif isinstance(node, ast.ImportFrom):
            found.update(alias.name for alias in node.names)
    return found


def test_one_gate_only_signer_gate_checks_receipts_and_parses_keysets() -> None:
    """Every "deploy or not" decision (``keyturn verify``, ``keyturn request --wait``) goes through
    ``signer/gate.py``: no other module calls the verifier or parses a public keyset, so no command can grow
    its own, drifting, trust rules again (docs/security.md, "The gate: one receipt check")."""
    own = {ROOT / "signer" / "verify.py", ROOT / "signer" / "keyset.py", ROOT / "signer" / "gate.py"}
    trust_calls = {"verify_receipt", "from_jwks"}
    offenders = {
        str(p.relative_to(ROOT)): sorted(_names_used(p) & trust_calls)
        for p in [*sources("bot"), *sources("signer")]
        if p not in own
    }
    assert {k: v for k, v in offenders.items() if v} == {}
    for command in ("bot/client.py", "signer/cli.py"):
        assert "keyturn.signer.gate" in imported_modules(ROOT / command), command
