"""The compiled parts: the logprob scanner (the same arrays as decoding the JSON, or a refusal, never a wrong answer) and the statistics.

``AnswerStats.from_body`` (the router's path) must equal ``AnswerStats.from_choice``
on the decoded body (the training path) for every answer, whatever the JSON's
spelling; anything outside the expected shape returns None so the caller decodes.
The comparison is ``scan_oracle.check``, the one the fuzzer (fuzz_scanner.py) uses too.
These tests also run against the ASan/UBSan build (``make test-sanitizers``).
"""

from __future__ import annotations

import asyncio
import importlib.machinery
import json
import os
import random
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest

from common.settings import StageConfig
from predictor.serving import _answer_stats, _logprob_scan, features, logprob_scan
from predictor.serving.features import MAX_POSITIONS, AnswerStats
from router.stage_client import StageClient
from tests.conftest import ROOT, ladder_config
from tests.predictor.serving.json_mutator import mutate_json
from tests.predictor.serving.scan_oracle import Mismatch, Outcome, check, mutate
from training.dataset import read_rows

K = 5


def _entry(rng: random.Random, k: int = K) -> dict:
    tops = sorted((-rng.expovariate(1.0) for _ in range(k)), reverse=True)
    words = ["the", " def", "\n", ' "quoted"', "back\\slash", "]}", "{[", "é", "数", "\t", "\u2028"]
    tok = rng.choice(words)
    return {"token": tok, "logprob": tops[0], "bytes": list(tok.encode()),
            "top_logprobs": [{"token": rng.choice(words), "logprob": t, "bytes": [1, 2]} for t in tops]}  # fmt: skip


def _body(content: list | None, finish: str | None = "stop", **choice_extra: object) -> dict:
    logprobs = None if content is None else {"content": content}
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": 'He said "}]" \\ ok'}, "logprobs": logprobs,
                         "finish_reason": finish, **choice_extra}],
            "usage": {"prompt_tokens": 3, "completion_tokens": len(content or ()), "total_tokens": 3}}  # fmt: skip


def assert_same(raw: bytes, k: int = K) -> AnswerStats:
    outcome, stats = check(raw, k)
    assert outcome is Outcome.SAME and stats is not None, (outcome, raw[:200])
    return stats


def test_the_extensions_are_built() -> None:
    """`pip install .` compiles both; the sanitiser run also checks that its own build is the one loaded."""
    for module in (_logprob_scan, _answer_stats):
        assert module.__file__ is not None and module.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)), module
        expected = os.environ.get("ADAPTIVE_SD_EXPECT_NATIVE_DIR")  # set by `make test-sanitizers`
        if expected:
            assert Path(module.__file__).resolve().is_relative_to(Path(expected).resolve()), module.__file__


@pytest.mark.parametrize("n", [0, 1, 15, MAX_POSITIONS, MAX_POSITIONS + 1, 513])
def test_same_arrays_as_decoding(n: int) -> None:
    rng = random.Random(n)
    stats = assert_same(orjson.dumps(_body([_entry(rng) for _ in range(n)])))
    assert stats.token_logprobs.size == min(n, MAX_POSITIONS) and stats.length == n


def test_any_json_spelling() -> None:
    """Indented, keys reordered, escapes in strings, extra keys with nested values, several choices."""
    rng = random.Random(1)
    content = [_entry(rng) for _ in range(200)]
    body = _body(content, extra={"nested": [[1, {"a": "]"}], None]})
    assert_same(json.dumps(body, indent=2).encode())
    assert_same(json.dumps(body, ensure_ascii=True).encode())
    reordered = [
        {"top_logprobs": e["top_logprobs"][::-1][::-1], "bytes": e["bytes"], "logprob": e["logprob"], "token": e["token"]} for e in content
    ]
    body2 = _body(reordered)
    body2["choices"].append(_body([_entry(rng)])["choices"][0])
    body2 = {"usage": body2.pop("usage"), **body2}  # usage before choices
    assert_same(orjson.dumps(body2))


