"""``POST /v1/chat/completions``: pass-through to a named stage, or the cascade.

``ChatServing`` validates the cascade knobs (λ, max stage; ``router.openai.serving_base``),
runs the engine, and shapes the OpenAI response: the answering stage's body with
``model`` set to what the client asked for, ``usage`` summed over every stage
called, client-requested logprobs only, and the ``x-cascade-*`` headers that say
what happened. ``create`` returns the response with the request's
``RequestOutcome`` (``router.contracts``) for the route's accounting.

Tools and JSON formats (``router.validity``): a pass-through to a stage without
the capability is a 400 naming the field; the cascade's headers say what kind of
request it was, which stages it left out and which answers broke the rules:

    x-cascade-kind     tools | json_object | json_schema | text
    x-cascade-skipped  per stage left out: <stage>:<capability>   (e.g. smollm2-135m:tools)
    x-cascade-invalid  per invalid answer: <stage>:<reason>       (e.g. smollm2-135m:arguments)

An invalid answer in ``x-cascade-invalid`` from the stage in ``x-cascade-stage``
is the top allowed stage's, returned as it is. A streamed final stage is relayed
as it generates, so its answer is not judged.

What the cascade's result comes to in chat's shapes is ``ChatRendering``: the
whole answer, the whole answer as chunks, the top stage's stream relayed. It also
gives them as typed chunks (``whole_chunks``, ``chunks``), which the Responses API
(``router.openai.responses``) reads; chat itself sends bytes, and relays the top
stage's chunks without decoding them where it can.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Iterator, Mapping
from typing import Any

import orjson
from starlette.responses import Response

from common.completions_protocol import CASCADE_FIELDS
from common.protocol import ChatCompletionRequest
from predictor.serving.features import PromptStats
from router.closing import link
from router.contracts import CascadeRequest, RequestOutcome, TenantLimits, TokenUsage
from router.metrics import STAGE_CALLS
from router.openai.chat.dialect import CHAT_DIALECT
from router.openai.serving_base import (
    DONE_EVENT,
    JSON,
    PASSTHROUGH_EXCLUDE,
    OpenAIServing,
    RenderingBase,
    error_event,
    sse,
)
from router.stage import Stage, StageFailure
from router.stream_tap import StreamedAnswer
from router.validity import AnswerSpec

_CASCADE_EXCLUDE = frozenset((*CASCADE_FIELDS, "model", "stream", "stream_options"))  # what the cascade's upstream body leaves out


def _says_nothing(choice: dict[str, Any]) -> bool:
    """A streamed choice with no delta, no finish reason and no logprobs for the client: not worth a chunk."""
    return not choice.get("delta") and choice.get("finish_reason") is None and choice.get("logprobs") is None


def cascade_request(req: ChatCompletionRequest, lam: float, max_stage: int, learn: bool = True) -> CascadeRequest:
    """The engine's request for a chat request: its upstream body (no model, no cascade extras, not streamed: the
    engine decides which stage streams), its prompt's statistics, what it asks of an answer."""
    body = req.upstream_body(exclude=_CASCADE_EXCLUDE)
    prompt = PromptStats.from_texts([m.text() for m in req.messages])
    return CascadeRequest(body, prompt, lam, max_stage, stream=req.stream, spec=AnswerSpec.of(body), learn=learn)


