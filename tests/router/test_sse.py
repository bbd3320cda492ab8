"""``router.sse`` against the WHATWG event stream format, checked by a byte-at-a-time reference parser written from
the spec: every framing (LF, CRLF, CR, mixed), events split across reads at every byte position (and at every pair
of positions), multi-line data, comments, fields without a colon; and the readers of a stage's SSE agree."""

from __future__ import annotations

import pytest

from router.sse import BOM, DONE, EventBlocks, EventDecoder, event_data, event_end

CR, LF = 13, 10
ENDINGS = {"lf": b"\n", "crlf": b"\r\n", "cr": b"\r"}
PAYLOADS = [b'{"a":1}', b'{"b":[2,3]}', DONE]


def reference(stream: bytes) -> list[tuple[int, bytes]]:
    """WHATWG's parsing algorithm, one byte at a time: each dispatched event's data, with the index just past the
    byte that dispatched it (the first byte of the blank line's line end: a CRLF's LF belongs to the line before)."""
    out: list[tuple[int, bytes]] = []
    data: list[bytes] = []
    line = bytearray()
    after_cr = False
    for i, byte in enumerate(stream):
        if byte == LF and after_cr:  # the LF of a CRLF: the line already ended at its CR
            after_cr = False
            continue
        after_cr = byte == CR
        if byte not in (CR, LF):
            line.append(byte)
            continue
        if not line:
            if data:
                out.append((i + 1, b"\n".join(data)))
            data = []
        elif not line.startswith(b":"):
            name, colon, value = bytes(line).partition(b":")
            if name == b"data":
                data.append(value[1:] if value.startswith(b" ") else value)
        line.clear()
    return out


def framed(ending: bytes, payloads: list[bytes] = PAYLOADS) -> bytes:
    return b"".join(b"data: " + p + ending + ending for p in payloads)


MIXED = (
    b'data: {"a":1}\r\n\r\n'  # CRLF
    b": a comment\rdata: x\rdata:y\rdata\r\r"  # CR, a multi-line event, a field without a colon
    b"event: chunk\nid: 7\nretry: 10\ndatum: no\ndata  : no\n\n"  # other fields only: nothing dispatches
    b"data:  two spaces\n\r\n"  # LF then a CRLF blank line
    b"data: [DONE]\n\n"
)
STREAMS = {**{f"{name}": framed(e) for name, e in ENDINGS.items()}, "mixed": MIXED}


def test_the_reference_reads_the_spec_examples() -> None:
    assert [d for _, d in reference(MIXED)] == [b'{"a":1}', b"x\ny\n", b" two spaces", DONE]
    assert reference(b"data: a\r\n\r\n") == [(10, b"a")]  # dispatched at the CR: the blank line ends there


@pytest.mark.parametrize("name", STREAMS)
def test_a_whole_stream_reads_as_the_spec_says(name: str) -> None:
    stream = STREAMS[name]
    assert event_data(stream) == [d for _, d in reference(stream)]
    assert event_end(stream) == len(stream)


def test_event_data_fields() -> None:
    assert event_data(b"data:x\n\n") == [b"x"]  # the space is optional
    assert event_data(b"data:  x\n\n") == [b" x"]  # and only one is dropped
    assert event_data(b"data\n\n") == [b""]  # no colon: the line is the name, the value empty (it still dispatches)
    assert event_data(b"data:\n\n") == [b""]
    assert event_data(b"data: a\ndata: b\n\n") == [b"a\nb"]
    assert event_data(b": only a comment\n\nevent: ping\n\n") == []
    assert event_data(b"data : x\ndatas: y\n\n") == []  # neither field is "data"
    assert event_data(b"data: complete\n\ndata: not yet\n") == [b"complete"]  # an unterminated event is not read


@pytest.mark.parametrize("name", STREAMS)
def test_events_split_across_two_reads_at_every_byte(name: str) -> None:
    stream = STREAMS[name]
    events = reference(stream)
    for cut in range(len(stream) + 1):
        decoder, blocks = EventDecoder(), EventBlocks()
        first = decoder.feed(stream[:cut])
        relayed = blocks.feed(stream[:cut])
        # exactly the events whose blank line has begun: none held back, none early
        assert first == [d for end, d in events if end <= cut], cut
        assert event_data(relayed) == first, cut
        assert first + decoder.feed(stream[cut:]) + decoder.close() == [d for _, d in events], cut
        assert relayed + blocks.feed(stream[cut:]) + blocks.close() == stream, cut  # the bytes as they came


