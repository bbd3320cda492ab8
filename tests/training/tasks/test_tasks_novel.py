"""The second collection's task families, the second seed of the generated ones and the task sets that hold them.

Checkers must pass a right answer in the forms a model writes it (code fence,
bold, trailing period, JSON in a fence or with reordered keys) and fail a
wrong one; ids must be stable for a seed and never collide with the rows of
the first collection.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest

from training.tasks import Task, generated, humaneval, novel, registry
from training.tasks.sandbox import passes

TASKS = novel.generate(40)


def _family(name: str) -> list[Task]:
    return [t for t in TASKS if t.family == name]


def _check(task: Task, answer: str) -> bool:
    assert task.check is not None
    return bool(task.check(answer))


def test_generation_is_deterministic_and_ids_are_unique_and_stable() -> None:
    again = novel.generate(40)
    assert [(t.id, t.messages) for t in again] == [(t.id, t.messages) for t in TASKS]
    assert len({t.id for t in TASKS}) == len(TASKS) == 40 * len(novel.FAMILIES)
    assert TASKS[0].id == "nov1-s0/code_trace/0"
    other = novel.generate(40, seed=1)
    assert not {t.id for t in other} & {t.id for t in TASKS}
    assert [t.messages for t in other] != [t.messages for t in TASKS]


def test_every_family_has_graded_difficulty_and_several_wordings() -> None:
    for name in novel.FAMILIES:
        tasks = _family(name)
        assert {t.difficulty for t in tasks} == {1, 2, 3, 4, 5}, name
        openings = {t.messages[-1]["content"].split()[0] for t in tasks}
        assert len(openings) >= 3, (name, openings)


@pytest.mark.parametrize("name", [f for f in novel.FAMILIES if f != "extraction"])
def test_short_answer_checkers_accept_the_reference_in_common_forms_and_reject_wrong_ones(name: str) -> None:
    for task in _family(name):
        want = str(novel.expected_of(task))
        for form in (want, f"**{want}**", f"{want}.", f"```\n{want}\n```", f"{want}\nbecause that is what the text says"):
            assert _check(task, form), (task.id, form)
        assert not _check(task, want + "7"), task.id
        assert not _check(task, f"The answer is not {want}"), task.id


def test_json_checker_compares_fields_exactly() -> None:
    for task in _family("extraction"):
        want = novel.expected_of(task)
        assert isinstance(want, dict)
        text = json.dumps(want)
        assert _check(task, text) and _check(task, f"```json\n{json.dumps(want, indent=2)}\n```"), task.id
        assert _check(task, f"Here is the JSON:\n{json.dumps(dict(reversed(list(want.items()))))}"), task.id
        first = next(iter(want))
        assert not _check(task, json.dumps({**want, first: "wrong"})), task.id
        assert not _check(task, json.dumps({**want, "extra": 1})), task.id
        assert not _check(task, json.dumps({k: v for k, v in want.items() if k != first})), task.id
        assert not _check(task, text.rstrip("}") + ",}"), "invalid JSON fails"


def test_json_values_compare_by_text_and_case_but_not_by_type_of_container() -> None:
    want: dict[str, object] = {"name": "Vera Rossi", "age": 34}
    assert novel.check_json('{"name": "vera rossi", "age": "34"}', want)
    assert not novel.check_json('{"name": ["Vera Rossi"], "age": 34}', want)
    assert not novel.check_json('{"name": "Vera Rossi", "age": true}', {"name": "Vera Rossi", "age": "True"})
    assert not novel.check_json("no json here", want)


def test_code_trace_expectations_agree_with_a_separate_interpreter() -> None:
    for task in _family("code_trace")[:10]:
        content = task.messages[0]["content"]
        code = content.split("```python\n", 1)[1].split("```", 1)[0]
        want = novel.expected_of(task)
        program = (
            "import contextlib, io\nbuf = io.StringIO()\nwith contextlib.redirect_stdout(buf):\n"
            f"    exec({code!r})\nassert buf.getvalue().strip() == {want!r}\n"
        )
        assert passes(program), task.id


def test_multi_turn_tasks_carry_a_system_prompt_and_earlier_turns() -> None:
    for task in _family("multi_turn"):
        roles = [m["role"] for m in task.messages]
        assert roles[0] == "system" and roles[-1] == "user" and len(roles) >= 4, task.id
        assert roles[1:] == ["user", "assistant"] * ((len(roles) - 2) // 2) + ["user"], task.id
    assert all(len(t.messages) == 1 for t in TASKS if t.family != "multi_turn")


def test_reading_answers_are_spans_of_the_paragraph() -> None:
    for task in _family("reading"):
        assert str(novel.expected_of(task)) in task.messages[0]["content"], task.id


def test_generated_second_seed_has_its_own_ids_and_seed_zero_keeps_the_original_ones() -> None:
    first, second = generated.generate(15), generated.generate(15, seed=1)
    assert first[0].id == "gen1/arithmetic/0" and second[0].id == "gen1-s1/arithmetic/0"
    assert not {t.id for t in first} & {t.id for t in second}
    assert [t.messages for t in generated.generate(15, seed=1)] == [t.messages for t in second]


def test_humaneval_can_start_past_the_first_problems() -> None:
    assert [t.id for t in humaneval.load(3, start=35)] == ["HumanEval/35", "HumanEval/36", "HumanEval/37"]


def test_default_set_is_the_first_collection_followed_by_the_second() -> None:
    old, new, mix = registry.build("mix-v1"), registry.build("novel"), registry.build("mix")
    assert [t.id for t in mix] == [t.id for t in old] + [t.id for t in new]
    assert len({t.id for t in mix}) == len(mix)
    assert len(old) == 322 and old[0].id == "gen1/arithmetic/0"
    families = Counter(t.family for t in new)
    assert all(families[f] == registry.NOVEL_PER_FAMILY for f in novel.FAMILIES)
    assert all(families[f] == registry.SECOND_SEED_PER_FAMILY for f in generated.FAMILIES)
    assert families["humaneval"] == registry.HUMANEVAL_MORE
    assert len({t.family for t in mix}) >= 12 and len(mix) >= 2 * len(old)


def test_the_new_set_interleaves_every_family() -> None:
    first = registry.build("novel")[: len(novel.FAMILIES) + len(generated.FAMILIES) + 1]
    assert len({t.family for t in first}) == len(first)
