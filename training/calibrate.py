"""``python -m training calibrate``: the λ that meets a target the operator can state, found on the validation split.

λ is "cost units I would pay to avoid one unacceptable answer", in the unit the rule prices stages in
(``cascade.cost_unit``): hard to choose by hand, and it means something else in every unit. Two targets are
easier to state, and this maps each to λ by replaying the router's own rule (``training.replay``)
over the validation split's answers, on a fine λ grid:

* a quality target: keep ``X`` of the top stage's accuracy (``--keep 0.98``), or stay within ``P`` points of it
  (``--within-points 2``): the smallest λ whose accuracy reaches it;
* a traffic target: a share of requests that reach the top stage (``--top-share 0.5``, RouteLLM's calibration):
  the smallest λ whose share reaches it.

The whole table (λ, accuracy, share of the top stage's accuracy, top-stage share, cost in both units) is
written to ``calibration.json`` next to the model, so the same targets can be looked up later (per tenant) on
exactly the numbers printed here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from predictor.serving.calibration import CALIBRATION_FILE, LambdaTable, Target
from training import replay

__all__ = ["CALIBRATION_FILE", "Target", "choose", "run", "table"]

GRID_STEPS = 121


def table(data_path: Path, model_dir: Path, config: Path | None = None) -> dict[str, Any]:
    """The λ grid replayed on the validation split with the config's rule and the model at ``model_dir``."""
    from common.settings import load_settings
    from predictor.serving.runtime import OnnxPredictor
    from training import train
    from training.evaluate import lambdas
    from training.tasks import registry

    settings = load_settings(config)
    full = replay.table(data_path, train.CHECKPOINTS, {t.id: t.max_tokens for t in registry.build("mix")})
    val = full.split == "val"
    t = full.rows(val)
    rule = [s.price(settings.cascade.cost_unit) for s in settings.stages]
    b = replay.beliefs(t, OnnxPredictor.load(model_dir, settings.cascade.risk.evidence), rule)
    prices = replay.prices_of(settings)
    costs = {u: replay.unit_costs(t, u, prices[u]) for u in replay.UNITS}
    c = settings.cascade
    opt = replay.Options.of(settings)
    sweep = lambdas(b, t)
    grid = np.geomspace(sweep[0], sweep[-1], GRID_STEPS)
    top = t.n_stages - 1
    top_quality = float(t.y[:, top].mean())
    rows = []
    for lam in grid:
        o = replay.cascade(t, b, costs, float(lam), opt)
        rows.append({"lambda": float(lam), "quality": float(o.correct.mean()),
                     "quality_vs_top": float(o.correct.mean()) / top_quality if top_quality else None,
                     "top_share": float((o.final == top).mean()),
                     **{f"cost_{u}": float(v.mean()) for u, v in o.spent.items()}})  # fmt: skip
    return {"split": "val", "tasks": len(t.y), "rule_unit": c.cost_unit, "top_quality": top_quality,
            "top_cost": {u: float(costs[u].full[:, top].mean()) for u in costs}, "grid": rows}  # fmt: skip


def choose(calibration: dict[str, Any], target: Target) -> dict[str, Any] | None:
    """The smallest λ of the table that meets ``target`` (None when no λ does)."""
    return LambdaTable.of(calibration).choose(target)


def run(
    data_path: Path, model_dir: Path, target: Target, config: Path | None = None, write: bool = True
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    cal = table(data_path, model_dir, config)
    if write:
        (model_dir / CALIBRATION_FILE).write_text(json.dumps(cal, indent=2) + "\n")
    return cal, choose(cal, target)
