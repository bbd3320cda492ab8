"""Seeded task generators with exact checkers and graded difficulty.

Families span what the three CPU stages can and cannot do, so that each stage
is the cheapest correct one for a good share: SmolLM2-135M manages one-step
lookups and tiny sums, Qwen-0.5B most short transformations, Qwen-1.5B the
multi-step ones (long multiplication, date arithmetic, code with edge cases).
``GENERATOR_VERSION`` is part of every task id: changing a generator changes
the ids, so old collected rows are never silently mixed with new tasks. So is
the seed, except seed 0, whose ids (``gen1/<family>/<i>``) predate it and are
kept so the rows collected for them still name their tasks.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
import string
from collections.abc import Callable
from functools import partial

from training.tasks import Task, interleave
from training.tasks.answers import extract_code, matches
from training.tasks.sandbox import passes

GENERATOR_VERSION = 1
SHORT_MAX_TOKENS = 48
CODE_MAX_TOKENS = 320
_INSTRUCT = "Reply with only the answer, nothing else."
_WORDS = [
    "apple",
    "river",
    "stone",
    "cloud",
    "garden",
    "window",
    "silver",
    "rocket",
    "planet",
    "forest",
    "yellow",
    "candle",
    "marble",
    "pepper",
    "bridge",
    "castle",
    "dragon",
    "engine",
    "falcon",
    "guitar",
    "harbor",
    "island",
    "jungle",
    "kettle",
    "lantern",
    "meadow",
    "needle",
    "orange",
    "pencil",
    "quartz",
    "ribbon",
    "saddle",
    "tunnel",
    "velvet",
    "walnut",
]


def _short(family: str, i: int, difficulty: int, question: str, expected: str) -> Task:
    return Task(
        id=f"gen{GENERATOR_VERSION}/{family}/{i}",
        family=family,
        difficulty=difficulty,
        messages=({"role": "user", "content": f"{question}\n{_INSTRUCT}"},),
        max_tokens=SHORT_MAX_TOKENS,
        check=partial(matches, expected=expected),
    )


def arithmetic(rng: random.Random, i: int) -> Task:
    d = 1 + i % 6
    if d == 1:
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        q, r = f"What is {a} + {b}?", a + b
    elif d == 2:
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        q, r = f"What is {a} + {b}?", a + b
    elif d == 3:
        a, b = rng.randint(100, 999), rng.randint(100, 999)
        q, r = f"What is {a} - {b}?", a - b
    elif d == 4:
        a, b = rng.randint(11, 99), rng.randint(3, 9)
        q, r = f"What is {a} * {b}?", a * b
    elif d == 5:
        a, b = rng.randint(11, 99), rng.randint(11, 99)
        q, r = f"What is {a} * {b}?", a * b
    else:
        a, b, c = rng.randint(101, 999), rng.randint(11, 99), rng.randint(100, 999)
        q, r = f"What is {a} * {b} + {c}?", a * b + c
    return _short("arithmetic", i, d, q, str(r))


def strings(rng: random.Random, i: int) -> Task:
    d = 1 + i % 5
    word = rng.choice(_WORDS)
    if d == 1:
        q, r = f"Write the word '{word}' in uppercase letters.", word.upper()
    elif d == 2:
        k = rng.randint(2, 4)
        q, r = f"What are the first {k} letters of the word '{word}'?", word[:k]
    elif d == 3:
        letter = rng.choice(word)
        q, r = f"How many times does the letter '{letter}' appear in the word '{word}'?", str(word.count(letter))
    elif d == 4:
        q, r = f"Write the word '{word}' backwards.", word[::-1]
    else:
        q, r = f"Sort the letters of the word '{word}' alphabetically and write them as one word.", "".join(sorted(word))
    return _short("strings", i, d, q, r)


def lists(rng: random.Random, i: int) -> Task:
    d = 1 + i % 5
    n = 3 + d
    xs = [rng.randint(1, 60) for _ in range(n)]
    shown = ", ".join(map(str, xs))
    if d == 1:
        q, r = f"What is the largest number in this list: {shown}?", str(max(xs))
    elif d == 2:
        q, r = f"How many numbers are in this list: {shown}?", str(len(xs))
    elif d == 3:
        q, r = f"What is the sum of the numbers {shown}?", str(sum(xs))
    elif d == 4:
        q, r = f"Sort these numbers in ascending order, separated by commas: {shown}.", ", ".join(map(str, sorted(xs)))
    else:
        q, r = f"How many of these numbers are even: {shown}?", str(sum(x % 2 == 0 for x in xs))
    return _short("lists", i, d, q, r)


_UNITS = (
    ("kilometers", "meters", 1000),
    ("meters", "centimeters", 100),
    ("hours", "minutes", 60),
    ("minutes", "seconds", 60),
    ("kilograms", "grams", 1000),
    ("days", "hours", 24),
)


def units(rng: random.Random, i: int) -> Task:
    d = 1 + i % 4
    src, dst, factor = rng.choice(_UNITS)
    x: float
    if d == 1:
        x = rng.randint(1, 9)
    elif d == 2:
        x = rng.randint(11, 99)
    elif d == 3:
        x = rng.randint(2, 9) + 0.5
    else:
        x = rng.randint(101, 999)
    value = x * factor
    shown = f"{x:g}"
    return _short("units", i, d, f"How many {dst} are in {shown} {src}?", f"{value:g}")


def dates(rng: random.Random, i: int) -> Task:
    d = 1 + i % 4
    start = dt.date(2020, 1, 1) + dt.timedelta(days=rng.randint(0, 2000))
    if d == 1:
        q, r = f"Which month comes right after {start:%B}?", (start.replace(day=1) + dt.timedelta(days=32)).strftime("%B")
    elif d == 2:
        n = rng.randint(1, 9)
        end = start + dt.timedelta(days=n)
        q, r = f"What date is {n} days after {start.isoformat()}? Answer in YYYY-MM-DD format.", end.isoformat()
    elif d == 3:
        n = rng.randint(20, 60)
        end = start + dt.timedelta(days=n)
        q, r = f"What date is {n} days after {start.isoformat()}? Answer in YYYY-MM-DD format.", end.isoformat()
    else:
        q, r = f"What day of the week was {start.isoformat()}?", start.strftime("%A")
    return _short("dates", i, d, q, r)


def counting(rng: random.Random, i: int) -> Task:
    d = 1 + i % 3
    words = rng.sample(_WORDS, 3 + 2 * d)
    if d == 1:
        q, r = f"How many words are in this list: {', '.join(words)}?", str(len(words))
    elif d == 2:
        q, r = f"Which of these words comes first in alphabetical order: {', '.join(words)}?", min(words)
    else:
        q, r = f"Sort these words alphabetically, separated by commas: {', '.join(words)}.", ", ".join(sorted(words))
    return _short("counting", i, d, q, r)


# -- code tasks: a spec, a reference implementation and random inputs -------------------------

_CodeSpec = tuple[int, str, str, Callable[..., object], Callable[[random.Random], tuple[object, ...]]]


def _ints(rng: random.Random, lo: int = -20, hi: int = 40, n: tuple[int, int] = (0, 8)) -> list[int]:
    return [rng.randint(lo, hi) for _ in range(rng.randint(*n))]


def _word(rng: random.Random) -> str:
    return "".join(rng.choice("abcab" + string.ascii_lowercase[:6]) for _ in range(rng.randint(0, 9)))


def _second_largest(xs: list[int]) -> int | None:
    s = sorted(set(xs))
    return s[-2] if len(s) > 1 else None


def _rle(s: str) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for ch in s:
        if out and out[-1][0] == ch:
            out[-1] = (ch, out[-1][1] + 1)
        else:
            out.append((ch, 1))
    return out


def _most_common(xs: list[int]) -> int | None:
    return min(set(xs), key=lambda x: (-xs.count(x), x)) if xs else None


def _code_specs(k: int) -> list[_CodeSpec]:
    """(difficulty, signature, spec, reference, input generator); ``k`` varies the constants."""
    return [
        (1, "def add_k(x)", f"returns x plus {k}", lambda x: x + k, lambda r: (r.randint(-50, 50),)),
        (1, "def count_vowels(s)", "returns the number of vowels (a, e, i, o, u) in the lowercase string s",
         lambda s: sum(c in "aeiou" for c in s), lambda r: (_word(r),)),
        (2, "def sum_divisible(xs)", f"returns the sum of the elements of the list xs that are divisible by {k}",
         lambda xs: sum(x for x in xs if x % k == 0), lambda r: (_ints(r),)),
        (2, "def odd_squares(xs)", "returns a list of the squares of the odd numbers in xs, in their original order",
         lambda xs: [x * x for x in xs if x % 2], lambda r: (_ints(r),)),
        (3, "def rotate_left(xs)", f"returns a new list: xs rotated left by {k} positions (wrapping around; an empty list stays empty)",
         lambda xs: xs[k % len(xs):] + xs[:k % len(xs)] if xs else [], lambda r: (_ints(r, n=(0, 7)),)),
        (3, "def prefix_sums(xs)", "returns the list of running sums of xs (the i-th element is xs[0] + ... + xs[i])",
         lambda xs: [sum(xs[: i + 1]) for i in range(len(xs))], lambda r: (_ints(r),)),
        (4, "def second_largest(xs)", "returns the second largest distinct value in xs, or None if there is none",
         _second_largest, lambda r: (_ints(r, 0, 9),)),
        (4, "def run_length(s)", "returns the run-length encoding of s as a list of (character, count) tuples",
         _rle, lambda r: (_word(r),)),
        (5, "def most_common(xs)", "returns the most frequent element of xs; on ties the smallest such element; None for an empty list",
         _most_common, lambda r: (_ints(r, 0, 5),)),
        (5, "def chunk_sums(xs)", f"splits xs into consecutive chunks of {k} elements (the last may be shorter) and returns the list of chunk sums",  # noqa: E501
         lambda xs: [sum(xs[i:i + k]) for i in range(0, len(xs), k)], lambda r: (_ints(r, n=(0, 10)),)),
    ]  # fmt: skip


def _check_code(answer: str, name: str, cases: list[tuple[tuple[object, ...], object]]) -> bool:
    asserts = "\n".join(f"assert {name}(*{args!r}) == {want!r}" for args, want in cases)
    return passes(f"{extract_code(answer)}\n\n{asserts}\n")


def code(rng: random.Random, i: int) -> Task:
    specs = _code_specs(k=2 + i % 3)
    difficulty, signature, spec, ref, gen = specs[i % len(specs)]
    name = signature.split()[1].split("(")[0]
    cases = []
    for _ in range(8):
        args = gen(rng)
        cases.append((args, ref(*args)))
    prompt = f"Write a Python function `{signature}` that {spec}. Reply with the function in one ```python code block."
    return Task(
        id=f"gen{GENERATOR_VERSION}/code/{i}",
        family="code",
        difficulty=difficulty,
        messages=({"role": "user", "content": prompt},),
        max_tokens=CODE_MAX_TOKENS,
        check=partial(_check_code, name=name, cases=cases),
    )


FAMILIES: dict[str, Callable[[random.Random, int], Task]] = {
    "arithmetic": arithmetic,
    "strings": strings,
    "lists": lists,
    "units": units,
    "dates": dates,
    "counting": counting,
    "code": code,
}


def seeded_id(task_id: str, seed: int) -> str:
    """``gen1/arithmetic/3`` for seed 0 (the original ids), ``gen1-s2/arithmetic/3`` for seed 2."""
    if seed == 0:
        return task_id
    head, rest = task_id.split("/", 1)
    return f"{head}-s{seed}/{rest}"


def generate(per_family: int, seed: int = 0, families: tuple[str, ...] = tuple(FAMILIES)) -> list[Task]:
    """``per_family`` tasks of each family, interleaved; the same seed gives the same tasks and ids."""
    groups = []
    for name in families:
        rng = random.Random(f"{seed}/{name}")
        tasks = [FAMILIES[name](rng, i) for i in range(per_family)]
        groups.append([dataclasses.replace(t, id=seeded_id(t.id, seed)) for t in tasks])
    return interleave(groups)
