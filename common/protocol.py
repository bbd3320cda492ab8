"""Pydantic models of the OpenAI chat-completions dialect the whole project speaks.

One definition serves the router's public API, the CPU stage server and the
stage clients. It carries vLLM's extras used for draft verification
(``prompt_logprobs``, ``continue_final_message``, ``add_generation_prompt``),
vLLM's sampling extras that clients send through ``extra_body`` (``top_k``,
``min_p``, ``repetition_penalty``, ``min_tokens``, ``chat_template_kwargs``:
forwarded to the stage; only stages of dialect vllm take them) and the cascade's own extras (``cascade_lambda``, ``cascade_max_stage``).

What it accepts follows OpenAI: an app that works against OpenAI or vLLM works
here by changing ``base_url``.

* Top-level fields are strict (no silent coercion of ``"1"`` to ``1``) and an
  unknown top-level field is refused, as OpenAI does, so a typo never passes.
* Inside messages, content parts, tools and formats, unknown keys are ignored,
  as OpenAI ignores them (clients add their own bookkeeping there).
* Fields that do not change the answer (``store``, ``metadata``, ``service_tier``,
  ``user``, ...) are accepted and dropped: ``upstream_body`` never forwards them,
  so no stage can refuse them.
* What changes the answer and no stage can honour (images, audio, ``n > 1``,
  ``logit_bias``, ...) is a 400 that names the field.
* Integers are JSON's: ``1.0`` is the number 1 (JSON Schema's ``integer``
  includes it), ``1.5`` is refused; each lies in the 64-bit range a stage can
  be sent (``orjson``, vLLM and llama.cpp take no larger one).

The models' JSON schemas are the request bodies of the published OpenAPI
document (``router.openapi``). What the validators check beyond the types (a
``tool`` message needs ``tool_call_id``, refused fields are null, ...) is said
there too, in each model's ``json_schema_extra``, so that a body valid by the
document is one the router takes as far as JSON Schema can say it.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, model_validator

# Fields OpenAI defines that change the answer and that no stage of ours implements: refused by name.
UNSUPPORTED_FIELDS: dict[str, str] = {
    "functions": "the deprecated 'functions' is not supported; send 'tools' instead",
    "function_call": "the deprecated 'function_call' is not supported; send 'tool_choice' instead",
    "logit_bias": "'logit_bias' is not supported by this server",
    "audio": "audio output is not supported by this server",
    "web_search_options": "web search is not supported by this server",
}
# Fields that do not change the answer: accepted, never forwarded.
IGNORED_FIELDS: tuple[str, ...] = (
    "store",
    "metadata",
    "service_tier",
    "prompt_cache_key",
    "safety_identifier",
    "reasoning_effort",
    "verbosity",
    "user",
    "prediction",
    "modalities",
)
MAX_INT = 2**63 - 1  # the 64-bit range: what orjson can send a stage, and what vLLM and llama.cpp take
MIN_INT = -(2**63)
MAX_STOP_SEQUENCES = 64  # OpenAI allows 4; vLLM and our CPU server take any number, and some clients send more
MAX_TOP_LOGPROBS = 20
FUNCTION_NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


def _integral(value: Any) -> Any:
    """``1.0`` is the JSON number 1: taken as the int (JSON Schema's ``integer`` includes it); ``1.5`` stays a float, refused."""
    if isinstance(value, float) and value.is_integer() and MIN_INT <= value <= MAX_INT:
        return int(value)
    return value


INTEGRAL = BeforeValidator(_integral)
"""On every integer field of the wire protocol, after its ``Field`` (so its bounds stay JSON Schema's ``minimum`` /
``maximum``), which holds it to the 64-bit range: ``Annotated[int, Field(ge=1, le=MAX_INT), INTEGRAL]``."""
Int = Annotated[int, Field(ge=MIN_INT, le=MAX_INT), INTEGRAL]


def _sendable(value: Any) -> Any:
    """A JSON value that is forwarded as it came (a tool's ``parameters``, a format's ``schema``) holds no integer
    beyond the 64-bit range: no stage could be sent it (``orjson`` refuses it), so it is the client's 400, not our 500."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, int) and not MIN_INT <= item <= MAX_INT:
            raise ValueError(f"it holds the integer {item}, beyond the 64-bit range JSON can carry to a stage")
    return value


def _false_if_null(value: Any) -> Any:
    """Null is the flag's default, false: OpenAI's spec marks ``stream`` nullable and vLLM takes null for it (and for
    completions' ``echo``), and SDKs that copy every argument into the body send it so."""
    return False if value is None else value


FlagOrNull = Annotated[bool, BeforeValidator(_false_if_null), WithJsonSchema({"anyOf": [{"type": "boolean"}, {"type": "null"}]})]
"""A flag that defaults to false, where null means the default (``stream``, ``echo``): still a ``bool`` once parsed."""


JSONObject = Annotated[dict[str, Any], AfterValidator(_sendable)]
"""A JSON object forwarded as it came (a JSON schema): anything, within what can be sent on."""
NULL_ONLY: dict[str, Any] = {"type": "null"}
"""The schema of a field declared only so that a value is refused by name (only null passes)."""


def null_only(why: str) -> Any:
    """A field declared so that the error can say "not supported" (any value but null is a 400 naming it)."""
    return Field(None, exclude=True, json_schema_extra={**NULL_ONLY, "description": f"refused unless null: {why}"})


def _none_if_empty(value: Any) -> Any:
    return None if isinstance(value, dict) and not value else value


EmptyIsNull = Annotated[Any, BeforeValidator(_none_if_empty)]
"""A refused map (``logit_bias``) where ``{}`` changes nothing and counts as absent: LangChain and Haystack send it."""


def null_or_empty(why: str) -> Any:
    """``null_only`` for an ``EmptyIsNull`` map: null and ``{}`` pass, anything else is a 400 naming the field."""
    empty = {"type": "object", "maxProperties": 0}
    schema: dict[str, Any] = {"anyOf": [NULL_ONLY, empty], "description": f"refused unless null or {{}}: {why}"}
    return Field(None, exclude=True, json_schema_extra=schema)


def ignored() -> Any:
    """A field accepted and never forwarded: it does not change the answer."""
    return Field(None, exclude=True, description="accepted and ignored: it does not change the answer")


def when(condition: dict[str, Any], then: dict[str, Any]) -> dict[str, Any]:
    """A JSON Schema rule: an object matching ``condition`` (a properties map, each of them present) must match ``then``."""
    return {"if": {"properties": condition, "required": list(condition)}, "then": then}


def add_rules(schema: dict[str, Any], *rules: dict[str, Any]) -> None:
    """Append rules (``when``) to a model's JSON schema, as ``allOf``."""
    schema.setdefault("allOf", []).extend(rules)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Part(BaseModel):
    """Nested objects: strict types, unknown keys ignored (OpenAI ignores them too)."""

    model_config = ConfigDict(extra="ignore", strict=True)


# -- message content -----------------------------------------------------------
class ContentPart(_Part):
    """One part of a message's content. One model with a ``type`` (not a union), so errors name plain paths.

    Image, audio and file parts are parsed so that the error can name them; no stage takes them.
    """

    model_config = ConfigDict(json_schema_extra=lambda schema: _content_part_schema(schema))

    type: Literal["text", "refusal", "image_url", "input_audio", "file"]
    text: str | None = None
    refusal: str | None = None

    @model_validator(mode="after")
    def _check_type(self) -> ContentPart:
        if self.type in ("image_url", "input_audio", "file"):
            kind = {"image_url": "image", "input_audio": "audio", "file": "file"}[self.type]
            raise ParamError("type", f"{kind} input is not supported: no stage of this router takes '{self.type}' parts")
        if self.type == "text" and self.text is None:
            raise ParamError("text", "a 'text' part needs 'text'")
        if self.type == "refusal" and self.refusal is None:
            raise ParamError("refusal", "a 'refusal' part needs 'refusal'")
        return self

    def plain(self) -> str:
        return (self.text if self.type == "text" else self.refusal) or ""


def _content_part_schema(schema: dict[str, Any]) -> None:
    schema["properties"]["type"]["description"] = "'image_url', 'input_audio' and 'file' parts are refused: no stage takes them"
    schema["properties"]["type"]["enum"] = ["text", "refusal"]
    add_rules(schema, when({"type": {"const": "text"}}, {"required": ["text"], "properties": {"text": {"type": "string"}}}),
              when({"type": {"const": "refusal"}}, {"required": ["refusal"], "properties": {"refusal": {"type": "string"}}}))  # fmt: skip


class FunctionCall(_Part):
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ToolCall(_Part):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Part):
    model_config = ConfigDict(json_schema_extra=lambda schema: _message_schema(schema))

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None  # assistant: the calls it made
    tool_call_id: str | None = None  # tool: which call this is the result of
    refusal: str | None = None  # assistant

    @model_validator(mode="after")
    def _check_role_fields(self) -> ChatMessage:
        if isinstance(self.content, list):
            for i, part in enumerate(self.content):
                if part.type == "refusal" and self.role != "assistant":
                    raise ParamError(f"content[{i}].type", "'refusal' parts are only allowed in assistant messages")
        if self.tool_calls is not None and self.role != "assistant":
            raise ParamError("tool_calls", "'tool_calls' is only allowed in assistant messages")
        if self.role == "tool" and not self.tool_call_id:
            raise ParamError("tool_call_id", "a 'tool' message needs 'tool_call_id'")
        if self.tool_call_id is not None and self.role != "tool":
            raise ParamError("tool_call_id", "'tool_call_id' is only allowed in tool messages")
        return self

    def text(self) -> str:
        """The message's text (parts joined); a refusal counts as text, tool calls do not."""
        if self.content is None:
            return self.refusal or ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.plain() for p in self.content)


