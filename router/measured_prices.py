"""A stage's prices in seconds, measured from its own answers under the load it has (``cascade.measured_prices``).

Each completed visit of a stage (its wall time, the prompt tokens it read and the tokens it wrote, as the stage
reported them) is one observation of

    seconds ≈ request + prompt_token · prompt tokens + output_token · generated tokens

and ``MeasuredPrices`` keeps an exponentially weighted least-squares fit of the three parts: the visits' weights
halve every ``half_life_visits`` visits of the stage, so the prices follow its load as it changes.

The configured ``prices.seconds`` are the prior, and weigh as ``prior_strength`` visits like the ones measured: the fit
minimises Σ w (y - x·θ)² + k (θ - θ0)ᵀ (S + δ diag S) (θ - θ0), S = Σ w x xᵀ, k = prior_strength / Σ w, which is a
ridge regression toward θ0 in the metric of the visits themselves (Zellner's g-prior). So with no visits the prices
are the configured ones, exactly; after visits of total weight n, the fitted cost of what the visits asked for is
about (n · what they took + prior_strength · the configured cost) / (n + prior_strength), whatever the tokens'
scales: a few noisy visits move the prices a little, and in the steady state (a weight of about
``half_life_visits / ln 2``) the prior keeps a share prior_strength / (n + prior_strength) (10 / 299 at the
defaults). The small δ (1%) term holds each part to its prior on its own, so that the fit is always
defined and a split the traffic cannot tell (every prompt of one length: request and prompt_token are collinear) is
the least change from the prior, measured in seconds at the visits' own lengths: each part takes an equal share of the
difference.

Why three parts and not two: ``request`` (time to first token, the network, the queue a request waits in) is the part
that load moves most; a 2-part fit would keep it at its guessed value and push the queueing into the per-token parts.

The parts are kept non-negative (a negative price would pay the rule for longer prompts): when the unconstrained
minimum has a negative part, the constrained problem is solved exactly (the face of the non-negative orthant that
drops the negative parts, checked by its optimality conditions, else the best of the at most 7 faces). A part whose
regressor has been 0 in every visit (a stage that reports no prompt tokens) has no evidence and stays at its prior.

One update is a dozen float multiply-adds on slotted attributes and a 3×3 solve by Cramer's rule, written out, on the
Jacobi-scaled system (unit diagonal, so well conditioned whatever the tokens' scales): no numpy (a numpy call costs
more than the whole update at this size), about 1.5 µs; the clamped case about 10 µs. Reads are attribute reads.
"""

from __future__ import annotations

import math
from itertools import combinations

from common.settings import TokenPrices

_PARTS = 3  # request, prompt_token, output_token
_NEGLIGIBLE = 1e-12  # a regressor's squared sum below this (relative to the visits') is "never seen"
_RIDGE = 0.01  # δ: the prior's weight on each part alone, relative to its weight on the visits' own mix of parts


