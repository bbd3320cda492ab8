"""Task sets with exact checkers, and open prompts labelled by agreement.

A ``Task`` is one chat prompt plus how to judge an answer to it: an exact
checker (generated tasks, HumanEval) or none (open prompts, whose label is how
much of the answer the top stage accepts when it verifies it). Task ids are
stable across runs, so the train/validation/test split -- by task, never by
row -- is a pure function of the id.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from predictor.serving.rows import SPLIT_SHARES, Split, split_of

__all__ = ["SPLIT_SHARES", "Split", "Task", "interleave", "split_of"]


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


def interleave(groups: Sequence[Sequence[Task]]) -> list[Task]:
    """Round-robin over task families, so any prefix of a long collection is a balanced mix."""
    out: list[Task] = []
    longest = max((len(g) for g in groups), default=0)
    for i in range(longest):
        out.extend(g[i] for g in groups if i < len(g))
    return out
