"""``router.openai.chat.serving`` in-process: what a client gets of the logprobs the router asked for, and a tenant's top stage.

The router asks every stage for the predictor's top-k alternatives per token; a
client must still get what OpenAI sends (``logprobs: true`` alone: each token's
``top_logprobs`` is ``[]``; ``top_logprobs: n``: exactly n), on every path: the
answer, the answer re-streamed, and the top stage's stream relayed. A tenant's
``max_stage`` that names no stage of the ladder fails closed: the cascade is
refused with an error naming ``max_stage``, never served by the whole ladder.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from starlette.requests import ClientDisconnect
from starlette.responses import StreamingResponse

from common.completions_protocol import parse_completion_request
from common.errors import APIError, parse_chat_request
from common.responses_protocol import parse_responses_request
from common.settings import TokenPrices
from router.cascade import CascadeEngine
from router.closing import Link
from router.contracts import RequestOutcome, TenantLimits, TokenUsage
from router.openai.chat.serving import ChatRendering
from router.openai.completions.serving import CompletionServing
from router.openai.responses.serving import ResponsesServing
from router.openai.serving_base import OpenAIServing
from router.stream_tap import tap
from router.tenants.model import TenantSettings, hash_key
from router.tenants.redis_store import RedisStore
from router.tenants.service import TenantService
from tests.conftest import RedisServer
from tests.router.inprocess import ESCALATE, PROMPT, S0, S1, STOP, chat_serving, events, make_settings, serve, streamed_text

pytestmark = pytest.mark.anyio


def _token_entries(chunks: list[Any], prefix: bool) -> list[dict[str, Any]]:
    """The logprobs entries a stream sent for the verified draft prefix (``prefix``), or for the other tokens."""
    out: list[dict[str, Any]] = []
    for c in chunks:
        if isinstance(c, dict) and c.get("choices") and (c["id"] == "chatcmpl-prefix") == prefix:
            out += (c["choices"][0].get("logprobs") or {}).get("content") or []
    return out


# -- logprobs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("asked", [{}, {"top_logprobs": 0}, {"top_logprobs": 2}, {"top_logprobs": 7}])
@pytest.mark.parametrize(
    "p0,dialect,script",
    [
        (ESCALATE, "openai", S1),  # the top stage's stream, relayed
        (ESCALATE, "vllm", S1),  # the verified draft prefix first, then the top stage's stream
        (STOP, "openai", S0),  # a lower stage's answer, re-streamed
    ],
)
async def test_a_stream_sends_exactly_the_alternatives_the_client_asked_for(
    asked: dict[str, int], p0: float, dialect: str, script: Any
) -> None:
    """``logprobs: true`` without ``top_logprobs`` relayed the top-k alternatives the router asked the top stage for."""
    async with serve(p0, make_settings(dialect=dialect)) as r:
        resp = await r.chat(stream=True, logprobs=True, temperature=0, max_tokens=32, **asked)
        assert resp.status_code == 200, resp.text
        chunks = events(resp)
        assert streamed_text(chunks) == script.text and chunks[-1] == "[DONE]"
        prefix, entries = _token_entries(chunks, prefix=True), _token_entries(chunks, prefix=False)
        assert [e["token"] for e in prefix + entries] == script.tokens and entries
        want = asked.get("top_logprobs", 0)
        assert [len(e["top_logprobs"]) for e in entries] == [want] * len(entries), entries
        # the prefix's come from the verifying stage's scoring, which the fake ranks only for its own token
        assert all(len(e["top_logprobs"]) <= want for e in prefix) and (dialect == "vllm") == bool(prefix), prefix
        asked_of_stages = [call["top_logprobs"] for s in r.stages for call in s.calls if "top_logprobs" in call]
        assert max(asked_of_stages) == max(want, r.predictor.top_k)  # the router did ask for more than the client


async def test_a_stream_without_logprobs_sends_none() -> None:
    async with serve(ESCALATE) as r:
        chunks = events(await r.chat(stream=True))
        assert streamed_text(chunks) == S1.text
        assert all(c["choices"][0]["logprobs"] is None for c in chunks if isinstance(c, dict) and c.get("choices"))


# -- a tenant's max_stage that names no stage ---------------------------------------------------------


@pytest.mark.parametrize("stale", ["s9", 2])
async def test_a_tenant_max_stage_not_in_the_ladder_is_refused_not_uncapped(stale: int | str) -> None:
    """A ``max_stage`` renamed or removed since the tenant was set gave the tenant the whole ladder."""
    serving = chat_serving(make_settings())
    req = parse_chat_request(orjson.dumps({"model": "cascade", "messages": PROMPT}))
    with pytest.raises(APIError) as info:
        await serving.create(req, {}, TenantLimits(10.0, max_stage=stale))
    err = info.value
    assert (err.status, err.type, err.param, err.code) == (403, "permission_error", "max_stage", "max_stage_not_in_ladder")
    assert repr(stale) in err.message and "s0, s1" in err.message
    assert all(s.calls == [] for s in serving.stages.values())  # not a single stage was asked
    # a request's own lower cap does not make it acceptable either: the tenant's setting is broken
    with pytest.raises(APIError):
        await serving.create(req, {"x-cascade-max-stage": "s0"}, TenantLimits(10.0, max_stage=stale))
    # the stages by name are not the cascade: max_stage never applied to them
    direct = parse_chat_request(orjson.dumps({"model": "s1", "messages": PROMPT}))
    response, _ = await serving.create(direct, {}, TenantLimits(10.0, max_stage=stale))
    assert response.status_code == 200


async def test_a_valid_tenant_max_stage_still_caps_the_cascade() -> None:
    serving = chat_serving(make_settings())
    req = parse_chat_request(orjson.dumps({"model": "cascade", "messages": PROMPT}))
    response, outcome = await serving.create(req, {}, TenantLimits(10.0, max_stage="s0"))
    assert response.status_code == 200 and outcome.stage == "s0"


async def test_a_stale_max_stage_stored_in_redis_is_refused_at_request_time(redis_server: RedisServer) -> None:
    """A tenant record written when the ladder had another stage (here: straight into Redis, as an older router
    or the CLI of another deployment would have) is not served by the whole ladder."""
    redis_server.flush()
    store = RedisStore(redis_server.url, timeout_s=1.0)
    try:
        await store.create("old", TenantSettings(max_stage="retired-stage"))
        await store.add_key("old", hash_key("asd-old-key"))
    finally:
        await store.close()
    key = {"authorization": "Bearer asd-old-key"}
    async with serve(ESCALATE, make_settings(tenancy={"auth": "keys", "redis_url": redis_server.url})) as r:
        c = r.client
        for stream in (False, True):
            resp = await c.post("/v1/chat/completions", json={"model": "cascade", "messages": PROMPT, "stream": stream}, headers=key)
            assert resp.status_code == 403, resp.text
            err = resp.json()["error"]
            assert err["param"] == "max_stage" and "'retired-stage'" in err["message"] and "s0, s1" in err["message"]
        resp = await c.post("/v1/completions", json={"model": "cascade", "prompt": "2 + 2 ="}, headers=key)
        assert resp.status_code == 403 and resp.json()["error"]["param"] == "max_stage"
        assert all(s.calls == [] for s in r.stages)


@pytest.mark.parametrize("done", [b"data: [DONE]\n\n", b"data:[DONE]\n\n", b"data:[DONE]\r\n\r\n"])
async def test_a_relayed_stream_ends_with_one_done_whatever_the_stage_spelled(done: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stage called by name is relayed as it streams; its ``[DONE]`` (the space after ``data:`` is optional in
    SSE) must not be followed by a second one from the router."""

    async def blocks(self: Any, payloads: list[bytes]) -> Any:
        for payload in payloads:
            yield b"data: " + payload + b"\n\n"
        yield done

    monkeypatch.setattr("tests.router.fake_stage.FakeStage._blocks", blocks)
    async with serve() as r:
        resp = await r.client.post("/v1/chat/completions", json={"model": "s1", "messages": PROMPT, "stream": True})
    assert resp.status_code == 200
    assert resp.content.count(b"[DONE]") == 1, resp.content[-200:]


