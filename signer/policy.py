"""The policy file ``keyturn.toml``: who may approve what, and for how long (design.md §7, docs/policy.md).

Loaded by both the bot and the signer from the same file. The models are frozen and reject unknown keys, so a
typo (``required_aprovals``) is an error, never a silently ignored rule. Every validation problem is reported
with the dotted key that is wrong, e.g. ``environments.production.required_approvals: must be >= 1``.

This module is pure apart from :func:`load_policy`, which reads one file.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    StrictInt,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from keyturn.signer import contract
from keyturn.signer.errors import KeyturnError

__all__ = [
    "MAX_DURATION",
    "MAX_GROUP_MEMBERS",
    "Environment",
    "PinnedGroup",
    "Policy",
    "PolicyError",
    "PolicyIssue",
    "SlackSettings",
    "UnknownEnvironment",
    "is_slack_group_id",
    "is_slack_team_id",
    "is_slack_user_id",
    "load_policy",
    "parse_duration",
]

# Slack ids are upper-case alphanumerics after a one-letter kind prefix. Users are U… (W… on Enterprise Grid),
# channels C… (public) or G… (private), user groups S…, workspaces T… (E… for an Enterprise org).
_USER_RE = re.compile(r"^[UW][A-Z0-9]{2,20}$")
_CHANNEL_RE = re.compile(r"^[CG][A-Z0-9]{2,20}$")
_GROUP_RE = re.compile(r"^S[A-Z0-9]{2,20}$")
_TEAM_RE = re.compile(r"^[TE][A-Z0-9]{2,20}$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_IDENTITY_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}:[^\s:][^\s]{0,254}$")
_COMMAND_RE = re.compile(r"^/[a-z0-9_-]{1,31}$")
_DURATION_RE = re.compile(r"^([1-9][0-9]{0,6})([smhd])$")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_OIDC_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_REPO_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,38}/[A-Za-z0-9._-]{1,100}$")
_BRANCH_RE = re.compile(r"^[A-Za-z0-9._/-]{1,255}$")
_BARE_KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")

# No duration in a policy may exceed this: a receipt or request that lives for months is a mistake.
MAX_DURATION = timedelta(days=30)
# Far above any on-call rota; bounds what one policy file can make the signer hold.
MAX_GROUP_MEMBERS = 10_000


def is_slack_user_id(value: str) -> bool:
    """True if ``value`` looks like a Slack user id (``U…`` or ``W…``)."""
    return bool(_USER_RE.match(value))


def is_slack_group_id(value: str) -> bool:
    """True if ``value`` looks like a Slack user-group id (``S…``)."""
    return bool(_GROUP_RE.match(value))


def is_slack_team_id(value: str) -> bool:
    """True if ``value`` looks like a Slack workspace id (``T…``, or ``E…`` for an Enterprise org)."""
    return bool(_TEAM_RE.match(value))


def _fail(message: str, **ctx: Any) -> PydanticCustomError:
    return PydanticCustomError("keyturn", message, ctx)


def _id_checker(pattern: re.Pattern[str], what: str, example: str) -> BeforeValidator:
    def check(value: object) -> str:
        if not isinstance(value, str):
            raise _fail(f"must be a string ({what} like {example})")
        if not pattern.match(value):
            raise _fail(f"must be {what} like {example}, got {{value}}", value=repr(value))
        return value

    return BeforeValidator(check)


UserId = Annotated[str, _id_checker(_USER_RE, "a Slack user id", "U0123ABCD")]
ChannelId = Annotated[str, _id_checker(_CHANNEL_RE, "a Slack channel id", "C0123ABCD")]
GroupId = Annotated[str, _id_checker(_GROUP_RE, "a Slack user group id", "S0123ABCD")]
TeamId = Annotated[str, _id_checker(_TEAM_RE, "a Slack workspace id", "T0123ABCD")]
EnvName = Annotated[
    str, _id_checker(_ENV_NAME_RE, "an environment name (letters, digits, '.', '_', '-')", "production")
]
IdentityKey = Annotated[str, _id_checker(_IDENTITY_RE, "a CI identity 'provider:name'", "github:alice")]
SlashCommand = Annotated[str, _id_checker(_COMMAND_RE, "a slash command", "/keyturn")]


def parse_duration(value: object) -> timedelta:
    """Parse ``"45s"``, ``"30m"``, ``"2h"``, ``"1d"`` or a positive integer number of seconds.

    Raises a pydantic custom error (so it reports under the key being validated) for anything else,
    including zero, negatives, floats, booleans and durations over :data:`MAX_DURATION`.
    """
    if isinstance(value, bool):  # bool is an int subclass; `true` is never a duration
        raise _fail('must be a duration like "30m", "2h", "1d" or a number of seconds')
    if isinstance(value, int):
        if value <= 0:
            raise _fail("must be > 0 seconds")
        seconds = value
    elif isinstance(value, str):
        m = _DURATION_RE.match(value)
        if not m:
            raise _fail(
                'must be a duration like "45s", "30m", "2h", "1d" or a number of seconds, got {value}',
                value=repr(value),
            )
        seconds = int(m.group(1)) * _DURATION_UNITS[m.group(2)]
    else:
        raise _fail('must be a duration like "30m", "2h", "1d" or a number of seconds')
    if seconds > MAX_DURATION.total_seconds():
        raise _fail("must be at most 30 days")
    return timedelta(seconds=seconds)


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=False)


class SlackSettings(_Frozen):
    """The ``[slack]`` table: which slash command and workspace the signer accepts as evidence."""

    command: SlashCommand = "/keyturn"
    team_id: TeamId | None = None


def _at(field: str, detail: str) -> PydanticCustomError:
    """An error reported at ``<model path>.<field>`` (see ``_format_loc``)."""
    return PydanticCustomError("keyturn_at", "{detail}", {"field": field, "detail": detail})


OidcName = Annotated[str, _id_checker(_OIDC_NAME_RE, "an issuer name (letters, digits, '_', '-')", "github")]
RepoName = Annotated[str, _id_checker(_REPO_NAME_RE, "a repository 'owner/name'", "acme/web")]
BranchName = Annotated[str, _id_checker(_BRANCH_RE, "a branch name", "main")]
# The grammar of the event an origin may carry (contract.EVENT_RE): a listed name outside it could never
# match, and the operator would believe a rule that admits nothing.
EventName = Annotated[
    str,
    _id_checker(
        contract.EVENT_RE,
        "an event name (GitHub event_name, GitLab pipeline_source: lowercase words joined by single '_', "
        "at most 64 characters)",
        "pull_request_target",
    ),
]


class OidcIssuer(_Frozen):
    """One ``[oidc.issuers.<name>]`` table: a CI platform whose ID tokens the signer accepts (docs/ci.md).

    ``jwks_file`` is the operator-pinned key set (relative paths are relative to the policy file); the
    signer reads it at start and never fetches keys itself. ``keyturn policy pin-oidc-keys`` refreshes it.
    """

    issuer: Annotated[str, Field(pattern=r"^https://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~/-]*)?$")]
    audience: Annotated[str, Field(min_length=1, max_length=255)]
    jwks_file: Annotated[str, Field(min_length=1, max_length=4096)]
    algorithm: Literal["RS256"] = "RS256"
    kind: Literal["github", "gitlab"]
    web_url: Annotated[str, Field(pattern=r"^https://[A-Za-z0-9.-]+(:[0-9]{1,5})?$")] | None = None


class OidcSettings(_Frozen):
    """The ``[oidc]`` table."""

    issuers: dict[OidcName, OidcIssuer] = Field(default_factory=dict)


class EnvironmentOidc(_Frozen):
    """``[environments.<name>.oidc]``: which OIDC-proven jobs may ask for this environment.

    ``issuers`` lists ``[oidc.issuers]`` names; ``repositories``, ``branches`` (exact names, ``main`` for
    ``refs/heads/main``) and ``events`` (GitHub's ``event_name``, GitLab's ``pipeline_source``) restrict
    further when non-empty. With ``branches`` set and ``events`` empty, only a job started by one of
    ``evidence.REF_BOUND_EVENTS`` asks (GitHub ``push``, ``workflow_dispatch``, ``schedule``; GitLab ``push``,
    ``web``, ``api``, ``schedule``, ``trigger``): their ``ref`` names the code that runs. Any other event, or
    none, is refused, since the branch rule would say nothing about the code asking (an allow-list: list
    the event in ``events`` to allow it).
    """

    issuers: tuple[OidcName, ...] = Field(min_length=1)
    repositories: tuple[RepoName, ...] = ()
    branches: tuple[BranchName, ...] = ()
    events: tuple[EventName, ...] = ()


class EnvironmentGitHub(_Frozen):
    """``[environments.<name>.github]``: which runs a GitHub deployment protection rule may ask for.

    Opt-in (without it the approvers are the check). ``branches`` (exact names, ``main`` for
    ``refs/heads/main``): the webhook's ``ref`` must name one. ``events`` (the webhook's ``event``): when
    set, the run's event must be listed; when empty, only ``evidence.REF_BOUND_EVENTS["github"]`` (``push``,
    ``workflow_dispatch``, ``schedule``), whose ref names the code that runs. The same rule as the OIDC one.
    """

    branches: tuple[BranchName, ...] = Field(min_length=1)
    events: tuple[EventName, ...] = ()


class Environment(_Frozen):
    """One ``[environments.<name>]`` table."""

    channel: ChannelId
    approvers: tuple[UserId, ...] = ()
    approver_groups: tuple[GroupId, ...] = ()
    required_approvals: StrictInt = Field(ge=1, le=50)
    request_ttl: Duration
    receipt_ttl: Duration
    allow_self_approval: StrictBool = False
    confirm_approve: StrictBool = True
    remind_every: Duration | None = None
    escalate_after: StrictInt = Field(default=2, ge=1, le=100)
    escalate_to: tuple[UserId, ...] = ()
    escalate_to_groups: tuple[GroupId, ...] = ()
    # May a request authenticated by the shared CI secret's MAC ask for this environment? (issue 11)
    ci_secret: StrictBool = True
    oidc: EnvironmentOidc | None = None
    github: EnvironmentGitHub | None = None

    @model_validator(mode="after")
    def _check_consistency(self) -> Environment:
        for name in ("approvers", "approver_groups", "escalate_to", "escalate_to_groups"):
            values: tuple[str, ...] = getattr(self, name)
            dupes = sorted({v for v in values if values.count(v) > 1})
            if dupes:
                raise _at(name, f"lists {', '.join(dupes)} more than once")
        if not self.approvers and not self.approver_groups:
            raise _at("approvers", "no one can approve: list users in approvers or groups in approver_groups")
        # Without groups the set of possible approvers is known here; with groups the policy checks it
        # against the pinned members (Policy._check_groups). A quorum above it could never be met.
        if not self.approver_groups and self.required_approvals > len(self.approvers):
            raise _at(
                "required_approvals",
                f"must be <= {len(self.approvers)}, the number of approvers (no approver_groups configured)",
            )
        return self


class PinnedGroup(_Frozen):
    """One ``[groups.<group id>]`` table: the members of a Slack user group, pinned in the policy.

    The signer admits a member of an ``approver_groups`` group only if the user is listed here, in its own
    copy of the policy; it never asks Slack and never takes membership from the bot. ``keyturn policy
    pin-groups`` writes these tables from Slack's ``usergroups.users.list`` (docs/policy.md).
    """

    members: tuple[UserId, ...] = Field(max_length=MAX_GROUP_MEMBERS)

    @model_validator(mode="after")
    def _check_members(self) -> PinnedGroup:
        dupes = sorted({m for m in self.members if self.members.count(m) > 1})
        if dupes:
            raise _at("members", f"lists {', '.join(dupes)} more than once")
        return self


class Policy(_Frozen):
    """A validated ``keyturn.toml``. Build it with :func:`load_policy` or :meth:`Policy.from_bytes`."""

    version: Literal[1]
    slack: SlackSettings = SlackSettings()
    identities: dict[IdentityKey, UserId] = Field(default_factory=dict)
    environments: dict[EnvName, Environment] = Field(min_length=1)
    groups: dict[GroupId, PinnedGroup] = Field(default_factory=dict)
    oidc: OidcSettings = OidcSettings()

    _sha256: str = PrivateAttr(default="")
    _identities_folded: dict[str, str] = PrivateAttr(default_factory=dict)
    # environment name -> every user who may approve there (approvers + pinned members of approver_groups)
    _admitted: dict[str, frozenset[str]] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _check_identities(self) -> Policy:
        folded: dict[str, str] = {}
        for key, uid in self.identities.items():
            k = key.casefold()
            if k in folded:
                raise _at("identities", f"{key!r} is listed twice (CI identities are case-insensitive)")
            folded[k] = uid
        self._identities_folded = folded
        return self

    @model_validator(mode="after")
    def _check_environment_names(self) -> Policy:
        # The card defuses other environments' names case-insensitively (signer/card.py); two names that
        # differ only in case could not be told apart there, nor by a person reading the card.
        seen: dict[str, str] = {}
        for name in self.environments:
            other = seen.setdefault(name.lower(), name)
            if other != name:
                raise _at("environments", f"{other!r} and {name!r} differ only in case")
        return self

    @model_validator(mode="after")
    def _check_oidc(self) -> Policy:
        """Every issuer an environment names is configured, and no two issuers share an ``iss``."""
        problems: list[tuple[tuple[str, ...], str]] = []
        for name, env in self.environments.items():
            for issuer in env.oidc.issuers if env.oidc else ():
                if issuer not in self.oidc.issuers:
                    problems.append(
                        (
                            ("environments", name, "oidc", "issuers"),
                            f"names {issuer!r}, not in [oidc.issuers]",
                        )
                    )
        seen: dict[str, str] = {}
        for name, iss in self.oidc.issuers.items():
            if iss.issuer in seen:
                problems.append((("oidc", "issuers", name, "issuer"), f"is also issuer {seen[iss.issuer]!r}"))
            seen[iss.issuer] = name
        if problems:
            raise PydanticCustomError(
                "keyturn_many", "{count} problem(s)", {"count": len(problems), "problems": problems}
            )
        return self

    @model_validator(mode="after")
    def _check_groups(self) -> Policy:
        """Every approver group is pinned, every pin is used, and every quorum can be met by who is listed."""
        problems: list[tuple[tuple[str, ...], str]] = []
        used: set[str] = set()
        admitted: dict[str, frozenset[str]] = {}
        for name, env in self.environments.items():
            who = set(env.approvers)
            for group in env.approver_groups:
                used.add(group)
                pinned = self.groups.get(group)
                if pinned is None:
                    problems.append(
                        (
                            ("environments", name, "approver_groups"),
                            f"group {group} is not pinned: add [groups.{group}] with its members "
                            "(keyturn policy pin-groups writes it from Slack)",
                        )
                    )
                else:
                    who.update(pinned.members)
            unpinned = any(g not in self.groups for g in env.approver_groups)
            if env.approver_groups and not unpinned and env.required_approvals > len(who):
                problems.append(
                    (
                        ("environments", name, "required_approvals"),
                        f"must be <= {len(who)}, the number of approvers and pinned members of "
                        "approver_groups (the quorum could never be met)",
                    )
                )
            admitted[name] = frozenset(who)
        for group in self.groups:
            if group not in used:
                problems.append(
                    (
                        ("groups", group),
                        "is pinned but in no environment's approver_groups (remove it, or rerun "
                        "keyturn policy pin-groups)",
                    )
                )
        if problems:
            raise PydanticCustomError(
                "keyturn_many", "{count} problem(s)", {"count": len(problems), "problems": problems}
            )
        self._admitted = admitted
        return self

    @property
    def sha256(self) -> str:
        """Lowercase hex SHA-256 of the exact file bytes this policy was loaded from."""
        return self._sha256

    def environment(self, name: str) -> Environment:
        """The environment ``name``; raises :class:`UnknownEnvironment` if the policy has no such table."""
        env = self.environments.get(name)
        if env is None:
            raise UnknownEnvironment(name)
        return env

    def authorizes(self, environment: str, user_id: str) -> bool:
        """True if ``user_id`` may approve deploys to ``environment``: a listed approver, or a member of one
        of its ``approver_groups`` as pinned in this policy's ``[groups]``.

        Nothing else is consulted (no Slack, no caller-supplied membership), so the signer and the bot, each
        asking its own copy of the same file, give the same answer. Raises :class:`UnknownEnvironment`.
        """
        self.environment(environment)
        return user_id in self._admitted.get(environment, frozenset())

    def resolve_requester(self, requester: str) -> str | None:
        """The Slack user id behind a CI requester, or ``None`` when the policy cannot tell.

        ``slack:U…`` names a Slack user directly (slash-command requests use it). Other identities such as
        ``github:alice`` are looked up in ``[identities]``, case-insensitively.
        """
        if requester.startswith("slack:"):
            uid = requester[len("slack:") :]
            return uid if is_slack_user_id(uid) else None
        return self._identities_folded.get(requester.casefold())

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "<policy>") -> Policy:
        """Parse and validate policy bytes (UTF-8 TOML); raises :class:`PolicyError` listing every issue."""
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PolicyError(source, [PolicyIssue("", f"not UTF-8 (byte {exc.start})")]) from None
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise PolicyError(source, [PolicyIssue("", f"not valid TOML: {exc}")]) from None
        policy = cls.from_data(raw, source)
        policy._sha256 = hashlib.sha256(data).hexdigest()
        return policy

    @classmethod
    def from_data(cls, data: Mapping[str, Any], source: str = "<policy>") -> Policy:
        """Validate an already parsed TOML document; raises :class:`PolicyError` listing every issue.

        The policy has no ``sha256`` (there are no file bytes): use it to check a document before writing it.
        """
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise PolicyError(source, _issues(exc)) from None


@dataclass(frozen=True)
class PolicyIssue:
    """One problem in a policy file: the dotted key path and what is wrong with it."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class PolicyError(KeyturnError):
    """The policy file is invalid. ``issues`` holds every problem found, each with its key path."""

    code = "invalid_policy"

    def __init__(self, source: str, issues: Sequence[PolicyIssue]) -> None:
        self.source = source
        self.issues = tuple(issues)
        super().__init__(source=source, problems="; ".join(str(i) for i in self.issues))