class ChatServing(OpenAIServing[ChatCompletionRequest]):
    """Serves validated ``ChatCompletionRequest``s (module docstring)."""

    def create(
        self, req: ChatCompletionRequest, headers: Mapping[str, str], limits: TenantLimits | None = None
    ) -> Awaitable[tuple[Response, RequestOutcome]]:
        """The response to a validated request, and what it comes to for accounting (``OpenAIServing._serve``)."""
        return self._serve(req, headers, limits)

    # -- pass-through ---------------------------------------------------------
    async def _passthrough(self, req: ChatCompletionRequest, stage: Stage, t0: float) -> tuple[Response, RequestOutcome]:
        body = req.upstream_body(exclude=PASSTHROUGH_EXCLUDE)
        spec = AnswerSpec.of(body)
        self.refuse_incapable(stage, spec)
        headers = {"x-cascade-stage": stage.name, "x-cascade-path": stage.name, "x-cascade-kind": spec.kind}
        try:
            if req.stream:
                events = await stage.stream(body, raw=True)
                seen = StreamedAnswer(whole=False)  # its usage, read on the way
                return self.stream_response(stage, spec.kind, self.relay(events, stage, seen), headers, t0, seen)
            data, seconds = await stage.chat(body)
        except StageFailure:
            STAGE_CALLS.labels(stage.name, "error").inc()
            raise
        outcome = self.answered(stage, spec, data, seconds, t0, headers)
        return Response(orjson.dumps(data), media_type=JSON, headers=headers), outcome

    # -- cascade --------------------------------------------------------------
    async def _cascade(
        self, req: ChatCompletionRequest, headers: Mapping[str, str], t0: float, limits: TenantLimits
    ) -> tuple[Response, RequestOutcome]:
        lam, max_stage = self.knobs(req, headers, limits)
        cascade_req = cascade_request(req, lam, max_stage, limits.learn)
        return await self.run_cascade(cascade_req, CHAT_DIALECT, lam, t0, req.stream, lambda result: ChatRendering(self, req, result))


