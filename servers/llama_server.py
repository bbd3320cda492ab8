"""Our thin OpenAI-compatible stage server over one llama.cpp model (CPU).

It speaks the same dialect as a vLLM OpenAI server for everything the router
uses -- chat completions with ``logprobs``/``top_logprobs``, streaming, and the
vLLM extras ``prompt_logprobs`` and ``continue_final_message`` -- so the router
has one client for CPU and GPU stages. One process serves one model; requests
run one at a time on a worker thread (a llama.cpp context is not re-entrant),
so the event loop stays free for health checks and new connections.

Run: ``python -m servers.llama_server --weights qwen2.5-coder-0.5b-instruct --port 8101``
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field

import orjson
import uvicorn
from fastapi import FastAPI, Request
from starlette.responses import Response, StreamingResponse

from common.errors import APIError, parse_chat_request
from common.protocol import ChatCompletionRequest, ChatMessage
from servers.chat_template import ChatTemplateError
from servers.llama_engine import ContextOverflow, LlamaEngine, Step

DEFAULT_MAX_TOKENS = 512


@dataclass
class _Completion:
    """Text and per-token details accumulated while decoding."""

    text: str = ""
    finish_reason: str = "length"
    tokens: list[Step] = field(default_factory=list)
    prompt_tokens: int = 0


class _StopMatcher:
    """Applies ``stop`` strings on decoded text, holding back a possible partial match."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.buffer = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Return (text safe to emit, stopped)."""
        self.buffer += text
        for s in self.stops:
            at = self.buffer.find(s)
            if at >= 0:
                out, self.buffer = self.buffer[:at], ""
                return out, True
        if self.hold <= 0:
            out, self.buffer = self.buffer, ""
        else:
            out, self.buffer = self.buffer[: -self.hold], self.buffer[-self.hold :]
        return out, False

    def flush(self) -> str:
        out, self.buffer = self.buffer, ""
        return out


