"""Predictor latency on the router's hot path: parse logprobs -> feature vector -> ONNX -> calibrated p̂.

Answers are real: every stage answer of the collected data set (``data/cpu/collect.jsonl``),
rebuilt into the OpenAI ``logprobs.content`` form the router receives (token,
bytes, top-5 alternatives), replayed in a shuffled cycle for ``--calls`` calls.
A second run uses 512-token answers with top-5 alternatives, the longest the
issue asks about. Each call is timed in three parts (parse, features, ONNX) on
one thread; medians and p99 are printed as JSON and written to
bench/results/predictor_latency.json.

Usage: python bench/predictor_latency.py [--calls 10000]
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._procs import emit
from predictor.collect import TOP_LOGPROBS
from predictor.dataset import read_rows
from predictor.features import AnswerStats, PromptStats, answer_features
from predictor.runtime import OnnxPredictor

ROOT = Path(__file__).resolve().parent.parent
TARGET_P99_MS = 0.3
TARGET_P50_MS = 0.1


def _entry(lp: float, tops: list[float]) -> dict[str, Any]:
    return {"token": " tok", "logprob": lp, "bytes": [32, 116, 111, 107],
            "top_logprobs": [{"token": f" t{j}", "logprob": t, "bytes": [32, 116, 48 + j]} for j, t in enumerate(tops)]}  # fmt: skip


def real_answers(path: Path) -> list[tuple[PromptStats, dict[str, Any], int]]:
    out = []
    for row in read_rows(path):
        prompt = PromptStats.from_texts(row["prompt_texts"])
        for s in row["stages"]:
            choice = {"finish_reason": s["finish_reason"], "logprobs": {"content": [_entry(lp, tops) for lp, tops in s["logprobs"]]}}
            out.append((prompt, choice, s["stage"]))
    return out


def long_answers(n: int, tokens: int = 512, seed: int = 0) -> list[tuple[PromptStats, dict[str, Any], int]]:
    rng = random.Random(seed)
    prompt = PromptStats.from_texts(["Write a Python function that parses a CSV line, handling quoted fields."])
    out = []
    for i in range(n):
        content = []
        for _ in range(tokens):
            tops = sorted((-rng.expovariate(1.5) for _ in range(TOP_LOGPROBS)), reverse=True)
            content.append(_entry(tops[0], tops))
        out.append((prompt, {"finish_reason": "length", "logprobs": {"content": content}}, i % 3))
    return out


def measure(predictor: OnnxPredictor, answers: list[tuple[PromptStats, dict[str, Any], int]], calls: int) -> dict[str, Any]:
    parse, feats, infer, total = [], [], [], []
    order = list(range(len(answers)))
    random.Random(1).shuffle(order)
    for i in range(200):  # warm-up: onnxruntime and numpy first-call costs
        prompt, choice, stage = answers[order[i % len(order)]]
        predictor.predict(answer_features(prompt, AnswerStats.from_choice(choice, TOP_LOGPROBS), stage))
    gc.collect()
    clock = time.perf_counter
    for i in range(calls):
        prompt, choice, stage = answers[order[i % len(order)]]
        t0 = clock()
        stats = AnswerStats.from_choice(choice, TOP_LOGPROBS)
        t1 = clock()
        x = answer_features(prompt, stats, stage)
        t2 = clock()
        predictor.predict(x)
        t3 = clock()
        parse.append(t1 - t0)
        feats.append(t2 - t1)
        infer.append(t3 - t2)
        total.append(t3 - t0)
    lengths = [len(answers[j][1]["logprobs"]["content"]) for j in order]

    def ms(xs: list[float]) -> dict[str, float]:
        a = np.asarray(xs) * 1e3
        return {"p50": round(float(np.percentile(a, 50)), 4), "p99": round(float(np.percentile(a, 99)), 4)}

    feat_plus_onnx = [f + o for f, o in zip(feats, infer)]
    return {
        "calls": calls,
        "answers": len(answers),
        "tokens_p50": int(np.percentile(lengths, 50)),
        "tokens_max": int(max(lengths)),
        "total_ms": ms(total),
        "parse_ms": ms(parse),
        "features_ms": ms(feats),
        "onnx_ms": ms(infer),
        "features_plus_onnx_ms": ms(feat_plus_onnx),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=10_000)
    ap.add_argument("--model", default=str(ROOT / "predictor" / "models" / "cpu"))
    ap.add_argument("--data", default=str(ROOT / "data" / "cpu" / "collect.jsonl"))
    args = ap.parse_args()
    predictor = OnnxPredictor.load(Path(args.model))
    real = measure(predictor, real_answers(Path(args.data)), args.calls)
    worst = measure(predictor, long_answers(50), args.calls)
    result = {
        "predictor": predictor.name,
        "target_ms": {"p50": TARGET_P50_MS, "p99": TARGET_P99_MS},
        "collected_answers": real,
        "answers_512_tokens": worst,
        "meets_target_on_collected": real["total_ms"]["p50"] < TARGET_P50_MS and real["total_ms"]["p99"] < TARGET_P99_MS,
    }
    emit(result, ROOT / "bench" / "results" / "predictor_latency.json")


if __name__ == "__main__":
    main()
