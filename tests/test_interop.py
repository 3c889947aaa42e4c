"""Interoperability: Keyturn receipts verify with independent Ed25519 implementations.

Node's built-in ``crypto`` recomputes the signing bytes itself (JCS is ECMAScript's JSON serialization with
sorted keys, wrapped in DSSE PAE) and verifies with the key taken from the JWKS. OpenSSL verifies the same
signature over the PAE bytes with the key converted from the JWK. Each skips, saying why, when its tool is
missing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from keyturn.signer.receipt import b64decode, b64url_decode, signing_bytes
from tests.vectors import load

NODE_VERIFY = r"""
const crypto = require("crypto");
const fs = require("fs");
const [receiptPath, jwksPath] = process.argv.slice(1);
const receipt = JSON.parse(fs.readFileSync(receiptPath, "utf8"));
const jwks = JSON.parse(fs.readFileSync(jwksPath, "utf8"));
// RFC 8785: ECMAScript serialization, object members sorted by UTF-16 code units.
function jcs(v) {
  if (Array.isArray(v)) return "[" + v.map(jcs).join(",") + "]";
  if (v !== null && typeof v === "object")
    return "{" + Object.keys(v).sort().map(k => JSON.stringify(k) + ":" + jcs(v[k])).join(",") + "}";
  return JSON.stringify(v);
}
const sigB64 = receipt.signature.value;
const unsigned = {...receipt, signature: {...receipt.signature}};
delete unsigned.signature.value;
const body = Buffer.from(jcs(unsigned), "utf8");
const type = Buffer.from("application/vnd.keyturn.receipt+json", "utf8");
const pae = Buffer.concat([
  Buffer.from(`DSSEv1 ${type.length} `), type, Buffer.from(` ${body.length} `), body]);
const jwk = jwks.keys.find(k => k.kid === receipt.signature.keyId);
if (!jwk) { console.log("unknown key"); process.exit(3); }
const key = crypto.createPublicKey({key: {kty: jwk.kty, crv: jwk.crv, x: jwk.x}, format: "jwk"});
const ok = crypto.verify(null, pae, key, Buffer.from(sigB64, "base64"));
console.log(ok ? "valid" : "invalid");
process.exit(ok ? 0 : 1);
"""

# DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410); the 32-byte key follows.
ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the Node interop check cannot run")
    return node


def _run_node(node: str, receipt: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [node, "-e", NODE_VERIFY, str(receipt), str(load.keyset_path())],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_node_crypto_verifies_a_keyturn_receipt() -> None:
    proc = _run_node(_node(), load.vector("valid_basic").path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "valid"


def test_node_crypto_rejects_a_tampered_receipt() -> None:
    proc = _run_node(_node(), load.vector("status_edited_after_signing").path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "invalid"


def _openssl() -> str:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed: the OpenSSL interop check cannot run")
    helptext = subprocess.run([openssl, "pkeyutl", "-help"], capture_output=True, text=True, timeout=30)
    if "-rawin" not in helptext.stdout + helptext.stderr:
        pytest.skip("this openssl lacks 'pkeyutl -rawin' (OpenSSL 3.0+ needed for Ed25519 verification)")
    return openssl


@pytest.mark.parametrize(("name", "valid"), [("valid_basic", True), ("expiry_extended_after_signing", False)])
def test_openssl_verifies_the_signature_over_the_pae_bytes(tmp_path: Path, name: str, valid: bool) -> None:
    openssl = _openssl()
    receipt = json.loads(load.vector(name).data)
    jwk = next(
        k
        for k in json.loads(load.keyset_path().read_bytes())["keys"]
        if k["kid"] == receipt["signature"]["keyId"]
    )
    der = ED25519_SPKI_PREFIX + b64url_decode(jwk["x"])
    (tmp_path / "pub.der").write_bytes(der)
    (tmp_path / "msg.bin").write_bytes(signing_bytes(receipt))
    (tmp_path / "sig.bin").write_bytes(b64decode(receipt["signature"]["value"]))
    proc = subprocess.run(
        [openssl, "pkeyutl", "-verify", "-pubin", "-inkey", "pub.der", "-keyform", "DER", "-rawin",
         "-in", "msg.bin", "-sigfile", "sig.bin"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=30,
    )  # fmt: skip
    assert (proc.returncode == 0) is valid, proc.stdout + proc.stderr
    assert ("Signature Verified Successfully" in proc.stdout) is valid
