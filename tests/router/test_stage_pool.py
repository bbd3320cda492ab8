"""Fault tests of the stage pool: each ejection and retry rule against stub servers.

Stubs are right here (and only here and in the overhead benchmarks): a real model
server cannot be made to refuse connections, answer 500, hang, drop the
connection mid-request, answer garbage, rate-limit or break a stream before its
first event on demand. ``servers/stub_server.py`` does each of those as real HTTP
over real sockets, and changes mode while it runs (``POST /stub/mode``), so these
tests drive the real ``StageClient``s and ``StagePool`` through real failures.
The same behaviour against two real CPU stage servers is in ``test_replicas_live.py``;
the rules without servers are in ``test_stage_pool_rules.py``.

Time is the test's, not the machine's: every pool here runs on the fake ``Clock``
of ``test_stage_pool_rules.py``, frozen unless a test moves it, so a cool-down
ends exactly when the test says and never because a loaded machine was slow.
Probes are sent by the test (``probe_all``) where their outcome is checked, and
where the background probe loop itself is under test the test waits for the state
it expects (``wait_for``), never for a fixed time. What is still real time is
the network: stage timeouts, and a stub's service time where a queue must build.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
import pytest

from common.errors import APIError
from common.settings import PoolConfig, Settings, StageConfig
from router.stage import Stage, StageBadResponse, StageFailure, StageTimeout, StageUnavailable
from router.stage_pool import StagePool, endpoint_clients
from tests.clock import Clock
from tests.conftest import ROOT, OwnProcess, free_port, wait_http
from tests.router.inprocess import app_client

pytestmark = pytest.mark.anyio

BODY = {"messages": [{"role": "user", "content": "What is 2+2?"}], "max_tokens": 8, "temperature": 0}
ANSWER = "The answer is 4."
RULES = PoolConfig(eject_after=3, eject_base_s=0.5, eject_max_s=4.0, probe_interval_s=0)
WAIT_S = 30.0  # how long a test waits for a state it expects from real processes (it goes on as soon as it holds)


class Stub(OwnProcess):
    """One ``servers.stub_server`` process on its own port; its mode can be changed while it runs."""

    grace_s = 3

    def __init__(self, mode: str = "instant", port: int | None = None, *extra: str) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.start(mode)

    def start(self, mode: str = "instant") -> None:
        cmd = [sys.executable, "-m", "servers.stub_server", "--port", str(self.port), "--mode", mode, "--model", "stub", *self.extra]
        self.proc = subprocess.Popen(cmd, cwd=ROOT)
        wait_http(f"http://127.0.0.1:{self.port}/health", 30, self.proc)

    def mode(self, mode: str) -> None:
        httpx.post(f"http://127.0.0.1:{self.port}/stub/mode", json={"mode": mode}).raise_for_status()

    def stats(self) -> dict[str, Any]:
        data: dict[str, Any] = httpx.get(f"http://127.0.0.1:{self.port}/stub/stats").json()
        return data

    def requests(self) -> int:
        return int(self.stats()["requests"])


@pytest.fixture(scope="module")
def stubs() -> Iterator[list[Stub]]:
    made = [Stub() for _ in range(3)]
    yield made
    for s in made:
        s.stop()


@pytest.fixture()
def a_b(stubs: list[Stub]) -> list[Stub]:
    """Two stubs answering normally at the start of a test."""
    for s in stubs:
        s.mode("instant")
    return stubs[:2]


def stage(urls: list[str], timeout_s: float = 5.0, **kw: Any) -> StageConfig:
    return StageConfig(name="s", model="stub", prices={"cost": {"request": 1.0}}, endpoints=[{"url": u} for u in urls], timeout_s=timeout_s,  # type: ignore[misc]
                       connect_timeout_s=1.0, **kw)  # fmt: skip


@asynccontextmanager
async def pool_of(
    config: StageConfig,
    rules: PoolConfig = RULES,
    gauges: bool = False,
    clock: Clock | None = None,
    clients: Sequence[Stage] | None = None,
) -> AsyncIterator[StagePool]:
    """A started pool on a fake clock (a new, frozen one unless given)."""
    pool = StagePool(config, clients or endpoint_clients(config), rules, gauges=gauges, clock=clock or Clock())
    await pool.start()
    try:
        yield pool
    finally:
        await pool.close()


async def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    """Wait until ``condition()`` holds (a state real processes reach in their own time); fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:g} s: {what}")
        await asyncio.sleep(0.02)


