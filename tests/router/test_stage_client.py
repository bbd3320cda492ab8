"""The stage client against a real llama.cpp stage: deferred logprobs lose nothing."""

from __future__ import annotations

import asyncio

import numpy as np
import orjson
import pytest

from common.settings import StageConfig
from predictor.serving.features import AnswerStats
from router.stage_client import StageBadResponse, StageClient, StageReply
from tests.conftest import ladder_config

BODY = {"messages": [{"role": "user", "content": "List three prime numbers and say why each is prime."}],
        "temperature": 0, "max_tokens": 60, "logprobs": True, "top_logprobs": 5}  # fmt: skip


def _ask(port_list: list[int], **kw: object) -> StageReply:
    async def go() -> StageReply:
        stage = StageClient(StageConfig.model_validate(ladder_config(port_list, 0)["stages"][1]))  # type: ignore[index]
        await stage.start()
        try:
            return await stage.reply(BODY, **kw)  # type: ignore[arg-type]
        finally:
            await stage.close()

    return asyncio.run(go())


def test_deferred_logprobs_are_decoded_on_demand(stage_ports: list[int]) -> None:
    reply = _ask(stage_ports, top_k=5)
    whole = orjson.loads(reply.raw)
    assert reply.stats is not None and reply.deferred is not None
    assert reply.data["choices"][0]["logprobs"] is None  # not decoded
    assert {k: v for k, v in reply.data.items() if k != "choices"} == {k: v for k, v in whole.items() if k != "choices"}
    expected = AnswerStats.from_choice(whole["choices"][0], 5)
    np.testing.assert_array_equal(reply.stats.token_logprobs, expected.token_logprobs)
    np.testing.assert_array_equal(reply.stats.top_logprobs, expected.top_logprobs)
    assert reply.with_logprobs() == whole and reply.deferred is None
    assert reply.with_logprobs() == whole  # once


def test_without_top_k_the_body_is_decoded_whole(stage_ports: list[int]) -> None:
    reply = _ask(stage_ports)
    assert reply.stats is None and reply.deferred is None
    assert reply.data == orjson.loads(reply.raw)


def test_logprobs_that_do_not_decode_are_the_stages_fault() -> None:
    """A raw control byte in a token string: the scanner reads the numbers, a decoder refuses the span."""
    raw = (b'{"choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"logprobs":{"content":'
           b'[{"token":"\x01","logprob":-0.5,"bytes":[1],"top_logprobs":[{"token":"a","logprob":-0.5,"bytes":[97]}]}]},'
           b'"finish_reason":"stop"}]}')  # fmt: skip
    reply = StageReply.parse(raw, 0.0, top_k=5, stage="s0")
    assert reply.stats is not None and reply.stats.token_logprobs.tolist() == [-0.5]
    assert reply.data["choices"][0]["message"]["content"] == "ok"
    with pytest.raises(StageBadResponse, match="s0.*malformed logprobs"):
        reply.with_logprobs()
