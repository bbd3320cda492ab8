"""The chat-completions dialect of the cascade engine (``router.dialect.CascadeDialect``): ``CHAT_DIALECT``.

A stage is asked at ``/chat/completions`` with ``logprobs: true`` and ``top_logprobs: k``, and its answer is read
from ``message.content`` / ``message.tool_calls`` and the ``logprobs.content`` entries. A larger stage verifies a
draft with ``prompt_logprobs`` and ``continue_final_message`` (``router.draft.CHAT_DRAFT``).

The methods return the stage's own awaitables rather than wrapping them in a coroutine of their own: this sits on
the chat hot path.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Mapping
from typing import Any

from predictor.serving.features import AnswerStats
from router.dialect import STREAM_USAGE
from router.draft import CHAT_DRAFT, DraftIO
from router.stage import Stage, StageReply


class ChatDialect:
    """Chat completions, as the engine asks a stage and reads its answer."""

    name = "chat"
    draft: DraftIO = CHAT_DRAFT
    early_exit = True  # the prefix model was trained on chat answers' first tokens

    def asking(self, body: dict[str, Any], top_k: int) -> dict[str, Any]:
        return {**body, "logprobs": True, "top_logprobs": max(body.get("top_logprobs") or 0, top_k)}

    def plain(self, body: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in body.items() if k not in ("logprobs", "top_logprobs")}

    def client_logprobs(self, body: Mapping[str, Any]) -> bool:
        return bool(body.get("logprobs"))

    def reply(self, stage: Stage, body: dict[str, Any], top_k: int | None) -> Awaitable[StageReply]:
        return stage.reply(body, top_k=top_k)

    def stream(self, stage: Stage, body: dict[str, Any]) -> Awaitable[AsyncIterator[bytes]]:
        return stage.stream({**body, **STREAM_USAGE})

    def stats(self, choice: Mapping[str, Any], k: int) -> AnswerStats:
        return AnswerStats.from_choice(choice, k)

    def text(self, choice: Mapping[str, Any]) -> str:
        return str(choice["message"].get("content") or "")

    def answered(self, choice: Mapping[str, Any]) -> bool:
        message = choice["message"]
        return bool(message.get("content") or message.get("tool_calls"))

    def entries(self, choice: Mapping[str, Any]) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = (choice.get("logprobs") or {}).get("content") or []
        return entries

    def prompt_texts(self, body: Mapping[str, Any]) -> list[str]:
        """Each message's content."""
        contents = [m.get("content") for m in body["messages"]]
        return [c if isinstance(c, str) else json.dumps(c) for c in contents]

    def log_choice(self, choice: dict[str, Any]) -> dict[str, Any]:
        return choice

    def log_kind(self, kind: str) -> str:
        return kind


CHAT_DIALECT = ChatDialect()