def fails_without_suspending(call: Coroutine[Any, Any, Any]) -> BaseException:
    """Run ``call`` up to its first suspension: it must raise before any, i.e. without waiting for anything (no
    network, no timer). "At once", without a wall-clock window a loaded machine could miss."""
    try:
        call.send(None)
    except StopIteration:
        raise AssertionError("it returned instead of failing") from None
    except BaseException as exc:  # returned: the caller checks what it is
        return exc
    call.close()
    raise AssertionError("it suspended (awaited the network or a timer) before failing")


async def until_ejected(pool: StagePool, index: int, limit: int = 200) -> int:
    """Send requests until endpoint ``index`` is ejected; each must succeed (retried where it failed). Returns how many."""
    for n in range(1, limit + 1):
        reply = await pool.reply(BODY, top_k=5)
        assert reply.data["choices"][0]["message"]["content"] == ANSWER
        if pool.endpoints[index].health.state() == "ejected":
            return n
    raise AssertionError(f"endpoint {index} was never ejected: {pool.state()}")


# -- passive outlier detection: each failure kind ejects after eject_after in a row, and the retry hides it ----------


@pytest.mark.parametrize(
    ("mode", "kind"), [("refused", "connect"), ("error500", "error"), ("garbage", "error"), ("die", "error"), ("hang", "timeout")]
)
async def test_each_failure_kind_is_retried_and_ejects_after_three_in_a_row(a_b: list[Stub], mode: str, kind: str) -> None:
    bad, good = a_b
    bad_url = f"http://127.0.0.1:{free_port()}/v1" if mode == "refused" else bad.url
    if mode != "refused":
        bad.mode(mode)
    before = good.requests()
    # the hanging endpoint times out after 0.5 s; the good one keeps the default timeout, so that a loaded machine
    # slowing its answers down cannot make it time out too. The clock is frozen: the ejection's cool-down cannot run
    # out during the requests that follow it (it did once with a real clock: a half-open probe, a 4th failure)
    config = stage([bad_url, good.url])
    clients = [endpoint_clients(stage([bad_url], timeout_s=0.5))[0], endpoint_clients(config)[1]]
    async with pool_of(config, clients=clients) as pool:
        n = await until_ejected(pool, 0)
        ep = pool.endpoints[0]
        assert ep.failures == RULES.eject_after and ep.health.ejected_for == kind
        assert ep.health.retry_in() == RULES.eject_base_s
        assert pool.endpoints[1].failures == 0 and good.requests() - before == n  # every request was answered by the good one
        for _ in range(5):  # ejected: no more traffic to it, no more retries
            await pool.reply(BODY)
        assert ep.failures == RULES.eject_after and good.requests() - before == n + 5
        state = pool.state()
        assert state["status"] == "degraded" and state["endpoints"][0]["state"] == "ejected" and state["endpoints"][0]["last_error"]


async def test_a_client_error_is_neither_retried_nor_counted(a_b: list[Stub]) -> None:
    bad, good = a_b
    bad.mode("error400")
    before = bad.requests()
    async with pool_of(stage([bad.url, good.url])) as pool:
        rejected = 0
        for _ in range(20):
            try:
                await pool.reply(BODY)
            except APIError as exc:
                assert exc.status == 400 and exc.param == "messages"
                rejected += 1
        assert rejected == bad.requests() - before > 0  # each 400 reached the client, none was retried
        assert pool.endpoints[0].health.state() == "healthy" and pool.endpoints[0].failures == 0


async def test_a_rate_limited_endpoint_is_retried_elsewhere_without_ejecting_it(a_b: list[Stub]) -> None:
    limited, good = a_b
    limited.mode("error429")
    async with pool_of(stage([limited.url, good.url])) as pool:
        for _ in range(20):
            assert (await pool.reply(BODY)).data["choices"][0]["message"]["content"] == ANSWER
        assert limited.requests() > 0 and pool.endpoints[0].health.state() == "healthy"


async def test_retried_once_only(a_b: list[Stub]) -> None:
    a, b = a_b
    a.mode("error500")
    b.mode("error500")
    before = a.requests() + b.requests()
    async with pool_of(stage([a.url, b.url])) as pool:
        with pytest.raises(StageBadResponse, match="HTTP 500"):
            await pool.reply(BODY)
        assert a.requests() + b.requests() - before == 2


