"""Bad input and bad stages: every failure is an OpenAI-shaped 4xx/5xx, never a hang or a bare 500.

Bad-input cases run against the router in front of the real stages. Stage
faults use the stub stage (``servers/stub_server.py``): a real model cannot be
made to hang, die or answer garbage on demand.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, RouterProcess, free_port, stop_process, wait_http

GOOD = {"model": "cascade", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def _assert_error(resp: httpx.Response, status: int, param: str | None) -> dict[str, object]:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    assert err["param"] == param
    if param:
        assert param.split(".")[0].split("[")[0] in err["message"]
    return err


BAD_BODIES = [
    (b"{not json", None),
    (b"[1, 2]", None),
    (b'{"messages": [{"role": "user", "content": "hi"}]}', "model"),
    (b'{"model": "cascade"}', "messages"),
    (b'{"model": "cascade", "messages": []}', "messages"),
    (b'{"model": "cascade", "messages": "hello"}', "messages"),
    (b'{"model": "cascade", "messages": [{"role": "wizard", "content": "hi"}]}', "messages[0].role"),
    (b'{"model": "cascade", "messages": [{"role": "user", "content": 5}]}', "messages[0].content"),
    (b'{"model": "cascade", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}', "temperature"),
    (b'{"model": "cascade", "messages": [{"role": "user", "content": "hi"}], "temperature": 2.5}', "temperature"),
    (b'{"model": "cascade", "messages": [{"role": "user", "content": "hi"}], "top_p": 0}', "top_p"),
    (b'{"model": "cascade", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}', "max_tokens"),
    (b'{"model": "cascade", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1.5}', "max_tokens"),
    (b'{"model": "cascade", "messages": [{"role": "user", "content": "hi"}], "n": 3}', "n"),
    (b'{"model": "cascade", "messages": [{"role": "user", "content": "hi"}], "top_logprobs": 30, "logprobs": true}', "top_logprobs"),
    (b'{"model": "cascade", "messages": [{"role": "user", "content": "hi"}], "top_logprobs": 3}', "top_logprobs"),
    (b'{"model": "cascade", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}', "stream"),
    (
        b'{"model": "cascade", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}',
        "messages[0].content[0].type",
    ),
    (
        b'{"model": "cascade", "messages": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "r"}]}',
        "messages[1].tool_call_id",
    ),
    (b'{"model": "cascade", "messages": [{"role": "user", "content": "hi"}], "tool_choice": "required"}', "tool_choice"),
    (
        b'{"model": "cascade", "messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "json_schema"}}',
        "response_format.json_schema",
    ),
    (b'{"model": "cascade", "messages": [{"role": "user", "content": "hi"}], "functions": [{"name": "f"}]}', "functions"),
    (b'{"model": "cascade", "messages": [{"role": "user", "content": "hi"}], "logit_bias": {"1": 2}}', "logit_bias"),
    (b'{"model": "cascade", "messages": [{"role": "user", "content": "hi"}], "frobnicate": 1}', "frobnicate"),
    (b'{"model": "cascade", "messages": [{"role": "user", "content": "hi"}], "cascade_lambda": -1}', "cascade_lambda"),
    (b'{"model": "cascade", "messages": [{"role": "user", "content": "hi"}], "cascade_max_stage": 7}', "cascade_max_stage"),
    (b'{"model": "cascade", "messages": [{"role": "user", "content": "hi"}], "cascade_max_stage": "gpt-9"}', "cascade_max_stage"),
    (b'{"model": "cascade", "messages": [{"role": "user", "content": "hi"}], "stream_options": {"include_usage": true}}', "stream_options"),
]


@pytest.mark.parametrize(("body", "param"), BAD_BODIES)
def test_bad_request_bodies(router: RouterProcess, body: bytes, param: str | None) -> None:
    resp = httpx.post(f"{router.url}/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    err = _assert_error(resp, 400, param)
    assert err["type"] == "invalid_request_error"


def test_unknown_model_is_404(router: RouterProcess) -> None:
    resp = httpx.post(f"{router.url}/v1/chat/completions", json={**GOOD, "model": "gpt-17"})
    err = _assert_error(resp, 404, "model")
    assert err["code"] == "model_not_found"


def test_cascade_field_on_a_stage_is_rejected(router: RouterProcess) -> None:
    stage = router.settings.stages[0].name
    resp = httpx.post(f"{router.url}/v1/chat/completions", json={**GOOD, "model": stage, "cascade_lambda": 1})
    _assert_error(resp, 400, "cascade_lambda")


@pytest.mark.parametrize("value", ["abc", "-1", "nan", "inf"])
def test_bad_lambda_header(router: RouterProcess, value: str) -> None:
    resp = httpx.post(f"{router.url}/v1/chat/completions", json=GOOD, headers={"x-cascade-lambda": value})
    _assert_error(resp, 400, "x-cascade-lambda")


def test_bad_max_stage_header(router: RouterProcess) -> None:
    resp = httpx.post(f"{router.url}/v1/chat/completions", json=GOOD, headers={"x-cascade-max-stage": "nope"})
    _assert_error(resp, 400, "x-cascade-max-stage")


def test_unknown_route_and_method_are_openai_shaped(router: RouterProcess) -> None:
    _assert_error(httpx.get(f"{router.url}/v1/nothing"), 404, None)
    _assert_error(httpx.get(f"{router.url}/v1/chat/completions"), 405, None)


def test_router_still_serves_after_bad_input(router: RouterProcess) -> None:
    for body, _ in BAD_BODIES[:5]:
        httpx.post(f"{router.url}/v1/chat/completions", content=body)
    resp = httpx.post(f"{router.url}/v1/chat/completions", json={**GOOD, "cascade_lambda": 0.0})
    assert resp.status_code == 200


# -- stage faults (stub stages) ------------------------------------------------


class StubStage:
    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "servers.stub_server", "--port", str(self.port), "--mode", mode, "--model", "stub"],
            cwd=ROOT,
        )
        wait_http(f"http://127.0.0.1:{self.port}/health", 30, self.proc)

    def stop(self) -> None:
        stop_process(self.proc, grace_s=5)


def _fault_config(ports: list[int], router_port: int, timeout_s: float = 2.0) -> dict[str, object]:
    stages = [
        {
            "name": f"s{i}",
            "model": "stub",
            "url": f"http://127.0.0.1:{p}/v1",
            "prices": {"cost": {"request": float(i + 1)}},
            "prior": 0.3 if i == 0 else 0.95,
            "timeout_s": timeout_s,
            "connect_timeout_s": 1.0,
        }
        for i, p in enumerate(ports)
    ]
    return {
        "server": {"host": "127.0.0.1", "port": router_port},
        "cascade": {"skip_by_prior": False},
        "tenancy": {"auth": "open"},
        "stages": stages,
    }


@pytest.fixture()
def stubs(request: pytest.FixtureRequest) -> Iterator[list[StubStage]]:
    made = [StubStage(m) for m in request.param]
    yield made
    for s in made:
        s.stop()


@pytest.mark.parametrize(
    ("stubs", "status"),
    [(["hang"], 504), (["garbage"], 502), (["die"], 502), (["error500"], 502)],
    indirect=["stubs"],
)
def test_faulty_single_stage(stubs: list[StubStage], status: int, tmp_path: Path) -> None:
    router = RouterProcess(_fault_config([s.port for s in stubs], free_port()), tmp_path)
    try:
        t0 = time.monotonic()
        resp = httpx.post(f"{router.url}/v1/chat/completions", json={**GOOD, "model": "s0"}, timeout=30)
        assert time.monotonic() - t0 < 10
        err = _assert_error(resp, status, None)
        assert err["type"] == "upstream_error" and "s0" in str(err["message"])
        resp = httpx.post(f"{router.url}/v1/chat/completions", json=GOOD, timeout=30)
        _assert_error(resp, status, None)
    finally:
        router.stop()


def test_unreachable_stage_is_503(tmp_path: Path) -> None:
    router = RouterProcess(_fault_config([free_port()], free_port()), tmp_path)
    try:
        resp = httpx.post(f"{router.url}/v1/chat/completions", json=GOOD, timeout=30)
        err = _assert_error(resp, 503, None)
        assert "unreachable" in str(err["message"])
        health = httpx.get(f"{router.url}/health", params={"stages": "true"}).json()
        assert health["status"] == "degraded" and health["stages"]["s0"] == "unreachable"
    finally:
        router.stop()


@pytest.mark.parametrize("stubs", [["instant", "hang"], ["hang", "instant"]], indirect=True)
def test_cascade_survives_a_hanging_stage(stubs: list[StubStage], tmp_path: Path) -> None:
    """Upper stage hangs: the lower answer comes back, marked degraded. Lower hangs: the upper answers."""
    router = RouterProcess(_fault_config([s.port for s in stubs], free_port()), tmp_path)
    try:
        resp = httpx.post(f"{router.url}/v1/chat/completions", json={**GOOD, "cascade_lambda": 1e6}, timeout=30)
        assert resp.status_code == 200, resp.text
        assert resp.json()["choices"][0]["message"]["content"] == "The answer is 4."
        answered = "s0" if stubs[0].mode == "instant" else "s1"
        assert resp.headers["x-cascade-stage"] == answered
        if answered == "s0":
            assert "s1" in resp.headers["x-cascade-degraded"]
    finally:
        router.stop()


@pytest.mark.parametrize("stubs", [["bad-logprobs"], ["bad-logprobs", "instant"]], indirect=True)
def test_logprobs_that_do_not_decode(stubs: list[StubStage], tmp_path: Path) -> None:
    """The router reads a stage's logprobs from the bytes and decodes them only when needed: when
    they are needed and do not decode, that stage answered badly (502 alone; the next stage
    answers in a ladder); when nobody reads them the answer stands."""
    router = RouterProcess(_fault_config([s.port for s in stubs], free_port()), tmp_path)
    try:
        plain = httpx.post(f"{router.url}/v1/chat/completions", json={**GOOD, "cascade_lambda": 0.0}, timeout=30)
        assert plain.status_code == 200 and plain.headers["x-cascade-stage"] == "s0", plain.text
        asked = httpx.post(f"{router.url}/v1/chat/completions", json={**GOOD, "cascade_lambda": 0.0, "logprobs": True}, timeout=30)
        if len(stubs) == 1:
            err = _assert_error(asked, 502, None)
            assert err["type"] == "upstream_error" and "s0" in str(err["message"]) and "logprobs" in str(err["message"])
        else:
            assert asked.status_code == 200, asked.text
            assert asked.headers["x-cascade-stage"] == "s1" and asked.json()["choices"][0]["logprobs"]["content"]
        assert httpx.post(f"{router.url}/v1/chat/completions", json={**GOOD, "cascade_lambda": 0.0}, timeout=30).status_code == 200
    finally:
        router.stop()
