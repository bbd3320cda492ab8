"""OpenAI-shaped errors: ``{"error": {"message", "type", "param", "code"}}``.

Every failure the API reports goes through ``APIError`` so clients (the
OpenAI SDK included) can parse it, and the offending field is always named
in ``param`` and in the message.
"""

from __future__ import annotations

from typing import TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.responses import Response

from common.protocol import ChatCompletionRequest, ParamError

Request = TypeVar("Request", bound=BaseModel)


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, object]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> Response:
        return Response(orjson.dumps(self.body()), status_code=self.status, media_type="application/json", headers=self.headers)


_BRANCH_NAMES = frozenset(("str", "int", "bool", "float", "constrained-int", "constrained-float", "none"))


def _model_names() -> set[str]:
    """The class names of every pydantic model: pydantic tags a union's model branch with its class name."""
    names: set[str] = set()
    stack: list[type[BaseModel]] = [BaseModel]
    while stack:
        for sub in stack.pop().__subclasses__():
            names.add(sub.__name__)
            stack.append(sub)
    return names


def _is_branch(part: str, models: set[str]) -> bool:
    """A union branch or validator name pydantic puts in a location (``list[ContentPart]``, ``function-after[...]``,
    ``NamedToolChoice``): not a field of the request, so never part of ``param``, which clients read as a request path."""
    return part in _BRANCH_NAMES or "[" in part or part.startswith("literal") or part in models


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    models = _model_names() if any(isinstance(part, str) and part[:1].isupper() for part in loc) else set()
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _is_branch(part, models):
            continue  # not user-facing
        else:
            out += f".{part}" if out else str(part)
    return out


def from_validation_error(exc: ValidationError) -> APIError:
    """Turn the first pydantic error into a 400 that names the field."""
    for err in exc.errors():
        ctx_error = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_error, ParamError):
            where = _loc(tuple(err["loc"]))  # a nested model's error: its path goes in front
            param = f"{where}.{ctx_error.param}" if where else ctx_error.param
            return APIError(400, ctx_error.message if not where else f"{param}: {ctx_error.message}", param=param)
    # For unions the deepest location is the branch the client most likely meant.
    err = max(exc.errors(), key=lambda e: len(e["loc"]))
    if err["type"] == "json_invalid":
        return APIError(400, f"Request body is not valid JSON: {err['msg']}")
    param = _loc(tuple(err["loc"]))
    if err["type"] == "model_type" and not param:
        return APIError(400, "Request body must be a JSON object")
    if err["type"] == "extra_forbidden":
        return APIError(400, f"Unrecognized request argument supplied: {param}", param=param)
    if err["type"] == "missing":
        return APIError(400, f"Missing required parameter: '{param}'", param=param)
    return APIError(400, f"Invalid value for '{param}': {err['msg']}", param=param)


def parse_request(body: bytes, model: type[Request]) -> Request:
    """Validate a raw JSON body as ``model``; raise ``APIError`` (400) naming the bad field."""
    if not body:
        raise APIError(400, "Request body is empty; expected a JSON object")
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise from_validation_error(exc) from None


def parse_chat_request(body: bytes) -> ChatCompletionRequest:
    """Validate a raw JSON body as a chat-completions request; raise ``APIError`` (400) naming the bad field."""
    return parse_request(body, ChatCompletionRequest)
