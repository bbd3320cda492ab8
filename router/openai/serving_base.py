"""What every OpenAI API the router serves shares: ``OpenAIServing``, the base of the three serving classes.

``ChatServing`` (``router.openai.chat.serving``), ``CompletionServing``
(``router.openai.completions.serving``) and ``ResponsesServing``
(``router.openai.responses.serving``) each validate and shape their own API; this
base holds what they do alike:

* **the model a request names** (``target``): a tenant's ``allowed_models`` (403),
  an unknown model (404), the cascade extras refused for a stage name (400);
* **the knobs** (``knobs``): λ and the top stage, from the request's body or its
  ``x-cascade-lambda`` / ``x-cascade-max-stage`` headers, within what its tenant
  allows (an SLO tenant's λ, its ``max_stage``: ``_tenant_cap``);
* **the pass-through's bookkeeping** (``refuse_incapable``, ``answered``,
  ``streamed``, ``relay``): a 400 for a stage that lacks a capability the request
  needs, the stage metrics, the ``x-cascade-*`` headers, the outcome for
  accounting, a stage's SSE relayed in blocks as it came;
* **the cascade's answer** (``respond``): the metrics of a cascade run, what it is
  charged (``charged``), its ``x-cascade-*`` headers (``cascade_headers``), and the
  response, rendered by the API's ``Rendering``: the top stage's relayed stream, the
  whole answer re-streamed, or the whole answer;
* **what a response cost** (``cost_headers``): every answer, cascade or pass-through,
  says each called stage's tokens (``x-cascade-tokens``) and what the tenant is charged
  for it (``x-cascade-cost``, in ``x-cascade-cost-unit``), the figure the accounting
  records (see ``cost_headers`` for a stream);
* **errors and SSE**: ``upstream_error`` (the one mapping of a stage failure to
  what the client gets), ``sse``, ``error_event``, ``DONE_EVENT``.

A stage failure that leaves no answer reaches the client through ``upstream_error``
alone: as the error response, or as the last event of a stream already started.
"""

from __future__ import annotations

import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import replace
from functools import partial
from typing import Any, Generic, Protocol, TypeVar

import anyio
import orjson
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from common.completions_protocol import CASCADE_FIELDS  # the body's cascade extras (chat's too): never forwarded to a stage
from common.errors import APIError
from common.settings import Settings
from router.cascade import CascadeEngine
from router.closing import aclose, link
from router.contracts import NO_USAGE, CascadeRequest, CascadeResult, RequestOutcome, StageVisit, TenantLimits, TokenUsage
from router.dialect import CascadeDialect
from router.metrics import CASCADE_COST, CASCADE_STOPS, INVALID_ANSWERS, OVERHEAD_SECONDS, REQUESTS_BY_KIND, STAGE_CALLS, STAGE_SECONDS
from router.sse import DONE, event_data
from router.stage import Stage, StageFailure
from router.stream_tap import StreamedAnswer
from router.validity import AnswerSpec, capability_setting

LAMBDA_HEADER = "x-cascade-lambda"
MAX_STAGE_HEADER = "x-cascade-max-stage"
PASSTHROUGH_EXCLUDE = frozenset((*CASCADE_FIELDS, "model"))  # what a pass-through's upstream body leaves out
JSON = "application/json"
SSE = "text/event-stream"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DONE_EVENT = b"data: [DONE]\n\n"
TOKENS_HEADER = "x-cascade-tokens"
COST_HEADER = "x-cascade-cost"
COST_UNIT_HEADER = "x-cascade-cost-unit"
log = logging.getLogger("adaptive_sd.router.serving")
CLOSE_TIMEOUT_S = 5.0  # SSEResponse: how long closing a stream's chain may take once its response has ended

Answer = TypeVar("Answer")


class SSEResponse(StreamingResponse):
    """A stream of SSE events whose body is closed when the response ends, however it ends.

    Starlette leaves a body iterator as it was when the client goes away while a chunk is being sent: the
    generator stays suspended at its ``yield`` until the garbage collector finalises it, and with it the stage's
    stream, the stream tap's row, labels and shadow check, and the tenant's accounting (``finally`` blocks down the
    chain). Closing it here, shielded from the cancellation that ended the response, runs them at once: each link
    of the chain closes the one it wraps (``router.closing``), down to the stage's HTTP stream. A close that
    stalls is given up after ``CLOSE_TIMEOUT_S`` (what is left of it goes to the garbage collector, as before).
    """

    def __init__(self, content: AsyncIterator[bytes], headers: Mapping[str, str]) -> None:
        super().__init__(content, media_type=SSE, headers={**SSE_HEADERS, **headers})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.move_on_after(CLOSE_TIMEOUT_S, shield=True):
                try:
                    await aclose(self.body_iterator)
                except Exception:  # a link's own failure: logged, and the response ends as it was ending
                    log.exception("closing a stream's body failed")


