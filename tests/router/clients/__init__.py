"""The client matrix: the clients people use, against the real router in front of real llama.cpp stages.

Each module drives one client library (the official ``openai`` SDK, ``langchain-openai``,
``openai-agents``, LlamaIndex's ``OpenAILike``) through ``model: "cascade"`` and through a stage
name. The libraries come from the ``clients`` extra (see docs/clients.md); a module whose library
is not importable skips with the reason, unless ``ADAPTIVE_SD_REQUIRE_CLIENTS=1`` (CI) makes that a
failure.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

INSTALL = "pip install -e '.[clients]' && pip install --no-deps -r tests/router/clients/requirements-llamaindex.txt"


def need(module: str, package: str) -> ModuleType:
    """Import ``module`` (from ``package``), or skip the calling test module saying what is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if os.environ.get("ADAPTIVE_SD_REQUIRE_CLIENTS") == "1":
            raise
        pytest.skip(f"{package} is not installed ({exc}); the `clients` extra has it: {INSTALL}", allow_module_level=True)
