"""The published OpenAPI document (FastAPI's, from the route decorators, completed by ``router.openapi``): valid
OpenAPI 3.1, every route in it, the committed copy current, and real responses -- bodies, stream events and errors --
conforming to it.

Responses come from the app in-process over scripted stages (``fake_stage.py``), so every shape can be made on
demand (tool calls, logprobs, a stage that fails, a tenant over its limit); each is checked twice: against the
document (the status is documented, the media type too, the body validates against the documented schema, each
event of a stream included) and against the pydantic model the schema came from (``common.response_models``,
``router.openapi``), strictly. ``test_openapi_fuzz.py`` does the same from generated requests against a live
router. The regression tests at the end are the defects the fuzzing found, one each.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import pytest
import schemathesis
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from schemathesis.specs.openapi.definitions import OPENAPI_31

from common import response_models
from common.completions_protocol import CompletionRequest
from common.protocol import ChatCompletionRequest
from common.responses_protocol import ResponsesRequest
from common.settings import Settings
from router import openapi
from router.api import create_app
from tests.conftest import ROOT
from tests.router.fake_stage import Script, fake_stages
from tests.router.inprocess import PROMPT, STOP, make_settings, scripted, serve

pytestmark = pytest.mark.anyio

ADMIN = {"authorization": "Bearer admin-key-for-tests"}
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
OPERATIONS = 15  # every public route, the admin API and /v1/tenant included


# -- the document -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return openapi.build(openapi.reference_app())


def _walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, dict):
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


def test_document_is_valid_openapi_3_1(doc: dict[str, Any]) -> None:
    """Against the OpenAPI 3.1 meta-schema, each component a valid JSON Schema 2020-12, every ``$ref`` resolving,
    and Schemathesis reads every operation."""
    assert doc["openapi"].startswith("3.1.")
    errors = [f"{e.json_path}: {e.message[:200]}" for e in jsonschema.Draft202012Validator(OPENAPI_31).iter_errors(doc)]
    assert not errors, errors
    for name, schema in doc["components"]["schemas"].items():
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as exc:
            pytest.fail(f"components.schemas.{name}: {exc.message}")
    for node in _walk(doc):
        if isinstance(node, dict) and isinstance(node.get("$ref"), str):
            target: Any = doc
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]  # KeyError: a dangling reference
    loaded = [result.ok() for result in schemathesis.openapi.from_dict(copy.deepcopy(doc)).get_all_operations()]
    assert len(loaded) == OPERATIONS


def _routes(routes: list[Any]) -> Iterator[APIRoute]:
    """Every ``APIRoute``, those of included routers (the admin API) too."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        inner = getattr(route, "original_router", None) or getattr(route, "app", None)
        if inner is not None and hasattr(inner, "routes"):
            yield from _routes(list(inner.routes))


def test_every_route_is_documented_with_its_bodies_and_errors(doc: dict[str, Any]) -> None:
    app = openapi.reference_app()
    routes = {(m.lower(), re.sub(r"\{(\w+):\w+\}", r"{\1}", r.path)) for r in _routes(list(app.routes)) if r.include_in_schema
              for m in r.methods}  # fmt: skip
    documented = {(m, p) for p, item in doc["paths"].items() for m in item}
    assert routes == documented
    assert len(documented) == OPERATIONS
    for path, item in doc["paths"].items():
        for method, op in item.items():
            where = f"{method.upper()} {path}"
            assert op["operationId"] and op["summary"], where
            assert "422" not in op["responses"], where  # FastAPI's: the router answers a bad parameter with a 400
            statuses = [s for s in op["responses"] if s[0] in "45"]
            assert "500" in statuses, where
            for status in statuses:
                assert op["responses"][status]["description"], where
                body = op["responses"][status]["content"]
                assert body == {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}, where
            ok = [s for s in op["responses"] if s.startswith("2")]
            assert len(ok) == 1 and op["responses"][ok[0]]["content"], where
            if method in ("post", "patch"):
                assert "requestBody" in op, where


def test_an_undocumented_route_fails_the_build() -> None:
    """A route whose decorator says nothing (FastAPI alone: a 200 of any JSON), or a body route without its body."""
    app = openapi.reference_app()

    @app.get("/v1/undocumented")
    async def undocumented() -> None: ...

    with pytest.raises(ValueError, match="GET /v1/undocumented is undocumented"):
        openapi.build(app)
    app = openapi.reference_app()

    @app.post("/v1/bodiless", responses=openapi.answers(response_models.Usage, "500"))
    async def bodiless() -> None: ...

    with pytest.raises(ValueError, match="POST /v1/bodiless is undocumented"):
        openapi.build(app)


