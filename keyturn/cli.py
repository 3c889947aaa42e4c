"""The ``keyturn`` command line.

Each subcommand lives in its own module and is imported only when it runs, so ``keyturn verify`` (run by CI on
every deploy) loads the standard library, PyNaCl and the receipt code, nothing else. Signer-side commands are
dispatched by name; the bot's own modules never import the signer's key-holding code.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

from keyturn.signer.__main__ import COMMANDS as SIGNER_COMMANDS

# name -> ("module:function", one-line help). Each function takes argv (after the subcommand) and returns
# the process exit code. The signer-side commands come from ``python -m keyturn.signer``'s table
# (signer/__main__.py), which the signer image runs without the bot.
COMMANDS: dict[str, tuple[str, str]] = {
    **SIGNER_COMMANDS,
    "bot": ("keyturn.bot.server:main", "run the Slack bot and CI API"),
    "request": ("keyturn.bot.client:main", "ask for an approval from CI and wait for the receipt"),
    "emulator": ("keyturn.emulator.__main__:main", "run the Slack emulator"),
    "oidc-emulator": ("keyturn.emulator.oidc:main", "run the OIDC issuer emulator (GitHub/GitLab ID tokens)"),
    "github-emulator": (
        "keyturn.emulator.github:main",
        "run the GitHub emulator (deployment protection rules)",
    ),
    "github-approver": (
        "keyturn.signer.github_approver:main",
        "hold the GitHub App key; approve protected runs only on verified receipts",
    ),
    "dev": ("keyturn.bot.dev:main", "run everything locally: Redis, signer, bot and the Slack emulator"),
}

USAGE_EXIT = 2
HELP_ARGS = ("-h", "--help", "help")
VERSION_ARGS = ("-V", "--version")


def version() -> str:
    """The installed distribution's version (package metadata: one source of truth, pyproject.toml)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("keyturn")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown (not installed)"


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: keyturn <command> [options]", "       keyturn --version", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run 'keyturn <command> --help' for a command's options."]
    return "\n".join(lines)


# The extra each command's libraries come from (pyproject.toml's optional dependencies). The base install,
# what a CI job needs, has only `verify`, `receipt` and `request`; the rest name their extra when missing.
EXTRAS: dict[str, str] = {
    **dict.fromkeys(("keygen", "keys", "audit", "secrets", "policy", "signer"), "signer"),
    "bot": "bot",
    **dict.fromkeys(("emulator", "oidc-emulator", "github-emulator"), "emulator"),
    "github-approver": "github-approver",
    "dev": "all",
}


# What each extra brings, by import name (pyproject.toml's optional dependencies). Checked before a command is
# imported, so a command whose own imports are lazy still names its extra instead of failing half-way.
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "signer": ("cryptography", "pydantic", "pydantic_settings"),
    "bot": ("slack_bolt", "slack_sdk", "redis", "apscheduler", "uvicorn", "starlette", "aiohttp", "httpx"),
    "github-approver": ("cryptography", "pydantic", "uvicorn", "starlette", "httpx"),
    "emulator": ("cryptography", "pydantic", "uvicorn", "starlette", "aiohttp", "httpx"),
}
EXTRA_MODULES["all"] = tuple(dict.fromkeys(m for mods in EXTRA_MODULES.values() for m in mods))


def _missing_library(extra: str) -> str | None:
    from importlib.util import find_spec

    return next((m for m in EXTRA_MODULES[extra] if find_spec(m) is None), None)


class MissingExtra(Exception):
    """A command's library is not installed: the install lacks the extra that brings it.

    ``extra`` is None for a base command (``verify``, ``request``, ``receipt``): its libraries are the base
    install's own, so no extra would help; the install itself is broken and must be redone.
    """

    def __init__(self, command: str, library: str, extra: str | None) -> None:
        remedy = (
            f"install the '{extra}' extra: pip install 'keyturn[{extra}]'"
            if extra
            else "the base install is incomplete; reinstall it: pip install --force-reinstall keyturn"
        )
        super().__init__(f"keyturn {command}: the library {library!r} is not installed; {remedy}")


def _resolve(name: str) -> Callable[[Sequence[str]], int]:
    module_name, func_name = COMMANDS[name][0].split(":")
    extra = EXTRAS.get(name)
    missing = _missing_library(extra) if extra else None
    if extra and missing:
        raise MissingExtra(name, missing, extra)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # Our own modules are always installed; a missing third-party library means a missing extra.
        if exc.name is None or exc.name.split(".")[0] == "keyturn":
            raise
        raise MissingExtra(name, exc.name, extra) from exc
    func: Callable[[Sequence[str]], int] = getattr(module, func_name)
    return func


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``keyturn <command> ...`` and return its exit code (2 for usage errors)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print(_usage(), file=sys.stderr)
        return USAGE_EXIT
    if args[0] in VERSION_ARGS:
        if len(args) == 1:
            print(f"keyturn {version()}")
            return 0
        print(f"keyturn: {args[0]} must be the only argument", file=sys.stderr)
        return USAGE_EXIT
    if args[0] in HELP_ARGS:
        # Help exits 0 only alone: `keyturn -h verify …` (a CI variable in front of the command) must not
        # skip the gate and still pass.
        if len(args) == 1:
            print(_usage())
            return 0
        print(f"keyturn: {args[0]} must be the only argument\n\n{_usage()}", file=sys.stderr)
        return USAGE_EXIT
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"keyturn: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return USAGE_EXIT
    try:
        command = _resolve(name)
    except MissingExtra as exc:
        print(str(exc), file=sys.stderr)
        return USAGE_EXIT
    return command(rest)


if __name__ == "__main__":
    sys.exit(main())