def test_ragged_alternatives_and_missing_parts() -> None:
    rng = random.Random(2)
    content = [_entry(rng) for _ in range(6)]
    content[0]["top_logprobs"] = content[0]["top_logprobs"][:2]  # fewer than k: -inf padding
    content[1]["top_logprobs"] = content[1]["top_logprobs"] + [{"token": "x", "logprob": -9.0}] * 3  # more: cut at k
    content[2]["top_logprobs"] = None
    del content[3]["top_logprobs"]
    content[4]["top_logprobs"] = []
    stats = assert_same(orjson.dumps(_body(content)))
    assert np.isneginf(stats.top_logprobs[2]).all()
    assert_same(orjson.dumps(_body(None)))  # logprobs: null
    assert_same(orjson.dumps(_body([])))
    assert_same(orjson.dumps(_body([_entry(rng)], finish=None)))
    no_logprobs_key = _body([_entry(rng)])
    del no_logprobs_key["choices"][0]["logprobs"]
    assert_same(orjson.dumps(no_logprobs_key))


def test_numbers_parse_exactly_like_float_then_float32() -> None:
    """Every spelling a server may use; and doubles next to float32 rounding boundaries, where a fast parser would slip."""
    rng = random.Random(3)
    values = ["0", "-0", "-0.0", "-9999.0", "-1e-05", "-1.5E+2", "-3.4028235677973366e+38", "-1e-45", "-7e-46", "-12345678901234567890.5"]
    values += [repr(-rng.expovariate(0.3)) for _ in range(3000)]
    values += [repr(-(10 ** rng.uniform(-30, 3))) for _ in range(3000)]
    for _ in range(2000):  # exactly half-way between two float32 values, then one double ulp either side
        f = struct.unpack("<f", struct.pack("<I", rng.randrange(0x3F800000, 0x41F00000)))[0]
        mid = (f + float(np.nextafter(np.float32(f), np.float32(np.inf)))) / 2
        values += [repr(-mid), repr(-float(np.nextafter(mid, 0.0))), repr(-float(np.nextafter(mid, np.inf)))]
    for i in range(0, len(values), 400):
        chunk = values[i : i + 400]
        entries = ",".join(f'{{"token":"a","logprob":{v},"top_logprobs":[{{"token":"a","logprob":{v}}}]}}' for v in chunk)
        raw = (
            f'{{"choices":[{{"index":0,"message":{{"content":""}},"logprobs":{{"content":[{entries}]}},"finish_reason":"stop"}}]}}'.encode()
        )
        stats = AnswerStats.from_body(raw, 1)
        assert stats is not None
        with np.errstate(over="ignore"):  # one value rounds past float32's largest, to -inf, in both parsers
            expected = np.array([np.float32(float(v)) for v in chunk], dtype=np.float32)
        picked = features.positions(len(chunk))
        expected = expected if picked is None else expected[list(picked)]
        np.testing.assert_array_equal(stats.token_logprobs, expected)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"[]",
        b'{"choices":[]}',
        b'{"object":"chat.completion"}',
        b'{"choices":[{"logprobs":{"content":[{"token":"a","logprob":null}]}}]}',
        b'{"choices":[{"logprobs":{"content":[{"token":"a"}]}}]}',
        b'{"choices":[{"logprobs":{"content":[{"token":"a","logprob":-1,"top_logprobs":[{"token":"b"}]}]}}]}',
        b'{"choices":[{"logprobs":{"content":[{"token":"a","logprob":-1}',
        b'{"choices":[{"logprobs":{"content":[{"token":"a\\"}]}]}}]}',
        b'{"choices":[{"finish_reason":"st\\u006fp","logprobs":null}]}',
        b'{"choices":[{"x":' + b"[" * 200 + b"]" * 200 + b"}]}",
    ],
)
def test_unexpected_shapes_are_declined(raw: bytes) -> None:
    assert AnswerStats.from_body(raw, K) is None


