"""The FastAPI app: thin routes over the serving classes.

Request flow: route -> ``parse_chat_request`` (validate) -> ``ChatServing``
(pass-through or cascade) -> response; ``/v1/completions`` and ``/v1/responses``
the same way through their own serving classes (``router.openai``: one package
per API, on one serving base). Every error leaves as an OpenAI-shaped body;
nothing escapes as a bare 500.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from types import MappingProxyType
from typing import Any, Protocol, TypeVar

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Content, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from common.completions_protocol import CompletionRequest, parse_completion_request
from common.errors import APIError, parse_chat_request
from common.protocol import ChatCompletionRequest
from common.response_models import ChatCompletion, Completion, Health, ModelCard, ModelList, ResponseObject
from common.responses_protocol import ResponsesRequest, parse_responses_request
from common.settings import Settings
from predictor.serving.calibration import LambdaTable
from predictor.serving.interface import Predictor
from predictor.serving.loader import load_model, model_dir
from router.cascade import CascadeEngine
from router.closing import Link, aclose
from router.contracts import RequestOutcome, TenantLimits
from router.metrics import DEFAULT_LAMBDA, ENDPOINTS, RATE_LIMITED, REGISTRY, REQUESTS
from router.model_reload import ModelReloader
from router.openai.chat.serving import ChatServing
from router.openai.completions.serving import CompletionServing
from router.openai.responses.serving import ResponsesServing
from router.openapi import (
    CASCADE_HEADERS,
    CHAT_STREAM,
    COMPLETION_STREAM,
    DESCRIPTION,
    KNOBS,
    METRICS,
    POST_ERRORS,
    PUBLIC,
    RESPONSES_STREAM,
    TAGS,
    answers,
    extra,
)
from router.openapi import install as install_openapi
from router.stage import Stage
from router.stage_pool import StagePool, build_ladder
from router.targets import TargetLambdas
from router.tenants.admin import admin_router
from router.tenants.model import Tenant
from router.tenants.service import TenantService

log = logging.getLogger("adaptive_sd.router")
MAX_BODY_BYTES = 64 * 2**20  # a request body above this is refused (413) before it is parsed
DEFAULT_STREAM_TOKEN_ESTIMATE = 256  # a stream whose usage is unknown at its end: its tokens are charged as max_tokens, or this


def _json(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


class _Named(Protocol):
    @property
    def model(self) -> str: ...


_R = TypeVar("_R", bound=_Named)
_Create = Callable[[_R, Mapping[str, str], TenantLimits], Awaitable[tuple[Response, RequestOutcome]]]


Endpoint = Callable[[Request], Awaitable[Response]]


class RouterApp(FastAPI):
    """The router's FastAPI app, with its public POST endpoints (``hot``) dispatched straight from the server.

    Why: a pass-through request spends most of the router's CPU in plumbing, not in its own work. Measured with a
    sampling profiler against an instant stub stage, FastAPI's and Starlette's layers (seven middlewares, the route
    table, the endpoint wrappers) took about a fifth of the router's CPU per request. A request whose method and path
    name one of the ``hot`` endpoints is served by it directly (``Request`` over the same scope and receive), with the
    same answer to an error as the app's exception handlers give (``APIError``'s own response; anything else a 500
    in OpenAI's shape, logged). Everything else (other paths and methods, the lifespan) goes through FastAPI as
    usual, where the same endpoints are registered too: they document the routes (``/openapi.json``) and serve a
    request that reaches them another way (a ``root_path``, a mounted app).
    """

    hot: Mapping[str, Endpoint] = MappingProxyType({})  # path -> endpoint (``public_post``)

    def public_post(self, path: str, summary: str, description: str, operation_id: str, request: type[BaseModel],
                    answer: type[BaseModel], stream: dict[str, Any]) -> Callable[[Endpoint], Endpoint]:  # fmt: skip
        """Register a public OpenAI endpoint: served directly (``hot``) and documented by FastAPI (``request``: the
        body it validates by hand; ``answer``: its whole answer; ``stream``: its events)."""

        def register(endpoint: Endpoint) -> Endpoint:
            self.post(
                path, tags=["OpenAI"], summary=summary, description=description, operation_id=operation_id,
                responses=answers(answer, *POST_ERRORS, content=stream, headers=CASCADE_HEADERS),
                openapi_extra=extra(request, parameters=KNOBS, security=PUBLIC),
            )(endpoint)  # fmt: skip
            self.hot = MappingProxyType({**self.hot, path: endpoint})
            return endpoint

        return register

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self.hot.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if endpoint is None:
            await super().__call__(scope, receive, send)
            return
        try:
            response = await endpoint(_ReadRequest(scope, receive, await read_body(receive)))
        except ClientDisconnect:
            return  # the client left before its request was whole: nobody to answer
        except APIError as exc:
            response = exc.response()
        except Exception as exc:
            response = _unexpected(exc)
        await response(scope, receive, send)


async def read_body(receive: Receive) -> bytes:
    """A request's whole body from the server's messages (``MAX_BODY_BYTES`` at most): what ``Request.body`` does,
    without its stream machinery, which took a tenth of the router's CPU on a pass-through."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise APIError(413, f"request body over {MAX_BODY_BYTES} bytes", code="request_too_large")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class _ReadRequest(Request):
    """A request whose body was read already (``RouterApp``): ``body()`` returns it."""

    def __init__(self, scope: Scope, receive: Receive, body: bytes) -> None:
        super().__init__(scope, receive)
        self._read = body

    async def body(self) -> bytes:
        return self._read


