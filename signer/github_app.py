"""Pure decisions of the GitHub approver (docs/security.md, "GitHub deployment protection rules").

Nothing here does I/O or reads a clock: raw bytes, headers, secrets and ``now`` go in; checked values come
out, or a :class:`GitHubError` with a stable ``code`` is raised. ``signer/github_approver.py`` is the I/O
around it.

- :func:`webhook_signature` / :func:`check_webhook`: GitHub's ``X-Hub-Signature-256`` (HMAC-SHA256 of the raw
  body with the webhook secret, compared in constant time), then the ``deployment_protection_rule``
  (``requested``) payload, validated defensively: the schema marks almost every field optional.
- :func:`app_jwt`: the RS256 JSON Web Token a GitHub App signs with its private key to ask for an
  installation access token.
- :func:`run_scope`: the receipt scope of a run, from GitHub's own reads of the workflow run and deployment.
- :func:`approve_comment` / :func:`reject_comment`: review comments of at most 1024 characters, Markdown
  escaped where the text comes from someone else.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from keyturn.signer import contract
from keyturn.signer.errors import KeyturnError
from keyturn.signer.receipt import Scope

if TYPE_CHECKING:
    from keyturn.signer.words import Fact

EVENT = "deployment_protection_rule"
MAX_WEBHOOK_BYTES = 1024 * 1024  # GitHub caps payloads at 25 MB; this event is a few KB
MAX_COMMENT = 1024  # GitHub's limit on a review comment
JWT_BACKDATE_S = 60  # GitHub's advice: issue the JWT 60 s in the past against clock drift
JWT_LIFETIME_S = 540  # at most 10 minutes in all are allowed

_DELIVERY_RE = re.compile(r"\A[0-9A-Za-z-]{1,64}\Z")
_SIG_RE = re.compile(r"\Asha256=[0-9a-f]{64}\Z")
_RUN_PATH_RE = re.compile(
    r"\A/repos/(?P<repo>[A-Za-z0-9_.-]{1,100}/[A-Za-z0-9_.-]{1,100})/actions/runs/(?P<run>[0-9]{1,20})"
    r"/deployment_protection_rule\Z"
)
# A GitHub login: letters, digits, hyphens; Enterprise Managed Users add "_<shortcode>"; bots add "[bot]".
_LOGIN_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_-]{0,99}(?:\[bot\])?\Z")
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+!|~@-])")


class GitHubError(KeyturnError):
    """A refusal of the GitHub approver. ``code`` is stable; ``fields`` names what was wrong in a payload."""

    def __init__(self, code: str, *, fields: Mapping[str, str] | None = None, **facts: Fact) -> None:
        super().__init__(code=code, facts=facts)
        self.fields = dict(fields or {})


@dataclass(frozen=True)
class Webhook:
    """A checked ``deployment_protection_rule`` (``requested``) delivery: everything GitHub signed that the
    approver uses. These are the webhook's word; the approver re-reads the run from the API before approving.
    """

    delivery: str
    run_id: int
    repo: str
    sha: str
    environment: str
    installation_id: int
    deployment_id: int | None
    ref: str | None
    event: str | None
    callback_path: str
    sender: str | None = None  # sender.login: who triggered the run (always set by parse_payload)
    created_at: int | None = None  # deployment.created_at (Unix seconds): GitHub-signed, dates the request


# The hand-off's headers naming the webhook's arrival at the signer (:class:`Arrival`), with their grammar.
ARRIVAL_HEADERS = {
    "timestamp": ("X-Keyturn-Arrival-Timestamp", re.compile(r"\A[0-9]{1,12}\Z")),
    "stamp": ("X-Keyturn-Arrival-Stamp", re.compile(r"\A[0-9a-f]{64}\Z")),
    "workflow": ("X-Keyturn-Arrival-Workflow", contract.WORKFLOW_RE),
}


@dataclass(frozen=True)
class Arrival:
    """The signer's arrival of the webhook a request was opened from, as the bot's hand-off names it: the
    stamp's ``timestamp``, the ``stamp`` itself and the run's ``workflow`` (the request's origin keeps all
    three, bot/github.py). With the webhook the approver kept they are the request's whole origin, so its id
    can be recomputed here (``evidence.request_id_for``)."""

    timestamp: str
    stamp: str
    workflow: str


def arrival_from(headers: Mapping[str, str]) -> Arrival | str:
    """The :class:`Arrival` in ``headers``, or the name of the first header missing or malformed."""
    lowered = {k.lower(): v for k, v in headers.items()}
    values: dict[str, str] = {}
    for field, (name, grammar) in ARRIVAL_HEADERS.items():
        value = lowered.get(name.lower())
        if value is None or not grammar.match(value):
            return name
        values[field] = value
    return Arrival(**values)


def arrival_headers(timestamp: str, stamp: str, workflow: str) -> dict[str, str]:
    """The hand-off's headers for an arrival (the bot's side of :func:`arrival_from`)."""
    values = {"timestamp": timestamp, "stamp": stamp, "workflow": workflow}
    return {name: values[field] for field, (name, _) in ARRIVAL_HEADERS.items()}


def webhook_signature(secret: str, body: bytes) -> str:
    """``X-Hub-Signature-256`` for ``body``: ``sha256=`` + hex HMAC-SHA256 keyed with the webhook secret."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _header(headers: Mapping[str, str], name: str) -> str | None:
    # Header names are case-insensitive; the bot forwards them as it got them.
    wanted = name.lower()
    return next((v for k, v in headers.items() if k.lower() == wanted), None)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two parsers reading one JSON text differently let a signed payload say two things: refuse duplicates.
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ValueError("duplicate key")
    return dict(pairs)