@pytest.mark.parametrize(
    ("path", "model"),
    [("/v1/chat/completions", ChatCompletionRequest), ("/v1/completions", CompletionRequest), ("/v1/responses", ResponsesRequest)],
)
def test_request_bodies_are_the_validating_models_schemas(doc: dict[str, Any], path: str, model: type[BaseModel]) -> None:
    """One definition: the body the document describes is the JSON schema of the model the route validates with."""
    body = doc["paths"][path]["post"]["requestBody"]
    assert body["required"] is True
    assert body["content"]["application/json"]["schema"] == {"$ref": f"#/components/schemas/{model.__name__}"}
    expected = model.model_json_schema(ref_template=openapi.REF)
    defs = expected.pop("$defs", {})
    assert doc["components"]["schemas"][model.__name__] == expected
    for name, schema in defs.items():
        assert doc["components"]["schemas"][name] == schema, name


def test_the_committed_copy_is_current(doc: dict[str, Any]) -> None:
    """``docs/openapi.json`` is what the router serves; regenerate it with ``python -m router.openapi``."""
    assert openapi.RENDERED.read_bytes() == openapi.render(doc), "docs/openapi.json is stale: run `python -m router.openapi`"
    assert openapi.main(["--check"]) == 0
    assert "openapi.json" in (ROOT / "docs" / "openai-compatibility.md").read_text()


def test_the_document_does_not_depend_on_the_configuration(doc: dict[str, Any]) -> None:
    settings = make_settings()
    app = create_app(settings, predictor=scripted(STOP), stages=fake_stages(settings.stages))
    assert openapi.build(app) == doc


# -- conformance of real responses ------------------------------------------------------------------------------
MODELS: dict[str, type[BaseModel]] = {  # the response models a schema is named after
    m.__name__: m for m in [*vars(response_models).values(), *vars(openapi).values()] if isinstance(m, type) and issubclass(m, BaseModel)
}


def _media(doc: dict[str, Any], method: str, path: str, status: int) -> dict[str, Any]:
    """The documented media types of a response (``4XX`` covers what no exact status does)."""
    responses = doc["paths"][path][method]["responses"]
    entry = responses.get(str(status)) or responses.get(f"{str(status)[0]}XX")
    assert entry is not None, f"{method.upper()} {path}: {status} is not documented (documented: {sorted(responses)})"
    content: dict[str, Any] = entry["content"]
    return content


def _validate(doc: dict[str, Any], schema: dict[str, Any], value: Any, raw: bytes) -> None:
    """``value`` against a documented schema, and ``raw`` against the pydantic model(s) it names, strictly."""
    jsonschema.Draft202012Validator({**schema, "components": doc["components"]}).validate(value)
    refs = [schema.get("$ref"), *(s.get("$ref") for s in schema.get("anyOf", ()))]
    models = [MODELS[r.rsplit("/", 1)[1]] for r in refs if r]
    errors: list[str] = []
    for model in models:
        try:
            model.model_validate_json(raw)
            return
        except ValidationError as exc:
            errors.append(str(exc))
    assert not models, errors


def _content_schema(schema: dict[str, Any]) -> dict[str, Any]:
    found = [n["contentSchema"] for n in _walk(schema) if isinstance(n, dict) and "contentSchema" in n]
    assert len(found) == 1
    return found[0]


def _events(text: str) -> list[dict[str, str]]:
    out = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        event: dict[str, str] = {}
        for line in block.split("\n"):
            name, _, value = line.partition(":")
            if name in ("event", "data"):
                event[name] = event[name] + "\n" + value.lstrip(" ") if name in event else value.lstrip(" ")
        if event:
            out.append(event)
    return out


