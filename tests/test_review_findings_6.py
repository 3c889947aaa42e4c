"""The sixth review's findings: one test per attack, named after it, asserting what the product answers. Each
was first committed as ``xfail(strict=True)`` (the product failed it), then fixed (docs/security.md, "Sixth
review").

Played: a rejection of the attempt its request was opened for, the run not re-run, while GitHub's read of
the checked attempt's deployment fails or disagrees with the webhook; GitHub (or a proxy) answering a read
with a body that is not JSON; an earlier attempt's webhook delivered after the re-run's; and, held, event
names that are variants of admitted ones.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from keyturn.bot.callbacks import refused
from keyturn.signer.errors import KeyturnError
from tests.test_review_findings_5 import FlakyReviews, _ask, _event_claim, _no_wait_approver, _policy, _rig
from tests.test_review_findings_oidc_github import _deliver, _webhook, bound_receipt

# --- OIDC: the allow-list is exact; variants of an admitted name are other names ------------------------

VARIANTS = [
    "Push",
    "PUSH",
    "push ",
    " push",
    "push\n",
    "push\u200b",
    "\uff50\uff55\uff53\uff48",
    "push\x00",
    "pu\u0073h\u0301",
]


@pytest.mark.parametrize("kind", ["github", "gitlab"])
@pytest.mark.parametrize("event", VARIANTS)
def test_a_variant_of_an_admitted_event_name_passes_no_branch_rule(kind: str, event: str) -> None:
    """Tried as an attack, held: a job cannot pass the allow-list with another casing, padding, a zero-width
    or combining character, or full-width letters of ``push`` (a CI platform never sends them, but the claim
    is the issuer's string as signed, and the comparison must not normalise it). Since the card names the
    event, a name outside the platforms' grammar (``contract.EVENT_RE``: lower-case words joined by single
    underscores) is refused before the rule, as ``bad_origin``; none of these variants fits it."""
    with pytest.raises(KeyturnError) as exc:
        _ask(kind, _policy(kind), **{_event_claim(kind): event})
    assert exc.value.code == "bad_origin"


@pytest.mark.parametrize("kind", ["github", "gitlab"])
@pytest.mark.parametrize("event", ["", 7, True, ["push"], {"push": 1}])
def test_an_empty_or_non_string_event_claim_is_no_event(kind: str, event: object) -> None:
    """Tried, held: an event claim that is empty or not a string is read as none (``no_event``), never as
    ``push``."""
    with pytest.raises(KeyturnError) as exc:
        _ask(kind, _policy(kind), **{_event_claim(kind): event})
    assert exc.value.code == "oidc_event_not_allowed"
    assert "names no event" in exc.value.message


class BrokenDeployment(FlakyReviews):
    """:class:`FlakyReviews`, but once ``broken`` the deployment reads as ``answer`` (deleted: 404; or
    rewritten: another sha than the webhook's)."""

    def __init__(self, answer: httpx.Response) -> None:
        super().__init__()
        self.answer = answer
        self.broken = False

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.broken and "/deployments/" in request.url.path:
            return self.answer
        return await super().__call__(request)


# Deleted (or the App lost its deployments permission: 403, the same read failure), or disagreeing with the
# webhook (any run_scope mismatch takes the same path).
ANSWERS = {
    "deleted": httpx.Response(404, json={"message": "Not Found"}),
    "rewritten": httpx.Response(200, json={"id": 1041, "sha": "f" * 40, "environment": "production"}),
}


@pytest.mark.parametrize("deployment", sorted(ANSWERS))
async def test_attack_a_broken_deployment_read_strands_the_rejection(tmp_path: Path, deployment: str) -> None:
    """Run 41 waits at attempt 1; its request was denied in Slack and the run was never re-run. Since the
    fifth review the approver re-reads the run before rejecting, but it read the whole scope (the run and the
    deployment) as for an approval, although a rejection needs only the attempt: a deployment GitHub no
    longer gives (deleted: 502 on every try, so the outbox retried until it dead-lettered) or one that
    disagrees with the webhook (409 ``run_mismatch``, final) left the run waiting for GitHub's 30-day timeout
    while Slack said it was denied. A rejection must be posted whatever the deployment reads as: it is the
    fail-closed answer, and the attempt check alone keeps it off a re-run."""
    github = BrokenDeployment(ANSWERS[deployment])
    async with _rig(tmp_path, github) as rig:
        github.down, github.broken = False, True
        record = await rig.bot.hand_over(rig.denied, None)
        assert (record["outcome"], record["status"]) == ("delivered", 200), record
        assert not refused(record)
        assert github.reviews == [(41, 1, "rejected")]


@pytest.mark.parametrize("deployment", sorted(ANSWERS))
async def test_an_approval_still_needs_the_deployment_to_agree(tmp_path: Path, deployment: str) -> None:
    """The fix is the rejection's only: an approval still reads the deployment and refuses it unread (502,
    retried) or disagreeing (409 ``run_mismatch``); nothing is posted."""
    github = BrokenDeployment(ANSWERS[deployment])
    async with _rig(tmp_path, github) as rig:
        github.down, github.broken = False, True
        receipt, arrival = bound_receipt(_webhook(41, deployment_id=1041), "delivery-a1")
        answer = await rig.approver.approve((41, "production"), receipt, arrival)
        expected = (502, "github_unavailable") if deployment == "deleted" else (409, "run_mismatch")
        assert (answer.status_code, json.loads(bytes(answer.body))["error"]) == expected
        assert github.reviews == []


# --- the approver: GitHub's answer that is not JSON -------------------------------------------------------


class GarbledReads(FlakyReviews):
    """:class:`FlakyReviews`, but while ``garbled`` every read answers 200 with a body that is not the JSON
    object GitHub gives (a proxy's HTML page, a truncated answer)."""

    def __init__(self, body: bytes) -> None:
        super().__init__()
        self.body = body
        self.garbled = False

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.garbled and request.method == "GET":
            return httpx.Response(200, content=self.body, headers={"content-type": "text/html"})
        return await super().__call__(request)


@pytest.mark.parametrize("body", [b"<html>proxy</html>", b'{"id": 4'], ids=["html", "cut"])
async def test_attack_a_garbled_github_read_strands_the_webhook(tmp_path: Path, body: bytes) -> None:
    """GitHub (or a proxy in front of it) answers the approver's read of the run with 200 and a body that is
    not a JSON object. ``read_json`` parsed it unguarded: the ValueError escaped as a 500 (a 502 belongs:
    GitHub's fault, retried), and at webhook time after the delivery was claimed, so the claim was never
    released: once GitHub answered again, the bot's (or GitHub's) redelivery of that webhook was
    ``replayed_delivery`` and the run waited for GitHub's timeout with no request. Now: 502
    ``github_unavailable``, the claim released, the redelivery taken."""
    github = GarbledReads(body)
    async with _rig(tmp_path, github) as rig:
        github.down, github.garbled = False, True
        rerun = _webhook(41, deployment_id=2041)
        github.attempts[41] = 2
        assert await _deliver(rig.approver, rerun, "delivery-a2") == (502, "github_unavailable")
        reject = await rig.approver.reject((41, "production"), "denied", None, "delivery-a1")
        assert (reject.status_code, json.loads(bytes(reject.body))["error"]) == (502, "github_unavailable")
        github.garbled = False
        assert await _deliver(rig.approver, rerun, "delivery-a2") == (200, None)


# --- the approver: a webhook GitHub delivers late, after the re-run's ---------------------------------------


def _dated_webhook(deployment_id: int, created_at: str) -> bytes:
    """Run 41's webhook for ``deployment_id``, created (GitHub-signed) at ``created_at``."""
    payload = json.loads(_webhook(41, deployment_id=deployment_id))
    payload["deployment"]["created_at"] = created_at
    return json.dumps(payload).encode()


async def test_attack_a_late_first_webhook_rejects_the_rerun(tmp_path: Path) -> None:
    """Run 41 was re-run before GitHub's webhook for attempt 1 (deployment 1041) reached the approver:
    GitHub's deliveries are asynchronous, and a hostile bot may simply hold one back. The re-run's webhook
    (attempt 2, deployment 2041) came first and waits for its own request. The late one is "never taken", so
    it replaced the re-run's, kept with the attempt GitHub reports *now* (2): the approver cannot tell a
    webhook's own attempt. Its request (``scope_busy`` behind the re-run's, or denied) is rejected naming
    that delivery, which is the kept one, at the attempt kept, and GitHub still reports 2: the rejection lands
    on the re-run, whose own request's approvers were never asked (the fifth review's binding is to the
    approver's read, not to the attempt the webhook was sent for), and the re-run's own rejection was refused.
    Now a webhook whose deployment was created before the kept one's is ``stale_webhook`` (409) and replaces
    nothing."""
    github = FlakyReviews()
    github.down = False
    github.attempts[41] = 2
    async with httpx.AsyncClient(transport=httpx.MockTransport(github)) as gh_client:
        approver = _no_wait_approver(tmp_path, gh_client)
        rerun = _dated_webhook(2041, "2026-11-30T10:05:01Z")
        assert await _deliver(approver, rerun, "delivery-a2") == (200, None)
        late = _dated_webhook(1041, "2026-11-30T10:00:02Z")
        assert await _deliver(approver, late, "delivery-a1") == (409, "stale_webhook")
        reject = await approver.reject((41, "production"), "another run is waiting", None, "delivery-a1")
        assert (reject.status_code, json.loads(bytes(reject.body)).get("error")) == (
            409,
            "run_attempt_changed",
        )
        assert github.reviews == []
        # The re-run's own rejection still lands on it; the late webhook stays refused.
        own = await approver.reject((41, "production"), "denied", None, "delivery-a2")
        assert own.status_code == 200
        assert github.reviews == [(41, 2, "rejected")]
        assert await _deliver(approver, late, "delivery-a1") == (409, "replayed_delivery")


@pytest.mark.parametrize("second", ["2026-11-30T10:00:02Z", "2026-11-30T10:05:01Z"], ids=["same", "later"])
async def test_a_second_webhook_not_older_than_the_kept_one_replaces_it(tmp_path: Path, second: str) -> None:
    """The check refuses only an older deployment than the kept one: a re-run's (later), or a second job of
    the same attempt deploying to the same environment (created the same second), replaces it as before."""
    github = FlakyReviews()
    github.down = False
    async with httpx.AsyncClient(transport=httpx.MockTransport(github)) as gh_client:
        approver = _no_wait_approver(tmp_path, gh_client)
        assert await _deliver(approver, _dated_webhook(1041, "2026-11-30T10:00:02Z"), "delivery-a1") == (
            200,
            None,
        )
        assert await _deliver(approver, _dated_webhook(2041, second), "delivery-b") == (200, None)
        assert approver.runs[(41, "production")].webhook.delivery == "delivery-b"
