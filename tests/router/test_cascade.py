"""The cascade engine driven directly: ``CascadeEngine.run`` and its steps, no HTTP and no app.

Scripted stages (``fake_stage.py``) behind the ``router.stage.Stage`` protocol and a scripted p̂. The policy is
made predictable as in ``test_app_inprocess.py``: point priors (no Beta spread), no risk shrinkage, λ = 10, stage
costs 1 / 4 / 16 per request, priors 0.5 / 0.9 / 0.95. Then the values of the stages are V2 = 16 + 10 · 0.05 = 16.5,
V1 = 4 + min(10 · 0.1, 16.5) = 5 and stage 0 stops when 10 (1 - p̂) <= 5, i.e. at p̂ >= 0.5; stage 1 stops when
10 (1 - p̂) <= 16.5, i.e. always.

One test (or more) per step of the engine: start (``_start``), call-or-verify (``_call_or_verify``), write with
early exit (``_write``), judge (``_judge``), decide (``_decide``), fall back (``_fall_back``), and what the walk
records per stage.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from common.settings import Settings
from predictor.serving.features import PromptStats
from predictor.serving.lengths import OutputLengths
from router.cascade import CascadeEngine, Walk
from router.contracts import CascadeRequest, CascadeResult, StageAnswer
from router.metrics import REGISTRY
from router.openai.chat.dialect import CHAT_DIALECT
from router.openai.completions.dialect import COMPLETIONS_DIALECT
from router.stage import StageBadResponse, StageFailure, StageTimeout, StageUnavailable
from router.validity import AnswerSpec
from tests.router.fake_stage import FakeStage, Script, ScriptedPredictor, fake_stages

pytestmark = pytest.mark.anyio

S0 = Script("The answer is 5.", prompt_tokens=10)
S1 = Script("The answer is 4, because two and two make four.", prompt_tokens=11)
S2 = Script("Four.", prompt_tokens=12)
PRIORS = [0.5, 0.9, 0.95]
STOP, ESCALATE = 0.9, 0.1  # stage 0's p̂ that stops there / escalates
PROMPT = [{"role": "user", "content": "What is 2 + 2?"}]
PROMPT_STATS = PromptStats.from_texts([PROMPT[0]["content"]])


def make_settings(n: int = 3, dialect: str = "openai", **cascade: Any) -> Settings:
    stage = {"url": "http://127.0.0.1:9/v1", "dialect": dialect}
    costs = [1.0, 4.0, 16.0]
    policy = {"skip_by_prior": False, "prior_strength": None, "risk": {"alpha": 0.0, "beta": 0.0}, "default_lambda": 10.0}
    return Settings.model_validate({
        "tenancy": {"auth": "open"},
        "cascade": policy | cascade,
        "stages": [{**stage, "name": f"s{i}", "model": f"m{i}", "prices": {"cost": {"request": costs[i]}}} for i in range(n)],
    })  # fmt: skip


def make_engine(
    p_hat: dict[int, float], settings: Settings | None = None, scripts: tuple[Script, ...] = (S0, S1, S2), priors: list[float] = PRIORS
) -> tuple[CascadeEngine, list[FakeStage], ScriptedPredictor]:
    settings = settings or make_settings()
    stages = fake_stages(settings.stages, *scripts)
    predictor = ScriptedPredictor(p_hat, priors)
    return CascadeEngine(settings, stages, predictor), stages, predictor


def request(lam: float = 10.0, max_stage: int = 2, stream: bool = False, **body: Any) -> CascadeRequest:
    return CascadeRequest({"messages": PROMPT, "max_tokens": 64, **body}, PROMPT_STATS, lam, max_stage, stream=stream)


def walk_of(engine: CascadeEngine, req: CascadeRequest) -> Walk:
    """The state one request's steps share, as ``_run`` builds it (for calling a step alone)."""
    req.spec = AnswerSpec.of(req.body)
    return engine._walk(req, req.spec, CHAT_DIALECT)


