"""Rules the bot and the signer must agree on, in one place (stdlib only): what a scope field, a request id
and a slash-command workflow default are.

Both sides import these, so a value one accepts the other accepts too: a request the bot takes in is one the
signer can sign (tests/test_contract.py holds the two equal by property). The verify path (signer/receipt.py)
checks the same grammar with character sets, to stay light; a property test holds that equal as well.
"""

from __future__ import annotations

import re

__all__ = [
    "DEFAULT_WORKFLOW",
    "ENV_RE",
    "EVENT_RE",
    "REF_RE",
    "REPO_RE",
    "REQUEST_ID_RE",
    "SHA_RE",
    "WORKFLOW_RE",
    "environment_problem",
    "event_problem",
    "is_request_id",
    "ref_problem",
    "repo_problem",
    "scope_problems",
    "sha_problem",
    "workflow_problem",
]

DEFAULT_WORKFLOW = "manual"  # slash-command requests without a workflow (design.md §7)

REPO_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9-]{0,38}/[A-Za-z0-9._-]{1,100}\Z")
SHA_RE = re.compile(r"\A(?:[0-9a-f]{40}|[0-9a-f]{64})\Z")
ENV_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
WORKFLOW_RE = re.compile(r"\A[A-Za-z0-9._][A-Za-z0-9._/@:+-]{0,199}\Z")
# The event that started a job (GitHub's webhook ``event`` and ``event_name``, GitLab's ``pipeline_source``):
# every name either platform documents is lowercase words joined by single underscores. The card shows it in
# mrkdwn, so nothing else may pass: no markup, no spaces, no line break, nothing long, and no underscore at
# either end or doubled (Slack reads ``_push_`` as *push* in italics).
EVENT_RE = re.compile(r"\A(?=.{1,64}\Z)[a-z]+(?:_[a-z]+)*\Z")
# A proven origin's ref (GitHub's webhook, an OIDC token), shown under the card's lock label as written. Git
# allows almost anything in a branch name (look-alike letters, full-width '＊' and '：' that NFKC turns into
# mrkdwn, no-break spaces), so only ASCII letters, digits and ``./+@=,#%-`` pass, and '_' only between two
# letters or digits (Slack reads ``_main_`` as *main* in italics).
REF_RE = re.compile(r"\A(?=.{1,255}\Z)(?:[A-Za-z0-9./+@=,#%-]|(?<=[A-Za-z0-9])_(?=[A-Za-z0-9]))+\Z")
REQUEST_ID_RE = re.compile(r"\Areq_[0-7][0-9A-HJKMNP-TV-Z]{25}\Z")


def repo_problem(value: str) -> str | None:
    """What is wrong with ``value`` as a repository (``owner/name``, GitHub's rules), or None."""
    if not REPO_RE.match(value) or value.split("/")[1] in (".", ".."):
        return "must be 'owner/name'"
    return None


def sha_problem(value: str) -> str | None:
    """What is wrong with ``value`` as a full commit sha, or None."""
    return None if SHA_RE.match(value) else "must be 40 or 64 lowercase hex characters"


def environment_problem(value: str) -> str | None:
    """What is wrong with ``value`` as an environment name, or None."""
    return None if ENV_RE.match(value) else "must be 1-64 letters, digits, '.', '_' or '-'"


def workflow_problem(value: str) -> str | None:
    """What is wrong with ``value`` as a workflow name, or None."""
    return None if WORKFLOW_RE.match(value) else "must be 1-200 letters, digits or ._/@:+- (no spaces)"


def event_problem(value: str) -> str | None:
    """What is wrong with ``value`` as the event that started a job (None if valid)."""
    return None if EVENT_RE.match(value) else "must be 1-64 lowercase letters, words joined by single '_'"


def ref_problem(value: str) -> str | None:
    """What is wrong with ``value`` as a proven origin's ref (None if valid)."""
    if REF_RE.match(value):
        return None
    return "must be 1-255 ASCII letters, digits or ./+@=,#%- ('_' only between letters or digits)"


# The check of each scope field, by its name in a CI request body and in a receipt's scope.
SCOPE_FIELD_PROBLEMS = {
    "repo": repo_problem,
    "sha": sha_problem,
    "environment": environment_problem,
    "workflow": workflow_problem,
}


def scope_problems(repo: str, sha: str, environment: str, workflow: str) -> dict[str, str]:
    """Each scope field that is invalid, mapped to what is wrong with it (empty when all are valid)."""
    values = {"repo": repo, "sha": sha, "environment": environment, "workflow": workflow}
    checks = {name: SCOPE_FIELD_PROBLEMS[name](value) for name, value in values.items()}
    return {name: problem for name, problem in checks.items() if problem is not None}


def is_request_id(value: object) -> bool:
    """True if ``value`` is ``req_`` + a ULID (upper-case Crockford base32)."""
    return isinstance(value, str) and bool(REQUEST_ID_RE.match(value))
