"""The words for people: every refusal's sentence, rendered from its stable code and its facts.

Raise sites say *what* went wrong — a code (``not_an_approver``) and a few facts (``environment="prod"``) —
and this module alone says it in words. The Slack side (ephemeral replies to approvers, thread notices) and
the HTTP side (the ``message`` of a JSON error) both render from here, so a sentence is changed in one place
and callers branch on the code, never on the words.

Pure and dependency-free (the standard library only): the base install, the signer and the bot all load
it. Facts are stable, non-secret values (a field name, a limit, an environment, a status); never a token,
a body or key material. A sentence whose fact is missing falls back to the code itself rather than raising:
rendering words must never turn a refusal into a crash.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

# A fact: a small, stable, non-secret value a sentence may quote.
Fact = str | int | float | bool | None
Facts = Mapping[str, Fact]

# What a final (or effectively final) status reads as in "This request is ...".
_STATUS_WORDS = {
    "approved": "already approved",
    "denied": "already denied",
    "expired": "expired",
    "cancelled": "cancelled",
    "pending": "pending",
}


def _not_pending(facts: Facts) -> str:
    status = str(facts.get("status", "")).lower()  # the stored value (``EXPIRED``) or a word
    return f"This request is {_STATUS_WORDS.get(status, status or 'not pending')}; nothing was changed."


def _replayed(facts: Facts) -> str:
    if facts.get("request_id") is None:
        return (
            "this signed request was already received and is still being handled; a signed request is "
            "accepted once: sign a new one to retry"
        )
    return (
        f"this signed request was already accepted ({facts.get('action')} of {facts['request_id']}); "
        "a signed request is accepted once: sign a new one to ask again"
    )


def _slack_failed(facts: Facts) -> str:
    status = facts.get("status")
    return f"Slack {facts.get('method')} failed: {facts.get('slack_error')}" + (
        f" (HTTP {status})" if status else ""
    )


_BAD_URL = {
    "unparsable": "not a valid URL",
    "credentials": "must not carry a user name or password",
    "no_host": "has no host",
}


def _callback_address(facts: Facts) -> str:
    if facts.get("ip") is None:
        return f"host {facts.get('host')} is a {facts.get('problem')}"
    return f"{facts.get('host')} resolves to {facts.get('ip')}, a {facts.get('problem')} address"


# A sentence: a str.format template over the facts, or a function of the facts for sentences that branch.
Template = str | Callable[[Facts], str]
# A code raised for several reasons (``malformed``): its sentences keyed by the fact ``reason``.
Reasons = Mapping[str | None, Template]  # None: the sentence when no reason is given

# -- the receipt verifier (signer/receipt.py, signer/verify.py: what `keyturn verify` prints in a CI log) --
_MALFORMED: Reasons = {
    "time_shape": "time must be RFC 3339 UTC 'YYYY-MM-DDTHH:MM:SSZ', got {value}",
    "time_range": "time out of range: {value}",
    "duplicate_member": "duplicate member name {name}",
    "float": "numbers with a fraction or exponent are not allowed: {value}",
    "constant": "{value} is not JSON",
    "not_bytes": "expected bytes",
    "too_large": "larger than {limit} bytes",
    "not_utf8": "not valid UTF-8",
    "not_json": "not valid JSON: {detail} at line {line} column {column}",
    "not_json_type": "not valid JSON: {detail}",
    "not_canonicalizable": "cannot canonicalize: {detail}",
    "not_object": "{where} must be a JSON object",
    "missing_member": "{where} lacks member {name}",
    "unknown_member": "{where} has unknown member {name}",
    "not_string": "{member} must be a string",
    "text_length": "{member} must be 1..{limit} characters",
    "not_printable": "{member} contains non-printable characters",
    "bad_sha": "scope.sha must be 40 or 64 lowercase hex digits",
    "bad_key_id": "signature.keyId must be 1..{limit} base64url characters",
    "unsigned_with_value": "an unsigned receipt must not carry signature.value",
    "bad_status": "status must be an upper-case word",
    "bad_request_id": "requestId must be 'req_' followed by a ULID",
    "expires_before_issued": "expiresAt must be after issuedAt",
    "approvals_length": "approvals must be a list of 1..{limit} entries",
    "approvals_repeat": "approvals must name distinct approvers",
    "approver_not_in_approvals": "approver must be one of approvals",
    "payload_type": "payloadType must be {expected}",
    "envelope_base64": "envelope payload is not canonical base64",
    "envelope_signatures": "envelope must carry exactly one signature",
    "envelope_signature_strings": "signatures[0].keyid and .sig must be strings",
    "envelope_not_canonical": "envelope payload is not the canonical (RFC 8785) form",
    "envelope_with_value": "envelope payload must carry signature without value",
    "envelope_key_id": "envelope keyid differs from the payload's signature.keyId",
}

_VERIFY: dict[str, Template | Reasons] = {
    "malformed": _MALFORMED,
    "unsupported_alg": "signature algorithm {alg} is not Ed25519",
    "bad_signature": {
        "not_base64": "signature.value is not canonical base64",
        "length": "signature.value is not a 64-byte Ed25519 signature",
        "mismatch": "signature does not verify",
        "webhook": "X-Hub-Signature-256 does not match the body",  # signer/github_app.py
    },
    # A signed receipt's status (reason "receipt"), or a request's status (the CI API's receipt route).
    "not_approved": {"receipt": "status is {status}", "request": "the request is {status}"},
    "lifetime_too_long": "receipt lifetime exceeds {limit}",
    "not_yet_valid": "issued at {at}, in the future",
    "expired": "expired at {at}",
    "scope_mismatch": "receipt is for {field} {got}, deploying {want}",  # code scope_mismatch:<field>
    "requester_not_proven": "the receipt does not say the requester was proven by an OIDC token",
    # the key it names (signer/keyset.py)
    "unknown_key": {
        None: "key {kid} is not in the trusted keyset",
        "key_file": "no key with kid {kid!r} in the key file",  # `keyturn keys revoke` (signer/keys.py)
    },
    "revoked_key": "key {kid} is revoked",
    "dev_key": "key {kid} is a development key (see --allow-dev-keys)",
}

# -- the signer's evidence checks (signer/evidence.py): reasons are unique across its codes, so every code
# it raises is said by this one table (the code says which check; the reason which way it failed) --
_EVIDENCE: dict[str | None, Template] = {
    # the origin's and the clicks' MACs (codes bad_ci_signature, bad_slack_signature, bad_denial_signature...)
    "timestamp": "timestamp is not a number of seconds",
    "signature_shape": "signature must be '{prefix}<hex>'",
    "signature_mismatch": "signature does not match",
    "skew": "timestamp is more than {limit} s away from now",
    "method": "method must be upper-case letters",
    "path": "path must start with '/' and carry no query string",
    "stamp_mismatch": "the arrival stamp is not the signer's",
    # bodies and forms
    "not_json": "{what} is not valid JSON ({detail})",
    "not_form": "{what} is not a valid form body",
    "repeated_field": "{what} repeats the field {name}",
    "too_large": lambda facts: (
        f"approval {facts['index']} is too large"
        if "index" in facts
        else f"body is larger than {facts['limit']} bytes"
    ),
    "not_utf8": "body is not UTF-8",
    "not_object": "body must be a JSON object",
    "fields": "invalid request: {detail}",
    "workflow": "workflow: {detail}",
    # the origin
    "not_slash": "an interactivity payload is not a slash command",
    "other_command": "not the {command} command",
    "slash_user": "slash command has no valid user_id",
    "slash_grammar": "expected '{command} request <repo> <sha> <environment> [workflow]'",
    "not_create": "the origin is not a POST /v1/requests",
    "other_team": "{what} comes from another Slack workspace",
    "no_user": "{what} names no valid user",
    "bad_team": "{what} names an invalid team",
    "request_id": "requestId must be 'req_' + a ULID",
    "origin": "requestId is not the id bound to this origin",
    "body": "the body disagrees with its token on {names}",
    "rule": "this {what} may not ask for this environment",
    "event": "jobs started by this event may not ask for this environment",
    "ref_unbound": (
        "a {event} job may not ask under a branch rule (only jobs of events whose ref names the code that "
        "runs may); list the event in the environment's {table}.events to allow it"
    ),
    "no_event": (
        "a job whose origin names no event may not ask under a branch rule; list the environment's "
        "{table}.events to decide which events may"
    ),
    "bad_event": "the event that started the job {detail}",
    "bad_ref": "the job's ref {detail}",
    "oidc_only": "this environment takes only OIDC-proven requests, not the CI secret",
    # clicks and the deny form
    "click_form": "a click body is a single 'payload' form field",
    "not_block_actions": "not a block_actions click",
    "actions": "a click carries exactly one action",
    "not_approve_button": "not a click on the card's Approve button",
    "click": "the click approves another request",
    "denial": "the submission denies another request",
    "deny_form": "a deny submission is a single 'payload' form field",
    "not_view_submission": "not a view_submission",
    "not_deny_form": "not a submission of the deny form",
    "reason_length": "the reason must be 1 to {limit} characters",
    "no_submission": "a denial needs the signed deny submission",
    "submission_too_large": "the deny submission is too large",
    # the decision
    "future": "the request is dated in the future",
    "ttl": "the request's lifetime (request_ttl) is over",
    "none": "no approvals were supplied",
    "approval_time": "approval {index} lies outside the request lifetime",
    "outcome_time": "the {what} lies outside the request lifetime",
    "approval": "approval {index}: {detail}",
    "approve": "{user} is not an approver for {environment}",
    "decide": "{user} may not decide requests for {environment}",
    "self": "{user} requested this deploy and may not approve it",
    "quorum": "{count} distinct approver(s), {required} required",
    "evidence": (
        "the signer's clock is {seconds} s behind the request's evidence; "
        "no receipt is dated before what it approves"
    ),
    "outcome": "outcome must be one of {outcomes}",
    "clock": "the request's lifetime is not over by the signer's clock",
    "no_call": "a cancel needs the pipeline's cancel call",
    "token_for_secret": "only an OIDC-proven request is cancelled with a token",
    "not_cancel_path": "the call is not a POST to this request's cancel path",
    "token_unusable": "the cancel token is unusable: {detail}",
    "other_job": "the cancel token was not issued to the job that made the request",
}
EVIDENCE_CODES = (
    "bad_ci_signature", "bad_slack_signature", "bad_denial_signature", "bad_github_stamp",
    "stale_request", "bad_request_body", "bad_origin", "wrong_team", "bad_click", "bad_denial",
    "bad_cancel", "wrong_request", "deny_form_mismatch", "request_id_mismatch",
    "oidc_body_mismatch", "oidc_issuer_not_allowed", "oidc_repository_not_allowed", "oidc_branch_not_allowed",
    "oidc_event_not_allowed", "github_branch_not_allowed", "github_event_not_allowed",
    "evidence_outside_lifetime", "request_expired", "insufficient_approvals",
    "not_authorized", "clock_behind", "not_expired",
)  # fmt: skip

# -- the card check (signer/card.py, code card_mismatch) --
_CARD: Reasons = {
    "deny_view": "the submitted form's {part} is not this request's deny form",
    "no_status": "the clicked card has no status part in Keyturn's layout",
    "no_message": "the click carries no message (ephemeral cards cannot approve)",
    "extra_part": "the clicked message carries {part}, which Keyturn's card never has",
    "own_sender": "the clicked message carries a {part} of its own, which Keyturn never sets",
    "no_blocks": "the clicked message carries no blocks",
    "approvals_line": "the clicked card's approvals line is not in Keyturn's form",
    "approvals_names": "the clicked card's approvals line names someone who is not an approver here",
    "expiry_line": "the clicked card's expiry line is not in Keyturn's form",
    "block_count": "the clicked card has {got} blocks where Keyturn's card for this request has {want}",
    "block": "the clicked card differs from Keyturn's card for this request in block {block}",
    "differs": "the clicked card differs from Keyturn's card for this request",
}

# -- the bot-signer socket (signer/wire.py) --
_WIRE: Reasons = {
    "not_utf8": "frame is not UTF-8",
    "not_json": "frame is not valid JSON: {detail}",
    "surrogate": "frame holds a lone surrogate escape (not Unicode text)",
    "not_object": "a request is a JSON object",
    "version_type": "v must be an integer",
    "protocol": "protocol version {version} is not supported ({supported} is)",
    "op_type": "op must be a string",
    "op": "unknown op {op}",
    "group_members": (
        "groupMembers: unknown field; the signer no longer takes group membership from the bot "
        "(it uses the [groups] pinned in its policy): upgrade the bot"
    ),
    "schema": "{detail}",
    "size": "frame of {size} bytes exceeds {limit}",
    "idle": "no request within {seconds} s",
    "header": "stream ended inside a frame header",
    "body": "stream ended inside a frame",
    "frame": "frame not received within {seconds} s",
}
WIRE_CODES = ("bad_frame", "bad_reply", "unknown_op", "frame_too_large", "idle_timeout", "truncated_frame")

# -- the gate: keyset and checkpoint sources (signer/gate.py; what `keyturn verify` prints about --keys) --
_GATE: Reasons = {
    "source_rule": "--keys must be a file or an https URL (plain http only to localhost): {source}",
    "verifying": "{error} while verifying",
    "keyset_file": "cannot read keyset {path}: {detail}",
    "too_large": "{what} larger than {limit} bytes",
    "checkout_unknown": "cannot tell whether keyset {path} is in the checkout: {detail}",
    "in_checkout": (
        "keyset {path} is inside the checkout being deployed ({root}); a pull request could replace it. "
        "Fetch it from the signer (https URL) or a path outside the checkout, "
        "or pass --trust-keys-in-checkout if this checkout is trusted"
    ),
    "deadline": "the {what} URL did not answer within {seconds} s",
    "fetch": "cannot fetch {what}: {detail}",
    "redirect": "refusing redirect of the {what} URL to {target}",
    "same_server": (
        "--keys {source} is served by {service}, the service whose receipts it is to check: a compromised "
        "one would vouch for receipts it signed itself. Pin the keyset (a file written from a CI variable) "
        "or fetch it from another host you trust"
    ),
    "redirect_same_server": (
        "refusing redirect of the {what} URL to {target}: served by {service}, whose receipts it is to check"
    ),
    "http_status": "{what} URL answered HTTP {status}",
}
# -- the signer's audit log (signer/audit.py: what the signer logs and `keyturn audit verify` prints) --
_AT_ENTRY = "entry seq {seq} (line {line}): "
_AUDIT: Reasons = {
    "no_entry": "audit log {path} has no readable entry seq {seq}",
    "cannot_open": "cannot open audit log {path}: {error}",
    "in_use": "audit log {path} is in use by another process",
    "failed": "audit log unusable after an earlier failure: {failure}",
    "record": "record cannot be logged: {detail}",
    "write": "audit log write failed: {error}; nothing was recorded",
    "fsync": "audit log fsync failed: {error}",
    "too_many_aside": "cannot move the torn tail of {path} aside: too many .torn-{stamp} files",
}
_AUDIT_CHAIN: Reasons = {
    "not_json": _AT_ENTRY + "not a JSON object: {detail}",
    "members": _AT_ENTRY + "must have exactly seq, prev and record",
    "seq": _AT_ENTRY + "has seq {found}; entries missing or reordered",
    "prev": _AT_ENTRY
    + "prev does not match the previous entry's hash; it or the entry before it was altered",
}
_AUDIT_TORN: Reasons = {
    "torn": (
        _AT_ENTRY + "incomplete last line (no newline): {size} bytes of a write torn by a crash or a full "
        "disk; no receipt was returned for them, and the signer moves them aside at its next start"
    ),
    "move_aside": "cannot move the torn tail of {path} aside: {error}",
}
_AUDIT_REWRITTEN: Reasons = {
    "log_id": (
        "entry seq {seq} (line {line}) is not the first entry the checkpoint's log id names: this is another "
        "log, or it was rewritten from its first entry on"
    ),
    "head": (
        "entry seq {seq} (line {line}) is not the entry a signed checkpoint anchors there: it or an entry "
        "before it was rewritten and the chain recomputed"
    ),
}

# -- a GitHub deployment protection rule's webhook and reads (signer/github_app.py; the approver's and the
# signer's refusals of a run) --
_GITHUB: dict[str, Template | Reasons] = {
    "bad_delivery": {
        "header": "X-GitHub-Delivery is missing or not a delivery id",
        "payload": "the delivery id is not one",
    },
    "unsupported_event": "X-GitHub-Event must be {want!r}, not {got}",
    "github_not_configured": "no webhook secret is configured",
    "missing_signature": "no X-Hub-Signature-256 header",
    "malformed_payload": {
        "not_json": "the body is not a JSON object in UTF-8",
        "not_object": "the body is not a JSON object",
        "fields": "payload fields: {detail}",  # each field and what is wrong with it
    },
    "unsupported_action": "action must be 'requested', not {got}",
    "no_policy": "no policy for environment {environment!r}: refused",
    "bad_callback": {
        "not_url": "deployment_callback_url is not a URL",
        "not_endpoint": "deployment_callback_url is not a run's protection rule endpoint",
        "other_repo": "deployment_callback_url names another repository",
    },
    "run_mismatch": {
        "reads": "GitHub's reads disagree with the webhook: {detail}",
        "run_attempt": "GitHub's read of the run has no usable run_attempt",
    },
    "bad_app_key": "the App private key is not an RSA key",
    # -- keyturn github-approver's answers (signer/github_approver.py; the JSON body's message) --
    "github_unavailable": {
        "retries": "{method} {path}: {last} after {attempts} attempts",
        "token_refused": "installation token refused: HTTP {status}",
        "no_token": "installation token answer has no token",
        "read_status": "GET {path}: HTTP {status}",
        "read_not_object": "GET {path}: not a JSON object",
    },
    "unknown_run": "no checked webhook for this run and environment",
    "already_decided": "the run was already {decided}",
    "replayed_delivery": "delivery {delivery} (or its body) was already taken",
    "stale_webhook": (
        "deployment {deployment} was created before the one of the webhook kept for the run: an earlier "
        "attempt's webhook, delivered late"
    ),
    "run_attempt_changed": {
        None: (
            "the run is at attempt {attempt}, not the attempt {checked} whose webhook was checked; the new "
            "attempt needs its own webhook and request"
        ),
        # a rejection names the webhook its request was opened by; another attempt's webhook is kept now
        "delivery": (
            "the request was opened by delivery {delivery}, not by the webhook of the attempt waiting now; "
            "a rejection decides only the attempt it was for"
        ),
    },
    "receipt_spent": "request {request_id} already approved run {run}",
    # The receipt's request was not opened from the webhook kept for the waiting run (seventh review).
    "receipt_not_for_run": {
        "stamp": "the arrival stamp is not the signer's for the webhook of the run waiting here",
        "workflow": "the arrival names workflow {workflow}, the run's is {expected}",
        "request": "request {request_id} was not opened from the webhook of the run waiting here",
        "no_webhook": "the webhook of the run waiting here was kept without its body: it cannot be approved",
    },
    "review_refused": {
        "comment": "GitHub answered the comment with HTTP {status}",
        "review": "GitHub answered the review with HTTP {status}",
    },
    "run_not_waiting": "GitHub answered that the run no longer waits for a review",
    "too_large": "receipt body too large",
}

# -- `keyturn policy pin-groups` (signer/pin_groups.py: what the person pinning reads) --
_PIN_SLACK = "Slack {method} for {group} failed: "
_PIN_GROUPS: dict[str, Template | Reasons] = {
    "bad_api_url": "--api-url must be an https:// URL (plain http only to loopback)",
    "bad_policy": {
        "groups_not_list": "environments.{name}.approver_groups: must be a list",
        "not_group": "environments.{name}.approver_groups: {group!r} is not a Slack user group id",
        "render_group": "not a Slack user group id: {group!r}",
        "member": "group {group}: a member is not a Slack user id",
        "toml": "{source}: not valid TOML: {detail}",
        "invalid": "{source}: with the members Slack lists, the policy is invalid: {problems}",
    },
    "unsafe_edit": {
        "cannot_replace": (
            "cannot replace the [groups] tables in the file safely (is `groups` written as dotted keys or an "
            "inline table?): run without --write and paste the printed tables by hand"
        ),
        "not_held": "the edited file does not hold the pinned groups; nothing written",
    },
}
# Slack's refusals of the pinning call (code ``slack_error``; the messenger's carry no reason).
_PIN_SLACK_FAILED: Reasons = {
    "redirect": "Slack API answered a redirect (HTTP {status}); refusing to follow it",
    "rate_limited": _PIN_SLACK + "HTTP 429 (rate limited; Retry-After {retry_after} s): run it again later",
    "http": lambda facts: (
        _PIN_SLACK.format_map(dict(facts))
        + f"HTTP {facts['status']}"
        + (f": {facts['answer']}" if facts.get("answer") else "")
    ),
    "unreachable": _PIN_SLACK + "cannot reach {api_url}: {error}",
    "too_large": _PIN_SLACK + "answer larger than {limit} bytes",
    "not_json": _PIN_SLACK + "the answer is not JSON",
    "refused": _PIN_SLACK + "{answer}",
    "no_users": _PIN_SLACK + "the answer has no list of users",
    "bad_user": _PIN_SLACK + "{user!r} is not a Slack user id (expected U… or W…)",
}

# -- a signed audit-log checkpoint (signer/checkpoint.py; `keyturn audit verify --checkpoint`) --
_CHECKPOINT: Reasons = {
    "payload_not_object": "checkpoint payload must be a JSON object",
    "payload_lacks": "checkpoint payload lacks {members}",
    "payload_unknown": "unknown members {members}",
    "type": "type must be {type!r}",
    "version": "unknown checkpoint version {version!r} (this verifier knows '1')",
    "seq": "seq must be a non-negative integer",
    "hashes": "log and head must be 64 lowercase hex digits",
    "inconsistent": "log, seq and head are inconsistent",
    "key_id": "keyId must be 1..128 base64url characters",
    "issued_at": "issuedAt: {detail}",
    "not_envelope": "not a checkpoint envelope: {detail}",
    "envelope_members": "a checkpoint is a DSSE envelope with exactly payloadType, payload and signatures",
    "payload_type": "payloadType is {got!r}, not {want!r}",
    "signature_count": "a checkpoint carries exactly one signature",
    "signature_members": "signatures[0] must have exactly keyid and sig",
    "base64": "payload and signature must be canonical standard base64",
    "payload": "payload: {detail}",
    "not_canonical": "payload is not in its canonical (RFC 8785) form",
    "keyid_differs": "the envelope's keyid differs from the payload's keyId",
    "signature_length": "the signature is not a 64-byte Ed25519 signature",
    "signature_mismatch": "the signature does not verify",
}

# -- a public keyset (JWKS) read by signer/keyset.py (code bad_keyset; `where` names the key, keys[i]) --
_KEYSET: Reasons = {
    "time": "{where}.{name}: {detail}",
    "key_not_object": "{where} must be a JSON object",
    "key_type": "{where} must be an OKP Ed25519 key",
    "use": "{where}.use must be 'sig'",
    "alg": "{where}.alg must be 'EdDSA'",
    "x_not_base64url": "{where}.x is not base64url",
    "x_length": "{where}.x must be 32 bytes",
    "kid": "{where}.kid must be the key's RFC 7638 thumbprint (or 'dev-' + thumbprint)",
    "status": "{where}.status must be one of active, next, rotated, revoked",
    "no_created_at": "{where} lacks createdAt",
    "no_rotated_at": "{where}: a rotated key needs rotatedAt",
    "no_revoked_at": "{where}: a revoked key needs revokedAt",
    "live_with_end": "{where}: a key with status {status} has no rotatedAt/revokedAt",
    "rotated_before_created": "{where}: rotatedAt is before createdAt",
    "duplicate_kid": "duplicate kid {kid}",
    "not_json": "keyset is not valid JSON: {detail}",
    "no_keys": "keyset must be a JSON object with a non-empty 'keys' list",
    "private_material": "keyset contains private key material ('d'); export the public keyset",
}

# Codes the gate builds from what it fetches (``keyset_unavailable``, ``untrusted_checkpoint``, ...).
_GATE_FAMILIES = ("untrusted_", "_unavailable", "_too_large")

# -- the signer service (signer/service.py: what it answers the bot, and why it refuses to start) --
_SERVICE: Reasons = {
    "fake_clock": "fake clock file {path} is unreadable",
    "active_key": "the active key {kid} was created after this receipt's issue time",
    "outcome": "request {request_id} is already closed on the record (audit seq {seq}); no receipt",
    "receipt": "request {request_id} has a receipt on the record (audit seq {seq})",
    "no_group": "socket group {group} does not exist",
    "not_socket": "{path} exists and is not a socket; refusing to replace it",
    "in_use": "another process is listening on {path}",
    "listen": "cannot listen on {path}: {detail}",
    "permissions": "cannot set permissions on {path}: {detail}",
    "signer": "the signer failed to process the request",
}

# -- the signer's settings (signer/config.py: why it refuses to start; names variables and files, never a
# secret's value) --
_CONFIG: Reasons = {
    "secret_unreadable": "{var}: cannot read {path}: {error}",
    "secret_too_large": "{var}: {path} is larger than {limit} bytes; not a secret file",
    "secret_not_utf8": "{var}: {path} is not UTF-8 text",
    "secret_empty": "{var}: {path} is empty",
    "both_set": "{var} and {file_var} are both set; set only one",
    "settings": "{problems}",  # each problem names its variable and what is wrong with it
}

# -- OIDC ID tokens and issuer key sets (signer/oidc.py; the token's refusals are relayed to CI as 401s) --
_OIDC: Reasons = {
    # `keyturn oidc pin` (signer/pin_oidc.py), said of the issuer it pins
    "pin_url": "{url} must be https (plain http only to loopback)",
    "pin_issuer": "{name}: the discovery document is for issuer {got}, not {want!r}",
    "pin_no_jwks_uri": "{name}: the discovery document has no jwks_uri",
    "pin_keys": "{name}: {detail}",
    "not_base64url": "{what} is not unpadded base64url",
    "not_canonical_base64url": "{what} is not canonical base64url",
    "not_strict_json": "{what} is not a strict JSON object",
    "not_object": "{what} is not a JSON object",
    "token_size": "a token is 1..{limit} ASCII characters",
    "token_parts": "a token has three dot-separated parts (JWS compact form)",
    "no_alg": "token header has no 'alg' string",
    "member": "token header member {name} is not accepted",
    "typ": "token header 'typ' must be 'JWT' when present",
    "uint_type": "{what} must be a base64url string",
    "uint_form": "{what} must be a minimal big-endian integer",
    "algorithm": "algorithm {algorithm} is not supported (RS256 is)",
    "too_large": "key set is too large",
    "no_keys": "key set has no 'keys' list",
    "key_not_object": "keys[{index}] is not an object",
    "no_kid": "keys[{index}] has no usable 'kid'",
    "kid_twice": "kid {kid} appears twice",
    "kty": "key {kid} has kty {kty}, not RSA",
    "key_alg": "key {kid} is for {alg}, not {algorithm}",
    "not_signing": "key {kid} is not a signing key",
    "private": "key {kid} holds private material",
    "weak": "key {kid} is too weak",
    "seconds": "claim {name} must be whole seconds",
    "issuer": "the token's issuer is not in the policy",
    "alg": "the token's alg is not {algorithm}",
    "kid": "the token's kid is not among the issuer's pinned keys",
    "signature": "the token's signature does not verify",
    "audience": "the token is for another audience",
    "lifetime": "the token's lifetime (exp - iat) is not plausible",
    "expired": "the token has expired",
    "not_yet_valid": "the token is not valid yet",
    "claim": "the token has no usable {name} claim",
    "no_ref": "the {claim} claim has no '@<ref>'",
    "no_path": "the {claim} claim has no '//<path>'",
    "no_workflow": "the {claim} claim has no workflow path",
    "run_numbers": "run_id and run_attempt must be numbers",
    "login": "the token's {claim} is not a login name",
    "pipeline_number": "pipeline_id must be a number",
    "environment": "the token has no 'environment' claim (the job must name its environment)",
    "claims": "token claims: {detail}",
}
OIDC_CODES = (
    "oidc_malformed", "oidc_bad_header", "bad_oidc_keys", "oidc_unknown_issuer", "oidc_bad_alg",
    "oidc_unknown_kid", "oidc_bad_signature", "oidc_wrong_audience", "oidc_expired", "oidc_not_yet_valid",
    "oidc_claim_missing", "oidc_claim_unusable", "oidc_discovery",
)  # fmt: skip

# -- the signer's private key file (signer/keys.py: what `keyturn keys` and the signer's start-up print) --
_KEY_FILE: Reasons = {
    "d_not_base64url": "{where}.d is not base64url",
    "d_length": "{where}.d must be a 32-byte Ed25519 seed",
    "x_not_of_d": "{where}: x is not the public key of d",
    "grace": "the rotation grace must be between 0 and {most}",
    "active_count": "a key file needs exactly one active key, found {found}",
    "active_without_d": "the active key lacks its private part 'd'",
    "next_count": "a key file holds at most one next key, found {found}",
    "next_without_d": "the next key lacks its private part 'd'",
    "duplicate_kid": "duplicate kid in key file",
    "not_json": "key file is not valid JSON: {detail}",
    "no_keys": "key file must be a JSON object with a non-empty 'keys' list",
    "cannot_open": "cannot open key file {path}: {error}",
    "not_regular": "key file {path} is not a regular file",
    "too_open": ("key file {path} has mode {mode}; it must not be accessible by group or others (chmod 600)"),
    "next_already_staged": "a next key is already staged ({kid}); activate or revoke it",
    "no_next": "no next key is staged: run 'keyturn keys add-next' and publish it first",
    "next_staged": "a next key is staged ({kid}): run 'keyturn keys activate-next' instead",
    "rotation_before_creation": "rotation time is before the active key's creation",
    "revoke_active": "refusing to revoke the active key: run 'keyturn keys rotate' first",
    "exists": "{path} already exists; refusing to overwrite a key file",
    "cannot_create": "cannot create {path}: {error}",
    "cannot_write": "cannot write beside {path}: {error}",
}

# -- `keyturn request` (bot/client.py: what a CI log shows; the exit status picks the code) --
_REQUEST: Reasons = {
    "oidc_env": (
        "--oidc: $ACTIONS_ID_TOKEN_REQUEST_URL/_TOKEN are not set (does the job have "
        "'permissions: id-token: write'? On GitLab, pass --id-token-var)"
    ),
    "oidc_url": "--oidc: $ACTIONS_ID_TOKEN_REQUEST_URL is not an http(s) URL",
    "oidc_http": "--oidc: the token endpoint answered HTTP {status}",
    "oidc_unreachable": "--oidc: cannot get a token: {error}",
    "oidc_no_value": "--oidc: the token endpoint's answer has no 'value'",
    "oidc_var": "--oidc: ${name} is not set (declare it under id_tokens: in the job)",
    "rejected": "REJECTED {rejected}: {detail}",
    "oidc_malformed": "--oidc: the ID token is malformed ({error})",
    "oidc_missing": "--oidc: the token does not say {missing}; pass them as options",
    "bot_unreachable": "cannot reach the bot at {url}: {error}",
    "replayed": "the bot kept answering replayed_request; try again",
    "oidc_refused": "the OIDC token was refused: {error}: {detail}",
    "ci_signature": "the bot refused the CI signature: check {env} and the clock",
    "policy": "refused by policy: {error}: {detail}",
    "refused": "the request was refused: {detail}",
    "bot_http": "the bot answered HTTP {status}: {detail}",
    "timed_out": "timed out waiting for {request_id} (still PENDING)",
    "wait_needs_keys": "--wait needs --keys: a trusted keyset to verify the receipt (fail closed)",
    "needs_audience": "--oidc on GitHub Actions needs --audience (the policy's audience)",
    "denied": "DENIED by {by}: {why}",
    "final": "{status}: {request_id}",
    "unexpected": "unexpected status {status}",
    "no_keyset": "no keyset to verify the receipt with",
    "cannot_write": "cannot write {path}: {error}",
    "no_receipt": "no receipt (HTTP {status})",
    "receipt_unreachable": "cannot fetch the receipt of {request_id}: {detail}",
}

# code -> its sentence, or its sentences by reason.
SENTENCES: dict[str, Template | Reasons] = {
    # -- a person's action that changes nothing (bot/lifecycle.py, bot/approvals.py; Slack and CI API) --
    "not_pending": _not_pending,
    # An approver's second click (no reason), or the signer's record of a receipt.
    "already_approved": {None: "You have already approved this request.", **_SERVICE},
    "quorum_not_reached": "Not enough approvals yet.",
    "reason_required": "Please give a reason for denying.",
    "unknown_request": "No such request (it may have been cleaned up).",
    # -- a new request over a limit (bot/store.py; the reason is the limit) --
    "rate_limited": {
        "rate": "Too many new requests from {who}: at most {rate:g} a minute (bursts of {burst})."
    },
    "too_many_pending": {
        "requester": "{who} has {cap} pending requests, the most allowed; cancel or wait for one.",
        "repo": "{repo} has {cap} pending requests, the most allowed; cancel or wait for one.",
        "total": "The bot holds {cap} pending requests, the most allowed; try again later.",
    },
    "evidence_gone": "The original request's evidence is gone.",
    "unknown_environment": "There is no environment {environment!r} in the policy.",  # also the signer's
    "not_an_approver": "You are not an approver for {environment}.",
    "signing_failed": (
        "Your approval is recorded, but no receipt could be issued ({cause}: {detail}). "
        "Click Approve again to retry."
    ),
    "signing_in_progress": "A receipt is being issued for this request right now; try again in a moment.",
    # -- the CI API (bot/api.py) --
    "unauthorized": "authentication failed",
    "signer_unavailable": "the signer cannot be reached; retry later",
    "store_unavailable": "Redis cannot be reached; retry later",
    "replayed_request": _replayed,
    "body_too_large": "the body is larger than {limit} bytes",
    "bad_content_length": "Content-Length is not a number",
    "invalid_parameter": "{name} must be an integer from {low} to {high}",
    "invalid_request": "invalid request: {detail}",
    "too_many_failures": "too many failed authentications from this address; retry later",
    "receipt_gone": "the receipt is no longer stored",
    "not_ready": "not ready: {down}",
    "shutting_down": "the bot is stopping; retry",
    # The bot's webhook route (no reason) or the GitHub approver's parser (signer/github_app.py).
    "payload_too_large": {None: "webhook body too large", "limit": "webhook body larger than {limit} bytes"},
    "scope_busy": (
        "another run of this commit for {environment} is already waiting for approval ({request_id}); "
        "this run was rejected"
    ),
    "approver_unavailable": "the approver did not answer",
    "approver_error": "the approver's answer is not JSON",
    "not_found": "Not Found",
    "method_not_allowed": "Method Not Allowed",
    # -- `keyturn request` (bot/client.py; its sentences still come with the exit, by status) --
    "request_refused": {None: "not approved, or the receipt was refused", **_REQUEST},
    "request_invalid": {None: "the request or the configuration is invalid", **_REQUEST},
    "request_unreachable": {None: "the bot or the keyset URL cannot be reached", **_REQUEST},
    # -- `keyturn dev` (bot/dev.py: for the person at the terminal) --
    "dev_no_port": "no free TCP port on {host}",
    "dev_not_ready": lambda facts: (
        f"{facts['name']} exited with code {facts['status']} before it was ready"
        if "status" in facts
        else f"{facts['name']} was not ready after {facts['seconds']}s"
    ),
    "dev_step_failed": "{what} failed: {detail}",
    "dev_no_redis": "redis-server is missing: run ./scripts/bootstrap.sh (or apt-get install redis-server)",
    "dev_exited": "{name} exited with code {status}",
    # -- the timer jobs (bot/timer_jobs.py, bot/scheduler.py; for logs: the job is retried) --
    "timer_error": "scheduling failed",
    "bad_job": {
        None: "the job cannot be scheduled",
        "kind": "bad job kind {kind}",
        "request_id": "bad request id",
        "number": "bad job number {n}",
        "member": "malformed job member",
        "once_key": "bad once key parts",
        "naive": "datetime must be timezone-aware",
        "ttl": "ttl_s must be at least 1",
        "no_handler": "no handler for job kind {kind}",
    },
    "stale_leader": {
        None: "this replica no longer holds the timer leader lease",
        "fence": "fencing token is no longer the leader's",
    },
    "card_not_posted": "no card to reply to yet",
    # -- a CI callback URL the rules forbid (bot/callbacks.py; said against the callbackUrl field) --
    "callback_url_invalid": lambda facts: _BAD_URL.get(str(facts.get("problem")), "not a valid URL"),
    "callback_url_scheme": lambda facts: (
        "must be an http(s) URL" if facts.get("dev_mode") else "must be an https (http only in dev mode) URL"
    ),
    "callback_host_not_allowed": "host {host} is not in KEYTURN_CALLBACK_HOSTS",
    "callback_address_refused": _callback_address,
    # -- Slack refused a call or could not be reached (bot/messenger.py; for logs and operators) --
    **dict.fromkeys(
        (
            "slack_error",
            "slack_not_found",
            "slack_auth",
            "slack_unavailable",
            "slack_rejected",
            "card_missing",
        ),
        _slack_failed,
    ),
    # -- the signer's own refusals migrated to code + facts (signer/keys.py) --
    "key_mismatch": "{what} names a key other than the active key",
    "key_file": _KEY_FILE,
    **_VERIFY,
    "card_mismatch": _CARD,
    **dict.fromkeys(OIDC_CODES, _OIDC),
    **dict.fromkeys(("clock_unavailable", "request_closed"), _SERVICE),
    **_GITHUB,
    **_PIN_GROUPS,
    "slack_error": {None: _slack_failed, **_PIN_SLACK_FAILED},
    "audit_log": _AUDIT,
    "audit_chain_broken": _AUDIT_CHAIN,
    "audit_torn_tail": _AUDIT_TORN,
    "audit_rewritten": _AUDIT_REWRITTEN,
    "audit_truncated": (
        "the log has {entries} complete entries but a signed checkpoint anchors entry seq {seq}: entries "
        "were removed from its end"
    ),
    "audit_unreadable": "cannot read audit log {path}: {error}",
    "config": {**_SERVICE, **_CONFIG},  # the service's start-up refusals and the settings
    "timeout": "request took longer than {seconds} s",
    "too_many_connections": "the signer serves at most {limit} connections",
    "invalid_policy": "{source}: {problems}",  # each problem is its key path and what is wrong there
    # A receipt's key (verifier, no reason) or the signer's active key (service).
    "key_not_valid_at_issue": {None: "key {kid} ({key_status}) was not valid at {at}", **_SERVICE},
    **dict.fromkeys((*WIRE_CODES, "frame_timeout"), _WIRE),
    # A frame's schema (wire) or a request's id or outcome (evidence; none of its reasons are the wire's).
    "bad_request": {
        **_EVIDENCE,
        **_WIRE,
        "json_text": "a JSON object with a non-empty {name!r}",
        # keyturn github-approver's approve route: the hand-off names the webhook's arrival at the signer
        "arrival_header": "header {name} is missing or malformed (the signer's arrival of the run's webhook)",
    },
    **dict.fromkeys(("bad_keyset_url", "unreadable"), _GATE),
    "bad_keyset": {**_GATE, **_KEYSET},  # fetched by the gate, parsed by signer/keyset.py
    "bad_checkpoint": {**_GATE, **_CHECKPOINT},  # fetched by the gate, checked by signer/checkpoint.py
    # A receipt (no reason) or the socket protocol's version.
    "unsupported_version": {None: "unknown receipt version {version}", **_WIRE},
    # The CI API's own (no reason), the gate's surprise while verifying, or the signer's own failure.
    "internal_error": {None: "internal error; see the bot's log", **_GATE, "signer": _SERVICE["signer"]},
    **dict.fromkeys(EVIDENCE_CODES, _EVIDENCE),
    # The CI API's own (no reason), or the signer's body parser's reason for it (shared with the bot).
    "malformed_body": {**_EVIDENCE, None: "body is not valid JSON text"},
    # Said by the bot to an approver (no reason) and by the signer's checks (with one).
    "self_approval": {**_EVIDENCE, None: "You requested this deploy, so you cannot approve it."},
    "ci_secret_not_allowed": {**_EVIDENCE, None: "this environment refuses the CI secret; use OIDC"},
}

# What a field of a CI body is told, by the same facts (the ``fields`` list of a 422).
FIELD_SENTENCES: dict[str, str] = {
    "invalid_parameter": "must be an integer from {low} to {high}",
    "unknown_environment": "not an environment in the policy",
}


# Another part's refusal said under a code (a card check, a GitHub payload, the body's parser): ``detail`` is
# that part's sentence, already rendered from its own code and facts.
RELAYED = "relayed"


def _render(template: Template | Reasons | None, code: str, facts: Facts) -> str:
    if facts.get("reason") == RELAYED and "detail" in facts:
        return str(facts["detail"])
    if isinstance(template, Mapping):
        reason = facts.get("reason")
        template = template.get(None if reason is None else str(reason))
    if template is None:
        return code
    try:
        return template(facts) if callable(template) else template.format_map(dict(facts))
    except (KeyError, IndexError, ValueError):
        return code  # a fact is missing: the code still says what happened


def _sentence(code: str) -> Template | Reasons | None:
    # ``scope_mismatch:sha``: a code with a detail after the colon is said by the code before it.
    sentence = SENTENCES.get(code, SENTENCES.get(code.partition(":")[0]))
    if sentence is None and any(part in code for part in _GATE_FAMILIES):
        return _GATE
    return sentence


def words(code: str, facts: Facts | None = None) -> str:
    """The sentence for ``code`` with ``facts`` filled in; the code itself when none is known."""
    return _render(_sentence(code), code, facts or {})


def field_words(code: str, facts: Facts | None = None) -> str:
    """What the ``fields`` entry of a 422 says about the field ``code`` concerns."""
    return _render(FIELD_SENTENCES.get(code), code, facts or {})


def has_words(code: str, reason: str | None = None) -> bool:
    """True if ``code`` has a sentence here (for ``reason``, when given and the code is said by reason);
    tests hold every code the CI API and the migrated signer modules raise to it."""
    sentence = _sentence(code)
    if reason == RELAYED:
        return True
    if isinstance(sentence, Mapping):
        return reason is None or reason in sentence
    return sentence is not None
