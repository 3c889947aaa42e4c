"""Real processes for tests: a private redis-server, and any ``keyturn`` subcommand, with readiness waits.

Every process writes its output to a log file; fixtures print the logs of a failed test. Nothing here touches
a shared Redis: each session gets its own ``redis-server`` on a Unix socket in a temp dir.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import redis

from keyturn.bot.config import SIGNER_ONLY_VARIABLES
from keyturn.bot.dev import private_redis_argv

if TYPE_CHECKING:
    from keyturn.emulator.client import EmulatorClient

ROOT = Path(__file__).resolve().parent.parent
KEYTURN = [sys.executable, "-m", "keyturn"]


def build_wheel(out: Path) -> Path:
    """Build the keyturn wheel from this checkout into ``out`` (no build environment: the dev extra brings
    setuptools and wheel); its path. For the base-install test and its benchmark."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
         str(ROOT)],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    (wheel,) = out.glob("keyturn-*.whl")
    return wheel


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.02) -> None:
    """Poll ``predicate`` until it is true; raise ``TimeoutError`` naming ``what`` otherwise.

    Used only to wait for an external process to become ready, where there is no event to await.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def http_ok(url: str) -> Callable[[], bool]:
    """A readiness predicate: ``url`` answers 2xx."""

    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=0.5) as resp:  # noqa: S310 - loopback test URL
                return 200 <= int(resp.status) < 300
        except (urllib.error.URLError, OSError):
            return False

    return check


def redis_pings(port: int) -> bool:
    """True if a Redis server (or sentinel) on 127.0.0.1:``port`` answers PING."""
    try:
        with redis.Redis(port=port, socket_timeout=0.5) as r:
            return bool(r.ping())
    except redis.RedisError:
        return False


def unix_socket_ready(path: Path) -> Callable[[], bool]:
    """A readiness predicate: something accepts connections on the Unix socket ``path``."""

    def check() -> bool:
        if not path.exists():
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(str(path))
            except OSError:
                return False
            return True

    return check


@dataclass
class Proc:
    """A child process with its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    _stopped: bool = field(default=False)

    def log(self) -> str:
        """The process's output so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def alive(self) -> bool:
        """True while the process runs."""
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        """Stop the process (SIGTERM, then SIGKILL) and return its exit code."""
        if self._stopped:
            return self.popen.returncode
        self._stopped = True
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        return self.popen.returncode

    def kill9(self) -> None:
        """Kill the process group with SIGKILL, as a crash would."""
        self.stop(signal.SIGKILL)


def start_process(
    name: str,
    argv: Sequence[str],
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    ready: Callable[[], bool] | None = None,
    ready_timeout: float = 20.0,
    cwd: Path | None = None,
) -> Proc:
    """Start ``argv`` in its own process group, logging to ``log_dir/<name>.log``; wait for ``ready``."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    full_env = dict(os.environ)
    full_env["PYTHONUNBUFFERED"] = "1"
    if env:
        full_env.update(env)
    with log_path.open("ab") as log:
        popen = subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            cwd=str(cwd or ROOT),
            start_new_session=True,
        )
    proc = Proc(name, popen, log_path)
    if ready is not None:
        try:
            wait_until(lambda: (not proc.alive()) or ready(), ready_timeout, f"{name} to be ready")
        except TimeoutError:
            proc.stop()
            raise RuntimeError(f"{name} did not become ready; log:\n{proc.log()}") from None
        if not proc.alive():
            raise RuntimeError(f"{name} exited with {proc.popen.returncode}; log:\n{proc.log()}")
    return proc


@dataclass
class RedisServer:
    """A private redis-server on a Unix socket."""

    proc: Proc
    socket_path: Path

    @property
    def url(self) -> str:
        """A redis-py URL for this server."""
        return f"unix://{self.socket_path}"

    def client(self) -> redis.Redis:
        """A new synchronous client."""
        return redis.Redis.from_url(self.url)


