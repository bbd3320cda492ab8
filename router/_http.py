"""The router's HTTP/1.1 client for its stages: pooled keep-alive connections on asyncio, parsed by httptools.

Why not aiohttp or httpx: a call to a stage is the router's hot path, and on a pass-through request against an
instant stage a sampling profile put about a fifth of the router's CPU in aiohttp's client (request and response
objects, header multidicts, its payload writer, timers per read). A stage call needs little of that: one POST
(or GET) of bytes, to one origin, whose answer is read whole or as a stream of body chunks. This module does only
that, with one write per request and one parser callback per body chunk; httptools (already under uvicorn) does
the parsing, chunked transfer decoding included. TLS is the event loop's own (``https://`` stage URLs).

Timeouts bound silences, not lengths (``Timeouts``): getting a connection (pool wait and opening it, ``connect``),
opening one socket (``open``), the gap before and between received bytes (``read``), and optionally the whole
call (``total``). A silence is checked by one timer per call that re-arms itself for the time left since the
last byte, so a steady stream costs no timer per chunk.

Failures are this module's own (``HttpError`` and subclasses); ``router.stage_client`` maps them to the
cascade's typed stage failures, once. A connection taken from the pool that the server closed meanwhile (its
keep-alive ran out as the request went) is retried once on a new connection, if no byte of an answer came.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools

__all__ = [
    "ConnectFailed",
    "ConnectTimeout",
    "HttpError",
    "HttpPool",
    "HttpResponse",
    "PoolClosed",
    "ProtocolFailure",
    "ReadTimeout",
    "Timeouts",
    "TotalTimeout",
]

DRAIN_S = 1.0  # how long a connection released at its answer's logical end may take to finish the framing
KEEPALIVE_S = 30.0  # an idle pooled connection older than this is closed rather than reused
STREAM_HIGH_WATER = 2**20  # buffered body bytes of a stream not yet read: stop reading the socket above this


class HttpError(Exception):
    """A stage call that failed in transport or protocol (not an HTTP status: those are answers)."""


class ConnectFailed(HttpError):
    """The connection could not be opened (refused, unreachable, DNS, TLS handshake)."""

    def __init__(self, os_error: BaseException) -> None:
        super().__init__(str(os_error))
        self.os_error = os_error


class ConnectTimeout(HttpError):
    """No connection in time: ``opening`` when one socket's opening ran out (``Timeouts.open``), else the whole wait
    for a connection, pool included (``Timeouts.connect``)."""

    def __init__(self, opening: bool) -> None:
        super().__init__("opening a connection timed out" if opening else "getting a connection timed out")
        self.opening = opening


class ReadTimeout(HttpError):
    """No byte of the answer for ``Timeouts.read`` seconds."""


class TotalTimeout(HttpError):
    """The whole call ran past ``Timeouts.total``."""


class ProtocolFailure(HttpError):
    """The connection broke, or what came was not HTTP."""


class PoolClosed(HttpError):
    """The pool was closed (the router is shutting down)."""


@dataclass(frozen=True)
class Timeouts:
    """Seconds; ``None`` for no bound. See the module docstring for what each bounds."""

    connect: float | None
    open: float | None
    read: float | None
    total: float | None = None

    @classmethod
    def within(cls, seconds: float) -> Timeouts:
        """Every bound the same: a quick call that must be over within ``seconds`` (a probe)."""
        return cls(seconds, seconds, seconds, seconds)


class _Connection(asyncio.Protocol):
    """One keep-alive connection: the transport, its response parser and what the call waiting on it may read."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.got_bytes = False
        self.error: HttpError | None = None
        self.last_byte = 0.0
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.paused = False
        self._length_known = False
        self._waiter: asyncio.Future[None] | None = None
        self.on_drained: Callable[[], None] | None = None  # set while the pool waits for the end of an answer read enough

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        self.last_byte = self._loop.time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ProtocolFailure(f"malformed HTTP answer: {exc}"))
            if self.transport is not None:
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.complete:
            return
        if self.error is None and self.headers_done and not self._length_known and exc is None:  # delimited by the close
            self.on_message_complete()
        else:
            self._fail(ProtocolFailure(f"connection closed before the answer was complete{f' ({exc})' if exc else ''}"))

    # httptools callbacks
    def on_header(self, name: bytes, _value: bytes) -> None:
        if name.lower() in (b"content-length", b"transfer-encoding"):
            self._length_known = True

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        if self.status < 200:  # 1xx: informational, the real status line follows in the same stream
            return
        self.headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self.on_drained is not None:  # the reader has all it wanted: what is left is only waited out
            return
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > STREAM_HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if not self.headers_done:  # the end of a 1xx
            return
        self.keep_alive = self._parser.should_keep_alive()  # the parser's answer holds only until its next message
        self.complete = True
        self._wake()
        if self.on_drained is not None:
            done, self.on_drained = self.on_drained, None
            done()

    # the calling side
    def _fail(self, error: HttpError) -> None:
        if self.error is None:
            self.error = error
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait(self) -> None:
        """Until something new: headers, a body chunk, the end, or a failure (raised)."""
        if self.error is not None:
            raise self.error
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None
        if self.error is not None:
            raise self.error

    def take(self) -> bytes:
        """The body bytes received and not yet read."""
        data = b"".join(self.chunks) if len(self.chunks) != 1 else self.chunks[0]
        self.chunks.clear()
        self.buffered = 0
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return data

    def reusable(self) -> bool:
        """Whether the next call may use it: its answer read to the end, cleanly, and the transport open and reading."""
        t = self.transport
        return (self.complete and self.keep_alive and not self.closed and self.error is None and not self.paused
                and t is not None and not t.is_closing())  # fmt: skip


