"""The cascade engine: call a stage, read its answer, ask the predictor, apply the policy.

One request walks ``start -> (stop | escalate to the best next stage)`` until
the policy stops or the top allowed stage has answered. A failed stage does
not fail the request while there is somewhere to go: an answer already in
hand is returned (marked degraded), otherwise the next stage is tried.

A request with tools or a JSON response format walks only the stages that can
answer it (``StageConfig.tools`` / ``structured_outputs``): the policy, its
choice of the start stage included, runs on that sub-ladder, and the stages
left out are reported (``CascadeResult.skipped``). Each answer is also judged
by the request's rules (``router.validity``): an invalid one (a tool call that
does not parse, a schema it breaks, ...) counts as p̂ = 0 and is never returned
while a higher allowed stage exists; the top stage's invalid answer is returned
as it is, marked (the client validates). The predictor's features do not
include validity (that needs retraining on such traffic); the traffic log
records it for that.

A stage none of whose endpoints takes traffic (``router.stage_pool``: all
ejected) is left out the same way, at once and without a network call
(``SkippedStage`` with ``"unavailable"``); when that leaves nothing, the request
fails with a 503 in milliseconds. With ``cascade.load_aware`` each stage's cost
includes its expected queueing delay, read again at each decision.

A stage whose answers carry no logprobs (``stages[i].logprobs: false``, or one
that ignores the request for them) is judged from text features only: the
predictor's features are logprob statistics, which such an answer does not have,
so its p̂ is the prompt's prior for that stage (an empty answer is still 0). That
stage is not asked for logprobs at all (some providers refuse the request), and
the policy knows in advance that its answer will not move p̂.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from common.errors import APIError
from common.settings import Settings
from predictor.serving.features import DraftStats, PromptStats, answer_features, prefix_features
from predictor.serving.interface import Predictor
from router.apis import CHAT_API, CascadeAPI
from router.contracts import CascadeRequest, CascadeResult, SkippedStage, StageAnswer, StageVisit, TokenUsage
from router.draft import AcceptanceTracker, DraftCheck, token_limit, trim, verify_draft, why_not_verify
from router.early_exit import Written, write
from router.metrics import (
    ANSWERS_WITHOUT_LOGPROBS,
    CASCADE_ESCALATIONS,
    DRAFT_TOKENS,
    EARLY_EXITS,
    INVALID_ANSWERS,
    STAGE_CALLS,
    STAGE_SECONDS,
    STAGES_SKIPPED,
)
from router.policy import StoppingPolicy, loaded_costs, shrink
from router.pricing import Pricing
from router.speculative import verify_sampled
from router.stage import Stage, StageBadResponse, StageFailure, StageUnavailable
from router.stage_pool import queue_delay, stage_available
from router.traffic_log import TrafficLog
from router.validity import AnswerSpec


class Route:
    """The stopping policy of one request over the stages it may use, in ladder indices.

    The policy itself (``router.policy``) knows positions 0..n-1; when capabilities
    leave stages out, position k is ladder stage ``stages[k]``: a left-out stage is
    neither a place to start nor an option to escalate to, so the backward
    induction must not count on it.
    """

    __slots__ = ("observed", "policy", "refresh", "stages")

    def __init__(self, policy: StoppingPolicy, stages: Sequence[int], refresh: Callable[[], StoppingPolicy] | None = None) -> None:
        self.policy = policy
        self.stages = list(stages)
        self.refresh = refresh  # load-aware: the policy at the stages' current costs, rebuilt before each decision
        self.observed: tuple[int, list[float]] | None = None  # the latest answer's beliefs about the stages above it (positions)

    def observe(self, stage: int, beliefs: Sequence[float]) -> None:
        """``stage`` has answered; ``beliefs[k]`` is the predictor's P(ladder stage ``stage + 1 + k`` acceptable) given
        that answer. The stages of this route above ``stage`` take them in place of their prompt-only priors
        (kept across a load-aware rebuild of the policy)."""
        i = self.stages.index(stage)
        self.observed = (i, [beliefs[s - stage - 1] for s in self.stages[i + 1 :]])
        self.policy.observe(*self.observed)

    def prior(self, stage: int) -> float:
        """The prompt's prior for ``stage``: what an answer without logprobs is judged by."""
        return self.policy.priors[self.stages.index(stage)]

    def start(self, skip_by_prior: bool) -> int:
        return self.stages[self.policy.start(skip_by_prior)]

    def next_after(self, stage: int) -> int | None:
        """The best stage to escalate to after ``stage``; None at the top."""
        nxt, _ = self.policy.best_after(self.stages.index(stage))
        return None if nxt is None else self.stages[nxt]

    def decide(self, stage: int, p_hat: float) -> int | None:
        """The stage to escalate to, or None to stop at ``stage``."""
        self._refresh()
        decision = self.policy.decide(self.stages.index(stage), p_hat)
        return None if decision.stop or decision.next_stage is None else self.stages[decision.next_stage]

    def abort(self, stage: int, q: float, to_finish: float, strength: float, risk: tuple[float, float, float]) -> int | None:
        """Early exit: the stage to escalate to now, aborting ``stage`` mid-answer, or None to let it write on."""
        self._refresh()
        d = self.policy.judge_prefix(self.stages.index(stage), q, to_finish, strength, risk)
        return self.stages[d.next_stage] if d.abort and d.next_stage is not None else None

    def _refresh(self) -> None:
        if self.refresh is not None:
            self.policy = self.refresh()
            if self.observed is not None:
                self.policy.observe(*self.observed)


