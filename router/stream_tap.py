"""A streamed answer read as it goes by, for what needs it once the stream has ended.

The cascade relays its top stage's stream to the client as it arrives (``CascadeEngine._stream``): waiting for the
whole answer would only delay the first token. But then the answer is in no single response, and four things
need it:

* the label of the stage below, which the streaming stage verified: an answer under ``SHORT_ANSWER_CHARS`` is
  acceptable only where the verifier finished with the same text (``router.labels``);
* the traffic log: a tour (``cascade.explore``) that ends in a stream would log no answer of the top stage, and a
  tour row without one is no tour for the learner (``training.calibrate.tour_rows``): with streaming clients, a
  new ladder would never gather the tours its λ table needs, and would tour every request for good;
* a shadow check of the returned answer (a stream capped below the top stage);
* the stage's measured prices in seconds (``router.measured_prices``): its usage and its time, without which a
  stage that streams to every client would keep its configured price for good; and the realised cost against the
  top stage alone (``adaptive_sd_cascade_cost_total``), which counts an answer once its tokens are known. The tap
  also times how long the consumer held the stream between payloads (``held_s``): a client reading slower than
  the stage writes fills the buffers between them, and from then on the stream's time is the client's, not the
  stage's.

``tap`` passes every payload on unchanged and keeps the pieces (``StreamedAnswer``); when the stream ends, they go
to a callback, which makes of them the response the stage would have sent without streaming (``response``: chat or
completions) and puts it after the verified prefix the client got first, as a verified answer's continuation is
(``router.draft``'s ``merge``). Where nothing reads the answer's text (no traffic log, no shadow check, no short
answer below it) only its usage is read, for measured prices and the realised cost: decoding a chunk with logprobs costs ~4 µs, and
a payload without ``"usage"`` in it is then not decoded at all. A stream that did not end (the client went away,
the stage failed) gives None: what it wrote is not an answer. A tool call's stream is not put together (it is
never verified, so nothing needs it).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from router.closing import Link, closing
from router.draft import DraftCheck, merged_usage

__all__ = ["NULL_USAGE", "StreamedAnswer", "tap"]

log = logging.getLogger(__name__)
NULL_USAGE = re.compile(rb'"usage"\s*:\s*null')  # a chunk that carries no usage after all
HELD_FLOOR_S = 0.001  # a payload held longer than this: the consumer waited (relaying a payload takes ~0.1 ms)


@dataclass(slots=True)
class StreamedAnswer:
    """The pieces of one streamed answer (choice 0), in the order they came: chat chunks (``delta``) or completion
    chunks (``text``, the completions logprobs shape)."""

    text: list[str] = field(default_factory=list)
    entries: list[dict[str, Any]] = field(default_factory=list)  # chat: logprobs.content entries
    tokens: dict[str, list[Any]] = field(default_factory=dict)  # completions: tokens, token_logprobs, top_logprobs
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    tool_calls: bool = False  # a tool call's deltas: not put together
    whole: bool = True  # False: only the usage is read (``response`` is None)
    held_s: float = 0.0  # seconds the consumer held the stream between payloads, over HELD_FLOOR_S each (backpressure)

    def add(self, payload: bytes) -> None:
        """One SSE payload of the stream; what is not a chunk (a keep-alive, garbage) is passed over."""
        if not self.whole and (b'"usage"' not in payload or NULL_USAGE.search(payload)):  # OpenAI: "usage": null in every chunk
            return
        try:
            chunk = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        if not isinstance(chunk, dict):
            return
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                self._add(choice)

    def _add(self, choice: dict[str, Any]) -> None:
        delta, logprobs = choice.get("delta"), choice.get("logprobs") or {}
        if isinstance(delta, dict):  # a chat chunk
            if delta.get("tool_calls"):
                self.tool_calls = True
            if isinstance(delta.get("content"), str):
                self.text.append(delta["content"])
            if isinstance(logprobs.get("content"), list):
                self.entries.extend(logprobs["content"])
        elif isinstance(choice.get("text"), str):  # a completion chunk
            self.text.append(choice["text"])
            for key in ("tokens", "token_logprobs", "top_logprobs"):
                if isinstance(logprobs.get(key), list):
                    self.tokens.setdefault(key, []).extend(logprobs[key])
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]

    def response(self, dialect: str = "chat") -> dict[str, Any] | None:
        """The stream as the whole response the stage would have sent without streaming, in ``dialect`` ("chat" or
        "completions"): what ``router.draft``'s ``merge`` puts after a verified prefix. None when the stream did not
        finish an answer, was a tool call, or only its usage was read."""
        if not self.whole or self.finish_reason is None or self.tool_calls:
            return None
        text, usage = "".join(self.text), dict(self.usage or {})
        if dialect == "completions":
            logprobs = {k: self.tokens.get(k, []) for k in ("tokens", "token_logprobs", "top_logprobs")} if self.tokens else None
            choice: dict[str, Any] = {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": self.finish_reason}
            return {"object": "text_completion", "choices": [choice], "usage": usage}
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": {"content": list(self.entries)},
                  "finish_reason": self.finish_reason}  # fmt: skip
        return {"object": "chat.completion", "choices": [choice], "usage": usage}

    def usage_after(self, prefix: DraftCheck | None = None) -> dict[str, int] | None:
        """The answering stage's usage, the verification's calls included (``draft.merged_usage``), as a whole
        answer's visit counts it; None when the stream said none."""
        if self.usage is None:
            return None
        if prefix is not None:
            return merged_usage(prefix, self.usage)
        prompt, completion = int(self.usage.get("prompt_tokens") or 0), int(self.usage.get("completion_tokens") or 0)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def tap(events: AsyncIterator[bytes], done: Callable[[StreamedAnswer | None], None], whole: bool = True) -> AsyncIterator[bytes]:
    """``events`` passed on unchanged; ``done`` called once when they end: with the answer (``whole`` False: its usage
    only) when the stream ran to its end, None when it did not (the consumer stopped reading, or closed it before
    its first payload, or the stage failed: its exception goes on to the relay, which tells the client). ``done``
    never breaks the stream: what it raises is logged."""
    return Link(_tapped(events, done, whole), events, unstarted=lambda: _tell(done, None))


async def _tapped(events: AsyncIterator[bytes], done: Callable[[StreamedAnswer | None], None], whole: bool) -> AsyncIterator[bytes]:
    answer: StreamedAnswer | None = StreamedAnswer(whole=whole)
    try:
        async with closing(events):  # the stage's stream ends before ``done`` is told
            async for payload in events:
                assert answer is not None
                answer.add(payload)
                handed = time.perf_counter()
                yield payload
                held = time.perf_counter() - handed
                if held > HELD_FLOOR_S:  # the consumer's send waited (below it: the router's own work on the payload)
                    answer.held_s += held
    except BaseException:
        answer = None
        raise
    finally:
        _tell(done, answer)


def _tell(done: Callable[[StreamedAnswer | None], None], answer: StreamedAnswer | None) -> None:
    try:
        done(answer)
    except Exception:  # the client has its answer: what is kept of it must not take the stream down
        log.exception("keeping a streamed answer failed")
