"""Load-aware escalation on a stub ladder whose top stage saturates.

Two stub stages (``servers/stub_server.py``): a small one that answers in
``--small-ms`` with room for everyone, and a large one that takes ``--large-ms``
per request and serves at most ``--large-concurrency`` at once (the rest queue, as
in vLLM's scheduler; it reports vLLM's queue gauges on ``/metrics``). Two routers
run in front of the same stubs, identical but for ``cascade.load_aware``.

Requests arrive open-loop (Poisson, ``--rate`` per second), each with its own λ
drawn uniformly from ``--lambda-min``..``--lambda-max``: with the stub's answer
(p̂ ≈ 0.84) and these costs, about two thirds of them are worth escalating when
the large stage is idle, more than it can serve at this rate. Rounds alternate
between the two routers (without, with, without, ...), ``--rounds`` each, the stubs'
queues drained between rounds; per round and per arm: p50/p95 latency, the share of
requests answered by the small stage, throughput, errors.

Without the load term the large stage's queue grows through the round (latency
grows with it); with it, the queueing delay the router sees enters the large
stage's cost, the requests with the smallest λ stop low, and the queue settles
where escalations match what the large stage can serve.

Prints JSON and writes bench/results/load_aware.json.
Usage: python bench/load_aware.py [--rate 20] [--seconds 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._procs import free_port, run_and_emit, stop, wait_ok

ROOT = Path(__file__).resolve().parent.parent
SMALL, LARGE = "small", "large"


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def _stub(port: int, delay_ms: float, concurrency: int | None) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "servers.stub_server", "--port", str(port), "--model", "stub", "--delay-ms", str(delay_ms)]
    if concurrency:
        cmd += ["--concurrency", str(concurrency)]
    return subprocess.Popen(cmd, cwd=ROOT)


def _config(port: int, small: int, large: int, args: argparse.Namespace, load_aware: bool) -> dict[str, Any]:
    return {
        "server": {"host": "127.0.0.1", "port": port},
        "tenancy": {"auth": "open"},
        # every request starts small and escalates at most once, by one call: what is measured is the decision
        "cascade": {"skip_by_prior": False, "draft_reuse": False, "load_aware": load_aware, "load_cost_per_s": 1.0},
        "pool": {"probe_interval_s": 0.5},
        "stages": [
            {"name": SMALL, "model": "stub", "url": f"http://127.0.0.1:{small}/v1", "prior": 0.5,
             "prices": {"cost": {"request": args.small_ms / 1e3}}},
            {"name": LARGE, "model": "stub", "url": f"http://127.0.0.1:{large}/v1", "prior": 0.95,
             "prices": {"cost": {"request": args.large_ms / 1e3}}, "max_concurrency": args.large_concurrency, "timeout_s": 120},
        ],
    }  # fmt: skip


def _queue(port: int) -> tuple[float, float]:
    """(running, waiting) at a stub, from its vLLM-style gauges."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        values = [float(line.rsplit(" ", 1)[1]) for line in r.read().decode().splitlines() if line.startswith("vllm:")]
    return values[0], values[1]


async def _drain(port: int) -> None:
    while _queue(port) != (0.0, 0.0):
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.0)