async def test_a_single_endpoint_has_nowhere_to_retry(a_b: list[Stub]) -> None:
    only = a_b[0]
    before = only.requests()
    only.mode("hang")
    async with pool_of(stage([only.url], timeout_s=0.3)) as pool:
        with pytest.raises(StageTimeout):
            await pool.reply(BODY)
        ep = pool.endpoints[0]
        assert ep.requests == ep.failures == 1  # one attempt: not retried on the endpoint that just failed
        await wait_for(lambda: only.requests() - before == 1, "the attempt reached the stub")  # a real one


# -- cool-down, probation, probes ----------------------------------------------------------------------------------------


@asynccontextmanager
async def ejected(a_b: list[Stub]) -> AsyncIterator[tuple[StagePool, Clock]]:
    """A pool over both stubs, on a frozen clock of its own, whose first endpoint answered 500 until it was ejected."""
    flaky, good = a_b
    flaky.mode("error500")
    clock = Clock()
    async with pool_of(stage([flaky.url, good.url]), clock=clock) as pool:
        await until_ejected(pool, 0)
        yield pool, clock


async def test_an_ejected_endpoint_comes_back_by_itself_after_its_cooldown(a_b: list[Stub]) -> None:
    flaky = a_b[0]
    async with ejected(a_b) as (pool, clock):
        ep = pool.endpoints[0]
        ends = clock.t + RULES.eject_base_s
        assert ep.health.retry_in() == RULES.eject_base_s
        flaky.mode("instant")
        clock.t = ends - 0.01  # the cool-down is not over: still no traffic
        seen = flaky.requests()
        for _ in range(10):
            await pool.reply(BODY)
        assert ep.health.state() == "ejected" and ep.health.retry_in() == pytest.approx(0.01) and flaky.requests() == seen
        clock.t = ends  # over: on probation, it takes traffic again
        assert ep.health.state() == "probation" and ep.health.retry_in() == 0.0
        for _ in range(20):
            await pool.reply(BODY)
        assert flaky.requests() > seen and ep.health.state() == "healthy" and ep.health.ejections == 0


async def test_failing_again_on_probation_doubles_the_cooldown(a_b: list[Stub]) -> None:
    async with ejected(a_b) as (pool, clock):
        clock.t += RULES.eject_base_s
        ep = pool.endpoints[0]
        assert ep.health.state() == "probation"
        for _ in range(50):  # until it gets a request on probation (and fails it: one failure is enough)
            await pool.reply(BODY)
            if ep.health.state() == "ejected":
                break
        assert ep.health.ejections == 2 and ep.health.retry_in() == 2 * RULES.eject_base_s
        assert ep.failures == RULES.eject_after + 1


async def test_probes_eject_a_dead_idle_endpoint_and_bring_it_back_when_it_restarts() -> None:
    """No traffic at all: the background probes alone see the server die and come back (a connect ejection ends at
    the first successful probe, without waiting out its cool-down: on the frozen clock it could not end otherwise)."""
    stub = Stub()
    rules = PoolConfig(eject_after=2, eject_base_s=30.0, eject_max_s=60.0, probe_interval_s=0.1, probe_timeout_s=0.5)
    try:
        async with pool_of(stage([stub.url, f"http://127.0.0.1:{free_port()}/v1"]), rules) as pool:
            live, dead = pool.endpoints
            await wait_for(lambda: dead.health.state() == "ejected", "the probes eject the endpoint nothing listens on")
            assert dead.health.ejected_for == "probe" and dead.failures == 0  # no request paid for it
            assert live.health.state() == "healthy" and live.health.consecutive == 0
            stub.stop()
            await wait_for(lambda: live.health.state() == "ejected", "the probes eject the stopped server")
            assert live.health.ejected_for == "probe" and not pool.available()
            stub.start()
            await wait_for(pool.available, "a probe brings the restarted server back")
            assert live.health.state() == "probation" and dead.health.state() == "ejected"  # long before the 30 s
            assert (await pool.reply(BODY)).data["choices"][0]["message"]["content"] == ANSWER
            assert live.health.state() == "healthy"
    finally:
        stub.stop()


