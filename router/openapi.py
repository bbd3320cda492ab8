"""The router's OpenAPI 3.1 document: every route, with the real request and response bodies.

The public routes read their bodies by hand (``orjson`` bytes into
``Model.model_validate_json``; ``router.api``) because FastAPI's own body
parsing costs CPU on the hot path, so FastAPI's generated document knows
nothing of their bodies. This module adds them after the fact, in
``app.openapi``, which runs once when the document is first asked for and
costs a request nothing:

* request bodies are the JSON schemas of the very pydantic models the routes
  validate with (``ChatCompletionRequest``, ``CompletionRequest``,
  ``ResponsesRequest``, the admin API's ``CreateTenant`` / ``NewKey`` /
  ``TenantSettings``): one definition, never a copy;
* response bodies are ``common.response_models`` (and the admin API's objects
  below), which tests validate real responses against; streams are documented
  as ``text/event-stream`` whose events carry those models as JSON in ``data``
  (OpenAPI 3.1: the media type's schema describes one event);
* every error status a route can return has the OpenAI error body.

Parameters FastAPI reads from a route's signature (``/health?stages``, path
parameters) keep FastAPI's description of them (a tenant id gets the pattern
the admin API holds it to); its ``422`` is dropped, since the router answers a
bad parameter with an OpenAI-shaped 400 instead.

A route with no entry in ``OPERATIONS``, or an entry with no route, is an error
when the document is built, so a new route cannot go out undocumented.
The document does not depend on the configuration (model names are strings,
``GET /v1/models`` lists them), so ``docs/openapi.json`` is the document of any
router of this version; a test fails when it is stale.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from common.completions_protocol import CompletionRequest
from common.protocol import ChatCompletionRequest
from common.response_models import (
    ChatCompletion,
    ChatCompletionChunk,
    Completion,
    CompletionChunk,
    ErrorResponse,
    Health,
    ModelCard,
    ModelList,
    ResponseObject,
    ResponseStreamEvent,
)
from common.responses_protocol import ResponsesRequest
from router.tenants.admin import CreateTenant, NewKey
from router.tenants.model import _TENANT_ID, TenantSettings

REF = "#/components/schemas/{model}"
RENDERED = Path(__file__).resolve().parent.parent / "docs" / "openapi.json"
DESCRIPTION = (
    'An OpenAI-compatible router over a ladder of models of rising cost: `model: "cascade"` answers from the '
    "cheapest stage whose answer is judged good enough, a stage's own name is a pass-through to it. Request bodies "
    "are validated strictly: an unknown top-level field, a wrong type or a value out of range is a 400 in OpenAI's "
    "error shape, naming the field in `error.param`. See docs/openai-compatibility.md."
)


# -- the admin API's response objects (the request bodies are router.tenants.admin's own models) --------------
class _AdminBody(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class RecentStats(_AdminBody):
    n: int = Field(description="requests in the recent window")
    latency_ms_p50: float | None
    latency_ms_p95: float | None
    mean_cost: float | None


class TenantStats(_AdminBody):
    requests: int
    tokens: int
    stops: dict[str, int] = Field(description="requests answered by each stage")
    recent: RecentStats


class SLOController(_AdminBody):
    lambda_: float = Field(alias="lambda")
    updates: int


class TenantCreated(_AdminBody):
    id: str
    settings: TenantSettings
    api_key: str = Field(description="the tenant's API key: shown once, stored only as its hash")


class TenantList(_AdminBody):
    object: Literal["list"]
    data: list[str] = Field(description="tenant ids")


class TenantView(_AdminBody):
    """A tenant's settings, the λ in force and its stats."""

    id: str
    settings: TenantSettings
    effective_lambda: float
    slo_controller: SLOController | None
    stats: TenantStats


class DefaultTenantView(_AdminBody):
    """``GET /v1/tenant`` without a key on an open router: the default tenant, which keeps no stats."""

    id: str
    settings: TenantSettings
    stats: None


class TenantDeleted(_AdminBody):
    id: str
    deleted: bool


class KeyAdded(_AdminBody):
    id: str
    api_key: str = Field(description="the new key: shown once")
    revoked: int = Field(description="keys revoked first (revoke_existing)")


class KeysRevoked(_AdminBody):
    id: str
    revoked: int


