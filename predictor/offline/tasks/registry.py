"""Named task sets: what ``python -m predictor collect --tasks`` accepts."""

from __future__ import annotations

from predictor.offline.tasks import Task, generated, humaneval, open_prompts

TASK_SETS = ("mix", "generated", "humaneval", "open")


def build(name: str, per_family: int = 35, seed: int = 0, humaneval_limit: int | None = None) -> list[Task]:
    """``mix``: generated tasks with one HumanEval problem and one open prompt after each round of families."""
    if name == "generated":
        return generated.generate(per_family, seed)
    if name == "humaneval":
        return humaneval.load(humaneval_limit)
    if name == "open":
        return open_prompts.load()
    if name == "mix":
        gen = generated.generate(per_family, seed)
        he = humaneval.load(humaneval_limit if humaneval_limit is not None else per_family)
        op = open_prompts.load()
        # one HumanEval problem and one open prompt per ~len(FAMILIES) generated tasks
        step = max(1, len(generated.FAMILIES))
        chunks = [gen[i : i + step] for i in range(0, len(gen), step)]
        return _mix(chunks, he, op)
    raise ValueError(f"unknown task set {name!r}; choose from {', '.join(TASK_SETS)}")


def _mix(chunks: list[list[Task]], he: list[Task], op: list[Task]) -> list[Task]:
    out: list[Task] = []
    he_it, op_it = iter(he), iter(op)
    for chunk in chunks:
        out.extend(chunk)
        out.extend(x for x in (next(he_it, None), next(op_it, None)) if x is not None)
    out.extend(he_it)
    out.extend(op_it)
    return out
