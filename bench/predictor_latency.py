"""Predictor latency on the router's hot path: stage response bytes -> feature vector -> ONNX -> calibrated p̂.

Answers are real: every stage answer of the collected data set (``data/cpu/collect.jsonl``),
rebuilt into the chat completion a stage sends (token text, bytes, top-5
alternatives; token strings drawn from a fixed vocabulary of code and prose
pieces, since the collection keeps only the numbers), replayed in a shuffled
cycle for ``--calls`` calls. A second run uses 512-token answers with top-5
alternatives, the longest the issue asks about.

Each call times the router's path, ``AnswerStats.from_body`` on the response
bytes (copied just before, outside the timer, as a socket read leaves them)
+ ``answer_features`` + ONNX (parts timed separately), and, interleaved
on the same answer in alternating order, the decoded path: the body decoded
by orjson outside the timer (as the router does for the response it relays)
and read with ``AnswerStats.from_choice``, which is what training uses and
what the router did before it read the bytes. A second interleaved pair times
the router's whole handling of a stage answer up to p̂: ``StageReply.parse``
(the scanner, then decoding the body with the logprobs left out) against
decoding the whole body with orjson and reading its logprobs, as the router
did before. Medians and p99 are printed as JSON and written to
bench/results/predictor_latency.json.

Usage: python bench/predictor_latency.py [--calls 10000]
"""

from __future__ import annotations

import gc
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._procs import emit, predictor_args
from predictor.serving.features import AnswerStats, PromptStats, answer_features
from predictor.serving.rows import TOP_LOGPROBS
from predictor.serving.runtime import OnnxPredictor
from router.stage_client import StageReply
from training.dataset import read_rows

ROOT = Path(__file__).resolve().parent.parent
TARGET_P99_MS = 0.3
TARGET_P50_MS = 0.1
_VOCAB = ("the", " of", " def", " return", "(", "):", "\n", "    ", " self", ".append", " =", " 0", " value", "_name", " if", " not",
          " in", " for", " x", "]", " {", '"', " result", "ing", " is", " a", " list", " +", " 1", ",", " None", " True")  # fmt: skip
Answer = tuple[PromptStats, bytes, int]


def _entry(rng: random.Random, lp: float, tops: list[float]) -> dict[str, Any]:
    def tok() -> tuple[str, list[int]]:
        t = rng.choice(_VOCAB)
        return t, list(t.encode())

    token, raw = tok()
    alternatives = []
    for t in tops:
        alt, alt_raw = tok()
        alternatives.append({"token": alt, "logprob": t, "bytes": alt_raw})
    return {"token": token, "logprob": lp, "bytes": raw, "top_logprobs": alternatives}


def _body(content: list[dict[str, Any]], finish: str, rng: random.Random) -> bytes:
    text = "".join(e["token"] for e in content)
    return orjson.dumps({
        "id": f"chatcmpl-{rng.getrandbits(64):x}", "object": "chat.completion", "created": 1_700_000_000, "model": "stage",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": {"content": content}, "finish_reason": finish}],  # noqa: E501
        "usage": {"prompt_tokens": 40, "completion_tokens": len(content), "total_tokens": 40 + len(content)},
    })  # fmt: skip


def real_answers(path: Path) -> list[Answer]:
    rng = random.Random(0)
    out = []
    for row in read_rows(path):
        prompt = PromptStats.from_texts(row["prompt_texts"])
        for s in row["stages"]:
            out.append((prompt, _body([_entry(rng, lp, tops) for lp, tops in s["logprobs"]], s["finish_reason"], rng), s["stage"]))
    return out


def long_answers(n: int, tokens: int = 512, seed: int = 0) -> list[Answer]:
    rng = random.Random(seed)
    prompt = PromptStats.from_texts(["Write a Python function that parses a CSV line, handling quoted fields."])
    out = []
    for i in range(n):
        content = []
        for _ in range(tokens):
            tops = sorted((-rng.expovariate(1.5) for _ in range(TOP_LOGPROBS)), reverse=True)
            content.append(_entry(rng, tops[0], tops))
        out.append((prompt, _body(content, "length", rng), i % 3))
    return out


def _ms(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs) * 1e3
    return {"p50": round(float(np.percentile(a, 50)), 4), "p99": round(float(np.percentile(a, 99)), 4)}