# -- what each route takes and answers -----------------------------------------------------------------------
def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _json(model: type[BaseModel] | dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": _ref(model) if isinstance(model, type) else model}}


def _sse(description: str, payload: dict[str, Any], *, named: bool, done: bool) -> dict[str, Any]:
    """A ``text/event-stream`` body; its schema describes one event (as OpenAPI 3.1 reads it) with JSON in ``data``."""
    data: dict[str, Any] = {"type": "string", "contentMediaType": "application/json", "contentSchema": payload}
    if done:  # the stream's last event is the literal `data: [DONE]`, which is not JSON
        data = {"type": "string", "if": {"const": "[DONE]"}, "else": data}
    properties: dict[str, Any] = {"data": data}
    if named:
        properties["event"] = {"type": "string", "description": "the event's type, as in its data"}
    event = {"type": "object", "required": ["event", "data"] if named else ["data"], "properties": properties}
    return {"text/event-stream": {"schema": {**event, "description": description}}}


_CHAT_STREAM = _sse(
    "With `stream: true`: one `data: <ChatCompletionChunk>` event per delta, an error body as the last event if a stage "
    "failed after the stream started, then `data: [DONE]`.",
    {"anyOf": [_ref(ChatCompletionChunk), _ref(ErrorResponse)]},
    named=False,
    done=True,
)
_COMPLETION_STREAM = _sse(
    "With `stream: true`: `data: <CompletionChunk>` events, an error body as the last event if a stage failed after the "
    "stream started, then `data: [DONE]`.",
    {"anyOf": [_ref(CompletionChunk), _ref(ErrorResponse)]},
    named=False,
    done=True,
)
_RESPONSES_STREAM = _sse(
    "With `stream: true`: OpenAI's Responses events, each as `event: <type>` and `data: <event>` with a "
    "`sequence_number` from 0, ending with `response.completed`, `response.incomplete` or `response.failed` (no `[DONE]`).",
    _ref(ResponseStreamEvent),
    named=True,
    done=False,
)

ERRORS: dict[str, str] = {
    "400": "The request is invalid: `error.param` names the field",
    "401": "Missing or incorrect API key",
    "403": "This key may not do this (a model outside its `allowed_models`; a tenant whose `max_stage` names no stage of the "
    "ladder; the admin API without `tenancy.admin_key`)",
    "404": "No such model, tenant or route",
    "409": "The tenant exists already",
    "429": "The tenant's requests or tokens per minute are used up; `Retry-After` says when to retry",
    "500": "A bug in the router (never expected): still the OpenAI error body",
    "502": "A stage answered with an error or garbage",
    "503": "No stage can take the request now (unreachable), or the tenant store is unavailable",
    "504": "A stage did not answer in time",
    "4XX": "A stage refused the request: its status and message, relayed",
}
_CASCADE_HEADERS = {
    "x-cascade-stage": "the stage whose answer this is",
    "x-cascade-path": "the stages that answered, in order, comma-separated",
    "x-cascade-kind": "text, tools, json_object, json_schema or completion",
    "x-cascade-overhead-ms": "the router's own time, without the stages'",
    "x-cascade-p": "the cascade: each answering stage's estimated probability that its answer is acceptable",
    "x-cascade-lambda": "the cascade: the λ used",
    "x-cascade-skipped": "the cascade: stages left out, <stage>:<capability or unavailable>",
    "x-cascade-invalid": "answers that broke the request's rules, <stage>:<reason>",
    "x-cascade-draft": "the cascade: how each escalated stage used the draft below it, <stage>:<mode>",
    "x-cascade-accepted": "the cascade: draft tokens each verifying stage accepted, <stage>:<accepted>/<drafted>",
    "x-cascade-degraded": "the cascade: a higher stage failed and this lower answer is returned instead",
    "x-cascade-tokens": "each stage called, in order, <stage>=<prompt tokens>+<generated tokens> as its usage counted them "
    "(a failed stage: =0+0); a streamed stage's tokens are not known when the headers go out: it is left out (its tokens "
    "are the stream's final usage less these), and `-` when that leaves none",
    "x-cascade-cost": "what the request is charged (the tenant's cost accounting): each stage called at its prices on its "
    "tokens, a failed or streamed one at its per-request price",
    "x-cascade-cost-unit": "the unit of x-cascade-cost (cascade.cost_unit)",
}
_KNOB_PARAMETERS = [
    {
        "name": "x-cascade-lambda",
        "in": "header",
        "required": False,
        "description": "the cascade's λ (cost of a bad answer, in cost units): a finite number >= 0; the body's `cascade_lambda` wins",
        # every string of this form is taken (it stays below 1e200); other spellings float() reads are taken too
        "schema": {"type": "string", "pattern": r"^[0-9]{1,100}(\.[0-9]{0,100})?([eE][+-]?[0-9]{1,2})?$"},
    },
    {
        "name": "x-cascade-max-stage",
        "in": "header",
        "required": False,
        "description": "the highest stage the cascade may use: an index from 0 or a stage name; the body's `cascade_max_stage` wins",
        "schema": {"type": "string"},
    },
]
PUBLIC_SECURITY: list[dict[str, list[str]]] = [{"apiKey": []}, {}]  # a router with tenancy.auth: open takes no key
ADMIN_SECURITY: list[dict[str, list[str]]] = [{"adminKey": []}]


@dataclass(frozen=True)
class Operation:
    """One route's documentation: its id, what it takes (``body``: a pydantic model) and what it answers."""

    operation_id: str
    summary: str
    tag: str
    ok: dict[str, Any]  # the 2xx media types
    errors: tuple[str, ...]
    ok_status: str = "200"
    ok_description: str = "OK"
    body: type[BaseModel] | None = None
    body_required: bool = True
    description: str | None = None
    parameters: list[dict[str, Any]] = field(default_factory=list)
    security: list[dict[str, list[str]]] | None = None
    ok_headers: Mapping[str, str] = field(default_factory=dict)


_POST_ERRORS = ("400", "401", "403", "404", "429", "500", "502", "503", "504", "4XX")
_ADMIN_ERRORS = ("401", "403", "500", "503")
OPERATIONS: dict[tuple[str, str], Operation] = {
    ("post", "/v1/chat/completions"): Operation(
        "createChatCompletion",
        "Chat completion, from the cascade or a named stage",
        "OpenAI",
        {**_json(ChatCompletion), **_CHAT_STREAM},
        _POST_ERRORS,
        body=ChatCompletionRequest,
        description="OpenAI's chat completions. `model` is the cascade model (`cascade` by default) or a stage's name "
        "(GET /v1/models); `cascade_lambda` and `cascade_max_stage` (or the `x-cascade-*` headers) steer the cascade.",
        parameters=_KNOB_PARAMETERS,
        security=PUBLIC_SECURITY,
        ok_headers=_CASCADE_HEADERS,
    ),
    ("post", "/v1/completions"): Operation(
        "createCompletion",
        "Legacy text completion, from the cascade or a named stage",
        "OpenAI",
        {**_json(Completion), **_COMPLETION_STREAM},
        _POST_ERRORS,
        body=CompletionRequest,
        description="The legacy completions API (vLLM-compatible): one text prompt, no chat template.",
        parameters=_KNOB_PARAMETERS,
        security=PUBLIC_SECURITY,
        ok_headers=_CASCADE_HEADERS,
    ),
    ("post", "/v1/responses"): Operation(
        "createResponse",
        "Responses API (stateless), from the cascade or a named stage",
        "OpenAI",
        {**_json(ResponseObject), **_RESPONSES_STREAM},
        _POST_ERRORS,
        body=ResponsesRequest,
        description="OpenAI's Responses API, stateless: nothing is stored, so send the whole conversation in `input`. "
        "See docs/responses.md.",
        parameters=_KNOB_PARAMETERS,
        security=PUBLIC_SECURITY,
        ok_headers=_CASCADE_HEADERS,
    ),
    ("get", "/v1/models"): Operation(
        "listModels", "The cascade model and every stage, with their capabilities", "OpenAI", _json(ModelList), ("500",)
    ),
    ("get", "/v1/models/{model_id}"): Operation("retrieveModel", "One model card", "OpenAI", _json(ModelCard), ("404", "500")),
    ("get", "/health"): Operation(
        "health",
        "Liveness, and each stage endpoint's state as the router sees it",
        "Operations",
        _json(Health),
        ("400", "500"),
        description="No network call unless `stages=true`: then every endpoint is probed first, and a stage none of whose "
        "endpoints answers makes the status `degraded`. Each stage reads `ok`, `unreachable`, or, where the router launched "
        "the stages itself (`adaptive-sd up`), `dead (killed by SIGSEGV)` / `dead (exited with code 1)` once its process has ended.",
    ),
    ("get", "/metrics"): Operation(
        "metrics",
        "Prometheus metrics",
        "Operations",
        {"text/plain": {"schema": {"type": "string", "description": "the Prometheus text exposition format"}}},
        ("500",),
    ),
    ("get", "/v1/tenant"): Operation(
        "retrieveOwnTenant",
        "The calling tenant's own settings and stats",
        "Tenants",
        _json({"anyOf": [_ref(TenantView), _ref(DefaultTenantView)]}),
        ("401", "429", "500", "503"),
        security=PUBLIC_SECURITY,
    ),
    ("post", "/admin/tenants"): Operation(
        "createTenant",
        "Create a tenant and its first API key",
        "Admin",
        _json(TenantCreated),
        ("400", "409", *_ADMIN_ERRORS),
        ok_status="201",
        ok_description="Created",
        body=CreateTenant,
        security=ADMIN_SECURITY,
    ),
    ("get", "/admin/tenants"): Operation(
        "listTenants", "Every tenant's id", "Admin", _json(TenantList), _ADMIN_ERRORS, security=ADMIN_SECURITY
    ),
    ("get", "/admin/tenants/{tenant_id}"): Operation(
        "retrieveTenant",
        "A tenant's settings, λ and stats",
        "Admin",
        _json(TenantView),
        ("400", "404", *_ADMIN_ERRORS),
        security=ADMIN_SECURITY,
    ),
    ("patch", "/admin/tenants/{tenant_id}"): Operation(
        "updateTenant",
        "Change some of a tenant's settings",
        "Admin",
        _json(TenantView),
        ("400", "404", *_ADMIN_ERRORS),
        body=TenantSettings,
        body_required=False,
        description="The body holds the settings to change; the others keep their values. An empty body changes nothing.",
        security=ADMIN_SECURITY,
    ),
    ("delete", "/admin/tenants/{tenant_id}"): Operation(
        "deleteTenant",
        "Delete a tenant and its keys",
        "Admin",
        _json(TenantDeleted),
        ("400", "404", *_ADMIN_ERRORS),
        security=ADMIN_SECURITY,
    ),  # fmt: skip
    ("post", "/admin/tenants/{tenant_id}/keys"): Operation(
        "createTenantKey",
        "A new API key for a tenant",
        "Admin",
        _json(KeyAdded),
        ("400", "404", *_ADMIN_ERRORS),
        ok_status="201",
        ok_description="Created",
        body=NewKey,
        body_required=False,
        security=ADMIN_SECURITY,
    ),
    ("delete", "/admin/tenants/{tenant_id}/keys"): Operation(
        "revokeTenantKeys",
        "Revoke every API key of a tenant",
        "Admin",
        _json(KeysRevoked),
        ("400", "404", *_ADMIN_ERRORS),
        security=ADMIN_SECURITY,
    ),  # fmt: skip
}

# Every model the document refers to; their schemas (and those they use) are the document's components.
SCHEMA_MODELS: tuple[type[BaseModel], ...] = (
    ChatCompletionRequest,
    CompletionRequest,
    ResponsesRequest,
    CreateTenant,
    NewKey,
    TenantSettings,
    ChatCompletion,
    ChatCompletionChunk,
    Completion,
    CompletionChunk,
    ResponseObject,
    ResponseStreamEvent,
    ModelList,
    ModelCard,
    Health,
    ErrorResponse,
    TenantCreated,
    TenantList,
    TenantView,
    DefaultTenantView,
    TenantDeleted,
    KeyAdded,
    KeysRevoked,
)


def _components() -> dict[str, Any]:
    _, top = models_json_schema([(m, "validation") for m in SCHEMA_MODELS], ref_template=REF)
    schemas: dict[str, Any] = top.get("$defs", {})
    schemas["CreateTenant"]["properties"]["id"]["pattern"] = _TENANT_ID.pattern  # what the route holds it to (check_tenant_id)
    responses = {
        code: {"description": text, "content": _json(ErrorResponse)} for code, text in ERRORS.items()
    }  # fmt: skip
    responses["429"]["headers"] = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "string"}}}
    return {
        "schemas": dict(sorted(schemas.items())),
        "responses": {_error_name(code): body for code, body in responses.items()},
        "securitySchemes": {
            "apiKey": {"type": "http", "scheme": "bearer", "description": "a tenant's API key (tenancy.auth: keys)"},
            "adminKey": {"type": "http", "scheme": "bearer", "description": "tenancy.admin_key"},
        },
    }


