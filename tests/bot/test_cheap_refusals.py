"""Issue 14 finding 2: what can be refused cheaply never reaches the signer, and checks of unauthenticated
requests cannot take the signer lane that signatures use."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from keyturn.bot.prefilter import plausible
from keyturn.bot.signer_client import SignerClient
from keyturn.signer import wire

GOOD_CI = "v1=" + "a" * 64
GOOD_SLACK = "v0=" + "b" * 64


@pytest.mark.parametrize(
    ("timestamp", "signature", "kind"),
    [
        ("", GOOD_CI, "ci"),
        ("abc", GOOD_CI, "ci"),
        ("1" * 13, GOOD_CI, "ci"),
        (str(int(time.time()) - 1000), GOOD_CI, "ci"),  # stale
        (str(int(time.time()) + 1000), GOOD_CI, "ci"),  # from the future
        ("NOW", "", "ci"),
        ("NOW", "v1=" + "A" * 64, "ci"),  # the signer takes lowercase hex only
        ("NOW", GOOD_SLACK, "ci"),  # the other scheme's prefix
        ("NOW", GOOD_CI, "slack"),
        ("NOW", "v0=" + "b" * 63, "slack"),
    ],
)
def test_implausible_headers_are_refused_without_the_signer(
    timestamp: str, signature: str, kind: str
) -> None:
    ts = str(int(time.time())) if timestamp == "NOW" else timestamp
    assert not plausible(ts, signature, kind=kind)


def test_plausible_headers_go_on_to_the_signer() -> None:
    now = int(time.time())
    assert plausible(str(now), GOOD_CI, kind="ci")
    assert plausible(str(now - 320), GOOD_SLACK, kind="slack")  # within the signer's window plus margin


async def test_a_flood_of_checks_does_not_take_the_signing_lane(tmp_path: Path) -> None:
    """Checks stall at a fake signer; a health call (the signing lane) still answers at once."""
    path = tmp_path / "s.sock"
    stalled = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (payload := await wire.read_frame(reader)) is not None:
            req = json.loads(payload)
            if req["op"].startswith("check"):
                stalled.set()
                await asyncio.Event().wait()  # never answers, as an overloaded signer
            result = {"keyId": "k", "policySha256": "0" * 64, "auditSeq": 0, "auditHead": "0" * 64}
            writer.write(wire.encode_frame({"v": 1, "id": req["id"], "ok": True, "result": result}))
            await writer.drain()

    server = await asyncio.start_unix_server(serve, path=str(path))
    client = SignerClient(path, timeout=5, max_checks=4, max_signs=2)
    floods = [
        asyncio.create_task(client.check_slack("x", str(int(time.time())), GOOD_SLACK)) for _ in range(20)
    ]
    try:
        await asyncio.wait_for(stalled.wait(), 5)
        started = time.monotonic()
        health = await asyncio.wait_for(client.health(), 2)
        assert health.key_id == "k"
        assert time.monotonic() - started < 1.0
    finally:
        for t in floods:
            t.cancel()
        await asyncio.gather(*floods, return_exceptions=True)
        await client.close()
        server.close()
