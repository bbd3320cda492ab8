"""A stage process that dies under ``adaptive-sd up``: one clear message and a non-zero exit, not a dead ladder that says ok.

The stage is a real llama.cpp stage server (SmolLM2-135M, the one the CPU ladder
starts first); its death is a real SIGSEGV sent to it, the signal a build whose
kernels the CPU cannot run dies by (a VM that advertises AMX and faults on it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import yaml

from tests.conftest import ROOT, free_port, ladder_config, stop_process, wait_http


def _pid_serving(port: int) -> int:
    """The pid of the stage server process started with ``--port port`` (the launcher starts it in its own session)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"servers.llama_server" in argv and b"--port" in argv and argv[argv.index(b"--port") + 1] == str(port).encode():
            return int(entry.name)
    raise AssertionError(f"no stage server process on port {port}")


def test_up_names_the_dead_stage_its_signal_and_log_and_exits_nonzero(tmp_path: Path) -> None:
    stage_port, router_port = free_port(), free_port()
    cfg = ladder_config([stage_port], router_port)
    path = tmp_path / "up.yaml"
    path.write_text(yaml.safe_dump(cfg))
    stage = cfg["stages"][0]["name"]  # type: ignore[index]
    up = subprocess.Popen([sys.executable, "-m", "adaptive_sd.cli", "--config", str(path), "up"], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    router_url = f"http://127.0.0.1:{router_port}"
    try:
        wait_http(f"{router_url}/health", 300, up)
        assert httpx.get(f"{router_url}/health", params={"stages": "true"}, timeout=30).json()["stages"] == {stage: "ok"}
        os.kill(_pid_serving(stage_port), signal.SIGSEGV)
        code = up.wait(timeout=120)
        out = up.stdout.read().decode() if up.stdout else ""
    finally:
        stop_process(up)
    assert code == 1, out
    assert f"stage {stage} killed by SIGSEGV" in out, out
    # the last lines the stage wrote come with it: here its start-up check
    assert "last log lines" in out and "warm-up:" in out.split(f"stage {stage} killed by SIGSEGV", 1)[1], out
