"""Redis restarted (AOF on, state intact) under the bot: no click and no request is lost or counted twice.

Before bot/redisconn.py's bounded retry, the first click after a restart met a pooled connection the server
had closed and was dropped (``StoreUnavailable: redis: ConnectionError`` from ``add_approval``), 2 runs in 8.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from typing import Any

import pytest

from tests.faults.conftest import QUORUM_USERS, FaultStack

pytestmark = pytest.mark.slow


def _texts(stack: FaultStack, user: str) -> list[str]:
    return [json.dumps(e) for e in stack.emulator.ephemerals(user)]


def test_every_click_lands_once_across_twenty_redis_restarts(fstack: FaultStack) -> None:
    """20 approvers click one request; Redis restarts before every click (or is down while it arrives)."""
    req = fstack.card(fstack.create(environment="quorum20")["requestId"])
    rid = req["requestId"]
    version = req["version"]
    for i, user in enumerate(QUORUM_USERS):
        since = len(fstack.emulator.calls())
        if i % 2 == 0:
            # A restart between clicks: every pooled connection of the bot is now closed by the server.
            fstack.persistent.restart()
            delivery = fstack.click(user, req)
        else:
            # Down while the click arrives: the ack needs no Redis; the work after it retries until it's back.
            fstack.persistent.stop()
            delivery = fstack.click(user, req)
            fstack.persistent.start()
        assert delivery.status == 200, delivery.body
        after = fstack.wait_version(rid, version, timeout=15)
        assert after["approvalsCount"] == i + 1, (i, after)
        version = after["version"]
        if i + 1 < len(QUORUM_USERS):
            call = fstack.emulator.wait_for("chat.postEphemeral", since=since, user=user, timeout=10)
            assert f"({i + 1} of 20)" in json.dumps(call["params"]), call
    done = fstack.wait_status(rid, "APPROVED")
    users = [a["userId"] for a in done["approvals"]]
    assert sorted(users) == sorted(QUORUM_USERS)
    # Exactly one receipt: one audit record for the request, the one the store holds.
    records = [r for r in fstack.audit_lines() if rid in json.dumps(r)]
    assert len(records) == 1, records
    assert fstack.get(f"/v1/requests/{rid}/receipt").status_code == 200
    for user in QUORUM_USERS:
        texts = _texts(fstack, user)
        assert not [t for t in texts if "not* recorded" in t or "already approved" in t], (user, texts)


def test_a_burst_of_requests_and_clicks_across_restarts_loses_nothing(fstack: FaultStack) -> None:
    """12 pipelines request while Redis restarts three times; each request is approved by two clicks."""
    n = 12
    results: dict[int, dict[str, Any]] = {}
    errors: list[str] = []

    def pipeline(k: int) -> None:
        # A pipeline retries a 503 (``keyturn request`` exits 3 on it); anything else is a failure.
        for _ in range(10):
            resp = fstack.post("/v1/requests", json.dumps(_body(k)).encode())
            if resp.status_code in (200, 202):
                results[k] = resp.json()
                return
            if resp.status_code != 503:
                errors.append(f"{k}: {resp.status_code} {resp.text}")
                return
        errors.append(f"{k}: 503 ten times")

    threads = [threading.Thread(target=pipeline, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for _ in range(3):
        fstack.persistent.restart()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(results) == n
    ids = {r["requestId"] for r in results.values()}
    assert len(ids) == n  # distinct runs, distinct requests: none merged, none lost

    cards = [fstack.card(rid, timeout=20) for rid in sorted(ids)]
    clickers: list[threading.Thread] = []
    for j, req in enumerate(cards):
        for user in ("U0BOB", "U0CAROL"):
            clickers.append(threading.Thread(target=fstack.click, args=(user, req)))
            clickers[-1].start()
        if j % 4 == 0:  # three restarts while clicks are in flight
            fstack.persistent.restart()
    for t in clickers:
        t.join(60)

    for rid in ids:
        done = fstack.wait_status(rid, "APPROVED", timeout=45)
        assert sorted(a["userId"] for a in done["approvals"]) == ["U0BOB", "U0CAROL"]
    # One receipt per request: exactly one audit record names each.
    audit: Counter[str] = Counter()
    for record in fstack.audit_lines():
        text = json.dumps(record)
        audit.update(rid for rid in ids if rid in text)
    assert dict(audit) == dict.fromkeys(ids, 1)


def _body(k: int) -> dict[str, Any]:
    from tests.e2e.conftest import request_body

    return request_body(sha=f"{k:02x}" * 20, runUrl=f"https://ci.example/acme/web/runs/burst-{k}")
