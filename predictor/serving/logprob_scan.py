"""The typed interface to the compiled logprob scanner (``_logprob_scan.c``): body bytes in, arrays or a decline out.

Why a module of its own: the scanner reads bytes another process wrote, so it sits behind one
small function that the rest of the code calls (``features.scan_body``), that the fuzzer
(tests/predictor/serving/fuzz_scanner.py) and the sanitiser build (``make test-sanitizers``)
exercise, and whose contract is checked in one place (tests/predictor/serving/scan_oracle.py):
for any bytes, either None or exactly the arrays decoding the JSON gives.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

try:
    from predictor.serving import _logprob_scan
except ImportError as exc:  # pragma: no cover - an install problem, reported as such
    raise ImportError(
        f"predictor.serving._logprob_scan is not built ({exc}); install the package (`pip install -e .`, needs a C compiler)"
    ) from None

Positions = Callable[[int], Sequence[int] | None]
"""Which positions of an n-token answer to read (None: all of them)."""


class LogprobScan(NamedTuple):
    """The first choice's logprobs as the scanner read them (a NamedTuple: built at C speed on the hot path)."""

    n_tokens: int  # the answer's length: entries in logprobs.content
    chosen: np.ndarray  # (m,) float32: each read position's chosen-token logprob
    top: np.ndarray  # (m, k) float32: its top-k alternatives' logprobs in body order, -inf where fewer than k
    finish_reason: str | None  # None: null or absent
    logprobs_span: tuple[int, int] | None  # bytes of the choice's "logprobs" value (None: no such key)


def _every(n: int) -> None:
    return None


def scan(body: bytes, k: int, positions: Positions = _every) -> LogprobScan | None:
    """The first choice's logprobs from a chat completion's raw JSON bytes; None when the scanner declines.

    ``k`` (1..64) alternatives per position are kept; ``positions(n)`` picks the positions read.
    A decline (None) means "decode the JSON instead": the body is not in the shape the scanner
    knows (it never raises on any body). The arrays are read-only views of the bytes it returned.
    """
    found = _logprob_scan.read(body, k, positions)
    if found is None:
        return None
    n, chosen, top, finish, start, end = found
    m = len(chosen) // 4
    span = (start, end) if start >= 0 else None
    return _new(LogprobScan, (n, _array((m,), _F32, chosen), _array((m, k), _F32, top), finish, span))


_new = tuple.__new__  # LogprobScan(...) runs a Python-level __new__: twice the cost, on the router's hot path
# The arrays over the returned bytes, each in one call (np.frombuffer then reshape took 1.5x as long, 3 us more with
# numpy's code out of the caches, as it is after the router has decoded something else).
_array = np.ndarray
_F32 = np.dtype(np.float32)
