"""What the cascade engine needs of an OpenAI API: the ``CascadeDialect`` protocol.

``router.cascade.CascadeEngine`` walks the ladder the same way for every API it
serves; what differs is how a stage is called (``/chat/completions`` or
``/completions``, how logprobs are asked for) and how its answer is read
(``message.content`` and ``logprobs.content`` entries, or ``text`` and the
completions logprobs shape). A dialect says that, and nothing else: the loop, the
predictor (one feature vector: a completion's logprobs are read into the same
arrays, ``AnswerStats.from_completion_choice``), the stopping rule and draft
verification (the dialect's ``draft``, a ``router.draft.DraftIO``) are shared.

Each API's dialect lives in its own package: ``router.openai.chat.dialect.CHAT_DIALECT``
and ``router.openai.completions.dialect.COMPLETIONS_DIALECT``. The Responses API
has none of its own: it is served as chat.

A dialect's methods sit on the engine's hot path: ``reply`` and ``stream`` return
the stage's own awaitables rather than wrapping them in a coroutine of their own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Mapping
from typing import Any, Protocol

from predictor.serving.features import AnswerStats
from router.draft import DraftIO
from router.stage import Stage, StageReply

STREAM_USAGE: dict[str, Any] = {"stream": True, "stream_options": {"include_usage": True}}  # a stream that ends with its usage


class CascadeDialect(Protocol):
    """How the engine asks a stage and reads its answer in one API (module docstring)."""

    @property
    def name(self) -> str:
        """``chat`` or ``completions``."""
        ...

    @property
    def draft(self) -> DraftIO:
        """How a larger stage verifies a draft in this API."""
        ...

    @property
    def early_exit(self) -> bool:
        """Whether a stage may be judged while it writes (its stream read chunk by chunk, the prefix model at checkpoints)."""
        ...

    def asking(self, body: dict[str, Any], top_k: int) -> dict[str, Any]:
        """The upstream body asking for the predictor's ``top_k`` alternatives per token (more if the client asked)."""
        ...

    def plain(self, body: dict[str, Any]) -> dict[str, Any]:
        """The upstream body without logprobs (for a stage configured without them)."""
        ...

    def client_logprobs(self, body: Mapping[str, Any]) -> bool:
        """Whether the client asked for logprobs (then a reply's deferred logprobs are decoded)."""
        ...

    def reply(self, stage: Stage, body: dict[str, Any], top_k: int | None) -> Awaitable[StageReply]:
        """The stage's whole answer to ``body`` (``top_k``: with the predictor's arrays read off the bytes)."""
        ...

    def stream(self, stage: Stage, body: dict[str, Any]) -> Awaitable[AsyncIterator[bytes]]:
        """The stage's stream of ``body`` (its SSE payloads), with a usage chunk at the end (the router sums it)."""
        ...

    def stats(self, choice: Mapping[str, Any], k: int) -> AnswerStats:
        """The predictor's arrays of an answer already decoded (a merged draft, or bytes the scanner declined)."""
        ...

    def text(self, choice: Mapping[str, Any]) -> str:
        """The answer's text."""
        ...

    def answered(self, choice: Mapping[str, Any]) -> bool:
        """Whether the answer says anything (text, or tool calls)."""
        ...

    def entries(self, choice: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The answer's logprobs as chat entries (a sampled draft's proposal distribution)."""
        ...

    def prompt_texts(self, body: Mapping[str, Any]) -> list[str]:
        """The prompt as the traffic log stores it."""
        ...

    def log_choice(self, choice: dict[str, Any]) -> dict[str, Any]:
        """The answer as the traffic log reads it (a chat choice)."""
        ...

    def log_kind(self, kind: str) -> str:
        """The traffic log's ``kind`` of a request of ``kind`` (``router.validity.RequestKind``)."""
        ...
