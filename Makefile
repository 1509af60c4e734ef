# The README's commands. `make demo` sets everything up and runs the main job;
# `make test` runs the test suite. Both are idempotent.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)
export GX_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_HOME ?= $(CURDIR)/.fourm/prefect
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 90

.PHONY: setup browser demo test test-fast lint bench gpu-check services-up services-down clean

setup: $(VENV)/.installed

# torch==2.13.0 first: it is a local CPU wheel; a looser spec downloads a CUDA build.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	$(MAKE) --no-print-directory browser
	touch $@

# Debian's Chromium for the UI test (tests/e2e): Playwright drives it and never downloads a browser.
browser:
	@command -v chromium >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y --no-install-recommends chromium >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -qq && $$SUDO apt-get install -y --no-install-recommends chromium; }; }
	@chromium --version

services-up: setup
	fourm services up

services-down:
	-fourm services down

# Main job: local S3 and Prefect servers, the DVC pipeline run as a Prefect flow (watch it
# at http://127.0.0.1:4200: services up starts that server, the flow finds it), results pushed.
demo: services-up
	python -m flows.pipeline

test: setup
	python -m pytest -q

test-fast: setup
	python -m pytest -q -m "unit"

lint: setup
	ruff check fourm flows tests

bench: setup
	fourm bench data

# On a machine with a CUDA GPU: tests/cuda and the GPU benchmarks, under that machine's python3
# and torch (docs/gpu.md); outputs in .fourm/gpu-check.
gpu-check:
	infra/gpu/check.sh

# Removes the pipeline's outputs and the local S3 data; keeps the registry (.fourm/registry.db).
clean: services-down
	rm -rf data .fourm/services .fourm/prefect .fourm/runs .fourm/reproduce
	-git worktree prune
