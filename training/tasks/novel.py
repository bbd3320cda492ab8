"""Seeded task families that ask and read differently from ``generated``'s, with exact checkers.

The predictor is evaluated by training without a family and testing on it, so
these families are meant to differ from the first seven in what they ask
(reading code, extracting JSON, logic, multi-step word problems, number
patterns, editing phrases, recalling an earlier chat turn, answering from a
given paragraph) and in how the prompt reads: each family has several wordings
and several ways of asking for a bare answer, so no fixed phrase gives a
family away. ``multi_turn`` tasks carry a system prompt and earlier turns; all
the other task sets are single user messages.

Difficulty is graded (1 = one lookup or one step, 5 = several steps or a long
context) so that each of the three CPU stages is the cheapest correct one for
a fair share. ``NOVEL_VERSION`` and the seed are part of every id: changing a
generator changes the ids, so collected rows never silently describe other
prompts.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import re
import string
from collections.abc import Callable
from functools import partial
from typing import Any

from training.tasks import Task, interleave
from training.tasks.answers import extract_code, matches

NOVEL_VERSION = 1
SHORT_MAX_TOKENS = 48
JSON_MAX_TOKENS = 96
_INSTRUCT = (
    "Reply with only the answer, nothing else.",
    "Answer with just the value.",
    "Give only the final answer.",
    "Respond with the answer alone, no explanation.",
)
_NAMES = (
    "Ann", "Ben", "Carla", "Dev", "Elif", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Kira", "Liam",
    "Mona", "Nils", "Omar", "Priya", "Quinn", "Rosa", "Sami", "Tara", "Umar", "Vera", "Wes", "Yara",
)  # fmt: skip
_SURNAMES = ("Lopez", "Novak", "Chen", "Okafor", "Schmidt", "Rossi", "Tanaka", "Silva", "Dubois", "Kowalski", "Haddad", "Larsen")
_CITIES = ("Denver", "Lyon", "Osaka", "Porto", "Leeds", "Austin", "Gdansk", "Accra", "Quito", "Tampere", "Perth", "Brno")
_JOBS = ("nurse", "plumber", "teacher", "pilot", "chef", "architect", "baker", "librarian", "welder", "dentist")
_WORDS = (
    "amber", "bright", "canyon", "distant", "ember", "frozen", "golden", "hollow", "ivory", "jolly", "lucky", "misty",
    "noble", "ocean", "purple", "quiet", "rapid", "summer", "tiny", "urban", "violet", "winter", "young", "zesty",
    "basket", "comet", "desert", "eagle", "finch", "glacier", "hammer", "lemon", "mirror", "orchid", "puzzle", "tiger",
)  # fmt: skip


def grade(i: int) -> int:
    """Task ``i``'s difficulty: 1 to 5 in turn, so each grade is a fifth of every family."""
    return 1 + i % 5


def task_id(family: str, seed: int, i: int) -> str:
    return f"nov{NOVEL_VERSION}-s{seed}/{family}/{i}"


def _user(text: str) -> tuple[dict[str, str], ...]:
    return ({"role": "user", "content": text},)


def _short(family: str, seed: int, i: int, difficulty: int, messages: tuple[dict[str, str], ...], expected: str) -> Task:
    return Task(
        id=task_id(family, seed, i),
        family=family,
        difficulty=difficulty,
        messages=messages,
        max_tokens=SHORT_MAX_TOKENS,
        check=partial(matches, expected=expected),
    )


# -- code_trace: "what does this snippet print?" -------------------------------------------------


