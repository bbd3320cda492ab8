"""``POST /v1/completions`` in-process: scripted stages (``fake_stage.py``) and a scripted p̂, through the ASGI app.

The app and the predictable policy of ``inprocess.py``: point priors, no risk
shrinkage, costs 1 and 4, priors 0.5 and 0.9, λ = 10, so stage 0 stops at
p̂ >= 0.5. The fakes answer their script to ``PROMPT`` and continue it after a
prompt that appends part of it (the draft code's continuation). What real
stages do is in ``test_completions_live.py``.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from router.stage import StageBadResponse, StageFailure, StageTimeout, StageUnavailable
from tests.common.test_completions_protocol import REFUSED_EVERYWHERE
from tests.router import inprocess
from tests.router.fake_stage import Script
from tests.router.inprocess import ESCALATE, STOP, events, make_settings
from tests.router.inprocess import TEXT_PROMPT as PROMPT

pytestmark = pytest.mark.anyio

C0 = Script(" The answer is 5.", prompt_tokens=10, completion_prompt=PROMPT)
C1 = Script(" The answer is 4, because two and two make four.", prompt_tokens=11, completion_prompt=PROMPT)
# per-token prices in another unit (binary fractions: the sums are exact), small enough to leave the policy's choices as they are
TOKEN_PRICED = ({"prices": {"usd": {"request": 1.0, "prompt_token": 2**-10, "output_token": 2**-8}}},
                {"prices": {"usd": {"request": 4.0, "prompt_token": 2**-9, "output_token": 2**-7}}})  # fmt: skip
serve = partial(inprocess.serve, scripts=(C0, C1))


def streamed_text(chunks: list[Any]) -> str:
    return "".join(c["choices"][0]["text"] for c in chunks if isinstance(c, dict) and c.get("choices"))


def usage_of(n_prompt: int, n_completion: int) -> dict[str, int]:
    return {"prompt_tokens": n_prompt, "completion_tokens": n_completion, "total_tokens": n_prompt + n_completion}


# -- the cascade ----------------------------------------------------------------


async def test_high_p_stops_at_stage_0() -> None:
    async with serve(STOP) as r:
        resp = await r.complete(max_tokens=16)
        assert resp.status_code == 200, resp.text
        data = resp.json()
        assert data["object"] == "text_completion" and data["model"] == "cascade"
        assert data["choices"][0]["text"] == C0.text and data["choices"][0]["finish_reason"] == "stop"
        assert data["choices"][0]["logprobs"] is None  # asked of the stage for the predictor, not by the client
        assert data["usage"] == usage_of(10, len(C0.tokens))
        assert resp.headers["x-cascade-stage"] == resp.headers["x-cascade-path"] == "s0"
        assert resp.headers["x-cascade-p"] == "0.9000" and resp.headers["x-cascade-lambda"] == "10"
        assert resp.headers["x-cascade-kind"] == "text" and float(resp.headers["x-cascade-overhead-ms"]) >= 0
        assert resp.headers["x-cascade-tokens"] == "s0=10+4"
        assert (resp.headers["x-cascade-cost"], resp.headers["x-cascade-cost-unit"]) == ("1", "cost")
        (sent,) = r.stages[0].calls
        assert sent == {"prompt": PROMPT, "max_tokens": 16, "logprobs": r.predictor.top_k}  # no model, stream or echo
        assert r.stages[1].calls == []


async def test_the_default_token_limit_is_sent_explicitly() -> None:
    async with serve(STOP) as r:
        assert (await r.complete()).status_code == 200
        assert r.stages[0].calls[0]["max_tokens"] == 16  # OpenAI's default; verification and continuations count against it


async def test_low_p_escalates_and_sums_usage() -> None:
    async with serve(ESCALATE) as r:
        raw = await r.openai().completions.with_raw_response.create(model="cascade", prompt=PROMPT, max_tokens=32)
        resp = raw.parse()
        assert resp.model == "cascade" and resp.choices[0].text == C1.text
        assert raw.headers["x-cascade-stage"] == "s1" and raw.headers["x-cascade-path"] == "s0,s1"
        assert raw.headers["x-cascade-p"] == "0.1000,0.8000"
        assert raw.headers["x-cascade-draft"] == "s1:regenerate:dialect"  # plain OpenAI dialect: no echo scoring
        assert resp.usage is not None and resp.usage.model_dump(exclude_none=True) == usage_of(10 + 11, len(C0.tokens) + len(C1.tokens))
        assert len(r.predictor.features) == 2


async def test_the_feature_vector_is_the_chat_one_for_the_same_answer() -> None:
    """One predictor for both APIs: the same tokens and logprobs, the same prompt text, the same features."""
    chat_script = Script(C0.text, prompt_tokens=10)
    async with serve(STOP, scripts=(chat_script, C1)) as r:
        ok = await r.client.post("/v1/chat/completions", json={"model": "cascade", "messages": [{"role": "user", "content": PROMPT}]})
        assert ok.status_code == 200
        assert (await r.complete()).status_code == 200
    chat, completion = r.predictor.features
    np.testing.assert_array_equal(chat, completion)


async def test_escalation_verifies_the_draft_on_the_prompt_and_answers_the_upper_stages_own_text() -> None:
    """Greedy, vLLM dialect: stage 1 scores prompt + stage 0's text (echo), keeps the agreeing prefix, continues from it."""
    async with serve(ESCALATE, make_settings(dialect="vllm")) as r:
        resp = await r.complete(max_tokens=32, temperature=0)
        assert resp.status_code == 200, resp.text
        assert resp.json()["choices"][0]["text"] == C1.text
        assert resp.headers["x-cascade-draft"] == "s1:verify"
        assert resp.headers["x-cascade-accepted"] == "s1:3/4"  # " The answer is" kept, " 5." rejected
        scoring, continuation = r.stages[1].calls
        assert scoring["prompt"] == PROMPT + C0.text and scoring["echo"] is True and scoring["max_tokens"] == 1
        assert scoring["logprobs"] == r.predictor.top_k
        assert continuation["prompt"] == PROMPT + " The answer is" and continuation["max_tokens"] == 32 - 3
        rest = len(C1.tokens) - 3
        # stage 0: 10 + its 4 tokens; stage 1: the scoring call's prompt (11 + 4 draft tokens), the continuation's
        # (11 + 3 kept), the 3 kept tokens and the continuation's own
        assert resp.json()["usage"] == usage_of(10 + 15 + 14, 4 + 3 + rest)
        assert resp.headers["x-cascade-tokens"] == f"s0=10+4,s1={15 + 14}+{3 + rest}"  # the draft's tokens in s1's usage