# -- one price for a stage, called by name or by the cascade -------------------------------------------------------


async def test_a_stage_called_by_name_is_charged_the_prices_the_cascade_uses() -> None:
    """Where prices are measured, a direct call is charged at the measured prices, as the cascade's visits are."""
    seconds = {"seconds": {"request": 1.0, "prompt_token": 0.01, "output_token": 0.1}}
    serving = chat_serving(make_settings({"prices": seconds}, {"prices": seconds}, cost_unit="seconds"))
    pricing = serving.engine.pricing
    for _ in range(50):  # s1 turns out slower than configured
        pricing.observe(1, 9.0, 20, 10)
    price = pricing.prices[1]
    assert price.request + 20 * price.prompt_token + 10 * price.output_token > 3.0  # moved off the configured 2.2
    for stream in (False, True):
        direct = parse_chat_request(orjson.dumps({"model": "s1", "messages": PROMPT, "max_tokens": 3, "stream": stream}))
        _, outcome = await serving.create(direct, {}, TenantLimits(10.0))
        configured = TokenPrices(**seconds["seconds"])
        if stream:  # a stream's tokens are not known yet: its per-request price
            expected, before = price.request, configured.request
        else:
            expected, before = pricing.actual(1, 11, 3), configured.cost(11, 3)
        assert outcome.cost == pytest.approx(expected) and expected != pytest.approx(before)


