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

from keyturn.signer.cli_args import UsageError as _UsageError
from keyturn.signer.receipt import UTC, datetime

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Sequence

    from keyturn.signer.cli_args import ParsedArgs
    from keyturn.signer.policy import Policy
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
HELP_ARGS = ("-h", "--help")


class _Rejected(Exception):
    """A refusal outside the gate (an unreadable or malformed input): exit 1 with this code."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def _run_parser(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace | int:
    """Parse ``argv``; return the exit code instead of raising SystemExit.

    Help exits 0 only when ``-h``/``--help`` is the sole argument. argparse would also print help and exit 0
    for ``-h`` anywhere (``keyturn audit verify -h`` from a CI variable naming the file) or an abbreviation
    (``--he``): any such exit, like every parse error, is a usage error (2), so exit 0 always means the
    command ran.
    """
    args = list(argv)
    options = args[: args.index("--")] if "--" in args else args
    # Before "--", -hx (bundled short options) and --he (an abbreviation) would print help too; after it they
    # are operands (a key id may start with "-h"), but a bare -h/--help is refused anywhere.
    help_like = any(a.startswith("-h") or (len(a) > 2 and "--help".startswith(a)) for a in options)
    if (help_like or any(a in HELP_ARGS for a in args)) and not (len(args) == 1 and args[0] in HELP_ARGS):
        print(f"{parser.prog}: -h/--help must be the only argument", file=sys.stderr)
        return USAGE
    try:
        return parser.parse_args(args)
    except SystemExit as e:
        return OK if e.code == 0 and len(args) == 1 and args[0] in HELP_ARGS else USAGE


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
        raise _Rejected(_TOO_LARGE.get(what, "malformed"), f"{what} larger than {limit} bytes")
    return data


_TOO_LARGE = {"receipt": "malformed", "keyset": "bad_keyset", "checkpoint": "bad_checkpoint"}


# ====================================================================================================
# Trust core commands: verify, receipt, keygen, keys, audit
# ====================================================================================================


VERIFY_USAGE = """\
usage: keyturn verify RECEIPT --keys KEYSET --repo REPO --sha SHA --env ENV --workflow WORKFLOW
                      [--at TIME] [--json] [--allow-dev-keys] [--trust-keys-in-checkout]
                      [--require-oidc]

Verify a Keyturn receipt offline before deploying. Fails closed: exit 0 only for a valid, approved,
unexpired receipt for exactly this repo, commit, environment and workflow; exit 1 with
"REJECTED <code>: <detail>" on stderr otherwise; exit 2 for usage errors.

The keyset must come from a trusted place (a pinned file, written from a CI variable), never from
the checkout being deployed, nor fetched from the bot (its GET /v1/keys): whoever serves the keyset
decides what verifies.

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
  --require-oidc            refuse a receipt whose requester was not proven by the job's OIDC token
                            (receipt format 1.1 with requesterProof; docs/receipt.md)

