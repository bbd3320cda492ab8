"""Router overhead against an instant stub stage (the one place a stub is right).

Measures, interleaved with direct calls to the same stub:
  * added latency per request (router - direct), p50/p95, non-streaming and streaming (pass-through and cascade);
  * what reading a streamed answer as it passes costs per chunk (``router.stream_tap``), whole and usage-only;
  * router process CPU ms per request (from /proc), for pass-through and for the
    full cascade path (logprobs -> features -> predictor -> stopping rule);
  * throughput at concurrency 16 through the router as a ratio of the direct stub,
    against a stub that answers instantly (pure CPU race: the stub's ~0.2 ms vs the
    router's ~1 ms) and against one that takes ``--stage-ms`` like a real stage.

Prints JSON and writes bench/results/overhead.json.
Usage: python bench/overhead.py [--requests 400] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._procs import cpu_seconds, emit, free_port, stop, wait_ok

ROOT = Path(__file__).resolve().parent.parent
BODY = {"messages": [{"role": "user", "content": "What is 2+2?"}], "max_tokens": 8, "temperature": 0}


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def _one(session: aiohttp.ClientSession, url: str, body: dict[str, object]) -> float:
    t0 = time.perf_counter()
    async with session.post(url, json=body) as r:
        await r.read()
        assert r.status == 200, r.status
    return time.perf_counter() - t0


async def latency(direct: str, router: str, body_direct: dict, body_router: dict, n: int, router_pid: int) -> dict[str, float]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as s:
        for _ in range(20):  # warm-up: connections, caches
            await _one(s, direct, body_direct)
            await _one(s, router, body_router)
        d, r, added = [], [], []
        cpu = 0.0
        for _ in range(n):
            a = await _one(s, direct, body_direct)
            c0 = cpu_seconds(router_pid)
            b = await _one(s, router, body_router)
            cpu += cpu_seconds(router_pid) - c0
            d.append(a)
            r.append(b)
            added.append(b - a)
    return {
        "direct_p50_ms": statistics.median(d) * 1e3,
        "router_p50_ms": statistics.median(r) * 1e3,
        "added_p50_ms": statistics.median(added) * 1e3,
        "added_p95_ms": _pct(added, 0.95) * 1e3,
        "router_cpu_ms_per_request": cpu / n * 1e3,
    }


async def throughput(url: str, body: dict, seconds: float, concurrency: int = 16) -> float:
    done = 0
    deadline = time.perf_counter() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as s:

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                await _one(s, url, body)
                done += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done / (time.perf_counter() - t0)


async def _throughput_pair(direct: str, routed: str, d_body: dict, r_body: dict, seconds: float) -> dict[str, float]:
    ratios, direct_rps, router_rps = [], [], []
    for _ in range(3):  # interleaved rounds; report medians
        a = await throughput(direct, d_body, seconds)
        b = await throughput(routed, r_body, seconds)
        direct_rps.append(a)
        router_rps.append(b)
        ratios.append(b / a)
    return {"direct_rps": statistics.median(direct_rps), "router_rps": statistics.median(router_rps), "ratio": statistics.median(ratios)}


def stream_tap_us(rounds: int = 5, answers: int = 100, chunks: int = 500) -> dict[str, float]:
    """What reading a streamed answer as it passes costs per chunk (``router.stream_tap.StreamedAnswer.add``), on
    answers of ``chunks`` chat chunks with five alternatives each: whole (the traffic log, a shadow check or a short
    answer's label reads it) and usage-only (measured prices and the realised cost); medians of ``rounds`` of ``answers``,
    in µs."""
    import orjson

    from router.stream_tap import StreamedAnswer

    tops = [{"token": f"t{i}", "logprob": -1.0 * i, "bytes": [116, 49]} for i in range(5)]
    entry = {"token": " word", "logprob": -0.1, "bytes": list(b" word"), "top_logprobs": tops}
    chunk = orjson.dumps({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
                          "choices": [{"index": 0, "delta": {"content": " word"}, "logprobs": {"content": [entry]},
                                       "finish_reason": None}]})  # fmt: skip
    out: dict[str, float] = {"chunk_bytes": float(len(chunk)), "chunks_per_answer": float(chunks)}
    for name, whole in (("whole_us_per_chunk", True), ("usage_only_us_per_chunk", False)):
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            for _ in range(answers):
                answer = StreamedAnswer(whole=whole)
                for _ in range(chunks):
                    answer.add(chunk)
            times.append((time.perf_counter() - t0) / (answers * chunks) * 1e6)
        out[name] = statistics.median(times)
    return out


async def run(args: argparse.Namespace) -> dict[str, object]:
    stub_port, router_port = free_port(), free_port()
    slow_port = free_port()
    stub = subprocess.Popen([sys.executable, "-m", "servers.stub_server", "--port", str(stub_port), "--model", "stub"], cwd=ROOT)
    slow = subprocess.Popen(
        [sys.executable, "-m", "servers.stub_server", "--port", str(slow_port), "--model", "stub", "--delay-ms", str(args.stage_ms)],
        cwd=ROOT,
    )
    cfg = {
        "server": {"host": "127.0.0.1", "port": router_port},
        "cascade": {"skip_by_prior": False},
        "tenancy": {"auth": "open"},
        "stages": [
            {"name": "stub", "model": "stub", "url": f"http://127.0.0.1:{stub_port}/v1", "prices": {"cost": {"request": 1.0}}},
            {"name": "slow", "model": "stub", "url": f"http://127.0.0.1:{slow_port}/v1", "prices": {"cost": {"request": 2.0}}},
        ],
    }
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(cfg, f)
    router = subprocess.Popen([sys.executable, "-m", "adaptive_sd.cli", "--config", f.name, "serve"], cwd=ROOT)
    try:
        wait_ok(f"http://127.0.0.1:{stub_port}/health", stub)
        wait_ok(f"http://127.0.0.1:{slow_port}/health", slow)
        wait_ok(f"http://127.0.0.1:{router_port}/health", router)
        direct = f"http://127.0.0.1:{stub_port}/v1/chat/completions"
        routed = f"http://127.0.0.1:{router_port}/v1/chat/completions"
        d_body = {**BODY, "model": "stub"}
        out: dict[str, object] = {"requests": args.requests}
        out["passthrough"] = await latency(direct, routed, d_body, d_body, args.requests, router.pid)
        stream = {**d_body, "stream": True}
        out["passthrough_stream"] = await latency(direct, routed, stream, stream, args.requests, router.pid)
        cascade = {**BODY, "model": "cascade", "cascade_max_stage": 0}
        out["cascade"] = await latency(direct, routed, d_body, cascade, args.requests, router.pid)
        # a streamed cascade answer: relayed, its usage read as it passes (router.stream_tap; no log here, so not its text)
        out["cascade_stream"] = await latency(direct, routed, stream, {**cascade, "stream": True}, args.requests, router.pid)
        out["stream_tap"] = stream_tap_us()
        slow_direct = f"http://127.0.0.1:{slow_port}/v1/chat/completions"
        out["throughput_c16_instant_stage"] = await _throughput_pair(direct, routed, d_body, {**d_body, "model": "stub"}, args.seconds)
        out["throughput_c16_stage_ms"] = args.stage_ms
        out["throughput_c16_timed_stage"] = await _throughput_pair(slow_direct, routed, d_body, {**d_body, "model": "slow"}, args.seconds)
        return out
    finally:
        stop(router)
        stop(stub)
        stop(slow)
        Path(f.name).unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--stage-ms", type=float, default=50.0, help="service time of the timed stub stage")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "overhead.json"))
    args = parser.parse_args()
    result = asyncio.run(run(args))
    emit(result, args.out)


if __name__ == "__main__":
    main()