def conforms(doc: dict[str, Any], resp: httpx.Response) -> Any:
    """Assert ``resp`` is what the document says its operation answers; return its body (a stream: its events' data)."""
    method, path = resp.request.method.lower(), resp.request.url.path
    if path.startswith("/v1/models/"):
        path = "/v1/models/{model_id}"
    path = re.sub(r"^/admin/tenants/[^/]+", "/admin/tenants/{tenant_id}", path)
    media = _media(doc, method, path, resp.status_code)
    kind = resp.headers["content-type"].split(";")[0].strip()
    assert kind in media, f"{method.upper()} {path} {resp.status_code}: {kind} is not documented ({sorted(media)})"
    schema = media[kind]["schema"]
    if kind == "application/json":
        body = resp.json()
        _validate(doc, schema, body, resp.content)
        return body
    if kind == "text/event-stream":
        payloads = []
        for event in _events(resp.text):
            jsonschema.Draft202012Validator(schema).validate(event)
            if event["data"] == "[DONE]":
                payloads.append("[DONE]")
                continue
            data = json.loads(event["data"])
            _validate(doc, _content_schema(schema), data, event["data"].encode())
            if "event" in event:
                assert event["event"] == data["type"]
            payloads.append(data)
        if "if" in json.dumps(schema["properties"]["data"]):  # chat and completions streams end with [DONE]
            assert payloads[-1] == "[DONE]"
        return payloads
    return resp.text


def keys_settings() -> Settings:
    """The in-process settings with API keys required and the admin API on."""
    return make_settings(tenancy={"auth": "keys", "admin_key": ADMIN["authorization"].split()[1]})


CHAT_BODIES = [
    {"model": "cascade"},
    {"model": "s1"},
    {"model": "cascade", "stream": True, "stream_options": {"include_usage": True}},
    {"model": "s0", "stream": True},
    {"model": "cascade", "logprobs": True, "top_logprobs": 2},
    {"model": "cascade", "stream": True, "logprobs": True, "top_logprobs": 1},
]


@pytest.mark.parametrize("body", CHAT_BODIES)
@pytest.mark.parametrize("p0", [STOP, 0.1])
async def test_chat_answers_conform(doc: dict[str, Any], body: dict[str, Any], p0: float) -> None:
    """Stopped at stage 0 or escalated, relayed or re-streamed, with and without logprobs."""
    async with serve(p0=p0) as r:
        resp = await r.client.post("/v1/chat/completions", json={"messages": PROMPT, "max_tokens": 16, **body})
        assert resp.status_code == 200, resp.text
        out = conforms(doc, resp)
        if body.get("stream"):
            assert out[-1] == "[DONE]" and len(out) > 2


@pytest.mark.parametrize("stream", [False, True])
async def test_tool_call_answers_conform(doc: dict[str, Any], stream: bool) -> None:
    tool = Script("", tool_calls=[CALL])
    async with serve(scripts=(tool, tool)) as r:
        for path, body in [
            ("/v1/chat/completions", {"messages": PROMPT, "tools": [WEATHER]}),
            ("/v1/responses", {"input": "weather in Paris?", "tools": [{"type": "function", "name": "get_weather"}]}),
        ]:
            resp = await r.client.post(path, json={"model": "cascade", "stream": stream, **body})
            assert resp.status_code == 200, resp.text
            conforms(doc, resp)


@pytest.mark.parametrize(
    "body",
    [{}, {"stream": True, "stream_options": {"include_usage": True}}, {"logprobs": 2}, {"echo": True}, {"echo": True, "stream": True}],
)
@pytest.mark.parametrize("model", ["cascade", "s0"])
async def test_completions_answers_conform(doc: dict[str, Any], body: dict[str, Any], model: str) -> None:
    async with serve() as r:
        resp = await r.client.post("/v1/completions", json={"model": model, "prompt": "Q: 2 + 2?\nA:", "max_tokens": 8, **body})
        assert resp.status_code == 200, resp.text
        conforms(doc, resp)


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"stream": True},
        {"max_output_tokens": 2},  # incomplete
        {"include": ["message.output_text.logprobs"], "top_logprobs": 2, "instructions": "Be brief."},
        {"text": {"format": {"type": "json_schema", "name": "answer", "schema": {"type": "object"}}}, "metadata": {"k": "v"}},
        {"tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": [{"type": "function", "name": "f"}]},
         "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}]},
    ],
)  # fmt: skip
async def test_responses_answers_conform(doc: dict[str, Any], body: dict[str, Any]) -> None:
    async with serve() as r:
        resp = await r.client.post("/v1/responses", json={"model": "cascade", "input": "What is 2 + 2?", **body})
        assert resp.status_code == 200, resp.text
        conforms(doc, resp)


