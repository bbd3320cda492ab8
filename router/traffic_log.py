"""Opt-in log of live cascade traffic in the collection format, for retraining on your own traffic.

Enabled by ``predictor.log_path``. Each cascade request appends one JSON line
shaped like a ``training.collect`` row: the prompt, and per stage that
answered its text, compact logprobs, finish reason, usage, seconds and draft
verification. The label is filled in where the traffic itself provides one:
when the cascade escalated from stage i and the next stage verified stage i's
answer as a draft, the share it accepted is stage i's ``agreement`` (the same
label the open prompts get in collection), and ``same`` says whether the next
stage's own answer was the same text (what a short answer's label rests on,
``predictor.serving.labels``). With shadow checks on
(``router.shadow``) a checked answer is logged again, as a row of its own, with its
``agreement``, the ``verifier`` and its ``weight`` (1 / the sampling rate). Rows
without any label are skipped by training. You can add your own verdicts (``passed: true/false``) to rows
from user feedback or checkers before training. Prompts are stored verbatim:
enable it only where that is acceptable.

Each row has its ``time`` (Unix seconds), for reports over time (``adaptive-sd report``).
Requests with tools or a JSON format carry more: the row's ``kind`` (tools,
json_object, json_schema, text), and per stage its ``tool_calls`` and the
router's validity verdict (``valid``: true/false, null when not judged;
``invalid``: the reason, see ``router.validity``). The predictor's features do
not include validity yet: a model retrained on such rows can learn from it.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from predictor.serving.features import FEATURE_VERSION
from predictor.serving.rows import COLLECT_VERSION, compact_logprobs, split_of


class TrafficLog:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def record(self, prompt_texts: list[str], visits: list[dict[str, Any]], kind: str = "text", tour: bool = False) -> None:
        """``visits``: per answered stage {stage, name, choice (None if streamed), usage, seconds,
        draft {accepted, tokens, seconds} | None, valid (bool | None), invalid (reason | None), agreement and same (its
        verification label's, ``router.labels``; None: none)}, and for a shadow check's row ``weight`` (1 / the
        sampling rate) and ``verifier``; ``kind``: the request's kind (``router.validity.request_kind``); ``tour``: the request
        toured the whole ladder (``cascade.explore``), so every stage it may use answered: such rows are a collection
        drawn from the traffic at random."""
        stages = []
        for v in visits:
            choice = v["choice"]
            if choice is None:  # a streamed final stage: its draft check labels the stage below, nothing more
                continue
            message = choice.get("message") or {}
            row = {
                "stage": v["stage"], "name": v["name"], "text": message.get("content") or "",
                "finish_reason": choice.get("finish_reason") or "stop", "logprobs": compact_logprobs(choice),
                "usage": v.get("usage") or {}, "seconds": round(v["seconds"], 4), "passed": None,
                "draft": v.get("draft"), "agreement": v.get("agreement"), "same": v.get("same"),
                "tool_calls": message.get("tool_calls") or None, "valid": v.get("valid"), "invalid": v.get("invalid"),
            }  # fmt: skip
            row.update({key: v[key] for key in ("weight", "verifier") if key in v})
            stages.append(row)
        rid = f"traffic/{uuid.uuid4().hex}"
        row = {"task": rid, "family": "traffic", "difficulty": 0, "split": split_of(rid), "prompt_texts": prompt_texts,
               "collect_version": COLLECT_VERSION, "feature_version": FEATURE_VERSION, "kind": kind, "stages": stages,
               "time": round(time.time(), 3)}  # fmt: skip
        if tour:
            row["tour"] = True
        line = json.dumps(row, separators=(",", ":")) + "\n"
        with self._lock, self.path.open("a") as f:
            f.write(line)