async def test_tokens_and_cost_per_stage_after_a_verified_draft() -> None:
    """Each stage's tokens as its usage counted them, and the tenant's charge at the stages' per-token prices:
    s0 1 + 10/1024 + 4/256, s1 4 + 29/512 + 10/128."""
    async with serve(ESCALATE, make_settings(*TOKEN_PRICED, dialect="vllm", cost_unit="usd")) as r:
        raw = await r.openai().completions.with_raw_response.create(model="cascade", prompt=PROMPT, max_tokens=32, temperature=0)
        assert raw.headers["x-cascade-accepted"] == "s1:3/4"
        assert raw.headers["x-cascade-tokens"] == f"s0=10+4,s1=29+{len(C1.tokens)}"
        assert (raw.headers["x-cascade-cost"], raw.headers["x-cascade-cost-unit"]) == ("5.16015625", "usd")
        usage = raw.parse().usage
        assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (10 + 29, 4 + len(C1.tokens))


async def test_a_draft_that_merges_with_the_prompt_is_regenerated() -> None:
    """A prompt whose last word the draft's first token joins ("A:" + "The") does not end on a token boundary:
    stage 1's own answer starts after the prompt's own last token, so the draft is not verified."""
    glued0 = Script("The answer is 5.", prompt_tokens=10, completion_prompt=PROMPT)
    glued1 = Script("The answer is 4.", prompt_tokens=11, completion_prompt=PROMPT)
    async with serve(ESCALATE, make_settings(dialect="vllm"), scripts=(glued0, glued1)) as r:
        resp = await r.complete(max_tokens=32, temperature=0)
        assert resp.json()["choices"][0]["text"] == glued1.text
        assert resp.headers["x-cascade-draft"] == "s1:regenerate:misaligned"


