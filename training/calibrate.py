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

A new ladder has no collection to replay, but it has its **tours** (``cascade.explore``): requests on which every
stage answered, in order. ``tour_table`` replays the rule on the logged tours outside the train split, accuracy
being agreement with the top stage (the only label there is without a checker), so that targets -- a tenant's,
and ``cascade.default_target`` for the router's default λ -- work on a new ladder too, stated in agreement:
``within_points: 1`` is "the returned answer agrees with the top stage's on 99 % of requests". ``training learn
--data none`` writes it with every candidate.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from common.settings import Settings
from predictor.serving.calibration import CALIBRATION_FILE, LambdaTable, Target
from training import replay, reuse
from training.replay import Beliefs, Table

__all__ = ["CALIBRATION_FILE", "Target", "choose", "grid", "run", "table", "tour_rows", "tour_table"]

GRID_STEPS = 121
MIN_TOURS = 30  # a new ladder's λ table needs at least this many tours outside the train split


def grid(t: Table, b: Beliefs, settings: Settings) -> dict[str, Any]:
    """The router's rule (``settings``) replayed on ``t`` with the beliefs ``b`` over a fine λ grid: per λ, the accuracy
    (``t.y``: whatever its labels are), its share of the top stage's, the top-stage share and the cost in both units."""
    from training.evaluate import lambdas

    prices = replay.prices_of(settings)
    costs = {u: replay.unit_costs(t, u, prices[u]) for u in replay.UNITS}
    opt = replay.Options.of(settings)
    sweep = lambdas(b, t)
    top = t.n_stages - 1
    top_quality = float(t.y[:, top].mean())
    rows = []
    for lam in np.geomspace(sweep[0], sweep[-1], GRID_STEPS):
        o = replay.cascade(t, b, costs, float(lam), opt)
        rows.append({"lambda": float(lam), "quality": float(o.correct.mean()),
                     "quality_vs_top": float(o.correct.mean()) / top_quality if top_quality else None,
                     "top_share": float((o.final == top).mean()),
                     **{f"cost_{u}": float(v.mean()) for u, v in o.spent.items()}})  # fmt: skip
    return {"tasks": len(t.y), "rule_unit": settings.cascade.cost_unit, "top_quality": top_quality,
            "top_cost": {u: float(costs[u].full[:, top].mean()) for u in costs}, "grid": rows}  # fmt: skip


def _beliefs(t: Table, model_dir: Path, settings: Settings) -> Beliefs:
    from predictor.serving.runtime import OnnxPredictor

    rule = [s.price(settings.cascade.cost_unit) for s in settings.stages]
    return replay.beliefs(t, OnnxPredictor.load(model_dir, settings.cascade.risk.evidence), rule)


def table(data_path: Path, model_dir: Path, config: Path | None = None) -> dict[str, Any]:
    """The λ grid replayed on the validation split with the config's rule and the model at ``model_dir``."""
    from common.settings import load_settings
    from training import train
    from training.tasks import registry

    settings = load_settings(config)
    full = replay.table(data_path, train.CHECKPOINTS, {t.id: t.max_tokens for t in registry.build("mix")})
    t = full.part("val")
    return {"split": "val", "labels": "checker", **grid(t, _beliefs(t, model_dir, settings), settings)}


# -- a new ladder: its tours ------------------------------------------------------------------------------------------


def tour_rows(rows: Iterable[dict[str, Any]], n_stages: int) -> list[dict[str, Any]]:
    """The logged rows of tours (``tour: true``, every stage's answer), each answer labelled by its agreement with
    the top stage's: the top's 1 (unless it broke the request's rules), the stage just below it by the top's own
    verification, the others estimated on the texts (``reuse.agreement``). A tour has every stage's answer to a
    request no prior chose, which is what a replay of other decisions needs."""
    top = n_stages - 1
    out = []
    for row in rows:
        stages = {s.get("stage"): s for s in row.get("stages") or ()}
        if not row.get("tour") or set(stages) != set(range(n_stages)):
            continue
        own = stages[top].get("text") or ""
        labelled = []
        for i in range(n_stages):
            s = {**stages[i], "passed": None}
            if i == top:
                s["agreement"] = 1.0
            elif i < top - 1 or s.get("agreement") is None:
                s["agreement"] = reuse.agreement(own, s.get("text") or "")
            labelled.append(s)
        out.append({**row, "stages": labelled})
    return out


def tour_table(
    rows: Iterable[dict[str, Any]], model_dir: Path, settings: Settings, min_tours: int = MIN_TOURS
) -> tuple[dict[str, Any] | None, str]:
    """A new ladder's λ table: the grid (``grid``) replayed on its tours outside the train split (the model did not
    fit them), accuracy being agreement with the top stage; None, and why, with fewer than ``min_tours`` of them."""
    from training import train

    tours = tour_rows(rows, len(settings.stages))
    held = sum(r.get("split") != "train" for r in tours)
    if held < min_tours:
        return None, f"{held} tours outside the train split, {min_tours} needed for a λ table"
    with tempfile.TemporaryDirectory(prefix="adaptive-sd-tours-") as tmp:
        path = Path(tmp) / "tours.jsonl"
        path.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in tours))
        full = replay.table(path, train.CHECKPOINTS, {})  # all tours: the draft-reuse rates come from the train split's
    t = full.rows(full.split != "train")
    cal = {
        "split": "tours outside the train split",
        "labels": "agreement with the top stage",
        **grid(t, _beliefs(t, model_dir, settings), settings),
    }
    return cal, f"λ table from {len(t.y)} tours (agreement with the top stage)"


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
