"""The compiled parts: the predictor's hot loops, two extension modules.

predictor/serving/_logprob_scan.c reads logprobs from a stage's response bytes (bytes another
process wrote: its own module so that it is fuzzed and sanitised alone); predictor/serving/_answer_stats.c
computes the feature vector's logprob statistics. Everything else about the package is declared in pyproject.toml.

ADAPTIVE_SD_EXTRA_CFLAGS adds compile-only flags after ours (`make test-sanitizers`, `make fuzz-scanner`:
-fsanitize=...): unlike CFLAGS, which distutils passes to the link too, where clang's ASan wants a
runtime archive Debian ships separately; those builds get their sanitizer runtime from LD_PRELOAD.
"""

import os

from setuptools import Extension, setup

FLAGS = ["-O3", "-Wall", "-Wextra", "-Wno-unused-parameter", *os.environ.get("ADAPTIVE_SD_EXTRA_CFLAGS", "").split()]

setup(
    ext_modules=[
        Extension(f"predictor.serving.{name}", [f"predictor/serving/{name}.c"], extra_compile_args=FLAGS)
        for name in ("_logprob_scan", "_answer_stats")
    ]
)
