"""A scripted HTTP stage for ``StageClient``'s fault-injection tests: a fake, not a model.

An aiohttp server in the test's own event loop, on a free port of 127.0.0.1, that
answers every POST (``/v1/chat/completions``, ``/v1/completions``) from a ``Script``:
a status line after an optional delay, then the body in ``Piece``s, each written
after its own delay or once the test opens its gate. That is what the byte- and
time-level faults need, which neither ``servers/stub_server.py`` (a process with a
fixed set of modes, LF-framed) nor ``tests/router/fake_stage.py`` (no HTTP at all)
can script: SSE framed with ``\\r\\n\\r\\n`` or ``\\r\\r``, an event split across
writes, a stream slow but steady for longer than the client's timeout, a stream
that stalls in the middle, a status line that never comes, a connection cut mid-answer.

A piece is one write and one flush, so with a gate between them the client sees
two separate network reads; without one, the kernel may merge them.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web

SHUTDOWN_S = 0.5  # a handler still writing when the test ends (a stalled stream) is cut after this long


@dataclass
class Piece:
    """One write of the body: ``data`` after ``after_s`` seconds, and once ``gate`` is set (when there is one)."""

    data: bytes
    after_s: float = 0.0
    gate: asyncio.Event | None = None


@dataclass
class Script:
    """What the stage answers to every request."""

    pieces: Sequence[Piece] = ()
    status: int = 200
    content_type: str = "text/event-stream"
    status_after_s: float = 0.0  # silence before the status line (a stage that queues or hangs)
    cut: bool = False  # drop the connection after the pieces instead of ending the body (a stage that dies mid-answer)
    requests: list[bytes] = field(default_factory=list)  # the bodies it was sent, in order


@asynccontextmanager
async def scripted_stage(script: Script) -> AsyncIterator[str]:
    """Serve ``script`` while the block runs; yields the stage's base URL (``http://127.0.0.1:<port>/v1``)."""

    async def answer(request: web.Request) -> web.StreamResponse:
        script.requests.append(await request.read())
        if script.status_after_s:
            await asyncio.sleep(script.status_after_s)
        response = web.StreamResponse(status=script.status, headers={"Content-Type": script.content_type})
        await response.prepare(request)
        for piece in script.pieces:
            if piece.after_s:
                await asyncio.sleep(piece.after_s)
            if piece.gate is not None:
                await piece.gate.wait()
            await response.write(piece.data)
        if script.cut and request.transport is not None:
            request.transport.abort()
            return response
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/{path:.*}", answer)
    runner = web.AppRunner(app, shutdown_timeout=SHUTDOWN_S)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    await web.SockSite(runner, sock).start()
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        for piece in script.pieces:  # let a gated handler finish rather than wait for the shutdown timeout
            if piece.gate is not None:
                piece.gate.set()
        await runner.cleanup()