def _message_schema(schema: dict[str, Any]) -> None:
    """``tool_call_id`` in tool messages only (and needed there), ``tool_calls`` and refusal parts in assistant messages only."""
    not_assistant = {"role": {"enum": ["system", "developer", "user", "tool"]}}
    not_tool = {"role": {"enum": ["system", "developer", "user", "assistant"]}}
    no_refusal = {"anyOf": [{"type": "string"}, {"type": "null"},
                            {"type": "array", "items": {"properties": {"type": {"const": "text"}}}}]}  # fmt: skip
    add_rules(
        schema,
        when(
            {"role": {"const": "tool"}}, {"required": ["tool_call_id"], "properties": {"tool_call_id": {"type": "string", "minLength": 1}}}
        ),
        when(not_tool, {"properties": {"tool_call_id": NULL_ONLY}}),
        when(not_assistant, {"properties": {"tool_calls": NULL_ONLY, "content": no_refusal}}),
    )


# -- tools ---------------------------------------------------------------------
class FunctionDefinition(_Part):
    name: str = Field(pattern=FUNCTION_NAME_PATTERN)
    description: str | None = None
    parameters: JSONObject | None = None  # a JSON schema; absent = no arguments
    strict: bool | None = None


class Tool(_Part):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Part):
    name: str


