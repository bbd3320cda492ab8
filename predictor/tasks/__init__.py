"""Task sets with exact checkers, and open prompts labelled by agreement.

A ``Task`` is one chat prompt plus how to judge an answer to it: an exact
checker (generated tasks, HumanEval) or none (open prompts, whose label is how
much of the answer the top stage accepts when it verifies it). Task ids are
stable across runs, so the train/validation/test split -- by task, never by
row -- is a pure function of the id.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

Split = Literal["train", "val", "test"]
SPLIT_SHARES: tuple[tuple[Split, float], ...] = (("train", 0.6), ("val", 0.2), ("test", 0.2))


@dataclass(frozen=True)
class Task:
    """One prompt and its checker (``None`` for open prompts)."""

    id: str
    family: str
    difficulty: int
    messages: tuple[dict[str, str], ...]
    max_tokens: int
    check: Callable[[str], bool] | None = field(default=None, compare=False, repr=False)

    @property
    def split(self) -> Split:
        return split_of(self.id)


def split_of(task_id: str) -> Split:
    """Deterministic split by task id (sha256, so it is stable across Python versions)."""
    u = int.from_bytes(hashlib.sha256(task_id.encode()).digest()[:8], "big") / 2**64
    acc = 0.0
    for name, share in SPLIT_SHARES:
        acc += share
        if u < acc:
            return name
    return SPLIT_SHARES[-1][0]


def interleave(groups: Sequence[Sequence[Task]]) -> list[Task]:
    """Round-robin over task families, so any prefix of a long collection is a balanced mix."""
    out: list[Task] = []
    longest = max((len(g) for g in groups), default=0)
    for i in range(longest):
        out.extend(g[i] for g in groups if i < len(g))
    return out