async def test_no_endpoint_taking_traffic_fails_at_once_without_a_network_call(a_b: list[Stub]) -> None:
    a, b = a_b
    a.mode("error500")
    b.mode("error500")
    async with pool_of(stage([a.url, b.url])) as pool:
        while pool.available():
            with pytest.raises(StageFailure):
                await pool.reply(BODY)
        seen = a.requests() + b.requests()
        exc = fails_without_suspending(pool.reply(BODY))  # at once: before awaiting anything
        assert isinstance(exc, StageUnavailable) and "no healthy endpoint" in str(exc), exc
        assert isinstance(fails_without_suspending(pool.stream(BODY)), StageUnavailable)
        with pytest.raises(StageUnavailable):  # and the same when awaited as the cascade does
            await pool.reply(BODY)
        assert a.requests() + b.requests() == seen  # no request reached a server
        assert exc.status == 503 and "HTTP 500" in str(exc)


# -- streams ---------------------------------------------------------------------------------------------------------


async def _text(events: AsyncIterator[bytes]) -> str:
    out = []
    async for payload in events:
        chunk = orjson.loads(payload)
        out += [c["delta"].get("content") or "" for c in chunk.get("choices", ())]
    return "".join(out)


@pytest.mark.parametrize("mode", ["die", "die-after-headers", "error500"])
async def test_a_stream_that_fails_before_its_first_event_is_retried(a_b: list[Stub], mode: str) -> None:
    bad, good = a_b
    bad.mode(mode)
    before = bad.requests()
    async with pool_of(stage([bad.url, good.url])) as pool:
        for _ in range(12):
            assert await _text(await pool.stream({**BODY, "stream": True})) == ANSWER
        assert bad.requests() > before and pool.endpoints[0].failures == bad.requests() - before
        assert all(ep.in_flight == 0 for ep in pool.endpoints)


async def test_a_stream_that_breaks_after_its_first_event_is_not_retried(a_b: list[Stub]) -> None:
    """Something has reached the client: another endpoint's answer cannot be spliced in. The failure ends the stream."""
    only = a_b[0]
    only.mode("die-mid-stream")
    async with pool_of(stage([only.url, a_b[1].url])) as pool:
        pool.endpoints[1].health.eject("error")  # force the breaking endpoint
        events = await pool.stream({**BODY, "stream": True})
        first = await events.__anext__()
        assert b'"role":"assistant"' in first
        with pytest.raises(StageBadResponse, match="stream broken"):
            await events.__anext__()
        assert pool.endpoints[0].failures == 1 and pool.endpoints[0].in_flight == 0


async def test_a_stream_dropped_unread_is_not_left_in_flight(a_b: list[Stub]) -> None:
    async with pool_of(stage([a_b[0].url])) as pool:
        events = await pool.stream({**BODY, "stream": True})
        assert pool.endpoints[0].in_flight == 1
        del events
        assert pool.endpoints[0].in_flight == 0


# -- balance and load ------------------------------------------------------------------------------------------------


async def test_concurrent_requests_spread_over_the_endpoints() -> None:
    slow = [Stub("instant", None, "--delay-ms", "50") for _ in range(2)]
    try:
        async with pool_of(stage([s.url for s in slow])) as pool:
            before = [s.requests() for s in slow]
            await asyncio.gather(*(pool.reply(BODY) for _ in range(40)))
            counts = [s.requests() - b for s, b in zip(slow, before, strict=True)]
            assert sum(counts) == 40 and min(counts) >= 15  # least outstanding: close to even under concurrency
    finally:
        for s in slow:
            s.stop()


async def test_queue_delay_from_in_flight_counts_and_vllm_gauges() -> None:
    """A stub that serves one request at a time in 1 s: with 4 in flight a new one waits for 4 service times (3 queued,
    and the one running). Its /metrics page has vLLM's queue gauges, read by a probe. The probes are the test's own
    (no background loop): the gauges are read exactly when the test says. The one real-time condition left is that the
    4 requests reach the stub within the first one's 1 s of service, which is what makes them queue there."""
    service_s = 1.0
    busy = Stub("instant", None, "--delay-ms", str(service_s * 1e3), "--concurrency", "1")
    rules = PoolConfig(probe_interval_s=0, probe_timeout_s=5.0)
    try:
        async with pool_of(stage([busy.url], max_concurrency=1), rules, gauges=True) as pool:
            ep = pool.endpoints[0]
            await pool.reply(BODY)  # a service-time estimate
            assert ep.latency_s is not None and ep.latency_s >= 0.9 * service_s and pool.queue_delay_s() == 0.0
            await pool.probe_all()
            assert ep.gauges == (0.0, 0.0)
            tasks = [asyncio.create_task(pool.reply(BODY)) for _ in range(4)]
            await wait_for(lambda: ep.in_flight == 4, "4 requests in flight")
            assert pool.queue_delay_s() == pytest.approx(4 * ep.latency_s)  # from the router's own counts
            gauges: list[tuple[float, float] | None] = []

            def queued_at_the_stub() -> bool:
                assert not any(t.done() for t in tasks), f"one was answered before all 4 reached the stub; gauges read {gauges}"
                return ep.gauges == (1.0, 3.0)

            async def probe_until_queued() -> None:
                while not queued_at_the_stub():
                    await pool.probe_all()
                    gauges.append(ep.gauges)

            await asyncio.wait_for(probe_until_queued(), WAIT_S)  # 1 running, 3 waiting at the stub
            assert ep.in_flight == 4 and pool.queue_delay_s() == pytest.approx(4 * ep.latency_s)
            await asyncio.gather(*tasks)
            await pool.probe_all()
            assert ep.in_flight == 0 and ep.gauges == (0.0, 0.0) and pool.queue_delay_s() == 0.0
    finally:
        busy.stop()


