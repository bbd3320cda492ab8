"""The ``litellm`` dialect against a real local stage: LiteLLM's OpenAI-compatible provider in front of the
session's SmolLM2 llama.cpp server (``stage_ports``), so every line of ``router.litellm_stage`` runs against a real
server, with no provider account and no network.

Needs the ``litellm`` extra (``pip install -e '.[litellm]'``); skipped, saying so, without it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from typing import Any

import httpx
import orjson
import pytest

from common.settings import Settings, StageConfig
from router.litellm_stage import LiteLLMStage
from router.stage import StageUnavailable
from router.stage_client import StageClient
from router.stage_pool import StagePool, endpoint_clients
from tests.conftest import free_port, ladder_config
from tests.router.inprocess import app_client

if importlib.util.find_spec("litellm") is None:
    pytest.skip("litellm is not installed: install the extra (pip install -e '.[litellm]') to test the litellm dialect",
                allow_module_level=True)  # fmt: skip

BODY = {"messages": [{"role": "user", "content": "Name three colours."}], "max_tokens": 16, "temperature": 0}
WITH_LOGPROBS = {**BODY, "logprobs": True, "top_logprobs": 5}  # what the cascade asks of a stage
SECRET = "sk-test-0123456789abcdef-never-log-me"


def litellm_config(port: int, **kw: Any) -> StageConfig:
    """Stage 0 of the CPU ladder, reached through LiteLLM's ``openai/`` provider (which wants some key; ours takes any)."""
    kw.setdefault("api_key", "unused")
    return StageConfig(name="smollm2-135m", model="openai/smollm2-135m", url=f"http://127.0.0.1:{port}/v1", dialect="litellm",
                       prices={"cost": {"request": 1.4}}, timeout_s=120, **kw)  # fmt: skip


def test_reply_reads_the_logprobs_as_a_direct_client_does(stage_ports: list[int]) -> None:
    async def go() -> tuple[Any, Any]:
        via = LiteLLMStage(litellm_config(stage_ports[0]))
        direct = StageClient(
            StageConfig(
                name="smollm2-135m", model="smollm2-135m", url=f"http://127.0.0.1:{stage_ports[0]}/v1", prices={"cost": {"request": 1.4}}
            )
        )
        await direct.start()
        try:
            return await via.reply(WITH_LOGPROBS, top_k=5), await direct.reply(WITH_LOGPROBS, top_k=5)
        finally:
            await direct.close()

    through, direct = asyncio.run(go())
    assert through.data["choices"][0]["message"]["content"] == direct.data["choices"][0]["message"]["content"]
    assert through.stats is not None and direct.stats is not None
    assert through.stats.token_logprobs.size == direct.stats.token_logprobs.size > 0
    assert through.stats.top_logprobs.shape == direct.stats.top_logprobs.shape
    assert through.data["usage"]["completion_tokens"] == direct.data["usage"]["completion_tokens"]


def test_stream_is_openai_chunks_with_usage_last(stage_ports: list[int]) -> None:
    async def go() -> list[dict[str, Any]]:
        stage = LiteLLMStage(litellm_config(stage_ports[0]))
        events = await stage.stream({**BODY, "stream": True, "stream_options": {"include_usage": True}})
        return [orjson.loads(p) async for p in events]

    chunks = asyncio.run(go())
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text and chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    assert all("provider_specific_fields" not in c for c in chunks)

    async def raw() -> bytes:
        stage = LiteLLMStage(litellm_config(stage_ports[0]))
        return b"".join([b async for b in await stage.stream({**BODY, "stream": True}, raw=True)])

    blocks = asyncio.run(raw())
    assert blocks.startswith(b"data: {") and blocks.endswith(b"data: [DONE]\n\n")