def content(result: CascadeResult) -> str:
    assert result.response is not None
    return str(result.response["choices"][0]["message"]["content"])


def path(result: CascadeResult) -> list[tuple[str, str | None]]:
    """The visits in order: (stage name, error or None)."""
    return [(v.name, v.error) for v in result.visits]


def calls(stage: str, outcome: str = "ok") -> float:
    return REGISTRY.get_sample_value("adaptive_sd_stage_calls_total", {"stage": stage, "outcome": outcome}) or 0.0


# -- start ------------------------------------------------------------------------------------------------------------


async def test_start_skips_a_stage_the_prior_says_is_not_worth_calling() -> None:
    """Priors 0.05 / 0.9 / 0.95: V0 = 1 + min(9.5, 5) = 6 > V1 = 5, so a hard prompt starts at stage 1."""
    priors = [0.05, 0.9, 0.95]
    engine, stages, _ = make_engine({0: STOP, 1: 0.9}, make_settings(skip_by_prior=True), priors=priors)
    req = request()
    assert engine._start(walk_of(engine, req).route) == 1
    result = await engine.run(request(), CHAT_DIALECT)
    assert path(result) == [("s1", None)] and result.final_stage == 1 and content(result) == S1.text
    assert stages[0].calls == [] and stages[2].calls == []


def test_start_is_the_lowest_allowed_stage_without_skip_by_prior() -> None:
    engine, _, _ = make_engine({}, make_settings(skip_by_prior=False), priors=[0.05, 0.9, 0.95])
    assert engine._start(walk_of(engine, request()).route) == 0


async def test_an_untrained_predictor_makes_the_rule_escalate_more() -> None:
    """The same answer, p̂ 0.8 at λ 10: a trained predictor's is good enough; the baseline's guess, with λ scaled by
    ``untrained_lambda_scale``, is not, and the next stage is asked."""
    settings = make_settings(untrained_lambda_scale=10.0)
    trained, _, _ = make_engine({0: 0.8, 1: STOP}, settings)
    assert trained.effective_lambda(10.0) == 10.0 and (await trained.run(request(), CHAT_DIALECT)).final_stage == 0
    guess, _, predictor = make_engine({0: 0.8, 1: STOP}, settings)
    predictor.trained = False
    assert guess.untrained and guess.effective_lambda(10.0) == 100.0
    assert (await guess.run(request(), CHAT_DIALECT)).final_stage == 1


def _touring(tmp_path: Any, rate: float = 1.0, **cascade: Any) -> tuple[CascadeEngine, list[FakeStage], Any]:
    log = tmp_path / "traffic.jsonl"
    settings = make_settings(dialect="vllm", skip_by_prior=True, explore={"rate": rate, "untrained_rate": 0.0}, **cascade)
    settings.predictor.log_path = str(log)
    engine, stages, _ = make_engine({0: STOP, 1: STOP, 2: STOP}, settings, priors=[0.05, 0.9, 0.95])
    return engine, stages, log


