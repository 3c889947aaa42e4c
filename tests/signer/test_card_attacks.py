"""The attack catalogue of issue 9, points 1-4: every way a card used to lie, against the real signer.

The attacker is a compromised bot (:mod:`tests.signer.attack_rig`): it posts whatever it likes through the
Slack emulator's Web API, real approvers click Approve on it, the emulator delivers the genuine Slack-signed
click, and the attacker spends it with a genuine CI request on the real signer. Each test names one attack
(or one variant) and asserts the signer's refusal code and that the audit log got no record. Positive
controls show the same path yields a receipt that verifies when the card is the true one.

Then the honest path: CI-written free text (title, ref, run URL, requester) rendered by the trust core must
not show another commit, another environment or an emoji picture. That is judged by an independent reader
model (:mod:`tests.signer.card_oracle`), not by the renderer's own code. Finally, hypothesis: random
mutations of the true card (accepted only when the oracle says nothing on screen changed but the status part,
within its grammar) and random free text (never shows a foreign value, always accepted).
"""

from __future__ import annotations

import copy
import functools
import json
import unicodedata
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from keyturn.signer import contract, wire
from keyturn.signer.card import (
    DECISION_BLOCK,
    FOOTER_BLOCK,
    GITHUB_LABEL,
    HEADER_BLOCK,
    PROVEN_BLOCK,
    PROVEN_LABEL,
    SCOPE_BLOCK,
    STATUS_BLOCK,
    UNVERIFIED_BLOCK,
    UNVERIFIED_LABEL,
    CardFacts,
    CardMismatch,
    check_clicked_card,
    render_pending,
)
from keyturn.signer.evidence import Secrets, SlackEvidence, assess, card_facts, origin_claim
from keyturn.signer.keyset import PublicKeyset
from keyturn.signer.receipt import Scope
from keyturn.signer.verify import verify_receipt
from tests.signer.attack_rig import (
    APPROVERS,
    ATTACK_POLICY,
    ENVIRONMENTS,
    TEAM,
    Attacker,
    Rig,
    echoed_message,
    new_github_origin,
    new_origin,
    reforge_click,
    start_rig,
)
from tests.signer.card_oracle import (
    APPROVALS_LABEL,
    EXPIRES_LABEL,
    approvals_ok,
    display_equivalent,
    emoji_codes,
    expires_ok,
    foreign_environments,
    foreign_hashes,
    reader_form,
    shown_texts,
    started_by,
)
from tests.signer.conftest import (
    CI_SECRET,
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

Blocks = list[dict[str, Any]]

# Another full commit, with letters, digits 0 and 1, so every look-alike trick has something to work on.
OTHER = "9c1e5b7d3a2f4e6c8b0a1d3f5e7c9b2a4d6f8e0c"
IMG = "https://img.example/x.png"


# --- the rig ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    """One real signer and one real emulator for the whole module (they keep no per-request state)."""
    r = start_rig(Path(tmp_path_factory.mktemp("attack-logs")))
    yield r
    r.stop()


@pytest.fixture
async def attacker(rig: Rig, request: pytest.FixtureRequest) -> AsyncIterator[Attacker]:
    """The compromised bot for one test; prints the processes' logs if the test failed."""
    a = Attacker(rig)
    yield a
    await a.aclose()
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(rig.logs())


def env_of(origin: Origin) -> str:
    """The environment an origin asks for."""
    return origin_claim(as_evidence(origin), ATTACK_POLICY).scope.environment


async def attack(
    attacker: Attacker,
    origin: Origin,
    blocks: Blocks,
    *,
    rid: str | None = None,
    attachments: list[dict[str, Any]] | None = None,
) -> str:
    """Post ``blocks``, have the quorum click Approve on them, spend the clicks on ``origin``: the code."""
    ts = await attacker.post(blocks, attachments=attachments)
    clicks = await attacker.clicks(ts, APPROVERS[env_of(origin)])
    return await attacker.refusal(origin, clicks, rid or rid_of(origin))


# --- card surgery -------------------------------------------------------------------------------------


def card(origin: Origin, **kw: Any) -> Blocks:
    """A private copy of the true card for ``origin`` (what the honest bot posts)."""
    return copy.deepcopy(true_card(origin, policy=ATTACK_POLICY, **kw))


def card_with_id(origin: Origin, request_id: str) -> Blocks:
    """The card the renderer makes for ``origin`` under any request id (a bot choosing its own)."""
    evidence = as_evidence(origin)
    facts = card_facts(request_id, origin_claim(evidence, ATTACK_POLICY), evidence, ATTACK_POLICY)
    env = ATTACK_POLICY.environment(facts.scope.environment)
    return render_pending(
        facts,
        environments=ENVIRONMENTS,
        confirm=env.confirm_approve,
        approvals=f"0 of {env.required_approvals}",
        expires="14:05 UTC (in 25m)",
    )


def block(blocks: Blocks, block_id: str) -> dict[str, Any]:
    """The block with ``block_id``."""
    return next(b for b in blocks if b.get("block_id") == block_id)


def plain(text: str) -> dict[str, Any]:
    """A plain_text object."""
    return {"type": "plain_text", "text": text}


def mrkdwn(text: str) -> dict[str, Any]:
    """A verbatim mrkdwn object (as the true card writes them)."""
    return {"type": "mrkdwn", "text": text, "verbatim": True}


def context(text: str) -> dict[str, Any]:
    """A context block with one mrkdwn line."""
    return {"type": "context", "block_id": "kt_extra", "elements": [mrkdwn(text)]}


def scope_field(blocks: Blocks, label: str) -> int:
    """Index of the scope field whose text starts with ``label``."""
    fields = block(blocks, SCOPE_BLOCK)["fields"]
    return next(i for i, f in enumerate(fields) if f["text"].startswith(label + "\n"))


def set_scope_field(blocks: Blocks, label: str, obj: dict[str, Any]) -> Blocks:
    """Replace the scope field ``label`` by ``obj``."""
    block(blocks, SCOPE_BLOCK)["fields"][scope_field(blocks, label)] = obj
    return blocks


def approve_button(blocks: Blocks) -> dict[str, Any]:
    """The Approve button of the decision block."""
    el: dict[str, Any] = block(blocks, DECISION_BLOCK)["elements"][0]
    return el


def repoint(blocks: Blocks, request_id: str) -> Blocks:
    """Make both buttons name ``request_id`` (the card otherwise unchanged)."""
    for el in block(blocks, DECISION_BLOCK)["elements"]:
        el["value"] = request_id
    return blocks


def split(text: str, mark: str, every: int = 8) -> str:
    """``text`` with ``mark`` inserted every ``every`` characters."""
    return mark.join(text[i : i + every] for i in range(0, len(text), every))


# --- positive controls: the harness works -----------------------------------------------------------------


async def test_true_card_yields_a_receipt_that_verifies(attacker: Attacker) -> None:
    """The honest path through the same rig: true card posted as is, two genuine clicks, a receipt that
    ``keyturn verify``'s code accepts, and one audit record."""
    origin = new_origin("production", title="Release 1.4: faster checkout", ref="refs/heads/main")
    ts = await attacker.post(card(origin))
    clicks = await attacker.clicks(ts, APPROVERS["production"])
    before = attacker.rig.audit_lines()
    receipt = await attacker.signer.sign(rid_of(origin), origin, clicks, {})
    keyset = PublicKeyset.from_jwks(await attacker.signer.keys())
    scope = Scope("acme/web", SHA, "production", "deploy.yml")
    verified = verify_receipt(json.dumps(receipt).encode(), keyset, scope, datetime.now(UTC))
    assert [a.id for a in verified.approvals] == ["U0BOB", "U0CAROL"]
    assert receipt["requester"] == "github:alice"
    assert attacker.rig.audit_lines() == before + 1


def _slash(environment: str) -> Origin:
    ts = int(datetime.now(UTC).timestamp()) - 2
    text = f"request acme/web {SHA} {environment} deploy.yml"
    return slash_origin(ts, slash_body(text, user="U0ALICE", team=TEAM))


@pytest.mark.parametrize(
    ("origin_of", "status"),
    [
        pytest.param(
            lambda: new_origin("staging", title="nightly"),
            {"approvals": "0 of 1", "expires": "2026-01-02 10:00 UTC (in 2d 3h)"},
            id="staging, no confirm dialog, dated expiry",
        ),
        pytest.param(
            lambda: new_origin("production"),
            {"approvals": "1 of 2: <@U0BOB>", "expires": "09:59 UTC (in 4m 59s)"},
            id="production, status misstated within its grammar",
        ),
        pytest.param(
            lambda: new_origin("prod-eu", workflow="ship:rocket:.yml"),
            {},
            id="emoji code in the workflow (emoji false survives the echo)",
        ),
        pytest.param(lambda: _slash("prod-eu"), {}, id="slash-command origin"),
    ],
)
async def test_true_card_variants_are_accepted(
    attacker: Attacker, origin_of: Callable[[], Origin], status: dict[str, str]
) -> None:
    """More honest cards through the rig: the status part is re-rendered from the echo, not trusted, so a
    misstated count or time within the grammar still yields a receipt (docs/security.md, 3.)."""
    origin = origin_of()
    ts = await attacker.post(card(origin, **status))
    clicks = await attacker.clicks(ts, APPROVERS[env_of(origin)])
    receipt = await attacker.signer.sign(rid_of(origin), origin, clicks, {})
    assert receipt["requestId"] == rid_of(origin)


# --- issue 9.1: the card rule can be fooled ---------------------------------------------------------------


async def test_sha_only_in_link_target_refused(attacker: Attacker) -> None:
    """The origin's sha sits only in a link target; the label shows another commit's prefix."""
    origin = new_origin()
    blocks = set_scope_field(
        card(origin), "Commit", mrkdwn(f"Commit\n<https://git.example/acme/web/commit/{SHA}|{OTHER[:7]}…>")
    )
    assert await attack(attacker, origin, blocks) == "card_mismatch"


async def test_environment_in_date_fallback_refused(attacker: Attacker) -> None:
    """``production`` only in a date token's fallback; Slack shows the token's own text, ``staging``."""
    origin = new_origin()
    date = "Environment\n<!date^1700000000^staging {date_short}|production>"
    blocks = set_scope_field(card(origin), "Environment", mrkdwn(date))
    assert await attack(attacker, origin, blocks) == "card_mismatch"


async def test_value_in_strikethrough_refused(attacker: Attacker) -> None:
    """``production`` struck through next to ``staging``."""
    origin = new_origin()
    blocks = set_scope_field(card(origin), "Environment", mrkdwn("Environment\n~production~ staging"))
    assert await attack(attacker, origin, blocks) == "card_mismatch"


async def test_value_glued_by_soft_hyphen_refused(attacker: Attacker) -> None:
    """``non\\u00adproduction`` reads "nonproduction": the value glued to a word by an invisible hyphen."""
    origin = new_origin()
    blocks = set_scope_field(card(origin), "Environment", plain("Environment\nnon\u00adproduction"))
    assert await attack(attacker, origin, blocks) == "card_mismatch"


async def test_value_glued_by_word_joiner_refused(attacker: Attacker) -> None:
    """``pre\\u2060production`` reads "preproduction": glued by a word joiner."""
    origin = new_origin()
    blocks = set_scope_field(card(origin), "Environment", plain("Environment\npre\u2060production"))
    assert await attack(attacker, origin, blocks) == "card_mismatch"


async def test_fake_sha_with_zero_width_space_refused(attacker: Attacker) -> None:
    """The card shows another full sha, split by a zero-width space so no 40-hex run exists in the bytes;
    the real sha hides in a link target."""
    origin = new_origin()
    fake = f"Commit\n{OTHER[:20]}\u200b{OTHER[20:]} <https://git.example/c/{SHA}|(details)>"
    blocks = set_scope_field(card(origin), "Commit", mrkdwn(fake))
    assert await attack(attacker, origin, blocks) == "card_mismatch"


def _second_env_in_field(b: Blocks) -> None:
    set_scope_field(b, "Environment", plain("Environment\nproduction\nstaging"))


def _second_env_extra_field(b: Blocks) -> None:
    block(b, SCOPE_BLOCK)["fields"].append(plain("Environment\nstaging"))


def _second_env_header(b: Blocks) -> None:
    block(b, HEADER_BLOCK)["text"]["text"] = ":rocket: Deploy acme/web to production and staging"


def _second_env_context(b: Blocks) -> None:
    b.insert(2, context("Also rolls out to *staging*"))


@pytest.mark.parametrize(
    "edit",
    [_second_env_in_field, _second_env_extra_field, _second_env_header, _second_env_context],
    ids=["same field", "extra scope field", "header", "context line"],
)
async def test_second_environment_shown_refused(attacker: Attacker, edit: Callable[[Blocks], None]) -> None:
    """Environments are exclusive: a card showing production *and* staging is not this request's card."""
    origin = new_origin()
    blocks = card(origin)
    edit(blocks)
    assert await attack(attacker, origin, blocks) == "card_mismatch"


async def test_second_repo_shown_refused(attacker: Attacker) -> None:
    """A second repository in the scope part."""
    origin = new_origin()
    blocks = card(origin)
    block(blocks, SCOPE_BLOCK)["fields"].append(plain("Repository\nacme/api"))
    assert await attack(attacker, origin, blocks) == "card_mismatch"


async def test_second_workflow_shown_refused(attacker: Attacker) -> None:
    """A second workflow in the workflow field."""
    origin = new_origin()
    blocks = set_scope_field(card(origin), "Workflow", plain("Workflow\ndeploy.yml\nrollback.yml"))
    assert await attack(attacker, origin, blocks) == "card_mismatch"


# --- issue 9.2: the rest of the message -------------------------------------------------------------------


@pytest.mark.parametrize(
    "attachment",
    [
        {"text": f"Commit {OTHER}"},
        {"fallback": "commit", "fields": [{"title": "Commit", "value": OTHER, "short": False}]},
        {"title": OTHER, "color": "#2eb886"},
        {"pretext": "Environment: staging", "text": "see above"},
        {"blocks": [{"type": "section", "text": mrkdwn(f"Commit {OTHER}")}]},
    ],
    ids=["text", "fields", "title", "pretext", "blocks"],
)
async def test_other_sha_in_attachments_refused(attacker: Attacker, attachment: dict[str, Any]) -> None:
    """The true card's blocks, plus a legacy attachment showing another commit or environment."""
    origin = new_origin()
    assert await attack(attacker, origin, card(origin), attachments=[attachment]) == "card_mismatch"


async def test_other_sha_in_image_title_refused(attacker: Attacker) -> None:
    """An image block whose title (shown above the image) is another commit."""
    origin = new_origin()
    blocks = card(origin)
    image = {
        "type": "image",
        "block_id": "kt_img",
        "image_url": IMG,
        "alt_text": "diff",
        "title": plain(OTHER),
    }
    blocks.insert(3, image)
    assert await attack(attacker, origin, blocks) == "card_mismatch"


def _extra_button(b: Blocks) -> None:
    block(b, DECISION_BLOCK)["elements"].append(
        {"type": "button", "action_id": "kt_sha", "text": plain(OTHER), "value": "x"}
    )


def _approve_label(b: Blocks) -> None:
    approve_button(b)["text"]["text"] = f"Approve {OTHER}"


def _deny_label(b: Blocks) -> None:
    block(b, DECISION_BLOCK)["elements"][1]["text"]["text"] = OTHER


def _confirm_text(b: Blocks) -> None:
    confirm = approve_button(b)["confirm"]["text"]
    confirm["text"] = confirm["text"].replace(SHA, OTHER)


@pytest.mark.parametrize(
    "edit",
    [_extra_button, _approve_label, _deny_label, _confirm_text],
    ids=["extra button", "approve label", "deny label", "confirm dialog"],
)
async def test_other_sha_in_button_label_refused(attacker: Attacker, edit: Callable[[Blocks], None]) -> None:
    """Another commit on a button, or in the confirm dialog the approver reads before approving."""
    origin = new_origin()
    blocks = card(origin)
    edit(blocks)
    assert await attack(attacker, origin, blocks) == "card_mismatch"


@pytest.mark.parametrize(
    "accessory",
    [
        {"type": "image", "image_url": IMG, "alt_text": OTHER},
        {"type": "button", "action_id": "kt_more", "text": plain(OTHER[:30]), "value": "x"},
        {"type": "overflow", "action_id": "kt_more", "options": [{"text": plain(OTHER), "value": "x"}]},
        {
            "type": "static_select",
            "action_id": "kt_more",
            "placeholder": plain("staging"),
            "options": [{"text": plain("staging"), "value": "s"}],
        },
    ],
    ids=["image", "button", "overflow", "static_select"],
)
async def test_other_sha_in_accessory_refused(attacker: Attacker, accessory: dict[str, Any]) -> None:
    """An accessory on the scope section showing another commit or environment."""
    origin = new_origin()
    blocks = card(origin)
    block(blocks, SCOPE_BLOCK)["accessory"] = accessory
    assert await attack(attacker, origin, blocks) == "card_mismatch"


_CYRILLIC = str.maketrans({"a": "а", "c": "с", "e": "е", "o": "о", "p": "р"})


def _homoglyph_context(b: Blocks) -> None:
    b.insert(2, context(f"Also deploys {OTHER.translate(_CYRILLIC)}"))


def _homoglyph_own_sha(b: Blocks) -> None:
    set_scope_field(b, "Commit", plain(f"Commit\n{SHA.translate(_CYRILLIC)}"))


def _homoglyph_own_env(b: Blocks) -> None:
    set_scope_field(b, "Environment", plain("Environment\n" + "production".translate(_CYRILLIC)))


@pytest.mark.parametrize(
    "edit",
    [_homoglyph_context, _homoglyph_own_sha, _homoglyph_own_env],
    ids=["another sha in a context line", "own sha re-spelled", "own environment re-spelled"],
)
async def test_cyrillic_homoglyph_sha_refused(attacker: Attacker, edit: Callable[[Blocks], None]) -> None:
    """Cyrillic look-alikes: another sha no byte search would find, or this card's own values re-spelled
    (identical on screen, different bytes — still not the rendered card)."""
    origin = new_origin()
    blocks = card(origin)
    edit(blocks)
    assert await attack(attacker, origin, blocks) == "card_mismatch"


# --- issue 9.3 and 9.4: clicks spent on another origin --------------------------------------------------


@pytest.mark.parametrize(
    ("variant", "code"),
    [
        ("production request id", "wrong_request"),
        ("staging request id", "request_id_mismatch"),
        ("staging card re-pointed at the production request", "card_mismatch"),
    ],
)
async def test_staging_card_for_production_origin_refused(
    attacker: Attacker, variant: str, code: str
) -> None:
    """An honest staging card whose CI title says "production": clicks on it spent on a production origin.
    The title no longer even says production on a staging card (defused), and the clicks cannot move."""
    title = "production release 1.4"
    staging, production = new_origin("staging", title=title), new_origin("production", title=title)
    blocks = card(staging)
    assert foreign_environments(blocks, "staging", ENVIRONMENTS) == []
    rid = rid_of(staging) if variant == "staging request id" else rid_of(production)
    if variant.startswith("staging card re-pointed"):
        repoint(blocks, rid_of(production))
    ts = await attacker.post(blocks)
    clicks = await attacker.clicks(ts, APPROVERS["production"])  # both are staging approvers too
    assert await attacker.refusal(production, clicks, rid) == code


@pytest.mark.parametrize(
    ("variant", "code"),
    [
        ("request A's id", "request_id_mismatch"),
        ("request B's id", "wrong_request"),
        ("card A re-pointed at B", "card_mismatch"),
        ("honest card B (control)", "self_approval"),
    ],
)
async def test_clicks_for_request_a_spent_on_origin_b_refused(
    attacker: Attacker, variant: str, code: str
) -> None:
    """Same scope, another requester: bob and carol approve alice's request A; the bot spends their clicks on
    bob's own request B. A compromised Redis could swap the origin; the request id bound to it cannot."""
    a = new_origin("production", requester="github:alice")
    b = new_origin("production", requester="github:bob")
    if variant.startswith("honest card B"):
        blocks, rid = card(b), rid_of(b)
    elif variant.startswith("card A re-pointed"):
        blocks, rid = repoint(card(a), rid_of(b)), rid_of(b)
    else:
        blocks, rid = card(a), rid_of(a) if variant == "request A's id" else rid_of(b)
    ts = await attacker.post(blocks)
    clicks = await attacker.clicks(ts, ["U0BOB", "U0CAROL"])
    assert await attacker.refusal(b, clicks, rid) == code


async def test_bot_chosen_request_id_refused(attacker: Attacker) -> None:
    """The bot mints its own request id and renders the otherwise-true card with it."""
    origin = new_origin()
    rid = new_id()
    ts = await attacker.post(card_with_id(origin, rid))
    clicks = await attacker.clicks(ts, APPROVERS["production"])
    assert await attacker.refusal(origin, clicks, rid) == "request_id_mismatch"


@pytest.mark.parametrize(
    ("variant", "code"),
    [
        ("as posted", "wrong_request"),
        ("buttons re-pointed", "card_mismatch"),
        ("buttons and footer re-pointed", "card_mismatch"),
    ],
)
async def test_card_of_another_request_refused(attacker: Attacker, variant: str, code: str) -> None:
    """The true card of another request (another commit), clicked and spent on this one."""
    this, other = new_origin(), new_origin(sha=OTHER)
    blocks = card(other)
    if variant != "as posted":
        repoint(blocks, rid_of(this))
    if variant == "buttons and footer re-pointed":
        block(blocks, FOOTER_BLOCK)["elements"][0]["text"] = f"Request `{rid_of(this)}`"
    assert await attack(attacker, this, blocks) == code


# --- the rest of the layout -------------------------------------------------------------------------------

EXTRA_BLOCKS: dict[str, dict[str, Any]] = {
    "section with accessory": {
        "type": "section",
        "block_id": "kt_x",
        "text": mrkdwn("Diff"),
        "accessory": {"type": "image", "image_url": IMG, "alt_text": "diff"},
    },
    "image": {"type": "image", "block_id": "kt_x", "image_url": IMG, "alt_text": "diff"},
    "rich_text": {
        "type": "rich_text",
        "block_id": "kt_x",
        "elements": [
            {"type": "rich_text_section", "elements": [{"type": "text", "text": f"commit {OTHER}"}]}
        ],
    },
    "markdown": {"type": "markdown", "block_id": "kt_x", "text": f"**staging** {OTHER}"},
    "divider": {"type": "divider", "block_id": "kt_x"},
    "context with image": {
        "type": "context",
        "block_id": "kt_x",
        "elements": [{"type": "image", "image_url": IMG, "alt_text": "staging"}],
    },
    "input": {
        "type": "input",
        "block_id": "kt_x",
        "label": plain("Environment"),
        "element": {"type": "plain_text_input", "action_id": "kt_in", "initial_value": "staging"},
    },
    "video": {
        "type": "video",
        "block_id": "kt_x",
        "title": plain(f"Deploying {OTHER}"),
        "video_url": "https://video.example/v",
        "thumbnail_url": IMG,
        "alt_text": "v",
    },
    "file": {"type": "file", "block_id": "kt_x", "external_id": "F0DIFF", "source": "remote"},
    "header": {"type": "header", "block_id": "kt_x", "text": plain("Deploy acme/web to staging")},
}
# Block kinds Slack shows that the emulator does not store: the test plays Slack for these (reforge_click).
SLACK_ONLY_KINDS = frozenset({"markdown"})


@pytest.mark.parametrize("kind", sorted(EXTRA_BLOCKS))
async def test_extra_block_refused(attacker: Attacker, kind: str) -> None:
    """One extra block of each Block Kit kind after the scope part: whatever it shows, a block the
    renderer did not make is a difference."""
    origin = new_origin()
    blocks = card(origin)
    blocks.insert(2, copy.deepcopy(EXTRA_BLOCKS[kind]))
    if kind not in SLACK_ONLY_KINDS:
        assert await attack(attacker, origin, blocks) == "card_mismatch"
        return
    ts = await attacker.post(card(origin))
    genuine = await attacker.clicks(ts, APPROVERS["production"])
    forged = []
    for c in genuine:
        message = echoed_message(c)
        message["blocks"].insert(2, copy.deepcopy(EXTRA_BLOCKS[kind]))
        forged.append(reforge_click(c, message))
    assert await attacker.refusal(origin, forged, rid_of(origin)) == "card_mismatch"


@pytest.mark.parametrize(
    ("which", "text"),
    [
        ("approvals", "1 of 2: <@U0BOB> staging"),
        ("approvals", f"1 of 2 #{OTHER[:7]}"),
        ("approvals", "0 of 2 (staging)"),
        ("approvals", "1 of 2: <@U0BOB|staging>"),
        ("approvals", "1 of 2: <#C0STAGING>"),
        ("approvals", "1 of 1"),
        ("approvals", f"1 of 2: <@U0BOB>\n{OTHER}"),
        ("expires", "14:05 UTC (in 25m) staging"),
        ("expires", f"14:05 UTC (in 25m)\n{OTHER}"),
        ("expires", "<!date^1700000000^{time}|14:05> UTC (in 25m)"),
        ("expires", "soon"),
    ],
    ids=[
        "approvals with a word",
        "approvals with a hash",
        "approvals naming another environment",
        "approvals with a labelled mention",
        "approvals with a channel link",
        "approvals out of another quorum",
        "approvals with a second line",
        "expiry with a word",
        "expiry with a hash",
        "expiry as a date token",
        "expiry as text",
    ],
)
async def test_status_text_outside_grammar_refused(attacker: Attacker, which: str, text: str) -> None:
    """The status part is the bot's to write, but only in its grammar: no word, hash or environment."""
    origin = new_origin()
    blocks = card(origin)
    fields = block(blocks, STATUS_BLOCK)["fields"]
    index, label = (1, APPROVALS_LABEL) if which == "approvals" else (2, EXPIRES_LABEL)
    fields[index]["text"] = label + text
    assert await attack(attacker, origin, blocks) == "card_mismatch"


def _drop_label(b: Blocks) -> None:
    del block(b, UNVERIFIED_BLOCK)["elements"][0]


def _relabel(b: Blocks) -> None:
    block(b, UNVERIFIED_BLOCK)["elements"][0] = mrkdwn(":white_check_mark: *Verified by Keyturn*")


def _unverified_first(b: Blocks) -> None:
    b.insert(1, b.pop(b.index(block(b, UNVERIFIED_BLOCK))))


@pytest.mark.parametrize(
    "edit", [_drop_label, _relabel, _unverified_first], ids=["label removed", "relabelled", "moved up"]
)
async def test_missing_unverified_label_refused(attacker: Attacker, edit: Callable[[Blocks], None]) -> None:
    """The CI's free text must stay under its "Unverified" label, below the verified scope."""
    origin = new_origin(title="Release 1.4", ref="refs/heads/main")
    blocks = card(origin)
    edit(blocks)
    assert await attack(attacker, origin, blocks) == "card_mismatch"


# --- the event that started the job (GitHub origins: from the signed webhook) -----------------------------


async def test_true_github_card_names_its_event_and_yields_a_receipt(attacker: Attacker) -> None:
    """The honest path for a GitHub origin: the card says the run was started by ``pull_request_target``
    (with the ref and run link) under "From GitHub's signed webhook", and the true card yields a receipt."""
    origin = new_github_origin(event="pull_request_target")
    blocks = card(origin)
    assert started_by(blocks) == ["pull_request_target"]
    assert block(blocks, PROVEN_BLOCK)["elements"][0]["text"] == GITHUB_LABEL
    ts = await attacker.post(blocks)
    clicks = await attacker.clicks(ts, APPROVERS["production"])
    receipt = await attacker.signer.sign(rid_of(origin), origin, clicks, {})
    assert receipt["requester"] == "github:alice"


def _started_by_index(b: Blocks) -> int:
    elements = block(b, PROVEN_BLOCK)["elements"]
    return next(i for i, e in enumerate(elements) if e["text"].startswith("*Started by:*"))


def _drop_started_by(b: Blocks) -> None:
    del block(b, PROVEN_BLOCK)["elements"][_started_by_index(b)]


def _started_by_push(b: Blocks) -> None:
    block(b, PROVEN_BLOCK)["elements"][_started_by_index(b)] = mrkdwn("*Started by:* push")


def _github_as_unverified(b: Blocks) -> None:
    proven = block(b, PROVEN_BLOCK)
    proven["block_id"] = UNVERIFIED_BLOCK
    proven["elements"][0] = mrkdwn(UNVERIFIED_LABEL)


def _github_as_oidc(b: Blocks) -> None:
    block(b, PROVEN_BLOCK)["elements"][0] = mrkdwn(PROVEN_LABEL)


def _started_by_hidden_in_footer(b: Blocks) -> None:
    line = block(b, PROVEN_BLOCK)["elements"].pop(_started_by_index(b))
    block(b, FOOTER_BLOCK)["elements"].append(line)


@pytest.mark.parametrize(
    "edit",
    [
        _drop_started_by,
        _started_by_push,
        _github_as_unverified,
        _github_as_oidc,
        _started_by_hidden_in_footer,
    ],
    ids=["line removed", "says push", "labelled unverified", "labelled OIDC", "moved to the footer"],
)
async def test_github_card_event_line_edited_refused(
    attacker: Attacker, edit: Callable[[Blocks], None]
) -> None:
    """A bot that hides or rewrites what started a ``pull_request_target`` run (so it reads as a push to
    main), or labels the webhook's facts as something else, posts a card the signer does not render."""
    origin = new_github_origin(event="pull_request_target")
    blocks = card(origin)
    edit(blocks)
    assert await attack(attacker, origin, blocks) == "card_mismatch"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    event=st.from_regex(r"\A[a-z]{1,15}(?:_[a-z]{1,15}){0,3}\Z")
    | st.sampled_from(["push", "pull_request_target", "workflow_run"])
)
def test_honest_github_card_reads_as_started_by_its_event_exactly(event: str) -> None:
    """Oracle property: a reader of the honest card of a GitHub run sees exactly one "Started by", naming
    the webhook's event; and neither a foreign hash nor another environment appears."""
    assert contract.EVENT_RE.match(event)
    origin = new_github_origin(event=event)
    blocks = card(origin)
    assert started_by(blocks) == [event]
    assert foreign_hashes(blocks, SHA) == []
    assert foreign_environments(blocks, "production", ENVIRONMENTS) == []


