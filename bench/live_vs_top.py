"""Is the shipped CPU config, live, within 1 point of the top stage and no slower than it? (issue 22)

The replay (``python -m training evaluate``) prices seconds from the collection's timings, taken one stage at a
time; live, the stages share the machine's cores as the config's ``launch.threads`` says, and the router, the
predictor and early exit run in between. This measures both arms through the same running router, so both pay
the same router overhead:

* the cascade (``model: cascade``) at the config's default λ (or ``--lambda``);
* the top stage alone (``model: <the top stage's name>``, passed straight through).

Tasks: the held-out test split of the collection, exactly as the replay takes it (rows of ``--data`` with
``split == "test"`` and a verdict at every stage, matched to ``registry.build("mix")``), those with an exact
checker (open prompts are labelled by the top stage's agreement, which needs a second top-stage call: left out
and counted), shuffled with ``--seed``, at most ``--limit``. Each task goes to both arms, one request at a time,
with the collection's body (its ``max_tokens``, temperature 0, seed 1234); which arm goes first alternates task
by task. A stage server keeps the last prompt's KV cache, so the two requests of one task are never adjacent on
the top stage: step i sends the first arm of task i, then the second arm of task i-1, which always puts a
top-stage-alone request of another task between them (and a flush request where there is none: after the first request, before the last).

Each answer is graded with the task's own checker; per request the client-side wall seconds, ``x-cascade-path``,
``x-cascade-stage`` and ``x-cascade-tokens`` are kept, and the CPU seconds other processes (not the router, its
stages or this client) used while it ran: with two cores, anyone else's job slows the stages. Before each
request the benchmark waits (``--quiet-wait``) until the rest of the machine is idle, and the figures are
reported for every task and again for the tasks whose two requests both ran quiet. Each finished request is
appended to ``--rows`` (JSONL); a restart skips the requests already there (``--redo-noisy``: except those that
others slowed), with a flush request wherever the two arms of a task would otherwise meet on the top stage.

``--concurrency N`` (default 1: all of the above) keeps N requests in flight at a time, taken in the schedule's
order (flush requests dropped) by a pool of N threads: the load of N clients at once. Then the two arms of a task
may well meet on the top stage (one may find the other's prompt in its KV cache), there is no waiting for quiet
(``--quiet-wait`` is ignored) and a request's foreign CPU seconds overlap its neighbours'. The result records the
concurrency and the throughput: the recorded requests per wall-clock second of the run (the first request sent
to the last one back; on a resumed run, of this run's requests only).

Reported per arm: accuracy, mean / median / p90 seconds; paired: cascade/top ratio of mean seconds, of median
seconds, and the median of per-task ratios (with bootstrap 95 % intervals), the accuracy difference in points,
where the cascade stopped, and the config's thread layout. The result is stored under ``--label`` in ``--out``
(default bench/results/live_vs_top.json), next to the other labels' results already there.

Usage:
  make up &   # or: .venv/bin/adaptive-sd up
  .venv/bin/python bench/live_vs_top.py [--limit 152] [--label shipped] [--concurrency 3]
  .venv/bin/python bench/live_vs_top.py --start --config other.yaml --label other   # starts and stops `up` itself
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._procs import CLOCK_TICKS, RESULTS, ROOT, cpu_seconds, finished_rows
from common.settings import LlamaCppLaunch, Settings, load_settings
from training import dataset
from training.collect import SEED
from training.tasks import Task, registry

ARMS = ("cascade", "top")
QUIET = 0.05  # a request ran "quiet" when other processes used under this share of one core while it ran
FLUSH = [{"role": "user", "content": "Say OK."}]  # an unrelated prompt: empties the top stage's cached prefix


def test_tasks(data_path: Path, n_stages: int) -> tuple[list[Task], int]:
    """The replay's test split (``replay.table``: a verdict at every stage) with an exact checker; and the count
    of test tasks left out because they have none."""
    by_id = {t.id: t for t in registry.build("mix")}
    stages: dict[str, set[int]] = {}
    split: dict[str, str] = {}
    for row in dataset.read_rows(data_path):
        stages.setdefault(row["task"], set()).update(s["stage"] for s in row["stages"])
        split[row["task"]] = row["split"]
    ids = [t for t in stages if split[t] == "test" and len(stages[t]) == n_stages and t in by_id]
    assert all(by_id[t].split == "test" for t in ids), "the data file's split disagrees with the registry's"
    tasks = [by_id[t] for t in ids if by_id[t].check is not None]
    return tasks, len(ids) - len(tasks)


def schedule(tasks: list[Task]) -> list[tuple[str, Task]]:
    """Step i: the first arm of task i, then the second arm of task i-1; top first on even i, cascade on odd i.

    Between the two requests of one task there is always a top-alone request of another task, so neither finds
    the other's prompt in the top stage's KV cache. ``("flush", ...)`` before the last request keeps that true at
    the start and the end."""

    def first(i: int) -> str:
        return "top" if i % 2 == 0 else "cascade"

    def second(i: int) -> str:
        return "cascade" if i % 2 == 0 else "top"

    out: list[tuple[str, Task]] = []
    for i, task in enumerate(tasks):
        out.append((first(i), task))
        if i > 0:
            out.append((second(i - 1), tasks[i - 1]))
        else:
            out.append(("flush", task))  # task 0 has no second arm of a task before it to separate its two
    if tasks:
        out.append(("flush", tasks[-1]))
        out.append((second(len(tasks) - 1), tasks[-1]))
    return out


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            kids.setdefault(ppid, []).append(int(d))
    return kids


def ladder_pids(port: int) -> list[int]:
    """This process, the process listening on the router's ``port`` and its parent's descendants (``up``: the
    router and its stage servers); just the listener's tree when it was started some other way."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                if int(cols[1].rsplit(":", 1)[1], 16) == port and cols[3] == "0A":
                    inodes.add(f"socket:[{cols[9]}]")
    listener = None
    for d in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if any(os.readlink(f"/proc/{d}/fd/{fd}") in inodes for fd in os.listdir(f"/proc/{d}/fd")):
                listener = int(d)
                break
    if listener is None:
        return [os.getpid()]
    with open(f"/proc/{listener}/stat") as f:
        parent = int(f.read().rsplit(")", 1)[1].split()[1])
    with open(f"/proc/{parent}/cmdline", "rb") as f:
        root = parent if b"adaptive" in f.read() else listener  # `up` runs the router in its own process
    kids, out, todo = _children(), [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return out + [os.getpid()]


class Load:
    """CPU seconds the whole machine was busy (/proc/stat) less those of the ladder and this client: other
    processes' work while a request ran, which slows it by an amount this benchmark cannot control."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids

    @staticmethod
    def busy() -> tuple[float, float]:
        """CPU seconds the machine was busy at normal priority and at lowered priority (nice > 0)."""
        with open("/proc/stat") as f:
            user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in f.readline().split()[1:9])
        return (user + system + irq + softirq + steal) / CLOCK_TICKS, nice / CLOCK_TICKS

    def ours(self) -> float:
        total = 0.0
        for pid in self.pids:
            with contextlib.suppress(OSError):
                total += cpu_seconds(pid)
        return total

    def sample(self) -> tuple[float, float, float]:
        """Busy seconds at normal priority, at lowered priority, and ours (all at normal priority)."""
        return *self.busy(), self.ours()

    @staticmethod
    def others(a: tuple[float, float, float], b: tuple[float, float, float]) -> tuple[float, float]:
        """Other processes' CPU seconds between samples ``a`` and ``b``: at normal priority, and niced."""
        return max(0.0, (b[0] - a[0]) - (b[2] - a[2])), b[1] - a[1]

    def wait_quiet(self, max_wait_s: float, window_s: float = 1.0) -> float:
        """Wait (at most ``max_wait_s``) until other processes used under ``QUIET`` of a core for a ``window_s``;
        returns the seconds waited. Niced work counts too: it does not yield to the stages' threads (a 2-thread
        stage measured here got one core, not two, beside one niced process)."""
        t0 = time.monotonic()
        said = 0.0
        while True:
            a = self.sample()
            time.sleep(window_s)
            normal, niced = self.others(a, self.sample())
            waited = time.monotonic() - t0
            if normal + niced < QUIET * window_s or waited >= max_wait_s:
                return waited - window_s
            if waited - said >= 30:
                print(f"  waiting for other processes to go quiet ({waited:.0f} s)", file=sys.stderr, flush=True)
                said = waited


def config_name(config: str | None) -> str:
    """The config as the results may name it: relative to the repository, or just its file name (no local paths)."""
    config = config or os.environ.get("ADAPTIVE_SD_CONFIG")
    if not config:
        return "configs/cpu.yaml"
    path = Path(config).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name


def thread_layout(settings: Settings) -> dict[str, int | None]:
    return {s.name: (s.launch.threads if isinstance(s.launch, LlamaCppLaunch) else None) for s in settings.stages}


def start_up(config: str | None, log: Path, timeout_s: float, health: str) -> subprocess.Popen[bytes]:
    """``adaptive-sd up`` in its own session; returns once ``/health?stages=true`` says every stage is ok."""
    cmd = [sys.executable, "-m", "adaptive_sd.cli"] + (["--config", config] if config else []) + ["up"]
    print(f"starting {' '.join(cmd)} (log {log})", file=sys.stderr, flush=True)
    proc = launch(cmd, ROOT, log, f"{health}?stages=true", timeout_s)
    print(f"router up: {httpx.get(health, timeout=5).text[:300]}", file=sys.stderr, flush=True)
    return proc


def launch(
    cmd: list[str], cwd: Path, log: Path, health: str, timeout_s: float, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """``cmd`` in its own session (output to ``log``); returns once ``health`` answers 200, stops it if it never does."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, **(env or {})})  # fmt: skip
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}; see {log}")
        try:
            if httpx.get(health, timeout=5).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(2)
    stop_up(proc)
    raise RuntimeError(f"{' '.join(cmd)} not healthy after {timeout_s} s; see {log}")


def stop_up(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to ``up``: the router drains, then it stops its stages (SIGTERM, grace, SIGKILL)."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def bootstrap(fn: Any, n: int, rng: np.random.Generator, reps: int = 2000) -> list[float]:
    vals = np.array([fn(rng.integers(0, n, n)) for _ in range(reps)])
    return [round(float(np.percentile(vals, 2.5)), 4), round(float(np.percentile(vals, 97.5)), 4)]


def figures(paired: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Per arm and paired figures of the tasks in ``paired`` (each: arm -> its row)."""
    n = len(paired)
    if not n:
        return {"tasks": 0}
    sec = {a: np.array([p[a]["seconds"] for p in paired]) for a in ARMS}
    ok = {a: np.array([bool(p[a]["ok"]) for p in paired], dtype=float) for a in ARMS}
    final = Counter(p["cascade"]["stage"] or "?" for p in paired)
    rng = np.random.default_rng(0)
    diff_pts = 100 * float(ok["cascade"].mean() - ok["top"].mean())
    ratio_mean = float(sec["cascade"].mean() / sec["top"].mean())
    ratio_median = float(np.median(sec["cascade"]) / np.median(sec["top"]))
    per_task = sec["cascade"] / sec["top"]
    arms = {
        a: {
            "accuracy": round(float(ok[a].mean()), 4),
            "seconds_mean": round(float(sec[a].mean()), 4),
            "seconds_median": round(float(np.median(sec[a])), 4),
            "seconds_p90": round(float(np.percentile(sec[a], 90)), 4),
            "seconds_total": round(float(sec[a].sum()), 2),
            "foreign_cpu_s_total": round(sum(p[a].get("foreign_cpu_s", 0.0) for p in paired), 2),
            "foreign_niced_cpu_s_total": round(sum(p[a].get("foreign_niced_cpu_s", 0.0) for p in paired), 2),
            "errors": sum(1 for p in paired if p[a].get("error")),
        }
        for a in ARMS
    }
    return {
        "tasks": n,
        "arms": arms,
        "accuracy_diff_points": round(diff_pts, 2),
        "accuracy_diff_points_ci95": bootstrap(lambda ix: 100 * (ok["cascade"][ix].mean() - ok["top"][ix].mean()), n, rng),
        "only_cascade_right": int(((ok["cascade"] == 1) & (ok["top"] == 0)).sum()),
        "only_top_right": int(((ok["cascade"] == 0) & (ok["top"] == 1)).sum()),
        "ratio_of_mean_seconds": round(ratio_mean, 4),
        "ratio_of_mean_seconds_ci95": bootstrap(lambda ix: sec["cascade"][ix].mean() / sec["top"][ix].mean(), n, rng),
        "ratio_of_median_seconds": round(ratio_median, 4),
        "median_of_per_task_ratios": round(float(np.median(per_task)), 4),
        "cascade_faster_share": round(float((per_task < 1).mean()), 4),
        "cascade_final_stage_share": {k: round(v / n, 4) for k, v in sorted(final.items())},
        "cascade_aborted_requests": sum("(aborted" in (p["cascade"]["path"] or "") for p in paired),
        **disagreements(paired),
        "within_1_point": bool(diff_pts >= -1.0),
        "not_slower_mean": bool(ratio_mean <= 1.0),
        "not_slower_median": bool(ratio_median <= 1.0),
    }


def disagreements(paired: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Where the two arms' verdicts differ, by where the cascade answered: at a lower stage (the rule trusted it),
    or at the top stage, with an answer other than the top stage's own (the same stage's cache-state
    nondeterminism, bench/top_self_agreement.py); and how many of the cascade's top-stage answers differ in text
    from the top stage's own (None for rows recorded without texts)."""
    at_top = [p for p in paired if p["cascade"]["stage"] == p["top"]["stage"]]
    verdicts: dict[str, dict[str, int]] = {}
    for where, group in (("lower_stage", [p for p in paired if p not in at_top]), ("top_stage", at_top)):
        verdicts[where] = {
            "cascade_right": sum(1 for p in group if p["cascade"]["ok"] and not p["top"]["ok"]),
            "top_right": sum(1 for p in group if p["top"]["ok"] and not p["cascade"]["ok"]),
        }
    texts = all("text" in p[a] for p in at_top for a in ARMS)
    return {
        "verdicts_differ_where_cascade_answered": verdicts,
        "top_stage_answers_unlike_the_top_alone": sum(p["cascade"]["text"] != p["top"]["text"] for p in at_top) if texts else None,
    }


def summarise(rows: list[dict[str, Any]], settings: Settings, lam: float, skipped_open: int, args: argparse.Namespace) -> dict[str, Any]:
    """Every task with both arms done; again only those whose two requests other processes at normal priority did
    not slow; and only those whose two requests ran quiet (neither normal nor niced others, see ``QUIET``)."""
    by_task: dict[str, dict[str, dict[str, Any]]] = {}
    for r in rows:
        by_task.setdefault(r["task"], {})[r["arm"]] = r
    paired = [v for v in by_task.values() if all(a in v for a in ARMS)]
    calm = [p for p in paired if all(p[a].get("foreign_cpu_s", 0.0) < QUIET * p[a]["seconds"] for a in ARMS)]
    quiet = [p for p in calm if all(p[a].get("foreign_niced_cpu_s", 0.0) < QUIET * p[a]["seconds"] for a in ARMS)]
    return {
        "config": config_name(args.config),
        "threads": thread_layout(settings),
        "cpu_count": os.cpu_count(),
        "lambda": lam,
        "top_stage": settings.stages[-1].name,
        "seed": args.seed,
        "concurrency": args.concurrency,
        "test_tasks_without_checker_left_out": skipped_open,
        **figures(paired),
        "no_other_normal_priority_load": figures(calm),
        "quiet_only": figures(quiet),
    }


def router_args(doc: str | None) -> argparse.ArgumentParser:
    """The options of a benchmark that sends the test tasks to a running router (or starts one): which router, which
    tasks."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None, help="the router's config (default: $ADAPTIVE_SD_CONFIG or configs/cpu.yaml)")
    ap.add_argument("--url", default=None, help="the router's base URL (default: the config's server.host:port)")
    ap.add_argument("--start", action="store_true", help="start `adaptive-sd up` with --config, stop it at the end")
    ap.add_argument("--startup-timeout", type=float, default=900)
    ap.add_argument("--data", default=str(ROOT / "data" / "cpu" / "collect.jsonl"))
    ap.add_argument("--limit", type=int, default=None, help="at most this many test tasks")
    return ap


def main() -> None:
    ap = router_args(__doc__)
    ap.add_argument("--seed", type=int, default=0, help="the shuffle of the tasks")
    ap.add_argument("--lambda", dest="lam", type=float, default=None, help="the cascade's λ (default: the config's)")
    ap.add_argument("--label", default="shipped", help="the name of this run in --out")
    ap.add_argument("--out", default=str(RESULTS / "live_vs_top.json"))
    ap.add_argument("--rows", default=None, help="JSONL of finished requests, for resuming (default: --out's stem + .<label>.jsonl)")
    ap.add_argument("--quiet-wait", type=float, default=300, help="before each request, wait up to this many seconds for "
                    "other processes to go quiet (0: do not wait)")  # fmt: skip
    ap.add_argument("--redo-noisy", action="store_true", help="on resuming, send again the requests other processes slowed")
    ap.add_argument("--keep-rows", action="store_true", help="keep the per-request rows in --out")
    ap.add_argument("--concurrency", type=int, default=1, help="requests in flight at a time (1: one at a time, "
                    "the two arms of a task kept apart on the top stage, waiting for quiet)")  # fmt: skip
    args = ap.parse_args()

    settings = load_settings(args.config)
    lam = args.lam if args.lam is not None else settings.cascade.default_lambda
    base = (args.url or f"http://{settings.server.host}:{settings.server.port}").rstrip("/").removesuffix("/v1")
    top = settings.stages[-1].name
    tasks, skipped_open = test_tasks(Path(args.data), len(settings.stages))
    random.Random(args.seed).shuffle(tasks)
    tasks = tasks[: args.limit]
    plan = schedule(tasks)
    out = Path(args.out)
    rows_path = Path(args.rows) if args.rows else out.with_name(f"{out.stem}.{args.label}.jsonl")
    done: dict[tuple[str, str], dict[str, Any]] = {}
    for r in finished_rows(rows_path):
        noisy = r.get("foreign_cpu_s", 0.0) + r.get("foreign_niced_cpu_s", 0.0) >= QUIET * r["seconds"]
        if r.get("lambda") == lam and r.get("seed") == args.seed and not (args.redo_noisy and noisy):
            done[(r["task"], r["arm"])] = r
    print(f"{len(tasks)} test tasks ({skipped_open} without a checker left out), λ={lam}, top={top}, "
          f"threads={thread_layout(settings)}; {len(done)} requests already in {rows_path}", file=sys.stderr, flush=True)  # fmt: skip

    proc = start_up(args.config, rows_path.with_suffix(".up.log"), args.startup_timeout, base + "/health") if args.start else None
    try:
        with httpx.Client(base_url=base, timeout=900) as client:
            load = Load(ladder_pids(int(base.rsplit(":", 1)[1])))
            print(f"ladder processes: {load.pids}", file=sys.stderr, flush=True)

            def send(arm: str, task: Task) -> tuple[httpx.Response, float, tuple[float, float], float]:
                flush = arm == "flush"
                body: dict[str, Any] = {"messages": FLUSH if flush else list(task.messages), "temperature": 0.0, "seed": SEED}
                body["max_tokens"] = 4 if flush else task.max_tokens
                body.update({"model": settings.cascade.model_name, "cascade_lambda": lam} if arm == "cascade" else {"model": top})
                a = load.sample()
                t0 = time.perf_counter()
                r = client.post("/v1/chat/completions", json=body)
                seconds = time.perf_counter() - t0
                b = load.sample()
                return r, seconds, Load.others(a, b), b[2] - a[2]

            # Warm-up (not recorded): every stage loads its weights into the page cache, the predictor its session.
            warm = next(t for t in registry.build("mix") if t.split == "train" and t.check is not None)
            for arm in ("cascade", "top", "flush"):
                send(arm, warm)
            todo = [(a, t) for a, t in plan if a == "flush" or (t.id, a) not in done]
            finished = len(done)
            last_on_top = None  # the task whose prompt the top stage holds in its KV cache
            lock = threading.Lock()

            def record(arm: str, task: Task) -> dict[str, Any]:
                """Send one request of the plan, grade it, append its row to ``f``."""
                nonlocal finished, last_on_top
                r, seconds, (foreign, niced), ours = send(arm, task)
                row: dict[str, Any] = {"task": task.id, "family": task.family, "arm": arm, "lambda": lam, "seed": args.seed,
                                       "seconds": round(seconds, 4), "status": r.status_code, "ladder_cpu_s": round(ours, 3),
                                       "foreign_cpu_s": round(foreign, 3),
                                       "foreign_niced_cpu_s": round(niced, 3)}  # fmt: skip
                if r.status_code == 200:
                    data = r.json()
                    text = data["choices"][0]["message"].get("content") or ""
                    row["ok"] = bool(task.check(text)) if task.check else None
                    row["completion_tokens"] = (data.get("usage") or {}).get("completion_tokens")
                    row["text"] = text  # which answers the arms differ on, and how
                else:
                    row["ok"], row["error"] = False, r.text[:300]
                row["stage"] = r.headers.get("x-cascade-stage") or (top if arm == "top" else None)
                row["path"] = r.headers.get("x-cascade-path")
                row["tokens"] = r.headers.get("x-cascade-tokens")
                with lock:
                    if arm == "top" or top in (row["path"] or ""):
                        last_on_top = task.id
                    f.write(json.dumps(row) + "\n")
                    f.flush()
                    done[(task.id, arm)] = row
                    finished += 1
                    print(f"[{finished}/{2 * len(tasks)}] {arm:7s} {task.id:32s} {seconds:6.2f} s ok={row['ok']} "
                          f"others {foreign:.2f}+{niced:.2f}n s {row['path'] or ''}", file=sys.stderr, flush=True)  # fmt: skip
                return row

            with rows_path.open("a") as f:
                t_run = time.perf_counter()
                if args.concurrency > 1:
                    with ThreadPoolExecutor(args.concurrency) as pool:
                        for fut in as_completed([pool.submit(record, a, t) for a, t in todo if a != "flush"]):
                            fut.result()
                else:
                    for arm, task in todo:
                        if arm == "flush" or last_on_top == task.id:  # resumed: the schedule's separation may be gone
                            send("flush", task)
                            last_on_top = None
                            if arm == "flush":
                                continue
                        if args.quiet_wait > 0:
                            waited = load.wait_quiet(args.quiet_wait)
                            if waited > 1:
                                print(f"  waited {waited:.0f} s for other processes", file=sys.stderr, flush=True)
                        record(arm, task)
                wall = time.perf_counter() - t_run
                sent = sum(1 for a, _ in todo if a != "flush")
    finally:
        if proc is not None:
            stop_up(proc)

    ids = {t.id for t in tasks}
    rows = [r for r in done.values() if r["task"] in ids]
    result = summarise(rows, settings, lam, skipped_open, args)
    result["throughput"] = {"requests": sent, "wall_s": round(wall, 2), "requests_per_s": round(sent / wall, 4) if wall else None}
    if args.keep_rows:
        result["rows"] = rows
    everything = json.loads(out.read_text()) if out.exists() else {}
    everything.setdefault("runs", {})[args.label] = result
    text = json.dumps(result, indent=2)
    print(text)
    out.write_text(json.dumps(everything, indent=2) + "\n")


if __name__ == "__main__":
    main()