async def test_a_tour_visits_every_stage_in_order_and_returns_the_top_stages_answer(tmp_path: Any) -> None:
    """``cascade.explore``: whatever the prior and p̂ say (stage 0 confident, stage 0 skippable), a touring request
    asks every stage, each verifying the one below (a label each), and the user gets the top's answer; the log
    marks the row; a tour's steps are not counted as the rule's escalations. A tenant excluded from learning never
    tours; the rate is the untrained one while the baseline serves."""
    import json

    engine, _, log = _touring(tmp_path)
    before = REGISTRY.get_sample_value("adaptive_sd_cascade_tours_total") or 0.0
    up = {"from_stage": "s0", "to_stage": "s1"}
    escalations = REGISTRY.get_sample_value("adaptive_sd_cascade_escalations_total", up) or 0.0
    result = await engine.run(request(temperature=0), CHAT_DIALECT)
    assert path(result) == [("s0", None), ("s1", None), ("s2", None)] and result.final_stage == 2 and content(result) == S2.text
    assert [v.draft_mode for v in result.visits] == [None, "verify", "verify"] and result.tour
    assert REGISTRY.get_sample_value("adaptive_sd_cascade_tours_total") == before + 1
    assert (REGISTRY.get_sample_value("adaptive_sd_cascade_escalations_total", up) or 0.0) == escalations
    row = json.loads(log.read_text().splitlines()[-1])
    assert row["tour"] is True and [s["agreement"] is not None for s in row["stages"]] == [True, True, False]
    excluded = request(temperature=0)
    excluded.learn = False
    assert path(await engine.run(excluded, CHAT_DIALECT)) == [("s1", None)]  # the prior skips stage 0, p̂ stops at 1
    engine.predictor.trained = False  # type: ignore[misc]
    assert not engine.draw_tour(request(), [0, 1, 2])


def _rows(log: Any) -> list[dict[str, Any]]:
    import json

    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


async def test_a_streamed_tour_is_logged_whole_once_its_stream_has_ended(tmp_path: Any) -> None:
    """A tour whose top stage streams (``router.stream_tap``): its row is written when the stream has ended, with the
    top's answer put together from the stream after the verified prefix (its text, logprobs and usage), so that it
    is a tour the learner can use (``training.calibrate.tour_rows``). A stream the client leaves early logs no answer
    of the top stage, as before."""
    from training.calibrate import tour_rows

    engine, _, log = _touring(tmp_path)
    result = await engine.run(request(temperature=0, stream=True), CHAT_DIALECT)
    assert result.events is not None and result.tour and _rows(log) == []  # nothing kept before the answer has gone out
    streamed = [orjson.loads(p) for p in [p async for p in result.events]]
    sent = "".join(c["choices"][0]["delta"].get("content") or "" for c in streamed if c.get("choices"))
    (row,) = _rows(log)
    assert row["tour"] is True and [s["stage"] for s in row["stages"]] == [0, 1, 2]
    top = row["stages"][2]
    prefix = result.prefix.accepted_text if result.prefix is not None else ""
    assert top["text"] == S2.text == prefix + sent and top["finish_reason"] == "stop"
    assert len(top["logprobs"]) == top["usage"]["completion_tokens"] > 0
    assert [s["agreement"] is not None for s in row["stages"]] == [True, True, False]
    assert row["stages"][1]["same"] is (S1.text.strip() == S2.text.strip())  # the streamed verifier's own text decides
    assert len(tour_rows([row], 3)) == 1
    left = await engine.run(request(temperature=0, stream=True), CHAT_DIALECT)
    assert left.events is not None
    events = aiter(left.events)
    await anext(events)
    await events.aclose()  # type: ignore[attr-defined]
    row = _rows(log)[-1]
    assert [s["stage"] for s in row["stages"]] == [0, 1] and tour_rows([row], 3) == []


async def test_a_streamed_completions_tour_is_logged_whole(tmp_path: Any) -> None:
    """The same for ``/v1/completions``: its stream's text and completions-shaped logprobs (after a verified prefix,
    ``COMPLETIONS_DRAFT.merge``: tests/router/test_stream_tap.py) are the top's logged answer."""
    from training.calibrate import tour_rows

    engine, _, log = _touring(tmp_path)
    req = CascadeRequest({"prompt": "What is 2 + 2?", "max_tokens": 64, "temperature": 0}, PROMPT_STATS, 10.0, 2, stream=True)
    result = await engine.run(req, COMPLETIONS_DIALECT)
    assert result.events is not None and result.tour and _rows(log) == []
    sent = "".join(c["choices"][0].get("text") or "" for c in [orjson.loads(p) async for p in result.events] if c.get("choices"))
    (row,) = _rows(log)
    top = row["stages"][2]
    prefix = result.prefix.accepted_text if result.prefix is not None else ""  # the fakes' completions do not align
    assert row["kind"] == "completion" and [s["stage"] for s in row["stages"]] == [0, 1, 2]
    assert top["text"] == prefix + sent and top["text"] and len(top["logprobs"]) == top["usage"]["completion_tokens"]
    assert len(tour_rows([row], 3)) == 1


