"""Decode and prefill speed of the CPU ladder's stages under two llama.cpp builds, interleaved in one run.

Why: ``make install`` builds llama.cpp for a fixed portable baseline (x86-64-v3: AVX2/FMA/F16C, no AVX-512,
no AMX) instead of ``-march=native`` (see ``scripts/llama-cpp-wheel.sh``). This measures what that costs
against a build for the machine's own extensions, on the real stage weights, the way a stage runs
(``servers.llama_engine.LlamaEngine``, greedy, one thread per stage as configs/cpu.yaml runs them).

Each build is a llama-cpp-python wheel, unpacked into its own folder and put first on ``PYTHONPATH`` of a
child process; rounds alternate the builds (A B, then B A, ...) so drift on a noisy machine hits both. Each
child loads one stage, warms up, then times a prefill of a fixed prompt and a greedy decode of
``--tokens`` tokens. Medians per stage and build, and the ratio portable / other, are printed as JSON and
written to ``bench/results/llama_build_speed.json``.

Usage: python bench/llama_build_speed.py --build portable=PATH.whl --build avx512=PATH.whl [--rounds 5] [--tokens 128]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._procs import emit

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct")
PROMPT = (
    "<|im_start|>user\nWrite a Python function that returns the n-th Fibonacci number iteratively, "
    "with a docstring and two doctests, then explain it in three sentences.<|im_end|>\n<|im_start|>assistant\n"
)

# Run in the child, with the build under test first on sys.path; prints one JSON line.
_CHILD = """
import json, sys, time
import llama_cpp
from servers.llama_engine import LlamaEngine
from servers.weights import resolve
weights, prompt, tokens, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
engine = LlamaEngine(str(resolve(weights)), n_ctx=2048, n_threads=threads)
engine.warm_up()
ids = engine.tokenize(prompt)
t0 = time.perf_counter()
engine._prefill(ids)
prefill_s = time.perf_counter() - t0
engine.llm.reset()
t0 = time.perf_counter()
first = None
n = 0
for step in engine.generate(ids, max_tokens=tokens):
    n += 1
    if first is None:
        first = time.perf_counter()
end = time.perf_counter()
print(json.dumps({"lib": llama_cpp.__file__, "prompt_tokens": len(ids), "prefill_tok_s": len(ids) / prefill_s,
                  "decode_tokens": n - 1, "decode_tok_s": (n - 1) / (end - first) if n > 1 else 0.0}))
"""


def _unpack(wheel: Path, into: Path) -> Path:
    with zipfile.ZipFile(wheel) as z:
        z.extractall(into)
    return into


def _describe(wheel: Path) -> dict[str, str]:
    """A build by its wheel's name and, where ``scripts/llama-cpp-wheel.sh`` made it, the flags it was built with."""
    flags = wheel.parent / "cmake-args.txt"
    return {"wheel": wheel.name, "cmake_args": flags.read_text().strip() if flags.exists() else "(not recorded)"}


def _run(build_dir: Path, stage: str, tokens: int, threads: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(build_dir), str(ROOT)])}
    out = subprocess.run([sys.executable, "-c", _CHILD, stage, PROMPT, str(tokens), str(threads)],
                         env=env, capture_output=True, text=True, check=True, cwd=ROOT)  # fmt: skip
    row: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    assert str(build_dir) in str(row["lib"]), f"the child loaded {row['lib']}, not the build under test"
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", action="append", required=True, help="NAME=path/to/llama_cpp_python-*.whl (two of them)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1, help="as configs/cpu.yaml runs each stage")
    ap.add_argument("--stages", nargs="*", default=list(STAGES))
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "llama_build_speed.json")
    args = ap.parse_args()
    builds = dict(b.split("=", 1) for b in args.build)
    if len(builds) != 2:
        ap.error("give exactly two --build NAME=WHEEL")
    names = list(builds)
    rows: dict[str, dict[str, list[dict[str, float]]]] = {s: {n: [] for n in names} for s in args.stages}
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {n: _unpack(Path(w), Path(tmp) / n) for n, w in builds.items()}
        for r in range(args.rounds):
            order = names if r % 2 == 0 else names[::-1]
            for stage in args.stages:
                for name in order:
                    row = _run(dirs[name], stage, args.tokens, args.threads)
                    rows[stage][name].append(row)
                    print(f"round {r + 1}/{args.rounds} {stage} {name}: decode {row['decode_tok_s']:.1f} tok/s, "
                          f"prefill {row['prefill_tok_s']:.1f} tok/s", file=sys.stderr, flush=True)  # fmt: skip
    base, other = names
    result: dict[str, object] = {"builds": {n: _describe(Path(w)) for n, w in builds.items()}, "rounds": args.rounds,
                                 "tokens": args.tokens, "threads": args.threads, "stages": {}}  # fmt: skip
    for stage, per in rows.items():
        med = {n: {k: statistics.median(x[k] for x in per[n]) for k in ("decode_tok_s", "prefill_tok_s")} for n in names}
        ratios = [a["decode_tok_s"] / b["decode_tok_s"] for a, b in zip(per[base], per[other], strict=True)]
        pre = [a["prefill_tok_s"] / b["prefill_tok_s"] for a, b in zip(per[base], per[other], strict=True)]
        result["stages"][stage] = {  # type: ignore[index]
            **{n: {k: round(v, 2) for k, v in m.items()} for n, m in med.items()},
            f"decode_ratio_{base}_over_{other}": round(statistics.median(ratios), 3),
            f"prefill_ratio_{base}_over_{other}": round(statistics.median(pre), 3),
        }
    emit(result, args.out)


if __name__ == "__main__":
    main()