async def test_sampled_escalation_between_stages_sharing_a_tokenizer_verifies_by_speculative_sampling() -> None:
    shared = ({"tokenizer": "t"}, {"tokenizer": "t"})
    async with serve(ESCALATE, make_settings(*shared, dialect="vllm")) as r:
        resp = await r.complete(max_tokens=32, temperature=0.7, seed=1)
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-cascade-draft"] == "s1:verify-sampling"
        scoring = r.stages[1].calls[0]
        assert scoring["echo"] is True and scoring["prompt"] == PROMPT + C0.text
        assert resp.json()["choices"][0]["text"].startswith(" The answer is")


async def test_sampled_escalation_with_different_tokenizers_regenerates() -> None:
    async with serve(ESCALATE, make_settings(dialect="vllm")) as r:
        resp = await r.complete(max_tokens=32, temperature=0.7)
        assert resp.headers["x-cascade-draft"] == "s1:regenerate:sampling" and resp.json()["choices"][0]["text"] == C1.text


async def test_logprobs_only_when_asked_and_only_as_many_as_asked() -> None:
    async with serve(STOP) as r:
        resp = await r.complete(logprobs=2)
        lp = resp.json()["choices"][0]["logprobs"]
        assert lp["tokens"] == C0.tokens and len(lp["token_logprobs"]) == len(C0.tokens)
        assert all(len(top) == 2 and top[t] == v for t, v, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"], strict=True))
        assert lp["text_offset"][0] == 0 and r.stages[0].calls[0]["logprobs"] == r.predictor.top_k
        only_chosen = (await r.complete(logprobs=0)).json()["choices"][0]["logprobs"]
        assert all(list(top) == [t] for t, top in zip(only_chosen["tokens"], only_chosen["top_logprobs"], strict=True))


async def test_logprobs_of_a_verified_answer_come_in_the_completions_shape() -> None:
    async with serve(ESCALATE, make_settings(dialect="vllm")) as r:
        data = (await r.complete(max_tokens=32, temperature=0, logprobs=1)).json()
        lp = data["choices"][0]["logprobs"]
        assert "".join(lp["tokens"]) == data["choices"][0]["text"] == C1.text
        offsets = [0]
        for token in lp["tokens"][:-1]:
            offsets.append(offsets[-1] + len(token))
        assert lp["text_offset"] == offsets and all(len(top) == 1 for top in lp["top_logprobs"])


async def test_echo_puts_the_prompt_in_front() -> None:
    async with serve(STOP) as r:
        data = (await r.complete(echo=True)).json()
        assert data["choices"][0]["text"] == PROMPT + C0.text and "echo" not in r.stages[0].calls[0]
        chunks = events(await r.complete(echo=True, stream=True))
        assert streamed_text(chunks) == PROMPT + C0.text


@pytest.mark.parametrize(
    ("body", "param"),
    [({"echo": True, "logprobs": 1}, "echo"), ({"echo": True, "max_tokens": 0}, "max_tokens"), ({"max_tokens": 0}, "max_tokens")],
)
async def test_what_the_cascade_cannot_judge_is_refused(body: dict[str, Any], param: str) -> None:
    async with serve(STOP) as r:
        resp = await r.complete(**body)
        assert resp.status_code == 400 and resp.json()["error"]["param"] == param, resp.text
        assert r.stages[0].calls == []


# -- streaming ------------------------------------------------------------------


async def test_stream_from_a_stopped_lower_stage() -> None:
    async with serve(STOP) as r:
        resp = await r.complete(stream=True, stream_options={"include_usage": True}, logprobs=1)
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        chunks = events(resp)
        assert chunks[-1] == "[DONE]" and streamed_text(chunks) == C0.text
        assert all(c["object"] == "text_completion" and c["model"] == "cascade" for c in chunks[:-1])
        finishes = [c["choices"][0]["finish_reason"] for c in chunks[:-1] if c["choices"] and c["choices"][0]["finish_reason"]]
        assert finishes == ["stop"]
        assert chunks[0]["choices"][0]["logprobs"]["tokens"] == C0.tokens
        assert chunks[-2]["usage"] == usage_of(10, len(C0.tokens)) and chunks[-2]["choices"] == []
        assert not any(call.get("stream") for call in r.stages[0].calls)


async def test_stream_from_the_top_stage_folds_earlier_usage_in() -> None:
    async with serve(ESCALATE) as r:
        stream = await r.openai().completions.create(model="cascade", prompt=PROMPT, stream=True, stream_options={"include_usage": True})
        chunks = [c async for c in stream]
        assert "".join(c.choices[0].text for c in chunks if c.choices) == C1.text
        assert all(c.model == "cascade" and c.object == "text_completion" for c in chunks)
        assert all(c.choices[0].logprobs is None for c in chunks if c.choices)  # the stage's were asked for the cascade
        usage = chunks[-1].usage
        assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (21, len(C0.tokens) + len(C1.tokens))
        last = r.stages[1].calls[-1]
        assert last["stream"] is True and last["stream_options"] == {"include_usage": True}


async def test_stream_from_the_top_stage_after_a_verified_draft_sends_the_prefix_first() -> None:
    async with serve(ESCALATE, make_settings(dialect="vllm")) as r:
        resp = await r.complete(stream=True, temperature=0, max_tokens=32, logprobs=1)
        chunks = events(resp)
        assert chunks[0]["id"] == "cmpl-prefix" and chunks[0]["choices"][0]["text"] == " The answer is"
        assert streamed_text(chunks) == C1.text and chunks[-1] == "[DONE]"
        assert resp.headers["x-cascade-accepted"] == "s1:3/4"
        offsets = [
            o for c in chunks[:-1] if c["choices"] and c["choices"][0]["logprobs"] for o in c["choices"][0]["logprobs"]["text_offset"]
        ]
        assert offsets == [sum(len(t) for t in C1.tokens[:i]) for i in range(len(C1.tokens))]  # the continuation's shifted


async def test_a_stream_from_the_top_stage_leaves_its_tokens_to_the_usage_chunk() -> None:
    """The headers go out before s1 streams: s0's tokens, s1 charged its per-request price; the usage chunk less the
    header's sums is s1's (its scoring and continuation prompts, the kept and streamed tokens)."""
    async with serve(ESCALATE, make_settings(*TOKEN_PRICED, dialect="vllm", cost_unit="usd")) as r:
        resp = await r.complete(stream=True, temperature=0, max_tokens=32, stream_options={"include_usage": True})
        assert resp.headers["x-cascade-path"] == "s0,s1" and resp.headers["x-cascade-accepted"] == "s1:3/4"
        assert resp.headers["x-cascade-tokens"] == "s0=10+4" and resp.headers["x-cascade-cost"] == "5.025390625"  # 1.025390625 + 4
        chunks = events(resp)
        assert streamed_text(chunks) == C1.text and chunks[-2]["usage"] == usage_of(10 + 29, 4 + len(C1.tokens))


async def test_a_stage_failing_mid_stream_ends_it_with_an_error_event() -> None:
    async with serve(ESCALATE) as r:
        r.stages[1].fail, r.stages[1].stream_fail_after = StageTimeout, 2
        chunks = events(await r.complete(stream=True))
        assert chunks[-2]["error"]["type"] == "upstream_error" and "stage 's1'" in chunks[-2]["error"]["message"]
        assert chunks[-1] == "[DONE]"


# -- failures -------------------------------------------------------------------
# (every stage failing: test_app_inprocess.py, for both APIs)


@pytest.mark.parametrize("failure", [StageUnavailable, StageTimeout, StageBadResponse])
async def test_upper_stage_failing_returns_the_lower_answer_degraded(failure: type[StageFailure]) -> None:
    async with serve(ESCALATE) as r:
        r.stages[1].fail = failure
        resp = await r.complete()
        assert resp.status_code == 200 and resp.json()["choices"][0]["text"] == C0.text
        assert resp.headers["x-cascade-path"] == "s0" and "stage 's1'" in resp.headers["x-cascade-degraded"]
        assert resp.headers["x-cascade-tokens"] == "s0=10+4,s1=0+0" and resp.headers["x-cascade-cost"] == "5"  # the failed call is paid


# -- stages without /v1/completions ----------------------------------------------


async def test_a_stage_configured_without_completions_is_skipped_and_named() -> None:
    async with serve(STOP, make_settings({"completions": False}, {})) as r:
        resp = await r.complete()
        assert resp.status_code == 200 and resp.json()["choices"][0]["text"] == C1.text
        assert resp.headers["x-cascade-path"] == "s1" and resp.headers["x-cascade-skipped"] == "s0:completions"
        assert r.stages[0].calls == []
        passthrough = await r.complete(model="s0")
        assert passthrough.status_code == 400 and passthrough.json()["error"]["param"] == "model"
        assert passthrough.json()["error"]["code"] == "completions_not_supported" and r.stages[0].calls == []
        cards = {m["id"]: m["capabilities"]["completions"] for m in (await r.client.get("/v1/models")).json()["data"]}
        assert cards == {"cascade": True, "s0": False, "s1": True}


async def test_no_stage_with_completions_is_a_400_naming_the_model() -> None:
    async with serve(STOP, make_settings({"completions": False}, {"completions": False})) as r:
        resp = await r.complete()
        assert resp.status_code == 400 and resp.json()["error"]["param"] == "model"
        assert resp.json()["error"]["code"] == "no_capable_stage"


async def test_a_stage_whose_completions_endpoint_is_missing() -> None:
    """Configured with completions but answering 404 there (a chat-only provider): pass-through is a 400 naming the model,
    the cascade goes on without it."""
    async with serve(STOP) as r:
        r.stages[0].serves_completions = False
        resp = await r.complete(model="s0")
        assert resp.status_code == 400 and resp.json()["error"]["param"] == "model", resp.text
        assert "completions: false" in resp.json()["error"]["message"]
        resp = await r.complete(model="s0", stream=True)
        assert resp.status_code == 400 and resp.json()["error"]["param"] == "model"
        cascade = await r.complete()
        assert cascade.status_code == 200 and cascade.headers["x-cascade-path"] == "s1"
        r.stages[1].serves_completions = False
        assert (await r.complete()).status_code == 502


# -- pass-through -----------------------------------------------------------------
# (its errors: test_app_inprocess.py, for both APIs)


async def test_passthrough_by_stage_name() -> None:
    async with serve(ESCALATE) as r:
        resp = await r.complete(model="s1", max_tokens=3, user="u1", metadata={"app": "x"})
        assert resp.status_code == 200, resp.text
        data = resp.json()
        assert data["model"] == "s1" and data["choices"][0]["text"] == "".join(C1.tokens[:3])
        assert data["choices"][0]["finish_reason"] == "length" and data["usage"] == usage_of(11, 3)
        assert resp.headers["x-cascade-stage"] == "s1" and "x-cascade-p" not in resp.headers
        assert resp.headers["x-cascade-tokens"] == "s1=11+3" and resp.headers["x-cascade-cost"] == "4"
        (sent,) = r.stages[1].calls
        assert sent == {"prompt": PROMPT, "max_tokens": 3, "stream": False, "echo": False}  # no model, nothing ignored
        assert r.stages[0].calls == []


async def test_passthrough_forwards_what_the_client_asked() -> None:
    async with serve(ESCALATE) as r:
        data = (await r.complete(model="s0", prompt=[PROMPT], logprobs=2, echo=True, max_tokens=2)).json()
        assert data["choices"][0]["text"] == PROMPT + "".join(C0.tokens[:2])
        assert data["choices"][0]["logprobs"]["token_logprobs"][0] is None  # the stage's own echo
        assert r.stages[0].calls[0]["prompt"] == PROMPT  # a list holding one prompt goes out as the string


async def test_passthrough_stream_renames_the_model() -> None:
    async with serve(ESCALATE) as r:
        stream = await r.openai().completions.create(model="s0", prompt=PROMPT, stream=True)
        chunks = [c async for c in stream]
        assert "".join(c.choices[0].text for c in chunks if c.choices) == C0.text
        assert all(c.model == "s0" for c in chunks)  # the stage called itself m0
        resp = await r.complete(model="s0", stream=True)
        assert resp.headers["x-cascade-tokens"] == "-" and resp.headers["x-cascade-cost"] == "1"  # its tokens are in its stream


# -- validation -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        *REFUSED_EVERYWHERE,
        ({"best_of": 3}, "best_of"),
        ({"suffix": "\n}"}, "suffix"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"temperature": "0"}, "temperature"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
    ],
)
async def test_what_no_stage_can_honour_is_a_400_naming_the_field(body: dict[str, Any], param: str) -> None:
    async with serve(STOP) as r:
        for model in ("cascade", "s0"):
            resp = await r.client.post("/v1/completions", json={"model": model, "prompt": PROMPT, **body})
            assert resp.status_code == 400, resp.text
            assert resp.json()["error"]["param"] == param and resp.json()["error"]["type"] == "invalid_request_error"
        assert r.stages[0].calls == []