async def test_requests_tour_at_the_untrained_rate_until_the_default_target_has_a_lambda(tmp_path: Any) -> None:
    """A trained model without a λ for ``cascade.default_target`` (no table yet, or one from too few tours) leaves
    the ladder still being learned: the untrained rate is in force; once the target is resolved, the trained one."""
    engine, _, _ = _touring(tmp_path, rate=0.0)
    engine.explore_rates = (0.0, 1.0)
    assert not engine.learning and engine.explore_rate == 0.0 and not engine.draw_tour(request(temperature=0), [0, 1, 2])
    engine.target_resolved = lambda: False
    assert engine.learning and engine.explore_rate == 1.0 and engine.draw_tour(request(temperature=0), [0, 1, 2])
    engine.target_resolved = lambda: True
    assert not engine.learning and not engine.draw_tour(request(temperature=0), [0, 1, 2])


async def test_no_tour_where_it_could_not_label_or_keep_a_label(tmp_path: Any) -> None:
    """A tour that would pay every stage for no label is not drawn: one stage allowed, tools (never verified), a
    sampled request across tokenizers, no traffic log to keep the labels in."""
    engine, _, _ = _touring(tmp_path)
    assert engine.draw_tour(request(temperature=0), [0, 1, 2])
    assert not engine.draw_tour(request(temperature=0), [2])
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    assert not engine.draw_tour(request(temperature=0, tools=tools), [0, 1, 2])
    assert not engine.draw_tour(request(temperature=0.7), [0, 1, 2])  # no shared tokenizer declared
    result = await engine.run(request(temperature=0, max_stage=0), CHAT_DIALECT)
    assert path(result) == [("s0", None)] and not result.tour
    engine.traffic = None
    assert not engine.draw_tour(request(temperature=0), [0, 1, 2])


async def test_a_stage_failing_on_a_tour_goes_on_to_the_top(tmp_path: Any) -> None:
    """The answer in hand is not returned when the middle stage fails: a tour returns the top's answer."""
    engine, stages, _ = _touring(tmp_path)
    stages[1].fail = StageTimeout
    result = await engine.run(request(temperature=0), CHAT_DIALECT)
    assert [name for name, _ in path(result)] == ["s0", "s1", "s2"] and result.visits[1].error is not None
    assert result.final_stage == 2
    assert result.degraded is None and content(result) == S2.text


# -- call-or-verify, judge, decide -------------------------------------------------------------------------------------


async def test_a_confident_lower_stage_stops_the_walk() -> None:
    engine, stages, predictor = make_engine({0: STOP})
    result = await engine.run(request(), CHAT_DIALECT)
    assert result.final_stage == 0 and content(result) == S0.text and result.degraded is None
    assert path(result) == [("s0", None)] and result.visits[0].p_hat == STOP
    assert stages[1].calls == [] and stages[2].calls == []
    assert len(predictor.features) == 1  # judged once
    call = stages[0].calls[0]  # called from scratch, asking for the predictor's logprobs
    assert call["logprobs"] is True and call["top_logprobs"] == predictor.top_k and "continue_final_message" not in call


