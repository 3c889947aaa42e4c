"""``keyturn verify`` wall time against its floor, measured in the same run.

* ``verify``: the real ``keyturn verify`` console script (a fresh process, as CI runs it) on the valid golden
  vector with its keyset file.
* ``floor``: a fresh interpreter that only imports PyNaCl and verifies one Ed25519 signature (the same one).

Both run N times, interleaved so drift affects them alike; each figure is the best run. Target ratio <= 1.25.
Usage: ``.venv/bin/python bench/bench_verify.py [--runs N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "tests" / "vectors"
TARGET = 1.25

FLOOR = """
import sys
from nacl.signing import VerifyKey
VerifyKey(bytes.fromhex(sys.argv[1])).verify(bytes.fromhex(sys.argv[2]), bytes.fromhex(sys.argv[3]))
"""


def _floor_args() -> list[str]:
    """The floor's inputs (key, signed bytes, signature) from the valid vector, computed before timing."""
    sys.path.insert(0, str(ROOT))
    from keyturn.signer.receipt import b64decode, b64url_decode, signing_bytes

    receipt = json.loads((VECTORS / "valid_basic.json").read_bytes())
    jwks = json.loads((VECTORS / "keyset.json").read_bytes())
    jwk = next(k for k in jwks["keys"] if k["kid"] == receipt["signature"]["keyId"])
    return [
        b64url_decode(jwk["x"]).hex(),
        signing_bytes(receipt).hex(),
        b64decode(receipt["signature"]["value"]).hex(),
    ]


def _verify_cmd() -> list[str]:
    script = shutil.which("keyturn", path=str(Path(sys.executable).parent))
    base = [script] if script else [sys.executable, "-m", "keyturn"]
    manifest = json.loads((VECTORS / "manifest.json").read_text())
    params = next(v for v in manifest["vectors"] if v["name"] == "valid_basic")["params"]
    return [
        *base, "verify", str(VECTORS / "valid_basic.json"), "--keys", str(VECTORS / "keyset.json"),
        "--repo", params["repo"], "--sha", params["sha"], "--env", params["environment"],
        "--workflow", params["workflow"], "--at", params["at"],
    ]  # fmt: skip


def _time(cmd: list[str], cwd: str, env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr.decode()}")
    return elapsed


def main(argv: list[str]) -> int:
    """Measure both, print them and the ratio; exit 0 (the figure is reported, not asserted)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args(argv)
    verify = _verify_cmd()
    floor = [sys.executable, "-c", FLOOR, *_floor_args()]
    with tempfile.TemporaryDirectory() as cwd:  # outside the checkout: the vectors' keyset is then accepted
        # Byte-compiled modules, as an installed package has them (the Makefile sets PYTHONDONTWRITEBYTECODE;
        # a private cache prefix keeps the .pyc files out of the tree). Both commands get the same treatment.
        env = {
            k: v for k, v in os.environ.items() if k not in ("GITHUB_WORKSPACE", "PYTHONDONTWRITEBYTECODE")
        }
        env["PYTHONPYCACHEPREFIX"] = os.path.join(cwd, "pycache")
        for cmd in (verify, floor):  # warm the page cache and .pyc files
            _time(cmd, cwd, env)
        v_times, f_times = [], []
        for _ in range(args.runs):
            v_times.append(_time(verify, cwd, env))
            f_times.append(_time(floor, cwd, env))
    v, f = min(v_times) * 1000, min(f_times) * 1000
    ratio = v / f
    print(f"keyturn verify: best {v:.1f} ms, median {sorted(v_times)[len(v_times) // 2] * 1000:.1f} ms")
    print(f"floor (import PyNaCl + verify one signature): best {f:.1f} ms")
    verdict = "ok" if ratio <= TARGET else "ABOVE TARGET"
    print(f"verify: {v:.1f} ms vs floor {f:.1f} ms  ratio {ratio:.2f} (target <= {TARGET}) {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
