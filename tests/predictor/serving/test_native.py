"""The compiled logprob scanner: the same arrays as decoding the JSON, or a refusal, never a wrong answer.

``AnswerStats.from_body`` (the router's path) must equal ``AnswerStats.from_choice``
on the decoded body (the training path) for every answer, whatever the JSON's
spelling; anything outside the expected shape returns None so the caller decodes.
"""

from __future__ import annotations

import asyncio
import json
import random
import struct

import numpy as np
import orjson
import pytest

from common.settings import StageConfig
from predictor.offline.dataset import read_rows
from predictor.serving import features
from predictor.serving.features import MAX_POSITIONS, AnswerStats
from router.stage_client import StageClient
from tests.conftest import ROOT, ladder_config

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


def assert_same(raw: bytes) -> AnswerStats:
    fast = AnswerStats.from_body(raw, K)
    assert fast is not None, raw[:200]
    slow = AnswerStats.from_choice(orjson.loads(raw)["choices"][0], K)
    assert fast.length == slow.length and fast.finish_reason == slow.finish_reason
    assert fast.token_logprobs.dtype == slow.token_logprobs.dtype == np.float32
    np.testing.assert_array_equal(fast.token_logprobs, slow.token_logprobs)
    np.testing.assert_array_equal(fast.top_logprobs, slow.top_logprobs)
    return fast


def test_the_extension_is_built() -> None:
    """`pip install .` compiles it; without it the router silently takes the slow path."""
    assert features._native is not None


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
    got = np.array(features._native.answer_stats(chosen, np.ascontiguousarray(top), k))
    np.testing.assert_allclose(got, _oracle(chosen, top), rtol=1e-9, atol=1e-12)


def test_answer_stats_of_nothing_are_zero() -> None:
    assert features._native.answer_stats(np.zeros(0, np.float32), np.zeros((0, 5), np.float32), 5) == (0.0,) * 18


@pytest.mark.parametrize(
    ("chosen", "top", "k"),
    [
        (np.zeros(3, np.float64), np.zeros((3, 5), np.float32), 5),  # not float32
        (np.zeros(3, np.float32), np.zeros((3, 4), np.float32), 5),  # k values missing
        (np.zeros(3, np.float32), np.zeros((5, 3), np.float32).T, 5),  # not C-contiguous
    ],
)
def test_answer_stats_refuse_wrong_arrays(chosen: np.ndarray, top: np.ndarray, k: int) -> None:
    with pytest.raises((TypeError, ValueError, BufferError)):
        features._native.answer_stats(chosen, top, k)


def test_mutated_bodies_never_give_a_wrong_answer() -> None:
    """Cut, flipped and spliced bytes: declined, or the same arrays as decoding whenever the JSON decodes."""
    rng = random.Random(7)
    bases = [orjson.dumps(_body([_entry(rng) for _ in range(n)])) for n in (0, 3, 40, 200)]
    bases.append(json.dumps(orjson.loads(bases[2]), indent=1).encode())
    alphabet = b'{}[]",:\\ -0123456789.eEnulltrx'
    accepted = 0
    for _i in range(3000):
        raw = bytearray(rng.choice(bases))
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(raw))
            op = rng.random()
            if op < 0.4:
                raw[at] = rng.choice(alphabet)
            elif op < 0.7:
                del raw[at : at + rng.randint(1, 20)]
            elif op < 0.9:
                raw[at:at] = bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 5)))
            else:
                raw = raw[:at]
        body = bytes(raw)
        fast = AnswerStats.from_body(body, K)
        if fast is None:
            continue
        try:
            choice = orjson.loads(body)["choices"][0]
            slow = AnswerStats.from_choice(choice, K)
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, ValueError, AttributeError):
            continue  # not a chat completion: the router rejects it when it decodes the body
        accepted += 1
        np.testing.assert_array_equal(fast.token_logprobs, slow.token_logprobs)
        np.testing.assert_array_equal(fast.top_logprobs, slow.top_logprobs)
        assert (fast.length, fast.finish_reason) == (slow.length, slow.finish_reason)
    assert accepted > 300  # the comparison ran on many bodies that survived mutation


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
