"""The SLO controller on a simulated system whose p95 latency rises with λ."""

from __future__ import annotations

import math
import random

import pytest

from router.tenants import slo
from router.tenants.model import SLO
from router.tenants.store import SLOState

CFG = slo.ControllerConfig()


def p95_of(lam: float, rng: random.Random, n: int = 40) -> list[float]:
    """Latency samples: 300 ms + up to 1500 ms more as λ grows (more escalation), with noise."""
    base = 300 + 1500 / (1 + math.exp(-(math.log(lam) - 1.5)))
    return [base * rng.lognormvariate(0, 0.15) for _ in range(n)]


def run(target: float, lam0: float, steps: int, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    goal = SLO(metric="p95_latency_ms", target=target)
    state = SLOState(lam0)
    total = 0
    history = []
    for _ in range(steps):
        samples = p95_of(state.lam, rng)
        total += len(samples)
        new = slo.update(state, goal, samples[::-1], total, CFG)
        assert new is not None
        state = new
        history.append(state.lam)
    return history


@pytest.mark.parametrize("target,lam0", [(900.0, 100.0), (900.0, 0.1), (1400.0, 1.0), (600.0, 50.0)])
def test_converges_to_the_target_and_stays(target: float, lam0: float) -> None:
    history = run(target, lam0, 120)
    rng = random.Random(99)
    final = history[-1]
    achieved = sorted(p95_of(final, rng, 4000))[int(0.95 * 4000)]
    assert abs(achieved / target - 1) < 0.08, (final, achieved)
    tail = history[-30:]
    assert max(tail) / min(tail) < 1.3, "λ keeps swinging after convergence"


def test_no_update_without_enough_new_samples() -> None:
    goal = SLO(metric="p95_latency_ms", target=500)
    state = SLOState(5.0, updates=3, seen=100)
    assert slo.update(state, goal, [900.0] * 200, total=100 + CFG.min_samples - 1, cfg=CFG) is None
    new = slo.update(state, goal, [900.0] * 200, total=100 + CFG.min_samples, cfg=CFG)
    assert new is not None and new.lam < 5.0 and new.seen == 100 + CFG.min_samples


def test_steps_are_bounded_and_lambda_stays_in_range() -> None:
    goal = SLO(metric="mean_cost", target=1.0)
    state = SLOState(1.0)
    new = slo.step(state, goal, observed=1e6, cfg=CFG)
    assert new.lam == pytest.approx(math.exp(-CFG.max_step))
    low = SLOState(CFG.lam_min * 1.01)
    assert slo.step(low, goal, observed=1e6, cfg=CFG).lam == CFG.lam_min


def test_dead_band_holds_lambda() -> None:
    goal = SLO(metric="mean_cost", target=2.0)
    assert slo.step(SLOState(3.0), goal, observed=2.02, cfg=CFG).lam == 3.0
