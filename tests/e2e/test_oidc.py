"""OIDC-proven requests end to end (issue 11): the OIDC issuer emulator, ``keyturn policy pin-oidc-keys``,
the signer, the Slack emulator and the bot, as real processes.

The signer runs on a fake clock file (dev mode) so that "later" is a write to a file, never a sleep.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from keyturn.emulator.client import EmulatorClient
from keyturn.emulator.oidc import IssuerKey, encode_part, sign_rs256
from keyturn.signer import wire
from keyturn.signer.audit import outcome_rows
from keyturn.signer.evidence import OidcEvidence, request_id_for
from keyturn.signer.oidc import unverified_claims
from tests import harness
from tests.conftest import failed
from tests.e2e.conftest import BOT_TOKEN, CI_SECRET, SHA, SLACK_SECRET, Stack
from tests.harness import KEYTURN, Proc, RedisServer, free_port, http_ok, wait_until
from tests.oidc_tokens import AUDIENCE, GITHUB_ISS, GITLAB_ISS, alg_none, hs256_with_public_key

WORKFLOW = ".github/workflows/deploy.yml"

POLICY = f"""\
version = 1

[slack]
command = "/keyturn"
team_id = "T0KEYTURN"

[identities]
"github:alice" = "U0ALICE"
"github:bob" = "U0BOB"

[oidc.issuers.github]
issuer = "{GITHUB_ISS}"
audience = "{AUDIENCE}"
jwks_file = "github.jwks.json"
algorithm = "RS256"
kind = "github"

[oidc.issuers.gitlab]
issuer = "{GITLAB_ISS}"
audience = "{AUDIENCE}"
jwks_file = "gitlab.jwks.json"
algorithm = "RS256"
kind = "gitlab"

[environments.production]
channel = "C0DEPLOYS"
approvers = ["U0BOB", "U0CAROL", "U0ALICE"]
required_approvals = 1
request_ttl = "30m"
receipt_ttl = "15m"
allow_self_approval = false
confirm_approve = true
ci_secret = false

[environments.production.oidc]
issuers = ["github"]
repositories = ["acme/web"]
branches = ["main"]

[environments.staging]
channel = "C0STAGING"
approvers = ["U0BOB", "U0CAROL"]
required_approvals = 1
request_ttl = "30m"
receipt_ttl = "30m"
confirm_approve = false