class CascadeEngine:
    def __init__(self, settings: Settings, stages: Sequence[Stage], predictor: Predictor) -> None:
        self.settings = settings
        self.stages = list(stages)
        self.predictor = predictor
        self.n_stages = len(settings.stages)
        self.pricing = Pricing.of(settings, predictor)
        configured = settings.cascade.top_logprobs
        if configured is not None and configured != predictor.top_k:
            raise ValueError(
                f"cascade.top_logprobs is {configured} but the predictor {predictor.name} was trained at top-k {predictor.top_k}: "
                "its features would be skewed; unset cascade.top_logprobs or retrain at that k"
            )
        self.top_k = predictor.top_k
        self.load_aware = settings.cascade.load_aware
        self.informative = [s.logprobs for s in settings.stages]  # an answer without logprobs is judged by its prior
        self.acceptance = AcceptanceTracker(settings.cascade.draft_min_accepted)
        self.traffic = TrafficLog(settings.predictor.log_path) if settings.predictor.log_path else None

    def route(self, prompt: PromptStats, lam: float, stages: Sequence[int], max_tokens: int | None = None) -> Route:
        """The stopping policy over ``stages`` (ascending ladder indices), with the prompt's priors and each stage's
        expected cost for this prompt (``router.pricing``: per-token prices price its length and the expected answer's)."""
        all_priors = self.predictor.priors(prompt, self.n_stages)
        priors = [all_priors[i] for i in stages]
        informative = [self.informative[i] for i in stages]
        strength = self.settings.cascade.prior_strength
        base = self.pricing.costs(stages, prompt.n_tokens, max_tokens)

        def policy() -> StoppingPolicy:
            return StoppingPolicy(self._costs(stages, base), priors, lam, strength=strength, informative=informative)

        return Route(policy(), stages, policy if self.load_aware else None)

    def _costs(self, stages: Sequence[int], costs: list[float]) -> list[float]:
        """The stages' costs, with their current expected queueing delays priced in when load-aware."""
        if not self.load_aware:
            return costs
        return loaded_costs(costs, [queue_delay(self.stages[i]) for i in stages], self.settings.cascade.load_cost_per_s)

    def ladder(self, spec: AnswerSpec, max_stage: int) -> tuple[list[int], tuple[SkippedStage, ...]]:
        """The stages up to ``max_stage`` that can answer a request of ``spec`` now, and the ones left out.

        ``APIError`` 400 when none can: the request asks for something no allowed stage does;
        ``StageUnavailable`` (503) when the capable ones have no endpoint taking traffic.
        """
        usable, skipped = self._capable(spec, max_stage)
        if all(stage_available(self.stages[i]) for i in usable):
            return usable, skipped
        up = [i for i in usable if stage_available(self.stages[i])]
        down = [SkippedStage(i, self.stages[i].name, "unavailable") for i in usable if i not in up]
        for s in down:
            STAGES_SKIPPED.labels(s.name, s.capability).inc()
        if not up:
            names = ", ".join(s.name for s in down)
            raise StageUnavailable(down[-1].name, f"no stage of model '{self.settings.cascade.model_name}' can take the request now: "
                                   f"no healthy endpoint at {names}")  # fmt: skip
        return up, tuple(sorted((*skipped, *down), key=lambda s: s.stage))

    def _capable(self, spec: AnswerSpec, max_stage: int) -> tuple[list[int], tuple[SkippedStage, ...]]:
        top = min(max_stage, len(self.stages) - 1)
        if not spec.needs:
            return list(range(top + 1)), ()
        usable: list[int] = []
        skipped: list[SkippedStage] = []
        for i in range(top + 1):
            capability = spec.missing(self.settings.stages[i])
            if capability is None:
                usable.append(i)
            else:
                skipped.append(SkippedStage(i, self.stages[i].name, capability))
        if not usable:
            capability = spec.missing(self.settings.stages[skipped[0].stage])  # (typed: a capability, not "unavailable")
            assert capability is not None
            param = spec.needs[capability]
            names = ", ".join(s.name for s in skipped if s.capability == capability)
            raise APIError(
                400,
                f"No stage of model '{self.settings.cascade.model_name}' up to '{self.stages[top].name}' can answer this request: "
                f"'{param}' needs a stage with {capability}: true, and none of {names} has it",
                param=param,
                code="no_capable_stage",
            )
        for s in skipped:
            STAGES_SKIPPED.labels(s.name, s.capability).inc()
        return usable, tuple(skipped)

    def _judge(self, req: CascadeRequest, answer: StageAnswer, check: DraftCheck | None, route: Route, api: CascadeAPI) -> float:
        """p̂ for a stage's answer: from the statistics read off the response bytes, else from the decoded logprobs;
        a judged answer also gives the route the predictor's beliefs about the stages above it (``beliefs_after``).

        An answer of a stage without logprobs (``stages[i].logprobs: false``: even if some arrive, the policy counted on
        none), or one with text but no logprobs, is judged from text features only: its prior. Read as features it
        would be an empty answer, which the predictor rightly calls unacceptable: that was the bug of escalating every
        answer of such a stage whatever it said.
        (A stage that reports logprobs reports them for tool-call tokens too, as vLLM and our CPU server do, so a
        tool-call answer without any from such a stage is left to the predictor, as before.)
        """
        stats = answer.reply.stats if answer.reply is not None else None
        if stats is None:
            stats = api.stats(answer.choice, self.top_k)
        if (stats.token_logprobs.size == 0 and api.text(answer.choice)) or (
            not self.informative[answer.stage] and api.answered(answer.choice)
        ):
            ANSWERS_WITHOUT_LOGPROBS.labels(self.stages[answer.stage].name).inc()
            return route.prior(answer.stage)
        draft = DraftStats(check.accepted_tokens, check.draft_tokens) if check else None
        features = answer_features(req.prompt, stats, answer.stage, draft)
        # what this answer says about the stages above it replaces their prompt-only priors in the route
        route.observe(answer.stage, self.predictor.beliefs_after(answer.stage, features, req.prompt, self.n_stages))
        risk = self.settings.cascade.risk
        return shrink(self.predictor.predict(features), self.predictor.evidence, risk.alpha, risk.beta)

    async def run(self, req: CascadeRequest, api: CascadeAPI = CHAT_API) -> CascadeResult:
        """Walk the ladder for ``req``, whose body is in ``api``'s dialect (chat, or ``router.apis.COMPLETIONS_API``)."""
        if req.spec is None:
            req.spec = AnswerSpec.of(req.body)
        result = await self._run(req, req.spec, api)
        if self.traffic is not None:
            self._log(self.traffic, req, req.spec, result, api)
        return result

    @staticmethod
    def _log(traffic: TrafficLog, req: CascadeRequest, spec: AnswerSpec, result: CascadeResult, api: CascadeAPI) -> None:
        """One row per request; each answer's validity is recorded (None: not judged) so that a predictor
        retrained on this traffic can learn from it."""
        judged = spec.rules is not None
        visits = [
            {"stage": v.stage, "name": v.name, "choice": None if v.choice is None else api.log_choice(v.choice),
             "usage": v.usage.to_dict() if v.usage else None, "seconds": v.seconds,
             "draft": {"accepted": v.draft.accepted_tokens, "tokens": v.draft.draft_tokens, "seconds": round(v.draft.seconds, 4)}
                      if v.draft else None,
             "valid": (v.invalid is None) if judged and v.choice is not None else None, "invalid": v.invalid}
            for v in result.visits if v.error is None
        ]  # fmt: skip
        if any(v["choice"] is not None for v in visits):
            traffic.record(api.prompt_texts(req.body), visits, kind=api.log_kind(spec.kind))

    async def _run(self, req: CascadeRequest, spec: AnswerSpec, api: CascadeAPI) -> CascadeResult:
        stages, skipped = self.ladder(spec, req.max_stage)
        route = self.route(req.prompt, req.lam, stages, token_limit(req.body))
        body = api.asking(req.body, self.top_k)
        plain = api.plain(req.body)  # for stages without logprobs
        stage: int | None = route.start(self.settings.cascade.skip_by_prior)
        visits: list[StageVisit] = []
        answer: StageAnswer | None = None  # the latest stage answer in hand (its stage's draft for the next)
        answer_invalid = False
        # the logprobs of a stage answer are decoded only if someone will read them (see StageReply)
        decode_logprobs = api.client_logprobs(req.body) or self.traffic is not None
        io = api.draft
        prefix: StageAnswer | None = None  # the aborted stage's prefix (early exit): the next stage's draft, never an answer
        early = self.settings.cascade.early_exit and bool(self.predictor.checkpoints) and api is CHAT_API and not spec.needs
        while stage is not None:
            client = self.stages[stage]
            stage_body = body if self.informative[stage] else plain
            after = route.next_after(stage)
            t0 = time.perf_counter()
            check: DraftCheck | None = None
            mode: str | None = None
            try:
                draft_from = prefix or answer
                if draft_from is not None:
                    check, mode = await self._verify(client, body, draft_from, stage, api)
                prefix = None
                if req.stream and after is None and not (check and trim(check, token_limit(body))):
                    events = await api.stream(client, io.continuation(body, check) if check else stage_body)
                    visits.append(StageVisit(stage, client.name, time.perf_counter() - t0, draft=check, draft_mode=mode))
                    STAGE_CALLS.labels(client.name, "ok").inc()
                    return CascadeResult(visits, stage, events=events, prefix=check, skipped=skipped)
                if check is not None:
                    done = trim(check, token_limit(body))
                    current = StageAnswer(stage, io.merge(check, None if done else await io.fetch(client, io.continuation(body, check))))
                elif early and after is not None and self.informative[stage] and spec.rules is None:
                    written, to, q = await self._write(client, stage_body, stage, req, route)
                    if written.aborted_at is not None and to is not None:
                        STAGE_CALLS.labels(client.name, "ok").inc()
                        EARLY_EXITS.labels(client.name, str(written.aborted_at)).inc()
                        usage = TokenUsage(req.prompt.n_tokens, written.completion_tokens)
                        visits.append(StageVisit(stage, client.name, time.perf_counter() - t0, q, usage,
                                                 aborted_at=written.aborted_at))  # fmt: skip
                        prefix = StageAnswer(stage, written.prefix())
                        CASCADE_ESCALATIONS.labels(client.name, self.stages[to].name).inc()
                        stage = to
                        continue
                    current = StageAnswer(stage, written.completion())
                else:
                    reply = await api.reply(client, stage_body, self.top_k)
                    if decode_logprobs:
                        reply.with_logprobs()
                    current = StageAnswer(stage, reply.data, reply)
                seconds = time.perf_counter() - t0
            except StageFailure as exc:
                STAGE_CALLS.labels(client.name, "error").inc()
                visits.append(StageVisit(stage, client.name, time.perf_counter() - t0, error=str(exc)))
                if answer is not None and not (answer_invalid and after is not None):
                    return CascadeResult(visits, answer.stage, response=answer.data, degraded=str(exc), skipped=skipped)
                if after is None:
                    raise
                stage = after  # nothing in hand, or only an invalid answer: try the next stage
                continue
            STAGE_CALLS.labels(client.name, "ok").inc()
            STAGE_SECONDS.labels(client.name).observe(seconds)
            invalid = spec.check(current.choice)
            if invalid is not None:
                INVALID_ANSWERS.labels(client.name, invalid).inc()
            # an invalid answer is unacceptable whatever its logprobs say: p̂ = 0, and the predictor is not asked
            p_hat = 0.0 if invalid is not None else self._judge(req, current, check, route, api)
            visit = StageVisit(stage, client.name, seconds, p_hat, current.usage, draft=check, draft_mode=mode, choice=current.choice,
                               invalid=invalid)  # fmt: skip
            visits.append(visit)
            answer, answer_invalid = current, invalid is not None
            # never return an invalid answer while a higher allowed stage exists, whatever λ makes of p̂ = 0
            nxt = after if invalid is not None else route.decide(stage, p_hat)
            if nxt is None:
                return CascadeResult(visits, stage, response=current.data, skipped=skipped)
            CASCADE_ESCALATIONS.labels(client.name, self.stages[nxt].name).inc()
            stage = nxt
        raise AssertionError("unreachable: the loop returns at the top stage")

    async def _write(
        self, client: Stage, body: dict[str, Any], stage: int, req: CascadeRequest, route: Route
    ) -> tuple[Written, int | None, float | None]:
        """Stream ``stage``'s answer, judging it at the predictor's checkpoints (``router.early_exit``): what it wrote,
        the stage to escalate to when it was aborted, and the prefix model's estimate at the last checkpoint judged."""
        risk = self.settings.cascade.risk
        shrinkage = (self.predictor.evidence, risk.alpha, risk.beta)
        limit = token_limit(req.body)
        to: int | None = None
        last_q: float | None = None

        def judge(t: int, entries: list[dict[str, Any]]) -> bool:
            nonlocal to, last_q
            if limit is not None and t >= limit:
                return False  # the answer is cut here anyway: nothing left to save
            k = self.predictor.checkpoints.index(t)
            last_q = self.predictor.predict_prefix(prefix_features(req.prompt, entries, stage, self.top_k))
            if last_q is None:
                return False
            to = route.abort(stage, last_q, self.pricing.to_finish(stage, t, limit), self.predictor.prefix_strengths[k], shrinkage)
            return to is not None

        written = await write(client, body, self.predictor.checkpoints, judge)
        return written, to, last_q

    async def _verify(
        self, client: Stage, body: dict[str, Any], answer: StageAnswer, stage: int, api: CascadeAPI
    ) -> tuple[DraftCheck | None, str]:
        """Verify the lower stage's answer (the draft) on ``client`` (stage ``stage``) when that keeps the answer's
        distribution and pays off; say what happened."""
        draft = api.text(answer.choice)
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
                entries = api.entries(drafted["choices"][0])
                sampled_body = {**body, "temperature": body.get("temperature", 1.0) or 1.0}
                check = await verify_sampled(client, sampled_body, draft, entries, api.draft) if entries else None
            else:
                check = await verify_draft(client, body, draft, answer.usage.completion_tokens or None, api.draft)
            if check is not None:
                self.acceptance.observe(pair, check.accepted_tokens)
                DRAFT_TOKENS.labels(client.name, "accepted").inc(check.accepted_tokens)
                DRAFT_TOKENS.labels(client.name, "rejected").inc(max(check.draft_tokens - check.accepted_tokens, 0))
                return check, "verify-sampling" if sampled else "verify"
            reason = "misaligned"
        return None, f"regenerate:{reason}"
