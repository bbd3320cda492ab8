"""A ``/v1/completions`` answer gives the same feature vector as a chat answer with the same tokens.

The cascade judges completions with the predictor trained on chat answers, so the
completions logprobs shape (``{token: logprob}`` dicts, the chosen token added, in no
set order) must be read into exactly the arrays chat's ``logprobs.content`` gives.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import orjson
import pytest

from common.completions_protocol import CompletionLogprobs, chat_entries, entries_logprobs
from predictor.serving.features import MAX_POSITIONS, AnswerStats, PromptStats, answer_features

K = 5
PROMPT = PromptStats.from_texts(["def add(a, b):\n    "])


def _chat_choice(n: int, rng: random.Random, finish: str = "stop", sampled_share: float = 0.2) -> dict[str, Any]:
    """A chat choice of ``n`` tokens: K alternatives per position, most likely first; at some positions
    (sampled) the chosen token is below them, as sampling gives."""
    content = []
    for i in range(n):
        lps = sorted((-rng.expovariate(1.0) * (j + 1) for j in range(K)), reverse=True)
        alts = [{"token": f"t{i}_{j}", "logprob": lp, "bytes": []} for j, lp in enumerate(lps)]
        if rng.random() < sampled_share:
            token, lp = f"s{i}", lps[-1] - rng.expovariate(1.0) - 0.01
        else:
            token, lp = alts[0]["token"], lps[0]
        content.append({"token": token, "logprob": lp, "bytes": [], "top_logprobs": alts})
    return {"index": 0, "message": {"role": "assistant", "content": "".join(e["token"] for e in content)},
            "logprobs": {"content": content}, "finish_reason": finish}  # fmt: skip


def _as_completion(chat: dict[str, Any], rng: random.Random, vllm_order: bool) -> dict[str, Any]:
    """The same answer as a completions choice, built the way the servers build it: vLLM puts the chosen
    token first, our CPU server the alternatives in rank order and the chosen token last (if it is not one)."""
    out = CompletionLogprobs()
    for e in chat["logprobs"]["content"]:
        alts = [(a["token"], a["logprob"]) for a in e["top_logprobs"]]
        if vllm_order:
            alts = [(e["token"], e["logprob"]), *rng.sample(alts, len(alts))]
        out.add(e["token"], e["logprob"], alts)
    body = {"choices": [{"index": 0, "text": chat["message"]["content"], "logprobs": out.take(), "finish_reason": chat["finish_reason"]}]}
    return orjson.loads(orjson.dumps(body))["choices"][0]  # through JSON, as it arrives


@pytest.mark.parametrize("n", [0, 1, 17, MAX_POSITIONS, MAX_POSITIONS + 1, 700])
@pytest.mark.parametrize("vllm_order", [False, True])
@pytest.mark.parametrize("finish", ["stop", "length"])
def test_a_completion_and_a_chat_answer_with_the_same_tokens_give_the_same_features(n: int, vllm_order: bool, finish: str) -> None:
    rng = random.Random(n * 2 + vllm_order)
    chat = orjson.loads(orjson.dumps(_chat_choice(n, rng, finish)))
    completion = _as_completion(chat, rng, vllm_order)
    from_chat = AnswerStats.from_choice(chat, K)
    from_completion = AnswerStats.from_completion_choice(completion, K)
    assert from_completion.length == from_chat.length == n
    np.testing.assert_array_equal(from_completion.token_logprobs, from_chat.token_logprobs)
    np.testing.assert_array_equal(from_completion.top_logprobs, from_chat.top_logprobs)
    for stage in (0, 2):
        np.testing.assert_array_equal(answer_features(PROMPT, from_completion, stage), answer_features(PROMPT, from_chat, stage))


@pytest.mark.parametrize("k", [1, 3, K])
def test_a_smaller_k_keeps_the_most_likely_alternatives(k: int) -> None:
    rng = random.Random(k)
    chat = _chat_choice(40, rng)
    completion = _as_completion(chat, rng, vllm_order=True)
    np.testing.assert_array_equal(
        AnswerStats.from_completion_choice(completion, k).top_logprobs, AnswerStats.from_choice(chat, k).top_logprobs
    )


def test_ragged_and_missing_alternatives_are_padded() -> None:
    choice = {"logprobs": {"tokens": ["a", "b", "c"], "token_logprobs": [-0.1, -0.2, -0.3],
                           "top_logprobs": [{"a": -0.1, "x": -2.0}, None, {"c": -0.3}]}, "finish_reason": None}  # fmt: skip
    stats = AnswerStats.from_completion_choice(choice, 2)
    assert stats.finish_reason == "stop" and stats.length == 3
    np.testing.assert_array_equal(stats.top_logprobs, np.array([[-0.1, -2.0], [-np.inf, -np.inf], [-0.3, -np.inf]], np.float32))
    empty = AnswerStats.from_completion_choice({"text": "", "logprobs": None, "finish_reason": "length"}, K)
    assert empty.length == 0 and empty.top_logprobs.shape == (0, K) and empty.finish_reason == "length"


def test_the_translations_between_the_shapes_keep_the_numbers() -> None:
    rng = random.Random(7)
    chat = _chat_choice(30, rng, sampled_share=0.0)  # chosen = top-1: the completions dict holds exactly the K alternatives
    completion = _as_completion(chat, rng, vllm_order=True)
    back = chat_entries(completion["logprobs"], K)
    assert [(e["token"], e["logprob"]) for e in back] == [(e["token"], e["logprob"]) for e in chat["logprobs"]["content"]]
    assert [[a["logprob"] for a in e["top_logprobs"]] for e in back] == [
        [a["logprob"] for a in e["top_logprobs"]] for e in chat["logprobs"]["content"]
    ]
    again = entries_logprobs(back).take()
    assert again["tokens"] == completion["logprobs"]["tokens"] and again["text_offset"] == completion["logprobs"]["text_offset"]
    assert [sorted(d.values()) for d in again["top_logprobs"]] == [sorted(d.values()) for d in completion["logprobs"]["top_logprobs"]]
