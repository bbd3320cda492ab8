"""Tools and JSON formats through the router, in front of the real llama.cpp stages (SmolLM2-135M, Qwen2.5-Coder-0.5B).

These turn on by themselves: while the CPU stage server refuses tools or JSON
formats ("... not supported by this llama.cpp stage server yet"), the tests
that need them skip with that reason; the router-side refusals run always.

The escalation case needs two stages that do tools, and the session's ladder has
one (SmolLM2's template has no tool calling: ``tools: false``), so it runs a
router whose two stages are the Qwen server under two names. Its lower answer is
made invalid on purpose, with a schema keyword that a decoding grammar does not
enforce (``multipleOf``): the forced call's arguments parse and have the right
shape, but the number the model writes is not a multiple of 7919, so the
router's schema check, not the server's grammar, finds it invalid.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from tests.conftest import RouterProcess, free_port, ladder_config

NOT_YET = "not supported by this llama.cpp stage server yet"
WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CHECK: Any = {
    "type": "function",
    "function": {
        "name": "check_number",
        "description": "Check a number",
        "parameters": {
            "type": "object",
            "properties": {"n": {"type": "integer", "multipleOf": 7919}},  # a grammar cannot enforce this
            "required": ["n"],
        },
    },
}
WEATHER_PROMPT: Any = [{"role": "user", "content": "What is the weather in Paris right now?"}]
CHECK_PROMPT: Any = [{"role": "user", "content": "Check the number 12."}]
PERSON: Any = {
    "type": "json_schema",
    "json_schema": {
        "name": "person",
        "schema": {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}, "required": ["name", "age"]},
    },
}
GREEDY: Any = {"temperature": 0.0, "max_tokens": 64}


def _refusal(port: int, body: dict[str, Any]) -> str | None:
    """The stage server's "not yet" message for ``body``, or None once it takes it."""
    payload = {"model": "qwen2.5-coder-0.5b", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, **body}
    resp = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=payload, timeout=120)
    if resp.status_code == 400 and NOT_YET in resp.text:
        return str(resp.json()["error"]["message"])
    return None


@pytest.fixture(scope="module")
def tools_stage(stage_ports: list[int]) -> int:
    """The tools-capable stage's port (Qwen); skips while its server refuses tools."""
    message = _refusal(stage_ports[1], {"tools": [WEATHER]})
    if message is not None:
        pytest.skip(f"the CPU stage server does not do tools yet: {message!r}")
    return stage_ports[1]


@pytest.fixture(scope="module")
def json_stage(stage_ports: list[int]) -> int:
    message = _refusal(stage_ports[1], {"response_format": PERSON})
    if message is not None:
        pytest.skip(f"the CPU stage server does not do JSON formats yet: {message!r}")
    return stage_ports[1]


@pytest.fixture(scope="module")
def qwen_twice(tools_stage: int, stage_ports: list[int], tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    """A router whose two stages are the Qwen server under two names (both do tools)."""
    cfg = ladder_config(stage_ports, free_port())
    qwen = cfg["stages"][1]  # type: ignore[index]
    lower, upper = copy.deepcopy(qwen), copy.deepcopy(qwen)
    lower.update(name="qwen-lower", prior=0.5)
    upper.update(name="qwen-upper", prior=0.9)
    cfg["stages"] = [lower, upper]
    proc = RouterProcess(cfg, tmp_path_factory.mktemp("router-qwen-twice"))
    yield proc
    proc.stop()


def _tool_calls(resp: Any) -> list[dict[str, Any]]:
    return [c.model_dump(exclude={"index": True, "function": {"parsed_arguments"}}) for c in resp.choices[0].message.tool_calls or ()]


# -- router-side, whatever the stage server does -----------------------------------------------


def test_passthrough_to_a_stage_without_tools_is_a_400_naming_tools(client: OpenAI, router: RouterProcess) -> None:
    s0 = router.settings.stages[0]
    assert s0.tools is False  # configs/cpu.yaml: SmolLM2's template has no tool calling
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=s0.name, messages=WEATHER_PROMPT, tools=[WEATHER], **GREEDY)
    body: Any = info.value.body
    assert body["param"] == "tools" and s0.name in body["message"]


def test_models_by_id(client: OpenAI, router: RouterProcess) -> None:
    for stage in router.settings.stages:
        assert client.models.retrieve(stage.name).id == stage.name
    assert client.models.retrieve("cascade").id == "cascade"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


# -- through the stage server ----------------------------------------------------------------


def test_a_tools_request_skips_the_stage_without_tools(tools_stage: int, client: OpenAI, router: RouterProcess) -> None:
    s0, s1 = (s.name for s in router.settings.stages[:2])
    raw = client.chat.completions.with_raw_response.create(
        model="cascade", messages=WEATHER_PROMPT, tools=[WEATHER], tool_choice="required", **GREEDY
    )
    resp = raw.parse()
    assert raw.headers["x-cascade-skipped"] == f"{s0}:tools" and raw.headers["x-cascade-path"] == s1
    assert raw.headers["x-cascade-kind"] == "tools"
    (got,) = _tool_calls(resp)
    assert got["function"]["name"] == "get_weather" and "city" in json.loads(got["function"]["arguments"])
    assert resp.choices[0].finish_reason == "tool_calls"
    assert "x-cascade-invalid" not in raw.headers  # the grammar of tool_choice "required" keeps the call valid


