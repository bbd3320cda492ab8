"""Open prompts without a reference answer (``open_prompts.jsonl``, kept in the repo).

Their label is agreement with the top stage: the share of an answer's tokens
that the top stage accepts when it verifies the answer as a draft (greedy
verification, as in draft reuse), thresholded at ``predictor.serving.labels.AGREEMENT_THRESHOLD``.
"""

from __future__ import annotations

import json
from pathlib import Path

from training.tasks import Task

PATH = Path(__file__).with_name("open_prompts.jsonl")
MAX_TOKENS = 160


def load() -> list[Task]:
    rows = [json.loads(line) for line in PATH.read_text().splitlines() if line.strip()]
    return [
        Task(
            id=r["id"],
            family=f"open-{r['family']}",
            difficulty=0,
            messages=({"role": "user", "content": r["prompt"]},),
            max_tokens=MAX_TOKENS,
        )
        for r in rows
    ]
