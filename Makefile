# One command runs the demo, one runs the tests; everything else is a helper of those two.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test lint typecheck unit proto proto-check demo bench bench-apiserver bench-informers clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

lint: venv
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check common sidecars proto/__init__.py testbed tests bench
	$(VENV)/bin/ruff format --check common sidecars testbed tests bench || \
	  (echo "run: $(VENV)/bin/ruff format common sidecars testbed tests bench"; exit 1)

typecheck: venv
	$(VENV)/bin/mypy

unit: venv
	$(VENV)/bin/pytest

test: venv lint typecheck unit

proto: venv
	$(PY) -m proto.generate

proto-check: venv
	$(PY) -m proto.generate --check

demo: venv
	$(PY) -m testbed.demo

bench: venv
	$(PY) -m bench

bench-apiserver: venv
	$(PY) -m bench.apiserver_bench

bench-informers: venv
	$(PY) -m bench.informer_memory

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
