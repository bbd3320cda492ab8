"""Soak and load: two router replicas on one Redis, mixed traffic at a fixed rate, one replica restarted midway.

What runs (all real processes on free ports): one ``redis-server``; two stub
stages (``servers/stub_server.py``, a stub because what is measured is the
router: each answers after a fixed simulated service time, ``--stage-ms``);
two router replicas (``adaptive-sd serve``, ``tenancy.auth: keys``, the same
Redis), with tenants created through the admin API.

The load is open-loop: a request is started every ``1/--rps`` seconds whatever
the previous ones are doing, for ``--minutes``. Each is drawn from a seeded
mix: streaming or not; the cascade (``model: cascade``) or one stage by name;
tenant ``soak-team`` (no limits) or ``soak-capped`` (``rpm`` below its share of
the traffic, so some of its requests get 429 on purpose); and a few bad
requests (``max_tokens: 0``, ``temperature: 2.5``), 400 on purpose. Clients are
the real ``openai`` SDK with its default retries (2; on connection errors,
408/409/429/5xx, honouring ``Retry-After``), in front of which sits what a
client-side load balancer does: round robin over the two base URLs, a replica
that refused a connection skipped for 2 s, and a request whose retries all
failed on a connection error sent once to the other replica. Every HTTP
attempt is classified (event hooks on the SDK's HTTP client): 200, intended
400, intended 429, connection error while a replica restarts, or an error;
every request's final outcome too (ok with the full answer, intended 400,
intended 429, or lost).

A quarter as many requests go straight to the first stub, interleaved, with
the same SDK and the same mix of streaming: a direct baseline under the same
load. "Excess" is a request's latency minus the stub service time it waited
for (service time x stages the router called, from ``x-cascade-path``);
the router's added latency per minute is the excess of the requests answered
at their first attempt minus the direct excess (p50 and p99). Requests that
needed retries (a 429's ``Retry-After`` wait, the restart) are counted apart,
with their longest latency, and in ``all_ok_excess_p99_ms``.

Every ~10 s each replica's RSS, open file descriptors (``/proc/<pid>/fd``) and
CPU time are sampled (the FDs split into listener, client connections,
connections to Redis and to the stages, other), with Redis's memory and key
count and the machine's load average. Verdicts: a replica instance is flat when its RSS, fitted by least
squares over the samples after its first minute, grows by at most
``RSS_SLOPE_LIMIT_MIB_PER_MIN``, and its median FD count in its last minute is
within ``FD_DRIFT_LIMIT`` of its first minute's.

Halfway, replica b gets SIGTERM (it drains: the requests in flight on it must
complete), exits, and is started again; the report says how many requests
were in flight on it (their attempt on b, or waiting between the SDK's retries
of one), how they ended, how long it took to drain and to be
healthy again, and how many requests failed over.

The restarted replica runs the code on disk at that moment: run this from a
checkout nobody edits meanwhile (a worktree of one commit, recorded as
``config.revision``), or the restart is a rolling upgrade between two versions.

Prints JSON, writes bench/results/soak.json; progress on stderr.
Usage: python bench/soak.py [--minutes 10] [--rps 20] [--stage-ms 50]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import redis
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._procs import cpu_seconds, emit, free_port, stop

ROOT = Path(__file__).resolve().parent.parent
ADMIN = "soak-admin-key"
ANSWER = "The answer is 4."
SAMPLE_S = 10.0
RSS_SLOPE_LIMIT_MIB_PER_MIN = 0.5
FD_DRIFT_LIMIT = 4
CAPPED_RPM = 30
DOWN_AFTER_REFUSAL_S = 2.0
STAGES = ("stub-small", "stub-large")
MESSAGES = [{"role": "user", "content": "What is 2+2?"}]


def log(msg: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def _ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1e3, 2)


@dataclass
class Spec:
    """One request of the mix: where it goes and what it should get."""

    id: int
    minute: int
    model: str  # "cascade" or a stage name; direct requests: the stub's model
    stream: bool
    tenant: str  # "soak-team", "soak-capped", or "direct"
    bad: str | None = None  # the bad field of an intended 400

    @property
    def kind(self) -> str:
        if self.tenant == "direct":
            return "direct_" + ("stream" if self.stream else "plain")
        if self.bad:
            return "bad_request"
        return f"{'cascade' if self.model == 'cascade' else 'stage'}_{'stream' if self.stream else 'plain'}"


@dataclass
class Result:
    spec: Spec
    outcome: str = "lost"  # ok | intended_400 | intended_429 | lost
    error: str | None = None
    latency_s: float = 0.0
    stages_called: int = 1
    overhead_ms: float | None = None  # the router's own x-cascade-overhead-ms
    replica: str | None = None
    failed_over: bool = False


@dataclass
class Replica:
    """One router replica: its process, restarted in place; the samples of each instance."""

    name: str
    port: int
    config: Path
    logs: Path
    proc: subprocess.Popen[bytes] | None = None
    instances: list[dict[str, Any]] = field(default_factory=list)
    down_until: float = 0.0
    in_flight: set[int] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        out = open(self.logs / f"router-{self.name}-{len(self.instances)}.log", "wb")  # noqa: SIM115 (the process keeps it)
        cmd = [sys.executable, "-m", "adaptive_sd.cli", "--config", str(self.config), "serve"]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        out.close()
        self.instances.append({"pid": self.proc.pid, "samples": []})


def _revision() -> str | None:
    """The commit the routers ran (the figures belong to it), if this is a git checkout."""
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _fds(pid: int, router_port: int, peers: dict[int, str]) -> tuple[int, dict[str, int]]:
    """Open FDs of a process, and what they are: so a count that creeps names its cause.

    Sockets are matched by inode to ``/proc/<pid>/net/tcp{,6}``: the listener, client
    connections (local port = the router's), connections to a known peer port (Redis,
    the stages), other sockets; everything else (files, pipes, epoll, eventfd) is ``other``.
    """
    tcp: dict[str, tuple[int, int, str]] = {}
    for name in ("tcp", "tcp6"):
        with contextlib.suppress(FileNotFoundError), open(f"/proc/{pid}/net/{name}") as f:
            for line in list(f)[1:]:
                cols = line.split()
                tcp[cols[9]] = (int(cols[1].rsplit(":", 1)[1], 16), int(cols[2].rsplit(":", 1)[1], 16), cols[3])
    kinds: Counter[str] = Counter()
    fds = os.listdir(f"/proc/{pid}/fd")
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if not target.startswith("socket:["):
            kinds["other"] += 1
            continue
        local, remote, state = tcp.get(target[8:-1], (0, 0, ""))
        if local == router_port:
            kinds["listen" if state == "0A" else "clients"] += 1
        else:
            kinds[peers.get(remote, "other_sockets")] += 1
    return len(fds), dict(kinds)


async def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=1) as c:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
            try:
                if (await c.get(f"{url}/health")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} not healthy after {timeout_s} s")


def _slope_per_min(samples: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (t seconds, value), per minute."""
    if len(samples) < 3:
        return None
    ts, vs = [t for t, _ in samples], [v for _, v in samples]
    mt, mv = statistics.fmean(ts), statistics.fmean(vs)
    den = sum((t - mt) ** 2 for t in ts)
    return None if den == 0 else sum((t - mt) * (v - mv) for t, v in zip(ts, vs, strict=True)) / den * 60


