#!/usr/bin/env bash
# Sets up everything `make demo` and `make test` need, idempotently:
# a Python 3.11+ virtualenv in .venv with Keyturn and its dev extras, a redis-server binary, and actionlint.
# Re-running is cheap: the venv is rebuilt only when pyproject.toml changes.
set -euo pipefail
cd "$(dirname "$0")/.."

need_root_install() {  # $1 = Debian package, $2 = what it is for
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: installing $1 with apt-get ($2)" >&2
    if ! apt-get install -y -q "$1" >/dev/null 2>&1; then
      apt-get update -q >/dev/null 2>&1 || true
      apt-get install -y -q "$1" >/dev/null
    fi
  else
    echo "bootstrap: $2 is missing. Install the Debian/Ubuntu package '$1' (sudo apt-get install $1) and re-run." >&2
    exit 1
  fi
}

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for cand in python3.13 python3.12 python3.11 python3; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      PY="$cand"; break
    fi
  done
fi
[ -n "$PY" ] || { echo "bootstrap: Python 3.11 or newer is required (apt-get install python3)" >&2; exit 1; }

if ! "$PY" -c 'import venv, ensurepip' >/dev/null 2>&1; then
  need_root_install python3-venv "Python's venv module"
fi

command -v redis-server >/dev/null 2>&1 || need_root_install redis-server "redis-server"

# kubectl with kustomize renders deploy/kubernetes in tests/test_kubernetes.py. Optional: those tests skip
# without it, so a non-root developer is told, not stopped. Debian's kubernetes-client has `kubectl kustomize`.
if ! command -v kubectl >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: installing kubernetes-client with apt-get (kubectl kustomize, for the Kubernetes tests)" >&2
    apt-get install -y -q kubernetes-client >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q kubernetes-client >/dev/null 2>&1; } \
      || echo "bootstrap: kubernetes-client could not be installed; the Kubernetes tests will skip" >&2
  else
    echo "bootstrap: kubectl is missing; tests/test_kubernetes.py will skip (apt-get install kubernetes-client)" >&2
  fi
fi

# nginx: only for the reverse-proxy test (tests/e2e/test_proxy.py), which skips with a message without it,
# so a missing nginx never fails the set-up. Installed when root; Debian's package may start its default
# site on port 80 where an init system runs (containers usually refuse that: policy-rc.d).
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: installing nginx with apt-get (the reverse-proxy test)" >&2
    apt-get install -y -q nginx >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null 2>&1 || true; apt-get install -y -q nginx >/dev/null 2>&1; } \
      || echo "bootstrap: nginx could not be installed; the reverse-proxy test will skip" >&2
  else
    echo "bootstrap: nginx is not installed (sudo apt-get install nginx); the reverse-proxy test will skip" >&2
  fi
fi

stamp=.venv/.keyturn-stamp
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "bootstrap: preparing .venv with $("$PY" --version)" >&2
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  # pip's output goes to a log, shown only if the install fails.
  if ! { .venv/bin/python -m pip install -q --upgrade pip && .venv/bin/python -m pip install -q -e '.[dev]'; } \
      > .venv/bootstrap.log 2>&1; then
    cat .venv/bootstrap.log >&2
    echo "bootstrap: installing dependencies failed (log above, also in .venv/bootstrap.log)" >&2
    exit 1
  fi
  echo "$want" > "$stamp"
fi

# actionlint for the CI templates' test: outside pyproject so that a platform without its wheel still gets a
# working .venv (the test then skips, saying why).
./scripts/install-actionlint.sh
