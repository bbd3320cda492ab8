"""The router's own labels (``router.labels``): from a run's visits, and counted for a served cascade."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from router.contracts import StageVisit
from router.draft import DraftCheck
from router.labels import FreeLabel, free_labels
from router.metrics import REGISTRY
from tests.router.inprocess import ESCALATE, make_settings, serve


def visit(stage: int, draft: DraftCheck | None = None, **kw: object) -> StageVisit:
    return StageVisit(stage, f"s{stage}", 0.1, draft=draft, **kw)  # type: ignore[arg-type]


def test_a_verified_answer_is_labelled_by_the_share_its_verifier_kept() -> None:
    kept = visit(1, DraftCheck(draft_tokens=10, accepted_tokens=6))  # 0.6: the threshold itself is acceptable
    assert free_labels([visit(0), kept]) == [FreeLabel(0, "s0", 1, "verification", 0.6, "s1")]
    rejected = visit(1, DraftCheck(draft_tokens=10, accepted_tokens=5))
    assert [label.value for label in free_labels([visit(0), rejected])] == [0]


def _chat(text: str) -> dict[str, object]:
    return {"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}


def text(choice: Mapping[str, Any]) -> str:
    return str(choice["message"]["content"])


def test_a_short_answer_is_labelled_by_whether_its_verifier_finished_with_the_same_text() -> None:
    """s1 kept all of "30" and wrote on to "300": every token kept, a different answer (0); the same answer is 1."""
    kept_all = DraftCheck(draft_tokens=2, accepted_tokens=2)
    [wrong] = free_labels([visit(0, choice=_chat("30")), visit(1, kept_all, choice=_chat("300"))], text)
    assert (wrong.value, wrong.agreement, wrong.same) == (0, 1.0, False)
    [right] = free_labels([visit(0, choice=_chat("300")), visit(1, kept_all, choice=_chat("300\n"))], text)
    assert (right.value, right.same) == (1, True)
    cut = visit(1, kept_all, choice=_chat("3"), aborted_at=1)  # the verifier cut short by early exit: not known
    assert free_labels([visit(0, choice=_chat("30")), cut], text)[0].same is None
    assert free_labels([visit(0, choice=_chat("30")), visit(1, kept_all, choice=_chat("300"))])[0].value == 1  # no text


def test_a_long_answer_keeps_the_share_rule_whatever_its_verifier_finished_with() -> None:
    draft, own = "a" * 40, "a" * 30 + "b" * 20
    check = DraftCheck(draft_tokens=10, accepted_tokens=7)
    [long] = free_labels([visit(0, choice=_chat(draft)), visit(1, check, choice=_chat(own))], text)
    assert (long.value, long.same) == (1, False)


def test_what_gives_no_label_and_what_a_broken_rule_gives() -> None:
    assert free_labels([visit(0)]) == []  # the last stage: nothing above it looked at it
    assert free_labels([visit(0), visit(1)]) == []  # escalated, answered from scratch: no verification
    assert free_labels([visit(0), visit(1, DraftCheck(draft_tokens=0))]) == []  # an empty draft says nothing
    cut = visit(0, aborted_at=8)  # early exit: its prefix is not its answer
    assert free_labels([cut, visit(1, DraftCheck(draft_tokens=8, accepted_tokens=8))]) == []
    broken = visit(0, invalid="tool_call_unparsed")
    assert free_labels([broken, visit(1)]) == [FreeLabel(0, "s0", 0, "validity")]
    failed = visit(1, error="timeout")  # a failed stage is skipped: the stage above it verified s0's draft
    assert free_labels([visit(0), failed, visit(2, DraftCheck(draft_tokens=4, accepted_tokens=4))])[0].verifier == "s2"


def _count(stage: str, source: str, value: str) -> float:
    return REGISTRY.get_sample_value("adaptive_sd_labels_total", {"stage": stage, "source": source, "label": value}) or 0.0


@pytest.mark.anyio
async def test_a_served_escalation_counts_its_label() -> None:
    """An escalation whose next stage verifies the draft (the vLLM dialect scores prompts): s0's answer is labelled,
    by the text s1 finished with, since it is short: s1 keeps 3 of its 4 tokens (0.75) and says 4, not 5 (a 0)."""
    before = _count("s0", "verification", "0")
    agreement_before = REGISTRY.get_sample_value("adaptive_sd_stage_agreement_count", {"stage": "s0"}) or 0.0
    async with serve(ESCALATE, make_settings(dialect="vllm")) as r:
        resp = await r.chat(temperature=0, max_tokens=32)
    assert resp.status_code == 200 and resp.headers["x-cascade-path"] == "s0,s1"
    assert _count("s0", "verification", "0") == before + 1
    assert REGISTRY.get_sample_value("adaptive_sd_stage_agreement_count", {"stage": "s0"}) == agreement_before + 1


def _cost(basis: str) -> float:
    return REGISTRY.get_sample_value("adaptive_sd_cascade_cost_total", {"basis": basis}) or 0.0


@pytest.mark.anyio
async def test_realised_cost_is_counted_against_the_top_stage_alone() -> None:
    """A stop at s0 (price 1) against what s1 (price 4) would have cost for it; an escalation pays both stages; a
    streamed one counts once its stream has ended (``CascadeResult.ended``), with the tokens the stream reported."""
    realised, top = _cost("realised"), _cost("top_stage")
    async with serve(0.9) as r:
        assert (await r.chat(max_tokens=16)).headers["x-cascade-stage"] == "s0"
    assert (_cost("realised") - realised, _cost("top_stage") - top) == (1.0, 4.0)
    async with serve(ESCALATE) as r:
        assert (await r.chat(max_tokens=16)).headers["x-cascade-stage"] == "s1"
    assert (_cost("realised") - realised, _cost("top_stage") - top) == (6.0, 8.0)
    async with serve(ESCALATE) as r:
        streamed = await r.chat(max_tokens=16, stream=True)
        assert streamed.headers["x-cascade-stage"] == "s1" and b"[DONE]" in streamed.content
    assert (_cost("realised") - realised, _cost("top_stage") - top) == (11.0, 12.0)


@pytest.mark.anyio
async def test_the_top_stage_estimate_prices_the_prompt_once_and_the_answer_as_written() -> None:
    """Per-token prices: the prompt at the fewest tokens any stage reported (a verifying stage's count the draft it
    scored), the answer at the answering stage's completion tokens (which count the draft tokens it kept)."""
    priced = ({"prices": {"usd": {"request": 1.0, "prompt_token": 2**-10, "output_token": 2**-8}}},
              {"prices": {"usd": {"request": 4.0, "prompt_token": 2**-9, "output_token": 2**-7}}})  # fmt: skip
    top = _cost("top_stage")
    async with serve(ESCALATE, make_settings(*priced, dialect="vllm", cost_unit="usd")) as r:
        resp = await r.chat(temperature=0, max_tokens=32)
    assert resp.headers["x-cascade-draft"] == "s1:verify"
    (p0, _), (p1, c1) = [map(int, part.split("=")[1].split("+")) for part in resp.headers["x-cascade-tokens"].split(",")]
    assert p1 > p0  # s1's scoring calls counted s0's draft as prompt
    assert _cost("top_stage") - top == 4.0 + p0 * 2**-9 + c1 * 2**-7
