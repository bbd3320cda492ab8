"""The feature vector: one definition, used by training and by the router.

A stage's answer is summarised from its token logprobs and top-k
alternatives, its length and finish reason, simple prompt statistics, the
stage index, and -- when a lower stage's draft was verified -- the share of the
draft the stage accepted. ``FEATURE_VERSION`` and ``FEATURE_NAMES`` are
recorded in every exported model; the runtime refuses a mismatch.

``prompt_features`` is the input of the prompt-only prior (where to start),
a subset of the same quantities.

Extraction works on numpy arrays (``AnswerStats``). The router builds them
straight from the stage's response bytes (``AnswerStats.from_body``, the
compiled scanner behind ``logprob_scan.scan``: decoding a 512-token top-5 answer
into Python objects alone costs ~2 ms); training and any already-decoded answer use
``AnswerStats.from_choice`` on the OpenAI ``logprobs.content`` list. Both give
the same arrays for the same answer (tests/predictor/serving/test_native.py), and
``answer_features`` computes the logprob statistics from them in C as well
(``_answer_stats.c``).
An answer longer than ``MAX_POSITIONS`` tokens is read at ``MAX_POSITIONS``
positions (its first and last ``EDGE`` and evenly spaced ones between), so
the per-answer cost of everything but the scan over the bytes is bounded
whatever the answer's length. Its statistics (means, quantiles, shares) are
then estimates over those positions; its length is the true one.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import chain
from operator import itemgetter
from typing import Any

import numpy as np

from predictor.serving.logprob_scan import scan

try:
    from predictor.serving import _answer_stats
except ImportError as exc:  # pragma: no cover - an install problem, reported as such
    raise ImportError(
        f"predictor.serving._answer_stats is not built ({exc}); install the package (`pip install -e .`, needs a C compiler)"
    ) from None

FEATURE_VERSION = 3  # 2: answers read at MAX_POSITIONS positions at most; 3: statistics in double precision (C)
LOW_LOGPROB = (-0.5, -1.0, -2.3, -4.6)  # p < 0.61, 0.37, 0.1, 0.01
EDGE = 16  # tokens at the start/end of the answer summarised separately
MAX_POSITIONS = 128  # positions read from a longer answer (EDGE at each end, the rest evenly spaced)
_CODE = re.compile(r"```|\bdef |\bclass |\breturn\b|[{};]\s*$", re.MULTILINE)
_DIGIT = re.compile(r"\d")
_LOGPROB = itemgetter("logprob")
_TOPS = itemgetter("top_logprobs")

FEATURE_NAMES: tuple[str, ...] = (
    "lp_mean",
    "lp_min",
    "lp_std",
    "lp_q05",
    "lp_q25",
    "lp_q50",
    *(f"lp_frac_below_{abs(t):g}" for t in LOW_LOGPROB),
    "lp_mean_first",
    "lp_mean_last",
    "entropy_mean",
    "entropy_max",
    "margin_mean",
    "margin_min",
    "margin_frac_below_0.5",
    "top1_frac",
    "log_answer_tokens",
    "finish_length",
    "empty_answer",
    "log_prompt_tokens",
    "log_prompt_chars",
    "n_messages",
    "prompt_code_hint",
    "prompt_digit_share",
    "stage_index",
    "has_draft",
    "draft_accept_frac",
    "log_draft_accepted",
)
N_FEATURES = len(FEATURE_NAMES)
INDEX: Mapping[str, int] = {n: i for i, n in enumerate(FEATURE_NAMES)}


@dataclass(frozen=True)
class PromptStats:
    n_tokens: int
    n_chars: int
    n_messages: int
    code_hint: float
    digit_share: float

    @classmethod
    def from_texts(cls, texts: Sequence[str], n_tokens: int | None = None) -> PromptStats:
        joined = "\n".join(texts)
        n_chars = len(joined)
        return cls(
            n_tokens=n_tokens if n_tokens is not None else max(1, n_chars // 4),
            n_chars=n_chars,
            n_messages=len(texts),
            code_hint=1.0 if _CODE.search(joined) else 0.0,
            digit_share=len(_DIGIT.findall(joined)) / n_chars if n_chars else 0.0,
        )


@dataclass(frozen=True)
class AnswerStats:
    token_logprobs: np.ndarray  # (m,) float32 logprob of each chosen token read (m = min(n, MAX_POSITIONS))
    top_logprobs: np.ndarray  # (m, k) float32, descending, -inf where missing
    finish_reason: str
    n_tokens: int = -1  # the answer's length (-1: the positions read are all of it)

    @property
    def length(self) -> int:
        return self.n_tokens if self.n_tokens >= 0 else self.token_logprobs.size

    @classmethod
    def from_choice(cls, choice: Mapping[str, Any], k: int) -> AnswerStats:
        """Arrays from one OpenAI chat choice (``logprobs.content`` entries).

        ``map`` with ``itemgetter`` into ``np.fromiter`` (no Python-level loop), then one
        reshape: ~5x faster than filling the arrays entry by entry, which matters at
        512 tokens x top-5 on the hot path.
        """
        content = ((choice.get("logprobs") or {}).get("content")) or []
        length = len(content)
        if length > MAX_POSITIONS:
            content = _reader(length)(content)
        n = len(content)
        chosen = np.fromiter(map(_LOGPROB, content), np.float32, n)
        try:  # C-level: every position has exactly k alternatives (the usual case)
            lengths = list(map(len, map(_TOPS, content)))
            uniform = n > 0 and min(lengths) == max(lengths) == k
        except (KeyError, TypeError):  # a position without top_logprobs (null or missing)
            uniform = False
        if uniform:
            top = np.fromiter(map(_LOGPROB, chain.from_iterable(map(_TOPS, content))), np.float32, n * k).reshape(n, k)
        elif n == 0:
            top = np.full((0, k), -np.inf, dtype=np.float32)
        else:  # ragged (fewer or more alternatives at some positions): pad with -inf / cut at k
            top = np.full((n, k), -np.inf, dtype=np.float32)
            for i, e in enumerate(content):
                row = [a["logprob"] for a in (e.get("top_logprobs") or ())[:k]]
                top[i, : len(row)] = row
        return cls(chosen.reshape(n), top, choice.get("finish_reason") or "stop", length)

    @classmethod
    def from_body(cls, body: bytes, k: int) -> AnswerStats | None:
        """Arrays for the first choice of a chat completion's raw JSON bytes, without decoding it.

        The same result as ``from_choice(orjson.loads(body)["choices"][0], k)``; None when
        the body is not in the usual shape: decode it then.
        """
        scanned = scan_body(body, k)
        return scanned.stats if scanned is not None else None


@dataclass(frozen=True)
class BodyScan:
    """What the scanner read from a chat completion's bytes."""

    stats: AnswerStats
    logprobs_span: tuple[int, int] | None  # bytes of the first choice's "logprobs" value (None: no such key)


