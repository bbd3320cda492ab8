"""The router's own label stream: labels that cost nothing, read off every cascade run.

A label says whether a stage's answer was acceptable (``predictor.serving.labels``,
the definition training uses). Production has no checker, but the cascade makes
labels as it works:

* **verification**: when it escalates from stage i and the next stage verifies
  i's answer as a draft, the share of it that stage kept is i's agreement, and
  the agreement at ``AGREEMENT_THRESHOLD`` or above is a 1 (a short answer: only
  where that stage's own answer, once it finished, is the same text);
* **validity**: an answer that broke the request's rules (a malformed tool call,
  JSON that fails its schema; ``router.validity``) is a 0;
* **shadow**: a sampled answer the cascade returned from a lower stage, verified by
  the next stage after the response went out (``router.shadow``), weighted by the
  inverse of its sampling rate.

An answer cut short by early exit is not labelled (its prefix is not its answer),
nor is the stage that answered last (nothing above it looked at it). These are
the labels of escalated answers only (a biased sample: the rule chose them);
shadow checks label some of the rest.

Every label is counted (``adaptive_sd_labels``; agreement per stage in
``adaptive_sd_stage_agreement``), and with ``predictor.log_path`` the traffic log
keeps each answer with what it takes to recompute its label and features
(``router.traffic_log``), for retraining on your own ladder.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from predictor.serving.labels import agreement_label, same_answer
from router.contracts import StageVisit
from router.metrics import LABELS, STAGE_AGREEMENT

LabelSource = Literal["verification", "validity", "shadow"]


@dataclass(frozen=True, slots=True)
class FreeLabel:
    """One stage answer's label, as the cascade's own traffic gave it."""

    stage: int
    name: str
    value: int  # 1 acceptable, 0 not
    source: LabelSource
    agreement: float | None = None  # verification: the share of the answer the next stage kept
    verifier: str | None = None  # verification: the stage that verified it
    weight: float = 1.0  # 1 / the probability that the answer was checked (a shadow check's sampling rate)
    same: bool | None = None  # the verifier's own answer is this answer's text (None: not known)


AnswerText = Callable[[Mapping[str, Any]], str]  # a choice's text, in the request's dialect (``CascadeDialect.text``)


def _same(answer: str | None, above: StageVisit, text: AnswerText | None) -> bool | None:
    """Whether ``above`` (which verified ``answer`` and went on from what it kept) finished with the same text;
    None where that is not known: no dialect to read texts with, a streamed answer, an answer cut short."""
    if text is None or answer is None or above.choice is None or above.aborted_at is not None:
        return None
    return same_answer(answer, text(above.choice))


def free_labels(visits: Sequence[StageVisit], text: AnswerText | None = None) -> list[FreeLabel]:
    """The labels a cascade run's visits give (module docstring), in ladder order; ``text`` reads an answer's text
    (without it a short answer's label is its share kept, as a long one's)."""
    answered = [v for v in visits if v.error is None]
    out: list[FreeLabel] = []
    for v, above in zip(answered, [*answered[1:], None], strict=True):
        if v.aborted_at is not None:
            continue
        if v.invalid is not None:
            out.append(FreeLabel(v.stage, v.name, 0, "validity"))
        elif above is not None and above.draft is not None and above.draft.draft_tokens:
            answer = text(v.choice) if text is not None and v.choice is not None else None
            agreement, same = above.draft.fraction, _same(answer, above, text)
            value = agreement_label(agreement, answer, same)
            out.append(FreeLabel(v.stage, v.name, value, "verification", agreement, above.name, same=same))
    return out


def record_labels(visits: Sequence[StageVisit], text: AnswerText | None = None) -> list[FreeLabel]:
    """``free_labels``, counted in the metrics."""
    labels = free_labels(visits, text)
    for label in labels:
        count_label(label)
    return labels


def count_label(label: FreeLabel) -> None:
    """One label in the metrics: counted by stage, source and value; its agreement observed."""
    LABELS.labels(label.name, label.source, str(label.value)).inc()
    if label.agreement is not None:
        STAGE_AGREEMENT.labels(label.name).observe(label.agreement)
