"""The request models accept what OpenAI accepts and name the field of what they refuse."""

from __future__ import annotations

import json
from typing import Any

import pytest

from common.errors import APIError, parse_chat_request

BASE: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}


def _named(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name}}


def _parse(**fields: Any) -> dict[str, Any]:
    return parse_chat_request(json.dumps({**BASE, **fields}).encode()).upstream_body()


def _refused(**fields: Any) -> APIError:
    with pytest.raises(APIError) as info:
        parse_chat_request(json.dumps({**BASE, **fields}).encode())
    assert info.value.status == 400
    return info.value


def test_fields_that_do_not_change_the_answer_are_accepted_and_never_forwarded() -> None:
    ignored = {
        "store": True,
        "metadata": {"app": "x"},
        "service_tier": "auto",
        "prompt_cache_key": "k",
        "safety_identifier": "u1",
        "reasoning_effort": "low",
        "verbosity": "low",
        "user": "u1",
        "prediction": {"type": "content", "content": "x"},
        "modalities": ["text"],
    }
    body = _parse(**ignored)
    assert not set(ignored) & set(body)


def test_no_op_tool_values_are_accepted_and_dropped() -> None:
    body = _parse(tools=[], parallel_tool_calls=False)
    assert "tools" not in body and "parallel_tool_calls" not in body


def test_tools_and_tool_history_are_forwarded() -> None:
    history = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}],
        },
        {"role": "tool", "content": "18 C", "tool_call_id": "c1"},
    ]
    body = _parse(messages=history, tools=[TOOL], tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert body["tools"][0]["function"]["name"] == "get_weather"
    assert body["messages"][1]["tool_calls"][0]["function"]["arguments"] == '{"city": "Paris"}'
    assert body["messages"][2]["tool_call_id"] == "c1"


def test_unknown_keys_inside_messages_and_parts_are_ignored_but_not_at_the_top() -> None:
    body = _parse(
        messages=[{"role": "user", "content": [{"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}], "x-id": 3}]
    )
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "x"}]}]
    assert _refused(frobnicate=1).param == "frobnicate"


def test_more_than_four_stop_strings() -> None:
    assert len(_parse(stop=[f"s{i}" for i in range(10)])["stop"]) == 10


def test_json_schema_response_format_keeps_its_json_name() -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "Answer", "schema": {"type": "object"}, "strict": True}}
    assert _parse(response_format=fmt)["response_format"] == fmt


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "messages[0].content[0].type"),
        ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}, "messages[0].content[0].type"),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages[0].content[0].text"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "tool", "content": "r"}]}, "messages[1].tool_call_id"),
        ({"messages": [{"role": "user", "content": "a", "tool_calls": []}]}, "messages[0].tool_calls"),
        ({"messages": [{"role": "user", "content": [{"type": "refusal", "refusal": "no"}]}]}, "messages[0].content[0].type"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "other"}}}, "tool_choice"),
        ({"tools": [TOOL, TOOL]}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools[0].function.name"),
        ({"tools": [TOOL], "tool_choice": "sometimes"}, "tool_choice"),
        ({"tools": [TOOL], "tool_choice": {"type": "function"}}, "tool_choice.function"),
        ({"tools": [TOOL], "tool_choice": {"type": "function", "function": {}}}, "tool_choice.function.name"),
        ({"tools": [TOOL], "tool_choice": {"type": "custom", "custom": {"name": "x"}}}, "tool_choice.type"),
        ({"tools": [TOOL], "tool_choice": {"type": "allowed_tools"}}, "tool_choice.allowed_tools"),
        ({"tools": [TOOL], "tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "auto"}}}, "tool_choice.allowed_tools.tools"),
        (
            {"tools": [TOOL], "tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "none", "tools": []}}},
            "tool_choice.allowed_tools.mode",
        ),
        (
            {"tools": [TOOL], "tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": [{"type": "function"}]}}},
            "tool_choice.allowed_tools.tools[0].function",
        ),
        (
            {"tools": [TOOL], "tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": [_named("other")]}}},
            "tool_choice.allowed_tools.tools[0]",
        ),
        ({"tools": [TOOL], "tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": []}}}, "tool_choice"),
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        ({"response_format": {"type": "json_object", "json_schema": {"name": "x"}}}, "response_format.json_schema"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"logit_bias": {"1": 2}}, "logit_bias"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"n": 2}, "n"),
        ({"stop": [str(i) for i in range(65)]}, "stop"),
    ],
)
def test_what_no_stage_can_honour_is_a_400_naming_the_field(fields: dict[str, Any], param: str) -> None:
    err = _refused(**fields)
    assert err.param == param
    assert param.split(".")[0].split("[")[0] in err.message


