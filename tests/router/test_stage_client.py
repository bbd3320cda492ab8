"""The stage client: against a real llama.cpp stage (deferred logprobs lose nothing), and against a scripted HTTP
stage (``scripted_http_stage``) for what a real one cannot be made to do: SSE framed with CRLF or CR, a stream slow
but steady for longer than ``timeout_s``, a stall, a status line that never comes, a connection cut mid-answer."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import numpy as np
import orjson
import pytest

from common.settings import StageConfig
from predictor.serving.features import AnswerStats
from router._http import HttpResponse
from router.stage_client import StageBadResponse, StageClient, StageReply, StageTimeout, StageUnavailable
from tests.conftest import free_port, ladder_config
from tests.router.scripted_http_stage import Piece, Script, scripted_stage

BODY = {"messages": [{"role": "user", "content": "List three prime numbers and say why each is prime."}],
        "temperature": 0, "max_tokens": 60, "logprobs": True, "top_logprobs": 5}  # fmt: skip


def _ask(port_list: list[int], **kw: object) -> StageReply:
    async def go() -> StageReply:
        stage = StageClient(StageConfig.model_validate(ladder_config(port_list, 0)["stages"][1]))  # type: ignore[index]
        await stage.start()
        try:
            return await stage.reply(BODY, **kw)  # type: ignore[arg-type]
        finally:
            await stage.close()

    return asyncio.run(go())


def test_deferred_logprobs_are_decoded_on_demand(stage_ports: list[int]) -> None:
    reply = _ask(stage_ports, top_k=5)
    whole = orjson.loads(reply.raw)
    assert reply.stats is not None and reply.deferred is not None
    assert reply.data["choices"][0]["logprobs"] is None  # not decoded
    assert {k: v for k, v in reply.data.items() if k != "choices"} == {k: v for k, v in whole.items() if k != "choices"}
    expected = AnswerStats.from_choice(whole["choices"][0], 5)
    np.testing.assert_array_equal(reply.stats.token_logprobs, expected.token_logprobs)
    np.testing.assert_array_equal(reply.stats.top_logprobs, expected.top_logprobs)
    assert reply.with_logprobs() == whole and reply.deferred is None
    assert reply.with_logprobs() == whole  # once


def test_without_top_k_the_body_is_decoded_whole(stage_ports: list[int]) -> None:
    reply = _ask(stage_ports)
    assert reply.stats is None and reply.deferred is None
    assert reply.data == orjson.loads(reply.raw)


def test_logprobs_that_do_not_decode_are_the_stages_fault() -> None:
    """A raw control byte in a token string: the scanner reads the numbers, a decoder refuses the span."""
    raw = (b'{"choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"logprobs":{"content":'
           b'[{"token":"\x01","logprob":-0.5,"bytes":[1],"top_logprobs":[{"token":"a","logprob":-0.5,"bytes":[97]}]}]},'
           b'"finish_reason":"stop"}]}')  # fmt: skip
    reply = StageReply.parse(raw, 0.0, top_k=5, stage="s0")
    assert reply.stats is not None and reply.stats.token_logprobs.tolist() == [-0.5]
    assert reply.data["choices"][0]["message"]["content"] == "ok"
    with pytest.raises(StageBadResponse, match="s0.*malformed logprobs"):
        reply.with_logprobs()


# -- against a scripted HTTP stage -----------------------------------------------------------------------------------

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
E1, E2 = b'{"choices":[{"delta":{"content":"The"}}]}', b'{"choices":[{"delta":{"content":" end"}}]}'
ENDINGS = {"lf": b"\n", "crlf": b"\r\n", "cr": b"\r"}
PATIENCE_S = 10.0  # how long a test waits for what should come at once: generous, for a loaded 2-core machine


def _event(data: bytes, ending: bytes = b"\n") -> bytes:
    return b"data: " + data + ending + ending


def _answer(text: str) -> bytes:
    return orjson.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]})


@asynccontextmanager
async def client_for(script: Script, **config: Any) -> AsyncIterator[StageClient]:
    """A started ``StageClient`` for the scripted stage (``config``: StageConfig fields, e.g. its timeouts)."""
    async with scripted_stage(script) as url:
        client = StageClient(StageConfig(name="s", model="m", prices={"cost": {"request": 1.0}}, url=url, **config))
        await client.start()
        try:
            yield client
        finally:
            await client.close()


@pytest.mark.anyio
@pytest.mark.parametrize("ending", ENDINGS.values(), ids=ENDINGS.keys())
async def test_a_raw_stream_relays_each_event_when_it_arrives_whatever_its_line_ends(ending: bytes) -> None:
    """The pass-through's blocks end at event boundaries of any framing: the first event is not held back until the
    stage has sent everything (it sends the rest only once the first has reached the client)."""
    first, rest = _event(E1, ending), _event(E2, ending) + _event(b"[DONE]", ending)
    gate = asyncio.Event()
    async with client_for(Script([Piece(first), Piece(rest, gate=gate)])) as client:
        blocks = await client.stream(CHAT, raw=True)
        got = await asyncio.wait_for(anext(blocks), PATIENCE_S)
        gate.set()
        later = [b async for b in blocks]
    assert got == first
    assert got + b"".join(later) == first + rest  # the bytes as the stage sent them


@pytest.mark.anyio
@pytest.mark.parametrize("ending", ENDINGS.values(), ids=ENDINGS.keys())
async def test_a_payload_stream_reads_each_event_when_it_arrives_whatever_its_line_ends(ending: bytes) -> None:
    gate = asyncio.Event()
    script = Script([Piece(_event(E1, ending)), Piece(_event(E2, ending) + _event(b"[DONE]", ending) + b"data: ignored\n\n", gate=gate)])
    async with client_for(script) as client:
        events = await client.stream(CHAT)
        got = await asyncio.wait_for(anext(events), PATIENCE_S)
        gate.set()
        later = [p async for p in events]
    assert [got, *later] == [E1, E2]  # and nothing after [DONE]


@pytest.mark.anyio
async def test_a_payload_stream_joins_multi_line_data_and_skips_comments_and_keep_alives() -> None:
    stream = b': keep-alive\r\ndata\r\n\r\nevent: chunk\ndata: {"a":\ndata:[1,\ndata:  2]}\n\ndata: [DONE]\n\n'
    async with client_for(Script([Piece(stream[:20]), Piece(stream[20:])])) as client:
        events = await client.complete_stream({"prompt": "x"})
        assert [orjson.loads(p) async for p in events] == [{"a": [1, 2]}]


@pytest.mark.anyio
async def test_an_unterminated_last_event_is_read_and_relayed_as_one_event() -> None:
    """A stage that ends its body without the last blank line: the event is kept, and ends with one for the client."""
    stream = _event(E1) + b"data: " + E2
    async with client_for(Script([Piece(stream)])) as client:
        assert [p async for p in await client.stream(CHAT)] == [E1, E2]
        assert b"".join([b async for b in await client.stream(CHAT, raw=True)]) == stream + b"\n\n"


@pytest.mark.anyio
@pytest.mark.parametrize("raw", [False, True])
async def test_a_stream_slow_but_steady_for_longer_than_timeout_s_is_not_cut(raw: bool) -> None:
    """timeout_s bounds the gaps between bytes, not the answer: 14 events 0.1 s apart against timeout_s=0.5."""
    events = [orjson.dumps({"choices": [{"delta": {"content": f" t{i}"}}]}) for i in range(14)]
    script = Script([Piece(_event(e), after_s=0.1) for e in events] + [Piece(_event(b"[DONE]"))])
    async with client_for(script, timeout_s=0.5) as client:
        t0 = time.perf_counter()
        got = [b async for b in await client.stream(CHAT, raw=raw)]
        took = time.perf_counter() - t0
    assert took > 1.0  # it did last longer than timeout_s
    if raw:
        assert b"".join(got) == b"".join(p.data for p in script.pieces)
    else:
        assert got == events


@pytest.mark.anyio
async def test_a_whole_answer_slow_but_steady_for_longer_than_timeout_s_is_not_cut() -> None:
    body = _answer("a long answer " * 40)
    step = len(body) // 12 + 1
    script = Script([Piece(body[i : i + step], after_s=0.1) for i in range(0, len(body), step)], content_type="application/json")
    async with client_for(script, timeout_s=0.5) as client:
        reply = await client.reply(CHAT)
    assert reply.seconds > 1.0 and reply.raw == body


@contextmanager
def _took() -> Iterator[list[float]]:
    """Seconds the block ran, in the list it yields (filled when the block ends, raised or not)."""
    out: list[float] = []
    t0 = time.perf_counter()
    try:
        yield out
    finally:
        out.append(time.perf_counter() - t0)


@pytest.mark.anyio
@pytest.mark.parametrize("raw", [False, True])
async def test_a_stream_that_stalls_fails_after_timeout_s_not_at_the_total_cap(raw: bool) -> None:
    stalled = asyncio.Event()  # never set: the stage sends one event and then nothing
    script = Script([Piece(_event(E1)), Piece(_event(E2), gate=stalled)])
    async with client_for(script, timeout_s=0.4, total_timeout_s=60.0) as client:
        stream = await client.stream(CHAT, raw=raw)
        assert await asyncio.wait_for(anext(stream), PATIENCE_S) in (E1, _event(E1))
        with _took() as took, pytest.raises(StageTimeout, match=r"stream stalled: no byte for 0\.4 s \(timeout_s\)"):
            await asyncio.wait_for(anext(stream), 30.0)
    assert 0.35 <= took[0] < 30.0  # not before the bound; well before the 60 s cap (generous for a loaded machine)


@pytest.mark.anyio
async def test_a_stage_that_never_starts_its_answer_fails_after_timeout_s() -> None:
    async with client_for(Script([Piece(_event(E1))], status_after_s=30.0), timeout_s=0.4) as client:
        with _took() as took, pytest.raises(StageTimeout, match=r"no answer started: no byte for 0\.4 s \(timeout_s\)"):
            await client.stream(CHAT)
        assert 0.35 <= took[0] < 20.0
        with pytest.raises(StageTimeout, match=r"answer stalled: no byte for 0\.4 s \(timeout_s\)"):
            await client.reply(CHAT)


@pytest.mark.anyio
async def test_total_timeout_s_caps_even_a_steady_stream() -> None:
    script = Script([Piece(_event(E1), after_s=0.1) for _ in range(30)])
    async with client_for(script, timeout_s=5.0, total_timeout_s=0.5) as client:
        stream = await client.stream(CHAT)
        with pytest.raises(StageTimeout, match=r"answer not complete within 0\.5 s \(total_timeout_s\)"):
            async for _ in stream:
                pass


@pytest.mark.anyio
async def test_a_connection_that_cannot_open_fails_after_connect_timeout_s() -> None:
    """A listener whose accept queue is full: the kernel drops the next SYN, so connecting hangs."""
    with socket.socket() as listener, socket.socket() as filler:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        filler.connect(listener.getsockname())  # fills the queue (never accepted)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
        client = StageClient(
            StageConfig(name="s", model="m", prices={"cost": {"request": 1.0}}, url=url, timeout_s=30.0, connect_timeout_s=0.3)
        )
        await client.start()
        try:
            with _took() as took, pytest.raises(StageTimeout, match=r"could not connect to .* within 0\.3 s \(connect_timeout_s\)"):
                await client.reply(CHAT)
        finally:
            await client.close()
    assert took[0] < 20.0


@pytest.mark.anyio
@pytest.mark.parametrize("call", ["reply", "stream"])
async def test_failures_map_the_same_for_whole_answers_and_streams(call: str) -> None:
    """A refused connection is StageUnavailable, a body cut short StageBadResponse, through the one mapping."""
    refused = StageClient(StageConfig(name="s", model="m", prices={"cost": {"request": 1.0}}, url=f"http://127.0.0.1:{free_port()}/v1"))
    await refused.start()
    try:
        with pytest.raises(StageUnavailable, match="unreachable at"):
            await (refused.reply(CHAT) if call == "reply" else refused.stream(CHAT))
    finally:
        await refused.close()
    async with client_for(Script([Piece(_event(E1)), Piece(b"data: {")], cut=True)) as client:
        with pytest.raises(StageBadResponse, match="connection failed" if call == "reply" else "stream broken"):
            if call == "reply":
                await client.reply(CHAT)
            else:
                async for _ in await client.stream(CHAT):
                    pass


@pytest.mark.anyio
@pytest.mark.parametrize("raw", [False, True], ids=["payloads", "raw"])
async def test_a_stream_closed_before_its_first_read_gives_its_connection_back(raw: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stream is held (as a chain of the router's holds it) and closed unread: its connection goes back at once,
    not when the garbage collector finds it. With one connection to the stage, a second call gets it. (The answer's
    own ``__del__`` gives it back when nothing refers to it; on the cascade's path a reference cycle keeps it, so
    that fallback is off here.)"""
    monkeypatch.setattr("router.stage_client.POOL_SIZE", 1)
    monkeypatch.setattr(HttpResponse, "__del__", lambda self: None)
    gate = asyncio.Event()
    script = Script([Piece(_event(E1), gate=gate), Piece(_event(b"[DONE]"))])
    async with client_for(script) as client:
        first = await client.stream(CHAT, raw=raw)
        await first.aclose()  # type: ignore[attr-defined]
        second = await asyncio.wait_for(client.stream(CHAT, raw=raw), PATIENCE_S)
        gate.set()
        assert E1 in b"".join([e async for e in second])
        del first