class AllowedTool(_Part):
    type: Literal["function"]
    function: NamedFunction


class AllowedTools(_Part):
    mode: Literal["auto", "required"]
    tools: list[AllowedTool]


class NamedToolChoice(_Part):
    """``{type: function, function: {name}}``, or ``{type: allowed_tools, allowed_tools: {mode, tools}}``.

    One model with a ``type`` (not a union), so errors name plain paths. An ``allowed_tools`` choice never
    reaches a stage: validating the request turns it into ``tool_choice: <mode>`` with ``tools`` cut to the
    allowed ones (``ChatCompletionRequest._allow_tools``), which every stage that takes tools honours; a
    Responses request's ``allowed_tools`` goes the same way.
    """

    model_config = ConfigDict(json_schema_extra=lambda schema: _tool_choice_schema(schema))

    type: Literal["function", "allowed_tools"]
    function: NamedFunction | None = None
    allowed_tools: AllowedTools | None = None

    @model_validator(mode="after")
    def _check_type(self) -> NamedToolChoice:
        needed = "function" if self.type == "function" else "allowed_tools"
        if getattr(self, needed) is None:
            raise ParamError(needed, f"a 'tool_choice' of type '{self.type}' needs '{needed}'")
        other = "allowed_tools" if self.type == "function" else "function"
        if getattr(self, other) is not None:
            raise ParamError(other, f"'{other}' does not apply to a 'tool_choice' of type '{self.type}'")
        return self

    @property
    def name(self) -> str | None:
        """The function a ``function`` choice forces."""
        return self.function.name if self.function is not None else None


def _tool_choice_schema(schema: dict[str, Any]) -> None:
    add_rules(
        schema,
        when({"type": {"const": "function"}},
             {"required": ["function"], "properties": {"function": {"type": "object"}, "allowed_tools": NULL_ONLY}}),
        when({"type": {"const": "allowed_tools"}},
             {"required": ["allowed_tools"], "properties": {"allowed_tools": {"type": "object"}, "function": NULL_ONLY}}),
    )  # fmt: skip


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


