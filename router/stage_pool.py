"""A stage as a pool of endpoints: the ``router.stage.Stage`` the engine and the serving layer use.

In production a stage is several identical servers (vLLM replicas, perhaps on
several hosts, or one hosted model behind several keys or regions). ``StagePool``
implements the ``Stage`` protocol over one client per endpoint (``StageClient``,
or ``LiteLLMStage`` for ``dialect: litellm``), so nothing above it knows how many
there are; a stage configured with one ``url`` is a pool of one.

* **Balancing**: least outstanding requests with the power of two choices: two
  endpoints drawn at random among those that take traffic, the one with fewer
  requests in flight (relative to its ``max_concurrency``) wins, ties at random.
  With two endpoints that is exactly "the less loaded one". It needs no shared
  state beyond per-endpoint counters and stays O(1) per request.
* **Health**: each endpoint has an ``EndpointHealth`` (``router.health``): passive
  outlier detection from real requests, active probes every
  ``pool.probe_interval_s``, exponential cool-downs, coming back by itself.
* **Retry**: a request that fails on one endpoint before any byte of its answer
  reached the client (a refused connection, a 5xx, a timeout, a broken body, a
  stream that breaks before its first event, or a provider's 429) is retried once
  on another endpoint. Only when that fails too, or no other endpoint takes
  traffic, does the cascade see the ``StageFailure``. A stream that has sent
  something is not retried: its failure ends it as before.
* **No endpoint**: when every endpoint is ejected the pool raises
  ``StageUnavailable`` at once, without touching the network, and the cascade
  leaves the stage out of the request before that (``stage_available``): a request
  nothing can answer fails in milliseconds with a 503, not after a timeout.
* **Load**: ``queue_delay_s`` is the expected queueing delay of a new request at the
  stage, from the router's own in-flight counts and the endpoints' service times
  (and vLLM's ``/metrics`` queue gauges, read at each probe where they exist); the
  cascade adds it to the stage's cost when ``cascade.load_aware`` is on.

The hot path is a few attribute updates per request: counters are plain ints on
each endpoint, read by /metrics (``router.metrics.ENDPOINTS``) and /health only
when asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any, Literal, TypeVar
from urllib.parse import urlparse

from common.errors import APIError
from common.settings import PoolConfig, Settings, StageConfig, read_key
from router.health import EndpointHealth, FailureKind, probe, queue_gauges
from router.litellm_stage import LiteLLMStage  # imports LiteLLM itself only when a litellm stage is built
from router.metrics import STAGE_RETRIES, EndpointRow
from router.stage import Stage, StageFailure, StageNoCompletions, StageReply, StageTimeout, StageUnavailable, completions_stage
from router.stage_client import StageClient

T = TypeVar("T")

EWMA_ALPHA = 0.2  # weight of the newest service time in an endpoint's running estimate
GAUGE_TTL_PROBES = 3  # vLLM queue gauges older than this many probe intervals are ignored


def failure_kind(exc: StageFailure) -> FailureKind:
    if isinstance(exc, StageUnavailable):
        return "connect"
    if isinstance(exc, StageTimeout):
        return "timeout"
    return "error"


def _retryable(exc: BaseException) -> bool:
    """Worth another endpoint: the stage failed, or a provider rate-limited this endpoint (its key or region).
    A stage without ``/v1/completions`` is not failing: every endpoint of it would say the same."""
    if isinstance(exc, StageNoCompletions):
        return False
    return isinstance(exc, StageFailure) or (isinstance(exc, APIError) and exc.status == 429)


Opener = Callable[[Stage], Awaitable[AsyncIterator[bytes]]]


def endpoint_label(url: str, fallback: str) -> str:
    """How an endpoint is named in /health, /metrics and errors: scheme, host, port and path (no credentials, no query)."""
    if not url:
        return fallback
    p = urlparse(url)
    host = p.hostname or ""
    return f"{p.scheme}://{host}{f':{p.port}' if p.port else ''}{p.path}"


class Endpoint:
    """One replica: its client, its load (in flight, service time) and its health."""

    __slots__ = ("capacity", "client", "failures", "gauges", "gauges_at", "health", "in_flight", "label", "latency_s", "metrics_url",
                 "probe_headers", "probe_url", "requests")  # fmt: skip

    def __init__(self, client: Stage, label: str, capacity: int | None, health: EndpointHealth) -> None:
        self.client = client
        self.label = label
        self.capacity = capacity  # requests it runs at once at full speed (None: unknown)
        self.health = health
        self.in_flight = 0
        self.latency_s: float | None = None  # EWMA of the service time of requests that did not queue
        self.requests = 0
        self.failures = 0
        self.probe_url: str | None = None
        self.probe_headers: dict[str, str] = {}
        self.metrics_url: str | None = None
        self.gauges: tuple[float, float] | None = None  # vLLM (running, waiting)
        self.gauges_at = -math.inf

    def load(self) -> float:
        return self.in_flight / self.capacity if self.capacity else float(self.in_flight)

    def would_queue(self) -> bool:
        return self.capacity is not None and self.in_flight >= self.capacity

    def succeeded(self, seconds: float, queued: bool) -> None:
        self.requests += 1
        self.health.success()
        if not queued:
            self.latency_s = seconds if self.latency_s is None else self.latency_s + EWMA_ALPHA * (seconds - self.latency_s)

    def failed(self, exc: StageFailure) -> None:
        self.requests += 1
        self.failures += 1
        self.health.failure(failure_kind(exc), str(exc))

    def answered(self) -> None:
        """A 4xx: the server works, the request was at fault."""
        self.requests += 1
        self.health.success()

    def expected_wait(self, now: float, gauge_ttl: float) -> float:
        """Seconds a request sent now would wait before its service starts.

        With n requests in flight and room for C at once, a new one waits for n - C + 1 of them
        to finish, and C finish per service time S: (n - C + 1) · S / C. vLLM's own gauges (its
        queue, other clients included) give (waiting + 1) · S / running; the larger of the two counts.
        Without a service-time estimate, or without C and gauges, there is nothing to go on: 0.
        """
        s = self.latency_s
        if s is None:
            return 0.0
        wait = 0.0
        if self.capacity is not None and self.in_flight >= self.capacity:
            wait = (self.in_flight - self.capacity + 1) * s / self.capacity
        if self.gauges is not None and now - self.gauges_at <= gauge_ttl:
            running, waiting = self.gauges
            if waiting > 0:
                wait = max(wait, (waiting + 1) * s / max(running, 1.0))
        return wait

    def describe(self, now: float) -> dict[str, Any]:
        h = self.health
        return {
            "url": self.label,
            "state": h.state(now),
            "in_flight": self.in_flight,
            "latency_ms": None if self.latency_s is None else round(self.latency_s * 1e3, 2),
            "requests": self.requests,
            "failures": self.failures,
            "consecutive_failures": h.consecutive,
            "ejections": h.total_ejections,
            "ejected_for": h.ejected_for if h.state(now) != "healthy" else None,
            "retry_in_s": round(h.retry_in(now), 3),
            "last_error": h.last_error,
        }


class StagePool:
    """A ``router.stage.Stage`` over the endpoints of one stage (see the module docstring)."""

    def __init__(
        self,
        config: StageConfig,
        clients: Sequence[Stage],
        rules: PoolConfig | None = None,
        *,
        gauges: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not clients:
            raise ValueError(f"stage {config.name}: a pool needs at least one endpoint")
        self.config = config
        self.name = config.name
        self.rules = rules or PoolConfig()
        self._clock = clock
        self.retry = self.rules.retry
        replicas = config.replicas()
        self.endpoints: list[Endpoint] = []
        for i, client in enumerate(clients):
            replica = replicas[i] if i < len(replicas) else None
            url = client.config.url
            capacity = replica.max_concurrency if replica is not None else config.max_concurrency
            ep = Endpoint(client, endpoint_label(url, f"{config.model}#{i}"), capacity, EndpointHealth(self.rules, clock))
            if url and config.dialect != "litellm":
                if config.dialect == "vllm":
                    ep.probe_url = url.removesuffix("/v1") + "/health"
                    if gauges:
                        ep.metrics_url = url.removesuffix("/v1") + "/metrics"
                else:
                    ep.probe_url = f"{url}/models"
                    key = client.config.api_key
                    ep.probe_headers = {"Authorization": f"Bearer {key}"} if key else {}
            self.endpoints.append(ep)
        self._gauge_ttl = GAUGE_TTL_PROBES * self.rules.probe_interval_s
        self._prober: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        for ep in self.endpoints:
            await ep.client.start()
        if any(ep.probe_url for ep in self.endpoints) and self.rules.probe_interval_s > 0:
            self._prober = asyncio.create_task(self._probe_loop(), name=f"probe-{self.name}")

    async def close(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober
            self._prober = None
        for ep in self.endpoints:
            await ep.client.close()

    # -- choosing an endpoint ----------------------------------------------------------------------
    def _pick(self, exclude: Endpoint | None = None) -> Endpoint | None:
        """Least outstanding requests over two random choices among the endpoints that take traffic."""
        eps = self.endpoints
        now = self._clock()
        if len(eps) == 1:
            ep = eps[0]
            return ep if ep is not exclude and ep.health.ejected_until <= now else None
        cands = [e for e in eps if e is not exclude and e.health.ejected_until <= now]
        if len(cands) <= 1:
            return cands[0] if cands else None
        a, b = cands if len(cands) == 2 else random.sample(cands, 2)
        la, lb = a.load(), b.load()
        if la == lb:
            return a if random.random() < 0.5 else b
        return a if la < lb else b

    def available(self) -> bool:
        """Some endpoint takes traffic now (the cascade leaves the stage out of a request otherwise)."""
        now = self._clock()
        return any(ep.health.ejected_until <= now for ep in self.endpoints)

    def idle(self) -> bool:
        """Some endpoint takes traffic now and has no call of this router in flight: background work (a shadow check,
        ``router.shadow``) may use it without queueing ahead of, or behind, a user's request."""
        now = self._clock()
        return any(ep.in_flight == 0 and ep.health.ejected_until <= now for ep in self.endpoints)

    def _unavailable(self) -> StageUnavailable:
        now = self._clock()
        parts = []
        for ep in self.endpoints:
            h = ep.health
            parts.append(f"{ep.label} ejected ({h.ejected_for}) for {h.retry_in(now):.1f} s more, last error: {h.last_error}")
        return StageUnavailable(self.name, "no healthy endpoint: " + "; ".join(parts))

    def _retry_on(self, failed: Endpoint, exc: BaseException) -> Endpoint | None:
        if not self.retry or not _retryable(exc):
            return None
        other = self._pick(failed)
        if other is not None:
            STAGE_RETRIES.labels(self.name, failure_kind(exc) if isinstance(exc, StageFailure) else "rate-limited").inc()
        return other

    # -- calls -----------------------------------------------------------------------------------------
    async def _attempt(self, ep: Endpoint, call: Callable[[Stage], Awaitable[T]]) -> T:
        queued = ep.would_queue()
        ep.in_flight += 1
        t0 = time.perf_counter()
        try:
            result = await call(ep.client)
        except StageNoCompletions:
            ep.answered()
            raise
        except StageFailure as exc:
            ep.failed(exc)
            raise
        except APIError:
            ep.answered()
            raise
        finally:
            ep.in_flight -= 1
        ep.succeeded(time.perf_counter() - t0, queued)
        return result

    async def _call(self, call: Callable[[Stage], Awaitable[T]]) -> T:
        ep = self._pick()
        if ep is None:
            raise self._unavailable()
        try:
            return await self._attempt(ep, call)
        except (StageFailure, APIError) as exc:
            retry = self._retry_on(ep, exc)
            if retry is None:
                raise
        return await self._attempt(retry, call)

    async def reply(self, body: dict[str, Any], top_k: int | None = None) -> StageReply:
        return await self._call(lambda c: c.reply(body, top_k))

    async def chat(self, body: dict[str, Any]) -> tuple[dict[str, Any], float]:
        return await self._call(lambda c: c.chat(body))

    async def complete(self, body: dict[str, Any], top_k: int | None = None) -> StageReply:
        """``/v1/completions`` on an endpoint (``router.stage.CompletionsStage``); a LiteLLM endpoint has none."""
        return await self._call(lambda c: completions_stage(c).complete(body, top_k))

    async def complete_stream(self, body: dict[str, Any], raw: bool = False) -> AsyncIterator[bytes]:
        return await self._stream(lambda c: completions_stage(c).complete_stream(body, raw))

    async def _open(self, ep: Endpoint, opener: Opener) -> AsyncIterator[bytes]:
        """Open a stream on ``ep``; it stays counted in flight until the stream is finished (``_PoolStream``)."""
        ep.in_flight += 1
        try:
            return await opener(ep.client)
        except StageNoCompletions:
            ep.in_flight -= 1
            ep.answered()
            raise
        except StageFailure as exc:
            ep.in_flight -= 1
            ep.failed(exc)
            raise
        except APIError:
            ep.in_flight -= 1
            ep.answered()
            raise
        except BaseException:
            ep.in_flight -= 1
            raise

    async def stream(self, body: dict[str, Any], raw: bool = False) -> AsyncIterator[bytes]:
        return await self._stream(lambda c: c.stream(body, raw))

    async def _stream(self, opener: Opener) -> AsyncIterator[bytes]:
        ep = self._pick()
        if ep is None:
            raise self._unavailable()
        queued = ep.would_queue()
        retried = False
        try:
            inner = await self._open(ep, opener)
        except (StageFailure, APIError) as exc:
            other = self._retry_on(ep, exc)
            if other is None:
                raise
            ep, queued, retried = other, other.would_queue(), True
            inner = await self._open(ep, opener)
        return _PoolStream(self, ep, inner, opener, queued, retried)

    # -- health ------------------------------------------------------------------------------------------
    async def _probe_one(self, ep: Endpoint) -> bool:
        """Probe ``ep`` (and read its queue gauges); whether it answered (True for an endpoint without a probe)."""
        if ep.probe_url is None or not isinstance(ep.client, StageClient):
            return True
        error = await probe(ep.client.probes, ep.probe_url, ep.probe_headers, self.rules.probe_timeout_s)
        if error is None:
            ep.health.probe_ok()
        else:
            ep.health.probe_failed(error)
        if ep.metrics_url is not None and error is None:
            gauges = await queue_gauges(ep.client.probes, ep.metrics_url, self.rules.probe_timeout_s)
            if gauges == "absent":
                ep.metrics_url = None  # not a vLLM server (our CPU server has no /metrics): stop asking
            elif gauges is not None:
                ep.gauges, ep.gauges_at = gauges, self._clock()
        return error is None

    async def probe_all(self) -> list[bool]:
        """Probe every endpoint now (also what ``/health?stages=true`` does); which answered."""
        return list(await asyncio.gather(*(self._probe_one(ep) for ep in self.endpoints)))

    async def _probe_loop(self) -> None:
        while True:
            with contextlib.suppress(Exception):  # a probe must never take the loop down; the next round tries again
                await self.probe_all()
            await asyncio.sleep(self.rules.probe_interval_s)

    async def healthy(self) -> bool:
        """Probe now: True when some endpoint takes traffic and answered its probe."""
        answered = await self.probe_all()
        now = self._clock()
        return any(ok and ep.health.available(now) for ep, ok in zip(self.endpoints, answered, strict=True))

    def state(self) -> dict[str, Any]:
        """Each endpoint's state, for ``/health``."""
        now = self._clock()
        endpoints = [ep.describe(now) for ep in self.endpoints]
        up = sum(e["state"] != "ejected" for e in endpoints)
        status: Literal["ok", "degraded", "unavailable"] = "ok" if up == len(endpoints) else ("degraded" if up else "unavailable")
        return {"status": status, "queue_delay_s": round(self.queue_delay_s(), 4), "endpoints": endpoints}

    def endpoint_rows(self) -> Iterator[EndpointRow]:
        now = self._clock()
        for ep in self.endpoints:
            yield EndpointRow(self.name, ep.label, ep.health.available(now), ep.in_flight, ep.latency_s, ep.requests, ep.failures,
                              ep.health.total_ejections)  # fmt: skip

    # -- load ----------------------------------------------------------------------------------------------
    def queue_delay_s(self) -> float:
        """Expected queueing delay of a request sent now: that of the least-waiting endpoint taking traffic."""
        now = self._clock()
        best = math.inf
        for ep in self.endpoints:
            if ep.health.ejected_until <= now:
                best = min(best, ep.expected_wait(now, self._gauge_ttl))
        return 0.0 if best == math.inf else best


