"""Draft verification against a scripted stage (``fake_stage.py``): the check's bookkeeping, in-process.

The fake's greedy answer is its script, so "lossless" is checkable exactly:
whatever the draft, verify + continue must give the stage's own text. Real
stages are covered by ``test_draft_live.py``.
"""

from __future__ import annotations

from typing import Any

import pytest

from common.settings import StageConfig
from router.draft import continuation_body, merge, score_draft, token_limit, trim, verify_draft
from router.speculative import verify_sampled
from tests.router.fake_stage import FakeStage, Script

pytestmark = pytest.mark.anyio

OWN = "def square(x):\n    return x * x\n\nprint(square(3))  # the square of three is nine, as expected"
BODY: dict[str, Any] = {"messages": [{"role": "user", "content": "square"}], "temperature": 0, "max_tokens": 64, "top_logprobs": 2}
DELAY_S = 0.01


def _stage(text: str = OWN, delay_s: float = 0.0) -> FakeStage:
    return FakeStage(
        StageConfig(name="s1", model="m1", url="http://127.0.0.1:9/v1", prices={"cost": {"request": 2.0}}), Script(text), delay_s=delay_s
    )


async def _verified_answer(stage: FakeStage, draft: str, draft_tokens: int | None) -> str:
    check = await verify_draft(stage, BODY, draft, draft_tokens)
    assert check is not None
    done = trim(check, token_limit(BODY))
    data = merge(check, None if done else (await stage.chat(continuation_body(BODY, check)))[0])
    return str(data["choices"][0]["message"]["content"])


def drafts(own: str, opening: str) -> list[str]:
    """Drafts against a stage whose answer is ``own`` (``square`` and its use): all of it, one late disagreement,
    a different ``opening`` then the same text (re-joined), and one that agrees on a prefix only."""
    return [own, own.replace("three", "3"), opening + own, own[: own.index("x * x")] + "x ** 2\n"]


@pytest.mark.parametrize("draft", drafts(OWN, "Here it is:\n"))
@pytest.mark.parametrize("sized", [True, False])
async def test_verify_then_continue_is_the_stages_own_answer(draft: str, sized: bool) -> None:
    stage = _stage()
    n = len(draft.split()) if sized else None
    assert await _verified_answer(stage, draft, n) == OWN


async def test_seconds_is_the_wall_time_of_every_verification_call() -> None:
    """``DraftCheck.seconds`` (recorded by the collection and the traffic log) covers all rounds."""
    stage = _stage(delay_s=DELAY_S)
    check = await verify_draft(stage, BODY, "Here it is:\n" + OWN, None)
    assert check is not None and check.rounds >= 2
    calls = len(stage.calls)
    assert check.seconds >= calls * DELAY_S
    single = _stage(delay_s=DELAY_S)
    one = await score_draft(single, BODY, OWN)
    # one round, one call: its seconds hold that call's (no upper bound in wall time: a loaded machine may stall)
    assert one is not None and one.rounds == 1 and len(single.calls) == 1 and one.seconds >= DELAY_S
    assert one.fraction == 1.0


async def test_sampled_verification_records_its_seconds_too() -> None:
    stage = _stage(delay_s=DELAY_S)
    entries = [{"token": t, "logprob": -0.1, "top_logprobs": [{"token": t, "logprob": -0.1}]} for t in ("def", " square(x):")]
    check = await verify_sampled(stage, {**BODY, "temperature": 1.0, "seed": 1}, "def square(x):", entries)
    assert check is not None and check.seconds >= DELAY_S
