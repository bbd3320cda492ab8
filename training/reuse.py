"""What draft reuse saves on an escalation, estimated from collected answers.

The collection runs every stage from scratch, so the replay needs a model of
what stage j would have cost had it verified stage i's draft instead
(router/draft.py). Two measured ingredients:

* how much of stage j's own answer the rounds would take from the draft:
  replayed on the two texts with the router's own re-join rule
  (:func:`router.draft.rejoin`), character by character;
* each stage's time per prompt token (prefill, what scoring a kept token
  costs) and per generated token (decode, what it saves), from the
  collection's measured seconds (:class:`StageRates`).

Saving = kept tokens x (decode - prefill) - disagreements x (one decode + a
wasted half proposal of prefill). An estimate: the bench
(bench/draft_reuse.py) measures the real thing on a sample, and the closing
figures compare the two.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from router.draft import FIRST_PROPOSAL_TOKENS, OWN_TOKENS_PER_PROBE, rejoin

_PROBE_CHARS = 4 * OWN_TOKENS_PER_PROBE  # a probe's text, at ~4 characters per token


@dataclass(frozen=True)
class Reuse:
    """Replay of the rounds on two texts: characters of ``own`` taken from the draft, and disagreements."""

    kept_chars: int
    disagreements: int


def replay(own: str, draft: str) -> Reuse:
    """Walk stage j's own answer: runs that equal the draft are kept; after a disagreement stage j
    writes a probe of its own and re-joins the draft where its text's tail re-occurs."""
    i, kept, misses = 0, 0, 0
    position: int | None = 0
    searched = 0
    while i < len(own):
        if position is None:
            i = min(len(own), i + _PROBE_CHARS)
            position = rejoin(draft, searched, own[:i])
            continue
        n = 0
        while i + n < len(own) and position + n < len(draft) and own[i + n] == draft[position + n]:
            n += 1
        kept, i, position = kept + n, i + n, position + n
        searched = position
        if position >= len(draft) or i >= len(own):
            break
        misses += 1
        position = None
    return Reuse(kept, misses)


def agreement(own: str, draft: str) -> float:
    """The share of ``draft`` a stage whose own (greedy) answer is ``own`` would keep verifying it, estimated on the
    texts (kept characters over the draft's): the stand-in for a verification that was not run (a stage's answer
    against a stage above the one that verified it, in a replay or on a tour). No draft: 0."""
    return replay(own, draft).kept_chars / len(draft) if draft else 0.0


@dataclass(frozen=True)
class StageRates:
    """Seconds per prompt token (prefill) and per generated token (decode) of one stage.

    Medians, not a least-squares fit: some collected timings were taken while
    other work shared the cores, and a fit lets those outliers trade prefill
    against a large intercept. Prefill from answers of at most 3 tokens (the
    time is nearly all prompt), decode from answers of 50 tokens or more, each
    with the other's share taken off.
    """

    prefill: float
    decode: float

    @classmethod
    def measure(cls, rows: list[tuple[int, int, float]]) -> StageRates:
        a = np.array(rows, dtype=np.float64).reshape(-1, 3)
        short, long = a[a[:, 1] <= 3], a[a[:, 1] >= 50]
        prefill = decode = 0.0
        for _ in range(5):  # each estimate takes the other's share off; converges in a few steps
            if len(short):
                prefill = max(float(np.median((short[:, 2] - decode * short[:, 1]) / np.maximum(short[:, 0], 1))), 0.0)
            if len(long):
                decode = float(np.median((long[:, 2] - prefill * long[:, 0]) / long[:, 1]))
        return cls(prefill, max(decode, prefill))

    def saving(self, kept_tokens: float, disagreements: int) -> float:
        per_miss = self.decode + self.prefill * FIRST_PROPOSAL_TOKENS / 2
        return kept_tokens * (self.decode - self.prefill) - disagreements * per_miss


def rates(rows: list[dict[str, Any]], n_stages: int) -> list[StageRates]:
    """Per stage, from collected rows (``usage`` and ``seconds`` of each stage's answer)."""
    per: list[list[tuple[int, int, float]]] = [[] for _ in range(n_stages)]
    for row in rows:
        for s in row["stages"]:
            u = s.get("usage") or {}
            if s["stage"] < n_stages and u:
                per[s["stage"]].append((u.get("prompt_tokens", 0), u.get("completion_tokens", 0), s["seconds"]))
    return [StageRates.measure(p) for p in per]


def savings(rows: list[dict[str, Any]], tasks: np.ndarray, stage_rates: list[StageRates]) -> np.ndarray:
    """(T, S, S): seconds saved when stage j verifies stage i's draft for each task (0 where i >= j)."""
    n = len(stage_rates)
    by_task = {r["task"]: {s["stage"]: s for s in r["stages"]} for r in rows}
    out = np.zeros((len(tasks), n, n))
    for t, task in enumerate(tasks):
        stages = by_task[str(task)]
        for j in range(1, n):
            own = stages[j]
            tokens = (own.get("usage") or {}).get("completion_tokens", 0)
            text = own.get("text") or ""
            if not tokens or not text:
                continue
            for i in range(j):
                draft = stages[i].get("text") or ""
                if not draft:
                    continue
                r = replay(text, draft)
                kept = tokens * r.kept_chars / len(text)
                out[t, i, j] = min(max(stage_rates[j].saving(kept, r.disagreements), -own["seconds"]), own["seconds"])
    return out
