# One command runs the demo, one runs the tests; everything else is a helper of those two.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test lint typecheck unit proto proto-check demo chaos bench bench-apiserver bench-informers bench-provisioner bench-combined clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

lint: venv
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check common sidecars proto/__init__.py testbed tests bench deploy
	$(VENV)/bin/ruff format --check common sidecars testbed tests bench deploy || \
	  (echo "run: $(VENV)/bin/ruff format common sidecars testbed tests bench deploy"; exit 1)

typecheck: venv
	$(VENV)/bin/mypy

unit: venv
	$(VENV)/bin/pytest

test: venv lint typecheck shellcheck unit

proto: venv
	$(PY) -m proto.generate

proto-check: venv
	$(PY) -m proto.generate --check

demo: venv
	$(PY) -m testbed.demo

# The fault-injection soak: churn plus scheduled faults against the real sidecars, then the invariants
# (exit 0 only if all hold). SEED=N gives the same schedule again; DURATION=30s for a short run
# (the 30 s run is part of `make test`, through tests/chaos).
SEED ?= 1
DURATION ?= 3m
chaos: venv
	$(PY) -m testbed.chaos --duration $(DURATION) --seed $(SEED)

bench: venv
	$(PY) -m bench

bench-apiserver: venv
	$(PY) -m bench.apiserver_bench

bench-informers: venv
	$(PY) -m bench.informer_memory

bench-provisioner: venv
	$(PY) -m bench.provisioner_bench

bench-combined: venv
	$(PY) -m bench.combined_bench

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache

# The container image (needs docker or podman, which CI machines lack; the Dockerfile is tested).
IMAGE_REGISTRY ?= localhost/python-csi-sidecars
IMAGE_TAG ?= dev
CONTAINER_ENGINE ?= $(shell command -v docker 2>/dev/null || command -v podman 2>/dev/null)
SIDECARS := csi-provisioner csi-attacher csi-resizer csi-node-driver-registrar livenessprobe

.PHONY: image shellcheck e2e
image:
	@test -n "$(CONTAINER_ENGINE)" || { echo "make image needs docker or podman (set CONTAINER_ENGINE)"; exit 1; }
	@for target in $(SIDECARS); do \
	  echo "building $(IMAGE_REGISTRY)/$$target:$(IMAGE_TAG)"; \
	  $(CONTAINER_ENGINE) build -f deploy/Dockerfile --target $$target -t $(IMAGE_REGISTRY)/$$target:$(IMAGE_TAG) . || exit 1; \
	done

shellcheck: venv
	$(VENV)/bin/shellcheck deploy/kind/e2e.sh

e2e:
	IMAGE_REGISTRY=$(IMAGE_REGISTRY) IMAGE_TAG=$(IMAGE_TAG) CONTAINER_ENGINE=$(CONTAINER_ENGINE) deploy/kind/e2e.sh
