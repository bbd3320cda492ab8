"""Pydantic models of OpenAI's Responses API request (``POST /v1/responses``), and its translation to chat completions.

The router has one way of answering: a chat completion, from the cascade or
from a named stage. A Responses request is therefore translated into the
chat-completions request of ``common.protocol`` and validated as that too, so
both endpoints accept, refuse and answer the same way (``router.openai.responses``
translates the answer back).

What it accepts follows OpenAI, as ``common.protocol`` does for chat:

* Top-level fields are strict and an unknown one is refused naming it; inside
  input items, content parts, tools and formats unknown keys are ignored (the
  SDKs send back the ``id`` and ``status`` of earlier output items, for one).
* It is stateless: nothing is stored, so whatever needs a stored response,
  conversation or prompt (``store: true``, ``previous_response_id``,
  ``conversation``, ``prompt``, ``background: true``, ``item_reference``
  items) is a 400 naming the field; clients send the whole conversation in
  ``input`` instead.
* Fields that do not change the answer (``metadata``, ``user``,
  ``service_tier``, ``store: false``, ``truncation``, ``include``,
  ``reasoning``, ...) are accepted and never forwarded.
* What changes the answer and no stage can honour (image, file and audio
  input, built-in tools such as web or file search and computer use,
  ``moderation``) is a 400 that names the field.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator

from common.errors import APIError, parse_chat_request, parse_request
from common.protocol import (
    FUNCTION_NAME_PATTERN,
    INTEGRAL,
    MAX_INT,
    MAX_TOP_LOGPROBS,
    NULL_ONLY,
    ChatCompletionRequest,
    FlagOrNull,
    JSONObject,
    ParamError,
    add_rules,
    ignored,
    when,
)

LOGPROBS_INCLUDE = "message.output_text.logprobs"  # the ``include`` value that asks for the output text's logprobs
_STATELESS = "this router is stateless and stores nothing"
_RESEND = "send the whole conversation in 'input'"
_MEDIA_PARTS = {"input_image": "image", "input_file": "file", "input_audio": "audio"}
_TEXT_PARTS = ("input_text", "output_text")
_FUNCTION_NAME = re.compile(FUNCTION_NAME_PATTERN)
_NOTHING_STORED = "refused unless null or false: this router is stateless and stores nothing; send the whole conversation in 'input'"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Part(BaseModel):
    """Nested objects: strict types, unknown keys ignored (as OpenAI ignores them)."""

    model_config = ConfigDict(extra="ignore", strict=True)


# -- input -----------------------------------------------------------------------
class InputContent(_Part):
    """One content part of an input message, or of a function call's output.

    One model with a ``type`` (not a union), so errors name plain paths; image,
    file and audio parts are parsed so that the error can name them.
    """

    model_config = ConfigDict(json_schema_extra=lambda schema: _content_schema(schema))

    type: str
    text: str | None = None
    refusal: str | None = None

    @model_validator(mode="after")
    def _check_type(self) -> InputContent:
        if self.type in _MEDIA_PARTS:
            raise ParamError("type", f"{_MEDIA_PARTS[self.type]} input is not supported: no stage of this router takes '{self.type}' parts")
        if self.type not in (*_TEXT_PARTS, "refusal"):
            raise ParamError("type", f"unknown content part type '{self.type}'; expected 'input_text', 'output_text' or 'refusal'")
        if self.type in _TEXT_PARTS and self.text is None:
            raise ParamError("text", f"an '{self.type}' part needs 'text'")
        if self.type == "refusal" and self.refusal is None:
            raise ParamError("refusal", "a 'refusal' part needs 'refusal'")
        return self

    def chat(self) -> dict[str, str]:
        """The chat-completions content part."""
        if self.type == "refusal":
            return {"type": "refusal", "refusal": self.refusal or ""}
        return {"type": "text", "text": self.text or ""}


_STRING = {"type": "string"}


def _needs(*names: str) -> dict[str, Any]:
    """A rule's ``then``: these fields present, and strings."""
    return {"required": list(names), "properties": dict.fromkeys(names, _STRING)}


