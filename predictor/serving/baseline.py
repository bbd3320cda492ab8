"""The transparent baseline: a per-stage logistic calibration of mean token logprob.

It is what FrugalGPT/AutoMix-style cascades threshold on, kept as the
reference the learned predictor must beat, and as the default until a
learned model is configured. Priors are the per-stage constants of the config.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from common import defaults
from predictor.serving.features import INDEX, PromptStats
from predictor.serving.lengths import OutputLengths
from predictor.serving.rows import TOP_LOGPROBS

_MEAN = INDEX["lp_mean"]
_STAGE = INDEX["stage_index"]
_EMPTY = INDEX["empty_answer"]


class MeanLogprobPredictor:
    name = "mean-logprob-baseline"
    trained = False  # hand-set coefficients: the router runs safe with it (cascade.untrained_lambda_scale, shadow.untrained_rate)
    top_k = TOP_LOGPROBS  # it reads only the mean chosen logprob, so any k would do; the collection's k keeps features comparable
    lengths: tuple[OutputLengths, ...] = ()  # it knows nothing of answer lengths: per-token prices expect max_tokens
    checkpoints: tuple[int, ...] = ()  # no prefix model: it never aborts a stage
    prefix_strengths: tuple[float, ...] = ()

    def __init__(
        self, coefficients: Sequence[tuple[float, float]], stage_priors: Sequence[float], evidence: float = defaults.EVIDENCE
    ) -> None:
        self.coefficients = list(coefficients)
        self.stage_priors = list(stage_priors)
        self.evidence = evidence

    def predict(self, features: np.ndarray) -> float:
        if features[_EMPTY]:
            return 0.0
        stage = int(features[_STAGE])
        intercept, slope = self.coefficients[min(stage, len(self.coefficients) - 1)]
        z = intercept + slope * float(features[_MEAN])
        return 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0

    def predict_prefix(self, features: np.ndarray) -> float | None:
        return None

    def priors(self, prompt: PromptStats, n_stages: int) -> list[float]:
        return self.stage_priors[:n_stages]

    def beliefs_after(self, stage: int, answer_features: np.ndarray, prompt: PromptStats, n_stages: int) -> list[float]:
        """The configured priors of the stages above: the baseline learns nothing about them from an answer."""
        return self.priors(prompt, n_stages)[stage + 1 :]