def scan_body(body: bytes, k: int) -> BodyScan | None:
    """``AnswerStats.from_body``, plus where the logprobs sit in the body (so a caller can decode around them)."""
    found = scan(body, k, positions)
    if found is None:
        return None
    n, chosen, top, finish, span = found
    return BodyScan(AnswerStats(chosen, top, finish or "stop", n), span)


@lru_cache(maxsize=1024)
def positions(n: int) -> tuple[int, ...] | None:
    """The positions read from an answer of ``n`` tokens (None: all of them).

    The first and last ``EDGE`` and evenly spaced ones between, ``MAX_POSITIONS`` in all.
    """
    if n <= MAX_POSITIONS:
        return None
    middle = np.linspace(EDGE, n - EDGE - 1, MAX_POSITIONS - 2 * EDGE).round().astype(int).tolist()
    return (*range(EDGE), *middle, *range(n - EDGE, n))


@lru_cache(maxsize=1024)
def _reader(n: int) -> itemgetter[Any]:
    """``positions(n)`` as one C-level call on a list (``n > MAX_POSITIONS``)."""
    return itemgetter(*positions(n))  # type: ignore[misc]


@dataclass(frozen=True)
class DraftStats:
    """Outcome of verifying a lower stage's draft (0 accepted of 0 when none)."""

    accepted_tokens: int
    draft_tokens: int