class StageServing:
    """Turns validated requests into engine calls and OpenAI-shaped results."""

    def __init__(self, engine: LlamaEngine, model_id: str) -> None:
        self.engine = engine
        self.model_id = model_id
        self._lock = threading.Lock()

    # -- prompt ---------------------------------------------------------------
    def prompt_tokens(self, req: ChatCompletionRequest) -> list[int]:
        messages = _template_messages(req.messages)
        try:
            text = self.engine.template.render(
                messages,
                add_generation_prompt=req.add_generation_prompt,
                continue_final_message=req.continue_final_message,
            )
        except ChatTemplateError as exc:
            raise APIError(400, str(exc), param="messages") from None
        tokens = self.engine.tokenize(text)
        if len(tokens) >= self.engine.n_ctx:
            raise APIError(
                400,
                f"This model's maximum context length is {self.engine.n_ctx} tokens; the messages take {len(tokens)}",
                param="messages",
                code="context_length_exceeded",
            )
        return tokens

    def _token_limit(self, req: ChatCompletionRequest, n_prompt: int) -> int:
        room = self.engine.n_ctx - n_prompt
        return max(1, min(req.token_limit or DEFAULT_MAX_TOKENS, room))

    # -- decoding (worker thread) ---------------------------------------------
    def decode(
        self, req: ChatCompletionRequest, prompt: list[int], cancelled: threading.Event
    ) -> Iterator[tuple[str, Step | None, str | None]]:
        """Yield (text delta, step, finish_reason) triples; the last has a finish reason."""
        engine = self.engine
        limit = self._token_limit(req, len(prompt))
        want_lp = bool(req.logprobs)
        stopper = _StopMatcher(req.stop_list)
        pending = b""
        produced = 0
        temperature = 1.0 if req.temperature is None else req.temperature
        with self._lock:
            for step in engine.generate(
                prompt,
                max_tokens=limit,
                temperature=temperature,
                top_p=1.0 if req.top_p is None else req.top_p,
                seed=req.seed,
                logprobs=want_lp,
                top_logprobs=req.top_logprobs or 0,
            ):
                if cancelled.is_set():
                    return
                produced += 1
                pending += engine.piece(step.token)
                try:
                    text = pending.decode("utf-8")
                    pending = b""
                except UnicodeDecodeError:
                    text = ""  # an incomplete UTF-8 sequence; wait for the next token
                out, stopped = stopper.feed(text)
                if stopped:
                    yield out, step, "stop"
                    return
                yield out, step, None
            tail = stopper.flush() + pending.decode("utf-8", "replace")
            yield tail, None, "length" if produced >= limit else "stop"

    def complete(self, req: ChatCompletionRequest, prompt: list[int]) -> _Completion:
        result = _Completion(prompt_tokens=len(prompt))
        parts: list[str] = []
        for text, step, finish in self.decode(req, prompt, threading.Event()):
            parts.append(text)
            if step is not None:
                result.tokens.append(step)
            if finish:
                result.finish_reason = finish
        result.text = "".join(parts)
        return result

    def final_message_start(self, req: ChatCompletionRequest, prompt: list[int]) -> int:
        """Index of the first token of the final (continued) message; 1 when it cannot be told.

        The conversation up to the final message, rendered with the generation
        prompt, must tokenize to a prefix of ``prompt``; one token of margin in
        case the boundary merges.
        """
        head = _template_messages(req.messages[:-1])
        try:
            tokens = self.engine.tokenize(self.engine.template.render(head, add_generation_prompt=True))
        except ChatTemplateError:
            return 1
        start = len(tokens) - 1
        return start if start > 1 and tokens[:start] == prompt[:start] else 1

    def score(self, req: ChatCompletionRequest, prompt: list[int]) -> list[object]:
        first = self.final_message_start(req, prompt) if req.prompt_logprobs_scope == "final_message" else 1
        with self._lock:
            scored = self.engine.score(prompt, req.prompt_logprobs or 0, first)
        out: list[object] = []
        for s in scored:
            if s is None:
                out.append(None)
                continue
            entry = {str(s.token): {"logprob": s.logprob, "rank": s.rank, "decoded_token": self._tok(s.token)}}
            for rank, (tok, lp) in enumerate(s.top, start=1):
                entry.setdefault(str(tok), {"logprob": lp, "rank": rank, "decoded_token": self._tok(tok)})
            out.append(entry)
        return out

    # -- OpenAI shapes --------------------------------------------------------
    def _tok(self, token: int) -> str:
        return self.engine.piece(token).decode("utf-8", "replace")

    def logprob_entry(self, step: Step) -> dict[str, object]:
        piece = self.engine.piece(step.token)
        return {
            "token": piece.decode("utf-8", "replace"),
            "logprob": step.logprob,
            "bytes": list(piece),
            "top_logprobs": [{"token": self._tok(t), "logprob": lp, "bytes": list(self.engine.piece(t))} for t, lp in step.top],
        }


