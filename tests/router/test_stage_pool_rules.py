"""The pool's rules without servers: outlier detection on a fake clock, endpoint choice, the queueing estimate,
vLLM gauge parsing, the load term of the stopping rule, and the endpoint settings (replicas, keys from the
environment or files). The same rules against real (stub) servers are in ``test_stage_pool.py``."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from common.settings import ConfigError, PoolConfig, Settings, StageConfig, read_key
from router.health import EndpointHealth, parse_queue_gauges
from router.policy import StoppingPolicy, loaded_costs
from router.stage import StageNoCompletions
from router.stage_pool import Endpoint, StagePool, endpoint_clients, endpoint_label
from tests.clock import Clock
from tests.router.fake_stage import FakeStage, Script

RULES = PoolConfig(eject_after=3, eject_base_s=2.0, eject_max_s=10.0)


def test_consecutive_failures_eject_and_a_success_resets_the_count() -> None:
    clock = Clock()
    h = EndpointHealth(RULES, clock)
    assert not h.failure("error", "5xx") and not h.failure("error", "5xx")
    h.success()
    assert h.consecutive == 0
    assert not h.failure("timeout", "t") and not h.failure("timeout", "t")
    assert h.failure("timeout", "t")  # the third in a row
    assert h.state() == "ejected" and not h.available(clock.t) and h.retry_in() == pytest.approx(2.0)
    assert h.ejected_for == "timeout" and h.last_error == "t"


def test_cooldown_doubles_with_each_ejection_in_a_row_up_to_the_maximum() -> None:
    clock = Clock()
    h = EndpointHealth(RULES, clock)
    cooldowns = []
    for _ in range(5):
        for _ in range(RULES.eject_after if h.ejections == 0 else 1):  # on probation, one failure is enough
            h.failure("connect", "refused")
        cooldowns.append(h.retry_in())
        clock.t += h.retry_in()  # wait it out: probation
        assert h.state() == "probation" and h.available(clock.t)
    assert cooldowns == [2.0, 4.0, 8.0, 10.0, 10.0]
    h.success()  # the first success on probation: healthy, and the doubling starts over
    assert h.state() == "healthy" and h.ejections == 0
    for _ in range(3):
        h.failure("error", "x")
    assert h.retry_in() == 2.0


def test_a_failure_reported_while_ejected_does_not_extend_the_ejection() -> None:
    clock = Clock()
    h = EndpointHealth(RULES, clock)
    for _ in range(3):
        h.failure("error", "x")
    until = h.ejected_until
    assert not h.failure("error", "late reply of a request sent before the ejection")
    assert h.ejected_until == until and h.ejections == 1


def test_a_probe_ends_an_ejection_for_unreachability_but_not_one_for_bad_answers() -> None:
    clock = Clock()
    unreachable, failing = EndpointHealth(RULES, clock), EndpointHealth(RULES, clock)
    for _ in range(3):
        unreachable.failure("connect", "refused")
        failing.failure("error", "HTTP 500")
    unreachable.probe_ok()
    failing.probe_ok()
    assert unreachable.state() == "probation"  # back at once: its server answers again
    assert failing.state() == "ejected"  # /health is what a server answering 500s still answers


def test_probe_failures_count_like_request_failures() -> None:
    clock = Clock()
    h = EndpointHealth(RULES, clock)
    for _ in range(3):
        h.probe_failed("probe: refused")
    assert h.state() == "ejected" and h.ejected_for == "probe"
    h.probe_ok()
    assert h.state() == "probation"


def _pool(n: int, clock: Clock, **stage: Any) -> StagePool:
    urls = [f"http://127.0.0.1:{9000 + i}/v1" for i in range(n)]
    config = StageConfig(name="s", model="m", prices={"cost": {"request": 1.0}}, endpoints=[{"url": u} for u in urls], **stage)  # type: ignore[arg-type]
    clients = [FakeStage(config.model_copy(update={"url": u}), Script()) for u in urls]
    return StagePool(config, clients, RULES, clock=clock)


def test_least_outstanding_of_two_choices() -> None:
    clock = Clock()
    pool = _pool(2, clock)
    a, b = pool.endpoints
    a.in_flight, b.in_flight = 3, 1
    assert all(pool._pick() is b for _ in range(50))
    b.in_flight = 3
    picks = Counter(pool._pick() is a for _ in range(400))
    assert 120 < picks[True] < 280  # ties go either way


def test_power_of_two_choices_among_many_never_picks_the_most_loaded() -> None:
    clock = Clock()
    pool = _pool(4, clock)
    for i, ep in enumerate(pool.endpoints):
        ep.in_flight = i
    picks = Counter(pool.endpoints.index(pool._pick()) for _ in range(2000))  # type: ignore[arg-type]
    assert picks[3] == 0 and picks[0] > picks[1] > picks[2] > 0


def test_ejected_endpoints_take_no_traffic_and_none_left_is_unavailable_at_once() -> None:
    clock = Clock()
    pool = _pool(2, clock)
    a, b = pool.endpoints
    for _ in range(3):
        a.health.failure("connect", "refused")
    assert all(pool._pick() is b for _ in range(20)) and pool._pick(exclude=b) is None
    for _ in range(3):
        b.health.failure("error", "HTTP 500")
    assert not pool.available() and pool._pick() is None
    exc = pool._unavailable()
    assert exc.status == 503 and "no healthy endpoint" in str(exc) and "127.0.0.1:9000" in str(exc) and "refused" in str(exc)
    clock.t += 2.0
    assert pool.available()


def test_capacity_weights_the_choice() -> None:
    clock = Clock()
    pool = _pool(2, clock)
    a, b = pool.endpoints
    a.capacity, b.capacity = 8, 1
    a.in_flight, b.in_flight = 4, 1  # a is half full, b is full
    assert all(pool._pick() is a for _ in range(20))


def _endpoint(capacity: int | None, in_flight: int, latency: float | None) -> Endpoint:
    client = FakeStage(StageConfig(name="s", model="m", url="http://h:1/v1", prices={"cost": {"request": 1.0}}), Script())
    ep = Endpoint(client, "h", capacity, EndpointHealth(RULES))
    ep.in_flight, ep.latency_s = in_flight, latency
    return ep


def test_expected_wait_from_in_flight_counts() -> None:
    assert _endpoint(2, 1, 0.2).expected_wait(0.0, 10.0) == 0.0  # room left
    assert _endpoint(2, 2, 0.2).expected_wait(0.0, 10.0) == pytest.approx(0.1)  # one of two must finish first
    assert _endpoint(2, 5, 0.2).expected_wait(0.0, 10.0) == pytest.approx(0.4)
    assert _endpoint(None, 50, 0.2).expected_wait(0.0, 10.0) == 0.0  # no capacity, no gauges: nothing to go on
    assert _endpoint(2, 5, None).expected_wait(0.0, 10.0) == 0.0  # no service time yet


def test_expected_wait_from_vllm_gauges_when_fresh() -> None:
    ep = _endpoint(None, 0, 0.5)
    ep.gauges, ep.gauges_at = (4.0, 3.0), 0.0  # 4 running, 3 waiting (other clients' load)
    assert ep.expected_wait(1.0, 10.0) == pytest.approx(4 * 0.5 / 4)
    assert ep.expected_wait(11.0, 10.0) == 0.0  # stale


def test_the_stage_delay_is_its_least_waiting_endpoint_that_takes_traffic() -> None:
    clock = Clock()
    pool = _pool(2, clock, max_concurrency=1)
    a, b = pool.endpoints
    a.latency_s = b.latency_s = 1.0
    a.in_flight, b.in_flight = 3, 2
    assert pool.queue_delay_s() == pytest.approx(2.0)
    for _ in range(3):
        b.health.failure("error", "x")
    assert pool.queue_delay_s() == pytest.approx(3.0)


def test_vllm_gauges_are_summed_over_label_sets() -> None:
    text = (
        b"# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
        b"# TYPE vllm:num_requests_running gauge\n"
        b'vllm:num_requests_running{engine="0",model_name="m"} 3.0\n'
        b'vllm:num_requests_running{engine="1",model_name="m"} 2.0\n'
        b'vllm:num_requests_waiting{engine="0",model_name="m"} 7.0\n'
        b"vllm:num_requests_waiting_by_reason 1.0\n"
    )
    assert parse_queue_gauges(text) == (5.0, 7.0)
    assert parse_queue_gauges(b"adaptive_sd_requests_total 3\n") is None


def test_the_load_term_makes_a_saturated_top_stage_worth_less() -> None:
    """Stage 0 answered with p̂ = 0.6: idle, escalating (cost 2 + λ·0.1 = 3) beats stopping (λ·0.4 = 4);
    with 2 s of expected queueing at the top priced at 1 per second, it no longer does (5 > 4)."""
    idle = StoppingPolicy(loaded_costs([1.0, 2.0], [0.0, 0.0], 1.0), [0.5, 0.9], 10.0)
    busy = StoppingPolicy(loaded_costs([1.0, 2.0], [0.0, 2.0], 1.0), [0.5, 0.9], 10.0)
    assert not idle.decide(0, 0.6).stop and busy.decide(0, 0.6).stop


def test_a_stage_without_logprobs_has_no_option_value() -> None:
    """An answer judged by its prior tells nothing new: the policy values such a stage at the point prior."""
    informative = StoppingPolicy([1.0, 4.0], [0.5, 0.9], 10.0, strength=8.0)
    blind = StoppingPolicy([1.0, 4.0], [0.5, 0.9], 10.0, strength=8.0, informative=[False, True])
    assert blind.values[0] == pytest.approx(1.0 + min(10.0 * 0.5, blind.values[1]))
    assert blind.values[0] > informative.values[0]
    assert math.isclose(blind.values[1], informative.values[1])


# -- settings -----------------------------------------------------------------------------------------


def test_url_and_endpoints() -> None:
    one = StageConfig(name="s", model="m", url="http://a:1/v1/", prices={"cost": {"request": 1.0}})
    assert [e.url for e in one.replicas()] == ["http://a:1/v1"]
    both = StageConfig(name="s", model="m", url="http://a:1/v1", prices={"cost": {"request": 1.0}}, endpoints=[{"url": "http://b:1/v1"}])  # type: ignore[list-item]
    assert [e.url for e in both.replicas()] == ["http://a:1/v1", "http://b:1/v1"]
    listed = StageConfig(name="s", model="m", prices={"cost": {"request": 1.0}},
                         endpoints=[{"url": "http://a:1/v1"}, {"url": "http://b:1/v1"}])  # type: ignore[list-item]  # fmt: skip
    assert listed.url == "http://a:1/v1" and [e.url for e in listed.replicas()] == ["http://a:1/v1", "http://b:1/v1"]
    with pytest.raises(ValueError, match="twice"):
        StageConfig(name="s", model="m", prices={"cost": {"request": 1.0}}, endpoints=[{"url": "http://a:1/v1"}, {"url": "http://a:1/v1/"}])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="url"):
        StageConfig(name="s", model="m", prices={"cost": {"request": 1.0}})
    assert StageConfig(name="s", model="bedrock/x", prices={"cost": {"request": 1.0}}, dialect="litellm").replicas()[0].url == ""


def test_endpoint_keys_inherit_the_stages_and_come_from_the_environment_or_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "key"
    secret.write_text("sk-from-file\n")
    monkeypatch.setenv("STAGE_KEY", "sk-from-env")
    config = StageConfig(
        name="s", model="m", prices={"cost": {"request": 1.0}}, dialect="openai", api_key="env:STAGE_KEY", max_concurrency=4,
        endpoints=[{"url": "http://a:1/v1"}, {"url": "http://b:1/v1", "api_key": f"file:{secret}", "max_concurrency": 9}],  # type: ignore[list-item]
    )  # fmt: skip
    clients = endpoint_clients(config)
    assert [c.config.api_key for c in clients] == ["sk-from-env", "sk-from-file"]
    assert [c.config.url for c in clients] == ["http://a:1/v1", "http://b:1/v1"]
    assert [e.max_concurrency for e in config.replicas()] == [4, 9]
    dumped = Settings(stages=[config]).model_dump_json()  # what check-config prints
    assert "sk-from" not in dumped and "STAGE_KEY" in dumped


def test_a_missing_key_source_fails_at_start_up_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    with pytest.raises(ConfigError, match=r"stages\[s\]\.api_key: environment variable NO_SUCH_KEY is not set"):
        endpoint_clients(
            StageConfig(name="s", model="m", url="http://a:1/v1", prices={"cost": {"request": 1.0}}, api_key="env:NO_SUCH_KEY")
        )
    with pytest.raises(ConfigError, match="cannot read"):
        read_key(f"file:{tmp_path / 'absent'}", "stages[s]")
    assert read_key(None, "x") is None


def test_inline_stage_keys_are_not_printed() -> None:
    s = Settings(
        stages=[StageConfig(name="s", model="m", url="http://a:1/v1", prices={"cost": {"request": 1.0}}, api_key="sk-inline-secret")]
    )
    assert "sk-inline-secret" not in s.model_dump_json() and s.stages[0].api_key == "sk-inline-secret"


def test_endpoint_labels_carry_no_credentials() -> None:
    assert endpoint_label("https://user:pw@host.example:8443/v1?key=abc", "x") == "https://host.example:8443/v1"
    assert endpoint_label("", "bedrock/x#0") == "bedrock/x#0"


@pytest.mark.anyio
async def test_completions_go_through_the_pool_and_a_chat_only_endpoint_is_not_failing() -> None:
    """``complete``/``complete_stream`` are delegated like the chat calls; ``StageNoCompletions`` (a chat-only server's
    404) is the endpoint answering, not failing: no retry, no ejection."""
    clock = Clock()
    pool = _pool(2, clock)
    for ep in pool.endpoints:
        assert isinstance(ep.client, FakeStage)
    reply = await pool.complete({"prompt": "2 + 2 =", "max_tokens": 4}, top_k=5)
    assert reply.data["choices"][0]["text"]
    chunks = [c async for c in await pool.complete_stream({"prompt": "2 + 2 =", "max_tokens": 4})]
    assert chunks and all(ep.in_flight == 0 for ep in pool.endpoints)
    for ep in pool.endpoints:
        ep.client.serves_completions = False  # type: ignore[attr-defined]
    for _ in range(5):
        with pytest.raises(StageNoCompletions):
            await pool.complete({"prompt": "x"})
    assert all(ep.failures == 0 and ep.health.state() == "healthy" for ep in pool.endpoints)
    assert sum(len(ep.client.calls) for ep in pool.endpoints) == 2  # type: ignore[attr-defined]  # the two that served
