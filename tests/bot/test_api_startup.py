"""``keyturn bot`` refuses to start on bad settings or a bad policy (one line, exit 2); settings rules."""

from __future__ import annotations

import os
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from keyturn.bot.config import Settings, describe_error
from keyturn.bot.server import main as server_main
from tests.harness import KEYTURN

GOOD_POLICY = """
version = 1
[environments.production]
channel = "C0DEPLOYS"
approvers = ["U0BOB"]
required_approvals = 1
request_ttl = "30m"
receipt_ttl = "15m"
"""


def _run_bot(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("KEYTURN_")}
    return subprocess.run(
        [*KEYTURN, "bot"], env=base | env, cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def _main_in_process(
    env: dict[str, str], cwd: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str]:
    for key in [k for k in os.environ if k.startswith("KEYTURN_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(cwd)
    code = server_main([])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"KEYTURN_SLACK_BOT_TOKEN": "xoxb-change-me"}, "KEYTURN_SLACK_BOT_TOKEN"),
        ({"KEYTURN_SLACK_BOT_TOKEN": "xoxb-real-1", "KEYTURN_PORT": "99999"}, "KEYTURN_PORT"),
        ({"KEYTURN_SLACK_BOT_TOKEN": "xoxb-real-1", "KEYTURN_RETENTION": "soon"}, "KEYTURN_RETENTION"),
        ({"KEYTURN_SLACK_BOT_TOKEN": "xoxb-real-1", "KEYTURN_REDIS_URL": "http://x"}, "KEYTURN_REDIS_URL"),
    ],
    ids=["placeholder-token", "port", "retention", "redis-url"],
)
def test_invalid_settings_exit_2_naming_the_variable(
    tmp_path: Path,
    env: dict[str, str],
    expected: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "keyturn.toml").write_text(GOOD_POLICY)
    code, err = _main_in_process(env, tmp_path, monkeypatch, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert expected in lines[0]
    assert "xoxb-real-1" not in err


def test_invalid_policy_exits_2_naming_the_key(tmp_path: Path) -> None:
    (tmp_path / "keyturn.toml").write_text(
        GOOD_POLICY.replace("required_approvals = 1", "required_aprovals = 1")
    )
    done = _run_bot({"KEYTURN_SLACK_BOT_TOKEN": "xoxb-real-1"}, tmp_path)
    assert done.returncode == 2
    assert "required_aprovals" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_settings_parse_durations_and_keep_the_token_secret() -> None:
    s = Settings(slack_bot_token="xoxb-123-abc", retention="12h", card_retry_max="90")
    assert s.retention == timedelta(hours=12)
    assert s.card_retry_max == timedelta(seconds=90)
    assert "xoxb-123-abc" not in repr(s)
    assert s.slack_api_url.endswith("/")
    assert Settings(dev_mode=True).slack_bot_token.get_secret_value() == ""
    with pytest.raises(ValidationError) as exc:
        Settings(slack_bot_token="not-a-bot-token")
    assert "KEYTURN_SLACK_BOT_TOKEN" in describe_error(exc.value)