def _require(what: str, **fields: object) -> None:
    """Refuse the first of ``fields`` (by their request names) that is missing: "a 'message' item needs 'role'"."""
    for name, value in fields.items():
        if value is None:
            raise ParamError(name, f"{what} needs '{name}'")


def _content_schema(schema: dict[str, Any]) -> None:
    schema["properties"]["type"] = {"enum": [*_TEXT_PARTS, "refusal"], "description": "image, file and audio parts are refused"}
    add_rules(schema, when({"type": {"enum": list(_TEXT_PARTS)}}, _needs("text")), when({"type": {"const": "refusal"}}, _needs("refusal")))


class InputItem(_Part):
    """One item of ``input``: a message, a function call the model made, or a function call's output.

    One model for every item type (``type`` defaults to ``message``, as in OpenAI's
    "easy" input messages), so errors name plain paths such as ``input[2].call_id``.
    """

    model_config = ConfigDict(json_schema_extra=lambda schema: _item_schema(schema))

    type: str = "message"
    role: Literal["user", "system", "developer", "assistant"] | None = None
    content: str | list[InputContent] | None = None
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | list[InputContent] | None = None

    @model_validator(mode="after")
    def _check_type(self) -> InputItem:
        if self.type == "message":
            _require("a 'message' item", role=self.role, content=self.content)
            if isinstance(self.content, list) and self.role != "assistant":
                for i, part in enumerate(self.content):
                    if part.type == "refusal":
                        raise ParamError(f"content[{i}].type", "'refusal' parts are only allowed in assistant messages")
        elif self.type == "function_call":
            _require("a 'function_call' item", call_id=self.call_id, name=self.name, arguments=self.arguments)
        elif self.type == "function_call_output":
            _require("a 'function_call_output' item", call_id=self.call_id, output=self.output)
            if not self.call_id:  # it becomes a chat tool message's tool_call_id, which must not be empty
                raise ParamError("call_id", "a 'function_call_output' item needs a non-empty 'call_id'")
            if isinstance(self.output, list):
                for i, part in enumerate(self.output):
                    if part.type != "input_text":
                        raise ParamError(f"output[{i}].type", "a function call's output takes 'input_text' parts only")
        elif self.type == "item_reference":
            raise ParamError("type", f"'item_reference' items are not supported: {_STATELESS}; send the item itself")
        elif self.type == "reasoning":
            raise ParamError("type", "'reasoning' items are not supported: no stage of this router produces or takes reasoning")
        else:
            raise ParamError(
                "type",
                f"input items of type '{self.type}' are not supported; expected 'message', 'function_call' or 'function_call_output'",
            )
        return self

    def output_text(self) -> str:
        """A function call's output as the text of the chat ``tool`` message."""
        if isinstance(self.output, str):
            return self.output
        return "".join(p.text or "" for p in self.output or ())


def _item_schema(schema: dict[str, Any]) -> None:
    """What ``_check_type`` needs of each item type (``type`` absent: a message)."""
    schema["properties"]["type"] = {"enum": ["message", "function_call", "function_call_output"], "default": "message",
                                    "description": "item_reference and reasoning items are refused: nothing is stored"}  # fmt: skip
    text_only = {"type": "array", "items": {"properties": {"type": {"const": "input_text"}}}}
    no_refusal = {"anyOf": [_STRING, {"type": "array", "items": {"properties": {"type": {"enum": list(_TEXT_PARTS)}}}}]}
    message = {"required": ["role", "content"], "properties": {"role": {"not": NULL_ONLY}, "content": {"not": NULL_ONLY}}}
    schema["allOf"] = [
        {"if": {"properties": {"type": {"const": "message"}}}, "then": message},  # absent counts as a message
        {"if": {"properties": {"role": {"enum": ["user", "system", "developer"]}}, "required": ["role"]},
         "then": {"properties": {"content": no_refusal}}},
        when({"type": {"const": "function_call"}}, _needs("call_id", "name", "arguments")),
        when({"type": {"const": "function_call_output"}},
             {"required": ["call_id", "output"],
              "properties": {"call_id": {"type": "string", "minLength": 1}, "output": {"anyOf": [_STRING, text_only]}}}),
    ]  # fmt: skip


