"""``POST /v1/responses`` in-process: scripted stages (``fake_stage.py``) and a scripted p̂, through the ASGI app.

Every body and event the router sends is parsed with the ``openai`` package's own
Responses types, and checked to carry no key those types do not know
(``assert_openai_shape``), so the shapes are OpenAI's and not merely close. The
app and the policy are ``inprocess.py``'s: stage 0 stops at p̂ >= 0.5.
What real stages do is in ``test_responses_live.py``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
import orjson
import pytest
from openai.types.responses import FunctionToolParam, Response, ResponseOutputMessage, ResponseOutputText, ResponseStreamEvent
from pydantic import BaseModel, TypeAdapter

from common.responses_protocol import parse_responses_request, responses_param
from router.stage import StageTimeout, StageUnavailable
from tests.router.fake_stage import FakeStage, Script
from tests.router.inprocess import ESCALATE, S0, S1, STOP, app_client, make_settings, openai_client, scripted

pytestmark = pytest.mark.anyio

WEATHER: FunctionToolParam = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "strict": True,
}
EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)


@dataclass
class ToolStage(FakeStage):
    """A fake stage that answers with chat tool calls when it is offered tools (and has not just seen a tool's result).

    Streamed, each call comes as OpenAI streams it: a delta with the id and name, then its arguments in two pieces.
    """

    tool_calls: list[tuple[str, str]] = field(default_factory=list)  # (name, arguments JSON)

    def _calls(self, body: dict[str, Any]) -> bool:
        last = (body.get("messages") or [{}])[-1]
        return bool(self.tool_calls and body.get("tools") and body.get("tool_choice") != "none" and last.get("role") != "tool")

    def completion(self, body: dict[str, Any]) -> dict[str, Any]:
        out = super().completion(body)
        if self._calls(body):
            calls = [
                {"id": f"call_{i}", "type": "function", "function": {"name": n, "arguments": a}} for i, (n, a) in enumerate(self.tool_calls)
            ]
            out["choices"][0]["message"] = {"role": "assistant", "content": None, "tool_calls": calls}
            out["choices"][0]["finish_reason"] = "tool_calls"
        return out

    def _chunks(self, body: dict[str, Any]) -> list[bytes]:
        if not self._calls(body):
            return super()._chunks(body)
        base = {"id": f"chatcmpl-{self.name}", "object": "chat.completion.chunk", "created": 0, "model": self.config.model}

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            return orjson.dumps({**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]})

        out = [chunk({"role": "assistant", "content": None})]
        for i, (name, arguments) in enumerate(self.tool_calls):
            out.append(
                chunk({"tool_calls": [{"index": i, "id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": ""}}]})
            )
            half = len(arguments) // 2
            for piece in (arguments[:half], arguments[half:]):
                out.append(chunk({"tool_calls": [{"index": i, "function": {"arguments": piece}}]}))
        out.append(chunk({}, "tool_calls"))
        if (body.get("stream_options") or {}).get("include_usage"):
            out.append(orjson.dumps({**base, "choices": [], "usage": {"prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29}}))
        return out


@dataclass
class Router:
    http: httpx.AsyncClient
    stages: list[ToolStage]
    client: openai.AsyncOpenAI

    async def post(self, **body: Any) -> httpx.Response:
        return await self.http.post("/v1/responses", json={"model": "cascade", "input": "What is 2 + 2?", **body})


@asynccontextmanager
async def serve(p0: float = STOP, dialect: str = "openai", tool_calls: tuple[tuple[str, str], ...] = ()) -> AsyncIterator[Router]:
    settings = make_settings(dialect=dialect)
    stages = [ToolStage(c, s, tool_calls=list(tool_calls)) for c, s in zip(settings.stages, (S0, S1), strict=True)]
    async with app_client(settings, predictor=scripted(p0), stages=stages) as http:
        yield Router(http, stages, openai_client(http))


def assert_openai_shape(obj: object, path: str = "") -> None:
    """No key the SDK's types do not know, anywhere (the SDK's models keep unknown keys as extras)."""
    if isinstance(obj, BaseModel):
        assert not obj.model_extra, f"{path or type(obj).__name__}: keys unknown to {type(obj).__name__}: {sorted(obj.model_extra or {})}"
        for name in type(obj).model_fields:
            assert_openai_shape(getattr(obj, name), f"{path}.{name}")
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            assert_openai_shape(value, f"{path}[{i}]")


def parse_response(resp: httpx.Response) -> Response:
    assert resp.status_code == 200, resp.text
    parsed = Response.model_validate(resp.json())
    assert_openai_shape(parsed)
    return parsed


def sse_events(resp: httpx.Response) -> list[dict[str, Any]]:
    """The events of a Responses stream, checked for OpenAI's framing: ``event: <type>`` then ``data: <json>`` with that type."""
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/event-stream")
    out: list[dict[str, Any]] = []
    for block in resp.text.split("\n\n"):
        if not block.strip():
            continue
        event, data = block.split("\n")
        assert event.startswith("event: ") and data.startswith("data: "), block
        payload = orjson.loads(data[len("data: ") :])
        assert payload["type"] == event[len("event: ") :]
        assert_openai_shape(EVENTS.validate_python(payload))
        out.append(payload)
    assert [e["sequence_number"] for e in out] == list(range(len(out)))
    return out


