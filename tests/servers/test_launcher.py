"""Stage command lines from config (CPU and GPU) and the launcher's failure messages."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from common.settings import Settings, load_settings
from servers.launcher import Ladder, LaunchError, exit_cause, stage_command, vllm_command

ROOT = Path(__file__).resolve().parents[2]


def test_vllm_command_for_every_gpu_stage() -> None:
    settings = load_settings(ROOT / "configs" / "gpu.yaml")
    assert len(settings.stages) == 4
    for stage in settings.stages:
        cmd, env = vllm_command(stage, stage.launch)  # type: ignore[arg-type]
        assert cmd[:3] == ["vllm", "serve", stage.launch.model]  # type: ignore[union-attr]
        assert cmd[cmd.index("--tensor-parallel-size") + 1] == str(stage.launch.tensor_parallel_size)  # type: ignore[union-attr]
        assert env["CUDA_VISIBLE_DEVICES"] == ",".join(map(str, stage.launch.gpus))  # type: ignore[union-attr]
        assert cmd[cmd.index("--served-model-name") + 1] == stage.model
    spec_stage = settings.stages[2]
    cmd, _ = vllm_command(spec_stage, spec_stage.launch)  # type: ignore[arg-type]
    assert json.loads(cmd[cmd.index("--speculative-config") + 1])["model"] == "Qwen/Qwen2.5-0.5B-Instruct"
    # GPU subsets must not overlap
    used = [g for s in settings.stages for g in s.launch.gpus]  # type: ignore[union-attr]
    assert len(used) == len(set(used))


def test_cpu_stage_command() -> None:
    stage = load_settings(ROOT / "configs" / "cpu.yaml").stages[0]
    cmd, env = stage_command(stage)
    assert cmd[:3] == [sys.executable, "-m", "servers.llama_server"] and env == {}
    assert cmd[cmd.index("--port") + 1] == str(stage.port)


def _unlaunchable() -> Settings:
    """One stage whose server exits at once: its weights key names nothing the catalog has."""
    stage = {"name": "bad", "model": "m", "url": "http://127.0.0.1:9/v1", "prices": {"cost": {"request": 1}},
             "launch": {"backend": "llamacpp", "weights": "no-such-weights"}}  # fmt: skip
    return Settings.model_validate({"stages": [stage]})


def test_dead_stage_reports_its_log(tmp_path: Path) -> None:
    settings = _unlaunchable()
    with Ladder(settings, log_dir=tmp_path) as ladder, pytest.raises(LaunchError, match="unknown weights"):
        ladder.wait_healthy(60, progress=False)


def test_dead_stage_says_how_it_ended(tmp_path: Path) -> None:
    """The message names the stage and its exit code; ``status`` says dead once the process has ended."""
    settings = _unlaunchable()
    with Ladder(settings, log_dir=tmp_path) as ladder:
        with pytest.raises(LaunchError, match=r"stage bad exited with code 1 before it was healthy; last log lines"):
            ladder.wait_healthy(60, progress=False)
        assert ladder.status("bad") == "dead (exited with code 1)"
        assert ladder.status("no-such-stage") is None
        (gone,) = ladder.exits()
        assert gone.stage == "bad" and "unknown weights" in gone.log_tail


@pytest.mark.parametrize(
    ("returncode", "cause"),
    [
        (-11, "killed by SIGSEGV"),
        (-4, "killed by SIGILL"),
        (-9, "killed by SIGKILL"),
        (1, "exited with code 1"),
        (-99, "killed by signal 99"),
    ],
)
def test_exit_cause(returncode: int, cause: str) -> None:
    assert exit_cause(returncode) == cause
