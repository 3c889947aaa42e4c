"""The GitHub side of the deployment-protection-rule tests as real processes: ``keyturn github-emulator`` and
``keyturn github-approver`` (with a fresh App key), and helpers to drive them. Shared by
tests/e2e/test_github_rule.py and tests/faults/test_github_handover.py.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from keyturn.signer import github_app
from tests import harness
from tests.e2e.conftest import GITHUB_WEBHOOK_SECRET, SHA, Stack
from tests.harness import KEYTURN, Proc, free_port

APP_ID = "424242"
WORKFLOW = ".github/workflows/deploy.yml"
# A well-formed arrival no request was opened from: for the approver's refusals that come before it checks
# the receipt's request against the run's webhook (unknown run, GitHub down, the gate).
UNBOUND = github_app.arrival_headers("0", "0" * 64, WORKFLOW)


def arrival_of(stack: Stack, request_id: str) -> dict[str, str]:
    """The arrival headers the bot's hand-off sends with the receipt of GitHub request ``request_id``: read
    from the request's origin in the bot's store, as a compromised bot could."""
    with stack.redis.client() as r:
        origin = json.loads(r.get(f"keyturn:req:{{{request_id}}}:origin"))
    return github_app.arrival_headers(origin["timestamp"], origin["stamp"], origin["workflow"])


@dataclass
class GitHubRig:
    """The GitHub emulator and the approver, with an HTTP client for both."""

    github_url: str
    approver_url: str
    procs: dict[str, Proc]
    http: httpx.Client
    approver_argv: list[str]
    logs: Path

    @property
    def state_file(self) -> Path:
        """The approver's ``--state-file``."""
        return Path(self.approver_argv[self.approver_argv.index("--state-file") + 1])

    def start_approver(self) -> None:
        """Start the approver (again: after a stop or a kill) with the same state file."""
        self.procs["approver"] = harness.start_process(
            "github-approver",
            self.approver_argv,
            self.logs,
            ready=harness.http_ok(f"{self.approver_url}/healthz"),
        )

    def restart_approver(self) -> None:
        """Stop the approver and start it again with the same state file."""
        self.procs["approver"].stop()
        self.start_approver()

    def close(self) -> None:
        """Stop both processes and the client."""
        self.http.close()
        for p in reversed(list(self.procs.values())):
            p.stop()

    def new_run(self, **spec: Any) -> dict[str, Any]:
        """A waiting run (production of acme/web at :data:`SHA` unless ``spec`` says otherwise)."""
        body = {"repo": "acme/web", "sha": SHA, "environment": "production", "workflow": WORKFLOW, **spec}
        resp = self.http.post(f"{self.github_url}/_github/runs", json=body)
        assert resp.status_code == 200, resp.text
        data: dict[str, Any] = resp.json()
        return data

    def deliver(self, run_id: int, **spec: Any) -> dict[str, Any]:
        """GitHub sends the run's webhook: to the approver (as the bot forwards it), or to ``url``."""
        body = {"run_id": run_id, "url": f"{self.approver_url}/webhook", **spec}
        resp = self.http.post(f"{self.github_url}/_github/deliver", json=body)
        assert resp.status_code == 200, resp.text
        data: dict[str, Any] = resp.json()
        return data

    def run(self, run_id: int) -> dict[str, Any]:
        """The run as the emulator holds it: ``status`` and the ``reviews`` posted."""
        data: dict[str, Any] = self.http.get(f"{self.github_url}/_github/runs/{run_id}").json()
        return data

    def wait_run(self, run_id: int, status: str, timeout: float = 20.0) -> dict[str, Any]:
        """Wait for the run to be ``status`` (the hand-off happens in other processes: polled, as the
        harness's waits are)."""
        harness.wait_until(
            lambda: self.run(run_id)["status"] == status, timeout, f"run {run_id} to be {status}"
        )
        return self.run(run_id)

    def calls(self) -> list[dict[str, Any]]:
        """Every API call the emulator answered."""
        calls: list[dict[str, Any]] = self.http.get(f"{self.github_url}/_github/calls").json()["calls"]
        return calls

    def reviews_posted(self, run_id: int) -> list[dict[str, Any]]:
        """The review callbacks (approve, reject, status comment) posted for the run."""
        path = f"/repos/acme/web/actions/runs/{run_id}/deployment_protection_rule"
        return [c for c in self.calls() if c["path"] == path and c["method"] == "POST"]

    def faults(self, **values: Any) -> None:
        """Set the emulator's fault switches."""
        assert self.http.post(f"{self.github_url}/_github/faults", json=values).status_code == 200

    def approve(
        self,
        run_id: int,
        receipt: bytes,
        environment: str = "production",
        arrival: dict[str, str] | None = None,
    ) -> httpx.Response:
        """Hand the approver a receipt for the run, as the bot does, with the ``arrival`` of the webhook its
        request was opened from (:func:`arrival_of`; default :data:`UNBOUND`)."""
        url = f"{self.approver_url}/runs/{run_id}/{environment}/approve"
        return self.http.post(url, content=receipt, headers=arrival or UNBOUND)

    def reject(
        self, run_id: int, reason: str, request_id: str | None = None, environment: str = "production"
    ) -> httpx.Response:
        """Ask the approver to reject the run, as the bot does."""
        body = {"reason": reason, "request_id": request_id}
        return self.http.post(f"{self.approver_url}/runs/{run_id}/{environment}/reject", json=body)


