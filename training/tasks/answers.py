"""Exact checkers for short answers and for code answers.

Small models rarely answer with the bare value even when asked to, so a short
answer is accepted when its whole text, its first line or its last line --
after stripping markdown emphasis, quotes, code fences and a trailing period --
equals the expected value, or when the text after its last ``=`` does. That is
still exact: "The answer is 42" fails for 42, "12 + 30 = 42" passes.
"""

from __future__ import annotations

import re

_FENCE = re.compile(r"```[a-zA-Z0-9_+-]*\n(.*?)```", re.DOTALL)
_OPEN_FENCE = re.compile(r"```[a-zA-Z0-9_+-]*\n(.*)", re.DOTALL)
_STRIP = " \t\r\n*`'\".:"


def normalize(text: str) -> str:
    t = text.strip()
    if t.startswith("```"):
        t = t.strip("`").strip()
    t = t.strip(_STRIP)
    return re.sub(r"\s+", " ", t).lower()


def _number_form(text: str) -> str:
    """'1,234.50' and '1 234.5' compare equal to '1234.5'."""
    t = re.sub(r"(?<=\d)[, ](?=\d{3}\b)", "", text)
    if re.fullmatch(r"-?\d+\.\d+", t):
        t = t.rstrip("0").rstrip(".")
    return t


def candidates(answer: str) -> set[str]:
    lines = [ln for ln in answer.strip().splitlines() if ln.strip(_STRIP)]
    raw = [answer] + ([lines[0], lines[-1]] if lines else [])
    if "=" in answer:
        raw.append(answer.rsplit("=", 1)[1])
    out = set()
    for r in raw:
        n = normalize(r)
        out.add(n)
        out.add(_number_form(n))
    return out


def matches(answer: str, expected: str) -> bool:
    want = normalize(expected)
    return want in candidates(answer) or _number_form(want) in candidates(answer)


def extract_code(answer: str) -> str:
    """The first fenced code block (or an unterminated one cut by max_tokens), else the whole text."""
    m = _FENCE.search(answer) or _OPEN_FENCE.search(answer)
    return m.group(1) if m else answer
