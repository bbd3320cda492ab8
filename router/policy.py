"""The optimal-stopping rule over the ladder (expected cost + λ · expected loss).

After stage i answered with posterior p̂_i, the router either stops (expected
loss λ(1 - p̂_i)) or pays for some later stage j and continues optimally from
there. The value of continuing from j is computed by backward induction over
the stages above, using prompt-only priors for answers not seen yet:

    V_j = c_j + E_{p̂_j}[ min( λ(1 - p̂_j), min_{k>j, k<=m} V_k ) ]

with V at the top allowed stage m equal to c_m + λ(1 - prior_m). When
``strength`` is None the expectation collapses to the point prior (the plain
rule of the design notes); with a finite strength, p̂_j is treated as
Beta(strength·prior, strength·(1-prior)) distributed, which gives seeing an
intermediate answer its option value. Backward induction is O(L²) with L
stages and a fixed quadrature grid: microseconds. Once stage i has answered,
``observe`` replaces the priors of the stages above it with beliefs
conditioned on that answer (the predictor's ``beliefs_after``) and runs the
induction again.

Two refinements of the inputs, both optional:

* A stage whose answer carries no logprobs (``stages[i].logprobs: false``) is
  judged from text features only, which tell the predictor nothing beyond the
  prompt's prior: its p̂ will be its prior. Such a stage is ``informative=False``,
  and its expectation collapses to the point prior, so the policy neither pays for
  it hoping to learn something nor starts there when it would escalate anyway.
* Load-aware escalation (``cascade.load_aware``): each stage's cost is its
  configured cost plus ``load_cost_per_s`` times its expected queueing delay
  (``loaded_costs``), so a saturated stage is worth less to escalate to, and an
  idle one costs what it always did.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

_GRID = 64
_P_EPS = 1e-3
_XS = (np.arange(_GRID) + 0.5) / _GRID  # midpoints on (0, 1)
_LOG_XS = np.log(_XS)
_LOG_1MXS = np.log1p(-_XS)


_H = 1.0 / _GRID


@lru_cache(maxsize=4096)
def beta_weights(mean: float, strength: float) -> np.ndarray:
    """Discrete Beta(strength·mean, strength·(1-mean)) weights on the midpoint grid: each bin's probability mass.

    Inner bins take the density at their midpoint times the bin width. The two end bins are integrated: with a
    shape parameter below 1 the density is unbounded at that end, and a midpoint value would put far too little
    mass there (Beta(0.15, 1.35) has mean 0.10; the midpoint rule said 0.17). Near 0 the density is
    x^(a-1) (1-x)^(b-1) / B(a, b) ≈ x^(a-1) (1-h/2)^(b-1) / B(a, b), whose integral over [0, h] is
    h^a / a · (1-h/2)^(b-1) / B(a, b); the same at 1 with a and b swapped.
    """
    m = min(max(mean, _P_EPS), 1.0 - _P_EPS)
    a, b = strength * m, strength * (1.0 - m)
    log_beta = math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
    logw = (a - 1.0) * _LOG_XS + (b - 1.0) * _LOG_1MXS - log_beta + math.log(_H)
    logw[0] = a * math.log(_H) - math.log(a) + (b - 1.0) * math.log1p(-_H / 2) - log_beta
    logw[-1] = b * math.log(_H) - math.log(b) + (a - 1.0) * math.log1p(-_H / 2) - log_beta
    w = np.exp(logw - logw.max())
    weights: np.ndarray = w / w.sum()
    return weights


def loaded_costs(costs: Sequence[float], delays_s: Sequence[float], cost_per_s: float) -> list[float]:
    """Each stage's cost with its expected queueing delay priced in (``cost_per_s`` cost units per second)."""
    return [c + cost_per_s * d for c, d in zip(costs, delays_s, strict=True)]


def shrink(p: float, n: float, alpha: float, beta: float) -> float:
    """Risk adjustment: pull p̂ toward the Beta(alpha, beta) prior mean by evidence n."""
    return (n * p + alpha) / (n + alpha + beta)


@dataclass(frozen=True)
class Decision:
    stop: bool
    next_stage: int | None  # where to go when not stopping
    stop_value: float  # λ(1 - p̂)
    continue_value: float  # best V_j over j > i (inf when none)


@dataclass(frozen=True)
class PrefixDecision:
    abort: bool  # abort the stage now and escalate to next_stage
    next_stage: int | None
    abort_value: float  # V_next (inf at the top)
    finish_value: float  # price of the rest + E[min(λ(1 - p̂), V_next)]


