"""A stage served through LiteLLM (``dialect: litellm``): providers without an OpenAI-compatible endpoint.

For Bedrock, Vertex and the other providers LiteLLM translates to, the stage's
``model`` is LiteLLM's ``provider/model`` string (``bedrock/anthropic.claude-3-haiku...``),
its endpoint ``url`` (optional) LiteLLM's ``api_base``, and its key comes from
``api_key`` (``env:NAME``, ``file:PATH`` or inline; or the provider's own environment variables,
which LiteLLM reads itself). The request body is the OpenAI one; answers are
turned back into OpenAI chat-completion JSON, so the cascade treats this stage
like any other: the predictor's arrays are read from those bytes
(``StageReply.parse``), and an answer without logprobs is judged from text
features only. Such a stage never verifies a draft (that needs vLLM's
``prompt_logprobs``): escalating to it regenerates.

Why an optional extra and not a dependency: LiteLLM pulls in ~40 MB and takes
~3 s to import, and most ladders never need it. It is imported only when a
``litellm`` stage is configured, pinned to one reviewed version (pyproject's
``litellm`` extra; 1.107.0 was a compromised release), with its cost-map fetch
turned off (``LITELLM_LOCAL_MODEL_COST_MAP``: no network call at start-up) and its
loggers at WARNING. Keys never appear in what this module raises or logs: every
message from LiteLLM is scrubbed of the key before it leaves.

Failures are mapped to the router's: LiteLLM's connection errors to
``StageUnavailable``, its timeouts to ``StageTimeout``, 5xx to ``StageBadResponse``
(503 to ``StageUnavailable``), 4xx to ``APIError`` with the provider's status.
LiteLLM's own retries are off (``num_retries=0``): the stage pool retries on
another endpoint, and the cascade decides what a failure means.
"""

from __future__ import annotations

import importlib
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from common.errors import APIError
from common.settings import StageConfig
from router.closing import Link
from router.stage import StageBadResponse, StageFailure, StageReply, StageTimeout, StageUnavailable

INSTALL_HINT = "pip install 'adaptive-sd[litellm]'"
_LOGGERS = ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy")


class LiteLLMMissing(RuntimeError):
    """A stage has ``dialect: litellm`` but LiteLLM is not installed."""


def import_litellm() -> Any:
    """The ``litellm`` module, imported quietly and offline; ``LiteLLMMissing`` naming the extra when absent."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # else it fetches a price list from GitHub at import
    try:  # by name, so that type checkers do not walk LiteLLM's sources (it is optional, and huge)
        litellm: Any = importlib.import_module("litellm")
    except ImportError as exc:
        raise LiteLLMMissing(
            f"a stage has dialect: litellm, but LiteLLM is not installed ({exc}); install the extra: {INSTALL_HINT}"
        ) from None
    litellm.suppress_debug_info = True
    litellm.set_verbose = False
    for name in _LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    return litellm


class LiteLLMStage:
    """A ``router.stage.Stage`` over ``litellm.acompletion``, for one endpoint (``config.url`` is its ``api_base``)."""

    def __init__(self, config: StageConfig) -> None:
        self.config = config
        self.name = config.name
        self._litellm = import_litellm()
        self._key = config.api_key or None
        self._common: dict[str, Any] = {"model": config.model, "timeout": config.timeout_s, "num_retries": 0}
        if config.url:
            self._common["api_base"] = config.url
        if self._key:
            self._common["api_key"] = self._key

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def healthy(self) -> bool:
        """No provider-neutral health check exists; the pool judges this endpoint by its requests."""
        return True

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def _failure(self, exc: Exception) -> StageFailure | APIError:
        """The router's failure for a LiteLLM exception (see the module docstring)."""
        lt = self._litellm
        message = self._scrub(str(exc))[:300]
        if isinstance(exc, lt.Timeout):
            return StageTimeout(self.name, f"no answer within {self.config.timeout_s:g} s ({message})")
        if isinstance(exc, lt.APIConnectionError):
            return StageUnavailable(self.name, f"unreachable: {message}")
        status = getattr(exc, "status_code", None)
        if isinstance(status, int):
            if status == 408:
                return StageTimeout(self.name, message)
            if 400 <= status < 500:
                return APIError(status, f"stage '{self.name}' rejected the request: {message}")
            if "Connection error" in message or status == 503:  # LiteLLM reports a refused connection as a 500
                return StageUnavailable(self.name, f"unreachable: {message}")
        return StageBadResponse(self.name, f"LiteLLM: {type(exc).__name__}: {message}")

    def _kwargs(self, body: dict[str, Any]) -> dict[str, Any]:
        return {**{k: v for k, v in body.items() if k != "model"}, **self._common}

    async def reply(self, body: dict[str, Any], top_k: int | None = None) -> StageReply:
        t0 = time.perf_counter()
        try:
            response = await self._litellm.acompletion(**self._kwargs(body))
        except Exception as exc:  # LiteLLM raises its own hierarchy, and anything its providers raise
            raise self._failure(exc) from None
        raw = orjson.dumps(response.model_dump(exclude_none=True))
        try:
            return StageReply.parse(raw, time.perf_counter() - t0, top_k, self.name)
        except ValueError:
            raise StageBadResponse(self.name, f"malformed chat completion from LiteLLM: {raw[:200]!r}") from None

    async def chat(self, body: dict[str, Any]) -> tuple[dict[str, Any], float]:
        reply = await self.reply(body)
        return reply.data, reply.seconds

    async def stream(self, body: dict[str, Any], raw: bool = False) -> AsyncIterator[bytes]:
        """LiteLLM's chunks as OpenAI ``chat.completion.chunk`` payloads (raw: whole SSE blocks, ``[DONE]`` last).

        The request is sent here, so a failure to connect raises before the first payload, as ``StageClient``'s does.
        """
        try:
            chunks = await self._litellm.acompletion(**self._kwargs({**body, "stream": True}))
        except Exception as exc:
            raise self._failure(exc) from None
        return Link(self._relay(chunks, raw), chunks)

    async def _relay(self, chunks: Any, raw: bool) -> AsyncIterator[bytes]:
        try:
            async for chunk in chunks:
                payload = orjson.dumps(_openai_chunk(chunk.model_dump(exclude_none=True)))
                yield b"data: " + payload + b"\n\n" if raw else payload
        except Exception as exc:
            raise self._failure(exc) from None
        if raw:
            yield b"data: [DONE]\n\n"


def _openai_chunk(chunk: dict[str, Any]) -> dict[str, Any]:
    """A LiteLLM stream chunk in OpenAI's shape: its own fields dropped, and the usage chunk with ``choices: []``
    (LiteLLM sends it with an empty choice, which clients would read as one more delta)."""
    chunk.pop("provider_specific_fields", None)
    choices = chunk.get("choices") or []
    for c in choices:
        delta = c.get("delta")
        if isinstance(delta, dict):
            delta.pop("provider_specific_fields", None)
    if chunk.get("usage") and all(not c.get("delta") and not c.get("finish_reason") for c in choices):
        chunk["choices"] = []
    return chunk
