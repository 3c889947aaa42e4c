"""The emulator page renders stored (echoed) blocks as Slack's client shows them: plain_text entities
decoded, emoji codes, mrkdwn formatting, links, mentions, pre blocks, layout, confirm dialogs, invisible
format characters, and never any injected HTML. Headless Chromium (fixtures in conftest.py)."""

from __future__ import annotations

from typing import Any

import pytest
from slack_sdk import WebClient

from tests.emulator.conftest import BOT_TOKEN, RunningBot, RunningEmulator

pytestmark = pytest.mark.browser


def plain(text: str, **extra: Any) -> dict[str, Any]:
    return {"type": "plain_text", "text": text, **extra}


def mrkdwn(text: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": text}


def section(block_id: str, text: dict[str, Any]) -> dict[str, Any]:
    return {"type": "section", "block_id": block_id, "text": text}


def show(page: Any, emu: RunningEmulator, blocks: list[dict[str, Any]]) -> Any:
    """Post ``blocks`` to #deploys, open the page as bob, and return the message's locator."""
    ts = WebClient(token=BOT_TOKEN, base_url=emu.api_url).chat_postMessage(
        channel="C0DEPLOYS", text="fallback", blocks=blocks
    )["ts"]
    page.goto(emu.url + "/")
    page.select_option("#user-select", "U0BOB")
    # Rendered for bob: later refreshes render again only when the state changes, so the nodes read below
    # stay in the document (a re-render would detach them and read back empty styles).
    page.wait_for_function("() => ui.stateUser === 'U0BOB'")
    message = page.locator(f'.message[data-ts="{ts}"]')
    message.wait_for()
    return message


def block(message: Any, block_id: str) -> Any:
    return message.locator(f'.block[data-block-id="{block_id}"]')


def test_plain_text_entities_newlines_and_emoji(page: Any, emu: RunningEmulator) -> None:
    message = show(
        page,
        emu,
        [
            section("p", plain("a & b <c>\nline two :tada: :not_an_emoji:")),
            section("off", plain(":tada: stays", emoji=False)),
            {"type": "header", "block_id": "h", "text": plain("Deploy :rocket: &amp; go")},
        ],
    )
    p = block(message, "p")
    assert p.inner_text() == "a & b <c>\nline two 🎉 :not_an_emoji:"
    assert p.locator("br").count() == 1
    assert block(message, "off").inner_text() == ":tada: stays"
    assert block(message, "h").inner_text() == "Deploy 🚀 & go"  # an entity the app sent is shown once


def test_mrkdwn_formatting_follows_slack_word_boundaries(page: Any, emu: RunningEmulator) -> None:
    text = (
        "*bold* _it_ ~gone~ `co*de* <@U0ALICE>` snake_case_name a*b*c *_both_* :white_check_mark: 2 * 3 * 4"
    )
    message = show(page, emu, [section("m", mrkdwn(text))])
    m = block(message, "m")
    assert m.locator("b").first.inner_text() == "bold"
    assert m.locator("i").first.inner_text() == "it"
    assert m.locator("s").inner_text() == "gone"
    assert m.locator("code").inner_text() == "co*de* @alice"  # nothing formatted inside code
    assert m.locator("code b, code .mention").count() == 0
    assert m.locator("b i").inner_text() == "both"
    assert m.locator("b").count() == 2  # not a*b*c, not 2 * 3 * 4
    assert m.locator("i").count() == 2  # not snake_case_name
    assert "snake_case_name a*b*c" in m.inner_text()
    assert "✅ 2 * 3 * 4" in m.inner_text()


def test_mrkdwn_pre_blocks_and_quotes(page: Any, emu: RunningEmulator) -> None:
    message = show(
        page, emu, [section("pre", mrkdwn("before\n```x *y*\n  &lt;b&gt;```\nafter\n&gt; quoted"))]
    )
    pre = block(message, "pre")
    assert pre.locator("pre").inner_text() == "x *y*\n  <b>"
    assert pre.locator("pre b").count() == 0
    assert pre.locator(".quote").inner_text() == "quoted"
    assert pre.inner_text().startswith("before\n")


def test_links_show_their_label_and_only_web_links_are_links(page: Any, emu: RunningEmulator) -> None:
    text = (
        "<https://example.com/a?b=1&amp;c=2|the label> <https://example.com/raw> "
        "<javascript:alert(1)|bad> <mailto:ops@example.com|mail>"
    )
    message = show(page, emu, [section("l", mrkdwn(text))])
    links = block(message, "l").locator("a")
    assert links.count() == 3
    assert links.nth(0).inner_text() == "the label"
    assert links.nth(0).get_attribute("href") == "https://example.com/a?b=1&c=2"
    assert links.nth(1).inner_text() == "https://example.com/raw"
    assert links.nth(2).get_attribute("href") == "mailto:ops@example.com"
    assert "bad" in block(message, "l").inner_text()
    assert block(message, "l").locator('a[href^="javascript"]').count() == 0


def test_mentions_channels_groups_specials_and_dates(page: Any, emu: RunningEmulator) -> None:
    text = (
        "<@U0ALICE> <@U0BOB|someone> <#C0DEPLOYS> <#C0STAGING|staging> <!here> <!channel> "
        "<!subteam^S0ONCALL> <!date^1392734382^{date_num} {time_secs}|2014-02-18 06:39:42>"
    )
    message = show(page, emu, [section("x", mrkdwn(text))])
    chips = block(message, "x").locator(".mention").all_inner_texts()
    assert chips == ["@alice", "@bob", "#deploys", "#staging", "@here", "@channel", "@oncall"]
    shown = block(message, "x").inner_text()
    assert "2014-02-18 06:39:42" in shown
    assert "<" not in shown


def test_layout_fields_header_and_context(page: Any, emu: RunningEmulator) -> None:
    message = show(
        page,
        emu,
        [
            {"type": "header", "block_id": "h", "text": plain("Deploy")},
            {
                "type": "section",
                "block_id": "f",
                "fields": [mrkdwn("*Repo:*\nacme/web"), mrkdwn("*Env:*\nprod")],
            },
            {"type": "context", "block_id": "c", "elements": [mrkdwn("small print")]},
        ],
    )
    style = """(node, prop) => getComputedStyle(node)[prop]"""
    fields = block(message, "f").locator(".fields")
    assert len(fields.evaluate(style, "gridTemplateColumns").split()) == 2
    first, second = fields.locator(":scope > div").all()
    assert first.bounding_box()["y"] == second.bounding_box()["y"]  # side by side
    header = block(message, "h")
    assert int(header.evaluate(style, "fontWeight")) >= 700
    assert float(header.evaluate(style, "fontSize").removesuffix("px")) > 15
    context = block(message, "c")
    assert float(context.evaluate(style, "fontSize").removesuffix("px")) < 15
    assert context.evaluate(style, "color") == "rgb(97, 96, 97)"


def test_format_characters_are_kept_and_invisible(page: Any, emu: RunningEmulator) -> None:
    hidden = "a\u200bb\u00adc\u2060d"
    message = show(page, emu, [section("z", plain(hidden)), section("ref", plain("abcd"))])
    z = block(message, "z").locator(".plain")
    assert z.evaluate("(n) => n.textContent") == hidden  # not stripped
    width = "(n) => n.getBoundingClientRect().width"
    ref = block(message, "ref").locator(".plain")
    assert abs(z.evaluate(width) - ref.evaluate(width)) < 0.5  # and nothing visible in their place


def test_confirm_dialog_guards_the_click(page: Any, emu: RunningEmulator, bot: RunningBot) -> None:
    confirm = {
        "title": plain("Approve & deploy?"),
        "text": mrkdwn("This deploys *web* to production."),
        "confirm": plain("Yes, approve"),
        "deny": plain("Not yet"),
    }
    message = show(
        page,
        emu,
        [
            {
                "type": "actions",
                "block_id": "decision",
                "elements": [
                    {
                        "type": "button",
                        "action_id": "approve",
                        "text": plain("Approve"),
                        "style": "primary",
                        "value": "r1",
                        "confirm": confirm,
                    }
                ],
            }
        ],
    )
    message.locator('button[data-action-id="approve"]').click()
    dialog = page.locator("#dialog")
    dialog.locator("h2", has_text="Approve & deploy?").wait_for()
    assert dialog.locator("b").inner_text() == "web"
    page.click("#confirm-deny")
    page.locator("#overlay").wait_for(state="hidden")
    assert bot.record.of("approve") == []
    message.locator('button[data-action-id="approve"]').click()
    assert page.locator("#confirm-ok").inner_text() == "Yes, approve"
    page.click("#confirm-ok")
    page.locator("#status", has_text="HTTP 200").wait_for()
    assert len(bot.record.of("approve")) == 1


def test_no_html_is_ever_injected(page: Any, emu: RunningEmulator) -> None:
    payload = '<img src=x onerror="window.__pwned=1">'
    message = show(
        page,
        emu,
        [
            section("m", mrkdwn(payload + " *" + payload + "* `" + payload + "`")),
            section("p", plain(payload)),
            {
                "type": "section",
                "block_id": "f",
                "fields": [plain(payload), mrkdwn("<https://x.example|" + payload + ">")],
            },
            {"type": "actions", "elements": [{"type": "button", "text": plain(payload), "value": "v"}]},
        ],
    )
    assert message.locator("img").count() == 0
    assert page.evaluate("() => window.__pwned") is None
    assert payload in block(message, "p").inner_text()
