"""Fixtures of the client matrix: the session's router (stages 0 and 1 of the CPU ladder) seen as a client sees it.

Tool and structured requests go to ``cascade`` and to stage 1 (Qwen2.5-Coder-0.5B) by name: stage 0,
SmolLM2-135M, has no tool calling in its chat template (``tools: false``), so the cascade skips it for
tool requests and says so in ``x-cascade-skipped``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.conftest import RouterProcess

TARGETS = ["cascade", "stage"]
WEATHER_PROMPT = "What is the weather in Paris right now?"
WEATHER_SYSTEM = "You are a weather assistant. Call get_weather to look up the weather, then answer in one sentence."
WEATHER_RESULT = "Sunny, 18 degrees Celsius."
PERSON_PROMPT = "Make up a person with a name and an age."
HELLO_PROMPT = "Say hello in one word."
MAX_TOKENS = 48


@dataclass(frozen=True)
class Ladder:
    url: str  # the router's OpenAI base URL, ending in /v1
    lower: str  # stage 0: no tools
    tools: str  # stage 1: the stage with tools

    def model(self, target: str) -> str:
        """``cascade``, or the name of the stage with tools (pass-through)."""
        return "cascade" if target == "cascade" else self.tools

    def check_tool_headers(self, target: str, headers: Any) -> None:
        """A tool request: the cascade skipped stage 0 and said so; pass-through went straight to stage 1."""
        assert headers["x-cascade-kind"] == "tools"
        assert headers["x-cascade-stage"] == self.tools
        if target == "cascade":
            assert headers["x-cascade-skipped"] == f"{self.lower}:tools"
            assert headers["x-cascade-path"] == self.tools
        else:
            assert "x-cascade-skipped" not in headers


@pytest.fixture(scope="session")
def ladder(router: RouterProcess) -> Ladder:
    s0, s1 = router.settings.stages[:2]
    assert s0.tools is False and s1.tools is not False  # configs/cpu.yaml
    return Ladder(url=f"{router.url}/v1", lower=s0.name, tools=s1.name)


@pytest.fixture(scope="session")
def completions_route(ladder: Ladder) -> None:
    """Skips while the router has no ``POST /v1/completions`` (the route answers 404, not a model error)."""
    resp = httpx.post(f"{ladder.url}/completions", json={"model": "cascade", "prompt": "1", "max_tokens": 1}, timeout=120)
    if resp.status_code == 404 and resp.json().get("error", {}).get("param") != "model":
        pytest.skip(f"the router has no /v1/completions yet: POST /v1/completions answered 404 {resp.text}")
