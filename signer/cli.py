"""Signer-side subcommands of ``keyturn``: verify, receipt, keygen, keys, audit (and signer, policy).

Each ``*_main(argv) -> exit code`` is dispatched by ``bot/cli.py``. Top-level imports are the standard library
only, and each command imports what it needs when it runs: ``keyturn verify`` runs in CI on every deploy and
loads just the standard library, PyNaCl, ``rfc8785`` and the receipt code (measured in bench/bench_verify.py).
Not even ``pathlib`` (with ``fnmatch`` and ``urllib.parse`` it costs several milliseconds per process): the
verify path works on ``os.path`` strings.

Exit codes: 0 success; 1 refusal (``REJECTED <code>: <detail>`` on stderr for verify); 2 usage error.
"""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Any

from signer.receipt import UTC, datetime

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Sequence

    from signer.keyset import PublicKeyset
else:

    class _LazyModule:
        """Imports the named module on first attribute access (argparse costs ~10 ms; see verify_main)."""

        def __init__(self, name: str) -> None:
            self._name = name

        def __getattr__(self, attr: str) -> Any:
            import importlib

            return getattr(importlib.import_module(self._name), attr)

    argparse = _LazyModule("argparse")

OK, REJECTED, USAGE = 0, 1, 2
MAX_KEYSET_BYTES = 1024 * 1024
KEYSET_FETCH_TIMEOUT_S = 10.0
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


class _UsageError(Exception):
    """A bad invocation: exit 2."""


