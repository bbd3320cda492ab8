"""Tool calling on the llama.cpp stage server, through the OpenAI SDK (real models: SmolLM2-135M, Qwen2.5-Coder-0.5B)."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from openai import OpenAI

from tests.servers.schema_check import errors

QWEN = "qwen2.5-coder-0.5b"
SMOL = "smollm2-135m"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "the city"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}
MULTIPLY = {
    "type": "function",
    "function": {
        "name": "multiply",
        "description": "Multiply two integers",
        "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]},
    },
}
TOOLS = [WEATHER, MULTIPLY]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}  # type: ignore[index]
ASK_WEATHER = [{"role": "user", "content": "What is the weather like in Paris today?"}]


@pytest.fixture(scope="module")
def qwen(stage_ports: list[int]) -> OpenAI:
    return OpenAI(base_url=f"http://127.0.0.1:{stage_ports[1]}/v1", api_key="unused", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def smol(stage_ports: list[int]) -> OpenAI:
    return OpenAI(base_url=f"http://127.0.0.1:{stage_ports[0]}/v1", api_key="unused", max_retries=0, timeout=300)


def valid_calls(message: object, names: set[str]) -> list[tuple[str, dict]]:
    """The message's calls as (name, arguments), each checked: an offered name, arguments valid against its schema."""
    calls = message.tool_calls or []  # type: ignore[attr-defined]
    out = []
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_")
        assert call.function.name in names
        args = json.loads(call.function.arguments)
        assert errors(args, SCHEMAS[call.function.name]) == [], (call.function.name, args)
        out.append((call.function.name, args))
    return out


@pytest.mark.parametrize(
    "prompt",
    ["What is the weather like in Paris today?", "Tell me a joke about cats.", "What is 6 times 7?", "Translate 'hello' to French."],
)
def test_named_tool_choice_always_parses(qwen: OpenAI, prompt: str) -> None:
    """A named function is forced by a grammar: whatever the prompt, the answer is a call to it with valid arguments."""
    for name in ("get_weather", "multiply"):
        r = qwen.chat.completions.create(model=QWEN, messages=[{"role": "user", "content": prompt}], tools=TOOLS, max_tokens=80,
                                         temperature=0, tool_choice={"type": "function", "function": {"name": name}})  # fmt: skip
        choice = r.choices[0]
        calls = valid_calls(choice.message, {name})
        assert [n for n, _ in calls] == [name] and choice.finish_reason == "tool_calls"
        assert choice.message.content is None


def test_forced_calls_parse_when_sampling_too(qwen: OpenAI) -> None:
    """Temperature 1 (raw draws checked against the grammar, masked draws when refused): still always a valid call."""
    for seed in range(4):
        r = qwen.chat.completions.create(model=QWEN, messages=ASK_WEATHER, tools=TOOLS, max_tokens=80, temperature=1.0, seed=seed,
                                         tool_choice="required", parallel_tool_calls=False)  # fmt: skip
        calls = valid_calls(r.choices[0].message, {"get_weather", "multiply"})
        assert len(calls) == 1 and r.choices[0].finish_reason == "tool_calls"


def test_required_calls_an_offered_tool(qwen: OpenAI) -> None:
    r = qwen.chat.completions.create(model=QWEN, messages=ASK_WEATHER, tools=TOOLS, tool_choice="required", max_tokens=80, temperature=0)
    calls = valid_calls(r.choices[0].message, {"get_weather", "multiply"})
    assert calls and calls[0][0] == "get_weather" and calls[0][1]["city"] == "Paris"
    assert r.choices[0].finish_reason == "tool_calls"