FLOOR = -30.0  # logprobs below this carry no extra information (and keep exp/log finite); -inf padding floors to it
MARGIN_LOW = 0.5  # a top-1/top-2 gap below this (nats) is a near-tie
TOP1_TOLERANCE = 1e-4  # the chosen token is the top-1 within this
# The thresholds as the float32 values the arrays are compared with.
_answer_stats.configure(FLOOR, [float(v) for v in np.array(LOW_LOGPROB, dtype=np.float32)], EDGE, MARGIN_LOW, TOP1_TOLERANCE)


def answer_features(prompt: PromptStats, answer: AnswerStats, stage: int, draft: DraftStats | None = None) -> np.ndarray:
    """The feature vector (float32, ``FEATURE_NAMES`` order) for one stage answer.

    The 18 logprob statistics come from ``_answer_stats.answer_stats`` (C: numpy's per-call
    overhead made them 30-60 µs of a 100 µs budget), over the m positions read, with
    every logprob floored at ``FLOOR``:

    * ``lp_*``: mean, min, standard deviation, 5/25/50 % quantiles (linear, as ``np.quantile``)
      of the chosen tokens' logprobs, the share below each of ``LOW_LOGPROB``, the mean of the
      first and of the last ``EDGE``;
    * over the top-k alternatives of each position, with the mass outside them as one more
      outcome: entropy mean and max; margin (top-1 minus top-2, or minus ``FLOOR`` when k = 1)
      mean and min, share of margins below ``MARGIN_LOW``; share of positions where the chosen
      token is the top-1 (within ``TOP1_TOLERANCE``).
    All zero for an empty answer (flagged by ``empty_answer``); the top-k ones zero when k = 0.
    """
    n = answer.token_logprobs.size
    top = answer.top_logprobs
    row = _answer_stats.answer_stats(answer.token_logprobs, top, top.shape[1])
    draft_row = (0.0, 0.0, 0.0)
    if draft is not None and draft.draft_tokens:
        draft_row = (1.0, draft.accepted_tokens / draft.draft_tokens, math.log1p(draft.accepted_tokens))
    return np.array(
        [*row, math.log1p(answer.length), 1.0 if answer.finish_reason == "length" else 0.0, 1.0 if n == 0 else 0.0,
         math.log1p(prompt.n_tokens), math.log1p(prompt.n_chars), prompt.n_messages, prompt.code_hint, prompt.digit_share,
         stage, *draft_row],
        dtype=np.float32,
    )  # fmt: skip


assert N_FEATURES == 30, "update answer_features when FEATURE_NAMES changes"

# -- the prompt-only prior's input: what is known before any stage runs ----------------------

# the same quantities as in the answer vector, in the same order (one definition of each)
PROMPT_FEATURE_NAMES: tuple[str, ...] = FEATURE_NAMES[INDEX["log_prompt_tokens"] : INDEX["stage_index"] + 1]
N_PROMPT_FEATURES = len(PROMPT_FEATURE_NAMES)


def prompt_features(prompt: PromptStats, n_stages: int) -> np.ndarray:
    """One row per stage (float32, ``PROMPT_FEATURE_NAMES`` order): the prior's batch for one prompt."""
    row = (math.log1p(prompt.n_tokens), math.log1p(prompt.n_chars), prompt.n_messages, prompt.code_hint, prompt.digit_share)
    out = np.empty((n_stages, N_PROMPT_FEATURES), dtype=np.float32)
    out[:, :5] = row
    out[:, 5] = np.arange(n_stages)
    return out
