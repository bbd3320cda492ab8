"""The legacy ``/v1/completions`` dialect (vLLM-compatible) for the CPU stage server.

The request model and the logprobs shape are ``common.completions_protocol``'s,
shared with the router; what is taken, and the shape ``logprobs`` comes back in,
is described there. This module adds what only this server refuses, so that it
answers exactly as before the model moved to ``common/``: the penalties
(llama.cpp's sampler here does not apply them) and the fields that only the
router reads (its cascade knobs, and the ignored fields it accepts beyond
``user``) are 400s naming the field.
"""

from __future__ import annotations

from pydantic import model_validator

from common.completions_protocol import (
    CASCADE_FIELDS,
    DEFAULT_COMPLETION_TOKENS,
    IGNORED_FIELDS,
    CompletionLogprobs,
)
from common.completions_protocol import CompletionRequest as _PublicCompletionRequest
from common.completions_protocol import parse_completion_request as _parse
from common.protocol import ParamError

__all__ = ["DEFAULT_COMPLETION_TOKENS", "CompletionLogprobs", "CompletionRequest", "parse_stage_completion_request"]

_ROUTER_ONLY = (*CASCADE_FIELDS, *(f for f in IGNORED_FIELDS if f != "user"))


class CompletionRequest(_PublicCompletionRequest):
    """The public completions request, less what this server cannot honour or never took."""

    @model_validator(mode="after")
    def _check_stage(self) -> CompletionRequest:
        for name in _ROUTER_ONLY:
            if name in self.model_fields_set:
                raise ParamError(name, f"Unrecognized request argument supplied: {name}")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise ParamError(name, f"'{name}' is not supported by the llama.cpp stage server")
        return self


def parse_stage_completion_request(body: bytes) -> CompletionRequest:
    """Validate a raw JSON body; raise ``APIError`` (400) naming the bad field."""
    req = _parse(body, CompletionRequest)
    assert isinstance(req, CompletionRequest)
    return req
