"""``keyturn request``: ask the bot for an approval from CI and, with ``--wait``, wait for a verified receipt.

Standard library HTTP (urllib) plus the gate (``keyturn.signer.gate``), the same receipt check as ``keyturn
verify``: same keyset source rules, same development-key refusal, same exact-scope verification. A pipeline
needs nothing else. The CI secret comes from ``KEYTURN_CI_SECRET`` only (never a flag: flags end up in
process lists and logs). Arguments follow the gate commands' rules (``keyturn.signer.cli_args``): ``-h`` is
help only alone.

With ``--oidc`` no secret is used: each call carries the job's OIDC ID token (``Authorization: Bearer``). On
GitHub Actions a fresh one is requested for ``--audience`` from the runtime endpoint
(``$ACTIONS_ID_TOKEN_REQUEST_URL&audience=…`` with ``$ACTIONS_ID_TOKEN_REQUEST_TOKEN``); on GitLab CI it is
read from the ``id_tokens`` variable named by ``--id-token-var``. Scope and requester default to the token's
own claims (read, not trusted: the signer checks them), and the receipt must say the requester was proven.
Tokens are never printed.

Exit codes — never 0 on doubt:

* 0  approved, and the receipt verified offline against ``--keys`` for exactly this scope (``--wait`` only)
* 1  denied, expired, cancelled, a receipt the gate refused, or (without ``--wait``) not approved yet
* 2  usage or configuration error (bad arguments, no secret, no keyset, a keyset the gate refuses to load,
     request refused as invalid or unauthorized)
* 3  the bot or the keyset URL cannot be reached, or the wait timed out

The keyset must come from a trusted place (a pinned file, written from a CI variable), never from the checkout
being deployed nor from the bot this command asks (``--keys`` on ``--url``'s host is refused): whoever
controls the keyset controls what verifies.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from keyturn.signer import gate
from keyturn.signer.cli_args import UsageError, parse, wants_help
from keyturn.signer.errors import KeyturnError
from keyturn.signer.receipt import Scope

if TYPE_CHECKING:
    from keyturn.signer.keyset import PublicKeyset
    from keyturn.signer.words import Fact

OK, REFUSED, USAGE, UNREACHABLE = 0, 1, 2, 3
MAX_POLL = 60
SECRET_ENV = "KEYTURN_CI_SECRET"  # noqa: S105 - the variable name, not a secret
REPLAY_ATTEMPTS = 3

# The gate's keyset refusals as exit codes (docs/api.md). The keyset is loaded before anything is posted, so
# a keyset the gate will not use is a configuration error (2), except one that cannot be fetched right now,
# which is like an unreachable bot (3). Every refusal of the receipt itself is 1 (see _verify).
_KEYSET_EXIT = {gate.KEYSET_UNAVAILABLE: UNREACHABLE}


class Exit(KeyturnError):
    """Stop with exit status ``status`` after printing ``message`` on stderr. ``code`` is the stable error
    code of that status (``request_refused``, ``request_invalid``, ``request_unreachable``)."""

    def __init__(self, status: int, reason: str, /, **facts: Fact) -> None:
        # ``reason`` picks the sentence in ``keyturn.signer.words``; the facts fill it in.
        super().__init__(code=_EXIT_CODES.get(status, "request_refused"), facts={"reason": reason, **facts})
        self.status = status


# Each exit status's stable code (0 is never an Exit).
_EXIT_CODES = {REFUSED: "request_refused", USAGE: "request_invalid", UNREACHABLE: "request_unreachable"}


def parse_duration(text: str) -> float:
    """``"45s"``, ``"30m"``, ``"2h"``, ``"1d"`` or plain seconds; ``UsageError`` otherwise."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    raw = text.strip()
    try:
        value = float(int(raw[:-1]) * units[raw[-1]]) if raw and raw[-1] in units else float(int(raw))
    except ValueError:
        raise UsageError(f"not a duration: {text!r} (use e.g. 30m, 2h, 90)") from None
    if value <= 0:
        raise UsageError("the timeout must be positive")
    return value


