"""The approval flow across real processes: CI request → card in the emulator → clicks → receipt."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime

from keyturn.bot.cards import REASON_ACTION, REASON_BLOCK
from keyturn.signer.keyset import PublicKeyset
from keyturn.signer.receipt import Scope
from keyturn.signer.verify import verify_receipt
from tests.e2e.conftest import SHA, Stack


def _ephemeral_texts(stack: Stack, user: str) -> list[str]:
    return [str(e.get("text", "")) for e in stack.emulator.ephemerals(user)]


def test_happy_path_two_of_n_gives_a_verifiable_receipt(stack: Stack) -> None:
    created = stack.create()
    assert created["status"] == "PENDING"
    req = stack.card(created["requestId"])
    rid = req["requestId"]
    post = stack.emulator.wait_for("chat.postMessage", channel="C0DEPLOYS")
    assert SHA in json.dumps(post["params"])

    stack.click("U0BOB", req)
    after_one = stack.wait_version(rid, req["version"])
    assert after_one["approvalsCount"] == 1
    assert after_one["status"] == "PENDING"

    stack.click("U0CAROL", req)
    done = stack.wait_status(rid, "APPROVED")
    assert done["decidedBy"] == "U0CAROL"
    assert {a["userId"] for a in done["approvals"]} == {"U0BOB", "U0CAROL"}

    receipt = stack.get(f"/v1/requests/{rid}/receipt")
    assert receipt.status_code == 200
    keyset = PublicKeyset.from_jwks(stack.keys_file.read_bytes())
    verified = verify_receipt(
        receipt.content, keyset, Scope("acme/web", SHA, "production", "deploy.yml"), datetime.now(UTC)
    )
    assert verified.request_id == rid
    # The card is updated in place and the requester hears about it.
    stack.emulator.wait_for("chat.update", channel="C0DEPLOYS", ts=req["card"]["ts"])
    stack.emulator.wait_for("chat.postMessage", channel="C0DEPLOYS", thread_ts=req["card"]["ts"])


def test_self_approval_is_refused(stack: Stack) -> None:
    req = stack.card(stack.create()["requestId"])
    since = len(stack.emulator.calls())
    stack.click("U0ALICE", req)  # alice requested it (github:alice → U0ALICE); she is no approver here either
    stack.emulator.wait_for("chat.postEphemeral", since=since, user="U0ALICE")
    staging = stack.card(stack.create(environment="staging")["requestId"])
    since = len(stack.emulator.calls())
    stack.click("U0ALICE", staging)  # an approver of staging, but the requester
    call = stack.emulator.wait_for("chat.postEphemeral", since=since, user="U0ALICE")
    assert "requested this deploy" in json.dumps(call["params"])
    assert stack.get(f"/v1/requests/{staging['requestId']}").json()["approvalsCount"] == 0


def test_unauthorized_user_is_refused(stack: Stack) -> None:
    req = stack.card(stack.create()["requestId"])
    since = len(stack.emulator.calls())
    stack.click("U0MALLORY", req)
    call = stack.emulator.wait_for("chat.postEphemeral", since=since, user="U0MALLORY")
    assert "not an approver for production" in json.dumps(call["params"])
    assert stack.get(f"/v1/requests/{req['requestId']}").json()["approvalsCount"] == 0


def test_group_member_is_accepted(stack: Stack) -> None:
    req = stack.card(stack.create()["requestId"])
    stack.click("U0ERIN", req)  # in S0ONCALL
    after = stack.wait_version(req["requestId"], req["version"])
    assert [a["userId"] for a in after["approvals"]] == ["U0ERIN"]
    stack.click("U0BOB", req)
    assert stack.wait_status(req["requestId"], "APPROVED")["receiptId"]


def test_double_and_concurrent_clicks_make_one_receipt(stack: Stack) -> None:
    req = stack.card(stack.create()["requestId"])
    rid = req["requestId"]
    stack.click("U0BOB", req)
    stack.click("U0BOB", req)  # double-click
    threads = [
        threading.Thread(target=stack.click, args=(user, req))
        for user in ("U0CAROL", "U0ERIN", "U0CAROL", "U0ERIN", "U0BOB", "U0CAROL")
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done = stack.wait_status(rid, "APPROVED")
    users = [a["userId"] for a in done["approvals"]]
    assert len(users) == len(set(users))
    # Exactly one receipt was issued: the signer's audit log has one entry for this request.
    audit = (stack.workdir / "audit.jsonl").read_text().splitlines()
    assert sum(rid in line for line in audit) == 1


def test_deny_with_reason_and_with_empty_reason(stack: Stack) -> None:
    req = stack.card(stack.create()["requestId"])
    rid = req["requestId"]
    since = len(stack.emulator.calls())
    stack.click("U0BOB", req, action="deny")
    opened = stack.emulator.wait_for("views.open", since=since)
    view_id = opened["response"]["view"]["id"]
    empty = stack.emulator.submit_view("U0BOB", view_id, {REASON_BLOCK: {REASON_ACTION: "   "}})
    assert empty.status == 200
    assert empty.json["response_action"] == "errors"
    assert stack.get(f"/v1/requests/{rid}").json()["status"] == "PENDING"
    ok = stack.emulator.submit_view("U0BOB", view_id, {REASON_BLOCK: {REASON_ACTION: "tests are red"}})
    assert ok.status == 200
    done = stack.wait_status(rid, "DENIED")
    assert (done["decidedBy"], done["denyReason"]) == ("U0BOB", "tests are red")
    assert stack.get(f"/v1/requests/{rid}/receipt").status_code == 409
