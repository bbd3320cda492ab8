"""Measured prices (``router.measured_prices``): each stage's seconds per request, prompt token and generated token,
fitted online from its own visits and regularised toward the configured ``prices.seconds``.

The estimator alone on synthetic visits (recovers known prices with and without noise, is the prior with no data,
moves toward the data as fast as ``prior_strength`` and ``half_life_visits`` say, stays non-negative), the settings
that switch it on (``cascade.measured_prices``, only for the unit ``seconds``), and the engine feeding it: the rule's
price of a slow fake stage (``FakeStage.delay_s``) moves after its visits when enabled and not when disabled.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import time
from typing import Any

import numpy as np
import pytest

from common.settings import Settings, TokenPrices
from predictor.serving.features import PromptStats
from predictor.serving.lengths import OutputLengths
from router.cascade import CascadeEngine
from router.contracts import CascadeRequest
from router.measured_prices import MeasuredPrices
from router.metrics import REGISTRY
from router.openai.chat.dialect import CHAT_DIALECT
from router.pricing import Pricing
from router.stage import StageUnavailable
from tests.router.fake_stage import FakeStage, Script, ScriptedPredictor, fake_stages

PRIOR = TokenPrices(request=0.2, prompt_token=0.002, output_token=0.03)
TRUE = (0.05, 0.0005, 0.05)  # what the stage really takes: request, per prompt token, per generated token


def visits(n: int, truth: tuple[float, float, float] = TRUE, noise: float = 0.0, seed: int = 0) -> list[tuple[float, int, int]]:
    """(seconds, prompt tokens, generated tokens) of ``n`` visits of a stage that takes ``truth`` (plus Gaussian noise)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        p, g = rng.randint(5, 2000), rng.randint(1, 400)
        out.append((max(truth[0] + truth[1] * p + truth[2] * g + rng.gauss(0.0, noise), 0.0), p, g))
    return out


def fitted(m: MeasuredPrices) -> tuple[float, float, float]:
    return m.request, m.prompt_token, m.output_token


def constrained_fit(m: MeasuredPrices, data: list[tuple[float, int, int]]) -> np.ndarray:
    """The same objective minimised by brute force with numpy (every face of the non-negative orthant), as a reference."""
    w = np.array([m.decay ** (len(data) - 1 - i) for i in range(len(data))])
    x = np.array([[1.0, p, g] for _, p, g in data])
    y = np.array([s for s, _, _ in data])
    s = (x * w[:, None]).T @ x
    k = m.strength / w.sum()
    a = (1 + k) * s + 0.01 * k * np.diag(np.diag(s))
    b = (x * w[:, None]).T @ y + k * s @ m.prior + 0.01 * k * np.diag(s) * m.prior
    best, best_f = np.zeros(3), 0.0
    for size in (1, 2, 3):
        for free in itertools.combinations(range(3), size):
            f_ = list(free)
            u = np.zeros(3)
            u[f_] = np.linalg.solve(a[np.ix_(f_, f_)], b[f_])
            if (u >= 0).all() and 0.5 * u @ a @ u - b @ u < best_f:
                best, best_f = u, 0.5 * u @ a @ u - b @ u
    return best


# -- the estimator ------------------------------------------------------------------------------------------------------


def test_with_no_visits_the_prices_are_the_configured_ones_exactly() -> None:
    m = MeasuredPrices(PRIOR, 200, 10)
    assert fitted(m) == (PRIOR.request, PRIOR.prompt_token, PRIOR.output_token) and m.visits == 0
    assert m.cost(100, 50) == PRIOR.cost(100, 50) and m.prices() == PRIOR


def test_noise_free_visits_recover_the_stages_prices() -> None:
    m = MeasuredPrices(PRIOR, 10_000, 0.01)
    for s, p, g in visits(3000):
        m.observe(s, p, g)
    assert fitted(m) == pytest.approx(TRUE, rel=1e-3)


def test_noisy_visits_recover_the_stages_prices() -> None:
    """50 ms of noise per visit (a tenth of a typical visit): the fit of 4000 visits is within a few percent."""
    m = MeasuredPrices(PRIOR, 10_000, 1.0)
    data = visits(4000, noise=0.05, seed=1)
    for s, p, g in data:
        m.observe(s, p, g)
    assert m.request == pytest.approx(TRUE[0], abs=0.01)
    assert m.prompt_token == pytest.approx(TRUE[1], rel=0.03) and m.output_token == pytest.approx(TRUE[2], rel=0.01)
    assert fitted(m) == pytest.approx(constrained_fit(m, data), rel=1e-6)  # the online update is the batch fit


