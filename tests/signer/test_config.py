"""Signer secrets from files (``KEYTURN_*_FILE``, the container-secrets convention).

A real ``keyturn signer`` started with file secrets must sign evidence made with exactly those secrets (the
trailing newline dropped); every misuse is a one-line start-up refusal (exit 2) naming the variables or the
file and never the secret.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from keyturn.bot.signer_client import SignerClient
from keyturn.signer.config import ConfigError, load_settings
from tests.signer.conftest import CI_SECRET, SLACK_SECRET, SignerFiles, start_signer
from tests.signer.test_service import run_signer_once, sign


def secret_file(files: SignerFiles, name: str, content: str | bytes) -> Path:
    """A secret file as Docker or Kubernetes would mount it."""
    path = files.root / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def file_env(files: SignerFiles, slack: str | bytes, ci: str | bytes) -> dict[str, str]:
    """Environment overrides: both secrets from files, the plain variables unset."""
    return {
        "KEYTURN_SLACK_SIGNING_SECRET": "",
        "KEYTURN_CI_SECRET": "",
        "KEYTURN_SLACK_SIGNING_SECRET_FILE": str(secret_file(files, "slack_secret", slack)),
        "KEYTURN_CI_SECRET_FILE": str(secret_file(files, "ci_secret", ci)),
    }


def assert_one_line_refusal(stderr: str, *expected: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("keyturn signer: refusing to start: config: "), lines[0]
    for text in expected:
        assert text in lines[0], (text, lines[0])
    assert SLACK_SECRET not in stderr
    assert CI_SECRET not in stderr


async def test_a_signer_with_file_secrets_signs_evidence_made_with_those_secrets(
    signer_files: SignerFiles, log_dir: Path
) -> None:
    env = file_env(signer_files, SLACK_SECRET + "\n", CI_SECRET + "\r\n")
    proc = start_signer(signer_files, log_dir, **env)
    client = SignerClient(signer_files.socket)
    try:
        receipt = await sign(client, ["U0BOB", "U0CAROL"])
        assert receipt["requester"] == "github:alice"  # both signatures checked with the file secrets
    finally:
        await client.close()
        proc.stop()
    assert SLACK_SECRET not in proc.log()
    assert CI_SECRET not in proc.log()


def test_a_variable_and_its_file_twin_together_are_refused(signer_files: SignerFiles) -> None:
    env = file_env(signer_files, SLACK_SECRET, CI_SECRET)
    env["KEYTURN_CI_SECRET"] = CI_SECRET
    out = run_signer_once(signer_files, **env)
    assert out.returncode == 2
    assert_one_line_refusal(out.stderr, "KEYTURN_CI_SECRET and KEYTURN_CI_SECRET_FILE are both set")
    assert "KEYTURN_SLACK_SIGNING_SECRET" not in out.stderr  # the other secret was fine
    assert not signer_files.socket.exists()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        pytest.param(b"", "is empty", id="empty"),
        pytest.param(b"\n", "is empty", id="only-a-newline"),
        pytest.param(b"\xff\xfe" + b"x" * 20, "is not UTF-8 text", id="not-utf8"),
        pytest.param(b"x" * (64 * 1024 + 1), "is larger than", id="oversized"),
    ],
)
def test_an_unusable_secret_file_is_refused_naming_the_file(
    signer_files: SignerFiles, content: bytes, problem: str
) -> None:
    env = file_env(signer_files, SLACK_SECRET, content)
    out = run_signer_once(signer_files, **env)
    assert out.returncode == 2
    path = env["KEYTURN_CI_SECRET_FILE"]
    assert_one_line_refusal(out.stderr, f"KEYTURN_CI_SECRET_FILE: {path} {problem}")


def test_a_missing_file_is_refused_naming_it(signer_files: SignerFiles) -> None:
    env = file_env(signer_files, SLACK_SECRET, CI_SECRET)
    missing = str(signer_files.root / "nope")
    env["KEYTURN_SLACK_SIGNING_SECRET_FILE"] = missing
    out = run_signer_once(signer_files, **env)
    assert out.returncode == 2
    assert_one_line_refusal(out.stderr, f"KEYTURN_SLACK_SIGNING_SECRET_FILE: cannot read {missing}")
    assert "is not set" not in out.stderr  # reported once, as the file problem


# In-process checks of the same rules (fast; the process tests above prove the wiring).


@pytest.fixture
def base_env(signer_files: SignerFiles, monkeypatch: pytest.MonkeyPatch) -> SignerFiles:
    for name, value in signer_files.env().items():
        monkeypatch.setenv(name, value)
    return signer_files


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        pytest.param("short\n", "must be at least 16 characters", id="short"),
        pytest.param(" " + CI_SECRET + "\n", "must not start or end with whitespace", id="leading-space"),
        pytest.param(CI_SECRET + " \n", "must not start or end with whitespace", id="trailing-space"),
    ],
)
def test_file_secrets_pass_the_same_checks_as_variables(
    base_env: SignerFiles, monkeypatch: pytest.MonkeyPatch, content: str, problem: str
) -> None:
    monkeypatch.setenv("KEYTURN_CI_SECRET", "")
    monkeypatch.setenv("KEYTURN_CI_SECRET_FILE", str(secret_file(base_env, "ci", content)))
    with pytest.raises(ConfigError) as exc:
        load_settings()
    assert exc.value.message == f"KEYTURN_CI_SECRET_FILE {problem}"


def test_placeholders_are_refused_from_files_too(
    base_env: SignerFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("keyturn.signer.config._PLACEHOLDERS", frozenset({"placeholder-secret-0123"}))
    monkeypatch.setenv("KEYTURN_CI_SECRET", "")
    monkeypatch.setenv(
        "KEYTURN_CI_SECRET_FILE", str(secret_file(base_env, "ci", "PLACEHOLDER-secret-0123\n"))
    )
    with pytest.raises(ConfigError) as exc:
        load_settings()
    assert exc.value.message == "KEYTURN_CI_SECRET_FILE is a placeholder, not a secret"


def test_file_secrets_are_read_with_the_final_newline_dropped(
    base_env: SignerFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in file_env(base_env, SLACK_SECRET + "\n", CI_SECRET).items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings.slack_signing_secret.get_secret_value() == SLACK_SECRET
    assert settings.ci_secret.get_secret_value() == CI_SECRET


def test_neither_variable_nor_file_names_both(base_env: SignerFiles, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KEYTURN_CI_SECRET")
    with pytest.raises(ConfigError) as exc:
        load_settings()
    assert exc.value.message == "KEYTURN_CI_SECRET is not set (nor KEYTURN_CI_SECRET_FILE)"
