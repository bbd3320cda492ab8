"""``router._http``, the router's HTTP/1.1 client, against raw TCP servers that write exact bytes.

A fake by necessity: what is tested here is how the client reads what real servers may send (chunked bodies,
bodies delimited by closing the connection, a 100 Continue, garbage, a keep-alive connection closed while idle),
and no model server can be made to send each of those on demand. The stage client's behaviour against a real
llama.cpp stage is tested in ``test_stage_client.py`` and every live test.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from router._http import ConnectFailed, ConnectTimeout, HttpPool, PoolClosed, ProtocolFailure, ReadTimeout, Timeouts, TotalTimeout
from tests.conftest import free_port

T = Timeouts(connect=5.0, open=5.0, read=5.0)
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _request(reader: asyncio.StreamReader) -> bytes:
    """One request's head and body (Content-Length bodies only: what the client sends)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0)
    return head + await reader.readexactly(length)


@asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[tuple[HttpPool, list[int]]]:
    """A raw server running ``handler`` per connection; yields a pool to it and the list of connections accepted."""
    accepted: list[int] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        try:
            await handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = HttpPool(f"http://127.0.0.1:{port}/v1", limit=4)
    try:
        yield pool, accepted
    finally:
        await pool.close()
        server.close()


async def _answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, answer: bytes = OK) -> None:
    """Answer ``answer`` to every request on the connection (keep-alive)."""
    while True:
        await _request(reader)
        writer.write(answer)
        await writer.drain()


def _first_then_answers(first: Handler) -> Handler:
    """``first`` on the first connection, plain answers (``_answers``) on every later one."""
    served: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served.append(1)
        await (first if len(served) == 1 else _answers)(reader, writer)

    return handler


async def _get(pool: HttpPool, timeouts: Timeouts = T) -> tuple[int, bytes]:
    resp = await pool.request("POST", "/v1/x", {"Content-Type": "application/json"}, b"{}", timeouts)
    return resp.status, await resp.read()


@pytest.mark.anyio
async def test_the_request_names_its_host_path_and_length() -> None:
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await _request(reader))
        writer.write(OK)

    async with serving(handler) as (pool, _):
        await _get(pool)
    head, _, body = seen[0].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v1/x HTTP/1.1" and lines[1] == f"Host: 127.0.0.1:{pool.port}".encode()
    assert b"Content-Length: 2" in lines and body == b"{}"


@pytest.mark.anyio
async def test_a_header_with_a_line_break_is_refused_before_anything_is_sent() -> None:
    async with serving(_answers) as (pool, accepted):
        with pytest.raises(ValueError, match="line break"):
            await pool.request("POST", "/v1/x", {"Authorization": "Bearer a\r\nX-Evil: 1"}, b"{}", T)
    assert accepted == []


@pytest.mark.anyio
async def test_a_chunked_body_is_decoded_and_streamed_chunk_by_chunk() -> None:
    gate = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        await gate.wait()
        writer.write(b"6\r\n world\r\n0\r\n\r\n")
        await _answers(reader, writer)

    async with serving(handler) as (pool, accepted):
        resp = await pool.request("GET", "/v1/s", {}, None, T)
        chunks = resp.chunks()
        assert await anext(chunks) == b"hello"
        gate.set()
        assert [c async for c in chunks] == [b" world"]
        assert await _get(pool) == (200, b"ok")  # the same connection serves the next call
    assert len(accepted) == 1


@pytest.mark.anyio
async def test_a_body_delimited_by_closing_the_connection_is_read_whole() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")

    async with serving(handler) as (pool, accepted):
        assert await _get(pool) == (200, b"all of it")
        assert await _get(pool) == (200, b"all of it")
    assert len(accepted) == 2  # not reused


@pytest.mark.anyio
async def test_an_informational_answer_is_skipped() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" + OK)
        await _answers(reader, writer)

    async with serving(handler) as (pool, _):
        assert await _get(pool) == (200, b"ok")
        assert await _get(pool) == (200, b"ok")


