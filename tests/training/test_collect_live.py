"""Collection on real llama.cpp stages: resumable, and the features training sees are the ones serving computes."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np

from common.settings import Settings
from predictor.serving import rows
from predictor.serving.features import AnswerStats, PromptStats, answer_features
from tests.conftest import free_port, ladder_config
from training import collect, dataset
from training.tasks import generated


def test_collect_is_resumable_and_labels_rows(stage_ports: list[int], tmp_path: Path) -> None:
    settings = Settings.model_validate(ladder_config(stage_ports, free_port()))
    tasks = generated.generate(1, families=("arithmetic", "strings", "lists"))
    out = tmp_path / "c.jsonl"
    assert collect.run(settings, tasks[:2], out, progress=False) == 2
    assert collect.run(settings, tasks[:2], out, progress=False) == 0, "done tasks are skipped"
    out.write_text(out.read_text() + '{"task": "cut-off')  # an interrupted write
    assert collect.run(settings, tasks, out, progress=False) == 1
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.endswith("}")]
    assert [r["task"] for r in rows] == [t.id for t in tasks]
    for r in rows:
        assert [s["stage"] for s in r["stages"]] == [0, 1]
        assert all(isinstance(s["passed"], bool) and s["logprobs"] and s["seconds"] > 0 for s in r["stages"])
    data = dataset.load(out)
    assert data.x.shape == (6, len(data.x[0])) and set(data.stage.tolist()) == {0, 1}


def test_training_features_equal_serving_features(stage_ports: list[int]) -> None:
    """The same real answer gives the same vector in the router and in the training pipeline."""
    messages = [{"role": "user", "content": "Write a Python function that returns the square of x."}]
    body = {
        "model": "smollm2-135m",
        "messages": messages,
        "max_tokens": 40,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": rows.TOP_LOGPROBS,
    }
    data = httpx.post(f"http://127.0.0.1:{stage_ports[0]}/v1/chat/completions", json=body, timeout=120).json()
    choice = data["choices"][0]
    prompt = PromptStats.from_texts([m["content"] for m in messages])
    served = answer_features(prompt, AnswerStats.from_choice(choice, rows.TOP_LOGPROBS), 0)  # router.cascade's call
    row = json.loads(
        json.dumps({"stage": 0, "logprobs": rows.compact_logprobs(choice), "finish_reason": choice["finish_reason"], "draft": None})
    )
    trained = dataset.stage_features(PromptStats.from_texts(json.loads(json.dumps([m["content"] for m in messages]))), row)
    assert np.array_equal(served, trained)