def _one_char(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new, 1)


@pytest.mark.parametrize(
    ("where", "old", "new"),
    [
        ("Repository", "acme/web", "acme/wep"),
        ("Commit", SHA, SHA[:-1] + "8"),
        ("Environment", "production", "productioN"),
        ("Workflow", "deploy.yml", "deploy.ym1"),
        ("header", "Deploy", "Dep1oy"),
        ("confirm", "deploy.yml", "deploy.ym1"),
    ],
)
async def test_edited_scope_field_refused(attacker: Attacker, where: str, old: str, new: str) -> None:
    """One character changed in a value the approver relies on."""
    origin = new_origin()
    blocks = card(origin)
    if where == "header":
        obj = block(blocks, HEADER_BLOCK)["text"]
    elif where == "confirm":
        obj = approve_button(blocks)["confirm"]["text"]
    else:
        obj = block(blocks, SCOPE_BLOCK)["fields"][scope_field(blocks, where)]
    obj["text"] = _one_char(obj["text"], old, new)
    assert await attack(attacker, origin, blocks) == "card_mismatch"


def _workflow_field(b: Blocks) -> dict[str, Any]:
    field: dict[str, Any] = block(b, SCOPE_BLOCK)["fields"][scope_field(b, "Workflow")]
    return field


@pytest.mark.parametrize(
    "edit",
    [
        lambda b: _workflow_field(b).pop("emoji"),
        lambda b: _workflow_field(b).update(emoji=True),
        lambda b: approve_button(b)["confirm"]["text"].pop("emoji"),
    ],
    ids=["scope field flag dropped", "scope field flag true", "confirm dialog flag dropped"],
)
async def test_emoji_flag_dropped_on_emoji_workflow_refused(
    attacker: Attacker, edit: Callable[[Blocks], object]
) -> None:
    """A workflow named ``ship:rocket:.yml`` is shown as text only with ``emoji: false``; without it Slack
    draws a picture (a custom emoji can picture any word) — Slack stores a missing flag as true."""
    origin = new_origin(workflow="ship:rocket:.yml")
    blocks = card(origin)
    edit(blocks)
    assert await attack(attacker, origin, blocks) == "card_mismatch"


