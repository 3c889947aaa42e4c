"""Redis persistence of deploy requests (redis.asyncio). See docs/design.md §8.

Keys (every key of one request shares the hash tag ``{<requestId>}``, so each Lua script touches one slot and
the layout works on Redis Cluster):

* ``keyturn:req:{id}``            hash: ``version`` (CAS token), ``status``, ``data`` (DeployRequest JSON),
                                  ``sign_error`` (last signer failure, JSON; absent when none)
* ``keyturn:req:{id}:origin``     the originating CI / slash-command request as received (OriginEvidence JSON)
* ``keyturn:req:{id}:approvals``  hash userId → StoredApproval JSON (the approval and its click evidence)
* ``keyturn:req:{id}:receipt``    the signed receipt JSON (only once APPROVED)
* ``keyturn:req:{id}:signing``    the signing claim (a token, with a lease) — one signer call at a time
* ``keyturn:req:{id}:callbacks``  list of callback delivery attempts (JSON)
* ``keyturn:req:{id}:outbox``     hash: the request's callback delivery (``delivery_id``, ``state`` queued /
                                  delivered / dead / refused, ``attempts``, ``last``); see "Callback outbox"
* ``keyturn:outbox:due``          sorted set of request ids whose callback is owed, scored by the epoch ms
                                  of the next attempt; a claimed entry is re-scored to its lease's end, so
                                  the score is also the lease (a dead replica's deliveries fall due again)
* ``keyturn:outbox:dead``         sorted set of request ids whose callback was dead-lettered (epoch ms)
* ``keyturn:{limits}:…``          request limits (see ``admit``), one slot for all: ``pending`` (every pending
                                  request), ``requester:{name}`` and ``repo:{name}`` (their pending requests),
                                  sorted sets scored by expiry (epoch ms); ``rate:{name}`` a token bucket hash
* ``keyturn:scope:{sha256}``      dedupe index: scope → the pending request id (its own slot; see ``create``)
* ``keyturn:pending``             sorted set of pending request ids, scored by ``expires_at`` (epoch seconds)
* ``keyturn:attention:card``      sorted set (same scores) of pending requests without a card yet
* ``keyturn:attention:quorum``    sorted set (same scores) of pending requests at quorum without a receipt
                                  (the leader's backstop reads these two indexes whole, never a window)
* ``keyturn:ci_seen:{sha256}``    replay guard: a state-changing signed CI request already accepted, keyed by
                                  the digest of its signature (``pending``, then ``<action>:<requestId>``),
                                  kept :data:`REPLAY_TTL` (see ``claim_ci_request``)
* ``keyturn:replication_fence``   written before each WAIT when replicas are asked for (``_replicated``)
* channel ``keyturn:changed:{id}`` is published on every write (long-polls wait on it; see ``ChangeFeed``)

Every write of a record is a compare-and-swap on ``version`` in Lua (callers retry on conflict), and the
script itself refuses to change the status of a record that is already final, so final states are sticky in
Redis too, whatever a caller computed. Pending records carry a TTL of their lifetime plus the retention (a
safety net); a final record and all its keys get the retention TTL.

Every write is safe to send twice. The client retries a command whose connection failed (bot/redisconn.py),
and a connection can fail after Redis ran the command but before its answer arrived: the retry then meets its
own earlier write. So each script recognises its own completed write (by a token or by the exact bytes it
wrote) and answers as if it had just made it, instead of reporting a conflict or a duplicate; each script
says how above its text.

On a replicated Redis (``KEYTURN_REDIS_MIN_REPLICAS`` > 0) every write is followed, on its own connection, by
``WAIT``, and is reported done only once that many replicas hold it (``RequestStore._replicated``); otherwise
it fails as :class:`NotReplicated` (a ``StoreUnavailable``). A write acknowledged by a primary that then
fails over is lost with asynchronous replication; this keeps such a write from ever being reported as done
(docs/operations.md, "The asynchronous failover window").
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ParamSpec, TypeVar

import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict
from redis.exceptions import NoScriptError, RedisError

from keyturn.bot import lifecycle
from keyturn.bot.models import Approval, DeployRequest, OriginEvidence, Scope, SlackEvidence, Status
from keyturn.bot.ports import Refused
from keyturn.bot.redisconn import SCRIPT_RELOADS, ReloadingScript
from keyturn.signer.words import Fact

log = logging.getLogger(__name__)

PREFIX = "keyturn"
PENDING_KEY = f"{PREFIX}:pending"
NEEDS_CARD_KEY = f"{PREFIX}:attention:card"
AT_QUORUM_KEY = f"{PREFIX}:attention:quorum"
# Requests whose denial, cancel or expiry may not be in the signer's audit log yet (docs/security.md, "The
# record"): added before the final transition, removed once the signer recorded it; the backstop retries.
UNRECORDED_KEY = f"{PREFIX}:attention:outcome"
OUTBOX_DUE_KEY = f"{PREFIX}:outbox:due"
OUTBOX_DEAD_KEY = f"{PREFIX}:outbox:dead"
LIMITS_PREFIX = f"{PREFIX}:{{limits}}"
# Index reads are paged so one call never asks Redis for an unbounded reply.
INDEX_PAGE = 1000
# A signed CI request is fresh while its timestamp is within ±300 s of the signer's clock, i.e. for up to
# 600 s of real time; remembered for longer than that, a replay can never outlive the memory of it. The
# extra minute covers the time between the signer's check and the claim, and clock steps.
REPLAY_TTL = timedelta(seconds=660)
_IN_FLIGHT = "pending"
CHANGED_PATTERN = f"{PREFIX}:changed:*"
MAX_CAS_ATTEMPTS = 50

P = ParamSpec("P")
T = TypeVar("T")


class StoreUnavailable(Exception):
    """Redis cannot be reached or answered with an error."""

    code = "store_unavailable"


class StoreConflict(Exception):
    """A compare-and-swap kept losing (should not happen outside pathological contention)."""

    code = "store_conflict"


def _guard(func: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Turn Redis and socket errors into ``StoreUnavailable``, so callers map one exception to 503."""

    @functools.wraps(func)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await func(*args, **kwargs)
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}") from exc

    return wrapper


def owes_delivery(request: DeployRequest) -> bool:
    """True if ``request``'s final outcome goes out through the outbox: a CI callback, or the hand-off to the
    GitHub approver of a request a protection rule's webhook opened (bot/github.py)."""
    return bool(request.callback_url) or request.origin_kind == "github"


def record_key(request_id: str) -> str:
    """The hash holding a request's record."""
    return f"{PREFIX}:req:{{{request_id}}}"


def _sub_key(request_id: str, name: str) -> str:
    return f"{record_key(request_id)}:{name}"


def changed_channel(request_id: str) -> str:
    """The pub/sub channel announcing writes to a request."""
    return f"{PREFIX}:changed:{request_id}"


def scope_key(scope: Scope) -> str:
    """The dedupe index key for a scope (a digest, so user data never shapes key names)."""
    raw = "\x00".join((scope.repo, scope.sha, scope.environment, scope.workflow)).encode()
    return f"{PREFIX}:scope:{{{hashlib.sha256(raw).hexdigest()}}}"


