"""Read the generated vectors (for tests): the manifest, the keyset, and each vector's verify parameters."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

from keyturn.signer.keyset import PublicKeyset
from keyturn.signer.receipt import Scope, parse_time

VECTORS_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class LoadedVector:
    """One vector from manifest.json with its bytes and parsed parameters."""

    name: str
    path: Path
    data: bytes
    code: str | None
    attack: str
    scope: Scope
    at: str
    allow_dev_keys: bool
    require_oidc: bool = False

    @property
    def now(self) -> datetime:
        """The verification time as a datetime."""
        return parse_time(self.at)


@cache
def manifest() -> dict[str, Any]:
    """The parsed manifest.json."""
    data: dict[str, Any] = json.loads((VECTORS_DIR / "manifest.json").read_text())
    return data


def keyset_path() -> Path:
    """Path of the vectors' public keyset."""
    return VECTORS_DIR / str(manifest()["keyset"])


def keyset() -> PublicKeyset:
    """The vectors' public keyset."""
    return PublicKeyset.from_jwks(keyset_path().read_bytes())


def vectors() -> list[LoadedVector]:
    """Every vector listed in the manifest."""
    out = []
    for v in manifest()["vectors"]:
        p = v["params"]
        path = VECTORS_DIR / v["file"]
        out.append(
            LoadedVector(
                name=v["name"],
                path=path,
                data=path.read_bytes(),
                code=v.get("code"),
                attack=v["attack"],
                scope=Scope(p["repo"], p["sha"], p["environment"], p["workflow"]),
                at=p["at"],
                allow_dev_keys=bool(p["allowDevKeys"]),
                require_oidc=bool(p.get("requireOidc", False)),
            )
        )
    return out


def vector(name: str) -> LoadedVector:
    """The vector called ``name``."""
    return next(v for v in vectors() if v.name == name)
