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
any answer time. The drain is held open by the test itself (a request whose body
it sends only when it has checked what happens during the drain), so nothing
there depends on how fast the stage generates.

No case waits a fixed time for something to happen: each waits for the state it
expects, up to a deadline far beyond what a loaded machine needs (derived from
the graces of the router and of ``Ladder.stop`` where they bound it), and the
order of events is checked from the events themselves.

The last case runs ``bench/soak.py --minutes 0.5`` (its stub stages are allowed
there for the same reason: a known service time to subtract): two replicas on
a real Redis, one restarted under load, nothing may be lost.
"""

from __future__ import annotations

import contextlib
import json
import os
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

from servers.launcher import _STOP_GRACE_S as LADDER_STOP_GRACE_S
from tests.conftest import ROOT, RouterProcess, free_port, ladder_config, stop_process, wait_http

# Every request in flight at SIGTERM must have reached the stub within its first one's service time: the longer it
# is, the more a loaded machine may delay the others (it was 1.5 s; 10 requests through a busy router can take more).
SERVICE_S = 3.0  # the stub's time to answer (and to the first event of a stream)
STREAM_INTERVAL_S = 0.3  # then a stream's 9 events come this far apart: 3 + 8 * 0.3 = 5.4 s in all
SLOW_STREAM_INTERVAL_S = 5.0  # the stub whose streams a short grace must cut: 8 * 5 = 40 s after their first event
ANSWER = "The answer is 4."
WAIT_S = 30.0  # the longest a case waits for a state it expects (it goes on as soon as it holds)
EXIT_MARGIN_S = 15.0  # after the grace (and Ladder.stop's): the app's shutdown and the interpreter's exit, loaded
ROUTER_GRACE_S = 20.0  # the drain case's grace: far beyond its 5.4 s of requests


def _stub(delay_s: float, stream_interval_s: float) -> Iterator[str]:
    port = free_port()
    cmd = [sys.executable, "-m", "servers.stub_server", "--port", str(port), "--model", "stub",
           "--delay-ms", str(delay_s * 1e3), "--stream-interval-ms", str(stream_interval_s * 1e3)]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", 30, proc)
        yield url
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def stub_url() -> Iterator[str]:
    yield from _stub(SERVICE_S, STREAM_INTERVAL_S)


@pytest.fixture(scope="module")
def slow_stream_stub_url() -> Iterator[str]:
    """Streams far longer than any grace plus margin here: one still running when the grace ends is certainly cut."""
    yield from _stub(SERVICE_S, SLOW_STREAM_INTERVAL_S)


def _router(stub_url: str, grace_s: float, tmp: Path) -> RouterProcess:
    cfg = {
        "server": {"host": "127.0.0.1", "port": free_port(), "shutdown_grace_s": grace_s},
        "tenancy": {"auth": "open"},
        "stages": [{"name": "stub", "model": "stub", "url": f"{stub_url}/v1", "prices": {"cost": {"request": 1.0}}}],
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
        with socket.create_connection((host, int(port)), timeout=2):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:  # no answer in time (a loaded machine): not refused, as far as we know
        return False


def _wait_until(pred: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return False


def test_sigterm_drains_requests_and_streams(stub_url: str, tmp_path: Path) -> None:
    """10 requests, half streaming, half through the cascade, all in flight at SIGTERM: all 10 complete in full."""
    router = _router(stub_url, grace_s=ROUTER_GRACE_S, tmp=tmp_path)
    try:
        seen = _stub_requests(stub_url)
        calls = [Call(router.url, "cascade" if i % 4 < 2 else "stub", stream=i % 2 == 1) for i in range(10)]
        threads = [c.start() for c in calls]
        assert _wait_until(lambda: _stub_requests(stub_url) == seen + 10, WAIT_S), "the 10 requests did not all reach the stage"
        router.proc.send_signal(signal.SIGTERM)
        sigterm = time.monotonic()
        # refused during the drain: checked below against when the requests ended, not against a window here
        assert _wait_until(lambda: _refused(router.url), ROUTER_GRACE_S), "new connections still accepted after SIGTERM"
        refused_at = time.monotonic()
        for t in threads:
            t.join(timeout=ROUTER_GRACE_S + EXIT_MARGIN_S)
        assert router.proc.wait(timeout=EXIT_MARGIN_S) == 0
    finally:
        router.stop()
    assert all(c.ended > sigterm for c in calls), "a request finished before SIGTERM: the case did not test a drain"
    assert refused_at < max(c.ended for c in calls), "connections were refused only once the drain was over"
    for c in calls:
        assert (c.status, c.error, c.content) == (200, None, ANSWER), c
        if c.stream:
            assert c.events[-1] == "[DONE]" and '"finish_reason":"stop"' in c.events[-2] + c.events[-3], c.events


def test_grace_ends_cuts_what_still_runs(slow_stream_stub_url: str, tmp_path: Path) -> None:
    """A grace shorter than the requests: the process exits after the grace, long before the stream would have ended
    (40 s), the stream is cut, the request fails."""
    grace_s = 0.5
    stub_url = slow_stream_stub_url
    router = _router(stub_url, grace_s=grace_s, tmp=tmp_path)
    try:
        stream = Call(router.url, "stub", stream=True)
        stream_thread = stream.start()
        assert stream.first_event.wait(SERVICE_S + WAIT_S) and stream.events, stream
        seen = _stub_requests(stub_url)
        plain = Call(router.url, "cascade", stream=False)
        plain_thread = plain.start()
        assert _wait_until(lambda: _stub_requests(stub_url) == seen + 1, WAIT_S), "the second request did not reach the stage"
        router.proc.send_signal(signal.SIGTERM)
        sigterm = time.monotonic()
        router.proc.wait(timeout=grace_s + EXIT_MARGIN_S + WAIT_S)
        exited_after = time.monotonic() - sigterm
        stream_thread.join(timeout=WAIT_S)
        plain_thread.join(timeout=WAIT_S)
    finally:
        router.stop()
    # no sooner than the grace (requests were in flight), and not after the 40 s stream: the grace cut it
    assert grace_s * 0.9 <= exited_after <= grace_s + EXIT_MARGIN_S < 8 * SLOW_STREAM_INTERVAL_S, exited_after
    # the stream got its first events, then the connection closed without the rest
    assert stream.status == 200 and stream.error == "RemoteProtocolError", stream
    assert "[DONE]" not in stream.events and 0 < len(stream.events) < 9, stream.events
    assert stream.content != ANSWER
    # the request without an answer yet: uvicorn answers it with a 500 as it cancels it
    assert (plain.status, plain.content) == (500, "Internal Server Error") or plain.error is not None, plain
    assert stream.ended - sigterm <= grace_s + EXIT_MARGIN_S


UP_GRACE_S = 30.0  # the router's grace in the `up` case (the default); the case's own waits end well inside it
# `python -m adaptive_sd.cli`, plus a dump of every thread's stack on SIGUSR1: should `up` ever outlive its deadline
# again, the failure says where it was stuck (it changes nothing else; a signal nothing else uses)
_UP_WITH_STACK_DUMPS = (
    "import faulthandler, runpy, signal; faulthandler.register(signal.SIGUSR1, all_threads=True); "
    "runpy.run_module('adaptive_sd.cli', run_name='__main__', alter_sys=True)"
)


class _HeldRequest:
    """A request the client keeps in flight at the router for as long as the test says.

    Its headers go with ``Expect: 100-continue``, its body only on ``release()``. The router's ``100 Continue``
    says that the app has the request and waits for its body: from then on it is in flight, and a drain cannot
    end before it is released and answered. That is the test's hold on the drain, in place of a time window.
    """

    def __init__(self, port: int, body: dict[str, object]) -> None:
        self.body = json.dumps(body).encode()
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
        head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(self.body)}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")  # fmt: skip
        self.sock.sendall(head.encode())
        interim = b""
        while not interim.endswith(b"\r\n\r\n") and (byte := self.sock.recv(1)):
            interim += byte
        assert interim.startswith(b"HTTP/1.1 100 "), interim

    def release(self) -> None:
        self.sock.sendall(self.body)

    def answer(self) -> tuple[int, bytes]:
        """The status and body of the answer (the router closes the connection after it)."""
        data = b""
        while chunk := self.sock.recv(65536):
            data += chunk
        self.close()
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), body

    def close(self) -> None:
        self.sock.close()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=WAIT_S).status_code == 200
    except httpx.HTTPError:
        return False


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(stat.parent.name))
    return out


def _kill_stage(pid: int) -> None:
    """SIGKILL the process group of a stage server that is still there (its own session: `up` dying leaves it)."""
    with contextlib.suppress(OSError):
        if b"servers.llama_server" in Path(f"/proc/{pid}/cmdline").read_bytes():
            os.killpg(pid, signal.SIGKILL)


def _stacks(proc: subprocess.Popen[bytes], log_path: Path) -> str:
    """Every thread's Python stack in ``proc`` (``_UP_WITH_STACK_DUMPS``), read back from its log."""
    size = log_path.stat().st_size
    proc.send_signal(signal.SIGUSR1)
    _wait_until(lambda: log_path.stat().st_size > size, 10)
    return log_path.read_bytes()[size:].decode(errors="replace")


