"""Nagle's algorithm is off on every connection the bot's and the emulator's pre-bound listeners accept.

Both bind their own sockets (the bot when it has an internal listener, the emulator always) and hand them to
uvicorn. asyncio turns Nagle off on an accepted socket only when the socket's protocol number says TCP; a
socket made with protocol 0 kept Nagle on, and a kept-alive client then waited out its delayed ACK (40 ms)
for every response after its first, because uvicorn writes a response's head and body separately (found
with bench/bench_intake.py: the bot's Slack session spent 44 ms per call to the emulator). Checked on the
sockets asyncio accepts, as uvicorn does, rather than by timing.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import pytest

from keyturn.bot.server import bind_listener
from keyturn.emulator.__main__ import listen


async def _accepted_nodelay(sock: socket.socket) -> int:
    """Serve ``sock`` with asyncio's ``create_server`` (what uvicorn does with a given socket), connect once,
    and return TCP_NODELAY as set on the accepted connection's socket."""
    loop = asyncio.get_running_loop()
    seen: asyncio.Future[int] = loop.create_future()

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            accepted = transport.get_extra_info("socket")
            seen.set_result(accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    server = await loop.create_server(Probe, sock=sock)
    try:
        port = sock.getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            return await asyncio.wait_for(seen, 10)
        finally:
            writer.close()
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    "bind",
    [lambda: bind_listener("127.0.0.1", 0), lambda: listen("127.0.0.1", 0)],
    ids=["bot_internal_listener", "emulator"],
)
async def test_kept_alive_clients_do_not_wait_for_delayed_acks(bind: Callable[[], socket.socket]) -> None:
    assert await _accepted_nodelay(bind()) != 0
