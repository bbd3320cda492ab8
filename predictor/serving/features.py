"""The feature vector: one definition, used by training and by the router.

A stage's answer is summarised from its token logprobs and top-k
alternatives, its length and finish reason, simple prompt statistics, the
stage index, and -- when a lower stage's draft was verified -- the share of the
draft the stage accepted. ``FEATURE_VERSION`` and ``FEATURE_NAMES`` are
recorded in every exported model; the runtime refuses a mismatch.

``prompt_features`` is the input of the prompt-only prior (where to start):
the same five prompt statistics plus what the prompt says, as signed hashed
word and character n-grams (``prompt_ngrams``). ``posterior_features`` is the
input of the belief model: a stage's answer vector plus the higher stage it
is asked about (P(stage j acceptable | prompt, stage i's answer)).

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
import zlib
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

# 2: answers read at MAX_POSITIONS positions at most; 3: statistics in double precision (C);
# 4: the prior reads the prompt's hashed n-grams; the belief (posterior) model
FEATURE_VERSION = 4
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
    """What the predictor knows of a prompt: five statistics, and the text the prior's n-grams are hashed from.

    ``text`` is the messages' texts joined as ``from_texts`` joins them (kept, not hashed here, so that a
    request whose priors are never asked for pays nothing; empty when a caller built the stats by hand,
    which gives the prior a prompt without content features). The lengths are exact; the code hint and
    the digit share are read from ``prompt_window`` (a regex over a 32k-character prompt took over 1 ms).
    """

    n_tokens: int
    n_chars: int
    n_messages: int
    code_hint: float
    digit_share: float
    text: str = ""

    @classmethod
    def from_texts(cls, texts: Sequence[str], n_tokens: int | None = None) -> PromptStats:
        joined = "\n".join(texts)
        n_chars = len(joined)
        window = prompt_window(joined)
        return cls(
            n_tokens=n_tokens if n_tokens is not None else max(1, n_chars // 4),
            n_chars=n_chars,
            n_messages=len(texts),
            code_hint=1.0 if _CODE.search(window) else 0.0,
            digit_share=len(_DIGIT.findall(window)) / len(window) if window else 0.0,
            text=joined,
        )


HASH_EDGE_CHARS = 512  # a longer prompt is read at its first and its last this many characters


def prompt_window(text: str) -> str:
    """What the prompt's content features read: all of it, or its first and last ``HASH_EDGE_CHARS`` characters
    (joined by a newline) when it is longer than twice that. The instruction is usually at one end, and the
    cost is bounded whatever the prompt's length (bench/prior_latency.py)."""
    if len(text) <= 2 * HASH_EDGE_CHARS:
        return text
    return text[:HASH_EDGE_CHARS] + "\n" + text[-HASH_EDGE_CHARS:]


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
    def from_completion_choice(cls, choice: Mapping[str, Any], k: int) -> AnswerStats:
        """Arrays from one choice of a ``/v1/completions`` answer (``logprobs``: ``token_logprobs`` and
        ``top_logprobs`` as ``{token: logprob}`` dicts), the same as ``from_choice`` gives for the same tokens.

        The completions shape holds the same numbers as chat's entries, so the one feature vector serves
        both: each dict holds the top alternatives plus the chosen token and is in no set order (vLLM
        puts the chosen token first), so its values are sorted and cut at ``k``, which is the chat list
        whenever the chosen token is among the top ``k`` or below them. One difference is in the shape
        itself: two alternatives whose token strings are equal share one key, so that position has one
        fewer (padded with -inf). The choice must hold only generated positions (no ``echo``).
        """
        logprobs = choice.get("logprobs") or {}
        chosen: Sequence[float] = logprobs.get("token_logprobs") or ()
        tops: Sequence[Mapping[str, float] | None] = logprobs.get("top_logprobs") or ()
        length = len(chosen)
        if length > MAX_POSITIONS:
            read = _reader(length)
            chosen = read(chosen)
            tops = read(tops) if len(tops) == length else ()
        n = len(chosen)
        values = np.fromiter(chosen, np.float32, n)
        top = np.full((n, k), -np.inf, dtype=np.float32)
        if k > 0 and len(tops) == n and n > 0:
            try:  # C-level: every position has the same number of alternatives (the usual case)
                widths = list(map(len, tops))  # type: ignore[arg-type]
                width = widths[0] if min(widths) == max(widths) else 0
            except TypeError:  # a position without alternatives (null)
                width = 0
            if width:
                flat = np.fromiter(chain.from_iterable(map(dict.values, tops)), np.float32, n * width).reshape(n, width)  # type: ignore[arg-type]
                ranked = -np.sort(-flat, axis=1)[:, :k]
                top[:, : ranked.shape[1]] = ranked
            else:
                for i, alternatives in enumerate(tops):
                    row = sorted((alternatives or {}).values(), reverse=True)[:k]
                    top[i, : len(row)] = row
        return cls(values, top, choice.get("finish_reason") or "stop", length)

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
    draft_row = (0.0, 0.0, 0.0)
    if draft is not None and draft.draft_tokens:
        draft_row = (1.0, draft.accepted_tokens / draft.draft_tokens, math.log1p(draft.accepted_tokens))
    # the 18 statistics and these 12 values as float32 in one C call (np.array over a list of 30 floats cost more
    # than the statistics); the same bits as np.array([*answer_stats(...), *rest], dtype=np.float32)
    rest = (math.log1p(answer.length), 1.0 if answer.finish_reason == "length" else 0.0, 1.0 if n == 0 else 0.0,
            math.log1p(prompt.n_tokens), math.log1p(prompt.n_chars), prompt.n_messages, prompt.code_hint, prompt.digit_share,
            stage, *draft_row)  # fmt: skip
    return _vector((N_FEATURES,), _F32, _answer_stats.answer_vector(answer.token_logprobs, top, top.shape[1], rest))


