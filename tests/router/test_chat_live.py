"""The router through the official OpenAI client, in front of real llama.cpp stages 0 and 1."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai
import pytest
import yaml
from openai import OpenAI

from tests.conftest import ROOT, RouterProcess, free_port, ladder_config

PROMPT = [{"role": "user", "content": "Write a Python function that returns the square of a number."}]
GREEDY = {"temperature": 0.0, "max_tokens": 24}


def _raw(client: OpenAI, **kw: object):  # type: ignore[no-untyped-def]
    return client.chat.completions.with_raw_response.create(messages=PROMPT, **GREEDY, **kw)  # type: ignore[arg-type]


def test_models_lists_cascade_and_stages(client: OpenAI, router: RouterProcess) -> None:
    ids = [m.id for m in client.models.list().data]
    assert ids == ["cascade", *(s.name for s in router.settings.stages)]


def test_passthrough_to_each_stage(client: OpenAI, router: RouterProcess) -> None:
    for stage in router.settings.stages:
        raw = _raw(client, model=stage.name)
        resp = raw.parse()
        assert resp.model == stage.name
        assert resp.choices[0].message.content
        assert raw.headers["x-cascade-stage"] == stage.name
        assert resp.usage.completion_tokens <= 24


def test_small_lambda_stops_at_stage_0(client: OpenAI, router: RouterProcess) -> None:
    raw = _raw(client, model="cascade", extra_body={"cascade_lambda": 0.001})
    resp = raw.parse()
    s0 = router.settings.stages[0].name
    assert raw.headers["x-cascade-stage"] == s0
    assert raw.headers["x-cascade-path"] == s0
    assert 0.0 <= float(raw.headers["x-cascade-p"]) <= 1.0
    assert float(raw.headers["x-cascade-overhead-ms"]) >= 0.0
    assert resp.model == "cascade"
    direct = client.chat.completions.create(model=s0, messages=PROMPT, **GREEDY)  # type: ignore[arg-type]
    assert resp.choices[0].message.content == direct.choices[0].message.content
    assert resp.usage.total_tokens == direct.usage.total_tokens


def test_large_lambda_escalates_and_sums_usage(client: OpenAI, router: RouterProcess) -> None:
    s0, s1 = (s.name for s in router.settings.stages[:2])
    raw = client.chat.completions.with_raw_response.create(
        model="cascade",
        messages=PROMPT,
        **GREEDY,
        extra_headers={"x-cascade-lambda": "1e6"},  # type: ignore[arg-type]
    )
    resp = raw.parse()
    assert raw.headers["x-cascade-stage"] == s1
    assert raw.headers["x-cascade-path"] == f"{s0},{s1}"
    assert len(raw.headers["x-cascade-p"].split(",")) == 2
    u0 = client.chat.completions.create(model=s0, messages=PROMPT, **GREEDY).usage  # type: ignore[arg-type]
    d1 = client.chat.completions.create(model=s1, messages=PROMPT, **GREEDY)  # type: ignore[arg-type]
    assert resp.choices[0].message.content == d1.choices[0].message.content
    # stage 1 verified stage 0's draft (greedy): one scoring pass over prompt + draft, then the rest
    assert raw.headers["x-cascade-draft"] == f"{s1}:verify"
    accepted, drafted = map(int, raw.headers["x-cascade-accepted"].split(":")[1].split("/"))
    assert 0 <= accepted <= drafted
    assert resp.usage.completion_tokens == u0.completion_tokens + d1.usage.completion_tokens
    assert resp.usage.prompt_tokens >= u0.prompt_tokens + d1.usage.prompt_tokens
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


def test_max_stage_caps_escalation(client: OpenAI, router: RouterProcess) -> None:
    raw = _raw(client, model="cascade", extra_body={"cascade_lambda": 1e6, "cascade_max_stage": 0})
    assert raw.headers["x-cascade-stage"] == router.settings.stages[0].name


def test_streaming_cascade_matches_non_streaming(client: OpenAI) -> None:
    for lam in (0.001, 1e6):
        whole = client.chat.completions.create(model="cascade", messages=PROMPT, **GREEDY, extra_body={"cascade_lambda": lam})  # type: ignore[arg-type]
        chunks = list(
            client.chat.completions.create(
                model="cascade",
                messages=PROMPT,
                **GREEDY,
                stream=True,  # type: ignore[arg-type]
                stream_options={"include_usage": True},
                extra_body={"cascade_lambda": lam},
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == whole.choices[0].message.content
        assert all(c.model == "cascade" for c in chunks)
        assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == whole.usage.total_tokens
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert finishes == [whole.choices[0].finish_reason]


def test_streaming_passthrough(client: OpenAI, router: RouterProcess) -> None:
    stage = router.settings.stages[1].name
    chunks = list(client.chat.completions.create(model=stage, messages=PROMPT, **GREEDY, stream=True))  # type: ignore[arg-type]
    whole = client.chat.completions.create(model=stage, messages=PROMPT, **GREEDY)  # type: ignore[arg-type]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert all(c.model == stage for c in chunks)


def test_logprobs_only_when_asked(client: OpenAI) -> None:
    plain = client.chat.completions.create(model="cascade", messages=PROMPT, **GREEDY, extra_body={"cascade_lambda": 0.001})  # type: ignore[arg-type]
    assert plain.choices[0].logprobs is None
    asked = client.chat.completions.create(
        model="cascade",
        messages=PROMPT,
        **GREEDY,
        logprobs=True,
        top_logprobs=2,
        extra_body={"cascade_lambda": 0.001},  # type: ignore[arg-type]
    )
    content = asked.choices[0].logprobs.content
    assert len(content) == asked.usage.completion_tokens
    assert all(len(t.top_logprobs) == 2 and t.top_logprobs[0].logprob >= t.logprob - 1e-6 for t in content)


def test_sdk_raises_typed_errors(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=PROMPT)  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="cascade", messages=PROMPT, temperature=5)  # type: ignore[arg-type]
    assert info.value.body["param"] == "temperature"  # type: ignore[index]


def test_metrics_count_what_happened(client: OpenAI, router: RouterProcess) -> None:
    client.chat.completions.create(model="cascade", messages=PROMPT, **GREEDY, extra_body={"cascade_lambda": 0.001})  # type: ignore[arg-type]
    text = httpx.get(f"{router.url}/metrics").text
    s0 = router.settings.stages[0].name
    assert f'adaptive_sd_cascade_stops_total{{stage="{s0}"}}' in text
    assert 'adaptive_sd_requests_total{model="cascade",status="200"}' in text
    assert "adaptive_sd_router_overhead_seconds_bucket" in text


def test_router_serves_with_the_shipped_learned_predictor(stage_ports: list[int], tmp_path: Path) -> None:
    """configs/cpu.yaml's default predictor (ONNX) loads at start-up and drives the cascade."""
    cfg = ladder_config(stage_ports, free_port())
    cfg["predictor"] = yaml.safe_load((ROOT / "configs" / "cpu.yaml").read_text())["predictor"]
    proc = RouterProcess(cfg, tmp_path)
    try:
        health = httpx.get(f"{proc.url}/health").json()
        assert health["predictor"].startswith("onnx-")
        raw = proc.client().chat.completions.with_raw_response.create(
            model="cascade", messages=[{"role": "user", "content": "What is 3 + 4?"}], max_tokens=8, temperature=0
        )
        p_hats = [float(p) for p in raw.headers["x-cascade-p"].split(",")]
        assert raw.parse().choices[0].message.content and all(0.0 <= p <= 1.0 for p in p_hats)
    finally:
        proc.stop()


