"""router.stream_tap: a streamed chat answer put together as it passes, handed over once the stream has ended."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from router.draft import DraftCheck, merge
from router.openai.completions.draft import COMPLETIONS_DRAFT
from router.stage import StageBadResponse
from router.stream_tap import StreamedAnswer, tap

pytestmark = pytest.mark.anyio


def chunk(content: str | None = None, finish: str | None = None, index: int = 0, **delta: Any) -> bytes:
    entries = [{"token": content, "logprob": -0.1, "bytes": list(content.encode()), "top_logprobs": []}] if content else []
    choice = {"index": index, "delta": {**({"content": content} if content is not None else {}), **delta},
              "logprobs": {"content": entries} if entries else None, "finish_reason": finish}  # fmt: skip
    return orjson.dumps({"id": "c", "object": "chat.completion.chunk", "choices": [choice]})


USAGE = orjson.dumps({"id": "c", "choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}})
STREAM = [chunk(role="assistant"), chunk("The"), chunk(" answer"), chunk(" is 4."), chunk(finish="stop"), USAGE]


def answer_of(payloads: list[bytes]) -> StreamedAnswer:
    answer = StreamedAnswer()
    for p in payloads:
        answer.add(p)
    return answer


def response_choice(answer: StreamedAnswer, dialect: str = "chat") -> dict[str, Any] | None:
    data = answer.response(dialect)
    return None if data is None else dict(data["choices"][0])


def test_a_stream_becomes_a_whole_choice_with_its_logprobs_and_usage() -> None:
    answer = answer_of(STREAM)
    choice = response_choice(answer)
    assert choice is not None and choice["message"] == {"role": "assistant", "content": "The answer is 4."}
    assert [e["token"] for e in choice["logprobs"]["content"]] == ["The", " answer", " is 4."]
    assert choice["finish_reason"] == "stop"
    assert answer.usage_after() == {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}


def test_the_verified_prefix_comes_first_and_counts_in_the_usage() -> None:
    """The client got the kept draft prefix before the stream (``CascadeResult.prefix``): the answer is both, put
    together as a verified answer's continuation is (``router.draft.merge``)."""
    kept = [{"token": t, "logprob": -0.2, "bytes": list(t.encode()), "top_logprobs": []} for t in ("I", " think")]
    prefix = DraftCheck(draft_tokens=5, accepted_tokens=2, accepted_text="I think", accepted_logprobs=kept, usage={"prompt_tokens": 20})
    answer = answer_of([chunk(" 4."), chunk(finish="stop"), USAGE])
    data = answer.response()
    assert data is not None
    merged = merge(prefix, data)
    choice = merged["choices"][0]
    assert choice["message"]["content"] == "I think 4." and choice["finish_reason"] == "stop"
    assert [e["token"] for e in choice["logprobs"]["content"]] == ["I", " think", " 4."]
    assert merged["usage"] == answer.usage_after(prefix) == {"prompt_tokens": 32, "completion_tokens": 5, "total_tokens": 37}


