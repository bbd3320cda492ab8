"""What each stage's answer to one request costs, in the cost unit the stopping rule uses.

A stage's price (``common.settings.TokenPrices``) has a part per request, per prompt token and per generated
token, in the unit ``cascade.cost_unit`` names (compute, seconds, dollars: the operator's choice; the default
unit ``cost`` is a plain per-request price, ``prices: {cost: {request: 2.2}}``).
Before a stage runs its answer's length is unknown: the rule
prices the expected one (the stage's configured ``output_tokens``, else the predictor's learned lengths for
that stage, else the request's ``max_tokens``), always cut at ``max_tokens``. While a stage streams (early
exit), what is still to come is priced from the same lengths, given that the answer has not ended yet.
After the fact the tenant is charged what the answer really took (``actual``).

When the unit is ``seconds`` and ``cascade.measured_prices.enabled`` (the default), each stage's prices are its
``router.measured_prices.MeasuredPrices``: fitted from the stage's own completed visits (``observe``, which the engine
calls as it records them), starting from the configured ``prices.seconds``. The rule, the early-exit price of
finishing and the tenants' charge all read the current estimate; other units keep their configured prices.

The offline replay builds a ``Pricing`` from the same prices and lengths, so the rule it replays is the one
the router runs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

from common.settings import Settings
from predictor.serving.interface import Predictor
from predictor.serving.lengths import OutputLengths
from router.measured_prices import MeasuredPrices
from router.metrics import PriceRow

FALLBACK_OUTPUT_TOKENS = 256.0  # neither a configured nor a learned length, and no max_tokens: a mid-size answer


class Price(Protocol):
    """A stage's prices in the rule's unit: configured (``common.settings.TokenPrices``) or measured (``MeasuredPrices``)."""

    @property
    def request(self) -> float: ...

    @property
    def prompt_token(self) -> float: ...

    @property
    def output_token(self) -> float: ...

    def cost(self, prompt_tokens: float, output_tokens: float) -> float: ...


class Pricing:
    """Per-stage prices and expected answer lengths for one ladder."""

    def __init__(self, prices: Sequence[Price], lengths: Sequence[OutputLengths | None], fixed: Sequence[float | None]) -> None:
        if not (len(prices) == len(lengths) == len(fixed)):
            raise ValueError("prices, lengths and fixed lengths need one entry per stage")
        self.prices = list(prices)
        self.lengths = list(lengths)
        self.fixed = list(fixed)
        self.measured = [p if isinstance(p, MeasuredPrices) else None for p in self.prices]  # None: configured, fixed

    @classmethod
    def of(cls, settings: Settings, predictor: Predictor) -> Pricing:
        unit = settings.cascade.cost_unit
        n = len(settings.stages)
        learned: list[OutputLengths | None] = list(predictor.lengths[:n]) + [None] * max(0, n - len(predictor.lengths))
        prices: list[Price] = [s.price(unit) for s in settings.stages]
        if settings.cascade.prices_measured:
            m = settings.cascade.measured_prices
            prices = [MeasuredPrices(s.price(unit), m.half_life_visits, m.prior_strength, s.name) for s in settings.stages]
        return cls(prices, learned, [s.output_tokens for s in settings.stages])

    def observe(self, stage: int, seconds: float, prompt_tokens: int, output_tokens: int) -> None:
        """A completed visit of ``stage``: measured prices learn from it (configured ones ignore it). A visit without
        tokens (a stage that reports no usage) says nothing about the per-token parts and is not a measurement."""
        measured = self.measured[stage]
        if measured is not None and (prompt_tokens or output_tokens):
            measured.observe(seconds, prompt_tokens, output_tokens)

    def price_rows(self) -> Iterator[PriceRow]:
        """The measured stages' current prices, for /metrics."""
        for m in self.measured:
            if m is not None:
                yield PriceRow(m.name, m.request, m.prompt_token, m.output_token, m.visits)

    def output_tokens(self, stage: int, max_tokens: int | None) -> float:
        """The answer length stage ``stage`` is expected to write for a request allowed ``max_tokens``."""
        cap = float(max_tokens) if max_tokens else None
        fixed, lengths = self.fixed[stage], self.lengths[stage]
        if fixed is not None:
            return min(fixed, cap) if cap is not None else fixed
        if lengths is not None:
            return lengths.mean(cap)
        return cap if cap is not None else FALLBACK_OUTPUT_TOKENS

    def expected(self, stage: int, prompt_tokens: float, max_tokens: int | None) -> float:
        """The cost of stage ``stage``'s answer before it runs."""
        return self.prices[stage].cost(prompt_tokens, self.output_tokens(stage, max_tokens))

    def costs(self, stages: Sequence[int], prompt_tokens: float, max_tokens: int | None) -> list[float]:
        return [self.expected(s, prompt_tokens, max_tokens) for s in stages]

    def to_finish(self, stage: int, generated: int, max_tokens: int | None) -> float:
        """The price of the tokens stage ``stage`` is expected to write after ``generated`` of an unfinished answer."""
        cap = float(max_tokens) if max_tokens else None
        fixed, lengths = self.fixed[stage], self.lengths[stage]
        if lengths is not None and fixed is None:
            left = lengths.remaining(generated, cap)
        else:
            total = self.output_tokens(stage, max_tokens)
            left = max(total - generated, min(float(generated), (cap or total) - generated), 0.0)
        return self.prices[stage].output_token * left

    def actual(self, stage: int, prompt_tokens: float, output_tokens: float) -> float:
        """What the answer took, at this stage's prices."""
        return self.prices[stage].cost(prompt_tokens, output_tokens)