@pytest.mark.parametrize("name", STREAMS)
def test_events_split_across_three_reads_at_every_pair_of_bytes(name: str) -> None:
    stream = STREAMS[name]
    events = [d for _, d in reference(stream)]
    for i in range(len(stream) + 1):
        for j in range(i, len(stream) + 1):
            decoder, blocks = EventDecoder(), EventBlocks()
            got = decoder.feed(stream[:i]) + decoder.feed(stream[i:j]) + decoder.feed(stream[j:]) + decoder.close()
            relayed = [blocks.feed(stream[:i]), blocks.feed(stream[i:j]), blocks.feed(stream[j:]), blocks.close()]
            assert got == events, (i, j)
            assert b"".join(relayed) == stream, (i, j)
            assert all(event_end(b) == len(b) for b in relayed[:3] if b), (i, j)  # each block read ends at an event boundary


def test_a_read_that_ends_at_an_event_boundary_is_relayed_without_a_copy() -> None:
    """The pass-through's fast path: one write per network read, the read itself."""
    blocks = EventBlocks()
    read = framed(b"\n")
    assert blocks.feed(read) is read
    assert blocks.feed(b"data: half") == b"" and blocks.feed(b" done\r\n\r\n") == b"data: half done\r\n\r\n"


def test_a_cr_cut_before_its_lf_leaves_one_blank_line_that_dispatches_nothing() -> None:
    """``\\r\\r`` then ``\\n``: the event ended at the second CR (relayed then); the LF ends an empty line."""
    decoder, blocks = EventDecoder(), EventBlocks()
    assert decoder.feed(b"data: a\r\r") == [b"a"] and blocks.feed(b"data: a\r\r") == b"data: a\r\r"
    assert decoder.feed(b"\ndata: b\n\n") == [b"b"] and blocks.feed(b"\ndata: b\n\n") == b"\ndata: b\n\n"
    assert decoder.close() == [] and blocks.close() == b""


def test_the_end_of_a_stream_keeps_an_unterminated_event() -> None:
    decoder, blocks = EventDecoder(), EventBlocks()
    assert decoder.feed(b"data: a\n\ndata: b\r") == [b"a"] and decoder.close() == [b"b"]
    assert blocks.feed(b"data: a\n\ndata: b\r") == b"data: a\n\n" and blocks.close() == b"data: b\r\n\n"
    assert EventBlocks().close() == b"" and EventDecoder().close() == []


def test_a_byte_order_mark_at_the_start_is_skipped_even_split() -> None:
    decoder = EventDecoder()
    assert decoder.feed(BOM[:2]) == [] and decoder.feed(BOM[2:] + b"data: a\n\n" + BOM + b"data: b\n\n") == [b"a"]


def test_a_large_event_in_many_reads_is_read_whole() -> None:
    payload = b'{"logprobs":[' + b",".join(b"%d" % i for i in range(200_000)) + b"]}"
    stream = b"data: " + payload + b"\r\n\r\n"
    decoder = EventDecoder()
    got = [p for i in range(0, len(stream), 65536) for p in decoder.feed(stream[i : i + 65536])]
    assert got == [payload]


def _payloads(buffer: bytearray) -> list[bytes]:
    """What a client of the pass-through reads: the complete events taken off ``buffer``, their data (``[DONE]`` and
    empty data dropped)."""
    end = event_end(buffer)
    if not end:
        return []
    payloads = event_data(buffer[:end])
    del buffer[:end]
    return [p for p in payloads if p and p != DONE]


@pytest.mark.parametrize("name", STREAMS)
def test_the_readers_agree(name: str) -> None:
    """StageClient's payload stream (``EventDecoder``), and its pass-through blocks (``EventBlocks``) as a client reads
    them: the same payloads for any framing, at any split (keep-alives and ``[DONE]`` dropped)."""
    stream = STREAMS[name]
    expected = [d for _, d in reference(stream) if d and d != DONE]
    for cut in range(len(stream) + 1):
        buffer, blocks, decoder = bytearray(), EventBlocks(), EventDecoder()
        got: list[bytes] = []
        for read in (stream[:cut], stream[cut:]):
            buffer += blocks.feed(read)
            got += _payloads(buffer)
        assert got == expected, cut
        assert [d for d in decoder.feed(stream[:cut]) + decoder.feed(stream[cut:]) if d and d != DONE] == expected


def test_reads_that_hold_several_events_or_half_of_one() -> None:
    """A read may hold several events, CRLF framing, or half of one: each event's data once it is complete."""
    decoder = EventDecoder()
    assert decoder.feed(b'data: {"a":1}\n\ndata:{"b":2}\n\ndata: {"c"') == [b'{"a":1}', b'{"b":2}']
    assert decoder.feed(b":3}\n\n: a comment\n\ndata: [DONE]\n\n") == [b'{"c":3}', DONE]
    assert decoder.feed(b'data: {"d":4}\r\n\r\ndata: {"e":5}\r') == [b'{"d":4}']
    assert decoder.feed(b"\n\r\n") == [b'{"e":5}']