def assert_error(resp: httpx.Response, status: int, param: str | None) -> str:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["param"] == param
    if param:
        assert param.split(".")[0].split("[")[0] in err["message"], err["message"]
    return str(err["message"])


TEXT_STREAM = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


def first_text(resp: Response) -> ResponseOutputText:
    """The first output item's first content part, which must be a message's text."""
    message = resp.output[0]
    assert isinstance(message, ResponseOutputMessage) and isinstance(message.content[0], ResponseOutputText)
    return message.content[0]


def squeeze(types: list[str]) -> list[str]:
    """Event types with runs of deltas collapsed to one."""
    return [t for i, t in enumerate(types) if not (t.endswith(".delta") and i and types[i - 1] == t)]


# -- create ---------------------------------------------------------------------------


async def test_string_input_through_the_cascade() -> None:
    async with serve(STOP) as r:
        raw = await r.client.responses.with_raw_response.create(model="cascade", input="What is 2 + 2?", max_output_tokens=16)
        resp = raw.parse()
        assert_openai_shape(resp)
        assert resp.id.startswith("resp_") and resp.object == "response" and resp.status == "completed"
        assert resp.model == "cascade" and resp.output_text == S0.text
        (message,) = resp.output
        assert message.type == "message" and message.role == "assistant" and message.status == "completed"
        assert message.id.startswith("msg_") and message.content[0].type == "output_text" and message.content[0].annotations == []
        assert resp.usage is not None
        assert (resp.usage.input_tokens, resp.usage.output_tokens, resp.usage.total_tokens) == (10, 4, 14)
        assert resp.usage.input_tokens_details.cached_tokens == 0 and resp.usage.output_tokens_details.reasoning_tokens == 0
        assert resp.max_output_tokens == 16 and resp.tools == [] and resp.tool_choice == "auto" and resp.parallel_tool_calls is True
        assert resp.text is not None and resp.text.format is not None and resp.text.format.type == "text"
        assert raw.headers["x-cascade-stage"] == raw.headers["x-cascade-path"] == "s0" and raw.headers["x-cascade-lambda"] == "10"
        assert raw.headers["x-cascade-tokens"] == "s0=10+4"
        assert (raw.headers["x-cascade-cost"], raw.headers["x-cascade-cost-unit"]) == ("1", "cost")
        sent = r.stages[0].calls[0]
        assert sent["messages"] == [{"role": "user", "content": "What is 2 + 2?"}] and sent["max_tokens"] == 16
        assert not {"model", "input", "max_output_tokens", "store", "stream"} & set(sent) - {"stream"}


