"""Answer lengths as quantile points: the means per-token prices expect, and what is left of an unfinished answer."""

from __future__ import annotations

import numpy as np
import pytest

from predictor.serving.lengths import N_POINTS, OutputLengths


def test_fit_keeps_equally_weighted_points_whose_mean_tracks_the_sample() -> None:
    rng = np.random.default_rng(0)
    counts = rng.integers(5, 200, 5000)
    lengths = OutputLengths.fit(counts.tolist())
    assert len(lengths.points) == N_POINTS and list(lengths.points) == sorted(lengths.points)
    assert lengths.mean() == pytest.approx(counts.mean(), rel=0.02)
    assert lengths.mean(cap=50) == pytest.approx(np.minimum(counts, 50).mean(), rel=0.03)


def test_remaining_is_the_mean_residual_of_the_longer_answers() -> None:
    lengths = OutputLengths(tuple(float(v) for v in [10] * 10 + [100] * 10))
    assert lengths.remaining(8) == pytest.approx(55 - 8)  # every answer is longer than 8
    assert lengths.remaining(16) == pytest.approx(100 - 16)  # only the long ones are still running at 16
    assert lengths.remaining(16, cap=40) == pytest.approx(40 - 16)
    # longer than every answer seen: one more interval's worth, never past the cap
    assert lengths.remaining(120) == 120.0
    assert lengths.remaining(120, cap=130) == 10.0


def test_fit_refuses_no_data() -> None:
    with pytest.raises(ValueError, match="no answer lengths"):
        OutputLengths.fit([])