def _unexpected(exc: Exception) -> Response:
    """An error nothing answered for: logged, and a 500 in OpenAI's shape that names only its type."""
    log.exception("unhandled error", exc_info=exc)
    return APIError(500, f"internal error: {type(exc).__name__}", type="server_error").response()


def _stage_state(name: str, answered: bool, stage_process: Callable[[str], str | None] | None) -> str:
    """A stage's word in ``/health?stages=true``: ``ok``, ``unreachable``, or ``dead (...)`` when its process is known to have ended."""
    died = stage_process(name) if stage_process is not None else None
    if died is not None:
        return died
    return "ok" if answered else "unreachable"


def create_app(
    settings: Settings,
    predictor: Predictor | None = None,
    stages: Sequence[Stage] | None = None,
    stage_process: Callable[[str], str | None] | None = None,
) -> FastAPI:
    """The router app. ``predictor``: default from ``settings.predictor``; ``stages``: one per configured
    stage, in order (default: a ``StagePool`` each, over the stage's endpoints; tests pass in-process fakes).
    ``stage_process``: where this process launched the stages too (``adaptive-sd up``), what it knows of a
    stage's process by name (``dead (killed by SIGSEGV)``, None while it runs), for ``/health?stages=true``.
    The lifespan starts and closes the stages and the tenant service."""
    if predictor is None:
        predictor, table, loaded = load_model(settings)
    else:  # a predictor handed in: the configured directory's λ table only (the model is not loaded again)
        loaded = model_dir(settings)
        table = LambdaTable.load(loaded) if loaded is not None else None
    targets = TargetLambdas(table, settings.cascade.cost_unit)
    ladder: list[Stage] = list(build_ladder(settings)) if stages is None else list(stages)
    pools = [s for s in ladder if isinstance(s, StagePool)]
    ENDPOINTS.track(pools)  # /metrics: each endpoint's state
    names, configured = [s.name for s in ladder], [s.name for s in settings.stages]
    if names != configured:
        raise ValueError(f"stages {names} do not match the configured stages {configured}")
    engine = CascadeEngine(settings, ladder, predictor)
    chat_serving = ChatServing(settings, ladder, engine)
    tenants = TenantService(settings.tenancy, settings.cascade.default_lambda, default_target=settings.cascade.default_target)
    if settings.cascade.default_target is not None:
        engine.target_resolved = lambda: default_lambda()[1] == "target"
    tenants.target_lambda = targets.lam
    reloader = ModelReloader(settings, engine, targets, loaded)
    admin_key = settings.tenancy.admin_key.get_secret_value() if settings.tenancy.admin_key else None

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        for s in ladder:
            await s.start()
        await tenants.start()
        reloader.start()
        try:
            yield
        finally:
            await reloader.close()
            await engine.shadow.close()
            await tenants.close()
            for s in ladder:
                await s.close()

    app = RouterApp(title="adaptive-sd router", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description=DESCRIPTION, openapi_tags=TAGS, separate_input_output_schemas=False)  # fmt: skip
    app.include_router(admin_router(tenants, admin_key, names))

    def default_lambda() -> tuple[float, str]:
        """The default λ in force (``TenantService.lam_default``) and where it comes from: ``target`` or ``default_lambda``."""
        return targets.in_force(settings.cascade.default_target, tenants.default_lambda)

    def limits(tenant: Tenant) -> TenantLimits:
        s = tenant.settings
        return TenantLimits(tenants.lam_for(tenant), s.slo is not None, s.max_stage, s.allowed_models, s.learn)

    def account(tenant: Tenant, outcome: RequestOutcome, response: Response, t0: float, stream_tokens: int) -> Response:
        """Record usage after the response; a stream's when its last byte is sent, as it came to
        (``RequestOutcome.settle``), or, where its stage's tokens are not known then, with ``stream_tokens`` for them."""
        if not isinstance(response, StreamingResponse):
            tenants.record(tenant, outcome.tokens, (time.perf_counter() - t0) * 1e3, outcome.cost, outcome.stage)
            return response
        body = response.body_iterator

        def settle() -> None:
            try:
                done = outcome.settle() if outcome.settle is not None else outcome
            except Exception:  # the response has gone out: its accounting falls back to the estimate
                log.exception("settling a stream's usage failed")
                done = None
            tokens, cost = (done.tokens, done.cost) if done is not None else (outcome.tokens + stream_tokens, outcome.cost)
            tenants.record(tenant, tokens, (time.perf_counter() - t0) * 1e3, cost, outcome.stage)

        async def counted() -> AsyncIterator[Content]:
            try:
                async for chunk in body:
                    yield chunk
            finally:
                try:  # the stage's stream and its tap end first (router.closing: not at GC), then it is settled
                    await aclose(body)
                except Exception:  # its own failure, logged; the accounting below still runs
                    log.exception("closing a stream's body failed")
                finally:  # also when the close was cancelled (SSEResponse bounds it)
                    settle()

        # closed before its first byte (the client gone while the cascade decided): settled all the same
        response.body_iterator = Link(counted(), body, unstarted=settle)
        return response

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> Response:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _bad_parameter(_: Request, exc: RequestValidationError) -> Response:
        """A parameter FastAPI reads from the signature (``/health?stages=maybe``): a 400 naming it, not FastAPI's 422."""
        err = exc.errors()[0]
        loc = [str(p) for p in err.get("loc", ())]
        param = ".".join(loc[1:]) or None
        where = f"{loc[0]} parameter " if loc and loc[0] in ("query", "path", "header") else ""
        return APIError(400, f"Invalid value for {where}'{param}': {err.get('msg', 'invalid')}", param=param).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return APIError(exc.status_code, message, code=str(exc.status_code)).response()

    @app.exception_handler(Exception)
    async def _unexpected_error(_: Request, exc: Exception) -> Response:
        return _unexpected(exc)

    async def serve(request: Request, parse: Callable[[bytes], _R], create: _Create[_R], stream_tokens: Callable[[_R], int]) -> Response:
        """One public endpoint: authenticate, validate, serve, count, account -- the same for every API."""
        t0 = time.perf_counter()
        model = "-"
        try:
            tenant = await tenants.authenticate(request.headers.get("authorization"))
            req = parse(await request.body())
            model = req.model
            response, outcome = await create(req, request.headers, limits(tenant))
        except APIError as exc:
            if exc.status == 429:
                RATE_LIMITED.labels(exc.param or "-").inc()
            REQUESTS.labels(model if exc.status != 404 else "-", str(exc.status)).inc()
            raise
        REQUESTS.labels(model, str(response.status_code)).inc()
        return account(tenant, outcome, response, t0, stream_tokens(req))

    @app.public_post(
        "/v1/chat/completions",
        summary="Chat completion, from the cascade or a named stage",
        description="OpenAI's chat completions. `model` is the cascade model (`cascade` by default) or a stage's name "
        "(GET /v1/models); `cascade_lambda` and `cascade_max_stage` (or the `x-cascade-*` headers) steer the cascade.",
        operation_id="createChatCompletion",
        request=ChatCompletionRequest,
        answer=ChatCompletion,
        stream=CHAT_STREAM,
    )
    async def chat_completions(request: Request) -> Response:
        return await serve(request, parse_chat_request, chat_serving.create, lambda r: r.token_limit or DEFAULT_STREAM_TOKEN_ESTIMATE)

    completion_serving = CompletionServing(settings, ladder, engine)

    @app.public_post(
        "/v1/completions",
        summary="Legacy text completion, from the cascade or a named stage",
        description="The legacy completions API (vLLM-compatible): one text prompt, no chat template.",
        operation_id="createCompletion",
        request=CompletionRequest,
        answer=Completion,
        stream=COMPLETION_STREAM,
    )
    async def completions(request: Request) -> Response:
        """The legacy completions API over the same pass-through and cascade (``router.openai.completions``)."""
        return await serve(request, parse_completion_request, completion_serving.create, lambda r: r.token_limit)

    responses_serving = ResponsesServing(settings, ladder, engine)

    @app.public_post(
        "/v1/responses",
        summary="Responses API (stateless), from the cascade or a named stage",
        description="OpenAI's Responses API, stateless: nothing is stored, so send the whole conversation in `input`. "
        "See docs/responses.md.",
        operation_id="createResponse",
        request=ResponsesRequest,
        answer=ResponseObject,
        stream=RESPONSES_STREAM,
    )
    async def responses(request: Request) -> Response:
        """The Responses API, stateless: translated to a chat request and served, limited and accounted as one."""
        return await serve(
            request, parse_responses_request, responses_serving.create, lambda r: r.max_output_tokens or DEFAULT_STREAM_TOKEN_ESTIMATE
        )

    # Model cards: the cascade and each stage; "capabilities" says which stages take tools / JSON formats / /v1/completions
    # / vLLM's sampling extras (the cascade's: what some stage of it takes).
    cards = [{"id": settings.cascade.model_name, "object": "model", "created": 0, "owned_by": "adaptive-sd",
              "capabilities": {"tools": any(s.tools for s in settings.stages),
                               "structured_outputs": any(s.structured_outputs for s in settings.stages),
                               "completions": any(s.completions for s in settings.stages),
                               "vllm_extras": any(s.vllm_extras for s in settings.stages)}}]  # fmt: skip
    cards += [
        {"id": s.name, "object": "model", "created": 0, "owned_by": "adaptive-sd", "stage": i,
         "capabilities": {"tools": s.tools, "structured_outputs": s.structured_outputs, "completions": s.completions,
                          "vllm_extras": s.vllm_extras}}
        for i, s in enumerate(settings.stages)
    ]  # fmt: skip

    @app.get("/v1/models", tags=["OpenAI"], summary="The cascade model and every stage, with their capabilities",
             operation_id="listModels", responses=answers(ModelList, "500"))  # fmt: skip
    async def models() -> Response:
        return _json({"object": "list", "data": cards})

    @app.get("/v1/models/{model_id:path}", tags=["OpenAI"], summary="One model card", operation_id="retrieveModel",
             responses=answers(ModelCard, "404", "500"))  # fmt: skip
    async def model(model_id: str) -> Response:
        """One model card (OpenAI's retrieve); an unknown id is OpenAI's 404 ``model_not_found``."""
        for card in cards:
            if card["id"] == model_id:
                return _json(card)
        raise APIError(404, f"The model '{model_id}' does not exist", param="model", code="model_not_found")

    @app.get(
        "/health",
        tags=["Operations"],
        summary="Liveness, and each stage endpoint's state as the router sees it",
        description="No network call unless `stages=true`: then every endpoint is probed first, and a stage none of whose "
        "endpoints answers makes the status `degraded`. Each stage reads `ok`, `unreachable`, or, where the router launched "
        "the stages itself (`adaptive-sd up`), `dead (killed by SIGSEGV)` / `dead (exited with code 1)` once its process has ended.",
        operation_id="health",
        responses=answers(Health, "400", "500"),
    )
    async def health(stages: bool = False) -> Response:
        """Liveness, and each stage endpoint's state as the router sees it (no network call); with ``?stages=true``
        every endpoint is probed first (``pool.probe_timeout_s`` each) and a stage none of whose endpoints answers
        makes the status ``degraded``."""
        lam, source = default_lambda()
        target = settings.cascade.default_target
        body: dict[str, object] = {
            "status": "ok",
            "predictor": engine.predictor.name,  # the model in service now (router.model_reload)
            "model_version": reloader.version,
            "predictor_trained": not engine.untrained,
            "tenancy": tenants.health(),
            "shadow": engine.shadow.health(),
            "explore": {"rate": engine.explore_rate, "untrained_rate": engine.explore_rates[1]},
            "default_lambda": {"value": lam, "source": source, "target": targets.describe(target) if target else None},
        }
        if tenants.degraded:
            body["status"] = "degraded"
        if stages:
            states = await asyncio.gather(*(s.healthy() for s in ladder))
            body["stages"] = {s.name: _stage_state(s.name, ok, stage_process) for s, ok in zip(ladder, states, strict=False)}
            if not all(states):
                body["status"] = "degraded"
        if pools:
            body["endpoints"] = {p.name: p.state() for p in pools}
        return _json(body)

    @app.get("/metrics", tags=["Operations"], summary="Prometheus metrics", operation_id="metrics", response_class=Response,
             responses=answers(None, "500", content=METRICS))  # fmt: skip
    async def metrics() -> Response:
        lam, source = default_lambda()  # the model in service may have changed since the last scrape (router.model_reload)
        DEFAULT_LAMBDA.clear()
        DEFAULT_LAMBDA.labels(source).set(lam)
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    install_openapi(app)  # /openapi.json: FastAPI's, from the decorators above, completed (router.openapi)
    return app
