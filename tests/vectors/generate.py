"""Generate Keyturn's receipt test vectors from fixed keys and fixed times.

    python tests/vectors/generate.py          # (re)write tests/vectors/*.json
    python tests/vectors/generate.py --check  # regenerate in memory; exit 1 if any byte differs

Ed25519 signatures are deterministic, so the same seeds and times always give the same bytes. Every invalid
vector is named after the attack it stands for. ``manifest.json`` lists each vector with its expected result
and the verification parameters; README.md explains how to use them from another language.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey

from keyturn.signer.keyset import ACTIVE, REVOKED, ROTATED, PublicKey, PublicKeyset, key_id
from keyturn.signer.receipt import PAYLOAD_TYPE, b64encode, b64url_encode, canonical_json, pae, signing_bytes, to_dsse

HERE = Path(__file__).resolve().parent
MANIFEST = "manifest.json"
KEYSET = "keyset.json"


def _t(s: str) -> datetime:
    return datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def seed(name: str) -> bytes:
    """The fixed, public, test-only Ed25519 seed of test key ``name``."""
    return hashlib.sha256(f"keyturn test vector key: {name}".encode()).digest()


@dataclass(frozen=True)
class TestKey:
    """A fixed test key and its lifecycle in the test keyset."""

    name: str
    status: str
    created: str
    rotated: str | None = None
    revoked: str | None = None
    dev: bool = False
    in_keyset: bool = True

    @property
    def signing_key(self) -> SigningKey:
        return SigningKey(seed(self.name))

    @property
    def kid(self) -> str:
        return key_id(bytes(self.signing_key.verify_key), dev=self.dev)

    def public(self) -> PublicKey:
        return PublicKey(
            self.kid,
            self.status,
            _t(self.created),
            _t(self.rotated) if self.rotated else None,
            _t(self.revoked) if self.revoked else None,
            self.signing_key.verify_key,
        )


KEYS = {
    k.name: k
    for k in (
        TestKey("primary", ACTIVE, "2026-01-01T00:00:00Z"),
        TestKey("previous", ROTATED, "2025-06-01T00:00:00Z", rotated="2026-01-01T00:00:00Z"),
        TestKey(
            "compromised",
            REVOKED,
            "2025-06-01T00:00:00Z",
            rotated="2025-09-01T00:00:00Z",
            revoked="2025-09-02T00:00:00Z",
        ),
        TestKey("development", ACTIVE, "2026-01-01T00:00:00Z", dev=True),
        TestKey("stranger", ACTIVE, "2026-01-01T00:00:00Z", in_keyset=False),
    )
}

SHA = "4f8a2cd91ef7a2c7f3a5f0aa12d93b33f2d40e17"
SHA256 = "9c3e6b2f0d8a4c1e7b5f3a9d2c6e8b0f4a1d7c3e5b9f2a6d8c0e4b7f1a3d5c9e"
AT = "2026-02-28T16:30:00Z"
PARAMS: dict[str, Any] = {
    "repo": "acme/service",
    "sha": SHA,
    "environment": "production",
    "workflow": "deploy.yml",
    "at": AT,
    "allowDevKeys": False,
    "requireOidc": False,
}
PROOF = {
    "issuer": "https://token.actions.githubusercontent.com",
    "subject": "repo:acme/service:environment:production",
    "run": "1234567890/1",
}


def base_receipt(key: str = "primary") -> dict[str, Any]:
    """The valid receipt every vector starts from (unsigned)."""
    return {
        "version": "1.0",
        "status": "APPROVED",
        "requestId": "req_01JV7Q4M4T7Z9X4P9G8N2D6R1A",
        "issuedAt": "2026-02-28T16:00:00Z",
        "expiresAt": "2026-02-28T18:00:00Z",
        "scope": {"repo": "acme/service", "sha": SHA, "environment": "production", "workflow": "deploy.yml"},
        "approver": {"id": "U07F2B1D", "email": "oncall@example.com"},
        "approvals": [
            {"id": "U0CAROL", "email": "carol@example.com", "at": "2026-02-28T15:58:10Z"},
            {"id": "U07F2B1D", "email": "oncall@example.com", "at": "2026-02-28T15:59:58Z"},
        ],
        "requester": "github:alice",
        "signature": {"alg": "Ed25519", "keyId": KEYS[key].kid},
    }


def sign(receipt: dict[str, Any], key: str = "primary") -> dict[str, Any]:
    """Sign exactly as the signer does (PAE over JCS of the receipt minus signature.value)."""
    out = copy.deepcopy(receipt)
    out["signature"].pop("value", None)
    sig = KEYS[key].signing_key.sign(signing_bytes(out)).signature
    out["signature"]["value"] = b64encode(sig)
    return out


def signed(key: str = "primary", **changes: Any) -> dict[str, Any]:
    """A receipt signed by ``key`` after applying ``changes`` (top-level members; ``scope_x`` for scope.x)."""
    r = base_receipt(key)
    for name, value in changes.items():
        if name.startswith("scope_"):
            r["scope"][name[6:]] = value
        else:
            r[name] = value
    return sign(r, key)


def jcs(obj: Any) -> bytes:
    """Compact canonical bytes (how the vectors are stored unless the attack is about raw bytes)."""
    return canonical_json(obj)


def with_value(receipt: dict[str, Any], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(receipt)
    out["signature"]["value"] = value
    return out


def tamper(receipt: dict[str, Any], fn: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    out = copy.deepcopy(receipt)
    fn(out)
    return out


def raw_sign(receipt: dict[str, Any], message: bytes, key: str = "primary") -> dict[str, Any]:
    return with_value(receipt, b64encode(KEYS[key].signing_key.sign(message).signature))


@dataclass
class Vector:
    """One test vector: its bytes, the expected outcome and what it stands for."""

    name: str
    attack: str
    data: bytes
    code: str | None = None  # None: must verify
    params: dict[str, Any] = field(default_factory=dict)

    def manifest_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "name": self.name,
            "file": f"{self.name}.json",
            "expect": "accept" if self.code is None else "reject",
            "attack": self.attack,
            "params": {**PARAMS, **self.params},
        }
        if self.code is not None:
            entry["code"] = self.code
        return entry


def _vectors() -> list[Vector]:
    valid = signed()
    v: list[Vector] = []

    def add(name: str, attack: str, data: bytes | dict[str, Any], code: str | None, **params: Any) -> None:
        v.append(Vector(name, attack, data if isinstance(data, bytes) else jcs(data), code, params))

    # --- accepted -------------------------------------------------------------------------------------------
    add("valid_basic", "none: a valid receipt for the deploy being verified", valid, None)
    add("valid_dsse_envelope", "none: the same receipt as a DSSE envelope", to_dsse(valid), None)
    pretty = json.dumps({k: valid[k] for k in reversed(list(valid))}, indent=4).encode() + b"\n"
    add(
        "valid_pretty_printed",
        "none: whitespace and member order are not signed; the JCS form of the content is",
        pretty,
        None,
    )
    add(
        "valid_sha256_commit",
        "none: a SHA-256 object name (64 hex digits)",
        signed(scope_sha=SHA256),
        None,
        sha=SHA256,
    )
    add(
        "valid_rotated_key_before_rotation",
        "none: a rotated key still verifies receipts issued before its rotation",
        signed("previous", issuedAt="2025-12-31T23:00:00Z", expiresAt="2026-01-01T01:00:00Z"),
        None,
        at="2025-12-31T23:30:00Z",
    )
    add(
        "valid_dev_key_allowed",
        "none: a development key, explicitly allowed",
        signed("development"),
        None,
        allowDevKeys=True,
    )
    add(
        "valid_within_clock_skew",
        "none: issued 60 s after the verifier's clock (the allowed skew)",
        signed(issuedAt="2026-02-28T16:01:00Z"),
        None,
        at="2026-02-28T16:00:00Z",
    )

    # --- format 1.1: requesterProof (issue 11) --------------------------------------------------------------
    proven = signed(version="1.1", requesterProof=PROOF)
    add(
        "valid_requester_proof",
        "none: format 1.1, the requester proven by an OIDC token",
        proven,
        None,
    )
    add(
        "valid_requester_proof_required",
        "none: format 1.1 with requesterProof, verified with requireOidc",
        proven,
        None,
        requireOidc=True,
    )
    add(
        "requester_not_proven",
        "downgrade: a format 1.0 receipt (requester not proven) where OIDC proof is required",
        valid,
        "requester_not_proven",
        requireOidc=True,
    )
    add(
        "requester_proof_in_1_0",
        "version confusion: requesterProof in a format 1.0 receipt",
        signed(requesterProof=PROOF),
        "malformed",
    )
    add(
        "requester_proof_edited_after_signing",
        "field outside signature: requesterProof.subject replaced",
        tamper(proven, lambda r: r["requesterProof"].__setitem__("subject", "repo:acme/other:ref:x")),
        "bad_signature",
    )
    add(
        "requester_proof_stripped_after_signing",
        "downgrade: requesterProof removed from a signed 1.1 receipt",
        tamper(proven, lambda r: r.pop("requesterProof")),
        "bad_signature",
    )
    add(
        "requester_proof_unknown_member",
        "unknown member inside requesterProof",
        signed(version="1.1", requesterProof={**PROOF, "verified": True}),
        "malformed",
    )

    # --- fields outside the signature -----------------------------------------------------------------------
    add(
        "status_edited_after_signing",
        "field outside signature: a DENIED receipt's status flipped to APPROVED",
        tamper(signed(status="DENIED"), lambda r: r.__setitem__("status", "APPROVED")),
        "bad_signature",
    )
    add(
        "expiry_extended_after_signing",
        "field outside signature: expiresAt pushed later after signing",
        tamper(valid, lambda r: r.__setitem__("expiresAt", "2026-02-28T23:00:00Z")),
        "bad_signature",
    )
    add(
        "commit_edited_after_signing",
        "approvals carried over to a changed commit by editing scope.sha",
        tamper(valid, lambda r: r["scope"].__setitem__("sha", "0" * 40)),
        "bad_signature",
        sha="0" * 40,
    )
    add(
        "approver_edited_after_signing",
        "field outside signature: approver replaced",
        tamper(valid, lambda r: r.__setitem__("approver", {"id": "U0CAROL", "email": "carol@example.com"})),
        "bad_signature",
    )
    add(
        "requester_edited_after_signing",
        "field outside signature: requester replaced",
        tamper(valid, lambda r: r.__setitem__("requester", "github:mallory")),
        "bad_signature",
    )
    add(
        "keyid_swapped_after_signing",
        "key confusion: keyId pointed at another trusted key",
        tamper(valid, lambda r: r["signature"].__setitem__("keyId", KEYS["development"].kid)),
        "bad_signature",
        allowDevKeys=True,
    )

    # --- signing-bytes ambiguity ----------------------------------------------------------------------------
    shifted = copy.deepcopy(valid)
    shifted["scope"]["environment"], shifted["scope"]["workflow"] = "productiondeploy", ".yml"

    def concat(r: dict[str, Any]) -> str:
        return "".join(r["scope"][f] for f in ("repo", "sha", "environment", "workflow"))

    assert concat(shifted) == concat(valid)  # a delimiter-free concatenation cannot tell them apart
    add(
        "ambiguous_concatenation_field_shift",
        "ambiguous concatenation: characters moved from workflow to environment leave a naive concatenation "
        "unchanged; the original signature must not verify",
        shifted,
        "bad_signature",
        environment="productiondeploy",
        workflow=".yml",
    )
    add(
        "signature_over_bare_json",
        "domain separation: a signature over the bare JCS bytes (no PAE) must not verify",
        raw_sign(valid, jcs({**base_receipt()})),
        "bad_signature",
    )
    add(
        "signature_over_other_payload_type",
        "domain separation: a DSSE signature made for another payload type",
        raw_sign(valid, pae("application/vnd.in-toto+json", jcs(base_receipt()))),
        "bad_signature",
    )
    unsigned_no_sig = {k: val for k, val in base_receipt().items() if k != "signature"}
    add(
        "signature_not_covering_alg_and_keyid",
        "field outside signature: a signature that omits the signature object (alg, keyId)",
        raw_sign(valid, pae(PAYLOAD_TYPE, jcs(unsigned_no_sig))),
        "bad_signature",
    )
    value = valid["signature"]["value"]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    # 64 bytes = 88 chars ending "X==": X carries 4 unused bits that canonical base64 sets to zero.
    noncanonical = value[:-3] + alphabet[alphabet.index(value[-3]) | 1] + "=="
    add(
        "signature_noncanonical_base64",
        "malleability: the signature re-encoded with non-zero padding bits",
        with_value(valid, noncanonical),
        "bad_signature",
    )
    add(
        "signature_urlsafe_base64",
        "malleability: the signature in base64url instead of standard base64",
        with_value(valid, value.replace("+", "-").replace("/", "_").rstrip("=")),
        "bad_signature",
    )
    add(
        "signature_truncated",
        "a truncated signature",
        with_value(valid, valid["signature"]["value"][:44]),
        "bad_signature",
    )
    add(
        "signature_from_other_key",
        "a trusted key id with a signature made by an untrusted key",
        tamper(
            sign(base_receipt("stranger"), "stranger"),
            lambda r: r["signature"].__setitem__("keyId", KEYS["primary"].kid),
        ),
        "bad_signature",
    )

    # --- status, version, algorithm -------------------------------------------------------------------------
    add(
        "signed_denied_accepted", "a genuinely signed DENIED receipt", signed(status="DENIED"), "not_approved"
    )
    add(
        "signed_pending_accepted",
        "a genuinely signed non-final status",
        signed(status="PENDING"),
        "not_approved",
    )
    add("status_lowercase", "status case confusion ('approved')", signed(status="approved"), "malformed")
    add("unknown_version", "an unknown format version", signed(version="2.0"), "unsupported_version")
    add("version_as_number", "version type confusion (integer 1)", signed(version=1), "unsupported_version")
    add(
        "version_missing",
        "a receipt without version",
        tamper(valid, lambda r: r.pop("version")),
        "malformed",
    )
    alg_none = base_receipt()
    alg_none["signature"]["alg"] = "none"
    add(
        "alg_none",
        "algorithm confusion: alg none with an empty signature",
        with_value(alg_none, ""),
        "unsupported_alg",
    )
    alg_hs = base_receipt()
    alg_hs["signature"]["alg"] = "HS256"
    mac = hmac.new(
        bytes(KEYS["primary"].signing_key.verify_key), signing_bytes(alg_hs), hashlib.sha256
    ).digest()
    add(
        "alg_hmac_with_public_key",
        "algorithm confusion: HS256 keyed with the (public) Ed25519 key",
        with_value(alg_hs, b64encode(mac)),
        "unsupported_alg",
    )
    alg_jose = base_receipt()
    alg_jose["signature"]["alg"] = "EdDSA"
    add(
        "alg_jose_name",
        "algorithm name confusion: JOSE 'EdDSA' instead of 'Ed25519'",
        sign(alg_jose),
        "unsupported_alg",
    )

    # --- keys -----------------------------------------------------------------------------------------------
    add(
        "revoked_key",
        "a receipt from a revoked key, issued while it was valid",
        signed("compromised", issuedAt="2025-08-01T10:00:00Z", expiresAt="2025-08-01T12:00:00Z"),
        "revoked_key",
        at="2025-08-01T10:30:00Z",
    )
    add(
        "unknown_key",
        "a receipt from a key not in the trusted keyset",
        sign(base_receipt("stranger"), "stranger"),
        "unknown_key",
    )
    add(
        "rotated_key_after_rotation",
        "a rotated (retired) key signing after its rotation",
        signed("previous"),
        "key_not_valid_at_issue",
    )
    add(
        "issued_before_key_created",
        "a receipt backdated before its key existed",
        signed(issuedAt="2025-12-31T23:00:00Z", expiresAt="2026-01-01T01:00:00Z"),
        "key_not_valid_at_issue",
        at="2025-12-31T23:30:00Z",
    )
    add("dev_key_refused", "a development key in production", signed("development"), "dev_key")

    # --- scope ----------------------------------------------------------------------------------------------
    add(
        "changed_commit",
        "approvals carried over to a changed commit",
        valid,
        "scope_mismatch:sha",
        sha="1" * 40,
    )
    add("changed_repo", "a receipt for another repository", valid, "scope_mismatch:repo", repo="acme/billing")
    add(
        "changed_environment",
        "a staging receipt presented for production",
        signed(scope_environment="staging"),
        "scope_mismatch:environment",
    )
    add(
        "changed_workflow",
        "a receipt for another workflow",
        valid,
        "scope_mismatch:workflow",
        workflow="release.yml",
    )
    add("commit_case_variant", "sha compared byte for byte", valid, "scope_mismatch:sha", sha=SHA.upper())
    add(
        "commit_abbreviated",
        "an abbreviated sha in the receipt",
        signed(scope_sha=SHA[:7]),
        "malformed",
        sha=SHA[:7],
    )

    # --- time -----------------------------------------------------------------------------------------------
    add("expired", "replay of an expired receipt", valid, "expired", at="2026-02-28T19:00:00Z")
    add("expired_at_boundary", "used at exactly expiresAt", valid, "expired", at="2026-02-28T18:00:00Z")
    add(
        "issued_in_future",
        "issued beyond the allowed 60 s clock skew",
        signed(issuedAt="2026-02-28T16:01:01Z"),
        "not_yet_valid",
        at="2026-02-28T16:00:00Z",
    )
    add(
        "lifetime_too_long",
        "a receipt valid for 30 days (bounds what a leaked retired key can do)",
        signed(expiresAt="2026-03-30T16:00:00Z"),
        "lifetime_too_long",
    )
    add(
        "expires_before_issued",
        "expiresAt before issuedAt",
        signed(expiresAt="2026-02-28T15:00:00Z"),
        "malformed",
    )
    add(
        "time_with_offset", "non-UTC time spelling", signed(issuedAt="2026-02-28T16:00:00+00:00"), "malformed"
    )
    add("time_with_fraction", "fractional seconds", signed(issuedAt="2026-02-28T16:00:00.5Z"), "malformed")

    # --- strict parsing -------------------------------------------------------------------------------------
    body = jcs(valid)
    add(
        "duplicate_status_member",
        "duplicate member names: a parser keeping the last 'status' would see APPROVED",
        b'{"status":"DENIED",' + body[1:],
        "malformed",
    )
    add(
        "unknown_top_level_member",
        "an unknown member a lax verifier might honour",
        tamper(valid, lambda r: r.__setitem__("override", "approved")),
        "malformed",
    )
    add(
        "unknown_scope_member",
        "an extra scope member (e.g. a branch wildcard)",
        signed(scope_branch="*"),
        "malformed",
    )
    add("float_in_receipt", "floats are not allowed anywhere", body.replace(b'"1.0"', b"1.0"), "malformed")
    add("nan_constant", "NaN is not JSON", body.replace(b'"1.0"', b"NaN"), "malformed")
    add("invalid_utf8", "bytes that are not UTF-8", body.replace(b"oncall@", b"oncall\xff@"), "malformed")
    add("utf8_bom", "a byte-order mark before the JSON", b"\xef\xbb\xbf" + body, "malformed")
    add("oversized", "a receipt larger than 64 KiB", body + b" " * (64 * 1024), "malformed")
    add("truncated_json", "a truncated receipt", body[: len(body) // 2], "malformed")
    add("not_an_object", "a JSON array instead of an object", b"[" + body + b"]", "malformed")
    add("empty_file", "an empty file", b"", "malformed")
    add(
        "signature_value_null",
        "a null signature value",
        with_value(valid, None),
        "malformed",
    )
    add("request_id_not_ulid", "a request id that is not req_ + ULID", signed(requestId="req_1"), "malformed")
    add(
        "approver_not_among_approvals",
        "an approver who did not approve",
        signed(approver={"id": "U0MALLORY", "email": "mallory@example.com"}),
        "malformed",
    )
    dup = base_receipt()["approvals"][1]
    add(
        "duplicate_approval",
        "quorum inflation: the same approver counted twice",
        signed(approvals=[dup, dict(dup)]),
        "malformed",
    )
    add(
        "bidi_override_in_repo",
        "trojan source: a right-to-left override in the repo name",
        signed(scope_repo="acme/\u202eecivres"),
        "malformed",
        repo="acme/\u202eecivres",
    )
    add(
        "control_char_in_environment",
        "a newline in the environment name",
        signed(scope_environment="production\n"),
        "malformed",
        environment="production\n",
    )

    # --- DSSE envelopes -------------------------------------------------------------------------------------
    env = to_dsse(valid)
    add(
        "dsse_payload_type_mismatch",
        "a DSSE envelope of another payload type",
        {**env, "payloadType": "application/vnd.in-toto+json"},
        "malformed",
    )
    add(
        "dsse_two_signatures",
        "a DSSE envelope with an extra signature",
        {
            **env,
            "signatures": [
                *env["signatures"],
                {"keyid": KEYS["stranger"].kid, "sig": env["signatures"][0]["sig"]},
            ],
        },
        "malformed",
    )
    pretty_payload = json.dumps(json.loads(canonical_json({**base_receipt()})), indent=1).encode()
    add(
        "dsse_noncanonical_payload",
        "a DSSE payload that is not the receipt's JCS form",
        {**env, "payload": b64encode(pretty_payload)},
        "malformed",
    )
    add(
        "dsse_keyid_mismatch",
        "a DSSE keyid that differs from the payload's keyId",
        {**env, "signatures": [{"keyid": KEYS["previous"].kid, "sig": env["signatures"][0]["sig"]}]},
        "malformed",
    )
    edited = base_receipt()
    edited["expiresAt"] = "2026-02-28T23:00:00Z"
    add(
        "dsse_payload_edited",
        "field outside signature, envelope form: payload edited, signature kept",
        {**env, "payload": b64encode(jcs(edited))},
        "bad_signature",
    )
    return v


def build() -> dict[str, bytes]:
    """Every generated file, name -> bytes (vectors, keyset.json, manifest.json)."""
    vectors = _vectors()
    names = [x.name for x in vectors]
    assert len(set(names)) == len(names), "duplicate vector names"
    keyset = PublicKeyset([k.public() for k in KEYS.values() if k.in_keyset])
    files = {f"{x.name}.json": x.data for x in vectors}
    files[KEYSET] = (json.dumps(keyset.to_jwks(), indent=2, sort_keys=True) + "\n").encode()
    manifest = {
        "description": "Keyturn receipt format 1.0 and 1.1 test vectors; see README.md",
        "payloadType": PAYLOAD_TYPE,
        "keyset": KEYSET,
        "maxSkewSeconds": 60,
        "testKeys": {
            k.name: {
                "seedDerivation": f'SHA-256("keyturn test vector key: {k.name}")',
                "kid": k.kid,
                "x": b64url_encode(bytes(k.signing_key.verify_key)),
                "inKeyset": k.in_keyset,
            }
            for k in KEYS.values()
        },
        "vectors": [x.manifest_entry() for x in vectors],
    }
    files[MANIFEST] = (json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=True) + "\n").encode()
    return files


def main(argv: list[str]) -> int:
    """Write the vectors, or with ``--check`` compare them with the files on disk."""
    files = build()
    if argv == ["--check"]:
        problems = []
        for name, data in sorted(files.items()):
            path = HERE / name
            if not path.exists():
                problems.append(f"missing {name}")
            elif path.read_bytes() != data:
                problems.append(f"differs {name}")
        stale = sorted(p.name for p in HERE.glob("*.json") if p.name not in files)
        problems += [f"stale {n}" for n in stale]
        for p in problems:
            print(p, file=sys.stderr)
        print(f"{'FAILED' if problems else 'OK'}: {len(files)} files checked", file=sys.stderr)
        return 1 if problems else 0
    if argv:
        print("usage: generate.py [--check]", file=sys.stderr)
        return 2
    for old in HERE.glob("*.json"):
        if old.name not in files:
            old.unlink()
    for name, data in files.items():
        (HERE / name).write_bytes(data)
    print(f"wrote {len(files)} files to {HERE}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
