"""Argument rules of the ``keyturn`` commands whose exit 0 tells a pipeline "pass": ``verify``, ``request``.

A pipeline builds these argument lists from CI variables, so an argument list must never be able to turn a
gate into an exit 0 that verified nothing. argparse cannot promise that: it prints help and exits 0 when
``-h`` appears *anywhere* (even as the value of another option), expands abbreviations, lets a repeated
option silently win, and costs ``keyturn verify`` about a fifth of its floor. The rules, identical for both
commands (docs/security.md, "The gate: one receipt check"):

1. ``-h``/``--help`` asks for help only as the *sole* argument (``wants_help``). Anywhere else — among other
   arguments, after ``--``, as an option's value — it is a usage error, never help.
2. A value option takes the next argument or ``--name=VALUE``. The next argument must not be empty and must
   not start with ``-``: it is then an option, or a value a CI variable turned into one. A value that really
   starts with ``-`` is given as ``--name=VALUE``.
3. A flag takes no value (``--json=1`` is an error). Unknown options and abbreviations are errors.
4. Each option at most once: a second ``--env`` appended by a CI variable must not silently win.
5. ``--`` ends the options; every later argument is positional.
6. No argument may be the empty string (an unset CI variable must not shift the others).

Standard library only, and not even that at import: this is on ``keyturn verify``'s path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Collection, Sequence

HELP = ("-h", "--help")


class UsageError(Exception):
    """A bad invocation: the command prints this message and its usage, and exits 2."""


class ParsedArgs:
    """The outcome of ``parse``: option values by name (``"--repo"``), the flags given, the positionals."""

    __slots__ = ("flags", "positionals", "values")

    def __init__(self, values: dict[str, str], flags: frozenset[str], positionals: list[str]) -> None:
        self.values = values
        self.flags = flags
        self.positionals = positionals


def wants_help(argv: Sequence[str]) -> bool:
    """True only for an argument list that is exactly ``-h`` or ``--help`` (rule 1)."""
    return len(argv) == 1 and argv[0] in HELP


def parse(
    argv: Sequence[str],
    *,
    values: Collection[str],
    flags: Collection[str],
    required: Sequence[str] = (),
) -> ParsedArgs:
    """Parse ``argv`` by the rules above; ``values`` and ``flags`` are the option names (``"--repo"``).

    Raises ``UsageError``. The caller checks the number of positionals (it knows what they mean) and handles
    ``wants_help`` first: here a help argument is always an error.
    """
    for arg in argv:
        if arg in HELP:
            raise UsageError(f"{arg} must be the only argument; it is never an option value or an extra")
        if arg == "":
            raise UsageError("an argument is empty (an unset variable?)")
    got: dict[str, str] = {}
    seen_flags: set[str] = set()
    positionals: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            positionals.extend(argv[i:])
            break
        if not arg.startswith("-") or arg == "-":
            positionals.append(arg)
            continue
        name, eq, inline = arg.partition("=")
        if name in got or name in seen_flags:
            raise UsageError(f"{name} given twice")
        if name in values:
            if eq:
                value = inline
            elif i < len(argv) and not argv[i].startswith("-"):
                value = argv[i]
                i += 1
            elif i < len(argv):
                raise UsageError(
                    f"{name} needs a value, got the option-like {argv[i]!r} "
                    f"(write {name}=VALUE for a value starting with '-')"
                )
            else:
                raise UsageError(f"{name} needs a value")
            if not value:
                raise UsageError(f"{name} needs a non-empty value")
            got[name] = value
        elif name in flags:
            if eq:
                raise UsageError(f"{name} takes no value")
            seen_flags.add(name)
        else:
            raise UsageError(f"unknown option {name}")
    missing = [n for n in required if n not in got]
    if missing:
        raise UsageError(f"missing {', '.join(missing)}")
    return ParsedArgs(got, frozenset(seen_flags), positionals)
