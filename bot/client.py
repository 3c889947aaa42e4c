"""``keyturn request``: ask the bot for an approval from CI and, with ``--wait``, wait for a verified receipt.

Standard library HTTP (urllib) plus the offline verifier (``signer.verify``): a pipeline needs nothing else.
The CI secret comes from ``KEYTURN_CI_SECRET`` only (never a flag: flags end up in process lists and logs).

Exit codes — never 0 on doubt:

* 0  approved, and the receipt verified offline against ``--keys`` for exactly this scope (``--wait`` only)
* 1  denied, expired, cancelled, an invalid receipt, or (without ``--wait``) not approved yet
* 2  usage or configuration error (bad arguments, no secret, no keyset, request refused as invalid or
     unauthorized)
* 3  the bot cannot be reached, or the wait timed out

The keyset must come from a trusted place (a pinned file, or the bot's ``/v1/keys`` over TLS you trust),
never from the checkout being deployed: whoever controls the keyset controls what verifies.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import http.client
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from signer.keyset import PublicKeyset

OK, REFUSED, USAGE, UNREACHABLE = 0, 1, 2, 3
MAX_POLL = 60
MAX_KEYSET_BYTES = 1024 * 1024
KEYSET_FETCH_TIMEOUT = 10.0  # as `keyturn verify`: a keyset is small; a server this slow is not serving it
SECRET_ENV = "KEYTURN_CI_SECRET"  # noqa: S105 - the variable name, not a secret
REPLAY_ATTEMPTS = 3


class Exit(Exception):
    """Stop with ``code`` after printing ``message`` on stderr."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def parse_duration(text: str) -> float:
    """``"45s"``, ``"30m"``, ``"2h"``, ``"1d"`` or plain seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    raw = text.strip()
    try:
        value = float(int(raw[:-1]) * units[raw[-1]]) if raw and raw[-1] in units else float(int(raw))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use e.g. 30m, 2h, 90)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("the timeout must be positive")
    return value


def sign(secret: str, method: str, path: str, body: bytes, timestamp: str) -> str:
    """``v1=<hex>`` over ``v1:{timestamp}:{METHOD}:{path}:{body}`` (design.md §6)."""
    msg = f"v1:{timestamp}:{method}:{path}:".encode() + body
    return "v1=" + hmac.new(secret.encode(), msg, hashlib.sha256).hexdigest()


class BotClient:
    """A tiny signed HTTP client of the bot's CI API."""

    def __init__(self, base_url: str, secret: str, timeout: float = 30.0) -> None:
        self.base = base_url.rstrip("/")
        self.secret = secret
        self.timeout = timeout

    def call(
        self, method: str, path: str, body: bytes = b"", query: dict[str, Any] | None = None, wait: float = 0
    ) -> tuple[int, dict[str, Any]]:
        """Send one signed request; (status, JSON body). Raises ``OSError`` when the bot is unreachable."""
        ts = str(int(time.time()))
        headers = {
            "X-Keyturn-Timestamp": ts,
            "X-Keyturn-Signature": sign(self.secret, method, path, body, ts),
            "Content-Type": "application/json",
            "User-Agent": "keyturn-request/1",
        }
        url = self.base + path + ("?" + urllib.parse.urlencode(query) if query else "")
        req = urllib.request.Request(  # noqa: S310 - --url is checked to be http(s)
            url, data=body if method == "POST" else None, headers=headers, method=method
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout + wait) as resp:  # noqa: S310 - http(s) only
                status, raw = int(resp.status), resp.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        except http.client.HTTPException as exc:  # not HTTP, or cut off mid-answer: as good as unreachable
            raise OSError(f"bad HTTP answer: {type(exc).__name__}") from None
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            data = {}
        return status, data if isinstance(data, dict) else {}


def _fetch(url: str, timeout: float) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - http(s) only
        data: bytes = resp.read(MAX_KEYSET_BYTES + 1)
        return data


