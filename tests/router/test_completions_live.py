"""``POST /v1/completions`` through the router (a real process) in front of real llama.cpp stages 0 and 1, with the OpenAI client."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest
from openai import OpenAI

from tests.conftest import RouterProcess, free_port, ladder_config

PROMPT = "The capital of France is"  # ends on a word: stage 0's draft (" Paris ...") starts on a token boundary
CODE = "def add(a, b):"
GREEDY = {"temperature": 0.0, "max_tokens": 16}
TIE_TOLERANCE = 0.5  # nats (tests/router/test_draft_live.py)


def _stages(router: RouterProcess) -> tuple[str, str]:
    s0, s1 = (s.name for s in router.settings.stages[:2])
    return s0, s1


def _streamed(client: OpenAI, **kw: object) -> tuple[str, object]:
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **kw))  # type: ignore[call-overload]
    assert all(c.object == "text_completion" for c in chunks)
    return "".join(c.choices[0].text for c in chunks if c.choices), chunks[-1].usage


@pytest.mark.parametrize("prompt", [PROMPT, CODE])
def test_passthrough_to_each_stage_with_and_without_stream(client: OpenAI, router: RouterProcess, prompt: str) -> None:
    for stage in _stages(router):
        raw = client.completions.with_raw_response.create(model=stage, prompt=prompt, **GREEDY)  # type: ignore[arg-type]
        resp = raw.parse()
        assert resp.model == stage and resp.object == "text_completion" and resp.choices[0].text
        assert raw.headers["x-cascade-stage"] == stage
        assert resp.usage is not None and 0 < resp.usage.completion_tokens <= 16
        text, usage = _streamed(client, model=stage, prompt=prompt, **GREEDY)
        assert text == resp.choices[0].text and usage == resp.usage


def test_cascade_stopping_at_stage_0_is_stage_0s_answer(client: OpenAI, router: RouterProcess) -> None:
    s0, _ = _stages(router)
    raw = client.completions.with_raw_response.create(model="cascade", prompt=PROMPT, **GREEDY, extra_body={"cascade_lambda": 0.001})  # type: ignore[arg-type]
    resp = raw.parse()
    assert raw.headers["x-cascade-stage"] == raw.headers["x-cascade-path"] == s0 and resp.model == "cascade"
    assert 0.0 <= float(raw.headers["x-cascade-p"]) <= 1.0 and raw.headers["x-cascade-kind"] == "text"
    direct = client.completions.create(model=s0, prompt=PROMPT, **GREEDY)  # type: ignore[arg-type]
    assert resp.choices[0].text == direct.choices[0].text and resp.usage == direct.usage
    assert resp.choices[0].logprobs is None
    text, usage = _streamed(client, model="cascade", prompt=PROMPT, **GREEDY, extra_body={"cascade_lambda": 0.001})
    assert text == direct.choices[0].text and usage == direct.usage


def _assert_own_answer(own: object, tokens: list[str]) -> None:
    """``tokens`` are stage 1's own greedy answer ``own`` (logprobs with 2 alternatives), except after a near-tie.

    As in ``test_draft_live.py``: llama.cpp's CPU logprobs move by up to 0.38 nats with how earlier positions were
    batched, so where the stage's top two are closer than ``TIE_TOLERANCE`` its own greedy answer is not unique
    (a one-pass scoring of the draft and step-by-step decoding are two batchings).
    """
    lp = own.choices[0].logprobs  # type: ignore[attr-defined]
    for index, (mine, got) in enumerate(zip(lp.tokens, tokens, strict=False)):
        if mine != got:
            first, second = sorted(lp.top_logprobs[index].values(), reverse=True)[:2]
            assert first - second < TIE_TOLERANCE, (
                f"diverged at token {index} ({mine!r} vs {got!r}) where the stage leads by {first - second:.3f}"
            )
            return
    assert len(lp.tokens) == len(tokens)


@pytest.mark.parametrize("prompt", [PROMPT, CODE])
def test_cascade_escalating_answers_stage_1s_own_text_and_sums_usage(client: OpenAI, router: RouterProcess, prompt: str) -> None:
    s0, s1 = _stages(router)
    escalate = {"extra_headers": {"x-cascade-lambda": "1e6"}}
    raw = client.completions.with_raw_response.create(model="cascade", prompt=prompt, logprobs=1, **GREEDY, **escalate)  # type: ignore[arg-type]
    resp = raw.parse()
    assert raw.headers["x-cascade-stage"] == s1 and raw.headers["x-cascade-path"] == f"{s0},{s1}"
    assert len(raw.headers["x-cascade-p"].split(",")) == 2
    # greedy: stage 1 verifies stage 0's text as the end of the prompt (echo), unless the two do not meet on a token boundary
    assert raw.headers["x-cascade-draft"] in (f"{s1}:verify", f"{s1}:regenerate:misaligned"), raw.headers["x-cascade-draft"]
    u0 = client.completions.create(model=s0, prompt=prompt, **GREEDY).usage  # type: ignore[arg-type]
    own = client.completions.create(model=s1, prompt=prompt, logprobs=2, **GREEDY)  # type: ignore[arg-type]
    lp = resp.choices[0].logprobs
    assert lp is not None and lp.tokens is not None and "".join(lp.tokens) == resp.choices[0].text
    _assert_own_answer(own, lp.tokens)
    assert resp.usage is not None and u0 is not None and own.usage is not None
    assert resp.usage.completion_tokens == u0.completion_tokens + len(lp.tokens)
    assert resp.usage.prompt_tokens >= u0.prompt_tokens + own.usage.prompt_tokens
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    chunks = list(client.completions.create(model="cascade", prompt=prompt, logprobs=1, stream=True, **GREEDY, **escalate))  # type: ignore[call-overload]
    _assert_own_answer(own, [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.tokens])
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "".join(
        t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.tokens
    )


def test_a_plain_prompt_is_verified_on_escalation(client: OpenAI, router: RouterProcess) -> None:
    s0, s1 = _stages(router)
    raw = client.completions.with_raw_response.create(model="cascade", prompt=PROMPT, **GREEDY, extra_body={"cascade_lambda": 1e6})  # type: ignore[arg-type]
    assert raw.headers["x-cascade-draft"] == f"{s1}:verify"
    accepted, scored = map(int, raw.headers["x-cascade-accepted"].split(":")[1].split("/"))
    assert 0 <= accepted <= scored


def test_client_logprobs_in_the_completions_shape(client: OpenAI) -> None:
    resp = client.completions.create(model="cascade", prompt=PROMPT, logprobs=2, **GREEDY, extra_body={"cascade_lambda": 1e6})  # type: ignore[arg-type]
    lp = resp.choices[0].logprobs
    assert lp is not None and lp.tokens and lp.token_logprobs and lp.top_logprobs and lp.text_offset is not None
    assert "".join(lp.tokens) == resp.choices[0].text
    assert all(1 <= len(top) <= 3 for top in lp.top_logprobs)


def test_what_no_stage_can_honour_is_a_400(client: OpenAI) -> None:
    for kw in ({"n": 2}, {"suffix": "\n    return x"}, {"best_of": 2}):
        with pytest.raises(openai.BadRequestError) as info:
            client.completions.create(model="cascade", prompt=CODE, max_tokens=4, **kw)  # type: ignore[call-overload]
        assert info.value.body["param"] == next(iter(kw))  # type: ignore[index]


def test_a_streamed_completions_tour_is_logged_whole(stage_ports: list[int], tmp_path: Path) -> None:
    """A streamed completion on a ladder that tours (``cascade.explore``): the top stage's logged answer is the
    verified prefix and the stream after it (``router.stream_tap``, ``COMPLETIONS_DRAFT.merge``), exactly the text
    the client read, with its logprobs and usage; a tour the learner can use (``training.calibrate.tour_rows``)."""
    from training.calibrate import tour_rows

    log = tmp_path / "traffic.jsonl"
    cfg = ladder_config(stage_ports, free_port(), explore={"rate": 1.0, "untrained_rate": 1.0})
    cfg["predictor"]["log_path"] = str(log)
    proc = RouterProcess(cfg, tmp_path)
    try:
        read, _ = _streamed(proc.client(), model="cascade", prompt=PROMPT, **GREEDY)
    finally:
        proc.stop()
    (row,) = [json.loads(line) for line in log.read_text().splitlines()]
    top = len(stage_ports) - 1
    assert row["tour"] is True and row["kind"] == "completion" and [s["stage"] for s in row["stages"]] == list(range(top + 1))
    answer = row["stages"][top]
    assert read and answer["text"] == read and len(answer["logprobs"]) == answer["usage"]["completion_tokens"] > 0
    assert row["stages"][top - 1]["agreement"] is not None  # verified by the streaming stage: a label
    assert len(tour_rows([row], top + 1)) == 1