async def test_fields_that_do_not_change_the_answer_are_accepted_and_never_forwarded() -> None:
    ignored = {"user": "u1", "metadata": {"app": "x"}, "store": False, "service_tier": "auto", "suffix": "", "n": 1, "best_of": 1}
    async with serve(STOP) as r:
        resp = await r.complete(**ignored)
        assert resp.status_code == 200, resp.text
        assert not {"user", "metadata", "store", "service_tier", "suffix"} & set(r.stages[0].calls[0])


async def test_an_empty_or_non_object_body_is_a_400() -> None:
    async with serve(STOP) as r:
        for content in (b"", b"[]", b"{"):
            resp = await r.client.post("/v1/completions", content=content, headers={"content-type": "application/json"})
            assert resp.status_code == 400 and set(resp.json()["error"]) == {"message", "type", "param", "code"}


# -- the traffic log ---------------------------------------------------------------


async def test_traffic_log_rows_of_completions_are_marked(tmp_path: Path) -> None:
    log = tmp_path / "traffic.jsonl"
    async with serve(ESCALATE, make_settings(dialect="vllm", predictor={"log_path": str(log)})) as r:
        assert (await r.complete(temperature=0, max_tokens=32)).status_code == 200
    (row,) = [orjson.loads(line) for line in log.read_text().splitlines()]
    assert row["kind"] == "completion" and row["prompt_texts"] == [PROMPT]
    lower, upper = row["stages"]
    assert lower["text"] == C0.text and lower["logprobs"] and lower["agreement"] == 3 / 4
    assert upper["text"] == C1.text and upper["draft"]["accepted"] == 3