@pytest.mark.live
def test_up_stops_its_stage_after_the_router_drained(tmp_path: Path) -> None:
    """``adaptive-sd up`` with a real llama.cpp stage: on SIGTERM a stream in flight still gets every token from
    the stage (it stays up through the router's drain), new connections to the router are refused, a request in
    flight is answered, and the stage is stopped once the router has drained.

    The test holds the drain open (``_HeldRequest``) until it has seen, during the drain, the router refuse
    connections and the stage still up; so those checks cannot race the end of the stream, however fast or slow
    the stage generates. Then ``up`` must exit within what it promises after SIGTERM: the router's grace, then
    ``Ladder.stop``'s, plus a margin for a loaded machine."""
    stage_port, router_port = free_port(), free_port()
    cfg = ladder_config([stage_port], router_port)
    cfg["server"]["shutdown_grace_s"] = UP_GRACE_S  # type: ignore[index]
    path = tmp_path / "up.yaml"
    path.write_text(yaml.safe_dump(cfg))
    log_path = tmp_path / "up.log"
    log = open(log_path, "wb")  # noqa: SIM115 (closed below)
    up = subprocess.Popen([sys.executable, "-c", _UP_WITH_STACK_DUMPS, "--config", str(path), "up"], cwd=ROOT, stdout=log,
                          stderr=subprocess.STDOUT)  # fmt: skip
    router_url, stage_url = f"http://127.0.0.1:{router_port}", f"http://127.0.0.1:{stage_port}"
    stage_pids: list[int] = []
    held: _HeldRequest | None = None
    try:
        wait_http(f"{router_url}/health", 300, up)
        stage_pids = _children(up.pid)  # to clean up after an `up` that fails to
        stage = cfg["stages"][0]["name"]  # type: ignore[index]
        messages = [{"role": "user", "content": "Count from 1 to 500, separated by commas."}]
        body = {"model": stage, "stream": True, "max_tokens": 400, "temperature": 0, "messages": messages}
        events: list[str] = []
        at_sigterm = 0
        sigterm = 0.0
        stage_up_during_drain = False
        with httpx.stream("POST", f"{router_url}/v1/chat/completions", json=body, timeout=120) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                events.append(line.removeprefix("data: "))
                if len(events) == 10:
                    held = _HeldRequest(router_port, {"model": stage, "max_tokens": 1, "messages": messages})
                    up.send_signal(signal.SIGTERM)
                    sigterm = time.monotonic()
                    at_sigterm = len(events)
                    assert _wait_until(lambda: _refused(router_url), WAIT_S), "router still accepts connections after SIGTERM"
                    stage_up_during_drain = _healthy(stage_url)
                    held.release()  # the drain may end once this and the stream are answered
        assert held is not None
        held_status, held_body = held.answer()
        exit_deadline = sigterm + UP_GRACE_S + LADDER_STOP_GRACE_S + EXIT_MARGIN_S
        with contextlib.suppress(subprocess.TimeoutExpired):
            up.wait(timeout=max(0.0, exit_deadline - time.monotonic()))
        if up.poll() is None:
            pytest.fail(f"`up` still running {time.monotonic() - sigterm:.0f} s after SIGTERM; its threads:\n{_stacks(up, log_path)}")
        assert up.returncode == 0, log_path.read_text(errors="replace")[-3000:]
        stage_outlived_up = not _refused(stage_url)
    finally:
        if held is not None:
            held.close()
        if up.poll() is None:
            stop_process(up)
        for pid in stage_pids:
            _kill_stage(pid)
        log.close()
    assert stage_up_during_drain
    assert events[-1] == "[DONE]" and len(events) - at_sigterm > 10, (at_sigterm, len(events))
    assert held_status == 200 and b'"choices"' in held_body, (held_status, held_body[:500])
    assert not stage_outlived_up, "the stage server outlived `up`"


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
