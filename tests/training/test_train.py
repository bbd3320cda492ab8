"""Fitting the predictor's models (``training.train``): what a calibration on few rows may claim."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression

from predictor.serving.features import FEATURE_NAMES
from training import train


def test_a_calibration_on_few_rows_is_never_certain() -> None:
    """Eight validation rows the model separates perfectly: isotonic alone would map them to exactly 0 and 1."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, len(FEATURE_NAMES)))
    y = (x[:, 0] > 0).astype(int)
    model = train.fit((x[:72], y[:72]), (x[72:], y[72:]), FEATURE_NAMES, "answer", seed=0,
                      candidates={"lr": LogisticRegression()}, export=False)  # fmt: skip
    p = model.predict(rng.normal(size=(200, len(FEATURE_NAMES))) * 3)
    low, high = train.calibration_bounds(8)
    assert (low, high) == (0.1, 0.9)
    assert p.min() == low and p.max() == high  # the extremes are reached, and no further


def test_the_bound_shrinks_with_the_validation_split() -> None:
    assert train.calibration_bounds(0) == (0.5, 0.5)  # nothing seen: nothing known
    low, high = train.calibration_bounds(470)
    assert low < 0.0025 and high > 0.9975 and low + high == 1.0
