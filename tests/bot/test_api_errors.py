"""The CI API's errors (issue 10, "one error model"): one table of statuses, the words from one module, and
never a 5xx for a client's fault."""

from __future__ import annotations

import ast
import time
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from keyturn.bot.api import HTTP_STATUS, Api, ApiError, status_of
from keyturn.bot.metrics import Metrics
from keyturn.bot.ports import Refused
from keyturn.bot.signer_client import SignerRefused, SignerUnavailable, signer_unavailable
from keyturn.signer.errors import KeyturnError
from keyturn.signer.words import has_words, words

ROOT = Path(__file__).resolve().parents[2]
# The only codes that may be a 5xx: the bot's dependencies are down, it is stopping, or it failed itself.
OUTAGES = {
    "signer_unavailable",
    "store_unavailable",
    "not_ready",
    "shutting_down",
    "internal_error",
    "approver_unavailable",
    "approver_error",
}


def raised_codes(path: Path, names: set[str]) -> set[str]:
    """The literal codes a module raises through the given error classes (``ApiError("code", ...)``)."""
    tree = ast.parse(path.read_text())
    return {
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in names
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    }


API_CODES = raised_codes(ROOT / "bot" / "api.py", {"ApiError"}) | raised_codes(
    ROOT / "bot" / "github.py", {"_error"}
)
# The service's refusals reach the API too (relayed with their code, facts and words).
REFUSED_CODES = raised_codes(ROOT / "bot" / "lifecycle.py", {"Refused"}) | raised_codes(
    ROOT / "bot" / "approvals.py", {"Refused"}
)


def test_the_scan_finds_the_codes() -> None:
    assert {"unauthorized", "body_too_large", "invalid_parameter", "not_approved"} <= API_CODES
    assert {"not_pending", "not_an_approver", "self_approval", "reason_required"} <= REFUSED_CODES


@pytest.mark.parametrize("code", sorted(API_CODES | REFUSED_CODES))
def test_every_code_the_api_can_answer_has_a_status_and_words(code: str) -> None:
    assert code in HTTP_STATUS, f"{code} has no HTTP status in bot/api.py's HTTP_STATUS"
    assert has_words(code), f"{code} has no sentence in keyturn.signer.words"
    if code not in OUTAGES:
        assert 400 <= HTTP_STATUS[code] < 500, f"{code}: a client's fault must be a 4xx"


def test_only_outages_are_5xx_in_the_table() -> None:
    assert {code for code, status in HTTP_STATUS.items() if status >= 500} == OUTAGES


def test_an_unlisted_code_is_a_client_fault_never_a_5xx() -> None:
    assert status_of("some_new_refusal") == 400
    assert status_of("oidc_branch_not_allowed") == 403  # the signer's family of refused claims
    assert status_of("oidc_token_expired", 401) == 401  # a caller's default for what it relays


def test_a_refusal_is_relayed_with_its_status_facts_and_words() -> None:
    err = ApiError.relay(Refused("not_an_approver", environment="production"))
    assert (err.http_status, err.code, err.facts) == (403, "not_an_approver", {"environment": "production"})
    assert err.message == "You are not an approver for production."


async def test_the_http_body_carries_the_code_and_the_words() -> None:
    """Wire shape unchanged: ``{"error": code, "message": ...}``, the message from the words module."""
    api = Api(None, None, None, None, Metrics(), base_url="http://bot.test")  # type: ignore[arg-type]
    app = Starlette(routes=api.routes())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bot.test") as http:
        resp = await http.get("/v1/requests/not-a-request-id")
    assert resp.status_code == 404
    assert resp.json() == {"error": "unknown_request", "message": words("unknown_request")}


@pytest.mark.parametrize(
    ("exc", "unavailable"),
    [
        (SignerUnavailable("the signer closed the connection"), True),
        (ConnectionResetError(), True),
        (TimeoutError(), True),
        (SignerRefused("timeout", "request took longer than 5 s"), True),  # the signer's own "not now"
        (SignerRefused("too_many_connections", "busy"), True),
        (SignerRefused("bad_ci_signature", "signature does not match"), False),
        (KeyturnError(code="not_expired"), False),
    ],
)
def test_signer_unavailable_is_one_test(exc: BaseException, unavailable: bool) -> None:
    """The CI API, the Slack listener, signing and outcome recording all ask this one function."""
    assert signer_unavailable(exc) is unavailable


class SlowSigner:
    """Answers every check with the signer's own ``timeout``: it could not say yes or no in time."""

    async def check_ci(self, method: str, path: str, body: bytes, timestamp: str, signature: str) -> None:
        raise SignerRefused("timeout", "request took longer than 5 s")


async def test_a_signer_that_ran_out_of_time_is_a_503_not_a_failed_authentication() -> None:
    """Before, the CI API read the signer's ``timeout`` as a refused signature (401, and a token off the
    caller's failure budget) while signing read it as "retry"."""
    api = Api(None, None, SlowSigner(), None, Metrics(), base_url="http://bot.test")  # type: ignore[arg-type]
    app = Starlette(routes=api.routes())
    headers = {"X-Keyturn-Timestamp": str(int(time.time())), "X-Keyturn-Signature": "v1=" + "0" * 64}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bot.test") as http:
        resp = await http.get("/v1/requests/req_01JAAAAAAAAAAAAAAAAAAAAAAA", headers=headers)
    assert resp.status_code == 503
    assert resp.json()["error"] == "signer_unavailable"


def test_the_bots_other_errors_are_keyturn_errors_with_codes() -> None:
    """`keyturn request`'s exit, the scheduler's refusals and `keyturn dev`'s start-up failures share the one
    base: a stable code (and, for dev, facts said by the words module)."""
    from keyturn.bot.client import REFUSED, UNREACHABLE, USAGE, Exit
    from keyturn.bot.dev import DevError
    from keyturn.bot.scheduler import BadJob, StaleLeader, TimerError

    exits = [Exit(status, "no_receipt", status=404) for status in (REFUSED, USAGE, UNREACHABLE)]
    assert [(e.status, e.code, e.message) for e in exits] == [
        (REFUSED, "request_refused", "no receipt (HTTP 404)"),
        (USAGE, "request_invalid", "no receipt (HTTP 404)"),
        (UNREACHABLE, "request_unreachable", "no receipt (HTTP 404)"),
    ]
    assert all(isinstance(e, KeyturnError) for e in exits)
    timer_errors = [BadJob("request_id"), StaleLeader("fence")]
    assert [(e.code, str(e)) for e in timer_errors] == [
        ("bad_job", "bad request id"),
        ("stale_leader", "fencing token is no longer the leader's"),
    ]
    assert issubclass(TimerError, KeyturnError)
    assert str(DevError("dev_not_ready", name="bot", seconds="30")) == "bot was not ready after 30s"
    assert (
        str(DevError("dev_not_ready", name="bot", status=1)) == "bot exited with code 1 before it was ready"
    )
    assert has_words("dev_no_redis")
    assert "redis-server is missing" in str(DevError("dev_no_redis"))
