"""Pydantic models of the OpenAI chat-completions dialect the whole project speaks.

One definition serves the router's public API, the CPU stage server and the
stage clients. It carries vLLM's extras used for draft verification
(``prompt_logprobs``, ``continue_final_message``, ``add_generation_prompt``)
and the cascade's own extras (``cascade_lambda``, ``cascade_max_stage``).

Validation is strict (no silent coercion of ``"1"`` to ``1``) and unknown
fields are refused, as the OpenAI API does, so a typo never passes unnoticed.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Fields OpenAI defines that no stage of ours implements: refused by name.
UNSUPPORTED_FIELDS: tuple[str, ...] = (
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "parallel_tool_calls",
    "logit_bias",
    "audio",
    "modalities",
    "prediction",
    "web_search_options",
)
MAX_STOP_SEQUENCES = 4
MAX_TOP_LOGPROBS = 20


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(_Strict):
    include_usage: bool = False


class ResponseFormat(_Strict):
    type: Literal["text"]


class ChatCompletionRequest(_Strict):
    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    n: Annotated[int, Field(ge=1, le=1)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP_SEQUENCES)] | None = None
    seed: int | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    response_format: ResponseFormat | None = None
    user: str | None = None
    # vLLM extras (draft verification)
    prompt_logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    continue_final_message: bool = False
    add_generation_prompt: bool = True
    # our CPU stage server's extra: "final_message" scores only the final message's positions (null before)
    prompt_logprobs_scope: Literal["all", "final_message"] | None = None
    # cascade extras
    cascade_lambda: Annotated[float, Field(ge=0.0)] | None = None
    cascade_max_stage: Annotated[int, Field(ge=0)] | str | None = None

    # Unsupported OpenAI fields are declared so the error can say "not supported"
    # instead of "unrecognized".
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None
    parallel_tool_calls: Any = None
    logit_bias: Any = None
    audio: Any = None
    modalities: Any = None
    prediction: Any = None
    web_search_options: Any = None

    @model_validator(mode="after")
    def _check_combinations(self) -> ChatCompletionRequest:
        for name in UNSUPPORTED_FIELDS:
            if getattr(self, name) is not None:
                raise ParamError(name, f"'{name}' is not supported by this server")
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
                raise ParamError(
                    "continue_final_message",
                    "'continue_final_message' needs 'add_generation_prompt': false",
                )
            if self.messages[-1].role != "assistant":
                raise ParamError("messages", "'continue_final_message' needs a final assistant message")
        return self

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ParamError(ValueError):
    """A request parameter is invalid; ``param`` names it for the error body."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param
        self.message = message