Each option at most once; a value starting with '-' is written --option=VALUE. -h/--help shows this
only as the sole argument: anywhere else it is a usage error (exit 2), never a pass.
"""
_VERIFY_VALUES = ("--keys", "--repo", "--sha", "--env", "--workflow", "--at")
_VERIFY_FLAGS = ("--json", "--allow-dev-keys", "--trust-keys-in-checkout", "--require-oidc")
_VERIFY_REQUIRED = ("--keys", "--repo", "--sha", "--env", "--workflow")


def _parse_verify_args(argv: Sequence[str]) -> ParsedArgs:
    """Parse ``keyturn verify`` arguments by the gate commands' rules (signer/cli_args.py). Hand-written:
    argparse alone would add about a fifth of the verify floor to every CI deploy (bench/bench_verify.py),
    and it turns ``-h`` anywhere into exit 0. Raises ``UsageError``."""
    from keyturn.signer.cli_args import UsageError, parse

    args = parse(argv, values=_VERIFY_VALUES, flags=_VERIFY_FLAGS, required=_VERIFY_REQUIRED)
    if len(args.positionals) != 1:
        raise UsageError("exactly one RECEIPT (a file, or - for stdin) is required")
    return args


def verify_main(argv: Sequence[str]) -> int:
    """``keyturn verify``: exit 0 with one ``OK ...`` line only after a completed verification; 1 with
    ``REJECTED <code>: <detail>`` on stderr; 2 for usage errors (``-h`` anywhere but alone is one)."""
    from keyturn.signer.cli_args import UsageError, wants_help

    if wants_help(argv):
        print(VERIFY_USAGE, end="")
        return OK
    as_json = False
    from keyturn.signer import gate
    from keyturn.signer.errors import VerificationError
    from keyturn.signer.receipt import Scope, parse_time

    try:
        args = _parse_verify_args(argv)
        opts, as_json = args.values, "--json" in args.flags
        if "--at" in opts:
            try:
                now = parse_time(opts["--at"])
            except VerificationError:
                raise UsageError(
                    f"--at must be RFC 3339 UTC like 2026-02-28T16:30:00Z, got {opts['--at']!r}"
                ) from None
        else:
            now = _now()
        keyset = gate.load_keyset(
            opts["--keys"], trust_keys_in_checkout="--trust-keys-in-checkout" in args.flags
        )
        data = _read_capped(args.positionals[0], 64 * 1024, "receipt")
        expected = Scope(
            repo=opts["--repo"], sha=opts["--sha"], environment=opts["--env"], workflow=opts["--workflow"]
        )
        verified = gate.check_receipt(
            data,
            keyset,
            expected,
            now,
            allow_dev_keys="--allow-dev-keys" in args.flags,
            require_oidc="--require-oidc" in args.flags,
        )
    except UsageError as e:
        return _verify_usage(str(e))
    except gate.GateError as e:
        if e.code == gate.BAD_KEYSET_URL:  # known from the arguments alone: a usage error, as documented
            return _verify_usage(e.message)
        return _reject(e.code, e.message, as_json)
    except _Rejected as e:
        return _reject(e.code, e.detail, as_json)
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
        if verified.requester_proof is not None:
            out["requesterProof"] = verified.requester_proof.to_json()
        print(json.dumps(out, sort_keys=True))
    else:
        print(verified.summary())
    return OK


def _verify_usage(message: str) -> int:
    print(f"keyturn verify: {message}\n\n{VERIFY_USAGE}", end="", file=sys.stderr)
    return USAGE


def _reject(code: str, detail: str, as_json: bool = False) -> int:
    """Say why on stderr (and on stdout as JSON with ``as_json``); the exit code of a refusal."""
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
    from keyturn.signer.errors import KeyturnError
    from keyturn.signer.receipt import (
        MAX_RECEIPT_BYTES,
        from_dsse,
        is_dsse,
        parse_receipt,
        strict_loads,
        to_dsse,
    )

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
    from keyturn.signer.errors import KeyturnError
    from keyturn.signer.keys import SigningKeyset

    try:
        keys = SigningKeyset.generate(parsed.out, dev=parsed.dev, now=_now())
    except KeyturnError as e:
        print(f"keyturn keygen: {e}", file=sys.stderr)
        return REJECTED
    jwk = next(k for k in keys.public_keyset().to_jwks()["keys"] if k["kid"] == keys.active_kid)
    print(f"kid: {keys.active_kid}")
    print(json.dumps(jwk, sort_keys=True))
    return OK


KEYS_EPILOG = """\
Rotation without a failed deploy (docs/keys.md): 'add-next', then 'export' and publish the keyset (it lists
the active and the next key) to every verifier; once they all have it, 'activate-next'. The running signer
switches to the new key on its next request (or at once on SIGHUP); the retired key keeps verifying what it
signed before its rotatedAt. 'revoke' takes effect as soon as the signer sees the file and verifiers fetch
the new keyset.
"""


def _grace(text: str) -> Any:
    """``--grace SECONDS`` as a timedelta (argparse type)."""
    from datetime import timedelta

    try:
        seconds = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of seconds: {text!r}") from None
    if not 0 <= seconds <= 3600:
        raise argparse.ArgumentTypeError("must be between 0 and 3600 seconds")
    return timedelta(seconds=seconds)


def keys_main(argv: Sequence[str]) -> int:
    """``keyturn keys add-next|activate-next|rotate|revoke KID|list|export [--out FILE]`` on the private key
    file given by ``--key-file`` (default: $KEYTURN_SIGNER_KEYSET, the signer's own setting)."""
    p = argparse.ArgumentParser(
        prog="keyturn keys",
        description=keys_main.__doc__,
        epilog=KEYS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--key-file", default=os.environ.get("KEYTURN_SIGNER_KEYSET"), metavar="FILE")
    sub = p.add_subparsers(dest="action", required=True)
    grace_help = (
        "seconds the retired key stays entitled to sign, covering requests in flight while the signer "
        "switches (default 60, at most 3600)"
    )
    sub.add_parser("add-next", help="create the next key, to publish with 'export' before it signs")
    an = sub.add_parser("activate-next", help="make the next key active; retire the active key")
    an.add_argument("--grace", type=_grace, default=None, metavar="SECONDS", help=grace_help)
    ro = sub.add_parser(
        "rotate",
        help="retire the active key and add a new, unpublished active key at once (prefer add-next)",
    )
    ro.add_argument("--grace", type=_grace, default=None, metavar="SECONDS", help=grace_help)
    rv = sub.add_parser("revoke", help="revoke a retired or next key: it never verifies again")
    rv.add_argument("kid")
    sub.add_parser("list", help="print each key's id, status and times (no key material)")
    ex = sub.add_parser("export", help="print the public keyset (JWKS) for verifiers")
    ex.add_argument("--out", metavar="FILE", help="write to FILE instead of stdout")
    parsed = _run_parser(p, argv)
    if isinstance(parsed, int):
        return parsed
    if not parsed.key_file:
        print("keyturn keys: --key-file (or KEYTURN_SIGNER_KEYSET) is required", file=sys.stderr)
        return USAGE
    from keyturn.signer.errors import KeyturnError
    from keyturn.signer.keys import DEFAULT_ROTATION_GRACE, SigningKeyset

    given = getattr(parsed, "grace", None)  # an explicit --grace 0 is honoured (timedelta(0) is falsy)
    grace = DEFAULT_ROTATION_GRACE if given is None else given
    actions: dict[str, Callable[[], SigningKeyset]] = {
        "add-next": lambda: SigningKeyset.add_next(parsed.key_file, _now()),
        "activate-next": lambda: SigningKeyset.activate_next(parsed.key_file, _now(), grace),
        "rotate": lambda: SigningKeyset.rotate(parsed.key_file, _now(), grace),
        "revoke": lambda: SigningKeyset.revoke(parsed.key_file, parsed.kid, _now()),
        "export": lambda: SigningKeyset.load(parsed.key_file),
        "list": lambda: SigningKeyset.load(parsed.key_file),
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
            return OK
        if parsed.action == "list":
            for jwk in keys.public_keyset().to_jwks()["keys"]:
                times = " ".join(f"{k}={jwk[k]}" for k in ("createdAt", "rotatedAt", "revokedAt") if k in jwk)
                print(f"{jwk['kid']} {jwk['status']} {times}")
            return OK
    except (KeyturnError, OSError) as e:
        print(f"keyturn keys: {e}", file=sys.stderr)
        return REJECTED
    print(f"active kid: {keys.active_kid}")
    if keys.next_kid is not None:
        print(f"next kid: {keys.next_kid}")
    print(_KEYS_NEXT_STEP[parsed.action], file=sys.stderr)
    return OK


_KEYS_NEXT_STEP = {
    "add-next": "next: publish the keyset with both keys ('keyturn keys export'), wait until every verifier "
    "has it, then run 'keyturn keys activate-next'",
    "activate-next": "next: the running signer switches on its next request (or send it SIGHUP); then "
    "publish the new keyset ('keyturn keys export')",
    "rotate": "next: publish the new keyset at once ('keyturn keys export'): verifiers pinned to the old one "
    "refuse the new key's receipts (unknown_key) until they have it",
    "revoke": "next: send the signer SIGHUP (or wait for its next request) and publish the new keyset",
}


SECRETS_EPILOG = """\
Where it goes: the signer's KEYTURN_CI_SECRET (or the file named by KEYTURN_CI_SECRET_FILE, e.g. a container
secret such as deploy/secrets/ci_secret.txt, mode 0600), and your CI's secret store as KEYTURN_CI_SECRET
(GitHub: Settings > Secrets and variables > Actions). Never in the bot's configuration: the bot refuses to
start with it. Changing it: set the new value in both places, then restart the signer.
"""


def secrets_main(argv: Sequence[str]) -> int:
    """``keyturn secrets new [--out FILE]``: print a fresh CI secret (256 random bits, URL-safe base64), or
    write it to a new file (mode 0600, never overwritten)."""
    p = argparse.ArgumentParser(
        prog="keyturn secrets",
        description=secrets_main.__doc__,
        epilog=SECRETS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="action", required=True)
    new = sub.add_parser("new", help="make a CI secret (KEYTURN_CI_SECRET)")
    new.add_argument("--out", metavar="FILE", help="write it to FILE (created 0600) instead of stdout")
    parsed = _run_parser(p, argv)
    if isinstance(parsed, int):
        return parsed
    import secrets

    value = secrets.token_urlsafe(32)
    if parsed.out:
        try:
            fd = os.open(
                parsed.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600
            )
        except OSError as e:
            print(f"keyturn secrets: cannot create {parsed.out}: {e.strerror}", file=sys.stderr)
            return REJECTED
        with os.fdopen(fd, "w") as f:
            f.write(value + "\n")
        print(f"keyturn secrets: wrote a new CI secret to {parsed.out} (mode 0600)", file=sys.stderr)
    else:
        print(value)
    print(
        "keyturn secrets: give it to the signer (KEYTURN_CI_SECRET or KEYTURN_CI_SECRET_FILE) and to CI "
        "(secret KEYTURN_CI_SECRET); never to the bot",
        file=sys.stderr,
    )
    return OK


AUDIT_DESCRIPTION = """\
  keyturn audit verify LOG [--checkpoint PATH ...] [--keys KEYSET]
  keyturn audit checkpoint --url URL --keys KEYSET --out FILE
  keyturn audit show LOG [--request ID] [--json]

'show' lists every final outcome on the record (approved, denied, cancelled, expired): who, what, when.
'verify' checks the audit log's hash chain and, against archived signed checkpoints, that the log was neither
cut short nor rewritten. 'checkpoint' fetches the latest signed checkpoint from the bot, verifies it and saves
it to a new file.
"""
AUDIT_EPILOG = """\
The hash chain alone shows an entry edited without recomputing the hashes after it. It cannot show a log cut
short, nor one edited and re-chained: whoever can write the file can do both. Signed checkpoints of the log's
head, fetched from the bot (GET /v1/audit/checkpoint) and archived away from the signer, anchor it:
'verify --checkpoint' refuses a log that lacks an anchored entry (audit_truncated) or holds another one in its
place (audit_rewritten). See docs/security.md, "Anchoring the audit log".

Exit 0: OK; 1: REJECTED <code>: <detail> on stderr; 2: usage error.
"""


def audit_main(argv: Sequence[str]) -> int:
    """``keyturn audit verify LOG [--checkpoint PATH ...] [--keys KEYSET]``: check the audit log's hash chain
    and, against archived signed checkpoints, that it was neither cut short nor rewritten.
    ``keyturn audit checkpoint --url URL --keys KEYSET --out FILE``: fetch, verify, archive the latest one."""
    p = argparse.ArgumentParser(
        prog="keyturn audit",
        description=AUDIT_DESCRIPTION,
        epilog=AUDIT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="action", required=True)
    v = sub.add_parser(
        "verify",
        help="check the hash chain, and the log against signed checkpoints",
        description="Check the audit log's hash chain and, against archived signed checkpoints, that it was "
        "neither cut short nor rewritten. Exit 0 OK; 1 REJECTED <code>: <detail>; 2 usage.",
    )
    v.add_argument("file", metavar="LOG", help="the audit log (KEYTURN_AUDIT_LOG), or a copy of it")
    v.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="PATH",
        help="a checkpoint file (as GET /v1/audit/checkpoint serves it) or a directory of them (*.json); "
        "repeatable; needs --keys",
    )
    show = sub.add_parser(
        "show",
        help="list every final outcome on the record: who authorized or refused what, when",
        description="List the final outcomes in the audit log (approved: receipt issued; denied; cancelled; "
        "expired), oldest first, after checking the hash chain. Anchor the log with 'verify --checkpoint' "
        "first to know it is complete. Exit 0 OK; 1 REJECTED <code>: <detail>; 2 usage.",
    )
    show.add_argument("file", metavar="LOG", help="the audit log (KEYTURN_AUDIT_LOG), or a copy of it")
    show.add_argument("--request", metavar="ID", help="only this request id")
    show.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    c = sub.add_parser(
        "checkpoint",
        help="fetch the latest signed checkpoint from the bot, verify, archive it",
        description="Fetch the latest signed checkpoint of the audit log from the bot, verify it against the "
        "keyset and save it to FILE, which must not exist. Exit 0 OK; 1 REJECTED <code>: <detail>; 2 usage.",
    )
    c.add_argument("--url", required=True, help="the bot's base URL, e.g. https://keyturn.example.com")
    c.add_argument("--out", required=True, metavar="FILE", help="where to save it (must not exist)")
    for cmd, needed in ((v, False), (c, True)):
        cmd.add_argument(
            "--keys",
            required=needed,
            metavar="KEYSET",
            help="public keyset (JWKS, as 'keyturn keys export' writes it): a file or an https URL",
        )
        cmd.add_argument("--allow-dev-keys", action="store_true", help="accept development keys")
        cmd.add_argument(
            "--trust-keys-in-checkout",
            action="store_true",
            help="accept a keyset file inside the current git checkout (normally refused)",
        )
    parsed = _run_parser(p, argv)
    if isinstance(parsed, int):
        return parsed
    from keyturn.signer.errors import AuditError, VerificationError
    from keyturn.signer.gate import GateError, keyset_url_allowed

    try:
        if parsed.action == "show":
            return _audit_show(parsed)
        if parsed.keys is not None and "://" in parsed.keys and not keyset_url_allowed(parsed.keys):
            raise _UsageError("--keys must be a file or an https URL (plain http only to localhost)")
        if parsed.action == "verify":
            return _audit_verify(parsed)
        return _audit_checkpoint(parsed)
    except _UsageError as e:
        print(f"keyturn audit: {e}", file=sys.stderr)
        return USAGE
    except _Rejected as e:
        return _reject(e.code, e.detail)
    except (AuditError, VerificationError, GateError) as e:
        return _reject(e.code, e.message)
    except Exception as e:  # fail closed: an unexpected error is a refusal, never an OK
        return _reject("internal_error", f"{type(e).__name__} while checking the audit log")


def _checkpoint_paths(paths: Sequence[str]) -> list[str]:
    """Each ``--checkpoint`` PATH: the file itself, or every ``*.json`` file in a directory (sorted)."""
    out: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(os.path.join(path, n) for n in os.listdir(path) if n.endswith(".json"))
            if not found:
                raise _Rejected("bad_checkpoint", f"no checkpoint files (*.json) in {path}")
            out += found
        else:
            out.append(path)
    return out


def _audit_show(parsed: argparse.Namespace) -> int:
    import json

    from keyturn.signer.audit import outcome_rows

    try:
        with open(parsed.file, "rb") as f:
            data = f.read()
    except OSError as e:
        raise _Rejected("audit_unreadable", f"cannot read audit log {parsed.file}: {e.strerror}") from None
    for row in outcome_rows(data):
        if parsed.request is not None and row["requestId"] != parsed.request:
            continue
        if parsed.json:
            print(json.dumps(row, sort_keys=True))
            continue
        scope = row["scope"] if isinstance(row["scope"], dict) else {}
        what = f"{scope.get('repo')}@{str(scope.get('sha'))[:12]} -> {scope.get('environment')}"
        # One line each; the reason last and on one line, so a multi-line reason cannot fake another row.
        reason = " ".join(str(row["reason"]).split()) if row["reason"] else ""
        print(
            f"{row['seq']:>6}  {row['at']}  {str(row['outcome']).upper():<9}  {row['requestId']}  {what}  "
            f"by {row['by'] or '-'}  {reason}".rstrip()
        )
    return OK


def _audit_verify(parsed: argparse.Namespace) -> int:
    from keyturn.signer import gate
    from keyturn.signer.audit import verify_log
    from keyturn.signer.checkpoint import MAX_CHECKPOINT_BYTES, Checkpoint, verify_checkpoint
    from keyturn.signer.errors import AuditError, VerificationError

    if parsed.checkpoint and parsed.keys is None:
        raise _UsageError("--checkpoint needs --keys KEYSET, the public keyset that verifies it")
    # 1. Every checkpoint given must verify: one that does not is a refusal, never silently skipped.
    anchors: dict[Checkpoint, str] = {}
    if parsed.checkpoint:
        keyset = gate.load_keyset(parsed.keys, trust_keys_in_checkout=parsed.trust_keys_in_checkout)
        for path in _checkpoint_paths(parsed.checkpoint):
            data = _read_capped(path, MAX_CHECKPOINT_BYTES, "checkpoint")
            try:
                checkpoint = verify_checkpoint(data, keyset, allow_dev_keys=parsed.allow_dev_keys)
            except VerificationError as e:
                raise _Rejected(e.code, f"checkpoint {path}: {e.message}") from None
            anchors.setdefault(checkpoint, path)
    # 2. The chain, then the log against each checkpoint, then a torn tail (verify_log's order).
    try:
        with open(parsed.file, "rb") as f:
            log_bytes = f.read()
    except OSError as e:
        raise _Rejected("audit_unreadable", f"cannot read audit log {parsed.file}: {e.strerror}") from None
    try:
        result = verify_log(log_bytes, anchors)
    except AuditError as e:
        if isinstance(e.anchor, Checkpoint):
            cp = e.anchor
            issued = _time_text(cp.issued_at)
            e.message += f" (checkpoint {anchors[cp]}: seq {cp.seq}, head {cp.head}, issued {issued})"
        raise
    summary = f"OK {result.entries} entries, head {result.head}"
    if anchors:
        latest = max(anchors, key=lambda a: a.seq)
        summary += (
            f"; matches {len(anchors)} signed checkpoint(s), the latest at seq {latest.seq} "
            f"issued {_time_text(latest.issued_at)}"
        )
        if result.entries > latest.seq:
            summary += f"; entries {latest.seq + 1}-{result.entries} not anchored yet"
    else:
        print(
            "keyturn audit: note: no --checkpoint given: only the chain was checked, which cannot reveal a "
            'log cut short or rewritten and re-chained (docs/security.md, "Anchoring the audit log")',
            file=sys.stderr,
        )
    print(summary)
    return OK


def _time_text(dt: datetime) -> str:
    from keyturn.signer.receipt import format_time

    return format_time(dt)


def _audit_checkpoint(parsed: argparse.Namespace) -> int:
    from keyturn.signer import gate
    from keyturn.signer.checkpoint import MAX_CHECKPOINT_BYTES, verify_checkpoint
    from keyturn.signer.errors import VerificationError

    path = "/v1/audit/checkpoint"
    url = parsed.url if parsed.url.rstrip("/").endswith(path) else parsed.url.rstrip("/") + path
    if not gate.keyset_url_allowed(url):
        raise _UsageError("--url must be an https URL (plain http only to localhost)")
    keyset = gate.load_keyset(parsed.keys, trust_keys_in_checkout=parsed.trust_keys_in_checkout)
    data = gate.fetch_document(url, what="checkpoint", limit=MAX_CHECKPOINT_BYTES, too_large="bad_checkpoint")
    try:
        cp = verify_checkpoint(data, keyset, allow_dev_keys=parsed.allow_dev_keys)
    except VerificationError as e:
        raise _Rejected(e.code, f"checkpoint from {url}: {e.message}") from None
    # Archived files are never overwritten: an archive that can be rewritten anchors nothing.
    try:
        fd = os.open(parsed.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError as e:
        raise _Rejected("unwritable", f"cannot create {parsed.out}: {e.strerror}") from None
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    print(
        f"OK checkpoint seq {cp.seq} head {cp.head} issued {_time_text(cp.issued_at)} saved to {parsed.out}"
    )
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
        "KEYTURN_GITHUB_WEBHOOK_SECRET (or _FILE; optional, docs/github.md), KEYTURN_AUDIT_LOG, "
        "KEYTURN_SIGNER_REQUEST_TIMEOUT, KEYTURN_SIGNER_IDLE_TIMEOUT, "
        "KEYTURN_SIGNER_MAX_CONNECTIONS; dev only: KEYTURN_DEV_MODE, KEYTURN_SIGNER_FAKE_NOW_FILE. "
        "SIGHUP re-reads the key file (docs/keys.md) "
        "(see docs/configuration.md).",
    )
    parsed = _run_parser(p, argv)
    if isinstance(parsed, int):
        return parsed
    from keyturn.signer.config import ConfigError, load_settings
    from keyturn.signer.service import run

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
    o = sub.add_parser(
        "pin-oidc-keys",
        help="refresh the pinned JWKS file of each [oidc.issuers.<name>]",
        description="Fetch each OIDC issuer's discovery document and JWKS over https, check them, and "
        "replace the jwks_file the policy names (keys the issuer dropped stay pinned for a day, so tokens "
        "signed before a rotation still verify). Restart the signer afterwards. Fails closed: any error "
        "exits 1 and writes nothing for that issuer.",
    )
    o.add_argument("file", metavar="FILE")
    o.add_argument("--issuer", action="append", metavar="NAME", help="only this issuer (repeatable)")
    o.add_argument(
        "--from",
        dest="from_",
        action="append",
        default=[],
        metavar="NAME=URL",
        help="fetch NAME's discovery document under URL instead of its issuer URL (the emulator on "
        "loopback); the document must still name the configured issuer",
    )
    parsed = _run_parser(p, argv)
    if isinstance(parsed, int):
        return parsed
    if parsed.action == "pin-groups":
        return _pin_groups(parsed)
    if parsed.action == "pin-oidc-keys":
        return _pin_oidc_keys(parsed)
    policy = _load_policy(parsed.file)
    if policy is None:
        return REJECTED
    envs = ", ".join(policy.environments)
    print(f"OK {parsed.file}: {len(policy.environments)} environment(s) ({envs}), sha256 {policy.sha256}")
    return OK


def _load_policy(path: str, prefix: str = "") -> Policy | None:
    """The policy in ``path``; None once each of its issues is printed to stderr after ``prefix``."""
    from keyturn.signer.policy import PolicyError, load_policy

    try:
        return load_policy(path)
    except PolicyError as e:
        for issue in e.issues:
            print(f"{prefix}{e.source}: {issue}", file=sys.stderr)
        return None


def _pin_oidc_keys(args: argparse.Namespace) -> int:
    from pathlib import Path

    from keyturn.signer.errors import KeyturnError
    from keyturn.signer.pin_oidc import pin_issuer

    prog = "keyturn policy pin-oidc-keys"
    policy = _load_policy(args.file, f"{prog}: ")
    if policy is None:
        return REJECTED
    bases: dict[str, str] = {}
    for item in args.from_:
        name, eq, url = item.partition("=")
        if not eq or not url:
            print(f"{prog}: --from takes NAME=URL, got {item!r}", file=sys.stderr)
            return USAGE
        bases[name] = url
    names = args.issuer or list(policy.oidc.issuers)
    unknown = [n for n in [*names, *bases] if n not in policy.oidc.issuers]
    if unknown:
        print(f"{prog}: no [oidc.issuers.{unknown[0]}] in {args.file}", file=sys.stderr)
        return USAGE
    if not names:
        print(f"{prog}: no [oidc.issuers] in {args.file}: nothing to pin", file=sys.stderr)
        return OK
    status = OK
    for name in names:
        try:
            merged = pin_issuer(
                name, policy.oidc.issuers[name], Path(args.file), _now(), base_url=bases.get(name)
            )
        except KeyturnError as e:
            print(f"{prog}: {name}: {e.code}: {e.message} (nothing written)", file=sys.stderr)
            status = REJECTED
            continue
        kids = len(merged.document["keys"])
        print(
            f"{prog}: {name}: {kids} key(s) pinned; added {list(merged.added)}, "
            f"retired {list(merged.retired)}, dropped {list(merged.dropped)}",
            file=sys.stderr,
        )
    if status == OK:
        print(f"{prog}: restart the signer to load the refreshed keys", file=sys.stderr)
    return status


def _pin_groups(args: argparse.Namespace) -> int:
    import hashlib

    from keyturn.signer import pin_groups as pg

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
