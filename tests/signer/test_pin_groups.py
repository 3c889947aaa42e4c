"""``keyturn policy pin-groups``: run as a real process against the Slack emulator (a real HTTP server), and
its pure parts (the result is validated, the file edit is checked by re-parsing)."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from keyturn.emulator.client import EmulatorClient
from keyturn.signer import pin_groups as pg
from keyturn.signer.policy import Policy, load_policy
from tests.harness import KEYTURN, ROOT, Proc, free_port, start_emulator

TOKEN = "xoxb-pin-groups-test-token-7f3a9c"

UNPINNED = """\
version = 1

[environments.production]
channel = "C0DEPLOYS"
approvers = ["U0BOB", "U0CAROL"]
approver_groups = ["S0ONCALL"]
required_approvals = 2
request_ttl = "30m"
receipt_ttl = "15m"

[environments.staging]
channel = "C0STAGING"
approvers = ["U0BOB"]
required_approvals = 1
request_ttl = "30m"
receipt_ttl = "15m"
"""

# An old pin (mallory has since left on-call and erin joined), between two environments, with comments.
STALE = UNPINNED.replace(
    "[environments.staging]",
    '# on-call, pinned\n[groups.S0ONCALL]\nmembers = ["U0MALLORY"]\n\n# staging\n[environments.staging]',
)


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proc, EmulatorClient]]:
    """``keyturn emulator`` as a process, with its sample workspace (S0ONCALL = erin)."""
    proc, url = start_emulator(
        tmp_path_factory.mktemp("emu-logs"), slack_secret="pin-test-signing-secret-0123"
    )
    with EmulatorClient(url) as client:
        yield proc, client
    proc.stop()


@pytest.fixture
def emu(emulator: tuple[Proc, EmulatorClient]) -> EmulatorClient:
    client = emulator[1]
    client.reset()
    return client


def pin_groups(
    policy: Path, *args: str, api_url: str | None, token: str | None = TOKEN
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYTURN_")}
    if token is not None:
        env[pg.TOKEN_ENV] = token
    argv = [*KEYTURN, "policy", "pin-groups", str(policy), *args]
    if api_url is not None:
        argv += ["--api-url", api_url]
    return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)


def test_pin_groups_against_emulator(emu: EmulatorClient, tmp_path: Path) -> None:
    policy = tmp_path / "keyturn.toml"
    policy.write_text(UNPINNED)
    policy.chmod(0o640)
    assert subprocess.run([*KEYTURN, "policy", "check", str(policy)], capture_output=True).returncode == 1

    # Without --write: the tables on stdout, the file untouched.
    printed = pin_groups(policy, api_url=emu.api_url)
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == '[groups.S0ONCALL]\nmembers = ["U0ERIN"]\n'
    assert "S0ONCALL: 1 member (newly pinned)" in printed.stderr
    assert policy.read_text() == UNPINNED
    calls = emu.calls("usergroups.users.list")
    assert [c["params"].get("usergroup") for c in calls] == ["S0ONCALL"]  # only approver groups are asked

    # --write: the file now validates, and the signer's rule admits erin through the pinned group.
    written = pin_groups(policy, "--write", api_url=emu.api_url)
    assert written.returncode == 0, written.stderr
    assert f"wrote {policy}" in written.stderr
    loaded = load_policy(policy)
    assert loaded.authorizes("production", "U0ERIN")
    assert not loaded.authorizes("production", "U0MALLORY")
    assert stat.S_IMODE(policy.stat().st_mode) == 0o640
    check = subprocess.run([*KEYTURN, "policy", "check", str(policy)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr

    # Running it again changes nothing.
    again = pin_groups(policy, "--write", api_url=emu.api_url)
    assert again.returncode == 0
    assert "up to date" in again.stderr
    for out in (printed, written, again):
        assert TOKEN not in out.stdout + out.stderr


def test_pin_groups_refreshes_a_stale_pin_in_place(emu: EmulatorClient, tmp_path: Path) -> None:
    policy = tmp_path / "keyturn.toml"
    policy.write_text(STALE)
    out = pin_groups(policy, "--write", api_url=emu.api_url)
    assert out.returncode == 0, out.stderr
    assert "S0ONCALL: 1 member (added U0ERIN; removed U0MALLORY)" in out.stderr
    text = policy.read_text()
    # Replaced where it was; the comments that introduce the tables around it are kept.
    assert text == STALE.replace('members = ["U0MALLORY"]', 'members = ["U0ERIN"]')


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        pytest.param({"token": "xoxp-a-user-token-not-a-bot-one"}, "invalid_auth", id="wrong-token"),
        pytest.param({"fault": {"error": "no_permission"}}, "no_permission", id="missing-scope"),
        pytest.param({"fault": {"status": 429, "retry_after": 30}}, "rate limited", id="rate-limited"),
        pytest.param({"fault": {"status": 500}}, "HTTP 500", id="server-error"),
        pytest.param({"group": "S0NOPE"}, "no_such_subteam", id="unknown-group"),
        pytest.param({"unreachable": True}, "cannot reach", id="unreachable"),
    ],
)
def test_pin_groups_fails_closed_on_slack_error(
    emu: EmulatorClient, tmp_path: Path, setup: dict[str, object], expected: str
) -> None:
    """Any Slack failure: exit 1, a message naming it, nothing on stdout, the file byte for byte unchanged."""
    policy = tmp_path / "keyturn.toml"
    original = STALE.replace('approver_groups = ["S0ONCALL"]', 'approver_groups = ["S0ONCALL", "S0NOPE"]')
    original = original if setup.get("group") else STALE
    policy.write_text(original)
    api_url = f"http://127.0.0.1:{free_port()}/api/" if setup.get("unreachable") else emu.api_url
    fault = setup.get("fault")
    if isinstance(fault, dict):
        emu.fault("usergroups.users.list", **fault)
    token = str(setup.get("token", TOKEN))
    for args in ((), ("--write",)):
        out = pin_groups(policy, *args, api_url=api_url, token=token)
        assert out.returncode == 1, out
        assert expected in out.stderr
        assert "usergroups.users.list" in out.stderr
        assert out.stdout == ""
        assert token not in out.stderr
        assert policy.read_text() == original


def test_pin_groups_usage_errors(tmp_path: Path) -> None:
    policy = tmp_path / "keyturn.toml"
    policy.write_text(UNPINNED)
    no_token = pin_groups(policy, "--write", api_url="http://127.0.0.1:9/api/", token=None)
    assert no_token.returncode == 2
    assert pg.TOKEN_ENV in no_token.stderr
    # The token never travels in clear text off the machine.
    plain = pin_groups(policy, "--write", api_url="http://slack.example.com/api/")
    assert plain.returncode == 2
    assert "https" in plain.stderr
    assert policy.read_text() == UNPINNED


# --- the pure parts -----------------------------------------------------------------------------------------


def test_pin_refuses_a_result_that_breaks_the_policy() -> None:
    """The group shrank: with bob and carol listed and one pinned member, a quorum of 4 could never be met."""
    text = UNPINNED.replace("required_approvals = 2", "required_approvals = 4")
    text += '\n[groups.S0ONCALL]\nmembers = ["U0ERIN", "U0FRANK"]\n'
    Policy.from_bytes(text.encode())  # valid with the old pin
    with pytest.raises(pg.PinError) as exc:
        pg.pin(text, lambda group: ["U0ERIN"], "k.toml")
    assert exc.value.code == "bad_policy"
    assert "environments.production.required_approvals: must be <= 3" in str(exc.value)


def test_pin_refuses_odd_answers_and_odd_group_ids() -> None:
    with pytest.raises(pg.PinError):
        pg.pin(UNPINNED, lambda group: ["U0ERIN", "bob"])
    with pytest.raises(pg.PinError) as exc:
        pg.pin(UNPINNED.replace('["S0ONCALL"]', '["oncall"]'), lambda group: ["U0ERIN"])
    assert "is not a Slack user group id" in str(exc.value)


def test_pin_drops_groups_no_environment_names_and_sorts_members() -> None:
    text = UNPINNED + '\n[groups.S0ONCALL]\nmembers = ["U0ERIN"]\n'
    result = pg.pin(text, lambda group: ["U0ZED", "U0ERIN", "U0ERIN"])
    assert result.members == {"S0ONCALL": ("U0ERIN", "U0ZED")}
    assert result.section == '[groups.S0ONCALL]\nmembers = ["U0ERIN", "U0ZED"]\n'
    many = [f"U0M{i:04d}" for i in range(12)]
    long = pg.render_groups({"S0ONCALL": many})
    assert long.splitlines()[1] == "members = ["  # long lists one id per line, for readable diffs
    assert Policy.from_bytes((UNPINNED + long).encode()).authorizes("production", "U0M0011")


def test_replacing_groups_written_as_dotted_keys_is_refused() -> None:
    text = 'version = 1\ngroups.S0ONCALL.members = ["U0A"]\n' + UNPINNED.removeprefix("version = 1\n")
    with pytest.raises(pg.PinError) as exc:
        pg.replace_groups_section(text, '[groups.S0ONCALL]\nmembers = ["U0B"]\n')
    assert exc.value.code == "unsafe_edit"
