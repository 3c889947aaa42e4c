"""Escaping, truncation, mentions and links for Slack text (bot/slack_text.py)."""

from __future__ import annotations

import html

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keyturn.bot.slack_text import (
    UnsafeSlackId,
    channel_mention,
    escape,
    group_mention,
    link,
    safe,
    safe_url,
    truncate,
    user_mention,
    user_or_name,
)

INJECTIONS = ["feat/<!channel>", "<@U1>", "a&b", "<https://evil|x>", "<!subteam^S123>", "<#C1>", "<!here>"]


@pytest.mark.parametrize("raw", INJECTIONS)
def test_escape_leaves_no_control_characters(raw: str) -> None:
    out = escape(raw)
    assert "<" not in out
    assert ">" not in out
    assert html.unescape(out) == raw  # only &, <, > were touched, and reversibly


def test_escape_replaces_only_the_three_characters() -> None:
    assert escape("feat/<!channel>") == "feat/&lt;!channel&gt;"
    assert escape("a&b") == "a&amp;b"
    assert escape("\"quotes\" 'and' *bold* _it_ é") == "\"quotes\" 'and' *bold* _it_ é"


def test_truncate_short_text_unchanged() -> None:
    assert truncate("hello", 5) == "hello"


def test_truncate_adds_ellipsis_within_limit() -> None:
    out = truncate("abcdefghij", 5)
    assert out == "abcd…"
    assert len(out) == 5


@pytest.mark.parametrize("cut", range(1, 8))
def test_truncate_never_splits_an_escape_sequence(cut: int) -> None:
    text = escape("x" * cut + "&<>&")  # sequences start near every possible cut point
    for limit in range(2, len(text)):
        out = truncate(text, limit)
        assert len(out) <= limit
        body = out.removesuffix("…")
        assert "&" not in body.replace("&amp;", "").replace("&lt;", "").replace("&gt;", "")


@given(st.text(), st.integers(min_value=1, max_value=300))
def test_safe_is_bounded_and_keeps_no_raw_markup(text: str, limit: int) -> None:
    out = safe(text, limit)
    assert len(out) <= limit
    assert "<" not in out
    assert ">" not in out
    rest = out.replace("&amp;", "").replace("&lt;", "").replace("&gt;", "")
    assert "&" not in rest


def test_mentions_only_from_valid_ids() -> None:
    assert user_mention("U0BOB") == "<@U0BOB>"
    assert group_mention("S0ONCALL") == "<!subteam^S0ONCALL>"
    for bad in ["U1>", "<!channel>", "u0bob", "U0BOB|x", "", "S0ONCALL"]:
        with pytest.raises(UnsafeSlackId) as err:
            user_mention(bad)
        assert err.value.code == "unsafe_slack_id"
    with pytest.raises(UnsafeSlackId):
        group_mention("S1>|<!channel")


def test_user_or_name_mentions_ids_and_escapes_names() -> None:
    assert user_or_name("U0ALICE") == "<@U0ALICE>"
    assert user_or_name("github:<!channel>") == "github:&lt;!channel&gt;"


@pytest.mark.parametrize(
    "url",
    ["javascript:alert(1)", "ftp://x.example/a", "slack://open", "/relative", "https://", "not a url"],
)
def test_only_http_urls_become_links(url: str) -> None:
    assert safe_url(url) is None
    out = link(url, "Run")
    assert "<" not in out
    assert "|" not in out or ">" not in out


def test_link_escapes_url_and_label() -> None:
    out = link("https://ci.example/run?a=1&b=2|<!channel>", "<@U1> run")
    assert out.startswith("<https://ci.example/run?a=1&amp;b=2%7C%3C!channel%3E|")
    assert out.endswith("&lt;@U1&gt; run>")
    assert out.count("<") == 1
    assert out.count(">") == 1


def test_link_respects_limit() -> None:
    out = link("https://ci.example/" + "a" * 5000, "Run")
    assert len(out) <= 3000
    assert "<" not in out  # too long to be a link: shown as text


@pytest.mark.parametrize(
    ("channel", "expected"),
    [
        ("C0DEPLOYS", "<#C0DEPLOYS>"),
        ("G0PRIVATE", "<#G0PRIVATE>"),
        ("D0DIRECT", None),
        ("C0<!here>", None),
        ("", None),
    ],
)
def test_channel_mention_links_only_channels_it_can_vouch_for(channel: str, expected: str | None) -> None:
    assert channel_mention(channel) == expected
