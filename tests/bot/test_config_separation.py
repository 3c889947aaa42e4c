"""Separate, fail-closed configuration (issue 15): the bot refuses the signer's secrets and key, the examples
keep the two apart, the image owns its runtime directories, and `keyturn secrets new` makes a CI secret."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

from keyturn.bot.config import SIGNER_ONLY_VARIABLES, Settings, signer_only_settings_found
from keyturn.signer.config import SignerSettings
from tests.harness import KEYTURN, ROOT

SECRET_VALUE = "a-real-looking-ci-secret-0123456789"


def _variables(path: Path) -> set[str]:
    """The variables an example file sets (``NAME=`` lines), or documents as optional (``# NAME=``)."""
    return set(re.findall(r"^(?:# )?(KEYTURN_[A-Z0-9_]+)=", path.read_text(), flags=re.MULTILINE))


def _bot_env(**extra: str) -> dict[str, str]:
    """A minimal environment for `keyturn bot`, without any KEYTURN_* the test process may export."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("KEYTURN_")}
    return {**env, "KEYTURN_SLACK_BOT_TOKEN": "xoxb-1-2-abc", **extra}


def _bot(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KEYTURN, "bot", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_found_in_the_environment_or_the_env_file_by_name_only(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        f"KEYTURN_SLACK_BOT_TOKEN=xoxb-1\nkeyturn_ci_secret={SECRET_VALUE}\nKEYTURN_CI_SECRET_FILE=\n"
    )
    found = signer_only_settings_found(
        {"KEYTURN_SIGNER_KEYSET": "/k.json", "KEYTURN_CI_SECRET": ""}, env_file
    )
    assert found == [f"KEYTURN_CI_SECRET ({env_file})", "KEYTURN_SIGNER_KEYSET (environment)"]
    assert signer_only_settings_found({}, tmp_path / "absent.env") == []
    assert set(SIGNER_ONLY_VARIABLES) == {
        "KEYTURN_SLACK_SIGNING_SECRET",
        "KEYTURN_SLACK_SIGNING_SECRET_FILE",
        "KEYTURN_CI_SECRET",
        "KEYTURN_CI_SECRET_FILE",
        "KEYTURN_SIGNER_KEYSET",
        "KEYTURN_SIGNER_KEYSET_FILE",
        "KEYTURN_GITHUB_WEBHOOK_SECRET",  # the signer's and the approver's, never the bot's (docs/github.md)
        "KEYTURN_GITHUB_WEBHOOK_SECRET_FILE",
    }


@pytest.mark.parametrize("variable", ["KEYTURN_CI_SECRET", "KEYTURN_SLACK_SIGNING_SECRET_FILE"])
def test_bot_refuses_to_start_with_a_signer_secret_in_its_environment(tmp_path: Path, variable: str) -> None:
    done = _bot(tmp_path, _bot_env(**{variable: SECRET_VALUE}))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "refusing to start" in lines[0]
    assert variable in lines[0]
    assert SECRET_VALUE not in done.stderr + done.stdout


def test_bot_refuses_a_dotenv_holding_the_signer_secret(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(f"KEYTURN_SLACK_SIGNING_SECRET={SECRET_VALUE}\n")
    done = _bot(tmp_path, _bot_env())
    assert done.returncode == 2
    assert "KEYTURN_SLACK_SIGNING_SECRET (.env)" in done.stderr
    assert SECRET_VALUE not in done.stderr
    other = tmp_path / "bot.env"
    other.write_text("KEYTURN_SIGNER_KEYSET=/etc/keyturn/signing-keys.json\n")
    done = _bot(tmp_path, _bot_env(), "--env-file", str(other))
    assert done.returncode == 2
    assert "KEYTURN_SIGNER_KEYSET" in done.stderr


def test_an_empty_signer_variable_counts_as_unset(tmp_path: Path) -> None:
    # Gets past the check to the next one (no policy file here), which proves the check let it through.
    done = _bot(tmp_path, _bot_env(KEYTURN_CI_SECRET="", KEYTURN_POLICY=str(tmp_path / "absent.toml")))
    assert done.returncode == 2
    assert "refusing to start" not in done.stderr
    assert "policy" in done.stderr


def test_examples_keep_bot_and_signer_apart() -> None:
    bot_example = _variables(ROOT / ".env.example")
    signer_example = _variables(ROOT / "deploy" / "signer.env.example")
    compose_bot = _variables(ROOT / "deploy" / "bot.env.example")
    signer_only = set(SIGNER_ONLY_VARIABLES)
    assert not bot_example & signer_only
    assert not compose_bot & signer_only
    assert compose_bot == {"KEYTURN_SLACK_BOT_TOKEN"}
    bot_fields = {f"KEYTURN_{name.upper()}" for name in Settings.model_fields}
    signer_fields = {f"KEYTURN_{name.upper()}" for name in SignerSettings.model_fields}
    dev_only = {"KEYTURN_DEV_MODE", "KEYTURN_SIGNER_FAKE_NOW_FILE"}
    undocumented = {"KEYTURN_MAX_BODY_BYTES", "KEYTURN_SIGNER_TIMEOUT", "KEYTURN_SIGNER_POOL_SIZE"}
    undocumented |= {"KEYTURN_CALLBACK_ATTEMPTS", "KEYTURN_CALLBACK_TIMEOUT", "KEYTURN_CARD_RETRY_MAX"}
    assert bot_fields - undocumented <= bot_example
    assert signer_fields - dev_only <= signer_example
    assert {"KEYTURN_SLACK_SIGNING_SECRET", "KEYTURN_CI_SECRET", "KEYTURN_SIGNER_KEYSET"} <= signer_example


def test_dockerfile_creates_and_owns_the_runtime_directories() -> None:
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    assert re.search(r"install -d -o 10001 -g 10001 -m 0750 /run/keyturn /audit", text)
    assert text.index("install -d") < text.index("USER keyturn")


def test_secrets_new_prints_a_fresh_strong_secret_and_writes_0600(tmp_path: Path) -> None:
    values = []
    for _ in range(2):
        done = subprocess.run(
            [*KEYTURN, "secrets", "new"], capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0
        values.append(done.stdout.strip())
        assert "KEYTURN_CI_SECRET" in done.stderr
        assert "never to the bot" in done.stderr
    assert values[0] != values[1]
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{43}", v) for v in values)
    out = tmp_path / "ci_secret.txt"
    done = subprocess.run(
        [*KEYTURN, "secrets", "new", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0
    assert done.stdout == ""  # the secret goes to the file only
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert len(out.read_text().strip()) == 43
    again = subprocess.run(
        [*KEYTURN, "secrets", "new", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert again.returncode == 1  # never overwrites


def test_signer_help_names_every_variable_it_reads() -> None:
    done = subprocess.run(
        [*KEYTURN, "signer", "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    for name in SignerSettings.model_fields:
        assert f"KEYTURN_{name.upper()}" in text, name
