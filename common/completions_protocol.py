"""Pydantic model of the legacy completions dialect (``POST /v1/completions``, vLLM-compatible) and its logprobs shape.

One definition serves the router's public ``/v1/completions`` and the CPU stage
server (``servers/completions.py`` adds what only llama.cpp cannot do), like
``common.protocol`` does for chat, and follows its conventions:

* top-level fields are strict and an unknown one is refused (a typo never passes);
* what does not change the answer (``user``, ``metadata``, ``store``, ...) is
  accepted and dropped: ``upstream_body`` never forwards it;
* what changes the answer and no stage of ours can honour is a 400 naming the
  field: token-id prompts, several prompts, ``n``/``best_of`` above 1, a
  ``suffix``, a non-empty ``logit_bias`` (``{}`` biases nothing: accepted and dropped).

What is taken: one text ``prompt`` (a string, or a list holding one string),
``max_tokens`` (default 16; 0 only with ``echo``: the prompt scored, nothing
generated), ``temperature``, ``top_p``, ``seed``, ``stop``, the penalties (a
vLLM stage honours them; the CPU stage server refuses them), vLLM's sampling
extras ``top_k``, ``min_p``, ``repetition_penalty`` and ``min_tokens`` (forwarded;
only stages of dialect vllm take them; chat's ``chat_template_kwargs`` is accepted
and dropped: no template applies here), ``stream`` (with
``stream_options.include_usage``), ``logprobs`` (an int: the top alternatives
per position) and ``echo``, plus the cascade's extras (``cascade_lambda``,
``cascade_max_stage``). No chat template is applied anywhere.

``logprobs`` comes back in the completions shape, as vLLM writes it:
``{tokens, token_logprobs, top_logprobs: [{token: logprob}], text_offset}``; each
``top_logprobs`` entry holds the top ``logprobs`` alternatives plus the chosen
token; with ``echo`` the prompt's positions come first, the first one ``null``.
``text_offset`` is the offset of each token's text in the returned text (counted
over the token strings, as vLLM counts them). ``CompletionLogprobs`` builds that
object; ``chat_entries`` and ``entries_logprobs`` translate between it and chat's
``logprobs.content`` entries, which the router's draft code works in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from common.errors import parse_request
from common.protocol import (
    INTEGRAL,
    MAX_INT,
    MAX_STOP_SEQUENCES,
    MAX_TOP_LOGPROBS,
    MIN_P_DOC,
    MIN_TOKENS_DOC,
    NULL_ONLY,
    REPETITION_PENALTY_DOC,
    TOP_K_DOC,
    EmptyIsNull,
    FlagOrNull,
    Int,
    MinP,
    MinTokens,
    ParamError,
    RepetitionPenalty,
    StopAndUsage,
    StreamOptions,
    TopK,
    add_rules,
    check_min_tokens,
    ignored,
    null_or_empty,
    when,
)

DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's and vLLM's default max_tokens for completions
# Fields that do not change the answer: accepted, never forwarded (the chat protocol drops the same ones).
IGNORED_FIELDS: tuple[str, ...] = ("user", "metadata", "store", "service_tier", "prompt_cache_key", "safety_identifier")
CASCADE_FIELDS: tuple[str, ...] = ("cascade_lambda", "cascade_max_stage")
_PROMPT_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "string", "minLength": 1},
        {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1, "maxItems": 1},
    ],
    "description": "one text prompt: a string, or a list holding one string (token ids and several prompts are refused)",
}


def _request_schema(schema: dict[str, Any]) -> None:
    """``prompt`` is needed; ``stream_options`` only with ``stream``; ``max_tokens: 0`` only with ``echo`` (as ``_check``)."""
    schema["required"] = ["model", "prompt"]
    schema["properties"]["prompt"].pop("default", None)
    add_rules(
        schema,
        when({"stream_options": {"not": NULL_ONLY}}, {"required": ["stream"], "properties": {"stream": {"const": True}}}),
        when({"max_tokens": {"const": 0}}, {"required": ["echo"], "properties": {"echo": {"const": True}}}),
    )


class CompletionRequest(StopAndUsage, BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=lambda schema: _request_schema(schema))

    model: str = Field(min_length=1, description="'cascade' (the adaptive ladder) or a stage's name: GET /v1/models", examples=["cascade"])
    prompt: Any = Field(None, json_schema_extra=_PROMPT_SCHEMA)  # checked by ``prompt_text``: each wrong shape gets its own message
    max_tokens: Annotated[int, Field(ge=0, le=MAX_INT), INTEGRAL] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    n: Annotated[int, Field(ge=1, le=1), INTEGRAL] | None = None
    best_of: Annotated[int, Field(ge=1, le=1), INTEGRAL] | None = None
    stream: FlagOrNull = False
    stream_options: StreamOptions | None = None
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP_SEQUENCES)] | None = None
    seed: Int | None = None
    logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS), INTEGRAL] | None = None
    echo: FlagOrNull = False
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    # vLLM's sampling extras (``common.protocol.SAMPLING_EXTRAS``): a stage of dialect vllm honours them (so does our CPU server)
    top_k: TopK | None = Field(None, description=TOP_K_DOC)
    min_p: MinP | None = Field(None, description=MIN_P_DOC)
    repetition_penalty: RepetitionPenalty | None = Field(None, description=REPETITION_PENALTY_DOC)
    min_tokens: MinTokens | None = Field(None, description=MIN_TOKENS_DOC)
    # only an empty one passes the check: nothing to forward
    suffix: str | None = Field(None, exclude=True, json_schema_extra={"anyOf": [NULL_ONLY, {"const": ""}], "description": "only ''"})
    # cascade extras
    cascade_lambda: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] | None = None
    cascade_max_stage: Annotated[int, Field(ge=0, le=MAX_INT), INTEGRAL] | str | None = None

    # Accepted and dropped: they do not change the answer (see IGNORED_FIELDS).
    user: Any = ignored()
    metadata: Any = ignored()
    store: Any = ignored()
    service_tier: Any = ignored()
    prompt_cache_key: Any = ignored()
    safety_identifier: Any = ignored()
    # a chat extra (vLLM's): no chat template is applied to a completions prompt, so it changes nothing here
    chat_template_kwargs: Any = ignored()
    # Declared so the error can say "not supported" instead of "unrecognized".
    logit_bias: EmptyIsNull = null_or_empty("'logit_bias' is not supported by this server")

    @model_validator(mode="after")
    def _check(self) -> CompletionRequest:
        self.prompt_text  # noqa: B018 (validates)
        if self.suffix:
            raise ParamError("suffix", "'suffix' is not supported by this server")
        if self.logit_bias is not None:
            raise ParamError("logit_bias", "'logit_bias' is not supported by this server")
        if self.stream_options is not None and not self.stream:
            raise ParamError("stream_options", "'stream_options' is only allowed when 'stream' is true")
        if self.max_tokens == 0 and not self.echo:
            raise ParamError("max_tokens", "'max_tokens' must be at least 1 (0 is only allowed with 'echo': true)")
        check_min_tokens(self.min_tokens, self.token_limit)
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

    def upstream_body(self, exclude: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
        """The request as a stage receives it: no ignored fields, no nulls, the prompt as one string
        (a list holding one string is the same request, and a stage may take only the string)."""
        body = self.model_dump(exclude_none=True, exclude=set(exclude))
        if "prompt" in body:
            body["prompt"] = self.prompt_text
        return body


def parse_completion_request(body: bytes, model: type[CompletionRequest] = CompletionRequest) -> CompletionRequest:
    """Validate a raw JSON body as ``model``; raise ``APIError`` (400) naming the bad field."""
    return parse_request(body, model)


class CompletionLogprobs:
    """Accumulates the completions-API ``logprobs`` object, position by position."""

    def __init__(self, offset: int = 0) -> None:
        self.tokens: list[str] = []
        self.token_logprobs: list[float | None] = []
        self.top_logprobs: list[dict[str, float] | None] = []
        self.text_offset: list[int] = []
        self._offset = offset

    def add(self, token: str, logprob: float | None, top: Iterable[tuple[str, float]] | None) -> None:
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


def top_alternatives(top: Mapping[str, float] | None, k: int) -> list[tuple[str, float]]:
    """The ``k`` most likely of one position's ``{token: logprob}`` alternatives, most likely first.

    The dict is not in rank order (vLLM puts the chosen token first) and may hold the chosen
    token beyond the top ``k``, so it is sorted and cut.
    """
    if not top or k <= 0:
        return []
    return sorted(top.items(), key=lambda kv: kv[1], reverse=True)[:k]


def chat_entries(logprobs: Mapping[str, Any] | None, k: int, start: int = 0) -> list[dict[str, Any]]:
    """A completions ``logprobs`` object's positions from ``start`` as chat ``logprobs.content`` entries
    (``token``, ``logprob``, ``bytes``, ``top_logprobs``: the ``k`` most likely alternatives).

    A position without a logprob (the first of an ``echo``) cannot be an entry: it ends the list there.
    """
    if not logprobs:
        return []
    tokens: Sequence[str] = logprobs.get("tokens") or ()
    values: Sequence[float | None] = logprobs.get("token_logprobs") or ()
    tops: Sequence[Mapping[str, float] | None] = logprobs.get("top_logprobs") or ()
    out: list[dict[str, Any]] = []
    for i in range(start, min(len(tokens), len(values))):
        value = values[i]
        if value is None:
            break
        top = top_alternatives(tops[i] if i < len(tops) else None, k)
        out.append(
            {
                "token": tokens[i],
                "logprob": value,
                "bytes": list(tokens[i].encode()),
                "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in top],
            }
        )
    return out


def entries_logprobs(entries: Iterable[Mapping[str, Any]], out: CompletionLogprobs | None = None) -> CompletionLogprobs:
    """Chat ``logprobs.content`` entries added to a completions ``logprobs`` accumulator (a new one by default)."""
    out = out if out is not None else CompletionLogprobs()
    for e in entries:
        out.add(e["token"], e["logprob"], ((a["token"], a["logprob"]) for a in e.get("top_logprobs") or ()))
    return out
