"""Escalation cost on the CPU ladder: verify + continue vs. regenerate from scratch.

Prompts are what a cascade escalates in practice: HumanEval problems and
generated code tasks from the predictor's held-out test split (the same
messages the router sees), plus free-form "write a function" chat prompts,
where the stages word their answers differently. For each prompt and stage
pair (i -> j), stage i's greedy draft is computed once; then, interleaved on
stage j, (a) a plain greedy generation and (b) the router's draft
verification (router/draft.py: rounds of score + re-join, then continue) are
timed. Reports medians per group and overall, the speed-up, the acceptance
per pair (draft tokens kept / draft tokens scored, and kept / answer length),
and whether the two outputs were identical; a difference is shown with the
stage's own top-2 logprob gap where it starts (a near-tie between batchings,
see tests/router/test_draft_live.py). Starts the three CPU stages itself.
Prints JSON, writes bench/results/draft_reuse.json.

Usage: python bench/draft_reuse.py [--max-tokens 160] [--per-group 6]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._procs import emit
from common.settings import load_settings
from router.draft import continuation_body, merge, trim, verify_draft
from router.stage_client import StageClient
from servers.launcher import Ladder
from training.tasks import generated, humaneval

ROOT = Path(__file__).resolve().parent.parent
CHAT_PROMPTS = [
    "Write a Python function that returns the n-th Fibonacci number iteratively.",
    "Write a Python function that checks whether a string is a palindrome, ignoring case.",
    "Write a Python function that merges two sorted lists into one sorted list.",
    "Write a Python function that counts the vowels in a string.",
    "Write a Python function that flattens a nested list of integers.",
    "Write a Python function that returns the greatest common divisor of two integers.",
]
PAIRS = [(1, 2), (0, 2)]


def prompt_groups(per_group: int) -> dict[str, list[list[dict[str, str]]]]:
    test_he = [t for t in humaneval.load() if t.split == "test"][:per_group]
    test_code = [t for t in generated.generate(60, 0) if t.family == "code" and t.split == "test"][:per_group]
    return {
        "humaneval": [list(t.messages) for t in test_he],
        "code-tasks": [list(t.messages) for t in test_code],
        "chat": [[{"role": "user", "content": p}] for p in CHAT_PROMPTS[:per_group]],
    }


def first_gap(own: dict[str, Any], got: dict[str, Any]) -> float | None:
    """The stage's own top-2 logprob gap at the first token where ``got`` differs (None if equal)."""
    mine = own["choices"][0]["logprobs"]["content"]
    theirs = got["choices"][0]["logprobs"]["content"]
    for a, b in zip(mine, theirs, strict=False):
        if a["token"] != b["token"]:
            top = a["top_logprobs"]
            return top[0]["logprob"] - top[1]["logprob"]
    return None if len(mine) == len(theirs) else 0.0


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "prompts": len(rows),
        "regenerate_median_s": statistics.median(r["regen_s"] for r in rows),
        "verify_continue_median_s": statistics.median(r["verify_s"] for r in rows),
        "speedup_median": statistics.median(r["regen_s"] / r["verify_s"] for r in rows),
        "speedup_of_totals": sum(r["regen_s"] for r in rows) / sum(r["verify_s"] for r in rows),
        "acceptance_rate": sum(r["accepted"] for r in rows) / max(1, sum(r["scored"] for r in rows)),
        "answer_share_from_draft": sum(r["accepted"] for r in rows) / max(1, sum(r["answer_tokens"] for r in rows)),
        "rounds_median": statistics.median(r["rounds"] for r in rows),
        "identical_outputs": f"{sum(r['gap'] is None for r in rows)}/{len(rows)}",
        "differing_top2_gaps_nats": [round(r["gap"], 3) for r in rows if r["gap"] is not None],
    }


async def run(args: argparse.Namespace) -> dict[str, object]:
    settings = load_settings(ROOT / "configs" / "cpu.yaml")
    clients = [StageClient(s) for s in settings.stages]
    for c in clients:
        await c.start()
    groups = prompt_groups(args.per_group)
    out: dict[str, object] = {"max_tokens": args.max_tokens, "prompts_per_group": {g: len(v) for g, v in groups.items()}}
    try:
        for i, j in PAIRS:
            pair = f"{settings.stages[i].name}->{settings.stages[j].name}"
            rows: dict[str, list[dict[str, Any]]] = {}
            for group, prompts in groups.items():
                for messages in prompts:
                    body = {"messages": messages, "temperature": 0, "max_tokens": args.max_tokens, "logprobs": True, "top_logprobs": 2}
                    drafted = (await clients[i].chat(body))[0]
                    draft = drafted["choices"][0]["message"]["content"]
                    t0 = time.perf_counter()
                    own = (await clients[j].chat(body))[0]
                    regen = time.perf_counter() - t0
                    t0 = time.perf_counter()
                    check = await verify_draft(clients[j], body, draft, drafted["usage"]["completion_tokens"])
                    assert check is not None, "the draft did not align with the stage's tokens"
                    data = merge(
                        check, None if trim(check, args.max_tokens) else (await clients[j].chat(continuation_body(body, check)))[0]
                    )
                    verify = time.perf_counter() - t0
                    row = {"regen_s": regen, "verify_s": verify, "accepted": check.accepted_tokens, "scored": check.draft_tokens,
                           "answer_tokens": data["usage"]["completion_tokens"], "rounds": check.rounds,
                           "gap": first_gap(own, data)}  # fmt: skip
                    rows.setdefault(group, []).append(row)
                    print(
                        f"  {pair} [{group}] kept {check.accepted_tokens}/{row['answer_tokens']} tokens from the draft "
                        f"({check.draft_tokens} scored, {check.rounds} rounds), regen {regen:.2f}s verify {verify:.2f}s"
                        + ("" if row["gap"] is None else f", differs (own top-2 gap {row['gap']:.3f})"),
                        file=sys.stderr,
                        flush=True,
                    )
            out[pair] = {"all": summarize([r for v in rows.values() for r in v]), **{g: summarize(v) for g, v in rows.items()}}
    finally:
        for c in clients:
            await c.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-tokens", type=int, default=160)
    parser.add_argument("--per-group", type=int, default=6)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "draft_reuse.json"))
    parser.add_argument("--no-launch", action="store_true", help="use stages already running at the configured URLs")
    args = parser.parse_args()
    settings = load_settings(ROOT / "configs" / "cpu.yaml")
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))  # stop the stages too
    if args.no_launch:
        emit(asyncio.run(run(args)), args.out)
        return
    with Ladder(settings) as ladder:
        ladder.wait_healthy(settings.server.startup_timeout_s, progress=False)
        result = asyncio.run(run(args))
    emit(result, args.out)


if __name__ == "__main__":
    main()