def test_the_prior_weighs_as_prior_strength_visits() -> None:
    """Visits that all ask the same: the cost of what they ask moves to (n · what they took + strength · the
    configured cost) / (n + strength), one visit moves it 1 / (1 + strength) of the way."""
    strength, x, took = 10.0, (400, 100), 5.0
    configured = PRIOR.cost(*x)
    m = MeasuredPrices(PRIOR, 1e9, strength)  # no forgetting
    m.observe(took, *x)
    assert m.cost(*x) == pytest.approx((took + strength * configured) / (1 + strength), rel=1e-3)
    for _ in range(29):
        m.observe(took, *x)
    assert m.cost(*x) == pytest.approx((30 * took + strength * configured) / (30 + strength), rel=1e-3)
    # what the visits cannot tell apart (every prompt of one length, every answer of one length) is the least change
    # from the prior: the three parts' seconds at these visits each take a third of the difference
    moved = m.cost(*x) - configured
    parts = (m.request - PRIOR.request, (m.prompt_token - PRIOR.prompt_token) * x[0], (m.output_token - PRIOR.output_token) * x[1])
    assert parts == pytest.approx((moved / 3,) * 3, rel=1e-6)
    stronger = MeasuredPrices(PRIOR, 1e9, 100.0)
    for _ in range(30):
        stronger.observe(took, *x)
    assert configured < stronger.cost(*x) < m.cost(*x)


def test_old_visits_weigh_half_after_half_life_visits() -> None:
    """A stage that took 1 s per visit for long, then 3 s for one half-life: the fit is halfway, at 2 s."""
    m = MeasuredPrices(TokenPrices(request=1.0), 50, 1e-6)
    for _ in range(5000):
        m.observe(1.0, 100, 20)
    assert m.cost(100, 20) == pytest.approx(1.0, rel=1e-4)
    for _ in range(50):
        m.observe(3.0, 100, 20)
    assert m.cost(100, 20) == pytest.approx(2.0, rel=1e-3)
    for _ in range(50):
        m.observe(3.0, 100, 20)
    assert m.cost(100, 20) == pytest.approx(2.5, rel=1e-3)


def test_prices_stay_non_negative_at_the_constrained_optimum() -> None:
    """A stage whose time has a negative intercept (a linear fit would price a request below zero) and no prompt
    cost at all: the fit clamps the request part at 0 and is the constrained least-squares optimum."""
    truth = (-0.1, 0.0, 0.05)
    data = visits(2000, truth, noise=0.01, seed=2)
    m = MeasuredPrices(PRIOR, 500, 5)
    for i, (s, p, g) in enumerate(data):
        m.observe(s, p, g)
        assert min(fitted(m)) >= 0.0, i
    assert m.request == 0.0 and m.output_token == pytest.approx(0.05, rel=0.05)
    assert fitted(m) == pytest.approx(constrained_fit(m, data), rel=1e-6, abs=1e-9)


def test_a_part_never_seen_stays_at_its_prior_and_bad_figures_are_ignored() -> None:
    m = MeasuredPrices(PRIOR, 200, 1)
    for _ in range(100):
        m.observe(2.0, 0, 30)  # a stage that reports no prompt tokens
    assert m.prompt_token == PRIOR.prompt_token and m.cost(0, 30) == pytest.approx((100 * 2.0 + PRIOR.cost(0, 30)) / 101, rel=1e-3)
    before = fitted(m)
    for bad in ((math.nan, 10, 10), (-1.0, 10, 10), (1.0, -5, 10), (math.inf, 1, 1)):
        m.observe(*bad)
    assert fitted(m) == before and m.visits == 100


def test_the_update_is_cheap() -> None:
    """O(1) per visit, no numpy: well under a millisecond even on a loaded CI machine (about 1.5 µs measured)."""
    m = MeasuredPrices(PRIOR, 200, 10)
    data = itertools.cycle(visits(1000, noise=0.05))
    n = 20_000
    t0 = time.perf_counter()
    for _ in range(n):
        m.observe(*next(data))
    assert (time.perf_counter() - t0) / n < 100e-6


# -- settings and pricing -----------------------------------------------------------------------------------------------


def settings_of(
    unit: str = "seconds", names: tuple[str, str] = ("mp0", "mp1"), dialect: str = "openai", measured: dict[str, Any] | None = None
) -> Settings:
    stage = {"url": "http://127.0.0.1:9/v1", "dialect": dialect}
    prices = [{"request": 0.001, "output_token": 0.0001}, {"request": 0.002, "output_token": 0.001}]
    cascade = {"skip_by_prior": False, "prior_strength": None, "risk": {"alpha": 0.0, "beta": 0.0}, "default_lambda": 10.0,
               "cost_unit": unit, "measured_prices": measured or {}}  # fmt: skip
    return Settings.model_validate({
        "tenancy": {"auth": "open"},
        "cascade": cascade,
        "stages": [{**stage, "name": n, "model": n, "prices": {unit: prices[i]}} for i, n in enumerate(names)],
    })  # fmt: skip


