"""The CI templates (issue 11): the GitHub composite action, its example workflows, the GitLab template.

``actionlint`` lints the example workflows as they are, and again in a scratch repository where the example
uses the action by local path (``./deploy/github``), so that actionlint also reads the action's metadata and
checks every ``with:`` against its inputs. actionlint lints workflows only, so the action's own metadata is
checked here against GitHub's metadata rules, and its ``run:`` scripts with ShellCheck.
``scripts/install-actionlint.sh`` (run by ``make bootstrap``) puts actionlint in ``.venv/bin``; where it could
not, the actionlint tests skip saying so, unless ``KEYTURN_REQUIRE_ACTIONLINT=1`` (set by ``.ci/run``) makes
that a failure. Any finding fails.
"""

from __future__ import annotations

import os
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
GATE_WORKFLOW = ROOT / "deploy/github/keyturn-gate.yml"
GITLAB = ROOT / "deploy/gitlab/keyturn.gitlab-ci.yml"
GITLAB_EXAMPLE = ROOT / "deploy/gitlab/example/.gitlab-ci.yml"

# Where the example points `uses:` at the hosted action; the scratch repository replaces it with a local path.
HOSTED_USE = re.compile(r"uses: \S+/deploy/github@\S+")
# GitHub's rule for input, output and step ids.
ID = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    return data


def _tool(name: str, where: str) -> str:
    """The path of a lint tool, or skip (fail where ``KEYTURN_REQUIRE_ACTIONLINT=1``) saying how to get it."""
    for cand in (ROOT / ".venv/bin" / name, ROOT / ".tools/bin" / name):
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    exe = shutil.which(name)
    if exe is not None:
        return exe
    msg = f"{name} is not installed: {where}"
    if os.environ.get("KEYTURN_REQUIRE_ACTIONLINT") == "1":
        pytest.fail(msg)
    pytest.skip(msg)