def _reordered(b: Blocks) -> None:
    b[0], b[1] = b[1], b[0]


def _footer_missing(b: Blocks) -> None:
    b.remove(block(b, FOOTER_BLOCK))


def _status_missing(b: Blocks) -> None:
    b.remove(block(b, STATUS_BLOCK))


def _ids_generated(b: Blocks) -> None:
    for x in b:
        x.pop("block_id")


def _ids_generated_but_decision(b: Blocks) -> None:
    for x in b:
        if x["block_id"] != DECISION_BLOCK:
            x.pop("block_id")


@pytest.mark.parametrize(
    ("edit", "code"),
    [
        (_reordered, "card_mismatch"),
        (_footer_missing, "card_mismatch"),
        (_status_missing, "card_mismatch"),
        (_ids_generated, "bad_click"),
        (_ids_generated_but_decision, "card_mismatch"),
    ],
    ids=["blocks reordered", "footer missing", "status missing", "all ids generated", "ids generated"],
)
async def test_card_structure_changed_refused(
    attacker: Attacker, edit: Callable[[Blocks], None], code: str
) -> None:
    """Blocks moved, dropped, or posted without Keyturn's ids (Slack then generates its own)."""
    origin = new_origin()
    blocks = card(origin)
    edit(blocks)
    assert await attack(attacker, origin, blocks) == code


