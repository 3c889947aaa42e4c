"""Private key files and the public keyset: permissions, overwrite refusal, rotation, revocation, JWKS."""

from __future__ import annotations

import json
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from keyturn.signer.errors import KeyFileError, KeysetError, KeyturnError
from keyturn.signer.keys import SigningKeyset, sign_receipt
from keyturn.signer.keyset import PublicKeyset, key_id, thumbprint
from keyturn.signer.receipt import b64url_decode, b64url_encode
from tests.vectors import load

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def test_rfc7638_thumbprint_of_rfc8037_example_key() -> None:
    # RFC 8037 Appendix A.3: the thumbprint of the example Ed25519 public key.
    x = b64url_decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
    assert thumbprint(x) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def test_generate_writes_0600_and_refuses_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    keys = SigningKeyset.generate(path, now=T0)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = json.loads(path.read_text())
    assert [k["status"] for k in doc["keys"]] == ["active"]
    assert doc["keys"][0]["kid"] == keys.active_kid == thumbprint(b64url_decode(doc["keys"][0]["x"]))
    before = path.read_bytes()
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        SigningKeyset.generate(path, now=T0)
    assert path.read_bytes() == before


def test_dev_keys_are_marked_in_their_id(tmp_path: Path) -> None:
    keys = SigningKeyset.generate(tmp_path / "dev.json", dev=True, now=T0)
    assert keys.active_kid.startswith("dev-")
    pub = keys.public_keyset().get(keys.active_kid)
    assert pub is not None
    assert pub.is_dev


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o602])
def test_load_refuses_group_or_other_access(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "keys.json"
    SigningKeyset.generate(path, now=T0)
    os.chmod(path, mode)
    with pytest.raises(KeyFileError, match="chmod 600") as exc:
        SigningKeyset.load(path)
    assert exc.value.code == "key_file"
    os.chmod(path, 0o400)
    SigningKeyset.load(path)  # owner-only read is fine


def _write(path: Path, doc: object) -> Path:
    path.write_text(json.dumps(doc))
    os.chmod(path, 0o600)
    return path


def _jwk(seed: bytes, status: str = "active", **extra: str) -> dict[str, str]:
    vk = bytes(SigningKey(seed).verify_key)
    return {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": b64url_encode(vk),
        "d": b64url_encode(seed),
        "kid": key_id(vk),
        "status": status,
        "createdAt": "2026-01-01T00:00:00Z",
        **extra,
    }


@pytest.mark.parametrize(
    ("doc", "fragment"),
    [
        ({"keys": []}, "non-empty"),
        ({"keys": [_jwk(b"\x01" * 32), _jwk(b"\x02" * 32)]}, "exactly one active"),
        ({"keys": [_jwk(b"\x01" * 32, "rotated", rotatedAt="2026-01-02T00:00:00Z")]}, "exactly one active"),
        (
            {"keys": [{**_jwk(b"\x01" * 32), "d": b64url_encode(b"\x02" * 32)}]},
            "x is not the public key of d",
        ),
        ({"keys": [{**_jwk(b"\x01" * 32), "kid": "someone-else"}]}, "thumbprint"),
        ({"keys": [{**_jwk(b"\x01" * 32), "crv": "P-256"}]}, "Ed25519"),
        ({"keys": [{k: v for k, v in _jwk(b"\x01" * 32).items() if k != "d"}]}, "lacks its private part"),
    ],
)
def test_load_refuses_bad_key_files(tmp_path: Path, doc: object, fragment: str) -> None:
    with pytest.raises(KeyFileError, match=fragment):
        SigningKeyset.load(_write(tmp_path / "keys.json", doc))


def test_load_refuses_non_json_without_echoing_it(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text('{"keys": [{"d": "SECRETSEED"')
    os.chmod(path, 0o600)
    with pytest.raises(KeyFileError) as exc:
        SigningKeyset.load(path)
    assert "SECRETSEED" not in str(exc.value)


def test_rotate_retires_the_active_key_and_drops_its_private_part(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    first = SigningKeyset.generate(path, now=T0)
    second = SigningKeyset.rotate(path, T0 + timedelta(days=30))
    assert second.active_kid != first.active_kid
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = json.loads(path.read_text())
    old, new = doc["keys"]
    assert old["kid"] == first.active_kid
    assert old["status"] == "rotated"
    assert old["rotatedAt"] == "2026-03-31T09:00:00Z"
    assert "d" not in old
    assert "d" in new
    assert SigningKeyset.load(path).active_kid == second.active_kid
    pub = second.public_keyset().get(first.active_kid)
    assert pub is not None
    assert pub.status == "rotated"


def test_revoke_semantics(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    first = SigningKeyset.generate(path, now=T0)
    with pytest.raises(KeyFileError, match="rotate"):
        SigningKeyset.revoke(path, first.active_kid, T0)
    with pytest.raises(KeyFileError) as exc:
        SigningKeyset.revoke(path, "nope", T0)
    assert exc.value.code == "unknown_key"
    SigningKeyset.rotate(path, T0 + timedelta(hours=1))
    revoked = SigningKeyset.revoke(path, first.active_kid, T0 + timedelta(hours=2))
    again = SigningKeyset.revoke(path, first.active_kid, T0 + timedelta(hours=3))
    for ks in (revoked, again):
        pub = ks.public_keyset().get(first.active_kid)
        assert pub is not None
        assert pub.status == "revoked"
        assert pub.revoked_at == T0 + timedelta(hours=2)


def test_public_keyset_round_trip_and_refuses_private_material(tmp_path: Path) -> None:
    keys = SigningKeyset.generate(tmp_path / "k.json", now=T0)
    jwks = keys.public_keyset().to_jwks()
    assert jwks["keys"][0]["use"] == "sig"
    assert jwks["keys"][0]["alg"] == "EdDSA"
    assert "d" not in jwks["keys"][0]
    again = PublicKeyset.from_jwks(json.dumps(jwks).encode())
    assert again.to_jwks() == jwks
    with pytest.raises(KeysetError, match="private key material"):
        PublicKeyset.from_jwks((tmp_path / "k.json").read_bytes())


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda k: k.update(kid="x" * 43), "thumbprint"),
        (lambda k: k.update(status="trusted"), "status"),
        (lambda k: k.update(status="rotated"), "rotatedAt"),
        (lambda k: k.update(x=k["x"] + "A"), "x"),
        (lambda k: k.update(alg="ES256"), "EdDSA"),
        (lambda k: k.pop("createdAt"), "createdAt"),
    ],
)
def test_public_keyset_refusals(mutate: object, fragment: str) -> None:
    jwks = json.loads(load.keyset_path().read_bytes())
    mutate(jwks["keys"][0])  # type: ignore[operator]
    with pytest.raises(KeysetError, match=fragment):
        PublicKeyset.from_jwks(jwks)


def test_sign_receipt_refuses_a_receipt_naming_another_key(tmp_path: Path) -> None:
    keys = SigningKeyset.generate(tmp_path / "k.json", now=T0)
    unsigned = json.loads(load.vector("valid_basic").data)
    del unsigned["signature"]["value"]
    with pytest.raises(KeyturnError) as exc:
        sign_receipt(keys, unsigned)
    assert exc.value.code == "key_mismatch"


def test_repr_never_shows_private_material(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    keys = SigningKeyset.generate(path, now=T0)
    seed = json.loads(path.read_text())["keys"][0]["d"]
    assert seed not in repr(keys)
    assert keys.active_kid in repr(keys)
