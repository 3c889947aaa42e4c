#!/usr/bin/env bash
# Regenerates deploy/requirements-ci.txt: the exact, hash-pinned packages `keyturn verify` and
# `keyturn request` need in a CI job (PyNaCl, rfc8785 and their dependencies), for Linux x86_64 CPython
# 3.11-3.13. Usage: scripts/pin-ci-requirements.sh [PYNACL_VERSION RFC8785_VERSION]
# Downloads through pip's configured index; review the diff before committing.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=".venv/bin/python -m pip"
nacl="${1:-$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("pynacl"))')}"
jcs="${2:-$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("rfc8785"))')}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
for py in 3.11 3.12 3.13; do
  $PIP download -q "pynacl==$nacl" "rfc8785==$jcs" --only-binary=:all: --implementation cp \
    --python-version "$py" --platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$tmp/dl"
done
.venv/bin/python - "$tmp/dl" > deploy/requirements-ci.txt <<'PY'
import hashlib, pathlib, re, sys
files = sorted(pathlib.Path(sys.argv[1]).iterdir())
by_pkg: dict[tuple[str, str], list[str]] = {}
for f in files:
    name, version = f.name.split("-")[:2]
    key = (re.sub(r"[-_.]+", "-", name).lower(), version)
    by_pkg.setdefault(key, []).append(hashlib.sha256(f.read_bytes()).hexdigest())
print("# What a CI job installs to run `keyturn verify` / `keyturn request`, pinned by hash (pip --require-hashes).")
print("# Linux x86_64, CPython 3.11-3.13. Regenerate with scripts/pin-ci-requirements.sh; see README, Install.")
for (name, version), hashes in sorted(by_pkg.items()):
    lines = [f"{name}=={version}"] + [f"    --hash=sha256:{h}" for h in sorted(set(hashes))]
    print(" \\\n".join(lines))
PY
echo "wrote deploy/requirements-ci.txt" >&2
