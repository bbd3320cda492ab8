"""A ladder it has never seen, live: the CPU ladder started with no trained model, learning from its own traffic (issue 22).

The live counterpart of ``python -m training.unseen_ladder`` (which replays the same thing on the collection):

1. ``adaptive-sd up`` with ``configs/cpu-learn.yaml`` in a fresh working folder (``--workdir``; its ``var/``
   holds the traffic log and the model registry): the baseline predictor, every request touring the ladder while
   it serves (``cascade.explore.untrained_rate``), 5 % after;
2. **traffic**: the collection's train-split tasks (shuffled, ``--seed``), one request at a time to ``model:
   cascade`` with the collection's body (its ``max_tokens``, temperature 0); after every ``--learn-every``
   requests, one learning round, ``python -m training learn --data none`` on the log, exactly as an operator
   would run it; a promoted version is waited for in ``/health`` (the router loads it without a restart);
3. **test**: the test-split tasks with an exact checker, each sent to three arms in a rotating order: the
   learned router's cascade, the top stage alone (through the same router, by name), and the shipped
   offline-trained model: a second router (``adaptive-sd serve`` with ``configs/cpu.yaml`` on ``--shipped-port``)
   over the same stage servers.

Per request: the checker's verdict, the client's seconds, the path, and compute from ``x-cascade-tokens`` (each
stage's prompt + generated tokens at its ``prices.compute``, 2 x parameters per token: verifying stages' scoring
calls included, as the header counts them). Every finished request and learning round is appended to
``<workdir>/rows.jsonl``; a rerun resumes after them. The summary goes to ``--out`` (JSON): per arm accuracy, mean
compute and seconds; the learned arm against the top (points) and against the shipped model (compute ratio); the
learning rounds; the targets (within 1 point of the top, compute within 10 % of the shipped model's).

Usage: ``.venv/bin/python bench/live_new_ladder.py [--traffic-limit N] [--test-limit N]`` (about an hour on two
cores for everything).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._procs import RESULTS, ROOT
from bench.live_vs_top import launch, test_tasks
from bench.live_vs_top import stop_up as stop
from common.settings import Settings, load_settings
from predictor.serving.calibration import CALIBRATION_FILE, LambdaTable, Target
from training import dataset
from training.collect import SEED
from training.tasks import Task, registry

CONFIG = ROOT / "configs" / "cpu-learn.yaml"
SHIPPED_CONFIG = ROOT / "configs" / "cpu.yaml"
ARMS = ("learned", "top", "shipped")
TARGET_POINTS, TARGET_VS_SHIPPED = 1.0, 1.10


def traffic_tasks(data_path: Path) -> list[Task]:
    """The collection's train-split tasks the registry still builds (open prompts included: traffic needs no checker)."""
    by_id = {t.id: t for t in registry.build("mix")}
    ids = {row["task"] for row in dataset.read_rows(data_path) if row["split"] == "train"}
    return [by_id[t] for t in sorted(ids) if t in by_id]


def compute_of(tokens: str | None, settings: Settings) -> float | None:
    """GFLOP of a response's ``x-cascade-tokens`` (``<stage>=<prompt>+<generated>,...``) at each stage's compute prices."""
    if not tokens:
        return None
    prices = {s.name: s.prices["compute"] for s in settings.stages}
    total = 0.0
    for part in tokens.split(","):
        name, counts = part.strip().split("=")
        prompt, generated = (int(x) for x in counts.split("+"))
        total += prices[name].prompt_token * prompt + prices[name].output_token * generated
    return total


def replay_compute(tokens: str | None, prompt: dict[str, int], settings: Settings) -> float | None:
    """GFLOP as the replay counts it: each stage called pays the request's prompt (``prompt``, by tokenizer) and its
    whole answer once, whatever calls verifying a draft took (``x-cascade-tokens`` counts each call's prompt)."""
    if not tokens:
        return None
    stages = {s.name: s for s in settings.stages}
    total = 0.0
    for part in tokens.split(","):
        name, counts = part.strip().split("=")
        first_prompt, generated = (int(x) for x in counts.split("+"))
        st = stages[name]
        p = prompt.get(st.tokenizer or name, first_prompt)
        total += st.prices["compute"].prompt_token * p + st.prices["compute"].output_token * generated
    return total


def ask(client: httpx.Client, model: str, task: Task, settings: Settings) -> dict[str, Any]:
    body = {"model": model, "messages": list(task.messages), "max_tokens": task.max_tokens, "temperature": 0.0, "seed": SEED}
    t0 = time.perf_counter()
    r = client.post("/v1/chat/completions", json=body)
    row: dict[str, Any] = {"task": task.id, "family": task.family, "seconds": round(time.perf_counter() - t0, 3), "status": r.status_code}
    if r.status_code == 200:
        text = r.json()["choices"][0]["message"].get("content") or ""
        row["ok"] = bool(task.check(text)) if task.check else None
    else:
        row["ok"], row["error"] = False, r.text[:300]
    row["path"] = r.headers.get("x-cascade-path")
    row["lambda"] = r.headers.get("x-cascade-lambda")  # the λ in force: the served model's table, for the default target
    row["tokens"] = r.headers.get("x-cascade-tokens")
    row["compute"] = compute_of(row["tokens"], settings)
    return row


