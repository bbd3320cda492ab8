"""Shadow checks (``router.shadow``): answers returned from a lower stage, verified after the response."""

from __future__ import annotations

import asyncio
import gc
import random
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.responses import StreamingResponse

from common.errors import parse_chat_request
from common.settings import ShadowConfig
from router.contracts import TenantLimits
from router.shadow import ShadowChecks
from router.stage import StageTimeout
from tests.router.fake_stage import fake_stages
from tests.router.inprocess import PROMPT, S0, S1, STOP, chat_serving, make_settings, serve

pytestmark = pytest.mark.anyio
BODY: dict[str, Any] = {"messages": PROMPT, "temperature": 0, "max_tokens": 32}


async def _settled(get_health: Any, key: str = "checked", want: int = 1) -> dict[str, Any]:
    for _ in range(200):
        shadow: dict[str, Any] = (await get_health()).json()["shadow"]
        if shadow[key] >= want and shadow["running"] == 0:
            return shadow
        await asyncio.sleep(0.01)
    raise AssertionError(f"no shadow check settled: {shadow}")


async def test_an_answer_from_a_lower_stage_is_checked_after_the_response_and_logged(tmp_path: Path) -> None:
    log = tmp_path / "traffic.jsonl"
    settings = make_settings(dialect="vllm", shadow={"rate": 1.0}, predictor={"log_path": str(log)})
    async with serve(STOP, settings) as r:
        resp = await r.chat(temperature=0, max_tokens=32)
        assert resp.status_code == 200 and resp.headers["x-cascade-stage"] == "s0"
        assert resp.json()["choices"][0]["message"]["content"] == S0.text  # the user's answer is s0's, whatever comes after
        shadow = await _settled(lambda: r.client.get("/health"))
        assert shadow == {"rate": 1.0, "untrained_rate": 1.0, "running": 0, "checked": 1, "busy": 0, "unverifiable": 0, "failed": 0}
        (scored,) = r.stages[1].calls  # one scoring pass of s0's answer on s1, nothing generated
        assert scored["max_tokens"] == 1 and scored["messages"][-1] == {"role": "assistant", "content": S0.text}
        metrics = (await r.client.get("/metrics")).text
        assert 'adaptive_sd_shadow_checks_total{outcome="checked",stage="s1"}' in metrics
        # s0's short answer is labelled by whether s1 would write it all and end there: it keeps 3 of 4 tokens (0)
        assert 'adaptive_sd_labels_total{label="0",source="shadow",stage="s0"}' in metrics
    request_row, shadow_row = [orjson.loads(line) for line in log.read_text().splitlines()]
    assert request_row["stages"][0]["agreement"] is None  # the request's own row: s0 unlabelled
    (checked,) = shadow_row["stages"]
    assert checked["text"] == S0.text and checked["agreement"] == 3 / 4 and checked["verifier"] == "s1" and checked["weight"] == 1.0
    assert checked["same"] is False  # s1 did not keep all of it


async def test_a_check_that_cannot_be_lossless_or_would_wait_is_skipped() -> None:
    settings = make_settings(dialect="vllm")
    stages = fake_stages(settings.stages, S0, S1)
    shadow = ShadowChecks(ShadowConfig(rate=1.0), stages)
    assert shadow.draw(0) and not shadow.draw(1)  # the top stage has no one above it
    assert not shadow.start(0, {**BODY, "temperature": 0.7}, S0.text)  # sampling, different tokenizers: not lossless
    stages[1].delay_s = 0.2
    assert shadow.start(0, BODY, S0.text)
    assert not shadow.start(0, BODY, S0.text)  # max_concurrent 1: skipped, not queued
    expected = {"rate": 1.0, "untrained_rate": 1.0, "running": 1, "checked": 0, "busy": 1, "unverifiable": 1, "failed": 0}
    assert shadow.health() | {"running": 1} == expected
    await shadow.close()  # cancels the one running: its label is lost, nothing else
    assert shadow.health()["running"] == 0 and shadow.counts["checked"] == 0
    assert not ShadowChecks(ShadowConfig(rate=0.0), stages).draw(0)


async def test_a_failed_check_is_counted_and_dropped() -> None:
    settings = make_settings(dialect="vllm")
    stages = fake_stages(settings.stages, S0, S1)
    stages[1].fail = StageTimeout
    shadow = ShadowChecks(ShadowConfig(rate=1.0), stages)
    assert shadow.start(0, BODY, S0.text)
    for _ in range(100):
        if shadow.counts["failed"]:
            break
        await asyncio.sleep(0.01)
    assert shadow.counts == {"checked": 0, "busy": 0, "unverifiable": 0, "failed": 1}


