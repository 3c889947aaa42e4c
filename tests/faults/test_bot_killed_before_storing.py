"""The bot killed (SIGKILL) between the final approval and storing the receipt.

The signer has signed and recorded the receipt, but the bot dies before its answer arrives, so Redis holds
an APPROVED-to-be request at quorum and no receipt. A proxy in front of the signer's socket makes the moment
exact: it passes the ``sign`` frame through, lets the signer answer, and holds that answer back from the bot
until the bot is dead. A new bot process (same Redis, same signer) must finish the request by itself, with
the receipt the signer already issued: the signer answers a repeated ``sign`` with the recorded receipt.

Invariant: the request ends APPROVED with exactly one audit entry, and the stored receipt is that entry's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from keyturn.signer import wire
from tests.faults.conftest import FaultStack, build_stack, close_stack
from tests.harness import KEYTURN

pytestmark = pytest.mark.slow

SIGN_LEASE_S = 3  # a dead bot's signing claim lapses after this (short, for the test)


class AnswerHoldingProxy:
    """A Unix-socket proxy in front of the signer that, when armed, withholds the answer to one ``sign``.

    The frame reaches the signer (which signs and records); its answer is read, announced through
    ``answered`` and never forwarded: to the bot, the signer simply has not answered yet.
    """

    def __init__(self, upstream: Path, path: Path) -> None:
        self.upstream = upstream
        self.path = path
        self.hold = threading.Event()  # armed: withhold the next sign's answer
        self.answered = threading.Event()  # the signer answered the held sign
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="answer-holding-proxy")
        self._server: asyncio.AbstractServer | None = None

    def start(self) -> Path:
        """Start serving; the proxy's socket path (what the bot is given)."""
        self._thread.start()
        assert self._ready.wait(10), "proxy did not start"
        return self.path

    def close(self) -> None:
        """Stop serving."""

        async def shut() -> None:
            if self._server is not None:
                self._server.close()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shut(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def main() -> None:
            self._server = await asyncio.start_unix_server(
                self._serve, path=str(self.path), limit=wire.MAX_FRAME + 8
            )
            self._ready.set()

        self._loop.run_until_complete(main())
        self._loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_unix_connection(str(self.upstream), limit=wire.MAX_FRAME + 8)
        try:
            while (payload := await wire.read_frame(reader)) is not None:
                up_w.write(len(payload).to_bytes(4, "big") + payload)
                await up_w.drain()
                reply = await wire.read_frame(up_r)
                if reply is None:
                    return
                if self.hold.is_set() and json.loads(payload).get("op") == "sign":
                    self.hold.clear()
                    self.answered.set()
                    while await reader.read(65536):  # keep the bot waiting until it goes away
                        pass
                    return
                writer.write(len(reply).to_bytes(4, "big") + reply)
                await writer.drain()
        except (OSError, wire.WireError):
            return
        finally:
            up_w.close()
            writer.close()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The module's stack directory (the signer's socket is ``signer.sock`` in it)."""
    return tmp_path_factory.mktemp("botkill")


@pytest.fixture(scope="module")
def proxy(workdir: Path) -> Iterator[AnswerHoldingProxy]:
    """The proxy between the bot and the signer (it dials the signer per connection: it may start first)."""
    held = AnswerHoldingProxy(workdir / "signer.sock", workdir / "proxy.sock")
    yield held
    held.close()


@pytest.fixture(scope="module")
def fault_stack(workdir: Path, proxy: AnswerHoldingProxy) -> Iterator[FaultStack]:
    """A stack whose bot reaches the signer through ``proxy``; a dead bot's work is picked up quickly."""
    bot_env = {
        "KEYTURN_SIGN_LEASE": str(SIGN_LEASE_S),
        "KEYTURN_SIGNER_TIMEOUT": "2",
        "KEYTURN_BACKSTOP_INTERVAL": "0.5",
    }
    stack = build_stack(workdir, bot_env=bot_env, bot_signer_socket=lambda _signer_socket: proxy.start())
    yield stack
    close_stack(stack)


def test_bot_killed_after_the_signer_signed_the_backstop_stores_the_same_receipt(
    fstack: FaultStack, proxy: AnswerHoldingProxy
) -> None:
    req = fstack.card(fstack.create(environment="staging", sha="b1" * 20)["requestId"])
    rid = req["requestId"]
    proxy.hold.set()
    clicker = threading.Thread(target=fstack.click, args=("U0BOB", req), daemon=True)
    clicker.start()
    assert proxy.answered.wait(30), "the bot never asked for the signature"
    issued = [r for r in fstack.audit_lines() if r.get("type") == "receipt_issued"]
    (recorded,) = [r["receipt"] for r in issued if r["receipt"]["requestId"] == rid]
    fstack.procs["bot"].kill9()  # signed and recorded, but the bot never stored it
    clicker.join(30)

    fstack.restart_bot()  # the replacement: nobody clicks again, its backstop must finish the request
    done = fstack.wait_status(rid, "APPROVED", timeout=60)
    assert done["receiptId"]
    stored = fstack.get(f"/v1/requests/{rid}/receipt").json()
    assert stored == recorded  # the receipt the signer recorded, not a second one
    mine = [r for r in fstack.audit_lines() if r.get("type") == "receipt_issued"]
    assert [r["receipt"]["requestId"] for r in mine].count(rid) == 1
    assert f"sign {rid}: already issued" in fstack.procs["signer"].log()
    verify = subprocess.run(
        [*KEYTURN, "audit", "verify", str(fstack.workdir / "audit.jsonl")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr
