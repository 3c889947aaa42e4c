"""SlackMessenger against a running emulator (``keyturn emulator`` as a process): retries, errors, lookups."""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from keyturn.bot.messenger import (
    SLACK_MAX_CONNECTIONS,
    CardMissing,
    RetryPolicy,
    SlackAuthError,
    SlackMessenger,
    SlackNotFound,
    SlackRejected,
    SlackUnavailable,
    make_web_client,
)
from keyturn.bot.models import Approval, CardRef, Status
from keyturn.bot.notices import escalation_text, outcome_text, reminder_text
from keyturn.emulator.client import AsyncEmulatorClient
from tests.fixtures import DEV_POLICY, make_request
from tests.harness import free_port, start_emulator

POLICY = DEV_POLICY
TOKEN = "xoxb-keyturn-test"


async def messages(emu: AsyncEmulatorClient, channel: str) -> list[dict[str, Any]]:
    """Top-level messages of a channel or DM (by id), each with its ``replies``."""
    st = await emu.state()
    for conv in st["channels"] + st["ims"]:
        if conv["id"] == channel:
            msgs: list[dict[str, Any]] = conv["messages"]
            return msgs
    raise AssertionError(f"no conversation {channel}")


async def message(emu: AsyncEmulatorClient, channel: str, ts: str) -> dict[str, Any]:
    """One top-level message by ``ts``."""
    (msg,) = [m for m in await messages(emu, channel) if m["ts"] == ts]
    return msg


async def ephemerals(emu: AsyncEmulatorClient, user: str) -> list[dict[str, Any]]:
    """Ephemeral messages shown to ``user``."""
    eph: list[dict[str, Any]] = (await emu.state(user))["ephemerals"]
    return eph


async def views(emu: AsyncEmulatorClient, user: str) -> list[dict[str, Any]]:
    """Views open for ``user``."""
    v: list[dict[str, Any]] = (await emu.state(user))["views"]
    return v