class _PoolStream:
    """A stage stream that keeps its endpoint's in-flight count and verdict, and retries once on another endpoint
    when it breaks before yielding anything (nothing has reached the client yet)."""

    __slots__ = ("_done", "_ep", "_inner", "_opener", "_pool", "_queued", "_retried", "_sent", "_t0")

    def __init__(self, pool: StagePool, ep: Endpoint, inner: AsyncIterator[bytes], opener: Opener, queued: bool, retried: bool) -> None:
        self._pool, self._ep, self._inner, self._opener = pool, ep, inner, opener
        self._queued, self._retried = queued, retried
        self._sent = False
        self._done = False
        self._t0 = time.perf_counter()

    def __aiter__(self) -> _PoolStream:
        return self

    def _finish(self, exc: StageFailure | None, verdict: bool = True) -> None:
        if self._done:
            return
        self._done = True
        ep = self._ep
        ep.in_flight -= 1
        if not verdict:
            return
        if exc is None:
            ep.succeeded(time.perf_counter() - self._t0, self._queued)
        else:
            ep.failed(exc)

    async def __anext__(self) -> bytes:
        while True:
            try:
                item = await self._inner.__anext__()
            except StopAsyncIteration:
                self._finish(None)
                raise
            except StageFailure as exc:
                self._finish(exc)
                other = None if self._sent or self._retried else self._pool._retry_on(self._ep, exc)
                if other is None:
                    raise
                self._retried = True
                self._queued = other.would_queue()
                self._inner = await self._pool._open(other, self._opener)
                self._ep, self._done, self._t0 = other, False, time.perf_counter()
                continue
            except BaseException:  # cancelled (the client went away): no verdict on the endpoint
                self._finish(None, verdict=False)
                raise
            self._sent = True
            return item

    async def aclose(self) -> None:
        close = getattr(self._inner, "aclose", None)
        if close is not None:
            await close()
        self._finish(None, verdict=False)

    def __del__(self) -> None:
        # a stream dropped unread (the client left before the body started) must not stay counted in flight
        if not self._done:
            self._done = True
            self._ep.in_flight -= 1


