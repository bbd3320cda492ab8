"""Validated requests into engine calls, and engine results into OpenAI's shapes.

``StageServing`` is everything between the HTTP routes (``servers/stage_app.py``)
and the model (``LlamaEngine``): the prompt rendered with the model's own chat
template, the token limits against the context, the grammar a request decodes
under, the tool calls parsed out of the text, the decoding loop, the scoring
behind ``prompt_logprobs``, and the logprob entries the client sees.

It is synchronous on purpose. A llama.cpp context is not re-entrant, so every
engine call holds one lock and requests run one at a time; the routes call
these methods on a worker thread, so the event loop stays free for health
checks and new connections.

Beyond plain chat, as vLLM's OpenAI server does:

* tools (``tools``, ``tool_choice``, ``parallel_tool_calls``, calls and results in
  the history) through the model's own chat template; see ``servers/tools.py``.
  A model whose template has no tool format answers a tool request with a 400
  rather than ignoring the tools.
* vLLM's sampling extras: ``top_k``, ``min_p``, ``repetition_penalty``,
  ``min_tokens`` (``LlamaEngine.generate``; no stop string counts before
  ``min_tokens`` either, as in vLLM) and ``chat_template_kwargs`` (extra
  variables of the chat template, e.g. Qwen3's ``enable_thinking``).
* structured outputs (``response_format`` ``json_object`` / ``json_schema``) by
  grammar-constrained decoding; see ``servers/grammar.py``. The logprobs reported
  under a grammar are the raw model's, as vLLM reports them (``LlamaEngine.generate``).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from common.errors import APIError
from common.protocol import ChatCompletionRequest, ChatMessage
from servers.chat_template import ChatTemplateError
from servers.completions import CompletionLogprobs, CompletionRequest
from servers.grammar import GrammarBuilder, GrammarError, TokenConstraint
from servers.llama_engine import LlamaEngine, ScoredToken, Step
from servers.sampling import Sampling, StopMatcher
from servers.tools import ParsedCall, ToolCallParser, detect_tool_format, template_tools, tool_choice_name

DEFAULT_MAX_TOKENS = 512  # a request that names no limit gets this many tokens at most (and never more than the context leaves)


@dataclass
class Delta:
    """One step of decoding as the client sees it: new content, the step's token, tool calls completed, the finish."""

    text: str
    step: Step | None
    finish: str | None = None
    calls: list[ParsedCall] = field(default_factory=list)


@dataclass
class Completion:
    """A whole (non-streamed) answer: its text and per-token details, accumulated while decoding."""

    text: str = ""
    finish_reason: str = "length"
    tokens: list[Step] = field(default_factory=list)
    calls: list[ParsedCall] = field(default_factory=list)
    prompt_tokens: int = 0


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
            extra=req.chat_template_kwargs,
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
            **sampling_extras(req),
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
        stopper = StopMatcher(sampling.stops)
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
                    top_k=sampling.top_k,
                    min_p=sampling.min_p,
                    repetition_penalty=sampling.repetition_penalty,
                    min_tokens=sampling.min_tokens,
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
                    out, stopped = stopper.feed(text, check=produced >= sampling.min_tokens)
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

    def complete(self, sampling: Sampling, prompt: list[int]) -> Completion:
        result = Completion(prompt_tokens=len(prompt))
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


def sampling_extras(req: ChatCompletionRequest | CompletionRequest) -> dict[str, Any]:
    """vLLM's sampling extras of a request as ``Sampling`` fields (each unset one: off)."""
    return {
        "top_k": req.top_k or 0,  # -1 is off too
        "min_p": req.min_p or 0.0,
        "repetition_penalty": 1.0 if req.repetition_penalty is None else req.repetition_penalty,
        "min_tokens": req.min_tokens or 0,
    }


def token_usage(prompt: int, completion: int) -> dict[str, int]:
    """OpenAI's ``usage`` object."""
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def echo_logprobs(serving: StageServing, prompt: list[int], k: int, out: CompletionLogprobs) -> None:
    """The prompt's positions of a completions ``logprobs`` object (``echo``): the first one has none."""
    loop = asyncio.get_running_loop()
    scored = await loop.run_in_executor(None, serving.score_tokens, prompt, k)
    for token, s in zip(prompt, scored, strict=True):
        if s is None:
            serving.add_completion_logprob(out, token, None, None)
        else:
            serving.add_completion_logprob(out, token, s.logprob, s.top)