def measure(predictor: OnnxPredictor, answers: list[Answer], calls: int) -> dict[str, Any]:
    scan, feats, infer, total, decoded, handled, handled_before = [], [], [], [], [], [], []
    order = list(range(len(answers)))
    random.Random(1).shuffle(order)
    for i in range(200):  # warm-up: onnxruntime and numpy first-call costs
        prompt, body, stage = answers[order[i % len(order)]]
        predictor.predict(answer_features(prompt, AnswerStats.from_body(body, TOP_LOGPROBS), stage))  # type: ignore[arg-type]
    gc.collect()
    clock = time.perf_counter

    def router_path(prompt: PromptStats, body: bytes, stage: int) -> None:
        body = bytes(bytearray(body))  # a fresh copy, as the socket read hands it over (just written, so in cache)
        t0 = clock()
        stats = AnswerStats.from_body(body, TOP_LOGPROBS)
        t1 = clock()
        x = answer_features(prompt, stats, stage)  # type: ignore[arg-type]
        t2 = clock()
        predictor.predict(x)
        t3 = clock()
        scan.append(t1 - t0)
        feats.append(t2 - t1)
        infer.append(t3 - t2)
        total.append(t3 - t0)

    def decoded_path(prompt: PromptStats, body: bytes, stage: int) -> None:
        choice = orjson.loads(body)["choices"][0]
        t0 = clock()
        predictor.predict(answer_features(prompt, AnswerStats.from_choice(choice, TOP_LOGPROBS), stage))
        decoded.append(clock() - t0)

    def router_handling(prompt: PromptStats, body: bytes, stage: int) -> None:
        body = bytes(bytearray(body))
        t0 = clock()
        reply = StageReply.parse(body, 0.0, TOP_LOGPROBS)
        predictor.predict(answer_features(prompt, reply.stats, stage))  # type: ignore[arg-type]
        handled.append(clock() - t0)

    def decoding_handling(prompt: PromptStats, body: bytes, stage: int) -> None:
        body = bytes(bytearray(body))
        t0 = clock()
        choice = orjson.loads(body)["choices"][0]
        predictor.predict(answer_features(prompt, AnswerStats.from_choice(choice, TOP_LOGPROBS), stage))
        handled_before.append(clock() - t0)

    for i in range(calls):
        answer = answers[order[i % len(order)]]
        pairs = ((router_path, decoded_path), (router_handling, decoding_handling))
        for first, second in pairs:
            if i % 2:
                first, second = second, first
            first(*answer)
            second(*answer)
    lengths = [orjson.loads(answers[j][1])["usage"]["completion_tokens"] for j in order]
    sizes = [len(answers[j][1]) for j in order]
    return {
        "calls": calls,
        "answers": len(answers),
        "tokens_p50": int(np.percentile(lengths, 50)),
        "tokens_max": int(max(lengths)),
        "body_kib_p50": round(float(np.percentile(sizes, 50)) / 1024, 1),
        "body_kib_max": round(max(sizes) / 1024, 1),
        "total_ms": _ms(total),
        "scan_ms": _ms(scan),
        "features_ms": _ms(feats),
        "onnx_ms": _ms(infer),
        "decoded_path_total_ms": _ms(decoded),
        "decoded_over_router_p50": round(float(np.median(decoded) / np.median(total)), 2),
        "answer_handling_ms": _ms(handled),
        "answer_handling_decoding_all_ms": _ms(handled_before),
        "decoding_all_over_deferred_p50": round(float(np.median(handled_before) / np.median(handled)), 2),
    }


def main() -> None:
    args = predictor_args(__doc__, calls=10_000)
    predictor = OnnxPredictor.load(Path(args.model))
    real = measure(predictor, real_answers(Path(args.data)), args.calls)
    worst = measure(predictor, long_answers(50), args.calls)
    result = {
        "predictor": predictor.name,
        "target_ms": {"p50": TARGET_P50_MS, "p99": TARGET_P99_MS},
        "collected_answers": real,
        "answers_512_tokens": worst,
        "meets_target_on_collected": real["total_ms"]["p50"] < TARGET_P50_MS and real["total_ms"]["p99"] < TARGET_P99_MS,
        "meets_target_at_512_tokens": worst["total_ms"]["p50"] < TARGET_P50_MS and worst["total_ms"]["p99"] < TARGET_P99_MS,
    }
    emit(result, ROOT / "bench" / "results" / "predictor_latency.json")


if __name__ == "__main__":
    main()
