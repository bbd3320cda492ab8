"""A stub stage: answers instantly with a fixed completion, or misbehaves on purpose.

Not a model. It exists for the two jobs a real stage cannot do:
fault injection in tests (a stage that hangs, dies mid-request or returns
garbage) and router-overhead benchmarks (a stage whose own cost is ~zero, so
what is measured is the router). It is a bare ASGI app to keep its own CPU
cost as small as possible.

Run: ``python -m servers.stub_server --port 8199 --mode instant``
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from typing import Any

import orjson

Mode = str  # instant | hang | garbage | bad-logprobs | die | error500
MODES = ("instant", "hang", "garbage", "bad-logprobs", "die", "error500")
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


def _completion(model: str) -> bytes:
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
                    "logprobs": _logprobs(),
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 12, "completion_tokens": len(ANSWER_TOKENS), "total_tokens": 12 + len(ANSWER_TOKENS)},
        }
    )


def _stream(model: str) -> bytes:
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
    return b"".join(b"data: " + c + b"\n\n" for c in out) + b"data: [DONE]\n\n"


def make_app(model: str = "stub", mode: Mode = "instant", delay_s: float = 0.0) -> Callable[..., Any]:
    """``delay_s`` stands in for generation time, so throughput is measured against a stage that takes time."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    completion = _completion(model)
    stream = _stream(model)

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
        if scope["path"] == "/health":
            await _send(send, 200, b'{"status":"ok"}', b"application/json")
            return
        if mode == "hang":
            await asyncio.sleep(3600)
        if mode == "die":
            raise RuntimeError("stub stage dies mid-request")  # uvicorn drops the connection
        if mode == "error500":
            await _send(send, 500, b'{"error":{"message":"boom","type":"server_error"}}', b"application/json")
            return
        if mode == "garbage":
            await _send(send, 200, b"<html>not json", b"application/json")
            return
        if mode == "bad-logprobs":  # well-formed except a raw control byte in a token string, inside the logprobs
            await _send(send, 200, completion.replace(b'"token":"', b'"token":"\x01', 1), b"application/json")
            return
        if delay_s:
            await asyncio.sleep(delay_s)
        wants_stream = b'"stream":true' in body
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
    args = parser.parse_args()
    uvicorn.run(
        make_app(args.model, args.mode, args.delay_ms / 1e3),
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
