"""The cascade against the top stage alone on this machine, live: measured seconds and accuracy, interleaved.

The offline replay (``python -m training evaluate``) prices seconds from the collection's timings; this
measures them. Against a running router on the CPU ladder (``adaptive-sd up``), for the held-out test tasks
that have an exact checker, in a shuffled order, each task is sent to the top stage by name (pass-through) and
to the cascade at the config's default λ (or ``--lambda``), the two alternating request by request so that
the machine's drift hits both alike (and never one prompt twice in a row: a stage server keeps the last
prompt's state). Greedy decoding. Reported: accuracy of each, mean and median seconds per request, the ratio
of means and the median of per-task ratios, the cascade's final stages and aborts, as JSON (stdout and
bench/results/cascade_latency.json), with progress on stderr.

Usage: adaptive-sd up &  python bench/cascade_latency.py [--limit N] [--lambda 892]
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
from training.tasks import registry

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None, help="the running router's config (default: configs/cpu.yaml)")
    ap.add_argument("--limit", type=int, default=1000, help="at most this many test tasks (with an exact checker)")
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
    # Alternate the two, but never send one prompt twice in a row: a stage server keeps the last prompt's state, and
    # the second of two calls with the same prompt would skip reading it. The cascade runs task i + 1 while the
    # top stage runs task i (in alternating order), so each task is sent to both, apart.
    rows: dict[str, dict[str, Any]] = {t.id: {"task": t.id, "family": t.family} for t in tasks}
    n = len(tasks)

    def send(client: httpx.Client, name: str, task: Any) -> None:
        body = {"messages": list(task.messages), "max_tokens": task.max_tokens, "temperature": 0.0, "seed": 1234}
        body.update({"model": top} if name == "top" else {"model": settings.cascade.model_name, "cascade_lambda": lam})
        t0 = time.perf_counter()
        r = client.post(url, json=body)
        r.raise_for_status()
        row = rows[task.id]
        row[f"{name}_s"] = time.perf_counter() - t0
        row[f"{name}_ok"] = bool(task.check(r.json()["choices"][0]["message"]["content"] or "")) if task.check else None
        if name == "cascade":
            row["path"] = r.headers.get("x-cascade-path", "")

    with httpx.Client(timeout=900) as client:
        for i in range(n):
            pair = [("top", tasks[i]), ("cascade", tasks[(i + 1) % n])]
            for name, task in pair if i % 2 == 0 else pair[::-1]:
                send(client, name, task)
            print(f"[{i + 1}/{n}] top {tasks[i].id} {rows[tasks[i].id]['top_s']:.2f} s", file=sys.stderr)
    rows_list = list(rows.values())
    top_s = np.array([r["top_s"] for r in rows_list])
    cas_s = np.array([r["cascade_s"] for r in rows_list])
    paths = Counter(r["path"].split(",")[-1] for r in rows_list)
    result = {
        "tasks": len(rows_list),
        "lambda": lam,
        "accuracy": {
            "top": float(np.mean([r["top_ok"] for r in rows_list])),
            "cascade": float(np.mean([r["cascade_ok"] for r in rows_list])),
        },
        "seconds_mean": {"top": float(top_s.mean()), "cascade": float(cas_s.mean())},
        "seconds_median": {"top": float(np.median(top_s)), "cascade": float(np.median(cas_s))},
        "ratio_of_means": float(cas_s.mean() / top_s.mean()),
        "median_of_ratios": float(np.median(cas_s / top_s)),
        "final_stage_counts": dict(paths),
        "aborted_requests": sum("(aborted" in r["path"] for r in rows_list),
        "rows": rows_list,
    }
    emit(result, ROOT / "bench" / "results" / "cascade_latency.json")


if __name__ == "__main__":
    main()
