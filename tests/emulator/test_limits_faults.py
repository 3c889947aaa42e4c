"""Block Kit limits, trigger expiry and single use, fault injection, and the recorder's wait."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler

from keyturn.emulator.blockkit import InvalidBlocks, InvalidView, validate_message_blocks, validate_view
from keyturn.emulator.client import EmulatorClientError
from tests.emulator.conftest import BOT_TOKEN, RunningEmulator


def section(n: int) -> dict[str, Any]:
    """A section block with ``n`` characters of text."""
    return {"type": "section", "text": {"type": "mrkdwn", "text": "x" * n}}


def button(**over: Any) -> dict[str, Any]:
    """A button, with fields overridden."""
    return {"type": "button", "action_id": "a", "text": {"type": "plain_text", "text": "Go"}, **over}


def modal(**over: Any) -> dict[str, Any]:
    """A minimal valid modal, with fields overridden."""
    return {"type": "modal", "title": {"type": "plain_text", "text": "Deny"}, "blocks": [], **over}


TOO_BIG: list[tuple[str, list[dict[str, Any]]]] = [
    ("51 blocks", [{"type": "divider"}] * 51),
    ("section text 3001", [section(3001)]),
    ("11 fields", [{"type": "section", "fields": [{"type": "mrkdwn", "text": "f"}] * 11}]),
    ("field text 2001", [{"type": "section", "fields": [{"type": "mrkdwn", "text": "f" * 2001}]}]),
    ("header 151", [{"type": "header", "text": {"type": "plain_text", "text": "h" * 151}}]),
    ("block_id 256", [{"type": "divider", "block_id": "b" * 256}]),
    ("action_id 256", [{"type": "actions", "elements": [button(action_id="a" * 256)]}]),
    ("button value 2001", [{"type": "actions", "elements": [button(value="v" * 2001)]}]),
    (
        "button text 76",
        [{"type": "actions", "elements": [button(text={"type": "plain_text", "text": "t" * 76})]}],
    ),
    ("26 elements", [{"type": "actions", "elements": [button(action_id=f"a{i}") for i in range(26)]}]),
    ("empty text", [{"type": "section", "text": {"type": "mrkdwn", "text": ""}}]),
    ("header in mrkdwn", [{"type": "header", "text": {"type": "mrkdwn", "text": "h"}}]),
    ("duplicate block_id", [{"type": "divider", "block_id": "d"}, {"type": "divider", "block_id": "d"}]),
    ("unknown block", [{"type": "marquee"}]),
]


@pytest.mark.parametrize(("name", "blocks"), TOO_BIG, ids=[n for n, _ in TOO_BIG])
def test_message_limits_are_refused_with_invalid_blocks(
    emu: RunningEmulator, name: str, blocks: list[dict[str, Any]]
) -> None:
    with pytest.raises(SlackApiError) as exc:
        WebClient(token=BOT_TOKEN, base_url=emu.api_url).chat_postMessage(
            channel="C0DEPLOYS", text="t", blocks=blocks
        )
    assert exc.value.response["error"] == "invalid_blocks"
    messages = exc.value.response["response_metadata"]["messages"]
    assert messages
    assert all("[json-pointer:/blocks" in m for m in messages)
    assert emu.client.messages("C0DEPLOYS") == []


def test_limits_themselves_are_accepted() -> None:
    validate_message_blocks(
        [
            section(3000),
            {"type": "section", "fields": [{"type": "mrkdwn", "text": "f" * 2000}] * 10},
            {"type": "header", "text": {"type": "plain_text", "text": "h" * 150}},
            {
                "type": "actions",
                "block_id": "b" * 255,
                "elements": [button(action_id=f"a{i}") for i in range(25)],
            },
            {"type": "actions", "elements": [button(action_id="a" * 255, value="v" * 2000)]},
        ]
        + [{"type": "divider"}] * 45
    )


def test_the_error_points_at_the_offending_field() -> None:
    with pytest.raises(InvalidBlocks) as exc:
        validate_message_blocks([{"type": "divider"}, section(3001)])
    assert exc.value.messages == [
        "[ERROR] must be less than 3001 characters [json-pointer:/blocks/1/text/text]"
    ]


@pytest.mark.parametrize(
    "view",
    [
        modal(title={"type": "plain_text", "text": "t" * 25}),
        modal(submit={"type": "plain_text", "text": "s" * 25}),
        modal(close={"type": "plain_text", "text": "c" * 25}),
        modal(private_metadata="m" * 3001),
        modal(blocks=[{"type": "divider"}] * 101),
        modal(
            blocks=[
                {
                    "type": "input",
                    "label": {"type": "plain_text", "text": "r"},
                    "element": {"type": "plain_text_input", "action_id": "r"},
                }
            ]
        ),  # input without submit
    ],
)
def test_view_limits(view: dict[str, Any]) -> None:
    with pytest.raises(InvalidView):
        validate_view(view)


def test_view_at_the_limits_is_accepted() -> None:
    validate_view(
        modal(
            title={"type": "plain_text", "text": "t" * 24},
            submit={"type": "plain_text", "text": "s" * 24},
            private_metadata="m" * 3000,
            blocks=[{"type": "divider"}] * 100,
        )
    )


def _deny_trigger(emu: RunningEmulator, user: str = "U0CAROL") -> str:
    """A trigger id issued to ``user`` by a (built, unsent) click."""
    ts = WebClient(token=BOT_TOKEN, base_url=emu.api_url).chat_postMessage(
        channel="C0DEPLOYS", text="t", blocks=[{"type": "actions", "elements": [button(action_id="deny")]}]
    )["ts"]
    trigger = emu.client.click(user, "C0DEPLOYS", ts, "deny", send=False).trigger_id
    assert trigger is not None
    return trigger


def test_trigger_ids_are_single_use(emu: RunningEmulator) -> None:
    web = WebClient(token=BOT_TOKEN, base_url=emu.api_url)
    trigger = _deny_trigger(emu)
    view = web.views_open(trigger_id=trigger, view=modal())["view"]
    assert view["id"].startswith("V")
    assert emu.client.views("U0CAROL")[0]["id"] == view["id"]
    with pytest.raises(SlackApiError) as exc:
        web.views_open(trigger_id=trigger, view=modal())
    assert exc.value.response["error"] == "exchanged_trigger_id"  # Slack's documented code (test_slack_docs)


def test_trigger_ids_expire_after_three_seconds(emu: RunningEmulator) -> None:
    web = WebClient(token=BOT_TOKEN, base_url=emu.api_url)
    fresh, stale = _deny_trigger(emu), _deny_trigger(emu)
    emu.clock.advance(3.0)
    web.views_open(trigger_id=fresh, view=modal())  # exactly 3 s old: still good
    emu.clock.advance(0.01)
    with pytest.raises(SlackApiError) as exc:
        web.views_open(trigger_id=stale, view=modal())
    assert exc.value.response["error"] == "expired_trigger_id"


def test_unknown_trigger_and_views_update(emu: RunningEmulator) -> None:
    web = WebClient(token=BOT_TOKEN, base_url=emu.api_url)
    with pytest.raises(SlackApiError) as exc:
        web.views_open(trigger_id="1.2.abc", view=modal())  # well-formed, never issued
    assert exc.value.response["error"] == "invalid_arguments"
    view = web.views_open(trigger_id=_deny_trigger(emu), view=modal())["view"]
    updated = web.views_update(view_id=view["id"], view=modal(private_metadata="v2"), hash=view["hash"])
    assert updated["view"]["private_metadata"] == "v2"
    with pytest.raises(SlackApiError) as exc:  # the old hash is stale now
        web.views_update(view_id=view["id"], view=modal(), hash=view["hash"])
    assert exc.value.response["error"] == "hash_conflict"
    with pytest.raises(SlackApiError) as exc:
        web.views_update(view_id="V0NOPE", view=modal())
    assert exc.value.response["error"] == "not_found"


def test_rate_limit_fault_is_seen_by_the_sdk(emu: RunningEmulator) -> None:
    emu.client.fault("chat.postMessage", status=429, retry_after=7, times=1)
    web = WebClient(token=BOT_TOKEN, base_url=emu.api_url)
    with pytest.raises(SlackApiError) as exc:
        web.chat_postMessage(channel="C0DEPLOYS", text="x")
    assert exc.value.response.status_code == 429
    assert exc.value.response.headers["Retry-After"] == "7"
    assert exc.value.response["error"] == "ratelimited"
    assert web.chat_postMessage(channel="C0DEPLOYS", text="x")["ok"]  # times=1: gone now
    assert emu.client.faults() == []


def test_the_sdk_retry_handler_waits_out_a_429(emu: RunningEmulator) -> None:
    emu.client.fault("users.info", status=429, retry_after=0, times=1)
    web = WebClient(token=BOT_TOKEN, base_url=emu.api_url, retry_handlers=[RateLimitErrorRetryHandler()])
    assert web.users_info(user="U0BOB")["user"]["id"] == "U0BOB"
    assert [c["status"] for c in emu.client.calls("users.info")] == [429, 200]


def test_forced_errors_for_the_next_n_calls(emu: RunningEmulator) -> None:
    emu.emulator.faults.add("chat.update", error="message_not_found", times=2)  # the Python API
    web = WebClient(token=BOT_TOKEN, base_url=emu.api_url)
    ts = web.chat_postMessage(channel="C0DEPLOYS", text="x")["ts"]
    for _ in range(2):
        with pytest.raises(SlackApiError) as exc:
            web.chat_update(channel="C0DEPLOYS", ts=ts, text="y")
        assert exc.value.response["error"] == "message_not_found"
    assert web.chat_update(channel="C0DEPLOYS", ts=ts, text="y")["ok"]


def test_latency_fault_delays_the_answer(emu: RunningEmulator) -> None:
    emu.client.fault("auth.test", latency=0.3)
    started = time.monotonic()
    WebClient(token=BOT_TOKEN, base_url=emu.api_url).auth_test()
    assert time.monotonic() - started >= 0.3
    assert emu.client.clear_faults() == 1


@pytest.mark.parametrize(
    "fault",
    [
        {"method": "not a method", "error": "x"},
        {"method": "chat.update", "error": "Bad Code!"},
        {"method": "chat.update", "status": 302},
        {"method": "chat.update"},
        {"method": "chat.update", "latency": 999},
        {"method": "chat.update", "error": "x", "surprise": True},
    ],
)
def test_bad_faults_are_a_clear_400(emu: RunningEmulator, fault: dict[str, Any]) -> None:
    resp = httpx.post(emu.url + "/_emulator/faults", json=fault)
    assert resp.status_code == 400
    assert resp.json()["error"] in ("invalid_fault", "invalid_request")


def test_wait_returns_when_the_matching_call_arrives(emu: RunningEmulator) -> None:
    web = WebClient(token=BOT_TOKEN, base_url=emu.api_url)
    ts = web.chat_postMessage(channel="C0DEPLOYS", text="x")["ts"]
    other = web.chat_postMessage(channel="C0DEPLOYS", text="y")["ts"]
    result: dict[str, Any] = {}
    waiter = threading.Thread(
        target=lambda: result.update(emu.client.wait_for("chat.update", timeout=10, ts=ts)), daemon=True
    )
    waiter.start()
    web.chat_update(channel="C0DEPLOYS", ts=other, text="not this one")
    web.chat_update(channel="C0DEPLOYS", ts=ts, text="this one")
    waiter.join(10)
    assert result["params"]["text"] == "this one"


def test_wait_times_out_with_408(emu: RunningEmulator) -> None:
    with pytest.raises(TimeoutError):
        emu.client.wait_for("chat.update", timeout=0.05)
    resp = httpx.get(emu.url + "/_emulator/wait", params={"method": "x", "timeout": "forever"})
    assert resp.status_code == 400


def test_control_api_refuses_bad_bodies(emu: RunningEmulator) -> None:
    assert httpx.post(emu.url + "/_emulator/click", content=b"[1,2]").status_code == 400
    assert httpx.post(emu.url + "/_emulator/click", json={"user": "U0BOB"}).status_code == 400
    with pytest.raises(EmulatorClientError) as exc:
        emu.client.command("U0BOB", "C0DEPLOYS", "keyturn")
    assert exc.value.code == "invalid_command"


def test_reset_forgets_messages_and_calls(emu: RunningEmulator) -> None:
    WebClient(token=BOT_TOKEN, base_url=emu.api_url).chat_postMessage(channel="C0DEPLOYS", text="x")
    emu.client.reset()
    assert emu.client.messages("C0DEPLOYS") == []
    assert emu.client.calls() == []