class Sleeps:
    """An injected sleep: records each wait and returns at once (retry timing without waiting)."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture(scope="module")
def emulator_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, url = start_emulator(tmp_path_factory.mktemp("emulator"), slack_secret=secrets.token_hex(16))
    yield url
    proc.stop()


@pytest.fixture
async def emu(emulator_url: str) -> AsyncIterator[AsyncEmulatorClient]:
    client = AsyncEmulatorClient(emulator_url)
    await client.reset()
    yield client
    await client.aclose()


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def messenger(emu: AsyncEmulatorClient, sleeps: Sleeps) -> SlackMessenger:
    return SlackMessenger(make_web_client(TOKEN, emu.api_url), POLICY, sleep=sleeps)


async def test_post_card_lands_in_the_environment_channel(
    messenger: SlackMessenger, emu: AsyncEmulatorClient
) -> None:
    ref = await messenger.post_card(make_request())
    assert ref.channel == "C0DEPLOYS"
    msg = await message(emu, "C0DEPLOYS", ref.ts)
    assert any(b.get("block_id") == "kt_decision" for b in msg["blocks"])


async def test_injection_reaches_slack_escaped(messenger: SlackMessenger, emu: AsyncEmulatorClient) -> None:
    await messenger.post_card(
        make_request(ref="feat/<!channel>", title="<@U0BOB> <https://evil|x> a&b", requester_slack_id=None)
    )
    (call,) = await emu.calls("chat.postMessage")
    params = call["params"]
    dumped = str(params["blocks"]) + params["text"]
    assert "feat/&lt;!channel&gt;" in dumped
    for raw in ("<!channel>", "<@U0BOB>", "<https://evil", "a&b"):
        assert raw not in dumped
    assert not re.search(r"<[!#]", dumped)


async def test_rate_limit_then_ok_honours_retry_after(
    messenger: SlackMessenger, emu: AsyncEmulatorClient, sleeps: Sleeps
) -> None:
    await emu.fault("chat.postMessage", status=429, retry_after=2, times=1)
    ref = await messenger.post_card(make_request())
    calls = await emu.calls("chat.postMessage")
    assert [c["status"] for c in calls] == [429, 200]
    assert sleeps.waits == [2.0]
    assert (await message(emu, "C0DEPLOYS", ref.ts))["ts"] == ref.ts


async def test_server_errors_are_retried_with_capped_backoff(
    messenger: SlackMessenger, emu: AsyncEmulatorClient, sleeps: Sleeps
) -> None:
    await emu.fault("chat.postMessage", status=503, times=2)
    await messenger.post_card(make_request())
    assert [c["status"] for c in await emu.calls("chat.postMessage")] == [503, 503, 200]
    assert len(sleeps.waits) == 2
    assert all(0 < w <= RetryPolicy().cap for w in sleeps.waits)


async def test_persistent_outage_raises_unavailable(emu: AsyncEmulatorClient, sleeps: Sleeps) -> None:
    m = SlackMessenger(
        make_web_client(TOKEN, emu.api_url), POLICY, retry=RetryPolicy(attempts=3), sleep=sleeps
    )
    await emu.fault("chat.postMessage", status=500)
    with pytest.raises(SlackUnavailable) as err:
        await m.post_card(make_request())
    assert err.value.code == "slack_unavailable"
    assert len(await emu.calls("chat.postMessage")) == 3
    assert len(sleeps.waits) == 2


async def test_ok_false_maps_to_typed_errors_without_retry(
    messenger: SlackMessenger, emu: AsyncEmulatorClient, sleeps: Sleeps
) -> None:
    await emu.fault("chat.postMessage", error="channel_not_found", times=1)
    with pytest.raises(SlackNotFound) as nf:
        await messenger.post_card(make_request())
    assert (nf.value.code, nf.value.slack_error) == ("slack_not_found", "channel_not_found")
    await emu.fault("chat.postMessage", error="invalid_auth", times=1)
    with pytest.raises(SlackAuthError):
        await messenger.post_card(make_request())
    await emu.fault("chat.postMessage", error="invalid_blocks", times=1)
    with pytest.raises(SlackRejected):
        await messenger.post_card(make_request())
    assert len(await emu.calls("chat.postMessage")) == 3
    assert sleeps.waits == []


async def test_connection_errors_are_retried_then_unavailable(sleeps: Sleeps) -> None:
    dead = f"http://127.0.0.1:{free_port()}/api/"
    m = SlackMessenger(make_web_client(TOKEN, dead), POLICY, retry=RetryPolicy(attempts=2), sleep=sleeps)
    with pytest.raises(SlackUnavailable) as err:
        await m.post_card(make_request())
    assert err.value.slack_error.startswith("connection_error")
    assert len(sleeps.waits) == 1


async def test_update_card_replaces_the_message(messenger: SlackMessenger, emu: AsyncEmulatorClient) -> None:
    req = make_request()
    ref = await messenger.post_card(req)
    decided = make_request(
        card=ref,
        status=Status.DENIED,
        decided_by="U0BOB",
        deny_reason="not today",
        approvals=[Approval(user_id="U0CAROL", at=datetime.now(UTC))],
    )
    await messenger.update_card(decided)
    msg = await message(emu, "C0DEPLOYS", ref.ts)
    assert not any(b["type"] == "actions" for b in msg["blocks"])
    assert "not today" in str(msg["blocks"])


async def test_update_card_without_card_is_refused(messenger: SlackMessenger) -> None:
    with pytest.raises(CardMissing):
        await messenger.update_card(make_request())


async def test_update_of_unknown_message_is_not_found(messenger: SlackMessenger) -> None:
    with pytest.raises(SlackNotFound):
        await messenger.update_card(make_request(card=CardRef(channel="C0DEPLOYS", ts="1.000001")))


async def test_thread_reply_dm_and_ephemeral(messenger: SlackMessenger, emu: AsyncEmulatorClient) -> None:
    ref = await messenger.post_card(make_request())
    await messenger.reply_in_thread(ref, "approved")
    await messenger.send_dm("U0ALICE", "your deploy was approved")
    await messenger.ephemeral("C0DEPLOYS", "U0MALLORY", "You are not an approver for production.")
    (card,) = [m for m in await messages(emu, "C0DEPLOYS") if m["ts"] == ref.ts]
    assert [r["text"] for r in card["replies"]] == ["approved"]
    dm_texts = [m["text"] for im in (await emu.state())["ims"] for m in im["messages"]]
    assert "your deploy was approved" in dm_texts
    assert [e["text"] for e in await ephemerals(emu, "U0MALLORY")] == [
        "You are not an approver for production."
    ]


async def test_intents_reach_slack_in_the_notices_words(
    messenger: SlackMessenger, emu: AsyncEmulatorClient
) -> None:
    """The approval logic says what happened; the messenger words it and picks the thread, the DM."""
    now = datetime.now(UTC)
    ref = await messenger.post_card(make_request(now))
    pending = make_request(now, card=ref)
    await messenger.remind(pending, waiting=["U0BOB"], groups=[], now=now, final=False)
    await messenger.escalate(pending, users=["U0DAVE"], groups=["S0LEADS"], after=2, now=now)
    await messenger.escalate_dm("U0DAVE", pending, after=2, now=now)
    denied = make_request(now, card=ref, status=Status.DENIED, decided_by="U0BOB", deny_reason="not today")
    await messenger.announce_outcome(denied)
    (card,) = [m for m in await messages(emu, "C0DEPLOYS") if m["ts"] == ref.ts]
    assert [r["text"] for r in card["replies"]] == [
        reminder_text(pending, "<@U0BOB>", now, final=False),
        escalation_text(pending, "<@U0DAVE> <!subteam^S0LEADS>", 2, now),
        f"<@U0ALICE> {outcome_text(denied)}",
    ]
    dm_texts = [m["text"] for im in (await emu.state())["ims"] for m in im["messages"]]
    assert outcome_text(denied) in dm_texts  # to the requester
    assert any(t.startswith(":rotating_light: A deploy of") and "Open the request" in t for t in dm_texts)


async def test_group_members_cached_briefly(emu: AsyncEmulatorClient, sleeps: Sleeps) -> None:
    t = [0.0]
    m = SlackMessenger(
        make_web_client(TOKEN, emu.api_url), POLICY, group_ttl=60, clock=lambda: t[0], sleep=sleeps
    )
    assert await m.group_members("S0ONCALL") == frozenset({"U0ERIN"})
    assert await m.group_members("S0ONCALL") == frozenset({"U0ERIN"})
    assert len(await emu.calls("usergroups.users.list")) == 1
    t[0] = 61.0
    await m.group_members("S0ONCALL")
    assert len(await emu.calls("usergroups.users.list")) == 2


async def test_email_lookups(messenger: SlackMessenger) -> None:
    assert await messenger.user_email("U0BOB") == "bob@example.com"
    assert await messenger.user_email("U0NOBODY") is None
    assert await messenger.user_by_email("carol@example.com") == "U0CAROL"
    assert await messenger.user_by_email("nobody@example.com") is None


async def test_deny_modal_with_a_stale_trigger_is_rejected(messenger: SlackMessenger) -> None:
    with pytest.raises(SlackRejected):
        await messenger.open_deny_modal("123.456.not-issued", make_request())


async def test_permalink_of_the_card_with_retries_and_none_on_failure(
    messenger: SlackMessenger, emu: AsyncEmulatorClient, emulator_url: str, sleeps: Sleeps
) -> None:
    ref = await messenger.post_card(make_request())
    await emu.fault("chat.getPermalink", status=429, retry_after=1, times=1)
    assert await messenger.permalink(ref) == f"{emulator_url}/#C0DEPLOYS/{ref.ts}"
    assert sleeps.waits == [1.0]  # the same retry policy as every other call
    assert await messenger.permalink(CardRef(channel="C0DEPLOYS", ts="1700000000.000001")) is None
    assert await messenger.permalink(CardRef(channel="C0NOPE", ts=ref.ts)) is None
    await emu.fault("chat.getPermalink", status=500)
    assert await messenger.permalink(ref) is None  # Slack down: no link, no exception
    assert [c["status"] for c in await emu.calls("chat.getPermalink")][-1] == 500


class _CountingForwarder:
    """A TCP forwarder to an HTTP server's host and port that counts the connections made through it (all,
    and at most open at once)."""

    def __init__(self, target: str) -> None:
        self.target = urllib.parse.urlsplit(target)
        self.accepted = 0
        self.open = 0
        self.max_open = 0
        self.url = ""
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> _CountingForwarder:
        self._server = await asyncio.start_server(self._forward, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}{self.target.path}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _forward(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        try:
            up_r, up_w = await asyncio.open_connection(self.target.hostname, self.target.port)
            await asyncio.gather(_pipe(client_r, up_w), _pipe(up_r, client_w))
        finally:
            self.open -= 1


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


async def test_a_started_messenger_reuses_one_connection_to_slack(emu: AsyncEmulatorClient) -> None:
    """After ``start`` (what the bot does at start-up) five calls share one connection: no TCP (and TLS)
    handshake per card; after ``aclose`` nothing stays open."""
    async with _CountingForwarder(emu.api_url) as fwd:
        m = SlackMessenger(make_web_client(TOKEN, fwd.url), POLICY)
        try:
            await m.start()
            for _ in range(5):
                await m.post_card(make_request())
            assert fwd.accepted == 1
        finally:
            await m.aclose()
        assert m.client.session is None


async def test_a_burst_of_slack_calls_never_opens_more_connections_than_the_pool_bound(
    emu: AsyncEmulatorClient,
) -> None:
    """Three times the bound in flight at once: every call succeeds, through at most the bound's sockets (the
    rest wait for a free connection), so a burst of clicks cannot run the bot out of file descriptors."""
    async with _CountingForwarder(emu.api_url) as fwd:
        m = SlackMessenger(make_web_client(TOKEN, fwd.url), POLICY)
        try:
            await m.start()
            burst = [m.post_card(make_request()) for _ in range(3 * SLACK_MAX_CONNECTIONS)]
            refs = await asyncio.gather(*burst)
        finally:
            await m.aclose()
    assert len({ref.ts for ref in refs}) == 3 * SLACK_MAX_CONNECTIONS
    assert fwd.max_open <= SLACK_MAX_CONNECTIONS
    assert fwd.accepted <= SLACK_MAX_CONNECTIONS
    assert fwd.accepted > 1  # the calls did overlap: the bound, not serial calls, kept the count down


async def test_an_unstarted_messenger_still_works_one_connection_per_call(emu: AsyncEmulatorClient) -> None:
    async with _CountingForwarder(emu.api_url) as fwd:
        m = SlackMessenger(make_web_client(TOKEN, fwd.url), POLICY)
        for _ in range(2):
            await m.post_card(make_request())
    assert fwd.accepted == 2
