"""Schemathesis against the live router: generated requests from the published schema, every response checked against it.

The router runs as its own process (``adaptive-sd serve``), as users run it, and
its own ``/openapi.json`` is loaded. Every documented operation gets a bounded
number of cases, valid by the schema (positive) and not (negative), generated
derandomized (the same cases every run), and each response is checked:
``not_a_server_error`` (no 5xx), ``status_code_conformance`` (a documented
status), ``content_type_conformance`` (a documented media type) and
``response_schema_conformance`` (the body, each event of a stream included, is
the documented schema). All failures of a run are collected and reported
together, each with the curl command that reproduces it.

Where the stages are: most cases go to a router over stub stages
(``servers/stub_server.py``, instant, vLLM's chat dialect). A real stage cannot
do this job within the time bound: a body valid by the schema may ask for
thousands of tokens (``max_tokens`` has no upper bound short of the context),
and the CPU models generate 14-80 tokens/s, so one case could take minutes; and
what is under test here is the router's protocol layer (validation, errors,
relaying and shaping), which does not depend on what the model says. A smaller
run then goes to the real llama.cpp ladder of the test session, with the token
limits of generated bodies capped, so that real stages' bodies (their logprobs,
usage, finish reasons, a context overflow's 400) are checked against the
schema too. The stub stages are configured ``completions: false`` (the stub
answers chat only): their ``/v1/completions`` cases check the refusals, and the
real run checks completions' answers.

Sizes (``STUB_CASES``, ``OTHER_CASES``, ``REAL_CASES``): about 1100 cases over the
stubs (~25 s on two cores) and 64 over the real ladder (~10 s), the same ones each
run. ``steer`` makes generated cases reach past the first check where random
values rarely would (a real model name, the admin key, a few tenant ids).

``test_fuzz_reports_*`` show the harness fails when it should: against a schema
made wrong on purpose, and against a stage that fails.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import hypothesis.errors
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance, status_code_conformance

from router.openapi import RENDERED
from tests.conftest import ROOT, RouterProcess, free_port, stop_process, wait_http

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
ADMIN_KEY = "fuzz-admin-key-0123456789"
TOKEN_CAP = 4  # the real-stage run: no generated body may ask a CPU model for more tokens than this
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)


# -- the harness ---------------------------------------------------------------------------------------------
@dataclass
class Run:
    """What one fuzzing run did: cases per operation and every failure, with a reproducing command."""

    cases: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, dict[int, int]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.cases.values())

    def report(self) -> str:
        lines = [f"{len(self.failures)} failure(s) in {self.total} cases ({self.seconds:.0f} s):"]
        return "\n\n".join([*lines, *self.failures[:20]])


Adjust = Callable[[Case, int, bool], None]  # (case, its number, positive): steers a case to the paths worth reaching


def fuzz(base_url: str, budget: Callable[[str], int], adjust: Adjust, schema: schemathesis.BaseSchema | None = None,
         modes: tuple[GenerationMode, ...] = MODES) -> Run:  # fmt: skip
    """Every operation of the live router's schema (or of ``schema``), ``budget(label)`` cases per generation mode."""
    schema = schema if schema is not None else schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    schema.config.output.sanitization.enabled = False  # the report shows the bodies as sent ("max_tokens" is no secret)
    run = Run()
    t0 = time.monotonic()
    # deletions last (a tenant's keys before the tenant), so that the tenants the run creates are there for the others
    operations = sorted((result.ok() for result in schema.get_all_operations()),
                        key=lambda op: (op.method.upper() == "DELETE", -len(op.path) if op.method.upper() == "DELETE" else 0))  # fmt: skip
    with requests.Session() as session:
        for operation in operations:
            n = budget(operation.label)
            if n <= 0:
                continue
            for mode in modes:
                _fuzz_operation(operation, mode, n, session, base_url, adjust, run)
    run.seconds = time.monotonic() - t0
    return run


