"""``python -m keyturn.signer``: the signer-side commands without the bot, for the signer-only image.

The signer image (deploy/Dockerfile, target ``signer``) ships this package and the libraries it needs, and
none of the bot's (Slack SDK, Redis, HTTP server): ``keyturn`` itself lives in ``keyturn/cli.py``, so this is
the same dispatch for the commands whose code is all here; ``keyturn`` takes its table from this one.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

# name -> ("module:function", one-line help). ``keyturn`` (keyturn/cli.py) offers these first, in this order.
COMMANDS: dict[str, tuple[str, str]] = {
    "verify": ("keyturn.signer.cli:verify_main", "verify a receipt offline (the CI gate; fails closed)"),
    "receipt": ("keyturn.signer.cli:receipt_main", "convert a receipt to or from a DSSE envelope"),
    "keygen": ("keyturn.signer.cli:keygen_main", "create a private signing keyset file"),
    "keys": ("keyturn.signer.cli:keys_main", "rotate, revoke or export keys"),
    "audit": (
        "keyturn.signer.cli:audit_main",
        "verify the audit log against signed checkpoints; archive them",
    ),
    "secrets": ("keyturn.signer.cli:secrets_main", "make a CI secret (keyturn secrets new)"),
    "policy": ("keyturn.signer.cli:policy_main", "check a keyturn.toml policy file"),
    "signer": ("keyturn.signer.cli:signer_main", "run the isolated signer"),
}
USAGE_EXIT = 2


def usage() -> str:
    """The command list."""
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: python -m keyturn.signer <command> [options]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``python -m keyturn.signer <command> ...``; 2 for a usage error, as ``keyturn``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["--help"] or args == ["-h"]:
        print(usage())
        return 0
    if not args or args[0] not in COMMANDS:
        print(usage(), file=sys.stderr)
        return USAGE_EXIT
    module_name, func_name = COMMANDS[args[0]][0].split(":")
    func: Callable[[Sequence[str]], int] = getattr(importlib.import_module(module_name), func_name)
    return func(args[1:])


if __name__ == "__main__":
    sys.exit(main())
