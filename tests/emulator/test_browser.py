"""The emulator page in headless Chromium: pick a user, click Approve on the posted card, deny with reason.
(The ``browser`` and ``page`` fixtures are in conftest.py.)"""

from __future__ import annotations

from typing import Any

import pytest
from slack_sdk import WebClient

from tests.emulator.conftest import BOT_TOKEN, RunningBot, RunningEmulator
from tests.emulator.test_interactions import CARD

pytestmark = pytest.mark.browser


def post_card(emu: RunningEmulator, text: str) -> str:
    """Post the approval card whose section says ``text``; return its ts."""
    blocks = [*CARD[:1], {"type": "section", "text": {"type": "mrkdwn", "text": text}}, *CARD[2:]]
    ts: str = WebClient(token=BOT_TOKEN, base_url=emu.api_url).chat_postMessage(
        channel="C0DEPLOYS", text="Deploy web?", blocks=blocks
    )["ts"]
    return ts


def test_approve_and_deny_from_the_page(page: Any, emu: RunningEmulator, bot: RunningBot) -> None:
    # Untrusted text must be shown as text: an injected tag stays inert.
    ts = post_card(emu, "*alice* wants `abc123` &lt;img src=x onerror=alert(1)&gt; <!channel>")
    page.goto(emu.url + "/")
    page.select_option("#user-select", "U0BOB")
    message = page.locator(f'.message[data-ts="{ts}"]')
    message.wait_for()
    assert message.locator("img").count() == 0
    assert "<img src=x onerror=alert(1)>" in message.inner_text()
    assert message.locator("b", has_text="alice").count() == 1

    message.locator('button[data-action-id="approve"]').click()
    page.locator("#status", has_text="HTTP 200").wait_for()
    [approve] = bot.record.of("approve")
    assert approve["user"]["id"] == "U0BOB"
    assert approve["message"]["ts"] == ts

    # Carol denies: the bot opens the modal; an empty reason shows the bot's inline error; a reason closes it.
    page.select_option("#user-select", "U0CAROL")
    page.locator(f'.message[data-ts="{ts}"] button[data-action-id="deny"]').click()
    page.locator("#view-form").wait_for()
    page.click("#view-submit")
    page.locator(".input-error", has_text="Please give a reason").wait_for()
    page.fill("#in-reason", "too risky")
    page.click("#view-submit")
    page.locator("#overlay").wait_for(state="hidden")
    reasons = [b["view"]["state"]["values"]["reason"]["reason_input"]["value"] for b in bot.record.of("view")]
    assert reasons == ["", "too risky"]


def test_slash_command_box(page: Any, emu: RunningEmulator, bot: RunningBot) -> None:
    page.goto(emu.url + "/")
    page.select_option("#user-select", "U0ALICE")
    page.fill("#command-input", "/keyturn deploy web")
    page.press("#command-input", "Enter")
    page.locator(".message.ephemeral", has_text="request received: deploy web").wait_for()
    [body] = bot.record.of("command")
    assert (body["user_id"], body["text"]) == ("U0ALICE", "deploy web")


def test_a_permalink_opens_the_conversation_and_highlights_the_message(
    page: Any, emu: RunningEmulator, bot: RunningBot
) -> None:
    web = WebClient(token=BOT_TOKEN, base_url=emu.api_url)
    for i in range(30):
        web.chat_postMessage(channel="C0DEPLOYS", text=f"before {i}")
    card = post_card(emu, "*alice* wants to deploy")
    for i in range(30):  # the page would otherwise open scrolled to the bottom, the card out of view
        web.chat_postMessage(channel="C0DEPLOYS", text=f"after {i}")
    link = web.chat_getPermalink(channel="C0DEPLOYS", message_ts=card)["permalink"]
    page.goto(link)
    target = page.locator(f'.message.highlight[data-ts="{card}"]')
    target.wait_for()
    assert page.locator(".message.highlight").count() == 1
    assert page.locator("#channel-title").inner_text() == "# deploys"
    in_view = """(node) => {
        const box = node.getBoundingClientRect(), pane = node.parentElement.getBoundingClientRect();
        return box.top >= pane.top && box.top < pane.bottom;
    }"""
    assert target.evaluate(in_view)

    # A DM link opens as the user whose DM it is (the bot's DMs are only visible to their user).
    dm = web.chat_postMessage(channel="U0DAVE", text="please look at the deploy")
    page.goto(web.chat_getPermalink(channel=dm["channel"], message_ts=dm["ts"])["permalink"])
    page.locator(f'.message.highlight[data-ts="{dm["ts"]}"]').wait_for()
    assert page.locator("#user-select").input_value() == "U0DAVE"
    assert page.locator("#channel-title").inner_text() == "Direct message with keyturn"
