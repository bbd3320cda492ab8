"""The logprob scanner's contract, checked in one place: for any bytes, a decline or exactly what decoding gives.

Used by the tests (tests/predictor/serving/test_native.py), the coverage-guided fuzzer
(fuzz_scanner.py, ``make fuzz-scanner``) and the sanitiser run (``make test-sanitizers``), so that
all three hold the scanner to the same oracle: orjson decodes the body, ``AnswerStats.from_choice``
(the training path) reads the first choice, and the scanner's arrays must be the same float32
bits, its length and finish reason the same, and its logprobs span must be exactly the choice's
"logprobs" value (the router decodes the body with that span cut out, and the span later).

The scanner may accept a body a decoder refuses (it does not validate every string or the numbers
at positions it does not read); the router then finds out when it decodes the rest of the body.
What it may never do is raise, or accept a body that decodes and give anything else.
"""

from __future__ import annotations

import enum
import random
from typing import Any

import numpy as np
import orjson

from predictor.serving.features import AnswerStats, scan_body


class Outcome(enum.Enum):
    DECLINED = "declined"  # the scanner returned None, and decoding cannot read an answer either
    DECLINED_READABLE = "declined-readable"  # None, though decoding reads an answer: allowed (the caller decodes), but counted
    SAME = "same"  # accepted, and equal to decoding
    UNDECODABLE = "undecodable"  # accepted, but orjson refuses the body: the router's decode reports it


class Mismatch(AssertionError):
    """The scanner accepted a body that decodes, and read something else from it."""


def _bits(a: np.ndarray) -> np.ndarray:
    assert a.dtype == np.float32, a.dtype
    return a.view(np.uint32)


def check(body: bytes, k: int) -> tuple[Outcome, AnswerStats | None]:
    """Scan ``body`` with ``k`` alternatives, compare with decoding it; raise ``Mismatch`` on any difference."""
    scanned = scan_body(body, k)  # an exception here is a failure too: the scanner must never raise
    if scanned is None:
        return (Outcome.DECLINED_READABLE if decoded(body, k) is not None else Outcome.DECLINED), None
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return Outcome.UNDECODABLE, scanned.stats
    fast = scanned.stats
    try:
        choice = data["choices"][0]
        with np.errstate(over="ignore"):  # a logprob past float32's range is -inf in both paths
            slow = AnswerStats.from_choice(choice, k)
    except Exception as exc:  # any failure of the training path on a body the scanner accepted is a mismatch
        raise Mismatch(f"scanner accepted a body the training path cannot read ({type(exc).__name__}: {exc}): {body[:300]!r}") from exc
    problems = []
    if (fast.length, fast.finish_reason) != (slow.length, slow.finish_reason):
        problems.append(f"length/finish {(fast.length, fast.finish_reason)} != {(slow.length, slow.finish_reason)}")
    if fast.token_logprobs.shape != slow.token_logprobs.shape or not np.array_equal(_bits(fast.token_logprobs), _bits(slow.token_logprobs)):
        problems.append(f"chosen {fast.token_logprobs!r} != {slow.token_logprobs!r}")
    if fast.top_logprobs.shape != slow.top_logprobs.shape or not np.array_equal(_bits(fast.top_logprobs), _bits(slow.top_logprobs)):
        problems.append(f"top {fast.top_logprobs!r} != {slow.top_logprobs!r}")
    problems += _span_problems(body, data, choice, scanned.logprobs_span)
    if problems:
        raise Mismatch(f"{'; '.join(problems)}; body {body[:300]!r}")
    return Outcome.SAME, fast


def decoded(body: bytes, k: int) -> AnswerStats | None:
    """The training path's arrays for the body, None when it is not a chat completion that path can read."""
    try:
        with np.errstate(over="ignore"):
            return AnswerStats.from_choice(orjson.loads(body)["choices"][0], k)
    except Exception:  # not JSON, no choices, a choice or logprob of another type: all "cannot read"
        return None


def _span_problems(body: bytes, data: Any, choice: Any, span: tuple[int, int] | None) -> list[str]:
    """The router's deferred decode: the span is the "logprobs" value, and the body decodes the same without it."""
    if not isinstance(choice, dict):
        return [f"choice is {type(choice).__name__}"]
    if span is None:
        return [] if "logprobs" not in choice else ["no span, but the choice has logprobs"]
    start, end = span
    try:
        value = orjson.loads(body[start:end])
        rest = orjson.loads(body[:start] + b"null" + body[end:])
    except orjson.JSONDecodeError as exc:
        return [f"span {span} does not decode: {exc}"]
    if "logprobs" not in choice or value != choice["logprobs"]:
        return [f"span {span} is not the choice's logprobs"]
    data["choices"][0] = {**choice, "logprobs": None}
    return [] if rest == data else ["the body without the span decodes differently"]


_ALPHABET = b'{}[]",:\\ -0123456789.eEnulltrx'


def mutate(rng: random.Random, raw: bytes) -> bytes:
    """One to four byte edits -- a byte replaced, a run cut, bytes inserted, the tail cut -- with JSON-ish bytes."""
    out = bytearray(raw)
    for _ in range(rng.randint(1, 4)):
        if not out:
            break
        at = rng.randrange(len(out))
        op = rng.random()
        if op < 0.4:
            out[at] = rng.choice(_ALPHABET)
        elif op < 0.7:
            del out[at : at + rng.randint(1, 20)]
        elif op < 0.9:
            out[at:at] = bytes(rng.choice(_ALPHABET) for _ in range(rng.randint(1, 5)))
        else:
            del out[at:]
    return bytes(out)
