"""Two real CPU stage servers as replicas of one stage, behind the router as its own process.

Stage 0 is a pool of two copies of the SmolLM2-135M llama.cpp server, started
here on free ports (the session's ``stage_ports`` fixture provides stage 1,
Qwen2.5-Coder-0.5B). The router runs exactly as a user starts it. Against them:

* concurrent requests are spread over both replicas;
* one replica killed (SIGKILL) in the middle of traffic: no request fails (those
  in flight on it are retried on the other, before any byte reached the client)
  and it is ejected;
* restarted, it rejoins by itself and takes traffic again;
* both killed: the cascade skips the stage (``x-cascade-skipped: ...:unavailable``)
  and a request only that stage could answer is a 503 in under 1 s.

The traffic during the kill is non-streaming: a stream that has already sent
tokens from the killed replica cannot be continued by another one (its failure
ends it with an error event, by design); a stream that had sent nothing is retried,
and the test checks that streams opened while a replica is dead succeed.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from common.settings import LlamaCppLaunch, StageConfig
from servers.launcher import llamacpp_command
from tests.conftest import ROOT, OwnProcess, RouterProcess, free_port, ladder_config, wait_http

SMOLLM2 = "smollm2-135m"
QWEN = "qwen2.5-coder-0.5b"
PROMPT = [{"role": "user", "content": "Name a colour."}]


class Replica(OwnProcess):
    """One SmolLM2 stage server process on a fixed port (so that it can be restarted where the router expects it)."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log_dir = log_dir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        config = StageConfig(name=SMOLLM2, model=SMOLLM2, url=self.url, prices={"cost": {"request": 1.0}})
        cmd = llamacpp_command(config, LlamaCppLaunch(weights="smollm2-135m-instruct", threads=1, n_ctx=2048))
        with open(self.log_dir / f"replica-{self.port}.log", "ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        wait_http(f"http://127.0.0.1:{self.port}/health", 300, self.proc)


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Replica]]:
    log_dir = tmp_path_factory.mktemp("replicas")
    made = [Replica(log_dir) for _ in range(2)]
    try:
        for r in made:
            r.start()
        yield made
    finally:
        for r in made:
            r.stop()


