"""``langchain-openai``'s ``ChatOpenAI(base_url=...)`` through the router (``cascade`` and a stage name)."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from pydantic import BaseModel

from tests.router.clients import need
from tests.router.clients.conftest import HELLO_PROMPT, MAX_TOKENS, PERSON_PROMPT, TARGETS, WEATHER_PROMPT, WEATHER_SYSTEM, Ladder

need("langchain_openai", "langchain-openai")

from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage  # noqa: E402
from langchain_core.tools import tool  # noqa: E402
from langchain_openai import ChatOpenAI  # noqa: E402


class Person(BaseModel):
    """A person."""

    name: str
    age: int


@tool
def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return f"Sunny, 18 degrees Celsius in {city}."


WEATHER_MESSAGES = [SystemMessage(WEATHER_SYSTEM), HumanMessage(WEATHER_PROMPT)]


def chat(ladder: Ladder, target: str, **kw: Any) -> ChatOpenAI:
    return ChatOpenAI(
        base_url=ladder.url,
        api_key="unused",
        model=ladder.model(target),
        temperature=0.0,
        max_tokens=MAX_TOKENS,
        max_retries=0,
        timeout=300,
        include_response_headers=True,
        **kw,
    )


def joined(chunks: list[Any]) -> AIMessageChunk:
    """A stream's chunks added up, as LangChain's callers do."""
    whole: Any = chunks[0]
    for c in chunks[1:]:
        whole = whole + c
    assert isinstance(whole, AIMessageChunk)
    return whole


@pytest.mark.parametrize("target", TARGETS)
def test_invoke(ladder: Ladder, target: str) -> None:
    msg = chat(ladder, target).invoke(HELLO_PROMPT)
    assert isinstance(msg, AIMessage) and isinstance(msg.content, str) and msg.content
    assert msg.response_metadata["finish_reason"] in ("stop", "length") and msg.response_metadata["model_name"] == ladder.model(target)
    assert msg.usage_metadata is not None and msg.usage_metadata["output_tokens"] > 0
    headers = msg.response_metadata["headers"]
    assert headers["x-cascade-stage"] in (ladder.lower, ladder.tools)


@pytest.mark.parametrize("target", TARGETS)
def test_stream(ladder: Ladder, target: str) -> None:
    chunks = list(chat(ladder, target, stream_usage=True).stream(HELLO_PROMPT))
    assert chunks and all(isinstance(c, AIMessageChunk) for c in chunks)
    whole = joined(chunks)
    assert isinstance(whole.content, str) and whole.content
    assert whole.response_metadata["finish_reason"] in ("stop", "length")
    assert whole.usage_metadata is not None and whole.usage_metadata["output_tokens"] > 0


@pytest.mark.parametrize("target", TARGETS)
def test_bind_tools(ladder: Ladder, target: str) -> None:
    """``bind_tools`` with the default ``tool_choice`` (auto): the prompt asks for the tool; Qwen-0.5B calls it (greedy)."""
    msg = chat(ladder, target).bind_tools([get_weather]).invoke(WEATHER_MESSAGES)
    ladder.check_tool_headers(target, msg.response_metadata["headers"])
    assert isinstance(msg, AIMessage) and not msg.invalid_tool_calls
    assert msg.tool_calls, f"the model answered without calling the tool: {msg.content!r}"
    for call in msg.tool_calls:
        assert call["name"] == "get_weather" and isinstance(call["args"]["city"], str) and call["id"]
    # the call run and its result sent back, as an agent loop does
    result = get_weather.invoke(msg.tool_calls[0])
    answer = chat(ladder, target).bind_tools([get_weather], tool_choice="none").invoke([*WEATHER_MESSAGES, msg, result])
    assert isinstance(answer.content, str) and answer.content and not answer.tool_calls


@pytest.mark.parametrize("target", TARGETS)
def test_bind_tools_streamed_and_forced(ladder: Ladder, target: str) -> None:
    whole = joined(list(chat(ladder, target).bind_tools([get_weather], tool_choice="get_weather").stream(WEATHER_MESSAGES)))
    assert whole.response_metadata["finish_reason"] == "tool_calls" and not whole.invalid_tool_calls
    (call,) = whole.tool_calls
    assert call["name"] == "get_weather" and isinstance(call["args"]["city"], str)


@pytest.mark.parametrize("target", TARGETS)
def test_with_structured_output(ladder: Ladder, target: str) -> None:
    """The default method (``json_schema``: ``response_format`` with the model's strict schema)."""
    out = chat(ladder, target).with_structured_output(Person, include_raw=True).invoke(PERSON_PROMPT)
    assert isinstance(out, dict) and out["parsing_error"] is None
    assert isinstance(out["parsed"], Person)
    assert out["raw"].response_metadata["headers"]["x-cascade-kind"] == "json_schema"


@pytest.mark.parametrize("target", TARGETS)
def test_invoke_on_the_responses_api(ladder: Ladder, target: str) -> None:
    """``use_responses_api=True`` (what ChatOpenAI switches to for reasoning, ``include`` and built-in tools)."""
    msg = chat(ladder, target, use_responses_api=True).invoke(HELLO_PROMPT)
    assert isinstance(msg, AIMessage) and msg.text
    assert msg.response_metadata["id"].startswith("resp_") and msg.response_metadata["status"] in ("completed", "incomplete")
    forced = chat(ladder, target, use_responses_api=True).bind_tools([get_weather], tool_choice="required").invoke(WEATHER_MESSAGES)
    (call,) = forced.tool_calls
    assert call["name"] == "get_weather" and isinstance(call["args"]["city"], str)


def test_a_refusal_reaches_langchain_as_the_sdks_error(ladder: Ladder) -> None:
    """Tools to the stage without tools (pass-through): a 400 naming ``tools``, raised as ``openai.BadRequestError``."""
    lower = ChatOpenAI(base_url=ladder.url, api_key="unused", model=ladder.lower, max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        lower.bind_tools([get_weather]).invoke(WEATHER_PROMPT)
    body: Any = info.value.body
    assert info.value.status_code == 400 and body["param"] == "tools" and ladder.lower in body["message"]
