"""Build the predictor named in the settings (fails at start-up, not at the first request)."""

from __future__ import annotations

from pathlib import Path

from predictor.baseline import MeanLogprobPredictor
from predictor.interface import Predictor
from predictor.runtime import OnnxPredictor, PredictorLoadError
from router.config import BaselineCoefficients, Settings

__all__ = ["PredictorLoadError", "load_predictor"]
REPO_ROOT = Path(__file__).resolve().parent.parent


def load_predictor(settings: Settings) -> Predictor:
    cfg = settings.predictor
    n = len(settings.stages)
    if cfg.kind == "onnx":
        if not cfg.path:
            raise PredictorLoadError("predictor.kind is 'onnx' but predictor.path is not set")
        path = Path(cfg.path)
        if not path.is_absolute() and not path.exists():
            path = REPO_ROOT / path  # configs name the shipped model relative to the repository
        return OnnxPredictor.load(path, evidence=settings.cascade.risk.evidence)
    coefs = list(cfg.baseline) + [BaselineCoefficients()] * (n - len(cfg.baseline))
    return MeanLogprobPredictor(
        [(c.intercept, c.slope) for c in coefs[:n]],
        [s.prior for s in settings.stages],
        evidence=settings.cascade.risk.evidence,
    )
