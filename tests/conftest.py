"""Shared fixtures: real llama.cpp stage servers, a real router process, the OpenAI client.

The two smallest stages of the CPU ladder run once per test session on free
ports; the router runs as its own process (``adaptive-sd serve``) in front of
them, exactly as a user starts it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol, TypeVar

import httpx
import pytest
import yaml
from openai import OpenAI

from common.settings import Settings, load_settings
from servers.launcher import Ladder, LaunchError

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


class OwnProcess:
    """A server process of the tests' own (``proc`` while it runs): ``stop`` shuts it down (``stop_process``, after
    ``grace_s``), ``kill`` drops it at once (SIGKILL: no graceful shutdown, connections in flight just drop, as when
    its host crashes). Both do nothing when it is not running."""

    proc: subprocess.Popen[bytes] | None = None
    grace_s: float = 10

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, self.grace_s)
            self.proc = None

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


class _Stoppable(Protocol):
    def stop(self) -> None: ...


StoppableT = TypeVar("StoppableT", bound=_Stoppable)


def until_stopped(server: StoppableT) -> Iterator[StoppableT]:
    """The body of a fixture that starts a server (``yield from until_stopped(Server(...))``): the tests get it, then it is stopped."""
    yield server
    server.stop()


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
    for stage, port in zip(stages, stage_ports, strict=False):
        stage["url"] = f"http://127.0.0.1:{port}/v1"
    base["stages"] = stages
    base["server"] = {"host": "127.0.0.1", "port": router_port}
    # always verify drafts: the acceptance gate is tested on its own (tests/router/test_draft.py)
    base["cascade"] = {**base["cascade"], "skip_by_prior": False, "draft_min_accepted": 0, **cascade}
    # Mechanics tests pin the transparent baseline: the learned model was trained on the full
    # three-stage ladder, and what it predicts for a two-stage subset is not what these tests check.
    base["predictor"] = {"kind": "baseline", "baseline": base["predictor"]["baseline"][: len(stage_ports)]}
    return base


class RouterProcess:
    """``adaptive-sd serve`` on a free port with a given config dict."""

    def __init__(self, config: dict[str, object], tmp: Path) -> None:
        self.config = config
        self.path = tmp / f"router-{os.getpid()}-{id(self)}.yaml"
        self.path.write_text(yaml.safe_dump(config))
        port = config["server"]["port"]  # type: ignore[index]
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(tmp / f"router-{port}.log", "wb")  # noqa: SIM115 (lives as long as the router)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "adaptive_sd.cli", "--config", str(self.path), "serve"],
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
        try:
            ladder.wait_healthy(STARTUP_TIMEOUT_S, progress=False)
        except LaunchError as exc:  # one message for the session, not one error per live test
            pytest.exit(f"the live stage servers did not start: {exc}", returncode=1)
        _LIVE_LADDERS.append(ladder)
        try:
            yield ports
        finally:
            _LIVE_LADDERS.remove(ladder)


# The session's stage servers, watched around every test: a stage that dies stops the session with its name, how it
# ended and its last log lines, instead of every later live test failing with "Server disconnected".
_LIVE_LADDERS: list[Ladder] = []


def _stop_if_a_stage_died() -> None:
    for ladder in _LIVE_LADDERS:
        for gone in ladder.exits():
            pytest.exit(f"a stage server of this test session died: {gone.message()}", returncode=1)


@pytest.fixture(autouse=True)
def _stages_alive() -> Iterator[None]:
    _stop_if_a_stage_died()
    yield
    _stop_if_a_stage_died()


@pytest.fixture(scope="session")
def router(stage_ports: list[int], tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    yield from until_stopped(RouterProcess(ladder_config(stage_ports, free_port()), tmp_path_factory.mktemp("router")))


@pytest.fixture(scope="session")
def client(router: RouterProcess) -> OpenAI:
    return router.client()


class RedisServer(OwnProcess):
    """A real ``redis-server`` on a free port, with an append-only file so a restart keeps its data."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed; `make test` installs Debian's redis-server")
        self.binary = binary
        self.dir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        cmd = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir), "--save", "",
               "--appendonly", "yes", "--appendfsync", "always", "--protected-mode", "no"]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def flush(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
            s.sendall(b"FLUSHALL\r\n")
            s.recv(16)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    yield from until_stopped(RedisServer(tmp_path_factory.mktemp("redis")))


@pytest.fixture
def anyio_backend() -> str:
    """Async tests (``pytest.mark.anyio``) run on asyncio, like the router."""
    return "asyncio"


# Markers by what a test needs, read from its fixtures, so no test can forget its mark:
# `pytest -m "not live and not redis"` is the in-process suite (seconds, no servers).
_MARKS_BY_FIXTURE = {"stage_ports": "live", "redis_server": "redis"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        for fixture, mark in _MARKS_BY_FIXTURE.items():
            if fixture in names:
                item.add_marker(getattr(pytest.mark, mark))
        if "integration_vllm" in item.nodeid:
            item.add_marker(pytest.mark.vllm)
