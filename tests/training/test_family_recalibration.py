"""The per-family recalibration ceiling (training.family_recalibration): the offset it fits and what it shifts."""

from __future__ import annotations

import numpy as np
import pytest

from training import family_recalibration as fr
from training.replay import Beliefs


def _beliefs(p: float, tasks: int = 6, n: int = 3) -> Beliefs:
    flat = np.full((tasks, n), p)
    return Beliefs(flat.copy(), flat.copy(), np.full((tasks, n, n), p), np.full((tasks, n, 2), np.nan), np.zeros((tasks, 2)),
                   np.ones((tasks, n)), np.zeros((tasks, n, 2)), 50.0)  # fmt: skip


def test_the_offset_moves_a_belief_toward_its_labels_and_no_further_than_its_prior_allows() -> None:
    p = np.full(20, 0.5)
    up, down = fr.offset(np.ones(20), p), fr.offset(np.zeros(20), p)
    assert up > 1.0 and down == pytest.approx(-up)  # symmetric, and well off zero with 20 agreeing labels
    assert fr.offset(np.ones(2), np.full(2, 0.5)) < up  # fewer labels: the N(0, 1) prior holds it nearer 0
    assert fr.offset(np.array([1.0, 0.0]), np.full(2, 0.5)) == pytest.approx(0.0)  # labels at p̂'s own rate: no shift
    assert fr.offset(np.array([]), np.array([])) == 0.0  # nothing to fit


def test_early_exit_beliefs_are_shifted_where_a_checkpoint_was_reached() -> None:
    stream, test = _beliefs(0.5), _beliefs(0.5)
    stream.prefix_q[:, 0, 0] = 0.5  # stage 0 reached the first checkpoint on every stream task
    test.prefix_q[:3, 0, 0] = 0.5  # and on half the test tasks
    out = fr.recalibrated(stream, np.array([[1, 0, 1]] * 6), test)
    assert (out.prefix_q[:3, 0, 0] > 0.7).all() and np.isnan(out.prefix_q[3:, 0, 0]).all() and np.isnan(out.prefix_q[:, 0, 1]).all()


def test_recalibration_shifts_the_lower_stages_beliefs_and_leaves_the_top_stage_alone() -> None:
    stream, test = _beliefs(0.5), _beliefs(0.5)
    y = np.array([[1, 0, 1]] * 6)  # stage 0 always right, stage 1 never, the top's column unused
    out = fr.recalibrated(stream, y, test)
    assert (out.p_hat[:, 0] > 0.7).all() and (out.p_hat[:, 1] < 0.3).all() and (out.p_hat[:, 2] == 0.5).all()
    assert (out.priors[:, 0] > 0.7).all() and (out.after[:, 0, 1] < 0.3).all()  # the belief about 1 once 0 answered
    assert np.isnan(out.prefix_q).all()  # no checkpoint reached: nothing to shift, nothing made up
    assert (out.after[:, 0, 2] == 0.5).all() and (test.p_hat == 0.5).all()  # beliefs about the top, and the input, unchanged
