"""docker-compose.yml validates offline and starts the stages the configs describe."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from common.settings import load_settings
from servers.launcher import vllm_command

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed (the test command installs it)")
@pytest.mark.parametrize("profiles", [["cpu"], ["gpu"], ["cpu", "monitoring"], ["gpu", "monitoring"]], ids="+".join)
def test_compose_file_validates(profiles: list[str]) -> None:
    """Each ladder alone and with the monitoring profile (Prometheus + Grafana, tests/test_grafana.py)."""
    env = {**os.environ, "ADAPTIVE_SD_ADMIN_KEY": "test-admin-key"}
    flags = [arg for profile in profiles for arg in ("--profile", profile)]
    out = subprocess.run(["docker-compose", *flags, "config", "-q"], check=False, cwd=ROOT, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed (the test command installs it)")
def test_compose_refuses_to_start_routers_without_an_admin_key() -> None:
    env = {k: v for k, v in os.environ.items() if k != "ADAPTIVE_SD_ADMIN_KEY"}
    out = subprocess.run(
        ["docker-compose", "--profile", "cpu", "config", "-q"], check=False, cwd=ROOT, capture_output=True, text=True, env=env
    )
    assert out.returncode != 0 and "ADAPTIVE_SD_ADMIN_KEY" in out.stderr


def test_gpu_services_run_the_configured_vllm_commands() -> None:
    settings = load_settings(ROOT / "configs" / "gpu.yaml")
    for stage in settings.stages:
        service = COMPOSE["services"][stage.url.split("//")[1].split(":")[0]]
        cmd, env = vllm_command(stage, stage.launch, host="0.0.0.0")  # type: ignore[arg-type]
        assert ["vllm", "serve", *service["command"]] == cmd
        devices = service["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"]
        assert ",".join(devices) == env["CUDA_VISIBLE_DEVICES"]


def test_cpu_services_match_the_cpu_ladder() -> None:
    local = load_settings(ROOT / "configs" / "cpu.yaml")
    compose = load_settings(ROOT / "configs" / "cpu-compose.yaml")
    assert [s.model_dump(exclude={"url"}) for s in local.stages] == [s.model_dump(exclude={"url"}) for s in compose.stages]
    for stage in compose.stages:
        cmd = COMPOSE["services"][stage.host]["command"]
        assert cmd[cmd.index("--weights") + 1] == stage.launch.weights  # type: ignore[union-attr]
        assert cmd[cmd.index("--model-id") + 1] == stage.model
        assert cmd[cmd.index("--threads") + 1] == str(stage.launch.threads)  # type: ignore[union-attr]
        assert cmd[cmd.index("--port") + 1] == str(stage.port)


def test_the_image_copies_every_package() -> None:
    """The Dockerfile copies each package the wheel is built from; a package left out breaks the image at import time."""
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = {line.split()[1] for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("COPY ")}
    assert packages <= copied, f"not copied into the image: {sorted(packages - copied)}"


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the image's baseline is x86-64's; elsewhere the Makefile uses the compiler's")
def test_the_image_builds_llama_cpp_as_make_install_does() -> None:
    """The image's llama.cpp build flags are the Makefile's: a portable baseline, never the build machine's -march=native."""
    makefile_rule = 'print-llama-cmake-args:\n\t@echo "$(LLAMA_CMAKE_ARGS)"\n'
    make = subprocess.run(["make", "-s", "-f", "Makefile", "-f", "-", "print-llama-cmake-args"], input=makefile_rule, cwd=ROOT,
                          capture_output=True, text=True, check=True)  # fmt: skip
    ours = make.stdout.split()
    image = re.search(r'^ARG LLAMA_CMAKE_ARGS="([^"]*)"', (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert image is not None and image.group(1).split() == ours
    assert "-DGGML_NATIVE=OFF" in ours and not any("AMX" in flag and flag.endswith("=ON") for flag in ours)
    code = [line for f in ("Makefile", "Dockerfile") for line in (ROOT / f).read_text().splitlines() if not line.lstrip().startswith("#")]
    assert not [line for line in code if "march=native" in line]
