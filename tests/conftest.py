"""Shared fixtures: real llama.cpp stage servers, a real router process, the OpenAI client.

The two smallest stages of the CPU ladder run once per test session on free
ports; the router runs as its own process (``adaptive-sd serve``) in front of
them, exactly as a user starts it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from openai import OpenAI

from router.config import Settings, load_settings
from servers.launcher import Ladder

ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT_S = 600


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen[bytes], grace_s: float = 10) -> None:
    """SIGTERM, then SIGKILL after ``grace_s`` (a hung stub may never drain its connections)."""
    proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} not healthy after {timeout_s} s")


def ladder_config(stage_ports: list[int], router_port: int, **cascade: object) -> dict[str, object]:
    """The first stages of configs/cpu.yaml, moved to the given ports."""
    base = yaml.safe_load((ROOT / "configs" / "cpu.yaml").read_text())
    stages = base["stages"][: len(stage_ports)]
    for stage, port in zip(stages, stage_ports):
        stage["url"] = f"http://127.0.0.1:{port}/v1"
    base["stages"] = stages
    base["server"] = {"host": "127.0.0.1", "port": router_port}
    # always verify drafts: the acceptance gate is tested on its own (tests/router/test_draft.py)
    base["cascade"] = {**base["cascade"], "skip_by_prior": False, "draft_min_accepted": 0, **cascade}
    base["predictor"]["baseline"] = base["predictor"]["baseline"][: len(stage_ports)]
    return base


class RouterProcess:
    """``adaptive-sd serve`` on a free port with a given config dict."""

    def __init__(self, config: dict[str, object], tmp: Path) -> None:
        self.config = config
        self.path = tmp / f"router-{os.getpid()}-{id(self)}.yaml"
        self.path.write_text(yaml.safe_dump(config))
        port = config["server"]["port"]  # type: ignore[index]
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(tmp / f"router-{port}.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "router.cli", "--config", str(self.path), "serve"],
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_http(f"{self.url}/health", 60, self.proc)

    @property
    def settings(self) -> Settings:
        return load_settings(self.path)

    def client(self, **kw: object) -> OpenAI:
        return OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0, timeout=300, **kw)

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()


@pytest.fixture(scope="session")
def stage_ports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    """Stages 0 and 1 of the CPU ladder (SmolLM2-135M, Qwen2.5-Coder-0.5B), real llama.cpp."""
    ports = [free_port(), free_port()]
    cfg = ladder_config(ports, free_port())
    settings = Settings.model_validate(cfg)
    ladder = Ladder(settings, log_dir=tmp_path_factory.mktemp("stage-logs"))
    with ladder:
        ladder.wait_healthy(STARTUP_TIMEOUT_S, progress=False)
        yield ports


@pytest.fixture(scope="session")
def router(stage_ports: list[int], tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    proc = RouterProcess(ladder_config(stage_ports, free_port()), tmp_path_factory.mktemp("router"))
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def client(router: RouterProcess) -> OpenAI:
    return router.client()