class StoredApproval(BaseModel):
    """One counted approval with the click that made it (forwarded to the signer)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    approval: Approval
    evidence: SlackEvidence


@dataclass(frozen=True)
class SeenRequest:
    """A signed CI request already accepted: ``action`` (``create``, ``cancel``, or ``pending`` while the
    first copy is still being handled) and the request it concerned, when known."""

    action: str
    request_id: str | None


def ci_seen_key(signature: str) -> str:
    """The replay-guard key of a signed CI request: a digest of its signature (its own slot)."""
    return f"{PREFIX}:ci_seen:{{{hashlib.sha256(signature.encode()).hexdigest()}}}"


class SignError(BaseModel):
    """The last signer failure on a request still pending (shown in the API and the card's thread)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    code: str
    message: str
    at: datetime


# KEYS[1] record, KEYS[2] origin. ARGV: version, status, data, origin, ttl, channel, create token.
# Repeat-safe: the record remembers the token of the call that created it, so a retried create of ours
# answers 1 again, while another arrival of the same origin (another token) answers 0.
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('HGET', KEYS[1], 'create_token') == ARGV[7] then return 1 end
  return 0
end
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'status', ARGV[2], 'data', ARGV[3], 'create_token', ARGV[7])
redis.call('SET', KEYS[2], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[5])
redis.call('PUBLISH', ARGV[6], ARGV[1])
return 1
"""

# KEYS[1] record, KEYS[2] receipt, KEYS[3..] the request's other keys (given the retention TTL when final).
# ARGV: expected version, new version, new status, data, final (0/1), retention seconds, channel, receipt,
# write token.
# Repeat-safe: every write leaves its caller's one-off token beside the version. A record at the new version
# with our token is our own write, retried after it landed: answer 1 rather than a conflict, so the caller
# does not re-decide on what it already wrote (and a receipt is stored once).
_UPDATE = """
local v = redis.call('HGET', KEYS[1], 'version')
if not v then return -1 end
if v ~= ARGV[1] then
  if v == ARGV[2] and redis.call('HGET', KEYS[1], 'write_token') == ARGV[9] then return 1 end
  return 0
end
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'PENDING' and status ~= ARGV[3] then return -2 end
redis.call('HSET', KEYS[1], 'version', ARGV[2], 'status', ARGV[3], 'data', ARGV[4], 'write_token', ARGV[9])
if ARGV[8] ~= '' then
  redis.call('SET', KEYS[2], ARGV[8])
  redis.call('HDEL', KEYS[1], 'sign_error')
end
if ARGV[5] == '1' then
  for i = 1, #KEYS do
    redis.call('EXPIRE', KEYS[i], ARGV[6])
  end
end
redis.call('PUBLISH', ARGV[7], ARGV[2])
return 1
"""

# KEYS[1] record, KEYS[2] approvals hash. ARGV: expected version, new version, data, user id,
# StoredApproval JSON, channel, call token. A user already present is reported before any version check, so
# a double-click is recognised as such however the race went.
# Repeat-safe: the record keeps, per approver, the one-off token of the call that counted them. A user present
# with our token is this very call, retried after it landed: 3, "counted, by us", never "already approved",
# which would tell the approver that their only click was a duplicate.
_ADD_APPROVAL = """
local v = redis.call('HGET', KEYS[1], 'version')
if not v then return -1 end
if redis.call('HEXISTS', KEYS[2], ARGV[4]) == 1 then
  if redis.call('HGET', KEYS[1], 'approval_token:' .. ARGV[4]) == ARGV[7] then return 3 end
  return 2
end
if redis.call('HGET', KEYS[1], 'status') ~= 'PENDING' then return -2 end
if v ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[2], ARGV[4], ARGV[5])
redis.call('HSET', KEYS[1], 'version', ARGV[2], 'data', ARGV[3], 'approval_token:' .. ARGV[4], ARGV[7])
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
redis.call('PUBLISH', ARGV[6], ARGV[2])
return 1
"""

# Take a claim that is free, or extend one we hold. KEYS: claim. ARGV: token, lease ms.
# Repeat-safe: the token is the caller's own, so a retry after success extends the claim it took.
_HOLD = """
local cur = redis.call('GET', KEYS[1])
if cur == false or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

