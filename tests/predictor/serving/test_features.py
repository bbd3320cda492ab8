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