async def test_a_stream_that_breaks_off_conforms(doc: dict[str, Any]) -> None:
    """A stage failing after the stream started: chat's error event, the Responses API's error and response.failed."""
    from router.stage import StageBadResponse

    async with serve() as r:
        r.stages[0].fail, r.stages[0].stream_fail_after = StageBadResponse, 1
        resp = await r.client.post("/v1/chat/completions", json={"model": "s0", "messages": PROMPT, "stream": True})
        assert resp.status_code == 200 and "error" in conforms(doc, resp)[-2]
        resp = await r.client.post("/v1/responses", json={"model": "s0", "input": "hi", "stream": True})
        assert [e["type"] for e in conforms(doc, resp)][-2:] == ["error", "response.failed"]


async def test_models_health_metrics_conform(doc: dict[str, Any]) -> None:
    async with serve() as r:
        models = conforms(doc, await r.client.get("/v1/models"))
        assert [m["id"] for m in models["data"]] == ["cascade", "s0", "s1"]
        assert conforms(doc, await r.client.get("/v1/models/s1"))["stage"] == 1
        assert conforms(doc, await r.client.get("/health"))["status"] == "ok"
        r.stages[1].up = False
        health = conforms(doc, await r.client.get("/health", params={"stages": "true"}))
        assert health["status"] == "degraded" and health["stages"] == {"s0": "ok", "s1": "unreachable"}
        assert "adaptive_sd" in conforms(doc, await r.client.get("/metrics"))
        assert conforms(doc, await r.client.get("/v1/tenant"))["id"] == "default"
        assert (await r.client.get("/openapi.json")).json() == doc


async def test_admin_api_and_tenant_view_conform(doc: dict[str, Any]) -> None:
    async with serve(settings=keys_settings()) as r:
        c = r.client
        created = conforms(doc, await c.post("/admin/tenants", json={"id": "acme", "settings": {"rpm": 100}}, headers=ADMIN))
        assert conforms(doc, await c.get("/admin/tenants", headers=ADMIN))["data"] == ["acme"]
        conforms(doc, await c.patch("/admin/tenants/acme", json={"slo": {"metric": "mean_cost", "target": 2.0}}, headers=ADMIN))
        key = {"authorization": f"Bearer {created['api_key']}"}
        assert (await c.post("/v1/chat/completions", json={"model": "cascade", "messages": PROMPT}, headers=key)).status_code == 200
        view = conforms(doc, await c.get("/v1/tenant", headers=key))
        assert view["id"] == "acme" and "effective_lambda" in view
        conforms(doc, await c.get("/admin/tenants/acme", headers=ADMIN))
        new = conforms(doc, await c.post("/admin/tenants/acme/keys", json={"revoke_existing": True}, headers=ADMIN))
        assert new["revoked"] == 1
        conforms(doc, await c.post("/admin/tenants/acme/keys", headers=ADMIN))  # no body: the defaults
        assert conforms(doc, await c.delete("/admin/tenants/acme/keys", headers=ADMIN))["revoked"] == 2
        assert conforms(doc, await c.delete("/admin/tenants/acme", headers=ADMIN))["deleted"] is True


