"""Start, watch and stop the stage servers of a ladder.

Each stage with a ``launch`` block becomes one child process in its own
process group: our llama.cpp stage server on CPU, or ``vllm serve`` pinned to
its GPU subset. ``Ladder`` waits for every ``/health`` (with a clear message
and the tail of the log when a stage dies or times out) and stops every child
on exit, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common.settings import LlamaCppLaunch, Settings, StageConfig, VLLMLaunch

DEFAULT_LOG_DIR = Path(os.environ.get("ADAPTIVE_SD_CACHE", Path.home() / ".cache" / "adaptive-sd")) / "logs"
_POLL_S = 0.5
_STOP_GRACE_S = 10.0


class LaunchError(RuntimeError):
    """A stage did not come up, or a stage process died."""


def exit_cause(returncode: int) -> str:
    """How a process ended, for people: ``killed by SIGSEGV`` or ``exited with code 1``."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with code {returncode}"


@dataclass(frozen=True)
class StageExit:
    """A stage process that has ended: which stage, how, and the end of what it wrote (stdout and stderr)."""

    stage: str
    returncode: int
    log_path: Path
    log_tail: str

    @property
    def cause(self) -> str:
        return exit_cause(self.returncode)

    def message(self, when: str = "") -> str:
        return f"stage {self.stage} {self.cause}{when}; last log lines ({self.log_path}):\n{self.log_tail}"


def llamacpp_command(stage: StageConfig, launch: LlamaCppLaunch) -> list[str]:
    return [
        sys.executable, "-m", "servers.llama_server",
        "--weights", launch.weights,
        "--model-id", stage.model,
        "--host", stage.host,
        "--port", str(stage.port),
        "--threads", str(launch.threads),
        "--n-ctx", str(launch.n_ctx),
    ]  # fmt: skip


def vllm_command(stage: StageConfig, launch: VLLMLaunch, host: str = "0.0.0.0") -> tuple[list[str], dict[str, str]]:
    """The ``vllm serve`` command line and environment for a GPU stage."""
    cmd = [
        "vllm", "serve", launch.model,
        "--served-model-name", stage.model,
        "--host", host,
        "--port", str(stage.port),
        "--tensor-parallel-size", str(launch.tensor_parallel_size),
        "--gpu-memory-utilization", str(launch.gpu_memory_utilization),
        "--max-logprobs", "20",
    ]  # fmt: skip
    if launch.max_model_len:
        cmd += ["--max-model-len", str(launch.max_model_len)]
    if launch.speculative_model:
        spec = {"model": launch.speculative_model, "num_speculative_tokens": launch.num_speculative_tokens}
        cmd += ["--speculative-config", json.dumps(spec, separators=(",", ":"))]
    if launch.tool_call_parser:  # vLLM answers tool requests only with a parser for the model's call format
        cmd += ["--enable-auto-tool-choice", "--tool-call-parser", launch.tool_call_parser]
    cmd += launch.extra_args
    env = {"CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in launch.gpus)}
    return cmd, env


def stage_command(stage: StageConfig) -> tuple[list[str], dict[str, str]]:
    launch = stage.launch
    if isinstance(launch, LlamaCppLaunch):
        return llamacpp_command(stage, launch), {}
    if isinstance(launch, VLLMLaunch):
        return vllm_command(stage, launch, host=stage.host)
    raise LaunchError(f"stage {stage.name} has no launch block; it is expected to be running at {stage.url}")


def _healthy(stage: StageConfig) -> bool:
    url = stage.url.removesuffix("/v1") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def stages_healthy(settings: Settings) -> bool:
    """True when every stage of ``settings`` already answers ``/health`` (nothing to launch)."""
    return all(_healthy(s) for s in settings.stages)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class Ladder:
    """The child processes of one ladder; a context manager that always cleans up."""

    def __init__(self, settings: Settings, stages: list[int] | None = None, log_dir: Path = DEFAULT_LOG_DIR) -> None:
        chosen = range(len(settings.stages)) if stages is None else stages
        self.stages = [settings.stages[i] for i in chosen if settings.stages[i].launch is not None]
        self.log_dir = log_dir
        self.procs: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
        self._stopping = threading.Event()  # set by stop(): the stages' exits from then on are ours, not faults

    @property
    def stopping(self) -> bool:
        """Whether ``stop()`` has begun (a stage that ends now was stopped, it did not die)."""
        return self._stopping.is_set()

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        repo_root = str(Path(__file__).resolve().parent.parent)
        for stage in self.stages:
            if _healthy(stage):
                raise LaunchError(f"port {stage.port} already serves something healthy; is another ladder running? (stage {stage.name})")
            cmd, extra_env = stage_command(stage)
            log_path = self.log_dir / f"{stage.name}.log"
            env = {**os.environ, **extra_env, "PYTHONPATH": repo_root + os.pathsep + os.environ.get("PYTHONPATH", "")}
            with open(log_path, "wb") as log:
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            self.procs[stage.name] = (proc, log_path)

    def exits(self) -> list[StageExit]:
        """The stage processes that have ended (none while all run); cheap enough to poll."""
        out = []
        for name, (proc, log_path) in self.procs.items():
            if proc.poll() is not None:
                out.append(StageExit(name, proc.returncode, log_path, _tail(log_path)))
        return out

    def status(self, name: str) -> str | None:
        """``dead (killed by SIGSEGV)`` when the stage's process has ended; None while it runs (or is not ours)."""
        entry = self.procs.get(name)
        if entry is None or entry[0].poll() is None:
            return None
        return f"dead ({exit_cause(entry[0].returncode)})"

    def wait_healthy(self, timeout_s: float, progress: bool = True) -> None:
        deadline = time.monotonic() + timeout_s
        pending = {s.name: s for s in self.stages}
        while pending:
            for gone in self.exits():
                raise LaunchError(gone.message(" before it was healthy" if gone.stage in pending else ""))
            for name, stage in list(pending.items()):
                if _healthy(stage):
                    del pending[name]
                    if progress:
                        print(f"  stage {name} ready at {stage.url}", file=sys.stderr, flush=True)
            if pending and time.monotonic() > deadline:
                names = ", ".join(pending)
                raise LaunchError(f"stages not healthy after {timeout_s:g} s: {names}; logs in {self.log_dir}")
            if pending:
                time.sleep(_POLL_S)

    def watch(self, on_exit: Callable[[StageExit], None], interval_s: float = _POLL_S) -> None:
        """Call ``on_exit`` once, from a daemon thread, when the first stage process ends before ``stop()``.

        Why a thread: while the router serves, the main thread belongs to uvicorn; a dead stage
        must still be noticed at once, not at the next request that fails on it. ``on_exit`` runs
        on that thread and may still find ``stopping`` true (a stop that began meanwhile).
        """

        def run() -> None:
            while not self._stopping.wait(interval_s):
                gone = self.exits()
                if gone and not self.stopping:
                    on_exit(gone[0])
                    return

        threading.Thread(target=run, name="stage-watch", daemon=True).start()

    def stop(self) -> None:
        self._stopping.set()
        for proc, _ in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + _STOP_GRACE_S
        for proc, _ in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()

    def __enter__(self) -> Ladder:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
