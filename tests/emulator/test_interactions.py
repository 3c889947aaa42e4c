"""Acting as Slack: signed clicks, view submissions and slash commands that Bolt's own request verification
accepts, built from what the bot actually posted."""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from slack_sdk import WebClient
from slack_sdk.signature import SignatureVerifier

from keyturn.emulator.client import EmulatorClientError
from keyturn.emulator.interactions import slack_signature
from tests.emulator.conftest import BOT_TOKEN, SIGNING_SECRET, RunningBot, RunningEmulator

CARD: list[dict[str, Any]] = [
    {"type": "header", "text": {"type": "plain_text", "text": "Deploy web to production"}},
    {"type": "section", "text": {"type": "mrkdwn", "text": "*alice* asks to deploy `abc123`"}},
    {
        "type": "actions",
        "block_id": "decision",
        "elements": [
            {
                "type": "button",
                "action_id": "approve",
                "style": "primary",
                "text": {"type": "plain_text", "text": "Approve"},
                "value": "req_1",
            },
            {
                "type": "button",
                "action_id": "deny",
                "style": "danger",
                "text": {"type": "plain_text", "text": "Deny"},
                "value": "req_1",
            },
        ],
    },
]


def post_card(emu: RunningEmulator, channel: str = "C0DEPLOYS") -> dict[str, Any]:
    """Post the approval card as the bot would; return chat.postMessage's answer."""
    resp = WebClient(token=BOT_TOKEN, base_url=emu.api_url).chat_postMessage(
        channel=channel, text="Deploy web?", blocks=CARD
    )
    return dict(resp.data)  # type: ignore[arg-type]


def payload_of(body: str) -> dict[str, Any]:
    """The JSON payload inside a form-encoded interactivity body."""
    payload: dict[str, Any] = json.loads(parse_qs(body)["payload"][0])
    return payload


def test_click_reaches_bolt_with_the_stored_message_and_the_user(
    emu: RunningEmulator, bot: RunningBot
) -> None:
    posted = post_card(emu)
    delivery = emu.client.click("U0BOB", "C0DEPLOYS", posted["ts"], "approve")
    assert delivery.status == 200, delivery.body
    [body] = bot.record.of("approve")
    assert body["user"]["id"] == "U0BOB"
    assert body["user"]["username"] == "bob"
    assert body["team"]["id"] == "T0KEYTURN"
    assert body["channel"] == {"id": "C0DEPLOYS", "name": "deploys"}
    assert body["container"]["message_ts"] == posted["ts"]
    assert body["message"]["blocks"] == posted["message"]["blocks"]
    action = body["actions"][0]
    assert action["action_id"] == "approve"
    assert action["block_id"] == "decision"
    assert action["value"] == "req_1"
    assert action["text"]["text"] == "Approve"
    assert body["response_url"].startswith(emu.url + "/_emulator/response/")


def test_tampered_signature_gets_401_from_bolt(emu: RunningEmulator, bot: RunningBot) -> None:
    posted = post_card(emu)
    delivery = emu.client.click("U0BOB", "C0DEPLOYS", posted["ts"], "approve", tamper_signature=True)
    assert delivery.status == 401
    assert bot.record.of("approve") == []


@pytest.mark.parametrize(("skew", "status"), [(-299, 200), (-301, 401)])
def test_bolt_enforces_the_timestamp_window(
    emu: RunningEmulator, bot: RunningBot, skew: int, status: int
) -> None:
    posted = post_card(emu)
    delivery = emu.client.click(
        "U0BOB", "C0DEPLOYS", posted["ts"], "approve", timestamp=int(time.time()) + skew
    )
    assert delivery.status == status


def test_built_request_without_sending_verifies_with_slack_sdk(emu: RunningEmulator) -> None:
    posted = post_card(emu)
    delivery = emu.client.click(
        "U0CAROL", "C0DEPLOYS", posted["ts"], "deny", send=False, timestamp=1_700_000_123
    )
    assert delivery.status is None
    req = delivery.request
    assert req["headers"]["X-Slack-Request-Timestamp"] == "1700000123"
    assert req["headers"]["X-Slack-Signature"] == slack_signature(SIGNING_SECRET, "1700000123", req["body"])
    verifier = SignatureVerifier(SIGNING_SECRET)
    fresh = emu.client.click("U0CAROL", "C0DEPLOYS", posted["ts"], "deny", send=False)
    assert verifier.is_valid_request(fresh.request["body"], fresh.request["headers"])
    assert payload_of(req["body"])["actions"][0]["action_id"] == "deny"


def test_slack_doc_signature_vector() -> None:
    body = (
        "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&"
        "channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&"
        "response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&"
        "trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
    )
    assert (
        slack_signature("8f742231b10e8888abcd99yyyzzz85a5", "1531420618", body)
        == "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
    )


