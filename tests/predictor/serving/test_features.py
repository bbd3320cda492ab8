"""The feature vector: stable, named, and identical from the parsed OpenAI body and from arrays."""

from __future__ import annotations

import numpy as np
import pytest

from predictor.serving.features import FEATURE_NAMES, INDEX, N_FEATURES, AnswerStats, DraftStats, PromptStats, answer_features


def _choice(lps: list[float], finish: str = "stop") -> dict:
    return {
        "finish_reason": finish,
        "logprobs": {
            "content": [
                {"token": "t", "logprob": lp, "top_logprobs": [{"token": "t", "logprob": lp}, {"token": "u", "logprob": lp - 1.0}]}
                for lp in lps
            ]
        },
    }


PROMPT = PromptStats.from_texts(["Compute 12 * 7 and return it.", "def f(): return 1"])


def test_names_and_shape() -> None:
    assert len(FEATURE_NAMES) == len(set(FEATURE_NAMES)) == N_FEATURES
    v = answer_features(PROMPT, AnswerStats.from_choice(_choice([-0.1, -2.0, -0.5]), 5), stage=1)
    assert v.shape == (N_FEATURES,) and v.dtype == np.float32 and np.isfinite(v).all()


def test_values_mean_what_their_names_say() -> None:
    v = answer_features(PROMPT, AnswerStats.from_choice(_choice([-0.1, -2.0, -0.5], "length"), 5), stage=2, draft=DraftStats(3, 4))
    assert v[INDEX["lp_mean"]] == pytest.approx((-0.1 - 2.0 - 0.5) / 3)
    assert v[INDEX["lp_min"]] == pytest.approx(-2.0)
    assert v[INDEX["lp_frac_below_1"]] == pytest.approx(1 / 3)
    assert v[INDEX["margin_mean"]] == pytest.approx(1.0)
    assert v[INDEX["top1_frac"]] == pytest.approx(1.0)
    assert v[INDEX["finish_length"]] == 1.0
    assert v[INDEX["stage_index"]] == 2.0
    assert v[INDEX["draft_accept_frac"]] == pytest.approx(0.75)
    assert v[INDEX["prompt_code_hint"]] == 1.0


def test_empty_answer_is_flagged_not_nan() -> None:
    v = answer_features(PROMPT, AnswerStats.from_choice({"finish_reason": "stop", "logprobs": None}, 5), stage=0)
    assert v[INDEX["empty_answer"]] == 1.0 and np.isfinite(v).all()


def test_same_answer_same_vector() -> None:
    choice = _choice(list(np.linspace(-3, 0, 40)))
    a = answer_features(PROMPT, AnswerStats.from_choice(choice, 5), stage=0)
    b = answer_features(PROMPT, AnswerStats.from_choice(choice, 5), stage=0)
    assert np.array_equal(a, b)


def test_prompt_features_are_the_answer_vectors_prompt_part() -> None:
    from predictor.serving.features import NGRAM_NAMES, PROMPT_FEATURE_NAMES, prompt_features, prompt_ngrams

    rows = prompt_features(PROMPT, 3)
    shared = [n for n in PROMPT_FEATURE_NAMES if n in INDEX]
    assert len(shared) == 6 and shared[-1] == "stage_index"
    ngrams = [PROMPT_FEATURE_NAMES.index(n) for n in NGRAM_NAMES]
    for stage in range(3):
        v = answer_features(PROMPT, AnswerStats.from_choice(_choice([-0.3, -1.0]), 5), stage)
        assert np.array_equal(rows[stage, [PROMPT_FEATURE_NAMES.index(n) for n in shared]], v[[INDEX[n] for n in shared]])
        assert np.array_equal(rows[stage, ngrams], prompt_ngrams(PROMPT.text))


@pytest.mark.parametrize("seed", range(6))
def test_the_vector_is_the_statistics_then_the_rest_in_float32(seed: int) -> None:
    """answer_features fills the vector in C (_answer_stats.answer_vector): the same bits as building it from the
    statistics and the other values with np.array(..., dtype=np.float32), as it was built before, and writable."""
    import math

    from predictor.serving import _answer_stats

    rng = np.random.default_rng(seed)
    n = int(rng.choice([0, 1, 7, 128, 300]))
    lps = list(-rng.exponential(1.5, n) * (rng.random(n) < 0.9))  # some exact zeros (certain tokens)
    answer = AnswerStats.from_choice(_choice(lps, "length" if seed % 2 else "stop"), 5)
    prompt = PromptStats.from_texts(["x" * int(rng.integers(1, 5000))] * int(rng.integers(1, 4)), n_tokens=int(rng.integers(1, 10**6)))
    draft = DraftStats(int(rng.integers(0, 50)), int(rng.integers(0, 60))) if seed % 3 else None
    got = answer_features(prompt, answer, stage=seed % 3, draft=draft)
    row = _answer_stats.answer_stats(answer.token_logprobs, answer.top_logprobs, answer.top_logprobs.shape[1])
    draft_row = (0.0, 0.0, 0.0)
    if draft is not None and draft.draft_tokens:
        draft_row = (1.0, draft.accepted_tokens / draft.draft_tokens, math.log1p(draft.accepted_tokens))
    before = np.array(
        [*row, math.log1p(answer.length), 1.0 if answer.finish_reason == "length" else 0.0, 1.0 if n == 0 else 0.0,
         math.log1p(prompt.n_tokens), math.log1p(prompt.n_chars), prompt.n_messages, prompt.code_hint, prompt.digit_share,
         seed % 3, *draft_row],
        dtype=np.float32,
    )  # fmt: skip
    assert got.dtype == np.float32 and got.shape == (N_FEATURES,) and got.flags.writeable and got.flags.c_contiguous
    assert np.array_equal(got.view(np.uint32), before.view(np.uint32))