class MeasuredPrices:
    """One stage's seconds per request, per prompt token and per generated token: the configured ``prior`` refitted
    online from the stage's visits (module docstring). Reads like ``TokenPrices`` (``request``, ``prompt_token``,
    ``output_token``, ``cost``); ``observe`` adds a visit."""

    __slots__ = ("_g", "_gg", "_gy", "_n", "_p", "_pg", "_pp", "_py", "_y", "decay", "name", "output_token", "prior",
                 "prompt_token", "request", "strength", "visits")  # fmt: skip

    def __init__(self, prior: TokenPrices, half_life_visits: float, prior_strength: float, name: str = "") -> None:
        if half_life_visits <= 0 or prior_strength <= 0:
            raise ValueError("half_life_visits and prior_strength must be positive")
        self.name = name
        self.prior = (prior.request, prior.prompt_token, prior.output_token)
        self.decay = 0.5 ** (1.0 / half_life_visits)
        self.strength = prior_strength
        self.visits = 0  # visits fitted, all time
        # the decayed sums of x xᵀ and x y for x = (1, p, g): n = Σw, p = Σw·p, pp = Σw·p², ..., y = Σw·y
        self._n = self._p = self._g = self._pp = self._pg = self._gg = 0.0
        self._y = self._py = self._gy = 0.0
        self.request, self.prompt_token, self.output_token = self.prior

    def cost(self, prompt_tokens: float, output_tokens: float) -> float:
        return self.request + self.prompt_token * prompt_tokens + self.output_token * output_tokens

    def prices(self) -> TokenPrices:
        """The current estimate as configured prices are written."""
        return TokenPrices(request=self.request, prompt_token=self.prompt_token, output_token=self.output_token)

    def observe(self, seconds: float, prompt_tokens: float, output_tokens: float) -> None:
        """One completed visit: it took ``seconds`` for ``prompt_tokens`` read and ``output_tokens`` written. A visit
        with a negative or non-finite figure is not a measurement and is ignored."""
        y, p, g = float(seconds), float(prompt_tokens), float(output_tokens)
        if not (y >= 0.0 and p >= 0.0 and g >= 0.0 and math.isfinite(y + p + g)):
            return
        d = self.decay
        self._n = d * self._n + 1.0
        self._p = d * self._p + p
        self._g = d * self._g + g
        self._pp = d * self._pp + p * p
        self._pg = d * self._pg + p * g
        self._gg = d * self._gg + g * g
        self._y = d * self._y + y
        self._py = d * self._py + p * y
        self._gy = d * self._gy + g * y
        self.visits += 1
        self.request, self.prompt_token, self.output_token = self._fit()

    def _fit(self) -> tuple[float, float, float]:
        """Minimise Σ w (y - x·θ)² + k (θ - θ0)ᵀ (S + δ diag S) (θ - θ0) over θ ≥ 0, with S = Σ w x xᵀ and k = strength / Σ w.

        Written out for the 3×3 case (the normal equations A θ = b, Jacobi-scaled to unit diagonal, by Cramer's
        rule): this runs once per visit on the request path."""
        n, p, g, pp, pg, gg = self._n, self._p, self._g, self._pp, self._pg, self._gg
        r0, p0, g0 = self.prior
        k = self.strength / n
        kd = k * _RIDGE
        k1 = 1.0 + k
        a00, a11, a22 = (k1 + kd) * n, (k1 + kd) * pp, (k1 + kd) * gg  # A = (1 + k) S + k δ diag S
        b0 = self._y + k * (n * r0 + p * p0 + g * g0) + kd * n * r0  # b = Σ w x y + k S θ0 + k δ diag(S) θ0
        b1 = self._py + k * (p * r0 + pp * p0 + pg * g0) + kd * pp * p0
        b2 = self._gy + k * (g * r0 + pg * p0 + gg * g0) + kd * gg * g0
        if pp <= _NEGLIGIBLE * n or gg <= _NEGLIGIBLE * n:  # a part never seen stays at its prior
            return self._fit_seen((a00, k1 * p, k1 * g, a11, k1 * pg, a22), (b0, b1, b2))
        d0, d1, d2 = math.sqrt(a00), math.sqrt(a11), math.sqrt(a22)
        c01, c02, c12 = k1 * p / (d0 * d1), k1 * g / (d0 * d2), k1 * pg / (d1 * d2)  # unit diagonal
        u0, u1, u2 = b0 / d0, b1 / d1, b2 / d2
        m00, m01, m02 = 1.0 - c12 * c12, c02 * c12 - c01, c01 * c12 - c02  # cofactors
        m11, m12, m22 = 1.0 - c02 * c02, c01 * c02 - c12, 1.0 - c01 * c01
        det = m00 + c01 * m01 + c02 * m02
        t0 = (m00 * u0 + m01 * u1 + m02 * u2) / det
        t1 = (m01 * u0 + m11 * u1 + m12 * u2) / det
        t2 = (m02 * u0 + m12 * u1 + m22 * u2) / det
        if t0 >= 0.0 and t1 >= 0.0 and t2 >= 0.0:
            return t0 / d0, t1 / d1, t2 / d2
        return self._fit_seen((a00, k1 * p, k1 * g, a11, k1 * pg, a22), (b0, b1, b2))

    def _fit_seen(self, a: tuple[float, float, float, float, float, float], b: tuple[float, float, float]) -> tuple[float, float, float]:
        """The general case of ``_fit``: some part never seen (kept at its prior), or the minimum not non-negative
        (``a``: A's upper triangle, row by row)."""
        a00, a01, a02, a11, a12, a22 = a
        full = ((a00, a01, a02), (a01, a11, a12), (a02, a12, a22))
        diag = (a00, a11, a22)
        seen = tuple(j for j in range(_PARTS) if diag[j] > _NEGLIGIBLE * a00)
        d = [math.sqrt(diag[j]) if j in seen else 1.0 for j in range(_PARTS)]
        c = [[full[i][j] / (d[i] * d[j]) for j in range(_PARTS)] for i in range(_PARTS)]
        cb = [b[j] / d[j] for j in range(_PARTS)]
        u = _solve(c, cb, seen)
        if any(v < 0.0 for v in u):  # the non-negative minimum lies on a face
            u = _nonnegative(c, cb, seen, tuple(j for j, v in zip(seen, u, strict=True) if v >= 0.0))
        theta = list(self.prior)
        for j, v in zip(seen, u, strict=True):
            theta[j] = v / d[j]
        return theta[0], theta[1], theta[2]