def app_key(workdir: Path) -> tuple[Path, Path]:
    """A fresh App key: the private half for the approver (mode 0600), the public half for the emulator."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = workdir / "app.private-key.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    os.chmod(private, 0o600)
    public = workdir / "app.public-key.pem"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


def start_github_rig(workdir: Path, *, approver_port: int, keys_file: Path, policy: Path) -> GitHubRig:
    """Start the GitHub emulator and the approver (its state file in ``workdir``); the caller closes it."""
    logs = workdir / "logs"
    workdir.mkdir(parents=True, exist_ok=True)
    private, public = app_key(workdir)
    secret_file = workdir / "webhook-secret"
    secret_file.write_text(GITHUB_WEBHOOK_SECRET)
    gh_port = free_port()
    gh_url, ap_url = f"http://127.0.0.1:{gh_port}", f"http://127.0.0.1:{approver_port}"
    procs: dict[str, Proc] = {}
    approver_argv = [
        *KEYTURN,
        "github-approver",
        *("--port", str(approver_port), "--api-url", gh_url, "--app-id", APP_ID),
        *("--app-key", str(private), "--webhook-secret-file", str(secret_file)),
        *("--keys", str(keys_file), "--policy", str(policy)),
        *("--request-link", "https://keyturn.example/requests/{request_id}"),
        *("--attempts", "3", "--backoff", "0.05", "--timeout", "1"),
        *("--state-file", str(workdir / "approver-state.json")),
    ]
    rig = GitHubRig(gh_url, ap_url, procs, httpx.Client(timeout=30), approver_argv, logs)
    try:
        procs["github"] = harness.start_process(
            "github-emulator",
            [
                *KEYTURN,
                "github-emulator",
                *("--port", str(gh_port), "--app-id", APP_ID, "--app-public-key", str(public)),
                *("--webhook-secret-file", str(secret_file)),
            ],
            logs,
            ready=harness.http_ok(f"{gh_url}/healthz"),
        )
        rig.start_approver()
    except Exception:
        rig.close()
        raise
    return rig


def through_the_bot(gh: GitHubRig, stack: Stack, **spec: Any) -> tuple[int, dict[str, Any]]:
    """GitHub delivers a new run's webhook to the bot; the run id and the request's card."""
    run = gh.new_run(**spec)
    answer = gh.deliver(run["run_id"], url=f"{stack.bot_url}/github/webhook")
    assert answer["status"] == 202, answer
    return run["run_id"], stack.card(answer["body"]["requestId"])
