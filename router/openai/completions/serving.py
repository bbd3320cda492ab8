"""``POST /v1/completions``: the legacy completions API (what LlamaIndex's ``OpenAILike`` and editor autocomplete call),
as a pass-through to a named stage or through the cascade.

Served like chat, on the same base (``router.openai.serving_base.OpenAIServing``: the
tenant's allowed models, λ and max stage, the ``x-cascade-*`` headers, usage summed
over every stage called, OpenAI-shaped errors). What differs is the dialect, and that
is ``router.openai.completions.dialect.COMPLETIONS_DIALECT`` for the engine: each
stage is asked for its completion with ``logprobs: k`` (the predictor's top-k), the
answer is read into the same feature vector (prompt features from the prompt text),
and the same stopping rule decides. On escalation the larger stage verifies the
smaller one's text as the end of the prompt
(``router.openai.completions.draft.COMPLETIONS_DRAFT``, ``echo`` with logprobs).

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
  prefix sent at once (``CompletionsRendering``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Mapping
from functools import partial
from typing import Any

import orjson
from starlette.responses import Response

from common.completions_protocol import CASCADE_FIELDS, CompletionRequest, entries_logprobs, top_alternatives
from common.errors import APIError
from predictor.serving.features import PromptStats
from router.closing import link
from router.contracts import CascadeRequest, RequestOutcome, TenantLimits, TokenUsage
from router.metrics import STAGE_CALLS
from router.openai.completions.dialect import COMPLETION_SPEC, COMPLETIONS_DIALECT, completion_spec
from router.openai.serving_base import (
    DONE_EVENT,
    JSON,
    PASSTHROUGH_EXCLUDE,
    OpenAIServing,
    RenderingBase,
    error_event,
    sse,
)
from router.stage import Stage, StageFailure, StageNoCompletions, completions_stage
from router.stream_tap import StreamedAnswer

_CASCADE_EXCLUDE = frozenset((*CASCADE_FIELDS, "model", "stream", "stream_options", "echo"))  # what the cascade's upstream body leaves out
_KIND = COMPLETION_SPEC.kind


class CompletionServing(OpenAIServing[CompletionRequest]):
    """Serves validated ``CompletionRequest``s (module docstring)."""

    def create(
        self, req: CompletionRequest, headers: Mapping[str, str], limits: TenantLimits | None = None
    ) -> Awaitable[tuple[Response, RequestOutcome]]:
        """The response to a validated request, and what it comes to for accounting (``OpenAIServing._serve``)."""
        return self._serve(req, headers, limits)

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
        body = req.upstream_body(exclude=PASSTHROUGH_EXCLUDE)
        self.refuse_incapable(stage, completion_spec(body))
        headers = {"x-cascade-stage": stage.name, "x-cascade-path": stage.name, "x-cascade-kind": _KIND}
        try:
            target = completions_stage(stage)
            if req.stream:
                blocks = await target.complete_stream(body, raw=True)
                seen = StreamedAnswer(whole=False)  # its usage, read on the way
                return self.stream_response(stage, _KIND, self.relay(blocks, stage, seen), headers, t0, seen)
            reply = await target.complete(body)
        except StageNoCompletions as exc:
            STAGE_CALLS.labels(stage.name, "error").inc()
            raise self._no_completions(stage, str(exc)) from None
        except StageFailure:
            STAGE_CALLS.labels(stage.name, "error").inc()
            raise
        data = reply.data
        outcome = self.answered(stage, COMPLETION_SPEC, data, reply.seconds, t0, headers)
        return Response(orjson.dumps(data), media_type=JSON, headers=headers), outcome

    # -- cascade --------------------------------------------------------------
    async def _cascade(
        self, req: CompletionRequest, headers: Mapping[str, str], t0: float, limits: TenantLimits
    ) -> tuple[Response, RequestOutcome]:
        lam, max_stage = self.knobs(req, headers, limits)
        if req.token_limit == 0:
            raise APIError(400, f"'max_tokens': 0 generates nothing for model '{self.cascade_name}' to judge; "
                           "to score a prompt, ask a stage by name", param="max_tokens")  # fmt: skip
        if req.echo and req.logprobs is not None:
            raise APIError(400, f"'echo' with 'logprobs' is not available for model '{self.cascade_name}': the prompt's "
                           "logprobs depend on the stage that answers; ask a stage by name", param="echo")  # fmt: skip
        body = req.upstream_body(exclude=_CASCADE_EXCLUDE)
        body["max_tokens"] = req.token_limit  # explicit: verification and continuations count against it
        prompt = PromptStats.from_texts([req.prompt_text])
        cascade_req = CascadeRequest(body, prompt, lam, max_stage, stream=req.stream, spec=completion_spec(body), learn=limits.learn)
        rendering = partial(CompletionsRendering, self, req)
        return await self.run_cascade(cascade_req, COMPLETIONS_DIALECT, lam, t0, req.stream, rendering, kind=_KIND)


class CompletionsRendering(RenderingBase[CompletionRequest]):
    """What a cascade result comes to in the completions shapes (``router.openai.serving_base.Rendering``), for one request."""

    __slots__ = ()

    def answer(self) -> dict[str, Any]:
        """The final stage's completion as the client gets it (the prompt in front with ``echo``)."""
        data = self._final_answer()
        if self.req.echo:
            for choice in data["choices"]:
                choice["text"] = self.req.prompt_text + (choice.get("text") or "")
        return data

    def encode(self, answer: dict[str, Any]) -> bytes:
        return orjson.dumps(answer)

    def client_logprobs(self, logprobs: Any, shift: int = 0) -> Any:
        """Logprobs were asked of the stage for the predictor; give the client only what it asked for: each position's
        ``n`` most likely alternatives plus the chosen token (what a stage returns for ``logprobs: n``). ``shift``
        moves ``text_offset`` (a continuation's positions come after a verified prefix)."""
        if self.req.logprobs is None or not logprobs:
            return None
        k = self.req.logprobs
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
        return sse(orjson.dumps({**base, "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}]}))

    async def restream(self, answer: dict[str, Any]) -> AsyncIterator[bytes]:
        """An answer already complete (a lower stage stopped): its text (after the prompt with ``echo``), the finish
        reason, usage. ``answer`` is shaped already (echo applied), so the prompt is not sent twice."""
        req = self.req
        choice = answer["choices"][0]
        base = self._chunk_base(answer)
        text = choice.get("text") or ""
        if req.echo:
            yield self._chunk(base, req.prompt_text, None)
            text = text[len(req.prompt_text) :]
        yield self._chunk(base, text, None, choice.get("logprobs"))
        yield self._chunk(base, "", choice.get("finish_reason") or "stop")
        if req.include_usage:
            yield sse(orjson.dumps({**base, "choices": [], "usage": answer["usage"]}))
        yield DONE_EVENT

    @link("events")
    async def relay(self, events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Relay the top stage's stream (``events``); fold earlier stages' tokens into its usage chunk."""
        req, result = self.req, self.result
        before = result.usage()
        upstream = f'"model":"{self.upstream_model}"'.encode()
        public = f'"model":"{self.cascade_name}"'.encode()
        base = {"id": "cmpl-prefix", "object": "text_completion", "created": 0, "model": self.cascade_name}
        if req.echo:
            yield self._chunk(base, req.prompt_text, None)
        shift = 0
        prefix = result.prefix
        if prefix is not None and prefix.accepted_tokens:  # the verified draft prefix goes out at once
            lp = self.client_logprobs(entries_logprobs(prefix.accepted_logprobs).take())
            shift = sum(len(e["token"]) for e in prefix.accepted_logprobs)
            yield self._chunk(base, prefix.accepted_text, None, lp)
        # the stage was asked for max(client's, predictor's) alternatives: relay its chunks untouched only when that is the client's
        rewrite = req.logprobs is None or req.logprobs < self.top_k or shift > 0
        try:
            async for payload in events:
                if b'"usage"' in payload:
                    chunk = orjson.loads(payload)
                    if chunk.get("usage") and not chunk.get("choices"):
                        if req.include_usage:
                            chunk["usage"] = (before + TokenUsage.of(chunk["usage"])).to_dict()
                            chunk["model"] = self.cascade_name
                            yield sse(orjson.dumps(chunk))
                        continue
                if rewrite:
                    chunk = orjson.loads(payload)
                    for choice in chunk.get("choices", ()):
                        choice["logprobs"] = self.client_logprobs(choice.get("logprobs"), shift)
                    chunk["model"] = self.cascade_name
                    chunk.pop("usage", None)
                    yield sse(orjson.dumps(chunk))
                else:
                    yield sse(payload.replace(upstream, public, 1))
        except StageFailure as exc:
            yield error_event(exc)
        yield DONE_EVENT
