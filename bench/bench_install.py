"""What a CI job pays to install Keyturn's base (``keyturn request``, ``keyturn verify``), against a floor.

* ``keyturn``: ``pip install keyturn-*.whl`` (the wheel built from this checkout, no extras), fresh venv.
* ``floor``: ``pip install pynacl rfc8785`` (pyproject.toml's ranges) into a fresh venv: the two libraries the
  base needs, so the ratio shows what Keyturn itself adds.

Both draw from the same package index and pip cache; the venvs are created before the clock starts. Runs are
interleaved so drift affects both alike; each figure is the best run. Also printed: the distributions and the
size each venv gained. Target ratio <= 1.5 (issue 10). Usage: ``.venv/bin/python bench/bench_install.py
[--runs N]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness import build_wheel  # noqa: E402

TARGET = 1.5


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _timed_install(where: Path, targets: list[str]) -> tuple[float, int, int]:
    """Seconds to pip-install ``targets`` into a new venv, the distributions it added, the bytes it added."""
    venv = where / f"venv-{time.monotonic_ns()}"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = str(venv / "bin" / "python")

    def dists() -> int:
        out = subprocess.run(
            [python, "-m", "pip", "list", "--format", "json"], capture_output=True, check=True
        )
        return len(json.loads(out.stdout))

    before_dists, before_size = dists(), _size(venv)
    started = time.perf_counter()
    subprocess.run(
        [python, "-m", "pip", "install", "-q", *targets], check=True, capture_output=True, timeout=900
    )
    elapsed = time.perf_counter() - started
    return elapsed, dists() - before_dists, _size(venv) - before_size


def main(argv: list[str] | None = None) -> int:
    """Print the best install time of the base and of its floor, and their ratio; exit 1 over target."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    floor_targets = list(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(tmp)
        wheel = build_wheel(where / "wheels")
        results: dict[str, list[tuple[float, int, int]]] = {"floor": [], "keyturn": []}
        for run in range(args.runs):
            order = ["floor", "keyturn"] if run % 2 == 0 else ["keyturn", "floor"]
            for name in order:
                targets = floor_targets if name == "floor" else [str(wheel)]
                results[name].append(_timed_install(where, targets))
    best = {name: min(r[0] for r in runs) for name, runs in results.items()}
    for name, runs in results.items():
        _, count, size = runs[0]
        print(
            f"{name:8} best {best[name]:6.2f} s of {args.runs}  +{count} distributions  +{size / 1e6:.1f} MB"
        )
    ratio = best["keyturn"] / best["floor"]
    print(f"ratio keyturn/floor = {ratio:.2f} (target <= {TARGET})")
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
