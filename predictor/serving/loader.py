"""Build the predictor named in the settings (fails at start-up, not at the first request)."""

from __future__ import annotations

from pathlib import Path

from common.settings import BaselineCoefficients, Settings
from predictor.serving.baseline import MeanLogprobPredictor
from predictor.serving.calibration import LambdaTable
from predictor.serving.interface import Predictor
from predictor.serving.runtime import OnnxPredictor, PredictorLoadError

__all__ = [
    "CURRENT_FILE",
    "PredictorLoadError",
    "baseline_predictor",
    "load_model",
    "load_predictor",
    "model_dir",
    "model_version",
    "resolve",
    "watched",
]
CURRENT_FILE = "current"  # in a model registry (``python -m training learn``): the name of the version in service
PACKAGES_ROOT = Path(__file__).resolve().parents[2]  # the folder holding the `predictor` package: the repository, or site-packages


def model_dir(settings: Settings) -> Path | None:
    """The directory of the ONNX model to serve now (None: the baseline).

    ``kind: onnx``: ``predictor.path`` (a model directory, or a registry's version in service). ``kind: baseline``
    with a ``path``: a new ladder learning from its traffic (``training learn --data none``): the baseline until
    that registry names a version, then that version."""
    cfg = settings.predictor
    if not cfg.path:
        return None
    path = Path(cfg.path)
    if cfg.kind != "onnx":  # a registry the learner writes, relative to the working directory like the traffic log
        return resolve(path) if (path / CURRENT_FILE).is_file() else None
    if not path.is_absolute() and not path.exists():
        path = PACKAGES_ROOT / path  # configs name the shipped model as `predictor/models/...`, package data
    return resolve(path)


def watched(settings: Settings) -> bool:
    """Whether replicas watch ``predictor.path`` for promotions (``router.model_reload``): a registry may be there
    or may come (``kind: baseline`` with a path), and ``reload_s`` is not 0."""
    return bool(settings.predictor.path) and settings.predictor.reload_s > 0


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


def load_predictor(settings: Settings) -> Predictor:
    return load_model(settings)[0]


def load_model(settings: Settings) -> tuple[Predictor, LambdaTable | None, Path | None]:
    """The predictor in service, its λ table and its directory (None: the baseline), the registry read once: a
    promotion landing between two reads would pair one version's model with another's name."""
    cfg = settings.predictor
    path = model_dir(settings)
    if path is not None:
        return OnnxPredictor.load(path, evidence=settings.cascade.risk.evidence), LambdaTable.load(path), path
    if cfg.kind == "onnx":
        raise PredictorLoadError("predictor.kind is 'onnx' but predictor.path is not set")
    return baseline_predictor(settings), None, None


def baseline_predictor(settings: Settings) -> MeanLogprobPredictor:
    """The config's mean-logprob baseline (``predictor.baseline`` coefficients, each stage's ``prior``)."""
    n = len(settings.stages)
    coefs = list(settings.predictor.baseline) + [BaselineCoefficients()] * (n - len(settings.predictor.baseline))
    return MeanLogprobPredictor(
        [(c.intercept, c.slope) for c in coefs[:n]],
        [s.prior for s in settings.stages],
        evidence=settings.cascade.risk.evidence,
    )