async def test_escalation_verifies_the_draft_and_keeps_the_accepted_prefix() -> None:
    """vLLM dialect, greedy: stage 1 scores stage 0's answer, keeps "The answer is" and generates only the rest."""
    engine, stages, _ = make_engine({0: ESCALATE, 1: 0.9}, make_settings(dialect="vllm"))
    result = await engine.run(request(temperature=0), CHAT_DIALECT)
    assert path(result) == [("s0", None), ("s1", None)] and result.final_stage == 1
    assert content(result) == S1.text  # the upper stage's own greedy answer
    upper = result.visits[1]
    assert upper.draft_mode == "verify" and upper.draft is not None
    assert (upper.draft.accepted_tokens, upper.draft.draft_tokens) == (3, 4)  # " 5." rejected
    scoring, continuation = stages[1].calls
    assert scoring["messages"][-1] == {"role": "assistant", "content": S0.text} and scoring["prompt_logprobs"] is not None
    assert continuation["messages"][-1] == {"role": "assistant", "content": "The answer is"}
    assert continuation["continue_final_message"] is True


async def test_call_or_verify_regenerates_when_the_dialect_cannot_verify() -> None:
    """A plain OpenAI-compatible stage has no prompt logprobs: the draft is not verified, the stage answers from scratch."""
    engine, stages, _ = make_engine({0: ESCALATE, 1: 0.9})
    walk = walk_of(engine, request(temperature=0))
    walk.answer = StageAnswer(0, stages[0].completion({"messages": PROMPT}))
    answer = await engine._call_or_verify(walk, 1, 2, time.perf_counter())
    assert isinstance(answer, StageAnswer) and answer.stage == 1 and answer.choice["message"]["content"] == S1.text
    assert walk.check is None and walk.mode == "regenerate:dialect"
    assert len(stages[1].calls) == 1 and "prompt_logprobs" not in stages[1].calls[0]


async def test_a_streamed_request_relays_the_top_stage() -> None:
    engine, stages, _ = make_engine({0: ESCALATE, 1: 0.9}, make_settings(n=2))
    result = await engine.run(request(stream=True, max_stage=1), CHAT_DIALECT)
    assert result.final_stage == 1 and result.response is None and result.events is not None
    assert path(result) == [("s0", None), ("s1", None)]
    assert result.visits[1].usage is None  # its usage arrives in the stream
    assert b"".join([chunk async for chunk in result.events]).count(b'"content"') > 1
    assert stages[1].calls[0]["stream"] is True and stages[0].calls[0].get("stream") is None  # the lower one was judged whole


async def test_a_stream_is_read_whole_only_where_something_reads_its_text() -> None:
    """Without a traffic log or shadow checks, a streamed verifier's answer is put together only where the answer it
    verified is short (its label then needs the verifier's own text, ``predictor.serving.labels``); after a long one
    only its usage is read (for measured prices and the realised cost)."""
    short, _, _ = make_engine({0: ESCALATE, 1: 0.9}, make_settings(n=2, dialect="vllm"), scripts=(S0, S2))
    result = await short.run(request(stream=True, max_stage=1, temperature=0), CHAT_DIALECT)
    assert result.visits[1].draft is not None and result.events is not None
    _ = [p async for p in result.events]
    choice = result.visits[1].choice
    assert choice is not None and choice["message"]["content"] == S2.text
    long, _, _ = make_engine({0: ESCALATE, 1: 0.9}, make_settings(n=2, dialect="vllm"), scripts=(S1, S2))
    result = await long.run(request(stream=True, max_stage=1, temperature=0), CHAT_DIALECT)
    assert result.visits[1].draft is not None and result.events is not None
    _ = [p async for p in result.events]
    assert result.visits[1].choice is None and result.visits[1].usage is not None


async def test_judge_gives_the_predictors_p_hat_for_a_valid_answer() -> None:
    engine, stages, predictor = make_engine({0: 0.7})
    walk = walk_of(engine, request())
    answer = StageAnswer(0, stages[0].completion({"messages": PROMPT, "logprobs": True, "top_logprobs": 5}))
    assert engine._judge(walk, answer) == (0.7, None)
    assert len(predictor.features) == 1