[environments.staging.oidc]
issuers = ["github", "gitlab"]
"""


class OidcStack(Stack):
    """The e2e stack plus the OIDC issuer emulator and the signer's fake clock."""

    oidc_url: str
    clock_file: Path
    signer_socket: Path

    def token(self, kind: str = "github", audience: str = AUDIENCE) -> str:
        """A token from the emulator's runtime endpoint, as a GitHub job gets one."""
        resp = self.http.get(
            f"{self.oidc_url}/{kind}/token",
            params={"audience": audience},
            headers={"Authorization": "bearer keyturn-emulator-runtime-token"},
        )
        assert resp.status_code == 200, resp.text
        value: str = resp.json()["value"]
        return value

    def job(self, **values: Any) -> None:
        """Set the job the next tokens describe."""
        assert self.http.post(f"{self.oidc_url}/_oidc/job", json=values).status_code == 200

    def faults(self, **values: bool) -> None:
        """Set the emulator's fault switches."""
        assert self.http.post(f"{self.oidc_url}/_oidc/faults", json=values).status_code == 200

    def published_key(self, kind: str = "github") -> dict[str, str]:
        """The issuer's current public JWK."""
        key: dict[str, str] = self.http.get(f"{self.oidc_url}/{kind}/jwks").json()["keys"][0]
        return key

    def post_oidc(self, token: str, body: dict[str, Any] | bytes) -> httpx.Response:
        """``POST /v1/requests`` with ``Authorization: Bearer <token>``."""
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        return self.http.post(self.bot_url + "/v1/requests", content=raw, headers=headers)

    def set_clock(self, offset: int) -> None:
        """The signer's clock: real time plus ``offset`` seconds."""
        self.clock_file.write_text(str(int(time.time()) + offset))

    def signer_call(self, frame: dict[str, Any]) -> dict[str, Any]:
        """One raw frame to the signer, as a compromised bot could send it; the reply."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(str(self.signer_socket))
            s.sendall(wire.encode_frame(frame))
            size = int.from_bytes(_read(s, 4), "big")
            reply: dict[str, Any] = json.loads(_read(s, size))
            return reply


def _read(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise ConnectionError("signer closed the connection")
        data += chunk
    return data


def body_for(token: str, **over: Any) -> dict[str, Any]:
    """The body ``keyturn request --oidc`` sends for ``token``: what its claims say, plus free text."""
    claims = unverified_claims(token)
    doc = {
        "repo": claims["repository"],
        "sha": claims["sha"],
        "environment": claims["environment"],
        "workflow": WORKFLOW,
        "requester": f"github:{claims['actor']}",
        "title": "Release 42",
    }
    doc.update(over)
    return {k: v for k, v in doc.items() if v is not None}


@pytest.fixture(scope="module")
def oidc_stack(redis_srv: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcStack]:
    workdir = tmp_path_factory.mktemp("e2e-oidc")
    logs = workdir / "logs"
    policy = workdir / "keyturn.toml"
    policy.write_text(POLICY)
    clock = workdir / "now"
    clock.write_text(str(int(time.time())))
    keyset, public = harness.keygen(workdir)
    bot_port = free_port()
    bot_url = f"http://127.0.0.1:{bot_port}"
    oidc_port = free_port()
    oidc_url = f"http://127.0.0.1:{oidc_port}"
    procs: dict[str, Proc] = {}
    try:
        procs["oidc"] = harness.start_process(
            "oidc",
            [*KEYTURN, "oidc-emulator", "--port", str(oidc_port)],
            logs,
            ready=http_ok(f"{oidc_url}/healthz"),
        )
        # The operator pins the issuers' keys; the signer reads nothing else.
        pin = subprocess.run(
            [
                *KEYTURN,
                "policy",
                "pin-oidc-keys",
                str(policy),
                "--from",
                f"github={oidc_url}/github",
                "--from",
                f"gitlab={oidc_url}/gitlab",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert pin.returncode == 0, pin.stderr
        procs["signer"], sock = harness.start_signer(
            workdir,
            logs,
            policy=policy,
            keyset=keyset,
            slack_secret=SLACK_SECRET,
            ci_secret=CI_SECRET,
            env={"KEYTURN_DEV_MODE": "1", "KEYTURN_SIGNER_FAKE_NOW_FILE": str(clock)},
        )
        procs["emulator"], emu_url = harness.start_emulator(logs, slack_secret=SLACK_SECRET, bot_url=bot_url)
        procs["bot"] = harness.start_bot(
            logs,
            port=bot_port,
            redis_url=redis_srv.url,
            signer_socket=sock,
            policy=policy,
            emulator_url=emu_url,
            cwd=workdir,
            env={"KEYTURN_SLACK_BOT_TOKEN": BOT_TOKEN, "KEYTURN_CARD_RETRY_MAX": "1"},
        )
    except Exception:
        for p in procs.values():
            p.stop()
        raise
    with EmulatorClient(emu_url) as emulator, httpx.Client(timeout=30) as http:
        stack = OidcStack(bot_url, emulator, redis_srv, procs, workdir, public, http)
        stack.oidc_url, stack.clock_file, stack.signer_socket = oidc_url, clock, sock
        yield stack
    for p in reversed(list(procs.values())):
        p.stop()


@pytest.fixture
def ostack(oidc_stack: OidcStack, request: pytest.FixtureRequest) -> Iterator[OidcStack]:
    client = oidc_stack.redis.client()
    client.flushall()
    oidc_stack.emulator.reset()
    oidc_stack.emulator.set_bot_url(f"{oidc_stack.bot_url}/slack/events")
    assert oidc_stack.http.post(f"{oidc_stack.oidc_url}/_oidc/reset").status_code == 200
    oidc_stack.set_clock(0)
    yield oidc_stack
    if failed(request):
        print(oidc_stack.logs())
    client.close()
    dead = [name for name, p in oidc_stack.procs.items() if not p.alive()]
    assert not dead, f"processes died during the test: {dead}\n{oidc_stack.logs()}"


def refused(stack: OidcStack, token: str, body: dict[str, Any] | None = None) -> tuple[int, str]:
    resp = stack.post_oidc(token, body if body is not None else body_for(token))
    return resp.status_code, str(resp.json().get("error"))


# --- accepted ---------------------------------------------------------------------------------------------


def test_a_genuine_token_whose_claims_match_gets_a_receipt_that_says_so(ostack: OidcStack) -> None:
    token = ostack.token()
    resp = ostack.post_oidc(token, body_for(token))
    assert resp.status_code == 202, resp.text
    req = ostack.card(resp.json()["requestId"])
    shown = json.dumps(ostack.emulator.message(req["card"]["channel"], req["card"]["ts"]))
    assert "Release 42" not in shown  # the body's free text never reaches the card
    assert "From the job's OIDC token" in shown
    assert "actions/runs/1234567890/attempts/1" in shown
    ostack.click("U0BOB", req)
    ostack.wait_status(req["requestId"], "APPROVED")
    receipt = ostack.get(f"/v1/requests/{req['requestId']}/receipt").json()
    assert receipt["version"] == "1.1"
    assert receipt["requester"] == "github:alice"
    assert receipt["requesterProof"] == {
        "issuer": GITHUB_ISS,
        "subject": "repo:acme/web:environment:production",
        "run": "1234567890/1",
    }
    path = ostack.workdir / "receipt.json"
    path.write_text(json.dumps(receipt))
    verify = [
        *KEYTURN, "verify", str(path), "--keys", str(ostack.keys_file), "--repo", "acme/web", "--sha", SHA,
        "--env", "production", "--workflow", WORKFLOW, "--require-oidc",
    ]  # fmt: skip
    done = subprocess.run(verify, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr


def test_keyturn_request_oidc_on_github_actions(ostack: OidcStack, tmp_path: Path) -> None:
    out = tmp_path / "receipt.json"
    env = {k: v for k, v in os.environ.items() if k != "KEYTURN_CI_SECRET"}
    env["ACTIONS_ID_TOKEN_REQUEST_URL"] = f"{ostack.oidc_url}/github/token?api-version=2.0"
    env["ACTIONS_ID_TOKEN_REQUEST_TOKEN"] = "keyturn-emulator-runtime-token"
    argv = [
        *KEYTURN, "request", "--url", ostack.bot_url, "--oidc", "--audience", AUDIENCE, "--wait",
        "--timeout", "60", "--keys", str(ostack.keys_file), "--out", str(out),
    ]  # fmt: skip
    since = len(ostack.emulator.calls())
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rid = harness.new_card_request_id(ostack.emulator, since)
    ostack.click("U0CAROL", ostack.card(rid))
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "eyJ" not in stderr  # no token in the output
    assert json.loads(out.read_text())["requesterProof"]["issuer"] == GITHUB_ISS


def test_keyturn_request_oidc_on_gitlab_reads_the_id_tokens_variable(ostack: OidcStack) -> None:
    ostack.job(environment="staging", workflow=".gitlab-ci.yml")
    token = ostack.token("gitlab")
    env = {k: v for k, v in os.environ.items() if k != "KEYTURN_CI_SECRET"}
    env["KEYTURN_ID_TOKEN"] = token
    argv = [*KEYTURN, "request", "--url", ostack.bot_url, "--oidc", "--id-token-var", "KEYTURN_ID_TOKEN"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1, done.stderr  # asked, not yet approved (no --wait)
    rid = done.stdout.strip()
    assert rid == request_id_for(OidcEvidence(token, b""))
    view = ostack.get(f"/v1/requests/{rid}").json()
    assert view["requester"] == "gitlab:alice"
    assert view["scope"]["workflow"] == ".gitlab-ci.yml"


def test_a_gitlab_job_waits_for_approval_and_verifies_with_require_oidc(
    ostack: OidcStack, tmp_path: Path
) -> None:
    """What deploy/gitlab/keyturn.gitlab-ci.yml runs: request with the id_tokens variable, wait, verify."""
    ostack.job(environment="staging", workflow=".gitlab-ci.yml")
    token = ostack.token("gitlab")
    claims = unverified_claims(token)
    out = tmp_path / "keyturn-receipt.json"
    # The job has no shared secret: only the token in the id_tokens variable.
    env = {k: v for k, v in os.environ.items() if k != "KEYTURN_CI_SECRET"}
    env["KEYTURN_ID_TOKEN"] = token
    argv = [
        *KEYTURN, "request", "--url", ostack.bot_url, "--oidc", "--id-token-var", "KEYTURN_ID_TOKEN",
        "--wait", "--timeout", "60", "--keys", str(ostack.keys_file), "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        rid = request_id_for(OidcEvidence(token, b""))
        ostack.emulator.wait_for("chat.postMessage", timeout=20)  # the card is posted while the job waits
        req = ostack.card(rid)
        shown = json.dumps(ostack.emulator.message(req["card"]["channel"], req["card"]["ts"]))
        assert "From the job's OIDC token" in shown
        ostack.click("U0BOB", req)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert "eyJ" not in stdout + stderr  # the token is never echoed into the job log
    receipt = json.loads(out.read_text())
    assert receipt["requester"] == "gitlab:alice"
    assert receipt["requesterProof"] == {
        "issuer": GITLAB_ISS,
        "subject": claims["sub"],
        "run": claims["pipeline_id"],
    }

    scope = ["--repo", "acme/web", "--sha", claims["sha"], "--env", "staging", "--workflow", ".gitlab-ci.yml"]
    verify = [*KEYTURN, "verify", str(out), "--keys", str(ostack.keys_file), *scope, "--require-oidc"]
    done = subprocess.run(verify, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"OK {rid}")
    # The receipt is for this pipeline's scope only: another workflow file is refused.
    other = [a if a != ".gitlab-ci.yml" else "deploy/other.gitlab-ci.yml" for a in verify]
    refused = subprocess.run(other, capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode == 1, refused.stdout


# --- refused, each its own attack -----------------------------------------------------------------------


def test_expired(ostack: OidcStack) -> None:
    ostack.faults(expired=True)
    assert refused(ostack, ostack.token()) == (401, "oidc_expired")


def test_not_yet_valid(ostack: OidcStack) -> None:
    token = ostack.token()
    ostack.set_clock(-600)  # the signer's clock is ten minutes behind the issuer's
    assert refused(ostack, token) == (401, "oidc_not_yet_valid")


def test_wrong_audience(ostack: OidcStack) -> None:
    ostack.faults(wrong_audience=True)
    assert refused(ostack, ostack.token()) == (401, "oidc_wrong_audience")


def _own_key_token(ostack: OidcStack, kid: str | None = None, **claims: Any) -> str:
    base = unverified_claims(ostack.token())
    base.update(claims)
    key = IssuerKey.generate()
    return sign_rs256(key.private, {"typ": "JWT", "alg": "RS256", "kid": kid or key.kid}, base)


def test_unknown_issuer(ostack: OidcStack) -> None:
    token = _own_key_token(ostack, iss="https://token.actions.example")
    assert refused(ostack, token, body_for(token)) == (401, "oidc_unknown_issuer")


def test_issuer_not_allowed_for_this_environment(ostack: OidcStack) -> None:
    ostack.job(workflow=".gitlab-ci.yml")
    token = ostack.token("gitlab")  # gitlab may ask for staging only
    body = {
        "repo": "acme/web",
        "sha": SHA,
        "environment": "production",
        "workflow": ".gitlab-ci.yml",
        "requester": "gitlab:alice",
    }
    assert refused(ostack, token, body) == (403, "oidc_issuer_not_allowed")


def test_alg_none(ostack: OidcStack) -> None:
    claims = unverified_claims(ostack.token())
    key = IssuerKey.generate()
    key.kid = ostack.published_key()["kid"]
    token = alg_none(key, claims)
    assert refused(ostack, token, body_for(token)) == (401, "oidc_bad_alg")


def test_hs256_signed_with_the_issuers_public_key(ostack: OidcStack) -> None:
    claims = unverified_claims(ostack.token())
    jwk = ostack.published_key()

    class Published:  # the public half is all an attacker has
        kid = jwk["kid"]

        def public_jwk(self) -> dict[str, str]:
            return jwk

    token = hs256_with_public_key(Published(), claims)  # type: ignore[arg-type]
    assert refused(ostack, token, body_for(token)) == (401, "oidc_bad_alg")


def test_kid_not_in_the_issuers_keys(ostack: OidcStack) -> None:
    token = _own_key_token(ostack)
    assert refused(ostack, token, body_for(token)) == (401, "oidc_unknown_kid")


def test_forged_token_from_a_key_the_issuer_never_published(ostack: OidcStack) -> None:
    token = _own_key_token(ostack, kid=ostack.published_key()["kid"])
    assert refused(ostack, token, body_for(token)) == (401, "oidc_bad_signature")


def test_rotated_key_is_refused_until_the_operator_pins_it(ostack: OidcStack) -> None:
    ostack.faults(rotate_key=True)
    assert refused(ostack, ostack.token()) == (401, "oidc_unknown_kid")


@pytest.mark.parametrize(("field", "value"), [("repo", "acme/api"), ("sha", "0" * 40)])
def test_token_for_another_repository_or_sha_than_the_body(ostack: OidcStack, field: str, value: str) -> None:
    token = ostack.token()
    resp = ostack.post_oidc(token, body_for(token, **{field: value}))
    assert resp.status_code == 422
    assert resp.json()["error"] == "oidc_body_mismatch"
    assert [f["field"] for f in resp.json()["fields"]] == [field]


def test_token_replayed_after_expiry(ostack: OidcStack) -> None:
    token = ostack.token()
    assert ostack.post_oidc(token, body_for(token)).status_code == 202
    ostack.set_clock(3600)  # an hour later the same token comes back, with a fresh body
    assert refused(ostack, token, body_for(token, title="again")) == (401, "oidc_expired")


def test_shared_secret_is_refused_for_production(ostack: OidcStack) -> None:
    """A correctly signed shared-secret request for production (``ci_secret = false``) is refused as
    ``ci_secret_not_allowed`` (403), not as a bad signature (401): the MAC was good, and the operator must
    learn to switch the job to OIDC rather than hunt for a wrong secret or clock. No card is posted."""
    body = json.dumps(
        {
            "repo": "acme/web",
            "sha": SHA,
            "environment": "production",
            "workflow": WORKFLOW,
            "requester": "x:y",
        }
    ).encode()
    resp = ostack.post("/v1/requests", body)
    assert (resp.status_code, resp.json()["error"]) == (403, "ci_secret_not_allowed")
    assert "OIDC" in resp.json()["message"]
    assert ostack.emulator.calls("chat.postMessage") == []


def _sign_frame(ostack: OidcStack, token: str, **origin_extra: Any) -> dict[str, Any]:
    body = json.dumps(body_for(token)).encode()
    return {
        "v": 1,
        "id": "attack",
        "op": "sign",
        "requestId": request_id_for(OidcEvidence(token, body)),
        "origin": {"kind": "oidc", "token": token, "body": base64.b64encode(body).decode(), **origin_extra},
        "approvals": [],
        "emails": {},
    }


def test_jwks_swapped_by_the_bot_or_redis_is_refused(ostack: OidcStack) -> None:
    """The bot (or whoever rewrites Redis) cannot reach the pinned file: keys or claims of its own in a
    ``sign`` frame are refused, and a token signed with its own key does not verify."""
    attacker = IssuerKey.generate()
    token = _own_key_token(ostack, kid=attacker.kid)
    for extra in ({"jwks": {"keys": [attacker.public_jwk()]}}, {"claims": unverified_claims(token)}):
        reply = ostack.signer_call(_sign_frame(ostack, token, **extra))
        assert reply["error"]["code"] == "bad_request", reply
    reply = ostack.signer_call(_sign_frame(ostack, token))
    assert reply["error"]["code"] == "oidc_unknown_kid", reply
    real = unverified_claims(ostack.token())
    forged = sign_rs256(attacker.private, {"alg": "RS256", "kid": ostack.published_key()["kid"]}, real)
    assert ostack.signer_call(_sign_frame(ostack, forged))["error"]["code"] == "oidc_bad_signature"


def test_body_free_text_altered_for_an_oidc_origin_does_not_change_the_card(ostack: OidcStack) -> None:
    token = ostack.token()
    first = ostack.post_oidc(token, body_for(token, title="Release 42"))
    assert first.status_code == 202
    second = ostack.post_oidc(token, body_for(token, title="URGENT: approve without reading"))
    assert second.status_code == 200  # the same request: its id is bound to the token alone
    assert second.json()["requestId"] == first.json()["requestId"]
    req = ostack.card(first.json()["requestId"])
    shown = json.dumps(ostack.emulator.message(req["card"]["channel"], req["card"]["ts"]))
    assert "URGENT" not in shown
    assert "Release 42" not in shown


def test_self_approval_by_the_oidc_actor_is_refused(ostack: OidcStack) -> None:
    token = ostack.token()  # actor alice -> github:alice -> U0ALICE, an approver of production
    req = ostack.card(ostack.post_oidc(token, body_for(token)).json()["requestId"])
    since = len(ostack.emulator.calls())
    ostack.click("U0ALICE", req)
    call = ostack.emulator.wait_for("chat.postEphemeral", since=since, user="U0ALICE")
    assert "requested this deploy" in json.dumps(call["params"])
    assert ostack.get(f"/v1/requests/{req['requestId']}").json()["approvalsCount"] == 0


def test_a_token_that_brings_its_own_key_in_its_header(ostack: OidcStack) -> None:
    """A token whose header carries a key (``jwk``) is refused before any key is looked at."""
    genuine = ostack.token()
    key = IssuerKey.generate()
    header = {"alg": "RS256", "kid": key.kid, "jwk": key.public_jwk()}
    token = sign_rs256(key.private, header, unverified_claims(genuine))
    assert token.startswith(encode_part(header))
    assert refused(ostack, token, body_for(genuine)) == (401, "oidc_bad_header")


def test_an_oidc_cancel_is_recorded_with_the_tokens_subject(ostack: OidcStack) -> None:
    """The complete record (issue 15) for OIDC pipelines: the cancel call's token is the evidence; the signer
    checks it against the pinned keys (same issuer, same repository) and records its subject."""
    token = ostack.token()
    resp = ostack.post_oidc(token, body_for(token))
    assert resp.status_code == 202, resp.text
    rid = resp.json()["requestId"]
    cancel = ostack.http.post(
        f"{ostack.bot_url}/v1/requests/{rid}/cancel", headers={"Authorization": f"Bearer {ostack.token()}"}
    )
    assert cancel.status_code == 200, cancel.text
    audit = ostack.workdir / "audit.jsonl"

    def rows() -> list[dict[str, Any]]:
        return [r for r in outcome_rows(audit.read_bytes()) if r["requestId"] == rid]

    wait_until(lambda: bool(rows()), 10, "the cancel in the audit log")  # another process's file: polled
    [row] = rows()
    assert (row["outcome"], row["by"]) == ("cancelled", "oidc:repo:acme/web:environment:production")


def test_a_token_of_another_issuer_cannot_read_a_request_of_the_same_repository_name(
    ostack: OidcStack,
) -> None:
    """OIDC reads are bound to the issuer and repository that made the request, not to a repository *name*:
    with github.com and a GitLab issuer both in the policy, a GitLab project at the path ``acme/web`` used to
    read (status, receipt) the GitHub repository ``acme/web``'s requests. It gets 404, as for any request not
    its own; the GitHub repository's own token still reads it."""
    ostack.job(environment="staging")  # staging admits both issuers
    github = ostack.token("github")
    resp = ostack.post_oidc(github, body_for(github))
    assert resp.status_code == 202, resp.text
    rid = resp.json()["requestId"]
    gitlab = ostack.token("gitlab")
    assert unverified_claims(gitlab)["project_path"] == unverified_claims(github)["repository"]
    for path in (f"/v1/requests/{rid}", f"/v1/requests/{rid}/receipt"):
        read = ostack.http.get(ostack.bot_url + path, headers={"Authorization": f"Bearer {gitlab}"})
        assert (read.status_code, read.json()["error"]) == (404, "unknown_request"), path
    own = ostack.http.get(
        f"{ostack.bot_url}/v1/requests/{rid}", headers={"Authorization": f"Bearer {ostack.token('github')}"}
    )
    assert own.status_code == 200, own.text
