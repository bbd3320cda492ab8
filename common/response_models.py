"""Pydantic models of the bodies the router answers with, for the published OpenAPI document.

The router never builds its answers from these models: it relays a stage's JSON
(renaming ``model``) or shapes dicts itself, because decoding and re-encoding
each answer through pydantic would cost the hot path CPU for nothing the client
sees. These models exist so that ``/openapi.json`` says what the bodies are,
and the tests (``tests/router/test_openapi.py``, and Schemathesis against a live
router in ``tests/router/test_openapi_fuzz.py``) validate real responses against
them, so a change of a body that is not made here too fails a test.

They follow OpenAI's shapes, with what the router adds (model cards'
``capabilities``, ``/health``). Objects allow keys they do not name: a stage
may add its own (vLLM's ``prompt_logprobs``, ``stop_reason``,
``system_fingerprint``, ...), which the router relays as they are; what is
named is typed strictly (an ``int`` stays an ``int``).

Request-side models that a response echoes (the Responses API echoes its
``tools``, ``tool_choice`` and ``text.format``) are the request's own models,
never a second copy.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

from common.protocol import ToolCall
from common.responses_protocol import FunctionTool, TextFormat, ToolChoiceObject

FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "function_call"]
"""Why a chat choice ended (OpenAI's values; ``function_call`` only from stages that still send the deprecated form)."""


class _Body(BaseModel):
    """A response object: what it names is strict; keys it does not name are allowed (stages add their own)."""

    model_config = ConfigDict(extra="allow", strict=True)


# -- errors ----------------------------------------------------------------------
class ErrorDetail(_Body):
    message: str = Field(description="what went wrong; names the offending field when there is one")
    type: str = Field(
        description="invalid_request_error, permission_error, rate_limit_error, upstream_error, service_unavailable or server_error"
    )
    param: str | None = Field(description="the offending request field, by path (messages[2].content[0].type), or null")
    code: str | None = Field(description="a machine-readable code (model_not_found, invalid_api_key, ...), or null")


class ErrorResponse(_Body):
    """Every failure, as OpenAI sends it (``common.errors.APIError.body``); also the last event of a stream that broke off."""

    error: ErrorDetail


# -- usage and logprobs ------------------------------------------------------------
class Usage(_Body):
    """Tokens a request took, summed over every stage the cascade called."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: dict[str, Any] | None = None
    completion_tokens_details: dict[str, Any] | None = None


class TopLogprob(_Body):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(_Body):
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(_Body):
    """A chat choice's ``logprobs``: only when the client asked, with its ``top_logprobs`` alternatives."""

    content: list[TokenLogprob] | None = None
    refusal: list[TokenLogprob] | None = None


# -- chat completions ------------------------------------------------------------------
class AssistantMessage(_Body):
    role: Literal["assistant"]
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = None


class ChatChoice(_Body):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason


class ChatCompletion(_Body):
    """``POST /v1/chat/completions`` without ``stream``: the answering stage's completion, ``model`` as asked."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None


class FunctionCallDelta(_Body):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(_Body):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta | None = None


class ChunkDelta(_Body):
    role: Literal["assistant"] | None = None
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChunkChoice(_Body):
    index: int
    delta: ChunkDelta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(_Body):
    """One ``data:`` event of a chat stream; the last chunk has no choices and the usage (``stream_options.include_usage``)."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


# -- completions ---------------------------------------------------------------------
class CompletionChoiceLogprobs(_Body):
    """The completions ``logprobs`` shape (vLLM's): per position the token, its logprob, the top alternatives, the offset."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(_Body):
    index: int
    text: str
    logprobs: CompletionChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length", "content_filter"]


class Completion(_Body):
    """``POST /v1/completions`` without ``stream``."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class CompletionChunkChoice(_Body):
    index: int
    text: str
    logprobs: CompletionChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length", "content_filter"] | None = None


class CompletionChunk(_Body):
    """One ``data:`` event of a completions stream; the last one has no choices and the usage when asked for."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChunkChoice]
    usage: Usage | None = None


# -- the Responses API -----------------------------------------------------------------
class OutputTopLogprob(_Body):
    token: str
    bytes: list[int]
    logprob: float


class OutputLogprob(_Body):
    token: str
    bytes: list[int]
    logprob: float
    top_logprobs: list[OutputTopLogprob]


class OutputText(_Body):
    type: Literal["output_text"]
    text: str
    annotations: list[Any]
    logprobs: list[OutputLogprob]


class OutputRefusal(_Body):
    type: Literal["refusal"]
    refusal: str


OutputContent = Annotated[OutputText | OutputRefusal, Field(discriminator="type")]
ItemStatus = Literal["in_progress", "completed", "incomplete"]


class OutputMessage(_Body):
    id: str
    type: Literal["message"]
    role: Literal["assistant"]
    status: ItemStatus
    content: list[OutputContent]


class FunctionCallItem(_Body):
    id: str
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str = Field(description="JSON text, as the model wrote it")
    status: ItemStatus


OutputItem = Annotated[OutputMessage | FunctionCallItem, Field(discriminator="type")]


class ResponseUsage(_Body):
    input_tokens: int
    input_tokens_details: dict[str, int]
    output_tokens: int
    output_tokens_details: dict[str, int]
    total_tokens: int


class ResponseError(_Body):
    code: str
    message: str


class IncompleteDetails(_Body):
    reason: Literal["max_output_tokens", "content_filter"]


class ReasoningEcho(_Body):
    effort: str | None = None
    summary: str | None = None


class TextEcho(_Body):
    format: TextFormat
    verbosity: Literal["low", "medium", "high"] | None = None


class ResponseObject(_Body):
    """``POST /v1/responses`` without ``stream``: OpenAI's ``Response``, the request's settings echoed."""

    model_config = ConfigDict(title="Response")

    id: str
    object: Literal["response"]
    created_at: int
    status: Literal["completed", "incomplete", "failed", "in_progress"]
    background: bool
    completed_at: int | None
    error: ResponseError | None
    incomplete_details: IncompleteDetails | None
    instructions: str | None
    max_output_tokens: int | None
    metadata: dict[str, str]
    model: str
    output: list[OutputItem]
    parallel_tool_calls: bool
    previous_response_id: None
    reasoning: ReasoningEcho
    service_tier: str
    temperature: float | None
    text: TextEcho
    tool_choice: Literal["none", "auto", "required"] | ToolChoiceObject
    tools: list[FunctionTool]
    top_logprobs: int
    top_p: float | None
    truncation: Literal["auto", "disabled"]
    usage: ResponseUsage | None
    user: str | None


class _Event(_Body):
    sequence_number: int = Field(description="0, 1, 2, ... in the order sent")


class ResponseLifecycleEvent(_Event):
    """The response as it stands: first (created, in progress) and last (completed, incomplete, failed)."""

    type: Literal["response.created", "response.in_progress", "response.completed", "response.incomplete", "response.failed"]
    response: ResponseObject


class OutputItemEvent(_Event):
    type: Literal["response.output_item.added", "response.output_item.done"]
    output_index: int
    item: OutputItem


class ContentPartEvent(_Event):
    type: Literal["response.content_part.added", "response.content_part.done"]
    item_id: str
    output_index: int
    content_index: int
    part: OutputContent


class DeltaTopLogprob(_Body):
    token: str
    logprob: float


class DeltaLogprob(_Body):
    token: str
    logprob: float
    top_logprobs: list[DeltaTopLogprob]


class OutputTextDeltaEvent(_Event):
    type: Literal["response.output_text.delta"]
    item_id: str
    output_index: int
    content_index: int
    delta: str
    logprobs: list[DeltaLogprob]


class OutputTextDoneEvent(_Event):
    type: Literal["response.output_text.done"]
    item_id: str
    output_index: int
    content_index: int
    text: str
    logprobs: list[DeltaLogprob]


class RefusalDeltaEvent(_Event):
    type: Literal["response.refusal.delta"]
    item_id: str
    output_index: int
    content_index: int
    delta: str


class RefusalDoneEvent(_Event):
    type: Literal["response.refusal.done"]
    item_id: str
    output_index: int
    content_index: int
    refusal: str


class FunctionCallArgumentsDeltaEvent(_Event):
    type: Literal["response.function_call_arguments.delta"]
    item_id: str
    output_index: int
    delta: str


class FunctionCallArgumentsDoneEvent(_Event):
    type: Literal["response.function_call_arguments.done"]
    item_id: str
    output_index: int
    arguments: str


class ErrorEvent(_Event):
    """A stage failed after the stream started; ``response.failed`` follows."""

    type: Literal["error"]
    code: str | None
    message: str
    param: str | None


class ResponseStreamEvent(
    RootModel[
        Annotated[
            ResponseLifecycleEvent
            | OutputItemEvent
            | ContentPartEvent
            | OutputTextDeltaEvent
            | OutputTextDoneEvent
            | RefusalDeltaEvent
            | RefusalDoneEvent
            | FunctionCallArgumentsDeltaEvent
            | FunctionCallArgumentsDoneEvent
            | ErrorEvent,
            Field(discriminator="type"),
        ]
    ]
):
    """One event of a Responses stream (``event: <type>`` and ``data: <this, as JSON>``)."""


# -- models ------------------------------------------------------------------------------
class ModelCapabilities(_Body):
    """What requests the model takes; for the cascade, what some stage of it takes."""

    tools: bool
    structured_outputs: bool
    completions: bool = Field(description="it serves POST /v1/completions")
    vllm_extras: bool = Field(
        description="it takes vLLM's sampling extras: top_k, min_p, repetition_penalty, min_tokens, chat_template_kwargs"
    )


class ModelCard(_Body):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    stage: int | None = Field(None, description="the stage's place in the ladder, from 0; absent for the cascade model")
    capabilities: ModelCapabilities


class ModelList(_Body):
    object: Literal["list"]
    data: list[ModelCard]


# -- health -------------------------------------------------------------------------------
class TenancyHealth(_Body):
    store: str = Field(description="memory or redis")
    state: Literal["ok", "degraded"]
    breaker: Literal["closed", "open", "half-open"] = Field(description="the tenant store's circuit breaker")
    buffered_usage: int = Field(description="usage records not yet written to the store")


class EndpointHealth(_Body):
    url: str
    state: Literal["healthy", "probation", "ejected"]
    in_flight: int
    latency_ms: float | None
    requests: int
    failures: int
    consecutive_failures: int
    ejections: int
    ejected_for: Literal["connect", "timeout", "error", "probe"] | None = Field(description="what ejected it, while not healthy")
    retry_in_s: float
    last_error: str | None


class StagePoolHealth(_Body):
    status: Literal["ok", "degraded", "unavailable"]
    queue_delay_s: float
    endpoints: list[EndpointHealth]


class ShadowHealth(_Body):
    """Shadow checks in this replica (``router.shadow``): the sampling rate (0: off), the checks running now, and how the
    ones drawn so far came out."""

    rate: float
    untrained_rate: float = Field(description="the rate while the predictor in service is not trained on this ladder")
    running: int
    checked: int
    busy: int
    unverifiable: int
    failed: int


class ExploreHealth(_Body):
    """Exploration in this replica (``cascade.explore``): the share of requests that tour the whole ladder for labels."""

    rate: float = Field(
        description="the rate in force now: the untrained rate while the baseline serves or the default target has no λ yet"
    )
    untrained_rate: float = Field(
        description="the rate while the ladder is still being learned (the baseline, or no λ for the default target)"
    )


class DefaultLambdaHealth(_Body):
    """The λ of requests whose tenant sets none, and where it comes from (``cascade.default_target``)."""

    value: float = Field(
        description="λ in the rule's cost unit, before `cascade.untrained_lambda_scale` (applied while the baseline serves)"
    )
    source: Literal["target", "default_lambda"] = Field(
        description="`target`: cascade.default_target looked up in the calibration table of the model in service; "
        "`default_lambda`: no target set, or the model has no table, or none of its λ meets the target"
    )
    target: str | None = Field(None, description="cascade.default_target, in words")


class Health(_Body):
    """``GET /health``: liveness, and each stage endpoint's state as the router sees it."""

    status: Literal["ok", "degraded"]
    predictor: str
    model_version: str = Field(description="the model in service: its registry version or directory name; `builtin` for the baseline")
    predictor_trained: bool = Field(
        description="whether the model in service is trained on this ladder; false (the baseline) means the router runs safe: "
        "λ scaled by `cascade.untrained_lambda_scale`, shadow checks at `shadow.untrained_rate`, tours at `explore.untrained_rate`"
    )
    tenancy: TenancyHealth
    shadow: ShadowHealth
    explore: ExploreHealth
    default_lambda: DefaultLambdaHealth
    stages: dict[str, str] | None = Field(
        None,
        description="only with ?stages=true: each stage, probed now: `ok`, `unreachable`, or `dead (<how its process ended>)` "
        "where the router launched the stages (`adaptive-sd up`)",
        examples=[{"stage-0": "ok", "stage-1": "dead (killed by SIGSEGV)"}],
    )
    endpoints: dict[str, StagePoolHealth] | None = None