async def test_gauges_are_not_asked_again_of_a_server_without_them(a_b: list[Stub]) -> None:
    async with pool_of(stage([a_b[0].url]), PoolConfig(probe_interval_s=0), gauges=True) as pool:
        assert await pool.probe_all() == [True]
        ep = pool.endpoints[0]
        assert ep.metrics_url is not None and ep.gauges == (0.0, 0.0)  # the stub has them: read, and asked again
    no_metrics = StageConfig(name="s", model="m", url="http://127.0.0.1:1/v1", prices={"cost": {"request": 1.0}}, dialect="openai")
    assert StagePool(no_metrics, endpoint_clients(no_metrics), gauges=True).endpoints[0].metrics_url is None  # not vLLM


# -- through the router: the cascade skips a stage with no healthy endpoint -------------------------------------------


def settings_for(stage0: list[str], stage1: list[str], **extra: Any) -> Settings:
    """Stubs s0 (price 1, prior 0.3) and s1 (2, 0.95) on the given endpoints; ``extra``: ``stages`` (one dict each, added
    to that stage), ``cascade`` (added to the policy), or any other top-level section."""
    stages = [
        {"name": name, "model": "stub", "prices": {"cost": {"request": price}}, "prior": prior, "endpoints": [{"url": u} for u in urls],
         "timeout_s": 2.0}
        for name, price, prior, urls in (("s0", 1.0, 0.3, stage0), ("s1", 2.0, 0.95, stage1))
    ]  # fmt: skip
    for s, more in zip(stages, extra.pop("stages", [{}, {}]), strict=True):
        s.update(more)
    return Settings.model_validate(
        {"tenancy": {"auth": "open"}, "cascade": {"skip_by_prior": False, **extra.pop("cascade", {})},
         "pool": {"eject_after": 2, "eject_base_s": 30.0, "probe_interval_s": 0}, "stages": stages, **extra}
    )  # fmt: skip


