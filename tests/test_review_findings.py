"""Attacker-minded review findings: each test asserts the refusal the product should give, and is marked
``xfail(strict=True)`` while the product did not give it; each is fixed now and holds as a regression test.

Attackers played: a compromised bot (no secret), a compromised Redis, a hostile CI job holding the CI secret,
hostile argv/environment of ``keyturn verify``/``request``/``audit verify``. Property under test
(docs/security.md): the card an approver clicks shows this scope and *no other commit or environment* (other
repos/workflows only as free text under the "Unverified" label), the requester is the one the origin proves.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from keyturn.signer import card
from keyturn.signer import evidence as ev
from keyturn.signer.evidence import EvidenceError, Secrets
from keyturn.signer.gate import GateError, load_keyset
from keyturn.signer.policy import Policy, PolicyError
from keyturn.signer.receipt import Scope
from tests.gate_fixtures import write_keyset
from tests.signer.conftest import (
    CI_SECRET,
    OTHER_SHA,
    POLICY,
    SHA,
    SLACK_SECRET,
    Origin,
    as_evidence,
    at,
    ci_origin,
    ci_request_body,
    click,
    click_body,
    rid_of,
    true_card,
)

T0 = 1_800_000_000
SECRETS = Secrets(SLACK_SECRET, CI_SECRET)

# A policy with environments whose names are word-prefixes of each other (common: prod / prod-eu) and a
# case variant; otherwise as the tests' usual policy.
TWO_PRODS = Policy.from_bytes(
    b"""\
version = 1

[slack]
team_id = "T0TEAM"

[environments.prod]
channel = "C0PROD"
approvers = ["U0BOB", "U0CAROL"]
required_approvals = 2
request_ttl = "30m"
receipt_ttl = "15m"
confirm_approve = false

[environments.prod-eu]
channel = "C0PRODEU"
approvers = ["U0BOB", "U0CAROL"]
required_approvals = 2
request_ttl = "30m"
receipt_ttl = "15m"
confirm_approve = false

[environments.production]
channel = "C0PRODUCTION"
approvers = ["U0BOB", "U0CAROL"]
required_approvals = 2
request_ttl = "30m"
receipt_ttl = "15m"

[environments.production-eu]
channel = "C0PRODUCTIONEU"
approvers = ["U0BOB", "U0CAROL"]
required_approvals = 2
request_ttl = "30m"
receipt_ttl = "15m"

