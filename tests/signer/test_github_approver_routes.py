"""The GitHub approver's reject and status routes: what reaches the approver, what is refused before it."""

from __future__ import annotations

from typing import Any, cast

import httpx
import pytest
from starlette.responses import JSONResponse

from keyturn.signer import github_app
from keyturn.signer.github_app import Arrival
from keyturn.signer.github_approver import Approver, create_app


class RecordingApprover:
    """Stands in for :class:`Approver`: records the decisions the routes hand it."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    async def reject(
        self, key: tuple[int, str], reason: str, request_id: Any, delivery: str | None = None
    ) -> JSONResponse:
        self.calls.append(("reject", key, reason, request_id, delivery))
        return JSONResponse({"ok": True})

    async def approve(self, key: tuple[int, str], receipt: bytes, arrival: Arrival) -> JSONResponse:
        self.calls.append(("approve", key, receipt, arrival))
        return JSONResponse({"ok": True})

    async def status(self, key: tuple[int, str], text: str) -> JSONResponse:
        self.calls.append(("status", key, text))
        return JSONResponse({"ok": True})


def client(approver: RecordingApprover) -> httpx.AsyncClient:
    app = create_app(cast(Approver, approver))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://approver.test")


async def test_reject_and_status_hand_over_the_text() -> None:
    approver = RecordingApprover()
    async with client(approver) as http:
        resp = await http.post("/runs/7/production/reject", json={"reason": "no", "request_id": "r"})
        assert resp.status_code == 200
        named = {"reason": "no", "request_id": "r", "delivery": "d-1"}
        assert (await http.post("/runs/7/production/reject", json=named)).status_code == 200
        for odd in (7, "", " ", ["d-1"]):  # not a delivery id: refused, never taken as none named
            resp = await http.post("/runs/7/production/reject", json={"reason": "no", "delivery": odd})
            assert (resp.status_code, resp.json()["error"]) == (400, "bad_request")
        assert (await http.post("/runs/7/production/status", json={"text": "waiting"})).status_code == 200
    assert approver.calls == [
        ("reject", (7, "production"), "no", "r", None),
        ("reject", (7, "production"), "no", "r", "d-1"),
        ("status", (7, "production"), "waiting"),
    ]


@pytest.mark.parametrize(("route", "field"), [("reject", "reason"), ("status", "text")])
@pytest.mark.parametrize(
    "body", [b"not json", b"[]", b"{}", b'{"reason": 1, "text": 1}', b'{"reason": " ", "text": " "}']
)
async def test_a_body_without_a_non_blank_text_is_refused(route: str, field: str, body: bytes) -> None:
    approver = RecordingApprover()
    async with client(approver) as http:
        resp = await http.post(f"/runs/7/production/{route}", content=body)
    assert resp.status_code == 400
    assert resp.json() == {"error": "bad_request", "message": f"a JSON object with a non-empty '{field}'"}
    assert approver.calls == []


ARRIVAL = Arrival("1790000000", "ab" * 32, ".github/workflows/deploy.yml")
GOOD = github_app.arrival_headers(ARRIVAL.timestamp, ARRIVAL.stamp, ARRIVAL.workflow)


async def test_an_approval_hands_over_the_receipt_and_the_arrival() -> None:
    approver = RecordingApprover()
    async with client(approver) as http:
        resp = await http.post("/runs/7/production/approve", content=b"{}", headers=GOOD)
    assert resp.status_code == 200
    assert approver.calls == [("approve", (7, "production"), b"{}", ARRIVAL)]


BAD_VALUES = {
    "X-Keyturn-Arrival-Timestamp": ["", "-1", "1790000000.5", "1" * 13, " 1790000000", "\u0661"],
    "X-Keyturn-Arrival-Stamp": ["", "AB" * 32, "ab" * 31, "ab" * 33, "zz" * 32],
    "X-Keyturn-Arrival-Workflow": ["", "/abs.yml", "a b.yml", "a" * 201, "\u00e9.yml"],
}


@pytest.mark.parametrize(
    ("header", "value"), [(h, v) for h, values in BAD_VALUES.items() for v in [None, *values]]
)
async def test_an_approval_without_a_well_formed_arrival_is_refused(header: str, value: str | None) -> None:
    """A hand-off without the arrival (a bot older than the approver) or with one outside its grammar is
    ``400 bad_request`` naming the header, and the approver is not asked (never a 5xx)."""
    headers = {k: v for k, v in GOOD.items() if k != header}
    if value is not None:
        headers[header] = value
    approver = RecordingApprover()
    async with client(approver) as http:
        resp = await http.post(
            "/runs/7/production/approve",
            content=b"{}",
            headers={k.encode(): v.encode() for k, v in headers.items()},  # bytes: a non-ASCII value too
        )
    assert (resp.status_code, resp.json()["error"]) == (400, "bad_request")
    assert header in resp.json()["message"]
    assert approver.calls == []
