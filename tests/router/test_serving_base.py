"""``router.openai.serving_base.SSEResponse``: a stream's body is closed when its client leaves, not at its GC.

The ASGI server here is a stand-in (``send`` and ``receive`` written for the case), because the case is a
client that goes away while a chunk is being sent: a real client and server cannot be timed to leave at that
point. What runs in the body's ``finally`` (the stage's stream, the tap's row, the tenant's accounting) must
have run by the time the response returns.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import anyio
import pytest
from starlette.requests import ClientDisconnect
from starlette.responses import StreamingResponse

from router.closing import Link
from router.openai.serving_base import SSE, OpenAIServing, SSEResponse
from router.stream_tap import StreamedAnswer, tap

pytestmark = pytest.mark.anyio

SCOPE = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}}


class _Body:
    """An SSE body that counts what it sent and says when its ``finally`` ran (and whether it could still await)."""

    def __init__(self) -> None:
        self.sent = 0
        self.closed = False

    async def events(self) -> AsyncIterator[bytes]:
        try:
            while True:
                self.sent += 1
                yield b"data: {}\n\n"
        finally:
            await anyio.sleep(0)  # a stage stream's close awaits: it must not be cancelled
            self.closed = True


async def _leaves_mid_send(response: StreamingResponse) -> None:
    """Serve ``response`` to a client that leaves while its second body chunk is being sent."""
    sent: list[dict[str, Any]] = []
    gone = anyio.Event()

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and len(sent) == 3:
            gone.set()
            await anyio.sleep_forever()  # the client stopped reading: this send never completes

    async def receive() -> dict[str, Any]:
        await gone.wait()
        return {"type": "http.disconnect"}

    with anyio.fail_after(5):
        await response(SCOPE, receive, send)


async def test_a_stream_whose_client_leaves_mid_send_is_closed_before_the_response_returns() -> None:
    body = _Body()
    response = SSEResponse(body.events(), {"x-cascade-stage": "s0"})
    await _leaves_mid_send(response)
    assert body.sent == 2 and body.closed  # while `response` still holds the generator: closed, not waiting for GC


async def test_the_close_reaches_the_stages_stream_through_every_link_of_the_chain() -> None:
    """A pass-through's chain as the router builds it: the stage's stream, the tap that keeps its answer, the relay
    that renames its model. The stage's stream (held here, as the cascade's reference cycle holds it) is closed and
    the tap has told its end (None: not run to its end) before the response returns, not when a collector runs."""
    body = _Body()
    source = body.events()
    ended: list[StreamedAnswer | None] = []
    stage: Any = SimpleNamespace(name="s0", config=SimpleNamespace(model="m0"))
    chain = OpenAIServing.relay(tap(source, ended.append), stage, StreamedAnswer(whole=False))
    await _leaves_mid_send(SSEResponse(chain, {}))
    assert body.closed and ended == [None]


async def test_on_an_asgi_2_4_server_a_send_that_fails_closes_the_stream_too() -> None:
    """ASGI 2.4: the server's ``send`` raises ``OSError`` once the client has gone; Starlette re-raises it."""
    body = _Body()

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and body.sent == 2:
            raise OSError("the client has gone")

    async def receive() -> dict[str, Any]:
        raise AssertionError("an ASGI 2.4 response does not listen for the disconnect")

    with pytest.raises(ClientDisconnect):
        await SSEResponse(body.events(), {})({**SCOPE, "asgi": {"version": "3.0", "spec_version": "2.4"}}, receive, send)
    assert body.closed


async def test_starlettes_own_streaming_response_leaves_it_suspended() -> None:
    """Why ``SSEResponse`` exists: the same client on Starlette's class leaves the body suspended at its ``yield``."""
    body = _Body()
    events = body.events()
    response = StreamingResponse(events, media_type=SSE)
    await _leaves_mid_send(response)
    assert body.sent == 2 and not body.closed
    await events.aclose()  # this test's own cleanup
    assert body.closed


async def test_an_sse_response_says_its_media_type_and_keeps_proxies_from_buffering() -> None:
    response = SSEResponse(_Body().events(), {"x-cascade-stage": "s0"})
    assert response.media_type == SSE
    assert response.headers["x-accel-buffering"] == "no" and response.headers["cache-control"] == "no-cache"
    assert response.headers["x-cascade-stage"] == "s0"


async def test_a_client_gone_before_the_first_byte_still_closes_the_stages_stream_and_settles() -> None:
    """The client's timeout ran out while the cascade decided: the server's first ``send`` fails (ASGI 2.4), and
    Starlette never iterates the body. Every link is closed all the same: the stage's stream gives its connection
    back, the tap tells its end (None), and the accounting wrapped around the chain (as ``router.api`` wraps it)
    settles, in that order."""
    log: list[str] = []

    async def stage_events() -> AsyncIterator[bytes]:
        yield b"{}"

    source = Link(stage_events(), unstarted=lambda: log.append("released"))  # as StageClient.stream hands it on
    stage: Any = SimpleNamespace(name="s0", config=SimpleNamespace(model="m0"))
    chain = OpenAIServing.relay(tap(source, lambda answer: log.append(f"tapped {answer}")), stage, StreamedAnswer(whole=False))
    counted = Link(chain, chain, unstarted=lambda: log.append("settled"))

    async def send(message: dict[str, Any]) -> None:
        raise OSError("the client has gone")

    async def receive() -> dict[str, Any]:
        raise AssertionError("an ASGI 2.4 response does not listen for the disconnect")

    with anyio.fail_after(5), pytest.raises(ClientDisconnect):
        await SSEResponse(counted, {})({**SCOPE, "asgi": {"version": "3.0", "spec_version": "2.4"}}, receive, send)
    assert log == ["released", "tapped None", "settled"]
