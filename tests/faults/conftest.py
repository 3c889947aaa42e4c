"""The fault suite's stack: the e2e processes (signer, emulator, bot) on a Redis that persists (AOF, fsync
always) and listens on a loopback TCP port, so a test can stop, kill and restart it and the bot meets exactly
what it meets in production: its pooled connections closed under it, then the same data back.

One stack per test module (each module breaks things differently); each test starts from a clean Redis, a
reset emulator and a live signer, and the logs of every process are printed when a test fails.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from keyturn.emulator.client import EmulatorClient
from tests import harness
from tests.conftest import failed
from tests.e2e.conftest import CI_SECRET, SLACK_SECRET, Stack
from tests.harness import Proc, RedisServer, free_port, start_process, unix_socket_ready, wait_until

BOT_TOKEN = "xoxb-faults-bot-token"
QUORUM_USERS = [f"U0Q{i:02d}" for i in range(20)]

POLICY = (
    """\
version = 1

[slack]
command = "/keyturn"
team_id = "T0KEYTURN"

[identities]
"github:alice" = "U0ALICE"

[environments.production]
channel = "C0DEPLOYS"
approvers = ["U0BOB", "U0CAROL"]
required_approvals = 2
request_ttl = "30m"
receipt_ttl = "15m"
allow_self_approval = false
confirm_approve = false

[environments.staging]
channel = "C0STAGING"
approvers = ["U0BOB", "U0CAROL"]
required_approvals = 1
request_ttl = "30m"
receipt_ttl = "30m"

[environments.shortlived]
channel = "C0STAGING"
approvers = ["U0BOB", "U0CAROL"]
required_approvals = 1
request_ttl = "4s"
receipt_ttl = "15m"

[environments.quorum20]
channel = "C0DEPLOYS"
approvers = """
    + json.dumps(QUORUM_USERS)
    + """
