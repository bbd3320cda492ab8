"""Our thin OpenAI-compatible stage server over one llama.cpp model (CPU).

It speaks the same dialect as a vLLM OpenAI server for everything the router
uses -- chat completions with ``logprobs``/``top_logprobs``, streaming, and the
vLLM extras ``prompt_logprobs`` and ``continue_final_message`` -- so the router
has one client for CPU and GPU stages. One process serves one model; requests
run one at a time on a worker thread (a llama.cpp context is not re-entrant),
so the event loop stays free for health checks and new connections.

Beyond plain chat, as vLLM's OpenAI server does:

* tools (``tools``, ``tool_choice``, ``parallel_tool_calls``, calls and results in
  the history) through the model's own chat template; see ``servers/tools.py``.
  A model whose template has no tool format answers a tool request with a 400.
* structured outputs (``response_format`` ``json_object`` / ``json_schema``) by
  grammar-constrained decoding; see ``servers/grammar.py``. With a grammar the
  reported logprobs are those of the constrained distribution (``LlamaEngine.generate``).
* ``POST /v1/completions`` (``servers/completions.py``) and ``GET /v1/models/{id}``.

Run: ``python -m servers.llama_server --weights qwen2.5-coder-0.5b-instruct --port 8101``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvicorn
from fastapi import FastAPI, Request
from starlette.responses import Response, StreamingResponse

from common.errors import APIError, parse_chat_request
from common.protocol import ChatCompletionRequest, ChatMessage
from servers.chat_template import ChatTemplateError
from servers.completions import CompletionLogprobs, CompletionRequest, parse_completion_request
from servers.grammar import GrammarBuilder, GrammarError, TokenConstraint
from servers.llama_engine import ContextOverflow, LlamaEngine, ScoredToken, Step
from servers.tools import ParsedCall, ToolCallParser, detect_tool_format, template_tools, tool_choice_name

DEFAULT_MAX_TOKENS = 512


@dataclass
class Sampling:
    """What one generation needs, whichever endpoint asked for it."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    stops: list[str] = field(default_factory=list)
    constraint: TokenConstraint | None = None  # grammar-constrained decoding (single use)
    tools: ToolCallParser | None = None  # the generated text is parsed for tool calls (single use)


@dataclass
class Delta:
    """One step of decoding as the client sees it: new content, the step's token, tool calls completed, the finish."""

    text: str
    step: Step | None
    finish: str | None = None
    calls: list[ParsedCall] = field(default_factory=list)


