"""The stage server's start-up check (``LlamaEngine.warm_up``) runs the model and leaves no trace.

Real weights (SmolLM2-135M, the smallest stage), in-process: the check must generate
tokens (a batched prefill and decode steps, where a build the CPU cannot run would die),
and the first real request after it must see exactly what it would have seen without it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from servers.llama_engine import WARM_UP_TOKENS, LlamaEngine
from servers.weights import resolve

PROMPT = "<|im_start|>user\nName three colours.<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def weights() -> Iterator[str]:
    yield str(resolve("smollm2-135m-instruct"))


def _greedy(engine: LlamaEngine, n: int = 24) -> list[tuple[int, float]]:
    return [(s.token, round(s.logprob or 0.0, 4)) for s in engine.generate(engine.tokenize(PROMPT), max_tokens=n, logprobs=True)]


def test_warm_up_generates_then_forgets(weights: str) -> None:
    cold = LlamaEngine(weights, n_ctx=512)
    expected = _greedy(cold)
    warm = LlamaEngine(weights, n_ctx=512)
    assert warm.warm_up() == WARM_UP_TOKENS
    assert warm._end_ids is not None and warm.is_end(int(warm._end_ids[0]))  # found at start-up, not in a first request
    assert warm.llm.n_tokens == 0 and warm._scores == [] and warm._tail is None
    assert _greedy(warm) == expected