# -- what a tenant is charged for a stream -------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", ["openai", "vllm"])
async def test_a_relayed_stream_settles_at_the_tokens_and_cost_it_came_to(dialect: str) -> None:
    """The top stage's stream is charged, once it is over, what it wrote (the usage it ended with, the verified prefix
    and its scoring calls included), not an estimate; before its end, and for a stream that broke off, it is unknown."""
    serving = chat_serving(make_settings(dialect=dialect), p0=ESCALATE)
    body = {"model": "cascade", "messages": PROMPT, "temperature": 0, "max_tokens": 200, "stream": True}
    response, outcome = await serving.create(parse_chat_request(orjson.dumps(body)), {}, TenantLimits(10.0))
    assert outcome.settle is not None and outcome.settle() is None  # nothing written yet
    assert isinstance(response, StreamingResponse)
    _ = [chunk async for chunk in response.body_iterator]
    settled = outcome.settle()
    assert settled is not None and settled.stage == "s1"
    plain = parse_chat_request(orjson.dumps({**body, "stream": False}))
    whole, known = await chat_serving(make_settings(dialect=dialect), p0=ESCALATE).create(plain, {}, TenantLimits(10.0))
    assert known.settle is None  # a whole answer is known from the start
    assert (settled.tokens, settled.cost) == (known.tokens, pytest.approx(known.cost)) and settled.tokens < 200
    assert settled.tokens == orjson.loads(whole.body)["usage"]["total_tokens"]


async def test_a_re_streamed_answer_is_charged_its_tokens_once() -> None:
    """A lower stage's whole answer re-streamed is known before it goes out: nothing is added for it at its end."""
    serving = chat_serving(make_settings(), p0=STOP)
    body = {"model": "cascade", "messages": PROMPT, "max_tokens": 200, "stream": True}
    _, outcome = await serving.create(parse_chat_request(orjson.dumps(body)), {}, TenantLimits(10.0))
    assert outcome.stage == "s0" and outcome.settle is None and 0 < outcome.tokens < 200


async def _settled_pass_through(serving: Any, req: Any) -> tuple[RequestOutcome, RequestOutcome | None]:
    response, outcome = await serving.create(req, {}, TenantLimits(10.0))
    assert isinstance(response, StreamingResponse) and outcome.settle is not None and outcome.settle() is None
    _ = [chunk async for chunk in response.body_iterator]
    return outcome, outcome.settle()


async def test_a_stage_called_by_name_settles_its_stream_at_the_usage_it_reported() -> None:
    """A pass-through stream is charged the usage the stage reported at its end, at the stage's prices: chat and
    completions where the client asked for it (else the caller's estimate stands), a Responses stream always."""
    settings = make_settings()
    serving = chat_serving(settings)
    body = {"model": "s1", "messages": PROMPT, "max_tokens": 200, "stream": True}
    _, settled = await _settled_pass_through(serving, parse_chat_request(orjson.dumps({**body, "stream_options": {"include_usage": True}})))
    _, whole = await serving.create(parse_chat_request(orjson.dumps({**body, "stream": False})), {}, TenantLimits(10.0))
    assert settled is not None and (settled.stage, settled.tokens) == ("s1", whole.tokens) and settled.cost == pytest.approx(whole.cost)
    _, unknown = await _settled_pass_through(serving, parse_chat_request(orjson.dumps(body)))
    assert unknown is None  # no usage asked for, none reported: estimated
    completions = CompletionServing(settings, list(serving.stages.values()), serving.engine)
    text = {"model": "s1", "prompt": "2 + 2 =", "max_tokens": 200, "stream": True, "stream_options": {"include_usage": True}}
    _, done = await _settled_pass_through(completions, parse_completion_request(orjson.dumps(text)))
    assert done is not None and done.stage == "s1" and 0 < done.tokens < 200
    responses = ResponsesServing(settings, list(serving.stages.values()), serving.engine)
    _, answered = await _settled_pass_through(
        responses, parse_responses_request(orjson.dumps({"model": "s1", "input": "2 + 2?", "stream": True}))
    )
    assert answered is not None and answered.stage == "s1" and answered.tokens > 0


