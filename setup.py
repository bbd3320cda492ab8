"""The one compiled part: the predictor's hot loops (predictor/_native.c).

Everything else about the package is declared in pyproject.toml.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("predictor._native", ["predictor/_native.c"], extra_compile_args=["-O3", "-Wall", "-Wextra", "-Wno-unused-parameter"])])