def _fetch_within(url: str, timeout: float) -> bytes:
    """GET ``url`` within ``timeout`` s in all. The socket timeout bounds each read, not a server trickling a
    byte now and then, so the fetch runs in a daemon thread that is abandoned at the deadline."""
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["data"] = _fetch(url, timeout)
        except Exception as exc:  # handed to the caller's thread below
            box["error"] = exc

    worker = threading.Thread(target=work, name="keyset-fetch", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise Exit(UNREACHABLE, f"cannot fetch the keyset from {url}: no answer within {timeout:g} s")
    error = box.get("error")
    if isinstance(error, urllib.error.HTTPError):
        raise Exit(UNREACHABLE, f"cannot fetch the keyset from {url}: HTTP {error.code}")
    if isinstance(error, urllib.error.URLError | OSError | http.client.HTTPException):
        raise Exit(UNREACHABLE, f"cannot fetch the keyset from {url}: {error}")
    if isinstance(error, ValueError):
        raise Exit(USAGE, f"not a usable keyset URL: {url}")
    if error is not None:
        raise error
    data: bytes = box["data"]
    return data


def _load_keyset(source: str, timeout: float) -> bytes:
    if source.startswith(("http://", "https://")):
        data = _fetch_within(source, timeout)
    else:
        try:
            with open(source, "rb") as f:  # capped: /dev/zero or a huge file must not eat the runner
                data = f.read(MAX_KEYSET_BYTES + 1)
        except OSError as exc:
            raise Exit(USAGE, f"cannot read the keyset {source}: {exc.strerror}") from None
    if len(data) > MAX_KEYSET_BYTES:
        raise Exit(USAGE, f"invalid keyset: larger than {MAX_KEYSET_BYTES} bytes")
    return data


def parse_keyset(keyset_bytes: bytes) -> PublicKeyset:
    """The trusted keyset, parsed; ``Exit(2)`` if it is not one. Checked before asking for approval, so a
    broken keyset fails the job at once instead of after people have approved."""
    from signer.errors import KeyturnError
    from signer.keyset import PublicKeyset

    try:
        return PublicKeyset.from_jwks(keyset_bytes)
    except (KeyturnError, ValueError, RecursionError) as exc:
        raise Exit(USAGE, f"invalid keyset: {exc}") from None


def verify(receipt: bytes, keyset: PublicKeyset, args: argparse.Namespace, now: datetime) -> str:
    """Verify ``receipt`` offline for exactly the requested scope; the one-line summary, or ``Exit(1)``."""
    from signer.errors import KeyturnError
    from signer.receipt import Scope
    from signer.verify import verify_receipt

    try:
        verified = verify_receipt(
            receipt,
            keyset,
            Scope(args.repo, args.sha, args.env, args.workflow),
            now,
            allow_dev_keys=args.allow_dev_keys,
        )
    except KeyturnError as exc:
        raise Exit(REFUSED, f"REJECTED {exc.code}: {exc}") from None
    except Exception as exc:  # any surprise in verification is a rejection, never a pass
        raise Exit(REFUSED, f"REJECTED invalid_receipt: {type(exc).__name__}") from None
    return verified.summary()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="keyturn request",
        description="Ask Keyturn for a deploy approval; with --wait, wait for it and verify the receipt. "
        f"The CI secret is read from ${SECRET_ENV}.",
        epilog="Exit codes: 0 approved with a verified receipt; 1 denied/expired/cancelled/invalid (or not "
        "approved yet without --wait); 2 usage; 3 bot unreachable or timed out.",
    )
    p.add_argument("--url", required=True, help="the bot's base URL, e.g. https://keyturn.example.com")
    p.add_argument("--repo", required=True, help="owner/name")
    p.add_argument("--sha", required=True, help="the full commit sha being deployed")
    p.add_argument("--env", required=True, help="the environment (as in the policy)")
    p.add_argument("--workflow", required=True, help="the workflow doing the deploy, e.g. deploy.yml")
    p.add_argument("--requester", required=True, help="who asks, e.g. github:alice or alice@example.com")
    p.add_argument("--ref", help="branch or tag (shown on the card)")
    p.add_argument("--run-url", help="link to the pipeline run (shown on the card)")
    p.add_argument("--title", help="a short title (shown on the card)")
    p.add_argument("--callback-url", help="where the bot POSTs the outcome")
    p.add_argument("--wait", action="store_true", help="wait for the decision and fetch the receipt")
    p.add_argument("--timeout", type=parse_duration, default=1800.0, help="how long to wait (default 30m)")
    p.add_argument("--out", help="write the verified receipt here (default: stdout)")
    p.add_argument(
        "--keys", help="trusted public keyset (file or URL) to verify the receipt; required with --wait"
    )
    p.add_argument(
        "--allow-dev-keys", action="store_true", help="accept receipts signed by `keyturn dev` keys"
    )
    return p


