"""Cheap refusals before any signer call (issue 14, finding 2): pure checks on signature headers.

The signer alone decides whether a request is authentic; these checks only refuse what it would certainly
refuse, without spending one of its connections: a missing or malformed timestamp or signature, or a
timestamp far outside the signer's freshness window. The bot's clock may differ a little from the
signer's, so the bot allows :data:`CLOCK_MARGIN` seconds more than the signer's window before refusing.
"""

from __future__ import annotations

import re
import time

from signer.evidence import MAX_SKEW

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
