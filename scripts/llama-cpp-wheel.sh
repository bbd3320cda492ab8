#!/usr/bin/env bash
# Print the path of a portable llama-cpp-python wheel, building it first if no such build is cached.
#
#   scripts/llama-cpp-wheel.sh VENV_PYTHON
#
# Why not `pip install llama-cpp-python`: PyPI has only its sdist, and llama.cpp's default build is `-march=native`,
# which compiles in whatever the build machine's CPU advertises. A VM can advertise AMX without letting a process use
# it (the stage then dies with a general protection fault at `ldtilecfg`), and an image or wheel cache built on one
# host can crash on another. So the build is pinned to a fixed baseline (LLAMA_CMAKE_ARGS, set by the Makefile:
# x86-64-v3 = AVX2/FMA/F16C/BMI2, no AVX-512, no AMX), from the sdist whose sha256 is in locks/llama-cpp-python.txt.
#
# The wheel is kept under pip's cache directory (so PIP_CACHE_DIR / `pip cache purge` govern it), keyed by the
# version, the flags, the compiler and the interpreter: pip's own wheel cache is keyed by the sdist alone and would
# hand back a native build made earlier on the same machine.
set -euo pipefail
py=${1:?usage: $0 VENV_PYTHON}
cd "$(dirname "$0")/.."
: "${LLAMA_CMAKE_ARGS:?set by the Makefile}"
lock=locks/llama-cpp-python.txt
version=$(sed -n 's/^llama-cpp-python==\([^ ]*\).*/\1/p' "$lock")

if [ "$(uname -m)" = x86_64 ] && [[ "$LLAMA_CMAKE_ARGS" == *GGML_AVX2=ON* ]]; then
  for flag in avx2 fma f16c bmi2; do
    grep -qw "$flag" /proc/cpuinfo || {
      echo "error: this CPU lacks $flag, which the portable llama.cpp baseline needs;" \
           "build for it with e.g. make LLAMA_CMAKE_ARGS='-DGGML_NATIVE=OFF -DGGML_AVX2=OFF -DGGML_FMA=OFF -DGGML_F16C=OFF -DGGML_BMI2=OFF'" >&2
      exit 1
    }
  done
fi

key=$(printf '%s\n' "$version" "$LLAMA_CMAKE_ARGS" "$(cc -dumpfullversion 2>/dev/null || true)" "$(uname -m)" \
  "$("$py" -c 'import sys; print(sys.implementation.cache_tag)')" | sha256sum | cut -c1-16)
cache_root=$("$py" -m pip cache dir 2>/dev/null || echo "$PWD/build")
dir="$cache_root/adaptive-sd-wheels/llama-cpp-python-$version-$key"
wheel=$(ls "$dir"/llama_cpp_python-*.whl 2>/dev/null | head -n1 || true)
if [ -z "$wheel" ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  echo "building llama-cpp-python $version (portable: $LLAMA_CMAKE_ARGS); ~10 min on 2 cores, once per machine" >&2
  "$py" -m pip download -q --no-deps --no-binary :all: --require-hashes -r "$lock" -d "$work/sdist" >&2
  CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
    "$py" -m pip wheel -q --no-deps --no-build-isolation --no-cache-dir "$work"/sdist/*.tar.gz -w "$work/wheel" >&2
  mkdir -p "$dir"
  mv "$work"/wheel/llama_cpp_python-*.whl "$dir/"
  printf '%s\n' "$LLAMA_CMAKE_ARGS" > "$dir/cmake-args.txt"
  wheel=$(ls "$dir"/llama_cpp_python-*.whl | head -n1)
fi
echo "$wheel"