def _post_request(client: BotClient, args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {
        "repo": args.repo,
        "sha": args.sha,
        "environment": args.env,
        "workflow": args.workflow,
        "requester": args.requester,
    }
    for key, value in (
        ("ref", args.ref),
        ("runUrl", args.run_url),
        ("title", args.title),
        ("callbackUrl", args.callback_url),
    ):
        if value:
            body[key] = value
    raw = json.dumps(body, separators=(",", ":")).encode()
    # The bot accepts each signed request once (docs/api.md, "Replays"). Two runs of this command with the
    # same arguments in the same second sign identical bytes, so the second is told it is a replay: it then
    # continues with the request the first one made, exactly as a retried pipeline gets the pending request.
    for attempt in range(REPLAY_ATTEMPTS):
        try:
            status, data = client.call("POST", "/v1/requests", raw)
        except OSError as exc:
            raise Exit(UNREACHABLE, f"cannot reach the bot at {client.base}: {exc}") from None
        if status != 409 or data.get("error") != "replayed_request":
            return _check_status(status, data)
        rid = data.get("requestId")
        if isinstance(rid, str) and rid:
            return _get_request(client, rid)
        # The first copy is still being handled: sign anew once the clock has moved to the next second
        # (the signature covers whole seconds, so nothing sooner would differ).
        if attempt + 1 < REPLAY_ATTEMPTS:
            time.sleep(1.0 - (time.time() % 1.0) + 0.01)
    raise Exit(UNREACHABLE, "the bot kept answering replayed_request; try again")


def _get_request(client: BotClient, rid: str) -> dict[str, Any]:
    try:  # quoted: the id comes from an answer, and must stay one path segment
        status, data = client.call("GET", f"/v1/requests/{urllib.parse.quote(rid, safe='')}")
    except OSError as exc:
        raise Exit(UNREACHABLE, f"cannot reach the bot at {client.base}: {exc}") from None
    return _check_status(status, data)


def _check_status(status: int, data: dict[str, Any]) -> dict[str, Any]:
    if status in (200, 202):
        return data
    message = str(data.get("message") or data.get("error") or f"HTTP {status}")
    if status == 401:
        raise Exit(USAGE, f"the bot refused the CI signature: check {SECRET_ENV} and the clock")
    if status in (400, 404, 413, 422):
        fields = data.get("fields")
        detail = "; ".join(f"{f.get('field')}: {f.get('message')}" for f in fields) if fields else message
        raise Exit(USAGE, f"the request was refused: {detail}")
    raise Exit(UNREACHABLE, f"the bot answered HTTP {status}: {message}")


def _wait(
    client: BotClient,
    request: dict[str, Any],
    deadline: float,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    rid = str(request["requestId"])
    path = f"/v1/requests/{rid}"
    shown: tuple[int, int] | None = None
    failures = 0
    while True:
        status = str(request.get("status"))
        if status != "PENDING":
            return request
        seen = (int(request.get("approvalsCount", 0)), int(request.get("requiredApprovals", 0)))
        if seen != shown:
            progress(f"waiting for approval {seen[0]}/{seen[1]}… ({rid})")
            shown = seen
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Exit(UNREACHABLE, f"timed out waiting for {rid} (still PENDING)")
        wait = max(1, min(MAX_POLL, int(remaining)))
        try:
            code, data = client.call(
                "GET", path, query={"wait": wait, "since": request.get("version", 0)}, wait=wait
            )
        except OSError as exc:
            code, data = 0, {"message": str(exc)}
        if code == 200:
            request, failures = data, 0
            continue
        if code in (401, 404):
            _check_status(code, data)
        # Transient trouble (restart, 503): back off and keep waiting until the deadline.
        failures += 1
        if failures == 1:
            progress(f"the bot is not answering ({code or 'unreachable'}); retrying")
        time.sleep(min(2.0 ** min(failures, 4), max(0.0, deadline - time.monotonic())))


def run(args: argparse.Namespace, secret: str, progress: Callable[[str], None]) -> int:
    """The command, after argument parsing; returns the exit code or raises ``Exit``."""
    if args.wait and not args.keys:
        raise Exit(USAGE, "--wait needs --keys: a trusted keyset to verify the receipt (fail closed)")
    keyset = parse_keyset(_load_keyset(args.keys, KEYSET_FETCH_TIMEOUT)) if args.keys else None
    client = BotClient(args.url, secret)
    deadline = time.monotonic() + args.timeout
    request = _post_request(client, args)
    rid = str(request.get("requestId"))
    if not args.wait:
        print(rid)
        progress(f"{rid} is {request.get('status')}; not approved yet (use --wait to wait for the receipt)")
        return REFUSED
    final = _wait(client, request, deadline, progress)
    status = str(final.get("status"))
    if status == "DENIED":
        raise Exit(REFUSED, f"DENIED by {final.get('decidedBy')}: {final.get('denyReason')}")
    if status in ("EXPIRED", "CANCELLED"):
        raise Exit(REFUSED, f"{status}: {rid}")
    if status != "APPROVED":
        raise Exit(REFUSED, f"unexpected status {status!r}")
    try:
        receipt = _fetch_receipt(client, rid)
    except OSError as exc:
        raise Exit(UNREACHABLE, f"cannot fetch the receipt: {exc}") from None
    if keyset is None:  # unreachable: --wait requires --keys
        raise Exit(USAGE, "no keyset to verify the receipt with")
    summary = verify(receipt, keyset, args, datetime.now(UTC))
    if args.out:
        try:
            Path(args.out).write_bytes(receipt)
        except OSError as exc:
            raise Exit(USAGE, f"cannot write {args.out}: {exc.strerror}") from None
    else:
        sys.stdout.write(receipt.decode() + "\n")
    progress(summary)
    return OK


def _fetch_receipt(client: BotClient, rid: str) -> bytes:
    path = f"/v1/requests/{rid}/receipt"
    ts = str(int(time.time()))
    req = urllib.request.Request(  # noqa: S310 - --url is checked to be http(s)
        client.base + path,
        headers={"X-Keyturn-Timestamp": ts, "X-Keyturn-Signature": sign(client.secret, "GET", path, b"", ts)},
    )
    try:
        with urllib.request.urlopen(req, timeout=client.timeout) as resp:  # noqa: S310 - http(s) only
            data: bytes = resp.read(1024 * 1024)
            return data
    except urllib.error.HTTPError as exc:
        raise Exit(REFUSED, f"no receipt (HTTP {exc.code})") from None


def _is_http_url(url: str) -> bool:
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def main(argv: Sequence[str] | None = None) -> int:
    """``keyturn request``; returns the exit code (0 only with a verified receipt)."""
    parser = _parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:
        return OK if exc.code in (0, None) else USAGE
    if not _is_http_url(args.url):
        print("keyturn request: --url must be an http(s) URL", file=sys.stderr)
        return USAGE
    secret = os.environ.get(SECRET_ENV, "")
    if not secret:
        print(f"keyturn request: ${SECRET_ENV} is not set", file=sys.stderr)
        return USAGE

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        return run(args, secret, progress)
    except Exit as exc:
        print(f"keyturn request: {exc.message}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return UNREACHABLE
    except Exception as exc:  # never exit 0 on doubt
        print(f"keyturn request: unexpected error: {type(exc).__name__}", file=sys.stderr)
        return REFUSED
