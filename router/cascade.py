"""The cascade engine: call a stage, read its answer, ask the predictor, apply the policy.

One request walks ``start -> (stop | escalate to the best next stage)`` until
the policy stops or the top allowed stage has answered. A failed stage does
not fail the request while there is somewhere to go: an answer already in
hand is returned (marked degraded), otherwise the next stage is tried.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from predictor.features import AnswerStats, PromptStats, answer_features
from predictor.interface import Predictor
from router.config import Settings
from router.metrics import CASCADE_ESCALATIONS, STAGE_CALLS, STAGE_SECONDS
from router.policy import StoppingPolicy, shrink
from router.stage_client import StageClient, StageFailure


@dataclass
class StageVisit:
    stage: int
    name: str
    seconds: float
    p_hat: float | None = None
    usage: dict[str, int] | None = None
    error: str | None = None


@dataclass
class CascadeResult:
    visits: list[StageVisit]
    final_stage: int
    response: dict[str, Any] | None = None  # final stage's chat completion (non-streaming)
    events: AsyncIterator[bytes] | None = None  # final stage's SSE payloads (streaming)
    degraded: str | None = None  # why the answer is not the policy's choice

    @property
    def stage_seconds(self) -> float:
        return sum(v.seconds for v in self.visits)

    def usage(self) -> dict[str, int]:
        prompt = sum((v.usage or {}).get("prompt_tokens", 0) for v in self.visits)
        completion = sum((v.usage or {}).get("completion_tokens", 0) for v in self.visits)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


@dataclass
class CascadeRequest:
    body: dict[str, Any]  # upstream chat body (no model, no cascade extras)
    prompt: PromptStats
    lam: float
    max_stage: int
    stream: bool = False
    start_time: float = field(default_factory=time.perf_counter)


class CascadeEngine:
    def __init__(self, settings: Settings, clients: Sequence[StageClient], predictor: Predictor) -> None:
        self.settings = settings
        self.clients = list(clients)
        self.predictor = predictor
        self.costs = [s.cost for s in settings.stages]
        self.top_k = settings.cascade.top_logprobs

    def policy(self, prompt: PromptStats, lam: float, max_stage: int) -> StoppingPolicy:
        priors = self.predictor.priors(prompt, len(self.costs))
        return StoppingPolicy(self.costs, priors, lam, max_stage=max_stage, strength=self.settings.cascade.prior_strength)

    def _judge(self, req: CascadeRequest, stage: int, data: dict[str, Any]) -> float:
        choice = data["choices"][0]
        features = answer_features(req.prompt, AnswerStats.from_choice(choice, self.top_k), stage)
        risk = self.settings.cascade.risk
        return shrink(self.predictor.predict(features), self.predictor.evidence, risk.alpha, risk.beta)

    async def run(self, req: CascadeRequest) -> CascadeResult:
        policy = self.policy(req.prompt, req.lam, req.max_stage)
        body = {**req.body, "logprobs": True, "top_logprobs": max(req.body.get("top_logprobs") or 0, self.top_k)}
        stage: int | None = policy.start(self.settings.cascade.skip_by_prior)
        visits: list[StageVisit] = []
        answer: tuple[int, dict[str, Any]] | None = None
        while stage is not None:
            client = self.clients[stage]
            is_last = policy.best_after(stage)[0] is None
            if req.stream and is_last:
                t0 = time.perf_counter()
                try:
                    events = await client.stream({**body, "stream": True, "stream_options": {"include_usage": True}})
                except StageFailure as exc:
                    visits.append(StageVisit(stage, client.name, time.perf_counter() - t0, error=str(exc)))
                    STAGE_CALLS.labels(client.name, "error").inc()
                    if answer is None:
                        raise
                    return CascadeResult(visits, answer[0], response=answer[1], degraded=str(exc))
                visits.append(StageVisit(stage, client.name, time.perf_counter() - t0))
                STAGE_CALLS.labels(client.name, "ok").inc()
                return CascadeResult(visits, stage, events=events)
            try:
                data, seconds = await client.chat(body)
            except StageFailure as exc:
                STAGE_CALLS.labels(client.name, "error").inc()
                visits.append(StageVisit(stage, client.name, 0.0, error=str(exc)))
                if answer is not None:
                    return CascadeResult(visits, answer[0], response=answer[1], degraded=str(exc))
                nxt = policy.best_after(stage)[0]
                if nxt is None:
                    raise
                stage = nxt
                continue
            STAGE_CALLS.labels(client.name, "ok").inc()
            STAGE_SECONDS.labels(client.name).observe(seconds)
            p_hat = self._judge(req, stage, data)
            visits.append(StageVisit(stage, client.name, seconds, p_hat=p_hat, usage=data.get("usage")))
            answer = (stage, data)
            decision = policy.decide(stage, p_hat)
            if decision.stop:
                return CascadeResult(visits, stage, response=data)
            CASCADE_ESCALATIONS.labels(client.name, self.clients[decision.next_stage].name).inc()  # type: ignore[index]
            stage = decision.next_stage
        raise AssertionError("unreachable: the loop returns at the top stage")
