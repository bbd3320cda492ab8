"""The official ``openai`` client, as an app uses it, through the router (``cascade`` and a stage name)."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from openai import OpenAI
from pydantic import BaseModel

from tests.conftest import RouterProcess
from tests.router.clients.conftest import (
    HELLO_PROMPT,
    MAX_TOKENS,
    PERSON_PROMPT,
    TARGETS,
    WEATHER_PROMPT,
    WEATHER_RESULT,
    WEATHER_SYSTEM,
    Ladder,
)
from tests.router.test_tools_live import WEATHER

GREEDY: Any = {"temperature": 0.0, "max_tokens": MAX_TOKENS}
RESPONSES_GREEDY: Any = {"temperature": 0.0, "max_output_tokens": MAX_TOKENS}


class Person(BaseModel):
    name: str
    age: int


class GetWeather(BaseModel):
    """Get the current weather in a city."""

    city: str


WEATHER_TOOL = openai.pydantic_function_tool(GetWeather, name="get_weather")  # strict, as the SDK writes it
WEATHER_DICT: Any = WEATHER  # the hand-written, non-strict shape most apps send (the live tool tests send it too)
WEATHER_RESPONSES_TOOL: Any = {
    "type": "function",
    "name": "get_weather",
    **{k: v for k, v in WEATHER_DICT["function"].items() if k != "name"},
}
NAMED: Any = {"type": "function", "function": {"name": "get_weather"}}
MESSAGES: Any = [{"role": "system", "content": WEATHER_SYSTEM}, {"role": "user", "content": WEATHER_PROMPT}]


def _city(arguments: str) -> str:
    """A call's arguments: JSON that meets get_weather's schema."""
    return GetWeather.model_validate_json(arguments).city


@pytest.mark.parametrize("target", TARGETS)
def test_parse_with_a_pydantic_model(client: OpenAI, ladder: Ladder, target: str) -> None:
    """``chat.completions.parse(response_format=Model)`` sends a strict json_schema and gets the model back."""
    raw = client.chat.completions.with_raw_response.parse(
        model=ladder.model(target), messages=[{"role": "user", "content": PERSON_PROMPT}], response_format=Person, **GREEDY
    )
    resp = raw.parse()
    choice = resp.choices[0]
    assert choice.finish_reason == "stop" and isinstance(choice.message.parsed, Person)
    assert Person.model_validate_json(choice.message.content or "") == choice.message.parsed
    assert raw.headers["x-cascade-kind"] == "json_schema"
    if target == "stage":
        assert raw.headers["x-cascade-stage"] == ladder.tools


@pytest.mark.parametrize("target", TARGETS)
def test_a_forced_tool_call_parses_into_the_pydantic_model(client: OpenAI, ladder: Ladder, target: str) -> None:
    raw = client.chat.completions.with_raw_response.parse(
        model=ladder.model(target), messages=MESSAGES, tools=[WEATHER_TOOL], tool_choice=NAMED, **GREEDY
    )
    resp = raw.parse()
    ladder.check_tool_headers(target, raw.headers)
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    assert isinstance(call.function.parsed_arguments, GetWeather)
    assert call.function.parsed_arguments.city == _city(call.function.arguments)


@pytest.mark.parametrize("target", TARGETS)
def test_auto_tool_call_and_the_tool_result_round_trip(client: OpenAI, ladder: Ladder, target: str) -> None:
    """``tool_choice: auto`` with a prompt that asks for the tool; the message goes back as the SDK object, then the result.

    Whether ``auto`` calls the tool is the model's choice: Qwen2.5-Coder-0.5B does for this prompt (greedy).
    """
    model = ladder.model(target)
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=MESSAGES, tools=[WEATHER_DICT], tool_choice="auto", **GREEDY
    )
    ladder.check_tool_headers(target, raw.headers)
    first = raw.parse().choices[0]
    assert first.finish_reason == "tool_calls", f"the model answered without calling the tool: {first.message.content!r}"
    calls = first.message.tool_calls or []
    assert calls and all(c.function.name == "get_weather" and _city(c.function.arguments) for c in calls)
    # the app appends the SDK's message object as it is (content None, tool_calls), then one tool message per call
    history: Any = [*MESSAGES, first.message, *({"role": "tool", "tool_call_id": c.id, "content": WEATHER_RESULT} for c in calls)]
    answer = client.chat.completions.create(model=model, messages=history, tools=[WEATHER_DICT], tool_choice="none", **GREEDY).choices[0]
    assert answer.finish_reason in ("stop", "length") and answer.message.content and not answer.message.tool_calls
    # the same history with `auto` again: whatever the model does, the answer keeps the protocol
    again = client.chat.completions.create(model=model, messages=history, tools=[WEATHER_DICT], tool_choice="auto", **GREEDY).choices[0]
    assert again.finish_reason in ("stop", "length", "tool_calls")
    for c in again.message.tool_calls or []:
        assert c.function.name == "get_weather"
        json.loads(c.function.arguments)


@pytest.mark.parametrize("target", TARGETS)
def test_streamed_tool_calls(client: OpenAI, ladder: Ladder, target: str) -> None:
    """Tool calls as ``delta.tool_calls`` chunks: the raw stream (with headers) and the SDK's ``stream()`` helper."""
    model = ladder.model(target)
    with client.chat.completions.with_streaming_response.create(
        model=model, messages=MESSAGES, tools=[WEATHER_DICT], tool_choice="required", stream=True, **GREEDY
    ) as raw:
        ladder.check_tool_headers(target, raw.headers)
        chunks = list(raw.parse())
    deltas = [d for ch in chunks for d in (ch.choices[0].delta.tool_calls or []) if ch.choices]
    assert deltas and deltas[0].id and deltas[0].type == "function" and deltas[0].function and deltas[0].function.name == "get_weather"
    arguments = "".join(d.function.arguments or "" for d in deltas if d.function and d.index == 0)
    assert _city(arguments)
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason] == ["tool_calls"]

    with client.chat.completions.stream(model=model, messages=MESSAGES, tools=[WEATHER_TOOL], tool_choice=NAMED, **GREEDY) as stream:
        events = list(stream)
        final = stream.get_final_completion()
    done = [e for e in events if e.type == "tool_calls.function.arguments.done"]
    assert [e.name for e in done] == ["get_weather"] and isinstance(done[0].parsed_arguments, GetWeather)
    (call,) = final.choices[0].message.tool_calls or []
    assert final.choices[0].finish_reason == "tool_calls" and call.function.parsed_arguments == done[0].parsed_arguments