async def test_ephemeral_card_refused(attacker: Attacker) -> None:
    """A true card shown only to the approver (ephemeral): Slack's click carries no message."""
    origin = new_origin()
    ts = await attacker.post(card(origin), ephemeral_for="U0BOB")
    clicks = await attacker.clicks(ts, ["U0BOB"])
    assert await attacker.refusal(origin, clicks, rid_of(origin)) == "card_mismatch"


@pytest.mark.parametrize(
    "extra",
    [
        {"username": f"Deploy {OTHER} to staging"},
        {"username": "Keyturn: staging deploy", "icons": {"emoji": ":staging:"}},
        {"icons": {"image_48": "https://img.example/staging-0000bad.png"}},
    ],
    ids=["sender name", "sender name and emoji", "sender image"],
)
async def test_other_values_in_sender_name_refused(attacker: Attacker, extra: dict[str, Any]) -> None:
    """The true card's blocks, posted under a custom sender name or icon that shows another commit or
    environment next to the card. The emulator drops ``username``/``icons``, so the test plays Slack."""
    origin = new_origin()
    ts = await attacker.post(card(origin))
    genuine = await attacker.clicks(ts, APPROVERS["production"])
    forged = [reforge_click(c, {**echoed_message(c), **extra}) for c in genuine]
    assert await attacker.refusal(origin, forged, rid_of(origin)) == "card_mismatch"


