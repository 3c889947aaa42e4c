"""The recorder: every Web API call (and ``response_url`` post) in order, queryable and awaitable.

Waiting uses an :class:`asyncio.Condition` notified on each new call, so ``wait`` returns as soon as the
matching call is recorded, never by polling.
"""

from __future__ import annotations

import asyncio
import copy
from dataclasses import dataclass
from typing import Any


def mask_token(token: str | None) -> str | None:
    """A token as the recorder shows it: its kind and last four characters, never the whole secret."""
    if not token:
        return None
    prefix = token.split("-", 1)[0] + "-" if "-" in token else ""
    return f"{prefix}…{token[-4:]}" if len(token) > 12 else f"{prefix}…"


@dataclass(frozen=True)
class Call:
    """One recorded call. ``seq`` starts at 1 and increases by one per call."""

    seq: int
    method: str
    params: dict[str, Any]
    token: str | None
    time: float
    status: int
    response: Any

    def to_json(self) -> dict[str, Any]:
        """The call as the control API returns it (token masked)."""
        return {
            "seq": self.seq,
            "method": self.method,
            "params": copy.deepcopy(self.params),
            "token": mask_token(self.token),
            "time": self.time,
            "status": self.status,
            "response": copy.deepcopy(self.response),
        }

    def matches(self, method: str | None, filters: dict[str, str]) -> bool:
        """True if this call is of ``method`` (any if None) and each filter equals the param as a string."""
        if method is not None and self.method != method:
            return False
        for key, want in filters.items():
            got = self.params.get(key)
            if got is None:
                return False
            if isinstance(got, bool):
                got = "true" if got else "false"
            if str(got) != want:
                return False
        return True


class Recorder:
    """All calls, in order. Use from the emulator's event loop."""

    def __init__(self) -> None:
        self._calls: list[Call] = []
        self._cond = asyncio.Condition()

    async def record(
        self, method: str, params: dict[str, Any], token: str | None, now: float, status: int, response: Any
    ) -> Call:
        """Append a call and wake every waiter."""
        async with self._cond:
            call = Call(len(self._calls) + 1, method, params, token, now, status, response)
            self._calls.append(call)
            self._cond.notify_all()
            return call

    def calls(
        self, method: str | None = None, since: int = 0, filters: dict[str, str] | None = None
    ) -> list[Call]:
        """Calls with ``seq > since``, of ``method`` if given, matching ``filters``."""
        return [c for c in self._calls[since:] if c.matches(method, filters or {})]

    async def wait(
        self, method: str | None, filters: dict[str, str], since: int = 0, within: float = 5.0
    ) -> Call | None:
        """The first call after ``since`` that matches (already recorded or yet to come); None on timeout."""

        def first() -> Call | None:
            found = self.calls(method, since, filters)
            return found[0] if found else None

        async with self._cond:
            try:
                await asyncio.wait_for(self._cond.wait_for(lambda: first() is not None), within)
            except TimeoutError:
                return None
            return first()

    def clear(self) -> None:
        """Forget every call (``seq`` restarts at 1)."""
        self._calls = []