class UnknownEnvironment(KeyturnError):
    """A request names an environment the policy does not define."""

    code = "unknown_environment"

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(environment=name)


def load_policy(path: str | Path) -> Policy:
    """Read and validate the policy file at ``path``; raises :class:`PolicyError` (also if unreadable)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise PolicyError(str(p), [PolicyIssue("", f"cannot read: {exc.strerror or exc}")]) from None
    return Policy.from_bytes(data, str(p))


# --- error formatting -------------------------------------------------------------------------------------

_SIMPLE_MESSAGES = {
    "missing": "required",
    "extra_forbidden": "unknown key",
    "int_type": "must be an integer",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "list_type": "must be a list",
    "tuple_type": "must be a list",
    "dict_type": "must be a table",
    "model_type": "must be a table",
    "model_attributes_type": "must be a table",
}


def _format_loc(loc: Sequence[int | str]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item == "[key]":
            continue  # pydantic marks a bad dict key this way; the key itself is already in the path
        else:
            name = item if _BARE_KEY_RE.match(item) else '"' + item.replace('"', '\\"') + '"'
            parts.append(("." if parts else "") + name)
    return "".join(parts)


def _issues(exc: ValidationError) -> list[PolicyIssue]:
    issues: list[PolicyIssue] = []
    for err in exc.errors(include_url=False):
        loc = list(err["loc"])
        # A union with None reports each arm; the "none" arm's complaint adds nothing.
        if err["type"] == "none_required":
            continue
        loc = [part for part in loc if not (isinstance(part, str) and part.startswith("function-"))]
        etype = err["type"]
        ctx = err.get("ctx") or {}
        if etype == "keyturn_many":  # several cross-table problems, each with its own full key path
            issues += [PolicyIssue(_format_loc([*loc, *path]), msg) for path, msg in ctx["problems"]]
            continue
        if etype == "keyturn_at":
            loc.append(str(ctx["field"]))
            message = str(ctx["detail"])
        elif etype in _SIMPLE_MESSAGES:
            message = _SIMPLE_MESSAGES[etype]
        elif etype == "greater_than_equal":
            message = f"must be >= {ctx['ge']}"
        elif etype == "less_than_equal":
            message = f"must be <= {ctx['le']}"
        elif etype == "too_short" and not loc[1:]:
            message = "must define at least one entry"
        elif etype == "literal_error":
            message = f"must be {ctx.get('expected', 'one of the allowed values')}"
        else:
            message = str(err["msg"])
        if "[key]" in err["loc"]:
            message = f"invalid key: {message}"
        issues.append(PolicyIssue(_format_loc(loc), message))
    return issues