def test_every_collected_answer() -> None:
    """The training data's answers, as a stage would send them."""
    from predictor.serving.rows import expand_logprobs

    rows = list(read_rows(ROOT / "data" / "cpu" / "collect.jsonl"))
    assert rows
    for row in rows[:: max(1, len(rows) // 120)]:
        for s in row["stages"]:
            assert_same(orjson.dumps(_body(expand_logprobs(s["logprobs"])["content"], s["finish_reason"])))


def test_a_real_stage_answer(stage_ports: list[int]) -> None:
    """Bytes from a real llama.cpp stage, long enough to be read at MAX_POSITIONS positions."""

    async def go() -> bytes:
        stage = StageClient(StageConfig.model_validate(ladder_config(stage_ports, 0)["stages"][1]))  # type: ignore[index]
        await stage.start()
        try:
            reply = await stage.reply({"messages": [{"role": "user", "content": "Write a Python class for a bank account with deposit, withdraw and a history."}],  # noqa: E501
                                       "temperature": 0, "max_tokens": 180, "logprobs": True, "top_logprobs": K})  # fmt: skip
        finally:
            await stage.close()
        return reply.raw

    raw = asyncio.run(go())
    stats = assert_same(raw)
    assert stats.length > MAX_POSITIONS


# -- answer_stats: checked against a plain numpy oracle written from the feature descriptions ----


def _oracle(chosen: np.ndarray, top: np.ndarray) -> np.ndarray:
    lp = np.maximum(chosen.astype(np.float64), features.FLOOR)
    ordered = np.sort(lp)
    low = [float(v) for v in np.array(features.LOW_LOGPROB, dtype=np.float32)]
    out = [lp.mean(), lp.min(), lp.std(), *np.quantile(lp, [0.05, 0.25, 0.5]), *[(ordered < t).mean() for t in low],
           lp[: features.EDGE].mean(), lp[-features.EDGE :].mean()]  # fmt: skip
    if top.shape[1] == 0:
        return np.array(out + [0.0] * 6)
    t = np.maximum(top.astype(np.float64), features.FLOOR)
    p = np.exp(t)
    rest = np.maximum(1.0 - p.sum(1), 1e-12)
    ent = -(p * t).sum(1) - rest * np.log(rest)
    margin = t[:, 0] - (t[:, 1] if t.shape[1] > 1 else features.FLOOR)
    top1 = lp >= t[:, 0] - features.TOP1_TOLERANCE
    return np.array(out + [ent.mean(), ent.max(), margin.mean(), margin.min(), (margin < features.MARGIN_LOW).mean(), top1.mean()])


@pytest.mark.parametrize(("m", "k"), [(1, 5), (15, 5), (128, 5), (300, 5), (20, 1), (20, 0), (7, 20)])
def test_answer_stats_match_the_oracle(m: int, k: int) -> None:
    rng = np.random.default_rng(m * 100 + k)
    top = -np.sort(rng.exponential(1.5, size=(m, k)), axis=1).astype(np.float32)
    chosen = (top[:, 0] if k else -rng.exponential(1.5, size=m)).astype(np.float32).copy()
    chosen[::3] -= 0.7  # not always the top-1
    if k > 2:
        top[::4, -1] = -np.inf  # padding of a missing alternative
    chosen[::5] = -1e4  # far below the floor (vLLM writes -9999.0 for -inf)
    got = np.array(_answer_stats.answer_stats(chosen, np.ascontiguousarray(top), k))
    np.testing.assert_allclose(got, _oracle(chosen, top), rtol=1e-9, atol=1e-12)


def test_answer_stats_of_nothing_are_zero() -> None:
    assert _answer_stats.answer_stats(np.zeros(0, np.float32), np.zeros((0, 5), np.float32), 5) == (0.0,) * 18


@pytest.mark.parametrize(
    ("chosen", "top", "k"),
    [
        (np.zeros(3, np.float64), np.zeros((3, 5), np.float32), 5),  # not float32
        (np.zeros(3, np.float32), np.zeros((3, 4), np.float32), 5),  # k values missing
        (np.zeros(3, np.float32), np.zeros((5, 3), np.float32).T, 5),  # not C-contiguous
        (np.frombuffer(bytes(13), np.float32, 3, offset=1), np.zeros((3, 5), np.float32), 5),  # not aligned
        (np.zeros(2, np.float32), np.zeros((2, 2), np.float32), 2**62),  # m * k overflows: refused, not undefined
        (np.zeros(2, np.float32), np.zeros((2, 2), np.float32), 0),  # k = 0 with values
    ],
)
def test_answer_stats_refuse_wrong_arrays(chosen: np.ndarray, top: np.ndarray, k: int) -> None:
    with pytest.raises((TypeError, ValueError, BufferError)):
        _answer_stats.answer_stats(chosen, top, k)


def test_a_refused_configure_keeps_the_constants() -> None:
    chosen, top = np.array([-1.0, -40.0], np.float32), np.array([[-0.5, -2.0], [-1.0, -3.0]], np.float32)
    before = _answer_stats.answer_stats(chosen, top, 2)
    with pytest.raises(ValueError):
        _answer_stats.configure(-5.0, [0.0, 0.0, 0.0], 1, 0.0, 0.0)  # three thresholds: refused
    with pytest.raises(TypeError):
        _answer_stats.configure(-5.0, [0.0, 0.0, 0.0, "x"], 1, 0.0, 0.0)  # type: ignore[list-item]
    assert _answer_stats.answer_stats(chosen, top, 2) == before


def test_mutated_bodies_never_give_a_wrong_answer() -> None:
    """Cut, flipped and spliced bytes: declined, or the same arrays as decoding whenever the JSON decodes."""
    rng = random.Random(7)
    bases = [orjson.dumps(_body([_entry(rng) for _ in range(n)])) for n in (0, 3, 40, 200)]
    bases.append(json.dumps(orjson.loads(bases[2]), indent=1).encode())
    seen = {o: 0 for o in Outcome}
    for _i in range(3000):
        seen[check(mutate(rng, rng.choice(bases)), K)[0]] += 1
    assert seen[Outcome.SAME] > 300  # the comparison ran on many bodies that survived mutation


@pytest.mark.parametrize(
    "raw",
    [
        b'{"choices":[{"logprobs":null,"logprobs":{"content":[{"logprob":-1}]}}]}',
        b'{"choices":[{"logprobs":{"content":[{"logprob":-1}],"content":[]}}]}',
        b'{"choices":[{"logprobs":null}],"choices":[{"logprobs":{"content":[{"logprob":-1}]}}]}',
        b'{"choices":[{"logprobs":null,"logprob\\u0073":{"content":[{"logprob":-1}]}}]}',  # the same key, escaped
    ],
)
def test_repeated_keys_are_declined(raw: bytes) -> None:
    """A decoder keeps a repeated key's last value; rather than guess, the scanner declines."""
    assert AnswerStats.from_body(raw, K) is None


def test_repeated_finish_reason_keeps_the_last() -> None:
    assert_same(b'{"choices":[{"finish_reason":"length","logprobs":null,"finish_reason":null}]}')
    assert_same(b'{"choices":[{"finish_reason":null,"logprobs":null,"finish_reason":"length"}]}')


# -- the hardened edges: what a decoder refuses is declined, and nothing raises -----------------


def _one(logprob: bytes, finish: bytes = b'"stop"', after: bytes = b"") -> bytes:
    entry = b'{"token":"a","logprob":%s,"top_logprobs":[]}' % logprob
    return b'{"choices":[{"logprobs":{"content":[%s]},"finish_reason":%s}]}%s' % (entry, finish, after)


@pytest.mark.parametrize(
    "number", [b"1.5.5", b"-1-2", b"01", b"-01", b"1.", b"-", b"1e", b"1e+", b"-.5", b"1.5e+-3", b"1e400", b"-1e309", b"2E+"]
)
def test_a_read_number_that_json_refuses_is_declined(number: bytes) -> None:
    """float() and a fast parser are laxer than JSON; a logprob a decoder would refuse is not read as a value."""
    raw = _one(number)
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(raw)
    assert AnswerStats.from_body(raw, K) is None


@pytest.mark.parametrize(
    "number", [b"-0", b"0", b"-0.0", b"-0e0", b"-1E-2", b"-12e+1", b"-1e-400", b"-4.9e-324", b"-1.7976931348623157e308"]
)
def test_edge_numbers_are_the_decoders_bits(number: bytes) -> None:
    """The same float32 bits as decoding then np.float32, sign of zero included (JSON's integer -0 decodes to 0)."""
    stats = assert_same(_one(number))
    with np.errstate(over="ignore"):  # the largest double rounds past float32's largest, to -inf, in both
        assert np.signbit(stats.token_logprobs[0]) == np.signbit(np.float32(orjson.loads(number)))


@pytest.mark.parametrize(
    "raw",
    [
        _one(b"-1", finish=b'"st\xffp"'),  # not UTF-8: declined, where it used to raise UnicodeDecodeError
        _one(b"-1", finish=b'"\xed\xa0\x80"'),  # a UTF-8-encoded surrogate
        _one(b"-1", finish=b'"st\nop"'),  # a raw control byte
        _one(b"-1", after=b"x"),  # bytes after the object
        _one(b"-1", after=b"{}"),
        b'{"choices":[{"logprobs":null,"finish_reason":"\\',  # a backslash as the last byte
    ],
)
def test_what_a_decoder_refuses_around_the_numbers_is_declined(raw: bytes) -> None:
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(raw)
    assert AnswerStats.from_body(raw, K) is None


def test_whitespace_after_the_object_is_fine() -> None:
    assert_same(_one(b"-1", after=b" \r\n\t"))


def test_the_typed_interface() -> None:
    """``logprob_scan.scan``: a LogprobScan whose span is exactly the choice's "logprobs" value, or None."""
    raw = orjson.dumps(_body([_entry(random.Random(5)) for _ in range(3)], finish="length"))
    found = logprob_scan.scan(raw, 2)
    assert found is not None and isinstance(found, logprob_scan.LogprobScan)
    assert found.n_tokens == 3 and found.finish_reason == "length"
    assert found.chosen.shape == (3,) and found.top.shape == (3, 2) and found.chosen.dtype == found.top.dtype == np.float32
    assert found.logprobs_span is not None
    start, end = found.logprobs_span
    assert orjson.loads(raw[start:end]) == orjson.loads(raw)["choices"][0]["logprobs"]
    assert logprob_scan.scan(raw[:-1], 2) is None
    with pytest.raises(ValueError):
        logprob_scan.scan(raw, 65)  # k outside 1..64 is the caller's mistake, not a decline


def test_the_oracle_catches_a_wrong_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fuzzer's oracle fails on a scanner that reads one value wrong (so a green fuzz run means something)."""
    raw = _one(b"-1.25")
    assert check(raw, K)[0] is Outcome.SAME
    real = _logprob_scan.read

    def off_by_one_ulp(body: bytes, k: int, positions: logprob_scan.Positions) -> object:
        found = real(body, k, positions)
        assert found is not None
        n, chosen, top, finish, start, end = found
        return n, np.nextafter(np.frombuffer(chosen, np.float32), np.float32(0)).tobytes(), top, finish, start, end

    monkeypatch.setattr(_logprob_scan, "read", off_by_one_ulp)  # the module logprob_scan.scan calls through
    with pytest.raises(Mismatch):
        check(raw, K)


CORPUS = Path(__file__).parent / "fuzz_corpus"


def test_the_fuzz_corpus_replays() -> None:
    """The fuzzer's seeds (real-looking vLLM and llama.cpp bodies, and odd ones) pass the oracle, and most are read."""
    seeds = sorted(CORPUS.iterdir())
    assert len(seeds) >= 10 and sum(p.stat().st_size for p in seeds) < 200_000
    outcomes = [check(p.read_bytes(), k)[0] for p in seeds for k in (1, 5)]
    assert outcomes.count(Outcome.SAME) > len(outcomes) // 2


# -- long answers: entries past the first ones are skimmed (their braces found 64 bytes at a time) --

# Token strings that stress the skim's string tracking: backslash runs of every parity (which escape a
# quote or not), quotes, braces and brackets inside strings, non-ASCII; as JSON they hold escapes.
_NASTY = ["a", "\\", "\\\\", "\\\\\\", '"', '\\"', '\\\\"', "}", "{", "]}", "[{", '"}', "\\}", "é", "数", "\u2028", "\n", "\t", "x\\" * 9]


def _nasty_entry(rng: random.Random) -> dict:
    """Mostly the fast layout with K alternatives; some with fewer or more, none, null, or keys in another order."""
    width = rng.choice([K] * 8 + [0, 1, K + 2])
    tops = sorted((-rng.expovariate(1.0) for _ in range(width)), reverse=True)
    tok = "".join(rng.choice(_NASTY) for _ in range(rng.randint(1, 4)))
    entry = {"token": tok, "logprob": tops[0] if tops else -0.5, "bytes": list(tok.encode()),
             "top_logprobs": [{"token": rng.choice(_NASTY), "logprob": t, "bytes": [1, 2]} for t in tops]}  # fmt: skip
    odd = rng.random()
    if odd < 0.05:
        entry["top_logprobs"] = None
    elif odd < 0.1:
        entry = {"top_logprobs": entry["top_logprobs"], "logprob": entry["logprob"], "id": 7, "token": tok}
    return entry


def _spellings(body: dict) -> list[bytes]:
    """Compact (the fast layout), indented (whitespace between entries), all-ASCII (\\u escapes)."""
    return [orjson.dumps(body), json.dumps(body, indent=1).encode(), json.dumps(body, ensure_ascii=True).encode()]


def _every_position(raw: bytes, k: int = K) -> tuple[np.ndarray, np.ndarray]:
    """All positions, decoded: what the scanner must give when asked for every one."""
    content = orjson.loads(raw)["choices"][0]["logprobs"]["content"]
    top = np.full((len(content), k), -np.inf, dtype=np.float32)
    for i, e in enumerate(content):
        row = [a["logprob"] for a in (e.get("top_logprobs") or ())[:k]]
        top[i, : len(row)] = row
    return np.array([e["logprob"] for e in content], dtype=np.float32), top


def _same_everywhere(raw: bytes) -> None:
    """The oracle at the feature positions, and every position read against decoding them all."""
    assert_same(raw)
    found = logprob_scan.scan(raw, K)
    assert found is not None
    chosen, top = _every_position(raw)
    np.testing.assert_array_equal(found.chosen.view(np.uint32), chosen.view(np.uint32))
    np.testing.assert_array_equal(found.top.view(np.uint32), top.view(np.uint32))


@pytest.mark.parametrize("n", [MAX_POSITIONS + 1, 200, 257, 300, 700])
def test_skimmed_entries_are_read_exactly(n: int) -> None:
    """Every entry skimmed, those named read (from their colons, or the usual way), in every spelling."""
    rng = random.Random(n)
    body = _body([_nasty_entry(rng) for _ in range(n)])
    for raw in _spellings(body):
        _same_everywhere(raw)


def test_skimming_at_every_block_alignment() -> None:
    """The same entries shifted byte by byte against the 64-byte blocks: escapes and strings cross every boundary."""
    rng = random.Random(11)
    content = [_nasty_entry(rng) for _ in range(300)]
    for shift in range(64):
        body = _body(content)
        body["id"] = "x" * shift
        _same_everywhere(orjson.dumps(body))


def test_an_unread_entry_is_only_skimmed() -> None:
    """Decoding reads only the positions the features use, so an odd entry elsewhere changes nothing: accepted (which
    shows the skim ran, as reading every entry declines an entry without a logprob); an odd entry that is read is declined.
    """
    rng = random.Random(12)
    for n, after in ((MAX_POSITIONS + 60, MAX_POSITIONS), (600, 300)):
        picked = features.positions(n)
        assert picked is not None
        at = next(i for i in range(after, n - 1) if i not in picked and i + 1 in picked)
        content: list = [_nasty_entry(rng) for _ in range(n)]
        content[at] = {"x": '}"{', "nested": [{"a": [1, {}]}]}
        assert_same(orjson.dumps(_body(content)))
        content[at + 1] = {"token": "a"}  # read, and no logprob
        assert AnswerStats.from_body(orjson.dumps(_body(content)), K) is None


@pytest.mark.parametrize(
    "tail",
    [
        b"1]",  # a number where an entry should be
        b"[]]",  # an array
        b'"a"]',  # a string
        b"{}, ]",  # a trailing comma
        b"{} {}]",  # no comma
        b"{}",  # a brace where the array's end should be
        b'{"a":"}]',  # a string that never closes
        b"{}}]",  # a brace too many
    ],
)
def test_what_the_skim_does_not_expect_is_declined(tail: bytes) -> None:
    """Only objects separated by commas are skimmed: anything else between or after the entries declines."""
    entries = b",".join(orjson.dumps(_entry(random.Random(i))) for i in range(300))
    raw = b'{"choices":[{"logprobs":{"content":[' + entries + b"," + tail + b'},"finish_reason":"stop"}]}'
    assert AnswerStats.from_body(raw, K) is None
    assert logprob_scan.scan(raw, K) is None


def test_mutated_long_bodies_never_give_a_wrong_answer() -> None:
    """Byte edits in and around the skimmed entries: declined, or whatever decoding gives when the JSON decodes."""
    rng = random.Random(13)
    bases = [orjson.dumps(_body([_nasty_entry(rng) for _ in range(n)])) for n in (150, 300)]
    bases.append(json.dumps(orjson.loads(bases[1]), indent=1).encode())
    seen = {o: 0 for o in Outcome}
    for _i in range(1000):
        seen[check(mutate(rng, rng.choice(bases)), K)[0]] += 1
    for _i in range(40):  # and structural edits (json_mutator: the body mostly still decodes)
        edited = mutate_json(bases[0], rng.getrandbits(32))
        if edited is not None:
            seen[check(edited, K)[0]] += 1
    assert seen[Outcome.SAME] > 60


def test_the_portable_skim_agrees() -> None:
    """The skim without AVX2 (what a CPU without it runs; ADAPTIVE_SD_SCAN_PORTABLE picks it) reads the same."""
    code = (
        "import random, orjson\n"
        "from tests.predictor.serving import test_native as t\n"
        "for n in (129, 300, 700):\n"
        "    rng = random.Random(n)\n"
        "    for raw in t._spellings(t._body([t._nasty_entry(rng) for _ in range(n)])):\n"
        "        t._same_everywhere(raw)\n"
        "t.test_skimming_at_every_block_alignment()\n"
        "t.test_an_unread_entry_is_only_skimmed()\n"
    )
    # -P and this process's path: the child imports the build this process tests (the sanitiser's, under make)
    env = {**os.environ, "ADAPTIVE_SD_SCAN_PORTABLE": "1", "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    done = subprocess.run([sys.executable, "-P", "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]


def test_k_may_change_from_call_to_call() -> None:
    """The scanner keeps its working arrays from one call to the next; a call with another k resizes them (the
    sanitiser run, `make test-sanitizers`, would see a write past them)."""
    rng = random.Random(14)
    bodies = [orjson.dumps(_body([_entry(rng, 8) for _ in range(n)])) for n in (3, 120, 300, 40)]
    for k in (1, 5, 64, 2, 8, 1):
        for raw in bodies:
            assert_same(raw, k)


def _sorted_statistics(chosen: np.ndarray) -> list[float]:
    """lp_min, the quantiles and the shares below each threshold, from a stable sort, in Python's doubles: the bits
    answer_stats gave with qsort (glibc's, a merge sort: stable), where -0.0 and 0.0 compare equal and keep their order."""
    v = sorted(max(float(x), features.FLOOR) for x in chosen)  # stable
    m = len(v)

    def quantile(q: float) -> float:
        pos = q * (m - 1)
        lo = int(pos)
        hi = min(lo + 1, m - 1)
        return v[lo] + (pos - lo) * (v[hi] - v[lo])

    low = [float(t) for t in np.array(features.LOW_LOGPROB, dtype=np.float32)]
    return [v[0], quantile(0.05), quantile(0.25), quantile(0.5), *[sum(x < t for x in v) / m for t in low]]


@pytest.mark.parametrize("m", [1, 2, 8, 9, 17, 128, 300])
def test_answer_stats_sort_keeps_the_bits(m: int) -> None:
    """The statistics read from the sorted values (now an inlined stable merge sort) are the bits a stable sort gives,
    ties and signed zeros included (lp_min of an answer of certain tokens is the first zero's sign)."""
    rng = np.random.default_rng(m)
    for i in range(20):
        chosen = np.round(-rng.exponential(1.0, m), int(rng.integers(0, 3))).astype(np.float32)  # many ties
        chosen[rng.random(m) < 0.3] = np.float32(-0.0)
        chosen[rng.random(m) < 0.2] = np.float32(0.0)
        chosen[rng.random(m) < 0.1] = np.float32(-1e4)  # floored
        if i % 4 == 0:  # only zeros, of both signs: the minimum is the first
            chosen = np.where(rng.random(m) < 0.5, np.float32(-0.0), np.float32(0.0)).astype(np.float32)
        top = np.full((m, 1), -1.0, np.float32)
        got = _answer_stats.answer_stats(chosen, top, 1)
        picked = [got[1], got[3], got[4], got[5], *got[6:10]]
        assert np.array_equal(np.array(picked).view(np.uint64), np.array(_sorted_statistics(chosen)).view(np.uint64)), chosen