@pytest.fixture(scope="module")
def router(replicas: list[Replica], stage_ports: list[int], tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    config: dict[str, Any] = ladder_config(stage_ports, free_port())
    stage0 = config["stages"][0]
    del stage0["url"]
    stage0.pop("launch", None)
    stage0["endpoints"] = [{"url": r.url} for r in replicas]
    config["stages"][1].pop("launch", None)
    config["pool"] = {"eject_after": 3, "eject_base_s": 1.0, "eject_max_s": 4.0, "probe_interval_s": 0.5, "probe_timeout_s": 2.0}
    proc = RouterProcess(config, tmp_path_factory.mktemp("router-replicas"))
    yield proc
    proc.stop()


def endpoints(router: RouterProcess) -> list[dict[str, Any]]:
    state: list[dict[str, Any]] = httpx.get(f"{router.url}/health").json()["endpoints"][SMOLLM2]["endpoints"]
    return state


def by_url(router: RouterProcess, replica: Replica) -> dict[str, Any]:
    return next(e for e in endpoints(router) if e["url"] == replica.url)


def ask(router: RouterProcess, **body: Any) -> httpx.Response:
    payload = {"model": SMOLLM2, "messages": PROMPT, "max_tokens": 12, "temperature": 0, **body}
    return httpx.post(f"{router.url}/v1/chat/completions", json=payload, timeout=120)


def wait_for(check: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout_s:g} s: {what}")


def test_requests_are_spread_over_both_replicas(router: RouterProcess) -> None:
    before = [e["requests"] for e in endpoints(router)]
    threads = [threading.Thread(target=lambda: ask(router).raise_for_status()) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = [e["requests"] for e in endpoints(router)]
    spread = [a - b for a, b in zip(after, before, strict=True)]
    assert sum(spread) == 8 and min(spread) >= 2, spread


def test_killing_a_replica_mid_traffic_fails_no_request_and_ejects_it(router: RouterProcess, replicas: list[Replica]) -> None:
    victim, survivor = replicas
    results: list[int] = []
    errors: list[str] = []
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            try:
                resp = ask(router)
                results.append(resp.status_code)
                if resp.status_code != 200:
                    errors.append(resp.text[:300])
            except httpx.HTTPError as exc:
                errors.append(repr(exc))

    workers = [threading.Thread(target=traffic) for _ in range(4)]
    for w in workers:
        w.start()
    try:
        time.sleep(2.0)
        victim.kill()
        wait_for(lambda: by_url(router, victim)["state"] == "ejected", 10, "the killed replica is ejected")
        time.sleep(1.5)  # more traffic with it gone
    finally:
        stop.set()
        for w in workers:
            w.join()
    assert not errors, errors[:3]
    assert len(results) >= 8 and set(results) == {200}
    killed = by_url(router, victim)
    assert killed["failures"] >= 1 and killed["last_error"], killed
    assert by_url(router, survivor)["state"] == "healthy"
    # streams opened while it is dead succeed: one that fails before its first event is retried on the survivor
    for _ in range(4):
        stream = ask(router, stream=True)
        assert stream.status_code == 200 and "data: [DONE]" in stream.text and '"error"' not in stream.text


def test_a_restarted_replica_rejoins_by_itself(router: RouterProcess, replicas: list[Replica]) -> None:
    victim = replicas[0]
    if victim.proc is None:
        victim.start()
    wait_for(lambda: by_url(router, victim)["state"] != "ejected", 15, "the restarted replica takes traffic again")
    served = by_url(router, victim)["requests"]
    # ties between the two replicas are broken at random, and a first request may still meet a connection the kill
    # left behind (then it is retried on the survivor and the victim waits out one more cool-down): keep asking,
    # all answered, until the router sends the victim traffic again by itself
    deadline = time.monotonic() + 30
    while by_url(router, victim)["requests"] <= served and time.monotonic() < deadline:
        ask(router).raise_for_status()
    assert by_url(router, victim)["requests"] > served, by_url(router, victim)
    assert by_url(router, victim)["state"] == "healthy"


def test_both_replicas_dead_the_cascade_skips_the_stage_in_under_a_second(router: RouterProcess, replicas: list[Replica]) -> None:
    for r in replicas:
        r.kill()
    try:
        cascade = {"model": "cascade", "messages": PROMPT, "max_tokens": 12, "temperature": 0}
        t0 = time.monotonic()
        only_stage0 = httpx.post(f"{router.url}/v1/chat/completions", json={**cascade, "cascade_max_stage": 0}, timeout=60)
        assert only_stage0.status_code == 503 and time.monotonic() - t0 < 1.0, only_stage0.text
        assert only_stage0.json()["error"]["type"] == "upstream_error"
        wait_for(lambda: all(e["state"] == "ejected" for e in endpoints(router)), 10, "both replicas ejected")
        t0 = time.monotonic()
        only_stage0 = httpx.post(f"{router.url}/v1/chat/completions", json={**cascade, "cascade_max_stage": 0}, timeout=60)
        assert only_stage0.status_code == 503 and time.monotonic() - t0 < 1.0
        assert "no healthy endpoint" in only_stage0.json()["error"]["message"]
        resp = httpx.post(f"{router.url}/v1/chat/completions", json=cascade, timeout=120)
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-cascade-skipped"] == f"{SMOLLM2}:unavailable" and resp.headers["x-cascade-path"] == QWEN
        assert float(resp.headers["x-cascade-overhead-ms"]) < 1000  # the skip itself costs no time
        health = httpx.get(f"{router.url}/health", params={"stages": "true"}).json()
        assert health["status"] == "degraded" and health["stages"][SMOLLM2] == "unreachable" and health["stages"][QWEN] == "ok"
    finally:
        for r in replicas:
            r.stop()