async def test_an_invalid_answer_escalates_whatever_p_hat_says() -> None:
    """Stage 0 is scripted to a p̂ that would stop, but its answer is not a JSON object: p̂ = 0, never returned."""
    good = Script('{"name": "Ada"}', prompt_tokens=11)
    engine, stages, predictor = make_engine({0: 0.99, 1: 0.9}, scripts=(Script("[1, 2]"), good, S2))
    result = await engine.run(request(response_format={"type": "json_object"}), CHAT_DIALECT)
    assert path(result) == [("s0", None), ("s1", None)] and result.final_stage == 1 and content(result) == good.text
    lower = result.visits[0]
    assert lower.invalid is not None and lower.p_hat == 0.0 and result.invalid == [lower]
    assert len(predictor.features) == 1  # the predictor was asked about stage 1 only
    walk = walk_of(engine, request(response_format={"type": "json_object"}))
    assert engine._judge(walk, StageAnswer(0, stages[0].completion({"messages": PROMPT}))) == (0.0, lower.invalid)


def test_decide_applies_the_stopping_rule_and_escalates_an_invalid_answer() -> None:
    engine, _, _ = make_engine({})
    route = walk_of(engine, request()).route
    assert engine._decide(route, 0, 1, 0.5, None) is None  # 10 · 0.5 <= V1 = 5: stop
    assert engine._decide(route, 0, 1, 0.4, None) == 1  # 6 > 5: escalate to the best next stage
    assert engine._decide(route, 0, 1, 0.99, "not_json") == 1  # invalid: escalate whatever p̂ says
    assert engine._decide(route, 1, 2, 0.0, None) is None  # 10 <= V2 = 16.5: stage 1 always stops here


async def test_the_last_stage_must_stop() -> None:
    engine, _, _ = make_engine({0: ESCALATE, 1: 0.0}, make_settings(n=2))
    route = walk_of(engine, request(max_stage=1)).route
    assert engine._decide(route, 1, None, 0.0, None) is None and engine._decide(route, 1, None, 0.0, "not_json") is None
    result = await engine.run(request(max_stage=1), CHAT_DIALECT)
    assert result.final_stage == 1 and result.visits[-1].p_hat == 0.0 and content(result) == S1.text and result.degraded is None


async def test_the_top_stages_invalid_answer_is_returned_marked() -> None:
    engine, _, _ = make_engine({0: STOP}, make_settings(n=1))
    result = await engine.run(request(max_stage=0, response_format={"type": "json_object"}), CHAT_DIALECT)
    assert result.final_stage == 0 and content(result) == S0.text and result.visits[0].invalid is not None


# -- write with early exit ---------------------------------------------------------------------------------------------

LONG = Script(" ".join(f"w{i}" for i in range(30)), prompt_tokens=10)


def early_engine(q: float) -> tuple[CascadeEngine, list[FakeStage], ScriptedPredictor]:
    """Stage 0 writes 30 tokens priced 0.05 each, stage 1 costs 4 per request, checkpoints after 4 and 8 tokens
    (as in ``test_early_exit.py``): a prefix estimate of 0.02 aborts at the first checkpoint, 0.99 lets it finish."""
    stage = {"url": "http://127.0.0.1:9/v1", "dialect": "openai"}
    policy = {"skip_by_prior": False, "prior_strength": None, "risk": {"alpha": 0.0, "beta": 0.0}, "default_lambda": 10.0,
              "cost_unit": "u"}  # fmt: skip
    settings = Settings.model_validate({
        "tenancy": {"auth": "open"},
        "cascade": policy,
        "stages": [{**stage, "name": "s0", "model": "m0", "prices": {"u": {"output_token": 0.05}}},
                   {**stage, "name": "s1", "model": "m1", "prices": {"u": {"request": 4.0}}}],
    })  # fmt: skip
    stages = fake_stages(settings.stages, LONG, S1)
    lengths = (OutputLengths(tuple([30.0] * 20)), OutputLengths(tuple([5.0] * 20)))
    predictor = ScriptedPredictor({0: 0.9, 1: 0.9}, [0.5, 0.9], lengths=lengths, checkpoints=(4, 8), prefix_strengths=(20.0, 20.0),
                                  prefix_p={0: q})  # fmt: skip
    return CascadeEngine(settings, stages, predictor), stages, predictor