def _median_kinds(samples: list[list[Any]]) -> dict[str, float]:
    kinds = sorted({k for s in samples for k in s[4]})
    return {k: statistics.median(s[4].get(k, 0) for s in samples) for k in kinds}


def _instance_summary(samples: list[list[Any]]) -> dict[str, Any]:
    """First-vs-last minute medians and the slope after the first minute, for RSS and FDs, and the verdict."""
    if not samples:
        return {"verdict": "no samples"}
    t0, t_end = samples[0][0], samples[-1][0]
    first = [s for s in samples if s[0] - t0 < 60]
    last = [s for s in samples if t_end - s[0] < 60]
    settled = [s for s in samples if s[0] - t0 >= 60]
    rss_slope = _slope_per_min([(s[0], s[1]) for s in settled])
    fd_slope = _slope_per_min([(s[0], s[2]) for s in settled])
    out: dict[str, Any] = {
        "minutes": round((t_end - t0) / 60, 2),
        "rss_mib_first_minute": round(statistics.median(s[1] for s in first), 2),
        "rss_mib_last_minute": round(statistics.median(s[1] for s in last), 2),
        "rss_slope_mib_per_min_after_first_minute": None if rss_slope is None else round(rss_slope, 3),
        "fds_first_minute": statistics.median(s[2] for s in first),
        "fds_last_minute": statistics.median(s[2] for s in last),
        "fds_max": max(s[2] for s in samples),
        "fd_kinds_first_minute": _median_kinds(first),
        "fd_kinds_last_minute": _median_kinds(last),
        "fd_slope_per_min_after_first_minute": None if fd_slope is None else round(fd_slope, 3),
    }
    rss_flat = rss_slope is not None and rss_slope <= RSS_SLOPE_LIMIT_MIB_PER_MIN
    fd_flat = abs(out["fds_last_minute"] - out["fds_first_minute"]) <= FD_DRIFT_LIMIT
    out["verdict"] = ("flat" if rss_flat and fd_flat else "GROWS") if rss_slope is not None else "too short to judge"
    return out


