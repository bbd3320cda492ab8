"""What makes an answer acceptable, for training: one definition for the offline tools and the router's label stream.

An answer's label is 1 (acceptable) or 0 (not). Where an exact checker judged it
(``passed``), that verdict is the label. Where none exists, which is the case in
production, the label is the answer's agreement with a higher stage: the share of
its tokens that the higher stage kept when it verified the answer as a draft
(greedy verification, as in draft reuse), at ``AGREEMENT_THRESHOLD`` or above. A
collection measures agreement with the top stage; the router, with the stage that
verified the answer (the next one up its ladder). An answer that breaks the
request's rules (a malformed tool call, JSON that fails its schema) is labelled 0
whatever else is known of it.

**A short answer is all ending.** Below ``SHORT_ANSWER_CHARS`` characters an
answer (a number, a word, a name) is acceptable only where the higher stage's
own answer is the same text (``same``). A share of kept tokens says nothing
there: a verifier keeps all of "30" and writes "300", and keeps 3 of the 4
characters of "2000" before it ends at "200". On the CPU collection (777 tasks,
the checkers' verdicts as the judge) the threshold alone labelled 30 of the
0.5B stage's answers acceptable that failed where the top passed; with the
short-answer rule 12, and it misses no more of the answers both stages got
right (42 either way). Where ``same`` is unknown (a streamed verifier, a row
logged before it was recorded) the threshold decides.

Without a checker, the top stage is the reference the others are measured
against: its own answer agrees with itself, so where a ladder learns from its
traffic alone (no collection with checkers), the top stage's answers are
labelled 1 unless they break the request's rules (``label(..., reference=True)``).
"""

from __future__ import annotations

from typing import Any

AGREEMENT_THRESHOLD = 0.6  # share of a draft's tokens a higher stage keeps for the answer to count as acceptable
SHORT_ANSWER_CHARS = 20  # an answer shorter than this (stripped) agrees only when the higher stage writes the same text


def same_answer(answer: str, other: str) -> bool:
    """Whether two answers are the same text (white space around them aside): a verifier whose own answer this is
    would write ``answer`` itself."""
    return answer.strip() == other.strip()


def agreement_label(agreement: float, answer: str | None = None, same: bool | None = None) -> int:
    """1 when a higher stage kept at least ``AGREEMENT_THRESHOLD`` of the answer's tokens, else 0; a short ``answer``
    (module docstring) is 1 only when the higher stage's own answer is the ``same`` text, where that is known."""
    if same is not None and answer is not None and len(answer.strip()) < SHORT_ANSWER_CHARS:
        return int(same)
    return int(agreement >= AGREEMENT_THRESHOLD)


def label(stage_row: dict[str, Any], reference: bool = False) -> int | None:
    """A collected or logged stage answer's label: 1 acceptable, 0 not, None unknown (never checked nor verified:
    such rows are skipped). A checker's verdict first, then a broken rule (``valid: false``), then agreement
    (with ``same``, whether the verifier's own answer is this ``text``); ``reference``: the answer is the top
    stage's, which the others' agreement is measured against (1)."""
    if stage_row.get("passed") is not None:
        return int(stage_row["passed"])
    if stage_row.get("valid") is False:
        return 0
    if reference:
        return 1
    if stage_row.get("agreement") is not None:
        return agreement_label(float(stage_row["agreement"]), stage_row.get("text"), stage_row.get("same"))
    return None