def run_snippet(code: str) -> str:
    """The snippet's printed output. Only the generator's own snippets are run here, never model text."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(code, {"__builtins__": __builtins__})  # trusted: the generator's own snippet
    return out.getvalue().strip()


def _snippet(rng: random.Random, d: int) -> str:
    if d == 1:
        a, b = rng.randint(2, 20), rng.randint(2, 20)
        op = rng.choice("+-*")
        return f"a = {a}\nb = {b}\nprint(a {op} b)"
    if d == 2:
        kind = rng.randrange(3)
        if kind == 0:
            n, k = rng.randint(3, 6), rng.randint(2, 5)
            return f"total = 0\nfor i in range({n}):\n    total += {k}\nprint(total)"
        word = rng.choice(_WORDS)
        if kind == 1:
            return f'word = "{word}"\nprint(len(word) * 2)'
        return f'word = "{word}"\nprint(word[{rng.randint(0, len(word) - 1)}])'
    if d == 3:
        xs = [rng.randint(1, 9) for _ in range(rng.randint(5, 7))]
        kind = rng.randrange(3)
        if kind == 0:
            a = rng.randint(0, 2)
            return f"xs = {xs}\nprint(xs[{a}:{a + rng.randint(2, 3)}])"
        if kind == 1:
            t = rng.randint(3, 6)
            return f"xs = {xs}\nprint(sum(x for x in xs if x > {t}))"
        return f"xs = {xs}\nys = [x * {rng.randint(2, 4)} for x in xs[:3]]\nprint(ys)"
    if d == 4:
        kind = rng.randrange(3)
        if kind == 0:
            return f"def f(n):\n    if n % 2 == 0:\n        return n // 2\n    return 3 * n + 1\n\nprint(f(f({rng.randint(5, 30)})))"
        if kind == 1:
            keys = rng.sample("abcdef", 3)
            vals = [rng.randint(1, 9) for _ in keys]
            d0 = dict(zip(keys, vals, strict=True))
            key = rng.choice(keys)
            return f"d = {d0!r}\nd[{key!r}] += {rng.randint(2, 9)}\nprint(sum(d.values()))"
        word = rng.choice(_WORDS)
        return f'word = "{word}"\nprint(word.upper()[::2] + word[-1])'
    kind = rng.randrange(3)
    if kind == 0:
        n = rng.randint(3, 12)
        return f"n = {n}\nsteps = 0\nwhile n != 1:\n    n = n // 2 if n % 2 == 0 else 3 * n + 1\n    steps += 1\nprint(steps)"
    if kind == 1:
        a, b = rng.randint(3, 5), rng.randint(5, 9)
        loops = f"for i in range({a}):\n    for j in range(i, {b}):\n        if (i + j) % 3 == 0:\n            count += 1\n"
        return f"count = 0\n{loops}print(count)"
    n = rng.randint(4, 7)
    return f"def g(n):\n    if n <= 1:\n        return n\n    return g(n - 1) + g(n - 2)\n\nprint(g({n}) + g({n - 2}))"


_TRACE_ASK = (
    "What does this Python snippet print?\n```python\n{code}\n```\nReply with only the printed output.",
    "Run this code in your head and tell me its output.\n\n```python\n{code}\n```\nGive only the output.",
    "Predict the exact output of the following Python program:\n```python\n{code}\n```\nAnswer with the output alone.",
)


def code_trace(rng: random.Random, i: int, d: int, seed: int = 0) -> Task:
    code = _snippet(rng, d)
    prompt = rng.choice(_TRACE_ASK).format(code=code)
    return _short("code_trace", seed, i, d, _user(prompt), run_snippet(code))


# -- extraction: "return a JSON object with keys ... from this text" --------------------------------


def _json_object(answer: str) -> object:
    text = extract_code(answer)
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        return None
    try:
        return json.loads(text[start : end + 1])
    except json.JSONDecodeError:
        return None


def _same_value(got: object, want: object) -> bool:
    """Exact after case and surrounding space: 34 and "34" are the same age, "Denver" and "denver" the same city."""
    if isinstance(got, (bool, dict, list)):
        return False
    return str(got).strip().lower() == str(want).strip().lower()


def check_json(answer: str, expected: dict[str, object]) -> bool:
    """The answer's JSON object has exactly the expected keys, each with the expected value."""
    obj = _json_object(answer)
    return isinstance(obj, dict) and set(obj) == set(expected) and all(_same_value(obj[k], v) for k, v in expected.items())


_JSON_ASK = (
    "Return a JSON object with the keys {keys} from this text:\n{text}\nReply with only the JSON.",
    "Extract these fields as JSON ({keys}).\n\nText: {text}\n\nOutput nothing but the JSON object.",
    'Read the passage and fill in a JSON object with exactly the keys {keys}.\n"""\n{text}\n"""\nRespond with JSON only.',
)