class Soak:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.rng = random.Random(args.seed)
        self.t0 = 0.0
        self.results: list[Result] = []
        self.attempts: Counter[str] = Counter()  # "<replica or direct>:<class>"
        self.attempt_count: Counter[int] = Counter()  # request id -> HTTP attempts
        self.specs: dict[int, Spec] = {}
        self.restarting: str | None = None
        self.restart: dict[str, Any] = {}
        self.load: list[dict[str, float]] = []
        self.redis_samples: list[dict[str, float]] = []
        self.replicas: list[Replica] = []
        self.keys: dict[str, str] = {}
        self.clients: dict[tuple[str, str], openai.AsyncOpenAI] = {}
        self.direct: openai.AsyncOpenAI | None = None
        self.redis: redis.Redis | None = None
        self._rr = -1
        self.peers: dict[int, str] = {}  # port -> "redis" | "stages", to say what a replica's sockets are
        # attempts sent and not (yet) answered: (request, target, t); what is left at the end got no response
        self.unanswered: dict[int, tuple[Any, str, float]] = {}

    # --- HTTP attempts, as the SDK makes them -------------------------------------------------
    def _hooks(self, target: str) -> dict[str, list[Any]]:
        async def on_request(request: Any) -> None:
            rid = int(request.headers.get("x-soak-id", "-1"))
            self.attempt_count[rid] += 1
            self.attempts[f"{target}:sent"] += 1
            self.unanswered[id(request)] = (request, target, time.monotonic() - self.t0)

        async def on_response(response: Any) -> None:
            self.unanswered.pop(id(response.request), None)
            spec = self.specs.get(int(response.request.headers.get("x-soak-id", "-1")))
            status = response.status_code
            if status == 200:
                cls = "200"
            elif status == 400 and spec is not None and spec.bad:
                cls = "400_intended"
            elif status == 429 and spec is not None and spec.tenant == "soak-capped":
                cls = "429_intended"
            else:
                cls = f"{status}_ERROR"
            self.attempts[f"{target}:{cls}"] += 1

        return {"request": [on_request], "response": [on_response]}

    def _client(self, target: str, base_url: str, key: str) -> openai.AsyncOpenAI:
        http = openai.DefaultAsyncHttpxClient(event_hooks=self._hooks(target))
        return openai.AsyncOpenAI(base_url=base_url, api_key=key, timeout=60, http_client=http)  # default max_retries

    # --- one request ---------------------------------------------------------------------------
    async def _call(self, client: openai.AsyncOpenAI, spec: Spec, res: Result) -> None:
        kw: dict[str, Any] = {"model": spec.model, "messages": MESSAGES, "max_tokens": 8, "extra_headers": {"x-soak-id": str(spec.id)}}
        if spec.bad == "max_tokens":
            kw["max_tokens"] = 0
        elif spec.bad == "temperature":
            kw["temperature"] = 2.5
        raw = await client.chat.completions.with_raw_response.create(stream=spec.stream, **kw)
        path = raw.headers.get("x-cascade-path")
        res.stages_called = len(path.split(",")) if path else 1
        if (oh := raw.headers.get("x-cascade-overhead-ms")) is not None:
            res.overhead_ms = float(oh)
        content = ""
        parsed = raw.parse()
        if isinstance(parsed, openai.AsyncStream):
            finished = False
            async for chunk in parsed:
                for choice in chunk.choices:
                    content += choice.delta.content or ""
                    finished = finished or choice.finish_reason == "stop"
            if not finished:
                raise RuntimeError("stream ended without finish_reason")
        else:
            content = parsed.choices[0].message.content or ""
        if content != ANSWER:
            raise RuntimeError(f"incomplete answer {content!r}")
        res.outcome = "ok"

    def _pick(self) -> Replica:
        now = time.monotonic()
        up = [r for r in self.replicas if r.down_until <= now] or self.replicas
        self._rr = (self._rr + 1) % len(up)
        return up[self._rr]

    async def request(self, spec: Spec) -> None:
        res = Result(spec)
        self.results.append(res)
        t0 = time.perf_counter()
        try:
            if spec.tenant == "direct":
                res.replica = "direct"
                assert self.direct is not None
                await self._call(self.direct, spec, res)
                return
            first = self._pick()
            for replica in (first, next(r for r in self.replicas if r is not first)):
                res.replica = replica.name
                replica.in_flight.add(spec.id)
                try:
                    await self._call(self.clients[(replica.name, spec.tenant)], spec, res)
                    return
                except (openai.APIConnectionError, openai.APITimeoutError):
                    # the SDK's own retries all failed to connect: mark the replica down, try the other once
                    replica.down_until = time.monotonic() + DOWN_AFTER_REFUSAL_S
                    self.attempts[f"{replica.name}:connect_error{'_restart' if self.restarting == replica.name else '_ERROR'}"] += 1
                    if res.failed_over:
                        raise
                    res.failed_over = True
                finally:
                    replica.in_flight.discard(spec.id)
        except openai.BadRequestError as exc:
            res.outcome, res.error = ("intended_400", None) if spec.bad else ("lost", f"400 {exc.message}")
        except openai.RateLimitError as exc:
            res.outcome, res.error = ("intended_429", None) if spec.tenant == "soak-capped" else ("lost", f"429 {exc.message}")
        except Exception as exc:  # every other end is a lost request, named in the report
            res.outcome, res.error = "lost", f"{type(exc).__name__}: {exc}"[:200]
        finally:
            res.latency_s = time.perf_counter() - t0

    # --- the mix ------------------------------------------------------------------------------
    def _spec(self, i: int, minute: int) -> Spec:
        r = self.rng
        stream = r.random() < 0.5
        model = "cascade" if r.random() < 0.5 else r.choice(STAGES)
        tenant = "soak-capped" if r.random() < self.args.capped_share else "soak-team"
        bad = r.choice(("max_tokens", "temperature")) if r.random() < self.args.bad_share else None
        return Spec(i, minute, model, stream, tenant, bad)

    async def traffic(self, duration_s: float) -> None:
        tasks: set[asyncio.Task[None]] = set()
        i = 0
        direct_every = 4
        while True:
            at = self.t0 + i / self.args.rps
            if at - self.t0 >= duration_s:
                break
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            minute = int((at - self.t0) // 60)
            specs = [self._spec(2 * i, minute)]
            if i % direct_every == 0:
                specs.append(Spec(2 * i + 1, minute, "stub", self.rng.random() < 0.5, "direct"))
            for spec in specs:
                self.specs[spec.id] = spec
                task = asyncio.create_task(self.request(spec))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            i += 1
        log(f"all {i} router requests sent; waiting for {len(tasks)} in flight")
        await asyncio.gather(*tasks)

    # --- sampling, restart ----------------------------------------------------------------------
    def sample(self) -> None:
        t = time.monotonic() - self.t0
        for rep in self.replicas:
            if rep.proc is None or rep.proc.poll() is not None:
                continue
            pid = rep.proc.pid
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # it exited between poll() and /proc
                n, kinds = _fds(pid, rep.port, self.peers)
                rep.instances[-1]["samples"].append([round(t, 1), round(_rss_mib(pid), 2), n, round(cpu_seconds(pid), 3), kinds])
        la1, la5, _ = os.getloadavg()
        self.load.append({"t": round(t, 1), "load1": la1, "load5": la5})
        assert self.redis is not None
        info = self.redis.info("memory")
        self.redis_samples.append({"t": round(t, 1), "used_memory_mib": round(info["used_memory"] / 2**20, 3), "keys": self.redis.dbsize()})

    async def monitor(self, duration_s: float) -> None:
        while time.monotonic() - self.t0 < duration_s + 1:
            self.sample()
            done = Counter(r.outcome for r in self.results if r.latency_s)
            a, b = (r.instances[-1]["samples"][-1] if r.instances[-1]["samples"] else None for r in self.replicas)
            log(
                f"t={time.monotonic() - self.t0:5.0f}s sent={len(self.results)} {dict(done)} a={a} b={b} load1={self.load[-1]['load1']:.2f}"
            )
            await asyncio.sleep(SAMPLE_S)

    async def restart_b(self, at_s: float) -> None:
        await asyncio.sleep(max(0.0, self.t0 + at_s - time.monotonic()))
        b = self.replicas[1]
        assert b.proc is not None
        self.sample()  # last sample of the first instance
        in_flight = set(b.in_flight)  # requests whose current attempt is b's, waits between the SDK's retries included
        awaiting = sum(target == b.name for _, target, _ in self.unanswered.values())
        self.restarting = b.name
        t_sig = time.monotonic()
        log(f"SIGTERM to replica b (pid {b.proc.pid}), {len(in_flight)} requests in flight on it, {awaiting} awaiting headers")
        b.proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(b.proc.wait)
        drained = time.monotonic() - t_sig
        b.start()
        assert b.proc is not None
        await _wait_healthy(b.url, b.proc)
        healthy = time.monotonic() - t_sig
        self.restarting = None
        log(f"replica b drained in {drained:.2f} s (exit {code}), healthy again after {healthy:.2f} s (pid {b.proc.pid})")
        self.restart = {
            "at_s": round(t_sig - self.t0, 3),
            "in_flight_at_sigterm": sorted(in_flight),
            "http_attempts_awaiting_headers_at_sigterm": awaiting,
            "exit_code": code,
            "drain_s": round(drained, 3),
            "down_s": round(healthy, 3),
        }

    # --- the run -------------------------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        args = self.args
        redis_bin = shutil.which("redis-server")
        if redis_bin is None:
            raise SystemExit("redis-server not found (make test installs it)")
        redis_port = free_port()
        procs: list[subprocess.Popen[bytes]] = [
            subprocess.Popen(
                [redis_bin, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL
            )
        ]
        stub_ports = [free_port() for _ in STAGES]
        self.peers = {redis_port: "redis", **dict.fromkeys(stub_ports, "stages")}
        for port in stub_ports:
            cmd = [sys.executable, "-m", "servers.stub_server", "--port", str(port), "--model", "stub", "--delay-ms", str(args.stage_ms)]
            procs.append(subprocess.Popen(cmd, cwd=ROOT))
        cfg = {
            "server": {"host": "127.0.0.1", "port": 0},
            "cascade": {"skip_by_prior": False},
            "tenancy": {"auth": "keys", "redis_url": f"redis://127.0.0.1:{redis_port}/0", "admin_key": ADMIN},
            "stages": [
                {"name": name, "model": "stub", "url": f"http://127.0.0.1:{port}/v1", "prices": {"cost": {"request": float(1 + 2 * k)}}}
                for k, (name, port) in enumerate(zip(STAGES, stub_ports, strict=True))
            ],
        }
        for name in ("a", "b"):
            port = free_port()
            path = self.tmp / f"router-{name}.yaml"
            path.write_text(yaml.safe_dump({**cfg, "server": {"host": "127.0.0.1", "port": port}}))
            self.replicas.append(Replica(name, port, path, self.tmp))
        try:
            self.redis = redis.Redis(port=redis_port)
            for stub_port, stub_proc in zip(stub_ports, procs[1:], strict=True):
                await _wait_healthy(f"http://127.0.0.1:{stub_port}", stub_proc)
            for rep in self.replicas:
                rep.start()
            for rep in self.replicas:
                assert rep.proc is not None
                await _wait_healthy(rep.url, rep.proc)
            async with httpx.AsyncClient(headers={"Authorization": f"Bearer {ADMIN}"}) as admin:
                for tid, settings in (("soak-team", {"lambda": 5.0}), ("soak-capped", {"lambda": 5.0, "rpm": CAPPED_RPM})):
                    r = await admin.post(f"{self.replicas[0].url}/admin/tenants", json={"id": tid, "settings": settings})
                    r.raise_for_status()
                    self.keys[tid] = r.json()["api_key"]
            self.clients = {
                (rep.name, t): self._client(rep.name, f"{rep.url}/v1", k) for rep in self.replicas for t, k in self.keys.items()
            }
            self.direct = self._client("direct", f"http://127.0.0.1:{stub_ports[0]}/v1", "unused")
            duration = args.minutes * 60
            log(
                f"{args.minutes} min, {args.rps} req/s via 2 replicas (+ {args.rps / 4:g} req/s direct), b restarts at {duration / 2:.0f} s"
            )
            cpu0 = {p: cpu_seconds(p.pid) for p in procs}
            own0 = cpu_seconds(os.getpid())
            self.t0 = time.monotonic()
            wall0 = time.time()
            mon = asyncio.create_task(self.monitor(duration))
            await asyncio.gather(self.traffic(duration), self.restart_b(duration / 2))
            mon.cancel()
            self.sample()
            elapsed = time.monotonic() - self.t0
            infra_cpu = {"redis": cpu_seconds(procs[0].pid) - cpu0[procs[0]], "load_generator": cpu_seconds(os.getpid()) - own0}
            for k, p in enumerate(procs[1:]):
                infra_cpu[STAGES[k]] = cpu_seconds(p.pid) - cpu0[p]
            return self.report(elapsed, wall0, infra_cpu)
        finally:
            for rep in self.replicas:
                if rep.proc is not None:
                    stop(rep.proc)
            for p in procs:
                stop(p)

    def report(self, elapsed: float, wall0: float, infra_cpu: dict[str, float]) -> dict[str, Any]:
        args = self.args
        service: float = args.stage_ms / 1e3
        routed = [r for r in self.results if r.spec.tenant != "direct"]
        direct = [r for r in self.results if r.spec.tenant == "direct"]
        outcomes = Counter(r.outcome for r in routed)
        lost = [r for r in self.results if r.outcome == "lost"]
        attempts_by_target: dict[str, dict[str, int]] = defaultdict(dict)
        for key, n in sorted(self.attempts.items()):
            target, cls = key.split(":", 1)
            attempts_by_target[target][cls] = n
        # attempts without a response (connection refused or closed; the SDK retried them): expected only on
        # replica b between its SIGTERM and its being healthy again (plus the half second the client's pool needs)
        lo = self.restart.get("at_s", 0.0) - 0.1  # a request on a kept-alive connection as the signal lands
        hi = lo + self.restart.get("down_s", 0.0) + 0.5
        for _, target, t in self.unanswered.values():
            cls = "no_response_restart" if target == "b" and lo <= t <= hi else "no_response_ERROR"
            attempts_by_target[target][cls] = attempts_by_target[target].get(cls, 0) + 1
        error_attempts = sum(n for counts in attempts_by_target.values() for c, n in counts.items() if c.endswith("_ERROR"))

        def excess(r: Result) -> float:
            return r.latency_s - service * r.stages_called

        per_minute = []
        for minute in range(int(args.minutes + 0.999)):
            ok = [r for r in routed if r.outcome == "ok" and r.spec.minute == minute]
            first = [excess(r) for r in ok if self.attempt_count[r.spec.id] == 1]
            retried = [r.latency_s for r in ok if self.attempt_count[r.spec.id] > 1 or r.failed_over]
            dok = [excess(r) for r in direct if r.outcome == "ok" and r.spec.minute == minute]
            oh = [r.overhead_ms for r in ok if r.overhead_ms is not None]
            p50r, p99r, p50d, p99d = _pct(first, 0.5), _pct(first, 0.99), _pct(dok, 0.5), _pct(dok, 0.99)
            per_minute.append(
                {
                    "minute": minute,
                    "router_ok": len(ok),
                    "router_excess_p50_ms": _ms(p50r),
                    "router_excess_p99_ms": _ms(p99r),
                    "direct_excess_p50_ms": _ms(p50d),
                    "direct_excess_p99_ms": _ms(p99d),
                    "added_p50_ms": _ms(None if p50r is None or p50d is None else p50r - p50d),
                    "added_p99_ms": _ms(None if p99r is None or p99d is None else p99r - p99d),
                    "router_overhead_header_p50_ms": None if not oh else round(statistics.median(oh), 3),
                    "ok_after_retries": len(retried),
                    "ok_after_retries_max_s": None if not retried else round(max(retried), 3),
                    "all_ok_excess_p99_ms": _ms(_pct([excess(r) for r in ok], 0.99)),
                }
            )
        by_kind: dict[str, dict[str, Any]] = {}
        for kind in sorted({r.spec.kind for r in self.results}):
            rs = [r for r in self.results if r.spec.kind == kind]
            once = [excess(r) for r in rs if r.outcome == "ok" and self.attempt_count[r.spec.id] == 1]
            by_kind[kind] = {
                "requests": len(rs),
                "outcomes": dict(Counter(r.outcome for r in rs)),
                "first_attempt_excess_p50_ms": _ms(_pct(once, 0.5)),
                "first_attempt_excess_p99_ms": _ms(_pct(once, 0.99)),
            }
        replicas = {}
        for rep in self.replicas:
            replicas[rep.name] = [
                {"pid": inst["pid"], **_instance_summary(inst["samples"]), "samples_t_rss_mib_fds_cpu_s_fdkinds": inst["samples"]}
                for inst in rep.instances
            ]
        cpu_share = {}
        for rep in self.replicas:
            total = sum(inst["samples"][-1][3] - inst["samples"][0][3] for inst in rep.instances if len(inst["samples"]) > 1)
            cpu_share[f"router_{rep.name}"] = round(total / elapsed, 3)
        for name, cpu in infra_cpu.items():
            cpu_share[name] = round(cpu / elapsed, 3)
        in_flight = self.restart.get("in_flight_at_sigterm", [])
        by_id = {r.spec.id: r for r in self.results}
        drained = Counter(
            ("ok_on_b" if not by_id[i].failed_over else "ok_failed_over") if by_id[i].outcome == "ok" else by_id[i].outcome
            for i in in_flight
        )
        restart = {
            **{k: v for k, v in self.restart.items() if k != "in_flight_at_sigterm"},
            "in_flight_at_sigterm": len(in_flight),
            "in_flight_outcomes": dict(drained),
            "requests_failed_over": sum(r.failed_over for r in routed),
            "connect_errors_after_sdk_retries": sum(n for k, n in self.attempts.items() if ":connect_error" in k),
        }
        verdicts = {f"{name}#{k}": inst["verdict"] for name, insts in replicas.items() for k, inst in enumerate(insts)}
        return {
            "config": {
                "minutes": args.minutes,
                "rps": args.rps,
                "direct_rps": args.rps / 4,
                "stage_ms": args.stage_ms,
                "capped_share": args.capped_share,
                "capped_rpm": CAPPED_RPM,
                "bad_share": args.bad_share,
                "seed": args.seed,
                "replicas": 2,
                "cpus": os.cpu_count(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(wall0)),
                "elapsed_s": round(elapsed, 1),
                "revision": _revision(),
                "openai_sdk": openai.__version__,
                "sdk_max_retries": openai.DEFAULT_MAX_RETRIES,
            },
            "verdict": {
                "lost_requests": len(lost),
                "error_attempts": error_attempts,
                "memory_and_fds": verdicts,
                "pass": not lost and error_attempts == 0 and all(v in ("flat", "too short to judge") for v in verdicts.values()),
            },
            "requests": {
                "router": len(routed),
                "direct": len(direct),
                "router_outcomes": dict(outcomes),
                "lost": [{"id": r.spec.id, "kind": r.spec.kind, "replica": r.replica, "error": r.error} for r in lost][:50],
            },
            "attempts": attempts_by_target,
            "restart": restart,
            "latency_per_minute": per_minute,
            "latency_by_kind": by_kind,
            "replicas": replicas,
            "redis": {
                "keys_first_minute": statistics.median(x["keys"] for x in self.redis_samples if x["t"] < 60),
                "keys_last_minute": statistics.median(x["keys"] for x in self.redis_samples if x["t"] > elapsed - 60),
                "used_memory_mib_first_minute": statistics.median(x["used_memory_mib"] for x in self.redis_samples if x["t"] < 60),
                "used_memory_mib_last_minute": statistics.median(x["used_memory_mib"] for x in self.redis_samples if x["t"] > elapsed - 60),
                "samples": self.redis_samples,
            },
            "load": {
                "cpu_cores_used": cpu_share,
                "loadavg1_median": round(statistics.median(x["load1"] for x in self.load), 2),
                "loadavg1_max": round(max(x["load1"] for x in self.load), 2),
                "samples": self.load,
            },
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rps", type=float, default=20.0, help="router requests per second, both replicas together")
    parser.add_argument("--stage-ms", type=float, default=50.0, help="the stub stages' service time")
    parser.add_argument("--capped-share", type=float, default=0.1, help=f"share of requests from the tenant limited to {CAPPED_RPM} rpm")
    parser.add_argument("--bad-share", type=float, default=0.03, help="share of requests that are bad on purpose (400)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "soak.json"))
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="asd-soak-"))
    try:
        result = asyncio.run(Soak(args, tmp).run())
    except BaseException:
        for f in sorted(tmp.glob("router-*.log")):
            print(f"--- {f.name}\n{f.read_text(errors='replace')[-2000:]}", file=sys.stderr)
        raise
    emit(result, args.out)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
