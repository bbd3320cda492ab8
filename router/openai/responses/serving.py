"""``POST /v1/responses``: OpenAI's Responses API over the same pass-through and cascade as chat.

Stateless: the request is translated into a chat-completions request
(``ResponsesRequest.chat_request``, validated like any chat request) and served
as one, on the serving base every API shares (``router.openai.serving_base``), so
the cascade, the tenant limits, the ``x-cascade-*`` knobs and headers and the
accounting are those of chat. What the stage or the cascade answers is read typed,
never as another API's response bytes: a pass-through's chat completion or its
stream's chunks, a cascade's ``CascadeResult`` as chat shapes it
(``router.openai.chat.serving.ChatRendering``: the whole answer, or the top stage's
chunks). One translator (``router.openai.responses.builder.ResponseBuilder``) turns
those chat chunks into the ``Response`` and its events.

A stage failure after the stream started is an ``error`` event, then
``response.failed`` with what had been generated; a failure before it is the
OpenAI-shaped error response, as for chat, naming the Responses field.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.responses import Response

from common.errors import APIError
from common.protocol import ChatCompletionRequest
from common.responses_protocol import ResponsesRequest, responses_error
from router.closing import link
from router.contracts import CascadeResult, RequestOutcome, TenantLimits
from router.metrics import STAGE_CALLS
from router.openai.chat.dialect import CHAT_DIALECT
from router.openai.chat.serving import ChatRendering, cascade_request
from router.openai.responses.builder import ResponseBuilder, completion_chunk
from router.openai.serving_base import JSON, PASSTHROUGH_EXCLUDE, OpenAIServing, upstream_error
from router.stage import Stage, StageFailure
from router.stream_tap import StreamedAnswer
from router.validity import AnswerSpec

log = logging.getLogger("adaptive_sd.router")


@dataclass(frozen=True, slots=True)
class ResponsesCall:
    """A Responses request with the chat request it translates to; what ``OpenAIServing`` reads is the chat one's."""

    request: ResponsesRequest
    chat: ChatCompletionRequest

    @property
    def model(self) -> str:
        return self.chat.model

    @property
    def cascade_lambda(self) -> float | None:
        return self.chat.cascade_lambda

    @property
    def cascade_max_stage(self) -> int | str | None:
        return self.chat.cascade_max_stage


class ResponsesServing(OpenAIServing[ResponsesCall]):
    """Serves a ``ResponsesRequest`` as chat, and shapes the answer as a ``Response`` or its event stream."""

    async def create(
        self, req: ResponsesRequest, headers: Mapping[str, str], limits: TenantLimits | None = None
    ) -> tuple[Response, RequestOutcome]:
        """The response to a validated request, and what it comes to for accounting (``OpenAIServing._serve``).

        Raises ``APIError`` for everything the client gets as an error, naming the Responses field.
        """
        call = ResponsesCall(req, req.chat_request())
        try:
            return await self._serve(call, headers, limits)
        except APIError as exc:
            raise responses_error(exc) from None

    # -- pass-through ---------------------------------------------------------
    async def _passthrough(self, call: ResponsesCall, stage: Stage, t0: float) -> tuple[Response, RequestOutcome]:
        req = call.request
        body = call.chat.upstream_body(exclude=PASSTHROUGH_EXCLUDE)
        spec = AnswerSpec.of(body)
        self.refuse_incapable(stage, spec)
        headers = {"x-cascade-stage": stage.name, "x-cascade-path": stage.name, "x-cascade-kind": spec.kind}
        try:
            if req.stream:
                payloads = await stage.stream(body)
                seen = StreamedAnswer(whole=False)  # its usage, read on the way
                events = _translate(ResponseBuilder(req), _decoded(payloads, seen), payloads)
                return self.stream_response(stage, spec.kind, events, headers, t0, seen)
            data, seconds = await stage.chat(body)
        except StageFailure:
            STAGE_CALLS.labels(stage.name, "error").inc()
            raise
        outcome = self.answered(stage, spec, data, seconds, t0, headers)
        builder = ResponseBuilder(req, events=False)
        builder.feed(completion_chunk(data))
        builder.finish()
        return Response(orjson.dumps(builder.response()), media_type=JSON, headers=headers), outcome

    # -- cascade --------------------------------------------------------------
    async def _cascade(
        self, call: ResponsesCall, headers: Mapping[str, str], t0: float, limits: TenantLimits
    ) -> tuple[Response, RequestOutcome]:
        lam, max_stage = self.knobs(call.chat, headers, limits)
        cascade_req = cascade_request(call.chat, lam, max_stage, limits.learn)

        def rendering(result: CascadeResult) -> ResponsesRendering:
            return ResponsesRendering(call.request, ChatRendering(self, call.chat, result))

        return await self.run_cascade(cascade_req, CHAT_DIALECT, lam, t0, call.chat.stream, rendering)


class ResponsesRendering:
    """What a cascade result comes to in the Responses shapes (``router.openai.serving_base.Rendering``): chat's
    answer or chunks (``ChatRendering``), through the translator. The answer passed around is chat's completion."""

    __slots__ = ("chat", "req")

    def __init__(self, req: ResponsesRequest, chat: ChatRendering) -> None:
        self.req = req
        self.chat = chat

    def answer(self) -> dict[str, Any]:
        return self.chat.answer()

    def encode(self, answer: dict[str, Any]) -> bytes:
        builder = ResponseBuilder(self.req, events=False)
        builder.feed(completion_chunk(answer))
        builder.finish()
        return orjson.dumps(builder.response())

    def restream(self, answer: dict[str, Any]) -> AsyncIterator[bytes]:
        return _translate(ResponseBuilder(self.req), _aiter(self.chat.whole_chunks(answer)))

    def relay(self, events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        return _translate(ResponseBuilder(self.req), self.chat.chunks(events), events)


async def _aiter(chunks: Iterable[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    for chunk in chunks:
        yield chunk


@link("payloads")
async def _decoded(payloads: AsyncIterator[bytes], seen: StreamedAnswer) -> AsyncIterator[dict[str, Any]]:
    """A stage's stream of chat chunks (its SSE payloads), decoded; its usage ``seen`` on its way."""
    async for payload in payloads:
        seen.add(payload)
        chunk: dict[str, Any] = orjson.loads(payload)
        yield chunk


@link("chunks", "source")
async def _translate(
    builder: ResponseBuilder, chunks: AsyncIterator[dict[str, Any]], source: AsyncIterator[bytes] | None = None
) -> AsyncIterator[bytes]:
    """Chat chunks as the Responses event stream. A stage's ``error`` chunk or a ``StageFailure`` ends it with
    ``error`` and ``response.failed`` (``upstream_error``'s message); ``source``, the stage's stream, is closed with
    it (``link``)."""
    for event in builder.start():
        yield event
    try:
        async for chunk in chunks:
            error = chunk.get("error")
            if error is not None:  # the stage's last event when it failed mid-stream
                for event in builder.fail(str(error.get("message")), error.get("code") or error.get("type"), error.get("param")):
                    yield event
                return
            for event in builder.feed(chunk):
                yield event
    except StageFailure as exc:
        err = upstream_error(exc)
        for event in builder.fail(err.message, err.code or err.type, err.param):
            yield event
        return
    except Exception as exc:  # a bug of ours or garbage from a stage: the client still gets a well-formed end
        log.exception("responses stream translation failed")
        for event in builder.fail(f"internal error: {type(exc).__name__}", "server_error"):
            yield event
        return
    for event in builder.finish():
        yield event
