"""What the router needs from a stage: the ``Stage`` protocol, its typed failures, and the reply it returns.

``router.stage_client.StageClient`` is the implementation that talks HTTP to a
model server; the engine (``router.cascade``) and the serving layer
(``router.openai``) depend only on this protocol, so tests can run them
in-process against a scripted stage (``tests/router/fake_stage.py``).

Failures are typed so the cascade can react: ``StageUnavailable`` (cannot
connect), ``StageTimeout``, ``StageBadResponse`` (5xx or unparseable body),
``StageNoCompletions`` (a 404/405 on ``/completions``: a chat-only provider);
any other 4xx from the stage is the client's fault and is raised as an ``APIError``.

Chat completions (``reply``/``chat``/``stream``) are what every stage serves. The
legacy completions (``complete``/``complete_stream``, for ``POST /v1/completions``)
are a separate protocol, ``CompletionsStage``, that ``StageClient`` implements: a
``Stage`` implementation without those calls (one over a chat-only SDK) keeps
type-checking, and ``completions_stage`` reports it as ``StageNoCompletions``,
the way a chat-only server's 404 is reported.
Each carries the HTTP ``status`` the router reports when it cannot answer
(``router.openai.serving_base.upstream_error`` is the one place that maps them).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from common.settings import StageConfig
from predictor.serving.features import AnswerStats, scan_body


class StageFailure(Exception):
    """The stage could not produce an answer; ``status`` is what the router reports."""

    status = 502

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(f"stage '{stage}': {message}")
        self.stage = stage


class StageUnavailable(StageFailure):
    status = 503


class StageTimeout(StageFailure):
    status = 504


class StageBadResponse(StageFailure):
    status = 502


class StageNoCompletions(StageFailure):
    """The stage does not serve ``/v1/completions`` (it answered 404 or 405 there): a chat-only provider, or a model id
    it does not serve completions for. A failure rather than the client's 4xx, so that the cascade goes on without it;
    a pass-through to it is a 400 naming ``model`` (``router.openai.completions.serving``)."""

    status = 502


@dataclass(slots=True)
class StageReply:
    """A non-streaming answer: the decoded body, the bytes it came as, seconds spent.

    With ``stats`` (asked for by ``Stage.reply(..., top_k=k)``) the predictor's
    arrays were read from the bytes and the first choice's logprobs were left out of
    ``data`` (its ``logprobs`` is None): decoding a 512-token top-5 answer's logprobs
    into Python objects costs ~2 ms, and the router needs them only when the client
    asked for logprobs, for the traffic log, or to verify a sampled draft;
    ``with_logprobs()`` decodes them then. The scanner checks the span's structure and
    parses its numbers strictly but does not validate every string in it as a decoder
    would, so a span that does not decode is reported then, as the stage's bad response.
    """

    data: dict[str, Any]
    raw: bytes
    seconds: float
    stats: AnswerStats | None = None
    deferred: tuple[int, int] | None = None  # byte span of the logprobs left out of data
    stage: str = ""  # who sent it, for errors

    @classmethod
    def parse(cls, raw: bytes, seconds: float, top_k: int | None = None, stage: str = "") -> StageReply:
        """Decode a chat completion (``top_k``: deferring its logprobs); ValueError if it is not one."""
        scanned = scan_body(raw, top_k) if top_k else None
        deferred = scanned.logprobs_span if scanned is not None else None
        try:
            data = orjson.loads(raw if deferred is None else raw[: deferred[0]] + b"null" + raw[deferred[1] :])
            data["choices"][0]["message"]
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
            raise ValueError(f"not a chat completion: {exc}") from None
        return cls(data, raw, seconds, scanned.stats if scanned is not None else None, deferred, stage)

    @classmethod
    def parse_completion(cls, raw: bytes, seconds: float, top_k: int | None = None, stage: str = "") -> StageReply:
        """Decode a ``/v1/completions`` answer (``top_k``: with the predictor's arrays); ValueError if it is not one.

        Decoded whole: the compiled scanner reads chat's shape only, and completions are not the chat hot path
        (``AnswerStats.from_completion_choice`` reads the decoded dicts at C level where it can).
        """
        try:
            data = orjson.loads(raw)
            choice = data["choices"][0]
            if not isinstance(choice["text"], str):
                raise TypeError("'text' is not a string")
            stats = AnswerStats.from_completion_choice(choice, top_k) if top_k else None
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
            raise ValueError(f"not a completion: {exc}") from None
        return cls(data, raw, seconds, stats, None, stage)

    def with_logprobs(self) -> dict[str, Any]:
        """``data`` with the first choice's logprobs decoded (in place, once)."""
        if self.deferred is not None:
            start, end = self.deferred
            try:
                self.data["choices"][0]["logprobs"] = orjson.loads(self.raw[start:end])
            except orjson.JSONDecodeError as exc:
                raise StageBadResponse(self.stage, f"malformed logprobs in the chat completion: {exc}") from None
            self.deferred = None
        return self.data


class Stage(Protocol):
    """One model server of the ladder, as the engine and the serving layer use it.

    Every call raises ``StageFailure`` subclasses when the stage cannot answer, and
    ``common.errors.APIError`` when it rejects the request (4xx).
    """

    name: str  # public model name (``config.name``)
    config: StageConfig

    async def start(self) -> None:
        """Open connections; called once before the first request."""
        ...

    async def close(self) -> None: ...

    async def reply(self, body: dict[str, Any], top_k: int | None = None) -> StageReply:
        """Non-streaming chat completion; ``top_k``: read the predictor's arrays and defer decoding the logprobs."""
        ...

    async def chat(self, body: dict[str, Any]) -> tuple[dict[str, Any], float]:
        """Non-streaming chat completion, decoded whole; and seconds spent."""
        ...

    async def stream(self, body: dict[str, Any], raw: bool = False) -> AsyncIterator[bytes]:
        """Streaming chat completion: each SSE ``data:`` payload without the prefix (``[DONE]`` ends it, not yielded),
        or with ``raw`` whole SSE blocks as they arrive (``[DONE]`` included). Connection errors raise here,
        before the first payload; errors while reading raise from the iterator."""
        ...

    async def healthy(self) -> bool: ...


class CompletionsStage(Stage, Protocol):
    """A stage that also serves the legacy ``/v1/completions`` (``StageClient`` does; see ``completions_stage``)."""

    async def complete(self, body: dict[str, Any], top_k: int | None = None) -> StageReply:
        """Non-streaming ``/v1/completions`` call (``body``: a completions request without ``model``); ``top_k``: with the
        predictor's arrays (``StageReply.parse_completion``). ``StageNoCompletions`` when the stage has no such endpoint."""
        ...

    async def complete_stream(self, body: dict[str, Any], raw: bool = False) -> AsyncIterator[bytes]:
        """Streaming ``/v1/completions`` call, yielding as ``Stage.stream`` does (payloads, or with ``raw`` whole SSE blocks)."""
        ...


def completions_stage(stage: Stage) -> CompletionsStage:
    """``stage`` as a ``CompletionsStage``; ``StageNoCompletions`` when its implementation has no completions calls."""
    if callable(getattr(stage, "complete", None)) and callable(getattr(stage, "complete_stream", None)):
        return stage  # type: ignore[return-value]  # checked just above; a Protocol isinstance would check every member
    raise StageNoCompletions(stage.name, f"its client ({type(stage).__name__}) has no /v1/completions calls")
