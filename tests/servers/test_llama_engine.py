"""``LlamaEngine``'s sampling step on its own (no model): what a token pick does at the edges of its parameters."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import numpy as np
import pytest

from servers.llama_engine import LlamaEngine, log_softmax, penalize
from servers.sampling import StopMatcher


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


# -- vLLM's sampling extras: top_k, min_p, repetition_penalty, min_tokens -----------------------------------------


def _draws(logits: np.ndarray, n: int = 400, **cut: float) -> set[int]:
    rng = np.random.default_rng(0)
    return {LlamaEngine._pick(logits, 1.0, 1.0, rng, int(cut.get("top_k", 0)), cut.get("min_p", 0.0)) for _ in range(n)}


def test_top_k_samples_only_the_k_most_likely_and_off_is_minus_one_or_zero() -> None:
    logits = np.array([0.0, 0.3, 0.2, 0.1, -0.1], dtype=np.float32)
    assert _draws(logits, top_k=2) == {1, 2}
    assert _draws(logits, top_k=1) == {1}
    assert _draws(logits, top_k=-1) == _draws(logits, top_k=0) == {0, 1, 2, 3, 4}
    assert _draws(logits, top_k=10) == {0, 1, 2, 3, 4}  # more than the vocabulary: off


def test_min_p_drops_tokens_below_its_share_of_the_most_likely() -> None:
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], dtype=np.float32))
    assert _draws(logits, min_p=0.2) == {0, 1, 2}  # 0.05 < 0.2 * 0.5
    assert _draws(logits, min_p=0.5) == {0, 1}
    assert _draws(logits, min_p=0.0) == {0, 1, 2, 3}
    assert _draws(logits, min_p=0.5, top_k=1) == {0}


def test_greedy_is_unaffected_by_top_k_and_min_p() -> None:
    logits = np.array([0.0, 3.0, 2.9], dtype=np.float32)
    rng = np.random.default_rng(0)
    assert LlamaEngine._pick(logits, 0.0, 1.0, rng, 1, 0.99) == 1


def test_repetition_penalty_divides_positive_logits_and_multiplies_negative_ones_of_seen_tokens() -> None:
    logits = np.array([2.0, -1.0, 2.0, -1.0], dtype=np.float32)
    out = penalize(logits, np.array([0, 1]), 2.0)
    assert out.tolist() == [1.0, -2.0, 2.0, -1.0]
    assert logits.tolist() == [2.0, -1.0, 2.0, -1.0]  # a copy
    assert penalize(logits, np.array([0, 1]), 1.0).tolist() == logits.tolist()


class _ScriptedEngine(LlamaEngine):
    """``generate`` over fixed logits (no model): token 0 ends, every step sees the same row."""

    def __init__(self, row: list[float]) -> None:  # no super().__init__: no model to load
        self.row = np.array(row, dtype=np.float32)
        self.llm = SimpleNamespace(n_tokens=0)
        self.n_ctx = 1000
        self._scores = []
        self._end_ids = np.array([0], dtype=np.intp)

    def is_end(self, token: int) -> bool:
        return token == 0

    def _prefill(self, prompt: list[int]) -> np.ndarray:
        self.llm.n_tokens = len(prompt)
        return self.row.copy()

    def _forward(self, tokens: list[int], all_rows: bool) -> Iterator[np.ndarray]:
        self.llm.n_tokens += len(tokens)
        self._scores.append(None)
        yield self.row.copy()


def test_min_tokens_holds_back_the_end_token_until_that_many_are_generated() -> None:
    engine = _ScriptedEngine([5.0, 1.0, 0.5])
    assert [s.token for s in engine.generate([1], max_tokens=10, temperature=0.0)] == []
    assert [s.token for s in engine.generate([1], max_tokens=10, temperature=0.0, min_tokens=3)] == [1, 1, 1]
    steps = list(engine.generate([1], max_tokens=10, temperature=0.0, min_tokens=2, logprobs=True))
    assert steps[0].logprob == pytest.approx(float(log_softmax(engine.row)[1]))  # the raw model's logprob


def test_repetition_penalty_steers_greedy_decoding_away_from_seen_tokens() -> None:
    engine = _ScriptedEngine([-5.0, 2.0, 1.9, 1.85])
    assert [s.token for s in engine.generate([1], max_tokens=3, temperature=0.0)] == [1, 1, 1]
    # 1 is in the prompt: 2.0 / 1.1 < 1.9; then 2 is seen too: 1.9 / 1.1 and 2.0 / 1.1 < 1.85; then all are, and 1 leads
    assert [s.token for s in engine.generate([1], max_tokens=4, temperature=0.0, repetition_penalty=1.1)] == [2, 3, 1, 1]


def test_stop_strings_do_not_count_before_min_tokens() -> None:
    stopper = StopMatcher(["AB", "ABCDEF"])  # holds back 5 characters
    assert stopper.feed("xAB", check=False) == ("", False)  # "AB" ended before min_tokens: not a stop
    assert stopper.feed("c", check=True) == ("", False)  # nor later
    assert stopper.feed("AB", check=True) == ("xABc", True)  # one that ends after it is
    late = StopMatcher(["END"])
    assert late.feed("xEN", check=False) == ("x", False)
    assert late.feed("D", check=True) == ("", True)  # begun before min_tokens, ended after: a stop, as in vLLM