# -- error bodies ---------------------------------------------------------------------------------------------------
def _error(doc: dict[str, Any], resp: httpx.Response, status: int, param: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    err: dict[str, Any] = conforms(doc, resp)["error"]
    assert err["param"] == param, err
    return err


async def test_400s_conform(doc: dict[str, Any]) -> None:
    async with serve() as r:
        c = r.client
        _error(doc, await c.post("/v1/chat/completions", content=b"{not json"), 400)
        _error(doc, await c.post("/v1/chat/completions", json={"model": "cascade", "messages": []}), 400, "messages")
        _error(doc, await c.post("/v1/completions", json={"model": "cascade", "prompt": [1, 2]}), 400, "prompt")
        _error(doc, await c.post("/v1/responses", json={"model": "cascade", "input": "hi", "store": True}), 400, "store")
        _error(doc, await c.post("/v1/chat/completions", json={"model": "s0", "messages": PROMPT, "cascade_lambda": 1}), 400,
               "cascade_lambda")  # fmt: skip


async def test_401s_403s_404s_409s_429s_conform(doc: dict[str, Any]) -> None:
    async with serve(settings=keys_settings()) as r:
        c = r.client
        chat = {"model": "cascade", "messages": PROMPT}
        _error(doc, await c.post("/v1/chat/completions", json=chat), 401, "authorization")
        _error(doc, await c.post("/v1/responses", json={"model": "cascade", "input": "hi"}, headers={"authorization": "Bearer x"}), 401,
               "authorization")  # fmt: skip
        _error(doc, await c.get("/admin/tenants", headers={"authorization": "Bearer wrong"}), 401, "authorization")
        _error(doc, await c.get("/v1/tenant"), 401, "authorization")
        created = await c.post("/admin/tenants", json={"id": "t", "settings": {"rpm": 1, "allowed_models": ["s0"]}}, headers=ADMIN)
        _error(doc, await c.post("/admin/tenants", json={"id": "t"}, headers=ADMIN), 409, "id")
        key = {"authorization": f"Bearer {created.json()['api_key']}"}
        _error(doc, await c.post("/v1/chat/completions", json=chat, headers=key), 403, "model")
        resp = await c.post("/v1/chat/completions", json=chat, headers=key)
        assert _error(doc, resp, 429, "rpm")["code"] == "rate_limit_exceeded" and resp.headers["retry-after"]
        _error(doc, await c.get("/admin/tenants/nobody", headers=ADMIN), 404, "id")
        _error(doc, await c.patch("/admin/tenants/BAD!", json={}, headers=ADMIN), 400, "id")
    async with serve() as r:  # open, no admin key: the admin API is off
        _error(doc, await r.client.get("/admin/tenants", headers=ADMIN), 403)
        _error(doc, await r.client.post("/v1/chat/completions", json={"model": "gpt-9", "messages": PROMPT}), 404, "model")
        _error(doc, await r.client.get("/v1/models/gpt-9"), 404, "model")


@pytest.mark.parametrize(("failure", "status"), [("StageUnavailable", 503), ("StageTimeout", 504), ("StageBadResponse", 502)])
async def test_stage_failures_conform(doc: dict[str, Any], failure: str, status: int) -> None:
    import router.stage

    async with serve() as r:
        for stage in r.stages:
            stage.fail = getattr(router.stage, failure)
        for path, body in [("/v1/chat/completions", {"messages": PROMPT}), ("/v1/completions", {"prompt": "hi"}),
                           ("/v1/responses", {"input": "hi"})]:  # fmt: skip
            assert _error(doc, await r.client.post(path, json={"model": "s0", **body}), status)["type"] == "upstream_error"


# -- regressions: what the fuzzing found --------------------------------------------------------------------------
async def test_a_bad_query_parameter_is_an_openai_400_not_fastapis_422(doc: dict[str, Any]) -> None:
    """``/health?stages=maybe`` was FastAPI's 422 ``{"detail": [...]}``, undocumented and not OpenAI-shaped."""
    async with serve() as r:
        err = _error(doc, await r.client.get("/health", params={"stages": "maybe"}), 400, "stages")
        assert "stages" in err["message"] and err["type"] == "invalid_request_error"


async def test_non_ascii_digits_in_the_max_stage_header_are_a_400(doc: dict[str, Any]) -> None:
    """``x-cascade-max-stage: ²`` (``str.isdigit`` says yes, ``int()`` no) was a 500."""
    async with serve() as r:
        for value in (b"\xb2", b"1\xb9"):
            resp = await r.client.post("/v1/chat/completions", json={"model": "cascade", "messages": PROMPT},
                                       headers={"x-cascade-max-stage": value})  # fmt: skip
            _error(doc, resp, 400, "x-cascade-max-stage")


BIG = 10**20  # beyond 64 bits: no stage can be sent it (orjson refuses it)


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {"messages": PROMPT, "max_tokens": BIG}, "max_tokens"),
        ("/v1/chat/completions", {"messages": PROMPT, "seed": -BIG}, "seed"),
        ("/v1/chat/completions", {"messages": PROMPT, "cascade_max_stage": BIG}, "cascade_max_stage"),
        ("/v1/chat/completions", {"messages": PROMPT, "tools": [{**WEATHER, "function": {"name": "f", "parameters": {"maximum": BIG}}}]},
         "tools[0].function.parameters"),
        ("/v1/chat/completions",
         {"messages": PROMPT, "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {"x": [BIG]}}}},
         "response_format.json_schema.schema"),
        ("/v1/completions", {"prompt": "hi", "max_tokens": BIG}, "max_tokens"),
        ("/v1/completions", {"prompt": "hi", "seed": BIG}, "seed"),
        ("/v1/responses", {"input": "hi", "max_output_tokens": BIG}, "max_output_tokens"),
        ("/v1/responses", {"input": "hi", "tools": [{"type": "function", "name": "f", "parameters": {"x": BIG}}]}, "tools[0].parameters"),
        ("/v1/responses", {"input": "hi", "tools": [{"type": "function", "name": "f"}], "tool_choice": {
            "type": "allowed_tools", "mode": "auto", "tools": [{"type": "function", "name": "f", "n": BIG}]}}, "tool_choice.tools[0]"),
        ("/v1/responses", {"input": "hi", "text": {"format": {"type": "json_schema", "name": "a", "schema": {"x": BIG}}}},
         "text.format.schema"),
    ],
)  # fmt: skip
async def test_integers_beyond_64_bits_are_a_400_naming_the_field(doc: dict[str, Any], path: str, body: dict[str, Any], param: str) -> None:
    """A body integer no stage can be sent (``orjson`` refuses anything beyond 64 bits) was a 500: when the request
    went to a stage, when a Responses request was translated to chat, when the echo of the request was answered."""
    async with serve() as r:
        resp = await r.client.post(path, json={"model": "cascade", **body})
        err = _error(doc, resp, 400, param)
        assert "922337203685477580" in err["message"] or "64-bit" in err["message"]