async def test_a_tenant_kept_out_of_learning_is_neither_logged_nor_checked(tmp_path: Path) -> None:
    log = tmp_path / "traffic.jsonl"
    settings = make_settings(dialect="vllm", shadow={"rate": 1.0}, predictor={"log_path": str(log)})
    serving = chat_serving(settings, p0=STOP)
    req = parse_chat_request(orjson.dumps({"model": "cascade", "messages": PROMPT, "temperature": 0}))
    response, outcome = await serving.create(req, {}, TenantLimits(10.0, learn=False))
    assert response.status_code == 200 and outcome.stage == "s0"
    assert serving.engine.shadow.health()["running"] == 0 and not log.exists()
    await serving.create(req, {}, TenantLimits(10.0))  # the same request from a tenant that learns
    assert serving.engine.shadow.health()["running"] == 1 and len(log.read_text().splitlines()) == 1
    await serving.engine.shadow.close()


async def test_an_untrained_predictor_checks_at_its_own_rate_and_weighs_its_labels_by_it(tmp_path: Path) -> None:
    """With a guess for a predictor (the baseline), a new ladder learns faster: checks at ``untrained_rate``, each
    label weighing 1 / the rate it was drawn at; ``/health`` and the info metric say the router runs safe."""
    log = tmp_path / "traffic.jsonl"
    settings = make_settings(dialect="vllm", shadow={"rate": 0.0, "untrained_rate": 0.5}, predictor={"log_path": str(log)})
    stages = fake_stages(settings.stages, S0, S1)
    assert ShadowChecks(settings.cascade.shadow, stages).draw(0) == 0.0  # trained: the rate, 0 here
    drawn = ShadowChecks(settings.cascade.shadow, stages, random.Random(1))
    rates = {drawn.draw(0, untrained=True) for _ in range(50)}
    assert rates == {0.0, 0.5}
    async with serve(STOP, settings, untrained=True) as r:
        health = (await r.client.get("/health")).json()
        assert health["predictor_trained"] is False and health["shadow"]["untrained_rate"] == 0.5
        assert 'trained="false"' in (await r.client.get("/metrics")).text
        for _ in range(20):
            await r.chat(temperature=0, max_tokens=32)
            await _settled(lambda: r.client.get("/health"), "running", 0)
    weights = {row["stages"][0]["weight"] for row in map(orjson.loads, log.read_text().splitlines()) if "weight" in row["stages"][0]}
    assert weights == {2.0}


async def test_a_streamed_answer_from_a_lower_stage_is_checked_once_its_stream_has_ended(tmp_path: Path) -> None:
    """A tenant capped below the top stage gets that stage's answer streamed: the check is drawn before the stream goes
    out (so the router reads it whole), and runs on the answer put together once the stream has ended."""
    log = tmp_path / "traffic.jsonl"
    settings = make_settings(dialect="vllm", shadow={"rate": 1.0}, predictor={"log_path": str(log)})
    serving = chat_serving(settings, p0=STOP)
    req = parse_chat_request(orjson.dumps({"model": "cascade", "messages": PROMPT, "temperature": 0, "stream": True}))
    response, outcome = await serving.create(req, {}, TenantLimits(10.0, max_stage=0))
    assert outcome.stage == "s0" and serving.engine.shadow.health()["running"] == 0  # nothing yet: the stream is still out
    assert isinstance(response, StreamingResponse)
    _ = [chunk async for chunk in response.body_iterator]
    for _ in range(200):
        if serving.engine.shadow.health()["checked"]:
            break
        await asyncio.sleep(0.01)
    (scored,) = serving.engine.stages[1].calls  # type: ignore[attr-defined]  # a FakeStage
    assert scored["messages"][-1] == {"role": "assistant", "content": S0.text} and scored["max_tokens"] == 1
    shadow_row = [orjson.loads(line) for line in log.read_text().splitlines()][-1]
    assert shadow_row["stages"][0]["verifier"] == "s1" and shadow_row["stages"][0]["text"] == S0.text
    left, _ = await serving.create(req, {}, TenantLimits(10.0, max_stage=0))  # a client that leaves after one chunk
    assert isinstance(left, StreamingResponse)
    chunks = aiter(left.body_iterator)
    await anext(chunks)
    await chunks.aclose()  # type: ignore[attr-defined]
    for _ in range(100):  # the tap below the closed relay is collected, and finalised by the event loop
        if serving.engine.shadow.health()["unverifiable"]:
            break
        gc.collect()
        await asyncio.sleep(0.01)
    assert serving.engine.shadow.health()["unverifiable"] == 1  # drawn, no whole answer to check: counted, not lost
    await serving.engine.shadow.close()
