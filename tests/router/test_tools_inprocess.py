"""Tools and JSON formats through the cascade, in-process (scripted stages, scripted p̂).

The app and the policy are ``inprocess.py``'s: point priors, no risk shrinkage,
λ = 10, costs 1 / 4 (/ 8), priors 0.5 / 0.9 (/ 0.95). Stage 0 is scripted to a p̂
that stops there (0.9), so every escalation below is the validity rule's doing:
an invalid answer counts as p̂ = 0 and is escalated while a higher stage exists.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from common.settings import Settings
from router.stage import StageTimeout
from tests.router import inprocess
from tests.router.fake_stage import FakeStage, Script
from tests.router.inprocess import ESCALATE, PROMPT, STOP, Router, app_client, events, make_settings, scripted

pytestmark = pytest.mark.anyio

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
MESSAGES: Any = PROMPT  # as the openai client's typed parameters take it
PERSON = {"name": "person", "schema": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}}


def call(name: str = "get_weather", arguments: Any = '{"city": "Paris"}', id: str = "call_1") -> dict[str, Any]:
    return {"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}


def tool_script(*calls: dict[str, Any], prompt_tokens: int = 10) -> Script:
    return Script("", tool_calls=list(calls) or [call()], prompt_tokens=prompt_tokens)


GOOD_CALL = tool_script(call(), prompt_tokens=11)
TEXT = Script("It is sunny in Paris.", prompt_tokens=11)
GOOD_JSON = Script('{"name": "Ada"}', prompt_tokens=11)


def serve(*scripts: Script, settings: Settings | None = None, p0: float = STOP) -> AbstractAsyncContextManager[Router]:
    """``inprocess.serve`` with stage i answering ``scripts[i]`` (a stage past them: ``Script()``)."""
    return inprocess.serve(p0, settings, scripts)


# -- skipping stages that cannot answer -----------------------------------------------


async def test_a_tools_request_skips_stages_without_tools() -> None:
    async with serve(GOOD_CALL, GOOD_CALL, settings=make_settings({"tools": False}, {})) as r:
        resp = await r.chat(tools=[WEATHER])
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-cascade-skipped"] == "s0:tools" and resp.headers["x-cascade-kind"] == "tools"
        assert resp.headers["x-cascade-stage"] == resp.headers["x-cascade-path"] == "s1"
        assert r.stages[0].calls == []
        message = resp.json()["choices"][0]["message"]
        assert message["tool_calls"] == [call()] and resp.json()["choices"][0]["finish_reason"] == "tool_calls"
        # a plain request still starts at s0 and says nothing about skipping
        plain = await r.chat()
        assert plain.headers["x-cascade-stage"] == "s0" and "x-cascade-skipped" not in plain.headers
        assert plain.headers["x-cascade-kind"] == "text"


async def test_a_skipped_middle_stage_is_not_an_option_to_escalate_to() -> None:
    settings = make_settings({}, {"tools": False}, {})
    async with serve(tool_script(call(arguments="{")), GOOD_CALL, GOOD_CALL, settings=settings) as r:
        resp = await r.chat(tools=[WEATHER])
        assert resp.headers["x-cascade-path"] == "s0,s2" and resp.headers["x-cascade-skipped"] == "s1:tools"
        assert r.stages[1].calls == []


async def test_the_start_stage_is_chosen_on_the_capable_stages() -> None:
    """skip_by_prior on. Full ladder: V = 6, 5, 8.5, so a plain request starts at s1. Without s1 (no tools) the
    backward induction over s0, s2 gives V0 = 1 + min(5, 8.5) = 6 < V2 = 8.5: a tools request starts at s0."""
    settings = make_settings({}, {"tools": False}, {}, skip_by_prior=True)
    async with serve(GOOD_CALL, TEXT, GOOD_CALL, settings=settings) as r:
        assert (await r.chat()).headers["x-cascade-path"] == "s1"
        resp = await r.chat(tools=[WEATHER])
        assert resp.headers["x-cascade-path"] == "s0" and resp.headers["x-cascade-skipped"] == "s1:tools"
        assert len(r.stages[1].calls) == 1  # the plain request's


async def test_a_json_format_skips_stages_without_structured_outputs() -> None:
    async with serve(GOOD_JSON, GOOD_JSON, settings=make_settings({"structured_outputs": False}, {})) as r:
        resp = await r.chat(response_format={"type": "json_schema", "json_schema": PERSON})
        assert resp.headers["x-cascade-skipped"] == "s0:structured_outputs" and resp.headers["x-cascade-stage"] == "s1"
        assert resp.headers["x-cascade-kind"] == "json_schema"


async def test_tool_history_needs_a_tools_stage() -> None:
    history = [
        *PROMPT,
        {"role": "assistant", "content": None, "tool_calls": [call()]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    async with serve(TEXT, TEXT, settings=make_settings({"tools": False}, {})) as r:
        resp = await r.chat(messages=history)
        assert resp.status_code == 200 and resp.headers["x-cascade-skipped"] == "s0:tools"


@pytest.mark.parametrize(
    ("stages", "body", "param"),
    [
        (({"tools": False}, {"tools": False}), {"tools": [WEATHER]}, "tools"),
        (({"structured_outputs": False}, {"structured_outputs": False}), {"response_format": {"type": "json_object"}}, "response_format"),
        (({"tools": False}, {}), {"tools": [WEATHER], "cascade_max_stage": 0}, "tools"),  # the capable stage is above the cap
    ],
)
async def test_no_capable_stage_left_is_a_400_naming_the_field(
    stages: tuple[dict[str, Any], ...], body: dict[str, Any], param: str
) -> None:
    async with serve(GOOD_CALL, GOOD_CALL, settings=make_settings(*stages)) as r:
        resp = await r.chat(**body)
        assert resp.status_code == 400, resp.text
        err = resp.json()["error"]
        assert err["param"] == param and err["code"] == "no_capable_stage" and "s0" in err["message"]
        assert all(s.calls == [] for s in r.stages)


@pytest.mark.parametrize(
    ("body", "param"),
    [({"tools": [WEATHER]}, "tools"), ({"response_format": {"type": "json_object"}}, "response_format")],
)
async def test_passthrough_to_a_stage_that_cannot_is_a_400_naming_the_field(body: dict[str, Any], param: str) -> None:
    settings = make_settings({"tools": False, "structured_outputs": False}, {})
    async with serve(GOOD_CALL, GOOD_CALL, settings=settings) as r:
        resp = await r.chat(model="s0", **body)
        assert resp.status_code == 400 and resp.json()["error"]["param"] == param
        assert "s0" in resp.json()["error"]["message"] and r.stages[0].calls == []
        with pytest.raises(openai.BadRequestError):
            await r.openai().chat.completions.create(model="s0", messages=MESSAGES, **body)
        ok = await r.chat(model="s1", **body)  # the capable stage takes it
        assert ok.status_code == 200 and ok.headers["x-cascade-kind"] in ("tools", "json_object")


async def test_passthrough_marks_an_invalid_answer_and_returns_it() -> None:
    async with serve(GOOD_CALL, tool_script(call(arguments='{"town": "Paris"}'))) as r:
        resp = await r.chat(model="s1", tools=[WEATHER])
        assert resp.status_code == 200 and resp.headers["x-cascade-invalid"] == "s1:arguments"
        assert resp.json()["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == '{"town": "Paris"}'


# -- invalid answers escalate ---------------------------------------------------------------


INVALID_CASES: list[tuple[str, Script, Script, dict[str, Any]]] = [
    ("arguments-json", tool_script(call(arguments='{"city": "Par')), GOOD_CALL, {"tools": [WEATHER]}),
    ("arguments-json", tool_script(call(arguments={"city": "Paris"})), GOOD_CALL, {"tools": [WEATHER]}),  # an object, not JSON text
    ("unknown-tool", tool_script(call("get_forecast")), GOOD_CALL, {"tools": [WEATHER]}),
    ("arguments", tool_script(call(arguments='{"town": "Paris"}')), GOOD_CALL, {"tools": [WEATHER]}),
    ("arguments", tool_script(call(arguments='{"city": "Paris", "unit": "k"}')), GOOD_CALL, {"tools": [WEATHER]}),
    ("arguments", tool_script(call(arguments='"Paris"')), GOOD_CALL, {"tools": [WEATHER]}),
    ("unexpected-tool-call", GOOD_CALL, TEXT, {"tools": [WEATHER], "tool_choice": "none"}),
    ("missing-tool-call", TEXT, GOOD_CALL, {"tools": [WEATHER], "tool_choice": "required"}),
    ("missing-tool-call", TEXT, GOOD_CALL, {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}),
    ("wrong-tool", tool_script(call("get_time", "{}")), GOOD_CALL,
     {"tools": [WEATHER, TIME], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}),
    ("parallel-tool-calls", tool_script(call(), call(id="call_2")), GOOD_CALL, {"tools": [WEATHER], "parallel_tool_calls": False}),
    ("malformed", tool_script({"type": "function", "function": {"name": "get_weather", "arguments": "{}"}}), GOOD_CALL,  # no id
     {"tools": [WEATHER]}),
    # a call the stage's server left in the text (Qwen2.5-Coder-1.5B's doubled braces): the agent would take it for the answer
    ("unparsed-tool-call", Script('<tool_call>\n{{"name": "get_weather", "arguments": {"city": "Paris"}}}\n</tool_call>'), GOOD_CALL,
     {"tools": [WEATHER]}),
    ("unparsed-tool-call", Script('{"name": "get_weather", "arguments": {"city": "Paris"}}'), GOOD_CALL,
     {"tools": [WEATHER], "tool_choice": "required"}),
    ("json", Script('Sure! {"name": "Ada"}'), GOOD_JSON, {"response_format": {"type": "json_object"}}),
    ("json", Script("[1, 2]"), GOOD_JSON, {"response_format": {"type": "json_object"}}),
    ("json", Script('{"name": "Ada"'), GOOD_JSON, {"response_format": {"type": "json_schema", "json_schema": PERSON}}),
    ("schema", Script('{"name": 3}'), GOOD_JSON, {"response_format": {"type": "json_schema", "json_schema": PERSON}}),
    ("schema", Script('{"nom": "Ada"}'), GOOD_JSON, {"response_format": {"type": "json_schema", "json_schema": PERSON}}),
]  # fmt: skip


@pytest.mark.parametrize(("reason", "lower", "upper", "body"), INVALID_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(INVALID_CASES)])
async def test_an_invalid_lower_answer_escalates_whatever_the_predictor_says(
    reason: str, lower: Script, upper: Script, body: dict[str, Any]
) -> None:
    async with serve(lower, upper, p0=0.999) as r:
        resp = await r.chat(**body)
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-cascade-invalid"] == f"s0:{reason}"
        assert resp.headers["x-cascade-path"] == "s0,s1" and resp.headers["x-cascade-stage"] == "s1"
        assert resp.headers["x-cascade-p"] == "0.0000,0.8000"  # p̂ = 0 for the stopping rule; the predictor was not asked
        assert len(r.predictor.features) == 1
        message = resp.json()["choices"][0]["message"]
        assert message.get("tool_calls") == upper.tool_calls and (message["content"] or "") == upper.text


async def test_an_invalid_answer_escalates_even_when_lambda_says_stop() -> None:
    """λ = 0: quality is worth nothing, so a valid answer stops anywhere; an invalid one still goes up."""
    async with serve(tool_script(call(arguments="nope")), GOOD_CALL) as r:
        resp = await r.chat(tools=[WEATHER], cascade_lambda=0.0)
        assert resp.headers["x-cascade-stage"] == "s1" and resp.headers["x-cascade-invalid"] == "s0:arguments-json"
        assert (await r.chat(cascade_lambda=0.0)).headers["x-cascade-stage"] == "s0"  # a plain request (nothing to judge) stops


async def test_valid_answers_are_judged_by_the_predictor_as_before() -> None:
    async with serve(GOOD_CALL, GOOD_CALL) as r:
        resp = await r.chat(tools=[WEATHER])
        assert resp.headers["x-cascade-stage"] == "s0" and "x-cascade-invalid" not in resp.headers
        assert resp.headers["x-cascade-p"] == "0.9000"
    async with serve(GOOD_JSON, GOOD_JSON) as r:
        resp = await r.chat(response_format={"type": "json_schema", "json_schema": PERSON})
        assert resp.headers["x-cascade-stage"] == "s0" and "x-cascade-invalid" not in resp.headers
    async with serve(TEXT, GOOD_CALL) as r:  # tool_choice auto: a text answer is a valid answer
        resp = await r.chat(tools=[WEATHER])
        assert resp.headers["x-cascade-stage"] == "s0" and "x-cascade-invalid" not in resp.headers


async def test_the_top_stages_invalid_answer_is_returned_as_it_is_and_marked() -> None:
    bad = call(arguments='{"town": "Lyon"}')
    async with serve(tool_script(call(arguments="{")), tool_script(bad)) as r:
        resp = await r.chat(tools=[WEATHER])
        assert resp.status_code == 200
        assert resp.headers["x-cascade-stage"] == "s1" and resp.headers["x-cascade-invalid"] == "s0:arguments-json,s1:arguments"
        assert resp.json()["choices"][0]["message"]["tool_calls"] == [bad]
        tools: Any = [WEATHER]
        completion = await r.openai().chat.completions.create(model="cascade", messages=MESSAGES, tools=tools)
        assert [c.model_dump() for c in completion.choices[0].message.tool_calls or ()] == [bad]


async def test_an_invalid_answer_in_hand_is_not_what_a_failing_upper_stage_falls_back_to() -> None:
    settings = make_settings({}, {}, {})
    async with serve(tool_script(call(arguments="{")), GOOD_CALL, GOOD_CALL, settings=settings) as r:
        r.stages[1].fail = StageTimeout
        resp = await r.chat(tools=[WEATHER])
        assert resp.headers["x-cascade-stage"] == "s2" and resp.headers["x-cascade-path"] == "s0,s2"  # s1 failed: on to s2
        assert "x-cascade-degraded" not in resp.headers
    async with serve(tool_script(call(arguments="{")), GOOD_CALL) as r:  # nothing above: the invalid answer, degraded and marked
        r.stages[1].fail = StageTimeout
        resp = await r.chat(tools=[WEATHER])
        assert resp.headers["x-cascade-stage"] == "s0" and resp.headers["x-cascade-invalid"] == "s0:arguments-json"
        assert "stage 's1'" in resp.headers["x-cascade-degraded"]


# -- draft reuse -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "lower", "mode"),
    [
        ({"response_format": {"type": "json_object"}}, GOOD_JSON, "regenerate:structured"),
        ({"response_format": {"type": "json_schema", "json_schema": PERSON}}, GOOD_JSON, "regenerate:structured"),
        ({"tools": [WEATHER]}, GOOD_CALL, "regenerate:tools"),
        ({"tools": [WEATHER]}, TEXT, "regenerate:tools"),  # a text draft, but the upper stage may answer with a tool call
        ({"tools": [WEATHER], "tool_choice": "none"}, TEXT, "verify"),  # tools switched off: free text on both stages
        ({}, TEXT, "verify"),
    ],
)
async def test_draft_reuse_regenerates_structured_and_tool_answers(body: dict[str, Any], lower: Script, mode: str) -> None:
    async with serve(lower, GOOD_JSON if "response_format" in body else TEXT, settings=make_settings(dialect="vllm"), p0=ESCALATE) as r:
        resp = await r.chat(temperature=0, max_tokens=32, **body)
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-cascade-draft"] == f"s1:{mode}"
        scoring = [c for c in r.stages[1].calls if c.get("prompt_logprobs") is not None]
        assert bool(scoring) == (mode == "verify")


# -- streaming -----------------------------------------------------------------------------


async def test_stream_of_a_stopped_lower_stages_tool_call_is_reassembled_by_the_openai_client() -> None:
    calls = [call(), call("get_time", "{}", id="call_2")]
    async with serve(tool_script(*calls), GOOD_CALL) as r:
        client = r.openai()
        tools: Any = [WEATHER, TIME]
        async with client.chat.completions.stream(model="cascade", messages=MESSAGES, tools=tools) as stream:
            final = await stream.get_final_completion()
        choice = final.choices[0]
        assert choice.finish_reason == "tool_calls" and final.model == "cascade"
        got = [c.model_dump(exclude={"index": True, "function": {"parsed_arguments"}}) for c in choice.message.tool_calls or ()]
        assert got == calls
        assert r.stages[1].calls == []
        resp = await r.chat(tools=[WEATHER, TIME], stream=True)
        deltas = [c["choices"][0]["delta"] for c in events(resp)[:-1] if c["choices"]]
        assert deltas[0] == {"role": "assistant", "content": None}
        assert deltas[1]["tool_calls"] == [{"index": 0, "id": "call_1", "type": "function",
                                            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]  # fmt: skip


async def test_stream_from_the_top_stage_relays_its_tool_call_deltas() -> None:
    async with serve(tool_script(call(arguments="{")), GOOD_CALL) as r:
        raw = await r.client.post("/v1/chat/completions", json={"model": "cascade", "messages": PROMPT, "tools": [WEATHER], "stream": True})
        assert raw.headers["x-cascade-invalid"] == "s0:arguments-json" and raw.headers["x-cascade-stage"] == "s1"
        tools: Any = [WEATHER]
        async with r.openai().chat.completions.stream(model="cascade", messages=MESSAGES, tools=tools) as stream:
            final = await stream.get_final_completion()
        got = [c.model_dump(exclude={"index": True, "function": {"parsed_arguments"}}) for c in final.choices[0].message.tool_calls or ()]
        assert got == [call()]
        assert final.choices[0].finish_reason == "tool_calls"
        assert r.stages[1].calls[-1]["stream"] is True and r.stages[1].calls[-1]["tools"] == [WEATHER]


async def test_chunks_that_carried_only_the_routers_logprobs_are_not_relayed() -> None:
    """A stage holding back text that may start a tool call still streams each token's logprobs (the router asked for
    them, for the predictor); with the logprobs cut for the client such a chunk says nothing and is dropped."""

    class HoldsBack(FakeStage):
        def _chunks(self, body: dict[str, Any]) -> list[bytes]:
            out = super()._chunks(body)
            entry = {"token": "<tool", "logprob": -0.1, "bytes": [60], "top_logprobs": []}
            held = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": self.config.model,
                    "choices": [{"index": 0, "delta": {}, "logprobs": {"content": [entry]}, "finish_reason": None}]}  # fmt: skip
            return out[:1] + [orjson.dumps(held)] * 5 + out[1:]

    settings = make_settings()
    stages = [FakeStage(settings.stages[0], tool_script(call(arguments="{"))), HoldsBack(settings.stages[1], GOOD_CALL)]
    async with app_client(settings, predictor=scripted(STOP), stages=stages) as client:
        body = {"model": "cascade", "messages": PROMPT, "tools": [WEATHER], "stream": True}
        resp = await client.post("/v1/chat/completions", json=body)
        assert resp.headers["x-cascade-stage"] == "s1"
        choices = [c["choices"][0] for c in events(resp)[:-1] if c["choices"]]
        assert all(c["delta"] or c["finish_reason"] for c in choices), choices
        assert any(c["delta"].get("tool_calls") for c in choices)
        with_lp = await client.post("/v1/chat/completions", json={**body, "logprobs": True})
        assert sum(1 for c in events(with_lp)[:-1] if c["choices"] and c["choices"][0]["logprobs"]) >= 5  # asked for: kept


async def test_stream_of_a_stopped_json_answer() -> None:
    async with serve(GOOD_JSON, GOOD_JSON) as r:
        resp = await r.chat(response_format={"type": "json_object"}, stream=True)
        chunks = events(resp)
        assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks[:-1] if c["choices"]) == GOOD_JSON.text
        assert [c["choices"][0]["finish_reason"] for c in chunks[:-1] if c["choices"][0]["finish_reason"]] == ["stop"]


# -- what the stage receives, metrics, models, the traffic log -------------------------------------------


async def test_the_stage_receives_tools_and_format_as_sent() -> None:
    async with serve(GOOD_CALL, GOOD_CALL) as r:
        await r.chat(tools=[WEATHER], tool_choice="required", parallel_tool_calls=False)
        sent = r.stages[0].calls[0]
        assert sent["tools"] == [WEATHER] and sent["tool_choice"] == "required" and sent["parallel_tool_calls"] is False


async def test_metrics_count_requests_by_kind_and_invalid_answers_by_reason() -> None:
    async with serve(tool_script(call("nope_tool")), GOOD_CALL, settings=make_settings({}, {})) as r:
        await r.chat(tools=[WEATHER])
        await r.chat(model="s1", tools=[WEATHER])
        text = (await r.client.get("/metrics")).text
    assert 'adaptive_sd_requests_by_kind_total{kind="tools",stage="s1"}' in text
    assert 'adaptive_sd_invalid_answers_total{reason="unknown-tool",stage="s0"}' in text
    async with serve(GOOD_CALL, GOOD_CALL, settings=make_settings({"tools": False}, {})) as r:
        await r.chat(tools=[WEATHER])
        text = (await r.client.get("/metrics")).text
    assert 'adaptive_sd_stages_skipped_total{capability="tools",stage="s0"}' in text


async def test_models_by_id() -> None:
    async with serve(settings=make_settings({"tools": False}, {})) as r:
        for model_id in ("cascade", "s0", "s1"):
            resp = await r.client.get(f"/v1/models/{model_id}")
            assert resp.status_code == 200 and resp.json()["id"] == model_id and resp.json()["object"] == "model"
        assert (await r.client.get("/v1/models/s0")).json()["capabilities"] == {
            "tools": False,
            "structured_outputs": True,
            "completions": True,
            "vllm_extras": False,  # make_settings' stages speak the openai dialect: a hosted API's
        }
        assert (await r.client.get("/v1/models/cascade")).json()["capabilities"]["tools"] is True
        model = await r.openai().models.retrieve("s1")
        assert model.id == "s1" and model.owned_by == "adaptive-sd"
        for unknown in ("gpt-9", "org/some-model"):
            resp = await r.client.get(f"/v1/models/{unknown}")
            assert resp.status_code == 404
            assert resp.json()["error"] == {
                "message": f"The model '{unknown}' does not exist",
                "type": "invalid_request_error",
                "param": "model",
                "code": "model_not_found",
            }
        with pytest.raises(openai.NotFoundError):
            await r.openai().models.retrieve("gpt-9")


async def test_traffic_log_records_validity_and_tool_calls(tmp_path: Path) -> None:
    log = tmp_path / "traffic.jsonl"
    settings = make_settings(predictor={"log_path": str(log)})
    bad = call(arguments='{"town": "Paris"}')
    async with serve(tool_script(bad), GOOD_CALL, settings=settings) as r:
        assert (await r.chat(tools=[WEATHER])).status_code == 200
        assert (await r.chat()).status_code == 200
    tools_row, text_row = [orjson.loads(line) for line in log.read_text().splitlines()]
    assert tools_row["kind"] == "tools" and text_row["kind"] == "text"
    lower, upper = tools_row["stages"]
    assert (lower["valid"], lower["invalid"], lower["tool_calls"]) == (False, "arguments", [bad])
    assert (upper["valid"], upper["invalid"], upper["tool_calls"]) == (True, None, [call()])
    (plain,) = text_row["stages"]
    assert plain["valid"] is None and plain["invalid"] is None  # a plain text request: nothing to judge
