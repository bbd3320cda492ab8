"""What the router needs from a predictor, whichever model backs it."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from predictor.serving.features import PromptStats
from predictor.serving.lengths import OutputLengths


class Predictor(Protocol):
    """Estimates P(answer acceptable) for a stage answer, prompt-only priors, and beliefs about higher stages after an answer."""

    name: str
    trained: bool  # fitted on answers of this ladder (False: a guess, such as the mean-logprob baseline)
    evidence: float  # pseudo-count for the risk adjustment (policy.shrink)
    top_k: int  # alternatives per position the features are defined at: the cascade asks each stage for exactly these
    lengths: tuple[OutputLengths, ...]  # per stage, its answers' lengths (empty: unknown); what per-token prices expect
    checkpoints: tuple[int, ...]  # generated-token counts at which a streaming stage is judged (empty: no early exit)
    prefix_strengths: tuple[float, ...]  # per checkpoint: Beta concentration of the finished answer's p̂ around the prefix's estimate

    def predict_prefix(self, features: np.ndarray) -> float | None:
        """P(the finished answer is acceptable) from the ``answer_features`` of a prefix; None: no prefix model."""
        ...

    def predict(self, features: np.ndarray) -> float:
        """p̂ for one ``answer_features`` vector."""
        ...

    def priors(self, prompt: PromptStats, n_stages: int) -> list[float]:
        """Prompt-only P(acceptable) per stage, before any stage has run."""
        ...

    def beliefs_after(self, stage: int, answer_features: np.ndarray, prompt: PromptStats, n_stages: int) -> list[float]:
        """P(acceptable) for each stage j > ``stage`` (``n_stages - stage - 1`` values) once ``stage`` has answered
        with ``answer_features``: what this answer says about the stages above replaces their prompt-only
        priors in the stopping rule. A predictor with no such model returns the priors of those stages."""
        ...