class HttpResponse:
    """A stage's answer once its status line and headers have come; its body is read whole or chunk by chunk,
    exactly once. ``release()`` (done by both readers) hands the connection back or closes it."""

    def __init__(self, pool: HttpPool, conn: _Connection, deadline: _Deadline) -> None:
        self.status = conn.status
        self._pool = pool
        self._conn: _Connection | None = conn
        self._deadline = deadline

    async def read(self) -> bytes:
        """The whole body."""
        conn = self._live()
        parts: list[bytes] = []
        try:
            while not conn.complete:
                await conn.wait()
                if conn.paused:  # a body over the high-water mark: take what came, so that reading resumes
                    parts.append(conn.take())
            parts.append(conn.take())
            return parts[0] if len(parts) == 1 else b"".join(parts)
        finally:
            self.release()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives: one item per batch of received bytes."""
        conn = self._live()
        try:
            while True:
                if conn.chunks:
                    yield conn.take()
                elif conn.error is not None:
                    raise conn.error
                elif conn.complete:
                    return
                else:
                    await conn.wait()
        finally:
            self.release()

    def __del__(self) -> None:  # an answer dropped unread (a stream never iterated): its slot must not leak
        if self._conn is not None:
            self._conn.closed = True
            with contextlib.suppress(RuntimeError):  # collected after its event loop closed: nothing left to free
                self.release()

    def release(self, drain: bool = False) -> None:
        """Hand the connection back. ``drain``: the reader has seen the logical end of the answer (an SSE stream's
        ``[DONE]``) and only the framing's end is still to come (a chunked body's last chunk): the pool keeps the
        connection if that comes within ``DRAIN_S``. Otherwise an answer not read to its end closes the connection,
        which also tells the stage to stop (an aborted generation)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self._deadline.cancel()
            self._pool.give_back(conn, drain)

    def _live(self) -> _Connection:
        if self._conn is None:
            raise RuntimeError("the answer's body was read already")
        return self._conn


