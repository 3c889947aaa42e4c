"""The GitHub approver's pure decisions (signer/github_app.py) and the emulator's App JWT check."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from keyturn.emulator.github import check_app_jwt
from keyturn.signer import github_app
from keyturn.signer.github_app import GitHubError, check_webhook, webhook_signature
from keyturn.signer.receipt import Scope

SECRET = "webhook-secret-for-tests"
SHA = "47efb7196c2a1a2fd3f52f2c59f0e2dd3d0e4d54"
ENVS = frozenset({"production", "staging"})


def payload(**over: Any) -> dict[str, Any]:
    """The schema-backed sample of platform facts §8.1."""
    base: dict[str, Any] = {
        "action": "requested",
        "environment": "production",
        "event": "push",
        "ref": "refs/heads/main",
        "sha": SHA,
        "deployment_callback_url": "https://api.github.com/repos/acme/web/actions/runs/42/deployment_protection_rule",
        "deployment": {"id": 1001, "sha": SHA, "ref": "main", "environment": "production"},
        "pull_requests": [],
        "repository": {"id": 7, "name": "web", "full_name": "acme/web", "owner": {"login": "acme"}},
        "installation": {"id": 12345678},
        "sender": {"login": "alice", "id": 5},
    }
    base.update(over)
    return base


def deliver(body: bytes, *, secret: str = SECRET, **headers: str) -> github_app.Webhook:
    h = {
        "X-GitHub-Event": "deployment_protection_rule",
        "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        "X-Hub-Signature-256": webhook_signature(secret, body),
    }
    h.update(headers)
    return check_webhook(SECRET, {k: v for k, v in h.items() if v}, body, api_base_path="", environments=ENVS)


def test_signature_matches_the_documented_test_vector() -> None:
    assert (
        webhook_signature("It's a Secret to Everybody", b"Hello, World!")
        == "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    )


def test_a_genuine_delivery_is_read() -> None:
    hook = deliver(json.dumps(payload()).encode())
    assert (hook.run_id, hook.repo, hook.sha, hook.environment) == (42, "acme/web", SHA, "production")
    assert (hook.installation_id, hook.deployment_id) == (12345678, 1001)
    assert hook.callback_path == "/repos/acme/web/actions/runs/42/deployment_protection_rule"


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({"X-Hub-Signature-256": ""}, "missing_signature"),
        ({"X-Hub-Signature-256": "sha256=" + "0" * 64}, "bad_signature"),
        ({"X-Hub-Signature-256": "sha1=abc"}, "bad_signature"),
        ({"X-GitHub-Event": "push"}, "unsupported_event"),
        ({"X-GitHub-Delivery": ""}, "bad_delivery"),
    ],
)
def test_headers_are_checked(headers: dict[str, str], code: str) -> None:
    with pytest.raises(GitHubError) as e:
        deliver(json.dumps(payload()).encode(), **headers)
    assert e.value.code == code


def test_signature_by_another_secret_is_refused() -> None:
    with pytest.raises(GitHubError) as e:
        deliver(json.dumps(payload()).encode(), secret="guessed")
    assert e.value.code == "bad_signature"


@pytest.mark.parametrize(
    ("over", "code", "field"),
    [
        ({"sha": "abc"}, "malformed_payload", "sha"),
        ({"sha": None}, "malformed_payload", "sha"),
        ({"environment": 3}, "malformed_payload", "environment"),
        ({"repository": "acme/web"}, "malformed_payload", "repository"),
        ({"installation": {}}, "malformed_payload", "installation.id"),
        ({"deployment": {"id": True}}, "malformed_payload", "deployment.id"),
        ({"environment": "qa"}, "no_policy", None),
        ({"action": "completed"}, "unsupported_action", None),
        ({"deployment_callback_url": "https://evil.example/steal"}, "bad_callback", None),
        (
            {
                "deployment_callback_url": "https://api.github.com/repos/other/repo/actions/runs/42/deployment_protection_rule"
            },
            "bad_callback",
            None,
        ),
    ],
)
def test_payloads_are_validated(over: dict[str, Any], code: str, field: str | None) -> None:
    with pytest.raises(GitHubError) as e:
        deliver(json.dumps(payload(**over)).encode())
    assert e.value.code == code
    if field:
        assert field in e.value.fields


@pytest.mark.parametrize(
    "body", [b"[]", b"not json", b'{"action": "requested", "action": "requested"}', b"\xff"]
)
def test_bodies_that_are_not_one_json_object_are_refused(body: bytes) -> None:
    with pytest.raises(GitHubError) as e:
        deliver(body)
    assert e.value.code == "malformed_payload"


def _hook() -> github_app.Webhook:
    return deliver(json.dumps(payload()).encode())


def _run(**over: Any) -> dict[str, Any]:
    run: dict[str, Any] = {
        "id": 42,
        "head_sha": SHA,
        "path": ".github/workflows/deploy.yml",
        "repository": {"full_name": "acme/web"},
    }
    run.update(over)
    return run


def test_scope_comes_from_the_api_reads() -> None:
    scope = github_app.run_scope(_hook(), _run(), {"environment": "production", "sha": SHA})
    assert scope == Scope("acme/web", SHA, "production", ".github/workflows/deploy.yml")


@pytest.mark.parametrize(
    ("run", "deployment"),
    [
        (_run(head_sha="0" * 40), {"environment": "production", "sha": SHA}),
        (_run(repository={"full_name": "acme/other"}), {"environment": "production", "sha": SHA}),
        (_run(path="deploy workflow"), {"environment": "production", "sha": SHA}),
        (_run(), {"environment": "staging", "sha": SHA}),
        (_run(), None),
    ],
)
def test_reads_disagreeing_with_the_webhook_are_refused(
    run: dict[str, Any], deployment: dict[str, Any] | None
) -> None:
    with pytest.raises(GitHubError) as e:
        github_app.run_scope(_hook(), run, deployment)
    assert e.value.code == "run_mismatch"


def test_comments_fit_and_escape() -> None:
    scope = Scope("acme/web", SHA, "production", ".github/workflows/deploy.yml")
    ok = github_app.approve_comment(
        "req_01JV7Q4M4T7Z9X4P9G8N2D6R1A", scope, ["bob@example.com"], "https://k.example/r/1"
    )
    assert "[req\\_01JV7Q4M4T7Z9X4P9G8N2D6R1A](https://k.example/r/1)" in ok
    assert len(ok) <= github_app.MAX_COMMENT
    reason = "[click](https://evil.example) @everyone\n# heading " + "x" * 5000
    rejected = github_app.reject_comment(reason, "req_01JV7Q4M4T7Z9X4P9G8N2D6R1A", None)
    assert len(rejected) <= github_app.MAX_COMMENT
    assert "\\[click\\]\\(https://evil.example\\)" in rejected
    assert "\\@everyone" in rejected
    assert "\n" not in rejected
    assert rejected.endswith("(Keyturn request `req_01JV7Q4M4T7Z9X4P9G8N2D6R1A`)")


def _pems() -> tuple[bytes, rsa.RSAPublicKey]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return pem, key.public_key()


def test_app_jwt_is_what_the_emulator_takes_and_only_from_the_app_key() -> None:
    pem, public = _pems()
    other_pem, _ = _pems()
    now = 1_800_000_000
    assert check_app_jwt(github_app.app_jwt("424242", pem, now), public, "424242", now) is None
    assert check_app_jwt(github_app.app_jwt("424242", other_pem, now), public, "424242", now) is not None
    assert check_app_jwt(github_app.app_jwt("1", pem, now), public, "424242", now) is not None
    assert check_app_jwt(github_app.app_jwt("424242", pem, now - 3600), public, "424242", now) is not None


def test_retry_policy() -> None:
    from keyturn.signer.github_approver import is_retryable, retry_delay

    assert is_retryable(502, {})
    assert is_retryable(429, {})
    assert is_retryable(403, {"x-ratelimit-remaining": "0"})
    assert not is_retryable(403, {})
    assert not is_retryable(404, {})
    assert not is_retryable(422, {})
    assert [retry_delay(n, 0.25, None) for n in (1, 2, 3)] == [0.25, 0.5, 1.0]
    assert retry_delay(1, 0.25, "2") == 2.0
    assert retry_delay(1, 0.25, "9999") == 60.0


def _origin(**over: Any) -> Any:
    from keyturn.signer.evidence import GitHubEvidence, github_stamp

    body = json.dumps(payload()).encode()
    values: dict[str, Any] = {
        "body": body,
        "delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        "signature": webhook_signature(SECRET, body),
        "workflow": ".github/workflows/deploy.yml",
        "timestamp": "1800000000",
    }
    values.update(over)
    stamp = over.get("stamp") or github_stamp(SECRET, values["body"], values["delivery"], "1800000000")
    values.pop("stamp", None)
    return GitHubEvidence(**values, stamp=stamp)


def test_the_signer_checks_the_webhook_signature_and_its_own_arrival_stamp() -> None:
    from keyturn.signer.evidence import EvidenceError, _verify_github

    assert _verify_github(SECRET, _origin()) == 1_800_000_000
    for bad, code in (
        (_origin(timestamp="1800000600"), "bad_github_stamp"),  # re-dated by the bot
        (_origin(stamp="0" * 64), "bad_github_stamp"),
        (_origin(signature="sha256=" + "0" * 64), "bad_signature"),
        (_origin(body=json.dumps(payload(sha="0" * 40)).encode()), "bad_signature"),
    ):
        with pytest.raises(EvidenceError) as e:
            _verify_github(SECRET, bad)
        assert e.value.code == code
    with pytest.raises(EvidenceError) as e:
        _verify_github("", _origin())
    assert e.value.code == "github_not_configured"


def test_a_github_origin_claims_the_signed_scope_and_binds_the_workflow_into_its_id() -> None:
    from keyturn.signer.evidence import origin_claim, request_id_for
    from keyturn.signer.policy import Policy

    policy = Policy.from_data(
        {
            "version": 1,
            "environments": {
                "production": {
                    "channel": "C0DEPLOYS",
                    "approvers": ["U0BOB"],
                    "required_approvals": 1,
                    "request_ttl": "30m",
                    "receipt_ttl": "15m",
                }
            },
        }
    )
    claim = origin_claim(_origin(), policy)
    assert claim.scope == Scope("acme/web", SHA, "production", ".github/workflows/deploy.yml")
    assert claim.requester == "github:alice"
    assert claim.run_url == "https://github.com/acme/web/actions/runs/42"
    other = _origin(workflow=".github/workflows/other.yml")
    assert request_id_for(other) != request_id_for(_origin())


def test_the_deployments_creation_bounds_the_request_start() -> None:
    """A stamp proves when the signer saw a webhook; an old webhook shown again is dated by its deployment."""
    from keyturn.signer.evidence import _verify_github

    old = payload(
        deployment={"id": 1001, "sha": SHA, "environment": "production", "created_at": "2027-01-15T08:00:00Z"}
    )
    body = json.dumps(old).encode()
    assert (
        _verify_github(SECRET, _origin(body=body, signature=webhook_signature(SECRET, body))) == 1_800_000_000
    )
    earlier = payload(
        deployment={"id": 1001, "sha": SHA, "environment": "production", "created_at": "2026-11-30T10:00:00Z"}
    )
    body = json.dumps(earlier).encode()
    assert (
        _verify_github(SECRET, _origin(body=body, signature=webhook_signature(SECRET, body))) == 1_796_032_800
    )
    with pytest.raises(GitHubError) as e:
        deliver(json.dumps(payload(deployment={"id": 1, "created_at": "yesterday"})).encode())
    assert e.value.fields == {"deployment.created_at": "must be an ISO 8601 time with a zone"}
