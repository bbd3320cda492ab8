"""Server-sent events as the stages send them: cutting a byte stream at event boundaries, and reading events' data.

One parser for the places that read a stage's SSE (``StageClient``'s raw pass-through and its payload stream,
which the cascade and the Responses API's translation read), so that they agree on where an event ends.
It follows the WHATWG event stream format (HTML, "Server-sent events", "Parsing an event stream"):

* a line ends with CRLF, LF or CR, and a stream may mix them (a stage behind a proxy that rewrites line ends);
* an event ends at a blank line: two line ends in a row;
* ``data:`` lines are the event's data, one leading space dropped from each, several joined with LF;
  ``data`` with no colon is an empty data line; every other field (``event``, ``id``, ``retry``) and every
  comment (a line starting with ``:``) is skipped: the router reads only ``data``;
* an event dispatches only if it had a data line; one UTF-8 byte order mark at the start of the stream is skipped.

One departure, on purpose: at the end of the stream an unterminated last event is kept (the spec drops it). A
stage that closed its answer cleanly without the final blank line meant that event (a truncated connection is an
aiohttp error, not an end), and a pass-through forwards those bytes anyway, so both paths read the same events.

Speed: this is the router's hot path, one call per network read. Boundaries are found with ``bytes.find`` and
``bytes.rfind`` (C speed; the search goes back from the end, and an event longer than a read is not searched again
read after read), lines are split with ``bytes.splitlines``, which breaks at exactly CRLF, LF and CR, and nothing
goes byte by byte in Python. On an LF-framed stream a read of three token events costs ~0.6 µs, as the LF-only cut did.
Every event boundary contains one of three byte pairs: ``\\n\\n``, ``\\n\\r`` or ``\\r\\r`` (a CRLF followed by
a line end contains the first two), and each occurrence of those pairs is a boundary, so the last boundary of a
buffer is the last of those pairs, stretched over the LF of a CRLF that its CR begins. A CR-framed stream cut after
a CR whose LF comes in the next read leaves that LF at the start of the next block: one more blank line, which
dispatches nothing.
"""

from __future__ import annotations

__all__ = ["BOM", "DONE", "EventBlocks", "EventDecoder", "event_data", "event_end"]

DONE = b"[DONE]"  # the OpenAI streams' last event's data: not JSON, the end of the answer
BOM = b"\xef\xbb\xbf"  # a UTF-8 byte order mark, skipped at the start of a stream
_CR = 13
_LF = 10


def event_end(buf: bytes | bytearray, start: int = 0) -> int:
    """The index just past the last complete event in ``buf``; 0 when it holds none.

    ``start``: where to begin looking for a boundary; a caller that appends to a buffer it already searched passes
    the old length less one (a boundary pair can straddle the old end), so each byte is searched about once.
    """
    i = buf.rfind(b"\n\n", start)
    if buf.find(b"\r", start) >= 0:  # memchr: an LF-only stream (llama.cpp, vLLM) pays one fast scan for CR framing
        i = max(i, buf.rfind(b"\n\r", start), buf.rfind(b"\r\r", start))
    if i < 0:
        return 0
    end = i + 2
    if buf[end - 1] == _CR and end < len(buf) and buf[end] == _LF:  # the blank line is a CRLF: keep it whole
        end += 1
    return end


def event_data(block: bytes | bytearray) -> list[bytes]:
    """The data of each event that ``block`` completes, in order (an unterminated last event is not read).

    ``[DONE]`` and empty data are returned as they are: the callers decide (an OpenAI stream ends at ``[DONE]``;
    a ``data:`` line with nothing after it is a keep-alive to them).
    """
    out: list[bytes] = []
    lines: list[bytes] = []
    seen = False  # the event had a data line (an empty one too: it still dispatches, with empty data)
    for line in block.splitlines():
        if not line:  # a blank line: the event ends
            if seen:
                out.append(lines[0] if len(lines) == 1 else b"\n".join(lines))
                lines, seen = [], False
        elif line.startswith(b"data:"):
            lines.append(bytes(line[6:] if line[5:6] == b" " else line[5:]))
            seen = True
        elif line == b"data":  # a field name without a colon: the whole line is the name, the value is empty
            lines.append(b"")
            seen = True
        # anything else: a comment (":..."), another field (event, id, retry) or an unknown one, all ignored
    return out


class EventBlocks:
    """Cuts a byte stream into blocks of whole events, the bytes as they came: the pass-through's fast path.

    ``feed`` returns everything up to the last event boundary seen so far (``b""`` if none yet), so one network
    read that completes events is one write to the client, and an event is never held back once its blank line
    has arrived, whatever its line ends. The bytes are not rewritten: what the client gets is what the stage sent.
    """

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending = bytearray()  # an unfinished event (appended to in place: a large event in many reads stays linear)

    def feed(self, data: bytes) -> bytes:
        """The complete events that ``data`` finishes (with what was held back before them), or ``b""``."""
        pending = self._pending
        if not pending:  # the usual case: reads end at or past event boundaries, and nothing is copied
            end = event_end(data)
            if end < len(data):
                pending += memoryview(data)[end:]
            return data if end == len(data) else data[:end]
        start = len(pending) - 1
        pending += data
        end = event_end(pending, start)
        if end == 0:
            return b""
        block = bytes(pending[:end])
        del pending[:end]
        return block

    def close(self) -> bytes:
        """At the end of the stream, what was held back: an unterminated last event with a blank line added (LF
        after any line end is one more line end, or ends a CRLF), so that it reads as one event and what a caller
        appends after it stays separate; line ends alone (the LF of a CRLF cut at its CR) as they came."""
        tail = bytes(self._pending)
        self._pending.clear()
        return tail + b"\n\n" if tail.strip(b"\r\n") else tail


class EventDecoder:
    """The data of a byte stream's events (``event_data``), as reads complete them."""

    __slots__ = ("_blocks", "_started")

    def __init__(self) -> None:
        self._blocks = EventBlocks()
        self._started = False

    def feed(self, data: bytes) -> list[bytes]:
        """The data of the events that ``data`` completes (``[]`` if none)."""
        return self._read(self._blocks.feed(data))

    def close(self) -> list[bytes]:
        """The data of an unterminated last event, at the end of the stream (see the module's note)."""
        return self._read(self._blocks.close())

    def _read(self, block: bytes) -> list[bytes]:
        if not block:
            return []
        if not self._started:  # the first block starts where the stream does: a byte order mark is there if anywhere
            self._started = True
            block = block.removeprefix(BOM)
        return event_data(block)
