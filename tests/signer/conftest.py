"""Evidence builders and a real signer process for the signer tests.

The builders sign requests and clicks with fixed test secrets exactly as a CI job or Slack would, so every
test exercises the same bytes-in path the bot uses. Times are explicit Unix seconds.
"""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from keyturn.signer import wire
from keyturn.signer.card import render_pending
from keyturn.signer.evidence import (
    CiEvidence,
    GitHubEvidence,
    OidcEvidence,
    SlackEvidence,
    card_facts,
    ci_signature,
    origin_claim,
    request_id_for,
    slack_signature,
)
from keyturn.signer.keys import SigningKeyset
from keyturn.signer.policy import Policy
from keyturn.signer.receipt import Scope, new_request_id
from tests.harness import KEYTURN, Proc, start_process, unix_socket_ready

SLACK_SECRET = "test-slack-signing-secret-0123456789"
CI_SECRET = "test-ci-secret-0123456789abcdefghij"
TEAM = "T0TEAM"
SHA = "4f8a2cd91ef7a2c7f3a5f0aa12d93b33f2d40e17"
OTHER_SHA = "0000000000000000000000000000000000000bad"
SCOPE = Scope("acme/web", SHA, "production", "deploy.yml")

POLICY_TOML = """\
version = 1

[slack]
command = "/keyturn"
team_id = "T0TEAM"

[identities]
"github:alice" = "U0ALICE"

[environments.production]
channel = "C0DEPLOYS"
approvers = ["U0BOB", "U0CAROL", "U0ALICE"]
approver_groups = ["S0ONCALL"]
required_approvals = 2
request_ttl = "30m"
receipt_ttl = "15m"

[environments.staging]
channel = "C0STAGING"
approvers = ["U0BOB", "U0ALICE"]
required_approvals = 1
request_ttl = "10m"
receipt_ttl = "1h"
allow_self_approval = true

[groups.S0ONCALL]
members = ["U0ONCALL", "U0XTRA"]
"""
POLICY = Policy.from_bytes(POLICY_TOML.encode())


def ci_request_body(scope: Scope = SCOPE, requester: str = "github:alice", **extra: Any) -> bytes:
    """A ``POST /v1/requests`` body as a pipeline sends it."""
    doc = {**scope.to_json(), "requester": requester, **extra}
    return json.dumps(doc).encode()


def ci_origin(ts: int, body: bytes | None = None, secret: str = CI_SECRET) -> wire.CiOrigin:
    """The CI request evidence, signed with ``secret`` at ``ts``."""
    raw = ci_request_body() if body is None else body
    sig = ci_signature(secret, "POST", "/v1/requests", raw, str(ts))
    return wire.CiOrigin(method="POST", path="/v1/requests", body=raw, timestamp=str(ts), signature=sig)


def slash_body(text: str, user: str = "U0ALICE", team: str = TEAM, command: str = "/keyturn") -> str:
    """A slash-command form body as Slack sends it."""
    return urlencode(
        {
            "token": "legacy",
            "team_id": team,
            "channel_id": "C0DEPLOYS",
            "channel_name": "deploys",
            "user_id": user,
            "user_name": "someone",
            "command": command,
            "text": text,
            "response_url": "http://127.0.0.1:9/response/abc",
            "trigger_id": "1.2.abc",
        }
    )


def slash_origin(ts: int, body: str, secret: str = SLACK_SECRET) -> wire.SlackCommandOrigin:
    """The slash-command evidence, signed with ``secret`` at ``ts``."""
    return wire.SlackCommandOrigin(
        body=body, timestamp=str(ts), signature=slack_signature(secret, body, str(ts))
    )


Origin = wire.CiOrigin | wire.SlackCommandOrigin | wire.OidcOrigin | wire.GitHubOrigin


def as_evidence(origin: Origin) -> CiEvidence | SlackEvidence | OidcEvidence | GitHubEvidence:
    """A wire origin as the trust core's evidence type."""
    if isinstance(origin, wire.OidcOrigin):
        return OidcEvidence(origin.token, origin.body)
    if isinstance(origin, wire.GitHubOrigin):
        return GitHubEvidence(
            origin.body, origin.delivery, origin.signature, origin.workflow, origin.timestamp, origin.stamp
        )
    if isinstance(origin, wire.CiOrigin):
        return CiEvidence(origin.method, origin.path, origin.body, origin.timestamp, origin.signature)
    return SlackEvidence(origin.body, origin.timestamp, origin.signature)


def rid_of(origin: Origin) -> str:
    """The request id bound to ``origin`` (what the bot mints and the signer recomputes)."""
    return request_id_for(as_evidence(origin))


def true_card(
    origin: Origin,
    *,
    policy: Policy | None = None,
    approvals: str | None = None,
    expires: str = "14:05 UTC (in 25m)",
) -> list[dict[str, Any]]:
    """The pending card the trust core renders for ``origin`` — what the bot posts and Slack echoes."""
    pol = policy or POLICY
    evidence = as_evidence(origin)
    facts = card_facts(rid_of(origin), origin_claim(evidence, pol), evidence, pol)
    env = pol.environment(facts.scope.environment)
    return render_pending(
        facts,
        environments=pol.environments.keys(),
        confirm=env.confirm_approve,
        approvals=approvals or f"0 of {env.required_approvals}",
        expires=expires,
    )


