"""OIDC ID tokens (issue 11): strict JWS parsing, RS256 against pinned keys, claims -> scope, the OIDC origin
in ``assess``, and receipt format 1.1's ``requesterProof``."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyturn.emulator.oidc import IssuerKey, Job, encode_part
from keyturn.signer import card, oidc, wire
from keyturn.signer import evidence as ev
from keyturn.signer.errors import KeyturnError, VerificationError
from keyturn.signer.oidc import Issuer, OidcError, parse_jwks, verify_token
from keyturn.signer.policy import Policy
from keyturn.signer.receipt import (
    ApprovalEntry,
    ApproverRef,
    RequesterProof,
    Scope,
    parse_receipt,
    unsigned_receipt,
)
from tests.oidc_tokens import (
    AUDIENCE,
    GITHUB_ISS,
    GITLAB_ISS,
    alg_none,
    claims_for,
    forged,
    genuine,
    hs256_with_public_key,
    jwks_json,
)
from tests.signer.conftest import SHA, SLACK_SECRET, at, click, click_body, rid_of

NOW = 1_800_000_000
KEY = IssuerKey.generate()
GITLAB_KEY = IssuerKey.generate()


def _issuers(*keys: IssuerKey) -> dict[str, Issuer]:
    gh = parse_jwks(jwks_json(*(keys or (KEY,))), "RS256")
    gl = parse_jwks(jwks_json(GITLAB_KEY), "RS256")
    return {
        "github": Issuer("github", GITHUB_ISS, AUDIENCE, "RS256", "github", gh),
        "gitlab": Issuer("gitlab", GITLAB_ISS, AUDIENCE, "RS256", "gitlab", gl),
    }


ISSUERS = _issuers()


def code(token: str, now: int | None = NOW, issuers: dict[str, Issuer] | None = None) -> str:
    with pytest.raises(OidcError) as exc:
        verify_token(token, issuers or ISSUERS, at(now) if now is not None else None)
    return exc.value.code


# --- verification -------------------------------------------------------------------------------------------


def test_a_genuine_github_token_verifies_and_maps_to_scope_and_requester() -> None:
    token = genuine(KEY, claims_for("github", NOW))
    verified = verify_token(token, ISSUERS, at(NOW))
    who = oidc.identity_from_claims("github", "https://github.com", verified.claims)
    assert (who.repo, who.sha, who.environment) == ("acme/web", SHA, "production")
    assert who.workflow == ".github/workflows/deploy.yml"  # job_workflow_ref minus "acme/web/" and "@ref"
    assert who.requester == "github:alice"
    assert who.ref == "refs/heads/main"
    assert who.run == "1234567890/1"
    assert who.run_url == "https://github.com/acme/web/actions/runs/1234567890/attempts/1"


def test_a_genuine_gitlab_token_verifies_and_maps_ci_config_ref_uri() -> None:
    job = Job(repository="acme/api", workflow=".gitlab-ci.yml", actor="bob")
    token = genuine(GITLAB_KEY, claims_for("gitlab", NOW, job=job))
    verified = verify_token(token, ISSUERS, at(NOW))
    who = oidc.identity_from_claims("gitlab", GITLAB_ISS, verified.claims)
    assert (who.repo, who.workflow, who.requester) == ("acme/api", ".gitlab-ci.yml", "gitlab:bob")
    assert who.run_url == f"{GITLAB_ISS}/acme/api/-/pipelines/987654"


def test_a_reusable_workflow_keeps_its_own_repository_in_the_name() -> None:
    claims = claims_for("github", NOW, job_workflow_ref="acme/shared/.github/workflows/d.yml@refs/tags/v1")
    who = oidc.identity_from_claims("github", "https://github.com", claims)
    assert who.workflow == "acme/shared/.github/workflows/d.yml"


def test_expired() -> None:
    assert code(genuine(KEY, claims_for("github", NOW - 400))) == "oidc_expired"


def test_not_yet_valid() -> None:
    assert code(genuine(KEY, claims_for("github", NOW + 600))) == "oidc_not_yet_valid"
    assert code(genuine(KEY, claims_for("github", NOW, nbf=NOW + 600))) == "oidc_not_yet_valid"


def test_small_skew_is_tolerated() -> None:
    verify_token(genuine(KEY, claims_for("github", NOW + 30)), ISSUERS, at(NOW))


def test_wrong_audience() -> None:
    assert code(genuine(KEY, claims_for("github", NOW, aud="https://other.example"))) == "oidc_wrong_audience"
    assert code(genuine(KEY, claims_for("github", NOW, aud=[AUDIENCE, "x"]))) == "oidc_wrong_audience"


def test_unknown_issuer() -> None:
    token = genuine(KEY, claims_for("github", NOW, iss="https://token.actions.example"))
    assert code(token) == "oidc_unknown_issuer"


def test_alg_none() -> None:
    assert code(alg_none(KEY, claims_for("github", NOW))) == "oidc_bad_alg"


def test_hs256_signed_with_the_issuers_public_key() -> None:
    assert code(hs256_with_public_key(KEY, claims_for("github", NOW))) == "oidc_bad_alg"


def test_kid_not_in_the_issuers_keys() -> None:
    assert code(genuine(KEY, claims_for("github", NOW), kid="not-a-published-kid")) == "oidc_unknown_kid"


def test_a_gitlab_key_does_not_sign_for_github() -> None:
    assert code(genuine(GITLAB_KEY, claims_for("github", NOW))) == "oidc_unknown_kid"


def test_forged_token_from_a_key_the_issuer_never_published() -> None:
    assert code(forged(claims_for("github", NOW), KEY.kid)) == "oidc_bad_signature"


def test_a_rotated_key_verifies_only_once_pinned() -> None:
    new = IssuerKey.generate()
    token = genuine(new, claims_for("github", NOW))
    assert code(token) == "oidc_unknown_kid"
    verify_token(token, _issuers(new, KEY), at(NOW))  # re-pinned: old and new keys both
    verify_token(genuine(KEY, claims_for("github", NOW)), _issuers(new, KEY), at(NOW))


@pytest.mark.parametrize("member", ["jku", "jwk", "x5u", "x5c", "crit"])
def test_a_header_that_brings_its_own_key_is_refused(member: str) -> None:
    token = genuine(KEY, claims_for("github", NOW), **{member: "https://evil.example/jwks"})
    assert code(token) == "oidc_bad_header"


def test_signing_time_skips_only_the_time_checks() -> None:
    old = genuine(KEY, claims_for("github", NOW - 4000))
    assert verify_token(old, ISSUERS, None).issued_at == NOW - 4000
    assert code(forged(claims_for("github", NOW - 4000), KEY.kid), now=None) == "oidc_bad_signature"


def _resign(header: str, payload: str) -> str:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    sig = KEY.private.sign(f"{header}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{header}.{payload}.{oidc.b64url_encode(sig)}"


def test_duplicate_members_are_refused_even_when_signed() -> None:
    header = encode_part({"alg": "RS256", "kid": KEY.kid})
    claims = json.dumps(claims_for("github", NOW))[:-1] + ', "repository": "acme/evil"}'
    payload = oidc.b64url_encode(claims.encode())
    assert code(_resign(header, payload)) == "oidc_malformed"


def test_padding_and_non_canonical_base64url_are_refused() -> None:
    token = genuine(KEY, claims_for("github", NOW))
    h, p, s = token.split(".")
    assert code(f"{h}=.{p}.{s}" if len(h) % 4 else f"{h}.{p}.{s}==") == "oidc_malformed"
    assert code(f"{h}.{p}.{s.replace('-', '+').replace('_', '/')}") in {
        "oidc_malformed",
        "oidc_bad_signature",
    }
    assert code(token + ".x") == "oidc_malformed"


@pytest.mark.parametrize("value", [1.8e9, True, "1800000300", None])
def test_times_must_be_whole_seconds(value: object) -> None:
    assert code(genuine(KEY, claims_for("github", NOW, exp=value or "x"))) == "oidc_malformed"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_tokens_never_verify(data: st.DataObject) -> None:
    token = genuine(KEY, claims_for("github", NOW))
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ "
    i = data.draw(st.integers(0, len(token) - 1))
    op = data.draw(st.sampled_from(["replace", "insert", "delete"]))
    ch = data.draw(st.sampled_from(alphabet))
    if op == "replace":
        mutated = token[:i] + ch + token[i + 1 :]
    elif op == "insert":
        mutated = token[:i] + ch + token[i:]
    else:
        mutated = token[:i] + token[i + 1 :]
    if mutated == token:
        return
    with pytest.raises(OidcError):
        verify_token(mutated, ISSUERS, at(NOW))


# --- pinned key sets ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"kty": "EC"}, "kty"),
        ({"alg": "HS256"}, "alg"),
        ({"use": "enc"}, "use"),
        ({"d": "AQAB"}, "private"),
        ({"n": "AQAB"}, "weak"),
        ({"e": "AAEAAQ"}, "leading zero"),
    ],
)
def test_a_pinned_key_that_does_not_fit_rs256_is_refused(change: dict[str, str], why: str) -> None:
    jwk = {**KEY.public_jwk(), **change}
    with pytest.raises(OidcError) as exc:
        parse_jwks(json.dumps({"keys": [jwk]}).encode(), "RS256")
    assert exc.value.code == "bad_oidc_keys", why


def test_a_pinned_key_set_with_a_kid_twice_is_refused() -> None:
    with pytest.raises(OidcError):
        parse_jwks(jwks_json(KEY, KEY), "RS256")


# --- the OIDC origin in the trust core ----------------------------------------------------------------------

POLICY_TOML = f"""\
version = 1