def _error_name(code: str) -> str:
    return f"Error{code}"


def _operation(generated: dict[str, Any], op: Operation) -> dict[str, Any]:
    """FastAPI's operation (its parameters) with our id, bodies and responses."""
    out: dict[str, Any] = {"tags": [op.tag], "summary": op.summary, "operationId": op.operation_id}
    if op.description is not None:
        out["description"] = op.description
    parameters = [*generated.get("parameters", []), *copy.deepcopy(op.parameters)]
    for parameter in parameters:
        if parameter["name"] == "tenant_id":  # the route holds it to check_tenant_id's pattern (400 otherwise)
            parameter["schema"]["pattern"] = _TENANT_ID.pattern
    if parameters:
        out["parameters"] = parameters
    if op.body is not None:
        out["requestBody"] = {"required": op.body_required, "content": _json(op.body)}
    ok: dict[str, Any] = {"description": op.ok_description, "content": copy.deepcopy(op.ok)}
    if op.ok_headers:
        ok["headers"] = {name: {"description": text, "schema": {"type": "string"}} for name, text in op.ok_headers.items()}
    responses: dict[str, Any] = {op.ok_status: ok}
    for code in op.errors:
        responses[code] = {"$ref": f"#/components/responses/{_error_name(code)}"}
    out["responses"] = responses
    if op.security is not None:
        out["security"] = copy.deepcopy(op.security)
    return out


