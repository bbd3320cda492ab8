"""``LlamaEngine``'s sampling step on its own (no model): what a token pick does at the edges of its parameters."""

from __future__ import annotations

import numpy as np
import pytest

from servers.llama_engine import LlamaEngine


@pytest.mark.parametrize("temperature", [5e-324, 1e-310, 1e-300])
@pytest.mark.parametrize("top_p", [1.0, 0.5])
def test_a_vanishing_temperature_picks_greedily(temperature: float, top_p: float) -> None:
    """The API allows any temperature above 0; one so small that logits / temperature overflow is the greedy limit,
    not NaN probabilities (a fuzzed request made the stage answer 500 with numpy's 'Probabilities contain NaN')."""
    logits = np.array([1.0, 30.5, -4.0, 30.0, -np.inf], dtype=np.float32)
    rng = np.random.default_rng(0)
    assert all(LlamaEngine._pick(logits, temperature, top_p, rng) == 1 for _ in range(20))


def test_an_ordinary_temperature_still_samples() -> None:
    logits = np.array([0.0, 0.1, 0.2], dtype=np.float32)
    rng = np.random.default_rng(0)
    assert len({LlamaEngine._pick(logits, 1.0, 1.0, rng) for _ in range(200)}) == 3
