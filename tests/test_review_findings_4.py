"""Fourth adversarial review (of the error model and of the third review's fixes): one test per finding, named
after it, asserting what the product does. Each was first committed as ``xfail(strict=True)``, then fixed.

Played: a compromised bot against ``keyturn request --wait`` (the keyset it is told to trust, its redirects),
an outage of the bot's Redis or signer while a receipt is fetched, OIDC callers of another issuer or of a
pipeline a merge request started, and a network observer between CI and the bot.
"""

from __future__ import annotations

import http.server
import json
from pathlib import Path
from typing import Any

import pytest

from keyturn.bot import client
from keyturn.signer import evidence as ev
from keyturn.signer.errors import KeyturnError
from keyturn.signer.policy import Policy
from tests.bot.test_request_gate import _argv
from tests.gate_fixtures import LoopbackServer
from tests.oidc_tokens import claims_for, genuine
from tests.signer.conftest import at
from tests.signer.test_oidc import GITLAB_KEY, ISSUERS, NOW, POLICY_TOML, body_for


def _request(bot_url: str, keys: str, *more: str) -> list[str]:
    return _argv(bot_url, "--wait", "--keys", keys, "--timeout", "20s", *more)[1:]  # without "request"


# --- keyturn request --wait: the bot's own keyset under another name ----------------------------------------


@pytest.mark.parametrize(
    "spelling",
    [
        pytest.param(lambda port: f"http://localhost:{port}/keys", id="localhost-for-127.0.0.1"),
    ],
)
def test_attack_request_wait_trusts_the_bots_keyset_under_another_name_of_its_host(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], spelling: object
) -> None:
    """The third review refused ``--keys`` on ``--url``'s host by comparing the two URLs' host strings: the
    same bot's ``/v1/keys`` under another name of its host (``localhost`` for ``127.0.0.1``) passed, and a
    compromised bot's own receipt and key exited 0 with no approval. Refused before anything is asked."""
    monkeypatch.setenv(client.SECRET_ENV, "s" * 32)
    with LoopbackServer() as bot:  # approves everything and serves the key that signed its receipt
        port = bot.url.rsplit(":", 1)[1]
        keys = spelling(port)  # type: ignore[operator]
        assert client.main(_request(bot.url, keys)) == client.USAGE
        assert bot.posted() == []
    assert "untrusted_keyset" in capsys.readouterr().err


@pytest.mark.parametrize(
    "keys",
    [
        "https://bot.invalid./v1/keys",  # the fully qualified name: the same host in DNS
        "https://ｂｏｔ.invalid/v1/keys",  # fullwidth letters: IDNA maps them to the same name
    ],
)
def test_attack_request_wait_trusts_the_bots_keyset_under_an_equivalent_spelling(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], keys: str
) -> None:
    """Spellings a resolver treats as the bot's own host (a trailing dot, IDNA-equivalent letters) passed the
    check, which then fetched the keyset from the bot. Refused from the arguments alone: nothing is fetched
    or asked (the ``.invalid`` host resolves nowhere, so a fetch would exit 3, not 2)."""
    monkeypatch.setenv(client.SECRET_ENV, "s" * 32)
    assert client.main(_request("https://bot.invalid", keys)) == client.USAGE
    assert "untrusted_keyset" in capsys.readouterr().err


