"""Named task sets: what ``python -m training collect --tasks`` accepts.

``mix`` (the default) is every task the CPU data file holds: ``mix-v1``, the
first collection (7 generated families, 35 HumanEval problems, the open
prompts), followed by ``novel``, the second (8 new families, a second seed of
the generated families, the next 30 HumanEval problems). The older set comes
first and keeps its order, so a resumed ``collect`` of ``mix`` reproduces the
whole file and only ever appends.
"""

from __future__ import annotations

from training.tasks import Task, generated, humaneval, interleave, novel, open_prompts

TASK_SETS = ("mix", "mix-v1", "novel", "generated", "humaneval", "open")
NOVEL_PER_FAMILY = 40
SECOND_SEED_PER_FAMILY = 15
HUMANEVAL_MORE = 30


def build(name: str, per_family: int = 35, seed: int = 0, humaneval_limit: int | None = None) -> list[Task]:
    """``per_family``, ``seed`` and ``humaneval_limit`` size the first collection (``mix-v1``); ``novel`` has fixed sizes."""
    if name == "generated":
        return generated.generate(per_family, seed)
    if name == "humaneval":
        return humaneval.load(humaneval_limit)
    if name == "open":
        return open_prompts.load()
    if name == "mix-v1":
        return _mix_v1(per_family, seed, humaneval_limit)
    if name == "novel":
        return _novel(seed, humaneval_start=humaneval_limit if humaneval_limit is not None else per_family)
    if name == "mix":
        start = humaneval_limit if humaneval_limit is not None else per_family
        return _mix_v1(per_family, seed, humaneval_limit) + _novel(seed, humaneval_start=start)
    raise ValueError(f"unknown task set {name!r}; choose from {', '.join(TASK_SETS)}")


def _mix_v1(per_family: int, seed: int, humaneval_limit: int | None) -> list[Task]:
    """Generated tasks with one HumanEval problem and one open prompt after each round of families."""
    gen = generated.generate(per_family, seed)
    he = humaneval.load(humaneval_limit if humaneval_limit is not None else per_family)
    op = open_prompts.load()
    step = max(1, len(generated.FAMILIES))
    chunks = [gen[i : i + step] for i in range(0, len(gen), step)]
    return _mix(chunks, he, op)


def _novel(seed: int, humaneval_start: int) -> list[Task]:
    """The new families, the generated families under the next seed and more HumanEval, round-robin by family.

    Every family is its own group, so any prefix of the collection is balanced
    across all of them (an interrupted run still adds a bit of every family).
    """
    groups: list[list[Task]] = []
    new = novel.generate(NOVEL_PER_FAMILY, seed)
    groups += [[t for t in new if t.family == f] for f in novel.FAMILIES]
    again = generated.generate(SECOND_SEED_PER_FAMILY, seed + 1)
    groups += [[t for t in again if t.family == f] for f in generated.FAMILIES]
    groups.append(humaneval.load(HUMANEVAL_MORE, start=humaneval_start))
    return interleave(groups)


def _mix(chunks: list[list[Task]], he: list[Task], op: list[Task]) -> list[Task]:
    out: list[Task] = []
    he_it, op_it = iter(he), iter(op)
    for chunk in chunks:
        out.extend(chunk)
        out.extend(x for x in (next(he_it, None), next(op_it, None)) if x is not None)
    out.extend(he_it)
    out.extend(op_it)
    return out
