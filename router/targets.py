"""A tenant's quality target as a λ: looked up in the predictor's calibration table, once per distinct target.

An operator who sets a tenant's ``target`` (keep a share of the top stage's accuracy, stay within some points of
it, or send a share of the traffic to the top stage) gets the λ the calibration table gives for it
(``predictor.serving.calibration``; written by ``python -m training calibrate`` next to the model). Without a
table, or for a target no λ of it meets, the tenant gets the λ it would have had otherwise, and the router says so
once in its log: a quality target that cannot be honoured is not silently treated as one that is.
"""

from __future__ import annotations

import logging

from common.settings import QualityTarget
from predictor.serving.calibration import LambdaTable, Target

log = logging.getLogger("adaptive_sd.targets")


class TargetLambdas:
    """``unit``: the ladder's ``cascade.cost_unit``; a table calibrated in another one (the config's unit changed
    since ``python -m training calibrate`` ran) gives no λ (``LambdaTable.priced_in``)."""

    def __init__(self, table: LambdaTable | None, unit: str | None = None) -> None:
        self.table = table
        self.unit = unit
        self._cache: dict[Target, float | None] = {}

    def use(self, table: LambdaTable | None) -> None:
        """A new model's table (``router.model_reload``): targets are looked up afresh in it."""
        self.table = table
        self._cache = {}

    def find(self, target: QualityTarget) -> float | None:
        """The table's λ for ``target``; None (said once in the log) without a table or where no λ of it meets it."""
        t = Target.of(target)
        if t not in self._cache:
            found = self.table.lambda_for(t, self.unit) if self.table is not None else None
            if found is None:
                if self.table is None:
                    why = "the predictor has no calibration table"
                elif not self.table.priced_in(self.unit):
                    why = (
                        f"its calibration table's λ are prices in {self.table.unit}, the ladder's rule prices stages in "
                        f"{self.unit} (cascade.cost_unit): run `python -m training calibrate` again"
                    )
                elif self.table.too_few_tours(t):
                    why = f"its table holds {self.table.tasks or 0} tours, the target needs {t.tours_needed()} to be resolved"
                elif t.confidence is not None and not self.table.has_counts:
                    why = "its calibration table predates confidence bounds: run `python -m training calibrate` again"
                else:
                    why = "no λ of the calibration table meets it"
                log.warning("target '%s' cannot be honoured (%s): the configured λ is used", t.describe(), why)
            self._cache[t] = found
        return self._cache[t]

    def in_force(self, target: QualityTarget | None, otherwise: float) -> tuple[float, str]:
        """The λ for ``target`` and where it comes from: ``target`` (the table's), or ``default_lambda`` (``otherwise``:
        no target, no table, or no λ of it meets the target)."""
        found = self.find(target) if target is not None else None
        return (otherwise, "default_lambda") if found is None else (found, "target")

    def lam(self, target: QualityTarget, otherwise: float) -> float:
        return self.in_force(target, otherwise)[0]

    def describe(self, target: QualityTarget) -> str:
        return Target.of(target).describe()
