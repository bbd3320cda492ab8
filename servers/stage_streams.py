"""The server-sent event streams of ``stream: true``, in OpenAI's chunk formats.

Decoding runs on a worker thread (``StageServing.decode`` is synchronous and
holds the engine's lock) and hands its deltas to the response coroutine through
a queue, so each chunk is written as soon as its token is decoded. Closing the
stream stops the decoding at once: the router aborts a stage it judges while it
writes by closing its stream, and the model is free for the next request.

A failure after the first chunk has gone out cannot change the status code any
more, so it is reported to the client as an error event before ``[DONE]``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, AsyncIterator

import orjson

from common.errors import APIError
from common.protocol import ChatCompletionRequest
from servers.completions import CompletionLogprobs, CompletionRequest
from servers.sampling import Sampling
from servers.stage_serving import Delta, StageServing, echo_logprobs, token_usage


def _sse(body: object) -> bytes:
    return b"data: " + orjson.dumps(body) + b"\n\n"


async def _deltas(serving: StageServing, sampling: Sampling, prompt: list[int]) -> AsyncGenerator[Delta, None]:
    """``serving.decode`` on a worker thread, feeding this coroutine through a queue; stops the decoding when closed."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Delta | BaseException | None] = asyncio.Queue()
    cancelled = threading.Event()

    def work() -> None:
        try:
            for item in serving.decode(sampling, prompt, cancelled):
                loop.call_soon_threadsafe(queue.put_nowait, item)
        except BaseException as exc:  # re-raised in the coroutine
            loop.call_soon_threadsafe(queue.put_nowait, exc)
        loop.call_soon_threadsafe(queue.put_nowait, None)

    future = loop.run_in_executor(None, work)
    try:
        while (item := await queue.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        cancelled.set()
        await future


def _error_event(exc: BaseException) -> bytes:
    return _sse(APIError(500, f"generation failed: {exc}", type="server_error").body())


async def chat_stream(
    serving: StageServing, req: ChatCompletionRequest, sampling: Sampling, prompt: list[int], rid: str, created: int
) -> AsyncIterator[bytes]:
    """SSE in OpenAI's chunk format; a tool call comes as one ``delta.tool_calls`` entry once it is complete."""

    def chunk(delta: dict[str, object], finish: str | None, logprobs: object = None) -> bytes:
        return _sse(
            {
                "id": rid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": serving.model_id,
                "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
            }
        )

    n_completion = 0
    n_calls = 0
    yield chunk({"role": "assistant", "content": ""}, None)
    deltas = _deltas(serving, sampling, prompt)
    try:
        async for d in deltas:
            if d.step is not None:
                n_completion += 1
            lp = {"content": [serving.logprob_entry(d.step)]} if (req.logprobs and d.step is not None) else None
            if d.text or lp or (d.finish and not d.calls):
                yield chunk({"content": d.text} if d.text else {}, None if d.calls else d.finish, lp)
            for i, call in enumerate(d.calls):
                last = i == len(d.calls) - 1
                yield chunk({"tool_calls": [call.openai(n_calls)]}, d.finish if last else None)
                n_calls += 1
    except Exception as exc:  # reported to the client as an error event
        yield _error_event(exc)
    finally:
        await deltas.aclose()
    if req.include_usage:
        usage = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": serving.model_id, "choices": []}
        yield _sse({**usage, "usage": token_usage(len(prompt), n_completion)})
    yield b"data: [DONE]\n\n"


async def completion_stream(
    serving: StageServing, req: CompletionRequest, sampling: Sampling, prompt: list[int], rid: str, created: int
) -> AsyncIterator[bytes]:
    """SSE ``text_completion`` chunks; with ``echo`` the first one carries the prompt (and its logprobs)."""

    def chunk(text: str, finish: str | None, logprobs: object = None) -> bytes:
        choice = {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}
        return _sse({"id": rid, "object": "text_completion", "created": created, "model": serving.model_id, "choices": [choice]})

    logprobs = CompletionLogprobs() if req.logprobs is not None else None
    n_completion = 0
    try:
        if req.echo:
            if logprobs is not None:
                await echo_logprobs(serving, prompt, req.logprobs or 0, logprobs)
            yield chunk(req.prompt_text, None if req.token_limit > 0 else "length", logprobs.take() if logprobs else None)
        if req.token_limit > 0:
            deltas = _deltas(serving, sampling, prompt)
            try:
                async for d in deltas:
                    if d.step is not None:
                        n_completion += 1
                        if logprobs is not None:
                            serving.add_completion_logprob(logprobs, d.step.token, d.step.logprob, d.step.top)
                    lp = logprobs.take() if logprobs is not None else None
                    if d.text or d.finish or (lp and lp["tokens"]):
                        yield chunk(d.text, d.finish, lp)
            finally:
                await deltas.aclose()
    except Exception as exc:  # reported to the client as an error event
        yield _error_event(exc)
    if req.include_usage:
        usage = {"id": rid, "object": "text_completion", "created": created, "model": serving.model_id, "choices": []}
        yield _sse({**usage, "usage": token_usage(len(prompt), n_completion)})
    yield b"data: [DONE]\n\n"