# -- tools -----------------------------------------------------------------------
class FunctionTool(_Part):
    """A tool in the Responses shape: flat (``name`` next to ``type``), unlike chat's nested ``function``.

    Built-in tools (web search, file search, computer use, code interpreter, MCP, ...) are
    parsed so that the error can name them: this router runs no tools of its own.
    """

    model_config = ConfigDict(
        json_schema_extra=lambda schema: schema.update(
            required=["type", "name"],
            properties={
                **schema["properties"],
                "type": {"const": "function", "description": "built-in tools are refused"},
                "name": {"type": "string", "pattern": FUNCTION_NAME_PATTERN},
            },
        )  # fmt: skip
    )

    type: str
    name: str | None = None
    description: str | None = None
    parameters: JSONObject | None = None
    strict: bool | None = None

    @model_validator(mode="after")
    def _check_type(self) -> FunctionTool:
        if self.type != "function":
            raise ParamError(
                "type", f"built-in tool '{self.type}' is not supported: this router runs no tools itself; only 'function' tools"
            )
        if self.name is None:
            raise ParamError("name", "a 'function' tool needs 'name'")
        if not _FUNCTION_NAME.match(self.name):
            raise ParamError("name", f"invalid function name '{self.name}': it must match {FUNCTION_NAME_PATTERN}")
        return self

    def chat(self) -> dict[str, Any]:
        """The chat-completions tool."""
        function: dict[str, Any] = {"name": self.name}
        for key in ("description", "parameters", "strict"):
            if getattr(self, key) is not None:
                function[key] = getattr(self, key)
        return {"type": "function", "function": function}

    def echo(self) -> dict[str, Any]:
        """The tool as the response echoes it (OpenAI's ``FunctionTool``)."""
        return {
            "type": "function",
            "name": self.name,
            "description": self.description,
            "parameters": self.parameters,
            "strict": self.strict,
        }


class ToolChoiceObject(_Part):
    """``{type: function, name}`` or ``{type: allowed_tools, mode, tools}``; built-in tool types are refused by name."""

    model_config = ConfigDict(json_schema_extra=lambda schema: _choice_schema(schema))

    type: str
    name: str | None = None
    mode: Literal["auto", "required"] | None = None
    tools: list[JSONObject] | None = None

    @model_validator(mode="after")
    def _check_type(self) -> ToolChoiceObject:
        if self.type == "function":
            if self.name is None:
                raise ParamError("name", "a 'tool_choice' of type 'function' needs 'name'")
        elif self.type == "allowed_tools":
            if self.mode is None or self.tools is None:
                raise ParamError(
                    "mode" if self.mode is None else "tools", "a 'tool_choice' of type 'allowed_tools' needs 'mode' and 'tools'"
                )
            for i, tool in enumerate(self.tools):
                if tool.get("type") != "function" or not isinstance(tool.get("name"), str):
                    raise ParamError(f"tools[{i}]", "'allowed_tools' may list function tools only: {'type': 'function', 'name': ...}")
        else:
            raise ParamError("type", f"a 'tool_choice' of type '{self.type}' is not supported: only function tools are")
        return self

    @property
    def allowed(self) -> list[str]:
        """The function names an ``allowed_tools`` choice permits."""
        return [str(t["name"]) for t in self.tools or ()]


