"""Our thin OpenAI-compatible stage server over one llama.cpp model (CPU).

It speaks the same dialect as a vLLM OpenAI server for everything the router
uses -- chat completions with ``logprobs``/``top_logprobs``, streaming, and the
vLLM extras ``prompt_logprobs`` and ``continue_final_message`` -- so the router
has one client for CPU and GPU stages. One process serves one model.

This module is the entry point; the server itself is ``servers/stage_app.py``
(routes), ``servers/stage_serving.py`` (requests into engine calls),
``servers/stage_streams.py`` (SSE) and ``servers/sampling.py`` (what one
generation is asked to do).

Run: ``python -m servers.llama_server --weights qwen2.5-coder-0.5b-instruct --port 8101``
"""

from __future__ import annotations

import argparse
import sys
import time

import uvicorn

from servers.llama_engine import LlamaEngine
from servers.stage_app import create_app
from servers.stage_serving import StageServing


def main(argv: list[str] | None = None) -> None:
    from servers.weights import resolve

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, help="catalog key of the GGUF weights (see servers/weights.py)")
    parser.add_argument("--model-id", help="model id to serve (default: the weights key)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--n-ctx", type=int, default=4096)
    args = parser.parse_args(argv)
    engine = LlamaEngine(str(resolve(args.weights)), n_ctx=args.n_ctx, n_threads=args.threads)
    t0 = time.perf_counter()
    generated = engine.warm_up()  # a build this CPU cannot run dies here, before /health says ok
    print(f"warm-up: {generated} tokens generated in {time.perf_counter() - t0:.2f} s", file=sys.stderr, flush=True)
    app = create_app(StageServing(engine, args.model_id or args.weights))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
