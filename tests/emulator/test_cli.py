"""``keyturn emulator`` as a real process, and workspace file loading."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest

from keyturn.emulator.errors import WorkspaceError
from keyturn.emulator.workspace import load_workspace
from tests.harness import KEYTURN, free_port, http_ok, start_process

SECRET = "cli-test-signing-secret-value"
HEAD = (
    '[team]\nid = "T001"\nname = "x"\n[bot]\nuser_id = "UB01"\nbot_id = "B001"\napp_id = "A001"\nname = "b"\n'
)


def test_emulator_process_announces_itself_and_never_prints_the_secret(log_dir: Path) -> None:
    port = free_port()
    proc = start_process(
        "emulator",
        [*KEYTURN, "emulator", "--port", str(port), "--bot-url", "http://127.0.0.1:9/slack/events"],
        log_dir,
        env={"KEYTURN_SLACK_SIGNING_SECRET": SECRET},
        ready=http_ok(f"http://127.0.0.1:{port}/_emulator/health"),
    )
    try:
        assert f"emulator ready on http://127.0.0.1:{port}" in proc.log()
        page = httpx.get(f"http://127.0.0.1:{port}/")
        assert page.status_code == 200
        assert "Slack emulator" in page.text
        config = httpx.get(f"http://127.0.0.1:{port}/_emulator/config").json()
        assert config == {
            "ok": True,
            "bot_url": "http://127.0.0.1:9/slack/events",
            "signing_secret_set": True,
        }
    finally:
        assert proc.stop() == 0
    assert SECRET not in proc.log()


def test_bad_workspace_file_is_a_clear_usage_error(tmp_path: Path) -> None:
    bad = tmp_path / "ws.toml"
    bad.write_text('[team]\nid = "T1X"\nname = "x"\n')
    done = subprocess.run(
        [*KEYTURN, "emulator", "--workspace", str(bad)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2
    assert "missing table [bot]" in done.stderr
    assert "Traceback" not in done.stderr


def test_sample_workspace_has_the_ids_the_sample_policy_uses() -> None:
    ws = load_workspace()
    assert (ws.team.id, ws.team.name) == ("T0KEYTURN", "Acme")
    names = {u.name: u.id for u in ws.users if not u.is_bot}
    assert names == {
        "alice": "U0ALICE",
        "bob": "U0BOB",
        "carol": "U0CAROL",
        "dave": "U0DAVE",
        "erin": "U0ERIN",
        "mallory": "U0MALLORY",
    }
    assert ws.user_by_email("alice@example.com") is not None
    oncall = ws.group("S0ONCALL")
    assert oncall is not None
    assert (oncall.handle, oncall.users) == ("oncall", ("U0ERIN",))
    assert {c.id: c.name for c in ws.channels} == {"C0DEPLOYS": "deploys", "C0STAGING": "staging"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not toml [", "not valid TOML"),
        ('[team]\nid = "bad"\nname = "x"\n', "not a valid id"),
        (
            HEAD + '[[groups]]\nid = "S001"\nhandle = "g"\nusers = ["U0GHOST"]\n',
            "unknown user",
        ),
        (
            HEAD + '[[users]]\nid = "U001"\nname = "a"\n[[users]]\nid = "U001"\nname = "b2"\n',
            "duplicate user id",
        ),
    ],
)
def test_workspace_errors_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "ws.toml"
    path.write_text(text)
    with pytest.raises(WorkspaceError, match=message):
        load_workspace(path)
