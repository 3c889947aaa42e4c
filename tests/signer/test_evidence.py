"""Pure evidence checks: signatures, strict parsing, the card rule, and the sign decision (``assess``)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import timedelta
from urllib.parse import parse_qsl, urlencode

import pytest

from keyturn.signer import card
from keyturn.signer import evidence as ev
from keyturn.signer.evidence import EvidenceError, Secrets
from keyturn.signer.policy import Policy, UnknownEnvironment
from keyturn.signer.receipt import Scope
from tests.signer.conftest import (
    CI_SECRET,
    OTHER_SHA,
    POLICY_TOML,
    SCOPE,
    SHA,
    SLACK_SECRET,
    Origin,
    as_evidence,
    at,
    ci_origin,
    ci_request_body,
    click,
    click_body,
    new_id,
    rid_of,
    slash_body,
    slash_origin,
    true_card,
)

POLICY = Policy.from_bytes(POLICY_TOML.encode())
SECRETS = Secrets(SLACK_SECRET, CI_SECRET)
T0 = 1_800_000_000  # the origin request's timestamp in these tests

# Slack's documented example (platform facts §1.1).
SLACK_DOC_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
SLACK_DOC_TS = "1531420618"
SLACK_DOC_BODY = (
    "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&"
    "channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&"
    "response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&"
    "trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
)
SLACK_DOC_SIG = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"


def code_of(exc: pytest.ExceptionInfo[EvidenceError]) -> str:
    return exc.value.code


# --- signatures -----------------------------------------------------------------------------------------


def test_slack_known_answer_vector() -> None:
    assert ev.slack_signature(SLACK_DOC_SECRET, SLACK_DOC_BODY, SLACK_DOC_TS) == SLACK_DOC_SIG
    assert ev.verify_slack_request(
        SLACK_DOC_SECRET, SLACK_DOC_BODY, SLACK_DOC_TS, SLACK_DOC_SIG, at(1531420618)
    )


@pytest.mark.parametrize(
    ("body", "ts", "sig", "code"),
    [
        (SLACK_DOC_BODY + "x", SLACK_DOC_TS, SLACK_DOC_SIG, "bad_slack_signature"),
        (SLACK_DOC_BODY, "1531420619", SLACK_DOC_SIG, "bad_slack_signature"),
        (SLACK_DOC_BODY, "abc", SLACK_DOC_SIG, "bad_slack_signature"),
        (SLACK_DOC_BODY, " 1531420618", SLACK_DOC_SIG, "bad_slack_signature"),
        (SLACK_DOC_BODY, "", SLACK_DOC_SIG, "bad_slack_signature"),
        (SLACK_DOC_BODY, SLACK_DOC_TS, SLACK_DOC_SIG.upper(), "bad_slack_signature"),
        (SLACK_DOC_BODY, SLACK_DOC_TS, SLACK_DOC_SIG.replace("v0=", "v1="), "bad_slack_signature"),
        (SLACK_DOC_BODY, SLACK_DOC_TS, "", "bad_slack_signature"),
    ],
)
def test_slack_forgeries_are_refused_with_a_typed_error(body: str, ts: str, sig: str, code: str) -> None:
    with pytest.raises(EvidenceError) as exc:
        ev.verify_slack_request(SLACK_DOC_SECRET, body, ts, sig, at(1531420618))
    assert code_of(exc) == code


@pytest.mark.parametrize(("skew", "ok"), [(-299, True), (299, True), (-301, False), (301, False)])
def test_arrival_window_is_five_minutes(skew: int, ok: bool) -> None:
    ts = str(T0)
    body = b'{"a":1}'
    sig = ev.ci_signature(CI_SECRET, "POST", "/v1/requests", body, ts)
    if ok:
        assert ev.verify_ci_request(CI_SECRET, "POST", "/v1/requests", body, ts, sig, at(T0 - skew)) == T0
    else:
        with pytest.raises(EvidenceError) as exc:
            ev.verify_ci_request(CI_SECRET, "POST", "/v1/requests", body, ts, sig, at(T0 - skew))
        assert code_of(exc) == "stale_request"


@pytest.mark.parametrize(
    ("method", "path", "body", "secret"),
    [
        ("POST", "/v1/requests", b'{"a":2}', CI_SECRET),  # tampered body
        ("GET", "/v1/requests", b'{"a":1}', CI_SECRET),  # another method
        ("POST", "/v1/requests/x", b'{"a":1}', CI_SECRET),  # another path
        ("POST", "/v1/requests", b'{"a":1}', "another-secret-0123456789"),
        ("post", "/v1/requests", b'{"a":1}', CI_SECRET),  # method must be upper case
        ("POST", "/v1/requests?x=1", b'{"a":1}', CI_SECRET),  # path without query string
    ],
)
def test_ci_forgeries_are_refused(method: str, path: str, body: bytes, secret: str) -> None:
    ts = str(T0)
    sig = ev.ci_signature(secret, method, path, body, ts) if secret != CI_SECRET else None
    good = ev.ci_signature(CI_SECRET, "POST", "/v1/requests", b'{"a":1}', ts)
    with pytest.raises(EvidenceError) as exc:
        ev.verify_ci_request(CI_SECRET, method, path, body, ts, sig or good, at(T0))
    assert code_of(exc) == "bad_ci_signature"


def test_callback_mac_is_no_oracle_for_ci_requests() -> None:
    body, ts = b'{"requestId":"x"}', str(T0)
    assert ev.callback_signature(CI_SECRET, "/hook", ts, body) != ev.ci_signature(
        CI_SECRET, "POST", "/hook", body, ts
    )


# --- CI body and slash command --------------------------------------------------------------------------


def test_ci_body_parses_to_scope_and_requester() -> None:
    body = ev.parse_ci_request_body(ci_request_body(ref="main", runUrl="https://ci.example/run/1"))
    assert body.scope == SCOPE
    assert body.requester == "github:alice"


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"sha": SHA.upper()}, "sha"),
        ({"sha": SHA[:12]}, "sha"),
        ({"repo": "acme"}, "repo"),
        ({"repo": "acme/web/extra"}, "repo"),
        ({"repo": 7}, "repo"),
        ({"environment": "prod uction"}, "environment"),
        ({"workflow": "deploy yml"}, "workflow"),
        ({"requester": ""}, "requester"),
        ({"callbackUrl": "file:///etc/passwd"}, "callbackUrl"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_ci_body_names_each_bad_field(doc: dict[str, object], field: str) -> None:
    raw = json.loads(ci_request_body())
    raw.update(doc)
    with pytest.raises(EvidenceError) as exc:
        ev.parse_ci_request_body(json.dumps(raw).encode())
    assert code_of(exc) == "bad_request_body"
    assert field in exc.value.fields


@pytest.mark.parametrize(
    "raw",
    [
        b'{"repo":"acme/web","repo":"evil/web"}',  # duplicate names: parsers could disagree
        b"\xff\xfe",
        b"[]",
        b"not json",
        b" " * (ev.CI_BODY_MAX + 1),
    ],
)
def test_ci_body_malformed(raw: bytes) -> None:
    with pytest.raises(EvidenceError) as exc:
        ev.parse_ci_request_body(raw)
    assert code_of(exc) == "bad_request_body"


def test_ci_body_missing_field_is_required() -> None:
    raw = json.loads(ci_request_body())
    del raw["workflow"]
    with pytest.raises(EvidenceError) as exc:
        ev.parse_ci_request_body(json.dumps(raw).encode())
    assert exc.value.fields == {"workflow": "required"}


def test_slash_command_parses_even_with_payload_in_the_text() -> None:
    claim = ev.parse_slash_request(slash_body(f"request acme/payload-svc {SHA} production"), POLICY)
    assert claim.scope == Scope("acme/payload-svc", SHA, "production", ev.DEFAULT_WORKFLOW)
    assert claim.requester == "slack:U0ALICE"
    with_workflow = ev.parse_slash_request(
        slash_body(f"request acme/web {SHA} production deploy.yml"), POLICY
    )
    assert with_workflow.scope == SCOPE


@pytest.mark.parametrize(
    "body",
    [
        slash_body(f"request acme/web {SHA} production", command="/other"),
        slash_body(f"request acme/web {SHA} production", team="T0EVIL"),
        slash_body(f"status acme/web {SHA} production"),
        slash_body(f"request acme/web {SHA[:7]} production"),
        slash_body("request acme/web"),
        slash_body(f"request acme/web {SHA} production", user="bob"),
        slash_body(f"request acme/web {SHA} production") + "&user_id=U0BOB",  # repeated field
        urlencode({"payload": "{}", "command": "/keyturn"}),
    ],
)
def test_slash_command_refusals(body: str) -> None:
    with pytest.raises(EvidenceError) as exc:
        ev.parse_slash_request(body, POLICY)
    assert code_of(exc) == "bad_origin"


# --- clicks and the card ---------------------------------------------------------------------------------


def facts_of(origin: Origin) -> card.CardFacts:
    evidence = as_evidence(origin)
    return ev.card_facts(rid_of(origin), ev.origin_claim(evidence, POLICY), evidence, POLICY)


def test_click_on_the_true_card_parses_user_team_and_time() -> None:
    o = ci_origin(T0)
    parsed = ev.parse_approve_click(click_body(o, "U0BOB"), T0 + 5, facts_of(o), POLICY)
    assert (parsed.user_id, parsed.team_id, parsed.request_id, parsed.at) == (
        "U0BOB",
        "T0TEAM",
        rid_of(o),
        T0 + 5,
    )


def test_the_card_shows_the_scope_as_plain_text_fields() -> None:
    blocks = true_card(ci_origin(T0))
    scope_block = next(b for b in blocks if b["block_id"] == card.SCOPE_BLOCK)
    assert [f["type"] for f in scope_block["fields"]] == ["plain_text"] * 4
    assert [f["text"].split("\n")[1] for f in scope_block["fields"]] == [
        "acme/web",
        SHA,
        "production",
        "deploy.yml",
    ]


OTHER = ci_origin(T0 + 1, ci_request_body(Scope("acme/web", OTHER_SHA, "production", "deploy.yml")))


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (lambda o: click_body(o, "U0BOB", value=new_id()), "wrong_request"),
        (lambda o: click_body(o, "U0BOB", action_id="deny"), "bad_click"),
        (lambda o: click_body(o, "U0BOB", block_id="elsewhere"), "bad_click"),
        (lambda o: click_body(o, "U0BOB", team="T0EVIL"), "wrong_team"),
        (lambda o: click_body(o, "not-a-user"), "bad_click"),
        (lambda o: click_body(o, "U0BOB", blocks=true_card(OTHER)), "card_mismatch"),
        (lambda o: click_body(o, "U0BOB") + "&payload=%7B%7D", "bad_click"),
        (
            lambda o: urlencode({"payload": '{"type":"block_actions","type":"view_submission"}'}),
            "bad_click",
        ),
        (lambda o: "payload=%7Bnot-json", "bad_click"),
    ],
)
def test_click_refusals(make: object, code: str) -> None:
    o = ci_origin(T0)
    assert callable(make)
    with pytest.raises(EvidenceError) as exc:
        ev.parse_approve_click(make(o), T0, facts_of(o), POLICY)
    assert code_of(exc) == code


def test_ephemeral_click_without_message_is_refused() -> None:
    o = ci_origin(T0)
    payload = json.loads(dict(parse_qsl(click_body(o, "U0BOB")))["payload"])
    del payload["message"]
    with pytest.raises(EvidenceError) as exc:
        ev.parse_approve_click(urlencode({"payload": json.dumps(payload)}), T0, facts_of(o), POLICY)
    assert code_of(exc) == "card_mismatch"


# --- assess: the sign decision --------------------------------------------------------------------------


def decide(
    clicks: Sequence[tuple[int, str]],
    *,
    now: int = T0 + 120,
    rid: str | None = None,
    origin: Origin | None = None,
    emails: Mapping[str, str] | None = None,
    click_origin: Origin | None = None,
) -> ev.Assessment:
    the_origin = origin or ci_origin(T0)
    evid = []
    for ts, user in clicks:
        c = click(ts, click_body(click_origin or the_origin, user))
        evid.append(ev.SlackEvidence(c.body, c.timestamp, c.signature))
    return ev.assess(
        policy=POLICY,
        secrets=SECRETS,
        request_id=rid or rid_of(the_origin),
        origin=as_evidence(the_origin),
        clicks=evid,
        emails=emails or {},
        now=at(now),
    )


def refused(code: str, clicks: Sequence[tuple[int, str]], **kw: object) -> None:
    with pytest.raises((EvidenceError, UnknownEnvironment)) as exc:
        decide(clicks, **kw)  # type: ignore[arg-type]
    assert exc.value.code == code, exc.value


def test_two_of_n_yields_the_approvals_in_click_order() -> None:
    a = decide([(T0 + 60, "U0CAROL"), (T0 + 30, "U0BOB")], emails={"U0BOB": "bob@example.com"})
    assert [x.user_id for x in a.approvals] == ["U0BOB", "U0CAROL"]
    assert a.approver.user_id == "U0CAROL"  # the later click completed the quorum
    assert a.approvals[0].email == "bob@example.com"
    assert a.approver.email == ""
    assert a.scope == SCOPE
    assert a.requester == "github:alice"
    assert a.issued_at == at(T0 + 120)
    assert a.expires_at - a.issued_at == timedelta(minutes=15)


def test_more_clicks_than_needed_count_up_to_the_quorum() -> None:
    a = decide([(T0 + 10, "U0BOB"), (T0 + 20, "U0CAROL"), (T0 + 30, "U0XTRA")])  # U0XTRA: pinned
    assert [x.user_id for x in a.approvals] == ["U0BOB", "U0CAROL"]


def test_the_same_user_twice_counts_once() -> None:
    refused("insufficient_approvals", [(T0 + 10, "U0BOB"), (T0 + 20, "U0BOB")])


def test_under_quorum_and_no_clicks() -> None:
    refused("insufficient_approvals", [(T0 + 10, "U0BOB")])
    refused("insufficient_approvals", [])


def test_self_approval_via_identities_is_refused() -> None:
    refused("self_approval", [(T0 + 10, "U0BOB"), (T0 + 20, "U0ALICE")])


def test_self_approval_via_email_requester_is_refused() -> None:
    refused(
        "self_approval",
        [(T0 + 10, "U0BOB"), (T0 + 20, "U0CAROL")],
        origin=ci_origin(T0, ci_request_body(requester="carol@example.com")),
        emails={"U0CAROL": "Carol@Example.com"},
    )


def test_self_approval_allowed_where_the_policy_says_so() -> None:
    o = slash_origin(T0, slash_body(f"request acme/web {SHA} staging", user="U0ALICE"))
    a = decide([(T0 + 5, "U0ALICE")], origin=o, now=T0 + 10)
    assert a.requester == "slack:U0ALICE"
    assert a.approver.user_id == "U0ALICE"
    assert a.expires_at - a.issued_at == timedelta(hours=1)


def test_unauthorized_user_is_refused_and_pinned_group_members_are_admitted() -> None:
    refused("not_authorized", [(T0 + 10, "U0BOB"), (T0 + 20, "U0MALLORY")])
    a = decide([(T0 + 10, "U0BOB"), (T0 + 20, "U0ONCALL")])  # pinned in the policy's [groups.S0ONCALL]
    assert a.approver.user_id == "U0ONCALL"


def test_request_lifetime_bounds_the_evidence_and_the_signing() -> None:
    ttl = 30 * 60
    refused("request_expired", [(T0 + 10, "U0BOB"), (T0 + 20, "U0CAROL")], now=T0 + ttl)
    assert decide([(T0 + 10, "U0BOB"), (T0 + 20, "U0CAROL")], now=T0 + ttl - 1)
    refused("evidence_outside_lifetime", [(T0 - 1, "U0BOB"), (T0 + 20, "U0CAROL")])
    refused("evidence_outside_lifetime", [(T0 + 10, "U0BOB"), (T0 + ttl + 1, "U0CAROL")])
    refused("evidence_outside_lifetime", [(T0 + 10, "U0BOB")], now=T0 - 301)


def test_a_receipt_is_never_dated_before_the_evidence_it_attests() -> None:
    # A signer clock a little behind Slack's (hosts differ by a second or two): dated at the last click.
    a = decide([(T0 + 10, "U0BOB"), (T0 + 60, "U0CAROL")], now=T0 + 60 - ev.CLOCK_BEHIND_TOLERANCE)
    assert a.issued_at == at(T0 + 60)
    assert a.expires_at - a.issued_at == timedelta(minutes=15)
    # Further behind (a clock stepped back): refused, not a receipt older than its approvals or request.
    refused(
        "clock_behind", [(T0 + 10, "U0BOB"), (T0 + 60, "U0CAROL")], now=T0 + 59 - ev.CLOCK_BEHIND_TOLERANCE
    )
    refused("clock_behind", [(T0 + 10, "U0BOB"), (T0 + 20, "U0CAROL")], now=T0 - 100)
    assert decide([(T0 + 10, "U0BOB"), (T0 + 20, "U0CAROL")], now=T0 + 21).issued_at == at(T0 + 21)


def test_forged_and_misdirected_clicks_are_refused() -> None:
    o = ci_origin(T0)
    good = click(T0 + 10, click_body(o, "U0BOB"))
    forged = click(T0 + 20, click_body(o, "U0CAROL"), secret="not-the-slack-secret-000")
    with pytest.raises(EvidenceError) as exc:
        ev.assess(
            policy=POLICY,
            secrets=SECRETS,
            request_id=rid_of(o),
            origin=as_evidence(o),
            clicks=[ev.SlackEvidence(c.body, c.timestamp, c.signature) for c in (good, forged)],
            emails={},
            now=at(T0 + 60),
        )
    assert exc.value.code == "bad_click_signature"
    refused("wrong_request", [(T0 + 10, "U0BOB"), (T0 + 20, "U0CAROL")], click_origin=OTHER)


def test_forged_origin_and_unknown_environment() -> None:
    refused(
        "bad_ci_signature", [(T0 + 10, "U0BOB")], origin=ci_origin(T0, secret="not-the-ci-secret-0000000")
    )
    moon = ci_origin(T0, ci_request_body(Scope("acme/web", SHA, "moon", "deploy.yml")))
    with pytest.raises(UnknownEnvironment):
        ev.assess(
            policy=POLICY,
            secrets=SECRETS,
            request_id=rid_of(moon),
            origin=as_evidence(moon),
            clicks=[],
            emails={},
            now=at(T0 + 60),
        )
    s = slash_origin(T0, slash_body(f"request acme/web {SHA} production"), secret="not-the-slack-secret-000")
    refused("bad_slack_signature", [(T0 + 10, "U0BOB")], origin=s)


def test_request_id_must_be_a_ulid() -> None:
    refused("bad_request", [(T0 + 10, "U0BOB")], rid="req_short")


def test_request_id_is_bound_to_the_origin() -> None:
    refused("request_id_mismatch", [(T0 + 10, "U0BOB"), (T0 + 20, "U0CAROL")], rid=new_id())
    assert rid_of(ci_origin(T0)) == rid_of(ci_origin(T0))
    assert rid_of(ci_origin(T0)) != rid_of(ci_origin(T0 + 1))
    assert ev.is_request_id(rid_of(ci_origin(T0)))