def _template_messages(messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
    """Request messages as the chat template takes them (``developer`` is a system message to it)."""
    return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in messages]


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def create_app(serving: StageServing) -> FastAPI:
    app = FastAPI(title="adaptive-sd llama.cpp stage", docs_url=None, redoc_url=None)

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> Response:
        return exc.response()

    @app.get("/health")
    async def health() -> Response:
        return Response(orjson.dumps({"status": "ok", "model": serving.model_id}), media_type="application/json")

    @app.get("/v1/models")
    async def models() -> Response:
        card = {"id": serving.model_id, "object": "model", "created": 0, "owned_by": "adaptive-sd", "max_model_len": serving.engine.n_ctx}
        return Response(orjson.dumps({"object": "list", "data": [card]}), media_type="application/json")

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        req = parse_chat_request(await request.body())
        if req.model != serving.model_id:
            raise APIError(
                404,
                f"The model '{req.model}' does not exist; this server serves '{serving.model_id}'",
                param="model",
                code="model_not_found",
            )
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(req, name):
                raise APIError(400, f"'{name}' is not supported by the llama.cpp stage server", param=name)
        if req.calls_tools:
            raise APIError(400, "'tools' are not supported by this llama.cpp stage server yet", param="tools")
        if req.structured is not None:
            raise APIError(
                400, f"'response_format' {req.structured} is not supported by this llama.cpp stage server yet", param="response_format"
            )
        if any(m.role == "tool" or m.tool_calls for m in req.messages):
            raise APIError(400, "tool calls in the history are not supported by this llama.cpp stage server yet", param="messages")
        prompt = serving.prompt_tokens(req)
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if req.stream:
            return StreamingResponse(_stream(serving, req, prompt, rid, created), media_type="text/event-stream")
        loop = asyncio.get_running_loop()
        try:
            prompt_lp = await loop.run_in_executor(None, serving.score, req, prompt) if req.prompt_logprobs is not None else None
            done = await loop.run_in_executor(None, serving.complete, req, prompt)
        except ContextOverflow as exc:
            raise APIError(400, str(exc), param="max_tokens", code="context_length_exceeded") from None
        choice: dict[str, object] = {
            "index": 0,
            "message": {"role": "assistant", "content": done.text},
            "logprobs": {"content": [serving.logprob_entry(s) for s in done.tokens]} if req.logprobs else None,
            "finish_reason": done.finish_reason,
        }
        body = {
            "id": rid,
            "object": "chat.completion",
            "created": created,
            "model": serving.model_id,
            "choices": [choice],
            "usage": _usage(done.prompt_tokens, len(done.tokens)),
        }
        if prompt_lp is not None:
            body["prompt_logprobs"] = prompt_lp
            body["prompt_token_ids"] = prompt
        return Response(orjson.dumps(body), media_type="application/json")

    return app


async def _stream(serving: StageServing, req: ChatCompletionRequest, prompt: list[int], rid: str, created: int) -> AsyncIterator[bytes]:
    """SSE in OpenAI's chunk format; decoding runs on a thread feeding a queue."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Step | None, str | None] | BaseException | None] = asyncio.Queue()
    cancelled = threading.Event()

    def work() -> None:
        try:
            for item in serving.decode(req, prompt, cancelled):
                loop.call_soon_threadsafe(queue.put_nowait, item)
        except BaseException as exc:  # reported to the client as an error event
            loop.call_soon_threadsafe(queue.put_nowait, exc)
        loop.call_soon_threadsafe(queue.put_nowait, None)

    def chunk(delta: dict[str, object], finish: str | None, logprobs: object = None) -> bytes:
        body = {
            "id": rid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": serving.model_id,
            "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
        }
        return b"data: " + orjson.dumps(body) + b"\n\n"

    future = loop.run_in_executor(None, work)
    n_completion = 0
    try:
        yield chunk({"role": "assistant", "content": ""}, None)
        while (item := await queue.get()) is not None:
            if isinstance(item, BaseException):
                yield b"data: " + orjson.dumps(APIError(500, f"generation failed: {item}", type="server_error").body()) + b"\n\n"
                break
            text, step, finish = item
            if step is not None:
                n_completion += 1
            lp = {"content": [serving.logprob_entry(step)]} if (req.logprobs and step is not None) else None
            if text or lp or finish:
                yield chunk({"content": text} if text else {}, finish, lp)
        if req.include_usage:
            usage = {
                "id": rid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": serving.model_id,
                "choices": [],
                "usage": _usage(len(prompt), n_completion),
            }
            yield b"data: " + orjson.dumps(usage) + b"\n\n"
        yield b"data: [DONE]\n\n"
    finally:
        cancelled.set()
        await future


def main(argv: list[str] | None = None) -> None:
    from servers.weights import resolve

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, help="catalog key of the GGUF weights (see servers/weights.py)")
    parser.add_argument("--model-id", help="model id to serve (default: the weights key)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--n-ctx", type=int, default=4096)
    args = parser.parse_args(argv)
    engine = LlamaEngine(str(resolve(args.weights)), n_ctx=args.n_ctx, n_threads=args.threads)
    app = create_app(StageServing(engine, args.model_id or args.weights))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
