"""What passes between the router's modules: plain typed dataclasses, no validation.

Requests are validated once at the edge (``common.protocol``, pydantic); from
there on the engine and the serving layer hand these to each other. They are
slotted dataclasses because one is made per stage call or per request on the
hot path. Chat-completion bodies stay dicts (they go back out as JSON), and a
stage's logprobs stay undecoded until someone reads them (``StageReply``).

    api (route) --TenantLimits--> serving (router.openai) --CascadeRequest--> CascadeEngine
    CascadeEngine --StageAnswer (held), StageVisit (per call)--> CascadeResult --> serving (router.openai)
    serving (router.openai) --(Response, RequestOutcome)--> api (accounting)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from predictor.serving.features import PromptStats
from router.draft import DraftCheck
from router.stage import StageReply
from router.validity import AnswerSpec, Capability


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Token counts of one or more stage calls (OpenAI ``usage``; ``total_tokens`` is their sum)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @classmethod
    def of(cls, usage: Mapping[str, Any] | None) -> TokenUsage:
        """From a chat completion's ``usage`` object (missing or null counts are 0)."""
        if not usage:
            return NO_USAGE
        return cls(usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(self.prompt_tokens + other.prompt_tokens, self.completion_tokens + other.completion_tokens)

    def to_dict(self) -> dict[str, int]:
        """The OpenAI ``usage`` object."""
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens, "total_tokens": self.total_tokens}


NO_USAGE = TokenUsage()


@dataclass(slots=True)
class StageAnswer:
    """A stage's complete (non-streamed) answer, as the cascade holds it while deciding.

    ``data`` is the chat completion; when it came from one stage call, ``reply`` is
    that call's ``StageReply`` (``data`` is ``reply.data``), whose first choice's
    logprobs may still be undecoded. An answer assembled from a verified draft
    (``router.draft.merge``) has no reply and its logprobs are in ``data``.
    """

    stage: int
    data: dict[str, Any]
    reply: StageReply | None = None

    @property
    def choice(self) -> dict[str, Any]:
        choice: dict[str, Any] = self.data["choices"][0]
        return choice

    @property
    def usage(self) -> TokenUsage:
        return TokenUsage.of(self.data.get("usage"))

    def with_logprobs(self) -> dict[str, Any]:
        """``data`` with the first choice's logprobs decoded; ``StageBadResponse`` if they do not decode."""
        return self.reply.with_logprobs() if self.reply is not None else self.data


@dataclass(slots=True)
class StageVisit:
    """One stage the cascade called for a request: what it cost and what came of it."""

    stage: int
    name: str
    seconds: float
    p_hat: float | None = None
    usage: TokenUsage | None = None  # None: failed, or streamed (its usage arrives in the stream)
    error: str | None = None
    draft: DraftCheck | None = None  # verification of the previous stage's answer
    draft_mode: str | None = None  # "verify", "verify-sampling" or "regenerate:<reason>" when there was a draft
    choice: dict[str, Any] | None = None  # the stage's answer (kept for the opt-in traffic log)
    invalid: str | None = None  # why the answer breaks the request's rules (``router.validity``); None: valid or not judged
    aborted_at: int | None = None  # early exit: the stage was aborted after this many generated tokens (p_hat: its prefix's)


@dataclass(frozen=True, slots=True)
class SkippedStage:
    """A stage the cascade left out of a request: it lacks a capability the request needs, or ("unavailable") none
    of its endpoints takes traffic now (``router.stage_pool``)."""

    stage: int
    name: str
    capability: Capability | Literal["unavailable"]


@dataclass(slots=True)
class CascadeRequest:
    """One cascade run: the upstream chat body (no model, no cascade extras), the prompt's statistics, λ and the top stage.

    ``spec``: what the request asks of an answer (``router.validity.AnswerSpec``); None: the engine reads it from ``body``.
    """

    body: dict[str, Any]
    prompt: PromptStats
    lam: float
    max_stage: int
    stream: bool = False
    spec: AnswerSpec | None = None
    learn: bool = True  # its tenant lets it be logged and shadow-checked for learning (``TenantSettings.learn``)


@dataclass(slots=True)
class CascadeResult:
    """Where a cascade run ended: the visits in order, the answering stage, and its answer (whole, or a stream)."""

    visits: list[StageVisit]
    final_stage: int
    response: dict[str, Any] | None = None  # final stage's chat completion (non-streaming)
    events: AsyncIterator[bytes] | None = None  # final stage's SSE payloads (streaming)
    prefix: DraftCheck | None = None  # draft check of the streamed stage; its accepted text goes out first
    degraded: str | None = None  # why the answer is not the policy's choice
    skipped: tuple[SkippedStage, ...] = ()  # stages up to the top one that cannot answer this request
    tour: bool = False  # the request toured the ladder (cascade.explore): every stage it may use, in order
    # called once a streamed answer has ended, its visit's usage known where the stream said it (``router.stream_tap``)
    ended: list[Callable[[], object]] = field(default_factory=list)

    @property
    def invalid(self) -> list[StageVisit]:
        """The visits whose answers broke the request's rules (the final one's included when it did)."""
        return [v for v in self.visits if v.invalid is not None]

    @property
    def final_visit(self) -> StageVisit | None:
        """The visit that gave the answer (None: the answering stage's visit failed, which a result never holds)."""
        return next((v for v in reversed(self.visits) if v.stage == self.final_stage and v.error is None), None)

    @property
    def stage_seconds(self) -> float:
        return sum(v.seconds for v in self.visits)

    def usage(self) -> TokenUsage:
        """Tokens of every stage called: for a stream before it has ended, the streamed stage's verification calls
        and kept tokens, not yet what it writes (which arrives in its stream); once it has ended, its visit's usage,
        which counts them all (``router.draft.merged_usage``)."""
        prompt = completion = 0
        for v in self.visits:
            if v.usage is not None:
                prompt += v.usage.prompt_tokens
                completion += v.usage.completion_tokens
        final = self.final_visit
        if self.prefix is not None and (final is None or final.usage is None):  # the streamed stage's, so far
            prompt += self.prefix.usage.get("prompt_tokens", 0)
            completion += self.prefix.prefix_tokens
        return TokenUsage(prompt, completion)


@dataclass(frozen=True, slots=True)
class TenantLimits:
    """What the tenant allows this request: its λ (and whether an SLO controller owns it), top stage, models."""

    lam: float
    lam_locked: bool = False
    max_stage: int | str | None = None
    allowed_models: list[str] | None = None
    learn: bool = True  # the request may be logged and shadow-checked for learning


@dataclass(frozen=True, slots=True)
class RequestOutcome:
    """What a served request comes to, for accounting: who answered, tokens used, stage cost spent.

    For a stream whose stage writes as it goes (the cascade's top stage relayed, a pass-through), ``tokens`` and
    ``cost`` say what was known when the response started, and ``settle``, called once the stream is over, what it
    came to (the stage's usage, which its stream says at its end); None where the stream did not say (it broke off,
    or the client asked for no usage from a pass-through): then the caller adds an estimate. A re-streamed whole
    answer is known from the start (no ``settle``).
    """

    stage: str = "-"
    tokens: int = 0
    cost: float = 0.0
    settle: Callable[[], RequestOutcome | None] | None = None
