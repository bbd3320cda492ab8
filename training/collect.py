"""Run a task set through every stage of a ladder and store what the predictor learns from.

One JSON line per task holds every stage's answer: text, finish reason, the
compact token logprobs (chosen + top-k, enough to recompute any feature
version), usage, wall seconds, the exact-checker verdict, and the outcome of
verifying the previous stage's answer as a draft (stage i scores stage i-1's
answer, as the router does on escalation). Open prompts also get every lower
answer scored by the top stage: that agreement is their label.

Resumable: tasks already in the output file are skipped, and each task is
written whole (append + flush), so an interrupted run loses at most one task.
The same file is the answer cache that offline policy evaluation replays.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.settings import Settings
from predictor.serving.features import FEATURE_VERSION
from predictor.serving.labels import same_answer
from predictor.serving.rows import COLLECT_VERSION, TOP_LOGPROBS, compact_logprobs
from router.draft import DraftCheck, score_draft
from router.stage_client import StageClient
from training.tasks import Task

SEED = 1234


@dataclass(frozen=True)
class CollectOptions:
    top_logprobs: int = TOP_LOGPROBS
    # Verify stage i-1's answer on stage i for tasks with a checker too. Off by default: on the CPU
    # ladder scoring costs ~1.5 s even for a 2-token answer, 3x the generation it would describe.
    # Open prompts always carry it for the top stage (their agreement scoring is that verification).
    score_drafts: bool = False


def drop_partial_line(path: Path) -> None:
    """Cut a last line an interrupted run left unfinished, so the next append starts on a fresh line."""
    if not path.exists():
        return
    with path.open("rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def done_ids(path: Path) -> set[str]:
    if not path.exists():
        return set()
    ids = set()
    for line in path.read_text().splitlines():
        try:
            ids.add(json.loads(line)["task"])
        except (json.JSONDecodeError, KeyError):
            continue  # a line cut by a crash: the task runs again
    return ids


def _draft(check: DraftCheck | None) -> dict[str, Any] | None:
    if check is None:
        return None
    return {"accepted": check.accepted_tokens, "tokens": check.draft_tokens, "seconds": round(check.seconds, 4)}


class Collector:
    def __init__(self, settings: Settings, options: CollectOptions = CollectOptions()) -> None:
        self.settings = settings
        self.options = options
        self.clients = [StageClient(s) for s in settings.stages]

    async def __aenter__(self) -> Collector:
        for c in self.clients:
            await c.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for c in self.clients:
            await c.close()

    def body(self, task: Task) -> dict[str, Any]:
        return {
            "messages": list(task.messages),
            "max_tokens": task.max_tokens,
            "temperature": 0.0,
            "seed": SEED,
            "logprobs": True,
            "top_logprobs": self.options.top_logprobs,
        }

    async def run_task(self, task: Task) -> dict[str, Any]:
        body = self.body(task)
        stages: list[dict[str, Any]] = []
        texts: list[str] = []
        for i, client in enumerate(self.clients):
            draft = None
            if self.options.score_drafts and i > 0:
                draft = _draft(await score_draft(client, body, texts[i - 1]))
            data, seconds = await client.chat(body)
            choice = data["choices"][0]
            text = choice["message"].get("content") or ""
            texts.append(text)
            stages.append({
                "stage": i,
                "name": client.name,
                "text": text,
                "finish_reason": choice.get("finish_reason") or "stop",
                "logprobs": compact_logprobs(choice),
                "usage": data.get("usage") or {},
                "seconds": round(seconds, 4),
                "passed": bool(task.check(text)) if task.check else None,
                "draft": draft,
                "agreement": None,
            })  # fmt: skip
        if task.check is None:
            top = self.clients[-1]
            check = None
            for row in stages[:-1]:
                check = await score_draft(top, body, row["text"]) if row["text"] else None
                row["agreement"] = check.fraction if check else 0.0
                row["same"] = same_answer(row["text"], texts[-1])
            stages[-1]["agreement"] = 1.0
            if stages[-1]["draft"] is None and len(stages) > 1:
                stages[-1]["draft"] = _draft(check)  # the top stage verified the stage below it
        return {
            "task": task.id,
            "family": task.family,
            "difficulty": task.difficulty,
            "split": task.split,
            "prompt_texts": [m["content"] for m in task.messages],
            "collect_version": COLLECT_VERSION,
            "feature_version": FEATURE_VERSION,
            "stages": stages,
        }


async def collect(
    settings: Settings, tasks: Iterable[Task], out: Path, options: CollectOptions = CollectOptions(), progress: bool = True
) -> int:
    """Collect every task not yet in ``out``; returns how many were added."""
    from tqdm import tqdm

    out.parent.mkdir(parents=True, exist_ok=True)
    drop_partial_line(out)
    have = done_ids(out)
    todo = [t for t in tasks if t.id not in have]
    added = 0
    with out.open("a") as f, tqdm(total=len(todo), disable=not progress, unit="task", desc="collect") as bar:
        async with Collector(settings, options) as collector:
            for task in todo:
                t0 = time.perf_counter()
                row = await collector.run_task(task)
                row["wall_s"] = round(time.perf_counter() - t0, 3)
                f.write(json.dumps(row, separators=(",", ":")) + "\n")
                f.flush()
                added += 1
                bar.set_postfix_str(task.family)
                bar.update()
    return added


def run(settings: Settings, tasks: Iterable[Task], out: Path, options: CollectOptions = CollectOptions(), progress: bool = True) -> int:
    return asyncio.run(collect(settings, tasks, out, options, progress))
