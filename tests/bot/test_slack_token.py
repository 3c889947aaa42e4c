"""The start-time check of the Slack bot token (``/readyz`` reports it): bot/slack_token.py."""

from __future__ import annotations

from typing import Any

import pytest
from slack_sdk.errors import SlackApiError

from keyturn.bot.slack_token import SlackTokenCheck


class FakeWeb:
    """Answers ``auth.test`` from a script: a dict (success), an error code, or an exception to raise."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.calls = 0

    async def auth_test(self, **kwargs: Any) -> Any:
        self.calls += 1
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, str):
            raise SlackApiError("refused", {"ok": False, "error": answer})  # type: ignore[no-untyped-call]
        return answer


@pytest.mark.parametrize(
    ("answers", "state", "report", "calls"),
    [
        ([{"ok": True, "team_id": "T0KEYTURN"}], "ok", "ok", 1),
        (["invalid_auth"], "rejected", "rejected: invalid_auth", 1),
        (["token_revoked"], "rejected", "rejected: token_revoked", 1),
        ([{"ok": True, "team_id": "T0OTHER"}], "rejected", "rejected: wrong_team", 1),
        # Slack's trouble or the network's says nothing about the token: asked again until Slack answers.
        (["ratelimited", OSError("unreachable"), {"ok": True, "team_id": "T0KEYTURN"}], "ok", "ok", 3),
    ],
)
async def test_the_token_is_checked_once_and_the_verdict_kept(
    answers: list[Any], state: str, report: str, calls: int
) -> None:
    web = FakeWeb(*answers)
    check = SlackTokenCheck(web, team_id="T0KEYTURN", first_delay=0)
    assert check.report == "pending"  # not ready before Slack answered
    await check.run()
    assert (check.state, check.report, web.calls) == (state, report, calls)


async def test_stop_ends_a_check_still_retrying() -> None:
    web = FakeWeb(*[OSError("down")] * 1000)
    check = SlackTokenCheck(web, first_delay=3600)
    await check.start()
    await check.stop()
    assert check.state == "pending"
