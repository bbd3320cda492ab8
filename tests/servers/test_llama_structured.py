"""Structured outputs (``response_format``) on the llama.cpp stage server: grammar-constrained decoding (real models)."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from openai import OpenAI
from pydantic import BaseModel

from tests.servers.schema_check import errors

QWEN = "qwen2.5-coder-0.5b"
SMOL = "smollm2-135m"
ASK_PERSON = [{"role": "user", "content": "Describe a fictional person: their name, age and hobbies."}]


class Person(BaseModel):
    name: str
    age: int
    hobbies: list[str]


class Team(BaseModel):
    team: str
    members: list[Person]


@pytest.fixture(scope="module")
def qwen(stage_ports: list[int]) -> OpenAI:
    return OpenAI(base_url=f"http://127.0.0.1:{stage_ports[1]}/v1", api_key="unused", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def qwen_url(stage_ports: list[int]) -> str:
    return f"http://127.0.0.1:{stage_ports[1]}/v1"


def _post(url: str, **body: object) -> dict:
    resp = httpx.post(f"{url}/chat/completions", json={"model": QWEN, "messages": ASK_PERSON, **body}, timeout=300)
    assert resp.status_code == 200, resp.text
    return resp.json()


@pytest.mark.parametrize("port_index,model", [(1, QWEN), (0, SMOL)])
def test_json_object_is_a_json_object(stage_ports: list[int], port_index: int, model: str) -> None:
    client = OpenAI(base_url=f"http://127.0.0.1:{stage_ports[port_index]}/v1", api_key="unused", max_retries=0, timeout=300)
    for temperature, seed in ((0.0, None), (1.0, 1), (1.0, 2)):
        r = client.chat.completions.create(model=model, messages=ASK_PERSON, response_format={"type": "json_object"}, max_tokens=120,
                                           temperature=temperature, seed=seed)  # fmt: skip
        if r.choices[0].finish_reason == "stop":  # a cut answer (length) cannot be complete JSON
            assert isinstance(json.loads(r.choices[0].message.content or ""), dict)


def test_parse_with_a_pydantic_model(qwen: OpenAI) -> None:
    """The SDK's ``parse`` sends a strict ``json_schema``; the answer validates into the model."""
    r = qwen.chat.completions.parse(model=QWEN, messages=ASK_PERSON, response_format=Person, max_tokens=150, temperature=0)
    person = r.choices[0].message.parsed
    assert isinstance(person, Person) and person.name and isinstance(person.age, int)


def test_nested_schema_with_defs(qwen: OpenAI) -> None:
    ask = [{"role": "user", "content": "Invent a small team of two people, with their names, ages and hobbies."}]
    r = qwen.chat.completions.parse(model=QWEN, messages=ask, response_format=Team, max_tokens=300, temperature=0)
    assert r.choices[0].finish_reason == "stop"
    team = r.choices[0].message.parsed
    assert isinstance(team, Team) and all(isinstance(m, Person) for m in team.members)


def test_json_schema_enum_and_required(qwen_url: str) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}, "confidence": {"type": "number"}},
        "required": ["answer", "confidence"],
        "additionalProperties": False,
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "verdict", "schema": schema, "strict": True}}
    data = _post(
        qwen_url, messages=[{"role": "user", "content": "Is 7 a prime number?"}], response_format=fmt, max_tokens=40, temperature=0
    )
    value = json.loads(data["choices"][0]["message"]["content"])
    assert errors(value, schema) == [] and data["choices"][0]["finish_reason"] == "stop"


def test_streamed_json_equals_non_streamed(qwen: OpenAI) -> None:
    body = {"model": QWEN, "messages": ASK_PERSON, "response_format": {"type": "json_object"}, "max_tokens": 100, "temperature": 0}
    whole = qwen.chat.completions.create(**body).choices[0].message.content  # type: ignore[call-overload]
    streamed = "".join(c.choices[0].delta.content or "" for c in qwen.chat.completions.create(**body, stream=True) if c.choices)  # type: ignore[call-overload]
    assert streamed == whole


