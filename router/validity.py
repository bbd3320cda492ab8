"""What a request asks of an answer beyond good text: stage capabilities, and the rules a valid answer follows.

A request that offers ``tools`` or asks for a JSON ``response_format`` can only be
answered by a stage that does tools or structured outputs (``StageConfig.tools``,
``StageConfig.structured_outputs``), and one with vLLM's sampling extras (``top_k``,
``min_p``, ``repetition_penalty``, ``min_tokens``, ``chat_template_kwargs``) only by a
stage of dialect vllm (``StageConfig.vllm_extras``): the cascade skips the others and a
pass-through to one of them is a 400 naming the field. And such a request has an
objective part of "acceptable" that the learned predictor does not see: the
answer must be usable by the client's code. A tool call whose arguments are not
JSON, that names a function the request did not offer, or whose arguments do not
match the function's schema; JSON content that does not parse or does not match
the schema; a tool call under ``tool_choice: "none"``, or none under
``"required"`` or a named choice; a text answer that holds a call to an offered
function its server did not parse (``{"name": "get_weather", "arguments": {...}}``
as content, tagged, fenced or in doubled braces) when calls are allowed -- an
agent takes such text for the final answer (the OpenAI Agents SDK does): each
breaks the client however fluent the text is, so the cascade escalates such an
answer whatever the predictor says (see ``router.cascade``).

Everything here reads the upstream chat body (a dict, already validated at the
edge by ``common.protocol``) and the stage's answer (a dict from another
process): plain dict walking, no pydantic. Nothing is computed for a plain text
request beyond a few ``dict.get``; a function's JSON schema is compiled with
``jsonschema`` only when an answer calls it, once per distinct schema (cached).
The checks never raise, whatever the answer holds: garbage is an invalid answer,
and a schema the validator cannot use (broken, or with references it cannot
resolve: remote ``$ref`` are never fetched) is not held against the answer.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import orjson
from jsonschema import validators
from jsonschema.exceptions import SchemaError
from jsonschema.protocols import Validator
from referencing import Registry

from common.protocol import SAMPLING_EXTRAS, extra_in_effect
from common.settings import StageConfig

# each a ``StageConfig`` flag (or property: ``vllm_extras`` is dialect vllm) of that name
Capability = Literal["tools", "structured_outputs", "completions", "vllm_extras"]
RequestKind = Literal["tools", "json_object", "json_schema", "text"]
REQUEST_KINDS: tuple[RequestKind, ...] = ("tools", "json_object", "json_schema", "text")
InvalidReason = Literal[
    "malformed",  # the message or a tool call is not shaped as OpenAI defines it
    "unexpected-tool-call",  # a tool call when tool_choice is "none" (or no tools were offered)
    "missing-tool-call",  # no tool call when tool_choice is "required" or names a function
    "unparsed-tool-call",  # no tool call, but the text holds one to an offered function (its server did not parse it)
    "wrong-tool",  # tool_choice names a function and the answer calls another
    "unknown-tool",  # the call names a function that is not in tools
    "parallel-tool-calls",  # more than one call with parallel_tool_calls: false
    "arguments-json",  # the arguments are not JSON text
    "arguments",  # the arguments are not an object matching the function's parameters schema
    "json",  # json_object/json_schema: the content is not JSON (an object, for json_object)
    "schema",  # json_schema: the content does not match the schema
]
INVALID_REASONS: tuple[InvalidReason, ...] = get_args(InvalidReason)
_TOOL_CHOICES: dict[str, Literal["none", "auto", "required"]] = {"none": "none", "auto": "auto", "required": "required"}
_SCHEMA_CACHE_SIZE = 512
_NO_REFERENCES: Registry[Any] = Registry()  # a schema's own "#/..." refs resolve without it; it retrieves nothing
# where a call object may start in text: a brace, then "name" as the first key, its value a string (function names
# are letters, digits, "_" and "-": no escapes to read)
_CALL_HEAD = re.compile(r'\{\s*"name"\s*:\s*"([^"\\]*)"')
_DECODER = json.JSONDecoder()


def _format(body: Mapping[str, Any]) -> Literal["json_object", "json_schema"] | None:
    fmt = body.get("response_format")
    kind = fmt.get("type") if isinstance(fmt, Mapping) else None
    return "json_object" if kind == "json_object" else "json_schema" if kind == "json_schema" else None


def request_kind(body: Mapping[str, Any]) -> RequestKind:
    """How the request asks to be answered, for metrics and the ``x-cascade-kind`` header (tools win over a format)."""
    if body.get("tools"):
        return "tools"
    return _format(body) or "text"


def required_capabilities(body: Mapping[str, Any]) -> dict[Capability, str]:
    """The stage capabilities the request needs, each with the request field that needs it (for a 400's ``param``).

    Tools need a tools stage even under ``tool_choice: "none"``: the stage still receives
    them (they are part of the prompt), and so does a history with tool calls or tool
    results, which a template without tool calling cannot render.
    """
    needs: dict[Capability, str] = {}
    if body.get("tools"):
        needs["tools"] = "tools"
    elif isinstance(messages := body.get("messages"), list) and any(
        isinstance(m, Mapping) and (m.get("tool_calls") or m.get("role") == "tool") for m in messages
    ):
        needs["tools"] = "messages"
    if _format(body) is not None:
        needs["structured_outputs"] = "response_format"
    needs.update(extras_needs(body))
    return needs


def extras_needs(body: Mapping[str, Any]) -> dict[Capability, str]:
    """vLLM's sampling extras (``top_k``, ``min_p``, ...: ``SAMPLING_EXTRAS``) need a stage of dialect vllm: a hosted
    API (dialect openai or litellm) refuses or ignores them. The first one the body holds names the need."""
    for name in SAMPLING_EXTRAS:
        if extra_in_effect(body, name):
            return {"vllm_extras": name}
    return {}


def capability_setting(capability: Capability) -> str:
    """The stage setting that gives ``capability``, as a 400 says it (``tools: true``, ``dialect: vllm``)."""
    return "dialect: vllm" if capability == "vllm_extras" else f"{capability}: true"


def missing_capability(config: StageConfig, needs: Mapping[Capability, str]) -> Capability | None:
    """The first capability of ``needs`` that the stage lacks, or None when it can answer."""
    for capability in needs:
        if not getattr(config, capability):
            return capability
    return None


def _loads(text: str) -> Any:
    """Strict JSON: orjson, and the standard library for what orjson declines but JSON allows (numbers beyond a
    double, e.g. ``1e400``); ``NaN``/``Infinity`` are not JSON. ValueError if it is not JSON."""
    try:
        return orjson.loads(text)
    except ValueError:
        return json.loads(text, parse_constant=_not_json)


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_compiled: dict[bytes, Validator | None] = {}


def _compile(schema: Any) -> Validator | None:
    """A validator for a JSON schema (its ``$schema`` draft, else 2020-12), None when it cannot be used
    (not a schema, or not a valid one)."""
    if not isinstance(schema, dict):  # the protocol types schemas as objects (a boolean schema is not accepted there)
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # validator_for warns on an unknown $schema, then uses the default
            cls = validators.validator_for(schema, default=validators.Draft202012Validator)
            cls.check_schema(schema)
            return cls(schema, registry=_NO_REFERENCES)
    except SchemaError:
        return None
    except Exception:  # a schema shaped beyond what the validator expects: judge the answer without it
        return None


def schema_validator(schema: Any) -> Validator | None:
    """The cached validator of ``schema`` (requests from one app send the same schemas again and again)."""
    try:
        key = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # e.g. an integer beyond 64 bits: compile without caching
        return _compile(schema)
    if key not in _compiled:
        if len(_compiled) >= _SCHEMA_CACHE_SIZE:
            _compiled.pop(next(iter(_compiled)))  # oldest first
        _compiled[key] = _compile(schema)
    return _compiled[key]


def conforms(schema: Any, value: Any) -> bool:
    """Whether ``value`` matches ``schema``; True when the schema cannot be used or validation itself fails
    (an unresolvable reference, recursion beyond the limit): only a definite mismatch counts against an answer."""
    validator = schema_validator(schema)
    if validator is None:
        return True
    try:
        return bool(validator.is_valid(value))
    except Exception:
        return True


@dataclass(frozen=True, slots=True)
class AnswerRules:
    """The rules a valid answer to one request follows (module docstring), read from its upstream body.

    ``functions`` maps each offered function to its parameters schema (None: any object).
    A named ``tool_choice`` is "required" with ``forced`` set to the function's name.
    """

    functions: Mapping[str, Any] = field(default_factory=dict)
    tool_choice: Literal["none", "auto", "required"] = "auto"
    forced: str | None = None  # the function a named tool_choice forces
    single_call: bool = False  # parallel_tool_calls: false
    format: Literal["json_object", "json_schema"] | None = None
    schema: Any = None  # json_schema's schema (None: any JSON object is fine)

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> AnswerRules | None:
        """The rules for ``body``, or None when it asks for nothing beyond text (nothing to check)."""
        tools = body.get("tools")
        fmt_type = _format(body)
        if not tools and fmt_type is None:
            return None
        functions: dict[str, Any] = {}
        for tool in tools if isinstance(tools, list) else ():
            fn = tool.get("function") if isinstance(tool, Mapping) else None
            if isinstance(fn, Mapping) and isinstance(fn.get("name"), str):
                functions[fn["name"]] = fn.get("parameters")
        raw = body.get("tool_choice", "auto") if functions else "none"
        choice: Literal["none", "auto", "required"] = "auto"
        forced: str | None = None
        if isinstance(raw, str):
            choice = _TOOL_CHOICES.get(raw, "auto")
        elif isinstance(raw, Mapping) and isinstance(raw.get("function"), Mapping) and isinstance(raw["function"].get("name"), str):
            choice, forced = "required", raw["function"]["name"]
        schema = None
        spec = body["response_format"].get("json_schema") if fmt_type == "json_schema" else None
        if isinstance(spec, Mapping):
            schema = spec.get("schema")
        return cls(functions, choice, forced, body.get("parallel_tool_calls") is False, fmt_type, schema)

    def check(self, choice: Any) -> InvalidReason | None:
        """Why the answer ``choice`` (a chat completion's choice) is invalid, or None when it is valid. Never raises."""
        try:
            return self._check(choice)
        except Exception:  # a shape the walk below did not foresee: garbage, so not an answer to return
            return "malformed"

    def _check(self, choice: Any) -> InvalidReason | None:
        message = choice.get("message") if isinstance(choice, Mapping) else None
        if not isinstance(message, Mapping):
            return "malformed"
        calls = message.get("tool_calls")
        if calls:
            if not isinstance(calls, list):
                return "malformed"
            if self.tool_choice == "none":
                return "unexpected-tool-call"
            if self.single_call and len(calls) > 1:
                return "parallel-tool-calls"
            for call in calls:
                reason = self._check_call(call)
                if reason is not None:
                    return reason
            return None  # a tool-call answer: its content (usually null) is not held to the format
        if self.tool_choice != "none" and self._holds_call(message.get("content")):
            return "unparsed-tool-call"
        if self.tool_choice == "required":
            return "missing-tool-call"
        if self.format is None:
            return None
        content = message.get("content")
        if not isinstance(content, str):
            return "json"
        try:
            value = _loads(content)
        except (ValueError, RecursionError):
            return "json"
        if self.format == "json_object" or self.schema is None:
            return None if isinstance(value, dict) else "json"
        return None if conforms(self.schema, value) else "schema"

    def _holds_call(self, content: Any) -> bool:
        """Whether text content holds a call to an offered function: an object whose first key is ``"name"``,
        naming one, with an ``"arguments"`` (or ``"parameters"``) object or JSON text of one. Wherever it stands
        (tags, a code fence, doubled braces around it and words before it do not matter: each is a call its
        stage's server failed to parse); only a JSON object naming an offered function and carrying its arguments
        counts, so prose that mentions a function, or JSON that is not a call, is left alone."""
        if not self.functions or not isinstance(content, str) or '"name"' not in content:
            return False
        for head in _CALL_HEAD.finditer(content):
            if head.group(1) not in self.functions:
                continue  # decoded only when it names an offered function: a long text of other JSON is not parsed again and again
            try:
                value, _ = _DECODER.raw_decode(content, head.start())
            except (ValueError, RecursionError):
                continue
            if not isinstance(value, dict) or value.get("name") != head.group(1):
                continue
            arguments = value.get("arguments", value.get("parameters"))
            if isinstance(arguments, str):
                try:
                    arguments = _loads(arguments)
                except (ValueError, RecursionError):
                    continue
            if isinstance(arguments, dict):
                return True
        return False

    def _check_call(self, call: Any) -> InvalidReason | None:
        fn = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
            return "malformed"
        if not isinstance(call.get("id"), str) or call.get("type", "function") != "function":
            return "malformed"
        name = fn["name"]
        if self.forced is not None and name != self.forced:
            return "wrong-tool"
        if name not in self.functions:
            return "unknown-tool"
        arguments = fn.get("arguments")
        if not isinstance(arguments, str):
            return "arguments-json"
        try:
            value = _loads(arguments)
        except (ValueError, RecursionError):
            return "arguments-json"
        if not isinstance(value, dict):
            return "arguments"
        schema = self.functions[name]
        if schema is not None and not conforms(schema, value):
            return "arguments"
        return None


@dataclass(frozen=True, slots=True)
class AnswerSpec:
    """What one request asks of an answer: its kind, the capabilities a stage needs for it, and its validity rules
    (None for a plain text request: every answer is valid)."""

    kind: RequestKind
    needs: Mapping[Capability, str]
    rules: AnswerRules | None

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> AnswerSpec:
        return cls(request_kind(body), required_capabilities(body), AnswerRules.of(body))

    def check(self, choice: Any) -> InvalidReason | None:
        """Why ``choice`` is invalid (None: valid, or nothing to check)."""
        return None if self.rules is None else self.rules.check(choice)

    def missing(self, config: StageConfig) -> Capability | None:
        return missing_capability(config, self.needs) if self.needs else None


TEXT_SPEC = AnswerSpec("text", {}, None)
