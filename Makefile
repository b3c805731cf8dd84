# The two commands: `make serve` (install, then run the server on the default model) and
# `make test` (install everything the tests need, then run them). Both work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SERVER_STAMP := $(VENV)/.server-installed
DEV_STAMP := $(VENV)/.dev-installed
PYTEST_ARGS ?=

.PHONY: install install-dev system-deps serve test lint typecheck protos check-protos clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# torch is pinned to the CPU build first: an unpinned torch pulls a multi-GB CUDA build.
$(SERVER_STAMP): $(BIN)/python pyproject.toml client/pyproject.toml
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ./client -e .
	touch $@

$(DEV_STAMP): $(SERVER_STAMP)
	$(BIN)/pip install -q torch==2.13.0 -e ./client -e '.[test,dev]'
	touch $@

node_modules/.bin/buf: package.json package-lock.json
	npm ci --no-audit --no-fund --silent

install: $(SERVER_STAMP)

install-dev: $(DEV_STAMP) node_modules/.bin/buf

serve: $(SERVER_STAMP)
	$(BIN)/embedlens serve

# nginx and Prometheus (from apt) are real peers in the deployment tests.
system-deps:
	bash scripts/install_system_deps.sh

test: install-dev system-deps
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(DEV_STAMP)
	$(BIN)/ruff check server client/embedlens_client tests scripts bench docker
	$(BIN)/ruff format --check server client/embedlens_client tests scripts bench docker

typecheck: $(DEV_STAMP)
	$(BIN)/mypy

protos: $(DEV_STAMP)
	$(BIN)/python scripts/gen_protos.py

check-protos: $(DEV_STAMP)
	$(BIN)/python scripts/gen_protos.py --check

clean:
	rm -rf $(VENV) node_modules cache .pytest_cache .mypy_cache .ruff_cache
