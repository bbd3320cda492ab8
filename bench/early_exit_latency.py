"""What judging a stage at one checkpoint costs the router (early exit): prefix features -> prefix model -> rule.

At each checkpoint of a streamed stage the router builds the answer features of the tokens so far
(``AnswerStats.from_choice`` over the streamed logprob entries, ``answer_features``), runs the prefix model
(``OnnxPredictor.predict_prefix``) and the rule (``StoppingPolicy.judge_prefix`` with the stage's price of what
is left). This times those steps on the prefixes of every collected answer that reached each checkpoint
(shuffled, after a warm-up), next to the answer model on the same vectors for scale. Medians and p99 in ms,
printed as JSON and written to bench/results/early_exit_latency.json.

Usage: python bench/early_exit_latency.py [--calls 5000]
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._procs import emit, predictor_args
from predictor.serving.features import PromptStats, prefix_features
from predictor.serving.rows import TOP_LOGPROBS, expand_logprobs
from predictor.serving.runtime import OnnxPredictor
from router.policy import StoppingPolicy
from training import dataset

ROOT = Path(__file__).resolve().parent.parent


def _ms(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs) * 1e3
    return {"p50": round(float(np.percentile(a, 50)), 4), "p99": round(float(np.percentile(a, 99)), 4)}


def main() -> None:
    args = predictor_args(__doc__, calls=5000)
    predictor = OnnxPredictor.load(Path(args.model))
    cases: list[tuple[PromptStats, list[dict[str, Any]], int, int]] = []
    for row in dataset.read_rows(Path(args.data)):
        prompt = PromptStats.from_texts(row["prompt_texts"])
        for s in row["stages"]:
            entries = expand_logprobs(s["logprobs"])["content"]
            for k, t in enumerate(predictor.checkpoints):
                if len(entries) > t:
                    cases.append((prompt, entries[:t], s["stage"], k))
    rng = random.Random(1)
    policy = StoppingPolicy([30.0, 100.0, 300.0], [0.1, 0.4, 0.6], 900.0, strength=8.0)
    feats, prefix, rule, answer, total = [], [], [], [], []
    for i in range(args.calls + 300):
        prompt, entries, stage, k = cases[rng.randrange(len(cases))]
        t0 = time.perf_counter()
        x = prefix_features(prompt, entries, stage, TOP_LOGPROBS)
        t1 = time.perf_counter()
        q = predictor.predict_prefix(x)
        t2 = time.perf_counter()
        policy.judge_prefix(min(stage, 1), float(q or 0.0), 12.0, predictor.prefix_strengths[k], (50.0, 1.0, 1.0))
        t3 = time.perf_counter()
        predictor.predict(x)
        t4 = time.perf_counter()
        if i >= 300:  # warm-up: onnxruntime's and numpy's first calls
            feats.append(t1 - t0)
            prefix.append(t2 - t1)
            rule.append(t3 - t2)
            total.append(t3 - t0)
            answer.append(t4 - t3)
    emit({"cases": len(cases), "calls": args.calls, "checkpoints": list(predictor.checkpoints),
          "features_ms": _ms(feats), "prefix_model_ms": _ms(prefix), "rule_ms": _ms(rule),
          "checkpoint_total_ms": _ms(total), "answer_model_ms_same_vectors": _ms(answer)},
         ROOT / "bench" / "results" / "early_exit_latency.json")  # fmt: skip


if __name__ == "__main__":
    main()
