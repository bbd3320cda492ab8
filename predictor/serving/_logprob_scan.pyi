# The compiled scanner (_logprob_scan.c); call it through predictor.serving.logprob_scan.
from collections.abc import Callable, Sequence

def read(
    body: bytes, k: int, positions: Callable[[int], Sequence[int] | None], /
) -> tuple[int, bytes, bytes, str | None, int, int] | None: ...