def test_measured_prices_apply_to_the_unit_seconds_when_enabled() -> None:
    predictor = ScriptedPredictor({}, [0.5, 0.9])
    on = Pricing.of(settings_of(measured={"half_life_visits": 50, "prior_strength": 3}), predictor)
    assert all(isinstance(p, MeasuredPrices) for p in on.prices)
    assert [(m.decay, m.strength) for m in on.measured if m] == [(0.5 ** (1 / 50), 3.0)] * 2
    assert on.costs([0, 1], 10, 64) == pytest.approx([0.001 + 0.0064, 0.002 + 0.064])  # the configured prices to start
    assert settings_of().cascade.measured_prices.enabled  # on by default (for seconds)
    for off in (settings_of(measured={"enabled": False}), settings_of(unit="compute")):
        pricing = Pricing.of(off, predictor)
        assert pricing.measured == [None, None] and all(isinstance(p, TokenPrices) for p in pricing.prices)
        pricing.observe(0, 5.0, 10, 10)  # configured prices ignore visits
        assert pricing.prices[0].request == 0.001


def test_a_visit_without_tokens_is_not_a_measurement() -> None:
    pricing = Pricing.of(settings_of(), ScriptedPredictor({}, [0.5, 0.9]))
    pricing.observe(0, 3.0, 0, 0)  # the stage reported no usage
    assert pricing.measured[0] is not None and pricing.measured[0].visits == 0
    pricing.observe(0, 3.0, 10, 4)
    assert pricing.measured[0].visits == 1 and pricing.prices[0].request > 0.001