def _actionlint(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    exe = _tool("actionlint", "scripts/install-actionlint.sh (make bootstrap) puts it in .venv/bin")
    cmd = [exe, "-no-color", "-oneline", *args]
    # Without a ShellCheck on PATH actionlint silently skips run: scripts; the one next to it counts too.
    env = {**os.environ, "PATH": f"{Path(exe).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False)


def _scratch_repo(root: Path, example: str) -> Path:
    """A repository holding the example workflows and the action, the example using the action locally."""
    (root / ".git").mkdir()  # actionlint finds the project by its repository root
    workflows = root / ".github/workflows"
    workflows.mkdir(parents=True)
    local, n = HOSTED_USE.subn("uses: ./deploy/github", example)
    assert n == 1, "the example no longer uses the action exactly once"
    (workflows / "deploy.yml").write_text(local)
    shutil.copy(GATE_WORKFLOW, workflows / "keyturn-gate.yml")
    (root / "deploy/github").mkdir(parents=True)
    shutil.copy(ACTION, root / "deploy/github/action.yml")
    return root


def test_actionlint_is_clean_on_the_example_workflows() -> None:
    done = _actionlint(str(WORKFLOW), str(GATE_WORKFLOW))
    assert done.returncode == 0, done.stdout + done.stderr
    assert not done.stdout.strip(), done.stdout


def test_actionlint_is_clean_with_the_action_used_by_local_path(tmp_path: Path) -> None:
    repo = _scratch_repo(tmp_path, WORKFLOW.read_text())
    done = _actionlint(cwd=repo)  # no file arguments: every workflow of the repository, as in CI
    assert done.returncode == 0, done.stdout + done.stderr
    assert not done.stdout.strip(), done.stdout


@pytest.mark.parametrize(
    ("edit", "finding"),
    [
        (lambda wf: wf.replace("timeout: 30m", "timeout: 30m\n          time-out: 1h"), "time-out"),
        (lambda wf: re.sub(r"\n *keyset: .*", "", wf), "keyset"),
        (lambda wf: wf.replace("outputs.receipt-path", "outputs.receipt"), "receipt"),
    ],
    ids=["undeclared-input", "missing-required-input", "unknown-output"],
)
def test_actionlint_reads_the_action_metadata(tmp_path: Path, edit: Any, finding: str) -> None:
    """The clean run above means something only if actionlint checks the workflow against action.yml."""
    repo = _scratch_repo(tmp_path, edit(WORKFLOW.read_text()))
    done = _actionlint(cwd=repo)
    assert done.returncode == 1, done.stdout + done.stderr
    assert finding in done.stdout, done.stdout


# GitHub's metadata syntax for actions (docs: "Metadata syntax for GitHub Actions"), composite actions only.
ACTION_KEYS = {"name", "author", "description", "inputs", "outputs", "runs", "branding"}
INPUT_KEYS = {"description", "required", "default", "deprecationMessage"}
STEP_KEYS = {
    *("id", "if", "name", "uses", "run", "shell", "with", "env", "working-directory", "continue-on-error")
}
SHELLS = {"bash", "pwsh", "python", "sh", "cmd", "powershell"}
EXPR = re.compile(r"\$\{\{(.*?)\}\}", re.S)


def _expressions(node: Any) -> list[str]:
    """Every ``${{ … }}`` body anywhere under ``node``."""
    if isinstance(node, dict):
        return [e for v in node.values() for e in _expressions(v)]
    if isinstance(node, list):
        return [e for v in node for e in _expressions(v)]
    return EXPR.findall(node) if isinstance(node, str) else []


def test_the_action_metadata_follows_githubs_rules() -> None:
    action = _load(ACTION)
    assert set(action) <= ACTION_KEYS, set(action) - ACTION_KEYS
    assert {"name", "description", "runs"} <= set(action)
    assert isinstance(action["name"], str)
    assert isinstance(action["description"], str)
    for name, spec in action["inputs"].items():
        assert ID.match(name), name
        assert set(spec) <= INPUT_KEYS, name
        assert isinstance(spec.get("description"), str), name
        assert isinstance(spec.get("required", False), bool), name
        # A YAML `true` would reach the action as "true" anyway; a string says so where it is read.
        assert isinstance(spec.get("default", ""), str), name
    for name, spec in action["outputs"].items():
        assert ID.match(name), name
        assert set(spec) == {"description", "value"}, name  # composite outputs need both
    assert set(action["runs"]) == {"using", "steps"}
    assert action["runs"]["using"] == "composite"
    steps = action["runs"]["steps"]
    assert isinstance(steps, list)
    assert steps
    ids: list[str] = []
    for step in steps:
        assert set(step) <= STEP_KEYS, set(step) - STEP_KEYS
        assert ("run" in step) != ("uses" in step), step.get("name")
        if "run" in step:
            assert step.get("shell") in SHELLS, f"{step.get('name')}: a composite run step needs a shell"
            assert "with" not in step, step.get("name")
        # steps.<id> in a step may only name an earlier step: a later one has no outputs yet.
        for expr in _expressions(step):
            for ref in re.findall(r"steps\.([A-Za-z0-9_-]+)", expr):
                assert ref in ids, (step.get("name"), ref)
        if "id" in step:
            assert ID.match(step["id"]), step["id"]
            assert step["id"] not in ids, step["id"]
            ids.append(step["id"])
    # Every expression names declared inputs only, and every declared input is used.
    used = {m for e in _expressions(action) for m in re.findall(r"inputs\.([A-Za-z0-9_-]+)", e)}
    assert used == set(action["inputs"]), (used, set(action["inputs"]))
    # Each output is a step output that its step writes to $GITHUB_OUTPUT.
    for name, spec in action["outputs"].items():
        m = re.fullmatch(r"\$\{\{ steps\.([A-Za-z0-9_-]+)\.outputs\.([A-Za-z0-9_-]+) \}\}", spec["value"])
        assert m is not None, name
        assert m.group(1) in ids, name
        writer = next(s for s in steps if s.get("id") == m.group(1))
        assert re.search(rf'echo "{re.escape(m.group(2))}=.*>> "\$GITHUB_OUTPUT"', writer["run"]), name


def test_the_action_scripts_pass_shellcheck(tmp_path: Path) -> None:
    exe = _tool("shellcheck", "apt-get install shellcheck (make bootstrap does, as root)")
    for i, step in enumerate(_load(ACTION)["runs"]["steps"]):
        if "run" not in step:
            continue
        script = tmp_path / f"step{i}.sh"
        script.write_text(f"#!/usr/bin/env {step['shell']}\n{step['run']}")
        # SC2154: the variables come from the step's env: and the runner, which ShellCheck cannot see.
        done = subprocess.run(
            [exe, "--exclude=SC2154", str(script)], capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, f"{step['name']}:\n{done.stdout}{done.stderr}"


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
