"""The one compiled part: the logprob scanner the predictor reads stage answers with (predictor/_logprob_scan.c).

Everything else about the package is declared in pyproject.toml.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("predictor._logprob_scan", ["predictor/_logprob_scan.c"], extra_compile_args=["-O3", "-Wall", "-Wextra", "-Wno-unused-parameter"])])
