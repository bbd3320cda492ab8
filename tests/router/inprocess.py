"""The router app in-process, for the router's tests: one way to build it, serve it and talk to it.

``app_client`` builds the app with ``create_app`` (scripted stages and p̂ from
``fake_stage.py``, or anything else a test passes in), runs its lifespan (httpx's
``ASGITransport`` does not: the stages and the tenant service start and close
there) and yields an ``httpx.AsyncClient`` bound to it; ``openai_client`` puts the
official client on top of that. No process and no network.

``serve`` is the usual case over ``make_settings``'s ladder, made predictable:
point priors (no Beta spread), no risk shrinkage, stage costs 1 and 4 (and 8),
priors 0.5 and 0.9 (and 0.95), λ = 10. Continuing to stage 1 is then worth
4 + 10 · 0.1 = 5, so stage 0 stops when 10 (1 - p̂) <= 5, i.e. at p̂ >= 0.5:
``STOP`` stops there, ``ESCALATE`` escalates. What real stages do is covered by
the live tests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import orjson

from common.settings import Settings
from predictor.serving.interface import Predictor
from router.api import create_app
from router.cascade import CascadeEngine
from router.openai.chat.serving import ChatServing
from router.stage import Stage
from tests.router.fake_stage import FakeStage, Script, ScriptedPredictor, fake_stages

BASE_URL = "http://router"
S0 = Script("The answer is 5.", prompt_tokens=10)
S1 = Script("The answer is 4, because two and two make four.", prompt_tokens=11)
STOP, ESCALATE = 0.9, 0.1  # stage 0's p̂ that stops there / escalates
PROMPT = [{"role": "user", "content": "What is 2 + 2?"}]  # the chat requests' messages
TEXT_PROMPT = "Q: What is 2 + 2?\nA:"  # the completions requests' prompt


@asynccontextmanager
async def app_client(
    settings: Settings,
    predictor: Predictor | None = None,
    stages: Sequence[Stage] | None = None,
    stage_process: Callable[[str], str | None] | None = None,
    direct_routes: bool = True,
) -> AsyncIterator[httpx.AsyncClient]:
    """``create_app(settings, ...)`` with its lifespan running, and a client bound to it (``BASE_URL``).

    ``direct_routes=False``: every request goes through FastAPI's stack, the public POSTs too (``RouterApp.hot``)."""
    app = create_app(settings, predictor=predictor, stages=stages, stage_process=stage_process)
    if not direct_routes:
        app.hot = {}
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE_URL) as client:
        yield client


def openai_client(http: httpx.AsyncClient) -> openai.AsyncOpenAI:
    """The official client over an ``app_client``, without retries (a test sees every answer as it came)."""
    return openai.AsyncOpenAI(base_url=f"{BASE_URL}/v1", api_key="unused", max_retries=0, http_client=http)  # type: ignore[arg-type]  # its stubs name httpx2


def make_settings(*stages: dict[str, Any], dialect: str = "openai", tenancy: dict[str, Any] | None = None, **cascade: Any) -> Settings:
    """The test ladder: s0 and s1 (and s2 where three stages are given) at 1, 4 (and 8) per request.

    Each dict in ``stages`` adds to / overrides that stage's config (``{"tools": False}``, ``{"prices": ...}``);
    ``tenancy``: instead of open access; ``cascade``: the policy's settings, and ``predictor`` its section.
    """
    base = [
        {"name": "s0", "model": "m0", "prices": {"cost": {"request": 1.0}}},
        {"name": "s1", "model": "m1", "prices": {"cost": {"request": 4.0}}},
        {"name": "s2", "model": "m2", "prices": {"cost": {"request": 8.0}}},
    ]
    predictor = cascade.pop("predictor", {})
    policy = {"skip_by_prior": False, "prior_strength": None, "risk": {"alpha": 0.0, "beta": 0.0}, "default_lambda": 10.0}
    return Settings.model_validate(
        {
            "tenancy": tenancy or {"auth": "open"},
            "cascade": policy | cascade,
            "predictor": predictor,
            "stages": [
                {"url": "http://127.0.0.1:9/v1", "dialect": dialect, **base[i], **extra} for i, extra in enumerate(stages or ({}, {}))
            ],
        }
    )


def scripted(p0: float = STOP, n_stages: int = 2) -> ScriptedPredictor:
    """The scripted p̂ of the ladder: ``p0`` at stage 0, 0.8 at stage 1, 0.9 at stage 2; priors 0.5, 0.9, 0.95."""
    return ScriptedPredictor({0: p0, 1: 0.8, 2: 0.9}, [0.5, 0.9, 0.95][:n_stages])


def chat_serving(settings: Settings, p0: float = ESCALATE, scripts: Sequence[Script] = (S0, S1)) -> ChatServing:
    """The chat API's serving over fakes answering ``scripts``, without the app: what a route hands a request to."""
    stages = fake_stages(settings.stages, *scripts)
    return ChatServing(settings, stages, CascadeEngine(settings, stages, scripted(p0, len(stages))))


@dataclass
class Router:
    """A served app, its fake stages and its scripted predictor."""

    client: httpx.AsyncClient
    stages: list[FakeStage]
    predictor: ScriptedPredictor

    async def chat(self, **body: Any) -> httpx.Response:
        return await self.client.post("/v1/chat/completions", json={"model": "cascade", "messages": PROMPT, **body})

    async def complete(self, **body: Any) -> httpx.Response:
        return await self.client.post("/v1/completions", json={"model": "cascade", "prompt": TEXT_PROMPT, **body})

    def openai(self) -> openai.AsyncOpenAI:
        return openai_client(self.client)


@asynccontextmanager
async def serve(
    p0: float = STOP,
    settings: Settings | None = None,
    scripts: Sequence[Script] = (S0, S1),
    direct_routes: bool = True,
    untrained: bool = False,
) -> AsyncIterator[Router]:
    """The app over ``settings`` (default ``make_settings()``): a fake stage each, answering ``scripts`` in order
    (a stage past their end: ``Script()``), and the ``scripted(p0)`` predictor (``untrained``: as the baseline,
    not trained on this ladder); ``direct_routes`` as ``app_client``."""
    settings = settings or make_settings()
    stages = fake_stages(settings.stages, *scripts)
    predictor = scripted(p0, len(stages))
    predictor.trained = not untrained
    async with app_client(settings, predictor=predictor, stages=stages, direct_routes=direct_routes) as client:
        yield Router(client, stages, predictor)


def events(resp: httpx.Response) -> list[Any]:
    """The SSE ``data:`` payloads of a streamed response, decoded (``[DONE]`` as the string)."""
    out: list[Any] = []
    for line in resp.text.splitlines():
        if line.startswith("data: "):
            payload = line[len("data: ") :]
            out.append(payload if payload == "[DONE]" else orjson.loads(payload))
    return out


def streamed_text(chunks: list[Any]) -> str:
    """The text a chat stream's chunks (``events``) carried."""
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if isinstance(c, dict) and c.get("choices"))