def sse(payload: bytes) -> bytes:
    """One SSE event carrying ``payload``."""
    return b"data: " + payload + b"\n\n"


def upstream_error(exc: StageFailure) -> APIError:
    """The one mapping of a stage failure to what the client gets: an OpenAI-shaped ``upstream_error``
    with the failure's status (503 unreachable, 504 timeout, 502 bad answer)."""
    return APIError(exc.status, str(exc), type="upstream_error")


def stage_tokens(visits: Sequence[StageVisit]) -> str:
    """``x-cascade-tokens``: ``<stage>=<prompt>+<generated>`` per stage called, in call order, as that stage's usage
    counted them (a verifying stage: its scoring calls' prompts and the kept draft tokens too; an aborted one: what it
    had written). A failed stage is ``<stage>=0+0`` (no usage came back; it is charged its per-request price). A
    stage whose usage is not known yet, the streamed top stage, is left out; ``-`` when that leaves none."""
    known = [(v.name, NO_USAGE if v.error is not None else v.usage) for v in visits]
    return ",".join(f"{name}={u.prompt_tokens}+{u.completion_tokens}" for name, u in known if u is not None) or "-"


def error_event(exc: StageFailure) -> bytes:
    """A stage failure after a stream has started: the same error body, as the stream's last event."""
    return sse(orjson.dumps(upstream_error(exc).body()))


class CascadeKnobs(Protocol):
    """What ``knobs`` reads of a request: its cascade extras (a chat or a completions request)."""

    @property
    def cascade_lambda(self) -> float | None: ...

    @property
    def cascade_max_stage(self) -> int | str | None: ...


class Addressed(CascadeKnobs, Protocol):
    """What ``target`` reads of a request: the model it names, and its cascade extras."""

    @property
    def model(self) -> str: ...


Request = TypeVar("Request", bound=Addressed)  # what an API's serving class serves


class Rendering(Protocol[Answer]):
    """How one API answers from the cascade's result, for ``OpenAIServing.respond``: one made per request, holding it.

    ``answer`` is the whole answer (a lower stage stopped, or no stream was asked for), shaped for this API; it is
    sent as ``encode`` makes it, or, where a stream was asked for, as ``restream`` sends it. ``relay`` sends the
    top stage's stream (the result's ``events``) as this API's events.
    """

    def relay(self, events: AsyncIterator[bytes]) -> AsyncIterator[bytes]: ...

    def answer(self) -> Answer: ...

    def encode(self, answer: Answer) -> bytes: ...

    def restream(self, answer: Answer) -> AsyncIterator[bytes]: ...


class RenderingBase(Generic[Request]):
    """What every API's ``Rendering`` holds for one request (the request, the cascade's result, the names it
    answers under, the predictor's k), and the part of the whole answer they shape alike: the cascade's model
    name, the usage of every stage called, and only the logprobs the client asked for (``client_logprobs``,
    each API's own shape)."""

    __slots__ = ("cascade_name", "req", "result", "top_k", "upstream_model")

    def __init__(self, serving: OpenAIServing[Any], req: Request, result: CascadeResult) -> None:
        self.req = req
        self.result = result
        self.cascade_name = serving.cascade_name
        self.top_k = serving.engine.top_k
        self.upstream_model = serving.engine.stages[result.final_stage].config.model

    def client_logprobs(self, logprobs: Any) -> Any:
        raise NotImplementedError

    def _final_answer(self) -> dict[str, Any]:
        data = self.result.response
        assert data is not None
        data["model"] = self.cascade_name
        data["usage"] = self.result.usage().to_dict()
        for choice in data["choices"]:
            choice["logprobs"] = self.client_logprobs(choice.get("logprobs"))
        return data