def test_a_param_never_names_a_model_class() -> None:
    """pydantic tags a union's model branch with the class name (``tool_choice.NamedToolChoice.function``); the
    param is the request's own path."""
    for choice in ({"type": "function"}, {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": [{}]}}, {"type": 1}):
        err = _refused(tools=[TOOL], tool_choice=choice)
        assert err.param is not None and err.param.startswith("tool_choice") and "ToolChoice" not in err.param + err.message


def test_null_stream_is_the_default() -> None:
    """OpenAI's spec and vLLM take ``stream: null`` (SDKs that copy every argument send it): not streamed."""
    assert _parse(stream=None)["stream"] is False
    assert _parse(stream=True)["stream"] is True
    assert _refused(stream="yes").param == "stream"


def test_an_empty_logit_bias_is_absent() -> None:
    """LangChain and Haystack send ``logit_bias: {}``, which biases nothing; a non-empty one stays refused (above)."""
    assert "logit_bias" not in _parse(logit_bias={})


def test_allowed_tools_goes_on_as_its_mode_over_the_allowed_tools() -> None:
    """Chat's ``allowed_tools`` choice: the stage gets ``tool_choice: <mode>`` and only the allowed tools (as a
    Responses request's ``allowed_tools`` does)."""
    time = {"type": "function", "function": {"name": "get_time"}}
    choice = {"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [_named("get_time")]}}
    body = _parse(tools=[TOOL, time], tool_choice=choice)
    assert body["tools"] == [time] and body["tool_choice"] == "required"
    auto = {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": [_named("get_weather"), _named("get_time")]}}
    body = _parse(tools=[TOOL, time], tool_choice=auto)
    assert [t["function"]["name"] for t in body["tools"]] == ["get_weather", "get_time"] and body["tool_choice"] == "auto"
    # none allowed under "auto": no tools at all, so a stage without tools can answer
    body = _parse(tools=[TOOL], tool_choice={"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": []}})
    assert "tools" not in body and "tool_choice" not in body


VLLM_EXTRAS: dict[str, Any] = {
    "top_k": 20,
    "min_p": 0.05,
    "repetition_penalty": 1.1,
    "min_tokens": 2,
    "chat_template_kwargs": {"enable_thinking": False},
}


def test_vllm_sampling_extras_are_accepted_and_forwarded_as_sent() -> None:
    """What vLLM clients send through ``extra_body`` (Qwen3's ``chat_template_kwargs`` among them) reaches the stage."""
    body = _parse(**VLLM_EXTRAS, max_tokens=8)
    assert {k: body[k] for k in VLLM_EXTRAS} == VLLM_EXTRAS
    # vLLM's "off" values change no answer: parsed as absent, not forwarded, and no stage of dialect vllm is needed
    off = _parse(top_k=-1, min_p=0, repetition_penalty=1, min_tokens=0, chat_template_kwargs={})
    assert not set(VLLM_EXTRAS) & set(off)
    assert not set(VLLM_EXTRAS) & set(_parse(top_k=0, repetition_penalty=1.0))
    assert not set(VLLM_EXTRAS) & set(_parse())  # unset: nothing forwarded


@pytest.mark.parametrize(
    "fields",
    [
        {"top_k": -2},
        {"top_k": 1.5},
        {"min_p": -0.1},
        {"min_p": 1.5},
        {"repetition_penalty": 0},
        {"repetition_penalty": -1.0},
        {"min_tokens": -1},
        {"min_tokens": 9, "max_tokens": 8},
        {"min_tokens": 9, "max_completion_tokens": 8},
        {"chat_template_kwargs": "enable_thinking"},
    ],
)
def test_vllm_sampling_extras_out_of_range_are_400s_naming_the_field(fields: dict[str, Any]) -> None:
    name = next(k for k in fields if k not in ("max_tokens", "max_completion_tokens"))
    assert _refused(**fields).param == name
