"""The legacy completions dialect of the cascade engine (``router.dialect.CascadeDialect``): ``COMPLETIONS_DIALECT``.

A stage is asked at ``/completions`` (a raw-text prompt, no chat template) with ``logprobs: k``, and its answer is
read from ``text`` and the completions logprobs shape (``{tokens, token_logprobs, top_logprobs, text_offset}``),
which ``AnswerStats.from_completion_choice`` reads into the same arrays as a chat answer's. A larger stage verifies
a draft as the end of the prompt (``router.openai.completions.draft.COMPLETIONS_DRAFT``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Mapping
from typing import Any

from common.completions_protocol import chat_entries
from common.protocol import MAX_TOP_LOGPROBS
from predictor.serving.features import AnswerStats
from router.dialect import STREAM_USAGE
from router.draft import DraftIO
from router.openai.completions.draft import COMPLETIONS_DRAFT
from router.stage import Stage, StageReply, completions_stage
from router.validity import AnswerSpec, extras_needs

# A completions request needs a stage that serves /v1/completions; it is text, with no rules beyond that. Its field is
# ``model``: what a client changes when no stage of the model it named can serve it.
COMPLETION_SPEC = AnswerSpec("text", {"completions": "model"}, None)


def completion_spec(body: Mapping[str, Any]) -> AnswerSpec:
    """``COMPLETION_SPEC``, plus a stage of dialect vllm when the body holds vLLM's sampling extras (``top_k``, ...)."""
    extras = extras_needs(body)
    return AnswerSpec("text", {**COMPLETION_SPEC.needs, **extras}, None) if extras else COMPLETION_SPEC


class CompletionsDialect:
    """``/v1/completions``, as the engine asks a stage and reads its answer."""

    name = "completions"
    draft: DraftIO = COMPLETIONS_DRAFT
    early_exit = False  # the prefix model knows chat answers only; a completion is judged once it is whole

    def asking(self, body: dict[str, Any], top_k: int) -> dict[str, Any]:
        return {**body, "logprobs": max(body.get("logprobs") or 0, top_k)}

    def plain(self, body: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in body.items() if k != "logprobs"}

    def client_logprobs(self, body: Mapping[str, Any]) -> bool:
        return body.get("logprobs") is not None  # 0 asks for the chosen tokens' logprobs alone

    def reply(self, stage: Stage, body: dict[str, Any], top_k: int | None) -> Awaitable[StageReply]:
        return completions_stage(stage).complete(body, top_k=top_k)

    def stream(self, stage: Stage, body: dict[str, Any]) -> Awaitable[AsyncIterator[bytes]]:
        return completions_stage(stage).complete_stream({**body, **STREAM_USAGE})

    def stats(self, choice: Mapping[str, Any], k: int) -> AnswerStats:
        return AnswerStats.from_completion_choice(choice, k)

    def text(self, choice: Mapping[str, Any]) -> str:
        return str(choice.get("text") or "")

    def answered(self, choice: Mapping[str, Any]) -> bool:
        return bool(choice.get("text"))

    def entries(self, choice: Mapping[str, Any]) -> list[dict[str, Any]]:
        return chat_entries(choice.get("logprobs"), MAX_TOP_LOGPROBS + 1)  # every alternative it has

    def prompt_texts(self, body: Mapping[str, Any]) -> list[str]:
        """The prompt text."""
        return [str(body["prompt"])]

    def log_choice(self, choice: dict[str, Any]) -> dict[str, Any]:
        return {"index": 0, "message": {"role": "assistant", "content": self.text(choice)},
                "logprobs": {"content": self.entries(choice)}, "finish_reason": choice.get("finish_reason")}  # fmt: skip

    def log_kind(self, kind: str) -> str:
        """Completion rows are told apart: their prompt is raw text, not messages to render with a chat template."""
        return "completion"


COMPLETIONS_DIALECT = CompletionsDialect()