@dataclass
class _Completion:
    """Text and per-token details accumulated while decoding."""

    text: str = ""
    finish_reason: str = "length"
    tokens: list[Step] = field(default_factory=list)
    calls: list[ParsedCall] = field(default_factory=list)
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
        self.tool_format = detect_tool_format(engine.template.source)
        self._lock = threading.Lock()
        # every token decoded since start, streamed or not: shows that a closed stream stops decoding at once (the
        # router aborts a stage it judges while it writes by closing its stream)
        self.decoded_tokens = 0

    # -- prompt ---------------------------------------------------------------
    def check_tools(self, req: ChatCompletionRequest) -> None:
        """A model whose template has no tool format refuses tools and tool history (400) instead of ignoring them."""
        if self.tool_format is not None:
            return
        if req.calls_tools:
            raise APIError(400, f"model '{self.model_id}' does not support tool calling: its chat template has no tools", param="tools")
        for i, m in enumerate(req.messages):
            if m.role == "tool" or m.tool_calls:
                what = "tool_calls" if m.tool_calls else "role"
                raise APIError(
                    400,
                    f"model '{self.model_id}' does not support tool calling: its chat template cannot render tool calls or results",
                    param=f"messages[{i}].{what}",
                )

    def render(
        self, req: ChatCompletionRequest, messages: Sequence[ChatMessage], *, add_generation_prompt: bool, continue_final: bool
    ) -> str:
        tools = template_tools(req.tools) if req.calls_tools and req.tools else None
        return self.engine.template.render(
            _template_messages(messages),
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final,
            tools=tools,
        )

    def prompt_tokens(self, req: ChatCompletionRequest) -> list[int]:
        try:
            text = self.render(
                req, req.messages, add_generation_prompt=req.add_generation_prompt, continue_final=req.continue_final_message
            )
        except ChatTemplateError as exc:
            raise APIError(400, str(exc), param="messages") from None
        return self._fit(self.engine.tokenize(text), "messages", "the messages take")

    def _fit(self, tokens: list[int], param: str, what: str) -> list[int]:
        if len(tokens) >= self.engine.n_ctx:
            raise APIError(
                400,
                f"This model's maximum context length is {self.engine.n_ctx} tokens; {what} {len(tokens)}",
                param=param,
                code="context_length_exceeded",
            )
        return tokens

    def _token_limit(self, asked: int | None, n_prompt: int) -> int:
        room = self.engine.n_ctx - n_prompt
        return max(1, min(asked or DEFAULT_MAX_TOKENS, room))

    def chat_grammar(self, req: ChatCompletionRequest) -> str | None:
        """The grammar a chat request decodes under: forced tool calls, a JSON format (or a format or calls), or none."""
        fmt = self.tool_format
        tools = req.tools or []
        parallel = req.parallel_tool_calls is not False
        forced = req.calls_tools and req.tool_choice not in (None, "auto")
        if fmt is not None and forced:
            builder, body = fmt.grammar(tools, tool_choice_name(req.tool_choice), parallel)
            return builder.text(body)
        if req.structured is None or req.response_format is None:
            return None
        spec = req.response_format.json_schema
        builder = GrammarBuilder()
        try:
            body = builder.schema(spec.schema_ if spec is not None else None, "json")
        except GrammarError as exc:
            raise GrammarError(f"response_format.json_schema.schema: {exc.message}", "response_format.json_schema.schema") from None
        if fmt is not None and req.calls_tools:  # auto: a JSON answer, or calls
            builder, calls = fmt.grammar(tools, None, parallel, builder)
            body = f"{body} | {calls}"
        return builder.text(body)

    def chat_sampling(self, req: ChatCompletionRequest, n_prompt: int) -> Sampling:
        try:
            grammar = self.chat_grammar(req)
            constraint = self.engine.constraint(grammar) if grammar is not None else None
        except GrammarError as exc:
            raise APIError(400, exc.message, param=exc.param or ("tools" if req.calls_tools else "response_format")) from None
        parser = None
        if self.tool_format is not None and req.calls_tools and req.tools:
            parser = self.tool_format.parser(req.tools, req.parallel_tool_calls is not False)
        if req.continue_final_message and constraint is not None:
            self._continue_from(req.messages[-1].text(), constraint)
        return Sampling(
            max_tokens=self._token_limit(req.token_limit, n_prompt),
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            seed=req.seed,
            logprobs=bool(req.logprobs),
            top_logprobs=req.top_logprobs or 0,
            stops=req.stop_list,
            constraint=constraint,
            tools=parser,
        )

    def _continue_from(self, prefix: str, constraint: TokenConstraint) -> None:
        """``continue_final_message``: the grammar starts where the final message's text ends.

        The grammar works on text, so the prefix is fed through it as the tokens
        of that text; a prefix the grammar cannot take is a 400. (Tool calls are
        parsed in the continuation only, as vLLM parses them.)
        """
        for token in self.engine.llm.tokenize(prefix.encode("utf-8"), add_bos=False, special=False):
            if not constraint.allows(token):
                constraint.close()
                raise APIError(
                    400, "the final message does not match the required format (response_format or tool_choice)", param="messages"
                )
            constraint.accept(token)

    # -- decoding (worker thread) ---------------------------------------------
    def decode(self, sampling: Sampling, prompt: list[int], cancelled: threading.Event) -> Iterator[Delta]:
        """Yield deltas; the last has a finish reason (``tool_calls`` when calls were made and nothing cut them short)."""
        engine = self.engine
        stopper = _StopMatcher(sampling.stops)
        parser = sampling.tools
        pending = b""
        produced = 0
        finish = "stop"
        try:
            with self._lock:
                for step in engine.generate(
                    prompt,
                    max_tokens=sampling.max_tokens,
                    temperature=sampling.temperature,
                    top_p=sampling.top_p,
                    seed=sampling.seed,
                    logprobs=sampling.logprobs,
                    top_logprobs=sampling.top_logprobs,
                    constraint=sampling.constraint,
                ):
                    if cancelled.is_set():
                        return
                    produced += 1
                    self.decoded_tokens += 1
                    pending += engine.piece(step.token)
                    try:
                        text = pending.decode("utf-8")
                        pending = b""
                    except UnicodeDecodeError:
                        text = ""  # an incomplete UTF-8 sequence; wait for the next token
                    out, stopped = stopper.feed(text)
                    calls: list[ParsedCall] = []
                    if parser is not None:
                        out, calls = parser.feed(out)
                        stopped = stopped or parser.done
                    if stopped:
                        yield self._last(Delta(out, step, calls=calls), parser, "stop")
                        return
                    yield Delta(out, step, calls=calls)
                if produced >= sampling.max_tokens:
                    finish = "length"
                tail = stopper.flush() + pending.decode("utf-8", "replace")
                calls = []
                if parser is not None:
                    tail, calls = parser.feed(tail)
                yield self._last(Delta(tail, None, calls=calls), parser, finish)
        finally:
            if sampling.constraint is not None:
                sampling.constraint.close()

    @staticmethod
    def _last(delta: Delta, parser: ToolCallParser | None, finish: str) -> Delta:
        """The final delta: plus the parser's held-back text and unclosed call, and the finish reason."""
        if parser is not None:
            tail, more = parser.flush()
            delta = Delta(delta.text + tail, delta.step, calls=[*delta.calls, *more])
            if parser.calls and finish == "stop":
                finish = "tool_calls"
        delta.finish = finish
        return delta

    def complete(self, sampling: Sampling, prompt: list[int]) -> _Completion:
        result = _Completion(prompt_tokens=len(prompt))
        parts: list[str] = []
        for delta in self.decode(sampling, prompt, threading.Event()):
            parts.append(delta.text)
            result.calls += delta.calls
            if delta.step is not None:
                result.tokens.append(delta.step)
            if delta.finish:
                result.finish_reason = delta.finish
        result.text = "".join(parts)
        return result

    def final_message_start(self, req: ChatCompletionRequest, prompt: list[int]) -> int:
        """Index of the first token of the final (continued) message; 1 when it cannot be told.

        The conversation up to the final message, rendered with the generation
        prompt, must tokenize to a prefix of ``prompt``; one token of margin in
        case the boundary merges.
        """
        try:
            tokens = self.engine.tokenize(self.render(req, req.messages[:-1], add_generation_prompt=True, continue_final=False))
        except ChatTemplateError:
            return 1
        start = len(tokens) - 1
        return start if start > 1 and tokens[:start] == prompt[:start] else 1

    def score_tokens(self, prompt: list[int], k: int, first: int = 1) -> list[ScoredToken | None]:
        with self._lock:
            return self.engine.score(prompt, k, first)

    def score(self, req: ChatCompletionRequest, prompt: list[int]) -> list[object]:
        first = self.final_message_start(req, prompt) if req.prompt_logprobs_scope == "final_message" else 1
        scored = self.score_tokens(prompt, req.prompt_logprobs or 0, first)
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

    def add_completion_logprob(
        self, out: CompletionLogprobs, token: int, logprob: float | None, top: Sequence[tuple[int, float]] | None
    ) -> None:
        out.add(self._tok(token), logprob, None if top is None else [(self._tok(t), lp) for t, lp in top])