def learn_round(workdir: Path, min_eval: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "training", "learn", "--registry", str(workdir / "var" / "models"), "--log",
           str(workdir / "var" / "traffic.jsonl"), "--data", "none", "--config", str(CONFIG), "--min-eval", str(min_eval)]  # fmt: skip
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
    outcome: dict[str, Any] = json.loads(out.stdout)
    return outcome | {"seconds": round(time.perf_counter() - t0, 1)}


def wait_version(client: httpx.Client, version: str, timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if client.get("/health").json().get("model_version") == version:
            return True
        time.sleep(1)
    return False


def summarise(rows: list[dict[str, Any]], tasks: list[Task], settings: Settings) -> dict[str, Any]:
    s = settings
    test = [r for r in rows if r.get("phase") == "test"]
    by = {(r["task"], r["arm"]): r for r in test}
    both = [t.id for t in tasks if all((t.id, a) in by and by[(t.id, a)]["compute"] is not None for a in ARMS)]
    top_tok = settings.stages[-1].tokenizer or settings.stages[-1].name
    prompt = {t: {top_tok: int(by[(t, "top")]["tokens"].split("=")[1].split("+")[0])} for t in both}
    arms = {}
    for a in ARMS:
        got = [by[(t, a)] for t in both]
        arms[a] = {"accuracy": sum(bool(r["ok"]) for r in got) / max(1, len(got)),
                   "mean_compute": sum(r["compute"] for r in got) / max(1, len(got)),
                   "mean_replay_compute": sum(replay_compute(r["tokens"], prompt[r["task"]], s) or 0 for r in got) / max(len(got), 1),
                   "mean_seconds": sum(r["seconds"] for r in got) / max(1, len(got))}  # fmt: skip
    traffic = [r for r in rows if r.get("phase") == "traffic"]
    checked = [r for r in traffic if r["ok"] is not None]
    points = 100 * (arms["top"]["accuracy"] - arms["learned"]["accuracy"])
    # the targets are judged on compute as the replay counts it (the header counts a verifier's prompt per call)
    vs_shipped = (
        arms["learned"]["mean_replay_compute"] / arms["shipped"]["mean_replay_compute"] if arms["shipped"]["mean_compute"] else None
    )
    return {
        "test_tasks": len(both),
        "arms": arms,
        "learned_points_below_top": points,
        "shipped_points_below_top": 100 * (arms["top"]["accuracy"] - arms["shipped"]["accuracy"]),
        "header_compute": {
            "learned_vs_top": arms["learned"]["mean_compute"] / arms["top"]["mean_compute"],
            "learned_vs_shipped": arms["learned"]["mean_compute"] / arms["shipped"]["mean_compute"],
        }
        if arms["top"]["mean_compute"] and arms["shipped"]["mean_compute"]
        else None,  # fmt: skip
        "replay_compute": {
            "learned_vs_top": arms["learned"]["mean_replay_compute"] / arms["top"]["mean_replay_compute"],
            "learned_vs_shipped": arms["learned"]["mean_replay_compute"] / arms["shipped"]["mean_replay_compute"],
            "shipped_vs_top": arms["shipped"]["mean_replay_compute"] / arms["top"]["mean_replay_compute"],
        }
        if arms["top"]["mean_replay_compute"] and arms["shipped"]["mean_replay_compute"]
        else None,  # fmt: skip
        "learned_stops": {
            p: sum(by[(t, "learned")]["path"].split(",")[-1].strip() == p for t in both)
            for p in {by[(t, "learned")]["path"].split(",")[-1].strip() for t in both}
        },  # fmt: skip
        "traffic": {
            "requests": len(traffic),
            "every_stage": sum(len((r["path"] or "").split(",")) == len(settings.stages) for r in traffic),
            "accuracy_checked": sum(bool(r["ok"]) for r in checked) / max(1, len(checked)),
            "mean_seconds": sum(r["seconds"] for r in traffic) / max(1, len(traffic)),
        },  # fmt: skip
        "rounds": [r for r in rows if r.get("phase") == "learn"],
        "targets": {
            "within_points": TARGET_POINTS,
            "compute_vs_shipped": TARGET_VS_SHIPPED,
            "met": points <= TARGET_POINTS and vs_shipped is not None and vs_shipped <= TARGET_VS_SHIPPED,
        },  # fmt: skip
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "cpu" / "collect.jsonl")
    ap.add_argument("--workdir", type=Path, default=ROOT / "var" / "live-new-ladder")
    ap.add_argument("--learn-every", type=int, default=50)
    ap.add_argument("--min-eval", type=int, default=50, help="the learner's --min-eval")
    ap.add_argument("--traffic-limit", type=int, default=None)
    ap.add_argument("--test-limit", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--shipped-port", type=int, default=8001)
    ap.add_argument("--out", type=Path, default=RESULTS / "live_new_ladder.json")
    ap.add_argument("--summary-only", action="store_true", help="summarise the rows already in --workdir; run nothing")
    a = ap.parse_args()
    settings = load_settings(CONFIG)
    top = settings.stages[-1].name
    a.workdir.mkdir(parents=True, exist_ok=True)
    rows_path = a.workdir / "rows.jsonl"
    rows = [json.loads(line) for line in rows_path.read_text().splitlines()] if rows_path.is_file() else []
    traffic = traffic_tasks(a.data)
    random.Random(a.seed).shuffle(traffic)
    traffic = traffic[: a.traffic_limit]
    tests, _ = test_tasks(a.data, len(settings.stages))
    tests = tests[: a.test_limit]
    model_version = None
    if a.summary_only:
        write_summary(a, rows, tests, traffic, settings, model_version)
        return
    base = f"http://127.0.0.1:{a.port}"
    up = launch([sys.executable, "-m", "adaptive_sd.cli", "--config", str(CONFIG), "up"], a.workdir, a.workdir / "up.log",
               f"{base}/health?stages=true", 900)  # fmt: skip
    shipped = None
    try:
        with rows_path.open("a") as f, httpx.Client(base_url=base, timeout=900) as client:

            def keep(row: dict[str, Any]) -> None:
                rows.append(row)
                f.write(json.dumps(row) + "\n")
                f.flush()

            done = {r["task"] for r in rows if r.get("phase") == "traffic"}
            for k, task in enumerate(traffic):
                if task.id in done:
                    continue
                row = ask(client, settings.cascade.model_name, task, settings) | {"phase": "traffic", "n": k + 1}
                keep(row)
                print(f"[traffic {k + 1}/{len(traffic)}] {row['seconds']:6.2f} s ok={row['ok']} {row['path']}", file=sys.stderr, flush=True)
                if (k + 1) % a.learn_every == 0 or k + 1 == len(traffic):
                    outcome = learn_round(a.workdir, a.min_eval)
                    if outcome["promoted"]:
                        outcome["served_after_s"] = wait_version(client, outcome["candidate"])
                    keep(outcome | {"phase": "learn", "n": k + 1})
                    print(f"[learn after {k + 1}] {outcome['reason']}", file=sys.stderr, flush=True)
            shipped = launch([sys.executable, "-m", "adaptive_sd.cli", "--config", str(SHIPPED_CONFIG), "serve"], ROOT,
                            a.workdir / "shipped.log", f"http://127.0.0.1:{a.shipped_port}/health", 300,
                            {"ADAPTIVE_SD_SERVER__PORT": str(a.shipped_port)})  # fmt: skip
            with httpx.Client(base_url=f"http://127.0.0.1:{a.shipped_port}", timeout=900) as shipped_client:
                done_test = {(r["task"], r["arm"]) for r in rows if r.get("phase") == "test"}
                for i, task in enumerate(tests):
                    order = ARMS[i % 3 :] + ARMS[: i % 3]  # which arm goes first rotates task by task
                    for arm in order:
                        if (task.id, arm) in done_test:
                            continue
                        c, model = (shipped_client, "cascade") if arm == "shipped" else (client, top if arm == "top" else "cascade")
                        row = ask(c, model, task, settings) | {"phase": "test", "arm": arm}
                        keep(row)
                        print(
                            f"[test {i + 1}/{len(tests)}] {arm:8s} {row['seconds']:6.2f} s ok={row['ok']} {row['path']}",
                            file=sys.stderr,
                            flush=True,
                        )
                model_version = client.get("/health").json().get("model_version")
    finally:
        if shipped is not None:
            stop(shipped)
        stop(up)
    write_summary(a, rows, tests, traffic, settings, model_version)


def write_summary(a: argparse.Namespace, rows: list[dict[str, Any]], tests: list[Task], traffic: list[Task], settings: Settings,
                  model_version: str | None) -> None:  # fmt: skip
    promoted = [r["candidate"] for r in rows if r.get("phase") == "learn" and r.get("promoted")]
    model_version = model_version or (promoted[-1] if promoted else "builtin")  # --summary-only: the last promotion
    cal_path = a.workdir / "var" / "models" / model_version / CALIBRATION_FILE
    cal = json.loads(cal_path.read_text()) if cal_path.is_file() else None
    table = LambdaTable.of(cal) if cal else None
    target = settings.cascade.default_target
    extra = {"model_version": model_version, "config": str(CONFIG.relative_to(ROOT)), "traffic_tasks": len(traffic),
             "learn_every": a.learn_every, "min_eval": a.min_eval,
             "lambda": {"default_target": target.model_dump(exclude_none=True) if target else None,
                        "in_force": table.lambda_for(Target.of(target), settings.cascade.cost_unit) if table and target else None,
                        "tours": cal["tasks"] if cal else None, "default_lambda": settings.cascade.default_lambda}}  # fmt: skip
    summary = summarise(rows, tests, settings) | extra
    a.out.write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "rounds"}, indent=1))


if __name__ == "__main__":
    main()