@asynccontextmanager
async def router(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app over pools on a frozen fake clock: an ejection lasts as long as the test."""
    clock = Clock()
    pools = [StagePool(s, endpoint_clients(s), settings.pool, clock=clock) for s in settings.stages]
    async with app_client(settings, stages=pools) as client:
        yield client


CHAT = {"model": "cascade", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "cascade_lambda": 1e6}


async def test_the_cascade_skips_a_stage_without_a_healthy_endpoint_and_503s_when_nothing_is_left(a_b: list[Stub]) -> None:
    dead = [f"http://127.0.0.1:{free_port()}/v1" for _ in range(2)]

    async def s0_attempts() -> list[int]:
        """Requests the router sent to each s0 endpoint (an attempt on an ejected one would count)."""
        return [e["requests"] for e in (await client.get("/health")).json()["endpoints"]["s0"]["endpoints"]]

    async with router(settings_for(dead, [a_b[0].url])) as client:
        first = await client.post("/v1/chat/completions", json=CHAT)  # both s0 endpoints refuse: s1 answers
        assert first.status_code == 200 and first.headers["x-cascade-stage"] == "s1", first.text
        await client.post("/v1/chat/completions", json=CHAT)  # the second failure in a row ejects both
        attempts = await s0_attempts()
        assert attempts == [2, 2]
        resp = await client.post("/v1/chat/completions", json=CHAT)
        assert resp.status_code == 200 and resp.headers["x-cascade-skipped"] == "s0:unavailable"
        assert resp.headers["x-cascade-path"] == "s1" and await s0_attempts() == attempts  # skipped without trying it
        only_s0 = await client.post("/v1/chat/completions", json={**CHAT, "cascade_max_stage": 0})
        assert only_s0.status_code == 503 and await s0_attempts() == attempts  # a 503 without a network call
        err = only_s0.json()["error"]
        assert err["type"] == "upstream_error" and "no healthy endpoint" in err["message"]
        plain = {k: v for k, v in CHAT.items() if k != "cascade_lambda"}
        passthrough = await client.post("/v1/chat/completions", json={**plain, "model": "s0"})
        assert passthrough.status_code == 503 and await s0_attempts() == attempts
        health = (await client.get("/health")).json()
        assert health["endpoints"]["s0"]["status"] == "unavailable" and health["endpoints"]["s1"]["status"] == "ok"
        assert [e["state"] for e in health["endpoints"]["s0"]["endpoints"]] == ["ejected", "ejected"]
        metrics = (await client.get("/metrics")).text
        assert f'adaptive_sd_endpoint_up{{endpoint="{dead[0]}",stage="s0"}} 0.0' in metrics
        assert f'adaptive_sd_endpoint_up{{endpoint="{a_b[0].url}",stage="s1"}} 1.0' in metrics
        assert 'adaptive_sd_endpoint_requests_total{endpoint="' in metrics and "adaptive_sd_stage_queue_delay_seconds" in metrics


async def test_health_with_stages_probes_every_endpoint(a_b: list[Stub]) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    async with router(settings_for([a_b[0].url, dead], [a_b[1].url])) as client:
        body = (await client.get("/health", params={"stages": "true"})).json()
        assert body["stages"] == {"s0": "ok", "s1": "ok"}  # s0 still has a live endpoint
        s0 = body["endpoints"]["s0"]["endpoints"]
        assert s0[0]["state"] == "healthy" and s0[1]["consecutive_failures"] == 1 and "probe" in s0[1]["last_error"]


# -- stages without logprobs: judged from text features only ---------------------------------------------------------


async def test_an_answer_without_logprobs_is_judged_by_its_prior_not_as_an_empty_answer(a_b: list[Stub]) -> None:
    """The stub in ``no-logprobs`` mode answers as a provider that ignores the request for logprobs. Read as features,
    that answer was an empty one: p̂ ≈ 0.02 under the baseline predictor, so the stage was escalated whatever it
    said. Judged from text features only, its p̂ is its prior (0.8 here), and λ decides as for any p̂."""
    lower, upper = a_b
    lower.mode("no-logprobs")
    settings = settings_for([lower.url], [upper.url], stages=[{"prior": 0.8}, {}], cascade={"prior_strength": None})
    async with router(settings) as client:
        low_lambda = await client.post("/v1/chat/completions", json={**CHAT, "cascade_lambda": 5.0})
        assert low_lambda.status_code == 200, low_lambda.text
        assert low_lambda.headers["x-cascade-p"] == "0.8000" and low_lambda.headers["x-cascade-stage"] == "s0"
        high_lambda = await client.post("/v1/chat/completions", json={**CHAT, "cascade_lambda": 100.0})
        assert high_lambda.headers["x-cascade-path"] == "s0,s1"  # 100·0.2 = 20 > cost 2 + 100·0.05 = 7


async def test_a_stage_configured_without_logprobs_is_never_asked_for_them(a_b: list[Stub]) -> None:
    lower, upper = a_b
    settings = settings_for([lower.url], [upper.url], stages=[{"prior": 0.8, "logprobs": False}, {"logprobs": False}])
    async with router(settings) as client:
        resp = await client.post("/v1/chat/completions", json={**CHAT, "cascade_lambda": 5.0, "logprobs": True, "top_logprobs": 2})
        assert resp.status_code == 200 and resp.headers["x-cascade-p"] == "0.8000"
        sent = orjson.loads(lower.stats()["last_body"])
        assert "logprobs" not in sent and "top_logprobs" not in sent
        streamed = await client.post("/v1/chat/completions", json={**CHAT, "stream": True, "cascade_max_stage": "s1", "model": "cascade",
                                                                    "cascade_lambda": 1e6})  # fmt: skip
        assert streamed.status_code == 200
        sent = orjson.loads(upper.stats()["last_body"])
        assert sent["stream"] is True and "logprobs" not in sent