def _template_messages(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """Request messages as chat templates take them (transformers' and vLLM's shape).

    ``developer`` is a system message to a template; a call's ``arguments`` go
    in as a JSON value, not as text, because templates write them with
    ``tojson`` (Qwen's does: a string would come out quoted twice).
    """
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        message: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
        if m.tool_calls:
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {
                        "name": call.function.name,
                        "arguments": _arguments(call.function.arguments, f"messages[{i}].tool_calls[{j}]"),
                    },
                }
                for j, call in enumerate(m.tool_calls)
            ]
        if m.tool_call_id is not None:
            message["tool_call_id"] = m.tool_call_id
        if m.name is not None:
            message["name"] = m.name
        out.append(message)
    return out


def _arguments(text: str, where: str) -> Any:
    try:
        return json.loads(text) if text.strip() else {}
    except ValueError:
        raise APIError(400, f"{where}.function.arguments is not valid JSON", param=f"{where}.function.arguments") from None


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _json(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _sse(body: object) -> bytes:
    return b"data: " + orjson.dumps(body) + b"\n\n"


def create_app(serving: StageServing) -> FastAPI:
    app = FastAPI(title="adaptive-sd llama.cpp stage", docs_url=None, redoc_url=None)
    card = {"id": serving.model_id, "object": "model", "created": 0, "owned_by": "adaptive-sd", "max_model_len": serving.engine.n_ctx}

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> Response:
        return exc.response()

    def check_model(model: str) -> None:
        if model != serving.model_id:
            raise APIError(
                404,
                f"The model '{model}' does not exist; this server serves '{serving.model_id}'",
                param="model",
                code="model_not_found",
            )

    @app.get("/health")
    async def health() -> Response:
        return _json({"status": "ok", "model": serving.model_id, "decoded_tokens": serving.decoded_tokens})

    @app.get("/v1/models")
    async def models() -> Response:
        return _json({"object": "list", "data": [card]})

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> Response:
        check_model(model_id)
        return _json(card)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        req = parse_chat_request(await request.body())
        check_model(req.model)
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(req, name):
                raise APIError(400, f"'{name}' is not supported by the llama.cpp stage server", param=name)
        serving.check_tools(req)
        prompt = serving.prompt_tokens(req)
        sampling = serving.chat_sampling(req, len(prompt))
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if req.stream:
            return StreamingResponse(_chat_stream(serving, req, sampling, prompt, rid, created), media_type="text/event-stream")
        loop = asyncio.get_running_loop()
        try:
            prompt_lp = await loop.run_in_executor(None, serving.score, req, prompt) if req.prompt_logprobs is not None else None
            done = await loop.run_in_executor(None, serving.complete, sampling, prompt)
        except ContextOverflow as exc:
            raise APIError(400, str(exc), param="max_tokens", code="context_length_exceeded") from None
        message: dict[str, object] = {"role": "assistant", "content": done.text if done.text or not done.calls else None}
        if done.calls:
            message["tool_calls"] = [c.openai() for c in done.calls]
        choice: dict[str, object] = {
            "index": 0,
            "message": message,
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
        return _json(body)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        req = parse_completion_request(await request.body())
        check_model(req.model)
        text = req.prompt_text
        prompt = serving._fit(serving.engine.tokenize(text), "prompt", "the prompt takes")
        if not prompt:
            raise APIError(400, "'prompt' has no tokens", param="prompt")
        sampling = Sampling(
            max_tokens=serving._token_limit(req.token_limit, len(prompt)),
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            seed=req.seed,
            logprobs=req.logprobs is not None,
            top_logprobs=req.logprobs or 0,
            stops=req.stop_list,
        )
        rid = f"cmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if req.stream:
            return StreamingResponse(_completion_stream(serving, req, sampling, prompt, rid, created), media_type="text/event-stream")
        loop = asyncio.get_running_loop()
        logprobs = CompletionLogprobs() if req.logprobs is not None else None
        head = ""
        if req.echo:
            head = text
            if logprobs is not None:
                await _echo_logprobs(serving, prompt, req.logprobs or 0, logprobs)
        done = _Completion(prompt_tokens=len(prompt))
        if req.token_limit > 0:
            try:
                done = await loop.run_in_executor(None, serving.complete, sampling, prompt)
            except ContextOverflow as exc:
                raise APIError(400, str(exc), param="max_tokens", code="context_length_exceeded") from None
        if logprobs is not None:
            for s in done.tokens:
                serving.add_completion_logprob(logprobs, s.token, s.logprob, s.top)
        choice = {
            "index": 0,
            "text": head + done.text,
            "logprobs": logprobs.take() if logprobs else None,
            "finish_reason": done.finish_reason,
        }
        return _json(
            {
                "id": rid,
                "object": "text_completion",
                "created": created,
                "model": serving.model_id,
                "choices": [choice],
                "usage": _usage(len(prompt), len(done.tokens)),
            }
        )

    return app


async def _echo_logprobs(serving: StageServing, prompt: list[int], k: int, out: CompletionLogprobs) -> None:
    """The prompt's positions of a completions ``logprobs`` object (``echo``): the first one has none."""
    loop = asyncio.get_running_loop()
    scored = await loop.run_in_executor(None, serving.score_tokens, prompt, k)
    for token, s in zip(prompt, scored, strict=True):
        if s is None:
            serving.add_completion_logprob(out, token, None, None)
        else:
            serving.add_completion_logprob(out, token, s.logprob, s.top)


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


async def _chat_stream(
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
        yield _sse({**usage, "usage": _usage(len(prompt), n_completion)})
    yield b"data: [DONE]\n\n"


async def _completion_stream(
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
                await _echo_logprobs(serving, prompt, req.logprobs or 0, logprobs)
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
        yield _sse({**usage, "usage": _usage(len(prompt), n_completion)})
    yield b"data: [DONE]\n\n"


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
    t0 = time.perf_counter()
    generated = engine.warm_up()  # a build this CPU cannot run dies here, before /health says ok
    print(f"warm-up: {generated} tokens generated in {time.perf_counter() - t0:.2f} s", file=sys.stderr, flush=True)
    app = create_app(StageServing(engine, args.model_id or args.weights))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