def extraction(rng: random.Random, i: int, d: int, seed: int = 0) -> Task:
    name = f"{rng.choice(_NAMES)} {rng.choice(_SURNAMES)}"
    age, city, job, years = rng.randint(21, 68), rng.choice(_CITIES), rng.choice(_JOBS), rng.randint(2, 15)
    other = f"{rng.choice([n for n in _NAMES if n not in name])} {rng.choice(_SURNAMES)}"
    other_city = rng.choice([c for c in _CITIES if c != city])
    fields: dict[str, object]
    if d == 1:
        text = rng.choice((f"{name} works as a {job}.", f"The new {job} is called {name}."))
        fields = {"name": name}
    elif d == 2:
        text = rng.choice((f"{name} lives in {city} and works as a {job}.", f"Based in {city}, {name} is a {job}."))
        fields = {"name": name, "city": city}
    elif d == 3:
        text = (
            f"{name} is a {age}-year-old {job} from {city}. "
            f"{rng.choice(('A friend,', 'Her neighbour', 'His cousin'))} {other}, lives in {other_city}."
        )
        fields = {"name": name, "age": age, "job": job}
    elif d == 4:
        text = (
            f"Meet {name}: {age} years old and living in {city}, {name.split()[0]} has been a {job} for {years} years. "
            f"Before that, {other} trained {name.split()[0]} in {other_city}."
        )
        fields = {"name": name, "age": age, "city": city, "years_in_job": years}
    else:
        order = rng.randint(1000, 9999)
        counts = rng.sample(range(1, 7), 3)
        goods = rng.sample(("lamps", "chairs", "mugs", "rugs", "shelves", "clocks"), 3)
        items = ", ".join(f"{c} {g}" for c, g in zip(counts, goods, strict=True))
        text = f"Order #{order} was placed by {name} from {city}. It contains {items}. A second order, #{order + 17}, is for {other}."
        fields = {"order_id": order, "customer": name, "total_items": sum(counts)}
    keys = ", ".join(f'"{k}"' for k in fields)
    prompt = rng.choice(_JSON_ASK).format(keys=keys, text=text)
    return Task(
        id=task_id("extraction", seed, i),
        family="extraction",
        difficulty=d,
        messages=_user(prompt),
        max_tokens=JSON_MAX_TOKENS,
        check=partial(check_json, expected=fields),
    )


# -- logic: boolean expressions and ordering puzzles -------------------------------------------------


def _bool_expr(rng: random.Random, leaves: int) -> str:
    if leaves == 1:
        lit = rng.choice(("True", "False"))
        return f"not {lit}" if rng.random() < 0.3 else lit
    left = rng.randint(1, leaves - 1)
    expr = f"({_bool_expr(rng, left)} {rng.choice(('and', 'or'))} {_bool_expr(rng, leaves - left)})"
    return f"not {expr}" if rng.random() < 0.25 else expr


def _ordering(rng: random.Random, n: int, ask_middle: bool) -> tuple[str, str]:
    people = rng.sample(_NAMES, n)  # people[0] is the most
    adj, most, least = rng.choice((("taller", "tallest", "shortest"), ("older", "oldest", "youngest"), ("faster", "fastest", "slowest")))
    facts = [f"{people[k]} is {adj} than {people[k + 1]}." for k in range(n - 1)]
    rng.shuffle(facts)
    if ask_middle:
        return f"{' '.join(facts)} Who is the second {most}?", people[1]
    if rng.random() < 0.5:
        return f"{' '.join(facts)} Who is the {most}?", people[0]
    return f"{' '.join(facts)} Who is the {least}?", people[-1]


_BOOL_ASK = (
    "Evaluate the boolean expression: {e}\nAnswer True or False.",
    "Is the following expression True or False?\n{e}",
    "In Python, what is the value of `{e}`?",
)