[slack]
command = "/keyturn"
team_id = "T0TEAM"

[identities]
"github:alice" = "U0ALICE"

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
kind = "gitlab"

[environments.production]
channel = "C0DEPLOYS"
approvers = ["U0BOB", "U0CAROL", "U0ALICE"]
required_approvals = 1
request_ttl = "30m"
receipt_ttl = "15m"
ci_secret = false

[environments.production.oidc]
issuers = ["github"]
repositories = ["acme/web"]
branches = ["main"]

[environments.staging]
channel = "C0STAGING"
approvers = ["U0BOB"]
required_approvals = 1
request_ttl = "30m"
receipt_ttl = "15m"
"""
POLICY = Policy.from_bytes(POLICY_TOML.encode())


def body_for(claims: dict[str, object], **over: object) -> bytes:
    doc = {
        "repo": "acme/web",
        "sha": SHA,
        "environment": "production",
        "workflow": ".github/workflows/deploy.yml",
        "requester": "github:alice",
        "title": "Ship it",
        **over,
    }
    return json.dumps(doc).encode()


def origin(token: str, body: bytes | None = None) -> wire.OidcOrigin:
    return wire.OidcOrigin(token=token, body=body if body is not None else body_for({}))


def check(token: str, body: bytes | None = None) -> ev.RequestClaim:
    return ev.check_oidc_request(token, body or body_for({}), POLICY, ISSUERS, at(NOW))


def refusal(token: str, body: bytes | None = None) -> KeyturnError:
    with pytest.raises(KeyturnError) as exc:
        check(token, body)
    return exc.value


def test_a_genuine_request_is_accepted_with_its_proof() -> None:
    claim = check(genuine(KEY, claims_for("github", NOW)))
    assert claim.scope == Scope("acme/web", SHA, "production", ".github/workflows/deploy.yml")
    assert claim.proof == RequesterProof(GITHUB_ISS, "repo:acme/web:environment:production", "1234567890/1")
    assert claim.title is None  # the body's free text is never taken


@pytest.mark.parametrize(
    ("field", "value"),
    [("repo", "acme/other"), ("sha", "0" * 40), ("workflow", "deploy.yml"), ("requester", "github:mallory")],
)
def test_a_body_that_disagrees_with_its_token_is_refused_naming_the_field(field: str, value: str) -> None:
    exc = refusal(genuine(KEY, claims_for("github", NOW)), body_for({}, **{field: value}))
    assert exc.code == "oidc_body_mismatch"
    assert set(getattr(exc, "fields", {})) == {field}


def test_environment_policy_issuer_repository_branch() -> None:
    gl_job = Job(workflow=".gitlab-ci.yml")
    gl = genuine(GITLAB_KEY, claims_for("gitlab", NOW, job=gl_job))
    assert refusal(gl, body_for({}, workflow=".gitlab-ci.yml", requester="gitlab:alice")).code == (
        "oidc_issuer_not_allowed"
    )
    stg = genuine(KEY, claims_for("github", NOW, environment="staging"))
    assert refusal(stg, body_for({}, environment="staging")).code == "oidc_issuer_not_allowed"
    other = genuine(KEY, claims_for("github", NOW, job=Job(repository="acme/api")))
    other_body = body_for({}, repo="acme/api")
    assert refusal(other, other_body).code == "oidc_repository_not_allowed"
    branch = genuine(KEY, claims_for("github", NOW, ref="refs/heads/feature", job_workflow_ref=None))
    assert refusal(branch).code in {"oidc_claim_missing", "oidc_branch_not_allowed"}
    branch = genuine(
        KEY,
        claims_for(
            "github",
            NOW,
            ref="refs/heads/feature",
            job_workflow_ref="acme/web/.github/workflows/deploy.yml@x",
        ),
    )
    assert refusal(branch).code == "oidc_branch_not_allowed"


def test_a_pull_request_target_job_is_refused_under_a_branch_rule() -> None:
    """Its ``ref`` is the base branch whatever pull request started it: the branch rule cannot speak for the
    code asking, so without an explicit ``events`` rule such a job is refused (fail closed)."""
    token = genuine(KEY, claims_for("github", NOW, event_name="pull_request_target"))
    assert refusal(token).code == "oidc_event_not_allowed"
    assert check(genuine(KEY, claims_for("github", NOW, event_name="push"))).scope.environment == "production"


@pytest.mark.parametrize(
    ("event", "allowed"),
    [("push", True), ("workflow_dispatch", True), ("pull_request_target", True), ("schedule", False),
     ("pull_request", False), (None, False)],
)  # fmt: skip
def test_an_events_rule_admits_exactly_the_listed_events(event: str | None, allowed: bool) -> None:
    policy = Policy.from_bytes(
        POLICY_TOML.replace(
            'branches = ["main"]',
            'branches = ["main"]\nevents = ["push", "workflow_dispatch", "pull_request_target"]',
        ).encode()
    )
    claims = claims_for("github", NOW)
    claims.pop("event_name", None)
    if event is not None:
        claims["event_name"] = event
    token = genuine(KEY, claims)
    if allowed:
        ev.check_oidc_request(token, body_for({}), policy, ISSUERS, at(NOW))
    else:
        with pytest.raises(KeyturnError) as exc:
            ev.check_oidc_request(token, body_for({}), policy, ISSUERS, at(NOW))
        assert exc.value.code == "oidc_event_not_allowed"


def test_a_token_without_an_environment_claim_is_refused() -> None:
    assert refusal(genuine(KEY, claims_for("github", NOW, job=Job(environment=None)))).code == (
        "oidc_claim_missing"
    )


def test_the_ci_secret_is_refused_where_the_policy_says_so() -> None:
    with pytest.raises(KeyturnError) as exc:
        ev.check_ci_secret_allowed(body_for({}), POLICY)
    assert exc.value.code == "ci_secret_not_allowed"
    ev.check_ci_secret_allowed(body_for({}, environment="staging"), POLICY)


def test_the_card_shows_only_what_the_token_proves() -> None:
    token = genuine(KEY, claims_for("github", NOW))
    o1, o2 = origin(token), origin(token, body_for({}, title="Totally harmless, approve fast"))
    cards = []
    for o in (o1, o2):
        evid = ev.OidcEvidence(o.token, o.body)
        facts = ev.card_facts(ev.request_id_for(evid), ev.origin_claim(evid, POLICY), evid, POLICY)
        blocks = card.render_pending(
            facts,
            environments=POLICY.environments.keys(),
            confirm=True,
            approvals="0 of 1",
            expires="14:05 UTC (in 25m)",
        )
        cards.append(json.dumps(blocks))
        assert "Ship it" not in json.dumps(blocks)
        assert "harmless" not in json.dumps(blocks)
        assert card.PROVEN_BLOCK in json.dumps(blocks)
    assert cards[0] == cards[1]


def _assess(token: str, user: str, now: int = NOW + 60) -> ev.Assessment:
    o = origin(token)
    c = click(NOW + 30, click_body(o, user, policy=POLICY))
    return ev.assess(
        policy=POLICY,
        secrets=ev.Secrets(SLACK_SECRET, "unused-ci-secret-0123456789abcdef"),
        request_id=rid_of(o),
        origin=ev.OidcEvidence(o.token, o.body),
        clicks=[ev.SlackEvidence(c.body, c.timestamp, c.signature)],
        emails={},
        now=at(now),
        oidc_issuers=ISSUERS,
    )


def test_assess_signs_an_oidc_request_with_its_proof() -> None:
    decision = _assess(genuine(KEY, claims_for("github", NOW)), "U0BOB")
    assert decision.requester == "github:alice"
    assert decision.requester_proof is not None
    assert decision.requester_proof.issuer == GITHUB_ISS


def test_assess_refuses_self_approval_by_the_mapped_oidc_actor() -> None:
    with pytest.raises(KeyturnError) as exc:
        _assess(genuine(KEY, claims_for("github", NOW)), "U0ALICE")
    assert exc.value.code == "self_approval"


def test_assess_refuses_a_forged_token_and_one_past_the_request_lifetime() -> None:
    with pytest.raises(KeyturnError) as exc:
        _assess(forged(claims_for("github", NOW), KEY.kid), "U0BOB")
    assert exc.value.code == "oidc_bad_signature"
    with pytest.raises(KeyturnError) as exc:
        _assess(genuine(KEY, claims_for("github", NOW)), "U0BOB", now=NOW + 31 * 60)
    assert exc.value.code == "request_expired"


def test_a_sign_frame_cannot_bring_its_own_keys_or_claims() -> None:
    token = genuine(KEY, claims_for("github", NOW))
    extras: list[dict[str, object]] = [{"jwks": {"keys": []}}, {"claims": {"repo": "x"}}, {"issuer": "x"}]
    for extra in extras:
        frame = {
            "v": 1,
            "id": "x",
            "op": "sign",
            "requestId": rid_of(origin(token)),
            "origin": {"kind": "oidc", "token": token, "body": "e30=", **extra},
            "approvals": [],
            "emails": {},
        }
        with pytest.raises(wire.WireError) as exc:
            wire.parse_request(json.dumps(frame).encode())
        assert exc.value.code == "bad_request"


# --- receipt format 1.1 -------------------------------------------------------------------------------------


def _receipt(proof: RequesterProof | None) -> dict[str, object]:
    t = datetime(2026, 2, 28, 16, 0, tzinfo=UTC)
    return unsigned_receipt(
        request_id="req_01J0000000000000000000000A",
        status="APPROVED",
        issued_at=t,
        expires_at=t.replace(hour=17),
        scope=Scope("acme/web", SHA, "production", "deploy.yml"),
        approver=ApproverRef("U0BOB", ""),
        approvals=[ApprovalEntry("U0BOB", "", t)],
        requester="github:alice",
        key_id="k1",
        requester_proof=proof,
    )


def test_receipt_1_1_carries_the_proof_and_1_0_stays_1_0() -> None:
    proven = _receipt(RequesterProof(GITHUB_ISS, "repo:acme/web:environment:production", "1/1"))
    assert proven["version"] == "1.1"
    assert parse_receipt(proven, signed=False).requester_proof is not None
    plain = _receipt(None)
    assert plain["version"] == "1.0"
    assert "requesterProof" not in plain
    with pytest.raises(VerificationError) as exc:  # 1.0 knows no requesterProof
        parse_receipt({**plain, "requesterProof": proven["requesterProof"]}, signed=False)
    assert exc.value.code == "malformed"
    with pytest.raises(VerificationError):  # and the proof is closed
        parse_receipt({**proven, "requesterProof": {"issuer": "x", "subject": "y"}}, signed=False)
