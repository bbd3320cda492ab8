"""``POST /v1/completions``: the legacy completions API (what LlamaIndex's ``OpenAILike`` and editor autocomplete call),
as a pass-through to a named stage or through the cascade.

Served like chat (``router.serving_chat.ChatServing``, whose knobs, headers and
error mapping this reuses): the tenant's allowed models, λ and max stage, the
``x-cascade-*`` headers, usage summed over every stage called, OpenAI-shaped
errors. What differs is the dialect, and that is ``router.apis.COMPLETIONS_API``
for the engine: each stage is asked for its completion with ``logprobs: k`` (the
predictor's top-k), the answer is read into the same feature vector (prompt
features from the prompt text), and the same stopping rule decides. On
escalation the larger stage verifies the smaller one's text as the end of the
prompt (``router.draft.COMPLETIONS``, ``echo`` with logprobs).

* **Pass-through** (``model``: a stage name): forwarded to the stage's
  ``/v1/completions`` with the model renamed, streams relayed in blocks. A stage
  that does not serve completions (``completions: false``, or a 404/405 there:
  a plain chat-only provider) is a 400 naming ``model``.
* **Cascade**: stages with ``completions: false`` are skipped
  (``x-cascade-skipped: <stage>:completions``); one that answers 404/405 anyway
  counts as a failing stage. The answer carries logprobs only if the client
  asked (``logprobs: n``: each position's ``top_logprobs`` cut to the n most
  likely, plus the chosen token, as a stage gives them). ``echo`` is served by
  putting the prompt in front; the cascade refuses ``echo`` with ``logprobs``
  (the prompt's logprobs depend on which stage answers: ask a stage by name) and
  ``max_tokens: 0`` (nothing to judge).
* **Streaming**: lower stages are called whole (their answer is judged); an
  answer a lower stage stopped with is sent as ``text_completion`` chunks (text,
  then the finish reason, then usage if asked), the top stage's stream is relayed
  with earlier stages' tokens folded into its usage chunk, after a verified draft
  prefix sent at once.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson
from starlette.responses import Response, StreamingResponse

from common.completions_protocol import CASCADE_FIELDS, CompletionRequest, entries_logprobs, top_alternatives
from common.errors import APIError
from predictor.serving.features import PromptStats
from router.apis import COMPLETION_SPEC, COMPLETIONS_API
from router.contracts import CascadeRequest, CascadeResult, RequestOutcome, TenantLimits, TokenUsage
from router.metrics import OVERHEAD_SECONDS, REQUESTS_BY_KIND, STAGE_CALLS, STAGE_SECONDS
from router.serving_chat import ChatServing, upstream_error
from router.stage import Stage, StageFailure, StageNoCompletions, completions_stage

_JSON = "application/json"
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_CASCADE_FIELDS = frozenset(CASCADE_FIELDS)
_KIND = COMPLETION_SPEC.kind


def _sse(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


def _error_event(exc: StageFailure) -> bytes:
    return _sse(orjson.dumps(upstream_error(exc).body()))


class CompletionServing:
    """Serves validated ``CompletionRequest``s over ``ChatServing``'s stages, engine and knobs."""

    def __init__(self, chat: ChatServing) -> None:
        self.chat = chat
        self.settings = chat.settings
        self.engine = chat.engine
        self.stages = chat.stages
        self.cascade_name = chat.cascade_name

    # -- entry ----------------------------------------------------------------
    async def create(
        self, req: CompletionRequest, headers: Mapping[str, str], limits: TenantLimits | None = None
    ) -> tuple[Response, RequestOutcome]:
        """The response to a validated request, and what it comes to for accounting (as ``ChatServing.create``)."""
        t0 = time.perf_counter()
        limits = limits or TenantLimits(self.settings.cascade.default_lambda)
        stage = self.chat.target(req, limits)
        try:
            if stage is None:
                return await self._cascade(req, headers, t0, limits)
            return await self._passthrough(req, stage, t0)
        except StageFailure as exc:
            raise upstream_error(exc) from None

    # -- pass-through ---------------------------------------------------------
    def _no_completions(self, stage: Stage, why: str) -> APIError:
        return APIError(
            400,
            f"Model '{stage.name}' does not serve /v1/completions ({why}); use model '{self.cascade_name}' "
            "(it skips such stages) or a stage that serves completions, or /v1/chat/completions",
            param="model",
            code="completions_not_supported",
        )

    async def _passthrough(self, req: CompletionRequest, stage: Stage, t0: float) -> tuple[Response, RequestOutcome]:
        if not stage.config.completions:
            raise self._no_completions(stage, "its stage has completions: false")
        body = req.upstream_body(exclude=_CASCADE_FIELDS | {"model"})
        headers = {"x-cascade-stage": stage.name, "x-cascade-path": stage.name, "x-cascade-kind": _KIND}
        try:
            target = completions_stage(stage)
            if req.stream:
                blocks = await target.complete_stream(body, raw=True)
                headers["x-cascade-overhead-ms"] = f"{(time.perf_counter() - t0) * 1e3:.3f}"
                response = StreamingResponse(
                    self.chat._relay(blocks, stage), media_type="text/event-stream", headers={**_SSE_HEADERS, **headers}
                )
                REQUESTS_BY_KIND.labels(_KIND, stage.name).inc()
                return response, RequestOutcome(stage.name, 0, stage.config.price(self.settings.cascade.cost_unit).request)
            reply = await target.complete(body)
        except StageNoCompletions as exc:
            STAGE_CALLS.labels(stage.name, "error").inc()
            raise self._no_completions(stage, str(exc)) from None
        except StageFailure:
            STAGE_CALLS.labels(stage.name, "error").inc()
            raise
        STAGE_CALLS.labels(stage.name, "ok").inc()
        STAGE_SECONDS.labels(stage.name).observe(reply.seconds)
        REQUESTS_BY_KIND.labels(_KIND, stage.name).inc()
        data = reply.data
        outcome = self.chat.direct_outcome(stage, data)
        data["model"] = stage.name
        overhead = time.perf_counter() - t0 - reply.seconds
        OVERHEAD_SECONDS.observe(overhead)
        headers["x-cascade-overhead-ms"] = f"{overhead * 1e3:.3f}"
        return Response(orjson.dumps(data), media_type=_JSON, headers=headers), outcome

    # -- cascade --------------------------------------------------------------
    async def _cascade(
        self, req: CompletionRequest, headers: Mapping[str, str], t0: float, limits: TenantLimits
    ) -> tuple[Response, RequestOutcome]:
        lam, max_stage = self.chat._knobs(req, headers, limits)
        if req.token_limit == 0:
            raise APIError(400, f"'max_tokens': 0 generates nothing for model '{self.cascade_name}' to judge; "
                           "to score a prompt, ask a stage by name", param="max_tokens")  # fmt: skip
        if req.echo and req.logprobs is not None:
            raise APIError(400, f"'echo' with 'logprobs' is not available for model '{self.cascade_name}': the prompt's "
                           "logprobs depend on the stage that answers; ask a stage by name", param="echo")  # fmt: skip
        body = req.upstream_body(exclude=_CASCADE_FIELDS | {"model", "stream", "stream_options", "echo"})
        body["max_tokens"] = req.token_limit  # explicit: verification and continuations count against it
        prompt = PromptStats.from_texts([req.prompt_text])
        cascade_req = CascadeRequest(body, prompt, lam, max_stage, stream=req.stream, spec=COMPLETION_SPEC)
        result = await self.engine.run(cascade_req, COMPLETIONS_API)
        return self.chat.respond(
            result,
            _KIND,
            lam,
            t0,
            req.stream,
            lambda events: self._stream_final(req, result, events),
            lambda: self._shape(req, result),
            lambda data: self._stream_whole(req, data),
        )

    def _shape(self, req: CompletionRequest, result: CascadeResult) -> dict[str, Any]:
        data = result.response
        assert data is not None
        data["model"] = self.cascade_name
        data["usage"] = result.usage().to_dict()
        for choice in data["choices"]:
            choice["logprobs"] = self._client_logprobs(req, choice.get("logprobs"))
            if req.echo:
                choice["text"] = req.prompt_text + (choice.get("text") or "")
        return data

    @staticmethod
    def _client_logprobs(req: CompletionRequest, logprobs: Any, shift: int = 0) -> Any:
        """Logprobs were asked of the stage for the predictor; give the client only what it asked for: each position's
        ``n`` most likely alternatives plus the chosen token (what a stage returns for ``logprobs: n``). ``shift``
        moves ``text_offset`` (a continuation's positions come after a verified prefix)."""
        if req.logprobs is None or not logprobs:
            return None
        k = req.logprobs
        tops = logprobs.get("top_logprobs") or []
        for i, (token, value) in enumerate(zip(logprobs.get("tokens") or (), logprobs.get("token_logprobs") or (), strict=False)):
            if i < len(tops) and tops[i] is not None:
                kept = dict(top_alternatives(tops[i], k))
                if value is not None:
                    kept.setdefault(token, value)
                tops[i] = kept
        if shift:
            logprobs["text_offset"] = [o + shift for o in logprobs.get("text_offset") or ()]
        return logprobs

    def _chunk_base(self, data: Mapping[str, Any]) -> dict[str, Any]:
        return {"id": data.get("id", ""), "object": "text_completion", "created": data.get("created", 0), "model": self.cascade_name}

    @staticmethod
    def _chunk(base: dict[str, Any], text: str, finish: str | None, logprobs: Any = None) -> bytes:
        return _sse(orjson.dumps({**base, "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}]}))

    async def _stream_whole(self, req: CompletionRequest, data: dict[str, Any]) -> AsyncIterator[bytes]:
        """An answer already complete (a lower stage stopped): its text (after the prompt with ``echo``), the finish
        reason, usage. ``data`` is shaped already (echo applied), so the prompt is not sent twice."""
        choice = data["choices"][0]
        base = self._chunk_base(data)
        text = choice.get("text") or ""
        if req.echo:
            yield self._chunk(base, req.prompt_text, None)
            text = text[len(req.prompt_text) :]
        yield self._chunk(base, text, None, choice.get("logprobs"))
        yield self._chunk(base, "", choice.get("finish_reason") or "stop")
        if req.include_usage:
            yield _sse(orjson.dumps({**base, "choices": [], "usage": data["usage"]}))
        yield b"data: [DONE]\n\n"

    async def _stream_final(self, req: CompletionRequest, result: CascadeResult, events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Relay the top stage's stream (``events``); fold earlier stages' tokens into its usage chunk."""
        before = result.usage()
        client = self.engine.stages[result.final_stage]
        upstream = f'"model":"{client.config.model}"'.encode()
        public = f'"model":"{self.cascade_name}"'.encode()
        base = {"id": "cmpl-prefix", "object": "text_completion", "created": 0, "model": self.cascade_name}
        if req.echo:
            yield self._chunk(base, req.prompt_text, None)
        shift = 0
        prefix = result.prefix
        if prefix is not None and prefix.accepted_tokens:  # the verified draft prefix goes out at once
            lp = self._client_logprobs(req, entries_logprobs(prefix.accepted_logprobs).take())
            shift = sum(len(e["token"]) for e in prefix.accepted_logprobs)
            yield self._chunk(base, prefix.accepted_text, None, lp)
        # the stage was asked for max(client's, predictor's) alternatives: relay its chunks untouched only when that is the client's
        rewrite = req.logprobs is None or req.logprobs < self.engine.top_k or shift > 0
        try:
            async for payload in events:
                if b'"usage"' in payload:
                    chunk = orjson.loads(payload)
                    if chunk.get("usage") and not chunk.get("choices"):
                        if req.include_usage:
                            chunk["usage"] = (before + TokenUsage.of(chunk["usage"])).to_dict()
                            chunk["model"] = self.cascade_name
                            yield _sse(orjson.dumps(chunk))
                        continue
                if rewrite:
                    chunk = orjson.loads(payload)
                    for choice in chunk.get("choices", ()):
                        choice["logprobs"] = self._client_logprobs(req, choice.get("logprobs"), shift)
                    chunk["model"] = self.cascade_name
                    chunk.pop("usage", None)
                    yield _sse(orjson.dumps(chunk))
                else:
                    yield _sse(payload.replace(upstream, public, 1))
        except StageFailure as exc:
            yield _error_event(exc)
        yield b"data: [DONE]\n\n"
