"""Our llama.cpp stage server speaks the vLLM dialect the router relies on (real models)."""

from __future__ import annotations

import httpx
import pytest

PROMPT = [{"role": "user", "content": "List three prime numbers."}]


@pytest.fixture(scope="module")
def stage(stage_ports: list[int]) -> str:
    return f"http://127.0.0.1:{stage_ports[1]}/v1"


def _post(url: str, **body: object) -> dict:
    resp = httpx.post(f"{url}/chat/completions", json={"model": "qwen2.5-coder-0.5b", "messages": PROMPT, **body}, timeout=300)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_greedy_logprobs_are_consistent(stage: str) -> None:
    data = _post(stage, temperature=0, max_tokens=16, logprobs=True, top_logprobs=3)
    content = data["choices"][0]["logprobs"]["content"]
    assert len(content) == data["usage"]["completion_tokens"]
    for entry in content:
        assert entry["top_logprobs"][0]["token"] == entry["token"]  # greedy picks the top-1
        assert entry["top_logprobs"][0]["logprob"] == pytest.approx(entry["logprob"])
        lps = [t["logprob"] for t in entry["top_logprobs"]]
        assert lps == sorted(lps, reverse=True) and all(lp <= 0 for lp in lps)
    assert "".join(e["token"] for e in content) == data["choices"][0]["message"]["content"]


def test_stream_equals_non_stream(stage: str) -> None:
    whole = _post(stage, temperature=0, max_tokens=20)["choices"][0]["message"]["content"]
    text = ""
    with httpx.stream(
        "POST",
        f"{stage}/chat/completions",
        json={"model": "qwen2.5-coder-0.5b", "messages": PROMPT, "temperature": 0, "max_tokens": 20, "stream": True},
        timeout=300,
    ) as resp:
        for line in resp.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                import json

                chunk = json.loads(line[6:])
                text += chunk["choices"][0]["delta"].get("content", "") if chunk["choices"] else ""
    assert text == whole


