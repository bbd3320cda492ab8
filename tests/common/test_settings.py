"""Settings: YAML + environment, validated with errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from common.settings import ConfigError, load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_configs_are_valid() -> None:
    assert len(load_settings(ROOT / "configs" / "cpu.yaml").stages) == 3
    assert len(load_settings(ROOT / "configs" / "gpu.yaml").stages) == 4


def test_env_overrides_one_leaf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADAPTIVE_SD_CASCADE__DEFAULT_LAMBDA", "3.5")
    monkeypatch.setenv("ADAPTIVE_SD_SERVER__PORT", "9123")
    s = load_settings(ROOT / "configs" / "cpu.yaml")
    assert s.cascade.default_lambda == 3.5 and s.server.port == 9123
    assert s.cascade.prior_strength == 8.0 and s.predictor.kind == "onnx"  # the file's other keys survive


def test_config_env_var_selects_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADAPTIVE_SD_CONFIG", str(ROOT / "configs" / "gpu.yaml"))
    assert load_settings().stages[0].launch.backend == "vllm"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda c: c["stages"][0].update(cost=-1), "stages.0.cost"),
        (lambda c: c["stages"][0].update(url="ftp://x"), "stages.0.url"),
        (lambda c: c["stages"][1].update(name=c["stages"][0]["name"]), "unique"),
        (lambda c: c["cascade"].update(model_name=c["stages"][0]["name"]), "collides"),
        (lambda c: c["stages"][0].update(launch={"backend": "tgi"}), "stages.0.launch"),
        (lambda c: c.update(stages=[]), "stages"),
        (lambda c: c.update(typo_key=1), "typo_key"),
    ],
)
def test_invalid_configs_name_the_key(tmp_path: Path, mutate, needle: str) -> None:  # type: ignore[no-untyped-def]
    cfg = yaml.safe_load((ROOT / "configs" / "cpu.yaml").read_text())
    mutate(cfg)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_settings(path)


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(bad)


def test_gpu_tensor_parallel_must_fit(tmp_path: Path) -> None:
    cfg = yaml.safe_load((ROOT / "configs" / "gpu.yaml").read_text())
    cfg["stages"][0]["launch"]["tensor_parallel_size"] = 2
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="tensor_parallel_size"):
        load_settings(path)


def test_scoped_scoring_defaults_to_our_cpu_server() -> None:
    """Only our CPU server knows ``prompt_logprobs_scope``; vLLM would log every request as having an unknown field."""
    cpu = load_settings(ROOT / "configs" / "cpu.yaml")
    gpu = load_settings(ROOT / "configs" / "gpu.yaml")
    assert all(s.scopes_scoring for s in cpu.stages)
    assert not any(s.scopes_scoring for s in gpu.stages)
    explicit = gpu.stages[0].model_copy(update={"scoped_scoring": True})
    assert explicit.scopes_scoring
    # the tokenizer families that allow speculative sampling
    assert [s.tokenizer for s in cpu.stages] == ["smollm2", "qwen2.5", "qwen2.5"]