# -- building the ladder ---------------------------------------------------------------------------------------


def endpoint_clients(config: StageConfig) -> list[Stage]:
    """One client per endpoint of ``config``, each keyed with its own (resolved) secret."""
    clients: list[Stage] = []
    for i, replica in enumerate(config.replicas()):
        where = f"stages[{config.name}].endpoints[{i}]" if config.endpoints else f"stages[{config.name}]"
        key = read_key(replica.api_key, where)
        child = config.model_copy(update={"url": replica.url, "api_key": key, "endpoints": []})
        clients.append(LiteLLMStage(child) if config.dialect == "litellm" else StageClient(child))
    return clients


def build_ladder(settings: Settings) -> list[StagePool]:
    """A pool per configured stage, in order."""
    gauges = settings.cascade.load_aware and settings.pool.queue_gauges
    return [StagePool(s, endpoint_clients(s), settings.pool, gauges=gauges) for s in settings.stages]


def stage_available(stage: Stage) -> bool:
    """Can ``stage`` take a request now? Always, for a stage that is not a pool (a single client, a test's fake)."""
    return stage.available() if isinstance(stage, StagePool) else True


def queue_delay(stage: Stage) -> float:
    """``stage``'s expected queueing delay in seconds (0 for a stage that is not a pool)."""
    return stage.queue_delay_s() if isinstance(stage, StagePool) else 0.0
