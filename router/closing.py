"""Closing a stream the router wraps: the close of the outermost one reaches the stage's.

The router hands a stage's stream on through a chain of async generators (the tap that keeps its answer, the
rendering that rewrites its chunks, the accounting that settles it), each a loop ``async for x in inner: yield``.
Closing a generator raises ``GeneratorExit`` at its ``yield``, which leaves the loop but does not close ``inner``:
that is left to the garbage collector, and on the cascade's path a reference cycle (the tap's callback holds the
result that holds the stream) makes that the cyclic collector, seconds or minutes later. Until then the stage goes
on writing for a client that has gone, its pool counts a request in flight, and the tap's row, labels and shadow
check wait. A generator closed before its first step runs none of its body, ``finally`` included: the case of a
client gone before the response's first byte (Starlette then never iterates the body: a client whose timeout ran
out while the cascade decided), and of the links below one that sends something before it reads its inner stream
(a verified draft's prefix).

So each link of the chain is a ``Link`` (``link``): closing it closes its body, then the streams it wraps, however
far the body got, and runs the link's own cleanup where the body never started (``unstarted``). One ``aclose`` at
the top (``router.openai.serving_base.SSEResponse``) closes every link down to the stage's HTTP stream. A link
whose own cleanup must come after its inner stream has ended (the tap tells its answer, the accounting settles)
closes that stream itself first (``closing``, ``aclose``).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterable, AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, ParamSpec, TypeVar

T = TypeVar("T")
P = ParamSpec("P")


async def aclose(stream: AsyncIterable[Any] | None) -> None:
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


class Link(AsyncIterator[T]):
    """One link of a stream chain: ``body`` (an async generator over ``inner``), closed whole whether it ran or not.

    Closing it closes ``body``, then ``inner``, in order, however far the body got (a body that closed one itself
    leaves a second close with nothing to do). Closed before its first step, the body ran none of its cleanup:
    ``unstarted`` runs then (what its ``finally`` would have done, e.g. the tap's "not run to its end"), even when
    a close fails.
    """

    __slots__ = ("_body", "_inner", "_started", "_unstarted")

    def __init__(self, body: AsyncIterator[T], *inner: AsyncIterable[Any] | None, unstarted: Callable[[], None] | None = None) -> None:
        self._body = body
        self._inner = inner
        self._unstarted = unstarted
        self._started = False

    def __aiter__(self) -> Link[T]:
        return self

    async def __anext__(self) -> T:
        self._started = True
        return await self._body.__anext__()

    async def aclose(self) -> None:
        started, self._started = self._started, True  # a second close runs no cleanup again
        try:
            await aclose(self._body)  # unstarted: marks it closed, it never runs
            for stream in self._inner:
                await aclose(stream)
        finally:
            if not started and self._unstarted is not None:
                self._unstarted()


def link(*inner: str) -> Callable[[Callable[P, AsyncIterator[T]]], Callable[P, AsyncIterator[T]]]:
    """An async generator function whose streams are a ``Link`` over its arguments named ``inner`` (each must be a
    parameter of it: a name that is not would close nothing)."""

    def wrap(fn: Callable[P, AsyncIterator[T]]) -> Callable[P, AsyncIterator[T]]:
        signature = inspect.signature(fn)
        unknown = [name for name in inner if name not in signature.parameters]
        if unknown:
            raise TypeError(f"{fn.__qualname__} has no parameter {', '.join(unknown)}")

        @functools.wraps(fn)
        def linked(*args: P.args, **kwargs: P.kwargs) -> AsyncIterator[T]:
            given = signature.bind(*args, **kwargs)
            given.apply_defaults()
            return Link(fn(*args, **kwargs), *(given.arguments[name] for name in inner))

        return linked

    return wrap