class _Deadline:
    """The silence (``Timeouts.read``) and total bounds of one call, as one self-re-arming timer per call."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeouts: Timeouts, started: float) -> None:
        self._loop = loop
        self._read = timeouts.read
        self._total_at = started + timeouts.total if timeouts.total is not None else None
        self._conn: _Connection | None = None
        self._timer: asyncio.TimerHandle | None = None

    def watch(self, conn: _Connection) -> None:
        """Start bounding the silences of ``conn`` (from now: the request was just written)."""
        self._conn = conn
        conn.last_byte = self._loop.time()
        self._arm()

    def _arm(self) -> None:
        conn = self._conn
        if conn is None:
            return
        at = [t for t in (conn.last_byte + self._read if self._read is not None else None, self._total_at) if t is not None]
        if at:
            self._timer = self._loop.call_at(min(at), self._check)

    def _check(self) -> None:
        conn, now = self._conn, self._loop.time()
        if conn is None or conn.complete:
            return
        if conn.paused:  # the reader is behind, not the stage: a full buffer is no silence
            conn.last_byte = now
        if self._total_at is not None and now >= self._total_at:
            self._expire(conn, TotalTimeout("the whole call ran past its total bound"))
        elif self._read is not None and now >= conn.last_byte + self._read:
            self._expire(conn, ReadTimeout(f"no byte for {self._read:g} s"))
        else:
            self._arm()

    def _expire(self, conn: _Connection, error: HttpError) -> None:
        conn._fail(error)
        if conn.transport is not None:
            conn.transport.abort()  # the answer is abandoned: the connection cannot be reused

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._conn = None


class HttpPool:
    """Keep-alive connections to one origin (``base_url``'s scheme, host and port), at most ``limit`` at a time.

    ``request`` writes one request and returns the answer once its headers have come; the caller reads its body
    (``HttpResponse``), which hands the connection back. A caller over the limit waits for a connection, within
    ``Timeouts.connect`` together with opening one.
    """

    def __init__(self, base_url: str, limit: int, keepalive_s: float = KEEPALIVE_S) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.path = parts.path.rstrip("/")
        self._ssl = ssl.create_default_context() if parts.scheme == "https" else None
        default = (parts.scheme == "https") == (self.port == 443) and self.port in (80, 443)
        self._host_header = (f"[{self.host}]" if ":" in self.host else self.host) + ("" if default else f":{self.port}")
        self._limit = limit
        self._keepalive_s = keepalive_s
        self._idle: list[_Connection] = []
        self._open = 0  # connections in use or idle
        self._slots = asyncio.Semaphore(limit)
        self._closed = False

    def head(self, method: str, path: str, headers: dict[str, str], length: int | None) -> bytes:
        """The request line and headers (``path`` from the root: ``self.path`` is the base URL's)."""
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self._host_header}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        if length is not None:
            lines.append(f"Content-Length: {length}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def request(self, method: str, path: str, headers: dict[str, str], body: bytes | None, timeouts: Timeouts) -> HttpResponse:
        """Send one request; the answer once its status and headers have come (its body still to read)."""
        if any("\r" in x or "\n" in x for kv in headers.items() for x in kv):
            raise ValueError("a header name or value holds a line break")
        if method == "HEAD":  # httptools cannot be told that an answer has no body for it: it would wait for one
            raise ValueError("HEAD is not supported")
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = _Deadline(loop, timeouts, started)
        data = self.head(method, path, headers, len(body) if body is not None else None) + (body or b"")
        for attempt in range(2):
            conn, reused = await self._connection(loop, timeouts, started)
            conn._reset()
            deadline.watch(conn)
            try:
                assert conn.transport is not None
                conn.transport.write(data)
                while not conn.headers_done:
                    await conn.wait()
            except BaseException as exc:
                deadline.cancel()
                self.give_back(conn)  # an unfinished answer: the connection is closed, the slot freed
                if isinstance(exc, ProtocolFailure) and reused and not conn.got_bytes and attempt == 0:
                    continue  # the server closed it as the request went: once more on a new connection
                raise
            return HttpResponse(self, conn, deadline)
        raise AssertionError("unreachable")

    async def get(self, url: str, headers: dict[str, str], timeouts: Timeouts) -> tuple[int, bytes]:
        """GET ``url`` (of this pool's origin) and read it whole: its status and body."""
        parts = urlsplit(url)
        if (parts.hostname, parts.port or self.port) != (self.host, self.port):
            raise ValueError(f"{url!r} is not on {self.host}:{self.port}")
        resp = await self.request("GET", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""), headers, None, timeouts)
        return resp.status, await resp.read()

    async def _connection(self, loop: asyncio.AbstractEventLoop, timeouts: Timeouts, started: float) -> tuple[_Connection, bool]:
        """A connection for one call (and the call's slot among ``limit``): an idle one if any is fresh, else a new one."""
        if self._closed:
            raise PoolClosed("the connection pool is closed")
        if self._slots.locked():  # all ``limit`` in use: wait for one within the connect bound
            budget = None if timeouts.connect is None else max(0.0, started + timeouts.connect - loop.time())
            try:
                async with asyncio.timeout(budget):
                    await self._slots.acquire()
            except TimeoutError:
                raise ConnectTimeout(opening=False) from None
        else:
            await self._slots.acquire()
        if self._closed:  # closed while this call waited for a slot
            self._slots.release()
            raise PoolClosed("the connection pool is closed")
        now = loop.time()
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and now - conn.idle_since < self._keepalive_s:
                return conn, True
            self._close(conn)
        try:
            return await self._new(loop, timeouts, started), False
        except BaseException:
            self._slots.release()
            raise

    async def _new(self, loop: asyncio.AbstractEventLoop, timeouts: Timeouts, started: float) -> _Connection:
        left = None if timeouts.connect is None else started + timeouts.connect - loop.time()
        bounds = [b for b in (left, timeouts.open) if b is not None]
        opening = timeouts.open is not None and (left is None or timeouts.open <= left)
        try:
            async with asyncio.timeout(min(bounds) if bounds else None):
                _, conn = await loop.create_connection(
                    lambda: _Connection(loop), self.host, self.port, ssl=self._ssl, server_hostname=self.host if self._ssl else None
                )
        except TimeoutError:
            raise ConnectTimeout(opening=opening) from None
        except OSError as exc:
            raise ConnectFailed(exc) from None
        return conn

    def give_back(self, conn: _Connection, drain: bool = False) -> None:
        """The end of a call: its slot freed, its connection kept for the next call when it can serve one (with
        ``drain``, once its answer's framing has ended: ``HttpResponse.release``)."""
        self._slots.release()
        if drain and not conn.complete and conn.headers_done and conn._length_known and conn.error is None and not conn.closed:
            conn.take()  # what was buffered: unread, and reading resumes
            timer = conn._loop.call_later(DRAIN_S, self._close, conn)

            def drained() -> None:
                timer.cancel()
                self._keep(conn)

            conn.on_drained = drained
            return
        self._keep(conn)

    def _keep(self, conn: _Connection) -> None:
        if conn.reusable() and not self._closed and len(self._idle) < self._limit:
            conn.idle_since = conn._loop.time()
            self._idle.append(conn)
        else:
            self._close(conn)

    @staticmethod
    def _close(conn: _Connection) -> None:
        conn.closed = True
        if conn.transport is not None and not conn.transport.is_closing():
            conn.transport.close()

    async def close(self) -> None:
        """Close the idle connections; those in use close when their call ends."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            self._close(conn)
        await asyncio.sleep(0)  # let the transports run their close callbacks