def _fuzz_operation(operation: Any, mode: GenerationMode, n: int, session: requests.Session, base_url: str, adjust: Adjust,
                    run: Run) -> None:  # fmt: skip
    label = operation.label
    counter = [0]

    @hypothesis.settings(
        max_examples=n,
        derandomize=True,  # the same cases every run
        database=None,
        deadline=None,
        phases=[Phase.generate],  # no shrinking: every failure is collected, none is raised
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    def one(case: Case) -> None:
        i = counter[0]
        counter[0] += 1
        adjust(case, i, mode is GenerationMode.POSITIVE)
        try:
            response = case.call(base_url=base_url, session=session, timeout=60)
        except requests.RequestException as exc:
            run.failures.append(f"[{label} {mode.value}] no response: {exc!r}\n{case.as_curl_command()}")
            return
        statuses = run.statuses.setdefault(label, {})
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        try:
            case.validate_response(response, checks=CHECKS)
        except (Failure, FailureGroup) as exc:  # what the checks found
            body = response.text[:300].replace("\n", "\\n")
            run.failures.append(f"[{label} {mode.value}] {response.status_code}: {exc}\n{case.as_curl_command()}\n<- {body}")

    try:
        one()
    except hypothesis.errors.Unsatisfiable:
        if mode is GenerationMode.POSITIVE:
            raise
        # nothing to make invalid: the operation takes no parameters and no body (GET /v1/models)
    run.cases[label] = run.cases.get(label, 0) + counter[0]


TENANTS = ("t0", "t1", "t2")  # a few tenant ids, so that creating, reading, changing and deleting meet


def steer(models: list[str], admin_key: str | None, token_cap: int | None = None) -> Adjust:
    """Steer generated cases where random values rarely go: admin calls carry the admin key most of the time
    (without it: the 401s), and a positive case most of the time names a real model (a random string is a 404)
    and one of a few tenant ids; a chat body that continues its final message mostly does not (that message
    is rarely the assistant's). With ``token_cap`` no body asks for more tokens than that."""

    def adjust(case: Case, i: int, positive: bool) -> None:
        path = case.operation.path
        often = i % 4 != 3
        if path.startswith("/admin") and admin_key is not None and often:
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {admin_key}"}
        body = case.body
        if not positive:
            return
        params = case.path_parameters or {}
        if often and "tenant_id" in params:
            params["tenant_id"] = TENANTS[i % len(TENANTS)]
        if often and "model_id" in params:
            params["model_id"] = models[i % len(models)]
        if not isinstance(body, dict):
            return
        if path == "/admin/tenants" and often:
            body["id"] = TENANTS[i % len(TENANTS)]
        if case.method.upper() != "POST" or not path.startswith("/v1/"):
            return
        if often:
            body["model"] = models[i % len(models)]
        if body.get("continue_final_message") and i % 2 == 0:
            body.pop("continue_final_message")
            body.pop("prompt_logprobs_scope", None)
        if token_cap is not None:
            key = {"/v1/chat/completions": "max_tokens", "/v1/completions": "max_tokens", "/v1/responses": "max_output_tokens"}[path]
            for name in (key, "max_completion_tokens"):
                value = body.get(name)
                if isinstance(value, int | float) and not isinstance(value, bool):  # 4.0 is an integer too
                    body[name] = max(0 if path == "/v1/completions" else 1, min(int(value), token_cap))
            if body.get(key) is None:
                body[key] = token_cap

    return adjust


# -- stages and routers ---------------------------------------------------------------------------------------
class Stub:
    """One ``servers.stub_server`` process (instant answers, or a fault mode)."""

    def __init__(self, mode: str = "instant") -> None:
        self.port = free_port()
        cmd = [sys.executable, "-m", "servers.stub_server", "--port", str(self.port), "--mode", mode, "--model", "stub"]
        self.proc = subprocess.Popen(cmd, cwd=ROOT)
        wait_http(f"http://127.0.0.1:{self.port}/health", 30, self.proc)

    def stop(self) -> None:
        stop_process(self.proc, grace_s=5)


def stub_config(ports: list[int], router_port: int) -> dict[str, object]:
    stages = [
        {"name": f"s{i}", "model": "stub", "url": f"http://127.0.0.1:{p}/v1", "prices": {"cost": {"request": float(i + 1)}},
         "prior": 0.3 if i == 0 else 0.95, "timeout_s": 5.0, "connect_timeout_s": 1.0, "completions": False}
        for i, p in enumerate(ports)
    ]  # fmt: skip
    return {
        "server": {"host": "127.0.0.1", "port": router_port},
        "cascade": {"skip_by_prior": False},
        "tenancy": {"auth": "open", "admin_key": ADMIN_KEY},
        "stages": stages,
    }


@pytest.fixture(scope="module")
def stub_router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    stubs = [Stub(), Stub()]
    router = RouterProcess(stub_config([s.port for s in stubs], free_port()), tmp_path_factory.mktemp("fuzz-router"))
    yield router
    router.stop()
    for s in stubs:
        s.stop()


# -- the runs ---------------------------------------------------------------------------------------------------
STUB_CASES = {"POST /v1/chat/completions": 150, "POST /v1/completions": 40, "POST /v1/responses": 150}
OTHER_CASES = 25  # each other operation: model cards, health, metrics, /v1/tenant, the admin API
REAL_CASES = {"POST /v1/chat/completions": 24, "POST /v1/completions": 16, "POST /v1/responses": 24}


def test_fuzz_router_over_stub_stages(stub_router: RouterProcess) -> None:
    """Every operation; the three generation endpoints get the most cases (their bodies are the largest schemas).
    The live router serves the committed document."""
    assert httpx.get(f"{stub_router.url}/openapi.json").json() == json.loads(RENDERED.read_bytes())
    run = fuzz(stub_router.url, lambda label: STUB_CASES.get(label, OTHER_CASES), steer(["cascade", "s0", "s1"], ADMIN_KEY))
    print(f"stub stages: {run.total} cases in {run.seconds:.0f} s: {run.cases}; statuses {run.statuses}")
    assert len(run.cases) == 15, run.cases  # every documented operation was exercised
    assert not run.failures, run.report()


def test_fuzz_router_over_real_stages(router: RouterProcess) -> None:
    """The generation endpoints over the real llama.cpp stages, token limits capped (see the module docstring); valid
    bodies only (the refusals never reach a stage: the stub run has them)."""
    models = ["cascade", *(s.name for s in router.settings.stages)]
    run = fuzz(router.url, lambda label: REAL_CASES.get(label, 0), steer(models, None, token_cap=TOKEN_CAP), modes=MODES[:1])
    print(f"real stages: {run.total} cases in {run.seconds:.0f} s: {run.cases}; statuses {run.statuses}")
    assert run.total >= sum(REAL_CASES.values())
    assert any(200 in s for s in run.statuses.values()), run.statuses  # some cases reached a model
    assert not run.failures, run.report()


def test_a_negative_seed_reaches_a_real_stage(router: RouterProcess) -> None:
    """Found by the real-stage run: ``seed: -94643575`` (valid: OpenAI's seed is any 64-bit integer) was a 500 of the
    CPU stage (numpy takes no negative seed), a 502 at the router."""
    stage = router.settings.stages[0].name
    for path, body in [
        ("/v1/completions", {"prompt": "Hello"}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
    ]:
        resp = httpx.post(f"{router.url}{path}", json={"model": stage, "max_tokens": 2, "seed": -94643575, **body}, timeout=120)
        assert resp.status_code == 200, resp.text


def test_fuzz_reports_a_response_that_breaks_the_schema(stub_router: RouterProcess) -> None:
    """The same harness over a schema made wrong on purpose -- model cards and stream chunks said to carry a field
    they do not -- reports the bodies and the stream events that break it."""
    doc = httpx.get(f"{stub_router.url}/openapi.json").json()
    for name in ("ModelCard", "ChatCompletionChunk"):
        doc["components"]["schemas"][name]["required"].append("max_model_len")
    schema = schemathesis.openapi.from_dict(doc)
    schema.config.update(base_url=stub_router.url)
    steered = steer(["cascade", "s0"], None)

    def streaming(case: Case, i: int, positive: bool) -> None:
        steered(case, i, positive)
        if positive and isinstance(case.body, dict):
            case.body.update(stream=True, continue_final_message=False)
            case.body.pop("prompt_logprobs", None)

    budget = {"GET /v1/models/{model_id}": 4, "POST /v1/chat/completions": 12}
    run = fuzz(stub_router.url, lambda label: budget.get(label, 0), streaming, schema)
    assert any("GET /v1/models/{model_id} positive] 200" in f and "max_model_len" in f for f in run.failures), run.report()
    assert any("POST /v1/chat/completions positive] 200" in f and "SSE event" in f for f in run.failures), run.report()


def test_fuzz_reports_server_errors(tmp_path: Path) -> None:
    """A stage that answers 500: the router's 502s are server errors, and the harness says so."""
    stub = Stub("error500")
    router = RouterProcess(stub_config([stub.port], free_port()), tmp_path)
    try:
        run = fuzz(router.url, lambda label: 5 if label == "POST /v1/chat/completions" else 0, steer(["cascade", "s0"], None))
    finally:
        router.stop()
        stub.stop()
    assert any("Server error" in f and "502" in f for f in run.failures), run.report()
