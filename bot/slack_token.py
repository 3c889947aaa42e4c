"""The bot token, checked once at start with Slack's ``auth.test`` and reported by ``/readyz`` (issue 15).

A bot whose token Slack rejects (revoked, mistyped, another workspace's) would accept CI requests it can never
show anyone; ``/readyz`` now says so (503, ``slack: rejected: <error>``) instead of "ready". The check runs in
the background from start: network trouble and Slack's own errors are retried with backoff until Slack answers
(``pending`` meanwhile, not ready); an answer about the token is final until the next restart. Only the
error code is logged, never the token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Protocol

from slack_sdk.errors import SlackApiError

log = logging.getLogger("keyturn.slack_token")

# auth.test errors that say nothing about the token: Slack (or the path to it) is having trouble; try again.
_TRANSIENT = frozenset(
    {
        "ratelimited",
        "internal_error",
        "fatal_error",
        "service_unavailable",
        "request_timeout",
        "team_added_to_org",
    }
)


class AuthTester(Protocol):
    """The part of slack_sdk's ``AsyncWebClient`` the check uses."""

    async def auth_test(self, **kwargs: Any) -> Any:
        """``auth.test``."""
        ...


class SlackTokenCheck:
    """Runs ``auth.test`` once at start (retrying until Slack answers) and holds the verdict.

    ``state``: ``pending`` (no answer yet), ``ok``, or ``rejected`` (``error`` names Slack's error, or
    ``wrong_team`` when the token belongs to another workspace than the policy's ``[slack] team_id``).
    """

    def __init__(
        self,
        web: AuthTester,
        *,
        team_id: str | None = None,
        first_delay: float = 1.0,
        max_delay: float = 60.0,
    ) -> None:
        self._web = web
        self._team_id = team_id
        self._first_delay = first_delay
        self._max_delay = max_delay
        self.state = "pending"
        self.error: str | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def report(self) -> str:
        """What ``/readyz`` shows: ``ok``, ``pending`` or ``rejected: <error>``."""
        return f"rejected: {self.error}" if self.state == "rejected" else self.state

    async def start(self) -> None:
        """Start checking in the background (start-up must not wait on Slack)."""
        self._task = asyncio.create_task(self.run(), name="keyturn-slack-token-check")

    async def stop(self) -> None:
        """Stop a check still retrying."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def run(self) -> None:
        """Ask until Slack answers about the token; backoff between tries (no event says Slack is back)."""
        delay = self._first_delay
        while True:
            try:
                answer = await self._web.auth_test()
            except SlackApiError as exc:
                error = str(exc.response.get("error") or "unknown_error")
                if error not in _TRANSIENT:
                    self._reject(error)
                    return
                log.warning("auth.test failed (%s); checking the Slack token again in %.0f s", error, delay)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # unreachable, TLS, timeout: says nothing about the token
                log.warning(
                    "auth.test failed (%s); checking the Slack token again in %.0f s",
                    type(exc).__name__,
                    delay,
                )
            else:
                team = answer.get("team_id") if hasattr(answer, "get") else None
                if self._team_id is not None and team != self._team_id:
                    self._reject("wrong_team")
                    return
                self.state, self.error = "ok", None
                log.info("Slack accepted the bot token (team %s)", team)
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._max_delay)

    def _reject(self, error: str) -> None:
        self.state, self.error = "rejected", error
        log.error(
            "SLACK REJECTED THE BOT TOKEN at start: %s; /readyz reports not ready until the token is fixed "
            "and the bot restarted",
            error,
        )
