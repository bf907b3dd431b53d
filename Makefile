# Regio — one-machine developer workflow.
#   make run    start the whole platform (nats-server, PostgreSQL, billing, dashboard-api,
#               workers, gateway) with real parts, and print how to call it
#   make test   install what is needed and run unit, integration and e2e tests
#   make lint   ruff + mypy
#   make bench  the worker against llama-cpp-python and llama.cpp's llama-server on the same
#               model (bench-model), the routing layer against LiteLLM in front of one upstream
#               (bench-overhead), billing's reserve latency and settlements/s (bench-billing),
#               and the per-token cost of grammar-constrained decoding (bench-grammar)
#   make proto  generate protobuf/gRPC stubs into build/proto (not committed)

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
DEPS_STAMP := $(VENV)/.deps-stamp
PROTO_OUT := build/proto
PROTO_FILES := $(shell find proto -name '*.proto')
PROTO_STAMP := $(PROTO_OUT)/.stamp
SOURCE_ROOTS := services/common services/gateway services/worker services/billing \
	services/dashboard-api services/devstack $(PROTO_OUT)

.PHONY: all install proto tools run test test-unit test-integration test-e2e lint bench \
	bench-model bench-overhead bench-billing bench-grammar clean

all: install proto

$(VENV)/bin/activate:
	$(PYTHON) -m venv $(VENV)

# pip >= 25.1 understands PEP 735 dependency groups (--group).
$(DEPS_STAMP): pyproject.toml $(VENV)/bin/activate
	@echo ">> installing dependencies (first time: llama-cpp-python compiles, ~4-5 minutes)"
	$(PIP) install --quiet --upgrade "pip>=25.1"
	$(PIP) install --progress-bar on --group dev
	@# The services run from the source tree: a .pth file puts every service folder and the
	@# generated stubs on the virtualenv's import path.
	@site=$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
		rm -f $$site/regio-dev.pth; \
		for d in $(SOURCE_ROOTS); do echo "$(CURDIR)/$$d" >> $$site/regio-dev.pth; done
	@# `regio admin ...`: the dashboard API's command-line client.
	@printf '#!/bin/sh\nexec "%s" -m regio_dashboard.cli "$$@"\n' "$(CURDIR)/$(PY)" > $(VENV)/bin/regio
	@chmod +x $(VENV)/bin/regio
	touch $@

install: $(DEPS_STAMP)

$(PROTO_STAMP): $(PROTO_FILES) $(DEPS_STAMP)
	rm -rf $(PROTO_OUT) && mkdir -p $(PROTO_OUT)
	$(PY) -m grpc_tools.protoc -Iproto --python_out=$(PROTO_OUT) --grpc_python_out=$(PROTO_OUT) \
		--plugin=protoc-gen-mypy=$(VENV)/bin/protoc-gen-mypy \
		--plugin=protoc-gen-mypy_grpc=$(VENV)/bin/protoc-gen-mypy_grpc \
		--mypy_out=$(PROTO_OUT) --mypy_grpc_out=$(PROTO_OUT) $(PROTO_FILES)
	touch $@

proto: $(PROTO_STAMP)

run: install proto
	$(PY) -m regio_devstack

# System tools the tests need: kubectl renders the kustomize overlays (tests/unit/deploy).
# Installed from Debian only when missing (CI runs on a fresh machine, as root).
tools:
	@command -v kubectl >/dev/null 2>&1 || { apt-get update && apt-get install -y kubernetes-client; }

test: install proto tools
	$(PY) -m pytest -q tests/unit tests/integration tests/e2e

test-unit: install proto tools
	$(PY) -m pytest -q tests/unit

test-integration: install proto
	$(PY) -m pytest -q tests/integration

test-e2e: install proto
	$(PY) -m pytest -q tests/e2e

bench: bench-model bench-overhead bench-billing bench-grammar

# Throughput and latency through the whole stack against llama-cpp-python on the same model.
bench-model: install proto
	$(PY) -m regio_devstack.bench

# What the routing layer adds: a constant-answer upstream direct, behind LiteLLM's proxy (own
# virtualenv in .regio/bench/, made on the first run), and behind Regio end to end.
bench-overhead: install proto
	$(PY) -m regio_devstack.bench_overhead

# Reserve latency over gRPC and settlements/s from JetStream, real PostgreSQL (fsync on).
bench-billing: install proto
	$(PY) -m regio_devstack.bench_billing

# What grammar-constrained decoding (JSON mode, tool calls) costs per token in the llama engine.
bench-grammar: install proto
	$(PY) -m regio_devstack.bench_grammar

lint: install proto
	$(VENV)/bin/ruff check services tests
	$(VENV)/bin/ruff format --check services tests
	$(VENV)/bin/mypy services tests

clean:
	rm -rf $(PROTO_OUT) .pytest_cache .mypy_cache .ruff_cache
