"""Clocks for the emulator: time is read in one place and passed into the state as ``now``."""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    """Something that tells the time as Unix seconds."""

    def now(self) -> float:
        """Current time, Unix seconds."""
        ...


class SystemClock:
    """The wall clock."""

    def now(self) -> float:
        """Current wall-clock time, Unix seconds."""
        return time.time()


class ManualClock:
    """A clock that only moves when told to (tests: trigger expiry without sleeping)."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def now(self) -> float:
        """The clock's current time."""
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds``."""
        with self._lock:
            self._now += seconds

    def set(self, when: float) -> None:
        """Set the clock to ``when``."""
        with self._lock:
            self._now = when
