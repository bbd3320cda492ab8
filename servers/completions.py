"""The legacy ``/v1/completions`` dialect (vLLM-compatible) for the CPU stage server.

The request model lives here for now; it belongs in ``common/`` beside the chat
protocol so that the router can share it.

What is taken: one text ``prompt`` (a string, or a list holding one string),
``max_tokens`` (default 16; 0 only with ``echo``: the prompt scored, nothing
generated), ``temperature``, ``top_p``, ``seed``, ``stop``, ``stream`` (with
``stream_options.include_usage``), ``logprobs`` (an int: the top alternatives per
position) and ``echo``. No chat template is applied. Token-id prompts, several
prompts, ``n``/``best_of`` above 1, ``suffix``, ``logit_bias`` and penalties get a
400 naming the field.

``logprobs`` comes back in the completions shape, as vLLM writes it:
``{tokens, token_logprobs, top_logprobs: [{token: logprob}], text_offset}``; each
``top_logprobs`` entry holds the top ``logprobs`` alternatives plus the chosen
token; with ``echo`` the prompt's positions come first, the first one ``null``.
``text_offset`` is the offset of each token's text in the returned text (counted
over the token strings, as vLLM counts them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from common.errors import APIError, from_validation_error
from common.protocol import MAX_STOP_SEQUENCES, MAX_TOP_LOGPROBS, ParamError, StreamOptions

DEFAULT_COMPLETION_TOKENS = 16


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    model: str = Field(min_length=1)
    prompt: Any = None
    max_tokens: Annotated[int, Field(ge=0)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    n: Annotated[int, Field(ge=1, le=1)] | None = None
    best_of: Annotated[int, Field(ge=1, le=1)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP_SEQUENCES)] | None = None
    seed: int | None = None
    logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    echo: bool = False
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    suffix: str | None = None
    logit_bias: Any = Field(None, exclude=True)
    user: Any = Field(None, exclude=True)  # does not change the answer

    @model_validator(mode="after")
    def _check(self) -> CompletionRequest:
        self.prompt_text  # noqa: B018 (validates)
        if self.suffix:
            raise ParamError("suffix", "'suffix' is not supported by this server")
        if self.logit_bias is not None:
            raise ParamError("logit_bias", "'logit_bias' is not supported by this server")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise ParamError(name, f"'{name}' is not supported by the llama.cpp stage server")
        if self.stream_options is not None and not self.stream:
            raise ParamError("stream_options", "'stream_options' is only allowed when 'stream' is true")
        if self.max_tokens == 0 and not self.echo:
            raise ParamError("max_tokens", "'max_tokens' must be at least 1 (0 is only allowed with 'echo': true)")
        return self

    @property
    def prompt_text(self) -> str:
        p = self.prompt
        if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str):
            p = p[0]
        if isinstance(p, str):
            if not p:
                raise ParamError("prompt", "'prompt' must not be empty")
            return p
        if p is None:
            raise ParamError("prompt", "Missing required parameter: 'prompt'")
        if isinstance(p, list) and p and all(isinstance(x, int | list) for x in p):
            raise ParamError("prompt", "token-id prompts are not supported by this server; send the prompt as text")
        if isinstance(p, list) and len(p) > 1 and all(isinstance(x, str) for x in p):
            raise ParamError("prompt", "one prompt per request: 'prompt' must be a string or a list holding one string")
        raise ParamError("prompt", "'prompt' must be a string or a list holding one string")

    @property
    def token_limit(self) -> int:
        return DEFAULT_COMPLETION_TOKENS if self.max_tokens is None else self.max_tokens

    @property
    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


def parse_completion_request(body: bytes) -> CompletionRequest:
    """Validate a raw JSON body; raise ``APIError`` (400) naming the bad field."""
    if not body:
        raise APIError(400, "Request body is empty; expected a JSON object")
    try:
        return CompletionRequest.model_validate_json(body)
    except ValidationError as exc:
        raise from_validation_error(exc) from None


class CompletionLogprobs:
    """Accumulates the completions-API ``logprobs`` object, position by position."""

    def __init__(self, offset: int = 0) -> None:
        self.tokens: list[str] = []
        self.token_logprobs: list[float | None] = []
        self.top_logprobs: list[dict[str, float] | None] = []
        self.text_offset: list[int] = []
        self._offset = offset

    def add(self, token: str, logprob: float | None, top: Sequence[tuple[str, float]] | None) -> None:
        self.tokens.append(token)
        self.token_logprobs.append(logprob)
        if top is None or logprob is None:
            self.top_logprobs.append(None)
        else:
            entry = dict(top)
            entry.setdefault(token, logprob)
            self.top_logprobs.append(entry)
        self.text_offset.append(self._offset)
        self._offset += len(token)

    def take(self) -> dict[str, object]:
        """The positions added since the last ``take`` (a stream's chunk), in the API's shape."""
        out: dict[str, object] = {
            "tokens": self.tokens,
            "token_logprobs": self.token_logprobs,
            "top_logprobs": self.top_logprobs,
            "text_offset": self.text_offset,
        }
        self.tokens, self.token_logprobs, self.top_logprobs, self.text_offset = [], [], [], []
        return out
