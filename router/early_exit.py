"""Judging a stage while it writes: stream it, stop at checkpoints, abort it when finishing is not worth it.

A lower stage that is going wrong costs its whole answer before anyone reads it. Streamed instead, with its
token logprobs, it can be judged after t generated tokens (the predictor's checkpoints): ``write`` reads the
stage's chat-completion stream, and each time the answer reaches a checkpoint without having ended it asks
``judge(t, entries)`` (the first t logprob entries); a true answer aborts: the stream is closed at once, which
closes the upstream connection (vLLM aborts a request whose client disconnects; our CPU server stops decoding
at the next token). What the stage wrote so far is kept: it is the draft the next stage verifies. An aborted
visit is charged every token the stage sent (``Written.completion_tokens``), which is more than the checkpoint
when chunks carry several tokens.

A stream that ends is assembled into the chat completion the same request would have got without streaming
(greedy decoding writes the same tokens either way), so everything after it -- the validity rules, the answer
model, draft verification, the response -- sees what it always sees.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from router.closing import aclose
from router.stage import Stage, StageBadResponse


@dataclass(slots=True)
class Written:
    """What a stage wrote: its text, the logprob entries, how it ended, its usage; ``aborted_at``: the checkpoint at
    which the stage was aborted (None: it finished); ``tokens``: the tokens received, counted chunk by chunk.

    A chunk may carry several tokens (vLLM under load, speculative decoding), so a stage aborted at checkpoint t
    has usually sent more than t tokens by then, and every one of them was generated and is paid for:
    ``completion_tokens`` is what to charge, never ``aborted_at``.
    """

    text: str = ""
    entries: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    aborted_at: int | None = None
    id: str = ""
    created: int = 0
    model: str = ""
    tokens: int = 0

    @property
    def completion_tokens(self) -> int:
        """The tokens the stage generated for this answer: its own count when it reported one (usage in a chunk),
        else the tokens received; the larger where both are known (a stage may stream more than it reports
        logprobs for, or report usage that runs ahead of what arrived before the stream was closed)."""
        reported = (self.usage or {}).get("completion_tokens")
        counted = max(self.tokens, len(self.entries))
        return max(counted, reported) if isinstance(reported, int) and not isinstance(reported, bool) else counted

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
                content = delta.get("content") or ""
                entries = ((choice.get("logprobs") or {}).get("content")) or ()
                out.text += content
                out.entries.extend(entries)
                out.tokens += len(entries) or (1 if content else 0)  # without logprobs: at least the one token it holds
                out.finish_reason = choice.get("finish_reason") or out.finish_reason
            while pending and out.finish_reason is None and len(out.entries) >= pending[0]:
                t = pending.pop(0)
                if judge(t, out.entries[:t]):
                    out.aborted_at = t
                    return out
    finally:
        await aclose(events)  # closing the stage's stream closes its connection (an aborted generation)
    return out
