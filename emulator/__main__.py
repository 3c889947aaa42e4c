"""``keyturn emulator``: run the Slack emulator (``python -m keyturn.emulator`` works too).

Settings are read here, once: flags first, then ``KEYTURN_EMULATOR_PORT`` / ``KEYTURN_EMULATOR_BOT_URL``, and
the signing secret from the environment variable named by ``--signing-secret-env``. The secret is never
printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import uvicorn
from pydantic import SecretStr

from keyturn.emulator.app import create_app
from keyturn.emulator.core import EmulatorSettings
from keyturn.emulator.errors import WorkspaceError
from keyturn.emulator.workspace import load_workspace

DEFAULT_SECRET_ENV = "KEYTURN_SLACK_SIGNING_SECRET"  # noqa: S105 - a variable name, not a secret


class _Server(uvicorn.Server):
    """A uvicorn server that announces itself once it accepts connections."""

    def __init__(self, config: uvicorn.Config, ready_line: str) -> None:
        super().__init__(config)
        self._ready_line = ready_line

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Leave signals to :func:`_serve`, so SIGTERM is a clean exit (code 0), not a re-raised signal."""
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Start serving, then print the ready line (tools wait for it)."""
        await super().startup(sockets=sockets)
        if not self.should_exit:
            print(self._ready_line, flush=True)


async def _serve(server: _Server, sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
    await server.serve(sockets=[sock])


def listen(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (IPv6 when ``host`` is an IPv6 address); raises ``OSError``.

    Bound before serving, so the ready line can name the port that ``--port 0`` got."""
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted sockets only then. With Nagle on, a client
    # keeping its connection (the bot's Slack session) waited 40 ms (a delayed ACK) for every answer after
    # its first, since uvicorn writes a response's head and body separately.
    sock = socket.socket(
        socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP
    )
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def serve(app: Any, sock: socket.socket, host: str, name: str, **config: Any) -> int:
    """Serve ``app`` on ``sock`` until SIGINT or SIGTERM (exit code 0); ``config`` goes to ``uvicorn.Config``.

    ``{name} ready on http://HOST:PORT`` is printed only once uvicorn answers on the socket: tools (``keyturn
    dev``) act on that line, so it must mean "answers now"."""
    url_host = f"[{host}]" if ":" in host else host
    server = _Server(
        uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=3, **config),
        f"{name} ready on http://{url_host}:{sock.getsockname()[1]}",
    )
    try:
        asyncio.run(_serve(server, sock))
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="keyturn emulator", description="Run the Keyturn Slack emulator.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument(
        "--port",
        type=int,
        default=None,
        help="port (default $KEYTURN_EMULATOR_PORT or 3000; 0 picks a free one)",
    )
    p.add_argument("--workspace", type=Path, default=None, help="workspace TOML (default: the sample)")
    p.add_argument(
        "--signing-secret-env",
        default=DEFAULT_SECRET_ENV,
        metavar="NAME",
        help=f"environment variable holding the Slack signing secret (default {DEFAULT_SECRET_ENV})",
    )
    p.add_argument(
        "--bot-url",
        default=None,
        help="the bot's Slack request URL (default $KEYTURN_EMULATOR_BOT_URL), e.g. http://127.0.0.1:3001/slack/events",
    )
    p.add_argument("--public-url", default=None, help="base URL the bot uses to reach the emulator")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the emulator until interrupted; return the exit code (2 for bad settings)."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    port = args.port
    if port is None:
        env_port = os.environ.get("KEYTURN_EMULATOR_PORT", "3000")
        if not env_port.isdigit():
            print(
                f"keyturn emulator: KEYTURN_EMULATOR_PORT must be a port number, got {env_port!r}",
                file=sys.stderr,
            )
            return 2
        port = int(env_port)
    if not 0 <= port <= 65535:
        print(f"keyturn emulator: port out of range: {port}", file=sys.stderr)
        return 2
    bot_url = args.bot_url or os.environ.get("KEYTURN_EMULATOR_BOT_URL") or None
    if bot_url is not None and not bot_url.startswith(("http://", "https://")):
        print("keyturn emulator: --bot-url must be an http(s) URL", file=sys.stderr)
        return 2
    try:
        workspace = load_workspace(args.workspace)
    except WorkspaceError as exc:
        print(f"keyturn emulator: {exc}", file=sys.stderr)
        return 2
    secret_value = os.environ.get(args.signing_secret_env, "")
    secret = SecretStr(secret_value) if secret_value.strip() else None
    if secret is None:
        print(
            f"keyturn emulator: warning: ${args.signing_secret_env} is not set; clicks, view submissions and "
            "commands cannot be sent to the bot until it is",
            file=sys.stderr,
        )
    settings = EmulatorSettings(
        workspace=workspace, signing_secret=secret, bot_url=bot_url, public_url=args.public_url
    )
    try:
        sock = listen(args.host, port)
    except OSError as exc:
        print(f"keyturn emulator: cannot listen on {args.host}:{port}: {exc.strerror}", file=sys.stderr)
        return 2
    app = create_app(settings)
    print(
        f"keyturn emulator: team {workspace.team.name} ({workspace.team.id}), "
        f"bot URL {bot_url or '(not set)'}",
        flush=True,
    )
    return serve(app, sock, args.host, "emulator", lifespan="on")


if __name__ == "__main__":
    sys.exit(main())
