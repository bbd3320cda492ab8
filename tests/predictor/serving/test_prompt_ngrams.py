"""The prior's content features: hashed n-grams that are the same in every process, and the belief model's input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from predictor.serving.features import (
    HASH_DIMS,
    HASH_EDGE_CHARS,
    N_FEATURES,
    N_POSTERIOR_FEATURES,
    PromptStats,
    posterior_features,
    prompt_ngrams,
    prompt_window,
)

ROOT = Path(__file__).resolve().parents[3]
ADDITION = "What is 3028 + 4657?"
# The signed support of ADDITION's vector (bucket index, negated where the count is negative), pinned: the shipped
# prior was trained on these buckets, so a change to the hashing must bump FEATURE_VERSION and retrain, not slip by.
ADDITION_SUPPORT = [
    -216, -209, -202, -179, -161, -147, -143, -130, -120, -113, -112, -109, -101, -97, -94, -72, -53, -44, -42, -28,
    23, 25, 26, 33, 36, 39, 65, 75, 76, 86, 95, 133, 135, 149, 157, 162, 163, 165, 166, 171, 184, 190, 201, 211, 239, 242,
]  # fmt: skip


def _support(v: np.ndarray) -> list[int]:
    return sorted(int(i) if v[i] > 0 else -int(i) for i in np.flatnonzero(v))


def test_the_hashing_is_pinned() -> None:
    v = prompt_ngrams(ADDITION)
    assert v.shape == (HASH_DIMS,) and v.dtype == np.float32
    assert _support(v) == ADDITION_SUPPORT
    assert float(v.astype(np.float64) @ v) == pytest.approx(1.0, abs=1e-6)


def test_same_vector_in_processes_with_different_hash_seeds() -> None:
    """Python's str hash is salted per process; the n-grams must not depend on it (they never call hash())."""
    code = "import json,sys; from predictor.serving.features import prompt_ngrams; print(json.dumps(prompt_ngrams(sys.argv[1]).tolist()))"
    text = "Sort the list [3, 1, 2] in descending order. Réponds en français: ça va?"
    outs = []
    for seed in ("1", "2", "random"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        run = subprocess.run([sys.executable, "-c", code, text], cwd=ROOT, env=env, capture_output=True, text=True, check=True, timeout=60)
        outs.append(json.loads(run.stdout))
    assert outs[0] == outs[1] == outs[2] == prompt_ngrams(text).tolist()


def test_digits_are_shapes_not_values() -> None:
    assert np.array_equal(prompt_ngrams("What is 3028 + 4657?"), prompt_ngrams("What is 1111 + 9999?"))
    assert not np.array_equal(prompt_ngrams("What is 3028 + 4657?"), prompt_ngrams("What is 12 + 7?"))
    assert np.array_equal(prompt_ngrams("Capital of FRANCE?"), prompt_ngrams("capital of france?"))


def test_different_tasks_point_different_ways() -> None:
    """Two arithmetic prompts are closer to each other than to a sorting prompt (what the prior can learn from)."""
    a, b = prompt_ngrams("What is 3028 + 4657?"), prompt_ngrams("What is 81 + 17? Reply with only the answer.")
    c = prompt_ngrams("Sort these words alphabetically: pear, apple, fig.")
    assert float(a @ b) > float(a @ c) + 0.1


def test_empty_and_punctuation_only_prompts() -> None:
    assert not prompt_ngrams("").any()
    v = prompt_ngrams("?!")
    assert np.isfinite(v).all() and float(v @ v) == pytest.approx(1.0, abs=1e-6)  # one punctuation word, no char 3-gram


def test_a_long_prompt_is_read_at_its_ends() -> None:
    middle = "lorem ipsum " * 2000
    long = "Translate to German: " + middle + " -- end of text. Answer in one line."
    assert prompt_window(long) == long[:HASH_EDGE_CHARS] + "\n" + long[-HASH_EDGE_CHARS:]
    assert np.array_equal(prompt_ngrams(long), prompt_ngrams(prompt_window(long)))
    assert prompt_window("short") == "short"
    stats = PromptStats.from_texts([long])
    assert stats.n_chars == len(long) and stats.text == long  # the lengths stay exact
    assert stats.digit_share == 0.0 and stats.code_hint == 0.0


def test_prompt_stats_carry_the_joined_text() -> None:
    assert PromptStats.from_texts(["a", "b c"]).text == "a\nb c"
    assert PromptStats(1, 1, 1, 0.0, 0.0).text == ""  # built by hand: no content features, still valid


def test_posterior_rows() -> None:
    answer = np.arange(N_FEATURES, dtype=np.float32)
    rows = posterior_features(answer, 0, 3)
    assert rows.shape == (2, N_POSTERIOR_FEATURES) and rows.dtype == np.float32
    assert (rows[:, :N_FEATURES] == answer).all() and rows[:, -1].tolist() == [1.0, 2.0]
    assert posterior_features(answer, 1, 3)[:, -1].tolist() == [2.0]
    assert posterior_features(answer, 2, 3).shape == (0, N_POSTERIOR_FEATURES)