def _str(obj: Mapping[str, Any], key: str, problems: dict[str, str], where: str = "") -> str | None:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        problems[where + key] = "must be a non-empty string"
        return None
    return value


def _int(obj: object, key: str, problems: dict[str, str], where: str) -> int | None:
    value = obj.get(key) if isinstance(obj, Mapping) else None
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        problems[where + key] = "must be a positive integer"
        return None
    return value


def _time(obj: object, key: str, problems: dict[str, str], where: str) -> int | None:
    """An optional ISO 8601 UTC time (``2026-11-30T13:00:00Z``) as Unix seconds; present but unreadable is a
    problem (it would date the request)."""
    value = obj.get(key) if isinstance(obj, Mapping) else None
    if value is None:
        return None
    from datetime import datetime

    try:
        at = datetime.fromisoformat(value) if isinstance(value, str) and len(value) <= 40 else None
    except ValueError:
        at = None
    if at is None or at.tzinfo is None:
        problems[where + key] = "must be an ISO 8601 time with a zone"
        return None
    return int(at.timestamp())


def check_webhook(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    api_base_path: str | None,
    environments: frozenset[str],
) -> Webhook:
    """Check one delivery as GitHub sent it (raw ``body`` and ``headers``) and return what it says.

    Order: size, signature (before anything of the payload is believed), event, payload shape, the callback
    (it must be the review endpoint of this repository's run on the configured API: the installation token is
    sent there), the environment's policy. ``api_base_path`` is the path part of the API base URL (``""`` for
    ``https://api.github.com``; None: any, for the signer, which sends nothing there). De-duplication on the
    delivery id is the caller's (it keeps state).
    """
    check_signature(secret, _header(headers, "X-Hub-Signature-256"), body)
    delivery = _header(headers, "X-GitHub-Delivery")
    if delivery is None or not _DELIVERY_RE.match(delivery):
        raise GitHubError("bad_delivery", reason="header")
    event = _header(headers, "X-GitHub-Event")
    if event != EVENT:
        raise GitHubError("unsupported_event", want=EVENT, got=repr(event))
    return parse_payload(body, delivery, api_base_path=api_base_path, environments=environments)


def check_signature(secret: str, signature: str | None, body: bytes) -> None:
    """``signature`` (``X-Hub-Signature-256``) is GitHub's for ``body``, compared in constant time."""
    if len(body) > MAX_WEBHOOK_BYTES:
        raise GitHubError("payload_too_large", reason="limit", limit=MAX_WEBHOOK_BYTES)
    if not secret:
        raise GitHubError("github_not_configured")
    if signature is None:
        raise GitHubError("missing_signature")
    expected = webhook_signature(secret, body)
    if not _SIG_RE.match(signature) or not hmac.compare_digest(signature, expected):
        raise GitHubError("bad_signature", reason="webhook")


