"""Shared pieces of the gate tests (``keyturn verify`` and ``keyturn request --wait``).

* ``LoopbackServer``: a real HTTP server on 127.0.0.1 in a thread that plays both the bot's CI API (it
  approves every request at once and hands out the receipt it was given) and a keyset host (``/keys``, and
  redirects to wherever a test points them). It records every request, so a test can prove that nothing was
  asked of the bot.
* ``mint_receipt``: a receipt signed by one of the fixed test-vector keys (tests/vectors/generate.py), valid
  around the real clock, because ``keyturn request`` verifies at the time it runs.
"""

from __future__ import annotations

import http.server
import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from keyturn.signer.receipt import Scope, format_time
from tests.vectors import generate, load

REQUEST_ID = "req_01JV7Q4M4T7Z9X4P9G8N2D6R1A"
SHA = "4f8a2cd91ef7a2c7f3a5f0aa12d93b33f2d40e17"
SCOPE = Scope("acme/web", SHA, "production", "deploy.yml")


def mint_receipt(
    scope: Scope = SCOPE, *, key: str = "primary", now: datetime | None = None, request_id: str = REQUEST_ID
) -> bytes:
    """An APPROVED receipt of ``request_id`` for ``scope`` signed by the test key ``key`` ("primary", or
    "development" for a dev key), issued a minute before ``now`` (default: the real clock) and valid for an
    hour."""
    at = datetime.now(UTC) if now is None else now
    receipt = generate.signed(
        key,
        requestId=request_id,
        issuedAt=format_time(at - timedelta(minutes=1)),
        expiresAt=format_time(at + timedelta(hours=1)),
        scope_repo=scope.repo,
        scope_sha=scope.sha,
        scope_environment=scope.environment,
        scope_workflow=scope.workflow,
    )
    return json.dumps(receipt).encode()


def keyset_bytes() -> bytes:
    """The test vectors' public keyset (holds the "primary" and the "development" key)."""
    return load.keyset_path().read_bytes()


def write_keyset(directory: Path) -> Path:
    """The test keyset written to ``directory`` (outside any checkout, unless the test makes one)."""
    path = directory / "keys.public.json"
    path.write_bytes(keyset_bytes())
    return path


class LoopbackServer:
    """A bot CI API and keyset host on 127.0.0.1 (see the module docstring)."""

    def __init__(self) -> None:
        self.receipt = mint_receipt()
        self.redirects: dict[str, str] = {}
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        """The server's base URL (plain http to loopback: allowed for keysets, as for a local signer)."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def posted(self) -> list[str]:
        """Paths of the POSTs received: a refused keyset must leave this empty (nothing asked of people)."""
        with self._lock:
            return [path for method, path in self.requests if method == "POST"]

    def __enter__(self) -> LoopbackServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _record(self) -> None:
                with outer._lock:
                    outer.requests.append((self.command, self.path))

            def do_POST(self) -> None:
                self._record()
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.path == "/v1/requests":
                    doc: dict[str, Any] = {
                        "requestId": REQUEST_ID,
                        "status": "APPROVED",
                        "approvalsCount": 2,
                        "requiredApprovals": 2,
                        "version": 3,
                    }
                    self._send(202, json.dumps(doc).encode(), {"Content-Type": "application/json"})
                else:
                    self._send(404)

            def do_GET(self) -> None:
                self._record()
                if self.path == f"/v1/requests/{REQUEST_ID}/receipt":
                    self._send(200, outer.receipt, {"Content-Type": "application/json"})
                elif self.path == "/keys":
                    self._send(200, keyset_bytes(), {"Content-Type": "application/json"})
                elif self.path in outer.redirects:
                    self._send(302, headers={"Location": outer.redirects[self.path]})
                else:
                    self._send(404)

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler
