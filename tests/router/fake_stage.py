"""A scripted stage and a scripted predictor: stubs for in-process unit tests of the engine and the app.

Not a model and not a server: ``FakeStage`` implements ``router.stage.Stage``
in the test's own event loop, so the cascade engine and the FastAPI app can be
driven through ``httpx.ASGITransport`` with no process and no network, in
milliseconds. What it answers is scripted (``Script``: text, per-token
logprobs, usage, finish reason); it can fail on demand (``StageUnavailable``,
``StageTimeout``, ``StageBadResponse``, before the answer or in the middle of a
stream) and it streams.

It also behaves like a tiny deterministic model where the router relies on
it: its scripted text is its greedy answer, so a request that continues an
assistant message (``continue_final_message``) gets the rest of that answer,
``max_tokens`` cuts it (finish ``length``), and a scoring request
(``prompt_logprobs``) ranks each token of the assistant text 1 where it
matches the scripted answer. That is enough for draft verification
(``router.draft``) to run against it. Tokens are words with their leading
white space.

A script can answer with tool calls (``Script.tool_calls``, OpenAI's shape, the
arguments as JSON text or as anything else a broken model might send): the
message then carries them (content null unless the script also has text),
finish ``tool_calls``, and a stream sends them as ``delta.tool_calls`` the way
OpenAI and vLLM do (name first, the arguments in pieces). JSON answers are just
scripted text. The fake answers what it is scripted to whatever the request's
``tools``/``tool_choice``/``response_format`` say: that is how tests make a stage
break them.

It serves ``/v1/completions`` too (``complete``/``complete_stream``, the
completions logprobs shape): its scripted text answers ``Script.completion_prompt``,
and a prompt that extends that prompt is continued the way chat continues an
assistant prefix, so the text appended to the prompt counts as the answer so far;
``echo`` scores every position of the prompt (rank 1 where an appended token is
the scripted one). Tokenizing prompt + appended text as one string, as real
tokenizers do, merges a word that straddles the boundary (``"A:"`` + ``"The"``).
With ``serves_completions=False`` it is a chat-only provider (``StageNoCompletions``,
what ``StageClient`` raises on a 404 there).

The real-server tests stay the reference for what real stages do:
``tests/router/test_chat_live.py``, ``test_draft_live.py`` and
``test_api_errors.py`` run llama.cpp stages and the stub server as processes.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from common.completions_protocol import DEFAULT_COMPLETION_TOKENS, CompletionLogprobs
from common.settings import StageConfig
from predictor.serving.features import INDEX, PromptStats
from predictor.serving.lengths import OutputLengths
from router.stage import StageFailure, StageNoCompletions, StageReply

_TOKEN = re.compile(r"\s*\S+|\s+$")
_STAGE = INDEX["stage_index"]


def tokenize(text: str) -> list[str]:
    """The fake's tokenizer: words with their leading white space (``"a b"`` -> ``["a", " b"]``)."""
    return _TOKEN.findall(text)


@dataclass
class Script:
    """What a ``FakeStage`` answers: its (greedy) answer and how it reports it."""

    text: str = "The answer is 4."
    logprobs: Sequence[float] | None = None  # per token (default: ``logprob`` for every token)
    logprob: float = -0.05
    prompt_tokens: int = 12  # reported for the request's own prompt (an assistant prefix adds its tokens)
    completion_tokens: int | None = None  # reported (default: the tokens generated)
    finish_reason: str = "stop"  # when the whole answer was generated
    usage: bool = True  # report usage at all
    tool_calls: list[dict[str, Any]] | None = None  # OpenAI ``message.tool_calls``, sent as they are
    completion_prompt: str | None = None  # the /v1/completions prompt the text answers (None: any prompt, never continued)

    @property
    def tokens(self) -> list[str]:
        return tokenize(self.text)

    def token_logprob(self, i: int) -> float:
        return float(self.logprobs[i]) if self.logprobs is not None and i < len(self.logprobs) else self.logprob


@dataclass
class FakeStage:
    """A ``router.stage.Stage`` that answers from a ``Script`` (module docstring).

    ``fail``: every call raises that ``StageFailure`` subclass (set it any time); with
    ``stream_fail_after`` a stream raises it after that many content chunks instead (and
    non-streaming calls answer). ``calls`` holds every request body received,
    ``started``/``closed`` the lifecycle.
    """

    config: StageConfig
    script: Script = field(default_factory=Script)
    fail: type[StageFailure] | None = None
    stream_fail_after: int | None = None
    delay_s: float = 0.0  # per call, so that timings are measurable
    up: bool = True  # what ``healthy()`` says
    serves_completions: bool = True  # False: a chat-only provider (its /completions is a 404)
    calls: list[dict[str, Any]] = field(default_factory=list)
    started: bool = False
    closed: bool = False
    streamed: int = 0  # payloads the latest stream yielded before it ended or was closed
    name: str = field(init=False)

    def __post_init__(self) -> None:
        self.name = self.config.name

    # -- lifecycle ------------------------------------------------------------
    async def start(self) -> None:
        self.started = True

    async def close(self) -> None:
        self.closed = True

    async def healthy(self) -> bool:
        return self.up

    # -- calls ----------------------------------------------------------------
    async def reply(self, body: dict[str, Any], top_k: int | None = None) -> StageReply:
        t0 = time.perf_counter()
        await self._enter(body)
        raw = orjson.dumps(self.completion(body))
        try:
            return StageReply.parse(raw, time.perf_counter() - t0, top_k, self.name)
        except ValueError as exc:  # the fake's own bug, but report it as the real client would
            raise AssertionError(f"fake stage built a bad completion: {exc}") from None

    async def chat(self, body: dict[str, Any]) -> tuple[dict[str, Any], float]:
        reply = await self.reply(body)
        return reply.data, reply.seconds

    async def stream(self, body: dict[str, Any], raw: bool = False) -> AsyncIterator[bytes]:
        await self._enter(body)
        payloads = self._chunks(body)
        return self._blocks(payloads) if raw else self._payloads(payloads)

    async def complete(self, body: dict[str, Any], top_k: int | None = None) -> StageReply:
        t0 = time.perf_counter()
        await self._enter(body, completions=True)
        raw = orjson.dumps(self.text_completion(body))
        try:
            return StageReply.parse_completion(raw, time.perf_counter() - t0, top_k, self.name)
        except ValueError as exc:
            raise AssertionError(f"fake stage built a bad completion: {exc}") from None

    async def complete_stream(self, body: dict[str, Any], raw: bool = False) -> AsyncIterator[bytes]:
        await self._enter(body, completions=True)
        payloads = self._completion_chunks(body)
        return self._blocks(payloads) if raw else self._payloads(payloads)

    async def _enter(self, body: dict[str, Any], completions: bool = False) -> None:
        if completions and not self.serves_completions:
            raise StageNoCompletions(
                self.name, "HTTP 404 on /completions: scripted chat-only provider (a stage without completions: set completions: false)"
            )
        self.calls.append(body)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail is not None and self.stream_fail_after is None:
            raise self.fail(self.name, f"scripted {self.fail.__name__}")

    # -- what it answers --------------------------------------------------------
    def _generate(self, body: dict[str, Any]) -> tuple[list[str], list[float], int, str]:
        """(tokens, their logprobs, prefix tokens, finish reason) for a request: the scripted answer after
        the assistant prefix the request continues (if it continues one), cut at ``max_tokens``."""
        own = self.script.tokens
        messages = body.get("messages") or []
        prefix: list[str] = []
        if body.get("continue_final_message") and messages and messages[-1].get("role") == "assistant":
            prefix = tokenize(messages[-1].get("content") or "")
        start = len(prefix) if own[: len(prefix)] == prefix else len(own)  # off the script: nothing more to say
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        end = len(own) if limit is None else min(len(own), start + int(limit))
        finish = self.script.finish_reason if end == len(own) else "length"
        if self.script.tool_calls and finish == "stop":
            finish = "tool_calls"
        return own[start:end], [self.script.token_logprob(i) for i in range(start, end)], len(prefix), finish

    def _entry(self, token: str, logprob: float, k: int) -> dict[str, Any]:
        top = [{"token": token, "logprob": logprob, "bytes": list(token.encode())}]
        top += [{"token": f"x{i}", "logprob": logprob - 3.0 - i, "bytes": list(f"x{i}".encode())} for i in range(1, k)]
        return {"token": token, "logprob": logprob, "bytes": list(token.encode()), "top_logprobs": top[:k]}

    def _usage(self, prefix: int, completion: int) -> dict[str, int] | None:
        if not self.script.usage:
            return None
        prompt = self.script.prompt_tokens + prefix
        completion = self.script.completion_tokens if self.script.completion_tokens is not None else completion
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def _scores(self, body: dict[str, Any]) -> list[dict[str, dict[str, Any]] | None]:
        """``prompt_logprobs`` (vLLM's shape) of the assistant text: rank 1 where it is the scripted token."""
        own = self.script.tokens
        text = body["messages"][-1].get("content") or ""
        positions: list[dict[str, dict[str, Any]] | None] = [None, {"0": {"decoded_token": "<prompt>", "logprob": -1.0, "rank": 1}}]
        for i, token in enumerate(tokenize(text)):
            mine = own[i] if i < len(own) else None
            if token == mine:
                positions.append({"1": {"decoded_token": token, "logprob": self.script.token_logprob(i), "rank": 1}})
            else:
                entry: dict[str, dict[str, Any]] = {"1": {"decoded_token": token, "logprob": -4.0, "rank": 2}}
                if mine is not None:
                    entry["2"] = {"decoded_token": mine, "logprob": self.script.token_logprob(i), "rank": 1}
                positions.append(entry)
        return positions

    def completion(self, body: dict[str, Any]) -> dict[str, Any]:
        """The chat completion this stage answers ``body`` with."""
        tokens, logprobs, prefix, finish = self._generate(body)
        k = int(body.get("top_logprobs") or 0)
        entries = [self._entry(t, lp, k) for t, lp in zip(tokens, logprobs, strict=True)]
        message: dict[str, Any] = {"role": "assistant", "content": "".join(tokens)}
        if self.script.tool_calls:
            message["content"] = message["content"] or None
            message["tool_calls"] = self.script.tool_calls
        choice: dict[str, Any] = {
            "index": 0,
            "message": message,
            "logprobs": {"content": entries} if body.get("logprobs") else None,
            "finish_reason": finish,
        }
        out: dict[str, Any] = {"id": f"chatcmpl-{self.name}", "object": "chat.completion", "created": 0, "model": self.config.model}
        out["choices"] = [choice]
        if body.get("prompt_logprobs") is not None:
            out["prompt_logprobs"] = self._scores(body)
        usage = self._usage(prefix, len(tokens))
        if usage is not None:
            out["usage"] = usage
        return out

    def _chunks(self, body: dict[str, Any]) -> list[bytes]:
        """The SSE payloads of a stream (without ``data: `` and without ``[DONE]``)."""
        tokens, logprobs, prefix, finish = self._generate(body)
        k = int(body.get("top_logprobs") or 0)
        base = {"id": f"chatcmpl-{self.name}", "object": "chat.completion.chunk", "created": 0, "model": self.config.model}

        def chunk(delta: dict[str, Any], finish_reason: str | None = None, logprobs: Any = None) -> bytes:
            return orjson.dumps({**base, "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}]})

        out = [chunk({"role": "assistant", "content": ""})]
        for t, lp in zip(tokens, logprobs, strict=True):
            out.append(chunk({"content": t}, None, {"content": [self._entry(t, lp, k)]} if body.get("logprobs") else None))
        for i, call in enumerate(self.script.tool_calls or ()):
            fn = call.get("function") or {}
            head = {"index": i, "id": call.get("id"), "type": "function", "function": {"name": fn.get("name"), "arguments": ""}}
            out.append(chunk({"tool_calls": [head]}))
            args = fn.get("arguments")
            pieces = [args[: len(args) // 2], args[len(args) // 2 :]] if isinstance(args, str) else [args]
            out.extend(chunk({"tool_calls": [{"index": i, "function": {"arguments": piece}}]}) for piece in pieces)
        out.append(chunk({}, finish))
        usage = self._usage(prefix, len(tokens))
        if usage is not None and (body.get("stream_options") or {}).get("include_usage"):
            out.append(orjson.dumps({**base, "choices": [], "usage": usage}))
        return out

    def _maybe_fail(self, sent: int) -> None:
        if self.fail is not None and self.stream_fail_after is not None and sent > self.stream_fail_after:  # the role chunk, then that many
            raise self.fail(self.name, f"scripted {self.fail.__name__} mid-stream")

    async def _payloads(self, payloads: list[bytes]) -> AsyncIterator[bytes]:
        self.streamed = 0
        for sent, payload in enumerate(payloads):
            self._maybe_fail(sent)
            self.streamed += 1
            yield payload
            await asyncio.sleep(0)

    async def _blocks(self, payloads: list[bytes]) -> AsyncIterator[bytes]:
        for sent, payload in enumerate(payloads):
            self._maybe_fail(sent)
            yield b"data: " + payload + b"\n\n"
            await asyncio.sleep(0)
        yield b"data: [DONE]\n\n"

    # -- /v1/completions ----------------------------------------------------------
    def _completion_split(self, prompt: str) -> tuple[list[str], list[str] | None]:
        """A completions prompt as (its own tokens, the answer text appended to ``Script.completion_prompt``).

        Appended is ``[]`` for a prompt that does not extend the scripted one, and None (off the script) where the
        prompt's last word and the appended text tokenize into one token: the prompt itself changed.
        """
        tokens = tokenize(prompt)
        base = self.script.completion_prompt
        if base is None or not prompt.startswith(base) or prompt == base:
            return tokens, []
        n_base = len(tokenize(base))
        if tokens[:n_base] != tokenize(base):
            return tokens, None
        return tokens[:n_base], tokens[n_base:]

    def _completion_generate(self, body: dict[str, Any]) -> tuple[list[str], list[float], list[str], list[str], str]:
        """(tokens, their logprobs, the prompt's own tokens, the appended answer tokens, finish reason) for a
        completions request: the scripted answer after what the prompt appended, cut at ``max_tokens`` (default 16)."""
        own = self.script.tokens
        head, appended = self._completion_split(str(body["prompt"]))
        if appended is None:
            start, appended = len(own), []
        else:
            start = len(appended) if own[: len(appended)] == appended else len(own)  # off the script: nothing more to say
        limit = body.get("max_tokens")
        end = min(len(own), start + (DEFAULT_COMPLETION_TOKENS if limit is None else int(limit)))
        finish = self.script.finish_reason if end == len(own) else "length"
        return own[start:end], [self.script.token_logprob(i) for i in range(start, end)], head, appended, finish

    def _alternatives(self, token: str, logprob: float, k: int) -> list[tuple[str, float]]:
        return [(token, logprob), *((f"x{i}", logprob - 3.0 - i) for i in range(1, k))][:k]

    def _echo(self, head: list[str], appended: list[str], out: CompletionLogprobs, k: int) -> None:
        """The prompt's positions: the first without a logprob, the prompt's own at -1, each appended token
        ranked against the scripted one at its position."""
        own = self.script.tokens
        for i, token in enumerate(head):
            out.add(token, None if i == 0 else -1.0, None if i == 0 else [(token, -1.0)])
        for i, token in enumerate(appended):
            mine = own[i] if i < len(own) else None
            if token == mine:
                out.add(token, self.script.token_logprob(i), self._alternatives(token, self.script.token_logprob(i), k))
            elif mine is not None:
                out.add(token, -4.0, [(mine, self.script.token_logprob(i))])
            else:
                out.add(token, -4.0, [("<|endoftext|>", -0.1)])

    def text_completion(self, body: dict[str, Any]) -> dict[str, Any]:
        """The ``text_completion`` this stage answers a completions ``body`` with."""
        tokens, logprobs, head, appended, finish = self._completion_generate(body)
        k = body.get("logprobs")
        out = CompletionLogprobs() if k is not None else None
        text = "".join(tokens)
        if body.get("echo"):
            text = str(body["prompt"]) + text
            if out is not None:
                self._echo(head, appended, out, int(k or 0))
        if out is not None:
            for t, lp in zip(tokens, logprobs, strict=True):
                out.add(t, lp, self._alternatives(t, lp, int(k or 0)))
        choice = {"index": 0, "text": text, "logprobs": out.take() if out is not None else None, "finish_reason": finish}
        data: dict[str, Any] = {"id": f"cmpl-{self.name}", "object": "text_completion", "created": 0, "model": self.config.model}
        data["choices"] = [choice]
        usage = self._usage(len(appended), len(tokens))
        if usage is not None:
            data["usage"] = usage
        return data

    def _completion_chunks(self, body: dict[str, Any]) -> list[bytes]:
        tokens, logprobs, _, appended, finish = self._completion_generate(body)
        k = body.get("logprobs")
        base = {"id": f"cmpl-{self.name}", "object": "text_completion", "created": 0, "model": self.config.model}
        out = CompletionLogprobs()

        def chunk(text: str, finish_reason: str | None = None, lp: Any = None) -> bytes:
            return orjson.dumps({**base, "choices": [{"index": 0, "text": text, "logprobs": lp, "finish_reason": finish_reason}]})

        chunks = [chunk(str(body["prompt"]))] if body.get("echo") else []
        for t, lp in zip(tokens, logprobs, strict=True):
            if k is not None:
                out.add(t, lp, self._alternatives(t, lp, int(k)))
            chunks.append(chunk(t, None, out.take() if k is not None else None))
        chunks.append(chunk("", finish))
        usage = self._usage(len(appended), len(tokens))
        if usage is not None and (body.get("stream_options") or {}).get("include_usage"):
            chunks.append(orjson.dumps({**base, "choices": [], "usage": usage}))
        return chunks


def fake_stages(configs: Sequence[StageConfig], *scripts: Script) -> list[FakeStage]:
    """One fake per configured stage; stage i answers ``scripts[i]`` (default: a ``Script()``)."""
    return [FakeStage(c, scripts[i] if i < len(scripts) else Script()) for i, c in enumerate(configs)]


@dataclass
class ScriptedPredictor:
    """A ``predictor.serving.interface.Predictor`` whose p̂ is set per stage by the test (``p_hat[stage]``).

    ``features`` keeps every feature vector it was asked about (the engine computed them).
    """

    p_hat: dict[int, float]
    stage_priors: list[float]
    name: str = "scripted"
    trained: bool = True
    evidence: float = 50.0
    top_k: int = 5
    features: list[np.ndarray] = field(default_factory=list)
    lengths: tuple[OutputLengths, ...] = ()
    checkpoints: tuple[int, ...] = ()
    prefix_strengths: tuple[float, ...] = ()
    prefix_p: dict[int, float] = field(default_factory=dict)  # stage -> P(finished answer acceptable | a prefix)
    prefixes: list[np.ndarray] = field(default_factory=list)

    def predict_prefix(self, features: np.ndarray) -> float | None:
        self.prefixes.append(features)
        return self.prefix_p.get(int(features[_STAGE]))

    def predict(self, features: np.ndarray) -> float:
        self.features.append(features)
        return self.p_hat[int(features[_STAGE])]

    def priors(self, prompt: PromptStats, n_stages: int) -> list[float]:
        return self.stage_priors[:n_stages]

    def beliefs_after(self, stage: int, answer_features: np.ndarray, prompt: PromptStats, n_stages: int) -> list[float]:
        """The scripted priors of the stages above: an answer teaches this predictor nothing about them."""
        return self.stage_priors[stage + 1 : n_stages]