[environments.staging]
channel = "C0STAGING"
approvers = ["U0BOB"]
required_approvals = 1
request_ttl = "10m"
receipt_ttl = "1h"
"""
)
ENVS = list(TWO_PRODS.environments)


def _scope(env: str, repo: str = "acme/web") -> Scope:
    return Scope(repo, SHA, env, "deploy.yml")


def _other_env_words(shown: str, own: str, envs: list[str]) -> list[str]:
    """Other environments' names visible as whole words (ASCII reading) in ``shown``; this deploy's own name,
    where it stands whole, is read first (``production-eu`` shows no ``production``)."""
    shown = re.sub(rf"(?<![A-Za-z0-9]){re.escape(own)}(?![A-Za-z0-9])", " ", shown, flags=re.IGNORECASE)
    found = []
    for name in envs:
        if name == own:
            continue
        for m in re.finditer(re.escape(name), shown, flags=re.IGNORECASE):
            before = shown[m.start() - 1] if m.start() else " "
            after = shown[m.end()] if m.end() < len(shown) else " "
            if not before.isalnum() and not after.isalnum():
                found.append(name)
    return found


def _assess(
    origin: Origin, users: list[str], policy: Policy, blocks: list[dict[str, Any]] | None = None
) -> ev.Assessment:
    clicks = []
    for i, user in enumerate(users):
        c = click(T0 + 10 + i, click_body(origin, user, blocks=blocks, policy=policy))
        clicks.append(ev.SlackEvidence(c.body, c.timestamp, c.signature))
    return ev.assess(
        policy=policy,
        secrets=SECRETS,
        request_id=rid_of(origin),
        origin=as_evidence(origin),
        clicks=clicks,
        emails={},
        now=at(T0 + 60),
    )


# --- hostile CI job: free text that shows another environment ---------------------------------------------


def test_other_environment_containing_own_environment_word_is_shown_on_the_signed_card() -> None:
    origin = ci_origin(T0, ci_request_body(_scope("prod"), title="hotfix, ship to prod-eu now"))
    blocks = true_card(origin, policy=TWO_PRODS)
    # The signer accepts clicks on exactly this card and issues a receipt for env "prod".
    assert _assess(origin, ["U0BOB", "U0CAROL"], TWO_PRODS).scope.environment == "prod"
    shown = json.dumps([b for b in blocks if b.get("block_id") == card.UNVERIFIED_BLOCK], ensure_ascii=False)
    assert _other_env_words(shown, "prod", ENVS) == []


def test_title_truncation_cuts_own_environment_into_another() -> None:
    # 94 chars (<= 300); 399 once escaped, so the cut lands right after 'production'
    title = "&" * 77 + "xxx production-eu"
    shown = card.unverified_text(title, _scope("production-eu"), ENVS, card.TITLE_MAX)
    assert not shown.endswith("production" + card.ELLIPSIS)
    assert _other_env_words(shown.replace(card.ELLIPSIS, " "), "production-eu", ENVS) == []


def test_header_truncation_shows_another_environment() -> None:
    repo = "a" * 39 + "/" + "b" * 79  # 119 characters: valid owner/name
    header = card.header_block(_scope("production-eu", repo=repo))["text"]["text"]
    assert _other_env_words(header.replace(card.ELLIPSIS, " "), "production-eu", ENVS) == []


@pytest.mark.parametrize(
    "text",
    [
        "deploying to p\u0433oduction",  # Cyrillic ghe for r
        "deploying to p\uab47oduction",  # LATIN SMALL LETTER R WITHOUT HANDLE
        "deploying to produc\u03c4ion",  # Greek tau for t
        "deploying to \U0001f17f\U0001f181\U0001f17e\U0001f173\U0001f184\U0001f172\U0001f183\U0001f178"
        "\U0001f17e\U0001f17d",  # negative squared letters: PRODUCTION
    ],
)
def test_lookalikes_outside_the_skeleton_spell_another_environment(text: str) -> None:
    shown = card.unverified_text(text, _scope("staging"), ENVS, card.TITLE_MAX)
    assert card.OTHER_ENVIRONMENT in shown


@pytest.mark.parametrize("text", ["deploying to production\u0660", "\u30fcproduction\u30fc"])
def test_non_ascii_alnum_neighbour_hides_environment_from_whole_word_match(text: str) -> None:
    shown = card.unverified_text(text, _scope("staging"), ENVS, card.TITLE_MAX)
    assert card.OTHER_ENVIRONMENT in shown


def test_foreign_full_sha_with_one_unlisted_lookalike_digit_is_shortened() -> None:
    spoof = "\u0d66" + OTHER_SHA[1:]  # OTHER_SHA starts with '0'
    shown = card.unverified_text(f"really deploys {spoof}", _scope("staging"), ENVS, card.TITLE_MAX)
    assert card.ELLIPSIS in shown


def test_non_ascii_custom_emoji_code_in_free_text_is_broken() -> None:
    shown = card.unverified_text("deploy to :\u672c\u756a:", _scope("staging"), ENVS, card.TITLE_MAX)
    assert ":\u672c\u756a:" not in shown


def test_ci_requester_naming_another_repo_is_not_shown_outside_the_unverified_block() -> None:
    facts = ev.card_facts(
        "req_01JV7Q4M4T7Z9X4P9G8N2D6R1A",
        ev.RequestClaim(_scope("staging"), "acme/payments@deploy-all.yml"),
        as_evidence(ci_origin(T0)),
        TWO_PRODS,
    )
    field = card.requester_field(facts, ENVS)["text"]
    assert "acme/payments" not in field


# --- compromised bot: the status part ---------------------------------------------------------------------


def test_status_mention_of_a_user_outside_the_policy_is_refused() -> None:
    origin = ci_origin(T0, ci_request_body(_scope("staging")))
    blocks = true_card(origin, policy=TWO_PRODS, approvals="0 of 1: <@U0MALLORY>")
    with pytest.raises(EvidenceError) as exc:
        _assess(origin, ["U0BOB"], TWO_PRODS, blocks=blocks)
    assert exc.value.code == "card_mismatch"


# --- hostile CI job: the requester --------------------------------------------------------------------------


def test_ci_origin_cannot_claim_a_slack_proven_requester() -> None:
    origin = ci_origin(T0, ci_request_body(POLICY_SCOPE, requester="slack:U0CAROL"))
    with pytest.raises(EvidenceError) as exc:
        ev.assess(
            policy=POLICY,
            secrets=SECRETS,
            request_id=rid_of(origin),
            origin=as_evidence(origin),
            clicks=[
                ev.SlackEvidence(c.body, c.timestamp, c.signature)
                for c in (
                    click(T0 + 10, click_body(origin, "U0BOB")),
                    click(T0 + 20, click_body(origin, "U0ALICE")),
                )
            ],
            emails={},
            now=at(T0 + 60),
        )
    assert exc.value.code == "bad_origin"


POLICY_SCOPE = Scope("acme/web", SHA, "production", "deploy.yml")


# --- policy: environments that differ only in case --------------------------------------------------------


def test_policy_refuses_environment_names_differing_only_in_case() -> None:
    with pytest.raises(PolicyError):
        Policy.from_bytes(
            b"""\
version = 1
[environments.prod]
channel = "C0A"
approvers = ["U0BOB"]
required_approvals = 1
request_ttl = "10m"
receipt_ttl = "10m"
[environments.PROD]
channel = "C0B"
approvers = ["U0BOB"]
required_approvals = 1
request_ttl = "10m"
receipt_ttl = "10m"
"""
        )


# --- hostile checkout: the gate's keyset rule -------------------------------------------------------------


def test_keyset_in_outer_checkout_seen_from_a_nested_repo_is_untrusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outer = tmp_path / "checkout"
    (outer / ".git").mkdir(parents=True)
    nested = outer / "infra"
    nested.mkdir()
    (nested / ".git").write_text("gitdir: ../.git/modules/infra\n")  # how git lays out a submodule
    keys = write_keyset(outer)  # a valid public keyset, written into the checkout (a PR could replace it)
    monkeypatch.delenv("GITHUB_WORKSPACE", raising=False)
    monkeypatch.chdir(nested)
    with pytest.raises(GateError) as exc:
        load_keyset(str(keys), trust_keys_in_checkout=False)
    assert exc.value.code == "untrusted_keyset"
