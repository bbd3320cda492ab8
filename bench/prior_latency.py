"""Prior latency: prompt -> prior features -> ONNX -> calibrated priors for every stage, v4 against v3.

The v4 prior (``OnnxPredictor.priors``: the five prompt statistics plus the hashed n-grams of
``features.prompt_ngrams``, through the shipped soft vote of two tree ensembles) is timed
against the v3 prior it replaced: the five statistics and the stage through one tree ensemble of
v3's size, fitted here on the same training split (the v3 files are gone from the tree; the cost of
a tree ensemble is its shape, not its leaf values). Both run in the same loop, in alternating order,
on the same prompt, so drift on a noisy 2-core machine hits them alike. Parts are timed separately
(features: ``PromptStats.from_texts`` + the input rows; ONNX: the graph + calibration). The belief
model (``beliefs_after``, once per answered stage below the top) is timed too.

Prompts: every collected prompt (``data/cpu/collect.jsonl``), shuffled and cycled; and long ones (the
docs joined, cut to 2k, 8k and 32k characters: the n-grams read the first and last
``HASH_EDGE_CHARS`` of a longer prompt, so their cost is bounded).

Prints JSON (medians and p99 in ms) and writes bench/results/prior_latency.json.
Usage: python bench/prior_latency.py [--calls 5000]
"""

from __future__ import annotations

import gc
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._procs import emit, predictor_args
from predictor.serving.features import PROMPT_STAT_NAMES, AnswerStats, PromptStats, answer_features, prompt_features
from predictor.serving.rows import TOP_LOGPROBS, expand_logprobs
from predictor.serving.runtime import OnnxPredictor, _Graph
from training import dataset, train

ROOT = Path(__file__).resolve().parent.parent
BUDGET_P99_MS = 0.5  # prior features + inference, the budget


def v3_prior(data_path: Path, tmp: Path) -> _Graph:
    """A v3-shaped prior (the trainer's gbt on the five statistics + stage) as an ONNX graph with 6 inputs."""
    data = dataset.load(data_path).part("train")
    cols = [*range(len(PROMPT_STAT_NAMES)), data.prior_x.shape[1] - 1]
    names = (*PROMPT_STAT_NAMES, "stage_index")
    fitted = train.fit((data.prior_x[:, cols], data.y), (data.prior_x[:, cols], data.y), names, "prior", seed=0,
                       candidates={"gbt": train._candidates(0)["gbt"]})  # fmt: skip
    path = tmp / "v3_prior.onnx"
    path.write_bytes(fitted.onnx)
    return _Graph(path, "prior", names)


def v3_features(texts: list[str], n_stages: int) -> np.ndarray:
    """v3's prior input: the five statistics and the stage (what ``prompt_features`` computed before v4)."""
    p = PromptStats.from_texts(texts)
    out = np.empty((n_stages, len(PROMPT_STAT_NAMES) + 1), dtype=np.float32)
    out[:, :-1] = (np.log1p(p.n_tokens), np.log1p(p.n_chars), p.n_messages, p.code_hint, p.digit_share)
    out[:, -1] = np.arange(n_stages)
    return out


def _ms(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs) * 1e3
    return {"p50": round(float(np.percentile(a, 50)), 4), "p99": round(float(np.percentile(a, 99)), 4)}


def measure(
    predictor: OnnxPredictor, old: _Graph, prompts: list[list[str]], answers: list[np.ndarray], calls: int, n: int
) -> dict[str, Any]:
    clock = time.perf_counter
    t: dict[str, list[float]] = {
        k: [] for k in ("new_features", "new_onnx", "new_total", "old_features", "old_onnx", "old_total", "beliefs")
    }

    def new(texts: list[str]) -> None:
        t0 = clock()
        prompt = PromptStats.from_texts(texts)
        x = prompt_features(prompt, n)
        t1 = clock()
        [float(p) for p in predictor.prior(x)]
        t2 = clock()
        t["new_features"].append(t1 - t0)
        t["new_onnx"].append(t2 - t1)
        t["new_total"].append(t2 - t0)

    def before(texts: list[str]) -> None:
        t0 = clock()
        x = v3_features(texts, n)
        t1 = clock()
        [float(p) for p in old(x)]
        t2 = clock()
        t["old_features"].append(t1 - t0)
        t["old_onnx"].append(t2 - t1)
        t["old_total"].append(t2 - t0)

    prompt0 = PromptStats.from_texts(prompts[0])
    for i in range(200):  # warm-up: onnxruntime and numpy first-call costs
        new(prompts[i % len(prompts)])
        before(prompts[i % len(prompts)])
        predictor.beliefs_after(0, answers[i % len(answers)], prompt0, n)
    for v in t.values():
        v.clear()
    gc.collect()
    order = list(range(len(prompts)))
    random.Random(1).shuffle(order)
    for i in range(calls):
        texts = prompts[order[i % len(order)]]
        first, second = (new, before) if i % 2 == 0 else (before, new)
        first(texts)
        second(texts)
        a = answers[i % len(answers)]
        t0 = clock()
        predictor.beliefs_after(i % (n - 1), a, prompt0, n)
        t["beliefs"].append(clock() - t0)
    out: dict[str, Any] = {"calls": calls, "prompts": len(prompts),
                           "chars_p50": int(np.median([len("\n".join(p)) for p in prompts])),
                           "chars_max": max(len("\n".join(p)) for p in prompts)}  # fmt: skip
    out.update({f"{k}_ms": _ms(v) for k, v in t.items()})
    out["new_over_old_p50"] = round(float(np.median(t["new_total"]) / np.median(t["old_total"])), 2)
    out["within_budget"] = out["new_total_ms"]["p99"] <= BUDGET_P99_MS
    return out


def main() -> None:
    import tempfile

    args = predictor_args(__doc__, calls=5_000)
    predictor = OnnxPredictor.load(Path(args.model))
    rows = list(dataset.read_rows(Path(args.data)))
    prompts = [list(r["prompt_texts"]) for r in rows]
    n = max(len(r["stages"]) for r in rows)
    answers = []
    for r in rows[:200]:
        prompt = PromptStats.from_texts(r["prompt_texts"])
        s = r["stages"][0]
        choice = {"logprobs": expand_logprobs(s["logprobs"]), "finish_reason": s["finish_reason"]}
        answers.append(answer_features(prompt, AnswerStats.from_choice(choice, TOP_LOGPROBS), s["stage"]))
    docs = "\n\n".join(p.read_text() for p in sorted((ROOT / "docs").glob("*.md")))
    while len(docs) < 32_768:
        docs += docs
    with tempfile.TemporaryDirectory() as tmp:
        old = v3_prior(Path(args.data), Path(tmp))
        result = {
            "predictor": predictor.name,
            "budget_p99_ms": BUDGET_P99_MS,
            "collected_prompts": measure(predictor, old, prompts, answers, args.calls, n),
            "long_prompts": {str(k): measure(predictor, old, [[docs[:k]]], answers, args.calls // 2, n) for k in (2_048, 8_192, 32_768)},
        }
    emit(result, ROOT / "bench" / "results" / "prior_latency.json")


if __name__ == "__main__":
    main()