def _choice_schema(schema: dict[str, Any]) -> None:
    schema["properties"]["type"] = {"enum": ["function", "allowed_tools"], "description": "built-in tool types are refused"}
    listed = {"type": "object", "required": ["type", "name"], "properties": {"type": {"const": "function"}, "name": _STRING}}
    add_rules(
        schema,
        when({"type": {"const": "function"}}, _needs("name")),
        when({"type": {"const": "allowed_tools"}}, {"required": ["mode", "tools"], "properties": {
            "mode": {"enum": ["auto", "required"]}, "tools": {"type": "array", "items": listed}}}),
    )  # fmt: skip


# -- text format -----------------------------------------------------------------
class TextFormat(_Part):
    """``text.format``: ``text``, ``json_object`` or ``json_schema`` (flat: ``name`` and ``schema`` next to ``type``)."""

    model_config = ConfigDict(
        json_schema_extra=lambda schema: add_rules(
            schema, when({"type": {"const": "json_schema"}}, {"required": ["name", "schema"], "properties": {"schema": {"type": "object"}}})
        )
    )

    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(None, pattern=FUNCTION_NAME_PATTERN)
    description: str | None = None
    schema_: JSONObject | None = Field(None, alias="schema")
    strict: bool | None = None

    @model_validator(mode="after")
    def _check_spec(self) -> TextFormat:
        if self.type == "json_schema":
            _require("a 'json_schema' format", name=self.name, schema=self.schema_)
        return self

    def chat(self) -> dict[str, Any] | None:
        """The chat-completions ``response_format`` (None for plain text)."""
        if self.type == "text":
            return None
        if self.type == "json_object":
            return {"type": "json_object"}
        spec: dict[str, Any] = {"name": self.name, "schema": self.schema_}
        if self.description is not None:
            spec["description"] = self.description
        if self.strict is not None:
            spec["strict"] = self.strict
        return {"type": "json_schema", "json_schema": spec}


class TextConfig(_Part):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None  # does not change what a stage does: echoed, not forwarded


class ResponsesStreamOptions(_Part):
    include_obfuscation: bool | None = None  # no obfuscation padding is sent; accepted for clients that set it


# -- the request -----------------------------------------------------------------
def _request_schema(schema: dict[str, Any]) -> None:
    """The combinations ``_check_combinations`` refuses, as far as JSON Schema can say them."""
    add_rules(
        schema,
        when({"stream_options": {"not": NULL_ONLY}}, {"required": ["stream"], "properties": {"stream": {"const": True}}}),
        when({"tool_choice": {"const": "required"}}, {"required": ["tools"], "properties": {"tools": {"type": "array", "minItems": 1}}}),
    )


