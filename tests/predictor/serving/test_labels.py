"""The one definition of a label (``predictor.serving.labels``), as training and the router read it."""

from __future__ import annotations

from predictor.serving.labels import AGREEMENT_THRESHOLD, agreement_label, label


def test_a_checker_first_then_a_broken_rule_then_agreement() -> None:
    assert label({"passed": True, "valid": False, "agreement": 0.0}) == 1
    assert label({"passed": False, "agreement": 1.0}) == 0
    assert label({"passed": None, "valid": False, "agreement": 1.0}) == 0
    assert label({"passed": None, "valid": True, "agreement": AGREEMENT_THRESHOLD}) == 1
    assert label({"agreement": 0.59}) == 0
    assert label({"passed": None, "agreement": None}) is None


def test_agreement_at_the_threshold_is_acceptable() -> None:
    assert (agreement_label(AGREEMENT_THRESHOLD), agreement_label(AGREEMENT_THRESHOLD - 1e-9)) == (1, 0)