async def _round(url: str, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)  # the same arrivals and λs for both arms of a round pair
    latencies: list[float] = []
    stages: list[str] = []
    errors = 0

    async def one(session: aiohttp.ClientSession, lam: float) -> None:
        nonlocal errors
        body = {"model": "cascade", "messages": [{"role": "user", "content": "What is 2+2?"}], "max_tokens": 8, "temperature": 0,
                "cascade_lambda": lam}  # fmt: skip
        t0 = time.perf_counter()
        try:
            async with session.post(url, json=body) as r:
                await r.read()
                if r.status != 200:
                    errors += 1
                    return
                stages.append(r.headers["x-cascade-stage"])
        except (aiohttp.ClientError, asyncio.TimeoutError):
            errors += 1
            return
        latencies.append(time.perf_counter() - t0)

    tasks = []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=300)) as session:
        t_start = time.perf_counter()
        t_next = t_start
        while t_next - t_start < args.seconds:
            await asyncio.sleep(max(0.0, t_next - time.perf_counter()))
            tasks.append(asyncio.create_task(one(session, rng.uniform(args.lambda_min, args.lambda_max))))
            t_next += rng.expovariate(args.rate)
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - t_start
    return {
        "requests": len(tasks),
        "errors": errors,
        "p50_s": round(_pct(latencies, 0.5), 4),
        "p95_s": round(_pct(latencies, 0.95), 4),
        "max_s": round(max(latencies), 4) if latencies else None,
        "share_stopping_small": round(stages.count(SMALL) / len(stages), 4) if stages else None,
        "large_rps": round(stages.count(LARGE) / wall, 2),
        "wall_s": round(wall, 2),
    }


def _summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("p50_s", "p95_s", "share_stopping_small", "large_rps")
    out: dict[str, Any] = {f"median_{k}": round(statistics.median(r[k] for r in rounds), 4) for k in keys}
    out["errors"] = sum(r["errors"] for r in rounds)
    out["requests"] = sum(r["requests"] for r in rounds)
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    small_port, large_port = free_port(), free_port()
    ports = {False: free_port(), True: free_port()}
    stubs = [_stub(small_port, args.small_ms, None), _stub(large_port, args.large_ms, args.large_concurrency)]
    files, routers = [], {}
    try:
        for s, p in zip(stubs, (small_port, large_port), strict=True):
            wait_ok(f"http://127.0.0.1:{p}/health", s)
        for aware, port in ports.items():
            with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
                yaml.safe_dump(_config(port, small_port, large_port, args, aware), f)
            files.append(Path(f.name))
            routers[aware] = subprocess.Popen([sys.executable, "-m", "adaptive_sd.cli", "--config", f.name, "serve"], cwd=ROOT)
        for aware, port in ports.items():
            wait_ok(f"http://127.0.0.1:{port}/health", routers[aware])
        capacity = args.large_concurrency / (args.large_ms / 1e3)
        out: dict[str, Any] = {
            "setup": {"rate_rps": args.rate, "seconds_per_round": args.seconds, "rounds": args.rounds, "small_ms": args.small_ms,
                      "large_ms": args.large_ms, "large_concurrency": args.large_concurrency, "large_capacity_rps": capacity,
                      "lambda": [args.lambda_min, args.lambda_max], "order": "interleaved: without, with, without, with, ..."},
            "without_load_term": [], "with_load_term": [],
        }  # fmt: skip
        for i in range(args.rounds):
            for aware in (False, True):
                await _drain(large_port)
                result = await _round(f"http://127.0.0.1:{ports[aware]}/v1/chat/completions", args, seed=1000 + i)
                out["with_load_term" if aware else "without_load_term"].append(result)
                print(f"round {i} load_aware={aware}: {result}", file=sys.stderr, flush=True)
        out["summary"] = {"without_load_term": _summary(out["without_load_term"]), "with_load_term": _summary(out["with_load_term"])}
        return out
    finally:
        for proc in [*routers.values(), *stubs]:
            stop(proc)
        for f in files:
            f.unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=20.0, help="arrivals per second (Poisson)")
    parser.add_argument("--seconds", type=float, default=10.0, help="arrivals per round last this long")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per arm, interleaved")
    parser.add_argument("--small-ms", type=float, default=30.0)
    parser.add_argument("--large-ms", type=float, default=200.0)
    parser.add_argument("--large-concurrency", type=int, default=2)
    parser.add_argument("--lambda-min", type=float, default=0.5)
    parser.add_argument("--lambda-max", type=float, default=5.0)
    run_and_emit(parser, run, "load_aware")


if __name__ == "__main__":
    main()