def _solve(c: list[list[float]], b: list[float], idx: tuple[int, ...]) -> tuple[float, ...]:
    """Solve the (symmetric, positive definite) system ``c`` u = ``b`` restricted to rows and columns ``idx``."""
    if len(idx) == 3:
        i, j, k = idx
        a11, a12, a13, a22, a23, a33 = c[i][i], c[i][j], c[i][k], c[j][j], c[j][k], c[k][k]
        m11 = a22 * a33 - a23 * a23
        m12 = a13 * a23 - a12 * a33
        m13 = a12 * a23 - a13 * a22
        det = a11 * m11 + a12 * m12 + a13 * m13
        m22 = a11 * a33 - a13 * a13
        m23 = a12 * a13 - a11 * a23
        m33 = a11 * a22 - a12 * a12
        bi, bj, bk = b[i], b[j], b[k]
        return ((m11 * bi + m12 * bj + m13 * bk) / det, (m12 * bi + m22 * bj + m23 * bk) / det, (m13 * bi + m23 * bj + m33 * bk) / det)
    if len(idx) == 2:
        i, j = idx
        det = c[i][i] * c[j][j] - c[i][j] * c[i][j]
        return ((c[j][j] * b[i] - c[i][j] * b[j]) / det, (c[i][i] * b[j] - c[i][j] * b[i]) / det)
    if len(idx) == 1:
        return (b[idx[0]] / c[idx[0]][idx[0]],)
    return ()


def _nonnegative(c: list[list[float]], b: list[float], seen: tuple[int, ...], guess: tuple[int, ...]) -> tuple[float, ...]:
    """argmin ½ uᵀCu - bᵀu over u ≥ 0 (u on ``seen``; the others are not parts of it). C is positive definite, so the
    minimum is the minimum of the subspace of its face (the parts it leaves free, the others 0): first the face
    ``guess`` (the parts the unconstrained minimum left non-negative), taken when it satisfies the optimality
    conditions (feasible, and no clamped part's gradient negative); else, of the faces whose subspace minimum is
    feasible, the lowest."""
    u = _solve(c, b, guess)
    if all(v >= 0.0 for v in u) and all(
        sum(c[j][i] * v for i, v in zip(guess, u, strict=True)) - b[j] >= 0.0 for j in seen if j not in guess
    ):
        return tuple(u[guess.index(j)] if j in guess else 0.0 for j in seen)
    best, best_f = tuple(0.0 for _ in seen), 0.0  # the origin: every part clamped
    for size in range(1, len(seen) + 1):
        for free in combinations(seen, size):
            u = _solve(c, b, free)
            if any(v < 0.0 for v in u):
                continue
            f = 0.5 * sum(u[x] * c[i][j] * u[y] for x, i in enumerate(free) for y, j in enumerate(free))
            f -= sum(u[x] * b[i] for x, i in enumerate(free))
            if f < best_f:
                best_f = f
                best = tuple(u[free.index(j)] if j in free else 0.0 for j in seen)
    return best
