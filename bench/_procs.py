"""Shared benchmark helpers: free ports, health waits, CPU time from /proc, command lines, result output."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ok(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout_s} s")


def cpu_seconds(pid: int) -> float:
    """CPU seconds of a process, all threads: nanosecond run time from /proc/<pid>/task/*/schedstat.

    /proc/<pid>/stat counts 10 ms clock ticks, too coarse for ~1 ms requests
    (its sampling noise is +-0.1 ms per request over 1000 requests); that is
    the fallback where schedstat is missing. Threads that exited are not counted.
    """
    total = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        return total / 1e9
    except (FileNotFoundError, ProcessLookupError):
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


def finished_rows(path: Path) -> list[dict[str, Any]]:
    """A resumable benchmark's rows so far (JSONL; none when the file is missing): a line cut by a crash is left out,
    so that what it recorded runs again."""
    rows: list[dict[str, Any]] = []
    for line in path.read_text().splitlines() if path.exists() else ():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def emit(result: dict[str, object], out: str | Path) -> None:
    """Print the figures as JSON and keep them in ``out``."""
    text = json.dumps(result, indent=2)
    print(text)
    Path(out).write_text(text + "\n")


def predictor_args(description: str | None, calls: int) -> argparse.Namespace:
    """The command line of a benchmark of the trained predictor: ``--calls`` (default ``calls``), ``--model`` (the
    predictor's folder, default the shipped CPU one) and ``--data`` (the collected answers)."""
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=calls)
    ap.add_argument("--model", default=str(ROOT / "predictor" / "models" / "cpu"))
    ap.add_argument("--data", default=str(ROOT / "data" / "cpu" / "collect.jsonl"))
    return ap.parse_args()


def run_and_emit(
    parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], Coroutine[Any, Any, dict[str, Any]]], name: str
) -> None:
    """Add ``--out`` (default bench/results/<name>.json) to ``parser``, parse the command line, run ``run`` with it
    and emit its figures to ``--out``."""
    parser.add_argument("--out", default=str(RESULTS / f"{name}.json"))
    args = parser.parse_args()
    emit(asyncio.run(run(args)), args.out)
