"""Build the predictor named in the settings (fails at start-up, not at the first request)."""

from __future__ import annotations

from predictor.baseline import MeanLogprobPredictor
from predictor.interface import Predictor
from router.config import BaselineCoefficients, Settings


class PredictorLoadError(RuntimeError):
    """The configured predictor cannot be loaded."""


def load_predictor(settings: Settings) -> Predictor:
    cfg = settings.predictor
    if cfg.kind == "baseline":
        n = len(settings.stages)
        coefs = list(cfg.baseline) + [BaselineCoefficients()] * (n - len(cfg.baseline))
        return MeanLogprobPredictor(
            [(c.intercept, c.slope) for c in coefs[:n]],
            [s.prior for s in settings.stages],
            evidence=settings.cascade.risk.evidence,
        )
    raise PredictorLoadError(f"predictor kind {cfg.kind!r} is not available in this build; use 'baseline'")