async def test_items_and_instructions_become_the_chat_messages() -> None:
    async with serve(STOP) as r:
        resp = await r.client.responses.create(
            model="cascade",
            instructions="Answer briefly.",
            input=[
                {"role": "developer", "content": "Use digits."},
                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "What is 1 + 1?"}]},
                {
                    "type": "message",
                    "role": "assistant",
                    "id": "msg_1",
                    "status": "completed",
                    "content": [{"type": "output_text", "text": "2", "annotations": []}],
                },
                {"role": "user", "content": "And 2 + 2?"},
            ],
            temperature=0.0,
            top_p=0.5,
        )
        assert resp.output_text == S0.text and resp.instructions == "Answer briefly." and (resp.temperature, resp.top_p) == (0.0, 0.5)
        sent = r.stages[0].calls[0]
        assert sent["messages"] == [
            {"role": "system", "content": "Answer briefly."},
            {"role": "developer", "content": "Use digits."},
            {"role": "user", "content": [{"type": "text", "text": "What is 1 + 1?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "2"}]},
            {"role": "user", "content": "And 2 + 2?"},
        ]
        assert (sent["temperature"], sent["top_p"]) == (0.0, 0.5)


async def test_ignored_fields_are_accepted_and_never_forwarded() -> None:
    async with serve(STOP) as r:
        resp = await r.post(
            store=False,
            metadata={"trace": "1"},
            user="u-1",
            service_tier="auto",
            truncation="auto",
            include=["reasoning.encrypted_content"],
            reasoning={"effort": "low"},
            prompt_cache_key="k",
            safety_identifier="s",
            parallel_tool_calls=False,
            text={"format": {"type": "text"}, "verbosity": "low"},
            stream_options=None,
        )
        parsed = parse_response(resp)
        assert parsed.metadata == {"trace": "1"} and parsed.user == "u-1" and parsed.truncation == "auto"
        assert parsed.parallel_tool_calls is False and parsed.text is not None and parsed.text.verbosity == "low"
        sent = r.stages[0].calls[0]
        assert not {"store", "metadata", "user", "service_tier", "truncation", "include", "reasoning", "text", "response_format"} & set(
            sent
        )


async def test_escalation_is_in_the_headers_and_the_usage_is_summed() -> None:
    async with serve(ESCALATE) as r:
        resp = await r.post(max_output_tokens=32)
        parsed = parse_response(resp)
        assert parsed.output_text == S1.text
        assert resp.headers["x-cascade-stage"] == "s1" and resp.headers["x-cascade-path"] == "s0,s1"
        assert resp.headers["x-cascade-p"] == "0.1000,0.8000" and "x-cascade-overhead-ms" in resp.headers
        n0, n1 = len(S0.tokens), len(S1.tokens)
        assert parsed.usage is not None and (parsed.usage.input_tokens, parsed.usage.output_tokens) == (21, n0 + n1)
        assert resp.headers["x-cascade-tokens"] == f"s0=10+{n0},s1=11+{n1}" and resp.headers["x-cascade-cost"] == "5"


async def test_tokens_per_stage_after_a_verified_draft() -> None:
    """s1's usage counts the draft it verified: its scoring call's prompt (11 + 4 draft tokens), the continuation's
    (11 + 3 kept), the 3 kept tokens and the continuation's own."""
    async with serve(ESCALATE, dialect="vllm") as r:
        raw = await r.client.responses.with_raw_response.create(
            model="cascade", input="What is 2 + 2?", temperature=0, max_output_tokens=32
        )
        usage = raw.parse().usage
        assert raw.headers["x-cascade-accepted"] == "s1:3/4"
        assert raw.headers["x-cascade-tokens"] == f"s0=10+4,s1=29+{len(S1.tokens)}" and raw.headers["x-cascade-cost"] == "5"
        assert usage is not None and (usage.input_tokens, usage.output_tokens) == (10 + 29, 4 + len(S1.tokens))


async def test_cascade_knobs_in_the_body_and_the_headers() -> None:
    async with serve(ESCALATE) as r:
        resp = await r.post(cascade_lambda=0.0)
        assert resp.status_code == 200 and resp.headers["x-cascade-stage"] == "s0" and resp.headers["x-cascade-lambda"] == "0"
        raw = await r.client.responses.with_raw_response.create(model="cascade", input="hi", extra_headers={"x-cascade-max-stage": "s0"})
        assert raw.headers["x-cascade-stage"] == "s0" and r.stages[1].calls == []
        assert_error(await r.post(cascade_max_stage=7), 400, "cascade_max_stage")


async def test_passthrough_by_stage_name_and_an_incomplete_answer() -> None:
    async with serve(ESCALATE) as r:
        resp = await r.client.responses.create(model="s1", input="What is 2 + 2?", max_output_tokens=3)
        assert resp.model == "s1" and resp.output_text == "".join(S1.tokens[:3])
        assert resp.status == "incomplete" and resp.incomplete_details is not None and resp.incomplete_details.reason == "max_output_tokens"
        assert resp.output[0].status == "incomplete"  # type: ignore[union-attr]
        assert r.stages[0].calls == [] and r.stages[1].calls[0]["max_tokens"] == 3
        raw = await r.client.responses.with_raw_response.create(model="s1", input="What is 2 + 2?", max_output_tokens=3)
        assert raw.headers["x-cascade-tokens"] == "s1=11+3" and raw.headers["x-cascade-cost"] == "4"


async def test_logprobs_when_asked() -> None:
    async with serve(STOP) as r:
        resp = await r.client.responses.create(model="cascade", input="hi", include=["message.output_text.logprobs"], top_logprobs=2)
        content = first_text(resp)
        assert content.logprobs is not None
        assert [lp.token for lp in content.logprobs] == S0.tokens and all(len(lp.top_logprobs) == 2 for lp in content.logprobs)
        assert content.logprobs[0].bytes == list(S0.tokens[0].encode()) and resp.top_logprobs == 2
        plain = await r.client.responses.create(model="cascade", input="hi")
        assert first_text(plain).logprobs == []


# -- tools ------------------------------------------------------------------------------


async def test_a_function_call_is_a_function_call_item() -> None:
    async with serve(STOP, tool_calls=(("get_weather", '{"city": "Paris"}'),)) as r:
        resp = await r.client.responses.create(
            model="cascade",
            input="Weather in Paris?",
            tools=[WEATHER],
            tool_choice={"type": "function", "name": "get_weather"},
            parallel_tool_calls=False,
        )
        assert_openai_shape(resp)
        (call,) = resp.output
        assert call.type == "function_call" and call.id is not None and call.id.startswith("fc_")
        assert (call.call_id, call.name, json.loads(call.arguments), call.status) == (
            "call_0",
            "get_weather",
            {"city": "Paris"},
            "completed",
        )
        assert resp.tools[0].type == "function" and resp.tools[0].name == "get_weather" and resp.tools[0].strict is True
        assert resp.tool_choice.type == "function" and resp.tool_choice.name == "get_weather"  # type: ignore[union-attr]
        sent = r.stages[0].calls[0]
        assert sent["tools"] == [
            {"type": "function", "function": {k: v for k, v in WEATHER.items() if k != "type"}},
        ]
        assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}} and sent["parallel_tool_calls"] is False


async def test_the_round_trip_with_function_call_output() -> None:
    async with serve(STOP, tool_calls=(("get_weather", '{"city": "Paris"}'), ("get_weather", '{"city": "Rome"}'))) as r:
        first = await r.client.responses.create(model="cascade", input="Weather in Paris and Rome?", tools=[WEATHER])
        assert [item.type for item in first.output] == ["function_call", "function_call"]
        history: list[Any] = [{"role": "user", "content": "Weather in Paris and Rome?"}]
        history += [item.model_dump(exclude_none=True) for item in first.output]  # as the SDKs send them back: id, status and all
        history += [
            {"type": "function_call_output", "call_id": "call_0", "output": "sunny"},
            {"type": "function_call_output", "call_id": "call_1", "output": [{"type": "input_text", "text": "rain"}]},
        ]
        second = await r.client.responses.create(model="cascade", input=history, tools=[WEATHER])
        assert second.output_text == S0.text
        messages = r.stages[0].calls[-1]["messages"]
        assert messages[1:] == [
            {
                "role": "assistant",
                "tool_calls": [
                    {"id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}},
                ],
            },
            {"role": "tool", "tool_call_id": "call_0", "content": "sunny"},
            {"role": "tool", "tool_call_id": "call_1", "content": "rain"},
        ]


async def test_allowed_tools_offers_only_those() -> None:
    other = {**WEATHER, "name": "get_time"}
    async with serve(STOP) as r:
        choice = {"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "get_time"}]}
        parse_response(await r.post(tools=[WEATHER, other], tool_choice=choice))
        sent = r.stages[0].calls[0]
        assert [t["function"]["name"] for t in sent["tools"]] == ["get_time"] and sent["tool_choice"] == "required"


async def test_text_format_json_schema() -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"], "additionalProperties": False}
    answer = Script('{"answer": 4}', prompt_tokens=10)
    async with serve(STOP) as r:
        r.stages[0].script = answer
        fmt = {"type": "json_schema", "name": "sum", "schema": schema, "strict": True}
        resp = await r.client.responses.create(model="cascade", input="2 + 2?", text={"format": fmt})  # type: ignore[call-overload]
        assert json.loads(resp.output_text) == {"answer": 4}
        assert resp.text is not None and resp.text.format is not None and resp.text.format.type == "json_schema"
        assert resp.text.format.schema_ == schema
        sent = r.stages[0].calls[0]
        assert sent["response_format"] == {"type": "json_schema", "json_schema": {"name": "sum", "schema": schema, "strict": True}}

        class Sum(BaseModel):
            answer: int

        parsed = await r.client.responses.parse(model="cascade", input="2 + 2?", text_format=Sum)  # the SDK's structured-output helper
        assert parsed.output_parsed == Sum(answer=4)
        await r.client.responses.create(model="cascade", input="2 + 2?", text={"format": {"type": "json_object"}})
        assert r.stages[0].calls[-1]["response_format"] == {"type": "json_object"}


# -- streaming ----------------------------------------------------------------------------


async def test_stream_from_a_stopped_lower_stage() -> None:
    async with serve(STOP) as r:
        async with r.client.responses.stream(model="cascade", input="What is 2 + 2?") as stream:
            events = [e async for e in stream]
            final = await stream.get_final_response()
        assert squeeze([e.type for e in events]) == TEXT_STREAM
        assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == S0.text
        assert final.output_text == S0.text and final.status == "completed" and final.id == events[0].response.id  # type: ignore[union-attr]
        assert final.usage is not None and (final.usage.input_tokens, final.usage.output_tokens) == (10, 4)
        assert events[0].response.status == "in_progress" and events[0].response.output == []  # type: ignore[union-attr]
        assert r.stages[1].calls == []


async def test_stream_from_the_top_stage_relays_its_tokens() -> None:
    async with serve(ESCALATE) as r:
        resp = await r.post(stream=True)
        assert resp.headers["x-cascade-stage"] == "s1" and resp.headers["x-cascade-path"] == "s0,s1"
        events = sse_events(resp)
        assert squeeze([e["type"] for e in events]) == TEXT_STREAM
        deltas = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
        assert "".join(deltas) == S1.text and len(deltas) == len(S1.tokens)  # token by token, as the stage streamed them
        final = Response.model_validate(events[-1]["response"])
        assert final.output_text == S1.text
        assert final.usage is not None and (final.usage.input_tokens, final.usage.output_tokens) == (21, len(S0.tokens) + len(S1.tokens))
        assert r.stages[1].calls[-1]["stream_options"] == {"include_usage": True}


async def test_stream_after_a_verified_draft() -> None:
    async with serve(ESCALATE, dialect="vllm") as r:
        resp = await r.post(stream=True, temperature=0, max_output_tokens=32)
        events = sse_events(resp)
        deltas = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
        assert deltas[0] == "The answer is" and "".join(deltas) == S1.text
        assert resp.headers["x-cascade-accepted"] == "s1:3/4"
        # the headers went out before s1 streamed: s0's tokens, s1 at its per-request price; the final usage less
        # the header's sums is s1's (as after a whole verified answer)
        assert resp.headers["x-cascade-tokens"] == "s0=10+4" and resp.headers["x-cascade-cost"] == "5"
        usage = Response.model_validate(events[-1]["response"]).usage
        assert usage is not None and (usage.input_tokens - 10, usage.output_tokens - 4) == (29, len(S1.tokens))


async def test_stream_with_logprobs() -> None:
    async with serve(ESCALATE) as r:
        events = sse_events(await r.post(stream=True, include=["message.output_text.logprobs"], top_logprobs=1))
        deltas = [e for e in events if e["type"] == "response.output_text.delta"]
        assert all(len(d["logprobs"]) == 1 and len(d["logprobs"][0]["top_logprobs"]) == 1 for d in deltas)
        (done,) = [e for e in events if e["type"] == "response.output_text.done"]
        assert [lp["token"] for lp in done["logprobs"]] == S1.tokens


async def test_stream_of_an_incomplete_answer_ends_with_response_incomplete() -> None:
    async with serve(ESCALATE) as r:
        events = sse_events(await r.post(model="s0", stream=True, max_output_tokens=2))
        assert events[-1]["type"] == "response.incomplete"
        final = Response.model_validate(events[-1]["response"])
        assert final.status == "incomplete" and final.incomplete_details is not None
        assert final.incomplete_details.reason == "max_output_tokens" and final.output_text == "".join(S0.tokens[:2])


@pytest.mark.parametrize("p0", [ESCALATE, None])  # the top stage's stream relayed; a stage named by the client
async def test_stream_of_function_calls(p0: float | None) -> None:
    calls = (("get_weather", '{"city": "Paris"}'), ("get_weather", '{"city": "Rome"}'))
    async with serve(p0 or STOP, tool_calls=calls) as r:
        model = "cascade" if p0 is not None else "s0"
        async with r.client.responses.stream(model=model, input="Weather?", tools=[WEATHER]) as stream:
            events = [e async for e in stream]
            final = await stream.get_final_response()
        call_events = [
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
        ]
        assert squeeze([e.type for e in events]) == [
            "response.created",
            "response.in_progress",
            *call_events,
            *call_events,
            "response.completed",
        ]
        assert all(c.type == "function_call" for c in final.output)
        assert [(c.call_id, json.loads(c.arguments)) for c in final.output if c.type == "function_call"] == [
            ("call_0", {"city": "Paris"}),
            ("call_1", {"city": "Rome"}),
        ]
        done = [e for e in events if e.type == "response.function_call_arguments.done"]
        assert [e.arguments for e in done] == [a for _, a in calls]
        assert final.usage is not None and final.usage.output_tokens > 0


async def test_a_stage_failing_mid_stream_is_an_error_event_then_response_failed() -> None:
    async with serve(ESCALATE) as r:
        r.stages[1].fail, r.stages[1].stream_fail_after = StageTimeout, 2
        events = sse_events(await r.post(stream=True))
        assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]
        error, failed = events[-2:]
        assert error["code"] == "upstream_error" and "stage 's1'" in error["message"]
        response = Response.model_validate(failed["response"])
        assert response.status == "failed" and response.error is not None and response.error.code == "server_error"
        assert response.output_text == "".join(S1.tokens[:2]) and response.output[0].status == "incomplete"  # type: ignore[union-attr]
        async with r.client.responses.stream(model="cascade", input="hi") as stream:
            types = [e.type async for e in stream]
            assert types[-2:] == ["error", "response.failed"]
            with pytest.raises(RuntimeError, match=r"response\.completed"):
                await stream.get_final_response()


async def test_a_stage_streaming_garbage_still_ends_the_stream_well_formed() -> None:
    async with serve(STOP) as r:

        async def garbage(payloads: list[bytes]) -> AsyncIterator[bytes]:  # the stage's payload stream (the translation reads it)
            yield payloads[0]
            yield b"{not json"

        r.stages[0]._payloads = garbage  # type: ignore[method-assign]
        events = sse_events(await r.post(model="s0", stream=True))
        assert [e["type"] for e in events] == ["response.created", "response.in_progress", "error", "response.failed"]
        assert events[-1]["response"]["status"] == "failed"


async def test_a_named_stage_failing_mid_stream_is_an_error_event_then_response_failed() -> None:
    """A pass-through's stream is read as the stage's chunks: a failure there ends it as the cascade's does."""
    async with serve(STOP) as r:
        r.stages[0].fail, r.stages[0].stream_fail_after = StageTimeout, 2
        resp = await r.post(model="s0", stream=True)
        assert resp.headers["x-cascade-stage"] == "s0"
        assert resp.headers["x-cascade-tokens"] == "-" and resp.headers["x-cascade-cost"] == "1"  # its tokens are in its stream
        events = sse_events(resp)
        assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]
        error, failed = events[-2:]
        assert error["code"] == "upstream_error" and "stage 's0'" in error["message"]
        assert failed["response"]["output"][0]["status"] == "incomplete"
        assert failed["response"]["output"][0]["content"][0]["text"] == "".join(S0.tokens[:2])


# -- errors ---------------------------------------------------------------------------------

IMAGE = {"type": "input_image", "image_url": "https://example.com/cat.png"}
BAD = [
    ({"store": True}, "store"),
    ({"previous_response_id": "resp_123"}, "previous_response_id"),
    ({"conversation": "conv_1"}, "conversation"),
    ({"background": True}, "background"),
    ({"prompt": {"id": "pmpt_1"}}, "prompt"),
    ({"modalities": ["text"]}, "modalities"),
    ({"moderation": {"model": "omni-moderation-latest"}}, "moderation"),
    ({"input": [{"role": "user", "content": [{"type": "input_text", "text": "what is this?"}, IMAGE]}]}, "input[0].content[1].type"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, "input[0].content[0].type"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
    ({"input": [{"type": "reasoning", "id": "rs_1", "summary": []}]}, "input[0].type"),
    ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "input[0].call_id"),
    ({"input": [{"type": "function_call_output", "call_id": "c", "output": [IMAGE]}]}, "input[0].output[0].type"),
    ({"input": [{"role": "wizard", "content": "hi"}]}, "input[0].role"),
    ({"input": [{"role": "user"}]}, "input[0].content"),
    ({"input": []}, "input"),
    ({"input": 5}, "input"),
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]}, "tools[0].type"),
    ({"tools": [{"type": "computer_use_preview", "display_width": 1, "display_height": 1, "environment": "linux"}]}, "tools[0].type"),
    ({"tools": [{"type": "function", "name": "bad name!"}]}, "tools[0].name"),
    ({"tools": [WEATHER, WEATHER]}, "tools"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": {"type": "web_search_preview"}}, "tool_choice.type"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tool_choice": "sometimes"}, "tool_choice"),
    ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
    ({"tools": [WEATHER], "tool_choice": "required", "text": {"format": {"type": "json_object"}}}, "text.format"),  # the chat rule
    ({"max_output_tokens": 0}, "max_output_tokens"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_logprobs": 21}, "top_logprobs"),
    ({"stream_options": {"include_obfuscation": False}}, "stream_options"),
    ({"store": "yes"}, "store"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "messages"),
    ({"max_tokens": 5}, "max_tokens"),
    ({"temprature": 0.5}, "temprature"),
]