def test_failures_are_the_routers_and_a_dead_endpoint_is_retried_on_a_live_one(stage_ports: list[int]) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"

    async def go() -> None:
        with pytest.raises(StageUnavailable, match="unreachable"):
            await LiteLLMStage(litellm_config(0).model_copy(update={"url": dead})).reply(BODY)
        config = StageConfig(name="smollm2-135m", model="openai/smollm2-135m", prices={"cost": {"request": 1.4}}, dialect="litellm",
                             timeout_s=120, api_key="unused", endpoints=[{"url": dead}, {"url": f"http://127.0.0.1:{stage_ports[0]}/v1"}])  # type: ignore[list-item]  # fmt: skip
        pool = StagePool(config, endpoint_clients(config))
        await pool.start()
        try:
            for _ in range(50):  # until the dead one has been picked (each pick is a coin toss between two idle endpoints)
                assert (await pool.reply(BODY)).data["choices"][0]["message"]["content"]
                if pool.endpoints[0].failures:
                    break
            assert pool.endpoints[0].failures >= 1 and pool.endpoints[1].failures == 0
        finally:
            await pool.close()

    asyncio.run(go())


def test_the_key_is_sent_and_never_logged(stage_ports: list[int], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
                                          capfd: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """The key comes from the environment; whatever fails, it appears in no log record, no output and no error."""
    monkeypatch.setenv("LITELLM_STAGE_KEY", SECRET)
    dead = f"http://127.0.0.1:{free_port()}/v1"
    caplog.set_level(logging.DEBUG)
    messages: list[str] = []

    async def go() -> None:
        for url in (f"http://127.0.0.1:{stage_ports[0]}/v1", dead):
            config = litellm_config(stage_ports[0], api_key="env:LITELLM_STAGE_KEY").model_copy(update={"url": url})
            (client,) = endpoint_clients(config)
            assert isinstance(client, LiteLLMStage) and client.config.api_key == SECRET
            try:
                await client.reply(BODY)
            except Exception as exc:
                messages.append(str(exc))

    asyncio.run(go())
    out = capfd.readouterr()
    assert messages and all(SECRET not in m for m in messages)
    assert SECRET not in caplog.text and SECRET not in out.out and SECRET not in out.err


def test_litellm_stages_in_the_cascade(stage_ports: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    """Both CPU stages through LiteLLM: the cascade judges stage 0 from its logprobs (read from the bytes LiteLLM's
    answer becomes), and escalating to stage 1 regenerates: a LiteLLM stage has no prompt_logprobs to verify with."""
    config = ladder_config(stage_ports, free_port())
    for stage in config["stages"]:  # type: ignore[attr-defined]
        stage.update(dialect="litellm", model=f"openai/{stage['model']}", api_key="env:LOCAL_STAGE_KEY")
        stage.pop("launch")
    settings = Settings.model_validate(config)
    monkeypatch.setenv("LOCAL_STAGE_KEY", "unused")

    async def go() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        async with app_client(settings) as client:  # over the stages' pools, as configured
            chat = {"model": "cascade", "messages": BODY["messages"], "max_tokens": 16, "temperature": 0}
            low = await client.post("/v1/chat/completions", json={**chat, "cascade_lambda": 0.0})
            high = await client.post("/v1/chat/completions", json={**chat, "cascade_lambda": 1e6})
            streamed = await client.post("/v1/chat/completions", json={**chat, "cascade_lambda": 1e6, "stream": True})
            return low, high, streamed

    low, high, streamed = asyncio.run(go())
    assert low.status_code == 200 and low.headers["x-cascade-stage"] == "smollm2-135m", low.text
    assert float(low.headers["x-cascade-p"]) > 0.05  # judged from its logprobs, not as an empty answer
    assert high.status_code == 200 and high.headers["x-cascade-path"] == "smollm2-135m,qwen2.5-coder-0.5b", high.text
    assert high.headers["x-cascade-draft"] == "qwen2.5-coder-0.5b:regenerate:dialect"
    assert streamed.status_code == 200 and "data: [DONE]" in streamed.text and '"error"' not in streamed.text
