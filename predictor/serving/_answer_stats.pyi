# The compiled answer statistics (_answer_stats.c); predictor.serving.features documents each value.
from collections.abc import Sequence

import numpy as np

def configure(floor: float, thresholds: Sequence[float], edge: int, margin_low: float, top1_tolerance: float, /) -> None: ...
def answer_stats(chosen: np.ndarray, top: np.ndarray, k: int, /) -> tuple[float, ...]: ...
