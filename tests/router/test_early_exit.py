"""Early exit in the engine, in-process: a stage judged while it writes is aborted, or let finish, as the rule says.

Scripted stages (``fake_stage.py``) and a scripted prefix estimate: stage 0 writes 30 tokens priced 0.05 each,
stage 1 costs 4 per request, λ = 10, checkpoints after 4 and 8 tokens. A prefix estimate of 0.02 makes finishing
(1.3 for the rest, then a likely escalation costing 5 anyway) worse than escalating now; 0.99 makes it worth
finishing. What a real stage does when its stream is closed is in tests/servers/test_llama_server.py, and the
whole path through a real router in test_early_exit_live.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
import pytest

from common.settings import Settings
from predictor.serving.lengths import OutputLengths
from router.early_exit import Written, write
from router.stage import StageUnavailable
from tests.router.fake_stage import FakeStage, Script, ScriptedPredictor, fake_stages
from tests.router.inprocess import app_client, make_settings

pytestmark = pytest.mark.anyio

LONG = Script(" ".join(f"w{i}" for i in range(30)), prompt_tokens=10)
S1 = Script("The answer is 4.", prompt_tokens=11)
PROMPT = [{"role": "user", "content": "What is 2 + 2?"}]


def settings(**cascade: Any) -> Settings:
    return make_settings({"prices": {"u": {"output_token": 0.05}}}, {"prices": {"u": {"request": 4.0}}}, cost_unit="u", **cascade)


def prefix_predictor(q: float, p0: float = 0.9) -> ScriptedPredictor:
    """p̂ ``p0`` for stage 0's whole answer, ``q`` for its prefixes at the checkpoints (4 and 8 tokens)."""
    lengths = (OutputLengths(tuple([30.0] * 20)), OutputLengths(tuple([5.0] * 20)))
    return ScriptedPredictor({0: p0, 1: 0.9}, [0.5, 0.9], lengths=lengths, checkpoints=(4, 8), prefix_strengths=(20.0, 20.0),
                             prefix_p={0: q})  # fmt: skip


@asynccontextmanager
async def serve(q: float, p0: float = 0.9, **cascade: Any) -> AsyncIterator[tuple[httpx.AsyncClient, list[FakeStage], ScriptedPredictor]]:
    s = settings(**cascade)
    stages = fake_stages(s.stages, LONG, S1)
    predictor = prefix_predictor(q, p0)
    async with app_client(s, predictor=predictor, stages=stages) as client:
        yield client, stages, predictor


async def test_a_hopeless_prefix_is_aborted_at_the_first_checkpoint_and_the_next_stage_answers() -> None:
    async with serve(q=0.02) as (client, stages, predictor):
        resp = await client.post("/v1/chat/completions", json={"model": "cascade", "messages": PROMPT, "max_tokens": 64})
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-cascade-path"] == "s0(aborted@4),s1"
        assert resp.headers["x-cascade-stage"] == "s1"
        assert resp.json()["choices"][0]["message"]["content"] == S1.text
        # stage 0 was streamed and its stream closed after the checkpoint: the role chunk and 4 tokens, not 30
        assert stages[0].calls[0]["stream"] is True and stages[0].calls[0]["logprobs"] is True
        assert stages[0].streamed == 5
        assert len(predictor.prefixes) == 1 and len(predictor.features) == 1  # judged once mid-answer; only s1 judged whole
        usage = resp.json()["usage"]
        assert usage["completion_tokens"] == 4 + len(S1.tokens)  # the aborted tokens are paid for
        # s0: its tokens so far, its prompt as the router counts it (PromptStats: 3); its stream closed before its usage came
        assert resp.headers["x-cascade-tokens"] == f"s0=3+4,s1=11+{len(S1.tokens)}" and usage["prompt_tokens"] == 3 + 11
        assert (resp.headers["x-cascade-cost"], resp.headers["x-cascade-cost-unit"]) == ("4.2", "u")  # 4 tokens at 0.05, then 4


async def test_a_promising_prefix_is_let_finish_and_its_answer_is_the_streamed_whole() -> None:
    async with serve(q=0.99) as (client, stages, predictor):
        resp = await client.post("/v1/chat/completions", json={"model": "cascade", "messages": PROMPT, "max_tokens": 64, "logprobs": True})
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-cascade-path"] == "s0"
        data = resp.json()
        assert data["choices"][0]["message"]["content"] == LONG.text
        assert len(data["choices"][0]["logprobs"]["content"]) == len(LONG.tokens)  # the stream's entries, whole
        assert data["usage"] == {"prompt_tokens": 10, "completion_tokens": 30, "total_tokens": 40}
        assert len(predictor.prefixes) == 2  # judged at both checkpoints
        assert stages[1].calls == []