# --- the honest path: CI-written free text (pure) ---------------------------------------------------------

T0 = 1_780_000_000
SECRETS = Secrets(slack_signing_secret=SLACK_SECRET, ci_secret=CI_SECRET)
ALLOWED_EMOJI = frozenset({":rocket:", ":warning:"})  # the card's own header and label


def honest_origin(environment: str, **fields: Any) -> wire.CiOrigin:
    """A CI origin at ``T0`` with the given free text (``requester`` among it)."""
    requester = fields.pop("requester", "github:alice")
    scope = Scope("acme/web", SHA, environment, "deploy.yml")
    return ci_origin(T0, ci_request_body(scope, requester, **fields))


def signer_accepts(origin: wire.CiOrigin, blocks: Blocks) -> None:
    """The signer's whole decision (``assess``) on quorum clicks made on ``blocks``: must issue."""
    env = env_of(origin)
    clicks = [
        click(T0 + 10 + i, click_body(origin, user, blocks=blocks, team=TEAM))
        for i, user in enumerate(APPROVERS[env])
    ]
    assessment = assess(
        policy=ATTACK_POLICY,
        secrets=SECRETS,
        request_id=rid_of(origin),
        origin=as_evidence(origin),
        clicks=[SlackEvidence(c.body, c.timestamp, c.signature) for c in clicks],
        emails={},
        now=at(T0 + 60),
    )
    assert assessment.scope.environment == env


def assert_shows_only_its_own(blocks: Blocks, environment: str) -> None:
    """What a reader sees names no other commit, no other environment, and no emoji picture but the card's
    own; and it does show this commit (the check is not vacuous)."""
    assert foreign_hashes(blocks, SHA) == []
    assert foreign_environments(blocks, environment, ENVIRONMENTS) == []
    assert set(emoji_codes(blocks)) <= ALLOWED_EMOJI
    assert any(SHA in reader_form(t) for t in shown_texts(blocks))


def fullwidth(text: str) -> str:
    """ASCII printable characters as their fullwidth forms (NFKC folds them back)."""
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


def math_bold(text: str) -> str:
    """Digits and small letters as MATHEMATICAL BOLD characters (NFKC folds them back)."""
    return "".join(
        chr(0x1D7CE + int(c)) if c.isdigit() else chr(0x1D41A + ord(c) - 97) if "a" <= c <= "z" else c
        for c in text
    )


# Not n -> ν: Greek nu reads as "v", so "productioν" does not say production to anyone.
_GREEK = str.maketrans({"0": "ο", "a": "α", "o": "ο", "p": "ρ", "i": "ι"})


def _combining_under(text: str) -> str:
    return "".join(c + "\u0332" for c in text)


HONEST_CASES: list[tuple[str, str, dict[str, str]]] = [
    (
        "title: sha split by a zero-width space",
        "production",
        {"title": f"fix {split(OTHER, chr(0x200B), 20)}"},
    ),
    ("title: sha in Cyrillic look-alikes", "production", {"title": OTHER.translate(_CYRILLIC)}),
    ("title: sha in Greek look-alikes", "production", {"title": OTHER.translate(_GREEK)}),
    ("title: sha in fullwidth", "production", {"title": fullwidth(OTHER)}),
    ("title: sha in mathematical digits", "production", {"title": math_bold(OTHER)}),
    ("title: sha with soft hyphens", "production", {"title": split(OTHER, "\u00ad")}),
    ("title: sha with word joiners", "production", {"title": split(OTHER, "\u2060")}),
    ("title: sha with zero-width spaces", "production", {"title": split(OTHER, "\u200b", 1)}),
    ("title: sha with byte-order marks", "production", {"title": split(OTHER, "\ufeff")}),
    ("title: sha reversed by a bidi override", "production", {"title": f"\u202e{OTHER[::-1]}\u202c"}),
    ("title: sha with bidi isolates", "production", {"title": split(OTHER, "\u2066\u2069")}),
    ("title: sha with combining marks", "production", {"title": _combining_under(OTHER)}),
    (
        "ref: sha split by a zero-width space",
        "production",
        {"ref": f"refs/tags/{split(OTHER, chr(0x200B), 20)}"},
    ),
    ("run URL naming another sha", "production", {"runUrl": f"https://ci.example/commit/{OTHER}"}),
    (
        "run URL with a split sha",
        "production",
        {"runUrl": f"https://ci.example/c/{split(OTHER, chr(0x200B))}"},
    ),
    ("requester with a split sha", "production", {"requester": f"github:{split(OTHER, chr(0x2060), 20)}"}),
    ("title: another environment", "staging", {"title": "hotfix for production"}),
    ("title: another environment, other case", "staging", {"title": "PRODUCTION hotfix"}),
    ("title: another environment in Cyrillic", "staging", {"title": "production".translate(_CYRILLIC)}),
    ("title: another environment in Greek", "staging", {"title": "production".translate(_GREEK)}),
    ("title: another environment in fullwidth", "staging", {"title": fullwidth("Production")}),
    ("title: another environment, math letters", "staging", {"title": math_bold("production")}),
    ("title: another environment with a soft hyphen", "staging", {"title": "pro\u00adduction"}),
    ("title: another environment with a zero-width joiner", "staging", {"title": "prod\u200duction"}),
    ("title: another environment underlined", "staging", {"title": _combining_under("production")}),
    ("title: another hyphenated environment", "staging", {"title": "also PROD-EU"}),
    ("title: staging on a production card", "production", {"title": "ѕtаgіng only"}),
    ("ref: another environment", "staging", {"ref": "refs/heads/production"}),
    ("run URL naming another environment", "staging", {"runUrl": "https://ci.example/production/runs/1"}),
    ("requester naming another environment", "staging", {"requester": "production-bot"}),
    ("title: emoji codes", "staging", {"title": ":production: :rocket: :+1::skin-tone-2:"}),
    ("ref: emoji code", "production", {"ref": "refs/heads/:staging:"}),
    ("requester: emoji code", "production", {"requester": "github::staging:"}),
    (
        "title: Slack markup",
        "staging",
        {"title": "<!date^1700000000^production|x> <https://x|production> &lt;"},
    ),
]