@pytest.mark.parametrize("target", TARGETS)
def test_responses_create_and_the_function_call_round_trip(client: OpenAI, ladder: Ladder, target: str) -> None:
    model = ladder.model(target)
    text = client.responses.create(model=model, instructions="Be brief.", input=HELLO_PROMPT, **RESPONSES_GREEDY)
    assert text.id.startswith("resp_") and text.status in ("completed", "incomplete") and text.output_text
    assert text.usage is not None and text.usage.output_tokens > 0

    raw = client.responses.with_raw_response.create(
        model=model,
        instructions=WEATHER_SYSTEM,
        input=WEATHER_PROMPT,
        tools=[WEATHER_RESPONSES_TOOL],
        tool_choice="required",
        **RESPONSES_GREEDY,
    )
    ladder.check_tool_headers(target, raw.headers)
    resp = raw.parse()
    assert resp.status == "completed"
    calls = [item for item in resp.output if item.type == "function_call"]
    assert calls and all(c.name == "get_weather" and c.call_id and _city(c.arguments) for c in calls)
    # stateless: the app sends the whole conversation back, the calls and their outputs included
    history: Any = [
        {"role": "user", "content": WEATHER_PROMPT},
        *resp.output,
        *({"type": "function_call_output", "call_id": c.call_id, "output": WEATHER_RESULT} for c in calls),
    ]
    answer = client.responses.create(
        model=model,
        instructions=WEATHER_SYSTEM,
        input=history,
        tools=[WEATHER_RESPONSES_TOOL],
        tool_choice="none",
        store=False,
        **RESPONSES_GREEDY,
    )
    assert answer.output_text and not [item for item in answer.output if item.type == "function_call"]

    parsed = client.responses.parse(model=model, input=PERSON_PROMPT, text_format=Person, **RESPONSES_GREEDY)
    assert isinstance(parsed.output_parsed, Person)


@pytest.mark.parametrize("target", TARGETS)
def test_responses_stream(client: OpenAI, ladder: Ladder, target: str) -> None:
    model = ladder.model(target)
    with client.responses.stream(model=model, instructions="Be brief.", input=HELLO_PROMPT, **RESPONSES_GREEDY) as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"] and types[-1] in ("response.completed", "response.incomplete")
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == final.output_text != ""

    tool: Any = {
        **WEATHER_RESPONSES_TOOL,
        "parameters": {**WEATHER_RESPONSES_TOOL["parameters"], "additionalProperties": False},
        "strict": True,
    }
    named: Any = {"type": "function", "name": "get_weather"}
    with client.responses.stream(model=model, input=WEATHER_PROMPT, tools=[tool], tool_choice=named, **RESPONSES_GREEDY) as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [e.type for e in events]
    assert "response.function_call_arguments.delta" in types and types[-1] == "response.completed"
    (done,) = [e for e in events if e.type == "response.function_call_arguments.done"]
    (call,) = [item for item in final.output if item.type == "function_call"]
    assert call.name == "get_weather" and call.arguments == done.arguments and _city(call.arguments)


@pytest.mark.parametrize("target", TARGETS)
def test_completions_create(completions_route: None, client: OpenAI, ladder: Ladder, target: str) -> None:
    resp = client.completions.create(model=ladder.model(target), prompt="def add(a, b):", max_tokens=16, temperature=0.0)
    assert resp.object == "text_completion" and resp.choices[0].text and resp.choices[0].finish_reason in ("stop", "length")
    assert resp.usage is not None and resp.usage.completion_tokens > 0
    streamed = list(
        client.completions.create(model=ladder.model(target), prompt="def add(a, b):", max_tokens=16, temperature=0.0, stream=True)
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices)


def test_models_retrieve(client: OpenAI, router: RouterProcess) -> None:
    for name in ["cascade", *(s.name for s in router.settings.stages)]:
        model = client.models.retrieve(name)
        assert model.id == name and model.object == "model"
    assert [m.id for m in client.models.list()] == ["cascade", *(s.name for s in router.settings.stages)]
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")