def redis_server_binary() -> str:
    """Path of redis-server, or raise with the package to install."""
    path = shutil.which("redis-server")
    if path is None:
        raise RuntimeError(
            "redis-server not found: run ./scripts/bootstrap.sh or apt-get install redis-server"
        )
    return path


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[RedisServer]:
    """Run a throwaway redis-server in ``workdir`` (no persistence, no TCP port)."""
    workdir.mkdir(parents=True, exist_ok=True)
    sock = workdir / "redis.sock"
    argv = private_redis_argv(redis_server_binary(), sock, workdir)
    proc = start_process("redis", argv, workdir, ready=unix_socket_ready(sock))
    try:
        yield RedisServer(proc, sock)
    finally:
        proc.stop()


# --- Keyturn processes, started as in a deployment (for e2e tests, scheduler tests and benchmarks) ---


def ci_headers(secret: str, method: str, path: str, body: bytes, ts: int | None = None) -> dict[str, str]:
    """The ``X-Keyturn-*`` headers a pipeline sends (design.md §6), signed with ``secret``."""
    from keyturn.signer.evidence import ci_signature  # the one implementation of the scheme

    stamp = str(int(time.time()) if ts is None else ts)
    return {
        "X-Keyturn-Timestamp": stamp,
        "X-Keyturn-Signature": ci_signature(secret, method, path, body, stamp),
        "Content-Type": "application/json",
    }


def keygen(workdir: Path, *, dev: bool = False) -> tuple[Path, Path]:
    """Write a private keyset and its public JWKS with ``keyturn keygen``/``keys export``; their paths."""
    keyset, public = workdir / "signing-keys.json", workdir / "keys.public.json"
    for argv in (
        [*KEYTURN, "keygen", *(["--dev"] if dev else []), "--out", str(keyset)],
        [*KEYTURN, "keys", "--key-file", str(keyset), "export", "--out", str(public)],
    ):
        done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"{argv} failed: {done.stderr}")
    return keyset, public


def start_signer(
    workdir: Path,
    logs: Path,
    *,
    policy: Path,
    keyset: Path,
    slack_secret: str,
    ci_secret: str,
    env: Mapping[str, str] | None = None,
) -> tuple[Proc, Path]:
    """``keyturn signer`` on a socket in ``workdir``; the process and the socket path."""
    sock = workdir / "signer.sock"
    proc = start_process(
        "signer",
        [*KEYTURN, "signer"],
        logs,
        env={
            "KEYTURN_SIGNER_SOCKET": str(sock),
            "KEYTURN_SIGNER_KEYSET": str(keyset),
            "KEYTURN_POLICY": str(policy),
            "KEYTURN_SLACK_SIGNING_SECRET": slack_secret,
            "KEYTURN_CI_SECRET": ci_secret,
            "KEYTURN_AUDIT_LOG": str(workdir / "audit.jsonl"),
            **(env or {}),
        },
        ready=unix_socket_ready(sock),
    )
    return proc, sock


def new_card_request_id(emulator: EmulatorClient, since: int = 0, timeout: float = 15.0) -> str:
    """The request id on the first card (a top-level ``chat.postMessage`` naming a request) posted after call
    ``since``. An earlier test's outcome reply may land in the channel meanwhile: it is passed over."""
    while True:
        call = emulator.wait_for("chat.postMessage", timeout=timeout, since=since)
        params = json.dumps(call["params"])
        if "thread_ts" not in call["params"] and "req_" in params:
            return "req_" + params.split("req_", 1)[1][:26]
        since = call["seq"]