class ResponsesRequest(_Strict):
    model_config = ConfigDict(json_schema_extra=lambda schema: _request_schema(schema))

    model: str = Field(min_length=1, description="'cascade' (the adaptive ladder) or a stage's name: GET /v1/models", examples=["cascade"])
    input: str | Annotated[list[InputItem], Field(min_length=1)]
    instructions: str | None = None
    max_output_tokens: Annotated[int, Field(ge=1, le=MAX_INT), INTEGRAL] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | ToolChoiceObject | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    stream: FlagOrNull = False
    stream_options: ResponsesStreamOptions | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS), INTEGRAL] | None = None
    include: list[str] | None = None  # only LOGPROBS_INCLUDE changes anything: the others name items no stage produces
    # cascade extras
    cascade_lambda: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] | None = None
    cascade_max_stage: Annotated[int, Field(ge=0, le=MAX_INT), INTEGRAL] | str | None = None

    # Stateless: refused when they ask for stored state (see _check_stateless).
    store: bool | None = Field(None, json_schema_extra={"anyOf": [{"const": False}, NULL_ONLY], "description": _NOTHING_STORED})
    background: bool | None = Field(None, json_schema_extra={"anyOf": [{"const": False}, NULL_ONLY], "description": _NOTHING_STORED})
    previous_response_id: Any = Field(None, json_schema_extra={**NULL_ONLY, "description": _NOTHING_STORED})
    conversation: Any = Field(None, json_schema_extra={**NULL_ONLY, "description": _NOTHING_STORED})
    prompt: Any = Field(None, json_schema_extra={**NULL_ONLY, "description": _NOTHING_STORED})
    # Accepted and dropped: they do not change the answer. Some are echoed in the response.
    metadata: dict[str, str] | None = None
    user: str | None = None
    service_tier: Any = ignored()
    truncation: Literal["auto", "disabled"] | None = None
    reasoning: Any = ignored()
    prompt_cache_key: str | None = None
    prompt_cache_retention: Any = ignored()
    prompt_cache_options: Any = ignored()
    safety_identifier: str | None = None
    max_tool_calls: Any = ignored()  # limits calls to built-in tools, of which there are none
    context_management: Any = ignored()
    background_options: Any = ignored()
    access_programs: Any = ignored()
    image: Any = ignored()
    # Declared so the error can say "not supported" instead of "unrecognized".
    moderation: Any = Field(None, json_schema_extra={**NULL_ONLY, "description": "refused unless null: not supported by this server"})

    @model_validator(mode="before")
    @classmethod
    def _check_input(cls, data: Any) -> Any:
        """A plain message for the two mistakes the union's own errors describe badly (it would say "should be a valid string")."""
        if isinstance(data, dict) and "input" in data:
            value = data["input"]
            if not isinstance(value, str | list):
                raise ParamError("input", "'input' must be a string or a list of input items")
            if isinstance(value, list) and not value:
                raise ParamError("input", "'input' must not be an empty list")
        return data

    @model_validator(mode="after")
    def _check_combinations(self) -> ResponsesRequest:
        self._check_stateless()
        if self.moderation is not None:
            raise ParamError("moderation", "'moderation' is not supported by this server")
        if self.stream_options is not None and not self.stream:
            raise ParamError("stream_options", "'stream_options' is only allowed when 'stream' is true")
        names = [t.name for t in self.tools or ()]
        if len(set(names)) != len(names):
            raise ParamError("tools", "'tools' must name each function once")
        choice = self.tool_choice
        if isinstance(choice, ToolChoiceObject):
            for name in [choice.name] if choice.type == "function" else choice.allowed:
                if name not in names:
                    raise ParamError("tool_choice", f"'tool_choice' names function '{name}', which is not in 'tools'")
        if choice == "required" and not names:
            raise ParamError("tool_choice", "'tool_choice': 'required' needs at least one tool in 'tools'")
        return self

    def _check_stateless(self) -> None:
        if self.store:
            raise ParamError("store", f"'store': true is not supported: {_STATELESS}; send 'store': false or leave it out")
        if self.background:
            raise ParamError("background", f"'background': true is not supported: {_STATELESS}, so nothing could be fetched later")
        for name in ("previous_response_id", "conversation"):
            if getattr(self, name) is not None:
                raise ParamError(name, f"'{name}' is not supported: {_STATELESS}; {_RESEND}")
        if self.prompt is not None:
            raise ParamError(
                "prompt", "stored prompt templates ('prompt') are not supported: send the prompt in 'instructions' and 'input'"
            )

    # -- what it asks for ------------------------------------------------------------
    @property
    def logprobs(self) -> bool:
        """Whether the client asked for the output text's logprobs."""
        return LOGPROBS_INCLUDE in (self.include or ()) or bool(self.top_logprobs)

    def chat_messages(self) -> list[dict[str, Any]]:
        """``instructions`` and ``input`` as chat messages.

        ``instructions`` is a system message first. Consecutive ``function_call`` items are
        one assistant message with several ``tool_calls`` (parallel calls), attached to the
        assistant message just before them if there is one (what the model said before calling);
        a ``function_call_output`` is a ``tool`` message.
        """
        messages: list[dict[str, Any]] = []
        if self.instructions:
            messages.append({"role": "system", "content": self.instructions})
        if isinstance(self.input, str):
            messages.append({"role": "user", "content": self.input})
            return messages
        for item in self.input:
            if item.type == "message":
                content = item.content if isinstance(item.content, str) else [p.chat() for p in item.content or ()]
                messages.append({"role": item.role, "content": content})
            elif item.type == "function_call":
                call = {"id": item.call_id, "type": "function", "function": {"name": item.name, "arguments": item.arguments}}
                last = messages[-1] if messages else None
                if last is not None and last["role"] == "assistant":
                    last.setdefault("tool_calls", []).append(call)
                else:
                    messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
            else:  # function_call_output (the item validator allows nothing else)
                messages.append({"role": "tool", "tool_call_id": item.call_id, "content": item.output_text()})
        return messages

    def chat_body(self) -> dict[str, Any]:
        """The chat-completions request body this request comes to (JSON-ready, no nulls)."""
        body: dict[str, Any] = {"model": self.model, "messages": self.chat_messages(), "stream": self.stream}
        optional = {
            "max_tokens": self.max_output_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "parallel_tool_calls": self.parallel_tool_calls,
            "cascade_lambda": self.cascade_lambda,
            "cascade_max_stage": self.cascade_max_stage,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        if self.stream:
            body["stream_options"] = {"include_usage": True}  # a Responses stream always ends with the usage
        if self.logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = self.top_logprobs or 0
        choice = self.tool_choice
        if isinstance(choice, ToolChoiceObject) and choice.type == "allowed_tools":
            # chat's own allowed_tools: validating the chat request cuts the tools to these (NamedToolChoice)
            listed = [{"type": "function", "function": {"name": name}} for name in choice.allowed]
            body["tool_choice"] = {"type": "allowed_tools", "allowed_tools": {"mode": choice.mode, "tools": listed}}
        elif isinstance(choice, ToolChoiceObject):
            body["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
        elif choice is not None:
            body["tool_choice"] = choice
        if self.tools:
            body["tools"] = [t.chat() for t in self.tools]
        fmt = self.text.format if self.text is not None else None
        response_format = fmt.chat() if fmt is not None else None
        if response_format is not None:
            body["response_format"] = response_format
        return body

    def chat_request(self) -> ChatCompletionRequest:
        """The validated chat-completions request; a 400 from its validation names the Responses field."""
        try:
            return parse_chat_request(orjson.dumps(self.chat_body()))
        except APIError as exc:
            raise responses_error(exc) from None


# -- errors ----------------------------------------------------------------------
# Chat-completions parameter names, as a Responses client knows them (first match wins).
_CHAT_PARAMS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^response_format\.json_schema(?=\.|$)"), "text.format"),
    (re.compile(r"^response_format(?=\.|$)"), "text.format"),
    (re.compile(r"^(max_tokens|max_completion_tokens)$"), "max_output_tokens"),
    (re.compile(r"^tools(\[\d+\])\.function(?=\.|$)"), r"tools\1"),
    (re.compile(r"^tool_choice\.(function|allowed_tools)(?=\.|$)"), "tool_choice"),
    (re.compile(r"^messages(\[\d+\].*)?$"), "input"),
    (re.compile(r"^logprobs$"), "include"),
)


def responses_param(param: str) -> str:
    """A chat-completions parameter path as the Responses request names it (``response_format`` -> ``text.format``)."""
    for pattern, replacement in _CHAT_PARAMS:
        renamed, n = pattern.subn(replacement, param)
        if n:
            return renamed
    return param


def responses_error(exc: APIError) -> APIError:
    """An error about the chat request (ours or a stage's), naming the Responses field instead."""
    if exc.param is None:
        return exc
    param = responses_param(exc.param)
    if param == exc.param:
        return exc
    message = exc.message.replace(f"'{exc.param}'", f"'{param}'")
    return APIError(exc.status, message, type=exc.type, param=param, code=exc.code, headers=exc.headers)


def parse_responses_request(body: bytes) -> ResponsesRequest:
    """Validate a raw JSON body as a Responses request; raise ``APIError`` (400) naming the bad field."""
    return parse_request(body, ResponsesRequest)
