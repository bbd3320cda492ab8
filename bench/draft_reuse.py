"""Escalation cost on the CPU ladder: verify + continue vs. regenerate from scratch.

For each prompt and stage pair (i -> j), stage i's greedy draft is computed
once; then, interleaved on stage j, (a) a plain greedy generation and (b)
score-the-draft + continue (router/draft.py) are timed. Reports medians,
speed-up, acceptance per pair, and whether the two outputs were identical.
Starts the three CPU stages itself. Prints JSON, writes bench/results/draft_reuse.json.

Usage: python bench/draft_reuse.py [--max-tokens 96] [--rounds 1]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._procs import emit
from router.config import load_settings
from router.draft import continuation_body, merge, score_draft, trim
from router.stage_client import StageClient
from servers.launcher import Ladder

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = [
    "Write a Python function that returns the n-th Fibonacci number iteratively.",
    "Write a Python function that checks whether a string is a palindrome, ignoring case.",
    "Write a Python function that merges two sorted lists into one sorted list.",
    "Write a Python function that counts the vowels in a string.",
    "Write a Python function that flattens a nested list of integers.",
    "Write a Python function that returns the greatest common divisor of two integers.",
]
PAIRS = [(1, 2), (0, 2)]


async def run(args: argparse.Namespace) -> dict[str, object]:
    settings = load_settings(ROOT / "configs" / "cpu.yaml")
    clients = [StageClient(s) for s in settings.stages]
    for c in clients:
        await c.start()
    out: dict[str, object] = {"max_tokens": args.max_tokens, "prompts": len(PROMPTS)}
    try:
        for i, j in PAIRS:
            regen, verify, accepted, drafted, same = [], [], 0, 0, 0
            for _ in range(args.rounds):
                for prompt in PROMPTS:
                    body = {"messages": [{"role": "user", "content": prompt}], "temperature": 0, "max_tokens": args.max_tokens}
                    draft = (await clients[i].chat(body))[0]["choices"][0]["message"]["content"]
                    t0 = time.perf_counter()
                    own = (await clients[j].chat(body))[0]["choices"][0]["message"]["content"]
                    regen.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    check = await score_draft(clients[j], body, draft)
                    assert check is not None
                    done = trim(check, args.max_tokens)
                    data = merge(check, None if done else (await clients[j].chat(continuation_body(body, check)))[0])
                    verify.append(time.perf_counter() - t0)
                    accepted += check.accepted_tokens
                    drafted += check.draft_tokens
                    same += data["choices"][0]["message"]["content"] == own
                    print(f"  {settings.stages[i].name}->{settings.stages[j].name}: accepted {check.accepted_tokens}/{check.draft_tokens}, "
                          f"regen {regen[-1]:.2f}s verify {verify[-1]:.2f}s", file=sys.stderr, flush=True)
            out[f"{settings.stages[i].name}->{settings.stages[j].name}"] = {
                "regenerate_median_s": statistics.median(regen),
                "verify_continue_median_s": statistics.median(verify),
                "speedup_median": statistics.median(r / v for r, v in zip(regen, verify)),
                "acceptance_rate": accepted / drafted if drafted else 0.0,
                "identical_outputs": f"{same}/{len(regen)}",
            }
    finally:
        for c in clients:
            await c.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "draft_reuse.json"))
    args = parser.parse_args()
    settings = load_settings(ROOT / "configs" / "cpu.yaml")
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))  # stop the stages too
    with Ladder(settings) as ladder:
        ladder.wait_healthy(settings.server.startup_timeout_s, progress=False)
        result = asyncio.run(run(args))
    emit(result, args.out)


if __name__ == "__main__":
    main()