def test_auto_calls_the_tool_when_asked(qwen: OpenAI) -> None:
    """Qwen-0.5B writes the call as bare JSON (no <tool_call> tags) at temperature 0; the parser takes it, as llama.cpp's does."""
    r = qwen.chat.completions.create(model=QWEN, messages=[{"role": "user", "content": "What is 17 times 23? Use the multiply tool."}],
                                     tools=TOOLS, max_tokens=80, temperature=0)  # fmt: skip
    assert valid_calls(r.choices[0].message, {"get_weather", "multiply"}) == [("multiply", {"a": 17, "b": 23})]
    assert r.choices[0].finish_reason == "tool_calls" and r.choices[0].message.content is None
    r = qwen.chat.completions.create(model=QWEN, messages=ASK_WEATHER, tools=TOOLS, max_tokens=80, temperature=0)
    assert [n for n, _ in valid_calls(r.choices[0].message, {"get_weather", "multiply"})] == ["get_weather"]


def test_auto_answers_in_text_when_no_tool_fits(qwen: OpenAI) -> None:
    r = qwen.chat.completions.create(model=QWEN, messages=[{"role": "user", "content": "Write a haiku about autumn."}],
                                     tools=TOOLS, max_tokens=60, temperature=0)  # fmt: skip
    assert not r.choices[0].message.tool_calls and r.choices[0].message.content and r.choices[0].finish_reason == "stop"


def test_tool_choice_none_renders_no_tools(qwen: OpenAI) -> None:
    """``none``: the tools are left out of the prompt, so the answer is what the model says without them.

    Both start from the same cache state (an unrelated request first): a prompt prefilled in one batch
    and one whose last token is re-fed alone differ in the last bits of the logits, enough to flip a near-tie.
    """
    evict = [{"role": "user", "content": "Say something else entirely."}]
    qwen.chat.completions.create(model=QWEN, messages=evict, max_tokens=2, temperature=0)
    plain = qwen.chat.completions.create(model=QWEN, messages=ASK_WEATHER, max_tokens=40, temperature=0)
    qwen.chat.completions.create(model=QWEN, messages=evict, max_tokens=2, temperature=0)
    none = qwen.chat.completions.create(model=QWEN, messages=ASK_WEATHER, tools=TOOLS, tool_choice="none", max_tokens=40, temperature=0)
    assert none.choices[0].message.content == plain.choices[0].message.content and not none.choices[0].message.tool_calls


def _round_trip(result: str) -> list[dict]:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris"})}}
    return [
        *ASK_WEATHER,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": result},
    ]


def test_tool_result_round_trip(qwen: OpenAI, stage_ports: list[int]) -> None:
    """The history's call and result are rendered by the model's template; the model answers from them.

    At temperature 0 with ``auto`` Qwen-0.5B calls the tool again instead of
    answering (seen with every phrasing tried; Qwen-1.5B answers in text), so
    the text answer is asked for with ``tool_choice: none`` (history kept, tools left out).
    """
    messages = _round_trip("Sunny, 21 degrees Celsius.")
    # the prompt as the template rendered it: the call with its arguments as JSON (not a quoted string), the result
    body = {"model": QWEN, "messages": messages, "tools": TOOLS, "max_tokens": 1, "prompt_logprobs": 0}
    scored = httpx.post(f"http://127.0.0.1:{stage_ports[1]}/v1/chat/completions", json=body, timeout=300).json()
    prompt = "".join(next(iter(e.values()))["decoded_token"] for e in scored["prompt_logprobs"][1:])
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in prompt
    assert "<tool_response>\nSunny, 21 degrees Celsius.\n</tool_response>" in prompt
    assert '"name": "multiply"' in prompt  # the offered tools are in the system prompt
    auto = qwen.chat.completions.create(model=QWEN, messages=messages, tools=TOOLS, max_tokens=60, temperature=0)
    assert auto.choices[0].message.tool_calls or auto.choices[0].message.content  # well formed either way
    answer = qwen.chat.completions.create(model=QWEN, messages=messages, tools=TOOLS, tool_choice="none", max_tokens=60, temperature=0)
    assert answer.choices[0].message.content and not answer.choices[0].message.tool_calls
    assert answer.choices[0].finish_reason in ("stop", "length")