@pytest.mark.anyio
async def test_garbage_or_a_cut_answer_is_a_protocol_failure() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request(reader)
        writer.write(b"SMTP ready\r\n\r\n")
        await asyncio.sleep(1)

    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")

    for handler, message in ((garbage, "malformed HTTP answer"), (cut, "before the answer was complete")):
        async with serving(handler) as (pool, _):
            with pytest.raises(ProtocolFailure, match=message):
                await _get(pool)


async def _one_answer_per_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers one request saying keep-alive, then closes once the next request starts: that one gets no byte back."""
    await _request(reader)
    writer.write(OK)
    await writer.drain()
    await reader.read(1)


@pytest.mark.anyio
@pytest.mark.parametrize(("handler", "connections"), [(_answers, 1), (_one_answer_per_connection, 3)], ids=["kept", "closed"])
async def test_a_connection_is_kept_alive_and_one_the_server_closed_is_replaced_without_failing_the_call(
    handler: Handler, connections: int
) -> None:
    async with serving(handler) as (pool, accepted):
        for _ in range(3):
            assert await _get(pool) == (200, b"ok")
    assert len(accepted) == connections


@pytest.mark.anyio
async def test_timeouts_bound_silences_and_the_whole_call() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request(reader)
        await asyncio.sleep(10)

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
        for _ in range(100):
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.05)

    async with serving(silent) as (pool, _):
        with pytest.raises(ReadTimeout):
            await _get(pool, Timeouts(connect=5, open=5, read=0.3))
    async with serving(trickle) as (pool, _):
        assert await _get(pool, Timeouts(connect=5, open=5, read=1.0)) == (200, b"x" * 100)  # steady: never silent for 1 s
        with pytest.raises(TotalTimeout):
            await _get(pool, Timeouts(connect=5, open=5, read=1.0, total=0.5))


@pytest.mark.anyio
async def test_a_call_over_the_limit_waits_for_a_connection_within_the_connect_bound() -> None:
    release = asyncio.Event()

    async def held(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request(reader)
        await release.wait()
        writer.write(OK)
        await _answers(reader, writer)

    async with serving(held) as (pool, accepted):
        busy = [asyncio.create_task(_get(pool)) for _ in range(4)]  # the pool's limit
        await asyncio.sleep(0.2)
        with pytest.raises(ConnectTimeout) as info:
            await _get(pool, Timeouts(connect=0.3, open=5, read=5))
        assert not info.value.opening
        waiting = asyncio.create_task(_get(pool))
        await asyncio.sleep(0.1)
        release.set()
        assert await asyncio.gather(*busy, waiting) == [(200, b"ok")] * 5
    assert len(accepted) == 4


@pytest.mark.anyio
async def test_an_answer_dropped_unread_frees_its_place_in_the_pool() -> None:
    async with serving(_answers) as (pool, _):
        for _ in range(6):  # more than the limit of 4: each dropped answer must give its slot back
            resp = await pool.request("GET", "/v1/x", {}, None, Timeouts(connect=1, open=1, read=1))
            del resp
            gc.collect()
        assert await _get(pool) == (200, b"ok")


@pytest.mark.anyio
async def test_a_refused_connection_is_connect_failed() -> None:
    pool = HttpPool(f"http://127.0.0.1:{free_port()}", limit=1)
    with pytest.raises(ConnectFailed):
        await _get(pool)
    await pool.close()


@pytest.mark.anyio
async def test_a_large_stream_read_slowly_arrives_whole() -> None:
    """Above the high-water mark the socket is paused, and resumed as the reader catches up; nothing is lost, and a
    reader slower than the read bound is not taken for a silent server."""
    block = bytes(range(256)) * 4096  # 1 MiB

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (len(block) * 4))
        for _ in range(4):
            writer.write(block)
            await writer.drain()

    async with serving(handler) as (pool, _):
        resp = await pool.request("GET", "/v1/x", {}, None, Timeouts(connect=5, open=5, read=0.3))
        got = bytearray()
        async for chunk in resp.chunks():
            got += chunk
            await asyncio.sleep(0.5)
        assert bytes(got) == block * 4


def test_only_http_urls_make_a_pool() -> None:
    with pytest.raises(ValueError, match="not an http"):
        HttpPool("ftp://example.com/v1", limit=1)
    assert HttpPool("https://example.com/v1", limit=1).port == 443


@pytest.mark.anyio
async def test_a_whole_body_over_the_high_water_mark_is_read_whole() -> None:
    body = bytes(range(256)) * 4096 * 3  # 3 MiB: reading pauses above 1 MiB and must resume for read() too

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await _answers(reader, writer)

    async with serving(handler) as (pool, accepted):
        assert await asyncio.wait_for(_get(pool, Timeouts(connect=5, open=5, read=1)), 20) == (200, body)
        assert await _get(pool) == (200, b"ok")
    assert len(accepted) == 1


@pytest.mark.anyio
async def test_a_body_delimited_by_the_close_that_stalls_fails_and_is_not_taken_as_whole() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\npart1-")
        await asyncio.sleep(10)

    async with serving(handler) as (pool, _):
        resp = await pool.request("GET", "/v1/x", {}, None, Timeouts(connect=5, open=5, read=0.3))
        chunks = resp.chunks()
        assert await anext(chunks) == b"part1-"
        await asyncio.sleep(0.6)  # a slow reader: the stall is found while nobody waits
        with pytest.raises(ReadTimeout):
            await anext(chunks)


@pytest.mark.anyio
@pytest.mark.parametrize("drain", [True, False])
async def test_a_stream_released_at_its_logical_end_keeps_its_connection_once_the_framing_ends(drain: bool) -> None:
    """An SSE stream's ``[DONE]`` comes before the chunked body's last chunk; released with ``drain`` there, the
    connection is kept once that chunk comes. Released without (an aborted answer), it is closed."""
    gate = asyncio.Event()

    async def stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\ne\r\ndata: [DONE]\n\n\r\n")
        await writer.drain()
        await gate.wait()
        writer.write(b"0\r\n\r\n")
        await _answers(reader, writer)

    async with serving(_first_then_answers(stream)) as (pool, accepted):
        resp = await pool.request("POST", "/v1/s", {}, b"{}", T)
        assert await anext(resp.chunks()) == b"data: [DONE]\n\n"
        resp.release(drain=drain)
        gate.set()
        await asyncio.sleep(0.1)
        assert await _get(pool) == (200, b"ok")
    assert len(accepted) == (1 if drain else 2)


@pytest.mark.anyio
async def test_a_connection_whose_answer_was_left_unread_past_the_high_water_mark_is_not_reused() -> None:
    block = b"x" * (2**20 + 10)

    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(block) + block)
        await _answers(reader, writer)

    async with serving(_first_then_answers(big)) as (pool, accepted):
        resp = await pool.request("GET", "/v1/x", {}, None, T)
        while not resp._live().complete:  # the whole answer arrives, and reading was paused on the way
            await asyncio.sleep(0.01)
        resp.release()  # unread: the transport may still be paused
        assert await asyncio.wait_for(_get(pool, Timeouts(connect=5, open=5, read=1)), 10) == (200, b"ok")
    assert len(accepted) == 2


@pytest.mark.anyio
async def test_head_is_refused_and_a_closed_pool_refuses_calls_even_those_already_waiting() -> None:
    release = asyncio.Event()

    async def held(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request(reader)
        await release.wait()
        writer.write(OK)

    async with serving(held) as (pool, _):
        with pytest.raises(ValueError, match="HEAD"):
            await pool.request("HEAD", "/v1/x", {}, None, T)
        busy = [asyncio.create_task(_get(pool)) for _ in range(4)]
        await asyncio.sleep(0.1)
        waiting = asyncio.create_task(_get(pool))
        await asyncio.sleep(0.1)
        await pool.close()
        release.set()
        assert await asyncio.gather(*busy) == [(200, b"ok")] * 4  # calls in flight finish
        with pytest.raises(PoolClosed):
            await waiting
        with pytest.raises(PoolClosed):
            await _get(pool)
