"""``router.closing``: a link of a stream chain closed before its first step still closes what it wraps.

The streams here are plain async generators standing in for a stage's stream and the router's links: what is
tested is the order of closes and cleanups, which needs no stage.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from router.closing import Link, closing, link

pytestmark = pytest.mark.anyio


class _Source:
    """A stage's stream as ``StageClient`` hands it on: its connection is released when it ends or is closed."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    async def _events(self) -> AsyncIterator[bytes]:
        try:
            yield b"a"
            yield b"b"
        finally:
            self.log.append("source released")

    def stream(self) -> AsyncIterator[bytes]:
        return Link(self._events(), unstarted=lambda: self.log.append("source released"))


class _Relay:
    """A link that sends a first part of its own (a verified draft's prefix) before reading its inner stream."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    @link("events")
    async def relay(self, events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        try:
            async with closing(events):
                yield b"prefix"
                async for e in events:
                    yield e
        finally:
            self.log.append("relay ended")


async def test_a_link_closed_before_its_first_step_closes_its_inner_stream_and_runs_its_cleanup() -> None:
    log: list[str] = []
    inner = _Source(log).stream()
    outer = Link(_Relay(log).relay(inner), inner, unstarted=lambda: log.append("settled"))
    await outer.aclose()
    # neither generator ran, yet the stage's stream was released and the outer link's cleanup ran, in that order
    assert log == ["source released", "settled"]
    await outer.aclose()  # a second close does nothing more
    assert log == ["source released", "settled"]


async def test_a_link_closed_after_its_own_first_part_closes_the_unstarted_stream_below_it() -> None:
    """The relay sent its prefix and never read the stage's stream: its close reaches the stream all the same."""
    log: list[str] = []
    relay = _Relay(log).relay(_Source(log).stream())
    assert await anext(relay) == b"prefix"
    await relay.aclose()
    assert log == ["source released", "relay ended"]


async def test_a_started_link_leaves_its_cleanup_to_its_body() -> None:
    log: list[str] = []
    source = _Source(log).stream()
    outer = Link(_Relay(log).relay(source), source, unstarted=lambda: log.append("unstarted cleanup"))
    assert [e async for e in outer] == [b"prefix", b"a", b"b"]
    await outer.aclose()
    assert log == ["source released", "relay ended"]  # once each; the unstarted cleanup is not run


async def test_the_unstarted_cleanup_runs_even_when_closing_the_inner_stream_fails() -> None:
    log: list[str] = []

    class Broken:
        async def aclose(self) -> None:
            raise RuntimeError("close failed")

    async def body() -> AsyncIterator[bytes]:
        yield b"never"

    with pytest.raises(RuntimeError, match="close failed"):
        await Link(body(), Broken(), unstarted=lambda: log.append("settled")).aclose()  # type: ignore[arg-type]
    assert log == ["settled"]


async def test_a_link_whose_body_failed_before_its_closing_block_still_closes_its_inner_stream() -> None:
    """The body raised in its first step, before it opened ``closing(events)`` (a relay's prefix that cannot be
    rendered): closing the link closes the stage's stream all the same, and runs no unstarted cleanup."""
    log: list[str] = []

    @link("events")
    async def broken(events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        raise ValueError("cannot render the prefix")
        yield b""  # an async generator

    relay = broken(_Source(log).stream())
    with pytest.raises(ValueError):
        await anext(relay)
    await relay.aclose()  # type: ignore[attr-defined]
    assert log == ["source released"]


def test_link_refuses_a_name_that_is_not_a_parameter() -> None:
    with pytest.raises(TypeError, match="no parameter stream"):

        @link("stream")
        async def relay(events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
            yield b""
