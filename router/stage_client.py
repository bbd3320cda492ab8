"""HTTP client for one stage (the ``router.stage.Stage`` implementation): pooled keep-alive connections with timeouts.

The transport is ``router._http``, the router's own lean HTTP/1.1 client: this call is the router's hot path,
and aiohttp's client spent about a fifth of the router's CPU on a pass-through (httpx's ~1.5 ms more per call
again; docs/architecture.md says more). httpx stays in the stack for tools and tests.

Failures are typed so the cascade can react: ``StageUnavailable`` (cannot
connect), ``StageTimeout``, ``StageBadResponse`` (5xx or unparseable body),
``StageNoCompletions`` (404/405 on ``/completions``); any other 4xx from the
stage is the client's fault and is relayed as an ``APIError``. Chat and
completions calls share one pool and one way of posting and reading.
The failure classes and ``StageReply`` live in ``router.stage`` and are
re-exported here.

Timeouts bound the stage's silences, not its answer's length (``stage_timeouts``):
a long stream that keeps coming is healthy, and a stage that stops sending is
caught ``timeout_s`` after its last byte. Streams are cut into events by
``router.sse``, whatever line ends the stage frames them with.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import orjson

from common.errors import APIError
from common.settings import StageConfig
from router._http import ConnectFailed, ConnectTimeout, HttpError, HttpPool, HttpResponse, ReadTimeout, Timeouts, TotalTimeout
from router.closing import Link
from router.sse import DONE, EventBlocks, EventDecoder
from router.stage import StageBadResponse, StageFailure, StageNoCompletions, StageReply, StageTimeout, StageUnavailable

__all__ = [
    "POOL_SIZE",
    "StageBadResponse",
    "StageClient",
    "StageFailure",
    "StageNoCompletions",
    "StageReply",
    "StageTimeout",
    "StageUnavailable",
    "stage_timeouts",
]

POOL_SIZE = 100  # connections to one stage at a time
PROBE_POOL_SIZE = 2  # connections for health probes, apart: a stage busy with POOL_SIZE calls still answers its probe
HEALTH_TIMEOUTS = Timeouts(connect=2, open=2, read=2, total=2)  # ``healthy()``: a quick yes or no, not a request
Phase = Literal["answer", "start", "stream"]  # what a call to the stage was doing when it failed, for the message


def stage_timeouts(config: StageConfig) -> Timeouts:
    """A stage's timeouts: its silences are bounded, not the length of its answer.

    ``timeout_s`` bounds getting a connection (``connect``: a free one from the pool, or a new one opened), then the
    wait for the first byte of the answer and between two bytes (``read``); ``connect_timeout_s`` opening a
    connection (``open``, TLS included); ``total_timeout_s``, when set, the whole call (``total``).
    """
    return Timeouts(connect=config.timeout_s, open=config.connect_timeout_s, read=config.timeout_s, total=config.total_timeout_s)


class StageClient:
    """A ``router.stage.Stage`` over HTTP: ``start()`` opens the pooled session, ``close()`` ends it."""

    def __init__(self, config: StageConfig) -> None:
        self.config = config
        self.name = config.name
        self._headers = {"Content-Type": "application/json", "User-Agent": "adaptive-sd"}
        if config.api_key:
            self._headers["Authorization"] = f"Bearer {config.api_key}"
        self._timeouts = stage_timeouts(config)
        self._pool: HttpPool | None = None
        self._probes: HttpPool | None = None
        base = config.url.rstrip("/")
        self._completions_url = f"{base}/completions"

    async def start(self) -> None:
        self._pool = HttpPool(self.config.url, POOL_SIZE)
        self._probes = HttpPool(self.config.url, PROBE_POOL_SIZE)

    async def close(self) -> None:
        for pool in (self._pool, self._probes):
            if pool is not None:
                await pool.close()
        self._pool = self._probes = None

    @property
    def pool(self) -> HttpPool:
        """The connections calls use."""
        if self._pool is None:
            raise RuntimeError(f"stage client {self.name} used before start()")
        return self._pool

    @property
    def probes(self) -> HttpPool:
        """The connections health probes use (``healthy``, ``router.health.probe``), apart from the calls'."""
        if self._probes is None:
            raise RuntimeError(f"stage client {self.name} used before start()")
        return self._probes

    def payload(self, body: dict[str, Any]) -> bytes:
        return orjson.dumps({**body, "model": self.config.model})

    async def _relay_client_error(self, resp: HttpResponse, completions: bool = False) -> None:
        raw = await resp.read()
        if resp.status >= 500 or resp.status < 400:
            raise StageBadResponse(self.name, f"HTTP {resp.status}: {raw[:200]!r}")
        try:
            err = orjson.loads(raw)["error"]
            message, param = err["message"], err.get("param")
        except (orjson.JSONDecodeError, KeyError, TypeError):
            message, param = raw[:200].decode("utf-8", "replace"), None
        if completions and resp.status in (404, 405):  # no such endpoint (or not for this model): not the client's fault
            raise StageNoCompletions(
                self.name, f"HTTP {resp.status} on {self._completions_url}: {message} (a stage without completions: set completions: false)"
            )
        raise APIError(resp.status, f"stage '{self.name}' rejected the request: {message}", param=param)

    async def chat(self, body: dict[str, Any]) -> tuple[dict[str, Any], float]:
        """Non-streaming chat completion; returns the parsed body and seconds spent."""
        reply = await self.reply(body)
        return reply.data, reply.seconds

    async def reply(self, body: dict[str, Any], top_k: int | None = None) -> StageReply:
        """Non-streaming chat completion, keeping the response bytes.

        ``top_k``: read the predictor's arrays (k alternatives) from the bytes and defer
        decoding the logprobs (see ``StageReply``); a body the scanner declines is decoded whole.
        """
        raw, seconds = await self._post("/chat/completions", body)
        try:
            return StageReply.parse(raw, seconds, top_k, self.name)
        except ValueError:
            raise StageBadResponse(self.name, f"malformed chat completion: {raw[:200]!r}") from None

    async def complete(self, body: dict[str, Any], top_k: int | None = None) -> StageReply:
        """Non-streaming ``/v1/completions`` call, decoded whole (``top_k``: with the predictor's arrays)."""
        raw, seconds = await self._post("/completions", body, completions=True)
        try:
            return StageReply.parse_completion(raw, seconds, top_k, self.name)
        except ValueError:
            raise StageBadResponse(self.name, f"malformed completion: {raw[:200]!r}") from None

    async def _post(self, path: str, body: dict[str, Any], completions: bool = False) -> tuple[bytes, float]:
        """POST ``body`` and read the whole answer: its bytes and seconds spent, or a typed failure."""
        t0 = time.perf_counter()
        with self._failures("answer"):
            resp = await self.pool.request("POST", self.pool.path + path, self._headers, self.payload(body), self._timeouts)
            if resp.status != 200:
                await self._relay_client_error(resp, completions)
            raw = await resp.read()
        return raw, time.perf_counter() - t0

    async def stream(self, body: dict[str, Any], raw: bool = False) -> AsyncIterator[bytes]:
        """Streaming chat completion.

        Yields each SSE ``data:`` payload (without prefix), or with ``raw``
        whole blocks of complete SSE events as they arrive (``[DONE]``
        included): the cheap path for pass-through, one write per network read
        instead of one per token. The connection is opened before the first
        yield, so connection errors surface before any byte goes to the client.
        """
        resp = await self._open("/chat/completions", body)
        return Link(self._blocks(resp) if raw else self._events(resp), unstarted=resp.release)

    async def complete_stream(self, body: dict[str, Any], raw: bool = False) -> AsyncIterator[bytes]:
        """Streaming ``/v1/completions`` call; yields as ``stream`` does."""
        resp = await self._open("/completions", body, completions=True)
        return Link(self._blocks(resp) if raw else self._events(resp), unstarted=resp.release)

    async def _open(self, path: str, body: dict[str, Any], completions: bool = False) -> HttpResponse:
        """POST ``body`` for a stream: the response once its status is 200, or a typed failure."""
        with self._failures("start"):
            resp = await self.pool.request("POST", self.pool.path + path, self._headers, self.payload(body), self._timeouts)
            if resp.status != 200:
                await self._relay_client_error(resp, completions)  # reads the body, which releases the connection
        return resp

    @contextmanager
    def _failures(self, phase: Phase) -> Iterator[None]:
        """The one mapping of transport failures to typed stage failures, for every call and every read.

        ``phase`` is what was going on, for the message: ``answer`` (a whole answer: its request and its body),
        ``start`` (a stream's request, up to its status line) or ``stream`` (reading a stream's body). A timeout
        says which setting ran out.
        """
        t0 = time.perf_counter()
        try:
            yield
        except ConnectFailed as exc:
            raise StageUnavailable(self.name, f"unreachable at {self.config.url} ({exc.os_error})") from None
        except (ConnectTimeout, ReadTimeout, TotalTimeout) as exc:
            raise StageTimeout(self.name, self._timeout_message(exc, phase, time.perf_counter() - t0)) from None
        except HttpError as exc:
            raise StageBadResponse(self.name, f"{'stream broken' if phase == 'stream' else 'connection failed'}: {exc}") from None

    def _timeout_message(self, exc: HttpError, phase: Phase, waited: float) -> str:
        """Which bound ran out (``stage_timeouts`` sets them): the setting's name and value."""
        c = self.config
        if isinstance(exc, ConnectTimeout):
            if exc.opening:
                return f"could not connect to {c.url} within {c.connect_timeout_s:g} s (connect_timeout_s)"
            busy = f"all {POOL_SIZE} pooled connections busy, or opening one slow"
            return f"no connection to {c.url} within {c.timeout_s:g} s (timeout_s; {busy})"
        if isinstance(exc, ReadTimeout):
            silence = {"start": "no answer started", "answer": "answer stalled", "stream": "stream stalled"}[phase]
            return f"{silence}: no byte for {c.timeout_s:g} s (timeout_s)"
        return f"answer not complete within {c.total_timeout_s:g} s (total_timeout_s) after {waited:.1f} s"

    async def _blocks(self, resp: HttpResponse) -> AsyncIterator[bytes]:
        """The stream's bytes in blocks of whole events, one per network read that completes any (``EventBlocks``)."""
        blocks = EventBlocks()
        try:
            with self._failures("stream"):
                async for data in resp.chunks():
                    block = blocks.feed(data)
                    if block:
                        yield block
            tail = blocks.close()
            if tail:
                yield tail
        finally:
            resp.release()

    async def _events(self, resp: HttpResponse) -> AsyncIterator[bytes]:
        """Each event's data up to ``[DONE]``; events without data (keep-alives) are skipped."""
        decoder = EventDecoder()
        try:
            with self._failures("stream"):
                async for data in resp.chunks():
                    for payload in decoder.feed(data):
                        if payload == DONE:  # the stream's logical end: its last chunk may still be on the way
                            resp.release(drain=True)
                            return
                        if payload:
                            yield payload
            for payload in decoder.close():  # an unterminated last event: nothing follows it
                if payload and payload != DONE:
                    yield payload
        finally:
            resp.release()

    async def healthy(self) -> bool:
        try:
            status, _ = await self.probes.get(self.config.url.removesuffix("/v1") + "/health", {}, HEALTH_TIMEOUTS)
        except HttpError:
            return False
        return status == 200