def test_constrained_answers_report_the_raw_model_logprobs(qwen_url: str) -> None:
    """With a grammar the logprobs are the raw model's, as vLLM reports them (one dialect for the predictor).

    Against the raw model's scores of the same answer (prompt_logprobs) every
    position agrees up to this build's batched-vs-stepwise spread; and where the
    model wanted to write something the grammar forbids (its first token: raw
    top-1 is not JSON) the chosen token is not the top alternative shown.
    """
    data = _post(qwen_url, response_format={"type": "json_object"}, max_tokens=40, temperature=0, logprobs=True, top_logprobs=3)
    content = data["choices"][0]["logprobs"]["content"]
    text = data["choices"][0]["message"]["content"]
    json.loads(text)
    for entry in content:
        assert all(t["logprob"] <= 0 for t in entry["top_logprobs"])
        assert sum(2.718281828 ** t["logprob"] for t in entry["top_logprobs"]) <= 1.0 + 1e-4
    scored = _post(qwen_url, messages=[*ASK_PERSON, {"role": "assistant", "content": text}], max_tokens=1, temperature=0, prompt_logprobs=1,
                   continue_final_message=True, add_generation_prompt=False)  # fmt: skip
    ids = scored["prompt_token_ids"][-len(content) :]
    raw = [entry[str(tok)] for entry, tok in zip(scored["prompt_logprobs"][-len(content) :], ids, strict=True)]
    assert [r["decoded_token"] for r in raw] == [e["token"] for e in content]
    for r, c in zip(raw, content, strict=True):
        assert abs(c["logprob"] - r["logprob"]) < 0.5
    assert raw[0]["rank"] > 1 and content[0]["top_logprobs"][0]["token"] != content[0]["token"]


def test_unconstrained_greedy_output_is_unchanged(qwen_url: str) -> None:
    """``response_format: text`` takes the unconstrained path; it equals a request without it, logprobs included,
    and the answer recorded from this server before grammars existed.

    Each request starts from the same cache state (an unrelated request first): a prompt
    prefilled in one batch and one re-fed token by token differ in the last bits of the logits.
    """
    body = {
        "messages": [{"role": "user", "content": "List three prime numbers."}],
        "max_tokens": 32,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 2,
    }
    evict = {"messages": [{"role": "user", "content": "Say something else entirely."}], "max_tokens": 2, "temperature": 0}
    _post(qwen_url, **evict)
    plain = _post(qwen_url, **body)
    _post(qwen_url, **evict)
    text = _post(qwen_url, **body, response_format={"type": "text"})
    assert plain["choices"][0] == text["choices"][0]
    assert plain["choices"][0]["message"]["content"] == "Three prime numbers are 2, 3, and 5."


def test_continuing_a_final_message_under_a_schema(qwen_url: str) -> None:
    """``continue_final_message`` with a grammar: the grammar starts after the prefix, so prefix + continuation validates."""
    schema = Person.model_json_schema()
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": schema}}
    prefix = '{"name": "Al'
    body = {"response_format": fmt, "continue_final_message": True, "add_generation_prompt": False}
    data = _post(qwen_url, messages=[*ASK_PERSON, {"role": "assistant", "content": prefix}], max_tokens=80, temperature=0, **body)
    value = json.loads(prefix + data["choices"][0]["message"]["content"])
    assert errors(value, schema) == [] and value["name"].startswith("Al")
    messages = [*ASK_PERSON, {"role": "assistant", "content": "Sure"}]
    bad = httpx.post(f"{qwen_url}/chat/completions", json={"model": QWEN, "messages": messages, **body}, timeout=60)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "messages"


def test_json_object_with_auto_tools_is_json_or_calls(qwen: OpenAI) -> None:
    tool = {
        "type": "function",
        "function": {"name": "lookup_person", "parameters": {"type": "object", "properties": {"name": {"type": "string"}}}},
    }
    r = qwen.chat.completions.create(model=QWEN, messages=ASK_PERSON, tools=[tool], response_format={"type": "json_object"}, max_tokens=120,
                                     temperature=0)  # type: ignore[list-item]  # fmt: skip
    message = r.choices[0].message
    assert message.tool_calls or isinstance(json.loads(message.content or ""), dict)


def test_unsupported_schema_is_a_400(qwen: OpenAI) -> None:
    fmt = {
        "type": "json_schema",
        "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"a": {"$ref": "https://example.com/a.json"}}}},
    }
    with pytest.raises(openai.BadRequestError) as err:
        qwen.chat.completions.create(model=QWEN, messages=ASK_PERSON, response_format=fmt, max_tokens=5)  # type: ignore[arg-type]
    assert err.value.body["param"] == "response_format.json_schema.schema"  # type: ignore[index]
