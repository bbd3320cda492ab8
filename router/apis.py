"""The two OpenAI APIs one cascade loop serves: chat completions and the legacy completions.

``router.cascade.CascadeEngine`` walks the ladder the same way for both; what
differs is how a stage is called (``/chat/completions`` or ``/completions``, how
logprobs are asked for) and how its answer is read (``message.content`` and
``logprobs.content`` entries, or ``text`` and the completions logprobs shape).
That difference is all here, as a ``CascadeAPI``: ``CHAT_API`` (an instance of
the base class) and ``COMPLETIONS_API``. The loop, the predictor (one feature vector: a
completion's logprobs are read into the same arrays, ``AnswerStats.from_completion_choice``),
the stopping rule and draft verification (``router.draft.DraftIO``) are shared.

The chat methods return the stage's own awaitables rather than wrapping them in
a coroutine of their own: this sits on the chat hot path.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Mapping
from typing import Any

from common.completions_protocol import chat_entries
from common.protocol import MAX_TOP_LOGPROBS
from predictor.serving.features import AnswerStats
from router.draft import CHAT, COMPLETIONS, DraftIO
from router.stage import Stage, StageReply, completions_stage
from router.validity import AnswerSpec

# A completions request needs a stage that serves /v1/completions; it is text, with no rules beyond that. Its field is
# ``model``: what a client changes when no stage of the model it named can serve it.
COMPLETION_SPEC = AnswerSpec("text", {"completions": "model"}, None)
_STREAM_USAGE = {"stream": True, "stream_options": {"include_usage": True}}


class CascadeAPI:
    """Chat completions (``CHAT_API``); ``CompletionsAPI`` overrides what differs for ``/v1/completions``."""

    name = "chat"
    draft: DraftIO = CHAT  # how a larger stage verifies a draft in this API

    def asking(self, body: dict[str, Any], top_k: int) -> dict[str, Any]:
        """The upstream body asking for the predictor's ``top_k`` alternatives per token (more if the client asked)."""
        return {**body, "logprobs": True, "top_logprobs": max(body.get("top_logprobs") or 0, top_k)}

    def plain(self, body: dict[str, Any]) -> dict[str, Any]:
        """The upstream body without logprobs (for a stage configured without them)."""
        return {k: v for k, v in body.items() if k not in ("logprobs", "top_logprobs")}

    def client_logprobs(self, body: Mapping[str, Any]) -> bool:
        """Whether the client asked for logprobs (then a reply's deferred logprobs are decoded)."""
        return bool(body.get("logprobs"))

    def reply(self, stage: Stage, body: dict[str, Any], top_k: int | None) -> Awaitable[StageReply]:
        return stage.reply(body, top_k=top_k)

    def stream(self, stage: Stage, body: dict[str, Any]) -> Awaitable[AsyncIterator[bytes]]:
        """The stage's stream of ``body``, with a usage chunk at the end (the router sums it)."""
        return stage.stream({**body, **_STREAM_USAGE})

    def stats(self, choice: Mapping[str, Any], k: int) -> AnswerStats:
        """The predictor's arrays of an answer already decoded (a merged draft, or bytes the scanner declined)."""
        return AnswerStats.from_choice(choice, k)

    def text(self, choice: Mapping[str, Any]) -> str:
        return str(choice["message"].get("content") or "")

    def answered(self, choice: Mapping[str, Any]) -> bool:
        """Whether the answer says anything (text or tool calls)."""
        message = choice["message"]
        return bool(message.get("content") or message.get("tool_calls"))

    def entries(self, choice: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The answer's logprobs as chat entries (a sampled draft's proposal distribution)."""
        entries: list[dict[str, Any]] = (choice.get("logprobs") or {}).get("content") or []
        return entries

    def prompt_texts(self, body: Mapping[str, Any]) -> list[str]:
        """The prompt as the traffic log stores it: each message's content."""
        contents = [m.get("content") for m in body["messages"]]
        return [c if isinstance(c, str) else json.dumps(c) for c in contents]

    def log_choice(self, choice: dict[str, Any]) -> dict[str, Any]:
        """The answer as the traffic log reads it (a chat choice)."""
        return choice

    def log_kind(self, kind: str) -> str:
        return kind


class CompletionsAPI(CascadeAPI):
    """``/v1/completions``: a raw-text prompt, no chat template; logprobs in the completions shape."""

    name = "completions"
    draft = COMPLETIONS

    def asking(self, body: dict[str, Any], top_k: int) -> dict[str, Any]:
        return {**body, "logprobs": max(body.get("logprobs") or 0, top_k)}

    def plain(self, body: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in body.items() if k != "logprobs"}

    def client_logprobs(self, body: Mapping[str, Any]) -> bool:
        return body.get("logprobs") is not None  # 0 asks for the chosen tokens' logprobs alone

    def reply(self, stage: Stage, body: dict[str, Any], top_k: int | None) -> Awaitable[StageReply]:
        return completions_stage(stage).complete(body, top_k=top_k)

    def stream(self, stage: Stage, body: dict[str, Any]) -> Awaitable[AsyncIterator[bytes]]:
        return completions_stage(stage).complete_stream({**body, **_STREAM_USAGE})

    def stats(self, choice: Mapping[str, Any], k: int) -> AnswerStats:
        return AnswerStats.from_completion_choice(choice, k)

    def text(self, choice: Mapping[str, Any]) -> str:
        return str(choice.get("text") or "")

    def answered(self, choice: Mapping[str, Any]) -> bool:
        return bool(choice.get("text"))

    def entries(self, choice: Mapping[str, Any]) -> list[dict[str, Any]]:
        return chat_entries(choice.get("logprobs"), MAX_TOP_LOGPROBS + 1)  # every alternative it has

    def prompt_texts(self, body: Mapping[str, Any]) -> list[str]:
        return [str(body["prompt"])]

    def log_choice(self, choice: dict[str, Any]) -> dict[str, Any]:
        return {"index": 0, "message": {"role": "assistant", "content": self.text(choice)},
                "logprobs": {"content": self.entries(choice)}, "finish_reason": choice.get("finish_reason")}  # fmt: skip

    def log_kind(self, kind: str) -> str:
        """Completion rows are told apart: their prompt is raw text, not messages to render with a chat template."""
        return "completion"


CHAT_API = CascadeAPI()
COMPLETIONS_API = CompletionsAPI()
