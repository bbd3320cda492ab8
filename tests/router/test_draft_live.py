"""Draft reuse on real llama.cpp stages: verify + continue equals the larger stage's own greedy answer.

Measured on this CPU build of llama.cpp: the same position's log-probabilities
move by up to 0.38 nats depending on how the tokens before it were batched
(one prefill vs. prefill + single steps) and on the KV-cache layout left by
earlier requests. Scoring a draft in one pass and decoding step by step are
two such batchings, so where the stage's own top-2 choices are closer than
that, "its own greedy answer" is itself not unique. The equality is therefore
asserted exactly wherever the stage's top-2 gap at the first differing token
exceeds ``TIE_TOLERANCE``; a divergence inside the tolerance is a near-tie,
reported and capped, never silently accepted.
"""

from __future__ import annotations

import asyncio

import pytest
from openai import OpenAI

from router.config import Settings
from router.draft import score_draft
from router.stage_client import StageClient
from tests.conftest import RouterProcess

PROMPTS = [
    "Write a Python function that checks whether a string is a palindrome.",
    "What is the capital of France? Answer in one sentence.",
    "Explain in two sentences what a hash map is.",
    "Write a Python one-liner that sums the even numbers in a list `xs`.",
    "List the first five square numbers.",
]
MAX_TOKENS = 40
TIE_TOLERANCE = 0.5  # nats; > the 0.38 measured spread from batching alone
NEAR_TIES: list[tuple[str, int, float]] = []


def _gap_at_divergence(own: object, got: str) -> tuple[int, float] | None:
    """(token index, top-2 logprob gap of the stage's own answer) where ``got`` first differs."""
    text = own.choices[0].message.content  # type: ignore[attr-defined]
    if got == text:
        return None
    first = next((i for i, (a, b) in enumerate(zip(got, text)) if a != b), min(len(got), len(text)))
    consumed = 0
    for index, entry in enumerate(own.choices[0].logprobs.content):  # type: ignore[attr-defined]
        consumed += len(entry.token)
        if consumed > first:
            top = entry.top_logprobs
            return index, top[0].logprob - top[1].logprob
    return len(own.choices[0].logprobs.content), 0.0  # type: ignore[attr-defined]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_escalation_is_lossless_for_greedy(client: OpenAI, router: RouterProcess, prompt: str) -> None:
    s1 = router.settings.stages[1].name
    messages = [{"role": "user", "content": prompt}]
    raw = client.chat.completions.with_raw_response.create(
        model="cascade", messages=messages, temperature=0, max_tokens=MAX_TOKENS, extra_body={"cascade_lambda": 1e6}  # type: ignore[arg-type]
    )
    own = client.chat.completions.create(
        model=s1, messages=messages, temperature=0, max_tokens=MAX_TOKENS, logprobs=True, top_logprobs=2  # type: ignore[arg-type]
    )
    assert raw.headers["x-cascade-draft"] == f"{s1}:verify"
    got = raw.parse().choices[0].message.content
    divergence = _gap_at_divergence(own, got)
    if divergence is not None:
        index, gap = divergence
        NEAR_TIES.append((prompt, index, gap))
        print(f"near-tie: {prompt!r} diverges at token {index}, own top-2 gap {gap:.3f} nats")
        assert gap < TIE_TOLERANCE, f"diverged at token {index} where the stage's own choice leads by {gap:.3f} nats"
    assert len(NEAR_TIES) <= len(PROMPTS) // 2, f"too many near-ties: {NEAR_TIES}"


def test_sampling_falls_back_to_regeneration(client: OpenAI, router: RouterProcess) -> None:
    s1 = router.settings.stages[1].name
    raw = client.chat.completions.with_raw_response.create(
        model="cascade", messages=[{"role": "user", "content": PROMPTS[0]}], temperature=0.7, seed=3, max_tokens=16,  # type: ignore[arg-type]
        extra_body={"cascade_lambda": 1e6},
    )
    assert raw.headers["x-cascade-draft"] == f"{s1}:regenerate:sampling"
    assert "x-cascade-accepted" not in raw.headers or raw.headers["x-cascade-accepted"] == "-"


def test_own_answer_is_accepted_except_near_ties(router: RouterProcess) -> None:
    """Alignment: scoring a stage's own greedy answer ranks its tokens first, except at near-ties."""
    settings: Settings = router.settings

    async def go() -> None:
        stage = StageClient(settings.stages[1])
        await stage.start()
        try:
            for prompt in PROMPTS[:3]:
                body = {"messages": [{"role": "user", "content": prompt}], "temperature": 0, "max_tokens": MAX_TOKENS}
                own, _ = await stage.chat(body)
                text = own["choices"][0]["message"]["content"]
                n = own["usage"]["completion_tokens"]
                scoring = {**body, "messages": [*body["messages"], {"role": "assistant", "content": text}], "max_tokens": 1,
                           "continue_final_message": True, "add_generation_prompt": False, "prompt_logprobs": 1}
                scored, _ = await stage.chat(scoring)
                ids = scored["prompt_token_ids"][-n:]
                for tok, entry in zip(ids, scored["prompt_logprobs"][-n:]):
                    mine = entry[str(tok)]
                    if mine["rank"] != 1:
                        gap = max(v["logprob"] for v in entry.values()) - mine["logprob"]
                        assert gap < TIE_TOLERANCE, f"{prompt!r}: own token rejected by {gap:.3f} nats"
                check = await score_draft(stage, body, text)
                assert check is not None and check.draft_tokens == n
                assert text.startswith(check.accepted_text)
                # a mangled draft keeps at most the agreeing prefix
                mangled = text[: len(text) // 2] + " banana banana"
                bad = await score_draft(stage, body, mangled)
                assert bad is not None and bad.accepted_tokens < bad.draft_tokens
                assert mangled.startswith(bad.accepted_text) and len(bad.accepted_text) <= len(text) // 2 + 1
        finally:
            await stage.close()

    asyncio.run(go())
