"""Judging a stage while it writes: stream it, stop at checkpoints, abort it when finishing is not worth it.

A lower stage that is going wrong costs its whole answer before anyone reads it. Streamed instead, with its
token logprobs, it can be judged after t generated tokens (the predictor's checkpoints): ``write`` reads the
stage's chat-completion stream, and each time the answer reaches a checkpoint without having ended it asks
``judge(t, entries)`` (the first t logprob entries); a true answer aborts: the stream is closed at once, which
closes the upstream connection (vLLM aborts a request whose client disconnects; our CPU server stops decoding
at the next token). What the stage wrote so far is kept: it is the draft the next stage verifies.

A stream that ends is assembled into the chat completion the same request would have got without streaming
(greedy decoding writes the same tokens either way), so everything after it -- the validity rules, the answer
model, draft verification, the response -- sees what it always sees.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from router.stage import Stage, StageBadResponse


@dataclass(slots=True)
class Written:
    """What a stage wrote: its text, the logprob entries, how it ended, its usage; ``aborted_at``: the checkpoint at
    which the stage was aborted (None: it finished)."""

    text: str = ""
    entries: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    aborted_at: int | None = None
    id: str = ""
    created: int = 0
    model: str = ""

    def completion(self) -> dict[str, Any]:
        """The chat completion this stream amounts to (what the stage would have answered without streaming)."""
        choice = {"index": 0, "message": {"role": "assistant", "content": self.text}, "logprobs": {"content": self.entries},
                  "finish_reason": self.finish_reason or "stop"}  # fmt: skip
        data: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        }
        if self.usage is not None:
            data["usage"] = self.usage
        return data

    def prefix(self) -> dict[str, Any]:
        """The aborted prefix as an answer-shaped object: the draft the next stage verifies (never returned)."""
        data = self.completion()
        data["choices"][0]["finish_reason"] = None
        return data


async def write(
    stage: Stage, body: dict[str, Any], checkpoints: Sequence[int], judge: Callable[[int, list[dict[str, Any]]], bool]
) -> Written:
    """Stream ``body`` (a chat request asking for logprobs) from ``stage``; abort where ``judge`` says so."""
    streamed = {**body, "stream": True, "stream_options": {"include_usage": True}}
    events = await stage.stream(streamed)
    out = Written()
    pending = [c for c in sorted(set(checkpoints)) if c > 0]
    try:
        async for payload in events:
            try:
                chunk = orjson.loads(payload)
            except orjson.JSONDecodeError:
                raise StageBadResponse(stage.name, "stream event is not JSON") from None
            if not isinstance(chunk, dict):
                raise StageBadResponse(stage.name, "stream event is not a JSON object")
            out.id, out.created, out.model = chunk.get("id") or out.id, chunk.get("created") or out.created, chunk.get("model") or out.model
            if chunk.get("usage"):
                out.usage = chunk["usage"]
            for choice in chunk.get("choices") or ():
                delta = choice.get("delta") or {}
                out.text += delta.get("content") or ""
                out.entries.extend(((choice.get("logprobs") or {}).get("content")) or ())
                out.finish_reason = choice.get("finish_reason") or out.finish_reason
            while pending and out.finish_reason is None and len(out.entries) >= pending[0]:
                t = pending.pop(0)
                if judge(t, out.entries[:t]):
                    out.aborted_at = t
                    return out
    finally:
        await events.aclose()  # type: ignore[attr-defined]  # an async generator: closing it closes the connection
    return out