@pytest.mark.parametrize(
    ("environment", "fields"), [c[1:] for c in HONEST_CASES], ids=[c[0] for c in HONEST_CASES]
)
def test_honest_card_shows_no_foreign_value(environment: str, fields: dict[str, str]) -> None:
    """Through the real renderer: CI free text that spells another commit or environment (split, re-spelled,
    folded, marked up) is shown defused, and the signer still accepts the honest card."""
    origin = honest_origin(environment, **fields)
    blocks = card(origin)
    assert_shows_only_its_own(blocks, environment)
    signer_accepts(origin, blocks)


def _each(text: str, mark: str) -> str:
    return "".join(c + mark for c in text)


_SMALL_CAPS = str.maketrans(dict(zip("abcdefoprtuin", "ᴀʙᴄᴅᴇꜰᴏᴘʀᴛᴜɪɴ", strict=True)))
_LISU = str.maketrans(dict(zip("ABCDEFOPRTUIN", "ꓮꓐꓚꓓꓰꓝꓳꓑꓣꓔꓴꓲꓠ", strict=True)))
_GAP = "BYPASS (honest path, CI secret holder): unverified_text misses this look-alike, so the card shows "
LOOKALIKE_GAPS: list[tuple[str, str, dict[str, str], str]] = [
    ("environment in Latin small capitals", "staging", {"title": "production".translate(_SMALL_CAPS)}, "env"),
    ("environment in Lisu letters", "staging", {"title": "PRODUCTION".translate(_LISU)}, "env"),
    ("environment in Coptic letters", "staging", {"title": "ⲣrⲟductiⲟn"}, "env"),
    ("environment in Canadian syllabics", "staging", {"title": "ᑭᖇOᗞᑌᑕTIOᑎ"}, "env"),
    ("environment in negative squared letters", "staging", {"title": "🅿🆁🅾🅳🆄🅲🆃🅸🅾🅽"}, "env"),
    ("environment in enclosing squares", "staging", {"title": _each("production", "\u20de")}, "env"),
    ("environment split by a mark of class 0", "staging", {"title": "prod\u0e31uction"}, "env"),
    ("environment with Cyrillic ghe for r", "staging", {"title": "pгoduction"}, "env"),
    # The foreign hash is cut first ("9c1e5b7d3a2f…"), *after* the environment was judged not a whole word
    # (it was glued to the hash): the reader then sees "…production".
    ("environment un-glued by a cut hash", "staging", {"title": OTHER + "production"}, "env"),
    ("sha in Latin small capitals", "production", {"title": OTHER.translate(_SMALL_CAPS)}, "sha"),
    ("sha in Lisu capitals", "production", {"title": OTHER.upper().translate(_LISU)}, "sha"),
    ("sha as keycaps", "production", {"title": _each(OTHER, "\u20e3")}, "sha"),
    ("sha split by an enclosing circle", "production", {"title": split(OTHER, "\u20dd", 20)}, "sha"),
    ("sha split by a mark of class 0", "production", {"title": split(OTHER, "\u0e31", 20)}, "sha"),
    ("sha with Cyrillic palochka for 1", "production", {"title": OTHER.replace("1", "ӏ")}, "sha"),
]


@pytest.mark.parametrize(
    ("environment", "fields"),
    [pytest.param(env, fields, id=name) for name, env, fields, _ in LOOKALIKE_GAPS],
)
def test_honest_card_defuses_lookalikes_outside_its_table(environment: str, fields: dict[str, str]) -> None:
    """Look-alikes beyond the renderer's table (scripts and marks it does not list): the reader still sees
    another environment or another commit. Each was a BYPASS found by this catalogue; fixed, they hold."""
    origin = honest_origin(environment, **fields)
    blocks = card(origin)
    signer_accepts(origin, blocks)  # the signer accepts it: what is shown is what was rendered
    assert_shows_only_its_own(blocks, environment)


async def test_lookalike_environment_in_title_refused_end_to_end(attacker: Attacker) -> None:
    """The same gap through the real processes: a genuine staging request whose title spells PRODUCTION in
    Lisu letters; the honest card is posted, approved, and the real signer issues a receipt — for a message
    that, as Slack echoed it, shows "PRODUCTION" to the approver."""
    origin = new_origin("staging", title="PRODUCTION".translate(_LISU) + " hotfix")
    ts = await attacker.post(card(origin))
    clicks = await attacker.clicks(ts, APPROVERS["staging"])
    receipt = await attacker.signer.sign(rid_of(origin), origin, clicks, {})
    assert receipt["scope"]["environment"] == "staging"
    assert foreign_environments(echoed_message(clicks[0])["blocks"], "staging", ENVIRONMENTS) == []


# --- hypothesis (a): mutations of the rendered card --------------------------------------------------------

MUTATION_ORIGINS: list[Origin] = [
    honest_origin("production", title="Release 1.4", ref="refs/heads/main", runUrl="https://ci.example/r/1"),
    honest_origin("staging"),
    ci_origin(T0, ci_request_body(Scope("acme/web", SHA, "prod-eu", "ship:rocket:.yml"), "github:carol")),
    slash_origin(T0, slash_body(f"request acme/web {SHA} production", user="U0BOB", team=TEAM)),
]
TRUE_CARDS = [card(o) for o in MUTATION_ORIGINS]

# Characters a mutation writes: look-alikes, invisibles, markup, digits of a hash, and anything at all.
EDIT_CHARS = st.one_of(
    st.sampled_from(list("0aeoO1lI-_*~`<>|&:@#!\n \u200b\u00ad\u2060\ufeff\u202eаеоοᴀ")),
    st.characters(codec="utf-8"),
)
BLOCK_KINDS = [
    "section",
    "header",
    "context",
    "actions",
    "divider",
    "image",
    "rich_text",
    "markdown",
    "video",
]
NEW_BLOCKS = [copy.deepcopy(b) for b in EXTRA_BLOCKS.values()]
NEW_KEYS: dict[str, Any] = {
    "accessory": {"type": "image", "image_url": IMG, "alt_text": "x"},
    "style": "danger",
    "emoji": True,
    "verbatim": False,
    "url": "https://x.example/",
    "alt_text": OTHER,
    "title": plain("staging"),
    "text": plain(OTHER),
}
# Status texts in or near the grammar: mostly well-formed with a plausible quorum (so acceptance is
# exercised, not just refusal), sometimes off by a mention form, a quorum spelling or a trailing word.
APPROVALS_TEXTS = st.one_of(
    st.from_regex(
        r"[0-9]{1,3} of [0-9]{1,3}(: <@U0[A-Z]{2,5}>(, <@W1[A-Z]{3}>)?( and 4 more)?)?", fullmatch=True
    ),
    st.builds(
        lambda n, q, who, more: f"{n} of {q}{who}{more if who else ''}",
        st.sampled_from(["0", "1", "2", "10", "999"]),
        st.sampled_from(["1", "2", "2", "02", "3"]),
        st.sampled_from(["", ": <@U0BOB>", ": <@U0BOB>, <@W0CAROL>", ": <@U0BOB> <@U0CAROL>", ": <@bob>"]),
        st.sampled_from(["", " and 4 more", " and more", " staging"]),
    ),
)
EXPIRES_TEXTS = st.from_regex(
    r"(2026-0[1-9]-1[0-9] )?[0-2][0-9]:[0-5][0-9] UTC \(in ([0-9]{1,2}h( [0-9]{1,2}m)?|[0-9]{1,3}d|[0-9]s)\)"
    r"( staging)?",
    fullmatch=True,
)