def test_opt_in_traffic_log_feeds_training(stage_ports: list[int], tmp_path: Path) -> None:
    """With predictor.log_path set, escalations are logged in the collection format, labelled by verification."""
    from training import dataset

    log = tmp_path / "traffic.jsonl"
    cfg = ladder_config(stage_ports, free_port())
    cfg["predictor"]["log_path"] = str(log)
    proc = RouterProcess(cfg, tmp_path)
    try:
        for question in ("What is 2 + 2?", "Name a colour."):
            proc.client().chat.completions.create(
                model="cascade",
                messages=[{"role": "user", "content": question}],
                max_tokens=8,
                temperature=0,
                extra_body={"cascade_lambda": 1e6},
            )
    finally:
        proc.stop()
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(rows) == 2 and all(r["family"] == "traffic" for r in rows)
    lower = [r["stages"][0] for r in rows]
    assert all(s["stage"] == 0 and s["logprobs"] and s["agreement"] is not None for s in lower)
    data = dataset.load(log)
    assert len(data.y) >= 2 and set(data.stage.tolist()) <= {0, 1}


def test_a_streamed_tour_is_logged_whole(stage_ports: list[int], tmp_path: Path) -> None:
    """A client that streams, on a ladder that tours (``cascade.explore``): the top stage's answer is relayed as it
    comes, and its row in the traffic log, written once the stream has ended, holds that answer whole (the text the
    client read, its logprobs and usage): a tour the learner can use (``training.calibrate.tour_rows``)."""
    from training.calibrate import tour_rows

    log = tmp_path / "traffic.jsonl"
    cfg = ladder_config(stage_ports, free_port(), explore={"rate": 1.0, "untrained_rate": 1.0})
    cfg["predictor"]["log_path"] = str(log)
    proc = RouterProcess(cfg, tmp_path)
    try:
        stream = proc.client().chat.completions.create(
            model="cascade", messages=[{"role": "user", "content": "What is 2 + 2?"}], max_tokens=16, temperature=0, stream=True
        )
        read = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    finally:
        proc.stop()
    (row,) = [json.loads(line) for line in log.read_text().splitlines()]
    top = len(stage_ports) - 1
    assert row["tour"] is True and [s["stage"] for s in row["stages"]] == list(range(top + 1))
    answer = row["stages"][top]
    assert read and answer["text"] == read and answer["logprobs"] and answer["usage"]["completion_tokens"] > 0
    assert row["stages"][top - 1]["agreement"] is not None and row["stages"][top - 1]["same"] is not None
    assert len(tour_rows([row], top + 1)) == 1


def test_draft_reuse_can_be_switched_off(stage_ports: list[int], tmp_path: Path) -> None:
    proc = RouterProcess(ladder_config(stage_ports, free_port(), draft_reuse=False), tmp_path)
    try:
        raw = proc.client().chat.completions.with_raw_response.create(
            model="cascade", messages=PROMPT, **GREEDY, extra_body={"cascade_lambda": 1e6, "cascade_max_stage": 1}
        )
        assert raw.headers["x-cascade-path"].count(",") == 1
        assert raw.headers["x-cascade-draft"].endswith(":regenerate:disabled")
    finally:
        proc.stop()
