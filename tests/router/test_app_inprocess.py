"""The router app in-process: scripted stages (``fake_stage.py``) and a scripted p̂, through the ASGI app.

No process and no network: the app of ``inprocess.py`` (``create_app`` with fakes,
its lifespan run around the client), requests through ``httpx.AsyncClient`` or the
official ``openai`` client. The policy is ``inprocess.py``'s predictable one:
stage 0 stops at p̂ >= 0.5. Where chat and completions must behave alike (every
stage failing, pass-through errors) a test here runs both APIs. What real stages
do is covered by the live tests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import openai
import orjson
import pytest

from common.errors import parse_chat_request
from router import api
from router.api import create_app
from router.stage import StageBadResponse, StageFailure, StageTimeout, StageUnavailable
from tests.router.fake_stage import ScriptedPredictor, fake_stages
from tests.router.inprocess import (
    ESCALATE,
    PROMPT,
    S0,
    S1,
    STOP,
    TEXT_PROMPT,
    app_client,
    chat_serving,
    events,
    make_settings,
    scripted,
    serve,
    streamed_text,
)

pytestmark = pytest.mark.anyio

# per-token prices (binary fractions: the sums are exact) small enough to leave the policy's choices as they are
TOKEN_PRICED = ({"prices": {"usd": {"request": 1.0, "prompt_token": 2**-10, "output_token": 2**-8}}},
                {"prices": {"usd": {"request": 4.0, "prompt_token": 2**-9, "output_token": 2**-7}}})  # fmt: skip


def assert_upstream_error(resp: httpx.Response, status: int, stage: str) -> None:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "upstream_error" and f"stage '{stage}'" in err["message"]


# -- the cascade ----------------------------------------------------------------


async def test_high_p_stops_at_stage_0() -> None:
    async with serve(STOP) as r:
        resp = await r.chat(max_tokens=16)
        assert resp.status_code == 200, resp.text
        data = resp.json()
        assert data["model"] == "cascade" and data["choices"][0]["message"]["content"] == S0.text
        assert resp.headers["x-cascade-stage"] == resp.headers["x-cascade-path"] == "s0"
        assert resp.headers["x-cascade-p"] == "0.9000" and resp.headers["x-cascade-lambda"] == "10"
        assert float(resp.headers["x-cascade-overhead-ms"]) >= 0
        assert data["usage"] == {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14}
        assert resp.headers["x-cascade-tokens"] == "s0=10+4"
        assert (resp.headers["x-cascade-cost"], resp.headers["x-cascade-cost-unit"]) == ("1", "cost")
        assert data["choices"][0]["logprobs"] is None  # asked of the stage for the predictor, not by the client
        assert r.stages[1].calls == []
        assert r.stages[0].calls[0]["top_logprobs"] == r.predictor.top_k and r.stages[0].calls[0]["logprobs"] is True
        assert "model" not in r.stages[0].calls[0] and "cascade_lambda" not in r.stages[0].calls[0]


async def test_low_p_escalates_and_sums_usage_over_the_visited_stages() -> None:
    async with serve(ESCALATE) as r:
        raw = await r.openai().chat.completions.with_raw_response.create(model="cascade", messages=PROMPT, max_tokens=32)  # type: ignore[arg-type]
        resp = raw.parse()
        assert resp.model == "cascade" and resp.choices[0].message.content == S1.text
        assert raw.headers["x-cascade-stage"] == "s1" and raw.headers["x-cascade-path"] == "s0,s1"
        assert raw.headers["x-cascade-p"] == "0.1000,0.8000"
        assert raw.headers["x-cascade-draft"] == "s1:regenerate:dialect"  # the fakes speak the plain OpenAI dialect here
        assert raw.headers["x-cascade-accepted"] == "-"
        n0, n1 = len(S0.tokens), len(S1.tokens)
        assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (10 + 11, n0 + n1)  # type: ignore[union-attr]
        assert resp.usage.total_tokens == 21 + n0 + n1  # type: ignore[union-attr]
        assert len(r.predictor.features) == 2


async def test_lambda_and_max_stage_knobs() -> None:
    async with serve(ESCALATE) as r:
        resp = await r.chat(cascade_lambda=0.0)  # quality worthless: stop at once
        assert resp.headers["x-cascade-stage"] == "s0" and resp.headers["x-cascade-lambda"] == "0"
        resp = await r.client.post(
            "/v1/chat/completions", json={"model": "cascade", "messages": PROMPT}, headers={"x-cascade-max-stage": "s0"}
        )
        assert resp.headers["x-cascade-stage"] == "s0" and r.stages[1].calls == []
        resp = await r.chat(cascade_max_stage=7)
        assert resp.status_code == 400 and resp.json()["error"]["param"] == "cascade_max_stage"


async def test_escalation_verifies_the_draft_and_answers_the_upper_stages_own_text() -> None:
    """Greedy, vLLM dialect: stage 1 scores stage 0's answer, keeps the agreeing prefix, generates the rest."""
    async with serve(ESCALATE, make_settings(dialect="vllm")) as r:
        resp = await r.chat(max_tokens=32, temperature=0)
        assert resp.status_code == 200, resp.text
        assert resp.json()["choices"][0]["message"]["content"] == S1.text
        assert resp.headers["x-cascade-draft"] == "s1:verify"
        assert resp.headers["x-cascade-accepted"] == "s1:3/4"  # "The answer is" kept, " 5." rejected
        scoring, continuation = r.stages[1].calls
        assert scoring["prompt_logprobs"] == r.predictor.top_k and scoring["messages"][-1] == {"role": "assistant", "content": S0.text}
        assert continuation["messages"][-1] == {"role": "assistant", "content": "The answer is"}
        usage = resp.json()["usage"]
        # stage 0: 10 + its 4 tokens; stage 1: the scoring call's prompt (11 + 4 draft tokens) and the
        # continuation's (11 + 3 kept), the 3 kept tokens and the continuation's own
        rest = len(S1.tokens) - 3
        assert usage == {"prompt_tokens": 10 + 15 + 14, "completion_tokens": 4 + 3 + rest, "total_tokens": 39 + 7 + rest}
        assert resp.headers["x-cascade-tokens"] == f"s0=10+4,s1={15 + 14}+{3 + rest}"  # the draft's tokens in s1's usage