assert N_FEATURES == 30, "update answer_features when FEATURE_NAMES changes"
_vector = np.ndarray  # over the bytearray answer_vector fills: writable, float32
_F32 = np.dtype(np.float32)

# -- the prompt-only prior's input: what is known before any stage runs ----------------------

HASH_DIMS = 256  # buckets of the hashed n-gram vector
WORD_NGRAMS = (1, 2)
CHAR_NGRAMS = (3, 4, 5)
_WORD = re.compile(r"\w+|[^\w\s]")
_DIGITS = str.maketrans("0123456789", "0000000000")
# uint32 arithmetic wraps modulo 2**32 by itself: the hashes below are exact 32-bit integer functions
_MIX1, _MIX2, _GOLDEN, _BASE = np.uint32(0x85EBCA6B), np.uint32(0xC2B2AE35), np.uint32(0x9E3779B1), np.uint32(257)
_S16, _S13, _S31 = np.uint32(16), np.uint32(13), np.uint32(31)
_MASK = np.uint32(HASH_DIMS - 1)
assert HASH_DIMS & (HASH_DIMS - 1) == 0, "HASH_DIMS must be a power of two (buckets are the low bits)"
# a different offset per n-gram kind and size, so "ab" as a word and as characters land in unrelated buckets
_WORD_SALT = {n: np.uint32(1000 + n) for n in WORD_NGRAMS}
_CHAR_SALT = {n: np.uint32(2000 + n) for n in CHAR_NGRAMS}


def _fmix(h: np.ndarray) -> np.ndarray:
    """murmur3's 32-bit finaliser, elementwise on uint32: every input bit moves every output bit."""
    h = h ^ (h >> _S16)
    h *= _MIX1
    h ^= h >> _S13
    h *= _MIX2
    h ^= h >> _S16
    return h


def _bucket(hashes: np.ndarray) -> np.ndarray:
    """Signed counts of ``hashes`` in ``HASH_DIMS`` buckets (the low bits; the sign from bit 31, so collisions
    cancel on average), l2-normalised."""
    if hashes.size == 0:
        return np.zeros(HASH_DIMS, dtype=np.float64)
    signs = 1.0 - 2.0 * (hashes >> _S31).astype(np.float64)
    v = np.bincount(hashes & _MASK, weights=signs, minlength=HASH_DIMS)
    norm = float(np.sqrt(v @ v))
    return v / norm if norm > 0 else v