async def test_tenant_settings_beyond_64_bits_are_a_400(doc: dict[str, Any]) -> None:
    """``rpm: 10**20`` was stored, then a 500 answering it (the tenant left behind without its key)."""
    async with serve(settings=keys_settings()) as r:
        c = r.client
        _error(doc, await c.post("/admin/tenants", json={"id": "t", "settings": {"rpm": BIG}}, headers=ADMIN), 400, "settings.rpm")
        assert (await c.get("/admin/tenants", headers=ADMIN)).json()["data"] == []
        assert (await c.post("/admin/tenants", json={"id": "t"}, headers=ADMIN)).status_code == 201
        for patch, param in [({"tpm": BIG}, "tpm"), ({"max_stage": BIG}, "max_stage")]:
            _error(doc, await c.patch("/admin/tenants/t", json=patch, headers=ADMIN), 400, param)


async def test_an_infinite_slo_target_is_a_400(doc: dict[str, Any]) -> None:
    """``target: 1e999`` (infinity) was stored and answered as ``null``, which its own schema refuses."""
    async with serve(settings=keys_settings()) as r:
        raw = b'{"id": "t", "settings": {"slo": {"metric": "mean_cost", "target": 1e999}}}'
        _error(doc, await r.client.post("/admin/tenants", content=raw, headers=ADMIN), 400, "settings.slo.target")


async def test_json_integers_written_as_floats_are_integers(doc: dict[str, Any]) -> None:
    """``max_tokens: 4.0`` is the JSON number 4, an ``integer`` by the schema: it was a 400; ``4.5`` still is."""
    async with serve() as r:
        resp = await r.client.post("/v1/chat/completions", json={"model": "s0", "messages": PROMPT, "max_tokens": 4.0, "seed": 7.0})
        assert resp.status_code == 200, resp.text
        assert r.stages[0].calls[-1]["max_tokens"] == 4 and isinstance(r.stages[0].calls[-1]["max_tokens"], int)
        resp = await r.client.post("/v1/completions", json={"model": "s0", "prompt": "hi", "max_tokens": 2.0, "logprobs": 1.0})
        assert resp.status_code == 200, resp.text
        _error(doc, await r.client.post("/v1/chat/completions", json={"model": "s0", "messages": PROMPT, "max_tokens": 4.5}), 400,
               "max_tokens")  # fmt: skip


async def test_an_infinite_lambda_is_a_400(doc: dict[str, Any]) -> None:
    """``cascade_lambda: 1e999`` (JSON's way to say infinity) was taken; the header refused it already."""
    async with serve() as r:
        for path, body in [("/v1/chat/completions", {"messages": PROMPT}), ("/v1/completions", {"prompt": "hi"}),
                           ("/v1/responses", {"input": "hi"})]:  # fmt: skip
            raw = json.dumps({"model": "cascade", **body})[:-1] + ', "cascade_lambda": 1e999}'
            _error(doc, await r.client.post(path, content=raw.encode()), 400, "cascade_lambda")


async def test_an_empty_function_call_output_id_names_it(doc: dict[str, Any]) -> None:
    """It was refused as the chat translation's ``messages[1].tool_call_id``, a name the client never sent."""
    async with serve() as r:
        body = {"model": "cascade", "input": [{"type": "function_call_output", "call_id": "", "output": "sunny"}]}
        err = _error(doc, await r.client.post("/v1/responses", json=body), 400, "input[0].call_id")
        assert "messages" not in err["message"]
