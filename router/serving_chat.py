"""``POST /v1/chat/completions``: pass-through to a named stage, or the cascade.

The route stays thin; this class validates the cascade knobs (λ, max stage),
runs the engine, and shapes the OpenAI response: the answering stage's body
with ``model`` set to what the client asked for, ``usage`` summed over every
stage called, client-requested logprobs only, and the ``x-cascade-*`` headers
that say what happened. ``create`` returns the response with the request's
``RequestOutcome`` (``router.contracts``) for the route's accounting. A stage
failure that leaves no answer reaches the client through ``upstream_error``
alone: as the error response, or as the last event of a stream already started.

Tools and JSON formats (``router.validity``): a pass-through to a stage without
the capability is a 400 naming the field; the cascade's headers say what kind of
request it was, which stages it left out and which answers broke the rules:

    x-cascade-kind     tools | json_object | json_schema | text
    x-cascade-skipped  per stage left out: <stage>:<capability>   (e.g. smollm2-135m:tools)
    x-cascade-invalid  per invalid answer: <stage>:<reason>       (e.g. smollm2-135m:arguments)

An invalid answer in ``x-cascade-invalid`` from the stage in ``x-cascade-stage``
is the top allowed stage's, returned as it is. A streamed final stage is relayed
as it generates, so its answer is not judged.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, Protocol

import orjson
from starlette.responses import Response, StreamingResponse

from common.errors import APIError
from common.protocol import ChatCompletionRequest
from common.settings import Settings
from predictor.serving.features import PromptStats
from router.cascade import CascadeEngine
from router.contracts import CascadeRequest, CascadeResult, RequestOutcome, TenantLimits, TokenUsage
from router.metrics import CASCADE_STOPS, INVALID_ANSWERS, OVERHEAD_SECONDS, REQUESTS_BY_KIND, STAGE_CALLS, STAGE_SECONDS
from router.sse import DONE, event_data
from router.stage import Stage, StageFailure
from router.validity import AnswerSpec

LAMBDA_HEADER = "x-cascade-lambda"
MAX_STAGE_HEADER = "x-cascade-max-stage"
_CASCADE_FIELDS = {"cascade_lambda", "cascade_max_stage"}
_JSON = "application/json"
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _says_nothing(choice: dict[str, Any]) -> bool:
    """A streamed choice with no delta, no finish reason and no logprobs for the client: not worth a chunk."""
    return not choice.get("delta") and choice.get("finish_reason") is None and choice.get("logprobs") is None


def _sse(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


class CascadeKnobs(Protocol):
    """What ``_knobs`` reads of a request: its cascade extras (a chat or a completions request)."""

    @property
    def cascade_lambda(self) -> float | None: ...

    @property
    def cascade_max_stage(self) -> int | str | None: ...


class Addressed(CascadeKnobs, Protocol):
    """What ``target`` reads of a request: the model it names, and its cascade extras."""

    @property
    def model(self) -> str: ...


def upstream_error(exc: StageFailure) -> APIError:
    """The one mapping of a stage failure to what the client gets: an OpenAI-shaped ``upstream_error``
    with the failure's status (503 unreachable, 504 timeout, 502 bad answer)."""
    return APIError(exc.status, str(exc), type="upstream_error")


def _error_event(exc: StageFailure) -> bytes:
    """A stage failure after a stream has started: the same error body, as the stream's last event."""
    return _sse(orjson.dumps(upstream_error(exc).body()))


