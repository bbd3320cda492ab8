"""Router overhead of the tenant path (API key -> tenant -> admission in Redis) vs no tenancy.

Three routers in front of the same instant stub stage (a stub, because only
the router's own cost is measured): one with tenancy off (open mode, no
store), two with keys and a real Redis (default leases, and ``lease_s: 0``).
Requests go one at a time, in a shuffled order each round: open router; a tenant without rate
limits (served from the replica's cache: no Redis round trip); a tenant with
rate limits (one admission round trip per lease of a second's budget); the
same tenant on the router without leases (one round trip per request, the
worst case). Per request it records the latency and the router
process's CPU time (from /proc); the medians of added latency and the mean
added CPU per request versus the open router are reported, plus the
redis-server's CPU per request.

Prints JSON and writes bench/results/tenancy_overhead.json.
Usage: python bench/tenancy_overhead.py [--requests 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp
import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._procs import cpu_seconds, free_port, run_and_emit, stop, wait_ok
from bench.overhead import BODY, _one

ROOT = Path(__file__).resolve().parent.parent
ADMIN = "bench-admin-key"
TARGET_EXTRA_CPU_MS = 0.3


def _router(stub_port: int, port: int, tenancy: dict[str, object], tmp: Path) -> subprocess.Popen[bytes]:
    cfg = {
        "server": {"host": "127.0.0.1", "port": port},
        "tenancy": tenancy,
        "stages": [{"name": "stub", "model": "stub", "url": f"http://127.0.0.1:{stub_port}/v1", "prices": {"cost": {"request": 1.0}}}],
    }
    path = tmp / f"router-{port}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return subprocess.Popen([sys.executable, "-m", "adaptive_sd.cli", "--config", str(path), "serve"], cwd=ROOT)


async def run(args: argparse.Namespace) -> dict[str, object]:
    tmp = Path(tempfile.mkdtemp(prefix="asd-bench-"))
    stub_port, redis_port, open_port, keyed_port, nolease_port = free_port(), free_port(), free_port(), free_port(), free_port()
    redis_bin = shutil.which("redis-server")
    if redis_bin is None:
        raise SystemExit("redis-server not found (make test installs it)")
    redis = subprocess.Popen([redis_bin, "--port", str(redis_port), "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
    stub = subprocess.Popen([sys.executable, "-m", "servers.stub_server", "--port", str(stub_port), "--model", "stub"], cwd=ROOT)
    open_router = _router(stub_port, open_port, {"auth": "open"}, tmp)
    keyed_cfg = {"auth": "keys", "redis_url": f"redis://127.0.0.1:{redis_port}/0", "admin_key": ADMIN}
    keyed = _router(stub_port, keyed_port, keyed_cfg, tmp)
    nolease = _router(stub_port, nolease_port, {**keyed_cfg, "lease_s": 0}, tmp)
    procs = [keyed, nolease, open_router, stub, redis]
    try:
        wait_ok(f"http://127.0.0.1:{stub_port}/health", stub)
        wait_ok(f"http://127.0.0.1:{open_port}/health", open_router)
        wait_ok(f"http://127.0.0.1:{keyed_port}/health", keyed)
        wait_ok(f"http://127.0.0.1:{nolease_port}/health", nolease)
        keys = {}
        for tid, settings in (("cached", {"lambda": 5.0}), ("limited", {"lambda": 5.0, "rpm": 10_000_000, "tpm": 10_000_000})):
            r = httpx.post(f"http://127.0.0.1:{keyed_port}/admin/tenants", headers={"Authorization": f"Bearer {ADMIN}"},
                           json={"id": tid, "settings": settings})  # fmt: skip
            r.raise_for_status()
            keys[tid] = r.json()["api_key"]
        body = {**BODY, "model": "stub"}
        url_open = f"http://127.0.0.1:{open_port}/v1/chat/completions"
        url_keyed = f"http://127.0.0.1:{keyed_port}/v1/chat/completions"
        paths = ("open", "cached", "limited", "limited_no_lease")
        lat: dict[str, list[float]] = {k: [] for k in paths}
        cpu: dict[str, float] = dict.fromkeys(paths, 0.0)
        redis_cpu = dict.fromkeys(paths, 0.0)
        sessions = {
            "open": aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)),
            "cached": aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1), headers={"Authorization": f"Bearer {keys['cached']}"}),
            "limited": aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=1), headers={"Authorization": f"Bearer {keys['limited']}"}
            ),
            "limited_no_lease": aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=1), headers={"Authorization": f"Bearer {keys['limited']}"}
            ),
        }
        pids = {"open": open_router.pid, "cached": keyed.pid, "limited": keyed.pid, "limited_no_lease": nolease.pid}
        urls = {
            "open": url_open,
            "cached": url_keyed,
            "limited": url_keyed,
            "limited_no_lease": f"http://127.0.0.1:{nolease_port}/v1/chat/completions",
        }
        try:
            for _ in range(30):  # warm-up
                for name in lat:
                    await _one(sessions[name], urls[name], body)
            await asyncio.sleep(1.0)  # let the usage flush of the warm-up settle
            rng = random.Random(0)
            for _ in range(args.requests):
                order = list(paths)
                rng.shuffle(order)  # no path always follows another on the same router (warm-cache position effects)
                for name in order:
                    c0 = cpu_seconds(pids[name])
                    r0 = cpu_seconds(redis.pid)
                    lat[name].append(await _one(sessions[name], urls[name], body))
                    cpu[name] += cpu_seconds(pids[name]) - c0
                    if name != "open":
                        redis_cpu[name] += cpu_seconds(redis.pid) - r0
        finally:
            for s in sessions.values():
                await s.close()
        n = args.requests
        out: dict[str, object] = {"requests_per_path": n, "target_extra_cpu_ms": TARGET_EXTRA_CPU_MS}
        base_p50 = statistics.median(lat["open"])
        out["open_router"] = {"p50_ms": round(base_p50 * 1e3, 4), "cpu_ms_per_request": round(cpu["open"] / n * 1e3, 4)}
        for name in paths[1:]:
            added = [b - a for a, b in zip(lat["open"], lat[name], strict=False)]
            out[f"tenant_{name}"] = {
                "p50_ms": round(statistics.median(lat[name]) * 1e3, 4),
                "added_p50_ms": round(statistics.median(added) * 1e3, 4),
                "cpu_ms_per_request": round(cpu[name] / n * 1e3, 4),
                "added_cpu_ms_per_request": round((cpu[name] - cpu["open"]) / n * 1e3, 4),
                "redis_cpu_ms_per_request": round(redis_cpu[name] / n * 1e3, 4),
            }
        return out
    finally:
        for p in procs:
            stop(p)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000)
    run_and_emit(parser, run, "tenancy_overhead")


if __name__ == "__main__":
    main()
