"""``keyturn dev``: the whole of Keyturn on one machine, with nothing configured.

Starts a private ``redis-server`` (unless ``KEYTURN_REDIS_URL`` is set), makes throwaway dev keys and
secrets, then runs the signer, the Slack emulator, the GitHub emulator, ``keyturn github-approver`` and the
bot as child processes, each log line prefixed with its name. With the bundled dev policy it also runs the
OIDC issuer emulator, adds its two issuers to a copy of the policy and pins their keys
(``keyturn policy pin-oidc-keys``) before the signer starts, so that a CI request proven by an OIDC token can
be tried too.
Ctrl-C stops everything and removes the temp directory. Dev keys carry ``dev-`` in their key id, and
``keyturn verify`` refuses them unless given ``--allow-dev-keys``: a dev receipt can never pass a real gate.

Every child is a ``keyturn`` subcommand in its own process, exactly as in a deployment: this process never
loads the private key (it asks ``keyturn keygen`` to write it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from keyturn.signer.errors import KeyturnError
from keyturn.signer.words import Fact

KEYTURN = [sys.executable, "-m", "keyturn"]
COLORS = {
    "redis": "31",
    "oidc": "33",
    "signer": "35",
    "emulator": "36",
    "bot": "32",
    "github": "34",
    "approver": "93",
}
GITHUB_RUN = 4242  # the run id the banner's recipe makes in the GitHub emulator

# What the OIDC emulator's tokens are for; the policy's issuers expect it (any string will do, as in CI).
DEV_AUDIENCE = "keyturn-dev"
# The issuers the OIDC emulator names (its default public base); the policy copy allows both everywhere.
DEV_OIDC_TABLES = f"""

# Added by `keyturn dev`: the OIDC issuer emulator's two issuers, keys pinned from it at start.
[oidc.issuers.github]
issuer = "https://oidc.keyturn.test/github"
audience = "{DEV_AUDIENCE}"
jwks_file = "github.jwks.json"
algorithm = "RS256"
kind = "github"

[oidc.issuers.gitlab]
issuer = "https://oidc.keyturn.test/gitlab"
audience = "{DEV_AUDIENCE}"
jwks_file = "gitlab.jwks.json"
algorithm = "RS256"
kind = "gitlab"

[environments.production.oidc]
issuers = ["github", "gitlab"]

[environments.staging.oidc]
issuers = ["github", "gitlab"]
"""


class DevError(KeyturnError):
    """A start-up failure for the person at the terminal: a ``dev_*`` code and facts (words in
    ``keyturn.signer.words``)."""

    def __init__(self, code: str, **facts: Fact) -> None:
        super().__init__(code=code, facts=facts)


@dataclass
class Child:
    """A child process whose output is pumped, prefixed, to our stdout."""

    name: str
    popen: subprocess.Popen[str]
    ready_marker: str | None
    ready: threading.Event = field(default_factory=threading.Event)
    tail: list[str] = field(default_factory=list)

    def pump(self, color: bool) -> None:
        """Copy the child's lines to stdout until it closes its output."""
        assert self.popen.stdout is not None
        prefix = (
            f"\x1b[{COLORS.get(self.name, '0')}m{self.name:>8}\x1b[0m |" if color else f"{self.name:>8} |"
        )
        for line in self.popen.stdout:
            line = line.rstrip("\n")
            self.tail = [*self.tail[-40:], line]
            print(f"{prefix} {line}", flush=True)
            if self.ready_marker and self.ready_marker.lower() in line.lower():
                self.ready.set()


def _free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            chosen: int = s.getsockname()[1]
            return chosen
    raise DevError("dev_no_port", host="127.0.0.1")


class Stack:
    """The children of one ``keyturn dev`` run; stops them in reverse order."""

    def __init__(self, workdir: Path, color: bool) -> None:
        self.workdir = workdir
        self.color = color
        self.children: list[Child] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        ready_marker: str | None,
        timeout: float = 30.0,
    ) -> Child:
        """Start a child and wait until it prints ``ready_marker``."""
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
        popen = subprocess.Popen(
            list(argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env=full_env,
            start_new_session=True,  # Ctrl-C reaches us only; we stop children in order
        )
        child = Child(name, popen, ready_marker)
        self.children.append(child)
        threading.Thread(target=child.pump, args=(self.color,), daemon=True, name=f"pump-{name}").start()
        if ready_marker is not None:
            deadline = time.monotonic() + timeout
            while not child.ready.wait(0.1):
                if popen.poll() is not None:
                    raise DevError("dev_not_ready", name=name, status=popen.returncode)
                if time.monotonic() > deadline:
                    raise DevError("dev_not_ready", name=name, seconds=f"{timeout:.0f}")
        return child

    def first_exited(self) -> Child | None:
        """A child that has exited, if any."""
        return next((c for c in self.children if c.popen.poll() is not None), None)

    def stop(self) -> None:
        """Stop children newest first, each before the next, so none logs the loss of the one it needs."""
        for child in reversed(self.children):
            if child.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.popen.pid, signal.SIGTERM)
            try:
                child.popen.wait(8)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.popen.pid, signal.SIGKILL)
                child.popen.wait(5)


