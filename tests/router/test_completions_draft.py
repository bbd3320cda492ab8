"""Draft verification over ``/v1/completions`` (``router.openai.completions.draft.COMPLETIONS_DRAFT``) against a scripted
stage, in-process.

The fake's greedy answer to ``PROMPT`` is its script, and a prompt that appends part
of it is continued from there, so "lossless" is checkable exactly, as for chat in
``test_draft_fake.py``: whatever the draft, verify + continue gives the stage's own text.
"""

from __future__ import annotations

from typing import Any

import pytest

from common.settings import StageConfig
from router.draft import token_limit, trim, verify_draft
from router.openai.completions.draft import COMPLETIONS_DRAFT
from router.speculative import verify_sampled
from tests.router.fake_stage import FakeStage, Script
from tests.router.test_draft_fake import drafts

pytestmark = pytest.mark.anyio

PROMPT = "# the square of a number:"  # ends on a word: the fake's tokens carry their leading white space
OWN = "\ndef square(x):\n    return x * x\n\nprint(square(3))  # the square of three is nine, as expected"
BODY: dict[str, Any] = {"prompt": PROMPT, "temperature": 0, "max_tokens": 64, "logprobs": 2}


def _stage(text: str = OWN) -> FakeStage:
    config = StageConfig(name="s1", model="m1", url="http://127.0.0.1:9/v1", prices={"cost": {"request": 2.0}})
    return FakeStage(config, Script(text, completion_prompt=PROMPT))


async def _verified(stage: FakeStage, draft: str, draft_tokens: int | None, body: dict[str, Any] = BODY) -> dict[str, Any]:
    check = await verify_draft(stage, body, draft, draft_tokens, COMPLETIONS_DRAFT)
    assert check is not None
    done = trim(check, token_limit(body))
    io = COMPLETIONS_DRAFT
    return io.merge(check, None if done else await io.fetch(stage, io.continuation(body, check)))


@pytest.mark.parametrize("draft", drafts(OWN, " Here it is:"))  # a token carries its leading white space
@pytest.mark.parametrize("sized", [True, False])
async def test_verify_then_continue_is_the_stages_own_answer(draft: str, sized: bool) -> None:
    stage = _stage()
    data = await _verified(stage, draft, len(draft.split()) if sized else None)
    choice = data["choices"][0]
    assert choice["text"] == OWN
    lp = choice["logprobs"]
    assert "".join(lp["tokens"]) == OWN and len(lp["tokens"]) == data["usage"]["completion_tokens"]
    assert lp["text_offset"] == [sum(len(t) for t in lp["tokens"][:i]) for i in range(len(lp["tokens"]))]
    scoring = [c for c in stage.calls if c.get("echo")]
    assert scoring and all(c["prompt"].startswith(PROMPT) and c["max_tokens"] == 1 for c in scoring)


async def test_the_whole_draft_accepted_in_one_pass_needs_no_continuation() -> None:
    stage = _stage()
    check = await verify_draft(stage, {**BODY, "max_tokens": 5}, OWN, 40, COMPLETIONS_DRAFT)
    assert check is not None and trim(check, 5) and check.accepted_tokens == 5
    data = COMPLETIONS_DRAFT.merge(check, None)
    assert data["object"] == "text_completion" and data["choices"][0]["finish_reason"] == "length"
    assert data["choices"][0]["text"] == "".join(stage.script.tokens[:5])


async def test_a_draft_that_does_not_start_on_a_token_boundary_is_misaligned() -> None:
    stage = _stage()
    assert await COMPLETIONS_DRAFT.score(stage, BODY, "def square(x):", 2) is None  # "number:def" tokenizes as one word


async def test_scoring_reads_rank_from_the_logprobs() -> None:
    stage = _stage()
    scored = await COMPLETIONS_DRAFT.score(stage, BODY, "\ndef square(y):", 2)
    assert scored is not None and scored.tokens == ["\ndef", " square(y):"] and scored.top1 == [True, False]
    mismatch = scored.entries[1]["top_logprobs"]
    assert [a["token"] for a in mismatch] == [" square(x):", " square(y):"]  # the stage's own choice first, then the draft's


async def test_sampled_verification_over_completions() -> None:
    stage = _stage()
    body = {**BODY, "temperature": 1.0, "seed": 3}
    draft_entries = [{"token": t, "logprob": -0.05, "top_logprobs": []} for t in stage.script.tokens]
    check = await verify_sampled(stage, body, OWN, draft_entries, COMPLETIONS_DRAFT)
    assert check is not None and check.draft_tokens == len(stage.script.tokens)
    assert OWN.startswith(check.accepted_text) or check.accepted_tokens < check.draft_tokens
    assert stage.calls[0]["echo"] is True and stage.calls[0]["logprobs"] == 20