async def test_a_client_prefill_is_regenerated_not_verified() -> None:
    """``continue_final_message``: the answer continues the client's assistant message. Scoring the draft as a message
    of its own would read stage 1 in another context, so stage 1 answers the client's request itself."""
    prefill = [*PROMPT, {"role": "assistant", "content": "The answer is"}]
    async with serve(ESCALATE, make_settings(dialect="vllm")) as r:
        resp = await r.chat(messages=prefill, continue_final_message=True, add_generation_prompt=False, max_tokens=32, temperature=0)
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-cascade-draft"] == "s1:regenerate:prefill"
        [call] = r.stages[1].calls
        assert call["messages"] == prefill and "prompt_logprobs" not in call
        assert resp.json()["choices"][0]["message"]["content"] == S1.text.removeprefix("The answer is")


async def test_null_flags_and_an_empty_logit_bias_are_accepted_on_every_endpoint() -> None:
    """``stream: null`` (and completions' ``echo: null``) is the default and ``logit_bias: {}`` biases nothing: an app
    whose SDK sends them against OpenAI or vLLM works here too."""
    async with serve(STOP) as r:
        chat = await r.chat(stream=None, logit_bias={})
        assert chat.status_code == 200, chat.text
        assert chat.json()["object"] == "chat.completion" and "logit_bias" not in r.stages[0].calls[-1]
        completion = await r.complete(stream=None, echo=None, logit_bias={})
        assert completion.status_code == 200, completion.text
        assert completion.json()["object"] == "text_completion"
        response = await r.client.post("/v1/responses", json={"model": "cascade", "input": "What is 2 + 2?", "stream": None})
        assert response.status_code == 200, response.text
        assert response.json()["object"] == "response"