def _nodes(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    yield path, node
    if isinstance(node, list):
        for i, item in enumerate(node):
            yield from _nodes(item, (*path, i))
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from _nodes(v, (*path, k))


def _parent(root: Any, path: tuple[Any, ...]) -> Any:
    node = root
    for step in path[:-1]:
        node = node[step]
    return node


def _mutate(data: st.DataObject, blocks: Blocks) -> None:
    """One random mutation of ``blocks`` in place."""
    op = data.draw(
        st.sampled_from(
            ["char", "char", "list", "flag", "flag", "kind", "add_key", "drop_key", "status", "status"]
        ),
        label="op",
    )
    nodes = list(_nodes(blocks))
    if op == "char":
        path, text = data.draw(st.sampled_from([(p, v) for p, v in nodes if isinstance(v, str) and p]))
        i = data.draw(st.integers(0, len(text)))
        how = data.draw(st.sampled_from(["replace", "insert", "delete"]))
        c = data.draw(EDIT_CHARS)
        new = {"replace": text[:i] + c + text[i + 1 :], "insert": text[:i] + c + text[i:]}.get(
            how, text[:i] + text[i + 1 :]
        )
        _parent(blocks, path)[path[-1]] = new
    elif op == "list":
        path, items = data.draw(st.sampled_from([(p, v) for p, v in nodes if isinstance(v, list) and v]))
        i, j = data.draw(st.integers(0, len(items) - 1)), data.draw(st.integers(0, len(items) - 1))
        how = data.draw(st.sampled_from(["delete", "duplicate", "swap", "insert_block"]))
        if how == "delete":
            del items[i]
        elif how == "duplicate":
            items.insert(j, copy.deepcopy(items[i]))
        elif how == "swap":
            items[i], items[j] = items[j], items[i]
        else:
            items.insert(i, copy.deepcopy(data.draw(st.sampled_from(NEW_BLOCKS))))
    elif op == "flag":
        texts = [n for _, n in nodes if isinstance(n, dict) and n.get("type") in ("plain_text", "mrkdwn")]
        if not texts:
            return
        obj = data.draw(st.sampled_from(texts))
        key = data.draw(st.sampled_from(["emoji", "verbatim"]))
        value = data.draw(st.sampled_from([None, True, False]))
        if value is None:
            obj.pop(key, None)
        else:
            obj[key] = value
    elif op == "kind":
        b = data.draw(st.sampled_from(blocks))
        b["type"] = data.draw(st.sampled_from([k for k in BLOCK_KINDS if k != b.get("type")]))
    elif op == "add_key":
        obj = data.draw(st.sampled_from([n for _, n in nodes if isinstance(n, dict)]))
        key = data.draw(st.sampled_from(sorted(NEW_KEYS)))
        obj[key] = copy.deepcopy(NEW_KEYS[key])
    elif op == "drop_key":
        obj = data.draw(st.sampled_from([n for _, n in nodes if isinstance(n, dict) and n]))
        del obj[data.draw(st.sampled_from(sorted(obj)))]
    else:
        # A status text rewritten in (or near) its grammar: the one change the signer must tolerate.
        status = [b for b in blocks if b.get("block_id") == STATUS_BLOCK]
        fields = status[0].get("fields") if status else None
        if isinstance(fields, list) and len(fields) == 3 and all(isinstance(f, dict) for f in fields):
            if data.draw(st.booleans()):
                fields[1]["text"] = APPROVALS_LABEL + data.draw(APPROVALS_TEXTS)
            else:
                fields[2]["text"] = EXPIRES_LABEL + data.draw(EXPIRES_TEXTS)


def oracle_accepts(
    message: dict[str, Any], original: Blocks, quorum: int, approver: Callable[[str], bool]
) -> bool:
    """Independent verdict: the echo shows exactly the original card, except status texts that are in
    their grammar (approvals out of ``quorum``, naming only approvers); no sender name or picture of its
    own."""
    if message.get("attachments") not in (None, []) or message.get("files") not in (None, []):
        return False
    if "username" in message or "icons" in message:
        return False
    got, want = display_equivalent(message.get("blocks")), display_equivalent(original)
    if got == want:
        return True
    status_at = next(i for i, b in enumerate(original) if b["block_id"] == STATUS_BLOCK)
    try:
        fields = got[status_at]["fields"]
        approvals, expires = fields[1]["text"], fields[2]["text"]
        patched = copy.deepcopy(got)
        patched[status_at]["fields"][1]["text"] = want[status_at]["fields"][1]["text"]
        patched[status_at]["fields"][2]["text"] = want[status_at]["fields"][2]["text"]
    except (KeyError, IndexError, TypeError):
        return False
    return (
        isinstance(approvals, str)
        and isinstance(expires, str)
        and approvals.startswith(APPROVALS_LABEL)
        and expires.startswith(EXPIRES_LABEL)
        and approvals_ok(approvals[len(APPROVALS_LABEL) :], quorum, approver)
        and expires_ok(expires[len(EXPIRES_LABEL) :])
        and patched == want
    )


def _facts(origin: Origin) -> CardFacts:
    evidence = as_evidence(origin)
    return card_facts(rid_of(origin), origin_claim(evidence, ATTACK_POLICY), evidence, ATTACK_POLICY)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_card_accepted_only_when_nothing_shown_changed(data: st.DataObject) -> None:
    """Random mutations of true cards: the signer's check accepts exactly when the independent oracle says
    the screen is the same card (status texts aside, within their grammar)."""
    which = data.draw(st.integers(0, len(TRUE_CARDS) - 1), label="card")
    origin, original = MUTATION_ORIGINS[which], TRUE_CARDS[which]
    blocks = copy.deepcopy(original)
    for _ in range(data.draw(st.sampled_from([1, 1, 2, 3]), label="mutations")):
        _mutate(data, blocks)
    message: dict[str, Any] = {"type": "message", "text": "Deploy approval", "blocks": blocks}
    extra = data.draw(
        st.sampled_from([None, None, None, "attachments", "files", "empty attachments"]), label="extra"
    )
    if extra == "attachments":
        message["attachments"] = [{"text": OTHER}]
    elif extra == "files":
        message["files"] = [{"id": "F0X", "name": f"{OTHER}.txt"}]
    elif extra == "empty attachments":
        message["attachments"] = []
    facts = _facts(origin)
    env = ATTACK_POLICY.environment(facts.scope.environment)
    try:
        check_clicked_card(
            message,
            facts,
            environments=ENVIRONMENTS,
            confirm=env.confirm_approve,
            required_approvals=env.required_approvals,
            may_approve=lambda uid: ATTACK_POLICY.authorizes(facts.scope.environment, uid),
        )
        accepted = True
    except CardMismatch:
        accepted = False
    event("accepted" if accepted else "refused")
    approver = functools.partial(ATTACK_POLICY.authorizes, facts.scope.environment)
    assert accepted == oracle_accepts(message, original, env.required_approvals, approver), json.dumps(
        message, ensure_ascii=False
    )


# --- hypothesis (b): random free text through the honest renderer -------------------------------------------

# Look-alikes of the scripts the renderer documents (Cyrillic, Greek, Armenian, Cherokee, Roman numerals);
# the ones outside are LOOKALIKE_GAPS above.
DOCUMENTED_LOOKALIKES = {
    "0": "оοօОΟՕ",
    "1": "ӀΙⅠ",
    "3": "Зз",
    "6": "б",
    "8": "ȣ",
    "a": "аαɑ",
    "b": "Ьƅ",
    "c": "сϲⅽ",
    "d": "ԁⅾ",
    "e": "еҽ",
    "A": "АΑᎪ",
    "B": "ВΒᏴ",
    "C": "СϹᏟⅭ",
    "D": "ᎠⅮ",
    "E": "ЕΕᎬ",
    "F": "Ϝ",
    "p": "рρ",
    "o": "оοօ",
    "u": "υս",
    "i": "іι",
    "n": "ո",
    "s": "ѕ",
    "g": "ɡց",
}
INVISIBLES = [
    "\u200b",
    "\u200c",
    "\u200d",
    "\u2060",
    "\u00ad",
    "\ufeff",
    "\u202e",
    "\u2066",
    "\u034f",
    "\ufe0f",
]
MARKS = ["\u0301", "\u0332", "\u0336", "\u20d2"]


@functools.cache
def _variants(ch: str) -> tuple[str, ...]:
    forms = {ch, ch.upper(), fullwidth(ch), math_bold(ch) if ch.islower() or ch.isdigit() else ch}
    return tuple(sorted(forms | set(DOCUMENTED_LOOKALIKES.get(ch, ""))))


# Mostly nothing between two characters; sometimes an invisible character or a combining mark.
GLUES = ["", "", "", "", "", "", *INVISIBLES, *MARKS]
HEX = "0123456789abcdef"
# One 16-bit code per character drives every choice (two bytes of a binary draw: far faster to generate and
# shrink than a tuple of per-character strategies): bits 0-3 a hex digit, bit 4 whether to disguise the
# character, bits 5-8 which disguise, bits 9-15 what follows it.


def codes(n_min: int, n_max: int) -> st.SearchStrategy[list[int]]:
    """Between ``n_min`` and ``n_max`` 16-bit codes."""
    return st.binary(min_size=2 * n_min, max_size=2 * n_max).map(
        lambda b: [int.from_bytes(b[i : i + 2], "little") for i in range(0, len(b) - 1, 2)]
    )


def disguise(word: str, codes: list[int]) -> str:
    """``word`` with each character possibly re-cased, folded or re-spelled, and followed by nothing, an
    invisible character or a combining mark, as ``codes`` say."""
    out: list[str] = []
    for ch, code in zip(word, codes, strict=False):
        variants = _variants(ch)
        out.append(variants[(code >> 5) % len(variants)] if code >> 4 & 1 else ch)
        out.append(GLUES[(code >> 9) % len(GLUES)])
    return "".join(out)


PIECES = st.one_of(
    codes(40, 64).map(lambda c: disguise("".join(HEX[x & 15] for x in c), c)),
    st.tuples(st.sampled_from(["production", "staging", "prod-eu"]), codes(10, 10)).map(
        lambda t: disguise(*t)
    ),
    st.just(SHA),
    st.text(st.characters(codec="utf-8"), max_size=12),
    st.from_regex(r":[a-z0-9_+'-]{1,12}:", fullmatch=True),
)
# Pieces are joined by a visible separator: a hash glued straight onto an environment name (or glued by an
# invisible character, which is removed) is the known gap "environment un-glued by a cut hash"
# (LOOKALIKE_GAPS), asserted there. Invisibles and marks still glue the characters inside each piece.
FREE_TEXT = st.lists(
    st.tuples(PIECES, st.sampled_from([" ", "-", "/", "_", "\n"])), min_size=1, max_size=5
).map(lambda parts: "".join(p + s for p, s in parts))


def _requester(text: str) -> str:
    # Whitespace becomes "-", not nothing: dropping it would glue pieces together (see FREE_TEXT).
    text = "".join("-" if c.isspace() else c for c in text)
    kept = "".join(c for c in text if not c.isspace() and c not in "<>&" and ord(c) >= 0x20 and c != "\x7f")
    return (kept or "x")[:255]


def _url(text: str) -> str:
    text = "".join("-" if c.isspace() else c for c in text)
    kept = "".join(
        c for c in text if not c.isspace() and c not in "<>|\"'`" and ord(c) >= 0x20 and c != "\x7f"
    )
    return "https://ci.example/" + kept[:1000]


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    environment=st.sampled_from(["production", "staging", "prod-eu"]),
    title=FREE_TEXT,
    ref=FREE_TEXT,
    run=FREE_TEXT,
    requester=FREE_TEXT,
)
def test_free_text_never_shows_a_foreign_value(
    environment: str, title: str, ref: str, run: str, requester: str
) -> None:
    """Random CI free text built from other commits and environments (re-cased, folded, re-spelled with the
    documented look-alikes, glued by invisibles and marks), emoji codes and arbitrary characters: the honest
    card never shows a foreign value to the independent reader, and the signer always accepts it."""
    origin = honest_origin(
        environment,
        title=title[:300] or "x",
        ref=ref[:255] or "x",
        runUrl=_url(run),
        requester=_requester(requester),
    )
    blocks = card(origin)
    assert_shows_only_its_own(blocks, environment)
    signer_accepts(origin, blocks)


