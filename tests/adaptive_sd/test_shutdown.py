"""Graceful shutdown of real router processes: SIGTERM while requests and streams are in flight.

``adaptive-sd serve`` is started as a user starts it, with a config whose
``server.shutdown_grace_s`` is what is tested. The stage behind it is the stub
stage (``servers/stub_server.py``) with a service time and spaced stream
events, because these cases need answers that take a known time: requests
must certainly still be in flight when SIGTERM arrives, and certainly still
running when a short grace ends. A real llama.cpp stage's time per answer
moves with the machine's load (2x between runs on the 2-core CI machines), so
the same cases against it would be slow or flaky.

``adaptive-sd up`` is tested against a real llama.cpp stage (SmolLM2-135M, the
one the CPU ladder starts first): there the point is the order of shutdown (the
stage must serve the router's drain and stop only after it), which holds for
any answer time.

The last case runs ``bench/soak.py --minutes 0.5`` (its stub stages are allowed
there for the same reason: a known service time to subtract): two replicas on
a real Redis, one restarted under load, nothing may be lost.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import ROOT, RouterProcess, free_port, ladder_config, stop_process, wait_http

SERVICE_S = 1.5  # the stub's time to answer (and to the first event of a stream)
STREAM_INTERVAL_S = 0.3  # then a stream's 9 events come this far apart: 1.5 + 8 * 0.3 = 3.9 s in all
ANSWER = "The answer is 4."
MARGIN_S = 3.0  # after the grace: the app's shutdown and the interpreter's exit, on a loaded machine


@pytest.fixture(scope="module")
def stub_url() -> Iterator[str]:
    port = free_port()
    cmd = [sys.executable, "-m", "servers.stub_server", "--port", str(port), "--model", "stub",
           "--delay-ms", str(SERVICE_S * 1e3), "--stream-interval-ms", str(STREAM_INTERVAL_S * 1e3)]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", 30, proc)
        yield url
    finally:
        stop_process(proc)


def _router(stub_url: str, grace_s: float, tmp: Path) -> RouterProcess:
    cfg = {
        "server": {"host": "127.0.0.1", "port": free_port(), "shutdown_grace_s": grace_s},
        "tenancy": {"auth": "open"},
        "stages": [{"name": "stub", "model": "stub", "url": f"{stub_url}/v1", "cost": 1.0}],
    }
    return RouterProcess(cfg, tmp)


def _stub_requests(stub_url: str) -> int:
    return int(httpx.get(f"{stub_url}/stub/stats", timeout=5).json()["requests"])


@dataclass
class Call:
    """One client request in its own thread: what came back, and when it ended."""

    url: str
    model: str
    stream: bool
    status: int | None = None
    content: str = ""
    events: list[str] = field(default_factory=list)
    error: str | None = None
    ended: float = 0.0
    first_event: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        body = {"model": self.model, "stream": self.stream, "max_tokens": 8, "messages": [{"role": "user", "content": "What is 2+2?"}]}
        try:
            with httpx.stream("POST", f"{self.url}/v1/chat/completions", json=body, timeout=30) as r:
                self.status = r.status_code
                if not self.stream:
                    r.read()
                    self.content = r.json()["choices"][0]["message"]["content"] if r.status_code == 200 else r.text
                    return
                for line in r.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    data = line.removeprefix("data: ")
                    self.events.append(data)
                    self.first_event.set()
                    if data != "[DONE]":
                        for choice in json.loads(data)["choices"]:
                            self.content += choice["delta"].get("content") or ""
        except httpx.HTTPError as exc:
            self.error = type(exc).__name__
        finally:
            self.ended = time.monotonic()
            self.first_event.set()

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, daemon=True)
        thread.start()
        return thread


def _refused(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return False
    except ConnectionRefusedError:
        return True


def _wait_until(pred: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return False


def test_sigterm_drains_requests_and_streams(stub_url: str, tmp_path: Path) -> None:
    """10 requests, half streaming, half through the cascade, all in flight at SIGTERM: all 10 complete in full."""
    router = _router(stub_url, grace_s=20, tmp=tmp_path)
    try:
        seen = _stub_requests(stub_url)
        calls = [Call(router.url, "cascade" if i % 4 < 2 else "stub", stream=i % 2 == 1) for i in range(10)]
        threads = [c.start() for c in calls]
        assert _wait_until(lambda: _stub_requests(stub_url) == seen + 10, SERVICE_S), "the 10 requests did not all reach the stage"
        router.proc.send_signal(signal.SIGTERM)
        sigterm = time.monotonic()
        assert _wait_until(lambda: _refused(router.url), 1.0), "new connections still accepted after SIGTERM"
        refused_at = time.monotonic()
        for t in threads:
            t.join(timeout=30)
        assert router.proc.wait(timeout=10) == 0
    finally:
        router.stop()
    assert all(c.ended > sigterm for c in calls), "a request finished before SIGTERM: the case did not test a drain"
    assert refused_at < max(c.ended for c in calls), "connections were refused only once the drain was over"
    for c in calls:
        assert (c.status, c.error, c.content) == (200, None, ANSWER), c
        if c.stream:
            assert c.events[-1] == "[DONE]" and '"finish_reason":"stop"' in c.events[-2] + c.events[-3], c.events


def test_grace_ends_cuts_what_still_runs(stub_url: str, tmp_path: Path) -> None:
    """A grace shorter than the requests: the process exits within grace + margin, the stream is cut, the request fails."""
    grace_s = 0.5
    router = _router(stub_url, grace_s=grace_s, tmp=tmp_path)
    try:
        stream = Call(router.url, "stub", stream=True)
        stream_thread = stream.start()
        assert stream.first_event.wait(SERVICE_S + 10) and stream.events, stream
        seen = _stub_requests(stub_url)
        plain = Call(router.url, "cascade", stream=False)
        plain_thread = plain.start()
        assert _wait_until(lambda: _stub_requests(stub_url) == seen + 1, SERVICE_S), "the second request did not reach the stage"
        router.proc.send_signal(signal.SIGTERM)
        sigterm = time.monotonic()
        router.proc.wait(timeout=grace_s + MARGIN_S + 10)
        exited_after = time.monotonic() - sigterm
        stream_thread.join(timeout=10)
        plain_thread.join(timeout=10)
    finally:
        router.stop()
    assert grace_s * 0.9 <= exited_after <= grace_s + MARGIN_S, exited_after
    # the stream got its first events, then the connection closed without the rest
    assert stream.status == 200 and stream.error == "RemoteProtocolError", stream
    assert "[DONE]" not in stream.events and 0 < len(stream.events) < 9, stream.events
    assert stream.content != ANSWER
    # the request without an answer yet: uvicorn answers it with a 500 as it cancels it
    assert (plain.status, plain.content) == (500, "Internal Server Error") or plain.error is not None, plain
    assert stream.ended - sigterm <= grace_s + MARGIN_S


@pytest.mark.live
def test_up_stops_its_stage_after_the_router_drained(tmp_path: Path) -> None:
    """``adaptive-sd up`` with a real llama.cpp stage: on SIGTERM a stream in flight still gets every token from
    the stage (it stays up through the router's drain), new connections to the router are refused, and the stage
    is stopped once the router has drained."""
    stage_port, router_port = free_port(), free_port()
    cfg = ladder_config([stage_port], router_port)
    cfg["server"]["shutdown_grace_s"] = 60  # type: ignore[index]
    path = tmp_path / "up.yaml"
    path.write_text(yaml.safe_dump(cfg))
    log = open(tmp_path / "up.log", "wb")  # noqa: SIM115 (closed below)
    up = subprocess.Popen([sys.executable, "-m", "adaptive_sd.cli", "--config", str(path), "up"], cwd=ROOT, stdout=log,
                          stderr=subprocess.STDOUT)  # fmt: skip
    router_url, stage_url = f"http://127.0.0.1:{router_port}", f"http://127.0.0.1:{stage_port}"
    try:
        wait_http(f"{router_url}/health", 300, up)
        stage = cfg["stages"][0]["name"]  # type: ignore[index]
        body = {"model": stage, "stream": True, "max_tokens": 400, "temperature": 0,
                "messages": [{"role": "user", "content": "Count from 1 to 500, separated by commas."}]}  # fmt: skip
        events: list[str] = []
        at_sigterm = 0
        stage_up_during_drain = False
        with httpx.stream("POST", f"{router_url}/v1/chat/completions", json=body, timeout=120) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                events.append(line.removeprefix("data: "))
                if len(events) == 10:
                    up.send_signal(signal.SIGTERM)
                    at_sigterm = len(events)
                    assert _wait_until(lambda: _refused(router_url), 1.0), "router still accepts connections after SIGTERM"
                    stage_up_during_drain = httpx.get(f"{stage_url}/health", timeout=5).status_code == 200
        assert up.wait(timeout=30) == 0
    finally:
        stop_process(up)
        log.close()
    assert stage_up_during_drain
    assert events[-1] == "[DONE]" and len(events) - at_sigterm > 10, (at_sigterm, len(events))
    assert _refused(stage_url), "the stage server outlived `up`"


@pytest.mark.redis
def test_soak_smoke_replica_restart_loses_nothing(tmp_path: Path) -> None:
    """``bench/soak.py --minutes 0.5``: two replicas on a real Redis, mixed traffic through the openai SDK, one
    replica restarted (SIGTERM, drain, start) midway: no request lost, no response outside the intended 400/429."""
    out = tmp_path / "soak.json"
    cmd = [sys.executable, "bench/soak.py", "--minutes", "0.5", "--out", str(out)]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["verdict"]["lost_requests"] == 0, report["requests"]["lost"]
    assert report["verdict"]["error_attempts"] == 0, report["attempts"]
    outcomes = report["requests"]["router_outcomes"]
    assert outcomes["ok"] > 0 and outcomes.get("intended_400", 0) > 0, outcomes
    restart = report["restart"]
    # in flight on b at SIGTERM: answered there (drained), or (between the SDK's retries) failed over or a 429
    assert restart["exit_code"] == 0 and "lost" not in restart["in_flight_outcomes"], restart