class ChatRendering(RenderingBase[ChatCompletionRequest]):
    """What a cascade result comes to in chat's shapes (``router.openai.serving_base.Rendering``), for one request."""

    __slots__ = ()

    # -- the whole answer -------------------------------------------------------------
    def answer(self) -> dict[str, Any]:
        """The final stage's chat completion, as the client gets it: the cascade's model, the usage of every stage
        called, the logprobs the client asked for."""
        return self._final_answer()

    def encode(self, answer: dict[str, Any]) -> bytes:
        return orjson.dumps(answer)

    def client_logprobs(self, logprobs: Any) -> Any:
        """Logprobs were asked of the stage for the predictor; give the client only what it asked for."""
        req = self.req
        if not req.logprobs or not logprobs:
            return None
        k = req.top_logprobs or 0
        for entry in logprobs.get("content") or ():
            entry["top_logprobs"] = entry.get("top_logprobs", [])[:k]
        return logprobs

    async def restream(self, answer: dict[str, Any]) -> AsyncIterator[bytes]:
        """A whole answer (a lower stage stopped) as chat's stream: ``whole_chunks``, then ``[DONE]``."""
        for chunk in self.whole_chunks(answer):
            yield sse(orjson.dumps(chunk))
        yield DONE_EVENT

    def whole_chunks(self, answer: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """A whole answer as chunks: role, content, tool calls, finish, usage (if the client asked for it).

        Tool calls go out as OpenAI streams them, one ``delta.tool_calls`` entry per call
        (``index``, ``id``, ``type``, ``function: {name, arguments}``) and finish ``tool_calls``,
        so clients that assemble calls from deltas get the same message as without streaming.
        """
        choice = answer["choices"][0]
        message = choice["message"]
        calls = message.get("tool_calls") or []
        content = message.get("content")
        base = {"id": answer.get("id", ""), "object": "chat.completion.chunk", "created": answer.get("created", 0),
                "model": self.cascade_name}  # fmt: skip

        def chunk(delta: dict[str, Any], finish: str | None, logprobs: Any = None) -> dict[str, Any]:
            return {**base, "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]}

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
        if self.req.include_usage:
            yield {**base, "choices": [], "usage": answer["usage"]}

    # -- the top stage's stream -------------------------------------------------------
    @property
    def rewrites_logprobs(self) -> bool:
        """Whether the top stage's chunks must be rewritten to carry only the logprobs the client asked for.

        The stage was asked for ``max(top_logprobs, the predictor's top-k)`` alternatives per token
        (``ChatDialect.asking``), so its chunks go out untouched only when that is what the client asked for:
        logprobs, and at least top-k alternatives. ``logprobs: true`` alone is OpenAI's "no alternatives"
        (each token's ``top_logprobs`` is ``[]``), not "whatever the stage sent".
        """
        return not self.req.logprobs or (self.req.top_logprobs or 0) < self.top_k

    def prefix_chunk(self) -> dict[str, Any] | None:
        """The verified draft prefix of the streamed stage, as the chunk that goes out first (None: there is none)."""
        prefix = self.result.prefix
        if prefix is None or not prefix.accepted_tokens:
            return None
        lp = self.client_logprobs({"content": [dict(e) for e in prefix.accepted_logprobs]})
        first = {"id": "chatcmpl-prefix", "object": "chat.completion.chunk", "created": 0, "model": self.cascade_name}
        delta = {"role": "assistant", "content": prefix.accepted_text}
        first["choices"] = [{"index": 0, "delta": delta, "logprobs": lp, "finish_reason": None}]
        return first

    def usage_chunk(self, chunk: dict[str, Any], before: TokenUsage) -> dict[str, Any] | None:
        """The stage's usage chunk with the earlier stages' tokens (``before``) folded in; None: the client did not ask."""
        if not self.req.include_usage:
            return None
        chunk["usage"] = (before + TokenUsage.of(chunk["usage"])).to_dict()
        chunk["model"] = self.cascade_name
        return chunk

    def rewrite(self, chunk: dict[str, Any]) -> dict[str, Any] | None:
        """A stage chunk with the client's logprobs only; None when it carried nothing else (the router asked for them)."""
        choices = chunk.get("choices") or ()
        for choice in choices:
            choice["logprobs"] = self.client_logprobs(choice.get("logprobs"))
        if choices and all(_says_nothing(c) for c in choices):
            return None  # it carried only the logprobs the router asked for (one per token a stage held back)
        chunk["model"] = self.cascade_name
        chunk.pop("usage", None)
        return chunk

    @link("events")
    async def relay(self, events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Relay the top stage's stream (``events``, its SSE payloads) after the verified prefix; fold earlier stages'
        tokens into its usage chunk. A chunk is decoded only where it must change (``rewrites_logprobs``, usage)."""
        before = self.result.usage()
        upstream = f'"model":"{self.upstream_model}"'.encode()
        public = f'"model":"{self.cascade_name}"'.encode()
        rewrite = self.rewrites_logprobs
        first = self.prefix_chunk()
        if first is not None:  # the verified draft prefix goes out at once
            yield sse(orjson.dumps(first))
        try:
            async for payload in events:
                if b'"usage"' in payload:
                    chunk = orjson.loads(payload)
                    if chunk.get("usage") and not chunk.get("choices"):
                        usage = self.usage_chunk(chunk, before)
                        if usage is not None:
                            yield sse(orjson.dumps(usage))
                        continue
                if rewrite:
                    rewritten = self.rewrite(orjson.loads(payload))
                    if rewritten is not None:
                        yield sse(orjson.dumps(rewritten))
                else:
                    yield sse(payload.replace(upstream, public, 1))
        except StageFailure as exc:
            yield error_event(exc)
        yield DONE_EVENT

    @link("events")
    async def chunks(self, events: AsyncIterator[bytes]) -> AsyncIterator[dict[str, Any]]:
        """The top stage's stream as the chunks ``relay`` sends, decoded: the verified prefix, the stage's chunks with
        the client's logprobs, the usage chunk with earlier stages' tokens. A stage failure raises ``StageFailure``."""
        before = self.result.usage()
        rewrite = self.rewrites_logprobs
        first = self.prefix_chunk()
        if first is not None:
            yield first
        async for payload in events:
            chunk: dict[str, Any] = orjson.loads(payload)
            out: dict[str, Any] | None = chunk
            if chunk.get("usage") and not chunk.get("choices"):
                out = self.usage_chunk(chunk, before)
            elif rewrite:
                out = self.rewrite(chunk)
            else:
                chunk["model"] = self.cascade_name
            if out is not None:
                yield out