def parse_payload(
    body: bytes, delivery: str, *, api_base_path: str | None, environments: frozenset[str] | None
) -> Webhook:
    """The ``deployment_protection_rule`` payload read defensively, *without* checking its signature (the
    caller has, or renders only what the signer will check). ``environments``: those with a policy (None:
    not checked here)."""
    if len(body) > MAX_WEBHOOK_BYTES:
        raise GitHubError("payload_too_large", reason="limit", limit=MAX_WEBHOOK_BYTES)
    if not _DELIVERY_RE.match(delivery):
        raise GitHubError("bad_delivery", reason="payload")
    try:
        payload = json.loads(body.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise GitHubError("malformed_payload", reason="not_json") from None
    if not isinstance(payload, dict):
        raise GitHubError("malformed_payload", reason="not_object")
    if payload.get("action") != "requested":
        raise GitHubError("unsupported_action", got=repr(payload.get("action")))
    problems: dict[str, str] = {}
    environment = _str(payload, "environment", problems)
    sha = _str(payload, "sha", problems)
    callback = _str(payload, "deployment_callback_url", problems)
    repository = payload.get("repository")
    repo = _str(repository, "full_name", problems, "repository.") if isinstance(repository, dict) else None
    if not isinstance(repository, dict):
        problems["repository"] = "must be an object"
    installation_id = _int(payload.get("installation"), "id", problems, "installation.")
    deployment = payload.get("deployment")
    deployment_id = None
    created_at = None
    if deployment is not None:
        deployment_id = _int(deployment, "id", problems, "deployment.")
        created_at = _time(deployment, "created_at", problems, "deployment.")
    # The same grammar as every other request's scope (signer/contract.py): a receipt could not name more.
    for name, value, rule in (
        ("sha", sha, contract.sha_problem),
        ("environment", environment, contract.environment_problem),
        ("repository.full_name", repo, contract.repo_problem),
    ):
        problem = rule(value) if value is not None else None
        if problem:
            problems[name] = problem
    ref = payload.get("ref") if isinstance(payload.get("ref"), str) else None
    sender_obj = payload.get("sender")
    login = sender_obj.get("login") if isinstance(sender_obj, dict) else None
    # Who triggered the run is the request's requester, whom the self-approval rule needs: a webhook whose
    # sender cannot be read opens no request (an unnamed requester would map to no one, and approve).
    sender = login if isinstance(login, str) and _LOGIN_RE.match(login) else None
    if sender is None:
        problems["sender.login"] = "must be a GitHub login"
    trigger = payload.get("event") if isinstance(payload.get("event"), str) else None
    if problems:
        detail = "; ".join(f"{k}: {v}" for k, v in sorted(problems.items()))
        raise GitHubError("malformed_payload", reason="fields", detail=detail, fields=problems)
    assert environment
    assert sha
    assert callback
    assert repo
    assert installation_id
    run_id, path = _callback_run(callback, api_base_path, repo)
    if environments is not None and environment not in environments:
        raise GitHubError("no_policy", environment=environment)
    return Webhook(
        delivery=delivery,
        run_id=run_id,
        repo=repo,
        sha=sha,
        environment=environment,
        installation_id=installation_id,
        deployment_id=deployment_id,
        ref=ref,
        event=trigger,
        callback_path=path,
        sender=sender,
        created_at=created_at,
    )


def _callback_run(callback: str, api_base_path: str | None, repo: str) -> tuple[int, str]:
    """The run id of ``deployment_callback_url``. Only its path is used: the approver posts to its own
    configured API base, so a payload cannot send the installation token to another host."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(callback)
    except ValueError:
        raise GitHubError("bad_callback", reason="not_url") from None
    path = parts.path
    if api_base_path is None and "/repos/" in path:
        path = path[path.index("/repos/") :]  # the signer: any API base (it sends nothing there)
    elif api_base_path and path.startswith(api_base_path + "/"):
        path = path[len(api_base_path) :]
    m = _RUN_PATH_RE.match(path)
    if parts.query or parts.fragment or m is None:
        raise GitHubError("bad_callback", reason="not_endpoint")
    if m.group("repo") != repo:
        raise GitHubError("bad_callback", reason="other_repo")
    return int(m.group("run")), path


def run_scope(webhook: Webhook, run: Mapping[str, Any], deployment: Mapping[str, Any] | None) -> Scope:
    """The scope a receipt must name to approve ``webhook``'s run, from GitHub's reads of the run (``GET
    /repos/{repo}/actions/runs/{id}``) and, when the event names one, of the deployment.

    The workflow is the run's ``path`` (``.github/workflows/deploy.yml``), as OIDC-proven requests name it.
    Any disagreement between the reads and the webhook is a refusal: never silently "corrected".
    """
    problems: dict[str, str] = {}
    repository = run.get("repository")
    repo = repository.get("full_name") if isinstance(repository, Mapping) else None
    sha = run.get("head_sha")
    workflow = run.get("path")
    if run.get("id") != webhook.run_id:
        problems["run.id"] = "is not the webhook's run"
    if repo != webhook.repo:
        problems["run.repository"] = f"is {repo!r}, the webhook says {webhook.repo!r}"
    if sha != webhook.sha:
        problems["run.head_sha"] = f"is {sha!r}, the webhook says {webhook.sha!r}"
    if not isinstance(workflow, str) or contract.workflow_problem(workflow):
        problems["run.path"] = "is not a usable workflow path"
    environment = webhook.environment
    if webhook.deployment_id is not None:
        if deployment is None:
            problems["deployment"] = "was not read"
        else:
            if deployment.get("environment") != webhook.environment:
                problems["deployment.environment"] = "is not the webhook's environment"
            if deployment.get("sha") != webhook.sha:
                problems["deployment.sha"] = "is not the webhook's sha"
    if problems:
        detail = "; ".join(f"{k} {v}" for k, v in sorted(problems.items()))
        raise GitHubError("run_mismatch", reason="reads", detail=detail, fields=problems)
    assert isinstance(repo, str)
    assert isinstance(sha, str)
    assert isinstance(workflow, str)
    return Scope(repo, sha, environment, workflow)


def run_attempt(run: Mapping[str, Any]) -> int:
    """The run's current ``run_attempt`` (1, then one more per re-run) from GitHub's read of the run. GitHub's
    review endpoint is per run, so an approval goes to whichever attempt waits now: the approver compares this
    with the attempt it checked. Missing or not a positive number: ``run_mismatch``."""
    attempt = run.get("run_attempt")
    if type(attempt) is not int or attempt < 1:
        raise GitHubError("run_mismatch", reason="run_attempt", fields={"run.run_attempt": "missing"})
    return attempt


def _b64url(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def app_jwt(app_id: str, private_key_pem: bytes, now: int) -> str:
    """The App's JWT (RS256; ``iss`` the App id; issued a minute back, expiring within 10 minutes)."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    key = serialization.load_pem_private_key(private_key_pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise GitHubError("bad_app_key")
    header = _b64url(json.dumps({"alg": "RS256", "typ": "JWT"}, separators=(",", ":")).encode())
    claims = {"iat": now - JWT_BACKDATE_S, "exp": now + JWT_LIFETIME_S, "iss": app_id}
    body = _b64url(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = f"{header}.{body}".encode()
    signature = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return f"{header}.{body}.{_b64url(signature)}"


def markdown_escape(text: str) -> str:
    """``text`` as literal Markdown: special characters backslash-escaped, control characters and line breaks
    flattened to spaces, so a reason cannot add links, mentions or headings to the review comment."""
    flat = "".join(" " if (ord(c) < 0x20 or ord(c) == 0x7F) else c for c in text)
    return _MD_SPECIAL.sub(r"\\\1", flat)


def _request_ref(request_id: str, link: str | None) -> str:
    """A request named in a comment: linked when there is a link, else as code (ids have no backticks: the
    grammar is checked, so nothing inside the code span needs escaping)."""
    if not contract.is_request_id(request_id):
        return "(unnamed request)"
    return f"[{markdown_escape(request_id)}]({link})" if link else f"`{request_id}`"


def _fit(head: str, tail: str = "") -> str:
    room = MAX_COMMENT - len(tail)
    if len(head) > room:
        head = head[: room - 1].rstrip("\\") + "…"
    return head + tail


def approve_comment(request_id: str, scope: Scope, approvers: list[str], link: str | None) -> str:
    """The comment of an approval: the request, what the receipt covers and who approved. Every value is from
    the verified receipt (or the approver's own configuration for ``link``), escaped anyway."""
    who = ", ".join(markdown_escape(a) for a in approvers) or "quorum"
    ident = _request_ref(request_id, link)
    head = (
        f"Keyturn receipt {ident} verified for {markdown_escape(scope.repo)} "
        f"`{scope.sha[:12]}` → {markdown_escape(scope.environment)} "
        f"({markdown_escape(scope.workflow)}); approved by {who}."
    )
    return _fit(head)


def status_comment(text: str) -> str:
    """A status-only comment: the bot's ``text``, escaped and cut to fit."""
    return _fit("Keyturn: " + markdown_escape(text))


def reject_comment(reason: str, request_id: str | None, link: str | None) -> str:
    """The comment of a rejection: ``reason`` (the bot's text: escaped, cut to fit) and the request."""
    tail = f" (Keyturn request {_request_ref(request_id, link)})" if request_id else ""
    return _fit("Rejected by Keyturn: " + markdown_escape(reason), tail)
