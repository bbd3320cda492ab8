"""Collected rows -> feature matrices and labels, through the serving feature code.

Features are recomputed from the stored logprobs with the very functions the
router calls (``AnswerStats.from_choice``, ``answer_features``,
``PromptStats.from_texts``), so a training row and a served request with the
same answer have the same vector. The label is ``predictor.serving.labels.label``,
the definition the router's label stream uses too: the exact checker's verdict,
or for open prompts agreement with the top stage at ``AGREEMENT_THRESHOLD``.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from predictor.serving import features
from predictor.serving.features import AnswerStats, DraftStats, PromptStats, answer_features, posterior_features, prompt_features
from predictor.serving.labels import label
from predictor.serving.rows import TOP_LOGPROBS, expand_logprobs


def stage_features(prompt: PromptStats, stage_row: dict[str, Any]) -> np.ndarray:
    choice = {"logprobs": expand_logprobs(stage_row["logprobs"]), "finish_reason": stage_row["finish_reason"]}
    d = stage_row.get("draft")
    draft = DraftStats(d["accepted"], d["tokens"]) if d else None
    return answer_features(prompt, AnswerStats.from_choice(choice, TOP_LOGPROBS), stage_row["stage"], draft)


def prefix_features(prompt: PromptStats, stage_row: dict[str, Any], tokens: int) -> np.ndarray:
    """The features of the first ``tokens`` tokens of a collected answer, as the router computes them at that
    checkpoint of a stream: the same ``answer_features`` over the logprobs streamed so far, the answer not
    finished yet, no draft (a stage judged while it writes is one called from scratch). For greedy decoding
    these are exactly the logprobs the stage streamed at that point."""
    return features.prefix_features(prompt, expand_logprobs(stage_row["logprobs"][:tokens])["content"], stage_row["stage"], TOP_LOGPROBS)


def read_rows(path: Path) -> Iterator[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        for line in f:
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by an interrupted collection


@dataclass
class Dataset:
    """One row per (task, stage); ``prior_x`` has the same rows with prompt-only features."""

    x: np.ndarray
    prior_x: np.ndarray
    y: np.ndarray
    stage: np.ndarray
    task: np.ndarray
    split: np.ndarray
    family: np.ndarray
    seconds: np.ndarray
    n_stages: int
    prompt_tokens: np.ndarray  # the stage's usage: what per-token prices are charged on
    output_tokens: np.ndarray

    def where(self, mask: np.ndarray) -> Dataset:
        return Dataset(self.x[mask], self.prior_x[mask], self.y[mask], self.stage[mask], self.task[mask],
                       self.split[mask], self.family[mask], self.seconds[mask], self.n_stages, self.prompt_tokens[mask],
                       self.output_tokens[mask])  # fmt: skip

    def part(self, split: str) -> Dataset:
        return self.where(self.split == split)


def load(path: Path) -> Dataset:
    xs, px, ys, st, tk, sp, fam, secs, pt, ot = [], [], [], [], [], [], [], [], [], []
    n_stages = 0
    for row in read_rows(path):
        prompt = PromptStats.from_texts(row["prompt_texts"])
        n_stages = max(n_stages, len(row["stages"]))
        pf = prompt_features(prompt, max(s["stage"] for s in row["stages"]) + 1) if row["stages"] else None
        if pf is None:
            continue
        for s in row["stages"]:
            y = label(s)
            if y is None or s["stage"] >= len(pf):
                continue
            xs.append(stage_features(prompt, s))
            px.append(pf[s["stage"]])
            ys.append(y)
            st.append(s["stage"])
            tk.append(row["task"])
            sp.append(row["split"])
            fam.append(row["family"])
            secs.append(s["seconds"])
            usage = s.get("usage") or {}
            pt.append(usage.get("prompt_tokens") or prompt.n_tokens)
            ot.append(usage.get("completion_tokens") or len(s.get("logprobs") or ()))
    if not xs:
        raise RuntimeError(f"no collected rows in {path}")
    return Dataset(np.stack(xs), np.stack(px), np.array(ys, dtype=np.int64), np.array(st), np.array(tk), np.array(sp),
                   np.array(fam), np.array(secs, dtype=np.float64), n_stages, np.array(pt, dtype=np.float64),
                   np.array(ot, dtype=np.float64))  # fmt: skip


@dataclass
class Prefixes:
    """The prefix model's rows: one per collected answer and checkpoint ``t`` it was still writing at (more than
    ``t`` tokens); the label is the finished answer's."""

    x: np.ndarray
    y: np.ndarray
    stage: np.ndarray
    tokens: np.ndarray  # the checkpoint t
    task: np.ndarray
    split: np.ndarray
    family: np.ndarray

    def where(self, mask: np.ndarray) -> Prefixes:
        return Prefixes(self.x[mask], self.y[mask], self.stage[mask], self.tokens[mask], self.task[mask], self.split[mask],
                        self.family[mask])  # fmt: skip

    def part(self, split: str) -> Prefixes:
        return self.where(self.split == split)

    def rows_of(self, data: Dataset) -> tuple[Prefixes, np.ndarray]:
        """The rows whose finished answer is in ``data`` (a file still being appended to may hold more), and
        the index of that answer in ``data`` for each of them."""
        at = {(str(t), int(s)): i for i, (t, s) in enumerate(zip(data.task, data.stage, strict=True))}
        idx = [at.get((str(t), int(s)), -1) for t, s in zip(self.task, self.stage, strict=True)]
        keep = np.array(idx) >= 0
        return self.where(keep), np.array(idx, dtype=np.int64)[keep]