def build(app: FastAPI) -> dict[str, Any]:
    """The whole document for ``app``'s routes; ``ValueError`` when a route and ``OPERATIONS`` disagree."""
    generated = get_openapi(title=app.title, version=app.version, description=DESCRIPTION, routes=app.routes)
    paths: dict[str, dict[str, Any]] = {}
    seen: set[tuple[str, str]] = set()
    for path, item in generated.get("paths", {}).items():
        for method, operation in item.items():
            key = (method, path)
            if key not in OPERATIONS:
                raise ValueError(f"{method.upper()} {path} has no entry in router.openapi.OPERATIONS: document it")
            seen.add(key)
            paths.setdefault(path, {})[method] = _operation(operation, OPERATIONS[key])
    missing = sorted(set(OPERATIONS) - seen)
    if missing:
        raise ValueError(f"router.openapi.OPERATIONS documents routes the app does not have: {missing}")
    return {
        "openapi": generated["openapi"],
        "info": generated["info"],
        "tags": [
            {"name": "OpenAI", "description": "The OpenAI-compatible API"},
            {"name": "Tenants", "description": "A tenant's view of itself"},
            {"name": "Admin", "description": "Tenants and their keys (Authorization: Bearer <tenancy.admin_key>)"},
            {"name": "Operations", "description": "Health and metrics"},
        ],
        "paths": paths,
        "components": _components(),
    }


