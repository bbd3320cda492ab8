"""Per-token prices: the expected cost the stopping rule sees, the cost a tenant is charged, and the settings' checks."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from common.settings import Settings, TokenPrices
from predictor.serving.lengths import OutputLengths
from router.pricing import FALLBACK_OUTPUT_TOKENS, Pricing

PRICES = [TokenPrices(request=0.5, prompt_token=0.01, output_token=0.1), TokenPrices(prompt_token=0.02, output_token=0.3)]


def test_expected_cost_prices_the_prompt_and_the_learned_length_cut_at_max_tokens() -> None:
    lengths = OutputLengths(tuple(float(v) for v in [20] * 10 + [60] * 10))
    pricing = Pricing(PRICES, [lengths, None], [None, None])
    assert pricing.output_tokens(0, None) == pytest.approx(40)
    assert pricing.expected(0, 100, None) == pytest.approx(0.5 + 1.0 + 4.0)
    assert pricing.expected(0, 100, 30) == pytest.approx(0.5 + 1.0 + 0.1 * 25)  # min(20, 30) and min(60, 30)
    # no learned length: the request's max_tokens, else a fallback
    assert pricing.output_tokens(1, 64) == 64
    assert pricing.output_tokens(1, None) == FALLBACK_OUTPUT_TOKENS


def test_a_configured_length_wins_over_the_learned_one() -> None:
    lengths = OutputLengths(tuple([50.0] * 20))
    pricing = Pricing(PRICES, [lengths, lengths], [12.0, None])
    assert pricing.output_tokens(0, None) == 12.0 and pricing.output_tokens(0, 8) == 8.0
    assert pricing.output_tokens(1, None) == 50.0


def test_to_finish_prices_what_an_unfinished_answer_still_has_to_write() -> None:
    lengths = OutputLengths(tuple(float(v) for v in [10] * 10 + [100] * 10))
    pricing = Pricing(PRICES, [lengths, None], [None, 40.0])
    assert pricing.to_finish(0, 16, None) == pytest.approx(0.1 * (100 - 16))
    assert pricing.to_finish(1, 16, None) == pytest.approx(0.3 * (40 - 16))
    assert pricing.to_finish(1, 16, 20) == pytest.approx(0.3 * 4)


def test_actual_cost_is_what_the_answer_took() -> None:
    pricing = Pricing(PRICES, [None, None], [None, None])
    assert pricing.actual(1, 10, 5) == pytest.approx(0.2 + 1.5)


def _settings(**cascade: Any) -> dict[str, Any]:
    stage = {"name": "s0", "model": "m", "url": "http://127.0.0.1:9/v1"}
    return {"cascade": cascade, "stages": [dict(stage), {**stage, "name": "s1"}]}


def test_settings_need_prices_in_the_chosen_unit() -> None:
    with pytest.raises(ValueError, match=r"have no prices.cost: price every stage"):
        Settings(**_settings())
    priced = _settings(cost_unit="compute")
    for s in priced["stages"]:
        s["prices"] = {"compute": {"prompt_token": 1.0, "output_token": 1.0}}
    settings = Settings(**priced)
    assert settings.stages[0].price("compute").cost(2, 3) == 5.0
    missing = copy.deepcopy(priced)
    del missing["stages"][1]["prices"]
    with pytest.raises(ValueError, match=r"stages \['s1'\] have no prices.compute"):
        Settings(**missing)
    per_request = _settings()  # the default cost_unit, cost
    for s in per_request["stages"]:
        s["prices"] = {"cost": {"request": 2.0}}
    assert Settings(**per_request).stages[1].price("cost") == TokenPrices(request=2.0)
