"""The replay of draft reuse: what the rounds keep of a draft, and the seconds that saves."""

from __future__ import annotations

import pytest

from training.reuse import StageRates, agreement, replay

OWN = "```python\ndef add(a, b):\n    return a + b\n```\nThis function adds two numbers and returns the sum."


def test_own_answer_is_kept_whole() -> None:
    r = replay(OWN, OWN)
    assert r.kept_chars == len(OWN) and r.disagreements == 0


def test_a_different_opening_is_re_joined() -> None:
    r = replay(OWN, "Here is the function you asked for:\n\n" + OWN)
    assert r.disagreements == 1 and r.kept_chars >= len(OWN) - 16


def test_an_unrelated_draft_keeps_next_to_nothing() -> None:
    r = replay(OWN, "The capital of France is Paris, a city on the Seine.")
    assert r.kept_chars < 8


def test_stage_rates_from_timings() -> None:
    # seconds = 0.02 per prompt token + 0.1 per generated token, as the collection measures them
    rows = [(p, c, 0.02 * p + 0.1 * c) for p in (40, 80, 120) for c in (1, 2, 3, 60, 120)]
    rates = StageRates.measure(rows)
    assert rates.prefill == pytest.approx(0.02) and rates.decode == pytest.approx(0.1)
    assert rates.saving(100, 0) == pytest.approx(100 * 0.08)
    assert rates.saving(0, 2) < 0  # rounds that keep nothing cost time


def test_agreement_is_the_share_of_the_draft_kept() -> None:
    assert agreement("The answer is 42.", "The answer is 42.") == 1.0
    assert agreement("The answer is 42.", "") == 0.0  # no draft: nothing agreed
    half = agreement("abcdefgh", "abcdXXXX")
    assert 0.5 <= half < 1.0