def render(document: Mapping[str, Any]) -> bytes:
    """The document as committed in ``docs/openapi.json``: indented, keys in a stable order, a final newline."""
    return orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n"


def reference_app() -> FastAPI:
    """A router app with one placeholder stage: the document does not depend on the configuration."""
    from common.settings import Settings
    from router.api import create_app  # (here: router.api installs this module's document)

    settings = Settings.model_validate(
        {"stages": [{"name": "stage-0", "model": "model-0", "url": "http://127.0.0.1:9/v1", "prices": {"cost": {"request": 1.0}}}]}
    )
    return create_app(settings)


def main(argv: list[str] | None = None) -> int:
    """``python -m router.openapi``: write ``docs/openapi.json``; ``--check``: exit 1 if it is stale."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--check", action="store_true", help="do not write: exit 1 when docs/openapi.json differs")
    args = parser.parse_args(argv)
    document = render(build(reference_app()))
    if args.check:
        current = RENDERED.read_bytes() if RENDERED.exists() else b""
        if current != document:
            print(f"{RENDERED} is stale: run `python -m router.openapi`", file=sys.stderr)
            return 1
        return 0
    RENDERED.write_bytes(document)
    print(f"wrote {RENDERED} ({len(document)} bytes)")
    return 0


def install(app: FastAPI) -> None:
    """Serve ``build(app)`` at FastAPI's ``/openapi.json`` (built on first request, then cached)."""
    cache: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        if not cache:
            cache.update(build(app))
        return cache

    setattr(app, "openapi", openapi)  # noqa: B010 (FastAPI's documented way: replace app.openapi)


if __name__ == "__main__":
    sys.exit(main())
