# The two commands of the README: `make demo` and `make test`. Each does its own set-up.
PY := .venv/bin/python
# keyturn/bot, keyturn/signer and keyturn/emulator are links to the source folders: lint each file once.
LINT_PATHS := bot signer emulator keyturn/__init__.py keyturn/__main__.py keyturn/cli.py tests bench
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: demo test faults lint bootstrap bench vectors dist clean

bootstrap:
	@./scripts/bootstrap.sh

demo: bootstrap
	@.venv/bin/keyturn dev

test: bootstrap lint
	$(PY) -m pytest -q --ignore=tests/faults

# Real processes broken on purpose (docs/reliability.md): a few minutes, so apart from `make test`; CI runs both.
faults: bootstrap
	$(PY) -m pytest -q tests/faults

lint: bootstrap
	$(PY) -m ruff check $(LINT_PATHS)
	$(PY) -m ruff format --check $(LINT_PATHS)
	$(PY) -m mypy

bench: bootstrap
	$(PY) bench/run_all.py

vectors: bootstrap
	$(PY) tests/vectors/generate.py

# sdist and wheel in dist/, metadata checked (twine check --strict), with their SHA-256 sums (dist/SHA256SUMS)
# for the release page: a CI job installs the wheel only after checking its hash (README, "Install").
dist: bootstrap
	rm -rf dist build
	$(PY) -m build --sdist --wheel --outdir dist .
	$(PY) -m twine check --strict dist/*
	cd dist && sha256sum *.whl *.tar.gz > SHA256SUMS && cat SHA256SUMS

clean:
	rm -rf .venv .pytest_cache .ruff_cache .mypy_cache dist build
