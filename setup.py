"""The compiled parts: the predictor's hot loops, two extension modules.

predictor/serving/_logprob_scan.c reads logprobs from a stage's response bytes (bytes another
process wrote: its own module so that it is fuzzed and sanitised alone); predictor/serving/_answer_stats.c
computes the feature vector's logprob statistics. Everything else about the package is declared in pyproject.toml.
"""

from setuptools import Extension, setup

FLAGS = ["-O3", "-Wall", "-Wextra", "-Wno-unused-parameter"]

setup(
    ext_modules=[
        Extension(f"predictor.serving.{name}", [f"predictor/serving/{name}.c"], extra_compile_args=FLAGS)
        for name in ("_logprob_scan", "_answer_stats")
    ]
)