def click_body(
    origin: Origin,
    user: str,
    *,
    blocks: list[dict[str, Any]] | None = None,
    message: dict[str, Any] | None = None,
    team: str = TEAM,
    action_id: str = "approve",
    block_id: str = "kt_decision",
    value: str | None = None,
    policy: Policy | None = None,
) -> str:
    """An approve-click form body (``payload=<json>``) as Slack sends it, on ``origin``'s true card unless
    ``blocks`` (or a whole ``message``) says otherwise."""
    payload = {
        "type": "block_actions",
        "team": {"id": team, "domain": "acme"},
        "user": {"id": user, "username": user.lower(), "team_id": team},
        "container": {"type": "message", "channel_id": "C0DEPLOYS", "is_ephemeral": False},
        "channel": {"id": "C0DEPLOYS", "name": "deploys"},
        "message": message
        or {
            "type": "message",
            "text": "Deploy approval",
            "blocks": true_card(origin, policy=policy) if blocks is None else blocks,
        },
        "trigger_id": "1.2.3",
        "response_url": "http://127.0.0.1:9/response/xyz",
        "actions": [
            {
                "type": "button",
                "action_id": action_id,
                "block_id": block_id,
                "value": rid_of(origin) if value is None else value,
                "action_ts": "1700000001.000200",
            }
        ],
    }
    return urlencode({"payload": json.dumps(payload)})


def click(ts: int, body: str, secret: str = SLACK_SECRET) -> wire.SlackClick:
    """An approve click's evidence, signed with ``secret`` at ``ts``."""
    return wire.SlackClick(body=body, timestamp=str(ts), signature=slack_signature(secret, body, str(ts)))


def at(ts: int) -> datetime:
    """Unix seconds as an aware UTC datetime."""
    return datetime.fromtimestamp(ts, UTC)


@dataclass
class SignerFiles:
    """A temp dir with everything a signer needs, at a short path (Unix socket paths: ~108 bytes)."""

    root: Path

    @property
    def socket(self) -> Path:
        return self.root / "s.sock"

    @property
    def keyset(self) -> Path:
        return self.root / "keys.json"

    @property
    def policy(self) -> Path:
        return self.root / "keyturn.toml"

    @property
    def audit(self) -> Path:
        return self.root / "audit.jsonl"

    def env(self, **overrides: str) -> dict[str, str]:
        """The signer's environment."""
        env = {
            "KEYTURN_SIGNER_SOCKET": str(self.socket),
            "KEYTURN_SIGNER_KEYSET": str(self.keyset),
            "KEYTURN_POLICY": str(self.policy),
            "KEYTURN_SLACK_SIGNING_SECRET": SLACK_SECRET,
            "KEYTURN_CI_SECRET": CI_SECRET,
            "KEYTURN_AUDIT_LOG": str(self.audit),
            "KEYTURN_DEV_MODE": "",
            "KEYTURN_SIGNER_SOCKET_GROUP": "",
        }
        env.update(overrides)
        return env


def make_files(keyset_now: datetime | None = None) -> SignerFiles:
    """Create a fresh key file (mode 0600), the test policy and an empty audit-log location."""
    root = Path(tempfile.mkdtemp(prefix="kts-", dir="/tmp"))
    files = SignerFiles(root)
    SigningKeyset.generate(files.keyset, now=keyset_now or datetime(2026, 1, 1, tzinfo=UTC))
    files.policy.write_text(POLICY_TOML)
    return files


def start_signer(files: SignerFiles, log_dir: Path, name: str = "signer", **env: str) -> Proc:
    """Run ``keyturn signer`` and wait until its socket accepts connections."""
    return start_process(
        name, [*KEYTURN, "signer"], log_dir, env=files.env(**env), ready=unix_socket_ready(files.socket)
    )


@pytest.fixture
def signer_files() -> Iterator[SignerFiles]:
    """Fresh signer files for one test."""
    files = make_files()
    yield files
    shutil.rmtree(files.root, ignore_errors=True)


@pytest.fixture(scope="module")
def running_signer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SignerFiles, Proc]]:
    """One real signer process shared by a module's tests (it keeps no per-request state)."""
    files = make_files()
    proc = start_signer(files, tmp_path_factory.mktemp("signer-logs"))
    yield files, proc
    proc.stop()
    shutil.rmtree(files.root, ignore_errors=True)


def new_id() -> str:
    """A fresh request id."""
    return new_request_id()


def dump(obj: Mapping[str, Any]) -> bytes:
    """Compact JSON bytes."""
    return json.dumps(obj, separators=(",", ":")).encode()


HEALTH = b'{"v":1,"id":"h","op":"health"}'


class RawConn:
    """A raw connection to the signer socket: send any bytes, read whole reply frames."""

    def __init__(self, path: Path, timeout: float = 5.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))

    def send_frame(self, payload: bytes) -> None:
        self.sock.sendall(len(payload).to_bytes(4, "big") + payload)

    def recv(self) -> dict[str, Any] | None:
        """The next reply, or None when the signer closed the connection cleanly between frames."""
        header = self._exact(4)
        if header is None:
            return None
        body = self._exact(int.from_bytes(header, "big"))
        assert body is not None, "the signer closed the connection inside a reply"
        reply: dict[str, Any] = json.loads(body)
        return reply

    def ask(self, payload: bytes) -> dict[str, Any]:
        self.send_frame(payload)
        reply = self.recv()
        assert reply is not None, "the signer hung up instead of answering"
        return reply

    def _exact(self, n: int) -> bytes | None:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                assert not buf, "the signer closed the connection inside a reply"
                return None
            buf += chunk
        return buf

    def close(self) -> None:
        self.sock.close()
