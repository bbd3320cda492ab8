"""What the router needs from a predictor, whichever model backs it."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from predictor.serving.features import PromptStats


class Predictor(Protocol):
    """Estimates P(answer acceptable) for a stage answer, and prompt-only priors."""

    name: str
    evidence: float  # pseudo-count for the risk adjustment (policy.shrink)
    top_k: int  # alternatives per position the features are defined at: the cascade asks each stage for exactly these

    def predict(self, features: np.ndarray) -> float:
        """p̂ for one ``answer_features`` vector."""
        ...

    def priors(self, prompt: PromptStats, n_stages: int) -> list[float]:
        """Prompt-only P(acceptable) per stage, before any stage has run."""
        ...
