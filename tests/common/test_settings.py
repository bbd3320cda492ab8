"""Settings: YAML + environment, validated with errors that name the key; one price model, one key field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from common.settings import ConfigError, Settings, StageConfig, load_settings, read_key

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


def test_env_overrides_a_secret_and_a_whole_section(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADAPTIVE_SD_TENANCY__ADMIN_KEY", "adm-secret")
    monkeypatch.setenv("ADAPTIVE_SD_CASCADE__RISK", '{"beta": 3}')
    s = load_settings(ROOT / "configs" / "gpu.yaml")
    assert s.tenancy.admin_key is not None and s.tenancy.admin_key.get_secret_value() == "adm-secret"
    assert s.tenancy.redis_url == "redis://redis:6379/0"  # the file's tenancy section survives
    assert (s.cascade.risk.alpha, s.cascade.risk.beta) == (1.0, 3.0)


def test_config_env_var_selects_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADAPTIVE_SD_CONFIG", str(ROOT / "configs" / "gpu.yaml"))
    assert load_settings().stages[0].launch.backend == "vllm"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda c: c["stages"][0]["prices"]["compute"].update(prompt_token=-1), "stages.0.prices.compute.prompt_token"),
        (lambda c: c["cascade"].update(cost_unit="usd"), "have no prices.usd: set cascade.cost_unit to one of compute, seconds"),
        (lambda c: c["stages"][0].update(api_key="env:NOT A NAME"), "stages.0.api_key"),
        (lambda c: c["stages"][0].update(api_key="file:"), "stages.0.api_key"),
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
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path)  # a folder
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(bad)
    bad.write_text("- a list\n- of stages\n")
    with pytest.raises(ConfigError, match="must hold a mapping at the top level"):
        load_settings(bad)
    bad.write_text("")
    with pytest.raises(ConfigError, match="stages: Field required"):
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


# -- one price model ---------------------------------------------------------------------------


def _write(tmp_path: Path, cfg: dict) -> Path:  # type: ignore[type-arg]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _per_request_gpu_ladder() -> dict:  # type: ignore[type-arg]
    """gpu.yaml as a ladder priced per request in the default unit (what its `cost:` values were before per-token prices)."""
    gpu = yaml.safe_load((ROOT / "configs" / "gpu.yaml").read_text())
    del gpu["cascade"]["cost_unit"]
    for stage, cost in zip(gpu["stages"], (1.0, 2.2, 5.0, 12.0), strict=True):
        stage["prices"] = {"cost": {"request": cost}}
    return gpu  # type: ignore[no-any-return]


def test_a_ladder_priced_per_request_uses_the_default_unit(tmp_path: Path) -> None:
    ladder = load_settings(_write(tmp_path, _per_request_gpu_ladder()))
    assert ladder.cascade.cost_unit == "cost"
    assert [s.price("cost").cost(100, 50) for s in ladder.stages] == [1.0, 2.2, 5.0, 12.0]  # what `cost:` gave, whatever the length


def test_the_gpu_ladder_is_priced_per_token_in_seconds() -> None:
    """gpu.yaml: seconds per prompt and generated token from the H200 figures; a prompt token far cheaper than a generated one."""
    gpu = load_settings(ROOT / "configs" / "gpu.yaml")
    assert gpu.cascade.cost_unit == "seconds"
    out = [s.price("seconds").output_token for s in gpu.stages]
    assert out == sorted(out) and [round(o / out[-1], 2) for o in out] == [0.17, 0.28, 0.52, 1.0]
    assert all(s.price("seconds").prompt_token * 100 < s.price("seconds").output_token for s in gpu.stages)
    assert all(s.price("compute").output_token > 0 for s in gpu.stages)  # the alternative unit is there too


def test_an_old_cost_fails_saying_how_to_rewrite_it(tmp_path: Path) -> None:
    gpu = _per_request_gpu_ladder()
    old = {
        **gpu,
        "stages": [{k: v for k, v in s.items() if k != "prices"} | {"cost": s["prices"]["cost"]["request"]} for s in gpu["stages"]],
    }
    with pytest.raises(ConfigError) as err:
        load_settings(_write(tmp_path, old))
    assert "stages.1: `cost: 2.2` is now a price: write `prices: {cost: {request: 2.2}}`" in str(err.value)
    for line in str(err.value).splitlines()[1:]:  # apply each rewrite as the message spells it: the shipped gpu.yaml again
        i = int(line.split(":", 1)[0].removeprefix("  stages."))
        del old["stages"][i]["cost"]
        old["stages"][i].update(yaml.safe_load(line.split("write `", 1)[1].split("`", 1)[0]))
    assert load_settings(_write(tmp_path, old)) == load_settings(_write(tmp_path, gpu))  # (the left is read before the right is written)
    # a stage that had prices beside its cost: the cost counted only under the default unit, where it joins them
    cpu = yaml.safe_load((ROOT / "configs" / "cpu.yaml").read_text())
    cpu["stages"][0]["cost"] = 1.4
    with pytest.raises(ConfigError, match=r"stages\.0: `cost: 1\.4` is now a price: add `cost: \{request: 1\.4\}` to this stage's prices"):
        load_settings(_write(tmp_path, cpu))
    with pytest.raises(ValueError, match="is now a price"):
        StageConfig(name="s", model="m", url="http://a:1/v1", cost=1.0)  # type: ignore[call-arg]


# -- one key field -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new"),
    [({"api_key_env": "OPENAI_API_KEY"}, "`api_key_env: OPENAI_API_KEY` is now `api_key: env:OPENAI_API_KEY`"),
     ({"api_key_file": "/run/secrets/k"}, "`api_key_file: /run/secrets/k` is now `api_key: file:/run/secrets/k`")],
)  # fmt: skip
def test_the_old_key_fields_fail_naming_the_new_form(tmp_path: Path, old: dict[str, str], new: str) -> None:
    cfg = yaml.safe_load((ROOT / "configs" / "cpu.yaml").read_text())
    cfg["stages"][0].update(old)
    cfg["stages"][1]["endpoints"] = [{"url": "http://127.0.0.1:8102/v1", **old}]
    with pytest.raises(ConfigError) as err:
        load_settings(_write(tmp_path, cfg))
    assert f"stages.0: {new}" in str(err.value) and f"stages.1.endpoints.0: {new}" in str(err.value)


def test_a_key_is_read_from_the_environment_or_a_file_and_printed_only_as_where(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STAGE_KEY", " sk-env ")
    secret = tmp_path / "key"
    secret.write_text("sk-file\n")
    assert read_key("env:STAGE_KEY", "s") == "sk-env"
    assert read_key(f"file:{secret}", "s") == "sk-file"
    assert read_key("sk-inline", "s") == "sk-inline" and read_key(None, "s") is None
    secret.write_text("\n")
    with pytest.raises(ConfigError, match=r"stages\[s\]\.api_key: .* is empty"):
        read_key(f"file:{secret}", "stages[s]")
    stage = {"name": "s", "model": "m", "prices": {"cost": {"request": 1.0}}}
    settings = Settings.model_validate({"stages": [
        {**stage, "url": "http://a:1/v1", "api_key": "env: STAGE_KEY",
         "endpoints": [{"url": "http://b:1/v1", "api_key": f"file:{secret}"}]},
        {**stage, "name": "t", "url": "http://c:1/v1", "api_key": "sk-inline-secret"},
    ]})  # fmt: skip
    assert settings.stages[0].api_key == "env:STAGE_KEY"  # white space after the colon dropped
    assert [e.api_key for e in settings.stages[0].replicas()] == ["env:STAGE_KEY", f"file:{secret}"]  # the stage's is the default
    dumped = settings.model_dump()  # what check-config prints
    assert dumped["stages"][0]["api_key"] == "env:STAGE_KEY" and dumped["stages"][0]["endpoints"][0]["api_key"] == f"file:{secret}"
    assert dumped["stages"][1]["api_key"] == "**********" and "sk-inline-secret" not in settings.model_dump_json()
