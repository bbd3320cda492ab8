"""The router's OpenAPI 3.1 document: FastAPI's own, from what the route decorators say.

The public routes read their bodies by hand (``orjson`` bytes into ``Model.model_validate_json``; ``router.api``)
because FastAPI's body parsing costs CPU on the hot path, so FastAPI cannot see their bodies. Their decorators say
them instead, the way FastAPI provides (as vLLM does): ``responses=`` (``answers`` here: the answer's model, which
FastAPI turns into a component schema, its stream as ``text/event-stream``, the OpenAI error body on every error
status) and ``openapi_extra=`` (``extra``: the request body, a ``$ref`` to the very model the route validates with,
the ``x-cascade-*`` headers, the security). ``build`` takes FastAPI's document and adds what FastAPI cannot know:
the schemas of the models only referenced (request bodies, stream events), the tenant id pattern the admin API holds
ids to, the security schemes; it drops FastAPI's ``422`` (a bad parameter is an OpenAI-shaped 400 instead), and it
refuses a route whose decorator documents nothing, so a new route cannot go out undocumented.

The document does not depend on the configuration, so ``docs/openapi.json`` is the document of any router of this
version (``python -m router.openapi`` rewrites it; a test fails when it is stale).
"""

from __future__ import annotations

import argparse
import http
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import orjson
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from common.response_models import ChatCompletionChunk, CompletionChunk, ErrorResponse, ResponseStreamEvent
from router.tenants.model import _TENANT_ID, TenantSettings

REF = "#/components/schemas/{model}"
RENDERED = Path(__file__).resolve().parent.parent / "docs" / "openapi.json"
DESCRIPTION = (
    'An OpenAI-compatible router over a ladder of models of rising cost: `model: "cascade"` answers from the '
    "cheapest stage whose answer is judged good enough, a stage's own name is a pass-through to it. Request bodies "
    "are validated strictly: an unknown top-level field, a wrong type or a value out of range is a 400 in OpenAI's "
    "error shape, naming the field in `error.param`. See docs/openai-compatibility.md."
)
TAGS = [
    {"name": "OpenAI", "description": "The OpenAI-compatible API"},
    {"name": "Tenants", "description": "A tenant's view of itself"},
    {"name": "Admin", "description": "Tenants and their keys (Authorization: Bearer <tenancy.admin_key>)"},
    {"name": "Operations", "description": "Health and metrics"},
]


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


# -- what the decorators say --------------------------------------------------------------------------------
_REFERENCED: dict[str, type[BaseModel]] = {}  # every model `ref` names: `build` adds the schemas FastAPI did not collect


def ref(model: type[BaseModel]) -> dict[str, str]:
    """A ``$ref`` to ``model``'s component schema, for a body FastAPI does not see (a request body, a stream event)."""
    if _REFERENCED.setdefault(model.__name__, model) is not model:
        raise ValueError(f"two models are named {model.__name__}")
    return {"$ref": REF.format(model=model.__name__)}


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


CHAT_STREAM = _sse(
    "With `stream: true`: one `data: <ChatCompletionChunk>` event per delta, an error body as the last event if a stage "
    "failed after the stream started, then `data: [DONE]`.",
    {"anyOf": [ref(ChatCompletionChunk), ref(ErrorResponse)]},
    named=False,
    done=True,
)
COMPLETION_STREAM = _sse(
    "With `stream: true`: `data: <CompletionChunk>` events, an error body as the last event if a stage failed after the "
    "stream started, then `data: [DONE]`.",
    {"anyOf": [ref(CompletionChunk), ref(ErrorResponse)]},
    named=False,
    done=True,
)
RESPONSES_STREAM = _sse(
    "With `stream: true`: OpenAI's Responses events, each as `event: <type>` and `data: <event>` with a "
    "`sequence_number` from 0, ending with `response.completed`, `response.incomplete` or `response.failed` (no `[DONE]`).",
    ref(ResponseStreamEvent),
    named=True,
    done=False,
)
OWN_TENANT = {"application/json": {"schema": {"anyOf": [ref(TenantView), ref(DefaultTenantView)]}}}
METRICS = {"text/plain": {"schema": {"type": "string", "description": "the Prometheus text exposition format"}}}

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
POST_ERRORS = ("400", "401", "403", "404", "429", "500", "502", "503", "504", "4XX")
ADMIN_ERRORS = ("401", "403", "500", "503")
CASCADE_HEADERS = {
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
KNOBS = [
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
PUBLIC: list[dict[str, list[str]]] = [{"apiKey": []}, {}]  # a router with tenancy.auth: open takes no key
ADMIN: list[dict[str, list[str]]] = [{"adminKey": []}]
SECURITY_SCHEMES = {
    "apiKey": {"type": "http", "scheme": "bearer", "description": "a tenant's API key (tenancy.auth: keys)"},
    "adminKey": {"type": "http", "scheme": "bearer", "description": "tenancy.admin_key"},
}


def answers(
    model: Any, *errors: str, content: dict[str, Any] | None = None, status: int = 200, headers: Mapping[str, str] | None = None
) -> dict[int | str, dict[str, Any]]:
    """A route's ``responses=``: ``status`` with ``model`` as JSON (FastAPI collects its schema) and ``content``'s
    other media types, and the OpenAI error body for each of ``errors`` (``ERRORS``)."""
    ok: dict[str, Any] = {"description": http.HTTPStatus(status).phrase, "content": content or {}}
    if model is not None:
        ok["model"] = model
    if headers:
        ok["headers"] = {name: {"description": text, "schema": {"type": "string"}} for name, text in headers.items()}
    out: dict[int | str, dict[str, Any]] = {status: ok}
    for code in errors:
        out[code] = {"description": ERRORS[code], "model": ErrorResponse}
        if code == "429":
            out[code]["headers"] = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "string"}}}
    return out