def test_reader_model_sees_through_the_tricks() -> None:
    """The oracle itself: it must catch each trick in raw text, or the tests above would prove nothing."""
    tricks = [
        split(OTHER, "\u200b", 20),
        OTHER.translate(_CYRILLIC),
        fullwidth(OTHER),
        _each(OTHER, "\u20e3"),
        OTHER.translate(_SMALL_CAPS),
    ]
    for text in tricks:
        assert foreign_hashes([plain(text)], SHA) == [OTHER], text
    for text in ["PRODUCTION", "pro\u00adduction", "production".translate(_SMALL_CAPS), "🅿🆁🅾🅳🆄🅲🆃🅸🅾🅽"]:
        assert foreign_environments([plain(text)], "staging", ENVIRONMENTS) == ["production"], text
    assert foreign_environments([plain("prod-eu")], "prod-eu", ENVIRONMENTS) == []
    assert emoji_codes([mrkdwn(":fire:"), {"type": "plain_text", "text": ":x:", "emoji": False}]) == [
        ":fire:"
    ]
    # The class-0 mark used above is a nonspacing mark the renderer's combining() test does not skip.
    assert unicodedata.category("\u0e31") == "Mn"
    assert unicodedata.combining("\u0e31") == 0


def _everywhere(node: Any, change: Callable[[dict[str, Any]], None]) -> Any:
    """Apply ``change`` to every text object under ``node`` (in place); ``node``."""
    for _path, n in list(_nodes(node)):
        if isinstance(n, dict) and n.get("type") in ("plain_text", "mrkdwn"):
            change(n)
    return node


@pytest.mark.parametrize(
    "tolerated",
    [
        pytest.param(
            lambda b: _everywhere(b, lambda t: t.update(verbatim=False)), id="verbatim false everywhere"
        ),
        pytest.param(lambda b: _everywhere(b, lambda t: t.pop("verbatim", None)), id="verbatim dropped"),
        pytest.param(
            lambda b: _everywhere(
                b, lambda t: t.setdefault("emoji", True) if t["type"] == "plain_text" else None
            ),
            id="emoji true made explicit (as Slack stores it)",
        ),
        pytest.param(lambda b: json.loads(json.dumps(b, sort_keys=True)), id="keys reordered"),
        pytest.param(lambda b: json.loads(json.dumps(b).replace("/", "\\/")), id="slashes escaped"),
    ],
)
def test_tolerated_echo_differences_are_accepted(tolerated: Callable[[Blocks], Any]) -> None:
    """What Slack's echo may change without changing the screen is accepted, by the signer and the oracle
    alike (so the mutation test's acceptance side is not vacuous)."""
    for origin, original in zip(MUTATION_ORIGINS, TRUE_CARDS, strict=True):
        blocks = copy.deepcopy(original)
        echoed = tolerated(blocks)
        blocks = blocks if echoed is None else echoed
        facts = _facts(origin)
        env = ATTACK_POLICY.environment(facts.scope.environment)
        message = {"type": "message", "blocks": blocks}
        check_clicked_card(
            message,
            facts,
            environments=ENVIRONMENTS,
            confirm=env.confirm_approve,
            required_approvals=env.required_approvals,
            may_approve=functools.partial(ATTACK_POLICY.authorizes, facts.scope.environment),
        )
        approver = functools.partial(ATTACK_POLICY.authorizes, facts.scope.environment)
        assert oracle_accepts(message, original, env.required_approvals, approver)
