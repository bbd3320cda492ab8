"""The one definition of a label (``predictor.serving.labels``), as training and the router read it."""

from __future__ import annotations

from predictor.serving.labels import AGREEMENT_THRESHOLD, SHORT_ANSWER_CHARS, agreement_label, label, same_answer


def test_a_checker_first_then_a_broken_rule_then_agreement() -> None:
    assert label({"passed": True, "valid": False, "agreement": 0.0}) == 1
    assert label({"passed": False, "agreement": 1.0}) == 0
    assert label({"passed": None, "valid": False, "agreement": 1.0}) == 0
    assert label({"passed": None, "valid": True, "agreement": AGREEMENT_THRESHOLD}) == 1
    assert label({"agreement": 0.59}) == 0
    assert label({"passed": None, "agreement": None}) is None


def test_agreement_at_the_threshold_is_acceptable() -> None:
    assert (agreement_label(AGREEMENT_THRESHOLD), agreement_label(AGREEMENT_THRESHOLD - 1e-9)) == (1, 0)


def test_a_short_answer_agrees_only_where_the_higher_stage_writes_the_same_text() -> None:
    """A verifier keeps all of "30" and goes on to "300": every token kept, a different answer."""
    assert agreement_label(1.0, "30", same=False) == 0
    assert agreement_label(0.0, " 8\n", same=True) == 1
    assert label({"agreement": 1.0, "text": "30", "same": False}) == 0
    assert label({"agreement": 0.5, "text": "Paris", "same": True}) == 1


def test_a_long_answer_and_an_unknown_sameness_fall_back_to_the_share_kept() -> None:
    long = "x" * SHORT_ANSWER_CHARS
    assert (agreement_label(0.7, long, same=False), agreement_label(0.5, long, same=True)) == (1, 0)
    assert agreement_label(1.0, "30") == 1  # same unknown (a streamed verifier, an older log row): the share decides
    assert label({"agreement": 1.0, "text": "30"}) == 1


def test_same_answer_ignores_only_surrounding_white_space() -> None:
    assert same_answer(" 300\n", "300") and not same_answer("30", "300") and not same_answer("Paris", "paris")