class StoppingPolicy:
    """Backward induction for one request: costs and priors fixed, λ given."""

    def __init__(
        self,
        costs: Sequence[float],
        priors: Sequence[float],
        lam: float,
        *,
        max_stage: int | None = None,
        strength: float | None = None,
        informative: Sequence[bool] | None = None,
    ) -> None:
        if len(costs) != len(priors) or not costs:
            raise ValueError("costs and priors must be non-empty and of equal length")
        if informative is not None and len(informative) != len(costs):
            raise ValueError("informative must have one flag per stage")
        self.costs = list(costs)
        self.priors = list(priors)
        self.lam = lam
        self.top = len(costs) - 1 if max_stage is None else min(max_stage, len(costs) - 1)
        self.strength = strength
        self.informative = list(informative) if informative is not None else [True] * len(costs)
        self.values = self._backward()  # V_j for j = 0..top

    def _expected_min(self, prior: float, cont: float, informative: bool = True) -> float:
        """E[min(λ(1 - p̂), cont)] for p̂ around ``prior`` (at ``prior`` itself for a stage whose answer says nothing more)."""
        if self.strength is None or not informative:
            return min(self.lam * (1.0 - prior), cont)
        w = beta_weights(prior, self.strength)
        return float(np.minimum(self.lam * (1.0 - _XS), cont) @ w)

    def _backward(self) -> list[float]:
        values = [math.inf] * (self.top + 1)
        best_above = math.inf
        for j in range(self.top, -1, -1):
            values[j] = self.costs[j] + self._expected_min(self.priors[j], best_above, self.informative[j])
            best_above = min(best_above, values[j])
        return values

    def best_after(self, i: int) -> tuple[int | None, float]:
        """The cheapest stage to continue at after stage ``i`` (``i = -1``: before any)."""
        best, value = None, math.inf
        for j in range(i + 1, self.top + 1):
            if self.values[j] < value:
                best, value = j, self.values[j]
        return best, value

    def start(self, skip_by_prior: bool = True) -> int:
        """Where to begin: the stage with the lowest expected total, or stage 0."""
        if not skip_by_prior:
            return 0
        best, _ = self.best_after(-1)
        return best if best is not None else 0

    def decide(self, i: int, p_hat: float) -> Decision:
        """Stop at stage ``i`` with posterior ``p_hat``, or escalate to the best next stage."""
        stop_value = self.lam * (1.0 - p_hat)
        nxt, cont = self.best_after(i)
        if nxt is None or stop_value <= cont:
            return Decision(True, None, stop_value, cont)
        return Decision(False, nxt, stop_value, cont)

    def judge_prefix(
        self, i: int, q: float, to_finish: float, strength: float, risk: tuple[float, float, float] | None = None
    ) -> PrefixDecision:
        """Stage ``i`` has written part of its answer and the prefix model says the finished answer will be acceptable
        with probability ``q``: let it finish, or abort now and escalate (early exit).

        What it has written is paid for either way (sunk). Aborting is worth the best next stage's value, as after a
        finished answer. Finishing costs ``to_finish`` (the price of the tokens still expected) and then the usual
        choice, stop or escalate, on the finished answer's p̂, which is Beta(strength·q, strength·(1-q)) around ``q``
        (``strength``: how much the rest of an answer still moves the verdict, fitted per checkpoint in training):

            abort  = V_next
            finish = to_finish + E[ min( λ(1 - p̂), V_next ) ]

        Abort when ``abort < finish``. One step ahead: the option to abort at a later checkpoint is not valued (the
        concentrations fitted on this ladder's data do not grow with the prefix, so a later checkpoint is not expected
        to know more); the stage is judged again at every checkpoint it reaches. ``risk``: the (evidence, alpha, beta)
        shrinkage the finished p̂ will get (``shrink``). At the top stage there is nowhere to go: it always finishes.
        """
        nxt, abort = self.best_after(i)
        if nxt is None:
            return PrefixDecision(False, None, math.inf, to_finish)
        w = beta_weights(q, strength)
        p = _XS if risk is None else shrink(_XS, *risk)  # type: ignore[arg-type]
        finish = to_finish + float(np.minimum(self.lam * (1.0 - p), abort) @ w)
        return PrefixDecision(abort < finish, nxt if abort < finish else None, abort, finish)

    def observe(self, i: int, beliefs: Sequence[float]) -> None:
        """Stage ``i`` has answered: ``beliefs[k]`` is now P(stage i+1+k acceptable), given that answer.

        What an answer says about the stages above it (a lower stage that floundered on a task the
        larger ones solve, ...) replaces their prompt-only priors, and the values of continuing are
        recomputed by the same backward induction: ``decide(i, ·)`` and everything after it use them.
        (The values at or below ``i`` are recomputed too, and never read again: nothing goes back down.)
        """
        if len(beliefs) != len(self.priors) - i - 1:
            raise ValueError(f"expected {len(self.priors) - i - 1} beliefs for the stages above {i}, got {len(beliefs)}")
        self.priors[i + 1 :] = [float(b) for b in beliefs]
        self.values = self._backward()