class _Rejected(Exception):
    """A refusal before or outside ``verify_receipt``: exit 1 with this code."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def _run_parser(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace | int:
    """Parse ``argv``; return the exit code instead of raising SystemExit (``-h`` is 0, errors 2)."""
    try:
        return parser.parse_args(list(argv))
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else USAGE


def _now() -> datetime:
    # The one place these commands read the clock; everything below takes the time as a parameter.
    return datetime.now(UTC)


def _read_capped(path: str, limit: int, what: str) -> bytes:
    """Read at most ``limit`` bytes from a file or ``-`` (stdin); more is a refusal, not a truncation."""
    try:
        if path == "-":
            data = sys.stdin.buffer.read(limit + 1)
        else:
            with open(path, "rb") as f:
                data = f.read(limit + 1)
    except OSError as e:
        raise _Rejected("unreadable", f"cannot read {what} {path}: {e.strerror}") from None
    if len(data) > limit:
        raise _Rejected(
            "malformed" if what == "receipt" else "bad_keyset", f"{what} larger than {limit} bytes"
        )
    return data


# ====================================================================================================
# Trust core commands: verify, receipt, keygen, keys, audit
# ====================================================================================================


def _exists(path: str) -> bool:
    """Whether ``path`` exists. Only "no such file" is False: any other error (say, no permission to look)
    propagates, so doubt about the checkout is a refusal, never a pass."""
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    return True


def _checkout_root(start: str) -> str | None:
    """The git work tree containing the resolved directory ``start`` (the checkout being deployed), if any."""
    d = start
    while not _exists(os.path.join(d, ".git")):
        parent = os.path.dirname(d)
        if parent == d:
            return None
        d = parent
    return d


def _refuse_keyset_in_checkout(path: str) -> None:
    """Refuse a keyset file that lives inside the checkout being deployed: a pull request could replace it."""
    keys = os.path.realpath(path)
    roots = [_checkout_root(os.path.realpath(os.getcwd()))]
    if os.environ.get("GITHUB_WORKSPACE"):
        roots.append(os.path.realpath(os.environ["GITHUB_WORKSPACE"]))
    for root in roots:
        # Both are absolute and resolved: a common path equal to root means keys is root or lies below it.
        if root is not None and os.path.commonpath([keys, root]) == root:
            raise _Rejected(
                "untrusted_keyset",
                f"keyset {path} is inside the checkout being deployed ({root}); "
                "a pull request could replace it. "
                "Fetch it from the signer (https URL) or a path outside the checkout, "
                "or pass --trust-keys-in-checkout if this checkout is trusted",
            )


def _is_allowed_url(url: str) -> bool:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return True
    return parts.scheme == "http" and parts.hostname in _LOOPBACK


def _fetch_keyset(url: str, deadline: float = KEYSET_FETCH_TIMEOUT_S) -> bytes:
    """GET a keyset over https (plain http only to loopback, for tests), size-capped, within ``deadline`` s.

    The socket timeout bounds each read, not the whole fetch: a server trickling a byte now and then would
    hold the CI job forever. So the fetch runs in a daemon thread and is abandoned at the deadline.
    """
    import threading

    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["data"] = _fetch_keyset_blocking(url)
        except Exception as e:  # handed to the caller's thread below
            box["error"] = e

    worker = threading.Thread(target=work, name="keyset-fetch", daemon=True)
    worker.start()
    worker.join(deadline)
    if worker.is_alive():
        raise _Rejected("keyset_unavailable", f"the keyset URL did not answer within {deadline:g} s")
    if "error" in box:
        raise box["error"]
    data: bytes = box["data"]
    return data


def _fetch_keyset_blocking(url: str) -> bytes:
    """The fetch itself. Redirects are followed only to URLs that pass the same rule as ``url``, so an https
    URL cannot be downgraded."""
    import http.client
    import urllib.error
    import urllib.request

    class _SafeRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
            if not _is_allowed_url(newurl):
                raise _Rejected("keyset_unavailable", f"refusing redirect of the keyset URL to {newurl}")
            return super().redirect_request(req, fp, code, msg, headers, newurl)

    opener = urllib.request.build_opener(_SafeRedirect)
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310 - scheme checked
    try:
        with opener.open(request, timeout=KEYSET_FETCH_TIMEOUT_S) as resp:
            data: bytes = resp.read(MAX_KEYSET_BYTES + 1)
    except urllib.error.HTTPError as e:
        raise _Rejected("keyset_unavailable", f"keyset URL answered HTTP {e.code}") from None
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", e)
        raise _Rejected("keyset_unavailable", f"cannot fetch keyset: {reason}") from None
    if len(data) > MAX_KEYSET_BYTES:
        raise _Rejected("bad_keyset", f"keyset larger than {MAX_KEYSET_BYTES} bytes")
    return data


def _load_keyset(source: str, *, trust_checkout: bool) -> PublicKeyset:
    from signer.errors import KeysetError
    from signer.keyset import PublicKeyset

    if "://" in source:
        data = _fetch_keyset(source)
    else:
        if not trust_checkout:
            _refuse_keyset_in_checkout(source)
        data = _read_capped(source, MAX_KEYSET_BYTES, "keyset")
    try:
        return PublicKeyset.from_jwks(data)
    except KeysetError as e:
        raise _Rejected("bad_keyset", str(e)) from None


VERIFY_USAGE = """\
usage: keyturn verify RECEIPT --keys KEYSET --repo REPO --sha SHA --env ENV --workflow WORKFLOW
                      [--at TIME] [--json] [--allow-dev-keys] [--trust-keys-in-checkout]

Verify a Keyturn receipt offline before deploying. Fails closed: exit 0 only for a valid, approved,
unexpired receipt for exactly this repo, commit, environment and workflow; exit 1 with
"REJECTED <code>: <detail>" on stderr otherwise; exit 2 for usage errors.