def private_redis_argv(binary: str, sock: Path, workdir: Path) -> list[str]:
    """A throwaway redis-server: Unix socket only (no TCP port), owner-only, nothing persisted."""
    return [binary, "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700",
            "--save", "", "--appendonly", "no", "--dir", str(workdir)]  # fmt: skip


def _run_quiet(argv: Sequence[str], what: str, env: Mapping[str, str] | None = None) -> str:
    result = subprocess.run(
        list(argv), capture_output=True, text=True, env={**os.environ, **(env or {})}, check=False
    )
    if result.returncode != 0:
        raise DevError("dev_step_failed", what=what, detail=result.stderr.strip() or result.stdout.strip())
    return result.stdout


def _dev_policy(path: str | None) -> Path:
    if path:
        return Path(path)
    return Path(str(resources.files("keyturn.bot").joinpath("dev_policy.toml")))


def _dev_oidc_policy(bundled: Path, workdir: Path) -> Path:
    """A copy of the bundled dev policy in ``workdir`` with the OIDC emulator's issuers added.

    A copy, because the pinned JWKS files live next to the policy that names them, and the bundled one may sit
    in a read-only install.
    """
    copy = workdir / "keyturn-dev.toml"
    copy.write_text(bundled.read_text() + DEV_OIDC_TABLES)
    return copy


@dataclass(frozen=True)
class OidcDemo:
    """What the banner needs to show an OIDC-proven request: where tokens come from and what they say."""

    url: str
    runtime_token: str
    sha: str


