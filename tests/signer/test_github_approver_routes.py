"""The GitHub approver's reject and status routes: what reaches the approver, what is refused before it."""

from __future__ import annotations

from typing import Any, cast

import httpx
import pytest
from starlette.responses import JSONResponse

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