async def test_early_exit_aborts_the_writing_stage_and_escalates_with_its_prefix_as_the_draft() -> None:
    engine, stages, predictor = early_engine(q=0.02)
    result = await engine.run(request(max_stage=1), CHAT_DIALECT)
    assert path(result) == [("s0", None), ("s1", None)] and result.final_stage == 1 and content(result) == S1.text
    aborted = result.visits[0]
    assert aborted.aborted_at == 4 and aborted.p_hat == 0.02 and aborted.choice is None  # never an answer
    assert aborted.usage is not None and (aborted.usage.prompt_tokens, aborted.usage.completion_tokens) == (PROMPT_STATS.n_tokens, 4)
    assert stages[0].calls[0]["stream"] is True and stages[0].streamed == 5  # the role chunk and 4 tokens, not 30
    assert result.visits[1].draft_mode == "regenerate:dialect"  # the prefix was the next stage's draft
    assert len(predictor.prefixes) == 1 and len(predictor.features) == 1  # judged mid-answer once; only s1 judged whole


async def test_write_alone_returns_what_was_written_where_to_go_and_the_estimate() -> None:
    engine, _, _ = early_engine(q=0.02)
    written, to, q = await engine._write(walk_of(engine, request(max_stage=1)), 0)
    assert (written.aborted_at, to, q) == (4, 1, 0.02) and written.completion_tokens == 4
    engine, _, _ = early_engine(q=0.99)
    written, to, q = await engine._write(walk_of(engine, request(max_stage=1)), 0)
    assert (written.aborted_at, to, q) == (None, None, 0.99) and written.text == LONG.text


async def test_a_promising_prefix_is_let_finish_and_judged_whole() -> None:
    engine, stages, predictor = early_engine(q=0.99)
    result = await engine.run(request(max_stage=1), CHAT_DIALECT)
    assert path(result) == [("s0", None)] and content(result) == LONG.text and result.visits[0].aborted_at is None
    assert len(predictor.prefixes) == 2 and stages[1].calls == []


async def test_an_aborted_prefix_is_never_returned_when_the_next_stage_fails() -> None:
    engine, stages, _ = early_engine(q=0.02)
    stages[1].fail = StageUnavailable
    with pytest.raises(StageUnavailable):
        await engine.run(request(max_stage=1), CHAT_DIALECT)


# -- fall back ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("failure", [StageUnavailable, StageTimeout, StageBadResponse])
async def test_a_failing_lower_stage_falls_back_to_the_next(failure: type[StageFailure]) -> None:
    engine, stages, _ = make_engine({0: STOP, 1: 0.9})
    stages[0].fail = failure
    result = await engine.run(request(), CHAT_DIALECT)
    assert result.final_stage == 1 and content(result) == S1.text and result.degraded is None
    assert [v.name for v in result.visits] == ["s0", "s1"]
    error = result.visits[0].error
    assert error is not None and "stage 's0'" in error and result.visits[0].usage is None


async def test_a_failing_upper_stage_returns_the_answer_in_hand_degraded() -> None:
    engine, stages, _ = make_engine({0: ESCALATE})
    stages[1].fail = StageTimeout
    result = await engine.run(request(), CHAT_DIALECT)
    assert result.final_stage == 0 and content(result) == S0.text
    assert result.degraded is not None and "stage 's1'" in result.degraded
    assert path(result)[0] == ("s0", None) and path(result)[1][0] == "s1" and stages[2].calls == []