def test_a_streamed_tool_call_is_relayed_and_reassembled(tools_stage: int, client: OpenAI, router: RouterProcess) -> None:
    named: Any = {"type": "function", "function": {"name": "get_weather"}}
    with client.chat.completions.stream(model="cascade", messages=WEATHER_PROMPT, tools=[WEATHER], tool_choice=named, **GREEDY) as s:
        final = s.get_final_completion()
    direct = client.chat.completions.create(model="cascade", messages=WEATHER_PROMPT, tools=[WEATHER], tool_choice=named, **GREEDY)
    assert final.choices[0].finish_reason == "tool_calls"
    streamed, whole = _tool_calls(final), _tool_calls(direct)
    assert [c["function"] for c in streamed] == [c["function"] for c in whole]  # ids differ per answer


def test_an_invalid_lower_stage_tool_call_escalates(qwen_twice: RouterProcess) -> None:
    """The key live case: the lower stage's forced call breaks the schema (see the module docstring), so the
    cascade escalates however sure the predictor is (λ = 0: a valid answer would stop at once), and the top
    stage's answer, invalid too, is returned as it is and marked."""
    client = qwen_twice.client()
    named: Any = {"type": "function", "function": {"name": "check_number"}}
    raw = client.chat.completions.with_raw_response.create(
        model="cascade", messages=CHECK_PROMPT, tools=[CHECK], tool_choice=named, **GREEDY, extra_body={"cascade_lambda": 0.0}
    )
    resp = raw.parse()
    (got,) = _tool_calls(resp)
    n = json.loads(got["function"]["arguments"])["n"]
    assert isinstance(n, int) and n % 7919 != 0, "the model wrote a multiple of 7919: pick another number in CHECK_PROMPT"
    assert raw.headers["x-cascade-path"] == "qwen-lower,qwen-upper" and raw.headers["x-cascade-stage"] == "qwen-upper"
    assert raw.headers["x-cascade-invalid"] == "qwen-lower:arguments,qwen-upper:arguments"
    assert raw.headers["x-cascade-p"].split(",")[0] == "0.0000"
    assert raw.headers["x-cascade-draft"] == "qwen-upper:regenerate:tools"
    metrics = httpx.get(f"{qwen_twice.url}/metrics").text
    assert 'adaptive_sd_invalid_answers_total{reason="arguments",stage="qwen-lower"}' in metrics
    # the same request with a schema the answer meets stops at the lower stage
    fine: Any = copy.deepcopy(CHECK)
    del fine["function"]["parameters"]["properties"]["n"]["multipleOf"]
    raw = client.chat.completions.with_raw_response.create(
        model="cascade", messages=CHECK_PROMPT, tools=[fine], tool_choice=named, **GREEDY, extra_body={"cascade_lambda": 0.0}
    )
    assert raw.headers["x-cascade-path"] == "qwen-lower" and "x-cascade-invalid" not in raw.headers


def test_a_json_schema_answer_through_the_cascade(json_stage: int, client: OpenAI, router: RouterProcess) -> None:
    """Both stages do structured outputs; forced up (λ huge), the upper stage regenerates (grammar-constrained)."""
    messages: Any = [{"role": "user", "content": "Make up a person with a name and an age."}]
    raw = client.chat.completions.with_raw_response.create(
        model="cascade", messages=messages, response_format=PERSON, **GREEDY, extra_headers={"x-cascade-lambda": "1e6"}
    )
    resp = raw.parse()
    s1 = router.settings.stages[1].name
    assert raw.headers["x-cascade-kind"] == "json_schema" and raw.headers["x-cascade-stage"] == s1
    assert raw.headers["x-cascade-draft"] == f"{s1}:regenerate:structured"
    if resp.choices[0].finish_reason == "stop":
        person = json.loads(resp.choices[0].message.content or "")
        assert isinstance(person["name"], str) and isinstance(person["age"], int)
        assert "x-cascade-invalid" not in raw.headers or s1 not in raw.headers["x-cascade-invalid"]


def test_traffic_log_rows_carry_validity(qwen_twice: RouterProcess, stage_ports: list[int], tmp_path: Path) -> None:
    cfg = copy.deepcopy(qwen_twice.config)
    cfg["server"] = {"host": "127.0.0.1", "port": free_port()}
    log = tmp_path / "traffic.jsonl"
    cfg["predictor"] = {**cfg["predictor"], "log_path": str(log)}  # type: ignore[dict-item]
    proc = RouterProcess(cfg, tmp_path)
    try:
        named: Any = {"type": "function", "function": {"name": "check_number"}}
        proc.client().chat.completions.create(
            model="cascade", messages=CHECK_PROMPT, tools=[CHECK], tool_choice=named, **GREEDY, extra_body={"cascade_lambda": 0.0}
        )
    finally:
        proc.stop()
    (row,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert row["kind"] == "tools"
    assert [(s["name"], s["valid"], s["invalid"]) for s in row["stages"]] == [
        ("qwen-lower", False, "arguments"),
        ("qwen-upper", False, "arguments"),
    ]
    assert all(s["tool_calls"] for s in row["stages"])