def extra(
    body: type[BaseModel] | None = None, *, required: bool = True, security: list[Any] | None = None, parameters: list[Any] | None = None
) -> dict[str, Any]:
    """A route's ``openapi_extra=``: the request body it reads by hand (``body``'s schema), its header parameters, its security."""
    out: dict[str, Any] = {}
    if body is not None:
        out["requestBody"] = {"required": required, "content": {"application/json": {"schema": ref(body)}}}
    if parameters:
        out["parameters"] = parameters
    if security is not None:
        out["security"] = security
    return out


# -- the document -----------------------------------------------------------------------------------------
def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"].rsplit("/", 1)[1]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def build(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document for ``app``, completed; ``ValueError`` for a route its decorator does not document."""
    doc = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
        tags=app.openapi_tags,
        separate_input_output_schemas=app.separate_input_output_schemas,
    )
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if "500" not in op["responses"] or (method in ("post", "put", "patch") and "requestBody" not in op):
                raise ValueError(f"{method.upper()} {path} is undocumented: give its decorator responses= and openapi_extra=")
            op["responses"].pop("422", None)  # FastAPI's: the router answers a bad parameter with an OpenAI-shaped 400
            for parameter in op.get("parameters", ()):
                if parameter["name"] == "tenant_id":  # the route holds it to check_tenant_id's pattern (400 otherwise)
                    parameter["schema"]["pattern"] = _TENANT_ID.pattern
    # the models FastAPI never saw, described as pydantic validates with them (FastAPI's own drop `"default": null`)
    named = sorted({name for name in _refs(doc["paths"]) if name in _REFERENCED})
    _, top = models_json_schema([(_REFERENCED[name], "validation") for name in named], ref_template=REF)
    schemas = {**doc["components"]["schemas"], **top.get("$defs", {})}
    for name in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422 body, dropped above
        schemas.pop(name, None)
    if "CreateTenant" in schemas:
        schemas["CreateTenant"]["properties"]["id"]["pattern"] = _TENANT_ID.pattern  # what the route holds it to
    doc["components"] = {"schemas": dict(sorted(schemas.items())), "securitySchemes": SECURITY_SCHEMES}
    dangling = sorted(set(_refs(doc)) - set(schemas))
    if dangling:
        raise ValueError(f"the document refers to schemas it does not have: {dangling}")
    return doc


def render(document: Mapping[str, Any]) -> bytes:
    """The document as committed in ``docs/openapi.json``: indented, keys in a stable order, a final newline."""
    return orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n"


def reference_app() -> FastAPI:
    """A router app with one placeholder stage: the document does not depend on the configuration."""
    from common.settings import Settings
    from router.api import create_app  # (here: router.api imports this module)

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
    """Serve ``build(app)`` at FastAPI's ``/openapi.json``: built on first request, then cached where FastAPI caches its own."""

    def openapi() -> dict[str, Any]:
        app.openapi_schema = app.openapi_schema or build(app)
        return app.openapi_schema

    setattr(app, "openapi", openapi)  # noqa: B010 (FastAPI's documented way: replace app.openapi)


if __name__ == "__main__":  # run as router.openapi, not as __main__, the module the routes' `ref` calls fill
    from router.openapi import main as _main

    sys.exit(_main())
