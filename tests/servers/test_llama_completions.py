"""``/v1/completions`` (vLLM-compatible) and ``/v1/models/{id}`` on the llama.cpp stage server (real models)."""

from __future__ import annotations

import json

import httpx
import pytest
from openai import OpenAI

from tests.common.test_completions_protocol import REFUSED_EVERYWHERE

QWEN = "qwen2.5-coder-0.5b"
PROMPT = "def fibonacci(n):\n    "


@pytest.fixture(scope="module")
def url(stage_ports: list[int]) -> str:
    return f"http://127.0.0.1:{stage_ports[1]}/v1"


@pytest.fixture(scope="module")
def client(url: str) -> OpenAI:
    return OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=300)


def _post(url: str, **body: object) -> dict:
    resp = httpx.post(f"{url}/completions", json={"model": QWEN, "prompt": PROMPT, **body}, timeout=300)
    assert resp.status_code == 200, resp.text
    return resp.json()


def _stream(url: str, **body: object) -> list[dict]:
    chunks = []
    with httpx.stream("POST", f"{url}/completions", json={"model": QWEN, "prompt": PROMPT, "stream": True, **body}, timeout=300) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line[6:]))
    return chunks


def test_completion_through_the_sdk(client: OpenAI) -> None:
    r = client.completions.create(model=QWEN, prompt=PROMPT, max_tokens=24, temperature=0)
    assert r.object == "text_completion" and r.choices[0].text and r.choices[0].finish_reason in ("length", "stop")
    assert r.usage is not None and r.usage.completion_tokens <= 24 and r.usage.prompt_tokens > 0
    default = client.completions.create(model=QWEN, prompt=[PROMPT], temperature=0)  # a list with one prompt; 16 tokens by default
    assert default.usage is not None and default.usage.completion_tokens <= 16
    assert r.choices[0].text.startswith(default.choices[0].text)


def test_no_chat_template_is_applied(url: str) -> None:
    """The prompt is the text as given: its tokens are the prompt's tokens (no <|im_start|> around it)."""
    data = _post(url, max_tokens=0, echo=True, logprobs=0)
    tokens = data["choices"][0]["logprobs"]["tokens"]
    assert "".join(tokens) == PROMPT and data["usage"]["prompt_tokens"] == len(tokens)


