"""Connection limits of a real ``keyturn signer``: idle connections are closed quietly, a frame whose bytes
stop arriving is refused, connections past the cap get ``too_many_connections``, and the bot's pooled client
carries on when the signer has closed one of its idle connections.

Closes are awaited as events (a socket reaching end of stream), never slept for.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from keyturn.bot.signer_client import SignerClient, SignerUnavailable
from tests.harness import Proc, wait_until
from tests.signer.conftest import HEALTH, RawConn, SignerFiles, make_files, start_signer
from tests.signer.test_hostile_frames import assert_error

Signer = tuple[SignerFiles, Proc]
IDLE = 0.3
FRAME = 0.5


@pytest.fixture(scope="module")
def quick_signer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Signer]:
    """A signer with short idle and per-frame timeouts."""
    files = make_files()
    proc = start_signer(
        files,
        tmp_path_factory.mktemp("quick-signer"),
        KEYTURN_SIGNER_IDLE_TIMEOUT=str(IDLE),
        KEYTURN_SIGNER_REQUEST_TIMEOUT=str(FRAME),
    )
    yield files, proc
    proc.stop()
    shutil.rmtree(files.root, ignore_errors=True)


def assert_quiet(proc: Proc) -> None:
    """The signer is alive and has logged no traceback or error."""
    assert proc.alive()
    log = proc.log()
    assert "Traceback" not in log
    assert " ERROR " not in log


def test_an_idle_connection_is_closed_quietly_after_the_idle_timeout(quick_signer: Signer) -> None:
    files, proc = quick_signer
    silent = RawConn(files.socket)
    used = RawConn(files.socket)
    try:
        assert used.ask(HEALTH)["ok"] is True  # the timer starts again after each reply
        started = time.monotonic()
        assert silent.sock.recv(1) == b""
        assert used.sock.recv(1) == b""
        assert time.monotonic() - started >= IDLE * 0.8
    finally:
        silent.close()
        used.close()
    fresh = RawConn(files.socket)
    try:
        assert fresh.ask(HEALTH)["ok"] is True
    finally:
        fresh.close()
    assert_quiet(proc)


@pytest.mark.parametrize(
    "partial",
    [
        pytest.param(b"\x00\x00", id="half-a-header"),
        pytest.param(b"\x00\x00\x00\x20", id="header-only"),
        pytest.param(b"\x00\x00\x00\x20" + HEALTH[:10], id="part-of-the-body"),
    ],
)
def test_a_frame_that_stops_arriving_is_refused_and_closed(quick_signer: Signer, partial: bytes) -> None:
    files, proc = quick_signer
    c = RawConn(files.socket)
    try:
        c.sock.sendall(partial)
        started = time.monotonic()
        reply = c.recv()
        assert reply is not None
        assert_error(reply, "frame_timeout")
        assert time.monotonic() - started >= FRAME * 0.8
        assert c.sock.recv(1) == b""
    finally:
        c.close()
    assert_quiet(proc)


async def test_the_pooled_client_survives_the_signer_closing_its_idle_connection(
    quick_signer: Signer,
) -> None:
    files, proc = quick_signer
    client = SignerClient(files.socket, timeout=5.0)
    try:
        first = await client.health()
        pooled = client._idle[0]  # the connection the next call will reuse
        # Opened after the pooled connection went idle, so the signer closes it later than the pooled one.
        # The wait blocks the event loop on purpose: the client cannot notice the close before it reuses the
        # connection, so the call below goes through the stale-connection retry, not the pool's EOF check.
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(5)
        probe.connect(str(files.socket))
        try:
            assert probe.recv(1) == b""
        finally:
            probe.close()
        assert not pooled.reader.at_eof()  # not yet seen by the client
        assert await client.health() == first
        assert pooled.reader.at_eof() or pooled.writer.is_closing()
        assert client._idle
        assert client._idle[0] is not pooled
    finally:
        await client.close()
    assert_quiet(proc)


async def test_the_pooled_client_replaces_an_idle_connection_it_saw_closed(quick_signer: Signer) -> None:
    files, _ = quick_signer
    client = SignerClient(files.socket, timeout=5.0)
    try:
        await client.health()
        reader, writer = await asyncio.open_unix_connection(str(files.socket))
        try:
            assert await asyncio.wait_for(reader.read(1), 5) == b""  # closed after the pooled one
        finally:
            writer.close()
        assert (await client.health()).key_id
    finally:
        await client.close()


def serve_one(path: Path) -> RawConn | None:
    """A connection the signer is serving, or None if it was refused."""
    c = RawConn(path)
    try:
        c.send_frame(HEALTH)
        reply = c.recv()
    except OSError:
        reply = None
    if reply is not None and reply["ok"] is True:
        return c
    c.close()
    return None


def test_connections_past_the_cap_are_refused_until_one_closes(
    signer_files: SignerFiles, log_dir: Path
) -> None:
    proc = start_signer(signer_files, log_dir, KEYTURN_SIGNER_MAX_CONNECTIONS="3")
    held: list[RawConn] = []
    try:
        # The readiness probe's connection may not be released yet: take the three slots as they come free.
        def take() -> bool:
            c = serve_one(signer_files.socket)
            if c is not None:
                held.append(c)
            return len(held) == 3

        wait_until(take, 5, "three connections served")
        log_before = len(proc.log())
        for _ in range(3):
            extra = RawConn(signer_files.socket)
            try:
                reply = extra.recv()
                assert reply is not None
                assert_error(reply, "too_many_connections")
                assert extra.sock.recv(1) == b""
            finally:
                extra.close()

        async def via_client() -> None:
            client = SignerClient(signer_files.socket, timeout=5.0)
            try:
                with pytest.raises(SignerUnavailable):
                    await client.health()
            finally:
                await client.close()

        asyncio.run(via_client())
        held.pop().close()

        def served() -> bool:
            c = serve_one(signer_files.socket)
            if c is None:
                return False
            c.close()
            return True

        wait_until(served, 5, "a connection slot freed by a client leaving")
        refusals_log = proc.log()[log_before:]
    finally:
        for c in held:
            c.close()
        proc.stop()
    # One warning for the episode of four refusals, not one per refused connection.
    assert refusals_log.count("refusing new ones") == 1
    assert "Traceback" not in proc.log()