The keyset must come from a trusted place (the signer's /v1/keys over https, or a pinned file),
never from the checkout being deployed.

arguments:
  RECEIPT                   receipt file (plain JSON or DSSE envelope), or - for stdin
  --keys KEYSET             public keyset (JWKS): a file or an https URL
  --repo REPO               repository being deployed, e.g. acme/service
  --sha SHA                 full commit sha being deployed
  --env ENV                 environment being deployed to
  --workflow WORKFLOW       workflow doing the deploy, e.g. deploy.yml
  --at TIME                 verify as of TIME (RFC 3339 UTC, e.g. 2026-02-28T16:30:00Z)
  --json                    print the result as one JSON object on stdout
  --allow-dev-keys          accept development keys (never in production)
  --trust-keys-in-checkout  accept a keyset file inside the current git checkout (normally refused)
"""
_VERIFY_VALUES = ("--keys", "--repo", "--sha", "--env", "--workflow", "--at")
_VERIFY_FLAGS = ("--json", "--allow-dev-keys", "--trust-keys-in-checkout")


def _parse_verify_args(argv: Sequence[str]) -> dict[str, Any]:
    """Parse ``keyturn verify`` arguments. A hand-written parser: argparse alone would add about a fifth
    of the verify floor to every CI deploy (bench/bench_verify.py). Raises ``_UsageError``."""
    opts: dict[str, Any] = dict.fromkeys(_VERIFY_FLAGS, False)
    positional: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        name, eq, inline = arg.partition("=")
        if arg == "--":
            positional += args[i + 1 :]
            break
        if name in _VERIFY_VALUES:
            if eq:
                value = inline
            elif i + 1 < len(args):
                i += 1
                value = args[i]
            else:
                raise _UsageError(f"{name} needs a value")
            if name in opts:
                raise _UsageError(f"{name} given twice")
            opts[name] = value
        elif arg in _VERIFY_FLAGS:
            opts[arg] = True
        elif arg.startswith("-") and arg != "-":
            raise _UsageError(f"unknown option {arg}")
        else:
            positional.append(arg)
        i += 1
    if len(positional) != 1:
        raise _UsageError("exactly one RECEIPT (a file, or - for stdin) is required")
    missing = [n for n in _VERIFY_VALUES if n != "--at" and n not in opts]
    if missing:
        raise _UsageError(f"missing {', '.join(missing)}")
    opts["receipt"] = positional[0]
    return opts


def verify_main(argv: Sequence[str]) -> int:
    """``keyturn verify``: exit 0 with one ``OK ...`` line; 1 with ``REJECTED <code>: <detail>`` on stderr;
    2 for usage errors."""
    if any(a in ("-h", "--help") for a in argv):
        print(VERIFY_USAGE, end="")
        return OK
    as_json = "--json" in argv
    from signer.errors import VerificationError
    from signer.receipt import Scope, parse_time
    from signer.verify import verify_receipt

    try:
        args = _parse_verify_args(argv)
        if "--at" in args:
            try:
                now = parse_time(args["--at"])
            except VerificationError:
                raise _UsageError(
                    f"--at must be RFC 3339 UTC like 2026-02-28T16:30:00Z, got {args['--at']!r}"
                ) from None
        else:
            now = _now()
        keys_source: str = args["--keys"]
        if "://" in keys_source and not _is_allowed_url(keys_source):
            raise _UsageError("--keys must be a file or an https URL (plain http only to localhost)")
        keyset = _load_keyset(keys_source, trust_checkout=args["--trust-keys-in-checkout"])
        data = _read_capped(args["receipt"], 64 * 1024, "receipt")
        expected = Scope(
            repo=args["--repo"], sha=args["--sha"], environment=args["--env"], workflow=args["--workflow"]
        )
        verified = verify_receipt(data, keyset, expected, now, allow_dev_keys=args["--allow-dev-keys"])
    except _UsageError as e:
        print(f"keyturn verify: {e}\n\n{VERIFY_USAGE}", end="", file=sys.stderr)
        return USAGE
    except _Rejected as e:
        return _reject(e.code, e.detail, as_json)
    except VerificationError as e:
        return _reject(e.code, e.message, as_json)
    except Exception as e:  # fail closed: any unexpected error is a refusal, never a pass
        return _reject("internal_error", f"{type(e).__name__} while verifying", as_json)

    if as_json:
        out = {
            "ok": True,
            "requestId": verified.request_id,
            "status": verified.status,
            "scope": verified.scope.to_json(),
            "approver": verified.approver.to_json(),
            "approvals": [a.to_json() for a in verified.approvals],
            "issuedAt": verified.raw["issuedAt"],
            "expiresAt": verified.raw["expiresAt"],
            "keyId": verified.key_id,
        }
        print(json.dumps(out, sort_keys=True))
    else:
        print(verified.summary())
    return OK


def _reject(code: str, detail: str, as_json: bool) -> int:
    print(f"REJECTED {code}: {detail}", file=sys.stderr)
    if as_json:
        print(json.dumps({"ok": False, "code": code, "detail": detail}, sort_keys=True))
    return REJECTED


def receipt_main(argv: Sequence[str]) -> int:
    """``keyturn receipt to-dsse|from-dsse FILE``: convert between a plain receipt and a DSSE envelope.

    Converts only (structure is checked, the signature is not): use ``keyturn verify`` to verify.
    """
    p = argparse.ArgumentParser(prog="keyturn receipt", description=receipt_main.__doc__)
    p.add_argument("direction", choices=["to-dsse", "from-dsse"])
    p.add_argument(
        "file", metavar="FILE", nargs="?", default="-", help="input file, or - for stdin (default)"
    )
    parsed = _run_parser(p, argv)
    if isinstance(parsed, int):
        return parsed
    from signer.errors import KeyturnError
    from signer.receipt import MAX_RECEIPT_BYTES, from_dsse, is_dsse, parse_receipt, strict_loads, to_dsse

    try:
        obj = strict_loads(_read_capped(parsed.file, MAX_RECEIPT_BYTES, "receipt"))
        if parsed.direction == "to-dsse":
            if is_dsse(obj):
                raise _Rejected("malformed", "input is already a DSSE envelope")
            out = to_dsse(obj)
        else:
            out = from_dsse(obj)
            parse_receipt(out, signed=True)
    except _Rejected as e:
        print(f"keyturn receipt: {e.code}: {e.detail}", file=sys.stderr)
        return REJECTED
    except KeyturnError as e:
        print(f"keyturn receipt: {e.code}: {e}", file=sys.stderr)
        return REJECTED
    print(json.dumps(out, indent=2, sort_keys=True))
    return OK


def keygen_main(argv: Sequence[str]) -> int:
    """``keyturn keygen --out FILE [--dev]``: create a private keyset file (mode 0600) with one active key,
    and print its key id and public JWK."""
    p = argparse.ArgumentParser(prog="keyturn keygen", description=keygen_main.__doc__)
    p.add_argument(
        "--out", required=True, metavar="FILE", help="where to write the private key file (must not exist)"
    )
    p.add_argument(
        "--dev", action="store_true", help="make a development key (kid 'dev-...'; refused by verify)"
    )
    parsed = _run_parser(p, argv)
    if isinstance(parsed, int):
        return parsed
    from signer.errors import KeyturnError
    from signer.keys import SigningKeyset

    try:
        keys = SigningKeyset.generate(parsed.out, dev=parsed.dev, now=_now())
    except KeyturnError as e:
        print(f"keyturn keygen: {e}", file=sys.stderr)
        return REJECTED
    jwk = next(k for k in keys.public_keyset().to_jwks()["keys"] if k["kid"] == keys.active_kid)
    print(f"kid: {keys.active_kid}")
    print(json.dumps(jwk, sort_keys=True))
    return OK


def keys_main(argv: Sequence[str]) -> int:
    """``keyturn keys rotate|revoke KID|export [--out FILE]`` on the private key file given by ``--key-file``
    (default: $KEYTURN_SIGNER_KEYSET, the signer's own setting)."""
    p = argparse.ArgumentParser(prog="keyturn keys", description=keys_main.__doc__)
    p.add_argument("--key-file", default=os.environ.get("KEYTURN_SIGNER_KEYSET"), metavar="FILE")
    sub = p.add_subparsers(dest="action", required=True)
    sub.add_parser(
        "rotate", help="retire the active key (it keeps verifying older receipts) and add a new one"
    )
    rv = sub.add_parser("revoke", help="revoke a retired key: it never verifies again")
    rv.add_argument("kid")
    ex = sub.add_parser("export", help="print the public keyset (JWKS) for verifiers")
    ex.add_argument("--out", metavar="FILE", help="write to FILE instead of stdout")
    parsed = _run_parser(p, argv)
    if isinstance(parsed, int):
        return parsed
    if not parsed.key_file:
        print("keyturn keys: --key-file (or KEYTURN_SIGNER_KEYSET) is required", file=sys.stderr)
        return USAGE
    from signer.errors import KeyturnError
    from signer.keys import SigningKeyset

    actions: dict[str, Callable[[], SigningKeyset]] = {
        "rotate": lambda: SigningKeyset.rotate(parsed.key_file, _now()),
        "revoke": lambda: SigningKeyset.revoke(parsed.key_file, parsed.kid, _now()),
        "export": lambda: SigningKeyset.load(parsed.key_file),
    }
    try:
        keys = actions[parsed.action]()
        if parsed.action == "export":
            text = json.dumps(keys.public_keyset().to_jwks(), indent=2, sort_keys=True) + "\n"
            if parsed.out:
                with open(parsed.out, "w") as f:
                    f.write(text)
            else:
                sys.stdout.write(text)
        else:
            print(f"active kid: {keys.active_kid}")
    except (KeyturnError, OSError) as e:
        print(f"keyturn keys: {e}", file=sys.stderr)
        return REJECTED
    return OK


def audit_main(argv: Sequence[str]) -> int:
    """``keyturn audit verify FILE``: check the audit log's hash chain; name the first broken entry."""
    p = argparse.ArgumentParser(prog="keyturn audit", description=audit_main.__doc__)
    sub = p.add_subparsers(dest="action", required=True)
    v = sub.add_parser("verify", help="check the hash chain")
    v.add_argument("file", metavar="FILE")
    parsed = _run_parser(p, argv)
    if isinstance(parsed, int):
        return parsed
    from signer.audit import verify_file
    from signer.errors import AuditError

    try:
        n = verify_file(parsed.file)
    except AuditError as e:
        print(f"BROKEN {e}", file=sys.stderr)
        return REJECTED
    print(f"OK {n} entries")
    return OK


# ====================================================================================================
# Signer service commands: signer, policy (owned by the signer-service engineer)
# ====================================================================================================


def signer_main(argv: Sequence[str]) -> int:
    """``keyturn signer``: run the isolated signer on its Unix socket (configured by ``KEYTURN_*`` variables).

    Refuses to start (one line on stderr, exit 2) on a bad key file, an invalid policy, missing secrets or a
    socket path in use. Prints ``signer ready on <socket> key <kid>`` once it accepts connections.
    """
    import argparse

    p = argparse.ArgumentParser(
        prog="keyturn signer",
        description=signer_main.__doc__,
        epilog="Variables: KEYTURN_SIGNER_SOCKET, KEYTURN_SIGNER_SOCKET_GROUP, KEYTURN_SIGNER_KEYSET, "
        "KEYTURN_POLICY, KEYTURN_SLACK_SIGNING_SECRET (or _FILE), KEYTURN_CI_SECRET (or _FILE), "
        "KEYTURN_AUDIT_LOG, KEYTURN_SIGNER_IDLE_TIMEOUT, KEYTURN_SIGNER_MAX_CONNECTIONS "
        "(see docs/configuration.md).",
    )
    parsed = _run_parser(p, argv)
    if isinstance(parsed, int):
        return parsed
    from signer.config import ConfigError, load_settings
    from signer.service import run

    try:
        settings = load_settings()
    except ConfigError as e:
        print(f"keyturn signer: refusing to start: {e.code}: {e}", file=sys.stderr)
        return USAGE
    return run(settings)


def policy_main(argv: Sequence[str]) -> int:
    """``keyturn policy check FILE`` validates a policy file (OK, or each error with its key path).
    ``keyturn policy pin-groups FILE`` asks Slack for the members of every approver group and prints the
    ``[groups]`` tables (``--write``: replaces them in FILE). The Slack bot token is read from
    $KEYTURN_SLACK_BOT_TOKEN only."""
    p = argparse.ArgumentParser(prog="keyturn policy", description=policy_main.__doc__)
    sub = p.add_subparsers(dest="action", required=True)
    c = sub.add_parser("check", help="validate a keyturn.toml")
    c.add_argument("file", metavar="FILE")
    g = sub.add_parser(
        "pin-groups",
        help="pin approver group members from Slack into [groups]",
        description="Ask Slack (usergroups.users.list) for the members of every group named in "
        "approver_groups and print the [groups.<id>] tables, or replace them in FILE with --write. "
        "Fails closed: any Slack error or an invalid result exits 1 and writes nothing. "
        "The bot token is read from $KEYTURN_SLACK_BOT_TOKEN (never a flag).",
    )
    g.add_argument("file", metavar="FILE")
    g.add_argument(
        "--api-url",
        help="Slack Web API base URL (default: $KEYTURN_SLACK_API_URL, else https://slack.com/api/); "
        "https only, plain http only to loopback",
    )
    g.add_argument(
        "--write", action="store_true", help="replace the [groups] tables in FILE (atomically) after checking"
    )
    parsed = _run_parser(p, argv)
    if isinstance(parsed, int):
        return parsed
    if parsed.action == "pin-groups":
        return _pin_groups(parsed)
    from signer.policy import PolicyError, load_policy

    try:
        policy = load_policy(parsed.file)
    except PolicyError as e:
        for issue in e.issues:
            print(f"{e.source}: {issue}", file=sys.stderr)
        return REJECTED
    envs = ", ".join(policy.environments)
    print(f"OK {parsed.file}: {len(policy.environments)} environment(s) ({envs}), sha256 {policy.sha256}")
    return OK


def _pin_groups(args: argparse.Namespace) -> int:
    import hashlib

    from signer import pin_groups as pg

    prog = "keyturn policy pin-groups"
    token = os.environ.get(pg.TOKEN_ENV, "")
    if not token.strip():
        print(f"{prog}: ${pg.TOKEN_ENV} is not set (the bot token, with usergroups:read)", file=sys.stderr)
        return USAGE
    try:
        api_url = pg.check_api_url(args.api_url or os.environ.get(pg.API_URL_ENV) or pg.DEFAULT_API_URL)
    except pg.PinError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return USAGE
    try:
        with open(args.file, "rb") as f:
            data = f.read(pg.MAX_POLICY_BYTES + 1)
    except OSError as e:
        print(f"{prog}: cannot read {args.file}: {e.strerror or e}", file=sys.stderr)
        return USAGE
    try:
        if len(data) > pg.MAX_POLICY_BYTES:
            raise ValueError(f"larger than {pg.MAX_POLICY_BYTES} bytes")
        text = data.decode("utf-8")
    except ValueError as e:  # UnicodeDecodeError included
        reason = "not UTF-8" if isinstance(e, UnicodeDecodeError) else str(e)
        print(f"{prog}: {args.file}: {reason}", file=sys.stderr)
        return REJECTED
    try:
        result = pg.pin(text, lambda group: pg.fetch_members(api_url, token, group), args.file)
        if args.write and result.text is None:
            pg.replace_groups_section(text, result.section)  # raises the reason it cannot be done
    except pg.PinError as e:
        print(f"{prog}: {e} (nothing written)" if args.write else f"{prog}: {e}", file=sys.stderr)
        return REJECTED
    for line in result.changes or ("no approver_groups: nothing to pin",):
        print(f"{prog}: {line}", file=sys.stderr)
    if not args.write:
        sys.stdout.write(result.section)
        return OK
    assert result.text is not None  # checked above
    if result.text == text:
        print(f"{prog}: {args.file} is up to date", file=sys.stderr)
        return OK
    try:
        pg.write_atomically(args.file, result.text)
    except OSError as e:
        print(f"{prog}: cannot write {args.file}: {e.strerror or e} (nothing written)", file=sys.stderr)
        return REJECTED
    digest = hashlib.sha256(result.text.encode("utf-8")).hexdigest()
    print(
        f"{prog}: wrote {args.file}, sha256 {digest}; review the diff, then restart the signer and the bot",
        file=sys.stderr,
    )
    return OK