class OpenAIServing(ABC, Generic[Request]):
    """The base of the serving classes (module docstring): settings, the stages by name, the engine."""

    def __init__(self, settings: Settings, stages: Sequence[Stage], engine: CascadeEngine) -> None:
        self.settings = settings
        self.stages = {s.name: s for s in stages}
        self._index = {s.name: i for i, s in enumerate(stages)}  # a stage's place in the ladder: its prices in engine.pricing
        self.engine = engine
        self.cascade_name = settings.cascade.model_name

    # -- entry ----------------------------------------------------------------
    async def _serve(self, req: Request, headers: Mapping[str, str], limits: TenantLimits | None) -> tuple[Response, RequestOutcome]:
        """The response to a validated request, and what it comes to for accounting (``RequestOutcome``): the
        pass-through to the stage it names, or the cascade. Each API's ``create`` comes here.

        Raises ``APIError`` for everything the client gets as an error; a stage failure
        that leaves no answer becomes one here (``upstream_error``).
        """
        t0 = time.perf_counter()
        limits = limits or TenantLimits(self.settings.cascade.default_lambda)
        stage = self.target(req, limits)
        try:
            if stage is None:
                return await self._cascade(req, headers, t0, limits)
            return await self._passthrough(req, stage, t0)
        except StageFailure as exc:
            raise upstream_error(exc) from None

    @abstractmethod
    async def _passthrough(self, req: Request, stage: Stage, t0: float) -> tuple[Response, RequestOutcome]:
        """``req`` forwarded to the stage it names (``refuse_incapable``, ``answered`` or ``streamed``, ``relay``)."""

    @abstractmethod
    async def _cascade(self, req: Request, headers: Mapping[str, str], t0: float, limits: TenantLimits) -> tuple[Response, RequestOutcome]:
        """``req`` through the cascade (``knobs``, the engine, ``respond``)."""

    def target(self, req: Addressed, limits: TenantLimits) -> Stage | None:
        """The stage a request names (None: the cascade), once its tenant may use it; 403 / 404 / 400 otherwise.

        The cascade extras only apply to the cascade model.
        """
        if limits.allowed_models is not None and req.model not in limits.allowed_models:
            raise APIError(403, f"This API key may not use model '{req.model}'; allowed: {', '.join(limits.allowed_models)}",
                           type="permission_error", param="model", code="model_not_allowed")  # fmt: skip
        if req.model == self.cascade_name:
            return None
        stage = self.stages.get(req.model)
        if stage is None:
            known = ", ".join([self.cascade_name, *self.stages])
            raise APIError(404, f"The model '{req.model}' does not exist; available: {known}", param="model", code="model_not_found")
        for name in CASCADE_FIELDS:
            if getattr(req, name) is not None:
                raise APIError(400, f"'{name}' only applies to model '{self.cascade_name}'", param=name)
        return stage

    # -- pass-through ---------------------------------------------------------
    def refuse_incapable(self, stage: Stage, spec: AnswerSpec) -> None:
        """A 400 naming the field when the stage lacks a capability the request needs (it would fail or ignore it)."""
        capability = spec.missing(stage.config)
        if capability is not None:
            param = spec.needs[capability]
            raise APIError(
                400,
                f"Model '{stage.name}' cannot answer requests with '{param}': its stage lacks {capability_setting(capability)}; "
                f"use model '{self.cascade_name}' (it picks a stage that can) or a stage with {capability_setting(capability)}",
                param=param,
                code="unsupported_parameter",
            )

    def direct_outcome(self, stage: Stage, usage: TokenUsage) -> RequestOutcome:
        """What a pass-through answer took: its tokens, and its cost at the stage's prices in the rule's unit (the
        engine's ``Pricing``, so a direct call and the cascade charge one price, measured where prices are)."""
        cost = self.engine.pricing.actual(self._index[stage.name], usage.prompt_tokens, usage.completion_tokens)
        return RequestOutcome(stage.name, usage.total_tokens, cost)

    def cost_headers(self, tokens: str, cost: float) -> dict[str, str]:
        """``x-cascade-tokens`` (``stage_tokens``), and ``x-cascade-cost``: ``cost``, what the tenant's accounting records
        for the response (``RequestOutcome.cost``), in the unit named by ``x-cascade-cost-unit`` (``cascade.cost_unit``).

        Headers go out before a stream's body, so a stream's say what was known then: a streamed stage (the cascade's
        top stage relayed, a pass-through stream) is not in ``x-cascade-tokens`` and is counted at its per-request
        price (the tenant's accounting settles at the stream's end: ``RequestOutcome.settle``); its tokens arrive in
        the stream's usage (chat and completions with
        ``stream_options.include_usage``, Responses always), which sums every stage, so they are that usage less
        ``x-cascade-tokens``'s sums.
        """
        return {TOKENS_HEADER: tokens, COST_HEADER: f"{cost:.10g}", COST_UNIT_HEADER: self.settings.cascade.cost_unit}

    def answered(
        self, stage: Stage, spec: AnswerSpec, data: dict[str, Any], seconds: float, t0: float, headers: dict[str, str]
    ) -> RequestOutcome:
        """A pass-through's whole answer ``data`` (``seconds`` in the stage) is in: count it, mark it in ``headers``
        when it breaks the request's rules (the client asked for this stage: its answer goes out as it is), name
        the stage as the model, and say the router's overhead. Its outcome, for accounting."""
        STAGE_CALLS.labels(stage.name, "ok").inc()
        STAGE_SECONDS.labels(stage.name).observe(seconds)
        REQUESTS_BY_KIND.labels(spec.kind, stage.name).inc()
        invalid = spec.check(data["choices"][0])
        if invalid is not None:
            INVALID_ANSWERS.labels(stage.name, invalid).inc()
            headers["x-cascade-invalid"] = f"{stage.name}:{invalid}"
        usage = TokenUsage.of(data.get("usage"))
        outcome = self.direct_outcome(stage, usage)
        headers.update(self.cost_headers(f"{stage.name}={usage.prompt_tokens}+{usage.completion_tokens}", outcome.cost))
        data["model"] = stage.name
        overhead = time.perf_counter() - t0 - seconds
        OVERHEAD_SECONDS.observe(overhead)
        headers["x-cascade-overhead-ms"] = f"{overhead * 1e3:.3f}"
        return outcome

    def stream_response(
        self, stage: Stage, kind: str, events: AsyncIterator[bytes], headers: dict[str, str], t0: float, seen: StreamedAnswer
    ) -> tuple[Response, RequestOutcome]:
        """A pass-through's stream is starting: count it, say the router's overhead so far, and send ``events``. Its
        outcome (tokens unknown yet: the stage's request price) is said in ``headers`` (``cost_headers``); once the
        stream is over, it settles at the usage the stream reported (``seen``, its usage read on the way, as the
        cascade's tap reads it: chat and completions with ``include_usage``, Responses always; None where it
        reported none)."""
        headers["x-cascade-overhead-ms"] = f"{(time.perf_counter() - t0) * 1e3:.3f}"
        REQUESTS_BY_KIND.labels(kind, stage.name).inc()
        price = self.engine.pricing.prices[self._index[stage.name]].request

        def settle() -> RequestOutcome | None:
            return None if seen.usage is None else self.direct_outcome(stage, TokenUsage.of(seen.usage))

        outcome = RequestOutcome(stage.name, 0, price, settle=settle)
        headers.update(self.cost_headers(stage_tokens(()), outcome.cost))
        return SSEResponse(events, headers), outcome

    @staticmethod
    @link("blocks")
    async def relay(blocks: AsyncIterator[bytes], client: Stage, seen: StreamedAnswer) -> AsyncIterator[bytes]:
        """A pass-through's stream: whole SSE blocks forwarded as they came (``[DONE]`` included), the model renamed
        if it differs, the usage ``seen`` on its way; a stage failure is the last event, and ``[DONE]`` is sent if the
        stage did not send it."""
        upstream = f'"model":"{client.config.model}"'.encode()
        public = f'"model":"{client.name}"'.encode()
        done = False
        try:
            async for block in blocks:
                done = done or (DONE in block and DONE in event_data(block))  # `data:[DONE]` too: a space is optional
                if b'"usage"' in block:
                    for data in event_data(block):
                        seen.add(data)
                yield block.replace(upstream, public) if upstream != public else block
        except StageFailure as exc:
            yield error_event(exc)
        if not done:
            yield DONE_EVENT

    # -- cascade --------------------------------------------------------------
    def knobs(self, req: CascadeKnobs, headers: Mapping[str, str], limits: TenantLimits) -> tuple[float, int]:
        """λ and top stage: the request may set them, within what its tenant allows.

        An SLO tenant's λ belongs to its controller, so a request's λ is ignored
        (the λ used is in the ``x-cascade-lambda`` response header); a request's
        max stage can only lower the tenant's, and a tenant's that names no stage
        refuses the cascade (``_tenant_cap``).
        """
        lam, top = self._request_knobs(req, headers)
        if limits.lam_locked or lam is None:
            lam = limits.lam
        if limits.max_stage is not None:
            top = min(top, self._tenant_cap(limits.max_stage))
        return lam, top

    def _tenant_cap(self, max_stage: int | str) -> int:
        """The index of the tenant's top stage; a 403 naming ``max_stage`` when it names no stage of this ladder.

        A stored setting can outlive its stage (renamed or removed since the tenant was set; the admin API refuses
        such a value, but a record written before, or by a router with another ladder, keeps it). The cap is
        there to bound what the tenant spends, so it fails closed: serving the whole ladder would silently lift a
        cost ceiling, and serving the lowest stage would silently lower the quality the tenant chose. The
        error says what to fix; it is a 403 (what this key may use, like ``allowed_models``), not a 5xx, so
        clients do not retry what only an operator can repair. Stages called by name are not the cascade: a
        tenant's ``max_stage`` never applied to them.
        """
        try:
            return self.settings.stage_index(max_stage)
        except ValueError:
            ladder = ", ".join(s.name for s in self.settings.stages)
            raise APIError(
                403,
                f"This API key's tenant has max_stage {max_stage!r}, which is not a stage of the cascade (stages: {ladder}); "
                "the cascade is refused until an operator sets the tenant's max_stage to one of them or null",
                type="permission_error",
                param="max_stage",
                code="max_stage_not_in_ladder",
            ) from None

    def _request_knobs(self, req: CascadeKnobs, headers: Mapping[str, str]) -> tuple[float | None, int]:
        lam: float | None = None
        raw = headers.get(LAMBDA_HEADER)
        if raw is not None:
            try:
                lam = float(raw)
            except ValueError:
                raise APIError(400, f"Invalid {LAMBDA_HEADER} header: {raw!r} is not a number", param=LAMBDA_HEADER) from None
            if not math.isfinite(lam) or lam < 0:
                raise APIError(400, f"Invalid {LAMBDA_HEADER} header: must be a finite number >= 0", param=LAMBDA_HEADER)
        if req.cascade_lambda is not None:
            lam = req.cascade_lambda
        top = len(self.settings.stages) - 1
        ref: int | str | None = req.cascade_max_stage
        param = "cascade_max_stage"
        if ref is None and (raw := headers.get(MAX_STAGE_HEADER)) is not None:
            ref, param = (int(raw) if raw.isascii() and raw.isdigit() else raw), MAX_STAGE_HEADER  # "²" is a digit, not an int
        if ref is None:
            return lam, top
        try:
            return lam, self.settings.stage_index(ref)
        except ValueError as exc:
            raise APIError(400, f"Invalid {param}: {exc}", param=param) from None

    async def run_cascade(
        self, req: CascadeRequest, api: CascadeDialect, lam: float, t0: float, stream: bool,
        rendering: Callable[[CascadeResult], Rendering[Any]], kind: str | None = None,
    ) -> tuple[Response, RequestOutcome]:  # fmt: skip
        """Run the cascade on ``req`` and ``respond`` with what ``rendering`` makes of its result (``kind``: the
        answer spec's where not given). A stream the run opened is closed here if the response cannot be built
        (``router.closing``: its tap told, the stage's connection back), not left to the garbage collector."""
        result = await self.engine.run(req, api)
        assert req.spec is not None
        try:
            return self.respond(result, kind or req.spec.kind, lam, t0, stream, rendering(result))
        except BaseException:
            if result.events is not None:
                await aclose(result.events)
            raise

    def respond(
        self, result: CascadeResult, kind: str, lam: float, t0: float, stream: bool, rendering: Rendering[Answer]
    ) -> tuple[Response, RequestOutcome]:
        """What every cascade endpoint does with the engine's result: count it, say what happened in the headers, and
        send what ``rendering`` makes of it: the top stage's relayed stream, the answer re-streamed, or the answer."""
        final = self.engine.stages[result.final_stage].name
        CASCADE_STOPS.labels(final).inc()
        REQUESTS_BY_KIND.labels(kind, final).inc()
        outcome = RequestOutcome(final, result.usage().total_tokens, self.charged(result))
        if result.events is not None:
            outcome = replace(outcome, settle=partial(self.settled, result, final))
        if not self.count_cost(result, outcome.cost) and result.events is not None:
            result.ended.append(lambda: self.count_cost(result, self.charged(result)))  # its tokens, once it has ended
        out_headers = self.cascade_headers(result)
        out_headers.update(self.cost_headers(stage_tokens(result.visits), outcome.cost))
        out_headers["x-cascade-kind"] = kind
        out_headers["x-cascade-lambda"] = f"{lam:g}"
        if result.events is not None:
            overhead = time.perf_counter() - t0 - result.stage_seconds
            out_headers["x-cascade-overhead-ms"] = f"{overhead * 1e3:.3f}"
            OVERHEAD_SECONDS.observe(overhead)
            return SSEResponse(rendering.relay(result.events), out_headers), outcome
        answer = rendering.answer()
        overhead = time.perf_counter() - t0 - result.stage_seconds
        OVERHEAD_SECONDS.observe(overhead)
        out_headers["x-cascade-overhead-ms"] = f"{overhead * 1e3:.3f}"
        if stream:
            return SSEResponse(rendering.restream(answer), out_headers), outcome
        return Response(rendering.encode(answer), media_type=JSON, headers=out_headers), outcome

    def settled(self, result: CascadeResult, final: str) -> RequestOutcome | None:
        """A relayed stream's outcome once it is over (``RequestOutcome.settle``): every stage's tokens and charge, the
        streamed one's from the usage its stream ended with; None where that is unknown."""
        visit = result.final_visit
        if visit is None or visit.usage is None:
            return None
        return RequestOutcome(final, result.usage().total_tokens, self.charged(result))

    def charged(self, result: CascadeResult) -> float:
        """What a cascade run is charged, in ``cascade.cost_unit``: each stage called at its prices on its usage
        (``Pricing.actual``); one without usage (failed, or streamed: its tokens are not known yet) its per-request price."""
        pricing = self.engine.pricing
        return sum(pricing.actual(v.stage, v.usage.prompt_tokens, v.usage.completion_tokens) if v.usage else
                   pricing.prices[v.stage].request for v in result.visits)  # fmt: skip

    def count_cost(self, result: CascadeResult, realised: float) -> bool:
        """Add a cascade answer to ``adaptive_sd_cascade_cost_total``: what it was charged, and what the top stage alone
        would have cost (``top_stage_cost``); False, counting nothing, while its tokens are unknown (a stream before
        it has ended, or one that never did), so that both sums cover the same answers."""
        top_only = self.top_stage_cost(result)
        if top_only is None:
            return False
        CASCADE_COST.labels("realised").inc(realised)
        CASCADE_COST.labels("top_stage").inc(top_only)
        return True

    def top_stage_cost(self, result: CascadeResult) -> float | None:
        """What the ladder's top stage alone would have cost for this answer, at its prices: the prompt's tokens (the
        fewest any stage reported: a verifying stage's include the draft it scored) and the answer's (the answering
        stage's usage, which counts the draft tokens it kept, ``router.draft.merged_usage``). Stages' tokenizers differ
        a little; this is an estimate. None while the answer's tokens are unknown (the top stage relayed as a stream,
        until it has ended: ``CascadeResult.ended``), so that the realised and the top-stage sums of
        ``adaptive_sd_cascade_cost_total`` cover the same answers."""
        final = result.final_visit
        if final is None or final.usage is None:
            return None
        prompt = min(v.usage.prompt_tokens for v in result.visits if v.usage is not None)
        return self.engine.pricing.actual(len(self.engine.stages) - 1, prompt, final.usage.completion_tokens)

    def cascade_headers(self, result: CascadeResult) -> dict[str, str]:
        """The ``x-cascade-*`` headers that say what a cascade run did (``respond`` adds kind, λ, overhead, tokens and cost)."""
        answered = [v for v in result.visits if v.error is None]
        headers = {
            "x-cascade-stage": self.engine.stages[result.final_stage].name,
            "x-cascade-path": ",".join(v.name if v.aborted_at is None else f"{v.name}(aborted@{v.aborted_at})" for v in answered),
            "x-cascade-p": ",".join("-" if v.p_hat is None else f"{v.p_hat:.4f}" for v in answered),
        }
        drafts = [v for v in answered if v.draft_mode]
        if drafts:
            headers["x-cascade-draft"] = ",".join(f"{v.name}:{v.draft_mode}" for v in drafts)
            headers["x-cascade-accepted"] = (
                ",".join(f"{v.name}:{v.draft.accepted_tokens}/{v.draft.draft_tokens}" for v in drafts if v.draft is not None) or "-"
            )
        if result.degraded:
            headers["x-cascade-degraded"] = result.degraded.replace("\n", " ")[:200]
        if result.skipped:
            headers["x-cascade-skipped"] = ",".join(f"{s.name}:{s.capability}" for s in result.skipped)
        invalid = result.invalid
        if invalid:
            headers["x-cascade-invalid"] = ",".join(f"{v.name}:{v.invalid}" for v in invalid)
        return headers
