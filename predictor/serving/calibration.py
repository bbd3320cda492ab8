"""λ from a target the operator can state: the calibration table ``python -m training calibrate`` writes.

The table (``calibration.json`` next to the model) is the router's own rule replayed over the validation split
on a fine λ grid: for each λ, the accuracy, its share of the top stage's and the share of requests that reach
the top stage. A target -- keep a share of the top stage's accuracy, stay within some points of it, or send a
share of the traffic to the top stage -- is met by the smallest λ of the grid that meets it. Offline
calibration and the router's per-tenant targets look λ up here, on the same numbers.

A quality target may ask for a ``confidence``. The smallest λ whose accuracy on the validation split just meets a
target is the one most likely to fall short on new prompts: among the λ that meet it, it is chosen for a sample's
luck. With ``confidence: 0.8`` the target must hold for a lower bound of the accuracy instead: the accuracy minus
z(0.8) standard errors of its paired difference with the top stage (each row's ``wins``, tasks only the cascade
answered correctly, and ``losses``, tasks only the top stage did; normal approximation, ``paired_sd``). Rows without those counts
(tables written before them) meet no target that asks for a confidence.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any

CALIBRATION_FILE = "calibration.json"
TOUR_LABELS = "agreement with the top stage"  # a new ladder's table (``training.calibrate.tour_table``): its ``labels``
MIN_TOURS = 30  # a tour table resolves no target from fewer tasks


def paired_sd(wins: int, losses: int, tasks: int) -> float:
    """The standard error of the mean paired difference (cascade minus top stage, each task -1, 0 or +1) over
    ``tasks`` tasks, ``wins`` of them +1 and ``losses`` -1, with half a win and half a loss more in one more task
    (as Agresti and Caffo adjust a paired interval): without it a table with no disagreement on its tasks would be
    certain of its accuracy, which a tour table of a new ladder, where the top stage never loses, often is."""
    if tasks <= 0:
        return math.inf
    up, down, n = wins + 0.5, losses + 0.5, tasks + 1
    mean = (up - down) / n
    return math.sqrt(max((up + down) / n - mean * mean, 0.0) / n)


@dataclass(frozen=True)
class Target:
    """One of three targets (exactly one set), and for a quality target the confidence it must be met with."""

    keep: float | None = None  # share of the top stage's accuracy
    within_points: float | None = None  # accuracy points below the top stage's
    top_share: float | None = None  # share of requests that reach the top stage
    confidence: float | None = None  # None: the point estimate meets it; 0.8: a lower bound at 80 % does

    @classmethod
    def of(cls, target: Any) -> Target:
        """The lookup form of a configured target (``common.settings.QualityTarget``: a tenant's or the default)."""
        return cls(target.keep, target.within_points, target.top_share, target.confidence)

    def describe(self) -> str:
        sure = f" with {self.confidence:.0%} confidence" if self.confidence is not None else ""
        if self.keep is not None:
            return f"keep {self.keep:.0%} of the top stage's accuracy{sure}"
        if self.within_points is not None:
            return f"within {self.within_points:g} points of the top stage's accuracy{sure}"
        return f"{self.top_share:.0%} of requests reach the top stage"

    def tours_needed(self) -> int:
        """How many tours a table labelled by agreement with the top stage (whose own agreement is 1) needs to resolve
        this target: ``MIN_TOURS``, and enough that one disagreement fits in its slack (100 for ``within_points:
        1``), so that it is not met by a sample too small to see one miss."""
        needed = self.quality_needed(1.0)
        slack = None if needed is None else 1.0 - needed
        return max(MIN_TOURS, math.ceil(1 / slack - 1e-9)) if slack else MIN_TOURS

    def quality_needed(self, top_quality: float) -> float | None:
        """The accuracy a quality target asks for where the top stage's is ``top_quality``; None for a traffic target."""
        if self.keep is not None:
            return self.keep * top_quality
        if self.within_points is not None:
            return top_quality - self.within_points / 100
        return None

    def met_by(self, row: dict[str, Any], top_quality: float, tasks: int | None = None) -> bool:
        """Whether a table row meets the target; with a ``confidence``, its accuracy's lower bound must (``tasks``:
        the table's, which the bound needs with the row's ``wins`` and ``losses``)."""
        needed = self.quality_needed(top_quality)
        if needed is None:
            return self.top_share is not None and bool(row["top_share"] >= self.top_share - 1e-12)
        quality = float(row["quality"])
        if self.confidence is not None:
            if tasks is None or row.get("wins") is None or row.get("losses") is None:
                return False
            quality -= NormalDist().inv_cdf(self.confidence) * paired_sd(int(row["wins"]), int(row["losses"]), tasks)
        return bool(quality >= needed - 1e-12)


@dataclass(frozen=True)
class LambdaTable:
    """The calibration table: ``grid`` rows ascending in λ, and the top stage's accuracy on the same ``tasks``."""

    top_quality: float
    grid: tuple[dict[str, Any], ...]
    tasks: int | None = None
    unit: str | None = None  # the unit the rule priced stages in (``rule_unit``), which λ is in; None: not recorded
    labels: str | None = None  # what its accuracy is: the checkers' verdicts, or ``TOUR_LABELS``

    @classmethod
    def of(cls, data: dict[str, Any]) -> LambdaTable:
        tasks = data.get("tasks")
        grid = tuple(sorted(data["grid"], key=lambda r: r["lambda"]))
        return cls(float(data["top_quality"]), grid, None if tasks is None else int(tasks), data.get("rule_unit"), data.get("labels"))

    def too_few_tours(self, target: Target) -> bool:
        """A tour table of fewer tasks than ``target`` needs (``Target.tours_needed``): it resolves no λ for it."""
        return self.labels == TOUR_LABELS and (self.tasks or 0) < target.tours_needed()

    @classmethod
    def load(cls, directory: Path) -> LambdaTable | None:
        """The table next to a model; None when the model has none."""
        path = Path(directory) / CALIBRATION_FILE
        if not path.is_file():
            return None
        return cls.of(json.loads(path.read_text()))

    def priced_in(self, unit: str | None) -> bool:
        """Whether the table's λ are prices in ``unit`` (the ladder's ``cascade.cost_unit``): a λ is a price in the
        rule's unit, so a table calibrated in another one (1911 GFLOP read as 1911 seconds) gives no λ. A table or a
        caller that does not say its unit is taken at its word."""
        return self.unit is None or unit is None or self.unit == unit

    @property
    def has_counts(self) -> bool:
        """Whether the table can bound its accuracy (``tasks`` and every row's ``wins`` and ``losses``)."""
        return self.tasks is not None and all(r.get("wins") is not None and r.get("losses") is not None for r in self.grid)

    def choose(self, target: Target) -> dict[str, Any] | None:
        """The row of the smallest λ that meets ``target``; None when no λ of the grid does, or the table has too few
        tours to tell (``too_few_tours``)."""
        if self.too_few_tours(target):
            return None
        return next((dict(r) for r in self.grid if target.met_by(r, self.top_quality, self.tasks)), None)

    def lambda_for(self, target: Target, unit: str | None = None) -> float | None:
        """The λ of ``choose``'s row, for a ladder whose rule prices stages in ``unit``; None where the table's λ are
        prices in another unit (``priced_in``) or no row meets ``target``."""
        row = self.choose(target) if self.priced_in(unit) else None
        return None if row is None else float(row["lambda"])
