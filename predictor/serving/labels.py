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

Without a checker, the top stage is the reference the others are measured
against: its own answer agrees with itself, so where a ladder learns from its
traffic alone (no collection with checkers), the top stage's answers are
labelled 1 unless they break the request's rules (``label(..., reference=True)``).
"""

from __future__ import annotations

from typing import Any

AGREEMENT_THRESHOLD = 0.6  # share of a draft's tokens a higher stage keeps for the answer to count as acceptable


def agreement_label(agreement: float) -> int:
    """1 when a higher stage kept at least ``AGREEMENT_THRESHOLD`` of the answer's tokens, else 0."""
    return int(agreement >= AGREEMENT_THRESHOLD)


def label(stage_row: dict[str, Any], reference: bool = False) -> int | None:
    """A collected or logged stage answer's label: 1 acceptable, 0 not, None unknown (never checked nor verified:
    such rows are skipped). A checker's verdict first, then a broken rule (``valid: false``), then agreement;
    ``reference``: the answer is the top stage's, which the others' agreement is measured against (1)."""
    if stage_row.get("passed") is not None:
        return int(stage_row["passed"])
    if stage_row.get("valid") is False:
        return 0
    if reference:
        return 1
    if stage_row.get("agreement") is not None:
        return agreement_label(float(stage_row["agreement"]))
    return None
