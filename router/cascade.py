"""The cascade engine: call a stage, read its answer, ask the predictor, apply the policy.

One request walks ``start -> (stop | escalate to the best next stage)`` until
the policy stops or the top allowed stage has answered. A failed stage does
not fail the request while there is somewhere to go: an answer already in
hand is returned (marked degraded), otherwise the next stage is tried.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from common.settings import Settings
from predictor.serving.features import AnswerStats, DraftStats, PromptStats, answer_features
from predictor.serving.interface import Predictor
from router.draft import AcceptanceTracker, DraftCheck, continuation_body, merge, token_limit, trim, verify_draft, why_not_verify
from router.metrics import CASCADE_ESCALATIONS, DRAFT_TOKENS, STAGE_CALLS, STAGE_SECONDS
from router.policy import StoppingPolicy, shrink
from router.speculative import verify_sampled
from router.stage_client import StageBadResponse, StageClient, StageFailure, StageReply
from router.traffic_log import TrafficLog


@dataclass
class StageVisit:
    stage: int
    name: str
    seconds: float
    p_hat: float | None = None
    usage: dict[str, int] | None = None
    error: str | None = None
    draft: DraftCheck | None = None  # verification of the previous stage's answer
    draft_mode: str | None = None  # "verify" or "regenerate:<reason>" when there was a draft
    choice: dict[str, Any] | None = None  # the stage's answer (kept for the opt-in traffic log)


@dataclass
class CascadeResult:
    visits: list[StageVisit]
    final_stage: int
    response: dict[str, Any] | None = None  # final stage's chat completion (non-streaming)
    events: AsyncIterator[bytes] | None = None  # final stage's SSE payloads (streaming)
    prefix: DraftCheck | None = None  # draft check of the streamed stage; its accepted text goes out first
    degraded: str | None = None  # why the answer is not the policy's choice

    @property
    def stage_seconds(self) -> float:
        return sum(v.seconds for v in self.visits)

    def usage(self) -> dict[str, int]:
        prompt = sum((v.usage or {}).get("prompt_tokens", 0) for v in self.visits)
        completion = sum((v.usage or {}).get("completion_tokens", 0) for v in self.visits)
        if self.prefix is not None:  # streamed stage: its scoring call and the accepted tokens
            prompt += self.prefix.usage.get("prompt_tokens", 0)
            completion += self.prefix.prefix_tokens
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
        configured = settings.cascade.top_logprobs
        if configured is not None and configured != predictor.top_k:
            raise ValueError(
                f"cascade.top_logprobs is {configured} but the predictor {predictor.name} was trained at top-k {predictor.top_k}: "
                "its features would be skewed; unset cascade.top_logprobs or retrain at that k"
            )
        self.top_k = predictor.top_k
        self.acceptance = AcceptanceTracker(settings.cascade.draft_min_accepted)
        self.traffic = TrafficLog(settings.predictor.log_path) if settings.predictor.log_path else None

    def policy(self, prompt: PromptStats, lam: float, max_stage: int) -> StoppingPolicy:
        priors = self.predictor.priors(prompt, len(self.costs))
        return StoppingPolicy(self.costs, priors, lam, max_stage=max_stage, strength=self.settings.cascade.prior_strength)

    def _judge(self, req: CascadeRequest, stage: int, data: dict[str, Any], check: DraftCheck | None, stats: AnswerStats | None) -> float:
        """p̂ for a stage's answer; ``stats`` when they were read from the response bytes, else from the decoded logprobs."""
        if stats is None:
            stats = AnswerStats.from_choice(data["choices"][0], self.top_k)
        draft = DraftStats(check.accepted_tokens, check.draft_tokens) if check else None
        features = answer_features(req.prompt, stats, stage, draft)
        risk = self.settings.cascade.risk
        return shrink(self.predictor.predict(features), self.predictor.evidence, risk.alpha, risk.beta)

    async def run(self, req: CascadeRequest) -> CascadeResult:
        result = await self._run(req)
        if self.traffic is not None:
            self._log(req, result)
        return result

    def _log(self, req: CascadeRequest, result: CascadeResult) -> None:
        visits = [
            {"stage": v.stage, "name": v.name, "choice": v.choice, "usage": v.usage, "seconds": v.seconds,
             "draft": {"accepted": v.draft.accepted_tokens, "tokens": v.draft.draft_tokens} if v.draft else None}
            for v in result.visits if v.error is None
        ]  # fmt: skip
        if any(v["choice"] is not None for v in visits):
            self.traffic.record(
                [m.get("content") if isinstance(m.get("content"), str) else json.dumps(m.get("content")) for m in req.body["messages"]],
                visits,
            )  # type: ignore[union-attr]

    async def _run(self, req: CascadeRequest) -> CascadeResult:
        policy = self.policy(req.prompt, req.lam, req.max_stage)
        body = {**req.body, "logprobs": True, "top_logprobs": max(req.body.get("top_logprobs") or 0, self.top_k)}
        stage: int | None = policy.start(self.settings.cascade.skip_by_prior)
        visits: list[StageVisit] = []
        answer: tuple[int, dict[str, Any], StageReply | None] | None = None
        # the logprobs of a stage answer are decoded only if someone will read them (see StageReply)
        decode_logprobs = bool(req.body.get("logprobs")) or self.traffic is not None
        while stage is not None:
            client = self.clients[stage]
            is_last = policy.best_after(stage)[0] is None
            draft = answer[1]["choices"][0]["message"].get("content") or "" if answer else None
            pair = (answer[0] if answer else -1, stage)
            t0 = time.perf_counter()
            check, mode, reply = None, None, None
            try:
                if draft is not None:
                    check, mode = await self._verify(client, body, draft, answer, pair)  # type: ignore[arg-type]
                if req.stream and is_last and not (check and trim(check, token_limit(body))):
                    stream_body = continuation_body(body, check) if check else body
                    events = await client.stream({**stream_body, "stream": True, "stream_options": {"include_usage": True}})
                    visits.append(StageVisit(stage, client.name, time.perf_counter() - t0, draft=check, draft_mode=mode))
                    STAGE_CALLS.labels(client.name, "ok").inc()
                    return CascadeResult(visits, stage, events=events, prefix=check)
                if check is not None:
                    done = trim(check, token_limit(body))
                    data = merge(check, None if done else (await client.chat(continuation_body(body, check)))[0])
                else:
                    reply = await client.reply(body, top_k=self.top_k)
                    data = reply.with_logprobs() if decode_logprobs else reply.data
                seconds = time.perf_counter() - t0
            except StageFailure as exc:
                STAGE_CALLS.labels(client.name, "error").inc()
                visits.append(StageVisit(stage, client.name, time.perf_counter() - t0, error=str(exc)))
                if answer is not None:
                    return CascadeResult(visits, answer[0], response=answer[1], degraded=str(exc))
                nxt = policy.best_after(stage)[0]
                if nxt is None:
                    raise
                stage = nxt
                continue
            STAGE_CALLS.labels(client.name, "ok").inc()
            STAGE_SECONDS.labels(client.name).observe(seconds)
            p_hat = self._judge(req, stage, data, check, reply.stats if reply else None)
            visits.append(
                StageVisit(
                    stage,
                    client.name,
                    seconds,
                    p_hat=p_hat,
                    usage=data.get("usage"),
                    draft=check,
                    draft_mode=mode,
                    choice=data["choices"][0],
                )
            )
            answer = (stage, data, reply)
            decision = policy.decide(stage, p_hat)
            if decision.stop:
                return CascadeResult(visits, stage, response=data)
            CASCADE_ESCALATIONS.labels(client.name, self.clients[decision.next_stage].name).inc()  # type: ignore[index]
            stage = decision.next_stage
        raise AssertionError("unreachable: the loop returns at the top stage")

    async def _verify(
        self,
        client: StageClient,
        body: dict[str, Any],
        draft: str,
        answer: tuple[int, dict[str, Any], StageReply | None],
        pair: tuple[int, int],
    ) -> tuple[DraftCheck | None, str]:
        """Verify the lower stage's draft on ``client`` when that keeps the answer's distribution and pays off; say what happened."""
        lower, upper = (self.settings.stages[s].tokenizer for s in pair)
        shared = lower is not None and lower == upper
        reason = why_not_verify(client, body, draft, shared) if self.settings.cascade.draft_reuse else "disabled"
        if reason is None and not self.acceptance.should_verify(pair):
            reason = "low-acceptance"
        if reason is None:
            sampled = body.get("temperature") != 0
            if sampled:
                try:
                    drafted = answer[2].with_logprobs() if answer[2] is not None else answer[1]
                except StageBadResponse:  # the lower stage's logprobs do not decode: no proposal to sample against
                    drafted = answer[1]
                entries = (drafted["choices"][0].get("logprobs") or {}).get("content") or []
                sampled_body = {**body, "temperature": body.get("temperature", 1.0) or 1.0}
                check = await verify_sampled(client, sampled_body, draft, entries) if entries else None
            else:
                check = await verify_draft(client, body, draft, (answer[1].get("usage") or {}).get("completion_tokens"))
            if check is not None:
                self.acceptance.observe(pair, check.accepted_tokens)
                DRAFT_TOKENS.labels(client.name, "accepted").inc(check.accepted_tokens)
                DRAFT_TOKENS.labels(client.name, "rejected").inc(max(check.draft_tokens - check.accepted_tokens, 0))
                return check, "verify-sampling" if sampled else "verify"
            reason = "misaligned"
        return None, f"regenerate:{reason}"
