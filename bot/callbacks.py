"""CI callbacks: on every final outcome, POST ``{requestId, status, receipt?}`` to the request's callbackUrl.

The body is signed like a CI request (design.md §6: headers ``X-Keyturn-Timestamp`` and
``X-Keyturn-Signature: v1=<hex>`` over ``v1:{timestamp}:POST:{path}:{body}``), but with the callback key the
signer derives from the CI secret (design.md §5, ``mac_callback``): the bot never holds the CI secret, and a
callback signature can never pass as a CI request. Delivery is retried with exponential backoff; every
attempt is recorded in Redis (``keyturn:req:{id}:callbacks``) and counted in the metrics.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp

from bot.metrics import Metrics
from bot.models import DeployRequest
from bot.store import RequestStore, StoreUnavailable

log = logging.getLogger(__name__)


class CallbackMac(Protocol):
    """The part of the signer client used here."""

    async def mac_callback(self, path: str, timestamp: str, body: bytes) -> Any:
        """``v1=<hex>`` (or ``{"signature": "v1=<hex>"}``) over the callback body."""
        ...


def callback_body(request: DeployRequest, receipt: dict[str, Any] | None) -> bytes:
    """The exact bytes POSTed to the callback URL."""
    payload: dict[str, Any] = {"requestId": request.id, "status": request.status.value}
    if receipt is not None:
        payload["receipt"] = receipt
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


class CallbackSender:
    """Delivers callbacks with retries. ``deliver`` is meant to run as a background task."""

    def __init__(
        self,
        store: RequestStore,
        signer: CallbackMac,
        *,
        clock: Callable[[], datetime],
        metrics: Metrics | None = None,
        attempts: int = 8,
        timeout: float = 10.0,
        first_delay: float = 1.0,
        max_delay: float = 60.0,
    ) -> None:
        self._store = store
        self._signer = signer
        self._clock = clock
        self._metrics = metrics
        self._attempts = attempts
        self._timeout = timeout
        self._first_delay = first_delay
        self._max_delay = max_delay

    async def _signature(self, path: str, timestamp: str, body: bytes) -> str:
        result = await self._signer.mac_callback(path, timestamp, body)
        if isinstance(result, dict):
            result = result.get("signature")
        if not isinstance(result, str) or not result.startswith("v1="):
            raise ValueError("the signer returned no callback signature")
        return result

    async def _record(self, request_id: str, attempt: dict[str, Any]) -> None:
        if self._metrics is not None:
            self._metrics.callback_attempts.labels(attempt["outcome"]).inc()
        try:
            await self._store.record_callback_attempt(request_id, attempt)
        except StoreUnavailable:
            log.warning("could not record callback attempt %s for %s", attempt["attempt"], request_id)

    async def deliver(self, request: DeployRequest, receipt: dict[str, Any] | None = None) -> bool:
        """POST the outcome to ``request.callback_url`` until a 2xx answer or the attempts run out."""
        url = request.callback_url
        if not url:
            return False
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            await self._record(
                request.id,
                {"attempt": 0, "at": self._clock().isoformat(), "outcome": "invalid_url"},
            )
            return False
        path = parts.path or "/"
        body = callback_body(request, receipt)
        delay = self._first_delay
        timeout = aiohttp.ClientTimeout(total=self._timeout)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for attempt in range(1, self._attempts + 1):
                at = self._clock()
                record: dict[str, Any] = {"attempt": attempt, "at": at.isoformat()}
                try:
                    timestamp = str(int(at.timestamp()))
                    signature = await self._signature(path, timestamp, body)
                    async with session.post(
                        url,
                        data=body,
                        headers={
                            "Content-Type": "application/json",
                            "X-Keyturn-Timestamp": timestamp,
                            "X-Keyturn-Signature": signature,
                        },
                        allow_redirects=False,
                    ) as resp:
                        record["status"] = resp.status
                        ok = 200 <= resp.status < 300
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # any failure is one failed attempt; the loop retries
                    record["error"] = type(exc).__name__
                    ok = False
                record["outcome"] = "delivered" if ok else "failed"
                await self._record(request.id, record)
                if ok:
                    return True
                if attempt < self._attempts:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self._max_delay)
        log.warning("callback for %s not delivered after %d attempts", request.id, self._attempts)
        return False
