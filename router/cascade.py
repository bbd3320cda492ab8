"""The cascade engine: call a stage, read its answer, ask the predictor, apply the policy.

One request walks ``start -> (stop | escalate to the best next stage)`` until
the policy stops or the top allowed stage has answered. A failed stage does
not fail the request while there is somewhere to go: an answer already in
hand is returned (marked degraded), otherwise the next stage is tried.

``CascadeEngine._run`` is that walk as a short loop over named steps, each a small
method that says why it does what it does: where to start (``_start``, skip by
prior); what a stage answers (``_call_or_verify``: called from scratch, or the
previous stage's draft verified and continued, or written while it is judged at
checkpoints, ``_write``); what the answer is worth (``_judge``: validity, then the
predictor's p̂); stop or escalate (``_decide``: the stopping rule); and what a
failed stage leads to (``_fall_back``). The steps share one ``Walk`` per request.

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

import random
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from common.errors import APIError
from common.settings import Settings
from predictor.serving.features import DraftStats, PromptStats, answer_features, prefix_features
from predictor.serving.interface import Predictor
from predictor.serving.labels import SHORT_ANSWER_CHARS
from router.contracts import CascadeRequest, CascadeResult, SkippedStage, StageAnswer, StageVisit, TokenUsage
from router.dialect import CascadeDialect
from router.draft import AcceptanceTracker, DraftCheck, token_limit, trim, verify_draft, why_not_verify
from router.early_exit import Written, write
from router.labels import FreeLabel, record_labels
from router.metrics import (
    ANSWERS_WITHOUT_LOGPROBS,
    CASCADE_ESCALATIONS,
    CASCADE_TOURS,
    DRAFT_TOKENS,
    EARLY_EXITS,
    INVALID_ANSWERS,
    MEASURED_PRICES,
    STAGE_CALLS,
    STAGE_SECONDS,
    STAGES_SKIPPED,
)
from router.policy import StoppingPolicy, loaded_costs, shrink
from router.pricing import Pricing
from router.shadow import ShadowChecks
from router.speculative import verify_sampled
from router.stage import Stage, StageBadResponse, StageFailure, StageUnavailable
from router.stage_pool import queue_delay, stage_available
from router.stream_tap import StreamedAnswer, tap
from router.traffic_log import TrafficLog
from router.validity import AnswerSpec, capability_setting

HELD_STREAM_SHARE = 0.05  # a stream its client held longer than this share of its streaming time prices the client, not the stage


class Route:
    """The stopping policy of one request over the stages it may use, in ladder indices.

    The policy itself (``router.policy``) knows positions 0..n-1; when capabilities
    leave stages out, position k is ladder stage ``stages[k]``: a left-out stage is
    neither a place to start nor an option to escalate to, so the backward
    induction must not count on it.
    """

    __slots__ = ("observed", "policy", "refresh", "stages", "tour")

    def __init__(self, policy: StoppingPolicy, stages: Sequence[int], refresh: Callable[[], StoppingPolicy] | None = None) -> None:
        self.policy = policy
        self.stages = list(stages)
        self.refresh = refresh  # load-aware: the policy at the stages' current costs, rebuilt before each decision
        self.observed: tuple[int, list[float]] | None = None  # the latest answer's beliefs about the stages above it (positions)
        self.tour = False  # exploration (cascade.explore): every stage in order, the top's answer returned

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
        return self.stages[0 if self.tour else self.policy.start(skip_by_prior)]

    def next_after(self, stage: int) -> int | None:
        """The best stage to escalate to after ``stage`` (on a tour, the next one); None at the top."""
        i = self.stages.index(stage)
        if self.tour:
            return self.stages[i + 1] if i + 1 < len(self.stages) else None
        nxt, _ = self.policy.best_after(i)
        return None if nxt is None else self.stages[nxt]

    def decide(self, stage: int, p_hat: float) -> int | None:
        """The stage to escalate to, or None to stop at ``stage`` (a tour goes on to the top)."""
        if self.tour:
            return self.next_after(stage)
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


class Walk:
    """One request's walk up the ladder: what the engine's steps share, in place of the loop's locals.

    One slotted object per request (the steps are methods that read and update it): what is fixed for the request
    (its route, the bodies sent, whether stages are judged while they write), the visits so far, the answer in hand,
    the draft for the next stage, and the current visit's verification of that draft.
    """

    __slots__ = ("answer", "answer_invalid", "api", "body", "check", "decode_logprobs", "early", "limit", "mode", "plain", "prefix",
                 "req", "route", "skipped", "spec", "visits")  # fmt: skip

    def __init__(
        self,
        req: CascadeRequest,
        spec: AnswerSpec,
        api: CascadeDialect,
        route: Route,
        skipped: tuple[SkippedStage, ...],
        body: dict[str, Any],
        plain: dict[str, Any],
        decode_logprobs: bool,
        early: bool,
        limit: int | None,
    ) -> None:
        self.req = req
        self.spec = spec
        self.api = api
        self.route = route
        self.skipped = skipped
        self.body = body  # asks for the predictor's logprobs
        self.plain = plain  # for stages without logprobs (some providers refuse the request; their answers would not move p̂)
        self.decode_logprobs = decode_logprobs  # a reply's deferred logprobs are decoded (the client or the traffic log reads them)
        self.early = early  # the stages below the top are judged while they write (early exit)
        self.limit = limit  # the client's token limit
        self.visits: list[StageVisit] = []
        self.answer: StageAnswer | None = None  # the latest whole answer in hand (its stage's draft for the next)
        self.answer_invalid = False
        self.prefix: StageAnswer | None = None  # an aborted stage's prefix (early exit): the next stage's draft, never an answer
        self.check: DraftCheck | None = None  # this visit's verification of the draft
        self.mode: str | None = None  # this visit's draft mode ("verify", "verify-sampling", "regenerate:<reason>")


class CascadeEngine:
    def __init__(self, settings: Settings, stages: Sequence[Stage], predictor: Predictor) -> None:
        self.settings = settings
        self.stages = list(stages)
        self.predictor = predictor
        self.n_stages = len(settings.stages)
        self.pricing = Pricing.of(settings, predictor)  # measured seconds (cascade.measured_prices): fed by _measure
        if settings.cascade.prices_measured:
            MEASURED_PRICES.track(self.pricing)
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
        self.shadow = ShadowChecks(settings.cascade.shadow, self.stages)
        explore = settings.cascade.explore
        self.explore_rates = (explore.rate, explore.rate if explore.untrained_rate is None else explore.untrained_rate)
        # whether cascade.default_target has a λ in the table of the model in service (router.api wires the lookup);
        # until it has, a new ladder is still learning its λ: requests tour at the untrained rate
        self.target_resolved: Callable[[], bool] = lambda: True
        self._rng = random.Random()

    @property
    def untrained(self) -> bool:
        """Whether the predictor in service is a guess, not fitted on this ladder (the baseline): the rule runs safe."""
        return not self.predictor.trained

    @property
    def learning(self) -> bool:
        """Whether the ladder is still being learned: the baseline serves, or the model in service has no λ for
        ``cascade.default_target`` yet (no table, or one from too few tours to resolve it: ``training learn``).
        Requests tour at ``explore.untrained_rate`` meanwhile, returning the top stage's answer."""
        return self.untrained or not self.target_resolved()

    @property
    def explore_rate(self) -> float:
        """The tour rate in force now (``cascade.explore``)."""
        return self.explore_rates[self.learning]

    def draw_tour(self, req: CascadeRequest, stages: Sequence[int]) -> bool:
        """Whether ``req`` tours ``stages`` (``cascade.explore``): drawn at the rate for the model in service, where
        its labels are kept (a traffic log, a tenant not excluded from learning) and every lower answer of the tour
        can be verified by the stage above it (more than one stage; ``draft.why_not_verify``: no tools, JSON or
        ``stop``, stages that score drafts, a shared tokenizer for a sampled request): a tour that cannot label
        would pay every stage for nothing."""
        rate = self.explore_rate
        if not (req.learn and rate > 0 and self.traffic is not None and len(stages) > 1 and self.settings.cascade.draft_reuse):
            return False
        for lower, upper in zip(stages, stages[1:], strict=False):
            if why_not_verify(self.stages[upper], req.body, "draft", self._shared_tokenizer(lower, upper)) is not None:
                return False
        return self._rng.random() < rate

    def _shared_tokenizer(self, lower: int, upper: int) -> bool:
        a, b = self.settings.stages[lower].tokenizer, self.settings.stages[upper].tokenizer
        return a is not None and a == b

    def effective_lambda(self, lam: float) -> float:
        """The λ the rule uses for a request asking ``lam``: scaled by ``cascade.untrained_lambda_scale`` while the
        predictor is untrained, so that a new ladder escalates more until a learned model is promoted."""
        return lam * self.settings.cascade.untrained_lambda_scale if self.untrained else lam

    def use_predictor(self, predictor: Predictor) -> None:
        """Serve with ``predictor`` from now on (``router.model_reload``; trained at this engine's top-k): its learned
        answer lengths replace the old model's in the prices, measured prices keep what they measured."""
        if predictor.top_k != self.top_k:
            raise ValueError(f"predictor {predictor.name} was trained at top-k {predictor.top_k}, this engine asks for {self.top_k}")
        self.pricing.lengths = Pricing.of(self.settings, predictor).lengths
        self.predictor = predictor

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
                f"'{param}' needs a stage with {capability_setting(capability)}, and none of {names} has it",
                param=param,
                code="no_capable_stage",
            )
        for s in skipped:
            STAGES_SKIPPED.labels(s.name, s.capability).inc()
        return usable, tuple(skipped)

    async def run(self, req: CascadeRequest, api: CascadeDialect) -> CascadeResult:
        """Walk the ladder for ``req``, whose body is in ``api``'s dialect (``router.openai.chat.dialect.CHAT_DIALECT``,
        or ``router.openai.completions.dialect.COMPLETIONS_DIALECT``)."""
        if req.spec is None:
            req.spec = AnswerSpec.of(req.body)
        result = await self._run(req, req.spec, api)
        shadow = self.shadow.draw(result.final_stage, self.untrained) if req.learn and api.name == "chat" else 0.0
        if result.events is not None:  # labelled, kept and priced once its whole answer has gone out
            done = partial(self._streamed, req, req.spec, result, api, shadow, time.perf_counter())
            result.events = tap(result.events, done, self._reads_stream(req, result, api, shadow))
            return result
        self._keep(req, req.spec, result, api, shadow)
        return result

    def _reads_stream(self, req: CascadeRequest, result: CascadeResult, api: CascadeDialect, shadow: float) -> bool:
        """Whether anything will read a streamed answer's text once it has gone out (else the tap reads only its usage,
        for measured prices and the realised cost: decoding a chunk with logprobs costs ~4 µs): the traffic log (a
        tenant that learns), a ``shadow`` check drawn for it, or the label of the answer it verified where that is
        short (``predictor.serving.labels``: then only the verifier's own text tells)."""
        if shadow or (req.learn and self.traffic is not None):
            return True
        final = result.final_visit
        if final is None or final.draft is None:
            return False
        verified = next((v.choice for v in reversed(result.visits[:-1]) if v.choice is not None and v.error is None), None)
        return verified is not None and len(api.text(verified).strip()) < SHORT_ANSWER_CHARS

    def _keep(self, req: CascadeRequest, spec: AnswerSpec, result: CascadeResult, api: CascadeDialect, shadow: float) -> None:
        """What a finished run leaves behind: its labels (``router.labels``), and, unless its tenant is excluded from
        learning, its row in the traffic log and the ``shadow`` check drawn for its answer (its rate; 0: none)."""
        labels = record_labels(result.visits, api.text)
        if req.learn:
            if self.traffic is not None:
                self._log(self.traffic, req, spec, result, api, labels)
            if shadow:
                self._shadow(req, spec, result, api, shadow)

    def _streamed(
        self,
        req: CascadeRequest,
        spec: AnswerSpec,
        result: CascadeResult,
        api: CascadeDialect,
        shadow: float,
        opened: float,
        answer: StreamedAnswer | None,
    ) -> None:
        """A streamed run's answer has gone out (``router.stream_tap``; its stream was handed over at ``opened``): its
        visit gets the whole answer, its usage and its whole time, so that it labels the stage below as a whole answer
        does, a streamed tour is logged whole, and the stage's prices in seconds are measured on streamed answers too
        (``_measure``); then ``_keep``, and what the serving layer asked to hear (``CascadeResult.ended``: the realised
        cost). A stream that did not end leaves the visit as it was: no answer of its own."""
        visit = result.final_visit
        if visit is not None and answer is not None:
            streamed = time.perf_counter() - opened
            visit.seconds += streamed
            usage = answer.usage_after(result.prefix)
            if usage is not None:
                visit.usage = TokenUsage.of(usage)
                if answer.held_s <= HELD_STREAM_SHARE * streamed:  # else the client's pace, not the stage's
                    self._measure(visit.stage, visit.seconds, visit.usage)
            data = answer.response(api.name)  # None where only the usage was read (``_reads_stream``)
            if data is not None:
                if result.prefix is not None:  # after the verified prefix, as a verified answer's continuation is
                    data = api.draft.merge(result.prefix, data)
                choice = data["choices"][0]
                visit.choice, visit.invalid = choice, spec.check(choice)
        self._keep(req, spec, result, api, shadow)
        for ended in result.ended:
            ended()

    def _shadow(self, req: CascadeRequest, spec: AnswerSpec, result: CascadeResult, api: CascadeDialect, rate: float) -> None:
        """Start the shadow check drawn at ``rate`` (``ShadowChecks.draw``, in ``run``: before a stream goes out, so that
        the tap reads a streamed answer whole only where one will check it) of an answer returned from a lower stage
        (``router.shadow``); with a traffic log, its label is logged as a row of its own when it is done (the
        request's row leaves that answer unlabelled). A streamed answer is checked as a whole one is, once its stream
        has ended whole; one that did not end has no answer to check."""
        final = result.final_stage
        visit = result.final_visit
        if visit is None or visit.choice is None or visit.invalid is not None:  # no whole valid answer to check
            self.shadow.skip(final, "unverifiable")
            return
        traffic, on_label = self.traffic, None
        if traffic is not None:
            texts, kind, judged = api.prompt_texts(req.body), api.log_kind(spec.kind), spec.rules is not None

            def on_label(label: FreeLabel) -> None:
                traffic.record(texts, [self._visit_row(visit, api, judged, label)], kind=kind)

        self.shadow.start(final, req.body, api.text(visit.choice), on_label, rate)

    @staticmethod
    def _visit_row(v: StageVisit, api: CascadeDialect, judged: bool, label: FreeLabel | None = None) -> dict[str, Any]:
        """A visit as the traffic log takes it (``TrafficLog.record``), with its verification or shadow ``label``'s
        agreement and whether the verifier's answer was the same text (a shadow check's: its weight and verifier too)."""
        row = {"stage": v.stage, "name": v.name, "choice": None if v.choice is None else api.log_choice(v.choice),
               "usage": v.usage.to_dict() if v.usage else None, "seconds": v.seconds,
               "draft": {"accepted": v.draft.accepted_tokens, "tokens": v.draft.draft_tokens, "seconds": round(v.draft.seconds, 4)}
                        if v.draft else None,
               "valid": (v.invalid is None) if judged and v.choice is not None else None, "invalid": v.invalid,
               "agreement": label.agreement if label is not None else None,
               "same": label.same if label is not None else None}  # fmt: skip
        if label is not None and label.source == "shadow":
            row.update(weight=label.weight, verifier=label.verifier)
        return row

    @classmethod
    def _log(
        cls,
        traffic: TrafficLog,
        req: CascadeRequest,
        spec: AnswerSpec,
        result: CascadeResult,
        api: CascadeDialect,
        labels: list[FreeLabel],
    ) -> None:
        """One row per request; each answer's validity is recorded (None: not judged) so that a predictor
        retrained on this traffic can learn from it, and its verification label's agreement (``router.labels``)."""
        verified = {label.stage: label for label in labels if label.source == "verification"}
        visits = [cls._visit_row(v, api, spec.rules is not None, verified.get(v.stage)) for v in result.visits if v.error is None]
        if any(v["choice"] is not None for v in visits):
            traffic.record(api.prompt_texts(req.body), visits, kind=api.log_kind(spec.kind), tour=result.tour)

    # -- the walk, step by step ---------------------------------------------------------------------------------
    #
    # ``_run`` is the loop; each step below is one method: where to start (``_start``), what a stage answers
    # (``_call_or_verify``: a call from scratch, a verified draft continued, or a stage judged while it writes,
    # ``_write``), what that answer is worth (``_judge``), stop or escalate (``_decide``), and what a failed
    # stage leads to (``_fall_back``). They share one ``Walk``.

    def _walk(self, req: CascadeRequest, spec: AnswerSpec, api: CascadeDialect) -> Walk:
        """What every step of this request's walk reads: the stages it may use (``ladder``), its route, the bodies
        sent. Built once, so that nothing per request is recomputed per stage. A request drawn for a tour
        (``draw_tour``) asks every stage in order, whole answers (no early exit), and returns the top's."""
        stages, skipped = self.ladder(spec, req.max_stage)
        limit = token_limit(req.body)
        route = self.route(req.prompt, self.effective_lambda(req.lam), stages, limit)
        tour = route.tour = self.draw_tour(req, stages)
        if tour:
            CASCADE_TOURS.inc()
        body = api.asking(req.body, self.top_k)
        plain = api.plain(req.body)
        # the logprobs of a stage answer are decoded only if someone will read them (see StageReply)
        decode_logprobs = api.client_logprobs(req.body) or self.traffic is not None
        # tools, JSON and rules are judged on the whole answer; so are completions
        early = (self.settings.cascade.early_exit and bool(self.predictor.checkpoints) and api.early_exit and not spec.needs
                 and spec.rules is None and not tour)  # fmt: skip
        return Walk(req, spec, api, route, skipped, body, plain, decode_logprobs, early, limit)

    async def _run(self, req: CascadeRequest, spec: AnswerSpec, api: CascadeDialect) -> CascadeResult:
        """Start, then at each stage: its answer (called, or its draft verified and continued, or judged while it
        writes), judged, then stop or escalate; a failed stage falls back. The top stage always stops."""
        walk = self._walk(req, spec, api)
        stage = self._start(walk.route)
        while True:
            after = walk.route.next_after(stage)  # where an escalation from here goes; None at the top
            t0 = time.perf_counter()
            try:
                got = await self._call_or_verify(walk, stage, after, t0)
            except StageFailure as exc:
                got = self._fall_back(walk, stage, after, exc, t0)
            if isinstance(got, StageAnswer):  # a whole answer: judge it, then stop here or escalate
                seconds = time.perf_counter() - t0
                p_hat, invalid = self._judge(walk, got)
                self._record(walk, got, seconds, p_hat, invalid)
                nxt = self._decide(walk.route, stage, after, p_hat, invalid)
                if nxt is None:
                    return CascadeResult(walk.visits, stage, response=got.data, skipped=walk.skipped, tour=walk.route.tour)
                stage = nxt
            elif isinstance(got, CascadeResult):  # streamed from the top, or an answer in hand after a failure
                return got
            else:  # aborted early, or failed with nothing to return: go on there
                stage = got

    def _start(self, route: Route) -> int:
        """Where to start: the same backward induction run on the prompt's priors alone picks the stage with the
        lowest expected total, so a prompt the small stages are unlikely to answer well skips them and does not pay
        for their answers (``cascade.skip_by_prior``; off: the lowest stage the request may use)."""
        return route.start(self.settings.cascade.skip_by_prior)

    async def _call_or_verify(self, walk: Walk, stage: int, after: int | None, t0: float) -> StageAnswer | CascadeResult | int:
        """What ``stage`` answers: a whole answer to judge; or, for a streamed request at the top, the stream itself
        (a ``CascadeResult``: the top stage must stop, so there is nothing left to judge before the client reads it);
        or the stage to escalate to when it was aborted while writing (early exit).

        With a draft in hand (the previous stage's answer, or an aborted stage's prefix), the stage verifies it and
        continues after the prefix it agrees with instead of starting from scratch: that is where escalating saves
        time. A draft it cannot or should not verify (``_verify`` says why) leaves it to answer from scratch.
        Raises ``StageFailure`` (see ``_fall_back``).
        """
        client = self.stages[stage]
        walk.check = walk.mode = None
        draft = walk.prefix or walk.answer
        if draft is not None:
            walk.check, walk.mode = await self._verify(client, walk.body, draft, stage, walk.api, walk.route.tour)
        walk.prefix = None  # a prefix is a draft once: never an answer, never verified twice
        check = walk.check
        done = check is not None and trim(check, walk.limit)  # the kept prefix already fills the client's token limit
        if walk.req.stream and after is None and not done:
            return await self._stream(walk, stage, t0)
        if check is not None:
            return await self._continue(walk, stage, check, done)
        if walk.early and after is not None and self.informative[stage]:
            written, to, q = await self._write(walk, stage)
            if written.aborted_at is not None and to is not None:
                return self._exit_early(walk, stage, written, to, q, t0)
            return StageAnswer(stage, written.completion())
        # from scratch, for the whole answer (inline: this is the common path, one coroutine fewer per stage)
        reply = await walk.api.reply(client, walk.body if self.informative[stage] else walk.plain, self.top_k)
        if walk.decode_logprobs:
            reply.with_logprobs()
        return StageAnswer(stage, reply.data, reply)

    async def _continue(self, walk: Walk, stage: int, check: DraftCheck, done: bool) -> StageAnswer:
        """``stage``'s answer after it verified the draft: the prefix it kept, then what it generates after it (nothing
        when the prefix already ends the answer). Its tokens are the same the stage would have written alone."""
        io = walk.api.draft
        rest = None if done else await io.fetch(self.stages[stage], io.continuation(walk.body, check))
        return StageAnswer(stage, io.merge(check, rest))

    async def _stream(self, walk: Walk, stage: int, t0: float) -> CascadeResult:
        """Relay the top stage's stream to the client (after the draft prefix it kept, if any): it must stop, so
        waiting for its whole answer would only delay the client's first token."""
        client, check = self.stages[stage], walk.check
        body = walk.body if self.informative[stage] else walk.plain
        if check is not None:
            body = walk.api.draft.continuation(walk.body, check)
        events = await walk.api.stream(client, body)
        walk.visits.append(StageVisit(stage, client.name, time.perf_counter() - t0, draft=check, draft_mode=walk.mode))
        STAGE_CALLS.labels(client.name, "ok").inc()
        return CascadeResult(walk.visits, stage, events=events, prefix=check, skipped=walk.skipped, tour=walk.route.tour)

    async def _write(self, walk: Walk, stage: int) -> tuple[Written, int | None, float | None]:
        """Stream ``stage``'s answer, judging it at the predictor's checkpoints (``router.early_exit``): a lower stage
        going wrong would otherwise cost its whole answer before anyone reads it. Returns what it wrote, the stage to
        escalate to when it was aborted, and the prefix model's estimate at the last checkpoint judged."""
        risk = self.settings.cascade.risk
        shrinkage = (self.predictor.evidence, risk.alpha, risk.beta)
        limit, prompt, route = walk.limit, walk.req.prompt, walk.route
        to: int | None = None
        last_q: float | None = None

        def judge(t: int, entries: list[dict[str, Any]]) -> bool:
            nonlocal to, last_q
            if limit is not None and t >= limit:
                return False  # the answer is cut here anyway: nothing left to save
            k = self.predictor.checkpoints.index(t)
            last_q = self.predictor.predict_prefix(prefix_features(prompt, entries, stage, self.top_k))
            if last_q is None:
                return False
            to = route.abort(stage, last_q, self.pricing.to_finish(stage, t, limit), self.predictor.prefix_strengths[k], shrinkage)
            return to is not None

        written = await write(self.stages[stage], walk.body, self.predictor.checkpoints, judge)
        return written, to, last_q

    def _exit_early(self, walk: Walk, stage: int, written: Written, to: int, q: float | None, t0: float) -> int:
        """``stage`` was aborted mid-answer: its visit is charged every token it sent, and what it wrote becomes the
        next stage's draft (never an answer, even if that stage fails). Returns the stage escalated to."""
        name = self.stages[stage].name
        STAGE_CALLS.labels(name, "ok").inc()
        EARLY_EXITS.labels(name, str(written.aborted_at)).inc()
        usage = TokenUsage(walk.req.prompt.n_tokens, written.completion_tokens)
        seconds = time.perf_counter() - t0
        walk.visits.append(StageVisit(stage, name, seconds, q, usage, aborted_at=written.aborted_at))
        self._measure(stage, seconds, usage)
        walk.prefix = StageAnswer(stage, written.prefix())
        CASCADE_ESCALATIONS.labels(name, self.stages[to].name).inc()
        return to

    def _judge(self, walk: Walk, answer: StageAnswer) -> tuple[float, str | None]:
        """p̂ for a whole answer, and why it breaks the request's rules (None: it does not, or there are none).

        Validity first: an invalid answer (a tool call that does not parse, a schema it breaks) is unacceptable
        whatever its logprobs say, so its p̂ is 0 and the predictor is not asked (``_predict`` for the others).
        """
        invalid = walk.spec.check(answer.choice)
        if invalid is not None:
            INVALID_ANSWERS.labels(self.stages[answer.stage].name, invalid).inc()
            return 0.0, invalid
        return self._predict(walk.req, answer, walk.check, walk.route, walk.api), None

    def _predict(self, req: CascadeRequest, answer: StageAnswer, check: DraftCheck | None, route: Route, api: CascadeDialect) -> float:
        """The predictor's p̂ for a valid answer: from the statistics read off the response bytes, else from the decoded logprobs;
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

    def _record(self, walk: Walk, answer: StageAnswer, seconds: float, p_hat: float, invalid: str | None) -> None:
        """Count the judged visit (its time, usage, draft and verdict) and keep its answer in hand: the draft of the
        next stage, and what a failure above returns."""
        name = self.stages[answer.stage].name
        STAGE_CALLS.labels(name, "ok").inc()
        STAGE_SECONDS.labels(name).observe(seconds)
        usage = answer.usage
        walk.visits.append(StageVisit(answer.stage, name, seconds, p_hat, usage, draft=walk.check, draft_mode=walk.mode,
                                      choice=answer.choice, invalid=invalid))  # fmt: skip
        self._measure(answer.stage, seconds, usage)
        walk.answer, walk.answer_invalid = answer, invalid is not None

    def _measure(self, stage: int, seconds: float, usage: TokenUsage) -> None:
        """A completed visit is a measurement of its stage's prices in seconds (``router.measured_prices``; a no-op
        for configured prices): its wall time for the tokens it read and wrote, as the stage reported them (a
        verified draft's visit: the verification's prompt tokens, the draft included, and the kept and continued
        tokens), or, for a stage aborted while writing, the tokens it wrote before the abort, or, for a streamed
        answer, its whole stream (``_streamed``: to its last chunk), unless the client held it for more than
        ``HELD_STREAM_SHARE`` of that time (a client that reads slower than the stage writes would make the stage look
        slower). Failed visits and streams that did not end are not measurements."""
        self.pricing.observe(stage, seconds, usage.prompt_tokens, usage.completion_tokens)

    def _decide(self, route: Route, stage: int, after: int | None, p_hat: float, invalid: str | None) -> int | None:
        """The stage to escalate to, or None to stop at ``stage``: the stopping rule on p̂ (``Route.decide``: stop when
        λ(1 - p̂) is no more than the best next stage's value). An invalid answer is never returned while a higher
        allowed stage (``after``) exists, whatever λ makes of p̂ = 0; at the top there is nowhere to go: it stops."""
        nxt = after if invalid is not None else route.decide(stage, p_hat)
        if nxt is not None and not route.tour:  # a tour's steps are not the rule's escalations
            CASCADE_ESCALATIONS.labels(self.stages[stage].name, self.stages[nxt].name).inc()
        return nxt

    def _fall_back(self, walk: Walk, stage: int, after: int | None, exc: StageFailure, t0: float) -> CascadeResult | int:
        """``stage`` failed (down, timed out, a bad response): a failed stage fails the request only when there is
        nowhere left to go. An answer already in hand is returned, marked degraded (better than an error, and it was
        paid for), unless it is invalid and a higher stage exists (or the request is on a tour, which goes on to the
        top); otherwise the next stage is tried, and the draft in hand goes with it. At the top with nothing to
        return, ``exc`` is the client's error (re-raised)."""
        name = self.stages[stage].name
        STAGE_CALLS.labels(name, "error").inc()
        walk.visits.append(StageVisit(stage, name, time.perf_counter() - t0, error=str(exc)))
        answer = walk.answer
        if walk.route.tour and after is not None:
            return after  # a tour returns the top's answer: go on up, the draft in hand goes with it
        if answer is not None and not (walk.answer_invalid and after is not None):
            return CascadeResult(walk.visits, answer.stage, response=answer.data, degraded=str(exc), skipped=walk.skipped,
                                 tour=walk.route.tour)  # fmt: skip
        if after is None:
            raise exc
        return after  # nothing in hand, or only an invalid answer: try the next stage

    async def _verify(
        self, client: Stage, body: dict[str, Any], answer: StageAnswer, stage: int, api: CascadeDialect, tour: bool = False
    ) -> tuple[DraftCheck | None, str]:
        """Verify the lower stage's answer (the draft) on ``client`` (stage ``stage``) when that keeps the answer's
        distribution and pays off (on a tour, always: the label is what the tour is for); say what happened."""
        draft = api.text(answer.choice)
        pair = (answer.stage, stage)
        shared = self._shared_tokenizer(*pair)
        reason = why_not_verify(client, body, draft, shared) if self.settings.cascade.draft_reuse else "disabled"
        if reason is None and not tour and not self.acceptance.should_verify(pair):
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
