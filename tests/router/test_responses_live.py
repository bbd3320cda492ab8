"""``POST /v1/responses`` through the official OpenAI client, in front of real llama.cpp stages 0 and 1.

Plain text only: the CPU stage server refuses tools and JSON formats (``servers/llama_server.py``).
The in-process suite (``test_responses.py``) covers the rest against scripted stages.
"""

from __future__ import annotations

from typing import Any

import pytest
from openai import OpenAI
from openai.types.responses import Response

from tests.conftest import RouterProcess

INPUT = "Write a Python function that returns the square of a number."
GREEDY: dict[str, Any] = {"instructions": "Be brief.", "temperature": 0.0, "max_output_tokens": 24}
LADDER = {
    "cascade": {},  # whatever the policy decides
    "cascade-escalating": {"extra_headers": {"x-cascade-lambda": "1e6"}},  # stage 1 verifies stage 0's draft; its stream is relayed
    "stage-0": {},  # pass-through to the first stage, by its name
}


def _check(resp: Response, model: str) -> None:
    assert resp.id.startswith("resp_") and resp.object == "response" and resp.model == model
    assert resp.status in ("completed", "incomplete") and resp.output_text
    usage = resp.usage
    assert usage is not None and usage.output_tokens > 0 and usage.total_tokens == usage.input_tokens + usage.output_tokens


@pytest.mark.parametrize("case", list(LADDER))
def test_create_and_stream(client: OpenAI, router: RouterProcess, case: str) -> None:
    stages = [s.name for s in router.settings.stages]
    model = stages[0] if case == "stage-0" else "cascade"
    extra = LADDER[case]
    raw = client.responses.with_raw_response.create(model=model, input=INPUT, **GREEDY, **extra)
    resp = raw.parse()
    _check(resp, model)
    assert raw.headers["x-cascade-stage"] in stages
    if case == "stage-0":
        assert raw.headers["x-cascade-stage"] == model and resp.usage is not None and resp.usage.output_tokens <= 24
    if case == "cascade-escalating":
        assert raw.headers["x-cascade-path"] == ",".join(stages[:2])
    with client.responses.stream(model=model, input=INPUT, **GREEDY, **extra) as stream:
        events = list(stream)
    types = [e.type for e in events]
    assert types[:4] == ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]
    assert types[-1] in ("response.completed", "response.incomplete") and "error" not in types  # incomplete: it hit max_output_tokens
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1].response  # type: ignore[union-attr]
    _check(final, model)
    streamed = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert streamed == final.output_text
    if case == "stage-0":  # greedy, one stage, as test_chat_live relies on: streamed or not, the same answer
        assert streamed == resp.output_text
