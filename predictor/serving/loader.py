"""Build the predictor named in the settings (fails at start-up, not at the first request)."""

from __future__ import annotations

from pathlib import Path

from common.settings import BaselineCoefficients, Settings
from predictor.serving.baseline import MeanLogprobPredictor
from predictor.serving.calibration import LambdaTable
from predictor.serving.interface import Predictor
from predictor.serving.runtime import OnnxPredictor, PredictorLoadError

__all__ = ["CURRENT_FILE", "PredictorLoadError", "load_lambda_table", "load_predictor", "model_dir", "model_version", "resolve"]
CURRENT_FILE = "current"  # in a model registry (``python -m training learn``): the name of the version in service
PACKAGES_ROOT = Path(__file__).resolve().parents[2]  # the folder holding the `predictor` package: the repository, or site-packages


def model_dir(settings: Settings) -> Path | None:
    """The directory of the configured ONNX model (None for the baseline)."""
    cfg = settings.predictor
    if cfg.kind != "onnx" or not cfg.path:
        return None
    path = Path(cfg.path)
    if not path.is_absolute() and not path.exists():
        path = PACKAGES_ROOT / path  # configs name the shipped model as `predictor/models/...`, package data
    return resolve(path)


def resolve(path: Path) -> Path:
    """A model directory as it is now: itself, or for a model registry the version its ``current`` file names.

    A registry's versions are directories that are never changed once written; promoting or rolling back rewrites
    ``current`` alone (atomically), so a replica reading it sees one whole version or the other."""
    current = path / CURRENT_FILE
    if not current.is_file():
        return path
    version = current.read_text().strip()
    if not version or "/" in version or version.startswith("."):
        raise PredictorLoadError(f"{current} names no version: {version!r}")
    return path / version


def model_version(directory: Path) -> str:
    """What ``/health`` and ``/metrics`` call a loaded model: its registry version, else its directory's name."""
    return directory.name


def load_lambda_table(settings: Settings) -> LambdaTable | None:
    """The configured model's calibration table (per-tenant quality targets); None without one."""
    path = model_dir(settings)
    return LambdaTable.load(path) if path is not None else None


def load_predictor(settings: Settings) -> Predictor:
    cfg = settings.predictor
    n = len(settings.stages)
    if cfg.kind == "onnx":
        path = model_dir(settings)
        if path is None:
            raise PredictorLoadError("predictor.kind is 'onnx' but predictor.path is not set")
        return OnnxPredictor.load(path, evidence=settings.cascade.risk.evidence)
    coefs = list(cfg.baseline) + [BaselineCoefficients()] * (n - len(cfg.baseline))
    return MeanLogprobPredictor(
        [(c.intercept, c.slope) for c in coefs[:n]],
        [s.prior for s in settings.stages],
        evidence=settings.cascade.risk.evidence,
    )
