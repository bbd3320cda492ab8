"""Build the predictor named in the settings (fails at start-up, not at the first request)."""

from __future__ import annotations

from pathlib import Path

from common.settings import BaselineCoefficients, Settings
from predictor.serving.baseline import MeanLogprobPredictor
from predictor.serving.interface import Predictor
from predictor.serving.runtime import OnnxPredictor, PredictorLoadError

__all__ = ["PredictorLoadError", "load_predictor"]
PACKAGES_ROOT = Path(__file__).resolve().parents[2]  # the folder holding the `predictor` package: the repository, or site-packages


def load_predictor(settings: Settings) -> Predictor:
    cfg = settings.predictor
    n = len(settings.stages)
    if cfg.kind == "onnx":
        if not cfg.path:
            raise PredictorLoadError("predictor.kind is 'onnx' but predictor.path is not set")
        path = Path(cfg.path)
        if not path.is_absolute() and not path.exists():
            path = PACKAGES_ROOT / path  # configs name the shipped model as `predictor/models/...`, package data
        return OnnxPredictor.load(path, evidence=settings.cascade.risk.evidence)
    coefs = list(cfg.baseline) + [BaselineCoefficients()] * (n - len(cfg.baseline))
    return MeanLogprobPredictor(
        [(c.intercept, c.slope) for c in coefs[:n]],
        [s.prior for s in settings.stages],
        evidence=settings.cascade.risk.evidence,
    )
