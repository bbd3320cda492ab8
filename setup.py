"""The one compiled part: the predictor's hot loops (predictor/serving/_native.c).

Everything else about the package is declared in pyproject.toml.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("predictor.serving._native", ["predictor/serving/_native.c"], extra_compile_args=["-O3", "-Wall", "-Wextra", "-Wno-unused-parameter"])])
