"""The stage server's FastAPI app: its routes, from the request body to the response.

The routes stay thin: parse and validate the body (``common.errors`` /
``servers.completions``, a 400 naming the field), check the model id, let
``StageServing`` turn the request into a prompt and a ``Sampling``, then run the
engine on a worker thread (``run_in_executor``) so that the event loop stays free
for health checks and new connections while a request decodes. Streams are
written by ``servers/stage_streams.py``.

Served: ``GET /health`` (with ``decoded_tokens``, every token decoded since start),
``GET /v1/models`` and ``/v1/models/{id}``, ``POST /v1/chat/completions`` and the
vLLM-compatible ``POST /v1/completions`` (``servers/completions.py``).
"""

from __future__ import annotations

import asyncio
import time
import uuid

import orjson
from fastapi import FastAPI, Request
from starlette.responses import Response, StreamingResponse

from common.errors import APIError, parse_chat_request
from servers.completions import CompletionLogprobs, parse_stage_completion_request
from servers.llama_engine import ContextOverflow
from servers.sampling import Sampling
from servers.stage_serving import Completion, StageServing, echo_logprobs, sampling_extras, token_usage
from servers.stage_streams import chat_stream, completion_stream


def _json(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def create_app(serving: StageServing) -> FastAPI:
    """The app for ``serving``'s one model; an ``APIError`` raised anywhere in a route becomes its OpenAI error body."""
    app = FastAPI(title="adaptive-sd llama.cpp stage", docs_url=None, redoc_url=None)
    card = {"id": serving.model_id, "object": "model", "created": 0, "owned_by": "adaptive-sd", "max_model_len": serving.engine.n_ctx}

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> Response:
        return exc.response()

    def check_model(model: str) -> None:
        if model != serving.model_id:
            raise APIError(
                404,
                f"The model '{model}' does not exist; this server serves '{serving.model_id}'",
                param="model",
                code="model_not_found",
            )

    @app.get("/health")
    async def health() -> Response:
        return _json({"status": "ok", "model": serving.model_id, "decoded_tokens": serving.decoded_tokens})

    @app.get("/v1/models")
    async def models() -> Response:
        return _json({"object": "list", "data": [card]})

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> Response:
        check_model(model_id)
        return _json(card)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        req = parse_chat_request(await request.body())
        check_model(req.model)
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(req, name):
                raise APIError(400, f"'{name}' is not supported by the llama.cpp stage server", param=name)
        serving.check_tools(req)
        prompt = serving.prompt_tokens(req)
        sampling = serving.chat_sampling(req, len(prompt))
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if req.stream:
            return StreamingResponse(chat_stream(serving, req, sampling, prompt, rid, created), media_type="text/event-stream")
        loop = asyncio.get_running_loop()
        try:
            prompt_lp = await loop.run_in_executor(None, serving.score, req, prompt) if req.prompt_logprobs is not None else None
            done = await loop.run_in_executor(None, serving.complete, sampling, prompt)
        except ContextOverflow as exc:
            raise APIError(400, str(exc), param="max_tokens", code="context_length_exceeded") from None
        message: dict[str, object] = {"role": "assistant", "content": done.text if done.text or not done.calls else None}
        if done.calls:
            message["tool_calls"] = [c.openai() for c in done.calls]
        choice: dict[str, object] = {
            "index": 0,
            "message": message,
            "logprobs": {"content": [serving.logprob_entry(s) for s in done.tokens]} if req.logprobs else None,
            "finish_reason": done.finish_reason,
        }
        body = {
            "id": rid,
            "object": "chat.completion",
            "created": created,
            "model": serving.model_id,
            "choices": [choice],
            "usage": token_usage(done.prompt_tokens, len(done.tokens)),
        }
        if prompt_lp is not None:
            body["prompt_logprobs"] = prompt_lp
            body["prompt_token_ids"] = prompt
        return _json(body)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        req = parse_stage_completion_request(await request.body())
        check_model(req.model)
        text = req.prompt_text
        prompt = serving._fit(serving.engine.tokenize(text), "prompt", "the prompt takes")
        if not prompt:
            raise APIError(400, "'prompt' has no tokens", param="prompt")
        sampling = Sampling(
            max_tokens=serving._token_limit(req.token_limit, len(prompt)),
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            **sampling_extras(req),
            seed=req.seed,
            logprobs=req.logprobs is not None,
            top_logprobs=req.logprobs or 0,
            stops=req.stop_list,
        )
        rid = f"cmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if req.stream:
            return StreamingResponse(completion_stream(serving, req, sampling, prompt, rid, created), media_type="text/event-stream")
        loop = asyncio.get_running_loop()
        logprobs = CompletionLogprobs() if req.logprobs is not None else None
        head = ""
        if req.echo:
            head = text
            if logprobs is not None:
                await echo_logprobs(serving, prompt, req.logprobs or 0, logprobs)
        done = Completion(prompt_tokens=len(prompt))
        if req.token_limit > 0:
            try:
                done = await loop.run_in_executor(None, serving.complete, sampling, prompt)
            except ContextOverflow as exc:
                raise APIError(400, str(exc), param="max_tokens", code="context_length_exceeded") from None
        if logprobs is not None:
            for s in done.tokens:
                serving.add_completion_logprob(logprobs, s.token, s.logprob, s.top)
        choice = {
            "index": 0,
            "text": head + done.text,
            "logprobs": logprobs.take() if logprobs else None,
            "finish_reason": done.finish_reason,
        }
        return _json(
            {
                "id": rid,
                "object": "text_completion",
                "created": created,
                "model": serving.model_id,
                "choices": [choice],
                "usage": token_usage(len(prompt), len(done.tokens)),
            }
        )

    return app
