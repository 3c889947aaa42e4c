"""Run every benchmark in bench/ (each prints its own floor and ratio) and echo their output.

Usage: ``make bench`` or ``.venv/bin/python bench/run_all.py [name ...]``. Each script is a separate process
so one's warm caches do not flatter another.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    """Run the named benchmarks (default: all ``bench_*.py``); return non-zero if any failed."""
    scripts = sorted(HERE.glob("bench_*.py"))
    if argv:
        scripts = [s for s in scripts if any(name in s.stem for name in argv)]
    failed = 0
    for script in scripts:
        print(f"=== {script.stem}", flush=True)
        started = time.monotonic()
        result = subprocess.run([sys.executable, str(script)], cwd=HERE.parent, check=False)
        print(
            f"--- {script.stem}: exit {result.returncode} in {time.monotonic() - started:.1f}s\n", flush=True
        )
        failed += result.returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