def test_attack_request_wait_follows_a_keyset_redirect_to_the_bot(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A keyset host that redirects to the bot's ``/v1/keys`` (a "pinned" URL that only forwards) let the
    bot vouch for its own receipt: the redirect passed the scheme rule, and a compromised bot's receipt
    exited 0. The redirect is refused like the URL itself would be; nothing is asked."""
    monkeypatch.setenv(client.SECRET_ENV, "s" * 32)
    with LoopbackServer() as bot, LoopbackServer() as keys_host:
        keys_host.redirects["/keyturn.json"] = bot.url + "/keys"
        assert client.main(_request(bot.url, keys_host.url + "/keyturn.json")) == client.USAGE
        assert bot.posted() == []
    assert "untrusted_keyset" in capsys.readouterr().err


# --- keyturn request --wait: an outage while the receipt is fetched -----------------------------------------


class ScriptedServer(LoopbackServer):
    """The loopback bot and keyset host, with ``get`` answering a GET first (True: answered)."""

    def get(self, handler: Any) -> bool:
        """Answer the GET ``handler`` holds, or return False to let the loopback server answer it."""
        return False

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        outer = self
        base = super()._handler()

        class Handler(base):  # type: ignore[valid-type, misc]
            def do_GET(self) -> None:
                if not outer.get(self):
                    super().do_GET()

        return Handler


class FlakyReceipts(ScriptedServer):
    """The loopback bot, whose receipt route first answers ``failures`` times with ``status`` (a Redis or
    signer outage: ``503 store_unavailable``), then the receipt."""

    def __init__(self, failures: int, status: int = 503) -> None:
        self.failures = failures
        self.status = status
        super().__init__()

    def get(self, handler: Any) -> bool:
        """An outage answer on the receipt route while ``failures`` last."""
        if not handler.path.endswith("/receipt") or self.failures <= 0:
            return False
        self.failures -= 1
        handler._record()
        body = json.dumps({"error": "store_unavailable", "message": "retry later"}).encode()
        handler._send(self.status, body, {"Content-Type": "application/json"})
        return True


@pytest.mark.parametrize("status", [503, 429])
def test_outage_at_the_receipt_fetch_is_final_after_people_approved(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, status: int
) -> None:
    """The request is APPROVED, but Redis (or the signer) is away for a moment when the receipt is read:
    ``503 store_unavailable``, "retry later". ``keyturn request`` exited 1 ("denied... receipt refused") at
    once, so the pipeline failed as if refused and its re-run opened a new request that people must approve
    again. An outage is waited out as during the wait (until ``--timeout``), then the receipt verifies."""
    monkeypatch.setenv(client.SECRET_ENV, "s" * 32)
    bot = FlakyReceipts(failures=2, status=status)
    with bot, LoopbackServer() as keys_host:
        out = f"{tmp_path}/receipt.json"
        assert client.main(_request(bot.url, keys_host.url + "/keys", "--out", out)) == client.OK
        assert bot.failures == 0


def test_refused_receipt_fetch_stays_final(monkeypatch: pytest.MonkeyPatch) -> None:
    """The counterpart: a receipt the bot answers ``410 receipt_gone`` (or any other 4xx) is no outage; it
    exits 1 at once, as before."""
    monkeypatch.setenv(client.SECRET_ENV, "s" * 32)
    bot = FlakyReceipts(failures=100, status=410)
    with bot, LoopbackServer() as keys_host:
        assert client.main(_request(bot.url, keys_host.url + "/keys")) == client.REFUSED
        assert bot.failures == 99


# --- keyturn request --oidc: the job's ID token in clear ------------------------------------------------


@pytest.mark.parametrize(
    "url", ["http://keyturn.example.com", "HTTP://10.0.0.7:8080", "http://localhost.evil"]
)
def test_request_oidc_refuses_plain_http_to_a_remote_bot(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], url: str
) -> None:
    """``keyturn request --oidc --url http://…`` sent the job's ID token in clear to any host: whoever reads
    it on the way may read and cancel that request. Refused as a usage error before any token is fetched (the
    runtime endpoint here would fail the test if asked); plain http stays allowed to loopback only."""
    monkeypatch.setenv("ACTIONS_ID_TOKEN_REQUEST_URL", "http://127.0.0.1:9/never-asked?x=1")
    monkeypatch.setenv("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "runtime-token")
    argv = ["--url", url, "--oidc", "--audience", "keyturn"]
    assert client.main(argv) == client.USAGE
    assert "--url must be https" in capsys.readouterr().err


def test_request_oidc_keeps_plain_http_to_loopback() -> None:
    """``keyturn dev`` and the tests talk to a bot on loopback over plain http."""
    for url in ("http://127.0.0.1:8080", "http://localhost:8080", "http://[::1]:8080"):
        assert client.parse_args(["--url", url, "--oidc", "--audience", "keyturn"]).url == url


class RedirectingBot(ScriptedServer):
    """The loopback bot whose receipt route redirects to ``target`` (a misconfigured proxy in front of it)."""

    def __init__(self, target: str) -> None:
        self.target = target
        super().__init__()

    def get(self, handler: Any) -> bool:
        """A redirect on the receipt route."""
        if not handler.path.endswith("/receipt"):
            return False
        handler._record()
        handler._send(302, headers={"Location": self.target})
        return True


class Listener(ScriptedServer):
    """A loopback server that keeps the credentials of every request it gets."""

    def __init__(self) -> None:
        self.credentials: list[str] = []
        super().__init__()

    def get(self, handler: Any) -> bool:
        """Keep the credentials; the loopback server answers."""
        self.credentials += [v for k, v in handler.headers.items() if k.lower().startswith(("auth", "x-k"))]
        return False


def test_request_does_not_follow_a_bot_redirect_with_its_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CI API never redirects. ``keyturn request`` followed a 3xx of the bot (urllib's default) and sent
    the call's credentials (the job's ID token; here the MAC headers) to the new location, over plain http if
    it said so, around the https-only rule for ``--oidc``. A redirect is now an answer: nothing is sent on."""
    monkeypatch.setenv(client.SECRET_ENV, "s" * 32)
    listener = Listener()
    with listener, LoopbackServer() as keys_host:
        bot = RedirectingBot(listener.url + "/v1/requests/x/receipt")
        with bot:
            assert client.main(_request(bot.url, keys_host.url + "/keys")) == client.REFUSED
    assert listener.credentials == []


# --- OIDC: a branch rule and the pipelines a merge request starts -------------------------------------------


def test_attack_a_child_pipeline_of_a_forks_merge_request_passes_a_gitlab_branch_rule() -> None:
    """The third review refused GitLab ``merge_request_event`` jobs under a branch rule (their ``ref`` is the
    merge request's source branch, which a fork may call ``main``). A child pipeline runs on its parent's ref
    and sha with ``pipeline_source`` ``parent_pipeline``: the fork's ``.gitlab-ci.yml``, run in the parent
    project, triggers one, and its job's token passed ``branches = ["main"]`` as main's. Refused like its
    parent; a policy that lists the event in ``events`` still admits it knowingly."""
    gitlab_only = POLICY_TOML.replace('issuers = ["github"]', 'issuers = ["gitlab"]')
    policy = Policy.from_bytes(gitlab_only.encode())
    token = genuine(GITLAB_KEY, claims_for("gitlab", NOW, pipeline_source="parent_pipeline"))
    body = body_for({}, requester="gitlab:alice")
    with pytest.raises(KeyturnError) as exc:
        ev.check_oidc_request(token, body, policy, ISSUERS, at(NOW))
    assert exc.value.code == "oidc_event_not_allowed"
    listed = gitlab_only.replace('branches = ["main"]', 'branches = ["main"]\nevents = ["parent_pipeline"]')
    admitted = ev.check_oidc_request(token, body, Policy.from_bytes(listed.encode()), ISSUERS, at(NOW))
    assert admitted.event == "parent_pipeline"
