"""The learned predictor at serving time: two ONNX graphs run by onnxruntime.

Loaded once at start-up; every problem (missing file, not an ONNX model, a
model trained on another feature version or other feature names, a graph
whose input width is wrong) raises ``PredictorLoadError`` then, never at the
first request. Sessions are single-threaded (the router serves many requests
on 2 cores; intra-op threads only add wake-up latency for a 30-wide input),
and the input buffer is allocated once. Isotonic calibration is a
``np.interp`` over thresholds stored in the model's metadata.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from predictor.features import FEATURE_NAMES, FEATURE_VERSION, N_FEATURES, PROMPT_FEATURE_NAMES, PromptStats, prompt_features

ANSWER_FILE = "predictor.onnx"
PRIOR_FILE = "prior.onnx"
CARD_FILE = "card.json"
DEFAULT_EVIDENCE = 50.0


class PredictorLoadError(RuntimeError):
    """The configured predictor cannot be loaded."""


@dataclass(frozen=True)
class Calibration:
    x: tuple[float, ...]
    y: tuple[float, ...]


class _Graph:
    """One ONNX classifier with its metadata contract checked."""

    def __init__(self, path: Path, kind: str, names: tuple[str, ...]) -> None:
        import onnxruntime as ort

        if not path.is_file():
            raise PredictorLoadError(f"predictor file {path} does not exist; train one with `python -m predictor train` or set predictor.kind: baseline")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types for corrupt files
            raise PredictorLoadError(f"predictor file {path} is not a loadable ONNX model: {exc}") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("kind") != kind:
            raise PredictorLoadError(f"{path} is a {meta.get('kind')!r} model, expected {kind!r}")
        version = meta.get("feature_version")
        if version != str(FEATURE_VERSION):
            raise PredictorLoadError(f"{path} was trained on feature version {version}, this build computes version {FEATURE_VERSION}; retrain it")
        trained_names = tuple(json.loads(meta.get("feature_names", "[]")))
        if trained_names != names:
            raise PredictorLoadError(f"{path} expects features {list(trained_names)}, this build computes {list(names)}; retrain it")
        shape = self.session.get_inputs()[0].shape
        if shape[-1] != len(names):
            raise PredictorLoadError(f"{path} takes {shape[-1]} inputs, expected {len(names)}")
        cal = json.loads(meta.get("calibration", "null")) or {"x": [0.0, 1.0], "y": [0.0, 1.0]}
        self.cal_x = np.asarray(cal["x"], dtype=np.float64)
        self.cal_y = np.asarray(cal["y"], dtype=np.float64)
        self.model = meta.get("model", "?")
        self.input = self.session.get_inputs()[0].name
        self.output = next(o.name for o in self.session.get_outputs() if o.name.startswith("prob"))

    def raw(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self.output], {self.input: x})[0][:, 1]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.interp(self.raw(x), self.cal_x, self.cal_y)


class OnnxPredictor:
    """The ``Predictor`` the router uses by default: answer model + prompt-only prior."""

    def __init__(self, answer: _Graph, prior: _Graph, evidence: float = DEFAULT_EVIDENCE) -> None:
        self.answer = answer
        self.prior = prior
        self.evidence = evidence
        self.name = f"onnx-{answer.model}"
        self._x = np.zeros((1, N_FEATURES), dtype=np.float32)

    @classmethod
    def load(cls, directory: Path, evidence: float = DEFAULT_EVIDENCE) -> OnnxPredictor:
        directory = Path(directory)
        if not directory.is_dir():
            raise PredictorLoadError(f"predictor directory {directory} does not exist")
        return cls(_Graph(directory / ANSWER_FILE, "answer", FEATURE_NAMES), _Graph(directory / PRIOR_FILE, "prior", PROMPT_FEATURE_NAMES), evidence)

    def predict(self, features: np.ndarray) -> float:
        self._x[0] = features
        raw = float(self.answer.session.run([self.answer.output], {self.answer.input: self._x})[0][0, 1])
        return float(np.interp(raw, self.answer.cal_x, self.answer.cal_y))

    def predict_batch(self, x: np.ndarray) -> np.ndarray:
        return self.answer(np.ascontiguousarray(x, dtype=np.float32))

    def priors(self, prompt: PromptStats, n_stages: int) -> list[float]:
        return self.prior(prompt_features(prompt, n_stages)).tolist()

    def prior_batch(self, x: np.ndarray) -> np.ndarray:
        return self.prior(np.ascontiguousarray(x, dtype=np.float32))