def test_history_arguments_must_be_json(qwen: OpenAI) -> None:
    messages = _round_trip("x")
    messages[1]["tool_calls"][0]["function"]["arguments"] = "{not json"
    with pytest.raises(openai.BadRequestError) as err:
        qwen.chat.completions.create(model=QWEN, messages=messages, tools=TOOLS, max_tokens=5)
    assert err.value.body["param"] == "messages[1].tool_calls[0].function.arguments"  # type: ignore[index]


@pytest.mark.parametrize(
    "choice", [{"type": "function", "function": {"name": "get_weather"}}, "required", "auto"], ids=["named", "required", "auto"]
)
def test_streamed_tool_calls_equal_the_non_streamed(qwen: OpenAI, choice: object) -> None:
    """The SDK's stream helper reassembles ``delta.tool_calls`` into the same calls as the plain answer."""
    body = {"model": QWEN, "messages": ASK_WEATHER, "tools": TOOLS, "tool_choice": choice, "max_tokens": 80, "temperature": 0}
    whole = qwen.chat.completions.create(**body).choices[0]  # type: ignore[call-overload]
    with qwen.chat.completions.stream(**body) as stream:  # type: ignore[arg-type]
        for _ in stream:
            pass
        final = stream.get_final_completion().choices[0]
    assert whole.message.tool_calls
    strip = [(c.function.name, json.loads(c.function.arguments)) for c in whole.message.tool_calls]
    assert [(c.function.name, json.loads(c.function.arguments)) for c in final.message.tool_calls or []] == strip
    assert final.finish_reason == whole.finish_reason == "tool_calls"
    assert not final.message.content and whole.message.content is None


def test_streamed_chunks_have_openai_tool_call_shape(stage_ports: list[int]) -> None:
    body = {"model": QWEN, "messages": ASK_WEATHER, "tools": TOOLS, "tool_choice": "required", "max_tokens": 80, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    chunks = []
    with httpx.stream("POST", f"http://127.0.0.1:{stage_ports[1]}/v1/chat/completions", json=body, timeout=300) as resp:
        for line in resp.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line[6:]))
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    calls = [tc for d in deltas for tc in d.get("tool_calls", [])]
    assert calls and calls[0]["index"] == 0 and calls[0]["type"] == "function" and calls[0]["id"].startswith("call_")
    assert json.loads(calls[0]["function"]["arguments"])["city"] == "Paris"
    assert not any(d.get("content") for d in deltas)  # nothing of the call leaks as text
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "tool_calls"
    assert chunks[-1]["usage"]["completion_tokens"] > 0


def test_model_without_tool_template_refuses_tools(smol: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        smol.chat.completions.create(model=SMOL, messages=ASK_WEATHER, tools=TOOLS, max_tokens=5)
    assert err.value.body["param"] == "tools"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as err:
        smol.chat.completions.create(model=SMOL, messages=_round_trip("x"), max_tokens=5)
    assert err.value.body["param"] == "messages[1].tool_calls"  # type: ignore[index]
    # tool_choice "none" switches the tools off: a plain answer
    r = smol.chat.completions.create(model=SMOL, messages=ASK_WEATHER, tools=TOOLS, tool_choice="none", max_tokens=5, temperature=0)
    assert r.choices[0].message.content


def test_unsupported_parameter_schema_is_a_400(qwen: OpenAI) -> None:
    bad = {
        "type": "function",
        "function": {"name": "f", "parameters": {"type": "object", "properties": {"x": {"$ref": "https://example.com/s.json"}}}},
    }
    with pytest.raises(openai.BadRequestError) as err:
        qwen.chat.completions.create(model=QWEN, messages=ASK_WEATHER, tools=[bad], tool_choice="required", max_tokens=5)  # type: ignore[list-item]
    assert err.value.body["param"] == "tools[0].function.parameters"  # type: ignore[index]