def prompt_ngrams(text: str) -> np.ndarray:
    """What the prompt asks, as a fixed-size vector (float32, ``HASH_DIMS``): signed hashed n-grams.

    The text is lower-cased and every digit becomes ``0`` (so "3028 + 4657" and "12 + 7" share the
    shape "0000 + 0000" vs "00 + 0": the kind of task and the numbers' sizes, not their values). Word
    uni- and bigrams (``\\w+`` runs and single punctuation marks, each hashed with crc32 of its UTF-8,
    pairs combined by a multiply-and-mix) and character 3/4/5-grams of the UTF-8 bytes (a base-257
    polynomial, mixed) are bucketed into ``HASH_DIMS`` signed counts; the word and character parts are
    each l2-normalised, and their sum is l2-normalised again. Every hash is defined here in 32-bit
    integer arithmetic (crc32 and murmur3's finaliser), never Python's salted ``hash()``: the same text
    gives the same vector in training, in every router process and on every machine. A long prompt is
    read at ``prompt_window``.
    """
    text = prompt_window(text).lower().translate(_DIGITS)
    words = np.fromiter(map(zlib.crc32, map(str.encode, _WORD.findall(text))), np.uint32)
    word_parts = []
    for n in WORD_NGRAMS:
        if words.size < n:
            continue
        h = words[: words.size - n + 1]
        for k in range(1, n):
            h = _fmix(h * _GOLDEN + words[k : words.size - n + 1 + k])
        word_parts.append(_fmix(h + _WORD_SALT[n]))
    raw = np.frombuffer(text.encode(), dtype=np.uint8).astype(np.uint32)
    char_parts = []
    h = raw
    for n in range(2, CHAR_NGRAMS[-1] + 1):  # h holds the polynomials of the n-grams starting at each position: extend by one byte
        if raw.size < n:
            break
        h = h[:-1] * _BASE + raw[n - 1 :]
        if n in _CHAR_SALT:
            char_parts.append(_fmix(h + _CHAR_SALT[n]))
    v = _bucket(np.concatenate(word_parts) if word_parts else words[:0])
    v += _bucket(np.concatenate(char_parts) if char_parts else raw[:0])
    norm = float(np.sqrt(v @ v))
    out: np.ndarray = (v / norm if norm > 0 else v).astype(np.float32)
    return out


# the five prompt statistics of the answer vector, in the same order (one definition of each), the n-grams, the stage
PROMPT_STAT_NAMES: tuple[str, ...] = FEATURE_NAMES[INDEX["log_prompt_tokens"] : INDEX["stage_index"]]
NGRAM_NAMES: tuple[str, ...] = tuple(f"ngram_{i:03d}" for i in range(HASH_DIMS))
PROMPT_FEATURE_NAMES: tuple[str, ...] = (*PROMPT_STAT_NAMES, *NGRAM_NAMES, "stage_index")
N_PROMPT_FEATURES = len(PROMPT_FEATURE_NAMES)
_N_STATS = len(PROMPT_STAT_NAMES)


def prompt_features(prompt: PromptStats, n_stages: int) -> np.ndarray:
    """One row per stage (float32, ``PROMPT_FEATURE_NAMES`` order): the prior's batch for one prompt."""
    row = (math.log1p(prompt.n_tokens), math.log1p(prompt.n_chars), prompt.n_messages, prompt.code_hint, prompt.digit_share)
    out = np.empty((n_stages, N_PROMPT_FEATURES), dtype=np.float32)
    out[:, :_N_STATS] = row
    out[:, _N_STATS : _N_STATS + HASH_DIMS] = prompt_ngrams(prompt.text)
    out[:, -1] = np.arange(n_stages)
    return out


# -- the belief model's input: one stage's answer, and the higher stage asked about --------------

POSTERIOR_FEATURE_NAMES: tuple[str, ...] = (*FEATURE_NAMES, "target_stage")
N_POSTERIOR_FEATURES = len(POSTERIOR_FEATURE_NAMES)


def prefix_features(prompt: PromptStats, entries: Sequence[Mapping[str, Any]], stage: int, k: int) -> np.ndarray:
    """The feature vector of an unfinished answer: its first tokens' logprob ``entries`` (OpenAI ``logprobs.content``
    form), not ended, no draft -- what the prefix model reads at an early-exit checkpoint, in training (the prefixes
    of collected answers) and in the router (the entries streamed so far) alike."""
    stats = AnswerStats.from_choice({"logprobs": {"content": entries}, "finish_reason": None}, k)
    return answer_features(prompt, stats, stage, None)


def posterior_features(answer: np.ndarray, stage: int, n_stages: int) -> np.ndarray:
    """One row per stage above ``stage`` (float32, ``POSTERIOR_FEATURE_NAMES`` order): ``answer`` (stage's
    ``answer_features`` vector) with the target stage appended; (0, N) at the top."""
    targets = np.arange(stage + 1, n_stages)
    out = np.empty((targets.size, N_POSTERIOR_FEATURES), dtype=np.float32)
    out[:, :N_FEATURES] = answer
    out[:, N_FEATURES] = targets
    return out