async def test_a_tenant_is_recorded_what_each_kind_of_stream_came_to(monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the app, what the tenant's accounting records once a stream is over: a relayed top stage and a stage
    called by name with ``include_usage`` at the usage their streams ended with, a re-streamed whole answer at its
    tokens (nothing added), a stage called by name without usage at ``max_tokens`` (the estimate)."""
    recorded: list[int] = []

    def record(self: TenantService, tenant: Any, tokens: int, latency_ms: float, cost: float, stage: str) -> None:
        recorded.append(tokens)

    monkeypatch.setattr(TenantService, "record", record)
    usage = {"stream_options": {"include_usage": True}}
    for p0, model, extra in ((ESCALATE, "cascade", usage), (STOP, "cascade", {}), (ESCALATE, "s1", usage), (ESCALATE, "s1", {})):
        async with serve(p0, make_settings()) as r:
            resp = await r.client.post(
                "/v1/chat/completions", json={"model": model, "messages": PROMPT, "max_tokens": 200, "stream": True, **extra}
            )
            assert resp.status_code == 200
            whole = await r.client.post("/v1/chat/completions", json={"model": model, "messages": PROMPT, "max_tokens": 200})
        streamed, known = recorded[-2:]
        expected = 200 if model == "s1" and not extra else whole.json()["usage"]["total_tokens"]
        assert streamed == expected and known == whole.json()["usage"]["total_tokens"], (p0, model, extra)


async def test_a_client_gone_while_the_verified_prefix_is_sent_closes_the_stages_stream() -> None:
    """The verified draft's prefix goes out before the stage's stream is read; a client that leaves then closes
    that stream too (its connection back, the tap told), not when the garbage collector finds it."""
    log: list[str] = []

    async def stage_events() -> AsyncIterator[bytes]:
        yield b'{"choices":[{"index":0,"delta":{"content":" more"}}]}'

    source = Link(stage_events(), unstarted=lambda: log.append("released"))
    prefix = {"id": "chatcmpl-prefix", "choices": [{"index": 0, "delta": {"content": "The answer"}}]}
    rendering: Any = SimpleNamespace(result=SimpleNamespace(usage=TokenUsage), upstream_model="m", cascade_name="cascade",
                                     rewrites_logprobs=False, prefix_chunk=lambda: prefix)  # fmt: skip
    for relay in (ChatRendering.relay, ChatRendering.chunks):
        log.clear()
        stream = relay(rendering, tap(source, lambda answer: log.append(f"tapped {answer}")))
        first = await anext(stream)
        assert b"The answer" in first if isinstance(first, bytes) else first == prefix
        await stream.aclose()  # type: ignore[attr-defined]
        assert log == ["released", "tapped None"]
        source = Link(stage_events(), unstarted=lambda: log.append("released"))


@pytest.mark.parametrize("p0", [ESCALATE, STOP], ids=["relayed", "re-streamed"])
async def test_a_stream_whose_client_left_before_its_first_byte_is_still_recorded(p0: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """The client's timeout ran out while the cascade decided: the server's first ``send`` fails (ASGI 2.4) and the
    body is never iterated. The tenant is still recorded what the request spent (``router.api``'s accounting)."""
    recorded: list[int] = []

    def record(self: TenantService, tenant: Any, tokens: int, latency_ms: float, cost: float, stage: str) -> None:
        recorded.append(tokens)

    monkeypatch.setattr(TenantService, "record", record)
    body = orjson.dumps({"model": "cascade", "messages": PROMPT, "max_tokens": 200, "stream": True})
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions", "query_string": b"",
             "root_path": "", "headers": [(b"content-type", b"application/json"), (b"host", b"router")],
             "server": ("router", 80), "client": ("127.0.0.1", 1)}  # fmt: skip
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[str] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message["type"])
        raise OSError("the client has gone")

    async with serve(p0, make_settings()) as r:
        app = r.client._transport.app  # type: ignore[attr-defined]
        with pytest.raises(ClientDisconnect):
            await app(scope, receive, send)
    assert sent == ["http.response.start"] and len(recorded) == 1 and recorded[0] > 0


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/responses"])
async def test_a_stream_whose_response_cannot_be_built_is_closed_not_left_to_the_collector(
    path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run opened the top stage's stream; then building the response failed (a bug of ours, here the headers):
    the client gets a 500, and the stream is closed at once, its tap told it did not run to its end."""
    told: list[Any] = []

    def streamed(self: CascadeEngine, *args: Any) -> None:
        told.append(args[-1])  # the tap's answer: None, not run to its end

    def broken(self: Any, result: Any) -> dict[str, str]:
        raise RuntimeError("a bug while building the headers")

    monkeypatch.setattr(CascadeEngine, "_streamed", streamed)
    monkeypatch.setattr(OpenAIServing, "cascade_headers", broken)
    body: dict[str, Any] = {"model": "cascade", "stream": True}
    if path == "/v1/responses":
        body |= {"input": "2 + 2?", "max_output_tokens": 200}
    else:
        body |= {"max_tokens": 200} | ({"prompt": "2 + 2 ="} if path == "/v1/completions" else {"messages": PROMPT})
    async with serve(ESCALATE, make_settings()) as r:
        resp = await r.client.post(path, json=body)
    assert resp.status_code == 500
    assert told == [None]
