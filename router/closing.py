"""Closing a stream the router wraps: the close of the outermost one reaches the stage's.

The router hands a stage's stream on through a chain of async generators (the tap that keeps its answer, the
rendering that rewrites its chunks, the accounting that settles it), each a loop ``async for x in inner: yield``.
Closing a generator raises ``GeneratorExit`` at its ``yield``, which leaves the loop but does not close ``inner``:
that is left to the garbage collector, and on the cascade's path a reference cycle (the tap's callback holds the
result that holds the stream) makes that the cyclic collector, seconds or minutes later. Until then the stage goes
on writing for a client that has gone, its pool counts a request in flight, and the tap's row, labels and shadow
check wait. Each link of the chain opens its inner stream with ``closing``, so one ``aclose`` at the top
(``router.openai.serving_base.SSEResponse``) closes every link down to the stage's HTTP stream, in order.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

T = TypeVar("T")


async def aclose(stream: AsyncIterable[Any]) -> None:
    """Close ``stream`` where it can be closed (an async generator, an HTTP body); others have nothing to close."""
    close = getattr(stream, "aclose", None)
    if close is not None:
        await close()


@asynccontextmanager
async def closing(stream: AsyncIterator[T]) -> AsyncIterator[AsyncIterator[T]]:
    """``stream``, closed (``aclose``) when the block is left, however."""
    try:
        yield stream
    finally:
        await aclose(stream)