def test_a_completions_stream_becomes_a_text_completion() -> None:
    """``/v1/completions`` chunks (``text``, the completions logprobs shape), after a verified prefix too."""

    def piece(text: str, finish: str | None = None) -> bytes:
        logprobs = {"tokens": [text], "token_logprobs": [-0.3], "top_logprobs": [{text: -0.3}], "text_offset": [0]}
        return orjson.dumps(
            {"object": "text_completion", "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}]}
        )

    answer = answer_of([piece(" 4"), piece(".", "stop"), USAGE])
    data = answer.response("completions")
    assert data is not None and data["object"] == "text_completion"
    choice = data["choices"][0]
    assert choice["text"] == " 4." and choice["finish_reason"] == "stop"
    assert choice["logprobs"]["tokens"] == [" 4", "."] and choice["logprobs"]["token_logprobs"] == [-0.3, -0.3]
    kept = [{"token": "I", "logprob": -0.2, "bytes": [73], "top_logprobs": []}]
    merged = COMPLETIONS_DRAFT.merge(DraftCheck(draft_tokens=3, accepted_tokens=1, accepted_text="I", accepted_logprobs=kept), data)
    assert merged["choices"][0]["text"] == "I 4." and merged["choices"][0]["logprobs"]["tokens"] == ["I", " 4", "."]


def test_what_is_not_a_whole_text_answer_gives_none() -> None:
    """No finish reason (the stream was cut), or a tool call (never verified: nothing needs it put together)."""
    assert answer_of(STREAM[:3]).response() is None
    call = [{"index": 0, "id": "t", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    assert answer_of([chunk(tool_calls=call), chunk(finish="tool_calls")]).response() is None
    assert answer_of([]).usage_after() is None


def test_where_nothing_reads_the_text_only_the_usage_is_read() -> None:
    """``whole`` False (``CascadeEngine._reads_stream``): chunks without usage are not decoded, and there is no response."""
    answer = StreamedAnswer(whole=False)
    for p in [*STREAM, b'{"choices": [{"delta": {"content": "not json"']:
        answer.add(p)
    assert answer.text == [] and answer.entries == [] and answer.finish_reason is None and answer.response() is None
    assert answer.usage_after() == {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}


def test_garbage_and_other_choices_are_passed_over() -> None:
    answer = answer_of([b"[DONE]", b"{not json", b"[1, 2]", b'{"choices": [1]}', chunk("x", index=1), *STREAM])
    choice = response_choice(answer)
    assert choice is not None and choice["message"]["content"] == "The answer is 4."


async def source(payloads: list[bytes], fail: Exception | None = None) -> AsyncIterator[bytes]:
    for p in payloads:
        yield p
    if fail is not None:
        raise fail


async def test_tap_passes_every_payload_on_and_hands_over_the_answer_at_the_end() -> None:
    got: list[StreamedAnswer | None] = []
    out = [p async for p in tap(source(STREAM), got.append)]
    assert out == STREAM and len(got) == 1 and got[0] is not None
    choice = response_choice(got[0])
    assert choice is not None and choice["message"]["content"] == "The answer is 4."


async def test_a_stream_that_did_not_end_hands_over_none() -> None:
    """The stage failed (its exception goes on to the relay) or the client stopped reading."""
    got: list[StreamedAnswer | None] = []
    with pytest.raises(StageBadResponse):
        async for _ in tap(source(STREAM[:2], StageBadResponse("s", "stream broken")), got.append):
            pass
    assert got == [None]
    events = tap(source(STREAM), got.append)
    assert await anext(events) == STREAM[0]
    await events.aclose()  # type: ignore[attr-defined]
    assert got == [None, None]


async def test_a_failing_callback_never_breaks_the_stream(caplog: pytest.LogCaptureFixture) -> None:
    def broken(answer: StreamedAnswer | None) -> None:
        raise OSError("disk full")

    assert [p async for p in tap(source(STREAM), broken)] == STREAM
    assert "keeping a streamed answer failed" in caplog.text


async def test_the_time_a_consumer_holds_the_stream_is_told_apart() -> None:
    """``held_s``: the seconds the consumer kept the tap waiting between payloads (a slow client), not the stage."""
    got: list[StreamedAnswer | None] = []

    async def stage() -> AsyncIterator[bytes]:
        for payload in (
            b'{"choices": [{"index": 0, "delta": {"content": "a"}}]}',
            b'{"choices": [{"index": 0, "delta": {"content": "b"}}]}',
        ):
            yield payload

    async for _ in tap(stage(), got.append):
        await asyncio.sleep(0.05)
    (answer,) = got
    assert answer is not None and 0.09 < answer.held_s < 1.0
    got.clear()
    _ = [p async for p in tap(stage(), got.append)]
    assert got[0] is not None and got[0].held_s < 0.05  # a consumer that takes each at once holds nothing (HELD_FLOOR_S)