def _start_oidc(stack: Stack, port: int, policy: Path) -> OidcDemo:
    """Start the OIDC emulator, point its job at a fresh sha, and pin its keys into ``policy``'s directory."""
    url = f"http://127.0.0.1:{port}"
    runtime_token = secrets.token_hex(16)  # so that only whoever reads the banner mints tokens
    stack.start(
        "oidc",
        [*KEYTURN, "oidc-emulator", "--port", str(port), "--runtime-token", runtime_token],
        {},
        "oidc emulator ready",
    )
    sha = secrets.token_hex(20)
    job = urllib.request.Request(  # noqa: S310 - a loopback http URL we just started
        f"{url}/_oidc/job",
        data=json.dumps({"sha": sha}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(job, timeout=10) as resp:  # noqa: S310 - as above
        resp.read()
    _run_quiet(
        [*KEYTURN, "policy", "pin-oidc-keys", str(policy),
         "--from", f"github={url}/github", "--from", f"gitlab={url}/gitlab"],
        "pinning the OIDC emulator's keys",
    )  # fmt: skip
    return OidcDemo(url, runtime_token, sha)


def _oidc_banner(oidc: OidcDemo, bot_url: str, keys: Path) -> str:
    return f"""
  Or as a GitHub Actions job that proves who it is with its OIDC token (no shared secret: the token comes
  from the OIDC issuer emulator, whose keys the signer pinned at start):

    ACTIONS_ID_TOKEN_REQUEST_URL={oidc.url}/github/token \\
    ACTIONS_ID_TOKEN_REQUEST_TOKEN={oidc.runtime_token} \\
    .venv/bin/keyturn request --url {bot_url} --oidc --audience {DEV_AUDIENCE} \\
      --keys {keys} --allow-dev-keys --wait --out receipt-oidc.json

  The token says: acme/web at {oidc.sha},
  workflow .github/workflows/deploy.yml, environment production, requester github:alice (the card shows it
  "From the job's OIDC token"). Then check the receipt as the deploy job would:

    .venv/bin/keyturn verify receipt-oidc.json --keys {keys} --allow-dev-keys --require-oidc \\
      --repo acme/web --sha {oidc.sha} --env production --workflow .github/workflows/deploy.yml
"""


def _github_files(workdir: Path) -> tuple[Path, Path, Path]:
    """A throwaway GitHub App key pair (private: the approver's; public: the emulator's), webhook secret."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private, public, secret = workdir / "app.pem", workdir / "app.pub.pem", workdir / "webhook-secret"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    private.chmod(0o600)
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    secret.write_text(secrets.token_hex(24))
    secret.chmod(0o600)
    return private, public, secret


def _banner(
    emulator_url: str,
    bot_url: str,
    env: Mapping[str, str],
    keys: Path,
    oidc: OidcDemo | None = None,
    github_url: str = "",
) -> str:
    sha = secrets.token_hex(20)
    oidc_part = _oidc_banner(oidc, bot_url, keys) if oidc is not None else ""
    run = f"{github_url}/_github/runs"
    github = (
        f"""
  A GitHub run waiting on the deployment protection rule (docs/github.md):

    curl -s -X POST {run} -H 'content-type: application/json' \\
      -d '{{"run_id": {GITHUB_RUN}, "repo": "acme/web", "sha": "{sha}", "environment": "production"}}'
    curl -s -X POST {github_url}/_github/deliver -H 'content-type: application/json' \\
      -d '{{"run_id": {GITHUB_RUN}, "url": "{bot_url}/github/webhook"}}'

  then approve the card as bob and carol, and watch the run released:  curl -s {run}/{GITHUB_RUN}
"""
        if github_url
        else ""
    )
    return f"""
  Keyturn is running (dev mode: throwaway keys and secrets; dev receipts never pass a real gate).

    Slack emulator   {emulator_url}    <- open it, act as bob / carol / erin, click Approve
    Bot (CI API)     {bot_url}
    Public keyset    {keys}

  Ask for an approval as CI would (paste into another terminal in this directory):

    KEYTURN_CI_SECRET={env["KEYTURN_CI_SECRET"]} .venv/bin/keyturn request --url {bot_url} \\
      --repo acme/web --sha {sha} --env production --workflow deploy.yml \\
      --requester github:alice --keys {keys} --allow-dev-keys --wait --out receipt.json

  or type in the emulator's command box, as alice:  /keyturn request acme/web {sha} staging
{oidc_part}
{github}
  Production needs 2 approvals (bob, carol, or erin via @oncall); alice requested it, so she cannot approve.
  Reminders come every minute, dave is paged after two, and the request expires after 5 minutes.
  Ctrl-C stops everything and removes the temp files.
"""


def run(args: argparse.Namespace) -> int:
    """Start the stack and block until Ctrl-C or until a child dies."""
    workdir = Path(tempfile.mkdtemp(prefix="keyturn-dev-"))
    color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    stack = Stack(workdir, color)
    interrupted = False

    def on_signal(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)  # even when started with SIGINT ignored (a background job)
    try:
        redis_url = os.environ.get("KEYTURN_REDIS_URL", "")
        if not redis_url:
            binary = shutil.which("redis-server")
            if binary is None:
                raise DevError("dev_no_redis")
            sock = workdir / "redis.sock"
            stack.start(
                "redis",
                private_redis_argv(binary, sock, workdir),
                {},
                "ready to accept connections",
            )
            redis_url = f"unix://{sock}"

        keyset = workdir / "signing-keys.json"
        public = workdir / "keys.public.json"
        _run_quiet([*KEYTURN, "keygen", "--dev", "--out", str(keyset)], "creating dev keys")
        _run_quiet(
            [*KEYTURN, "keys", "--key-file", str(keyset), "export", "--out", str(public)], "exporting keys"
        )

        policy = _dev_policy(args.policy)
        oidc: OidcDemo | None = None
        if args.policy is None:  # a policy of one's own names its own issuers, if any
            policy = _dev_oidc_policy(policy, workdir)
            oidc = _start_oidc(stack, _free_port(args.oidc_port), policy)
        emulator_port = _free_port(args.emulator_port)
        bot_port = _free_port(args.bot_port)
        bot_url = f"http://127.0.0.1:{bot_port}"
        emulator_url = f"http://127.0.0.1:{emulator_port}"
        common = {
            "KEYTURN_DEV_MODE": "1",
            "KEYTURN_POLICY": str(policy),
            "KEYTURN_SIGNER_SOCKET": str(workdir / "signer.sock"),
            "KEYTURN_SLACK_SIGNING_SECRET": secrets.token_hex(16),
            "KEYTURN_CI_SECRET": secrets.token_hex(24),
        }
        # GitHub: the emulator, and the approver holding the App key (never the bot); the signer shares the
        # webhook secret to check the webhook as a request's origin.
        app_key, app_public, webhook_secret = _github_files(workdir)
        github_url = f"http://127.0.0.1:{_free_port(args.github_port)}"
        approver_url = f"http://127.0.0.1:{_free_port(0)}"
        stack.start(
            "signer",
            [*KEYTURN, "signer"],
            {
                **common,
                "KEYTURN_GITHUB_WEBHOOK_SECRET_FILE": str(webhook_secret),
                "KEYTURN_GITHUB_WEBHOOK_SECRET": "",
                "KEYTURN_SIGNER_KEYSET": str(keyset),
                "KEYTURN_AUDIT_LOG": str(workdir / "audit.jsonl"),
                # The secrets above, not files the calling shell may name (both set is a refusal).
                "KEYTURN_SLACK_SIGNING_SECRET_FILE": "",
                "KEYTURN_CI_SECRET_FILE": "",
            },
            "signer ready",
        )
        stack.start(
            "emulator",
            [*KEYTURN, "emulator", "--port", str(emulator_port), "--bot-url", f"{bot_url}/slack/events"],
            {"KEYTURN_SLACK_SIGNING_SECRET": common["KEYTURN_SLACK_SIGNING_SECRET"], "KEYTURN_DEV_MODE": "1"},
            "emulator ready",
        )
        stack.start(
            "github",
            [
                *KEYTURN,
                "github-emulator",
                *("--port", github_url.rsplit(":", 1)[1], "--app-public-key", str(app_public)),
                *("--webhook-secret-file", str(webhook_secret)),
            ],
            {},
            "github emulator listening",
        )
        stack.start(
            "approver",
            [
                *KEYTURN,
                "github-approver",
                *("--port", approver_url.rsplit(":", 1)[1], "--api-url", github_url, "--app-id", "424242"),
                *("--app-key", str(app_key), "--webhook-secret-file", str(webhook_secret)),
                *("--keys", str(public), "--policy", str(policy), "--allow-dev-keys"),
                *("--state-file", str(workdir / "approver-state.json")),
            ],
            {},
            "github approver listening",
        )
        from keyturn.bot.config import (
            SIGNER_ONLY_VARIABLES,
        )  # here: pydantic stays off the import of this module

        # The bot gets no signing secret and no CI secret: it asks the signer to check requests.
        bot_env = {
            "KEYTURN_DEV_MODE": "1",
            "KEYTURN_POLICY": str(policy),
            "KEYTURN_SIGNER_SOCKET": common["KEYTURN_SIGNER_SOCKET"],
            "KEYTURN_REDIS_URL": redis_url,
            "KEYTURN_SLACK_BOT_TOKEN": "xoxb-keyturn-dev",
            "KEYTURN_SLACK_API_URL": f"{emulator_url}/api/",
            "KEYTURN_HOST": "127.0.0.1",
            "KEYTURN_PORT": str(bot_port),
            "KEYTURN_PUBLIC_URL": bot_url,
            # Blank (= unset) whatever the calling shell exports: the bot refuses to start with any of them.
            **dict.fromkeys(SIGNER_ONLY_VARIABLES, ""),
        }
        bot_env["KEYTURN_GITHUB_APPROVER_URL"] = approver_url
        stack.start("bot", [*KEYTURN, "bot"], bot_env, "bot ready")
        print(_banner(emulator_url, bot_url, common, public, oidc, github_url), flush=True)
        if args.check:
            return 0
        while True:
            dead = stack.first_exited()
            if dead is not None:
                raise DevError("dev_exited", name=dead.name, status=dead.popen.returncode)
            time.sleep(0.5)
    except KeyboardInterrupt:
        interrupted = True
        print("\nstopping…", flush=True)
        return 0
    except DevError as exc:
        print(f"keyturn dev: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        if interrupted:
            print("stopped; temp files removed", flush=True)


def main(argv: Sequence[str]) -> int:
    """Entry point for ``keyturn dev``."""
    parser = argparse.ArgumentParser(prog="keyturn dev", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--emulator-port", type=int, default=3000, help="emulator port (default 3000, or a free one)"
    )
    parser.add_argument("--bot-port", type=int, default=8000, help="bot port (default 8000, or a free one)")
    parser.add_argument(
        "--oidc-port", type=int, default=8765, help="OIDC issuer emulator port (default 8765, or a free one)"
    )
    parser.add_argument(
        "--github-port", type=int, default=8766, help="GitHub emulator port (default 8766, or a free one)"
    )
    parser.add_argument(
        "--policy", help="policy file (default: the bundled dev policy, with the OIDC emulator's issuers)"
    )
    parser.add_argument("--check", action="store_true", help="start everything, print the banner, then stop")
    return run(parser.parse_args(list(argv)))