def prefixes(path: Path, checkpoints: tuple[int, ...]) -> Prefixes:
    """``Prefixes`` of every labelled answer in the collection at ``path`` (rows in file order, then stage, then t)."""
    xs, ys, st, tt, tk, sp, fam = [], [], [], [], [], [], []
    for row in read_rows(path):
        prompt = PromptStats.from_texts(row["prompt_texts"])
        for s in row["stages"]:
            y = label(s)
            if y is None:
                continue
            for t in checkpoints:
                if len(s["logprobs"]) <= t:
                    break
                xs.append(prefix_features(prompt, s, t))
                ys.append(y)
                st.append(s["stage"])
                tt.append(t)
                tk.append(row["task"])
                sp.append(row["split"])
                fam.append(row["family"])
    if not xs:
        raise RuntimeError(f"no answer in {path} is longer than the first checkpoint {checkpoints[:1]}")
    return Prefixes(np.stack(xs), np.array(ys, dtype=np.int64), np.array(st), np.array(tt), np.array(tk), np.array(sp),
                    np.array(fam))  # fmt: skip


@dataclass
class Pairs:
    """The belief model's rows: one per task and pair of stages i < j that both have a label.

    ``x`` is stage i's answer vector with j appended (``posterior_features``), ``y`` stage j's label:
    every collected task has every stage's outcome, so each one gives a row per pair.
    """

    x: np.ndarray
    y: np.ndarray
    lower: np.ndarray  # i: the stage that answered
    target: np.ndarray  # j: the stage asked about
    task: np.ndarray
    split: np.ndarray
    family: np.ndarray

    def where(self, mask: np.ndarray) -> Pairs:
        return Pairs(self.x[mask], self.y[mask], self.lower[mask], self.target[mask], self.task[mask], self.split[mask], self.family[mask])

    def part(self, split: str) -> Pairs:
        return self.where(self.split == split)


def pairs(data: Dataset) -> Pairs:
    """``Pairs`` from a ``Dataset`` (rows in task order, then i, then j: deterministic)."""
    by_task: dict[str, dict[int, int]] = {}
    for r, (t, s) in enumerate(zip(data.task, data.stage, strict=True)):
        by_task.setdefault(str(t), {})[int(s)] = r
    xs, ys, lo, tg, rows = [], [], [], [], []
    for stages in by_task.values():
        for i in sorted(stages):
            above = [j for j in sorted(stages) if j > i]
            if not above:
                continue
            block = posterior_features(data.x[stages[i]], i, max(above) + 1)
            for j in above:
                xs.append(block[j - i - 1])
                ys.append(data.y[stages[j]])
                lo.append(i)
                tg.append(j)
                rows.append(stages[i])
    if not xs:
        raise RuntimeError("no task has labels at two stages: the belief model has nothing to learn from")
    ix = np.array(rows, dtype=np.int64)
    return Pairs(np.stack(xs), np.array(ys, dtype=np.int64), np.array(lo), np.array(tg), data.task[ix], data.split[ix], data.family[ix])
