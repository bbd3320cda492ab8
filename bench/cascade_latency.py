"""The cascade against the top stage alone on this machine, live: measured seconds and accuracy, interleaved.

The offline replay (``python -m predictor evaluate``) prices seconds from the collection's timings; this measures
them. Against a running router on the CPU ladder (``adaptive-sd up``), for the held-out test tasks that have an
exact checker, in a shuffled order, each task is sent twice in alternating order -- to the top stage by name
(pass-through) and to the cascade at the config's default λ (or ``--lambda``) -- so that the machine's drift hits
both alike. Greedy decoding. Reported: accuracy of each, mean and median seconds per request, the ratio of means
and the median of per-task ratios, the cascade's path counts (stops, aborts), as JSON (stdout and
bench/results/cascade_latency.json), with progress on stderr.

Usage: adaptive-sd up &  python bench/cascade_latency.py [--limit 40] [--lambda 880]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._procs import emit
from common.settings import load_settings
from predictor.offline.tasks import registry

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None, help="the running router's config (default: configs/cpu.yaml)")
    ap.add_argument("--limit", type=int, default=40, help="test tasks (with an exact checker) to send")
    ap.add_argument("--lambda", dest="lam", type=float, default=None, help="the cascade's λ (default: the config's)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    settings = load_settings(args.config)
    lam = args.lam if args.lam is not None else settings.cascade.default_lambda
    url = f"http://{settings.server.host}:{settings.server.port}/v1/chat/completions"
    top = settings.stages[-1].name
    tasks = [t for t in registry.build("mix") if t.split == "test" and t.check is not None]
    random.Random(args.seed).shuffle(tasks)
    tasks = tasks[: args.limit]
    rows: list[dict[str, Any]] = []
    with httpx.Client(timeout=900) as client:
        for i, task in enumerate(tasks):
            body = {"messages": list(task.messages), "max_tokens": task.max_tokens, "temperature": 0.0, "seed": 1234}
            order = [("top", {**body, "model": top}), ("cascade", {**body, "model": settings.cascade.model_name, "cascade_lambda": lam})]
            if i % 2:
                order.reverse()
            row: dict[str, Any] = {"task": task.id, "family": task.family}
            for name, b in order:
                t0 = time.perf_counter()
                r = client.post(url, json=b)
                r.raise_for_status()
                row[f"{name}_s"] = time.perf_counter() - t0
                text = r.json()["choices"][0]["message"]["content"] or ""
                row[f"{name}_ok"] = bool(task.check(text)) if task.check else None
                if name == "cascade":
                    row["path"] = r.headers.get("x-cascade-path", "")
            rows.append(row)
            print(f"[{i + 1}/{len(tasks)}] {task.id}: top {row['top_s']:.2f} s, cascade {row['cascade_s']:.2f} s ({row['path']})",
                  file=sys.stderr)  # fmt: skip
    top_s = np.array([r["top_s"] for r in rows])
    cas_s = np.array([r["cascade_s"] for r in rows])
    paths = Counter(r["path"].split(",")[-1] for r in rows)
    result = {
        "tasks": len(rows),
        "lambda": lam,
        "accuracy": {"top": float(np.mean([r["top_ok"] for r in rows])), "cascade": float(np.mean([r["cascade_ok"] for r in rows]))},
        "seconds_mean": {"top": float(top_s.mean()), "cascade": float(cas_s.mean())},
        "seconds_median": {"top": float(np.median(top_s)), "cascade": float(np.median(cas_s))},
        "ratio_of_means": float(cas_s.mean() / top_s.mean()),
        "median_of_ratios": float(np.median(cas_s / top_s)),
        "final_stage_counts": dict(paths),
        "aborted_requests": sum("(aborted" in r["path"] for r in rows),
        "rows": rows,
    }
    emit(result, ROOT / "bench" / "results" / "cascade_latency.json")


if __name__ == "__main__":
    main()