@pytest.mark.parametrize("field", ["half_life_visits", "prior_strength"])
def test_non_positive_settings_are_refused(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        settings_of(measured={field: 0})


# -- the engine feeds it --------------------------------------------------------------------------------------------------

PROMPT = [{"role": "user", "content": "What is 2 + 2?"}]
PROMPT_STATS = PromptStats.from_texts([PROMPT[0]["content"]])
S0 = Script("The answer is 5.", prompt_tokens=10)
S1 = Script("The answer is 4, because two and two make four.", prompt_tokens=11)


def engine_of(settings: Settings, p_hat: dict[int, float], *scripts: Script, **predictor: Any) -> tuple[CascadeEngine, list[FakeStage]]:
    stages = fake_stages(settings.stages, *(scripts or (S0, S1)))
    return CascadeEngine(settings, stages, ScriptedPredictor(p_hat, [0.5, 0.9], **predictor)), stages


def request(stream: bool = False, **body: Any) -> CascadeRequest:
    return CascadeRequest({"messages": PROMPT, "max_tokens": 64, **body}, PROMPT_STATS, 10.0, 1, stream=stream)


def rule_cost(engine: CascadeEngine, stage: int) -> float:
    """The cost the stopping rule gives ``stage`` for the test's prompt now."""
    return engine.route(PROMPT_STATS, 10.0, [0, 1], 64).policy.costs[stage]


@pytest.mark.anyio
@pytest.mark.parametrize("enabled", [True, False])
async def test_the_rules_price_of_a_slow_stage_moves_after_its_visits_only_when_enabled(enabled: bool) -> None:
    """Stage 0 is configured at 1 ms + 0.1 ms per generated token but takes 50 ms a visit: after four visits the rule
    prices it near what it took (a prior worth one visit: 4/5 of the way), and the tenants' charge follows."""
    names = ("slow0", "slow1") if enabled else ("fixed0", "fixed1")
    engine, stages = engine_of(settings_of(names=names, measured={"enabled": enabled, "prior_strength": 1}), {0: 0.99})
    stages[0].delay_s = 0.05
    configured = rule_cost(engine, 0)
    assert configured == pytest.approx(0.001 + 0.0001 * 64)
    took = []
    for _ in range(4):
        result = await engine.run(request(), CHAT_DIALECT)
        assert [v.name for v in result.visits] == [names[0]]  # p̂ 0.99 stops at stage 0
        took.append(result.visits[0].seconds)
    usage = result.visits[0].usage
    assert usage is not None
    at_visits = engine.pricing.actual(0, usage.prompt_tokens, usage.completion_tokens)  # the visits' own shape
    if enabled:
        assert at_visits == pytest.approx((sum(took) + 0.001 + 0.0001 * usage.completion_tokens) / 5, rel=0.02)
        assert rule_cost(engine, 0) > 4 * configured and rule_cost(engine, 1) == pytest.approx(0.002 + 0.064)  # stage 1 not visited
        got = REGISTRY.get_sample_value("adaptive_sd_measured_seconds_per_request", {"stage": names[0]})
        assert got == engine.pricing.prices[0].request > 0.001
        assert REGISTRY.get_sample_value("adaptive_sd_measured_price_visits_total", {"stage": names[0]}) == 4.0
    else:
        assert rule_cost(engine, 0) == configured and at_visits == pytest.approx(0.001 + 0.0001 * usage.completion_tokens)
        assert REGISTRY.get_sample_value("adaptive_sd_measured_seconds_per_request", {"stage": names[0]}) is None


@pytest.mark.anyio
async def test_what_the_engine_measures_a_verified_draft_an_aborted_stage_and_not_a_failure_or_a_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Completed visits count with their usage as the stage reported it (a verified draft's prompt tokens include the
    draft); an aborted stage with the tokens it wrote before the abort; a streamed answer once its stream has ended
    (its whole time); a failed visit and a stream the client left early not."""
    seen: list[tuple[int, float, int, int]] = []

    def spy(engine: CascadeEngine) -> None:
        observe = engine.pricing.observe

        def spied(stage: int, seconds: float, prompt_tokens: int, output_tokens: int) -> None:
            seen.append((stage, seconds, prompt_tokens, output_tokens))
            observe(stage, seconds, prompt_tokens, output_tokens)

        monkeypatch.setattr(engine.pricing, "observe", spied)

    # escalation with a verified draft (vLLM dialect, greedy)
    engine, _ = engine_of(settings_of(names=("v0", "v1"), dialect="vllm"), {0: 0.1, 1: 0.9})
    spy(engine)
    result = await engine.run(request(temperature=0), CHAT_DIALECT)
    assert result.visits[1].draft_mode == "verify"
    assert [(s, p, c) for s, _, p, c in seen] == [
        (v.stage, v.usage.prompt_tokens, v.usage.completion_tokens) for v in result.visits if v.usage
    ]
    assert seen[1][2] > S1.prompt_tokens  # the scoring call read the draft
    assert [t for _, t, _, _ in seen] == [v.seconds for v in result.visits]
    assert [m.visits for m in engine.pricing.measured if m] == [1, 1]

    # a failed stage 0, then a streamed stage 1: the failure is no measurement, the stream is once it has ended
    seen.clear()
    engine, stages = engine_of(settings_of(names=("f0", "f1")), {0: 0.1, 1: 0.9})
    spy(engine)
    stages[0].fail = StageUnavailable
    result = await engine.run(request(stream=True), CHAT_DIALECT)
    assert [v.error is not None for v in result.visits] == [True, False] and result.visits[1].usage is None
    assert result.events is not None and seen == []  # nothing is known of the stream before it has gone out
    opened = result.visits[1].seconds
    _ = [p async for p in result.events]
    streamed = result.visits[1]
    assert streamed.usage is not None and streamed.usage.completion_tokens > 0 and streamed.seconds > opened
    assert streamed.choice is None  # nothing reads its text (no log, no shadow check, no draft): only its usage was read
    assert seen == [(1, streamed.seconds, streamed.usage.prompt_tokens, streamed.usage.completion_tokens)]
    assert [m.visits for m in engine.pricing.measured if m] == [0, 1]
    left = await engine.run(request(stream=True), CHAT_DIALECT)
    assert left.events is not None
    events = aiter(left.events)
    await anext(events)
    await events.aclose()  # type: ignore[attr-defined]
    assert len(seen) == 1 and left.visits[1].usage is None  # a stream the client left is no measurement
    slow = await engine.run(request(stream=True), CHAT_DIALECT)
    assert slow.events is not None
    async for _ in slow.events:  # read to its end, at a client's pace slower than the stage's
        await asyncio.sleep(0.02)
    assert slow.visits[1].usage is not None and len(seen) == 1  # its usage is known, its time is the client's

    # early exit: stage 0 aborted after 4 of its 30 tokens
    seen.clear()
    long = Script(" ".join(f"w{i}" for i in range(30)), prompt_tokens=10)
    engine, _ = engine_of(settings_of(names=("e0", "e1")), {0: 0.9, 1: 0.9}, long, S1, lengths=(OutputLengths(tuple([30.0] * 20)),) * 2,
                          checkpoints=(4, 8), prefix_strengths=(20.0, 20.0), prefix_p={0: 0.0})  # fmt: skip
    spy(engine)
    result = await engine.run(request(), CHAT_DIALECT)
    assert result.visits[0].aborted_at == 4
    assert [(s, p, c) for s, _, p, c in seen][0] == (0, PROMPT_STATS.n_tokens, 4)
