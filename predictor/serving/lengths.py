"""How long a stage's answers run: the part of a per-token price that is not known before the stage has written.

A stage priced per generated token (``TokenPrices.output_token``) costs what its answer will come to, which the
stopping rule must expect before the stage runs, and, when judging a stage while it writes (early exit), what is
still to come after the tokens seen so far. Both are read off the stage's answer lengths on the training split,
kept as 20 equally weighted quantile points (2.5 %, 7.5 %, ..., 97.5 %) in the exported model's metadata:
small, fixed, and the same numbers in the router and in the offline replay.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

N_POINTS = 20
LEVELS = tuple((k + 0.5) / N_POINTS for k in range(N_POINTS))


@dataclass(frozen=True)
class OutputLengths:
    """One stage's generated-token counts, as ``N_POINTS`` equally weighted quantile points (ascending)."""

    points: tuple[float, ...]

    @classmethod
    def fit(cls, counts: Sequence[float]) -> OutputLengths:
        """From observed counts (at least one)."""
        arr = np.asarray(counts, dtype=np.float64)
        if arr.size == 0:
            raise ValueError("no answer lengths to fit")
        return cls(tuple(float(v) for v in np.quantile(arr, LEVELS)))

    def mean(self, cap: float | None = None) -> float:
        """E[min(L, cap)]: a request's ``max_tokens`` cuts every answer there."""
        pts = np.asarray(self.points)
        return float(np.minimum(pts, cap).mean()) if cap is not None else float(pts.mean())

    def remaining(self, generated: float, cap: float | None = None) -> float:
        """E[min(L, cap) - t | L > t] for t = ``generated``: the tokens still to come of an answer that has not ended.

        Past every point the answer is longer than any seen: one more checkpoint interval's worth is assumed
        (``generated`` itself, at least 1), bounded by the cap.
        """
        pts = np.asarray(self.points)
        if cap is not None:
            pts = np.minimum(pts, cap)
        longer = pts[pts > generated]
        if longer.size:
            return float(longer.mean() - generated)
        left = max(float(generated), 1.0)
        return left if cap is None else max(min(left, cap - generated), 0.0)
