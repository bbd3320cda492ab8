"""The row format of a recorded answer: one definition for collection, the traffic log and the dataset.

A collected row (``training.collect``) and a logged row of live traffic
(``router.traffic_log``) carry the same fields, so one training pipeline reads
both. This module defines what both writers and the reader must agree on: the
format version, the top-k the logprobs are recorded with, the compact logprob
encoding and the deterministic train/validation/test split by id.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Literal

COLLECT_VERSION = 1
TOP_LOGPROBS = 5  # alternatives recorded per position; the predictor's features are defined at this k

Split = Literal["train", "val", "test"]
SPLIT_SHARES: tuple[tuple[Split, float], ...] = (("train", 0.6), ("val", 0.2), ("test", 0.2))


def compact_logprobs(choice: dict[str, Any]) -> list[list[Any]]:
    """``[[chosen_logprob, [top-k logprobs...]], ...]``: what ``AnswerStats`` needs, ~10x smaller than the OpenAI form."""
    content = ((choice.get("logprobs") or {}).get("content")) or []
    return [[e["logprob"], [a["logprob"] for a in e.get("top_logprobs") or ()]] for e in content]


def expand_logprobs(compact: Sequence[Sequence[Any]]) -> dict[str, Any]:
    """The OpenAI ``logprobs`` object back from ``compact_logprobs`` (token strings are not kept)."""
    return {"content": [{"logprob": lp, "top_logprobs": [{"logprob": t} for t in top]} for lp, top in compact]}


def split_of(task_id: str) -> Split:
    """Deterministic split by task id (sha256, so it is stable across Python versions)."""
    u = int.from_bytes(hashlib.sha256(task_id.encode()).digest()[:8], "big") / 2**64
    acc = 0.0
    for name, share in SPLIT_SHARES:
        acc += share
        if u < acc:
            return name
    return SPLIT_SHARES[-1][0]
