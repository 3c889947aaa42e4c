"""The gate: the one receipt check behind every "deploy or not" decision.

``keyturn verify`` and ``keyturn request --wait`` both call ``load_keyset`` and ``check_receipt`` here, so
they apply the same trust rules (docs/security.md, "The gate: one receipt check"):

1. **Keyset source** (``load_keyset``). A file is read (at most 1 MiB) unless it lies inside the checkout
   being deployed — the git work tree around the current directory, ``$GITHUB_WORKSPACE`` or
   ``$CI_PROJECT_DIR`` — where a pull request could replace it (``untrusted_keyset``;
   ``trust_keys_in_checkout`` overrides). A URL must be ``https://``, or plain ``http://`` to a loopback host
   only (``bad_keyset_url``); a redirect is followed only to a URL passing the same rule
   (``untrusted_keyset``); with ``not_from`` (``keyturn request``: the bot it asks), neither the URL nor a
   redirect may name that server under any spelling (``untrusted_keyset``); the body is at most 1 MiB
   (``bad_keyset``) and the whole fetch ends within 10 s (``keyset_unavailable``).
2. **Keyset** parsed strictly as a public JWKS (``bad_keyset``).
3. **Receipt** (``check_receipt``): ``keyturn.signer.verify.verify_receipt`` for exactly the expected scope
   at the given time, development keys refused unless ``allow_dev_keys`` (``dev_key``,
   ``scope_mismatch:…``, …);
   with ``require_oidc``, only a receipt whose requester an OIDC token proved (``requester_not_proven``).

Every refusal is one ``GateError`` with a stable code; the commands map codes to their exit codes. Standard
library + PyNaCl + ``rfc8785`` only, and the URL machinery (urllib, threading: milliseconds) is imported only
when a URL is fetched, because ``keyturn verify`` runs on every deploy.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from keyturn.signer.errors import KeyturnError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from keyturn.signer.keyset import PublicKeyset
    from keyturn.signer.receipt import Scope, datetime
    from keyturn.signer.verify import VerifiedReceipt
    from keyturn.signer.words import Fact

MAX_KEYSET_BYTES = 1024 * 1024
KEYSET_FETCH_DEADLINE_S = 10.0
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
# Environment variables naming the checkout being deployed: GitHub Actions', GitLab CI's.
CHECKOUT_VARIABLES = ("GITHUB_WORKSPACE", "CI_PROJECT_DIR")

# The gate's own codes (the receipt codes are docs/receipt.md §4's).
BAD_KEYSET_URL = "bad_keyset_url"  # the --keys URL breaks the source rule: known from the arguments alone
UNTRUSTED_KEYSET = "untrusted_keyset"  # a keyset file in the checkout, or a redirect breaking the rule
KEYSET_UNAVAILABLE = "keyset_unavailable"  # the URL could not be fetched (network, HTTP error, deadline)
BAD_KEYSET = "bad_keyset"  # not a usable public JWKS, or larger than MAX_KEYSET_BYTES
UNREADABLE = "unreadable"  # the keyset file cannot be read
INTERNAL_ERROR = "internal_error"  # an unexpected exception while verifying: a refusal, never a pass


class GateError(KeyturnError):
    """The gate refused: ``code`` is stable (branch on it), ``message`` is for people (``reason`` and the
    facts pick it in the words module; a relayed receipt refusal passes that refusal's facts)."""

    def __init__(
        self, code: str, reason: str | None = None, *, facts: Mapping[str, Fact] | None = None, **more: Fact
    ) -> None:
        super().__init__(
            code=code, facts={**(facts or {}), **more, **({} if reason is None else {"reason": reason})}
        )


def keyset_url_allowed(url: str) -> bool:
    """Whether a keyset URL (or a redirect target) passes the source rule: https to a named host, or plain
    http to loopback only (tests, a local signer)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return False
    if parts.scheme == "https" and parts.hostname:
        return True
    return parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS


def same_server(url: str, other: str) -> bool:
    """Whether two http(s) URLs name the same server: host and port, the host compared as a resolver sees
    it (case, a trailing dot and IDNA-equivalent letters do not matter; an IP literal in any notation is
    its address; every loopback name and address is one host). A URL that does not parse names no server.
    """
    a, b = _server(url), _server(other)
    return a is not None and a == b


def _server(url: str) -> tuple[str, int | None] | None:
    import contextlib
    import ipaddress
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:
        return None
    host = (parts.hostname or "").rstrip(".")
    with contextlib.suppress(UnicodeError):  # what getaddrinfo looks up: nameprep folds case and width
        host = host.encode("idna").decode("ascii").lower()
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        loopback = host == "localhost" or host.endswith(".localhost")
    else:
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        loopback, host = ip.is_loopback, str(ip)
    return ("loopback" if loopback else host), port


def load_keyset(
    source: str,
    *,
    trust_keys_in_checkout: bool,
    deadline_s: float = KEYSET_FETCH_DEADLINE_S,
    not_from: str | None = None,
) -> PublicKeyset:
    """The trusted public keyset from ``source`` (a file path, or a URL when it contains ``://``), checked
    against the source rules above. ``not_from``: the URL of the service this keyset is to check (the bot
    ``keyturn request`` asks): a keyset it serves would vouch for receipts it made itself, so neither the
    URL nor a redirect may lead to that server. Raises ``GateError``."""
    from keyturn.signer.errors import KeysetError, VerificationError
    from keyturn.signer.keyset import PublicKeyset

    if "://" in source:
        if not keyset_url_allowed(source):
            raise GateError(BAD_KEYSET_URL, "source_rule", source=source)
        if not_from is not None and same_server(source, not_from):
            raise GateError(UNTRUSTED_KEYSET, "same_server", source=source, service=not_from)
        data = fetch_document(source, deadline_s=deadline_s, not_from=not_from)
    else:
        if not trust_keys_in_checkout:
            _refuse_keyset_in_checkout(source)
        data = _read_file(source)
    try:
        return PublicKeyset.from_jwks(data)
    except (KeysetError, VerificationError, ValueError, RecursionError) as e:
        raise GateError(BAD_KEYSET, "relayed", detail=str(e) or type(e).__name__) from None


def check_receipt(
    receipt: bytes,
    keyset: PublicKeyset,
    expected: Scope,
    now: datetime,
    *,
    allow_dev_keys: bool,
    require_oidc: bool = False,
) -> VerifiedReceipt:
    """Verify ``receipt`` against ``keyset`` for exactly the ``expected`` scope at ``now``; the verified
    receipt, or ``GateError`` with the code of the first failed step of docs/receipt.md §4. With
    ``require_oidc`` a receipt without ``requesterProof`` is refused (``requester_not_proven``)."""
    from keyturn.signer.errors import VerificationError
    from keyturn.signer.verify import verify_receipt

    try:
        return verify_receipt(
            receipt,
            keyset,
            expected,
            now,
            allow_dev_keys=allow_dev_keys,
            require_requester_proof=require_oidc,
        )
    except VerificationError as e:
        raise GateError(e.code, facts=e.facts) from None
    except Exception as e:  # fail closed: a surprise in verification is a refusal, never a pass
        raise GateError(INTERNAL_ERROR, "verifying", error=type(e).__name__) from None


# --- keyset files -------------------------------------------------------------------------------------------


def _read_file(path: str) -> bytes:
    """Read at most ``MAX_KEYSET_BYTES``: more is refused, not truncated (``/dev/zero`` must not hang)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_KEYSET_BYTES + 1)
    except OSError as e:
        raise GateError(UNREADABLE, "keyset_file", path=path, detail=e.strerror) from None
    if len(data) > MAX_KEYSET_BYTES:
        raise GateError(BAD_KEYSET, "too_large", what="keyset", limit=MAX_KEYSET_BYTES)
    return data


def _exists(path: str) -> bool:
    """Whether ``path`` exists. Only "no such file" is False: any other error (say, no permission to look)
    propagates, so doubt about the checkout is a refusal, never a pass."""
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    return True


def _checkout_roots(start: str) -> list[str]:
    """Every git work tree enclosing the resolved directory ``start``, innermost first: from a submodule or a
    nested repository the outer checkout is being deployed too."""
    roots: list[str] = []
    d = start
    while True:
        if _exists(os.path.join(d, ".git")):
            roots.append(d)
        parent = os.path.dirname(d)
        if parent == d:
            return roots
        d = parent


def _refuse_keyset_in_checkout(path: str) -> None:
    """Refuse a keyset file that lives inside the checkout being deployed: a pull request could replace it."""
    try:
        keys = os.path.realpath(path)
        roots: list[str | None] = [*_checkout_roots(os.path.realpath(os.getcwd()))]
    except OSError as e:
        raise GateError(UNTRUSTED_KEYSET, "checkout_unknown", path=path, detail=str(e)) from None
    # The CI's own name for the checkout, which may hold no .git (GitLab's GIT_STRATEGY: none fills
    # $CI_PROJECT_DIR with another job's artifacts) or lie outside the current directory.
    for variable in CHECKOUT_VARIABLES:
        workspace = os.environ.get(variable)
        if workspace:
            roots.append(os.path.realpath(workspace))
    for root in roots:
        # Both are absolute and resolved: a common path equal to root means keys is root or lies below it.
        if root is not None and os.path.commonpath([keys, root]) == root:
            raise GateError(UNTRUSTED_KEYSET, "in_checkout", path=path, root=root)


# --- keyset URLs --------------------------------------------------------------------------------------------


def fetch_document(
    url: str,
    *,
    what: str = "keyset",
    limit: int = MAX_KEYSET_BYTES,
    too_large: str = BAD_KEYSET,
    deadline_s: float = KEYSET_FETCH_DEADLINE_S,
    not_from: str | None = None,
) -> bytes:
    """GET ``what`` (a keyset; an audit checkpoint) from ``url`` within ``deadline_s`` seconds in all, at most
    ``limit`` bytes, under the keyset source rule. Refusals: ``<what>_unavailable``, ``untrusted_<what>``
    (a redirect breaking the rule, or leading to the server of ``not_from``) and ``too_large``. The caller
    checks ``url`` itself first.

    The socket timeout bounds each read, not the whole fetch: a server trickling a byte now and then would
    hold the CI job forever. So the fetch runs in a daemon thread that is abandoned at the deadline.
    """
    import threading

    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["data"] = _fetch(url, deadline_s, what, limit, too_large, not_from)
        except Exception as e:  # handed to the caller's thread below
            box["error"] = e

    worker = threading.Thread(target=work, name=f"{what}-fetch", daemon=True)
    worker.start()
    worker.join(deadline_s)
    if worker.is_alive():
        raise GateError(f"{what}_unavailable", "deadline", what=what, seconds=f"{deadline_s:g}")
    if "error" in box:
        error: Exception = box["error"]
        if isinstance(error, GateError):
            raise error
        raise GateError(f"{what}_unavailable", "fetch", what=what, detail=type(error).__name__) from None
    data: bytes = box["data"]
    return data


def _fetch(
    url: str, timeout_s: float, what: str, limit: int, too_large: str, not_from: str | None = None
) -> bytes:
    """The fetch itself. Redirects are followed only to URLs that pass the same rule as ``url``, so an https
    URL cannot be downgraded to plain http, nor a loopback one sent elsewhere in clear text; nor to the
    server of ``not_from``."""
    import http.client
    import urllib.error
    import urllib.parse
    import urllib.request

    def check(target: str) -> None:
        if not keyset_url_allowed(target):
            raise GateError(f"untrusted_{what}", "redirect", what=what, target=target)
        if not_from is not None and same_server(target, not_from):
            raise GateError(
                f"untrusted_{what}", "redirect_same_server", what=what, target=target, service=not_from
            )

    class _CheckedRedirect(urllib.request.HTTPRedirectHandler):
        def http_error_302(self, req: Any, fp: Any, code: int, msg: str, headers: Any) -> Any:
            # Checked before urllib's own scheme check, so every redirect breaking the rule (file://, ftp://,
            # plain http elsewhere) is refused with the same code.
            location = headers.get("location") or headers.get("uri")
            if location is not None:
                check(urllib.parse.urljoin(req.full_url, location))
            return super().http_error_302(req, fp, code, msg, headers)

        http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302

        def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
            check(newurl)  # the URL urllib will actually request
            return super().redirect_request(req, fp, code, msg, headers, newurl)

    opener = urllib.request.build_opener(_CheckedRedirect)
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310 - scheme checked
    try:
        with opener.open(request, timeout=timeout_s) as resp:
            data: bytes = resp.read(limit + 1)
    except urllib.error.HTTPError as e:
        raise GateError(f"{what}_unavailable", "http_status", what=what, status=e.code) from None
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", e)
        raise GateError(f"{what}_unavailable", "fetch", what=what, detail=str(reason)) from None
    if len(data) > limit:
        raise GateError(too_large, "too_large", what=what, limit=limit)
    return data
