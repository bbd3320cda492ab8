"""Compare two revisions of the code on the same benchmarks, interleaved run by run.

A refactor should cost nothing; on a noisy 2-core machine that can only be shown
as a ratio measured in one sitting. This checks out ``--base`` (a git revision)
into a temporary worktree, builds its compiled module in place, then runs each
benchmark alternately from the base tree and from this tree (base, ours, base,
ours, ...), ``--rounds`` times each, and reports the median of every headline
figure and the ratio ours / base. Both trees run with the same interpreter and
the same installed dependencies.

Prints JSON and writes bench/results/revisions.json.
Usage: python bench/revisions.py --base b73efc3 [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._procs import emit

ROOT = Path(__file__).resolve().parent.parent
Figure = Callable[[dict[str, Any]], float]

# Headline figures of each benchmark: name -> how to read it from the benchmark's JSON.
OVERHEAD: dict[str, Figure] = {
    "passthrough_added_p50_ms": lambda r: r["passthrough"]["added_p50_ms"],
    "passthrough_router_cpu_ms": lambda r: r["passthrough"]["router_cpu_ms_per_request"],
    "stream_added_p50_ms": lambda r: r["passthrough_stream"]["added_p50_ms"],
    "cascade_added_p50_ms": lambda r: r["cascade"]["added_p50_ms"],
    "cascade_router_cpu_ms": lambda r: r["cascade"]["router_cpu_ms_per_request"],
    "throughput_ratio_instant_stage": lambda r: r["throughput_c16_instant_stage"]["ratio"],
}
PREDICTOR: dict[str, Figure] = {
    "collected_total_p50_ms": lambda r: r["collected_answers"]["total_ms"]["p50"],
    "collected_total_p99_ms": lambda r: r["collected_answers"]["total_ms"]["p99"],
    "long_total_p50_ms": lambda r: r["answers_512_tokens"]["total_ms"]["p50"],
    "long_total_p99_ms": lambda r: r["answers_512_tokens"]["total_ms"]["p99"],
}
BENCHES: dict[str, tuple[list[str], dict[str, Figure]]] = {
    "overhead": (["bench/overhead.py", "--requests", "400", "--seconds", "3"], OVERHEAD),
    "predictor_latency": (["bench/predictor_latency.py", "--calls", "5000"], PREDICTOR),
}


def _json_tail(stdout: str) -> dict[str, Any]:
    """The JSON object a benchmark prints last (it may print progress before it)."""
    start = stdout.find("\n{")
    return dict(json.loads(stdout if stdout.startswith("{") else stdout[start + 1 :]))


def _run(tree: Path, argv: list[str], tmp: Path) -> dict[str, Any]:
    cmd = [sys.executable, *argv]
    if argv[0] == "bench/overhead.py":
        cmd += ["--out", str(tmp / "overhead.json")]  # never overwrite a tree's committed figures
    env = {"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"}
    # a benchmark without --out writes its figures into the tree: keep the committed ones
    kept = {p: p.read_bytes() for p in (tree / "bench" / "results").glob("*.json")}
    try:
        done = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=900, check=False)
    finally:
        for path, data in kept.items():
            path.write_bytes(data)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed in {tree}:\n{done.stderr[-2000:]}")
    return _json_tail(done.stdout)


def _worktree(base: str, where: Path, name: str = "base") -> Path:
    tree = where / name
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(tree), base], check=True)
    subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=tree, check=True, capture_output=True)
    return tree


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="git revision to compare against")
    ap.add_argument("--ours", help="git revision to measure (default: this working tree)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bench", choices=sorted(BENCHES), action="append", help="default: all")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "revisions.json"))
    args = ap.parse_args()
    names = args.bench or sorted(BENCHES)
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        base_tree = _worktree(args.base, tmp)
        ours_tree = _worktree(args.ours, tmp, "ours") if args.ours else ROOT
        try:
            samples: dict[str, dict[str, dict[str, list[float]]]] = {}
            for name in names:
                argv, figures = BENCHES[name]
                got: dict[str, dict[str, list[float]]] = {"base": {f: [] for f in figures}, "ours": {f: [] for f in figures}}
                for i in range(args.rounds):
                    for side, tree in (
                        (("base", base_tree), ("ours", ours_tree)) if i % 2 == 0 else (("ours", ours_tree), ("base", base_tree))
                    ):
                        print(f"{name} round {i + 1}/{args.rounds}: {side}", file=sys.stderr, flush=True)
                        result = _run(tree, argv, tmp)
                        for fig, read in figures.items():
                            got[side][fig].append(float(read(result)))
                samples[name] = got
        finally:
            for tree in {base_tree, ours_tree} - {ROOT}:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
    report: dict[str, Any] = {
        "base": args.base,
        "ours": args.ours or "working tree",
        "rounds": args.rounds,
        "order": "alternating, starting with base",
        "benchmarks": {},
    }
    for name, got in samples.items():
        rows = {}
        for fig in got["base"]:
            b, o = statistics.median(got["base"][fig]), statistics.median(got["ours"][fig])
            rows[fig] = {"base_median": round(b, 4), "ours_median": round(o, 4), "ratio": round(o / b, 3) if b else None,
                         "base": got["base"][fig], "ours": got["ours"][fig]}  # fmt: skip
        report["benchmarks"][name] = rows
    emit(report, args.out)


if __name__ == "__main__":
    main()
