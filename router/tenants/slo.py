"""The SLO controller: tunes a tenant's λ so its observed p95 latency (or mean cost) meets a target.

Larger λ escalates more, which costs more and takes longer, so the observed
metric rises with λ. The controller works on log λ with a damped
Robbins-Monro step: ``log λ -= gain_k * log(observed / target)``, where
``gain_k = gain / (1 + k / horizon)`` decays with the number of updates ``k``
(so it settles instead of oscillating around the target), each step is
clipped to ``max_step`` (a burst cannot swing λ wildly), a dead band ignores
noise within ``deadband`` of the target, and λ stays in ``[lam_min, lam_max]``.
An update needs ``min_samples`` requests that arrived since the previous one,
so the controller never reacts twice to the same evidence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from router.tenants.model import SLO
from router.tenants.store import SLOState, percentile


@dataclass(frozen=True)
class ControllerConfig:
    gain: float = 0.8
    horizon: float = 20.0
    max_step: float = 0.7  # at most a factor e^0.7 ~ 2 per update
    deadband: float = 0.03
    min_samples: int = 20
    lam_min: float = 0.01
    lam_max: float = 1000.0


def observe(slo: SLO, newest_first: list[float]) -> float | None:
    """The metric over a batch of samples: p95 latency or mean cost."""
    if not newest_first:
        return None
    if slo.metric == "p95_latency_ms":
        return percentile(newest_first, 0.95)
    return sum(newest_first) / len(newest_first)


def step(state: SLOState, slo: SLO, observed: float, cfg: ControllerConfig) -> SLOState:
    """One controller update; returns the new state (λ, update count)."""
    error = math.log(max(observed, 1e-9) / slo.target)
    if abs(error) <= cfg.deadband:
        return SLOState(state.lam, state.updates + 1, state.seen)
    gain = cfg.gain / (1.0 + state.updates / cfg.horizon)
    delta = max(-cfg.max_step, min(cfg.max_step, -gain * error))
    lam = min(cfg.lam_max, max(cfg.lam_min, state.lam * math.exp(delta)))
    return SLOState(lam, state.updates + 1, state.seen)


def update(state: SLOState, slo: SLO, newest_first: list[float], total: int, cfg: ControllerConfig) -> SLOState | None:
    """Update from the samples that arrived since ``state.seen``; None if there are too few yet."""
    fresh = total - state.seen
    if fresh < cfg.min_samples:
        return None
    observed = observe(slo, newest_first[: min(fresh, len(newest_first))])
    if observed is None:
        return None
    new = step(state, slo, observed, cfg)
    return SLOState(new.lam, new.updates, total)