async def test_an_invalid_answer_in_hand_is_not_fallen_back_to_while_a_higher_stage_exists() -> None:
    good = Script('{"name": "Ada"}', prompt_tokens=12)
    engine, stages, _ = make_engine({0: STOP, 2: 0.9}, scripts=(Script("[1, 2]"), S1, good))
    stages[1].fail = StageUnavailable
    result = await engine.run(request(response_format={"type": "json_object"}), CHAT_DIALECT)
    assert [v.name for v in result.visits] == ["s0", "s1", "s2"] and result.final_stage == 2 and content(result) == good.text


async def test_every_stage_failing_raises_the_top_stages_failure() -> None:
    engine, stages, _ = make_engine({0: ESCALATE}, make_settings(n=2))
    stages[0].fail, stages[1].fail = StageUnavailable, StageTimeout
    with pytest.raises(StageTimeout, match="stage 's1'"):
        await engine.run(request(max_stage=1), CHAT_DIALECT)


def test_fall_back_alone() -> None:
    engine, stages, _ = make_engine({})
    walk = walk_of(engine, request())
    t0 = time.perf_counter()
    assert engine._fall_back(walk, 0, 1, StageTimeout("s0", "slow"), t0) == 1  # nothing in hand: go on
    walk.answer = StageAnswer(1, stages[1].completion({"messages": PROMPT}))
    held = engine._fall_back(walk, 2, None, StageUnavailable("s2", "down"), t0)
    assert isinstance(held, CascadeResult) and held.final_stage == 1 and held.degraded == "stage 's2': down"
    walk.answer_invalid = True  # an invalid answer is still returned at the top: nowhere else to go
    assert isinstance(engine._fall_back(walk, 2, None, StageUnavailable("s2", "down"), t0), CascadeResult)
    assert engine._fall_back(walk, 1, 2, StageUnavailable("s1", "down"), t0) == 2  # ... but not while a higher stage exists
    walk.answer = None
    with pytest.raises(StageUnavailable):
        engine._fall_back(walk, 2, None, StageUnavailable("s2", "down"), t0)
    assert [v.error for v in walk.visits] == ["stage 's0': slow", *["stage 's2': down"] * 2, "stage 's1': down", "stage 's2': down"]


# -- what the walk records ---------------------------------------------------------------------------------------------


async def test_visits_usage_and_costs_are_recorded_per_stage() -> None:
    engine, _, _ = make_engine({0: ESCALATE, 1: 0.9})
    before = [calls(f"s{i}") for i in range(3)]
    result = await engine.run(request(), CHAT_DIALECT)
    n0, n1 = len(S0.tokens), len(S1.tokens)
    assert [(v.stage, v.name, v.p_hat) for v in result.visits] == [(0, "s0", ESCALATE), (1, "s1", 0.9)]
    assert all(v.seconds >= 0 and v.error is None and v.choice is not None for v in result.visits)
    assert [(v.usage.prompt_tokens, v.usage.completion_tokens) for v in result.visits if v.usage] == [(10, n0), (11, n1)]
    assert (result.usage().prompt_tokens, result.usage().completion_tokens) == (21, n0 + n1)
    assert [engine.pricing.actual(v.stage, v.usage.prompt_tokens, v.usage.completion_tokens) for v in result.visits if v.usage] == [
        1.0,
        4.0,
    ]
    assert result.stage_seconds == sum(v.seconds for v in result.visits)
    assert [calls(f"s{i}") - before[i] for i in range(3)] == [1.0, 1.0, 0.0]


async def test_a_failed_visit_is_recorded_and_counted_as_an_error() -> None:
    engine, stages, _ = make_engine({0: STOP, 1: 0.9})
    stages[0].fail = StageUnavailable
    errors = calls("s0", "error")
    result = await engine.run(request(), CHAT_DIALECT)
    failed = result.visits[0]
    assert failed.error is not None and failed.usage is None and failed.p_hat is None and failed.choice is None
    assert calls("s0", "error") == errors + 1