def test_logprobs_shape_and_consistency(url: str) -> None:
    data = _post(url, max_tokens=12, temperature=0, logprobs=3)
    lp = data["choices"][0]["logprobs"]
    n = data["usage"]["completion_tokens"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(lp["text_offset"]) == n
    assert "".join(lp["tokens"]) == data["choices"][0]["text"]
    offsets = [0]
    for tok in lp["tokens"][:-1]:
        offsets.append(offsets[-1] + len(tok))
    assert lp["text_offset"] == offsets
    for tok, value, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"], strict=True):
        assert value <= 0 and 3 <= len(top) <= 4 and top[tok] == pytest.approx(value)
        assert max(top.values()) == pytest.approx(value)  # greedy: the chosen token is the top one


def test_echo_with_logprobs_scores_the_prompt(url: str) -> None:
    data = _post(url, max_tokens=8, temperature=0, logprobs=2, echo=True)
    choice = data["choices"][0]
    lp = choice["logprobs"]
    n_prompt = data["usage"]["prompt_tokens"]
    assert choice["text"].startswith(PROMPT)
    assert len(lp["tokens"]) == n_prompt + data["usage"]["completion_tokens"]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert all(v is not None and v <= 0 for v in lp["token_logprobs"][1:])
    assert "".join(lp["tokens"]) == choice["text"]
    generated = _post(url, max_tokens=8, temperature=0, logprobs=2)
    assert choice["text"] == PROMPT + generated["choices"][0]["text"]
    assert lp["token_logprobs"][n_prompt:] == pytest.approx(generated["choices"][0]["logprobs"]["token_logprobs"])


def test_echo_without_logprobs_and_scoring_only(url: str) -> None:
    data = _post(url, max_tokens=4, temperature=0, echo=True)
    assert data["choices"][0]["text"].startswith(PROMPT) and data["choices"][0]["logprobs"] is None
    only = _post(url, max_tokens=0, echo=True, logprobs=1)
    assert only["choices"][0]["text"] == PROMPT and only["usage"]["completion_tokens"] == 0


def test_stream_equals_non_stream(url: str) -> None:
    whole = _post(url, max_tokens=20, temperature=0, logprobs=1)
    chunks = _stream(url, max_tokens=20, temperature=0, logprobs=1, stream_options={"include_usage": True})
    assert all(c["object"] == "text_completion" for c in chunks)
    body = [c for c in chunks if c["choices"]]
    assert "".join(c["choices"][0]["text"] for c in body) == whole["choices"][0]["text"]
    tokens = [t for c in body if c["choices"][0]["logprobs"] for t in c["choices"][0]["logprobs"]["tokens"]]
    offsets = [t for c in body if c["choices"][0]["logprobs"] for t in c["choices"][0]["logprobs"]["text_offset"]]
    assert tokens == whole["choices"][0]["logprobs"]["tokens"] and offsets == whole["choices"][0]["logprobs"]["text_offset"]
    assert body[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert chunks[-1]["usage"] == whole["usage"]


def test_stream_with_echo(url: str) -> None:
    chunks = _stream(url, max_tokens=6, temperature=0, echo=True)
    assert chunks[0]["choices"][0]["text"] == PROMPT
    whole = _post(url, max_tokens=6, temperature=0, echo=True)
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole["choices"][0]["text"]


def test_stop_and_seed(url: str) -> None:
    full = _post(url, max_tokens=30, temperature=0)["choices"][0]["text"]
    cut = full.strip().split()[1]
    stopped = _post(url, max_tokens=30, temperature=0, stop=[cut])
    assert stopped["choices"][0]["finish_reason"] == "stop" and stopped["choices"][0]["text"] == full[: full.index(cut)]
    a = _post(url, max_tokens=12, temperature=1.0, seed=3)["choices"][0]["text"]
    assert a == _post(url, max_tokens=12, temperature=1.0, seed=3)["choices"][0]["text"]


@pytest.mark.parametrize(
    "body,param",
    [*REFUSED_EVERYWHERE, ({"max_tokens": 0}, "max_tokens"), ({"suffix": "x"}, "suffix")],
)
def test_bad_requests_name_the_field(url: str, body: dict, param: str) -> None:
    resp = httpx.post(f"{url}/completions", json={"model": QWEN, "prompt": PROMPT, **body}, timeout=60)
    assert resp.status_code == 400 and resp.json()["error"]["param"] == param, resp.text


def test_wrong_model_is_404(url: str) -> None:
    resp = httpx.post(f"{url}/completions", json={"model": "other", "prompt": PROMPT}, timeout=60)
    assert resp.status_code == 404 and resp.json()["error"]["param"] == "model"


def test_model_by_id(client: OpenAI, url: str) -> None:
    card = client.models.retrieve(QWEN)
    assert card.id == QWEN and card.object == "model"
    assert [m.id for m in client.models.list()] == [QWEN]
    resp = httpx.get(f"{url}/models/other", timeout=60)
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "model_not_found"


def test_vllm_sampling_extras_are_honoured(url: str) -> None:
    greedy = _post(url, max_tokens=12, temperature=0)["choices"][0]["text"]
    assert _post(url, max_tokens=12, temperature=1.0, seed=1, top_k=1)["choices"][0]["text"] == greedy
    assert _post(url, max_tokens=12, temperature=1.0, seed=1, min_p=1.0)["choices"][0]["text"] == greedy
    repeats = "a a a a a a a a a a a a"  # greedy goes on repeating; a penalty on the tokens seen steers away
    assert _post(url, prompt=repeats, max_tokens=6, temperature=0)["choices"][0]["text"].split() == ["a"] * 6
    assert "a" not in _post(url, prompt=repeats, max_tokens=6, temperature=0, repetition_penalty=5.0)["choices"][0]["text"].split()
    done = _post(url, prompt="The capital of France is Paris.", max_tokens=64, temperature=0, stop=["."])
    n = done["usage"]["completion_tokens"]
    held = _post(url, prompt="The capital of France is Paris.", max_tokens=64, temperature=0, stop=["."], min_tokens=n + 3)
    assert held["usage"]["completion_tokens"] >= n + 3  # neither the stop string nor the end before min_tokens
    resp = httpx.post(f"{url}/completions", json={"model": QWEN, "prompt": PROMPT, "top_k": -2}, timeout=60)
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "top_k", resp.text