def start_emulator(logs: Path, *, slack_secret: str, bot_url: str | None = None) -> tuple[Proc, str]:
    """``keyturn emulator`` on a free port, signing requests to ``bot_url`` (if given); process and URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [*KEYTURN, "emulator", "--port", str(port)]
    if bot_url is not None:
        argv += ["--bot-url", f"{bot_url}/slack/events"]
    proc = start_process(
        "emulator",
        argv,
        logs,
        env={"KEYTURN_SLACK_SIGNING_SECRET": slack_secret},
        ready=http_ok(f"{url}/_emulator/health"),
    )
    return proc, url


REQUEST_LIMITS_OFF = {
    "KEYTURN_MAX_PENDING_PER_REQUESTER": "100000",
    "KEYTURN_MAX_PENDING_PER_REPO": "100000",
    "KEYTURN_MAX_PENDING": "1000000",
    "KEYTURN_REQUEST_RATE": "100000",
    "KEYTURN_REQUEST_BURST": "100000",
    # Tests send many bad signatures from loopback on purpose; the per-source limit has tests of its own.
    "KEYTURN_SOURCE_BURST": "1000000",
}


def start_bot(
    logs: Path,
    *,
    port: int,
    redis_url: str,
    signer_socket: Path,
    policy: Path,
    emulator_url: str,
    cwd: Path,
    name: str = "bot",
    env: Mapping[str, str] | None = None,
) -> Proc:
    """``keyturn bot`` on ``port``, talking to the emulator as its Slack; waits for ``/readyz``."""
    url = f"http://127.0.0.1:{port}"
    return start_process(
        name,
        [*KEYTURN, "bot"],
        logs,
        env={
            "KEYTURN_REDIS_URL": redis_url,
            "KEYTURN_SIGNER_SOCKET": str(signer_socket),
            "KEYTURN_POLICY": str(policy),
            "KEYTURN_SLACK_BOT_TOKEN": "xoxb-keyturn-test-token",
            "KEYTURN_SLACK_API_URL": f"{emulator_url}/api/",
            "KEYTURN_HOST": "127.0.0.1",
            "KEYTURN_PORT": str(port),
            "KEYTURN_PUBLIC_URL": url,
            # The bot refuses to start with the signer's secrets; blank any the test process exports.
            **dict.fromkeys(SIGNER_ONLY_VARIABLES, ""),
            # Tests create hundreds of requests as one requester: request limits out of the way unless a
            # test sets them (tests/bot/test_request_limits.py).
            **REQUEST_LIMITS_OFF,
            **(env or {}),
        },
        ready=http_ok(f"{url}/readyz"),
        cwd=cwd,
    )


@dataclass
class Backends:
    """A real signer and a Slack emulator for a test's own bot(s), made by :func:`signer_and_emulator`."""

    workdir: Path
    logs: Path
    policy: Path
    signer_socket: Path
    emulator_url: str
    procs: list[Proc]  # stopped last first when the context ends, bots started here included

    def start_bot(self, *, port: int, redis_url: str, env: Mapping[str, str] | None = None) -> Proc:
        """``keyturn bot`` on ``port`` against these backends (see :func:`start_bot`)."""
        proc = start_bot(
            self.logs,
            port=port,
            redis_url=redis_url,
            signer_socket=self.signer_socket,
            policy=self.policy,
            emulator_url=self.emulator_url,
            cwd=self.workdir,
            env=env,
        )
        self.procs.append(proc)
        return proc


@contextlib.contextmanager
def signer_and_emulator(
    workdir: Path, policy_text: str, *, slack_secret: str, ci_secret: str, bot_url: str | None = None
) -> Iterator[Backends]:
    """Fresh keys, ``policy_text`` as ``keyturn.toml``, a signer and an emulator sending to ``bot_url``, all
    in ``workdir``; every process started through them is stopped on exit."""
    policy = workdir / "keyturn.toml"
    policy.write_text(policy_text)
    keyset, _ = keygen(workdir)
    logs = workdir / "logs"
    procs: list[Proc] = []
    try:
        signer, sock = start_signer(
            workdir, logs, policy=policy, keyset=keyset, slack_secret=slack_secret, ci_secret=ci_secret
        )
        procs.append(signer)
        emulator, emulator_url = start_emulator(logs, slack_secret=slack_secret, bot_url=bot_url)
        procs.append(emulator)
        yield Backends(workdir, logs, policy, sock, emulator_url, procs)
    finally:
        for proc in reversed(procs):
            proc.stop()