VLLM_EXTRAS = {"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1, "min_tokens": 2}
CHAT_EXTRAS = {**VLLM_EXTRAS, "chat_template_kwargs": {"enable_thinking": False}}


async def test_vllm_sampling_extras_reach_a_vllm_stage_as_sent() -> None:
    """``top_k``, ``min_p``, ``repetition_penalty``, ``min_tokens``, ``chat_template_kwargs`` (what vLLM clients send
    through ``extra_body``): through the cascade and to a named stage, on chat and completions."""
    async with serve(STOP, make_settings(dialect="vllm")) as r:
        for model in ("cascade", "s1"):
            resp = await r.chat(model=model, max_tokens=8, **CHAT_EXTRAS)
            assert resp.status_code == 200, resp.text
            sent = r.stages[0 if model == "cascade" else 1].calls[-1]
            assert {k: sent.get(k) for k in CHAT_EXTRAS} == CHAT_EXTRAS
            completion = await r.complete(model=model, max_tokens=8, chat_template_kwargs={"enable_thinking": False}, **VLLM_EXTRAS)
            assert completion.status_code == 200, completion.text
            sent = r.stages[0 if model == "cascade" else 1].calls[-1]
            assert {k: sent.get(k) for k in VLLM_EXTRAS} == VLLM_EXTRAS and "chat_template_kwargs" not in sent  # no template there


async def test_a_penalised_request_is_regenerated_not_verified() -> None:
    async with serve(ESCALATE, make_settings(dialect="vllm")) as r:
        resp = await r.chat(max_tokens=32, temperature=0, repetition_penalty=1.2)
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-cascade-draft"] == "s1:regenerate:penalties"
        [call] = r.stages[1].calls
        assert call["repetition_penalty"] == 1.2 and "prompt_logprobs" not in call


@pytest.mark.parametrize("api", ["chat", "completions"])
@pytest.mark.parametrize("field", [*VLLM_EXTRAS, "chat_template_kwargs"])
async def test_vllm_sampling_extras_need_a_vllm_stage(api: str, field: str) -> None:
    """A hosted API (dialect openai or litellm) refuses or ignores vLLM's extras: a named one is a 400 naming the field,
    the cascade skips it (``x-cascade-skipped``) as it skips a stage without tools for a tools request."""
    if api == "completions" and field == "chat_template_kwargs":
        return  # accepted and dropped there: no chat template applies (test above)
    value = CHAT_EXTRAS[field]
    async with serve(STOP, make_settings({"dialect": "openai"}, {}, dialect="vllm")) as r:
        ask = r.chat if api == "chat" else r.complete
        resp = await ask(model="s0", max_tokens=8, **{field: value})
        assert resp.status_code == 400, resp.text
        err = resp.json()["error"]
        assert err["param"] == field and "s0" in err["message"] and "dialect: vllm" in err["message"]
        assert r.stages[0].calls == []
        resp = await ask(max_tokens=8, **{field: value})
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-cascade-skipped"] == "s0:vllm_extras" and resp.headers["x-cascade-stage"] == "s1"
        assert r.stages[0].calls == [] and r.stages[1].calls[-1][field] == value
        resp = await ask(max_tokens=8, cascade_max_stage=0, **{field: value})  # no vllm stage left
        assert resp.status_code == 400 and resp.json()["error"]["param"] == field
        assert resp.json()["error"]["code"] == "no_capable_stage"
        plain = await ask(model="s0", max_tokens=8)  # without them the stage is fine
        assert plain.status_code == 200, plain.text


@pytest.mark.parametrize(
    ("choice", "param"),
    [
        ({"type": "function"}, "tool_choice.function"),
        (
            {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": [{"type": "function"}]}},
            "tool_choice.allowed_tools.tools[0].function",
        ),
    ],
)
async def test_a_malformed_tool_choice_names_its_request_path(choice: dict[str, object], param: str) -> None:
    tool = {"type": "function", "function": {"name": "get_weather"}}
    async with serve(STOP) as r:
        resp = await r.chat(tools=[tool], tool_choice=choice)
        assert resp.status_code == 400 and resp.json()["error"]["param"] == param


async def test_an_allowed_tools_choice_reaches_the_stage_as_its_mode_over_the_allowed_tools() -> None:
    weather, time = ({"type": "function", "function": {"name": name}} for name in ("get_weather", "get_time"))
    choice = {"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [time]}}
    async with serve(STOP) as r:
        resp = await r.client.post(
            "/v1/chat/completions", json={"model": "s0", "messages": PROMPT, "tools": [weather, time], "tool_choice": choice}
        )
        assert resp.status_code == 200, resp.text
        sent = r.stages[0].calls[-1]
        assert sent["tools"] == [time] and sent["tool_choice"] == "required"


# -- what a response cost ---------------------------------------------------------

S1_VERIFIED = (15 + 14, len(S1.tokens))  # s1's usage after verifying s0's draft (above): scoring + continuation prompts; kept + own
S0_COST = 1 + 10 * 2**-10 + 4 * 2**-8  # s0's answer at TOKEN_PRICED: 10 prompt tokens, 4 generated
S1_COST = 4 + S1_VERIFIED[0] * 2**-9 + S1_VERIFIED[1] * 2**-7


async def test_tokens_and_cost_per_stage_after_a_verified_draft_are_what_the_tenant_is_charged() -> None:
    serving = chat_serving(make_settings(*TOKEN_PRICED, dialect="vllm", cost_unit="usd"))
    req = parse_chat_request(orjson.dumps({"model": "cascade", "messages": PROMPT, "temperature": 0, "max_tokens": 32}))
    response, outcome = await serving.create(req, {})
    assert response.headers["x-cascade-accepted"] == "s1:3/4"
    assert response.headers["x-cascade-tokens"] == f"s0=10+4,s1={S1_VERIFIED[0]}+{S1_VERIFIED[1]}"
    assert response.headers["x-cascade-cost"] == "5.16015625" and S0_COST + S1_COST == outcome.cost == 5.16015625
    assert response.headers["x-cascade-cost-unit"] == "usd"
    usage = orjson.loads(bytes(response.body))["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (10 + S1_VERIFIED[0], 4 + S1_VERIFIED[1])  # the header's sums


async def test_a_stream_from_the_top_stage_leaves_its_tokens_to_the_usage_chunk() -> None:
    """The headers go out before the top stage has streamed: they hold the stages before it, and charge it its
    per-request price (as the accounting does); the usage chunk, less the header's sums, is the streamed stage's."""
    async with serve(ESCALATE, make_settings(*TOKEN_PRICED, dialect="vllm", cost_unit="usd")) as r:
        async with r.openai().chat.completions.with_streaming_response.create(
            model="cascade",
            messages=PROMPT,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
            temperature=0,
            max_tokens=32,
        ) as raw:
            headers = raw.headers
            chunks = [c async for c in await raw.parse()]
        assert headers["x-cascade-path"] == "s0,s1" and headers["x-cascade-accepted"] == "s1:3/4"
        assert headers["x-cascade-tokens"] == "s0=10+4"
        assert headers["x-cascade-cost"] == "5.025390625" and S0_COST + 4 == 5.025390625
        assert headers["x-cascade-cost-unit"] == "usd"
        usage = chunks[-1].usage
        assert usage is not None and (usage.prompt_tokens - 10, usage.completion_tokens - 4) == S1_VERIFIED


async def test_a_whole_answer_restreamed_says_every_stage() -> None:
    async with serve(STOP) as r:
        resp = await r.chat(stream=True)
        assert streamed_text(events(resp)) == S0.text
        assert resp.headers["x-cascade-tokens"] == "s0=10+4" and resp.headers["x-cascade-cost"] == "1"


async def test_a_stream_with_no_stage_before_the_streamed_one_says_no_tokens() -> None:
    async with serve(ESCALATE, make_settings(skip_by_prior=True)) as r:  # s1 alone (4 + 10 · 0.1) beats s0 first (1 + 5)
        resp = await r.chat(stream=True)
        assert streamed_text(events(resp)) == S1.text and r.stages[0].calls == []
        assert resp.headers["x-cascade-path"] == "s1" and resp.headers["x-cascade-tokens"] == "-"
        assert resp.headers["x-cascade-cost"] == "4"


async def test_a_failed_stage_before_a_stream_is_listed_without_tokens_and_paid_for() -> None:
    async with serve(STOP) as r:
        r.stages[0].fail = StageUnavailable
        resp = await r.chat(stream=True)
        assert streamed_text(events(resp)) == S1.text and resp.headers["x-cascade-path"] == "s1"
        assert resp.headers["x-cascade-tokens"] == "s0=0+0" and resp.headers["x-cascade-cost"] == "5"


# -- failures -------------------------------------------------------------------


@pytest.mark.parametrize("failure", [StageUnavailable, StageTimeout, StageBadResponse])
async def test_upper_stage_failing_returns_the_lower_answer_degraded(failure: type[StageFailure]) -> None:
    async with serve(ESCALATE) as r:
        r.stages[1].fail = failure
        resp = await r.chat()
        assert resp.status_code == 200, resp.text
        assert resp.json()["choices"][0]["message"]["content"] == S0.text
        assert resp.headers["x-cascade-stage"] == "s0" and resp.headers["x-cascade-path"] == "s0"
        assert "stage 's1'" in resp.headers["x-cascade-degraded"]
        assert resp.json()["usage"]["prompt_tokens"] == 10  # the failed stage adds nothing
        assert resp.headers["x-cascade-tokens"] == "s0=10+4,s1=0+0" and resp.headers["x-cascade-cost"] == "5"  # but is paid for


async def test_lower_stage_failing_goes_on_to_the_next() -> None:
    async with serve(STOP) as r:
        r.stages[0].fail = StageUnavailable
        resp = await r.chat()
        assert resp.status_code == 200 and resp.headers["x-cascade-stage"] == "s1" and resp.headers["x-cascade-path"] == "s1"
        assert "x-cascade-degraded" not in resp.headers
        assert resp.headers["x-cascade-tokens"] == f"s0=0+0,s1=11+{len(S1.tokens)}" and resp.headers["x-cascade-cost"] == "5"


@pytest.mark.parametrize(
    ("failures", "status"),
    [((StageUnavailable, StageUnavailable), 503), ((StageUnavailable, StageTimeout), 504), ((StageTimeout, StageBadResponse), 502)],
)
@pytest.mark.parametrize("api", ["chat", "completions"])
async def test_every_stage_failing_is_an_openai_shaped_error(api: str, failures: tuple[type[StageFailure], ...], status: int) -> None:
    """The last stage's failure is what the client gets, from either API."""
    async with serve(ESCALATE) as r:
        for stage, failure in zip(r.stages, failures, strict=True):
            stage.fail = failure
        assert_upstream_error(await (r.chat if api == "chat" else r.complete)(), status, "s1")
        client = r.openai()
        with pytest.raises(openai.APIStatusError) as info:
            if api == "chat":
                await client.chat.completions.create(model="cascade", messages=PROMPT)  # type: ignore[arg-type]
            else:
                await client.completions.create(model="cascade", prompt=TEXT_PROMPT)
        assert info.value.status_code == status


# -- streaming ------------------------------------------------------------------


async def test_stream_from_a_stopped_lower_stage() -> None:
    async with serve(STOP) as r:
        resp = await r.chat(stream=True, stream_options={"include_usage": True})
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        assert resp.headers["x-cascade-stage"] == "s0"
        chunks = events(resp)
        assert chunks[-1] == "[DONE]" and streamed_text(chunks) == S0.text
        assert all(c["model"] == "cascade" for c in chunks[:-1])
        finishes = [c["choices"][0]["finish_reason"] for c in chunks[:-1] if c["choices"] and c["choices"][0]["finish_reason"]]
        assert finishes == ["stop"]
        assert chunks[-2]["usage"] == {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14}
        assert r.stages[1].calls == [] and not any(call.get("stream") for call in r.stages[0].calls)


async def test_stream_from_the_top_stage_folds_earlier_usage_in() -> None:
    async with serve(ESCALATE) as r:
        stream = await r.openai().chat.completions.create(
            model="cascade",
            messages=PROMPT,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [c async for c in stream]
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == S1.text
        assert all(c.model == "cascade" for c in chunks)
        usage = chunks[-1].usage
        assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (21, len(S0.tokens) + len(S1.tokens))
        assert r.stages[1].calls[-1]["stream"] is True and r.stages[1].calls[-1]["stream_options"] == {"include_usage": True}


async def test_stream_from_the_top_stage_after_a_verified_draft_sends_the_prefix_first() -> None:
    async with serve(ESCALATE, make_settings(dialect="vllm")) as r:
        resp = await r.chat(stream=True, temperature=0, max_tokens=32)
        chunks = events(resp)
        assert chunks[0]["id"] == "chatcmpl-prefix" and chunks[0]["choices"][0]["delta"]["content"] == "The answer is"
        assert streamed_text(chunks) == S1.text and chunks[-1] == "[DONE]"
        assert resp.headers["x-cascade-accepted"] == "s1:3/4"


async def test_stream_without_include_usage_sends_no_usage_chunk() -> None:
    async with serve(ESCALATE) as r:
        chunks = events(await r.chat(stream=True))
        assert not any(isinstance(c, dict) and c.get("usage") for c in chunks)
        assert streamed_text(chunks) == S1.text


async def test_a_stage_failing_mid_stream_ends_it_with_an_error_event() -> None:
    async with serve(ESCALATE) as r:
        r.stages[1].fail, r.stages[1].stream_fail_after = StageTimeout, 2
        resp = await r.chat(stream=True)
        assert resp.status_code == 200  # the headers had gone out
        chunks = events(resp)
        assert streamed_text(chunks) == "".join(S1.tokens[:2])
        assert chunks[-2]["error"]["type"] == "upstream_error" and "stage 's1'" in chunks[-2]["error"]["message"]
        assert chunks[-1] == "[DONE]"


# -- pass-through -----------------------------------------------------------------


async def test_passthrough_by_stage_name() -> None:
    async with serve(ESCALATE) as r:
        resp = await r.chat(model="s1", max_tokens=3)
        assert resp.status_code == 200, resp.text
        data = resp.json()
        assert data["model"] == "s1" and data["choices"][0]["message"]["content"] == "".join(S1.tokens[:3])
        assert data["choices"][0]["finish_reason"] == "length" and data["usage"]["completion_tokens"] == 3
        assert resp.headers["x-cascade-stage"] == resp.headers["x-cascade-path"] == "s1" and "x-cascade-p" not in resp.headers
        assert resp.headers["x-cascade-tokens"] == "s1=11+3" and resp.headers["x-cascade-cost"] == "4"
        assert resp.headers["x-cascade-cost-unit"] == "cost"
        assert r.stages[0].calls == [] and len(r.stages[1].calls) == 1
        sent = r.stages[1].calls[0]
        assert sent["messages"] == PROMPT and sent["max_tokens"] == 3 and "model" not in sent and "logprobs" not in sent


async def test_passthrough_stream_renames_the_model() -> None:
    async with serve(ESCALATE) as r:
        stream = await r.openai().chat.completions.create(model="s0", messages=PROMPT, stream=True)  # type: ignore[arg-type]
        chunks = [c async for c in stream]
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == S0.text
        assert all(c.model == "s0" for c in chunks)  # the stage called itself m0
        resp = await r.chat(model="s0", stream=True)
        assert resp.headers["x-cascade-tokens"] == "-" and resp.headers["x-cascade-cost"] == "1"  # its tokens are in its stream


@pytest.mark.parametrize("api", ["chat", "completions"])
async def test_passthrough_errors(api: str) -> None:
    async with serve(ESCALATE) as r:
        ask = r.chat if api == "chat" else r.complete
        r.stages[0].fail = StageUnavailable
        assert_upstream_error(await ask(model="s0"), 503, "s0")
        assert_upstream_error(await ask(model="s0", stream=True), 503, "s0")  # before any byte: a plain error
        resp = await ask(model="s1", cascade_lambda=1.0)
        assert resp.status_code == 400 and resp.json()["error"]["param"] == "cascade_lambda"
        resp = await ask(model="gpt-9")
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "model_not_found"


# -- logprobs, the app's lifecycle, accounting, the traffic log ---------------------------------


async def test_logprobs_only_when_asked_and_only_as_many_as_asked() -> None:
    async with serve(STOP) as r:
        resp = await r.chat(logprobs=True, top_logprobs=2)
        content = resp.json()["choices"][0]["logprobs"]["content"]
        assert [e["token"] for e in content] == S0.tokens and all(len(e["top_logprobs"]) == 2 for e in content)
        assert r.stages[0].calls[0]["top_logprobs"] == r.predictor.top_k


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "through-fastapi"])
async def test_public_routes_answer_alike_served_directly_or_through_fastapi(direct: bool) -> None:
    """``RouterApp`` serves the public POSTs itself; FastAPI's stack serves them where the direct route does not
    apply. Both give the same answers: a cascade's, a pass-through's, a refusal naming its field, an unknown model's
    404, and an error nobody expected (a stage's bug) as a 500 in OpenAI's shape that names only its type."""
    async with serve(STOP, direct_routes=direct) as r:
        chat = await r.chat(max_tokens=16)
        assert chat.status_code == 200 and chat.json()["choices"][0]["message"]["content"] == S0.text
        assert chat.headers["x-cascade-stage"] == "s0" and "x-cascade-overhead-ms" in chat.headers
        text = await r.complete(max_tokens=16)
        assert text.status_code == 200 and text.json()["object"] == "text_completion"
        resp = await r.client.post("/v1/responses", json={"model": "s1", "input": "What is 2 + 2?"})
        assert resp.status_code == 200 and resp.json()["output"][0]["content"][0]["text"] == S1.text
        bad = await r.chat(temperature="hot")
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "temperature"
        unknown = await r.client.post("/v1/chat/completions", json={"model": "gpt-9", "messages": PROMPT})
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"

        async def broken(body: dict[str, object]) -> None:
            raise ZeroDivisionError("a stage's own bug")

        r.stages[0].chat = broken  # type: ignore[method-assign,assignment]
        if not direct:  # Starlette answers, then re-raises to the server (to log it), which httpx's transport passes on
            with pytest.raises(ZeroDivisionError):
                await r.client.post("/v1/chat/completions", json={"model": "s0", "messages": PROMPT})
            return
        failed = await r.client.post("/v1/chat/completions", json={"model": "s0", "messages": PROMPT})
        assert failed.status_code == 500, failed.text
        error = {"message": "internal error: ZeroDivisionError", "type": "server_error", "param": None, "code": None}
        assert failed.json()["error"] == error


async def test_a_body_over_the_limit_is_refused_and_one_in_pieces_is_read_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    body = orjson.dumps({"model": "s0", "messages": PROMPT, "max_tokens": 16})
    monkeypatch.setattr(api, "MAX_BODY_BYTES", len(body))
    async with serve(STOP) as r:

        async def pieces() -> AsyncIterator[bytes]:  # sent chunked: the server hands it over in several messages
            for i in range(0, len(body), 7):
                yield body[i : i + 7]

        whole = await r.client.post("/v1/chat/completions", content=pieces())
        assert whole.status_code == 200 and whole.json()["choices"][0]["message"]["content"] == S0.text
        big = await r.client.post("/v1/chat/completions", content=body + b" ")
        assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
        assert (await r.client.post("/v1/chat/completions", content=body)).status_code == 200  # nothing left behind


async def test_lifespan_starts_and_closes_the_stages_and_health_probes_them() -> None:
    async with serve(STOP) as r:
        assert all(s.started and not s.closed for s in r.stages)
        r.stages[1].up = False
        health = (await r.client.get("/health", params={"stages": "true"})).json()
        assert health["status"] == "degraded" and health["stages"] == {"s0": "ok", "s1": "unreachable"}
        assert health["predictor"] == "scripted"
        models = (await r.client.get("/v1/models")).json()
        assert [m["id"] for m in models["data"]] == ["cascade", "s0", "s1"]
    assert all(s.closed for s in r.stages)


async def test_health_reports_a_stage_whose_process_died_as_dead() -> None:
    """Under ``adaptive-sd up`` the router knows its stages' processes: a dead one reads dead, not merely unreachable."""
    settings = make_settings()
    stages = fake_stages(settings.stages, S0, S1)
    dead = {"s1": "dead (killed by SIGSEGV)"}
    async with app_client(settings, predictor=scripted(STOP), stages=stages, stage_process=dead.get) as client:
        stages[1].up = False
        health = (await client.get("/health", params={"stages": "true"})).json()
    assert health["status"] == "degraded" and health["stages"] == {"s0": "ok", "s1": "dead (killed by SIGSEGV)"}


def test_stages_must_match_the_configuration() -> None:
    settings = make_settings()
    with pytest.raises(ValueError, match="do not match"):
        create_app(settings, predictor=ScriptedPredictor({}, [0.5, 0.9]), stages=fake_stages(settings.stages[:1]))


async def test_create_returns_the_response_and_the_outcome() -> None:
    """What the route accounts for: who answered, tokens, the cost of every stage called."""
    serving = chat_serving(make_settings())
    req = parse_chat_request(orjson.dumps({"model": "cascade", "messages": PROMPT}))
    response, outcome = await serving.create(req, {})
    assert response.status_code == 200
    assert (outcome.stage, outcome.cost) == ("s1", 5.0)
    assert outcome.tokens == orjson.loads(bytes(response.body))["usage"]["total_tokens"]
    serving.stages["s1"].fail = StageTimeout  # type: ignore[attr-defined]  # a FakeStage
    _, degraded = await serving.create(req, {})
    assert (degraded.stage, degraded.cost) == ("s0", 5.0)  # the failed call is paid for too
    _, direct = await serving.create(parse_chat_request(orjson.dumps({"model": "s0", "messages": PROMPT})), {})
    assert (direct.stage, direct.cost, direct.tokens) == ("s0", 1.0, 10 + len(S0.tokens))


async def test_traffic_log_records_the_visited_stages(tmp_path: Path) -> None:
    log = tmp_path / "traffic.jsonl"
    async with serve(ESCALATE, make_settings(dialect="vllm", predictor={"log_path": str(log)})) as r:
        assert (await r.chat(temperature=0, max_tokens=32)).status_code == 200
    (row,) = [orjson.loads(line) for line in log.read_text().splitlines()]
    lower, upper = row["stages"]
    assert lower["text"] == S0.text and lower["logprobs"] and lower["agreement"] == 3 / 4
    assert lower["usage"] == {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14}
    assert upper["text"] == S1.text and upper["draft"]["accepted"] == 3 and upper["draft"]["tokens"] == 4
    assert upper["draft"]["seconds"] >= 0  # as in a collected row
