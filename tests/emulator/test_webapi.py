"""Each Web API method's success and error shapes, through real slack_sdk clients over a real socket."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from tests.emulator.conftest import BOT_TOKEN, RunningEmulator

SECTION = {"type": "section", "text": {"type": "mrkdwn", "text": "Deploy *web* to production?"}}
BUTTONS = {
    "type": "actions",
    "block_id": "decision",
    "elements": [
        {
            "type": "button",
            "action_id": "approve",
            "text": {"type": "plain_text", "text": "Approve"},
            "value": "r1",
        },
        {
            "type": "button",
            "action_id": "deny",
            "text": {"type": "plain_text", "text": "Deny"},
            "value": "r1",
        },
    ],
}


@pytest.fixture
def web(emu: RunningEmulator) -> WebClient:
    """A sync slack_sdk client pointed at the emulator."""
    return WebClient(token=BOT_TOKEN, base_url=emu.api_url)


def slack_error(exc: pytest.ExceptionInfo[SlackApiError]) -> str:
    """The Slack error code carried by a SlackApiError."""
    return str(exc.value.response["error"])


def test_auth_test_reports_the_bot_and_its_scopes(web: WebClient) -> None:
    resp = web.auth_test()
    assert resp["team_id"] == "T0KEYTURN"
    assert resp["user_id"] == "U0KEYTURNBOT"
    assert resp["bot_id"] == "B0KEYTURN"
    assert "chat:write" in resp.headers["x-oauth-scopes"].split(",")


@pytest.mark.parametrize("token", ["xoxp-user-token", "nonsense", "xoxb-"])
def test_tokens_that_are_not_bot_tokens_get_invalid_auth(emu: RunningEmulator, token: str) -> None:
    with pytest.raises(SlackApiError) as exc:
        WebClient(token=token, base_url=emu.api_url).auth_test()
    assert slack_error(exc) == "invalid_auth"


def test_missing_token_is_not_authed(emu: RunningEmulator) -> None:
    resp = httpx.post(emu.api_url + "auth.test")
    assert resp.json() == {"ok": False, "error": "not_authed"}


def test_unknown_method(emu: RunningEmulator) -> None:
    resp = httpx.post(emu.api_url + "chat.frobnicate", headers={"Authorization": f"Bearer {BOT_TOKEN}"})
    assert resp.json()["error"] == "unknown_method"


def test_post_message_stores_blocks_as_slack_returns_them(web: WebClient, emu: RunningEmulator) -> None:
    resp = web.chat_postMessage(channel="C0DEPLOYS", text="Deploy web?", blocks=[SECTION, BUTTONS])
    assert resp["channel"] == "C0DEPLOYS"
    msg = resp["message"]
    assert msg["ts"] == resp["ts"]
    assert msg["bot_id"] == "B0KEYTURN"
    assert msg["text"] == "Deploy web?"
    # Slack fills in a block_id and the text defaults; the button keeps everything the bot sent.
    assert msg["blocks"][0]["block_id"]
    assert msg["blocks"][0]["text"]["verbatim"] is False
    assert msg["blocks"][1]["elements"][0]["value"] == "r1"
    assert emu.client.message("C0DEPLOYS", resp["ts"])["blocks"] == msg["blocks"]


def test_post_message_by_channel_name_and_to_a_user_dm(web: WebClient) -> None:
    assert web.chat_postMessage(channel="#staging", text="hi")["channel"] == "C0STAGING"
    dm = web.conversations_open(users="U0BOB")["channel"]["id"]
    assert web.chat_postMessage(channel="U0BOB", text="psst")["channel"] == dm


def test_ts_strictly_increase_even_within_one_clock_tick(web: WebClient) -> None:
    # The emulator's clock is frozen in these tests, so every ts comes from the same instant.
    stamps = [web.chat_postMessage(channel="C0DEPLOYS", text=str(i))["ts"] for i in range(5)]
    assert [float(s) for s in stamps] == sorted({float(s) for s in stamps})
    assert all(len(s.split(".")[1]) == 6 for s in stamps)


def test_post_message_errors(web: WebClient) -> None:
    with pytest.raises(SlackApiError) as exc:
        web.chat_postMessage(channel="C0NOPE", text="x")
    assert slack_error(exc) == "channel_not_found"
    with pytest.raises(SlackApiError) as exc, pytest.warns(UserWarning, match="text"):
        web.chat_postMessage(channel="C0DEPLOYS", text="")
    assert slack_error(exc) == "no_text"
    with pytest.raises(SlackApiError) as exc:
        web.chat_postMessage(channel="C0DEPLOYS", text="x", thread_ts="1.000001")
    assert slack_error(exc) == "thread_not_found"


def test_thread_replies_are_kept_under_their_parent(web: WebClient, emu: RunningEmulator) -> None:
    parent = web.chat_postMessage(channel="C0DEPLOYS", text="parent")["ts"]
    reply = web.chat_postMessage(channel="C0DEPLOYS", text="reply", thread_ts=parent)
    assert reply["message"]["thread_ts"] == parent
    [top] = emu.client.messages("C0DEPLOYS")
    assert top["ts"] == parent
    assert top["reply_count"] == 1
    assert [r["text"] for r in top["replies"]] == ["reply"]


def test_update_keeps_fields_not_given_and_marks_edited(web: WebClient, emu: RunningEmulator) -> None:
    ts = web.chat_postMessage(channel="C0DEPLOYS", text="pending", blocks=[SECTION])["ts"]
    resp = web.chat_update(channel="C0DEPLOYS", ts=ts, text="approved")
    assert resp["ts"] == ts
    assert resp["text"] == "approved"
    stored = emu.client.message("C0DEPLOYS", ts)
    assert stored["text"] == "approved"
    assert stored["blocks"][0]["text"]["text"] == SECTION["text"]["text"]  # type: ignore[index]
    assert stored["edited"]["user"] == "B0KEYTURN"  # the bot id, as Slack (note §1.15)


def test_update_errors(web: WebClient) -> None:
    with pytest.raises(SlackApiError) as exc:
        web.chat_update(channel="C0DEPLOYS", ts="1700000000.000001", text="x")
    assert slack_error(exc) == "message_not_found"
    with pytest.raises(SlackApiError) as exc:
        web.chat_update(channel="C0NOPE", ts="1700000000.000001", text="x")
    assert slack_error(exc) == "channel_not_found"


def test_permalink_links_to_the_message_on_the_emulator_page(web: WebClient, emu: RunningEmulator) -> None:
    ts = web.chat_postMessage(channel="C0DEPLOYS", text="card")["ts"]
    reply = web.chat_postMessage(channel="C0DEPLOYS", text="reply", thread_ts=ts)["ts"]
    resp = web.chat_getPermalink(channel="C0DEPLOYS", message_ts=ts)
    assert (resp["ok"], resp["channel"]) == (True, "C0DEPLOYS")
    assert resp["permalink"] == f"{emu.url}/#C0DEPLOYS/{ts}"
    assert web.chat_getPermalink(channel="C0DEPLOYS", message_ts=reply)["permalink"].endswith(f"/{reply}")
    dm = web.chat_postMessage(channel="U0DAVE", text="psst")
    assert web.chat_getPermalink(channel="U0DAVE", message_ts=dm["ts"])["channel"] == "D0DAVE"
    with pytest.raises(SlackApiError) as exc:
        web.chat_getPermalink(channel="C0DEPLOYS", message_ts="1700000000.000001")
    assert slack_error(exc) == "message_not_found"
    with pytest.raises(SlackApiError) as exc:
        web.chat_getPermalink(channel="C0NOPE", message_ts=ts)
    assert slack_error(exc) == "channel_not_found"


def test_post_ephemeral_is_seen_only_by_its_user(web: WebClient, emu: RunningEmulator) -> None:
    resp = web.chat_postEphemeral(channel="C0DEPLOYS", user="U0BOB", text="only for bob")
    assert resp["message_ts"]
    assert [e["text"] for e in emu.client.ephemerals("U0BOB")] == ["only for bob"]
    assert emu.client.ephemerals("U0CAROL") == []
    with pytest.raises(SlackApiError) as exc:
        web.chat_postEphemeral(channel="C0DEPLOYS", user="U0NOBODY", text="x")
    assert slack_error(exc) == "user_not_in_channel"  # Slack's table has no user_not_found here


def test_users_info_and_lookup_by_email(web: WebClient) -> None:
    user = web.users_info(user="U0ALICE")["user"]
    assert (user["name"], user["profile"]["email"], user["is_bot"]) == ("alice", "alice@example.com", False)
    assert web.users_lookupByEmail(email="Carol@Example.com")["user"]["id"] == "U0CAROL"
    with pytest.raises(SlackApiError) as exc:
        web.users_info(user="U0NOBODY")
    assert slack_error(exc) == "user_not_found"
    with pytest.raises(SlackApiError) as exc:
        web.users_lookupByEmail(email="nobody@example.com")
    assert slack_error(exc) == "users_not_found"


def test_usergroups_users_list(web: WebClient) -> None:
    assert web.usergroups_users_list(usergroup="S0ONCALL")["users"] == ["U0ERIN"]
    with pytest.raises(SlackApiError) as exc:
        web.usergroups_users_list(usergroup="S0NOPE")
    assert slack_error(exc) == "no_such_subteam"


def test_conversations_open(web: WebClient) -> None:
    assert web.conversations_open(users="U0DAVE")["channel"]["id"] == "D0DAVE"
    with pytest.raises(SlackApiError) as exc:
        web.conversations_open(users="U0NOBODY")
    assert slack_error(exc) == "user_not_found"
    with pytest.raises(SlackApiError) as exc:
        web.conversations_open(users="")
    assert slack_error(exc) == "users_list_not_supplied"


async def test_async_client_get_and_query_string_params_work(emu: RunningEmulator) -> None:
    # AsyncWebClient sends users.info as GET with a query string and conversations.open with params in
    # the query string and an empty body (platform facts 4.3).
    client = AsyncWebClient(token=BOT_TOKEN, base_url=emu.api_url)
    assert (await client.users_info(user="U0BOB"))["user"]["name"] == "bob"
    assert (await client.conversations_open(users="U0BOB"))["channel"]["id"] == "D0BOB"
    assert (await client.usergroups_users_list(usergroup="S0ONCALL"))["users"] == ["U0ERIN"]
    posted = await client.chat_postMessage(channel="C0DEPLOYS", text="async")
    assert posted["message"]["text"] == "async"


def test_form_and_json_bodies_are_merged_with_the_query(emu: RunningEmulator) -> None:
    auth = {"Authorization": f"Bearer {BOT_TOKEN}"}
    form = httpx.post(emu.api_url + "chat.postMessage?channel=C0DEPLOYS", data={"text": "form"}, headers=auth)
    assert form.json()["message"]["text"] == "form"
    token_in_form = httpx.post(emu.api_url + "users.info", data={"user": "U0BOB", "token": BOT_TOKEN})
    assert token_in_form.json()["user"]["id"] == "U0BOB"
    bad_json = httpx.post(
        emu.api_url + "chat.postMessage",
        content=b"{not json",
        headers=auth | {"Content-Type": "application/json"},
    )
    assert bad_json.json() == {"ok": False, "error": "invalid_json"}


def test_every_call_is_recorded_in_order_without_the_full_token(web: WebClient, emu: RunningEmulator) -> None:
    web.auth_test()
    web.chat_postMessage(channel="C0DEPLOYS", text="one")
    with pytest.raises(SlackApiError):
        web.users_info(user="U0NOBODY")
    calls: list[dict[str, Any]] = emu.client.calls()
    assert [c["method"] for c in calls] == ["auth.test", "chat.postMessage", "users.info"]
    assert [c["seq"] for c in calls] == [1, 2, 3]
    assert calls[1]["params"]["text"] == "one"
    assert calls[2]["response"] == {"ok": False, "error": "user_not_found"}
    assert all(BOT_TOKEN not in str(c) for c in calls)
    assert calls[0]["token"].startswith("xoxb-")
    assert [c["method"] for c in emu.client.calls("chat.postMessage")] == ["chat.postMessage"]
    assert [c["seq"] for c in emu.client.calls(since=2)] == [3]