# Repeat-safe: deleting twice deletes once.
_DELETE_IF_EQUALS = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS[1] the replay key. ARGV: placeholder, ttl seconds. Nil if newly claimed, else what it holds.
# Repeat-safe: the placeholder carries a per-call token ("pending/<token>"), so a retry of a claim that
# landed finds its own placeholder and is still "newly claimed", not a replay of itself.
_CLAIM_ONCE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return false end
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then return false end
return cur
"""

# KEYS[1] the replay key. ARGV: the in-flight prefix. Forget a claim still in flight (any call's).
_DELETE_IN_FLIGHT = """
local cur = redis.call('GET', KEYS[1])
if cur and string.sub(cur, 1, #ARGV[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS[1] the scope index, ARGV: request id, ttl seconds. 1 if the scope is (now) this request's.
# Repeat-safe: a SET NX retried after it landed finds its own request id and still answers 1; a bare SET NX
# would answer "taken" and the caller would delete the request it had just indexed.
_CLAIM_SCOPE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then return 1 end
return 0
"""

# KEYS[1] the callback log. ARGV: attempt JSON, retention seconds.
# Repeat-safe: an attempt carries its number and time, so a last entry equal to it is this call's own append.
_APPEND_ATTEMPT = """
if redis.call('LINDEX', KEYS[1], -1) ~= ARGV[1] then redis.call('RPUSH', KEYS[1], ARGV[1]) end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""

# Repeat-safe: setting the same error twice leaves the same state (a second PUBLISH only wakes readers).
_SET_ERROR = """
if redis.call('HGET', KEYS[1], 'status') ~= 'PENDING' then return 0 end
if ARGV[1] == '' then redis.call('HDEL', KEYS[1], 'sign_error')
else redis.call('HSET', KEYS[1], 'sign_error', ARGV[1]) end
redis.call('PUBLISH', ARGV[2], 'error')
return 1
"""


# As _UPDATE, but a move to a final state other than APPROVED loses to a live signing claim (KEYS[6]):
# returns -3 and writes nothing. Together with _CLAIM_SIGNING (which only claims a PENDING request) this
# orders every Deny/Cancel/Expire against a signature: either the final state is written first and the
# claim is never taken, or the claim is taken first and the final state waits for its outcome.
_UPDATE_UNLESS_SIGNING = """
local v = redis.call('HGET', KEYS[1], 'version')
if not v then return -1 end
if v ~= ARGV[1] then return 0 end
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'PENDING' and status ~= ARGV[3] then return -2 end
if ARGV[3] ~= 'PENDING' and ARGV[3] ~= 'APPROVED' and redis.call('EXISTS', KEYS[6]) == 1 then return -3 end
""" + _UPDATE.split("if status ~= 'PENDING' and status ~= ARGV[3] then return -2 end", 1)[1]

# KEYS[1] record, KEYS[2] claim. ARGV: token, lease ms. 1 if claimed; 0 if someone holds it; -2 if the
# request is no longer pending (nothing left to sign); -1 if unknown.
_CLAIM_SIGNING = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return -1 end
if status ~= 'PENDING' then return -2 end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
-- Our own claim, taken by an earlier try whose answer was lost (a connection retry): still ours.
if redis.call('GET', KEYS[2]) == ARGV[1] then return 1 end
return 0
"""

# Release our signing claim and announce it, so a Deny/Cancel waiting on it re-reads at once.
_RELEASE_SIGNING = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], 'signing_released')
  return 1
end
return 0
"""


# --- Callback outbox (bot/callbacks.py, CallbackOutbox) ----------------------------------------------------
# The job lives in the request's slot (``:outbox``); the due index is a slot of its own, so each script
# touches one of them. The job is written first: a due entry without a job cannot exist, and a job left
# without a due entry (a crash between the two calls) is re-indexed by ``enqueue_callback`` run again.

# KEYS[1] job. ARGV: delivery id, ttl seconds. The job's state after the call (a new job is 'queued').
# Repeat-safe: an existing job is left as it is and its state returned, so enqueueing twice is once.
_OUTBOX_ENQUEUE = """
local state = redis.call('HGET', KEYS[1], 'state')
if state then return state end
redis.call('HSET', KEYS[1], 'state', 'queued', 'delivery_id', ARGV[1], 'attempts', 0)
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 'queued'
"""

# KEYS[1] due index. ARGV: now ms, lease end ms, max entries. Claims entries due at ``now``: each is re-scored
# to the lease end (its claim token) and returned. An entry whose lease lapsed is due again, so a delivery
# whose replica died moves to whichever replica claims next.
# Repeat-safe: a retried claim finds its entries already re-scored (not due) and claims none of them again;
# they fall due again at the lease end, so nothing is lost.
_OUTBOX_CLAIM = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for i = 1, #ids do redis.call('ZADD', KEYS[1], 'XX', ARGV[2], ids[i]) end
return ids
"""

# KEYS[1] due index. ARGV: id, claim token (the lease end ms), next score ms or '' to remove. Only the holder
# of the current claim may settle it: a replica that stalled past its lease finds the entry re-scored by
# another and changes nothing (0).
# Repeat-safe: a settle retried after it landed finds the entry gone or re-scored: 0, and nothing changes.
_OUTBOX_SETTLE = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then return 0 end
if ARGV[3] == '' then redis.call('ZREM', KEYS[1], ARGV[1])
else redis.call('ZADD', KEYS[1], 'XX', ARGV[3], ARGV[1]) end
return 1
"""

# KEYS[1] job. ARGV: ttl seconds. Count one attempt; the job's fields after it (flat list), or {} if the job
# is gone (its request's retention ran out) or already settled (delivered, dead, refused).
# Not repeat-safe by design: a retry after it landed counts the attempt twice, which only brings the
# dead letter one attempt sooner.
_OUTBOX_BEGIN = """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'queued' then return {} end
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('EXPIRE', KEYS[1], ARGV[1])
return redis.call('HGETALL', KEYS[1])
"""

# KEYS[1] job. ARGV: state, last attempt JSON. Settle the job (delivered / dead / refused) or, with
# 'queued', record the last failure. A settled job stays settled.
# Repeat-safe: writing the same state and last attempt twice leaves the same job.
_OUTBOX_MARK = """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'queued' then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'last', ARGV[2])
return 1
"""


# --- Request limits (issue 14 finding 4) ------------------------------------------------------------------
# KEYS[1] rate bucket (hash tokens, ts), KEYS[2] the requester's pending set, KEYS[3] the repo's, KEYS[4] all
# pending. ARGV: now ms, tokens per ms, burst, cap per requester, cap per repo, cap in all, request id, its
# expiry ms, bucket ttl s. Answers {'ok', 0} after counting the request, or {limit, retry-after ms} without
# changing anything but the pruning of expired entries. The checks and the counting are one step, so
# concurrent creates on any replica cannot overshoot a cap.
# Repeat-safe: a request id already counted is admitted again without taking a token or a place twice.
_ADMIT = """
local now = tonumber(ARGV[1])
for i = 2, 4 do redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now) end
if redis.call('ZSCORE', KEYS[4], ARGV[7]) then return {'ok', 0} end
local rate, burst = tonumber(ARGV[2]), tonumber(ARGV[3])
local tokens, ts = burst, now
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
if b[1] then
  tokens = math.min(burst, tonumber(b[1]) + (now - tonumber(b[2])) * rate)
end
if tokens < 1 then return {'rate', math.ceil((1 - tokens) / rate)} end
local caps = {{KEYS[2], tonumber(ARGV[4]), 'requester'}, {KEYS[3], tonumber(ARGV[5]), 'repo'},
              {KEYS[4], tonumber(ARGV[6]), 'total'}}
for _, c in ipairs(caps) do
  if redis.call('ZCARD', c[1]) >= c[2] then
    local first = redis.call('ZRANGE', c[1], 0, 0, 'WITHSCORES')
    return {c[3], math.max(1000, tonumber(first[2]) - now)}
  end
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens - 1), 'ts', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[9])
for i = 2, 4 do
  redis.call('ZADD', KEYS[i], ARGV[8], ARGV[7])
end
return {'ok', 0}
"""


@dataclass(frozen=True)
class RequestLimits:
    """Caps on pending requests and the rate of new ones (docs/configuration.md, "Request limits")."""

    per_requester: int = 20
    per_repo: int = 50
    total: int = 1000
    rate_per_minute: float = 30.0  # new requests per requester, refilled continuously
    burst: int = 10


class LimitExceeded(Refused):
    """A new request over a limit: code ``rate_limited`` (the requester's rate) or ``too_many_pending`` (a
    cap on pending requests); ``limit`` (also the ``reason`` fact that picks the sentence) names the limit:
    ``rate``, ``requester``, ``repo`` or ``total``. ``retry_after`` (s) says when to try again."""

    def __init__(self, code: str, *, reason: str, retry_after: int, **facts: Fact) -> None:
        super().__init__(code, reason=reason, **facts)
        self.limit = reason
        self.retry_after = retry_after


class SigningInProgress(Exception):
    """A final transition lost to a live signing claim: wait for the signature's outcome, then re-decide."""

    code = "signing_in_progress"


def _commands(*commands: tuple[Any, ...]) -> Callable[[Any], object]:
    """A queue for ``RequestStore._replicated`` of raw commands (name, arguments…), its values bound now."""
    return lambda pipe: [pipe.execute_command(*c) for c in commands]


def _sorted_approvals(raw: dict[Any, Any]) -> list[StoredApproval]:
    """The approvals hash's values, oldest first."""
    items = [StoredApproval.model_validate_json(v) for v in raw.values()]
    return sorted(items, key=lambda s: (s.approval.at, s.approval.user_id))


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _epoch(dt: datetime) -> float:
    return dt.timestamp()


def _now_ms() -> int:
    """Wall-clock epoch milliseconds: outbox scores are compared across replicas, so not a monotonic clock."""
    return int(time.time() * 1000)


class NotReplicated(StoreUnavailable):
    """A write the primary made but fewer than ``KEYTURN_REDIS_MIN_REPLICAS`` replicas acknowledged in time.

    Fail closed: the write may be lost if the primary fails over now, so the caller is told it failed (a
    click is answered "not recorded, click again"; a retry meets the write if it survived: every script
    recognises its own earlier write)."""


# Written last before each WAIT (see ``RequestStore._replicated``): a write that always reaches the
# replication stream, so the WAIT that follows covers everything the primary had applied, including an
# earlier attempt of the same call whose answer was lost.
REPLICATION_FENCE_KEY = f"{PREFIX}:replication_fence"


class _WriteScript:
    """A write script (:class:`ReloadingScript`) that, when the store asks for replicas, runs through
    ``_replicated``.

    Lua scripts are replicated as a whole (their effects, in one MULTI), so one WAIT after the script
    covers every key it wrote."""

    def __init__(self, store: RequestStore, text: str) -> None:
        self._store = store
        self.script = ReloadingScript(store.redis, text)

    async def __call__(self, *, keys: list[str], args: list[Any]) -> Any:
        if not self._store.replicated:
            return await self.script(keys=keys, args=args)
        sha, n = self.script.sha, len(keys)
        rows = await self._store._replicated(lambda pipe: pipe.evalsha(sha, n, *keys, *args), self.script)
        return rows[0]


class RequestStore:
    """Deploy requests in Redis: create (deduplicated by scope), read, compare-and-swap transitions."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        retention: timedelta,
        min_replicas: int = 0,
        replica_timeout: float = 1.0,
        replica_budget: float = 5.0,
    ) -> None:
        self._r = client
        self._retention = max(1, int(retention.total_seconds()))
        # Durable writes (docs/operations.md, "The asynchronous failover window"): with ``min_replicas`` > 0
        # every write is followed, on its own connection, by WAIT; see ``_replicated``.
        self._min_replicas = min_replicas
        self._wait_ms = max(1, int(replica_timeout * 1000))
        self._replica_budget = replica_budget
        self._create = _WriteScript(self, _CREATE)
        self._update = _WriteScript(self, _UPDATE)
        self._add_approval = _WriteScript(self, _ADD_APPROVAL)
        self._delete_if_equals = _WriteScript(self, _DELETE_IF_EQUALS)
        self._hold = _WriteScript(self, _HOLD)
        self._set_error = _WriteScript(self, _SET_ERROR)
        self._claim_once = _WriteScript(self, _CLAIM_ONCE)
        self._update_unless_signing = _WriteScript(self, _UPDATE_UNLESS_SIGNING)
        self._claim_signing = _WriteScript(self, _CLAIM_SIGNING)
        self._release_signing = _WriteScript(self, _RELEASE_SIGNING)
        self._delete_in_flight = _WriteScript(self, _DELETE_IN_FLIGHT)
        self._claim_scope = _WriteScript(self, _CLAIM_SCOPE)
        self._append_attempt = _WriteScript(self, _APPEND_ATTEMPT)
        self._outbox_enqueue = _WriteScript(self, _OUTBOX_ENQUEUE)
        self._admit = _WriteScript(self, _ADMIT)
        self._outbox_claim = _WriteScript(self, _OUTBOX_CLAIM)
        self._outbox_settle = _WriteScript(self, _OUTBOX_SETTLE)
        self._outbox_begin = _WriteScript(self, _OUTBOX_BEGIN)
        self._outbox_mark = _WriteScript(self, _OUTBOX_MARK)

    @property
    def redis(self) -> aioredis.Redis:
        """The underlying client (for the change feed and health checks)."""
        return self._r

    @property
    def replicated(self) -> bool:
        """True when every write waits for ``min_replicas`` replicas (``KEYTURN_REDIS_MIN_REPLICAS``)."""
        return self._min_replicas > 0

    async def _replicated(
        self, queue: Callable[[Any], object], script: ReloadingScript | None = None
    ) -> list[Any]:
        """Send the writes ``queue`` puts on a pipeline, then the fence and ``WAIT`` on the same connection;
        their answers once ``min_replicas`` replicas hold them. Without replicas asked for: the writes only.

        WAIT counts the replicas that acknowledged this connection's last write. A script that recognises
        its own earlier write (a retried call) writes nothing, so the fence, written last, makes the count
        cover the primary's whole stream up to now. Too few acknowledgements within the WAIT timeout: the
        writes are sent again (each is safe to repeat; a write on a demoted primary fails READONLY and the
        client follows the failover) until ``replica_budget`` seconds have passed, then
        :class:`NotReplicated`. No sleep between attempts: WAIT itself waits.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._replica_budget
        loads = 0
        while True:
            pipe = self._r.pipeline(transaction=False)
            queue(pipe)
            queued = len(pipe.command_stack)
            if self.replicated:
                pipe.set(REPLICATION_FENCE_KEY, "1")
                pipe.execute_command("WAIT", self._min_replicas, self._wait_ms)
            rows = await pipe.execute(raise_on_error=False)
            if script is not None and loads < SCRIPT_RELOADS and isinstance(rows[0], NoScriptError):
                await script.load()  # a new primary's (or a restart's) empty cache
                loads += 1
                continue
            for row in rows[:queued]:
                if isinstance(row, Exception):
                    raise row
            if not self.replicated:
                return list(rows)
            acked = rows[-1]
            if not isinstance(acked, Exception) and int(acked) >= self._min_replicas:
                return list(rows[:queued])
            if loop.time() >= deadline:
                raise NotReplicated(
                    f"redis: fewer than {self._min_replicas} replica(s) acknowledged the write "
                    f"({acked if not isinstance(acked, Exception) else type(acked).__name__})"
                )
            log.warning(
                "redis: a write not yet on %d replica(s) (%s); sending it again", self._min_replicas, acked
            )

    @_guard
    async def ping(self) -> None:
        """Raise ``StoreUnavailable`` unless Redis answers."""
        await self._r.ping()

    # -- reads -----------------------------------------------------------------------------------------

    @_guard
    async def get(self, request_id: str) -> DeployRequest | None:
        """The request, or None if unknown (or past its retention)."""
        data = await self._r.hget(record_key(request_id), "data")
        if data is None:
            return None
        return DeployRequest.model_validate_json(data)

    @_guard
    async def get_with_sign_error(self, request_id: str) -> tuple[DeployRequest | None, SignError | None]:
        """The request and, while it is pending, its last signer failure: one read (a long-poll's wake-up)."""
        data, raw = await self._r.hmget(record_key(request_id), ["data", "sign_error"])
        if data is None:
            return None, None
        request = DeployRequest.model_validate_json(data)
        if raw is None or request.status is not Status.PENDING:
            return request, None
        return request, SignError.model_validate_json(raw)

    @_guard
    async def get_many(self, request_ids: list[str]) -> list[DeployRequest]:
        """The requests that still exist, in the given order."""
        if not request_ids:
            return []
        pipe = self._r.pipeline(transaction=False)
        for rid in request_ids:
            pipe.hget(record_key(rid), "data")
        rows = await pipe.execute()
        return [DeployRequest.model_validate_json(row) for row in rows if row is not None]

    @_guard
    async def signing_inputs(
        self, request_id: str
    ) -> tuple[DeployRequest | None, list[StoredApproval], OriginEvidence | None]:
        """What a signature needs, in one round trip: the request, its approvals with their click evidence
        (oldest first, as :meth:`approvals`) and its origin (as :meth:`origin`)."""
        pipe = self._r.pipeline(transaction=False)
        pipe.hget(record_key(request_id), "data")
        pipe.hgetall(_sub_key(request_id, "approvals"))
        pipe.get(_sub_key(request_id, "origin"))
        data, approvals, origin = await pipe.execute()
        return (
            None if data is None else DeployRequest.model_validate_json(data),
            _sorted_approvals(approvals),
            None if origin is None else OriginEvidence.model_validate_json(origin),
        )

    @_guard
    async def get_with_receipt(self, request_id: str) -> tuple[DeployRequest | None, dict[str, Any] | None]:
        """The request and its receipt (None unless stored), in one round trip."""
        pipe = self._r.pipeline(transaction=False)
        pipe.hget(record_key(request_id), "data")
        pipe.get(_sub_key(request_id, "receipt"))
        data, raw = await pipe.execute()
        receipt: dict[str, Any] | None = None if raw is None else json.loads(raw)
        return None if data is None else DeployRequest.model_validate_json(data), receipt

    @_guard
    async def sign_error(self, request_id: str) -> SignError | None:
        """The last signer failure recorded on a pending request."""
        raw = await self._r.hget(record_key(request_id), "sign_error")
        return None if raw is None else SignError.model_validate_json(raw)

    @_guard
    async def origin(self, request_id: str) -> OriginEvidence | None:
        """The originating request as received."""
        raw = await self._r.get(_sub_key(request_id, "origin"))
        return None if raw is None else OriginEvidence.model_validate_json(raw)

    @_guard
    async def approvals(self, request_id: str) -> list[StoredApproval]:
        """Every counted approval with its click evidence, oldest first."""
        return _sorted_approvals(await self._r.hgetall(_sub_key(request_id, "approvals")))

    @_guard
    async def receipt(self, request_id: str) -> dict[str, Any] | None:
        """The signed receipt of an approved request."""
        raw = await self._r.get(_sub_key(request_id, "receipt"))
        if raw is None:
            return None
        value: dict[str, Any] = json.loads(raw)
        return value

    @_guard
    async def pending_ids(self, limit: int | None = None) -> list[str]:
        """Ids in the pending index, soonest expiry first (may briefly include just-decided ones): all of
        them, read in pages, unless ``limit`` is given."""
        return await self._index_ids(PENDING_KEY, limit)

    @_guard
    async def needs_card_ids(self) -> list[str]:
        """Every pending request that has no card yet (soonest expiry first)."""
        return await self._index_ids(NEEDS_CARD_KEY, None)

    @_guard
    async def at_quorum_ids(self) -> list[str]:
        """Every pending request that reached its quorum and has no receipt yet (soonest expiry first)."""
        return await self._index_ids(AT_QUORUM_KEY, None)

    async def _index_ids(self, key: str, limit: int | None) -> list[str]:
        out: list[str] = []
        start = 0
        while limit is None or len(out) < limit:
            page = INDEX_PAGE if limit is None else min(INDEX_PAGE, limit - len(out))
            rows = await self._r.zrange(key, start, start + page - 1)
            out.extend(_text(r) for r in rows)
            if len(rows) < page:
                break
            start += page
        return out

    @_guard
    async def mark_unrecorded(self, request_id: str, now: datetime) -> None:
        """Note that ``request_id`` may reach a final outcome the signer has not recorded yet.

        Written *before* the final transition, so a replica dying between the transition and the signer call
        leaves the note behind for the leader's backstop; a note for a request still pending is harmless
        (the backstop skips it until the request is decided)."""
        await self._replicated(lambda p: p.zadd(UNRECORDED_KEY, {request_id: _epoch(now)}, nx=True))

    @_guard
    async def unrecorded_ids(self) -> list[str]:
        """Requests whose final outcome may still be missing from the signer's audit log, oldest first."""
        return await self._index_ids(UNRECORDED_KEY, None)

    @_guard
    async def mark_recorded(self, request_id: str) -> None:
        """The signer recorded this request's outcome (or it never will): drop the note."""
        await self._replicated(lambda p: p.zrem(UNRECORDED_KEY, request_id))

    @_guard
    async def mark_needs_card(self, requests: list[DeployRequest]) -> None:
        """Put pending requests without a card into the attention index (start-up backfill)."""
        if requests:
            scores = {r.id: _epoch(r.expires_at) for r in requests}
            await self._replicated(lambda p: p.zadd(NEEDS_CARD_KEY, scores))

    @_guard
    async def mark_at_quorum(self, requests: list[DeployRequest]) -> None:
        """Put pending requests at quorum into the attention index (after a click, and start-up backfill)."""
        if requests:
            scores = {r.id: _epoch(r.expires_at) for r in requests}
            await self._replicated(lambda p: p.zadd(AT_QUORUM_KEY, scores))

    @_guard
    async def due_ids(self, now: datetime, limit: int = 1000) -> list[str]:
        """Pending ids whose expiry is at or before ``now`` (for the expiry job)."""
        rows = await self._r.zrangebyscore(PENDING_KEY, "-inf", _epoch(now), start=0, num=limit)
        return [_text(r) for r in rows]

    # -- create ----------------------------------------------------------------------------------------

    @_guard
    async def create_or_get(
        self,
        request: DeployRequest,
        origin: OriginEvidence,
        now: datetime,
        limits: RequestLimits | None = None,
    ) -> tuple[DeployRequest, bool]:
        """Store ``request`` unless a pending request with the same scope exists; return (request, created).

        The record is written first, then the scope index is claimed with SET NX: whoever wins the claim
        owns the scope, a loser deletes its unreferenced record and returns the winner's. A scope entry
        pointing at a final, expired or vanished request is stale and removed (compare-and-delete).

        With ``limits``, a request about to be created (not one answered by the pending request of its
        scope) is first counted against them: :class:`LimitExceeded` if over one, nothing stored.
        """
        skey = scope_key(request.scope)
        token = secrets.token_hex(16)
        lifetime = max(1, int((request.expires_at - now).total_seconds()))
        record_ttl = lifetime + self._retention
        for _ in range(MAX_CAS_ATTEMPTS):
            raw_id = await self._r.get(skey)
            if raw_id is not None:
                existing_id = _text(raw_id)
                existing = await self.get(existing_id)
                if (
                    existing is not None
                    and existing.status is Status.PENDING
                    and not lifecycle.is_expired(existing, now)
                ):
                    return existing, False
                await self._delete_if_equals(keys=[skey], args=[existing_id])
                continue
            stored = request.model_copy(update={"version": 1})
            if limits is not None:
                await self._admit_request(stored, limits, now)
            created = await self._create(
                keys=[record_key(stored.id), _sub_key(stored.id, "origin")],
                args=[
                    "1",
                    stored.status.value,
                    stored.model_dump_json(),
                    origin.model_dump_json(),
                    record_ttl,
                    changed_channel(stored.id),
                    token,
                ],
            )
            if not created:
                # Request ids are bound to their origin: the same origin arrived before. Its request, in
                # whatever state, is the answer; a decided request is never reopened.
                again = await self.get(stored.id)
                if again is not None:
                    if again.status.final and limits is not None:
                        await self._unadmit(again)  # counted again just now; it is no longer pending
                    return again, False
                raise StoreConflict(f"request id {stored.id} already exists")
            if await self._claim_scope(keys=[skey], args=[stored.id, lifetime + 60]):
                score = _epoch(stored.expires_at)
                await self._replicated(
                    _commands(
                        ("ZADD", PENDING_KEY, score, stored.id), ("ZADD", NEEDS_CARD_KEY, score, stored.id)
                    )
                )
                return stored, True
            await self._replicated(_commands(("DEL", record_key(stored.id), _sub_key(stored.id, "origin"))))
            if limits is not None:
                await self._unadmit(stored)  # lost the scope to another request: this one does not exist
        raise StoreConflict("could not claim the scope index")

    async def _admit_request(self, request: DeployRequest, limits: RequestLimits, now: datetime) -> None:
        """Count ``request`` against the limits, or raise :class:`LimitExceeded` (atomic, in Lua)."""
        who, repo = request.requester, request.scope.repo
        rate_per_ms = limits.rate_per_minute / 60_000
        # The bucket refills to full in burst / rate; it can be forgotten after that.
        bucket_ttl = max(60, int(limits.burst / max(rate_per_ms, 1e-9) / 1000) + 60)
        limit, retry_ms = await self._admit(
            keys=[
                f"{LIMITS_PREFIX}:rate:{who}",
                f"{LIMITS_PREFIX}:requester:{who}",
                f"{LIMITS_PREFIX}:repo:{repo}",
                f"{LIMITS_PREFIX}:pending",
            ],
            args=[
                int(now.timestamp() * 1000),
                repr(rate_per_ms),
                limits.burst,
                limits.per_requester,
                limits.per_repo,
                limits.total,
                request.id,
                int(request.expires_at.timestamp() * 1000),
                bucket_ttl,
            ],
        )
        name = _text(limit)
        if name == "ok":
            return
        wait = max(1, -(-int(retry_ms) // 1000))
        if name == "rate":
            rate, burst = limits.rate_per_minute, limits.burst
            raise LimitExceeded(
                "rate_limited", reason="rate", retry_after=wait, who=who, rate=rate, burst=burst
            )
        if name == "requester":
            cap = limits.per_requester
            raise LimitExceeded("too_many_pending", reason="requester", retry_after=wait, who=who, cap=cap)
        if name == "repo":
            cap = limits.per_repo
            raise LimitExceeded("too_many_pending", reason="repo", retry_after=wait, repo=repo, cap=cap)
        raise LimitExceeded("too_many_pending", reason="total", retry_after=wait, cap=limits.total)

    async def _unadmit(self, request: DeployRequest) -> None:
        """Take a request out of the limits' counts (it became final, or was never created)."""
        keys = (
            f"{LIMITS_PREFIX}:requester:{request.requester}",
            f"{LIMITS_PREFIX}:repo:{request.scope.repo}",
            f"{LIMITS_PREFIX}:pending",
        )
        await self._replicated(lambda p: [p.zrem(key, request.id) for key in keys])

    # -- transitions -----------------------------------------------------------------------------------

    def _related_keys(self, request_id: str) -> list[str]:
        return [
            record_key(request_id),
            _sub_key(request_id, "receipt"),
            _sub_key(request_id, "origin"),
            _sub_key(request_id, "approvals"),
            _sub_key(request_id, "callbacks"),
            _sub_key(request_id, "signing"),
        ]

    async def _write(
        self,
        current: DeployRequest,
        new: DeployRequest,
        receipt: dict[str, Any] | None,
        unless_signing: bool = False,
    ) -> tuple[int, DeployRequest]:
        written = new.model_copy(update={"version": current.version + 1})
        script = self._update_unless_signing if unless_signing else self._update
        result = await script(
            keys=self._related_keys(current.id),
            args=[
                str(current.version),
                str(written.version),
                written.status.value,
                written.model_dump_json(),
                "1" if written.status.final else "0",
                self._retention,
                changed_channel(current.id),
                "" if receipt is None else json.dumps(receipt, separators=(",", ":")),
                secrets.token_hex(16),
            ],
        )
        return int(result), written

    async def _after_final(self, request: DeployRequest) -> None:
        # Index clean-up lives outside the script (other slots); stale entries are tolerated by readers.
        await self._replicated(
            lambda p: [p.zrem(key, request.id) for key in (PENDING_KEY, NEEDS_CARD_KEY, AT_QUORUM_KEY)]
        )
        await self._unadmit(request)
        await self._delete_if_equals(keys=[scope_key(request.scope)], args=[request.id])

    @_guard
    async def transition(
        self,
        request_id: str,
        event: Callable[[DeployRequest], DeployRequest],
        *,
        receipt: dict[str, Any] | None = None,
        unless_signing: bool = False,
        current: DeployRequest | None = None,
    ) -> tuple[DeployRequest, bool]:
        """Apply ``event`` (a pure lifecycle function) with compare-and-swap, retrying on conflict.

        Returns (request, changed). ``event`` may raise ``Refused``; an event returning the request
        unchanged writes nothing. ``receipt`` is stored in the same atomic step. With ``unless_signing``, a
        move to DENIED/CANCELLED/EXPIRED raises :class:`SigningInProgress` while a signing claim is held.
        ``current``: the request as the caller last read it, tried first instead of reading it again (a
        stale copy only costs a conflict: the write compares versions, then the request is read afresh).
        """
        for attempt in range(MAX_CAS_ATTEMPTS):
            current, given = await self._to_decide(request_id, current, attempt)
            try:
                new = event(current)
            except Refused:
                if given:
                    continue
                raise
            if new == current:
                if given:
                    continue
                return current, False
            result, written = await self._write(current, new, receipt, unless_signing)
            if result == 1:
                if written.status.final and not current.status.final:
                    if owes_delivery(written):
                        # Before the index clean-up: a crash before this line leaves the request in the
                        # pending index, and the expiry job's repair (``settle_final``) enqueues it then.
                        await self.enqueue_callback(written.id)
                    await self._after_final(written)
                elif written.card is not None and current.card is None:
                    await self._replicated(_commands(("ZREM", NEEDS_CARD_KEY, written.id)))
                return written, True
            if result == -3:
                raise SigningInProgress(request_id)
            if result == -1:
                raise Refused("unknown_request")
            # 0: someone else wrote first; -2: it became final meanwhile — re-read and re-decide.
        raise StoreConflict(f"too much contention on {request_id}")

    async def _to_decide(
        self, request_id: str, current: DeployRequest | None, attempt: int
    ) -> tuple[DeployRequest, bool]:
        """The request a compare-and-swap attempt decides on, and whether it is the caller's copy.

        The caller's copy is tried first, on the first attempt only. It is good only for a write the versions
        confirm: an answer taken from it alone (a refusal, "nothing to change") must be decided again on the
        request as stored, so the callers retry when ``given`` and the event refuses or changes nothing.
        """
        given = attempt == 0 and current is not None and current.id == request_id
        request = current if given else await self.get(request_id)
        if request is None:
            raise Refused("unknown_request")
        return request, given

    @_guard
    async def add_approval(
        self,
        request_id: str,
        approval: Approval,
        evidence: SlackEvidence,
        now: datetime,
        current: DeployRequest | None = None,
    ) -> DeployRequest:
        """Count ``approval`` once, atomically, only while pending. Raises ``Refused`` (already_approved…).

        ``current``: the request as the caller just read it, tried first (as in :meth:`transition`)."""
        stored = StoredApproval(approval=approval, evidence=evidence).model_dump_json()
        token = secrets.token_hex(16)
        for attempt in range(MAX_CAS_ATTEMPTS):
            current, given = await self._to_decide(request_id, current, attempt)
            try:
                new = lifecycle.add_approval(current, approval, now)
            except Refused:
                if given:  # decided on the caller's copy only: decide again on the stored request
                    continue
                raise
            written = new.model_copy(update={"version": current.version + 1})
            result = int(
                await self._add_approval(
                    keys=[record_key(request_id), _sub_key(request_id, "approvals")],
                    args=[
                        str(current.version),
                        str(written.version),
                        written.model_dump_json(),
                        approval.user_id,
                        stored,
                        changed_channel(request_id),
                        token,
                    ],
                )
            )
            if result == 1:
                return written
            if result == 3:  # our own write, retried after it landed; others may have written since
                return await self.get(request_id) or written
            if result == 2:
                raise Refused("already_approved")
            if result == -1:
                raise Refused("unknown_request")
            # 0 (conflict) or -2 (became final): re-read; lifecycle refuses a final request.
        raise StoreConflict(f"too much contention on {request_id}")

    # -- signing claim, errors, callbacks ---------------------------------------------------------------

    @_guard
    async def claim_signing(self, request_id: str, lease: timedelta) -> str | None:
        """Take the signing claim for ``lease``, only while the request is pending; the token to release
        it, or None if someone holds it or the request is no longer pending.

        A final Deny/Cancel/Expire written with ``unless_signing`` loses to a live claim, so the audit log
        (which records every receipt) and the request's final state tell one story.
        """
        token = secrets.token_hex(16)
        ms = max(1, int(lease.total_seconds() * 1000))
        ok = await self._claim_signing(
            keys=[record_key(request_id), _sub_key(request_id, "signing")], args=[token, ms]
        )
        return token if int(ok) == 1 else None

    @_guard
    async def release_signing(self, request_id: str, token: str) -> None:
        """Release a claim taken with ``claim_signing`` (only if still ours) and announce it."""
        await self._release_signing(
            keys=[_sub_key(request_id, "signing")], args=[token, changed_channel(request_id)]
        )

    @_guard
    async def signing_claimed(self, request_id: str) -> bool:
        """True while someone holds the request's signing claim."""
        return bool(await self._r.exists(_sub_key(request_id, "signing")))

    @_guard
    async def wait_signing_released(self, request_id: str, within: float) -> bool:
        """Wait (at most ``within`` s) until nobody holds the signing claim; True if released in time.

        Subscribes to the request's change channel before looking at the claim, so a release between
        the look and the wait is never missed; a claim whose holder died lapses with its lease (the
        PTTL bounds the wait).
        """
        key = _sub_key(request_id, "signing")
        loop = asyncio.get_running_loop()
        pubsub = self._r.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(changed_channel(request_id))
            deadline = loop.time() + within
            while True:
                ttl_ms = int(await self._r.pttl(key))
                if ttl_ms == -2:
                    return True
                left = deadline - loop.time()
                if left <= 0:
                    return False
                # A lapsing lease publishes nothing: wake when it would lapse, at the latest.
                step = min(left, ttl_ms / 1000 + 0.01 if ttl_ms > 0 else left, 1.0)
                await pubsub.get_message(timeout=step)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    @_guard
    async def hold_card_posting(
        self, request_id: str, token: str, lease: timedelta
    ) -> tuple[bool, DeployRequest | None]:
        """Take (or extend, if ``token`` already holds it) the right to post this request's card; whether
        this caller holds it, and the request as it stands (None if gone), read in the same round trip.

        One replica posts a card at a time; if it dies mid-post its claim lapses after ``lease`` and another
        replica's backstop posts the card. (Slack has no idempotency key: a replica that died after Slack
        accepted the card but before its ts was stored leaves an orphan card, whose buttons still act on the
        same request. That is the price of never leaving a request without a card.) The claim is taken even
        when the request turns out to have its card already: the caller releases it, as it always does.
        """
        ms = max(1, int(lease.total_seconds() * 1000))
        sha, claim = self._hold.script.sha, _sub_key(request_id, "card_posting")
        held, data = await self._replicated(
            lambda p: [p.evalsha(sha, 1, claim, token, ms), p.hget(record_key(request_id), "data")],
            self._hold.script,
        )
        return bool(held), None if data is None else DeployRequest.model_validate_json(data)

    @_guard
    async def release_card_posting(self, request_id: str, token: str) -> None:
        """Release a claim taken with ``hold_card_posting`` (only if still ours)."""
        await self._delete_if_equals(keys=[_sub_key(request_id, "card_posting")], args=[token])

    @_guard
    async def set_sign_error(self, request_id: str, error: SignError | None) -> None:
        """Record (or clear, with None) the last signer failure; ignored once the request is final."""
        await self._set_error(
            keys=[record_key(request_id)],
            args=["" if error is None else error.model_dump_json(), changed_channel(request_id)],
        )

    @_guard
    async def record_callback_attempt(self, request_id: str, attempt: dict[str, Any]) -> None:
        """Append one callback delivery attempt to the request's log."""
        await self._append_attempt(
            keys=[_sub_key(request_id, "callbacks")],
            args=[json.dumps(attempt, separators=(",", ":")), self._retention],
        )

    @_guard
    async def callback_attempts(self, request_id: str) -> list[dict[str, Any]]:
        """Every recorded callback delivery attempt, in order."""
        rows = await self._r.lrange(_sub_key(request_id, "callbacks"), 0, -1)
        return [json.loads(r) for r in rows]

    # -- callback outbox ------------------------------------------------------------------------------------

    @_guard
    async def enqueue_callback(self, request_id: str) -> str:
        """Owe ``request_id``'s callback: a job with a fresh delivery id, due now. Idempotent: an existing
        job (any state) is kept, and only a queued one is (re-)indexed as due. The job's state."""
        state = _text(
            await self._outbox_enqueue(
                keys=[_sub_key(request_id, "outbox")], args=[f"dlv_{secrets.token_hex(12)}", self._retention]
            )
        )
        if state == "queued":
            await self._replicated(lambda p: p.zadd(OUTBOX_DUE_KEY, {request_id: _now_ms()}, nx=True))
        return state

    @_guard
    async def settle_final(self, request: DeployRequest) -> None:
        """Repair what a replica that died right after a final write left undone: the callback job and the
        index clean-up. Both are idempotent, so running this for a request already tidied changes nothing."""
        if not request.status.final:
            return
        if owes_delivery(request):
            await self.enqueue_callback(request.id)
        await self._after_final(request)

    @_guard
    async def claim_callbacks(self, limit: int, lease: timedelta) -> tuple[list[str], int]:
        """Claim at most ``limit`` due callbacks for ``lease``; (request ids, claim token)."""
        now = _now_ms()
        # The lease end is the claim token: a random sub-second offset keeps two replicas claiming in the
        # same millisecond apart (a tie would let both settle; the receiver dedupes even then).
        token = now + int(lease.total_seconds() * 1000) + secrets.randbelow(1000)
        rows = await self._outbox_claim(keys=[OUTBOX_DUE_KEY], args=[now, token, max(1, limit)])
        return [_text(r) for r in rows], token

    @_guard
    async def begin_callback(self, request_id: str) -> dict[str, str] | None:
        """Count one delivery attempt of a queued job; its fields, or None if there is nothing to deliver."""
        rows = await self._outbox_begin(keys=[_sub_key(request_id, "outbox")], args=[self._retention])
        if not rows:
            return None
        flat = [_text(r) for r in rows]
        return dict(zip(flat[::2], flat[1::2], strict=True))

    @_guard
    async def finish_callback(
        self, request_id: str, token: int, state: str, last: dict[str, Any], retry_at_ms: int | None = None
    ) -> bool:
        """Record an attempt's result and settle the claim ``token``: ``state`` 'queued' with ``retry_at_ms``
        reschedules; 'delivered', 'refused' or 'dead' (dead-lettered) ends the job. False if the claim was
        no longer ours (another replica took the lapsed lease; its attempt decides)."""
        ours = int(
            await self._outbox_settle(
                keys=[OUTBOX_DUE_KEY],
                args=[request_id, token, "" if retry_at_ms is None else retry_at_ms],
            )
        )
        if not ours:
            return False
        await self._outbox_mark(
            keys=[_sub_key(request_id, "outbox")], args=[state, json.dumps(last, separators=(",", ":"))]
        )
        if state == "dead":
            await self._replicated(lambda p: p.zadd(OUTBOX_DEAD_KEY, {request_id: _now_ms()}))
        return True

    @_guard
    async def drop_callback(self, request_id: str, token: int) -> None:
        """Forget a due entry that has nothing to deliver (job settled or gone), if the claim is ours."""
        await self._outbox_settle(keys=[OUTBOX_DUE_KEY], args=[request_id, token, ""])

    @_guard
    async def callback_job(self, request_id: str) -> dict[str, Any] | None:
        """The request's callback job as the API shows it, or None if it has none."""
        raw = await self._r.hgetall(_sub_key(request_id, "outbox"))
        if not raw:
            return None
        job = {_text(k): _text(v) for k, v in raw.items()}
        last = json.loads(job["last"]) if job.get("last") else None
        return {
            "deliveryId": job.get("delivery_id"),
            "state": job.get("state"),
            "attempts": int(job.get("attempts", "0")),
            "last": last,
        }

    @_guard
    async def callback_backlog(self) -> tuple[int, int]:
        """(callbacks owed, callbacks dead-lettered), for the metrics."""
        pipe = self._r.pipeline(transaction=False)
        pipe.zcard(OUTBOX_DUE_KEY)
        pipe.zcard(OUTBOX_DEAD_KEY)
        due, dead = await pipe.execute()
        return int(due), int(dead)

    # -- replay guard for signed CI requests --------------------------------------------------------------

    @_guard
    async def claim_ci_request(self, signature: str) -> SeenRequest | None:
        """Remember a state-changing signed CI request before acting on it (atomic ``SET NX``, kept
        :data:`REPLAY_TTL`). None: first time, go ahead. Otherwise it was seen: what it did, if known.

        ``signature`` is the ``X-Keyturn-Signature`` value the signer accepted. The signer takes exactly one
        spelling of a MAC (``v1=`` and 64 lowercase hex), so a replayer cannot dodge the key by respelling.
        """
        placeholder = f"{_IN_FLIGHT}/{secrets.token_hex(8)}"
        seen = await self._claim_once(
            keys=[ci_seen_key(signature)], args=[placeholder, int(REPLAY_TTL.total_seconds())]
        )
        if seen is None:
            return None
        text = _text(seen)
        if text.startswith(_IN_FLIGHT):
            return SeenRequest(action=_IN_FLIGHT, request_id=None)
        action, _, request_id = text.partition(":")
        return SeenRequest(action=action, request_id=request_id or None)

    @_guard
    async def bind_ci_request(self, signature: str, action: str, request_id: str) -> None:
        """Record what a claimed CI request did (``create`` or ``cancel`` of ``request_id``), keeping its TTL,
        so a replay can be told which request it was about."""
        await self._replicated(
            lambda p: p.set(ci_seen_key(signature), f"{action}:{request_id}", xx=True, keepttl=True)
        )

    @_guard
    async def release_ci_request(self, signature: str) -> None:
        """Forget a claim whose request failed before it changed anything (only while still in flight), so
        the client may send the same bytes again; a request that did act stays remembered."""
        await self._delete_in_flight(keys=[ci_seen_key(signature)], args=[_IN_FLIGHT])


class ChangeFeed:
    """One pub/sub connection per process that wakes long-polls when a request is written.

    Waiters register before they read the record, so a write between the read and the wait is never
    missed. If the subscription drops, every waiter is woken (they re-read) and it reconnects.
    """

    def __init__(self, client: aioredis.Redis) -> None:
        self._r = client
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    async def start(self) -> None:
        """Start listening (returns once subscribed, or after a short wait if Redis is down)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="keyturn-change-feed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), 2.0)

    async def stop(self) -> None:
        """Stop listening and wake every waiter."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        self.wake_all()

    def wake_all(self) -> None:
        """Wake every waiter (they re-read the request): on stop, and when the server begins shutting down."""
        for events in self._waiters.values():
            for ev in events:
                ev.set()

    async def _run(self) -> None:
        delay = 0.1
        while True:
            pubsub = self._r.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.psubscribe(CHANGED_PATTERN)
                self._subscribed.set()
                delay = 0.1
                while True:
                    msg = await pubsub.get_message(timeout=30.0)
                    if msg is None:
                        continue
                    rid = _text(msg.get("channel", b"")).rsplit(":", 1)[-1]
                    for ev in self._waiters.get(rid, ()):
                        ev.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # reconnect on any subscription failure; waiters re-read meanwhile
                self._subscribed.clear()
                log.warning("change feed lost its subscription (%s); reconnecting", type(exc).__name__)
                self.wake_all()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    @contextlib.asynccontextmanager
    async def watch(self, request_id: str) -> AsyncIterator[asyncio.Event]:
        """An event set on the next write to ``request_id`` (register, then read, then wait)."""
        ev = asyncio.Event()
        self._waiters.setdefault(request_id, set()).add(ev)
        try:
            yield ev
        finally:
            waiters = self._waiters.get(request_id)
            if waiters is not None:
                waiters.discard(ev)
                if not waiters:
                    del self._waiters[request_id]
