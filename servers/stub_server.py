"""A stub stage: answers instantly with a fixed completion, or misbehaves on purpose.

Not a model. It exists for the jobs a real stage cannot do:
fault injection in tests (a stage that hangs, dies mid-request or returns
garbage), router-overhead benchmarks (a stage whose own cost is ~zero, so
what is measured is the router), and load benchmarks (a stage with a service
time and a concurrency limit, whose queue builds up like a real server's). It
is a bare ASGI app to keep its own CPU cost as small as possible.

For those jobs it also has:

* ``--delay-ms``: each request takes this long (its service time);
* ``--stream-interval-ms``: a streamed answer sends its events this far apart
  (after the service time), so a stream is open at the client for a known time
  (graceful-shutdown tests: a stream still running when the grace ends is cut);
* ``--concurrency N``: at most N requests are served at once, the rest wait in
  line (as vLLM's scheduler queues beyond its batch); ``GET /metrics`` reports
  vLLM's two queue gauges, ``vllm:num_requests_running`` and
  ``vllm:num_requests_waiting``;
* ``POST /stub/mode`` with ``{"mode": ...}``: change the mode while it runs (a
  replica that starts failing, or recovers); ``GET /stub/stats``: requests seen,
  and the last request's body.

Modes: ``instant`` (answer), ``hang`` (never answer), ``garbage`` (200, not
JSON), ``bad-logprobs``, ``no-logprobs`` (the answer without any, as a provider
that ignores the request for them), ``die`` (drop the connection before answering),
``error500``, ``error400`` (the client's fault), ``error429`` (rate limited),
``die-after-headers`` (a 200 and then nothing: the connection drops before the
first byte of the body), ``die-mid-stream`` (a stream that sends its first event
and then drops).

Run: ``python -m servers.stub_server --port 8199 --mode instant``
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from typing import Any

import orjson

Mode = str  # one of MODES
MODES = ("instant", "hang", "garbage", "bad-logprobs", "no-logprobs", "die", "error500", "error400", "error429", "die-after-headers",
         "die-mid-stream")  # fmt: skip
ANSWER_TOKENS = ["The", " answer", " is", " 4", "."]


def _logprobs() -> dict[str, Any]:
    return {
        "content": [
            {
                "token": t,
                "logprob": -0.05,
                "bytes": list(t.encode()),
                "top_logprobs": [
                    {"token": t, "logprob": -0.05, "bytes": list(t.encode())},
                    {"token": "x", "logprob": -3.5, "bytes": [120]},
                ],
            }
            for t in ANSWER_TOKENS
        ]
    }


def _completion(model: str, logprobs: bool = True) -> bytes:
    return orjson.dumps(
        {
            "id": "chatcmpl-stub",
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(ANSWER_TOKENS)},
                    "logprobs": _logprobs() if logprobs else None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 12, "completion_tokens": len(ANSWER_TOKENS), "total_tokens": 12 + len(ANSWER_TOKENS)},
        }
    )


def _stream_events(model: str) -> list[bytes]:
    """The SSE events of a streamed answer, each with its blank line, ``[DONE]`` last."""
    base = {"id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": 0, "model": model}
    out = [
        orjson.dumps(
            {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}]}
        )
    ]
    for t in ANSWER_TOKENS:
        out.append(orjson.dumps({**base, "choices": [{"index": 0, "delta": {"content": t}, "logprobs": None, "finish_reason": None}]}))
    out.append(orjson.dumps({**base, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]}))
    out.append(orjson.dumps({**base, "choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}}))
    return [b"data: " + c + b"\n\n" for c in out] + [b"data: [DONE]\n\n"]


class _State:
    """What the stub counts, and the mode it is in now (``POST /stub/mode`` changes it)."""

    def __init__(self, mode: Mode) -> None:
        self.mode = mode
        self.requests = 0
        self.running = 0
        self.waiting = 0
        self.last_body: object = None


def make_app(
    model: str = "stub", mode: Mode = "instant", delay_s: float = 0.0, concurrency: int | None = None, stream_interval_s: float = 0.0
) -> Callable[..., Any]:
    """``delay_s`` stands in for generation time, so throughput is measured against a stage that takes time;
    ``concurrency`` caps how many requests take it at once (the others queue); ``stream_interval_s``
    spaces a stream's events like tokens arriving."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    completion = _completion(model)
    plain = _completion(model, logprobs=False)
    events = _stream_events(model)
    stream = b"".join(events)
    state = _State(mode)
    slots = asyncio.Semaphore(concurrency) if concurrency else None

    async def serve_time() -> None:
        """The request's service time, behind the concurrency limit."""
        if slots is None:
            await asyncio.sleep(delay_s)
            return
        state.waiting += 1
        try:
            await slots.acquire()
        finally:
            state.waiting -= 1
        state.running += 1
        try:
            await asyncio.sleep(delay_s)
        finally:
            state.running -= 1
            slots.release()

    async def app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        path = scope["path"]
        if path == "/health":
            await _send(send, 200, b'{"status":"ok"}', b"application/json")
            return
        if path == "/metrics":
            text = f'vllm:num_requests_running{{model_name="{model}"}} {state.running}\n'
            text += f'vllm:num_requests_waiting{{model_name="{model}"}} {state.waiting}\n'
            await _send(send, 200, text.encode(), b"text/plain; version=0.0.4")
            return
        if path == "/stub/mode":
            new = orjson.loads(body).get("mode")
            if new not in MODES:
                await _send(send, 400, b'{"error":{"message":"unknown mode","type":"invalid_request_error"}}', b"application/json")
                return
            state.mode = new
            await _send(send, 200, orjson.dumps({"mode": new}), b"application/json")
            return
        if path == "/stub/stats":
            stats = {"requests": state.requests, "mode": state.mode, "last_body": state.last_body}
            await _send(send, 200, orjson.dumps(stats), b"application/json")
            return
        state.requests += 1
        state.last_body = body.decode("utf-8", "replace")
        mode = state.mode
        if mode == "hang":
            await asyncio.sleep(3600)
        if mode == "die":
            raise RuntimeError("stub stage dies mid-request")  # uvicorn drops the connection
        if mode == "error500":
            await _send(send, 500, b'{"error":{"message":"boom","type":"server_error"}}', b"application/json")
            return
        if mode == "error400":
            await _send(
                send, 400, b'{"error":{"message":"bad request","type":"invalid_request_error","param":"messages"}}', b"application/json"
            )
            return
        if mode == "error429":
            await _send(send, 429, b'{"error":{"message":"rate limited","type":"rate_limit_error"}}', b"application/json")
            return
        if mode == "die-after-headers":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
            raise RuntimeError("stub stage dies after its headers")
        if mode == "die-mid-stream":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
            await send({"type": "http.response.body", "body": stream[: stream.index(b"\n\n") + 2], "more_body": True})
            raise RuntimeError("stub stage dies mid-stream")
        if mode == "garbage":
            await _send(send, 200, b"<html>not json", b"application/json")
            return
        if mode == "no-logprobs":
            await _send(send, 200, plain, b"application/json")
            return
        if mode == "bad-logprobs":  # well-formed except a raw control byte in a token string, inside the logprobs
            await _send(send, 200, completion.replace(b'"token":"', b'"token":"\x01', 1), b"application/json")
            return
        if delay_s or slots is not None:
            await serve_time()
        wants_stream = b'"stream":true' in body
        if wants_stream and stream_interval_s:
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
            for i, event in enumerate(events):
                if i:
                    await asyncio.sleep(stream_interval_s)
                await send({"type": "http.response.body", "body": event, "more_body": i < len(events) - 1})
            return
        await _send(send, 200, stream if wants_stream else completion, b"text/event-stream" if wants_stream else b"application/json")

    return app


async def _send(send: Callable[..., Any], status: int, body: bytes, ctype: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", ctype), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="stub")
    parser.add_argument("--mode", default="instant", choices=MODES)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="simulated generation time per request")
    parser.add_argument("--concurrency", type=int, default=None, help="requests served at once; the others queue")
    parser.add_argument("--stream-interval-ms", type=float, default=0.0, help="time between a stream's events")
    args = parser.parse_args()
    uvicorn.run(
        make_app(args.model, args.mode, args.delay_ms / 1e3, args.concurrency, args.stream_interval_ms / 1e3),
        host="127.0.0.1",
        port=args.port,
        log_level="error",
        access_log=False,
        loop="uvloop",
        http="httptools",
        timeout_graceful_shutdown=1,
    )


if __name__ == "__main__":
    main()