@pytest.mark.parametrize(("extra", "param"), BAD, ids=[p for _, p in BAD])
async def test_bad_requests_are_400s_naming_the_field(extra: dict[str, Any], param: str) -> None:
    async with serve(STOP) as r:
        assert_error(await r.post(**extra), 400, param)
        assert r.stages[0].calls == []


async def test_errors_the_sdk_raises() -> None:
    async with serve(STOP) as r:
        with pytest.raises(openai.BadRequestError) as info:
            await r.client.responses.create(model="cascade", input="hi", store=True)
        assert info.value.param == "store" and "stateless" in info.value.message
        with pytest.raises(openai.BadRequestError) as info:
            await r.client.responses.create(model="cascade", input="hi", previous_response_id="resp_1")
        assert info.value.param == "previous_response_id"
        with pytest.raises(openai.BadRequestError) as info:
            await r.client.responses.create(model="cascade", input="hi", extra_body={"frobnicate": 1})
        assert info.value.param == "frobnicate" and "Unrecognized request argument" in info.value.message


async def test_bad_bodies_models_and_failing_stages() -> None:
    async with serve(STOP) as r:
        assert_error(await r.http.post("/v1/responses", content=b"{not json"), 400, None)
        assert_error(await r.http.post("/v1/responses", content=b""), 400, None)
        assert_error(await r.http.post("/v1/responses", json={"input": "hi"}), 400, "model")
        assert_error(await r.http.post("/v1/responses", json={"model": "cascade"}), 400, "input")
        resp = await r.post(model="gpt-9")
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "model_not_found"
        assert_error(await r.post(model="s1", cascade_lambda=1.0), 400, "cascade_lambda")
        for stage in r.stages:
            stage.fail = StageUnavailable
        for stream in (False, True):  # before any byte of a stream: a plain error
            resp = await r.post(stream=stream)
            assert resp.status_code == 503 and resp.json()["error"]["type"] == "upstream_error"


# -- the translation itself -------------------------------------------------------------------


def test_chat_parameter_names_as_the_responses_request_names_them() -> None:
    assert responses_param("response_format") == "text.format"
    assert responses_param("response_format.json_schema.name") == "text.format.name"
    assert responses_param("max_tokens") == "max_output_tokens"
    assert responses_param("tools[2].function.parameters") == "tools[2].parameters"
    assert responses_param("tool_choice.function.name") == "tool_choice.name"
    assert responses_param("messages[3].content") == "input"
    assert responses_param("cascade_lambda") == "cascade_lambda"


def test_function_calls_after_an_assistant_message_join_it() -> None:
    body = {
        "model": "cascade",
        "input": [
            {"role": "user", "content": "hi"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Let me look."}]},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "42"},
        ],
    }
    messages = parse_responses_request(orjson.dumps(body)).chat_request().messages
    assert [m.role for m in messages] == ["user", "assistant", "tool"]
    assert messages[1].text() == "Let me look." and messages[1].tool_calls is not None and messages[1].tool_calls[0].id == "c1"