def sign(secret: str, method: str, path: str, body: bytes, timestamp: str) -> str:
    """``v1=<hex>`` over ``v1:{timestamp}:{METHOD}:{path}:{body}`` (design.md §6)."""
    msg = f"v1:{timestamp}:{method}:{path}:".encode() + body
    return "v1=" + hmac.new(secret.encode(), msg, hashlib.sha256).hexdigest()


TokenSource = Callable[[], str]


def github_token_source(
    audience: str, env: dict[str, str] | None = None, timeout: float = 30.0
) -> TokenSource:
    """GitHub Actions' runtime token request: ``GET $ACTIONS_ID_TOKEN_REQUEST_URL&audience=…`` with
    ``Authorization: bearer $ACTIONS_ID_TOKEN_REQUEST_TOKEN``, answered ``{"value": "<jwt>"}``. The job needs
    ``permissions: id-token: write``. A fresh token per call: they live minutes, a wait can last hours."""
    environ = env if env is not None else dict(os.environ)
    url = environ.get("ACTIONS_ID_TOKEN_REQUEST_URL", "")
    bearer = environ.get("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "")
    if not url or not bearer:
        raise Exit(USAGE, "oidc_env")
    if not _is_http_url(url):
        raise Exit(USAGE, "oidc_url")
    full = url + ("&" if "?" in url else "?") + urllib.parse.urlencode({"audience": audience})

    def fetch() -> str:
        req = urllib.request.Request(  # noqa: S310 - checked to be http(s) above
            full, headers={"Authorization": f"bearer {bearer}", "User-Agent": "keyturn-request/1"}
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - http(s) only
                data = json.loads(resp.read(64 * 1024))
        except urllib.error.HTTPError as exc:
            raise Exit(USAGE, "oidc_http", status=exc.code) from None
        except (OSError, ValueError) as exc:
            raise Exit(UNREACHABLE, "oidc_unreachable", error=type(exc).__name__) from None
        value = data.get("value") if isinstance(data, dict) else None
        if not isinstance(value, str) or not value:
            raise Exit(USAGE, "oidc_no_value")
        return value

    return fetch


def variable_token_source(name: str, env: dict[str, str] | None = None) -> TokenSource:
    """GitLab CI: the ID token in the ``id_tokens`` variable ``name`` (it lives as long as the job)."""
    value = (env if env is not None else os.environ).get(name, "")
    if not value:
        raise Exit(USAGE, "oidc_var", name=name)
    return lambda: value


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """The CI API never redirects; following one would send the call's credentials (the job's ID token, the
    MAC headers) to wherever it points, in clear if it points at http. A 3xx is answered as it came."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> None:
        return None


_BOT_OPENER = urllib.request.build_opener(_NoRedirect)


class BotClient:
    """A tiny HTTP client of the bot's CI API: each call signed with the CI secret, or carrying an OIDC
    ID token from ``token_source``."""

    def __init__(
        self, base_url: str, secret: str, timeout: float = 30.0, token_source: TokenSource | None = None
    ) -> None:
        self.base = base_url.rstrip("/")
        self.secret = secret
        self.timeout = timeout
        self.token_source = token_source

    def auth_headers(self, method: str, path: str, body: bytes) -> dict[str, str]:
        """The authentication headers of one call."""
        if self.token_source is not None:
            return {"Authorization": f"Bearer {self.token_source()}"}
        ts = str(int(time.time()))
        return {"X-Keyturn-Timestamp": ts, "X-Keyturn-Signature": sign(self.secret, method, path, body, ts)}

    def call(
        self, method: str, path: str, body: bytes = b"", query: dict[str, Any] | None = None, wait: float = 0
    ) -> tuple[int, dict[str, Any]]:
        """Send one signed request; (status, JSON body). Raises ``OSError`` when the bot is unreachable."""
        headers = {
            **self.auth_headers(method, path, body),
            "Content-Type": "application/json",
            "User-Agent": "keyturn-request/1",
        }
        url = self.base + path + ("?" + urllib.parse.urlencode(query) if query else "")
        req = urllib.request.Request(  # noqa: S310 - --url is checked to be http(s)
            url, data=body if method == "POST" else None, headers=headers, method=method
        )
        try:
            with _BOT_OPENER.open(req, timeout=self.timeout + wait) as resp:
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


def _load_keyset(source: str, args: RequestArgs) -> PublicKeyset:
    """The trusted keyset through the gate, ``Exit`` if the gate refuses it. Called before asking for
    approval, so a broken or untrusted keyset fails the job at once instead of after people have approved."""
    # The bot serves GET /v1/keys, but it is the party this gate checks: keys from it (under any name of its
    # host, or behind a redirect) would let a compromised bot vouch for a receipt it signed itself
    # (docs/security.md, "The gate: one receipt check").
    try:
        return gate.load_keyset(source, trust_keys_in_checkout=args.trust_keys_in_checkout, not_from=args.url)
    except gate.GateError as exc:
        raise Exit(
            _KEYSET_EXIT.get(exc.code, USAGE), "rejected", rejected=exc.code, detail=exc.message
        ) from None


def _verify(receipt: bytes, keyset: PublicKeyset, args: RequestArgs, now: datetime) -> str:
    """The gate's check of ``receipt`` for exactly the requested scope: its summary line, or ``Exit(1)``."""
    try:
        verified = gate.check_receipt(
            receipt, keyset, args.scope, now, allow_dev_keys=args.allow_dev_keys, require_oidc=args.oidc
        )
    except gate.GateError as exc:
        raise Exit(REFUSED, "rejected", rejected=exc.code, detail=exc.message) from None
    return verified.summary()


REQUEST_USAGE = f"""\
usage: keyturn request --url URL --repo REPO --sha SHA --env ENV --workflow WORKFLOW --requester WHO
                       [--ref REF] [--run-url URL] [--title TITLE] [--callback-url URL]
                       [--oidc [--audience AUD | --id-token-var NAME]]
                       [--wait --keys KEYSET [--timeout DURATION] [--out FILE]]
                       [--allow-dev-keys] [--trust-keys-in-checkout]

Ask Keyturn for a deploy approval; with --wait, wait for it, fetch the receipt and verify it offline
with the same check as `keyturn verify`. The CI secret is read from ${SECRET_ENV}; with --oidc the
job's OIDC ID token is used instead, and --repo/--sha/--env/--workflow/--requester default to its claims.

arguments:
  --url URL                 the bot's base URL, e.g. https://keyturn.example.com
  --repo REPO               owner/name
  --sha SHA                 the full commit sha being deployed
  --env ENV                 the environment (as in the policy)
  --workflow WORKFLOW       the workflow doing the deploy, e.g. deploy.yml
  --requester WHO           who asks, e.g. github:alice or alice@example.com
  --ref REF                 branch or tag (shown on the card)
  --run-url URL             link to the pipeline run (shown on the card)
  --title TITLE             a short title (shown on the card)
  --callback-url URL        where the bot POSTs the outcome
  --oidc                    authenticate with the job's OIDC ID token instead of ${SECRET_ENV}; the
                            receipt must then say the requester was proven (as verify --require-oidc)
  --audience AUD            GitHub Actions: the audience to request the token for (the policy's)
  --id-token-var NAME       GitLab CI: the id_tokens variable holding the token
  --wait                    wait for the decision, fetch and verify the receipt
  --timeout DURATION        how long to wait, e.g. 30m, 2h, 90 (default 30m)
  --out FILE                write the verified receipt here (default: stdout)
  --keys KEYSET             trusted public keyset (a file, or an https URL); required with --wait
  --allow-dev-keys          accept receipts signed by `keyturn dev` keys (never in production)
  --trust-keys-in-checkout  accept a keyset file inside the current git checkout (normally refused)

Exit codes: 0 approved with a verified receipt; 1 denied/expired/cancelled/receipt refused (or not
approved yet without --wait); 2 usage, configuration, or a keyset the gate refuses; 3 bot or keyset URL
unreachable, or timed out. Each option at most once; a value starting with '-' is written
--option=VALUE. -h/--help shows this only as the sole argument: anywhere else it is a usage error.
"""
_VALUES = (
    "--url", "--repo", "--sha", "--env", "--workflow", "--requester", "--ref", "--run-url", "--title",
    "--callback-url", "--timeout", "--out", "--keys", "--audience", "--id-token-var",
)  # fmt: skip
_FLAGS = ("--wait", "--allow-dev-keys", "--trust-keys-in-checkout", "--oidc")
_REQUIRED = ("--url", "--repo", "--sha", "--env", "--workflow", "--requester")


@dataclass(frozen=True)
class RequestArgs:
    """The parsed ``keyturn request`` arguments."""

    url: str
    repo: str
    sha: str
    env: str
    workflow: str
    requester: str
    ref: str | None = None
    run_url: str | None = None
    title: str | None = None
    callback_url: str | None = None
    wait: bool = False
    timeout: float = 1800.0
    out: str | None = None
    keys: str | None = None
    allow_dev_keys: bool = False
    trust_keys_in_checkout: bool = False
    oidc: bool = False
    audience: str | None = None
    id_token_var: str | None = None

    @property
    def scope(self) -> Scope:
        """What is being deployed: the scope requested and the one the receipt must match exactly."""
        return Scope(self.repo, self.sha, self.env, self.workflow)


def parse_args(argv: Sequence[str]) -> RequestArgs:
    """Parse ``keyturn request`` arguments by the gate commands' rules; ``UsageError`` otherwise."""
    parsed = parse(argv, values=_VALUES, flags=_FLAGS, required=("--url",))
    if parsed.positionals:
        raise UsageError(f"unexpected argument {parsed.positionals[0]!r}")
    v = parsed.values
    oidc = "--oidc" in parsed.flags
    if not oidc:
        missing = [n for n in _REQUIRED if n not in v]
        if missing:
            raise UsageError(f"missing {', '.join(missing)}")
        if "--audience" in v or "--id-token-var" in v:
            raise UsageError("--audience and --id-token-var go with --oidc")
    elif "--audience" in v and "--id-token-var" in v:
        raise UsageError("--audience (GitHub) and --id-token-var (GitLab) exclude each other")
    url = v["--url"]
    if not _is_http_url(url):
        raise UsageError("--url must be an http(s) URL")
    if oidc and urllib.parse.urlsplit(url).scheme == "http" and not _is_loopback(url):
        # The ID token would cross the network in clear: whoever reads it may cancel this request (a GitLab
        # job's token lives as long as the job) or read it. Loopback is for `keyturn dev` and tests.
        raise UsageError(
            "--oidc sends the job's ID token: --url must be https (plain http only to localhost)"
        )
    return RequestArgs(
        url=url,
        repo=v.get("--repo", ""),
        sha=v.get("--sha", ""),
        env=v.get("--env", ""),
        workflow=v.get("--workflow", ""),
        requester=v.get("--requester", ""),
        ref=v.get("--ref"),
        run_url=v.get("--run-url"),
        title=v.get("--title"),
        callback_url=v.get("--callback-url"),
        wait="--wait" in parsed.flags,
        timeout=parse_duration(v["--timeout"]) if "--timeout" in v else 1800.0,
        out=v.get("--out"),
        keys=v.get("--keys"),
        allow_dev_keys="--allow-dev-keys" in parsed.flags,
        trust_keys_in_checkout="--trust-keys-in-checkout" in parsed.flags,
        oidc=oidc,
        audience=v.get("--audience"),
        id_token_var=v.get("--id-token-var"),
    )


def with_token_claims(args: RequestArgs, token: str) -> RequestArgs:
    """``args`` with scope and requester the user left out taken from the token's claims (read without
    checking: the signer checks the token, and refuses a body that disagrees with it)."""
    import dataclasses

    from keyturn.signer.oidc import OidcError, unverified_claims, workflow_path

    try:
        c = unverified_claims(token)
    except OidcError as exc:
        raise Exit(USAGE, "oidc_malformed", error=exc.code) from None
    github = "repository" in c
    repo = c.get("repository") if github else c.get("project_path")
    claim = "job_workflow_ref" if github else "ci_config_ref_uri"
    try:  # the signer's own mapping, so the body never disagrees with the token over the workflow
        workflow = workflow_path(str(c.get(claim) or ""), str(repo or ""), "/" if github else "//", claim)
    except OidcError:
        workflow = ""
    actor = c.get("actor") if github else c.get("user_login")
    filled = {
        "repo": args.repo or str(repo or ""),
        "sha": args.sha or str(c.get("sha") or ""),
        "env": args.env or str(c.get("environment") or ""),
        "workflow": args.workflow or workflow,
        "requester": args.requester or (f"{'github' if github else 'gitlab'}:{actor}" if actor else ""),
    }
    missing = [k for k, value in filled.items() if not value]
    if missing:
        raise Exit(USAGE, "oidc_missing", missing=", ".join(missing))
    return dataclasses.replace(
        args,
        repo=filled["repo"],
        sha=filled["sha"],
        env=filled["env"],
        workflow=filled["workflow"],
        requester=filled["requester"],
    )


def _post_request(client: BotClient, args: RequestArgs) -> dict[str, Any]:
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
            raise Exit(UNREACHABLE, "bot_unreachable", url=client.base, error=str(exc)) from None
        if status != 409 or data.get("error") != "replayed_request":
            return _check_status(status, data)
        rid = data.get("requestId")
        if isinstance(rid, str) and rid:
            return _get_request(client, rid)
        # The first copy is still being handled: sign anew once the clock has moved to the next second
        # (the signature covers whole seconds, so nothing sooner would differ).
        if attempt + 1 < REPLAY_ATTEMPTS:
            time.sleep(1.0 - (time.time() % 1.0) + 0.01)
    raise Exit(UNREACHABLE, "replayed")


def _get_request(client: BotClient, rid: str) -> dict[str, Any]:
    try:  # quoted: the id comes from an answer, and must stay one path segment
        status, data = client.call("GET", f"/v1/requests/{urllib.parse.quote(rid, safe='')}")
    except OSError as exc:
        raise Exit(UNREACHABLE, "bot_unreachable", url=client.base, error=str(exc)) from None
    return _check_status(status, data)


def _check_status(status: int, data: dict[str, Any]) -> dict[str, Any]:
    if status in (200, 202):
        return data
    message = str(data.get("message") or data.get("error") or f"HTTP {status}")
    if status == 401 and str(data.get("error", "")).startswith("oidc_"):
        raise Exit(USAGE, "oidc_refused", error=str(data.get("error")), detail=message)
    if status == 401:
        raise Exit(USAGE, "ci_signature", env=SECRET_ENV)
    if status == 403:
        raise Exit(USAGE, "policy", error=str(data.get("error")), detail=message)
    if status in (400, 404, 413, 422):
        fields = data.get("fields")
        detail = "; ".join(f"{f.get('field')}: {f.get('message')}" for f in fields) if fields else message
        raise Exit(USAGE, "refused", detail=detail)
    raise Exit(UNREACHABLE, "bot_http", status=status, detail=message)


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
            raise Exit(UNREACHABLE, "timed_out", request_id=rid)
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


def run(
    args: RequestArgs,
    secret: str,
    progress: Callable[[str], None],
    token_source: TokenSource | None = None,
) -> int:
    """The command, after argument parsing; returns the exit code or raises ``Exit``."""
    if args.wait and not args.keys:
        raise Exit(USAGE, "wait_needs_keys")
    keyset = _load_keyset(args.keys, args) if args.keys else None
    if args.oidc:
        if token_source is None:
            if args.id_token_var:
                token_source = variable_token_source(args.id_token_var)
            else:
                if not args.audience:
                    raise Exit(USAGE, "needs_audience")
                token_source = github_token_source(args.audience)
        args = with_token_claims(args, token_source())
    client = BotClient(args.url, secret, token_source=token_source if args.oidc else None)
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
        raise Exit(REFUSED, "denied", by=str(final.get("decidedBy")), why=str(final.get("denyReason")))
    if status in ("EXPIRED", "CANCELLED"):
        raise Exit(REFUSED, "final", status=status, request_id=rid)
    if status != "APPROVED":
        raise Exit(REFUSED, "unexpected", status=repr(status))
    receipt = _fetch_receipt(client, rid, deadline, progress)
    if keyset is None:  # unreachable: --wait requires --keys
        raise Exit(USAGE, "no_keyset")
    summary = _verify(receipt, keyset, args, datetime.now(UTC))
    if args.out:
        try:
            Path(args.out).write_bytes(receipt)
        except OSError as exc:
            raise Exit(USAGE, "cannot_write", path=str(args.out), error=exc.strerror) from None
    else:
        sys.stdout.write(receipt.decode() + "\n")
    progress(summary)
    return OK


def _fetch_receipt(client: BotClient, rid: str, deadline: float, progress: Callable[[str], None]) -> bytes:
    """The approved request's receipt. An outage (the bot unreachable, a 5xx such as ``503
    store_unavailable``, a 429) is waited out until ``deadline`` as during the wait, then exit 3: the
    request is approved, and failing now would make people approve a re-run again. Any other answer is
    final (exit 1)."""
    path = f"/v1/requests/{rid}/receipt"
    failures = 0
    while True:
        req = urllib.request.Request(  # noqa: S310 - --url is checked to be http(s)
            client.base + path, headers=client.auth_headers("GET", path, b"")
        )
        try:
            with _BOT_OPENER.open(req, timeout=client.timeout) as resp:
                data: bytes = resp.read(1024 * 1024)
                return data
        except urllib.error.HTTPError as exc:
            if exc.code < 500 and exc.code != 429:
                raise Exit(REFUSED, "no_receipt", status=exc.code) from None
            trouble = f"HTTP {exc.code}"
        except (OSError, http.client.HTTPException) as exc:
            trouble = str(exc) or type(exc).__name__
        failures += 1
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Exit(UNREACHABLE, "receipt_unreachable", request_id=rid, detail=trouble)
        if failures == 1:
            progress(f"{rid} is APPROVED but its receipt cannot be fetched yet ({trouble}); retrying")
        time.sleep(min(2.0 ** (failures - 1), 16.0, remaining))


def _is_loopback(url: str) -> bool:
    """Whether ``url`` names a loopback host, by the gate's rule for plain-http keyset URLs."""
    return urllib.parse.urlsplit(url).hostname in gate.LOOPBACK_HOSTS


def _is_http_url(url: str) -> bool:
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def main(argv: Sequence[str] | None = None) -> int:
    """``keyturn request``; returns the exit code (0 only with a verified receipt, whatever argv holds)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if wants_help(args_list):
        print(REQUEST_USAGE, end="")
        return OK
    try:
        args = parse_args(args_list)
    except UsageError as exc:
        print(f"keyturn request: {exc}\n\n{REQUEST_USAGE}", end="", file=sys.stderr)
        return USAGE
    secret = os.environ.get(SECRET_ENV, "")
    if not secret and not args.oidc:
        print(f"keyturn request: ${SECRET_ENV} is not set (or use --oidc)", file=sys.stderr)
        return USAGE

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        return run(args, secret, progress)
    except Exit as exc:
        print(f"keyturn request: {exc.message}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        return UNREACHABLE
    except Exception as exc:  # never exit 0 on doubt
        print(f"keyturn request: unexpected error: {type(exc).__name__}", file=sys.stderr)
        return REFUSED
