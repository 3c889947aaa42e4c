"""The policy file: valid files load; every mistake is reported at its exact key; the CLI check."""

from __future__ import annotations

import hashlib
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest

from keyturn.signer.policy import Policy, PolicyError, UnknownEnvironment, load_policy, parse_duration
from tests.harness import KEYTURN, ROOT
from tests.signer.conftest import POLICY_TOML

MINIMAL = """\
version = 1
[environments.production]
channel = "C0DEPLOYS"
approvers = ["U0BOB", "U0CAROL"]
required_approvals = 2
request_ttl = "30m"
receipt_ttl = "15m"
"""


def issues_of(text: str) -> list[str]:
    with pytest.raises(PolicyError) as exc:
        Policy.from_bytes(text.encode(), "t.toml")
    assert exc.value.code == "invalid_policy"
    return [str(i) for i in exc.value.issues]


def test_sample_policies_in_the_repo_load() -> None:
    for path in (ROOT / "deploy/keyturn.example.toml", ROOT / "bot/dev_policy.toml"):
        policy = load_policy(path)
        assert policy.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_minimal_policy_defaults() -> None:
    policy = Policy.from_bytes(MINIMAL.encode())
    env = policy.environment("production")
    assert policy.slack.command == "/keyturn"
    assert policy.slack.team_id is None
    assert env.allow_self_approval is False
    assert env.confirm_approve is True
    assert env.request_ttl == timedelta(minutes=30)
    assert env.remind_every is None


def test_unknown_environment_is_a_typed_error() -> None:
    policy = Policy.from_bytes(MINIMAL.encode())
    with pytest.raises(UnknownEnvironment) as exc:
        policy.environment("moon")
    assert exc.value.code == "unknown_environment"


def test_resolve_requester() -> None:
    policy = Policy.from_bytes(POLICY_TOML.encode())
    assert policy.resolve_requester("github:alice") == "U0ALICE"
    assert policy.resolve_requester("GitHub:Alice") == "U0ALICE"  # logins are case-insensitive
    assert policy.resolve_requester("slack:U0BOB") == "U0BOB"
    assert policy.resolve_requester("slack:bob") is None
    assert policy.resolve_requester("github:mallory") is None


def test_authorizes_listed_users_and_pinned_group_members_only() -> None:
    policy = Policy.from_bytes(POLICY_TOML.encode())
    assert policy.authorizes("production", "U0BOB")
    assert policy.authorizes("production", "U0ONCALL")  # pinned in [groups.S0ONCALL]
    assert not policy.authorizes("production", "U0MALLORY")
    assert not policy.authorizes("staging", "U0ONCALL")  # staging names no group
    with pytest.raises(UnknownEnvironment):
        policy.authorizes("moon", "U0BOB")


def test_pinned_group_member_admitted() -> None:
    """A member pinned in [groups] is an approver of every environment naming the group, and only those."""
    text = MINIMAL + 'approver_groups = ["S0ONCALL"]\n[groups.S0ONCALL]\nmembers = ["U0ERIN", "W0GRID"]\n'
    policy = Policy.from_bytes(text.encode())
    assert policy.authorizes("production", "U0ERIN")
    assert policy.authorizes("production", "W0GRID")  # Enterprise Grid user ids too
    assert not policy.authorizes("production", "U0DAVE")