# -- structured outputs --------------------------------------------------------
class JSONSchemaSpec(_Part):
    name: str = Field(pattern=FUNCTION_NAME_PATTERN)
    description: str | None = None
    schema_: JSONObject | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Part):
    """``text``, ``json_object`` or ``json_schema`` (with its ``json_schema`` spec). One model, so errors name plain paths."""

    model_config = ConfigDict(
        json_schema_extra=lambda schema: add_rules(
            schema,
            when({"type": {"const": "json_schema"}}, {"required": ["json_schema"], "properties": {"json_schema": {"type": "object"}}}),
            when({"type": {"enum": ["text", "json_object"]}}, {"properties": {"json_schema": NULL_ONLY}}),
        )
    )

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaSpec | None = None

    @model_validator(mode="after")
    def _check_spec(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ParamError("json_schema", "'response_format' of type 'json_schema' needs 'json_schema'")
        if self.type != "json_schema" and self.json_schema is not None:
            raise ParamError("json_schema", f"'json_schema' only applies to 'response_format' of type 'json_schema', not '{self.type}'")
        return self


class StreamOptions(_Part):
    include_usage: bool = False


# vLLM's sampling extras, on chat and completions alike (vLLM's ranges: each value outside is a 400 naming the field).
# Only a stage of dialect vllm takes them (``router.validity``: the cascade skips the others, a named one is a 400).
# Each maps to the values that switch it off (vLLM's defaults), which change no answer.
EXTRAS_OFF: Mapping[str, tuple[Any, ...]] = MappingProxyType(
    {
        "top_k": (-1, 0),
        "min_p": (0.0,),
        "repetition_penalty": (1.0,),
        "min_tokens": (0,),
        "chat_template_kwargs": ({},),
    }
)
SAMPLING_EXTRAS: tuple[str, ...] = tuple(EXTRAS_OFF)


def extra_in_effect(body: Mapping[str, Any], name: str) -> bool:
    """Whether ``body`` sets the extra ``name`` to a value that changes the answer (not absent, null or ``EXTRAS_OFF``)."""
    value = body.get(name)
    return value is not None and value not in EXTRAS_OFF[name]


def _off_is_absent(name: str) -> AfterValidator:
    """An extra's off value (``EXTRAS_OFF``) is parsed as absent: it changes no answer, so it is not forwarded and
    asks for no stage of dialect vllm (a hosted API would refuse the name), and the stage server reads it as unset."""
    return AfterValidator(lambda value: value if extra_in_effect({name: value}, name) else None)


TopK = Annotated[int, Field(ge=-1, le=MAX_INT), INTEGRAL, _off_is_absent("top_k")]
MinP = Annotated[float, Field(ge=0.0, le=1.0), _off_is_absent("min_p")]
RepetitionPenalty = Annotated[float, Field(gt=0.0, allow_inf_nan=False), _off_is_absent("repetition_penalty")]
MinTokens = Annotated[int, Field(ge=0, le=MAX_INT), INTEGRAL, _off_is_absent("min_tokens")]
TOP_K_DOC = "vLLM extra: sample from the k most likely tokens only; -1 or 0: off (no effect when temperature is 0)"
MIN_P_DOC = "vLLM extra: drop tokens less likely than min_p times the most likely one; 0: off (no effect when temperature is 0)"
REPETITION_PENALTY_DOC = (
    "vLLM extra: > 1 discourages tokens already in the prompt or the output (positive logits divided by it, "
    "negative ones multiplied); 1: off"
)
MIN_TOKENS_DOC = "vLLM extra: no end of sequence and no stop string before this many tokens are generated; at most max_tokens"


def check_min_tokens(min_tokens: int | None, max_tokens: int | None) -> None:
    """vLLM's rule: ``min_tokens`` cannot exceed ``max_tokens`` (when one is given)."""
    if min_tokens is not None and max_tokens is not None and min_tokens > max_tokens:
        raise ParamError("min_tokens", f"'min_tokens' ({min_tokens}) must be at most 'max_tokens' ({max_tokens})")


class StopAndUsage:
    """What a chat and a completions request read alike from their ``stop`` and ``stream_options`` fields."""

    if TYPE_CHECKING:  # the fields, declared by each request model
        stop: str | list[str] | None
        stream_options: StreamOptions | None

    @property
    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(StopAndUsage, _Strict):
    model_config = ConfigDict(json_schema_extra=lambda schema: _request_schema(schema))

    model: str = Field(min_length=1, description="'cascade' (the adaptive ladder) or a stage's name: GET /v1/models", examples=["cascade"])
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: Annotated[int, Field(ge=1, le=MAX_INT), INTEGRAL] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1, le=MAX_INT), INTEGRAL] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    n: Annotated[int, Field(ge=1, le=1), INTEGRAL] | None = None
    stream: FlagOrNull = False
    stream_options: StreamOptions | None = None
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP_SEQUENCES)] | None = None
    seed: Int | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS), INTEGRAL] | None = None
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    # vLLM's sampling extras (``SamplingExtras``): a stage of dialect vllm honours them (so does our CPU server)
    top_k: TopK | None = Field(None, description=TOP_K_DOC)
    min_p: MinP | None = Field(None, description=MIN_P_DOC)
    repetition_penalty: RepetitionPenalty | None = Field(None, description=REPETITION_PENALTY_DOC)
    min_tokens: MinTokens | None = Field(None, description=MIN_TOKENS_DOC)
    chat_template_kwargs: Annotated[JSONObject, _off_is_absent("chat_template_kwargs")] | None = Field(
        None,
        description='vLLM extra: extra variables for the chat template (e.g. {"enable_thinking": false} for Qwen3); '
        "only stages of dialect vllm take it",
    )
    # vLLM extras (draft verification)
    prompt_logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS), INTEGRAL] | None = None
    continue_final_message: bool = False
    add_generation_prompt: bool = True
    # our CPU stage server's extra: "final_message" scores only the final message's positions (null before)
    prompt_logprobs_scope: Literal["all", "final_message"] | None = Field(
        None,
        description="our CPU stage server's extra: final_message (scores for the final message only) needs continue_final_message: true",
    )
    # cascade extras
    cascade_lambda: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] | None = None
    cascade_max_stage: Annotated[int, Field(ge=0, le=MAX_INT), INTEGRAL] | str | None = None

    # Accepted and dropped: they do not change the answer (see IGNORED_FIELDS).
    store: Any = ignored()
    metadata: Any = ignored()
    service_tier: Any = ignored()
    prompt_cache_key: Any = ignored()
    safety_identifier: Any = ignored()
    reasoning_effort: Any = ignored()
    verbosity: Any = ignored()
    user: Any = ignored()
    prediction: Any = ignored()
    modalities: Any = Field(
        None, exclude=True, json_schema_extra={"anyOf": [NULL_ONLY, {"const": ["text"]}], "description": "only text output"}
    )
    # Declared so the error can say "not supported" instead of "unrecognized".
    functions: Any = null_only(UNSUPPORTED_FIELDS["functions"])
    function_call: Any = null_only(UNSUPPORTED_FIELDS["function_call"])
    logit_bias: EmptyIsNull = null_or_empty(UNSUPPORTED_FIELDS["logit_bias"])
    audio: Any = null_only(UNSUPPORTED_FIELDS["audio"])
    web_search_options: Any = null_only(UNSUPPORTED_FIELDS["web_search_options"])

    @model_validator(mode="after")
    def _check_combinations(self) -> ChatCompletionRequest:
        for name, message in UNSUPPORTED_FIELDS.items():
            if getattr(self, name) is not None:
                raise ParamError(name, message)
        if self.modalities is not None and self.modalities != ["text"]:
            raise ParamError("modalities", "'modalities': only 'text' output is supported by this server")
        check_min_tokens(self.min_tokens, self.token_limit)
        if self.top_logprobs and not self.logprobs:
            raise ParamError("top_logprobs", "'top_logprobs' requires 'logprobs' to be true")
        if self.stream_options is not None and not self.stream:
            raise ParamError("stream_options", "'stream_options' is only allowed when 'stream' is true")
        if self.prompt_logprobs is not None and self.stream:
            raise ParamError("prompt_logprobs", "'prompt_logprobs' is not available with 'stream': true")
        if self.prompt_logprobs_scope == "final_message" and not self.continue_final_message:
            raise ParamError("prompt_logprobs_scope", "'prompt_logprobs_scope': 'final_message' needs 'continue_final_message': true")
        if self.continue_final_message:
            if self.add_generation_prompt:
                raise ParamError("continue_final_message", "'continue_final_message' needs 'add_generation_prompt': false")
            if self.messages[-1].role != "assistant":
                raise ParamError("messages", "'continue_final_message' needs a final assistant message")
        self._check_tools()
        return self

    def _check_tools(self) -> None:
        names = [t.function.name for t in self.tools or ()]
        if len(set(names)) != len(names):
            raise ParamError("tools", "'tools' must name each function once")
        self._allow_tools(names)
        names = [t.function.name for t in self.tools or ()]
        choice = self.tool_choice
        if isinstance(choice, NamedToolChoice) and choice.name not in names:
            raise ParamError("tool_choice", f"'tool_choice' names function '{choice.name}', which is not in 'tools'")
        if choice == "required" and not names:
            raise ParamError("tool_choice", "'tool_choice': 'required' needs at least one tool in 'tools'")
        forced = choice is not None and choice != "auto"
        if self.structured is not None and self.calls_tools and forced:
            raise ParamError("response_format", "'response_format' cannot be combined with a forced 'tool_choice'")

    def _allow_tools(self, names: list[str]) -> None:
        """An ``allowed_tools`` choice is ``tool_choice: <mode>`` over the allowed tools only: the model may call those and
        no others, and a stage need not know the choice (no stage server of ours does)."""
        choice = self.tool_choice
        if not isinstance(choice, NamedToolChoice) or choice.allowed_tools is None:
            return
        allowed = [t.function.name for t in choice.allowed_tools.tools]
        for i, name in enumerate(allowed):
            if name not in names:
                raise ParamError(
                    f"tool_choice.allowed_tools.tools[{i}]", f"'tool_choice' allows function '{name}', which is not in 'tools'"
                )
        self.tools = [t for t in self.tools or () if t.function.name in allowed]
        self.tool_choice = choice.allowed_tools.mode

    @property
    def calls_tools(self) -> bool:
        """Whether the model may answer with tool calls (tools offered and not switched off)."""
        return bool(self.tools) and self.tool_choice != "none"

    @property
    def structured(self) -> Literal["json_object", "json_schema"] | None:
        """The structured-output mode asked for, if any."""
        fmt = self.response_format
        if fmt is None or fmt.type == "text":
            return None
        return fmt.type

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def upstream_body(self, exclude: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
        """The request as a stage receives it: no ignored fields, no nulls, JSON names (``schema``).

        ``tools: []`` and ``tool_choice`` without tools are no-ops and are left out,
        so a stage that cannot do tools never sees them.
        """
        body = self.model_dump(exclude_none=True, by_alias=True, exclude=set(exclude))
        if not self.tools:
            for name in ("tools", "tool_choice", "parallel_tool_calls"):
                body.pop(name, None)
        return body


def _request_schema(schema: dict[str, Any]) -> None:
    """The combinations ``_check_combinations`` refuses, as far as JSON Schema can say them (not: which function
    ``tool_choice`` names, duplicate tool names, ``continue_final_message``'s final assistant message).

    Each rule doubles the cases a schema-driven generator works through for every property (Schemathesis gives up
    past a few thousand intersections: six rules over this model's ~48 properties is past it), so the rule of our
    own stage server's extra, ``prompt_logprobs_scope: final_message`` needs ``continue_final_message: true``, is
    said in that field's description and enforced by validation, not written here."""
    present = {"not": NULL_ONLY}
    add_rules(
        schema,
        when({"top_logprobs": {"type": "integer", "minimum": 1}}, {"required": ["logprobs"], "properties": {"logprobs": {"const": True}}}),
        when({"stream_options": present}, {"required": ["stream"], "properties": {"stream": {"const": True}}}),
        when({"prompt_logprobs": present}, {"properties": {"stream": {"const": False}}}),
        when({"continue_final_message": {"const": True}},
             {"required": ["add_generation_prompt"], "properties": {"add_generation_prompt": {"const": False}}}),
        when({"tool_choice": {"const": "required"}}, {"required": ["tools"], "properties": {"tools": {"type": "array", "minItems": 1}}}),
    )  # fmt: skip


class ParamError(ValueError):
    """A request parameter is invalid; ``param`` names it for the error body.

    Raised inside a nested model (a message), ``param`` is relative to it; the
    location pydantic reports is put in front (``messages[1].tool_call_id``).
    """

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param
        self.message = message