def test_click_errors_are_clear(emu: RunningEmulator, bot: RunningBot) -> None:
    posted = post_card(emu)
    cases = [
        (("U0NOBODY", "C0DEPLOYS", posted["ts"], "approve"), "user_not_found"),
        (("U0BOB", "C0NOPE", posted["ts"], "approve"), "channel_not_found"),
        (("U0BOB", "C0DEPLOYS", "1.000001", "approve"), "message_not_found"),
        (("U0BOB", "C0DEPLOYS", posted["ts"], "nope"), "action_not_found"),
    ]
    for args, code in cases:
        with pytest.raises(EmulatorClientError) as exc:
            emu.client.click(*args)
        assert exc.value.code == code
        assert exc.value.status == 404


def test_deny_modal_errors_then_closes(emu: RunningEmulator, bot: RunningBot) -> None:
    posted = post_card(emu)
    assert emu.client.click("U0CAROL", "C0DEPLOYS", posted["ts"], "deny").status == 200
    call = emu.client.wait_for("views.open")
    assert call["response"]["ok"] is True
    [view] = emu.client.views("U0CAROL")
    assert view["callback_id"] == "deny_reason"
    assert view["private_metadata"] == posted["ts"]

    empty = emu.client.submit_view("U0CAROL", view["id"], {"reason": {"reason_input": "  "}})
    assert empty.status == 200
    assert empty.json == {"response_action": "errors", "errors": {"reason": "Please give a reason"}}
    assert empty.view == {"id": view["id"], "is_open": True, "errors": {"reason": "Please give a reason"}}

    done = emu.client.submit_view("U0CAROL", view["id"], {"reason": {"reason_input": "too risky"}})
    assert done.status == 200
    assert done.view is not None
    assert done.view["is_open"] is False
    submitted = bot.record.of("view")[-1]
    assert submitted["view"]["state"]["values"]["reason"]["reason_input"] == {
        "type": "plain_text_input",
        "value": "too risky",
    }
    assert submitted["user"]["id"] == "U0CAROL"
    assert emu.client.views("U0CAROL") == []


def test_submit_view_refuses_other_users_and_unknown_inputs(emu: RunningEmulator, bot: RunningBot) -> None:
    posted = post_card(emu)
    emu.client.click("U0CAROL", "C0DEPLOYS", posted["ts"], "deny")
    emu.client.wait_for("views.open")
    [view] = emu.client.views("U0CAROL")
    with pytest.raises(EmulatorClientError) as exc:
        emu.client.submit_view("U0BOB", view["id"], {"reason": {"reason_input": "x"}})
    assert exc.value.code == "view_not_found"
    with pytest.raises(EmulatorClientError) as exc:
        emu.client.submit_view("U0CAROL", view["id"], {"other": {"x": "y"}})
    assert exc.value.code == "unknown_input"


def test_slash_command_form_body_reaches_bolt(emu: RunningEmulator, bot: RunningBot) -> None:
    delivery = emu.client.command("U0ALICE", "C0DEPLOYS", "/keyturn", "deploy web to prod")
    assert delivery.status == 200
    assert delivery.body == "request received: deploy web to prod"
    fields = parse_qs(delivery.request["body"], keep_blank_values=True)
    assert list(fields) == [
        "token",
        "team_id",
        "team_domain",
        "channel_id",
        "channel_name",
        "user_id",
        "user_name",
        "command",
        "text",
        "api_app_id",
        "is_enterprise_install",
        "response_url",
        "trigger_id",
    ]
    assert "command=%2Fkeyturn" in delivery.request["body"]
    [body] = bot.record.of("command")
    assert (body["user_id"], body["channel_id"], body["command"]) == ("U0ALICE", "C0DEPLOYS", "/keyturn")
    # Slack shows a text ack to the user only.
    assert [e["text"] for e in emu.client.ephemerals("U0ALICE")] == [delivery.body]


def test_response_url_replaces_the_original_message(emu: RunningEmulator, bot: RunningBot) -> None:
    posted = post_card(emu)
    emu.client.click("U0BOB", "C0DEPLOYS", posted["ts"], "approve")
    response_url = bot.record.of("approve")[0]["response_url"]
    resp = httpx.post(response_url, json={"replace_original": True, "text": "Approved by bob"})
    assert (resp.status_code, resp.text) == (200, "ok")
    assert emu.client.message("C0DEPLOYS", posted["ts"])["text"] == "Approved by bob"
    recorded = emu.client.wait_for("response_url")
    assert recorded["params"]["text"] == "Approved by bob"
    assert httpx.post(response_url, json={"delete_original": True}).status_code == 200
    assert emu.client.messages("C0DEPLOYS") == []
    assert httpx.post(emu.url + "/_emulator/response/unknown", json={"text": "x"}).status_code == 404


def test_bot_unreachable_and_missing_settings_are_reported(emu: RunningEmulator) -> None:
    posted = post_card(emu)
    with pytest.raises(EmulatorClientError) as exc:
        emu.client.click("U0BOB", "C0DEPLOYS", posted["ts"], "approve")
    assert exc.value.code == "bot_url_not_set"
    emu.client.set_bot_url("http://127.0.0.1:9/slack/events")
    delivery = emu.client.click("U0BOB", "C0DEPLOYS", posted["ts"], "approve")
    assert delivery.error == "bot_unreachable"
    assert delivery.status is None