def logic(rng: random.Random, i: int, d: int, seed: int = 0) -> Task:
    if d in (1, 2):
        e = _bool_expr(rng, d + 1)
        q, r = rng.choice(_BOOL_ASK).format(e=e), str(eval(e))  # our own literal expression
    elif d in (3, 4):
        q, r = _ordering(rng, d, ask_middle=False) if d == 3 else _ordering(rng, 4, ask_middle=rng.random() < 0.5)
    else:
        names = rng.sample("pqrsxyz", 3)
        values = {v: rng.choice((True, False)) for v in names}
        a, b, c = names
        e = rng.choice((f"({a} and not {b}) or ({b} and {c})", f"not ({a} or {b}) or ({c} and {a})", f"({a} or {c}) and not ({b} and {a})"))
        assigned = ", ".join(f"{k} = {v}" for k, v in values.items())
        q, r = f"Let {assigned}. What is the value of {e}? Answer True or False.", str(eval(e, {}, dict(values)))
    return _short("logic", seed, i, d, _user(f"{q}\n{rng.choice(_INSTRUCT)}"), r)


# -- word_problems: templated multi-step problems with integer answers -------------------------------

_ITEMS = ("apples", "marbles", "stickers", "pencils", "cards", "shells", "coins", "stamps")


def word_problems(rng: random.Random, i: int, d: int, seed: int = 0) -> Task:
    a, b = rng.sample(_NAMES, 2)
    item = rng.choice(_ITEMS)
    kind = rng.randrange(2)
    if d == 1:
        x, y = rng.randint(2, 12), rng.randint(2, 9)
        if kind:
            q, r = f"{a} has {x} {item}. {a} gets {y} more. How many {item} does {a} have now?", x + y
        else:
            q, r = f"{a} had {x + y} {item} and gave {y} to {b}. How many {item} does {a} have left?", x
    elif d == 2:
        x, y, z = rng.randint(10, 40), rng.randint(3, 15), rng.randint(2, 9)
        if kind:
            q, r = f"{a} has {x} {item}, buys {y} more and then loses {z}. How many {item} does {a} have?", x + y - z
        else:
            q, r = f"A jar holds {x} {item}. {a} adds {y} and {b} takes out {z}. How many {item} are in the jar?", x + y - z
    elif d == 3:
        n, k, m = rng.randint(3, 9), rng.randint(4, 12), rng.randint(1, 9)
        if kind:
            q, r = (
                f"{a} buys {n} packs of {item} with {k} {item} in each pack. {a} already had {m}. How many {item} does {a} have now?",
                n * k + m,
            )
        else:
            q, r = f"A hall has {n} rows of {k} chairs. {m} chairs are empty. How many chairs are taken?", n * k - m
    elif d == 4:
        n, p = rng.randint(2, 6), rng.randint(3, 12)
        bill = next(v for v in (20, 50, 100) if v > n * p)
        if kind:
            q, r = (
                f"{a} buys {n} notebooks at ${p} each and pays with a ${bill} bill. How many dollars of change does {a} get?",
                bill - n * p,
            )
        else:
            v, h, w = rng.randint(40, 90), rng.randint(2, 5), rng.randint(5, 30)
            q, r = f"A train travels at {v} km per hour for {h} hours, then another {w} km. How many km does it travel in total?", v * h + w
    else:
        if kind:
            w, h, days = rng.randint(8, 20), rng.randint(3, 8), rng.randint(3, 6)
            s = rng.randint(10, w * h * days - 1)
            q, r = (f"{a} earns ${w} per hour and works {h} hours a day for {days} days, then spends ${s} on a bike. "
                    f"How many dollars does {a} have left from the pay?", w * h * days - s)  # fmt: skip
        else:
            batches, per, box = rng.randint(3, 7), rng.randint(10, 24), rng.randint(4, 9)
            q, r = (f"A baker makes {batches} batches of {per} cookies, eats 2 of them, and packs the rest into boxes of {box}. "
                    "How many boxes can be completely filled?", (batches * per - 2) // box)  # fmt: skip
    return _short("word_problems", seed, i, d, _user(f"{q}\n{rng.choice(_INSTRUCT)}"), str(r))


# -- sequences: next term of a pattern ------------------------------------------------------------

_SEQ_ASK = (
    "What is the next number in the sequence {s}, ...?",
    "Continue the pattern with one more term: {s}",
    "Find the next term of this sequence: {s}",
)


def sequences(rng: random.Random, i: int, d: int, seed: int = 0) -> Task:
    if d == 1:
        a, s = rng.randint(1, 10), rng.randint(1, 3)
        xs = [a + s * k for k in range(6)]
    elif d == 2:
        a, s = rng.randint(20, 90), rng.choice((-7, -5, -3, 4, 6, 9, 11, 15))
        xs = [a + s * k for k in range(6)]
    elif d == 3:
        a, q = rng.randint(1, 5), rng.choice((2, 3))
        xs = [a * q**k for k in range(6)]
    elif d == 4:
        if rng.random() < 0.5:  # two interleaved arithmetic sequences
            a, b, s, t = rng.randint(1, 9), rng.randint(20, 40), rng.randint(2, 5), -rng.randint(1, 3)
            xs = [a + s * (k // 2) if k % 2 == 0 else b + t * (k // 2) for k in range(8)]
        else:
            off = rng.randint(0, 5)
            xs = [(k + 1) ** 2 + off for k in range(6)]
    else:
        if rng.random() < 0.5:  # each term is the sum of the two before
            xs = [rng.randint(1, 4), rng.randint(2, 6)]
            while len(xs) < 7:
                xs.append(xs[-1] + xs[-2])
        else:  # differences grow by a constant
            a, step, acc = rng.randint(1, 10), rng.randint(1, 4), rng.randint(2, 3)
            xs = [a]
            for j in range(6):
                xs.append(xs[-1] + step + acc * j)
    shown, nxt = ", ".join(map(str, xs[:-1])), xs[-1]
    ask = rng.choice(_SEQ_ASK).format(s=shown)
    return _short("sequences", seed, i, d, _user(f"{ask}\n{rng.choice(_INSTRUCT)}"), str(nxt))


# -- text_edit: transformations of a phrase ------------------------------------------------------


def _caesar(word: str) -> str:
    return "".join(string.ascii_lowercase[(string.ascii_lowercase.index(c) + 1) % 26] for c in word)


def text_edit(rng: random.Random, i: int, d: int, seed: int = 0) -> Task:
    if d == 1:
        words = rng.sample(_WORDS, 3)
        phrase = " ".join(words)
        q = rng.choice((f"Make an acronym from the first letters of '{phrase}', in capitals.",
                        f"What acronym (uppercase initials) does the phrase \"{phrase}\" give?"))  # fmt: skip
        r = "".join(w[0] for w in words).upper()
    elif d == 2:
        words = rng.sample(_WORDS, 4)
        q = rng.choice((f"Reverse the order of the words in: {' '.join(words)}",
                        f"Write these words in the opposite order: \"{' '.join(words)}\""))  # fmt: skip
        r = " ".join(reversed(words))
    elif d == 3:
        words = rng.sample(_WORDS, rng.randint(4, 5))
        q = rng.choice((f"Convert to title case: {' '.join(words)}",
                        f"Capitalize the first letter of every word in \"{' '.join(words)}\"."))  # fmt: skip
        r = " ".join(w.capitalize() for w in words)
    elif d == 4:
        words = rng.sample(_WORDS, 2)
        q = rng.choice((f"Remove all vowels (a, e, i, o, u) from: {' '.join(words)}",
                        f"Delete every vowel from the phrase \"{' '.join(words)}\" and keep the space."))  # fmt: skip
        r = " ".join(re.sub("[aeiou]", "", w) for w in words)
    else:
        word = rng.choice([w for w in _WORDS if len(w) <= 6])
        q = rng.choice((f"Shift every letter of '{word}' forward by one in the alphabet (a becomes b, z becomes a).",
                        f"Apply a Caesar cipher with shift 1 to the word {word}."))  # fmt: skip
        r = _caesar(word)
    return _short("text_edit", seed, i, d, _user(f"{q}\n{rng.choice(_INSTRUCT)}"), r)


# -- multi_turn: the last question depends on an earlier turn ---------------------------------------

_SYSTEMS = (
    "You are a helpful assistant.",
    "You are a concise assistant. Keep answers short.",
    "You are a friendly chatbot that remembers what the user tells it.",
)
_ACKS = ("Got it.", "Okay, noted.", "Sure, I'll remember that.", "Thanks for letting me know!")
_ORDINALS = ("first", "second", "third", "fourth")
_GROCERIES = ("eggs", "milk", "bread", "rice", "butter", "cheese", "onions", "tea", "flour", "honey")


def _chat(rng: random.Random, turns: list[str], question: str) -> tuple[dict[str, str], ...]:
    msgs = [{"role": "system", "content": rng.choice(_SYSTEMS)}]
    for t in turns:
        msgs += [{"role": "user", "content": t}, {"role": "assistant", "content": rng.choice(_ACKS)}]
    msgs.append({"role": "user", "content": f"{question} {rng.choice(_INSTRUCT)}"})
    return tuple(msgs)


def multi_turn(rng: random.Random, i: int, d: int, seed: int = 0) -> Task:
    if d == 1:
        kind = rng.randrange(3)
        if kind == 0:
            v = rng.choice(_NAMES)
            turns, q = [f"Hi! My name is {v}."], "What is my name?"
        elif kind == 1:
            v = rng.choice(_CITIES)
            turns, q = [f"I live in {v}."], "Which city do I live in?"
        else:
            v = rng.choice(("green", "blue", "orange", "purple", "red"))
            turns, q = [f"My favourite colour is {v}."], "What is my favourite colour?"
        r = v
    elif d == 2:
        nums = rng.sample(range(2, 99), 4)
        k = rng.randrange(4)
        turns = [f"I'll give you some numbers: {', '.join(map(str, nums))}.", "Now let's talk about something else: I like hiking."]
        q, r = f"What was the {_ORDINALS[k]} number I gave you?", str(nums[k])
    elif d == 3:
        item = rng.choice(_ITEMS)
        x, y = rng.randint(3, 30), rng.randint(3, 30)
        other = rng.choice(("sister", "brother", "friend"))
        turns = [f"I have {x} {item}.", f"My {other} has {y} {item}."]
        q, r = f"How many {item} do my {other} and I have together?", str(x + y)
    elif d == 4:
        items = rng.sample(_GROCERIES, 5)
        lst, new = items[:4], items[4]
        k = rng.randrange(4)
        ask = k if rng.random() < 0.6 else rng.choice([j for j in range(4) if j != k])
        turns = [f"My shopping list is: {', '.join(lst)}.", f"Please replace {lst[k]} with {new}."]
        updated = lst[:k] + [new] + lst[k + 1 :]
        q, r = f"What is the {_ORDINALS[ask]} item on my list now?", updated[ask]
    else:
        a, b, c = rng.randint(40, 200), rng.randint(5, 39), rng.randint(5, 60)
        turns = [f"I start the week with {a} dollars.", f"On Monday I spend {b} dollars on food.", f"On Tuesday I earn {c} dollars."]
        q, r = "How many dollars do I have now?", str(a - b + c)
    return _short("multi_turn", seed, i, d, _chat(rng, turns, q), r)


# -- reading: the answer is a span of a given paragraph ----------------------------------------------

_SYLLABLES = ("bar", "ven", "tor", "mel", "dun", "ash", "kel", "mor", "lin", "rav", "ost", "wick")
_INDUSTRIES = ("fishing", "glassmaking", "timber", "wool", "salt mining", "pottery")
_ANIMALS = ("heron", "fox", "badger", "stag", "owl", "salmon", "otter", "raven")
_MONTHS = ("March", "April", "May", "June", "July", "August", "September", "October")


def _a(noun: str) -> str:
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"


def _place(rng: random.Random) -> str:
    return "".join(rng.sample(_SYLLABLES, 2)).capitalize() + rng.choice(("ford", "ton", "by", "wick", "dale"))


def reading(rng: random.Random, i: int, d: int, seed: int = 0) -> Task:
    town, other = _place(rng), _place(rng)
    facts = {
        "founded": str(rng.randint(1100, 1890)),
        "mayor": f"{rng.choice(_NAMES)} {rng.choice(_SURNAMES)}",
        "symbol": rng.choice(_ANIMALS),
        "industry": rng.choice(_INDUSTRIES),
        "festival": rng.choice(_MONTHS),
        "population": str(rng.randint(2, 90) * 100 + rng.randint(1, 99)),
    }
    sentences = {
        "founded": f"{town} was founded in {facts['founded']}.",
        "mayor": f"Its mayor is {facts['mayor']}.",
        "symbol": f"The town's symbol is {_a(facts['symbol'])}.",
        "industry": f"For centuries its main industry has been {facts['industry']}.",
        "festival": f"Every year in {facts['festival']} the town holds a lantern festival.",
        "population": f"About {facts['population']} people live there today.",
    }
    direct = {
        "founded": f"In which year was {town} founded?",
        "mayor": f"Who is the mayor of {town}?",
        "symbol": f"Which animal is the symbol of {town}?",
        "industry": f"What is the main industry of {town}?",
        "festival": f"In which month is the lantern festival of {town} held?",
        "population": f"About how many people live in {town}?",
    }
    paraphrased = {
        "founded": f"When did the first settlers establish {town}?",
        "mayor": f"Who leads the local government of {town}?",
        "symbol": f"What creature appears as the emblem of {town}?",
        "industry": f"What trade has kept {town} busy for centuries?",
        "festival": f"Which month should a visitor pick to see the lanterns in {town}?",
        "population": f"What is the approximate number of residents of {town}?",
    }
    distractor = {
        "founded": f"Nearby {other} was founded in {int(facts['founded']) + rng.randint(20, 90)}.",
        "mayor": f"The mayor of nearby {other} is {rng.choice(_NAMES)} {rng.choice(_SURNAMES)}.",
        "symbol": f"Nearby {other} has {_a(rng.choice([a for a in _ANIMALS if a != facts['symbol']]))} as its symbol.",
        "industry": f"Nearby {other} is known for {rng.choice([x for x in _INDUSTRIES if x != facts['industry']])}.",
        "festival": f"Nearby {other} holds its fair in {rng.choice([m for m in _MONTHS if m != facts['festival']])}.",
        "population": f"Nearby {other} has about {int(facts['population']) + rng.randint(300, 4000)} residents.",
    }
    key = rng.choice(list(facts))
    n_facts = {1: 1, 2: 3, 3: 4, 4: 6, 5: 6}[d]
    keys = [key] + rng.sample([k for k in facts if k != key], n_facts - 1)
    lines = [sentences[k] for k in keys]
    rng.shuffle(lines)
    # every paragraph names the town before "its" and "there"
    intro = (f"{town} is a small town in the hills.", f"{town} is an old market town.", f"This is a note about {town}.")
    lines.insert(0, rng.choice(intro))
    if d >= 3:
        lines.insert(rng.randint(1, len(lines)), distractor[key])
    question = paraphrased[key] if d == 5 or (d == 4 and rng.random() < 0.5) else direct[key]
    prompt = rng.choice((
        "Read the paragraph and answer the question using words from it.\n\n{p}\n\nQuestion: {q}\n{i}",
        "{p}\n\nBased only on the text above: {q} {i}",
        "Context: {p}\nQuestion: {q}\n{i}",
    )).format(p=" ".join(lines), q=question, i=rng.choice(_INSTRUCT))  # fmt: skip
    return _short("reading", seed, i, d, _user(prompt), facts[key])


FAMILIES: dict[str, Callable[[random.Random, int, int, int], Task]] = {
    "code_trace": code_trace,
    "extraction": extraction,
    "logic": logic,
    "word_problems": word_problems,
    "sequences": sequences,
    "text_edit": text_edit,
    "multi_turn": multi_turn,
    "reading": reading,
}


def generate(per_family: int, seed: int = 0, families: tuple[str, ...] = tuple(FAMILIES)) -> list[Task]:
    """``per_family`` tasks of each family, interleaved; the same seed gives the same tasks and ids."""
    groups = []
    for name in families:
        rng = random.Random(f"novel/{seed}/{name}")
        groups.append([FAMILIES[name](rng, i, grade(i), seed) for i in range(per_family)])
    return interleave(groups)


def expected_of(task: Task) -> Any:
    """The reference answer a task's checker was built with (for tests and reports)."""
    check: Any = task.check
    return check.keywords["expected"]
