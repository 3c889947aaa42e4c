"""Cheap refusals before any signer call (issue 14, finding 2): pure checks on signature headers.

The signer alone decides whether a request is authentic; these checks only refuse what it would certainly
refuse, without spending one of its connections: a missing or malformed timestamp or signature, or a
timestamp far outside the signer's freshness window. The bot's clock may differ a little from the
signer's, so the bot allows :data:`CLOCK_MARGIN` seconds more than the signer's window before refusing.
"""

from __future__ import annotations

import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable

from keyturn.signer.evidence import MAX_SKEW

CLOCK_MARGIN = 30
_TS_RE = re.compile(r"\A[0-9]{1,12}\Z")
_SLACK_SIG_RE = re.compile(r"\Av0=[0-9a-f]{64}\Z")
_CI_SIG_RE = re.compile(r"\Av1=[0-9a-f]{64}\Z")


def plausible(timestamp: str, signature: str, *, kind: str, now: float | None = None) -> bool:
    """True unless the headers of a ``kind`` (``"slack"`` or ``"ci"``) request are certainly refused."""
    pattern = _SLACK_SIG_RE if kind == "slack" else _CI_SIG_RE
    if not _TS_RE.fullmatch(timestamp) or not pattern.fullmatch(signature):
        return False
    current = time.time() if now is None else now
    return abs(current - int(timestamp)) <= MAX_SKEW + CLOCK_MARGIN


class SourceLimiter:
    """Per-source burst limit on failed authentications, in memory, before any signer call (finding 2).

    Each client address has a token bucket of ``burst`` tokens refilled at ``rate`` a second. A request
    takes a token just before its signer check (:meth:`acquire`), and gets it back if it authenticates
    (:meth:`release`): a failure (implausible headers, or refused by the signer) keeps it. A source without
    tokens is refused with 429 before the signer is asked (and, checked with :meth:`blocked`, before its
    body is read). Taking the token before the check,
    not after, bounds a concurrent flood too: at most ``burst`` checks are in flight or spent at once, then
    ``rate`` a second. A client that signs correctly only holds tokens while its checks are in flight.

    Per replica and in memory on purpose: it must cost less than the signer call it saves (no Redis round
    trip), and a flood spread over replicas is bounded by each. At most ``max_sources`` addresses are kept
    (the least recently seen forgotten first), so a flood from many addresses cannot grow memory unbounded.
    """

    def __init__(
        self,
        burst: int,
        rate: float,
        *,
        max_sources: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._burst = float(burst)
        self._rate = rate
        self._max = max_sources
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # source -> (tokens, at)
        self.enabled = True

    @classmethod
    def off(cls) -> SourceLimiter:
        """A limiter that never refuses (and remembers nothing)."""
        limiter = cls(1, 1.0)
        limiter.enabled = False
        return limiter

    def _tokens(self, source: str, now: float) -> float:
        tokens, at = self._buckets.get(source, (self._burst, now))
        return min(self._burst, tokens + (now - at) * self._rate)

    def _set(self, source: str, tokens: float, now: float) -> None:
        self._buckets[source] = (tokens, now)
        self._buckets.move_to_end(source)
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)

    def blocked(self, source: str) -> int | None:
        """Seconds until ``source`` has a token again if it has none now, else None; takes nothing. Used
        before a body is read, so a blocked source is refused without reading it or holding a token while
        it trickles in."""
        if not self.enabled or source not in self._buckets:
            return None
        tokens = self._tokens(source, self._clock())
        return None if tokens >= 1 else max(1, math.ceil((1 - tokens) / self._rate))

    def acquire(self, source: str) -> int | None:
        """Take a token for one check from ``source``: None if taken (go ahead), else the seconds until one
        is back (refuse with 429, no signer call)."""
        if not self.enabled:
            return None
        now = self._clock()
        tokens = self._tokens(source, now)
        if tokens < 1:
            self._set(source, tokens, now)
            return max(1, math.ceil((1 - tokens) / self._rate))
        self._set(source, tokens - 1, now)
        return None

    def release(self, source: str) -> None:
        """Give back the token of a check that passed: authenticated traffic costs nothing."""
        if not self.enabled or source not in self._buckets:
            return
        now = self._clock()
        self._set(source, min(self._burst, self._tokens(source, now) + 1), now)
