"""The bot's side of the GitHub deployment protection rule: it forwards webhooks, it decides nothing.

``POST /github/webhook`` takes GitHub's delivery and hands the raw body and GitHub's headers, unchanged, to
``keyturn github-approver`` (``KEYTURN_GITHUB_APPROVER_URL``, loopback only), which holds the webhook secret
and checks the signature, the payload and the environment's policy; the approver's answer (the run and its
scope as GitHub's API reports them, or a refusal with a stable ``error`` code) is returned as it came. The
bot holds neither the webhook secret nor the App key (docs/security.md, "GitHub deployment protection rules").
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

log = logging.getLogger("keyturn.github")

# Only GitHub's own headers travel: the approver checks the signature over the body with these.
FORWARDED = (
    "content-type",
    "user-agent",
    "x-github-event",
    "x-github-delivery",
    "x-github-hook-id",
    "x-hub-signature-256",
)
MAX_WEBHOOK_BYTES = 1024 * 1024
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def approver_url_problem(url: str) -> str | None:
    """What is wrong with ``url`` as the approver's address (None if usable): plain http to loopback, as
    the approver listens on loopback only and the webhook secret's check must not leave the machine."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "not a URL"
    if parts.scheme != "http" or parts.hostname not in LOOPBACK or parts.path not in ("", "/"):
        return "must be http://127.0.0.1:<port> (the approver listens on loopback only)"
    return None


class GitHubForwarder:
    """Forwards deliveries to the approver; ``routes()`` for the bot's app."""

    def __init__(self, approver_url: str, client: httpx.AsyncClient | None = None) -> None:
        self.approver_url = approver_url.rstrip("/")
        self.client = client or httpx.AsyncClient(timeout=60)

    async def webhook(self, request: Request) -> Response:
        body = await request.body()
        if len(body) > MAX_WEBHOOK_BYTES:
            return JSONResponse({"error": "payload_too_large", "message": "webhook body too large"}, 413)
        headers = {k: v for k, v in request.headers.items() if k.lower() in FORWARDED}
        try:
            answer = await self.client.post(f"{self.approver_url}/webhook", content=body, headers=headers)
        except httpx.HTTPError as exc:
            log.warning("github webhook: approver unreachable (%s)", type(exc).__name__)
            return JSONResponse(
                {"error": "approver_unavailable", "message": "the approver did not answer"}, 503
            )
        try:
            data = answer.json()
        except ValueError:
            return JSONResponse(
                {"error": "approver_error", "message": "the approver's answer is not JSON"}, 502
            )
        log.info(
            "github webhook %s: %s", headers.get("x-github-delivery", "-"), data.get("error") or "accepted"
        )
        return JSONResponse(data, answer.status_code)

    def routes(self) -> list[Route]:
        """The bot's GitHub routes."""
        return [Route("/github/webhook", self.webhook, methods=["POST"])]

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self.client.aclose()
