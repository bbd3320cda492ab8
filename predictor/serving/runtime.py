"""The learned predictor at serving time: three ONNX graphs run by onnxruntime.

* ``predictor.onnx`` (kind ``answer``): p̂ for one stage answer;
* ``prior.onnx`` (kind ``prior``): each stage's P(acceptable) from the prompt alone;
* ``posterior.onnx`` (kind ``posterior``): after stage i has answered, P(stage j acceptable | prompt,
  stage i's answer) for each j > i -- the beliefs that replace the priors of the stages above once an
  answer is in hand;
* ``prefix.onnx`` (kind ``prefix``, optional): P(the finished answer is acceptable | the first t tokens a
  stage has streamed), on the same feature vector computed over the prefix: what early exit judges a
  stage by while it writes. Without it the router never aborts a stage.

The answer model's metadata also carries each stage's answer lengths on the training split
(``output_lengths``, ``predictor.serving.lengths``): what a per-token price expects an answer to come to.

Loaded once at start-up; every problem (missing file, not an ONNX model, a
model trained on another feature version or other feature names, a graph
whose input width is wrong) raises ``PredictorLoadError`` then, never at the
first request. Sessions are single-threaded (the router serves many requests
on 2 cores; intra-op threads only add wake-up latency for a 30-wide input),
and the input buffer is allocated once. Isotonic calibration is a
``np.interp`` over thresholds stored in the model's metadata.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common import defaults
from predictor.serving.features import (
    FEATURE_NAMES,
    FEATURE_VERSION,
    N_FEATURES,
    POSTERIOR_FEATURE_NAMES,
    PROMPT_FEATURE_NAMES,
    PromptStats,
    posterior_features,
    prompt_features,
)
from predictor.serving.lengths import OutputLengths

ANSWER_FILE = "predictor.onnx"
PRIOR_FILE = "prior.onnx"
POSTERIOR_FILE = "posterior.onnx"
PREFIX_FILE = "prefix.onnx"
CARD_FILE = "card.json"


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
            raise PredictorLoadError(
                f"predictor file {path} does not exist; train one with `python -m training train` or set predictor.kind: baseline"
            )
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise PredictorLoadError(f"predictor file {path} is not a loadable ONNX model: {exc}") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("kind") != kind:
            raise PredictorLoadError(f"{path} is a {meta.get('kind')!r} model, expected {kind!r}")
        version = meta.get("feature_version")
        if version != str(FEATURE_VERSION):
            raise PredictorLoadError(
                f"{path} was trained on feature version {version}, this build computes version {FEATURE_VERSION}; retrain it"
            )
        top_k = meta.get("top_logprobs")
        if top_k is None or not top_k.isdigit() or int(top_k) < 1:
            raise PredictorLoadError(
                f"{path} does not record the top-k its features were computed with (metadata 'top_logprobs'); retrain it"
            )
        self.top_k = int(top_k)
        trained_names = tuple(json.loads(meta.get("feature_names", "[]")))
        if trained_names != names:
            raise PredictorLoadError(f"{path} expects features {list(trained_names)}, this build computes {list(names)}; retrain it")
        shape = self.session.get_inputs()[0].shape
        if shape[-1] != len(names):
            raise PredictorLoadError(f"{path} takes {shape[-1]} inputs, expected {len(names)}")
        cal = json.loads(meta.get("calibration", "null")) or {"x": [0.0, 1.0], "y": [0.0, 1.0]}
        self.cal_x = np.asarray(cal["x"], dtype=np.float64)
        self.cal_y = np.asarray(cal["y"], dtype=np.float64)
        self._cx, self._cy = [float(v) for v in cal["x"]], [float(v) for v in cal["y"]]
        self.model = meta.get("model", "?")
        self.meta = meta
        self.input = self.session.get_inputs()[0].name
        self.output = next(o.name for o in self.session.get_outputs() if o.name.startswith("prob"))

    def raw(self, x: np.ndarray) -> np.ndarray:
        out: np.ndarray = self.session.run([self.output], {self.input: x})[0]
        return out[:, 1]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        calibrated: np.ndarray = np.interp(self.raw(x), self.cal_x, self.cal_y)
        return calibrated

    def calibrate(self, raw: float) -> float:
        """``np.interp`` for one value, ~10x cheaper in pure Python on the per-request path."""
        xs, ys = self._cx, self._cy
        if raw <= xs[0]:
            return ys[0]
        if raw >= xs[-1]:
            return ys[-1]
        i = bisect.bisect_right(xs, raw)
        x0, x1 = xs[i - 1], xs[i]
        return ys[i - 1] + (ys[i] - ys[i - 1]) * (raw - x0) / (x1 - x0) if x1 > x0 else ys[i]


class OnnxPredictor:
    """The ``Predictor`` the router uses by default: answer model, prompt-only prior, beliefs after an answer."""

    def __init__(
        self, answer: _Graph, prior: _Graph, posterior: _Graph, evidence: float = defaults.EVIDENCE, prefix: _Graph | None = None
    ) -> None:
        self.answer = answer
        self.prior = prior
        self.posterior = posterior
        self.prefix = prefix
        self.evidence = evidence
        self.name = f"onnx-{answer.model}"
        self.trained = True
        for what, graph in (("prior", prior), ("belief model", posterior), ("prefix model", prefix)):
            if graph is not None and graph.top_k != answer.top_k:
                raise PredictorLoadError(
                    f"the answer model was trained at top-k {answer.top_k}, the {what} at {graph.top_k}; retrain them together"
                )
        self.top_k = answer.top_k
        try:
            self.lengths = tuple(OutputLengths(tuple(float(v) for v in pts)) for pts in json.loads(answer.meta.get("output_lengths", "[]")))
        except (TypeError, ValueError):
            raise PredictorLoadError("the answer model's metadata 'output_lengths' is not a list of lists of numbers; retrain it") from None
        self.checkpoints = tuple(int(v) for v in json.loads(prefix.meta.get("checkpoints", "[]"))) if prefix is not None else ()
        self.prefix_strengths = tuple(float(v) for v in json.loads(prefix.meta.get("strengths", "[]"))) if prefix is not None else ()
        if len(self.prefix_strengths) != len(self.checkpoints):
            raise PredictorLoadError("the prefix model needs one strength per checkpoint in its metadata; retrain it")
        # One request = one row: bind pre-allocated input and output buffers once (io-binding
        # halves onnxruntime's per-call overhead against session.run with a feed dict).
        self._x = np.zeros((1, N_FEATURES), dtype=np.float32)
        self._p = np.zeros((1, 2), dtype=np.float32)
        session = answer.session
        self._binding = session.io_binding()
        self._binding.bind_cpu_input(answer.input, self._x)
        self._binding.bind_output(answer.output, "cpu", 0, np.float32, list(self._p.shape), self._p.ctypes.data)
        for out in session.get_outputs():
            if out.name != answer.output:
                self._binding.bind_output(out.name, "cpu")
        # The same buffers as flat float32 memoryviews: a row copied in and p̂ read out without numpy's
        # indexing (several us each with numpy's code out of the caches, as on the router's path).
        self._x_flat = self._x.data.cast("B").cast("f")
        self._p_flat = self._p.data.cast("B").cast("f")

    @classmethod
    def load(cls, directory: Path, evidence: float = defaults.EVIDENCE) -> OnnxPredictor:
        directory = Path(directory)
        if not directory.is_dir():
            raise PredictorLoadError(f"predictor directory {directory} does not exist")
        return cls(
            _Graph(directory / ANSWER_FILE, "answer", FEATURE_NAMES),
            _Graph(directory / PRIOR_FILE, "prior", PROMPT_FEATURE_NAMES),
            _Graph(directory / POSTERIOR_FILE, "posterior", POSTERIOR_FEATURE_NAMES),
            evidence,
            _Graph(directory / PREFIX_FILE, "prefix", FEATURE_NAMES) if (directory / PREFIX_FILE).exists() else None,
        )

    def predict(self, features: np.ndarray) -> float:
        view = features.data if isinstance(features, np.ndarray) else None
        if view is not None and view.format == "f" and view.nbytes == 4 * N_FEATURES and view.c_contiguous:  # answer_features' vector
            self._x_flat[:] = view.cast("B").cast("f")
        else:
            self._x[0] = features
        self.answer.session.run_with_iobinding(self._binding)
        return self.answer.calibrate(self._p_flat[1])

    def predict_prefix(self, features: np.ndarray) -> float | None:
        """P(the finished answer is acceptable) from the features of the prefix streamed so far; None without a prefix model."""
        if self.prefix is None:
            return None
        return float(self.prefix(np.ascontiguousarray(features, dtype=np.float32).reshape(1, -1))[0])

    def prefix_batch(self, x: np.ndarray) -> np.ndarray:
        if self.prefix is None:
            raise PredictorLoadError("this predictor has no prefix model")
        return self.prefix(np.ascontiguousarray(x, dtype=np.float32))

    def predict_batch(self, x: np.ndarray) -> np.ndarray:
        return self.answer(np.ascontiguousarray(x, dtype=np.float32))

    def priors(self, prompt: PromptStats, n_stages: int) -> list[float]:
        return [float(p) for p in self.prior(prompt_features(prompt, n_stages))]

    def prior_batch(self, x: np.ndarray) -> np.ndarray:
        return self.prior(np.ascontiguousarray(x, dtype=np.float32))

    def beliefs_after(self, stage: int, answer_features: np.ndarray, prompt: PromptStats, n_stages: int) -> list[float]:
        """P(stage j acceptable | prompt, this answer) for j = stage+1 .. n_stages-1 (the prompt enters through
        the answer vector's prompt statistics; ``prompt`` is part of the protocol for models that read more)."""
        if stage + 1 >= n_stages:
            return []
        return [float(p) for p in self.posterior(posterior_features(answer_features, stage, n_stages))]

    def posterior_batch(self, x: np.ndarray) -> np.ndarray:
        return self.posterior(np.ascontiguousarray(x, dtype=np.float32))
