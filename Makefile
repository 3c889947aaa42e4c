# The two commands of the README: `make demo` and `make test`. Each does its own set-up.
PY := .venv/bin/python
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: demo test lint bootstrap bench vectors clean

bootstrap:
	@./scripts/bootstrap.sh

demo: bootstrap
	@.venv/bin/keyturn dev

test: bootstrap lint
	$(PY) -m pytest -q

lint: bootstrap
	$(PY) -m ruff check bot signer tests bench
	$(PY) -m ruff format --check bot signer tests bench
	$(PY) -m mypy

bench: bootstrap
	$(PY) bench/run_all.py

vectors: bootstrap
	$(PY) tests/vectors/generate.py

clean:
	rm -rf .venv .pytest_cache .ruff_cache .mypy_cache
