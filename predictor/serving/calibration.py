"""λ from a target the operator can state: the calibration table ``python -m training calibrate`` writes.

The table (``calibration.json`` next to the model) is the router's own rule replayed over the validation split
on a fine λ grid: for each λ, the accuracy, its share of the top stage's and the share of requests that reach
the top stage. A target -- keep a share of the top stage's accuracy, stay within some points of it, or send a
share of the traffic to the top stage -- is met by the smallest λ of the grid that meets it. Offline
calibration and the router's per-tenant targets look λ up here, on the same numbers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CALIBRATION_FILE = "calibration.json"


@dataclass(frozen=True)
class Target:
    """One of three targets (exactly one set)."""

    keep: float | None = None  # share of the top stage's accuracy
    within_points: float | None = None  # accuracy points below the top stage's
    top_share: float | None = None  # share of requests that reach the top stage

    @classmethod
    def of(cls, target: Any) -> Target:
        """The lookup form of a configured target (``common.settings.QualityTarget``: a tenant's or the default)."""
        return cls(target.keep, target.within_points, target.top_share)

    def describe(self) -> str:
        if self.keep is not None:
            return f"keep {self.keep:.0%} of the top stage's accuracy"
        if self.within_points is not None:
            return f"within {self.within_points:g} points of the top stage's accuracy"
        return f"{self.top_share:.0%} of requests reach the top stage"

    def quality_needed(self, top_quality: float) -> float | None:
        """The accuracy a quality target asks for where the top stage's is ``top_quality``; None for a traffic target."""
        if self.keep is not None:
            return self.keep * top_quality
        if self.within_points is not None:
            return top_quality - self.within_points / 100
        return None

    def met_by(self, row: dict[str, Any], top_quality: float) -> bool:
        needed = self.quality_needed(top_quality)
        if needed is not None:
            return bool(row["quality"] >= needed - 1e-12)
        return self.top_share is not None and bool(row["top_share"] >= self.top_share - 1e-12)


@dataclass(frozen=True)
class LambdaTable:
    """The calibration table: ``grid`` rows ascending in λ, and the top stage's accuracy on the same tasks."""

    top_quality: float
    grid: tuple[dict[str, Any], ...]

    @classmethod
    def of(cls, data: dict[str, Any]) -> LambdaTable:
        return cls(float(data["top_quality"]), tuple(sorted(data["grid"], key=lambda r: r["lambda"])))

    @classmethod
    def load(cls, directory: Path) -> LambdaTable | None:
        """The table next to a model; None when the model has none."""
        path = Path(directory) / CALIBRATION_FILE
        if not path.is_file():
            return None
        return cls.of(json.loads(path.read_text()))

    def choose(self, target: Target) -> dict[str, Any] | None:
        """The row of the smallest λ that meets ``target``; None when no λ of the grid does."""
        return next((dict(r) for r in self.grid if target.met_by(r, self.top_quality)), None)

    def lambda_for(self, target: Target) -> float | None:
        row = self.choose(target)
        return None if row is None else float(row["lambda"])
