"""Fault injection for the emulated Web API: forced ``ok:false`` errors, HTTP 429 with ``Retry-After``, other
HTTP statuses, and added latency, per method (or ``"*"`` for every method), optionally for the next N calls.

Set over ``/_emulator/faults`` or in Python (``emulator.faults.add(...)``); safe to call from another thread.
"""

from __future__ import annotations

import itertools
import re
import threading
from dataclasses import asdict, dataclass
from typing import Any, TypedDict, Unpack

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


class FaultFields(TypedDict, total=False):
    """What a fault sets besides its method, as :meth:`Faults.add` and the control API take it (an absent
    field takes :class:`Fault`'s default)."""

    error: str | None
    status: int
    retry_after: int
    latency: float
    times: int | None


class Faults:
    """The active faults, consulted once per Web API call."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def add(self, method: str, **fields: Unpack[FaultFields]) -> Fault:
        """Inject a fault on ``method``. With ``status=429`` the answer is a rate limit (``error`` defaults
        to ``ratelimited``); with another non-200 status, that status; with only ``latency``, a slow
        but normal answer. Raises :class:`EmulatorError` (``invalid_fault``) for nonsense values."""
        f = Fault(0, method, **fields)  # its id is taken below, once it is known to be sensible
        if not isinstance(method, str) or not _METHOD.match(method):
            raise EmulatorError("invalid_fault", f"not a Web API method name: {method!r}")
        if f.error is not None and not _ERROR_CODE.match(f.error):
            raise EmulatorError("invalid_fault", "error must be a Slack error code like channel_not_found")
        if not 200 <= f.status <= 599 or 201 <= f.status <= 399:
            raise EmulatorError("invalid_fault", "status must be 200 or an HTTP error status (400-599)")
        if not 0 <= f.retry_after <= 3600:
            raise EmulatorError("invalid_fault", "retry_after must be 0..3600 seconds")
        if not 0.0 <= f.latency <= 60.0:
            raise EmulatorError("invalid_fault", "latency must be 0..60 seconds")
        if f.times is not None and f.times < 1:
            raise EmulatorError("invalid_fault", "times must be at least 1 (or absent: until cleared)")
        if f.status == 200 and f.error is None and f.latency == 0.0:
            raise EmulatorError("invalid_fault", "a fault needs an error, an error status or a latency")
        if f.status == 429 and f.error is None:
            f.error = "ratelimited"
        with self._lock:
            f.id = next(self._ids)
            self._faults.append(f)
            return f

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