required_approvals = 20
request_ttl = "30m"
receipt_ttl = "15m"
"""
)


@dataclass
class PersistentRedis:
    """A redis-server with AOF (``appendfsync always``) on 127.0.0.1:``port`` and a Unix socket for tests,
    restartable on the same port and data directory."""

    workdir: Path
    port: int = field(default_factory=free_port)
    proc: Proc | None = None
    starts: int = 0
    extra_args: list[str] = field(default_factory=list)

    @property
    def socket_path(self) -> Path:
        """The Unix socket (for the test's own clients)."""
        return self.workdir / "redis.sock"

    @property
    def url(self) -> str:
        """The URL the bot uses: loopback TCP, as a deployment would."""
        return f"redis://127.0.0.1:{self.port}/0"

    def argv(self) -> list[str]:
        """The server's command line: persistence on, every write fsynced before it is acknowledged."""
        return [
            harness.redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
            "--unixsocket", str(self.socket_path), "--unixsocketperm", "700", "--dir", str(self.workdir),
            "--appendonly", "yes", "--appendfsync", "always", "--save", "", *self.extra_args,
        ]  # fmt: skip

    def start(self) -> None:
        """Start (or start again) and wait until it accepts connections and has loaded its AOF."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        self.proc = start_process(
            f"redis-{self.starts}",
            self.argv(),
            self.workdir / "logs",
            ready=unix_socket_ready(self.socket_path),
        )
        wait_until(self._loaded, 20, "redis to load its AOF")

    def _loaded(self) -> bool:
        try:
            with self.client() as c:
                return int(c.info("persistence").get("loading", 1)) == 0
        except redis.RedisError:
            return False

    def stop(self) -> None:
        """A clean stop (SIGTERM: Redis fsyncs and exits), as ``systemctl restart`` does."""
        if self.proc is not None:
            self.proc.stop(signal.SIGTERM)
            self.proc = None

    def kill9(self) -> None:
        """A crash: SIGKILL (with ``appendfsync always`` every acknowledged write is on disk)."""
        if self.proc is not None:
            self.proc.kill9()
            self.proc = None

    def restart(self) -> None:
        """Stop, then start again on the same port and data."""
        self.stop()
        self.start()

    def client(self) -> redis.Redis:
        """A new synchronous client on the Unix socket."""
        return redis.Redis(unix_socket_path=str(self.socket_path))


@dataclass
class FaultStack(Stack):
    """The e2e ``Stack`` plus handles for breaking things."""

    pr: PersistentRedis | None = None
    signer_env: dict[str, str] = field(default_factory=dict)
    keyset: Path | None = None
    policy_file: Path | None = None
    bot_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def persistent(self) -> PersistentRedis:
        """The restartable Redis."""
        assert self.pr is not None
        return self.pr

    def restart_signer(self) -> None:
        """Start the signer again on the same socket, keys and audit log."""
        assert self.keyset is not None
        assert self.policy_file is not None
        old = self.procs["signer"]
        old.stop()
        sock = self.workdir / "signer.sock"
        sock.unlink(missing_ok=True)
        self.procs["signer"], _ = harness.start_signer(
            self.workdir,
            self.workdir / "logs",
            policy=self.policy_file,
            keyset=self.keyset,
            slack_secret=SLACK_SECRET,
            ci_secret=CI_SECRET,
            env=self.signer_env,
        )

    def restart_bot(self, **changes: Any) -> None:
        """Start the bot again (after it was stopped or killed) with its settings, ``changes`` applied."""
        if self.procs["bot"].alive():
            self.procs["bot"].stop()
        self.bot_kwargs.update(changes)
        self.procs["bot"] = harness.start_bot(self.workdir / "logs", **self.bot_kwargs)

    def audit_lines(self) -> list[dict[str, Any]]:
        """The records of the signer's audit log (each entry's ``record``), in order."""
        path = self.workdir / "audit.jsonl"
        if not path.exists():
            return []
        entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [e["record"] for e in entries]

    def flush(self) -> None:
        """Empty Redis (start of a test)."""
        with self.persistent.client() as c:
            c.flushall()


def workspace_toml() -> str:
    """The sample workspace plus the twenty approvers of ``quorum20``."""
    sample = (Path(__file__).resolve().parents[2] / "emulator" / "sample_workspace.toml").read_text()
    # Users must come before the channels whose default membership is "every user": insert them first.
    extra = "".join(
        f'[[users]]\nid = "{u}"\nname = "q{u[3:].lower()}"\nreal_name = "Approver {u[3:]}"\n'
        f'email = "q{u[3:].lower()}@example.com"\n\n'
        for u in QUORUM_USERS
    )
    head, sep, tail = sample.partition("[[users]]")
    return head + extra + sep + tail


def start_emulator(workdir: Path, bot_url: str) -> tuple[Proc, str]:
    """``keyturn emulator`` with :func:`workspace_toml`, on a free port; the process and its URL."""
    ws = workdir / "workspace.toml"
    ws.write_text(workspace_toml())
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [*harness.KEYTURN, "emulator", "--port", str(port), "--workspace", str(ws)]
    argv += ["--bot-url", f"{bot_url}/slack/events"]
    proc = start_process(
        "emulator",
        argv,
        workdir / "logs",
        env={"KEYTURN_SLACK_SIGNING_SECRET": SLACK_SECRET},
        ready=harness.http_ok(f"{url}/_emulator/health"),
    )
    return proc, url


def build_stack(
    workdir: Path,
    *,
    signer_env: dict[str, str] | None = None,
    bot_env: dict[str, str] | None = None,
    policy_text: str = POLICY,
    bot_signer_socket: Callable[[Path], Path] | None = None,
) -> FaultStack:
    """Start redis (AOF), the signer, the emulator and the bot; the stack (caller stops it). With ``bot_env``
    naming sentinels, the bot uses them and the stack's own Redis only holds nothing. ``policy_text``
    replaces the policy (both processes load it); ``bot_signer_socket`` maps the signer's socket to the one
    the bot is given (a proxy in front of the signer)."""
    logs = workdir / "logs"
    policy = workdir / "keyturn.toml"
    policy.write_text(policy_text)
    keyset, public = harness.keygen(workdir)
    pr = PersistentRedis(workdir / "redis")
    pr.start()
    bot_port = free_port()
    bot_url = f"http://127.0.0.1:{bot_port}"
    procs: dict[str, Proc] = {}
    env = dict(signer_env or {})
    try:
        procs["signer"], sock = harness.start_signer(
            workdir,
            logs,
            policy=policy,
            keyset=keyset,
            slack_secret=SLACK_SECRET,
            ci_secret=CI_SECRET,
            env=env,
        )
        procs["emulator"], emu_url = start_emulator(workdir, bot_url)
        bot_kwargs: dict[str, Any] = {
            "port": bot_port,
            "redis_url": pr.url,
            "signer_socket": sock if bot_signer_socket is None else bot_signer_socket(sock),
            "policy": policy,
            "emulator_url": emu_url,
            "cwd": workdir,
            "env": {
                "KEYTURN_SLACK_BOT_TOKEN": BOT_TOKEN,
                "KEYTURN_CARD_RETRY_MAX": "1",
                "KEYTURN_CALLBACK_ATTEMPTS": "3",
                "KEYTURN_DEV_MODE": "1",
                "KEYTURN_CALLBACK_HOSTS": "127.0.0.1",
                # A signing claim left by a call that met Redis going down is taken over by the leader's
                # backstop once the lease ends: short here, so a test waits seconds, not the default 40.
                "KEYTURN_SIGN_LEASE": "15s",  # must exceed the signer timeout (10 s)
                "KEYTURN_BACKSTOP_INTERVAL": "1",
                **(bot_env or {}),
            },
        }
        procs["bot"] = harness.start_bot(logs, **bot_kwargs)
    except Exception:
        for p in procs.values():
            p.stop()
        pr.stop()
        raise
    import httpx

    emulator = EmulatorClient(emu_url)
    http = httpx.Client(timeout=30)
    # ``redis`` (the e2e field) is only used for a client; point it at the persistent server's socket.
    view = RedisServer(procs["signer"], pr.socket_path)
    return FaultStack(
        bot_url,
        emulator,
        view,
        procs,
        workdir,
        public,
        http,
        pr=pr,
        signer_env=env,
        keyset=keyset,
        policy_file=policy,
        bot_kwargs=bot_kwargs,
    )


def close_stack(stack: FaultStack) -> None:
    """Stop every process of the stack."""
    stack.emulator.close()
    stack.http.close()
    for p in reversed(list(stack.procs.values())):
        p.stop()
    stack.persistent.stop()


@pytest.fixture(scope="module")
def fault_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    """A stack for one test module."""
    stack = build_stack(tmp_path_factory.mktemp("faults"))
    yield stack
    close_stack(stack)


@pytest.fixture
def fstack(fault_stack: FaultStack, request: pytest.FixtureRequest) -> Iterator[FaultStack]:
    """The module's stack with a clean, running Redis and a reset emulator; logs printed on failure."""
    if fault_stack.persistent.proc is None:
        fault_stack.persistent.start()
    fault_stack.flush()
    fault_stack.emulator.reset()
    fault_stack.emulator.set_bot_url(f"{fault_stack.bot_url}/slack/events")
    yield fault_stack
    if failed(request):
        print(fault_stack.logs())
    dead = [name for name, p in fault_stack.procs.items() if not p.alive()]
    assert not dead, f"processes died during the test: {dead}\n{fault_stack.logs()}"