async def test_without_early_exit_the_stage_is_not_streamed() -> None:
    async with serve(q=0.02, early_exit=False) as (client, stages, predictor):
        resp = await client.post("/v1/chat/completions", json={"model": "cascade", "messages": PROMPT, "max_tokens": 64})
        assert resp.headers["x-cascade-path"] == "s0"
        assert "stream" not in stages[0].calls[0] and predictor.prefixes == []


async def test_a_max_tokens_below_the_checkpoint_is_not_judged() -> None:
    async with serve(q=0.02) as (client, stages, predictor):
        resp = await client.post("/v1/chat/completions", json={"model": "cascade", "messages": PROMPT, "max_tokens": 4})
        assert resp.headers["x-cascade-path"] == "s0" and predictor.prefixes == []


async def test_an_aborted_prefix_is_never_returned_when_the_next_stage_fails() -> None:
    async with serve(q=0.02) as (client, stages, _):
        stages[1].fail = StageUnavailable
        resp = await client.post("/v1/chat/completions", json={"model": "cascade", "messages": PROMPT, "max_tokens": 64})
        assert resp.status_code == 503, resp.text
        assert resp.json()["error"]["type"] == "upstream_error"


async def test_tools_and_json_answers_are_judged_whole() -> None:
    async with serve(q=0.02) as (client, stages, predictor):
        body = {"model": "cascade", "messages": PROMPT, "max_tokens": 64, "response_format": {"type": "json_object"}}
        await client.post("/v1/chat/completions", json=body)
        assert "stream" not in stages[0].calls[0] and predictor.prefixes == []


# -- chunks that carry several tokens (vLLM under load, speculative decoding) -----------------------------------------


def grouped(payloads: list[bytes], n: int) -> list[bytes]:
    """A stream's token chunks merged ``n`` at a time (content and logprob entries); the other chunks as they are."""
    out: list[bytes] = []
    group: list[dict[str, Any]] = []

    def emit() -> None:
        if group:
            first = group[0]
            choice = first["choices"][0]
            content = "".join(c["choices"][0]["delta"]["content"] for c in group)
            entries = [e for c in group for e in c["choices"][0]["logprobs"]["content"]]
            out.append(orjson.dumps({**first, "choices": [{**choice, "delta": {"content": content}, "logprobs": {"content": entries}}]}))
            group.clear()

    for payload in payloads:
        chunk = orjson.loads(payload)
        choices = chunk.get("choices") or []
        if choices and (choices[0].get("logprobs") or {}).get("content"):
            group.append(chunk)
            if len(group) == n:
                emit()
        else:
            emit()
            out.append(payload)
    emit()
    return out


class ChunkyStage(FakeStage):
    """A fake stage that streams three tokens per chunk."""

    def _chunks(self, body: dict[str, Any]) -> list[bytes]:
        return grouped(super()._chunks(body), 3)


async def test_an_aborted_stage_is_charged_every_token_it_sent_when_chunks_carry_several() -> None:
    """Checkpoint 4 is judged when the second chunk arrives: six tokens were generated (and are paid for), not four."""
    s = settings()
    stage = ChunkyStage(s.stages[0], LONG)
    judged: list[int] = []

    def judge(t: int, entries: list[dict[str, Any]]) -> bool:
        judged.append(len(entries))
        return True

    body = {"model": "m0", "messages": PROMPT, "logprobs": True, "top_logprobs": 2}
    written = await write(stage, body, (4, 8), judge)
    assert written.aborted_at == 4 and judged == [4]  # the prefix model sees exactly the checkpoint's tokens
    assert stage.streamed == 3  # the role chunk and two chunks of three tokens
    assert written.text == "".join(LONG.tokens[:6]) and len(written.entries) == 6
    assert written.completion_tokens == 6


def test_the_tokens_charged_are_the_stage_usage_when_it_reports_more() -> None:
    entries = [{"token": "a", "logprob": -0.1}] * 4
    assert Written(entries=entries).completion_tokens == 4
    assert Written(entries=entries, usage={"prompt_tokens": 3, "completion_tokens": 9}).completion_tokens == 9
    assert Written(entries=entries, usage={"completion_tokens": None}).completion_tokens == 4
    assert Written(text="four tokens, no logprobs", tokens=4).completion_tokens == 4


async def test_the_cascade_charges_the_tokens_an_aborted_stage_sent() -> None:
    s = settings()
    stages = fake_stages(s.stages, LONG, S1)
    stages[0] = ChunkyStage(s.stages[0], LONG)
    async with app_client(s, predictor=prefix_predictor(q=0.02), stages=stages) as client:
        resp = await client.post("/v1/chat/completions", json={"model": "cascade", "messages": PROMPT, "max_tokens": 64})
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-cascade-path"] == "s0(aborted@4),s1"  # the checkpoint, as before
        assert resp.json()["usage"]["completion_tokens"] == 6 + len(S1.tokens)
