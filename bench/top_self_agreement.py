"""How far does a stage, at temperature 0, agree with itself? The noise floor under "within 1 point of the top stage".

``bench/live_vs_top.py`` compares the cascade with the top stage on 152 test tasks, where one task is 0.66 points.
A llama.cpp stage is greedy but not bit-for-bit repeatable across its own states: it keeps the longest prefix of
the last request in its KV cache and computes only the rest, and the CPU kernels do not give a token's logits to
the last bit alike when it is computed in a batch of many, of a few or alone (differences of a few tenths in a
logit on this build, enough to turn a near tie the other way). So the same request can get another answer
depending on what the stage served before it.

This sends every test task with an exact checker (``live_vs_top.test_tasks``) to one stage by name (the top by
default, ``--stage``), twice in a row, with the collection's body (its ``max_tokens``, temperature 0, seed):

* **first**, right after an unrelated prompt (``live_vs_top.FLUSH``): only the chat template's opening is cached,
  the prompt is computed in one batch (as ``live_vs_top`` always sends the top stage alone);
* **again**, at once: the whole prompt is cached but its last token, which is computed alone.

Reported: how many answers differ, how many of them the checker judges differently (each way), and the
accuracy of both passes; the rows (task, both answers' verdicts, whether the texts are the same) go to
``--rows``, and a rerun resumes from them.

Usage:
  make up &   # or: .venv/bin/adaptive-sd up
  .venv/bin/python bench/top_self_agreement.py [--limit 152] [--stage qwen2.5-coder-1.5b]
  .venv/bin/python bench/top_self_agreement.py --start      # starts and stops `up` itself
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._procs import RESULTS, emit, finished_rows
from bench.live_vs_top import FLUSH, config_name, router_args, start_up, stop_up, test_tasks
from common.settings import load_settings
from training.collect import SEED
from training.tasks import Task


def ask(client: httpx.Client, model: str, messages: list[dict[str, str]], max_tokens: int) -> str:
    body = {"model": model, "messages": messages, "temperature": 0.0, "seed": SEED, "max_tokens": max_tokens}
    r = client.post("/v1/chat/completions", json=body)
    r.raise_for_status()
    return str(r.json()["choices"][0]["message"].get("content") or "")


def pair(client: httpx.Client, model: str, task: Task) -> dict[str, Any]:
    """One task: the flush, then the task twice in a row; both verdicts and whether the answers are the same text."""
    assert task.check is not None
    ask(client, model, FLUSH, 4)
    first = ask(client, model, [dict(m) for m in task.messages], task.max_tokens)
    again = ask(client, model, [dict(m) for m in task.messages], task.max_tokens)
    return {"task": task.id, "model": model, "first_ok": bool(task.check(first)), "again_ok": bool(task.check(again)),
            "same": first == again}  # fmt: skip


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(rows)
    flips_down = sum(r["first_ok"] and not r["again_ok"] for r in rows)
    flips_up = sum(r["again_ok"] and not r["first_ok"] for r in rows)
    return {"tasks": n, "answers_differ": sum(not r["same"] for r in rows),
            "verdicts_differ": flips_down + flips_up, "first_right_again_wrong": flips_down, "again_right_first_wrong": flips_up,
            "accuracy_first": round(sum(r["first_ok"] for r in rows) / n, 4) if n else None,
            "accuracy_again": round(sum(r["again_ok"] for r in rows) / n, 4) if n else None,
            "points_one_task": round(100 / n, 2) if n else None}  # fmt: skip


def main() -> None:
    ap = router_args(__doc__)
    ap.add_argument("--stage", default=None, help="the stage to ask (default: the top one)")
    ap.add_argument("--out", default=str(RESULTS / "top_self_agreement.json"))
    ap.add_argument("--rows", default=None, help="JSONL of finished tasks, for resuming (default: --out's stem + .jsonl)")
    args = ap.parse_args()

    settings = load_settings(args.config)
    base = (args.url or f"http://{settings.server.host}:{settings.server.port}").rstrip("/").removesuffix("/v1")
    model = args.stage or settings.stages[-1].name
    tasks, skipped_open = test_tasks(Path(args.data), len(settings.stages))
    tasks = tasks[: args.limit]
    out = Path(args.out)
    rows_path = Path(args.rows) if args.rows else out.with_suffix(".jsonl")
    done = {row["task"]: row for row in finished_rows(rows_path) if row.get("model") == model}
    proc = start_up(args.config, rows_path.with_suffix(".up.log"), args.startup_timeout, base + "/health") if args.start else None
    try:
        with httpx.Client(base_url=base, timeout=900) as client, rows_path.open("a") as f:
            for task in tqdm([t for t in tasks if t.id not in done], desc=f"{model}, each task twice", unit="task"):
                row = pair(client, model, task)
                f.write(json.dumps(row) + "\n")
                f.flush()
                done[task.id] = row
    finally:
        if proc is not None:
            stop_up(proc)
    rows = [done[t.id] for t in tasks if t.id in done]
    result = {"config": config_name(args.config), "stage": model, "test_tasks_without_checker_left_out": skipped_open, **summary(rows)}
    emit(result, out)


if __name__ == "__main__":
    main()