class ChatServing:
    def __init__(self, settings: Settings, stages: Sequence[Stage], engine: CascadeEngine) -> None:
        self.settings = settings
        self.stages = {s.name: s for s in stages}
        self.engine = engine
        self.cascade_name = settings.cascade.model_name

    # -- entry ----------------------------------------------------------------
    async def create(
        self, req: ChatCompletionRequest, headers: Mapping[str, str], limits: TenantLimits | None = None
    ) -> tuple[Response, RequestOutcome]:
        """The response to a validated request, and what it comes to for accounting.

        Raises ``APIError`` for everything the client gets as an error; a stage failure
        that leaves no answer becomes one here (``upstream_error``).
        """
        t0 = time.perf_counter()
        limits = limits or TenantLimits(self.settings.cascade.default_lambda)
        stage = self.target(req, limits)
        try:
            if stage is None:
                return await self._cascade(req, headers, t0, limits)
            return await self._passthrough(req, stage, t0)
        except StageFailure as exc:
            raise upstream_error(exc) from None

    def target(self, req: Addressed, limits: TenantLimits) -> Stage | None:
        """The stage a request names (None: the cascade), once its tenant may use it; 403 / 404 / 400 otherwise.

        Shared by every endpoint: the cascade extras only apply to the cascade model.
        """
        if limits.allowed_models is not None and req.model not in limits.allowed_models:
            raise APIError(403, f"This API key may not use model '{req.model}'; allowed: {', '.join(limits.allowed_models)}",
                           type="permission_error", param="model", code="model_not_allowed")  # fmt: skip
        if req.model == self.cascade_name:
            return None
        stage = self.stages.get(req.model)
        if stage is None:
            known = ", ".join([self.cascade_name, *self.stages])
            raise APIError(404, f"The model '{req.model}' does not exist; available: {known}", param="model", code="model_not_found")
        for name in _CASCADE_FIELDS:
            if getattr(req, name) is not None:
                raise APIError(400, f"'{name}' only applies to model '{self.cascade_name}'", param=name)
        return stage

    # -- pass-through ---------------------------------------------------------
    def direct_outcome(self, stage: Stage, data: dict[str, Any]) -> RequestOutcome:
        """What a pass-through answer took: its tokens, and its cost at the stage's prices in the rule's unit."""
        usage = TokenUsage.of(data.get("usage"))
        price = stage.config.price(self.settings.cascade.cost_unit)
        return RequestOutcome(stage.name, usage.total_tokens, price.cost(usage.prompt_tokens, usage.completion_tokens))

    def _refuse_incapable(self, stage: Stage, spec: AnswerSpec) -> None:
        """A 400 naming the field when the stage lacks a capability the request needs (it would fail or ignore it)."""
        capability = spec.missing(stage.config)
        if capability is not None:
            param = spec.needs[capability]
            raise APIError(
                400,
                f"Model '{stage.name}' cannot answer requests with '{param}': its stage has {capability}: false; "
                f"use model '{self.cascade_name}' (it picks a stage that can) or a stage with {capability}",
                param=param,
                code="unsupported_parameter",
            )

    async def _passthrough(self, req: ChatCompletionRequest, stage: Stage, t0: float) -> tuple[Response, RequestOutcome]:
        body = req.upstream_body(exclude=_CASCADE_FIELDS | {"model"})
        spec = AnswerSpec.of(body)
        self._refuse_incapable(stage, spec)
        headers = {"x-cascade-stage": stage.name, "x-cascade-path": stage.name, "x-cascade-kind": spec.kind}
        try:
            if req.stream:
                events = await stage.stream(body, raw=True)
                overhead = time.perf_counter() - t0
                headers["x-cascade-overhead-ms"] = f"{overhead * 1e3:.3f}"
                response = StreamingResponse(
                    self._relay(events, stage), media_type="text/event-stream", headers={**_SSE_HEADERS, **headers}
                )
                REQUESTS_BY_KIND.labels(spec.kind, stage.name).inc()
                return response, RequestOutcome(stage.name, 0, stage.config.price(self.settings.cascade.cost_unit).request)
            data, seconds = await stage.chat(body)
        except StageFailure:
            STAGE_CALLS.labels(stage.name, "error").inc()
            raise
        STAGE_CALLS.labels(stage.name, "ok").inc()
        STAGE_SECONDS.labels(stage.name).observe(seconds)
        REQUESTS_BY_KIND.labels(spec.kind, stage.name).inc()
        invalid = spec.check(data["choices"][0])
        if invalid is not None:  # the client asked for this stage: its answer as it is, marked
            INVALID_ANSWERS.labels(stage.name, invalid).inc()
            headers["x-cascade-invalid"] = f"{stage.name}:{invalid}"
        outcome = self.direct_outcome(stage, data)
        data["model"] = stage.name
        overhead = time.perf_counter() - t0 - seconds
        OVERHEAD_SECONDS.observe(overhead)
        headers["x-cascade-overhead-ms"] = f"{overhead * 1e3:.3f}"
        return Response(orjson.dumps(data), media_type=_JSON, headers=headers), outcome

    async def _relay(self, blocks: AsyncIterator[bytes], client: Stage) -> AsyncIterator[bytes]:
        """Forward whole SSE blocks (``[DONE]`` included), renaming the model if it differs."""
        upstream = f'"model":"{client.config.model}"'.encode()
        public = f'"model":"{client.name}"'.encode()
        done = False
        try:
            async for block in blocks:
                done = done or (DONE in block and DONE in event_data(block))  # `data:[DONE]` too: a space is optional
                yield block.replace(upstream, public) if upstream != public else block
        except StageFailure as exc:
            yield _error_event(exc)
        if not done:
            yield b"data: [DONE]\n\n"

    # -- cascade --------------------------------------------------------------
    def _knobs(self, req: CascadeKnobs, headers: Mapping[str, str], limits: TenantLimits) -> tuple[float, int]:
        """λ and top stage: the request may set them, within what its tenant allows.

        An SLO tenant's λ belongs to its controller, so a request's λ is ignored
        (the λ used is in the ``x-cascade-lambda`` response header); a request's
        max stage can only lower the tenant's, and a tenant's that names no stage
        refuses the cascade (``_tenant_cap``).
        """
        lam, top = self._request_knobs(req, headers)
        if limits.lam_locked or lam is None:
            lam = limits.lam
        if limits.max_stage is not None:
            top = min(top, self._tenant_cap(limits.max_stage))
        return lam, top

    def _tenant_cap(self, max_stage: int | str) -> int:
        """The index of the tenant's top stage; a 403 naming ``max_stage`` when it names no stage of this ladder.

        A stored setting can outlive its stage (renamed or removed since the tenant was set; the admin API refuses
        such a value, but a record written before, or by a router with another ladder, keeps it). The cap is
        there to bound what the tenant spends, so it fails closed: serving the whole ladder would silently lift a
        cost ceiling, and serving the lowest stage would silently lower the quality the tenant chose. The
        error says what to fix; it is a 403 (what this key may use, like ``allowed_models``), not a 5xx, so
        clients do not retry what only an operator can repair. Stages called by name are not the cascade: a
        tenant's ``max_stage`` never applied to them.
        """
        try:
            return self.settings.stage_index(max_stage)
        except ValueError:
            ladder = ", ".join(s.name for s in self.settings.stages)
            raise APIError(
                403,
                f"This API key's tenant has max_stage {max_stage!r}, which is not a stage of the cascade (stages: {ladder}); "
                "the cascade is refused until an operator sets the tenant's max_stage to one of them or null",
                type="permission_error",
                param="max_stage",
                code="max_stage_not_in_ladder",
            ) from None

    def _request_knobs(self, req: CascadeKnobs, headers: Mapping[str, str]) -> tuple[float | None, int]:
        lam: float | None = None
        raw = headers.get(LAMBDA_HEADER)
        if raw is not None:
            try:
                lam = float(raw)
            except ValueError:
                raise APIError(400, f"Invalid {LAMBDA_HEADER} header: {raw!r} is not a number", param=LAMBDA_HEADER) from None
            if not math.isfinite(lam) or lam < 0:
                raise APIError(400, f"Invalid {LAMBDA_HEADER} header: must be a finite number >= 0", param=LAMBDA_HEADER)
        if req.cascade_lambda is not None:
            lam = req.cascade_lambda
        top = len(self.settings.stages) - 1
        ref: int | str | None = req.cascade_max_stage
        param = "cascade_max_stage"
        if ref is None and (raw := headers.get(MAX_STAGE_HEADER)) is not None:
            ref, param = (int(raw) if raw.isascii() and raw.isdigit() else raw), MAX_STAGE_HEADER  # "²" is a digit, not an int
        if ref is None:
            return lam, top
        try:
            return lam, self.settings.stage_index(ref)
        except ValueError as exc:
            raise APIError(400, f"Invalid {param}: {exc}", param=param) from None

    async def _cascade(
        self, req: ChatCompletionRequest, headers: Mapping[str, str], t0: float, limits: TenantLimits
    ) -> tuple[Response, RequestOutcome]:
        lam, max_stage = self._knobs(req, headers, limits)
        body = req.upstream_body(exclude=_CASCADE_FIELDS | {"model", "stream", "stream_options"})
        prompt = PromptStats.from_texts([m.text() for m in req.messages])
        spec = AnswerSpec.of(body)
        result = await self.engine.run(CascadeRequest(body, prompt, lam, max_stage, stream=req.stream, spec=spec))
        return self.respond(
            result,
            spec.kind,
            lam,
            t0,
            req.stream,
            lambda events: self._stream_final(req, result, events),
            lambda: self._shape(req, result),
            lambda data: self._stream_whole(req, data),
        )

    def respond(
        self,
        result: CascadeResult,
        kind: str,
        lam: float,
        t0: float,
        stream: bool,
        relay: Callable[[AsyncIterator[bytes]], AsyncIterator[bytes]],
        shape: Callable[[], dict[str, Any]],
        restream: Callable[[dict[str, Any]], AsyncIterator[bytes]],
    ) -> tuple[Response, RequestOutcome]:
        """What every cascade endpoint does with the engine's result: count it, say what happened in the headers, and
        send the top stage's relayed stream, the answer re-streamed, or the answer; the API-specific parts are passed in."""
        final = self.engine.stages[result.final_stage].name
        CASCADE_STOPS.labels(final).inc()
        REQUESTS_BY_KIND.labels(kind, final).inc()
        cost = sum(self.engine.pricing.actual(v.stage, v.usage.prompt_tokens, v.usage.completion_tokens) if v.usage else
                   self.engine.pricing.prices[v.stage].request for v in result.visits)  # fmt: skip
        outcome = RequestOutcome(final, result.usage().total_tokens, cost)
        out_headers = self._headers(result)
        out_headers["x-cascade-kind"] = kind
        out_headers["x-cascade-lambda"] = f"{lam:g}"
        if result.events is not None:
            overhead = time.perf_counter() - t0 - result.stage_seconds
            out_headers["x-cascade-overhead-ms"] = f"{overhead * 1e3:.3f}"
            OVERHEAD_SECONDS.observe(overhead)
            return StreamingResponse(relay(result.events), media_type="text/event-stream", headers={**_SSE_HEADERS, **out_headers}), outcome
        data = shape()
        overhead = time.perf_counter() - t0 - result.stage_seconds
        OVERHEAD_SECONDS.observe(overhead)
        out_headers["x-cascade-overhead-ms"] = f"{overhead * 1e3:.3f}"
        if stream:
            return StreamingResponse(restream(data), media_type="text/event-stream", headers={**_SSE_HEADERS, **out_headers}), outcome
        return Response(orjson.dumps(data), media_type=_JSON, headers=out_headers), outcome

    def _headers(self, result: CascadeResult) -> dict[str, str]:
        answered = [v for v in result.visits if v.error is None]
        headers = {
            "x-cascade-stage": self.engine.stages[result.final_stage].name,
            "x-cascade-path": ",".join(v.name if v.aborted_at is None else f"{v.name}(aborted@{v.aborted_at})" for v in answered),
            "x-cascade-p": ",".join("-" if v.p_hat is None else f"{v.p_hat:.4f}" for v in answered),
        }
        drafts = [v for v in answered if v.draft_mode]
        if drafts:
            headers["x-cascade-draft"] = ",".join(f"{v.name}:{v.draft_mode}" for v in drafts)
            headers["x-cascade-accepted"] = (
                ",".join(f"{v.name}:{v.draft.accepted_tokens}/{v.draft.draft_tokens}" for v in drafts if v.draft is not None) or "-"
            )
        if result.degraded:
            headers["x-cascade-degraded"] = result.degraded.replace("\n", " ")[:200]
        if result.skipped:
            headers["x-cascade-skipped"] = ",".join(f"{s.name}:{s.capability}" for s in result.skipped)
        invalid = result.invalid
        if invalid:
            headers["x-cascade-invalid"] = ",".join(f"{v.name}:{v.invalid}" for v in invalid)
        return headers

    def _shape(self, req: ChatCompletionRequest, result: CascadeResult) -> dict[str, Any]:
        data = result.response
        assert data is not None
        data["model"] = self.cascade_name
        data["usage"] = result.usage().to_dict()
        for choice in data["choices"]:
            choice["logprobs"] = self._client_logprobs(req, choice.get("logprobs"))
        return data

    @staticmethod
    def _client_logprobs(req: ChatCompletionRequest, logprobs: Any) -> Any:
        """Logprobs were asked of the stage for the predictor; give the client only what it asked for."""
        if not req.logprobs or not logprobs:
            return None
        k = req.top_logprobs or 0
        for entry in logprobs.get("content") or ():
            entry["top_logprobs"] = entry.get("top_logprobs", [])[:k]
        return logprobs

    def _rewrites_logprobs(self, req: ChatCompletionRequest) -> bool:
        """Whether the top stage's chunks must be rewritten to carry only the logprobs the client asked for.

        The stage was asked for ``max(top_logprobs, the predictor's top-k)`` alternatives per token
        (``CascadeAPI.asking``), so its chunks go out untouched only when that is what the client asked for:
        logprobs, and at least top-k alternatives. ``logprobs: true`` alone is OpenAI's "no alternatives"
        (each token's ``top_logprobs`` is ``[]``), not "whatever the stage sent".
        """
        return not req.logprobs or (req.top_logprobs or 0) < self.engine.top_k

    async def _stream_whole(self, req: ChatCompletionRequest, data: dict[str, Any]) -> AsyncIterator[bytes]:
        """An answer already complete (a lower stage stopped): role, content, tool calls, finish, usage.

        Tool calls go out as OpenAI streams them, one ``delta.tool_calls`` entry per call
        (``index``, ``id``, ``type``, ``function: {name, arguments}``) and finish ``tool_calls``,
        so clients that assemble calls from deltas get the same message as without streaming.
        """
        choice = data["choices"][0]
        message = choice["message"]
        calls = message.get("tool_calls") or []
        content = message.get("content")
        base = {"id": data.get("id", ""), "object": "chat.completion.chunk", "created": data.get("created", 0), "model": self.cascade_name}

        def chunk(delta: dict[str, Any], finish: str | None, logprobs: Any = None) -> bytes:
            return _sse(orjson.dumps({**base, "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]}))

        yield chunk({"role": "assistant", "content": None if calls and not content else ""}, None)
        if content or not calls:
            yield chunk({"content": content or ""}, None, choice.get("logprobs"))
        for i, call in enumerate(calls):
            fn = call.get("function") or {}
            delta = {"index": i, "id": call.get("id"), "type": call.get("type", "function"),
                     "function": {"name": fn.get("name"), "arguments": fn.get("arguments") or ""}}  # fmt: skip
            yield chunk({"tool_calls": [delta]}, None)
        finish = choice.get("finish_reason") or "stop"
        yield chunk({}, "tool_calls" if calls and finish != "length" else finish)
        if req.include_usage:
            yield _sse(orjson.dumps({**base, "choices": [], "usage": data["usage"]}))
        yield b"data: [DONE]\n\n"

    async def _stream_final(self, req: ChatCompletionRequest, result: CascadeResult, events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Relay the top stage's stream (``events``); fold earlier stages' tokens into its usage chunk."""
        before = result.usage()
        client = self.engine.stages[result.final_stage]
        upstream = f'"model":"{client.config.model}"'.encode()
        public = f'"model":"{self.cascade_name}"'.encode()
        rewrite = self._rewrites_logprobs(req)
        if result.prefix is not None and result.prefix.accepted_tokens:  # the verified draft prefix goes out at once
            lp = self._client_logprobs(req, {"content": [dict(e) for e in result.prefix.accepted_logprobs]})
            first = {"id": "chatcmpl-prefix", "object": "chat.completion.chunk", "created": 0, "model": self.cascade_name}
            first["choices"] = [
                {"index": 0, "delta": {"role": "assistant", "content": result.prefix.accepted_text}, "logprobs": lp, "finish_reason": None}
            ]
            yield _sse(orjson.dumps(first))
        try:
            async for payload in events:
                if b'"usage"' in payload:
                    chunk = orjson.loads(payload)
                    if chunk.get("usage") and not chunk.get("choices"):
                        if req.include_usage:
                            u = chunk["usage"]
                            chunk["usage"] = (before + TokenUsage.of(u)).to_dict()
                            chunk["model"] = self.cascade_name
                            yield _sse(orjson.dumps(chunk))
                        continue
                if rewrite:
                    chunk = orjson.loads(payload)
                    choices = chunk.get("choices") or ()
                    for choice in choices:
                        choice["logprobs"] = self._client_logprobs(req, choice.get("logprobs"))
                    if choices and all(_says_nothing(c) for c in choices):
                        continue  # it carried only the logprobs the router asked for (one per token a stage held back)
                    chunk["model"] = self.cascade_name
                    chunk.pop("usage", None)
                    yield _sse(orjson.dumps(chunk))
                else:
                    yield _sse(payload.replace(upstream, public, 1))
        except StageFailure as exc:
            yield _error_event(exc)
        yield b"data: [DONE]\n\n"
