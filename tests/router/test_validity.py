"""``router.validity``: what a request needs of a stage, and the rules an answer to it must follow.

The rules run on answers from other processes, so besides the cases they are
fuzzed (hypothesis): whatever a stage sends, ``check`` returns a known reason or
None and never raises, and a schema that cannot be used never fails an answer.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.errors import parse_chat_request
from common.settings import StageConfig
from router.validity import (
    INVALID_REASONS,
    AnswerRules,
    AnswerSpec,
    conforms,
    missing_capability,
    request_kind,
    required_capabilities,
    schema_validator,
)

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"], "additionalProperties": False}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": SCHEMA}},
    {"type": "function", "function": {"name": "ping"}},
]


def answer(content: Any = None, *calls: tuple[str, Any]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = [
            {"id": f"c{i}", "type": "function", "function": {"name": n, "arguments": a}} for i, (n, a) in enumerate(calls)
        ]
    return {"index": 0, "message": message, "finish_reason": "tool_calls" if calls else "stop"}


def rules(**body: Any) -> AnswerRules:
    got = AnswerRules.of(body)
    assert got is not None
    return got


def test_a_plain_request_has_nothing_to_check() -> None:
    assert AnswerRules.of({"messages": [{"role": "user", "content": "hi"}]}) is None
    assert AnswerRules.of({"response_format": {"type": "text"}, "tools": []}) is None
    spec = AnswerSpec.of({"messages": []})
    assert (spec.kind, dict(spec.needs), spec.rules, spec.check("garbage")) == ("text", {}, None, None)


def test_kinds_and_capabilities() -> None:
    assert request_kind({"tools": TOOLS, "response_format": {"type": "json_object"}}) == "tools"
    assert request_kind({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}) == "json_schema"
    assert required_capabilities({"tools": TOOLS, "response_format": {"type": "json_object"}}) == {
        "tools": "tools",
        "structured_outputs": "response_format",
    }
    history = {"messages": [{"role": "tool", "tool_call_id": "c0", "content": "sunny"}]}
    assert required_capabilities(history) == {"tools": "messages"}
    stage = StageConfig(name="s", model="m", url="http://x/v1", prices={"cost": {"request": 1.0}}, tools=False)
    assert missing_capability(stage, {"structured_outputs": "response_format", "tools": "tools"}) == "tools"
    assert missing_capability(stage, {"structured_outputs": "response_format"}) is None


def test_vllm_extras_need_a_vllm_stage() -> None:
    assert required_capabilities({"messages": [], "min_p": 0.1, "top_k": 5}) == {"vllm_extras": "top_k"}  # the first one named
    assert required_capabilities({"messages": [], "chat_template_kwargs": {"enable_thinking": False}}) == {
        "vllm_extras": "chat_template_kwargs"
    }
    assert required_capabilities({"messages": [], "top_p": 0.5}) == {}
    # vLLM's "off" values parse as absent: a request that sends them is answered by any stage
    off = parse_chat_request(
        json.dumps(
            {
                "model": "cascade",
                "messages": [{"role": "user", "content": "hi"}],
                "top_k": -1,
                "min_p": 0,
                "repetition_penalty": 1,
                "min_tokens": 0,
                "chat_template_kwargs": {},
            }
        )
    )
    assert required_capabilities(off.upstream_body()) == {}
    needs = required_capabilities({"messages": [], "repetition_penalty": 1.1})
    prices = {"cost": {"request": 1.0}}
    assert missing_capability(StageConfig(name="s", model="m", url="http://x/v1", prices=prices), needs) is None
    for dialect in ("openai", "litellm"):
        hosted = StageConfig(name="s", model="m", url="http://x/v1", prices=prices, dialect=dialect)
        assert missing_capability(hosted, needs) == "vllm_extras"


@pytest.mark.parametrize(
    ("body", "choice", "reason"),
    [
        ({"tools": TOOLS}, answer(None, ("get_weather", '{"city": "Paris"}')), None),
        ({"tools": TOOLS}, answer("text is fine under auto"), None),
        ({"tools": TOOLS}, answer(None, ("ping", "{}")), None),  # no parameters schema: any object
        ({"tools": TOOLS}, answer(None, ("ping", "[]")), "arguments"),
        ({"tools": TOOLS}, answer(None, ("ping", "")), "arguments-json"),
        ({"tools": TOOLS}, answer(None, ("get_weather", '{"city": "Paris"} trailing')), "arguments-json"),
        ({"tools": TOOLS}, answer(None, ("get_weather", '{"city": NaN}')), "arguments-json"),
        ({"tools": TOOLS}, answer(None, ("get_weather", None)), "arguments-json"),
        ({"tools": TOOLS}, answer(None, ("get_weather", '{"city": 1}')), "arguments"),
        ({"tools": TOOLS}, answer(None, ("GET_WEATHER", '{"city": "Paris"}')), "unknown-tool"),
        ({"tools": TOOLS, "tool_choice": "none"}, answer(None, ("ping", "{}")), "unexpected-tool-call"),
        ({"response_format": {"type": "json_object"}}, answer(None, ("ping", "{}")), "unexpected-tool-call"),  # no tools offered
        ({"tools": TOOLS, "tool_choice": "required"}, answer("no call"), "missing-tool-call"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "ping"}}}, answer(None, ("ping", "{}")), None),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "ping"}}}, answer(""), "missing-tool-call"),
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "ping"}}},
            answer(None, ("get_weather", '{"city": "x"}')),
            "wrong-tool",
        ),
        ({"tools": TOOLS, "parallel_tool_calls": False}, answer(None, ("ping", "{}"), ("ping", "{}")), "parallel-tool-calls"),
        ({"tools": TOOLS}, answer(None, ("ping", "{}"), ("get_weather", '{"city": "x"}')), None),
        ({"tools": TOOLS}, {"message": {"tool_calls": [{"type": "function", "function": {"name": "ping", "arguments": "{}"}}]}},
         "malformed"),  # no id
        ({"tools": TOOLS}, {"message": {"tool_calls": "ping"}}, "malformed"),
        ({"tools": TOOLS}, {"message": "hello"}, "malformed"),
        ({"tools": TOOLS}, None, "malformed"),
        ({"response_format": {"type": "json_object"}}, answer('{"a": [1, 2.5, null]}'), None),
        ({"response_format": {"type": "json_object"}}, answer('  {"a": 1e400}\n'), None),  # JSON, though beyond a double
        ({"response_format": {"type": "json_object"}}, answer('"a string"'), "json"),
        ({"response_format": {"type": "json_object"}}, answer("```json\n{}\n```"), "json"),
        ({"response_format": {"type": "json_object"}}, answer(None), "json"),
        ({"response_format": {"type": "json_object"}}, answer([{"type": "text", "text": "{}"}]), "json"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": SCHEMA}}}, answer('{"city": "Oslo"}'), None),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": SCHEMA}}}, answer('{"city": "Oslo", "x": 1}'),
         "schema"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "w"}}}, answer('{"any": "object"}'), None),  # no schema
        ({"tools": TOOLS, "response_format": {"type": "json_object"}}, answer(None, ("ping", "{}")), None),  # a call, not content
        ({"tools": TOOLS, "response_format": {"type": "json_object"}}, answer("not json"), "json"),
    ],
)  # fmt: skip
def test_rules(body: dict[str, Any], choice: Any, reason: str | None) -> None:
    assert rules(**body).check(choice) == reason


CALL_TEXT = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
UNPARSED_CALLS = {
    "tagged": f"<tool_call>\n{CALL_TEXT}\n</tool_call>",
    "bare": CALL_TEXT,
    "doubled braces (Qwen2.5-Coder-1.5B)": "{" + CALL_TEXT + "}",
    "doubled braces tagged": "<tool_call>\n{" + CALL_TEXT + "}\n</tool_call>",
    "pretty-printed in a fence after text": "Let me check.\n```json\n" + json.dumps(json.loads(CALL_TEXT), indent=2) + "\n```",
    "arguments as JSON text": '{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}',
    "parameters key": '{"name": "ping", "parameters": {}}',
    "mid-sentence": f"I will call {CALL_TEXT} now.",
}


@pytest.mark.parametrize("choice", ["auto", "required", None])
@pytest.mark.parametrize("name", list(UNPARSED_CALLS))
def test_a_text_answer_holding_a_call_to_an_offered_function_is_invalid(name: str, choice: str | None) -> None:
    """The stage wrote a call but its server did not parse it: as text, the client's agent would take it for the
    final answer (the OpenAI Agents SDK does), so the cascade must escalate it."""
    body: dict[str, Any] = {"tools": TOOLS} if choice is None else {"tools": TOOLS, "tool_choice": choice}
    assert rules(**body).check(answer(UNPARSED_CALLS[name])) == "unparsed-tool-call"


@pytest.mark.parametrize(
    ("body", "content"),
    [
        ({"tools": TOOLS, "tool_choice": "none"}, CALL_TEXT),  # calls are not wanted: text is the answer
        ({"tools": TOOLS}, "I will look up the weather with get_weather for Paris."),  # names it, calls nothing
        ({"tools": TOOLS}, '{"name": "Alice", "age": 30}'),
        ({"tools": TOOLS}, '{"name": "get_forecast", "arguments": {"city": "Paris"}}'),  # not an offered function
        ({"tools": TOOLS}, '{"name": "get_weather", "city": "Paris"}'),  # no arguments object
        ({"tools": TOOLS}, '{"name": "get_weather", "arguments": [1]}'),
        ({"tools": TOOLS}, '{"name": "get_weather", "arguments": {"city": "Par'),  # not JSON
        ({"tools": TOOLS}, '{"title": "x", "data": {"name": "get_weather"}}'),  # the name is a value, not a call
        ({"response_format": {"type": "json_object"}}, CALL_TEXT),  # no tools offered
    ],
)  # fmt: skip
def test_text_that_only_looks_like_a_call_is_not_held_against_the_answer(body: dict[str, Any], content: str) -> None:
    assert rules(**body).check(answer(content)) in (None, "json")


def test_an_answer_with_parsed_calls_is_judged_on_its_calls_only() -> None:
    both = answer(CALL_TEXT, ("get_weather", '{"city": "Paris"}'))
    assert rules(tools=TOOLS).check(both) is None


def test_schemas_with_references_and_drafts() -> None:
    local = {"$defs": {"n": {"type": "integer", "minimum": 3}}, "type": "object", "properties": {"n": {"$ref": "#/$defs/n"}}}
    assert conforms(local, {"n": 4}) and not conforms(local, {"n": 2})
    draft7 = {"$schema": "http://json-schema.org/draft-07/schema#", "definitions": {"s": {"type": "string"}}, "$ref": "#/definitions/s"}
    assert conforms(draft7, "x") and not conforms(draft7, 1)
    unknown = {"$schema": "https://example.com/unknown-draft", "type": "string"}  # an unknown draft: read as 2020-12
    assert conforms(unknown, "x") and not conforms(unknown, 1)


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "no-such-type"},  # not a valid schema: the answer is not held to it
        {"$ref": "http://127.0.0.1:9/remote.json"},  # remote references are never fetched
        {"$ref": "#/$defs/missing"},
        {"minimum": "three"},
        "not a schema",
    ],
)
def test_a_schema_that_cannot_be_used_never_fails_an_answer(schema: Any) -> None:
    assert conforms(schema, 5)
    tools = [{"type": "function", "function": {"name": "f", "parameters": schema}}]
    assert rules(tools=tools).check(answer(None, ("f", '{"a": 1}'))) is None


def test_compiled_schemas_are_cached() -> None:
    a = {"type": "object", "properties": {"x": {"type": "integer"}}}
    b = {"properties": {"x": {"type": "integer"}}, "type": "object"}  # same schema, other key order
    assert schema_validator(a) is schema_validator(b) is not None


# -- fuzz: whatever a stage sends -------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
_text = st.text(max_size=40) | _json.map(repr) | st.sampled_from(['{"city": "Paris"}', "{", "[]", '{"city": 1}', "\ud800", "1e999"])
_call = st.fixed_dictionaries(
    {},
    optional={
        "id": st.text(max_size=5) | _json,
        "type": st.sampled_from(["function", "other"]) | _json,
        "function": st.fixed_dictionaries(
            {}, optional={"name": st.sampled_from(["get_weather", "ping", "x"]) | _json, "arguments": _text | _json}
        )
        | _json,
    },
)
_message = st.fixed_dictionaries(
    {}, optional={"content": _text | _json, "tool_calls": st.lists(_call | _json, max_size=3) | _json, "role": _json}
)
_choice = st.fixed_dictionaries({}, optional={"message": _message | _json, "finish_reason": _json}) | _json
_schema = st.sampled_from([SCHEMA, {"type": "array"}, {"$ref": "#/nope"}, {"type": 5}, True, None]) | _json
_body = st.fixed_dictionaries(
    {},
    optional={
        "tools": st.lists(
            st.fixed_dictionaries({"type": st.just("function"), "function": st.fixed_dictionaries(
                {"name": st.sampled_from(["get_weather", "ping"])}, optional={"parameters": _schema})}) | _json,
            max_size=3,
        ) | _json,
        "tool_choice": st.sampled_from(["none", "auto", "required", {"type": "function", "function": {"name": "ping"}}]) | _json,
        "parallel_tool_calls": _json,
        "response_format": st.fixed_dictionaries(
            {"type": st.sampled_from(["json_object", "json_schema", "text"])}, optional={"json_schema": st.fixed_dictionaries(
                {}, optional={"schema": _schema})}) | _json,
        "messages": st.lists(_json, max_size=3) | _json,
    },
)  # fmt: skip


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=_body, choice=_choice)
def test_fuzz_the_rules_never_raise(body: dict[str, Any], choice: Any) -> None:
    spec = AnswerSpec.of(body)
    assert spec.kind in ("tools", "json_object", "json_schema", "text")
    reason = spec.check(choice)
    assert reason is None or reason in INVALID_REASONS


@settings(max_examples=200, deadline=None)
@given(schema=_schema, value=_json)
def test_fuzz_schemas_never_raise(schema: Any, value: Any) -> None:
    assert conforms(schema, value) in (True, False)


_keyword = st.sampled_from(
    ["type", "properties", "required", "items", "enum", "const", "minimum", "maxLength", "pattern", "$ref", "anyOf", "additionalProperties"]
)
_schema_like = st.recursive(
    st.dictionaries(_keyword, _json, max_size=4),
    lambda inner: st.dictionaries(_keyword, inner | _json | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_size=4),
    max_leaves=12,
)
_arguments = _text | _json.map(json.dumps)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parameters=_schema_like, arguments=_arguments, content=_arguments)
def test_fuzz_well_formed_calls_with_any_arguments_and_schema(parameters: dict[str, Any], arguments: str, content: str) -> None:
    """The envelope is right, so the arguments and the schema are what gets exercised."""
    body = {"tools": [{"type": "function", "function": {"name": "f", "parameters": parameters}}]}
    reason = rules(**body).check(answer(None, ("f", arguments)))
    assert reason in (None, "arguments", "arguments-json")
    fmt = {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": parameters}}}
    assert rules(**fmt).check(answer(content)) in (None, "json", "schema")
