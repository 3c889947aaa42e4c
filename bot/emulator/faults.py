"""Fault injection for the emulated Web API: forced ``ok:false`` errors, HTTP 429 with ``Retry-After``, other
HTTP statuses, and added latency, per method (or ``"*"`` for every method), optionally for the next N calls.

Set over ``/_emulator/faults`` or in Python (``emulator.faults.add(...)``); safe to call from another thread.
"""

from __future__ import annotations

import itertools
import re
import threading
from dataclasses import asdict, dataclass
from typing import Any

from keyturn.emulator.errors import EmulatorError

_ERROR_CODE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_METHOD = re.compile(r"^(\*|[a-zA-Z]+(\.[a-zA-Z]+)+|response_url)$")


@dataclass
class Fault:
    """One injected fault. ``times`` is how many more calls it applies to (None: until cleared)."""

    id: int
    method: str
    error: str | None = None
    status: int = 200
    retry_after: int = 1
    latency: float = 0.0
    times: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The fault as the control API lists it."""
        return asdict(self)


class Faults:
    """The active faults, consulted once per Web API call."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def add(
        self,
        method: str,
        *,
        error: str | None = None,
        status: int = 200,
        retry_after: int = 1,
        latency: float = 0.0,
        times: int | None = None,
    ) -> Fault:
        """Inject a fault on ``method``. With ``status=429`` the answer is a rate limit (``error`` defaults
        to ``ratelimited``); with another non-200 status, that status; with only ``latency``, a slow
        but normal answer. Raises :class:`EmulatorError` (``invalid_fault``) for nonsense values."""
        if not isinstance(method, str) or not _METHOD.match(method):
            raise EmulatorError("invalid_fault", f"not a Web API method name: {method!r}")
        if error is not None and not _ERROR_CODE.match(error):
            raise EmulatorError("invalid_fault", "error must be a Slack error code like channel_not_found")
        if not 200 <= status <= 599 or 201 <= status <= 399:
            raise EmulatorError("invalid_fault", "status must be 200 or an HTTP error status (400-599)")
        if not 0 <= retry_after <= 3600:
            raise EmulatorError("invalid_fault", "retry_after must be 0..3600 seconds")
        if not 0.0 <= latency <= 60.0:
            raise EmulatorError("invalid_fault", "latency must be 0..60 seconds")
        if times is not None and times < 1:
            raise EmulatorError("invalid_fault", "times must be at least 1 (or absent: until cleared)")
        if status == 200 and error is None and latency == 0.0:
            raise EmulatorError("invalid_fault", "a fault needs an error, an error status or a latency")
        if status == 429 and error is None:
            error = "ratelimited"
        with self._lock:
            fault = Fault(next(self._ids), method, error, status, retry_after, latency, times)
            self._faults.append(fault)
            return fault

    def rate_limit(self, method: str, retry_after: int = 1, times: int | None = 1) -> Fault:
        """Answer the next ``times`` calls of ``method`` with HTTP 429 and ``Retry-After``."""
        return self.add(method, status=429, retry_after=retry_after, times=times)

    def clear(self, method: str | None = None) -> int:
        """Remove the faults of ``method`` (all faults without it); return how many were removed."""
        with self._lock:
            before = len(self._faults)
            self._faults = [f for f in self._faults if method is not None and f.method != method]
            return before - len(self._faults)

    def take(self, method: str) -> Fault | None:
        """The fault that applies to this call of ``method`` (first added wins), counting one use."""
        with self._lock:
            for fault in self._faults:
                if fault.method in (method, "*"):
                    if fault.times is not None:
                        fault.times -= 1
                        if fault.times == 0:
                            self._faults.remove(fault)
                    return fault
            return None

    def list(self) -> list[Fault]:
        """The active faults, in the order they apply."""
        with self._lock:
            return list(self._faults)