def test_policy_check_refuses_unpinned_approver_group(tmp_path: Path) -> None:
    """An approver group without [groups.<id>] is refused, naming the group: the signer would otherwise have
    no membership to go on (and never takes it from the bot)."""
    text = MINIMAL + 'approver_groups = ["S0ONCALL", "S0LEADS"]\n[groups.S0LEADS]\nmembers = ["U0DAVE"]\n'
    found = issues_of(text)
    assert found == [
        "environments.production.approver_groups: group S0ONCALL is not pinned: add [groups.S0ONCALL] with "
        "its members (keyturn policy pin-groups writes it from Slack)"
    ]
    path = tmp_path / "unpinned.toml"
    path.write_text(text)
    out = run_check("check", str(path))
    assert out.returncode == 1
    assert f"{path}: environments.production.approver_groups: group S0ONCALL is not pinned" in out.stderr
    assert out.stdout == ""


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("45s", 45), ("30m", 1800), ("2h", 7200), ("1d", 86400), (90, 90), ("30d", 2592000)],
)
def test_durations(value: object, seconds: int) -> None:
    assert parse_duration(value) == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("required_approvals = 2", "environments.production.required_approvals: must be >= 1"),
        ('channel = "C0DEPLOYS"', "environments.production.channel: must be a Slack channel id"),
        ('request_ttl = "30m"', "environments.production.request_ttl: must be a duration"),
        ('receipt_ttl = "15m"', "environments.production.receipt_ttl: must be > 0"),
        ('approvers = ["U0BOB", "U0CAROL"]', "environments.production.approvers[1]: must be a Slack user id"),
    ],
)
def test_errors_point_at_the_exact_key(change: str, expected: str) -> None:
    replacement = {
        "required_approvals = 2": "required_approvals = 0",
        'channel = "C0DEPLOYS"': 'channel = "#deploys"',
        'request_ttl = "30m"': 'request_ttl = "30 minutes"',
        'receipt_ttl = "15m"': "receipt_ttl = 0",
        'approvers = ["U0BOB", "U0CAROL"]': 'approvers = ["U0BOB", "carol"]',
    }[change]
    found = issues_of(MINIMAL.replace(change, replacement))
    assert any(i.startswith(expected) for i in found), found


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (MINIMAL.replace("version = 1", "version = 2"), "version: must be 1"),
        (MINIMAL.replace("version = 1\n", ""), "version: required"),
        (MINIMAL + "required_aprovals = 1\n", "environments.production.required_aprovals: unknown key"),
        (
            MINIMAL + "allow_self_approval = 1\n",
            "environments.production.allow_self_approval: must be true or false",
        ),
        (
            MINIMAL.replace("required_approvals = 2", "required_approvals = 3"),
            "environments.production.required_approvals: must be <= 2, the number of approvers",
        ),
        (
            MINIMAL.replace('approvers = ["U0BOB", "U0CAROL"]', "approvers = []"),
            "environments.production.approvers: no one can approve",
        ),
        (
            MINIMAL.replace('approvers = ["U0BOB", "U0CAROL"]', 'approvers = ["U0BOB", "U0BOB"]'),
            "environments.production.approvers: lists U0BOB more than once",
        ),
        (MINIMAL.replace('"15m"', '"31d"'), "environments.production.receipt_ttl: must be at most 30 days"),
        (
            MINIMAL + '[identities]\n"github:a" = "U0A"\n"GitHub:A" = "U0B"\n',
            "identities: 'GitHub:A' is listed twice",
        ),
        (MINIMAL + '[identities]\nalice = "U0A"\n', "identities.alice: invalid key"),
        (MINIMAL + '[slack]\nteam_id = "acme"\n', "slack.team_id: must be a Slack workspace id"),
        ("version = 1\n", "environments: required"),
        ("version = 1\n[environments]\n", "environments: must define at least one entry"),
        (
            MINIMAL.replace("[environments.production]", '[environments."prod env"]'),
            'environments."prod env": invalid key',
        ),
        ("version = = 1", "not valid TOML"),
    ],
)
def test_each_mistake_is_named(text: str, expected: str) -> None:
    found = issues_of(text)
    assert any(i.startswith(expected) for i in found), found


def test_required_approvals_counts_pinned_group_members() -> None:
    groups = 'required_approvals = 3\napprover_groups = ["S0ONCALL"]'
    text = (
        MINIMAL.replace("required_approvals = 2", groups)
        + '[groups.S0ONCALL]\nmembers = ["U0BOB", "U0ERIN"]\n'
    )
    assert Policy.from_bytes(text.encode()).environment("production").required_approvals == 3
    # Bob is both listed and pinned: he counts once, so two people can never make a quorum of four.
    found = issues_of(text.replace("required_approvals = 3", "required_approvals = 4"))
    assert found == [
        "environments.production.required_approvals: must be <= 3, the number of approvers and pinned "
        "members of approver_groups (the quorum could never be met)"
    ]


@pytest.mark.parametrize(
    ("groups", "expected"),
    [
        (
            '[groups.S0ONCALL]\nmembers = ["U0A", "U0A"]\n',
            "groups.S0ONCALL.members: lists U0A more than once",
        ),
        ('[groups.S0ONCALL]\nmembers = ["bob"]\n', "groups.S0ONCALL.members[0]: must be a Slack user id"),
        ("[groups.S0ONCALL]\n", "groups.S0ONCALL.members: required"),
        ('[groups.S0ONCALL]\nmembers = []\nhandle = "oncall"\n', "groups.S0ONCALL.handle: unknown key"),
        ('[groups.oncall]\nmembers = ["U0A"]\n', "groups.oncall: invalid key"),
        (
            '[groups.S0ONCALL]\nmembers = ["U0A"]\n[groups.S0STALE]\nmembers = ["U0A"]\n',
            "groups.S0STALE: is pinned but in no environment's approver_groups",
        ),
    ],
)
def test_pinned_groups_are_validated_strictly(groups: str, expected: str) -> None:
    text = MINIMAL + 'approver_groups = ["S0ONCALL"]\n' + groups
    found = issues_of(text)
    assert any(i.startswith(expected) for i in found), found


def test_every_issue_is_reported_at_once() -> None:
    text = MINIMAL.replace("required_approvals = 2", "required_approvals = 0").replace('"30m"', '"soon"')
    assert len(issues_of(text)) == 2


def test_not_utf8_and_unreadable() -> None:
    with pytest.raises(PolicyError, match="not UTF-8"):
        Policy.from_bytes(b"version = 1\n# \xff\n")
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy("/nonexistent/keyturn.toml")


def run_check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KEYTURN, "policy", *args], capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_cli_check(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(MINIMAL)
    bad = tmp_path / "bad.toml"
    bad.write_text(MINIMAL.replace("required_approvals = 2", "required_approvals = 0"))
    ok = run_check("check", str(good))
    assert ok.returncode == 0
    assert ok.stdout.startswith(f"OK {good}")
    no = run_check("check", str(bad))
    assert no.returncode == 1
    assert f"{bad}: environments.production.required_approvals: must be >= 1" in no.stderr
    assert run_check().returncode == 2
    assert run_check("lint", str(good)).returncode == 2
