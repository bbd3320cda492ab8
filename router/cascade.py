"""The cascade engine: call a stage, read its answer, ask the predictor, apply the policy.

One request walks ``start -> (stop | escalate to the best next stage)`` until
the policy stops or the top allowed stage has answered. A failed stage does
not fail the request while there is somewhere to go: an answer already in
hand is returned (marked degraded), otherwise the next stage is tried.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from common.settings import Settings
from predictor.serving.features import AnswerStats, DraftStats, PromptStats, answer_features
from predictor.serving.interface import Predictor
from router.contracts import CascadeRequest, CascadeResult, StageAnswer, StageVisit
from router.draft import AcceptanceTracker, DraftCheck, continuation_body, merge, token_limit, trim, verify_draft, why_not_verify
from router.metrics import CASCADE_ESCALATIONS, DRAFT_TOKENS, STAGE_CALLS, STAGE_SECONDS
from router.policy import StoppingPolicy, shrink
from router.speculative import verify_sampled
from router.stage import Stage, StageBadResponse, StageFailure
from router.traffic_log import TrafficLog


class CascadeEngine:
    def __init__(self, settings: Settings, stages: Sequence[Stage], predictor: Predictor) -> None:
        self.settings = settings
        self.stages = list(stages)
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

    def _judge(self, req: CascadeRequest, answer: StageAnswer, check: DraftCheck | None) -> float:
        """p̂ for a stage's answer: from the statistics read off the response bytes, else from the decoded logprobs."""
        stats = answer.reply.stats if answer.reply is not None else None
        if stats is None:
            stats = AnswerStats.from_choice(answer.choice, self.top_k)
        draft = DraftStats(check.accepted_tokens, check.draft_tokens) if check else None
        features = answer_features(req.prompt, stats, answer.stage, draft)
        risk = self.settings.cascade.risk
        return shrink(self.predictor.predict(features), self.predictor.evidence, risk.alpha, risk.beta)

    async def run(self, req: CascadeRequest) -> CascadeResult:
        result = await self._run(req)
        if self.traffic is not None:
            self._log(self.traffic, req, result)
        return result

    @staticmethod
    def _log(traffic: TrafficLog, req: CascadeRequest, result: CascadeResult) -> None:
        visits = [
            {"stage": v.stage, "name": v.name, "choice": v.choice, "usage": v.usage.to_dict() if v.usage else None, "seconds": v.seconds,
             "draft": {"accepted": v.draft.accepted_tokens, "tokens": v.draft.draft_tokens, "seconds": round(v.draft.seconds, 4)}
                      if v.draft else None}
            for v in result.visits if v.error is None
        ]  # fmt: skip
        if any(v["choice"] is not None for v in visits):
            contents = [m.get("content") for m in req.body["messages"]]
            traffic.record([c if isinstance(c, str) else json.dumps(c) for c in contents], visits)

    async def _run(self, req: CascadeRequest) -> CascadeResult:
        policy = self.policy(req.prompt, req.lam, req.max_stage)
        body = {**req.body, "logprobs": True, "top_logprobs": max(req.body.get("top_logprobs") or 0, self.top_k)}
        stage: int | None = policy.start(self.settings.cascade.skip_by_prior)
        visits: list[StageVisit] = []
        answer: StageAnswer | None = None  # the latest stage answer in hand (its stage's draft for the next)
        # the logprobs of a stage answer are decoded only if someone will read them (see StageReply)
        decode_logprobs = bool(req.body.get("logprobs")) or self.traffic is not None
        while stage is not None:
            client = self.stages[stage]
            is_last = policy.best_after(stage)[0] is None
            t0 = time.perf_counter()
            check: DraftCheck | None = None
            mode: str | None = None
            try:
                if answer is not None:
                    check, mode = await self._verify(client, body, answer, stage)
                if req.stream and is_last and not (check and trim(check, token_limit(body))):
                    stream_body = continuation_body(body, check) if check else body
                    events = await client.stream({**stream_body, "stream": True, "stream_options": {"include_usage": True}})
                    visits.append(StageVisit(stage, client.name, time.perf_counter() - t0, draft=check, draft_mode=mode))
                    STAGE_CALLS.labels(client.name, "ok").inc()
                    return CascadeResult(visits, stage, events=events, prefix=check)
                if check is not None:
                    done = trim(check, token_limit(body))
                    current = StageAnswer(stage, merge(check, None if done else (await client.chat(continuation_body(body, check)))[0]))
                else:
                    reply = await client.reply(body, top_k=self.top_k)
                    if decode_logprobs:
                        reply.with_logprobs()
                    current = StageAnswer(stage, reply.data, reply)
                seconds = time.perf_counter() - t0
            except StageFailure as exc:
                STAGE_CALLS.labels(client.name, "error").inc()
                visits.append(StageVisit(stage, client.name, time.perf_counter() - t0, error=str(exc)))
                if answer is not None:
                    return CascadeResult(visits, answer.stage, response=answer.data, degraded=str(exc))
                nxt = policy.best_after(stage)[0]
                if nxt is None:
                    raise
                stage = nxt
                continue
            STAGE_CALLS.labels(client.name, "ok").inc()
            STAGE_SECONDS.labels(client.name).observe(seconds)
            p_hat = self._judge(req, current, check)
            visit = StageVisit(stage, client.name, seconds, p_hat, current.usage, draft=check, draft_mode=mode, choice=current.choice)
            visits.append(visit)
            answer = current
            decision = policy.decide(stage, p_hat)
            if decision.stop or decision.next_stage is None:
                return CascadeResult(visits, stage, response=current.data)
            CASCADE_ESCALATIONS.labels(client.name, self.stages[decision.next_stage].name).inc()
            stage = decision.next_stage
        raise AssertionError("unreachable: the loop returns at the top stage")

    async def _verify(self, client: Stage, body: dict[str, Any], answer: StageAnswer, stage: int) -> tuple[DraftCheck | None, str]:
        """Verify the lower stage's answer (the draft) on ``client`` (stage ``stage``) when that keeps the answer's
        distribution and pays off; say what happened."""
        draft = answer.text
        pair = (answer.stage, stage)
        lower, upper = (self.settings.stages[s].tokenizer for s in pair)
        shared = lower is not None and lower == upper
        reason = why_not_verify(client, body, draft, shared) if self.settings.cascade.draft_reuse else "disabled"
        if reason is None and not self.acceptance.should_verify(pair):
            reason = "low-acceptance"
        if reason is None:
            sampled = body.get("temperature") != 0
            if sampled:
                try:
                    drafted = answer.with_logprobs()
                except StageBadResponse:  # the lower stage's logprobs do not decode: no proposal to sample against
                    drafted = answer.data
                entries = (drafted["choices"][0].get("logprobs") or {}).get("content") or []
                sampled_body = {**body, "temperature": body.get("temperature", 1.0) or 1.0}
                check = await verify_sampled(client, sampled_body, draft, entries) if entries else None
            else:
                check = await verify_draft(client, body, draft, answer.usage.completion_tokens or None)
            if check is not None:
                self.acceptance.observe(pair, check.accepted_tokens)
                DRAFT_TOKENS.labels(client.name, "accepted").inc(check.accepted_tokens)
                DRAFT_TOKENS.labels(client.name, "rejected").inc(max(check.draft_tokens - check.accepted_tokens, 0))
                return check, "verify-sampling" if sampled else "verify"
            reason = "misaligned"
        return None, f"regenerate:{reason}"
