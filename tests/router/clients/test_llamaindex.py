"""LlamaIndex's ``OpenAILike`` through the router: its default path (``complete`` on ``/v1/completions``) and ``is_chat_model``.

``OpenAILike`` is not a chat model unless told (``is_chat_model=False`` by default), so ``complete``
calls ``POST /v1/completions``; with ``is_chat_model=True`` everything goes through chat completions.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.router.clients import need
from tests.router.clients.conftest import HELLO_PROMPT, MAX_TOKENS, TARGETS, WEATHER_PROMPT, Ladder

need("llama_index.llms.openai_like", "llama-index-llms-openai-like")

from llama_index.core.base.llms.types import ChatMessage, ChatResponse, CompletionResponse  # noqa: E402
from llama_index.core.tools import FunctionTool  # noqa: E402
from llama_index.llms.openai_like import OpenAILike  # noqa: E402


def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return f"Sunny, 18 degrees Celsius in {city}."


def llm(ladder: Ladder, target: str, **kw: Any) -> OpenAILike:
    return OpenAILike(
        model=ladder.model(target),
        api_base=ladder.url,
        api_key="unused",
        temperature=0.0,
        max_tokens=MAX_TOKENS,
        max_retries=0,
        timeout=300,
        **kw,
    )


@pytest.mark.parametrize("target", TARGETS)
def test_complete_on_the_default_path(completions_route: None, ladder: Ladder, target: str) -> None:
    model = llm(ladder, target)
    assert model.metadata.is_chat_model is False  # the default: /v1/completions
    resp = model.complete("def add(a, b):")
    assert isinstance(resp, CompletionResponse) and resp.text
    streamed = list(model.stream_complete("def add(a, b):"))
    assert streamed and streamed[-1].text


@pytest.mark.parametrize("target", TARGETS)
def test_chat_with_is_chat_model(ladder: Ladder, target: str) -> None:
    model = llm(ladder, target, is_chat_model=True)
    resp = model.chat([ChatMessage(role="user", content=HELLO_PROMPT)])
    assert isinstance(resp, ChatResponse) and resp.message.role == "assistant" and resp.message.content
    *_, last = model.stream_chat([ChatMessage(role="user", content=HELLO_PROMPT)])
    assert last.message.content
    assert model.complete(HELLO_PROMPT).text  # a chat model's complete() is a chat request


@pytest.mark.parametrize("target", TARGETS)
def test_chat_with_tools(ladder: Ladder, target: str) -> None:
    """``is_function_calling_model=True``: what LlamaIndex's FunctionAgent runs on; the tool forced (``tool_required``)."""
    model = llm(ladder, target, is_chat_model=True, is_function_calling_model=True)
    resp = model.chat_with_tools([FunctionTool.from_defaults(fn=get_weather)], user_msg=WEATHER_PROMPT, tool_required=True)
    (call,) = model.get_tool_calls_from_response(resp, error_on_no_tool_call=True)
    assert call.tool_name == "get_weather" and isinstance(call.tool_kwargs["city"], str)