def test_stop_sequence_cuts_the_answer(stage: str) -> None:
    full = _post(stage, temperature=0, max_tokens=30)["choices"][0]["message"]["content"]
    cut = full[len(full) // 2 :].strip().split()[0]
    data = _post(stage, temperature=0, max_tokens=30, stop=[cut])
    assert data["choices"][0]["finish_reason"] == "stop"
    assert data["choices"][0]["message"]["content"] == full[: full.index(cut)]


def test_seeded_sampling_is_reproducible(stage: str) -> None:
    a = _post(stage, temperature=1.0, seed=7, max_tokens=12)["choices"][0]["message"]["content"]
    b = _post(stage, temperature=1.0, seed=7, max_tokens=12)["choices"][0]["message"]["content"]
    assert a == b


def test_prompt_logprobs_accept_own_greedy_answer(stage: str) -> None:
    """Alignment: scoring the stage's own greedy answer ranks every answer token first."""
    answer = _post(stage, temperature=0, max_tokens=24)
    text = answer["choices"][0]["message"]["content"]
    scored = _post(
        stage,
        messages=[*PROMPT, {"role": "assistant", "content": text}],
        max_tokens=1,
        temperature=0,
        prompt_logprobs=1,
        continue_final_message=True,
        add_generation_prompt=False,
    )
    plp = scored["prompt_logprobs"]
    ids = scored["prompt_token_ids"]
    assert plp[0] is None and len(plp) == len(ids)
    n_answer = answer["usage"]["completion_tokens"]
    tail = plp[-n_answer:]
    ranks = [entry[str(tok)]["rank"] for entry, tok in zip(tail, ids[-n_answer:], strict=False)]
    assert ranks == [1] * n_answer


def test_continue_final_message_continues_greedily(stage: str) -> None:
    """Continuing the first half of the greedy answer (cut at a token boundary) regenerates the rest."""
    data = _post(stage, temperature=0, max_tokens=24, logprobs=True)
    text = data["choices"][0]["message"]["content"]
    tokens = [e["token"] for e in data["choices"][0]["logprobs"]["content"]]
    head = "".join(tokens[: len(tokens) // 2])
    rest = 24 - len(tokens) // 2
    cont = _post(
        stage,
        messages=[*PROMPT, {"role": "assistant", "content": head}],
        temperature=0,
        max_tokens=rest,
        continue_final_message=True,
        add_generation_prompt=False,
    )
    assert head + cont["choices"][0]["message"]["content"] == text


def test_stage_rejects_bad_input(stage: str) -> None:
    resp = httpx.post(f"{stage}/chat/completions", json={"model": "qwen2.5-coder-0.5b", "messages": PROMPT, "presence_penalty": 1.0})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "presence_penalty"
    resp = httpx.post(f"{stage}/chat/completions", json={"model": "other", "messages": PROMPT})
    assert resp.status_code == 404 and resp.json()["error"]["param"] == "model"
    resp = httpx.post(
        f"{stage}/chat/completions", json={"model": "qwen2.5-coder-0.5b", "messages": [{"role": "user", "content": "x " * 5000}]}
    )
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "context_length_exceeded"


def test_rescoring_a_longer_prompt_reuses_cached_scores_consistently(stage: str) -> None:
    """Draft verification scores growing prefixes; cached positions must equal a fresh pass.

    Scored three ways -- the whole text fresh, a prefix then the whole text
    (only the new positions computed), and again with nothing new -- the
    tokens and their ranks agree and the logprobs agree to batching noise.
    """
    answer = _post(stage, temperature=0, max_tokens=32)["choices"][0]["message"]["content"]

    def score(text: str) -> dict:
        return _post(stage, messages=[*PROMPT, {"role": "assistant", "content": text}], max_tokens=1, temperature=0,
                     prompt_logprobs=2, continue_final_message=True, add_generation_prompt=False)  # fmt: skip

    _post(stage, messages=[{"role": "user", "content": "Say something else entirely."}], max_tokens=2, temperature=0)  # evict
    fresh = score(answer)
    _post(stage, messages=[{"role": "user", "content": "Say something else entirely."}], max_tokens=2, temperature=0)
    score(answer[: len(answer) // 2])
    grown = score(answer)
    again = score(answer)
    assert fresh["prompt_token_ids"] == grown["prompt_token_ids"] == again["prompt_token_ids"]
    assert grown["prompt_logprobs"] == again["prompt_logprobs"]  # nothing recomputed, nothing lost
    assert grown["choices"][0]["message"]["content"] == fresh["choices"][0]["message"]["content"]
    for tok, a, b in zip(fresh["prompt_token_ids"][1:], fresh["prompt_logprobs"][1:], grown["prompt_logprobs"][1:], strict=False):
        assert a[str(tok)]["rank"] == b[str(tok)]["rank"] or abs(a[str(tok)]["logprob"] - b[str(tok)]["logprob"]) < 0.5
        assert abs(a[str(tok)]["logprob"] - b[str(tok)]["logprob"]) < 0.5  # nats: the batching spread measured here is 0.38


def test_final_message_scope_scores_only_the_answer(stage: str) -> None:
    """``prompt_logprobs_scope: final_message`` (our extension) skips the prompt's rows, same answer positions."""
    answer = _post(stage, temperature=0, max_tokens=16)
    text = answer["choices"][0]["message"]["content"]
    n = answer["usage"]["completion_tokens"]
    body = {"messages": [*PROMPT, {"role": "assistant", "content": text}], "max_tokens": 1, "temperature": 0,
            "prompt_logprobs": 1, "continue_final_message": True, "add_generation_prompt": False}  # fmt: skip
    _post(stage, messages=[{"role": "user", "content": "Something unrelated."}], max_tokens=1, temperature=0)  # evict
    scoped = _post(stage, **{**body, "prompt_logprobs_scope": "final_message"})
    full = _post(stage, **body)
    plp, ids = scoped["prompt_logprobs"], scoped["prompt_token_ids"]
    assert len(plp) == len(ids) == len(full["prompt_logprobs"])
    # the prompt's positions were not computed (a shared system prompt may still be cached from earlier requests)
    assert any(x is None for x in plp[1 : len(ids) - n - 2])
    for tok, a, b in zip(ids[-n:], plp[-n:], full["prompt_logprobs"][-n:], strict=False):
        assert a is not None and abs(a[str(tok)]["logprob"] - b[str(tok)]["logprob"]) < 0.5  # batching spread: 0.38 nats
    bad = httpx.post(f"{stage}/chat/completions", json={"model": "qwen2.5-coder-0.5b", "messages": PROMPT, "prompt_logprobs": 1,
                                                       "prompt_logprobs_scope": "final_message"}, timeout=60)  # fmt: skip
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "prompt_logprobs_scope"


def _decoded(stage: str) -> int:
    return int(httpx.get(stage.removesuffix("/v1") + "/health", timeout=10).json()["decoded_tokens"])


def test_closing_a_stream_stops_decoding_at_once(stage: str) -> None:
    """The router aborts a stage it judges while it writes (early exit) by closing the stream: the server must stop
    decoding then, not finish the answer nobody reads (it holds the model's lock, so the next request would wait)."""
    body = {"model": "qwen2.5-coder-0.5b", "messages": [{"role": "user", "content": "Count from 1 to 500, one number per line."}],
            "temperature": 0, "max_tokens": 1500, "stream": True}  # fmt: skip
    before = _decoded(stage)
    chunks = 0
    with httpx.stream("POST", f"{stage}/chat/completions", json=body, timeout=300) as resp:
        for line in resp.iter_lines():
            if line.startswith("data: {"):
                import json

                choice = json.loads(line[6:])["choices"][0]
                assert choice["finish_reason"] is None, "the answer ended before the test closed its stream"
                chunks += "content" in choice["delta"] and bool(choice["delta"]["content"])
                if chunks >= 12:
                    break
    closed = _decoded(stage) - before
    import time

    time.sleep(1.5)  # ~40 tokens' worth at this stage's speed, were it still decoding
    settled = _decoded(stage)
    time.sleep(0.5)
    assert _decoded(stage) == settled, "still decoding after its stream was closed"
    assert settled - before <= closed + 4, f"decoded {settled - before - closed} tokens after the close"
    assert settled - before < 100
    # and the model is free at once for the next request
    t0 = time.perf_counter()
    _post(stage, temperature=0, max_tokens=1)
    assert time.perf_counter() - t0 < 5


def test_vllm_sampling_extras_are_honoured(stage: str) -> None:
    """top_k, min_p, repetition_penalty, min_tokens and chat_template_kwargs, as vLLM takes them (its 400s included)."""
    greedy = _post(stage, temperature=0, max_tokens=12)["choices"][0]["message"]["content"]
    # sampling from the top 1 token, or from the tokens at least as likely as the most likely one, is greedy
    assert _post(stage, temperature=1.0, seed=1, top_k=1, max_tokens=12)["choices"][0]["message"]["content"] == greedy
    assert _post(stage, temperature=1.0, seed=1, min_p=1.0, max_tokens=12)["choices"][0]["message"]["content"] == greedy
    assert _post(stage, temperature=0, top_k=5, min_p=0.5, max_tokens=12)["choices"][0]["message"]["content"] == greedy
    assert _post(stage, temperature=0, repetition_penalty=2.0, max_tokens=12)["choices"][0]["message"]["content"] != greedy
    kwargs = _post(stage, temperature=0, max_tokens=12, chat_template_kwargs={"enable_thinking": False})
    assert kwargs["choices"][0]["message"]["content"] == greedy  # Qwen2.5's template has no such variable
    short = [{"role": "user", "content": "Reply with the single word: yes"}]
    free = _post(stage, messages=short, temperature=0, max_tokens=64)
    assert free["choices"][0]["finish_reason"] == "stop"
    n = free["usage"]["completion_tokens"]
    held = _post(stage, messages=short, temperature=0, max_tokens=64, min_tokens=n + 4)
    assert held["usage"]["completion_tokens"] >= n + 4
    for body, param in [({"top_k": -2}, "top_k"), ({"min_p": 1.5}, "min_p"), ({"repetition_penalty": 0}, "repetition_penalty"),
                        ({"min_tokens": 9, "max_tokens": 8}, "min_tokens")]:  # fmt: skip
        resp = httpx.post(f"{stage}/chat/completions", json={"model": "qwen2.5-coder-0.5b", "messages": PROMPT, **body})
        assert resp.status_code == 400 and resp.json()["error"]["param"] == param, resp.text
