"""``python -m adaptive_sd.kubernetes``: the committed generated files are what it renders, and it refuses what no overlay fits.

Like tests/test_compose.py for docker-compose.yml: change a ladder config or the vLLM command builder and this fails
until the overlay is re-rendered (``python -m adaptive_sd.kubernetes --config configs/gpu.yaml --out
deploy/kubernetes/overlays/gpu``, and the same for cpu).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from adaptive_sd import kubernetes as k8s_gen
from common.settings import ConfigError, Settings, load_settings
from tests.deploy.k8s import OVERLAYS, ROOT

LADDERS = {"cpu": ROOT / "configs" / "cpu.yaml", "gpu": ROOT / "configs" / "gpu.yaml"}


def _stages(settings: Settings, **changes: Any) -> Settings:
    data = settings.model_dump(mode="json", exclude_none=True)
    data["stages"] = [{**s, **changes.get(s["name"], {})} for s in data["stages"]]
    return Settings.model_validate(data)


@pytest.mark.parametrize("overlay", sorted(LADDERS))
def test_the_committed_files_are_what_the_generator_renders(overlay: str) -> None:
    files = k8s_gen.render_overlay(LADDERS[overlay])
    for name, text in files.items():
        committed = OVERLAYS[overlay] / name
        assert committed.exists() and committed.read_text() == text, (
            f"{committed.relative_to(ROOT)} is stale: python -m adaptive_sd.kubernetes --config "
            f"{LADDERS[overlay].relative_to(ROOT)} --out {OVERLAYS[overlay].relative_to(ROOT)}"
        )
    kustomization = yaml.safe_load((OVERLAYS[overlay] / "kustomization.yaml").read_text())
    assert (k8s_gen.STAGES_FILE in kustomization.get("resources", [])) == (k8s_gen.STAGES_FILE in files)
    assert k8s_gen.DASHBOARD_FILE in files and k8s_gen.DASHBOARD_FILE in kustomization.get("resources", [])
    assert not (OVERLAYS[overlay] / k8s_gen.STAGES_FILE).exists() or k8s_gen.STAGES_FILE in files


def test_the_command_line_writes_an_overlay_and_rereads_its_own_copy(tmp_path: Path) -> None:
    def run(config: Path) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "adaptive_sd.kubernetes", "--config", str(config), "--out", str(tmp_path)]
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False, timeout=120)

    assert run(LADDERS["gpu"]).returncode == 0
    first = {p.name: p.read_text() for p in tmp_path.iterdir()}
    assert first == k8s_gen.render_overlay(LADDERS["gpu"])
    out = run(tmp_path / k8s_gen.CONFIG_FILE)  # the operator's flow: edit the overlay's config.yaml, re-render from it
    assert out.returncode == 0, out.stderr
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == first


def test_without_out_it_prints_the_stage_objects(capsys: pytest.CaptureFixture[str]) -> None:
    assert k8s_gen.main(["--config", str(LADDERS["gpu"])]) == 0
    printed = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    assert printed == k8s_gen.stage_objects(load_settings(LADDERS["gpu"]))
    assert [o["kind"] for o in printed].count("Deployment") == 4


def test_a_stage_without_a_launch_block_is_only_called() -> None:
    """An existing endpoint (a vLLM production-stack router, a KServe InferenceService) is a stage with a url and no
    launch block: nothing is created for it, the other stages keep their objects."""
    settings = load_settings(LADDERS["gpu"])
    external = _stages(
        settings, **{"llama-3.3-70b": {"launch": None, "url": "http://vllm-router-service.llm.svc.cluster.local/v1", "dialect": "vllm"}}
    )
    names = [o["metadata"]["name"] for o in k8s_gen.stage_objects(external) if o["kind"] == "Deployment"]
    assert names == ["stage0", "stage1", "stage2"]


def test_a_ladder_of_external_stages_gets_no_stage_objects() -> None:
    settings = load_settings(LADDERS["gpu"])
    external = _stages(settings, **{s.name: {"launch": None} for s in settings.stages})
    assert k8s_gen.stage_objects(external) == []


def test_mixed_backends_and_hosts_no_service_can_have_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gpu, cpu = load_settings(LADDERS["gpu"]), load_settings(LADDERS["cpu"])
    mixed = Settings.model_validate(
        {**gpu.model_dump(mode="json", exclude_none=True),
         "stages": [cpu.stages[0].model_dump(mode="json", exclude_none=True)]
         + [s.model_dump(mode="json", exclude_none=True) for s in gpu.stages]}
    )  # fmt: skip
    with pytest.raises(ConfigError, match="one ladder fits one overlay"):
        k8s_gen.stage_objects(mixed)
    with pytest.raises(ConfigError, match="Service name"):
        k8s_gen.stage_objects(_stages(gpu, **{"llama-3.1-8b": {"url": "http://10.0.0.7:8000/v1"}}))
    with pytest.raises(ConfigError, match="share a Service name"):
        k8s_gen.stage_objects(_stages(gpu, **{"qwen2.5-14b": {"url": "http://stage0:8001/v1"}}))
    config = tmp_path / "mixed.yaml"
    config.write_text(yaml.safe_dump(mixed.model_dump(mode="json", exclude_none=True)))
    assert k8s_gen.main(["--config", str(config), "--out", str(tmp_path / "out")]) == 2
    assert "one ladder fits one overlay" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
