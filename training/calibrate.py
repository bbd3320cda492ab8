"""``python -m training calibrate``: the λ that meets a target the operator can state, found on the validation split.

λ is "cost units I would pay to avoid one unacceptable answer", in the unit the rule prices stages in
(``cascade.cost_unit``): hard to choose by hand, and it means something else in every unit. Two targets are
easier to state, and this maps each to λ by replaying the router's own rule (``training.replay``)
over the validation split's answers, on a fine λ grid:

* a quality target: keep ``X`` of the top stage's accuracy (``--keep 0.98``), or stay within ``P`` points of it
  (``--within-points 2``): the smallest λ whose accuracy reaches it;
* a traffic target: a share of requests that reach the top stage (``--top-share 0.5``, RouteLLM's calibration):
  the smallest λ whose share reaches it.

The whole table (λ, accuracy, share of the top stage's accuracy, top-stage share, cost in each unit the ladder prices every stage in) is
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

from common.settings import Settings, TokenPrices
from predictor.serving.calibration import CALIBRATION_FILE, MIN_TOURS, TOUR_LABELS, LambdaTable, Target
from predictor.serving.labels import same_answer
from training import replay, reuse
from training.replay import BatchPredictor, Beliefs, Table

__all__ = [
    "CALIBRATION_FILE",
    "Target",
    "choose",
    "grid",
    "held_tours",
    "lambda_in_force",
    "matched_cost",
    "run",
    "table",
    "tour_rows",
    "tour_table",
]

GRID_STEPS = 121


def grid(t: Table, b: Beliefs, settings: Settings) -> dict[str, Any]:
    """The router's rule (``settings``) replayed on ``t`` with the beliefs ``b`` over a fine λ grid: per λ, the accuracy
    (``t.y``: whatever its labels are), its share of the top stage's, its wins and losses against the top stage (tasks
    only one of the two answered correctly: what a target's ``confidence`` bounds it with), the top-stage share and
    the cost in each unit it has (``replay.table_costs``)."""
    from training.evaluate import lambdas

    costs = replay.table_costs(t, settings)
    opt = replay.Options.of(settings)
    sweep = lambdas(b, t)
    top = t.n_stages - 1
    top_right = t.y[:, top].astype(bool)
    top_quality = float(top_right.mean())
    rows = []
    for lam in np.geomspace(sweep[0], sweep[-1], GRID_STEPS):
        o = replay.cascade(t, b, costs, float(lam), opt)
        right = o.correct.astype(bool)
        rows.append({"lambda": float(lam), "quality": float(right.mean()),
                     "quality_vs_top": float(right.mean()) / top_quality if top_quality else None,
                     "wins": int((right & ~top_right).sum()), "losses": int((~right & top_right).sum()),
                     "top_share": float((o.final == top).mean()),
                     **{f"cost_{u}": float(v.mean()) for u, v in o.spent.items()}})  # fmt: skip
    return {"tasks": len(t.y), "rule_unit": settings.cascade.cost_unit, "top_quality": top_quality,
            "top_cost": {u: float(costs[u].full[:, top].mean()) for u in costs}, "grid": rows}  # fmt: skip


def _rule(settings: Settings) -> list[TokenPrices]:
    return [s.price(settings.cascade.cost_unit) for s in settings.stages]


def _beliefs(t: Table, model_dir: Path, settings: Settings) -> Beliefs:
    from predictor.serving.runtime import OnnxPredictor

    return replay.beliefs(t, OnnxPredictor.load(model_dir, settings.cascade.risk.evidence), _rule(settings))


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
    verification, the others estimated on the texts (``reuse.agreement``); a short answer by whether it is the top's
    text (``predictor.serving.labels``). A tour has every stage's answer to a
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
            else:
                if i < top - 1 or s.get("agreement") is None:
                    s["agreement"] = reuse.agreement(own, s.get("text") or "")
                s["same"] = same_answer(s.get("text") or "", own)  # the top's answer on a tour is its whole own answer
            labelled.append(s)
        out.append({**row, "stages": labelled})
    return out


TOURS = {"split": "tours outside the train split", "labels": TOUR_LABELS}  # what a tour table holds


def tours_needed(settings: Settings) -> int:
    """How many tours outside the train split a λ table needs to resolve ``cascade.default_target``
    (``Target.tours_needed``; ``MIN_TOURS`` without a target)."""
    target = settings.cascade.default_target
    return Target.of(target).tours_needed() if target is not None else MIN_TOURS


def held_tours(rows: Iterable[dict[str, Any]], settings: Settings, min_tours: int | None = None) -> tuple[Table | None, str]:
    """The replay table of the logged tours outside the train split (``tour_rows``: accuracy is agreement with the top
    stage; no model fitted them), and how many there are; None with fewer than ``min_tours`` (``tours_needed``)."""
    from training import train

    min_tours = tours_needed(settings) if min_tours is None else min_tours
    tours = tour_rows(rows, len(settings.stages))
    held = sum(r.get("split") != "train" for r in tours)
    if held < min_tours:
        return None, f"{held} tours outside the train split, {min_tours} needed"
    with tempfile.TemporaryDirectory(prefix="adaptive-sd-tours-") as tmp:
        path = Path(tmp) / "tours.jsonl"
        path.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in tours))
        full = replay.table(path, train.CHECKPOINTS, {})  # all tours: the draft-reuse rates come from the train split's
    return full.rows(full.split != "train"), f"{held} tours outside the train split"


def tour_table(t: Table, model: BatchPredictor, settings: Settings) -> dict[str, Any]:
    """A new ladder's λ table: the grid (``grid``) replayed on its held tours (``held_tours``) with ``model``."""
    return {**TOURS, **grid(t, replay.beliefs(t, model, _rule(settings)), settings)}


def lambda_in_force(table: LambdaTable | None, settings: Settings, trained: bool = True) -> tuple[float, bool]:
    """The λ a router on ``settings`` serves a model with for requests that name none: ``cascade.default_target``
    looked up in the model's ``table``, else ``cascade.default_lambda`` (scaled by ``untrained_lambda_scale`` while
    the baseline serves: ``trained`` False), as ``router.targets`` and ``router.cascade`` do; and whether it is the
    target's (until it is, a new ladder tours at the untrained rate)."""
    c = settings.cascade
    target = c.default_target
    found = table.lambda_for(Target.of(target), c.cost_unit) if table and target else None
    if found is not None:
        return found, True
    return (c.default_lambda if trained else c.default_lambda * c.untrained_lambda_scale), False


def matched_cost(t: Table, served: BatchPredictor, served_lam: float, candidate: BatchPredictor, settings: Settings) -> dict[str, Any]:
    """The promotion's second test, on the held tours ``t`` (every stage's answer, agreement with the top): each
    model's cheapest cost along its own λ grid at the quality that matters: the one ``cascade.default_target`` asks
    for, or without a target the quality the model in service reaches at its λ in force (``served_lam``). Both
    models' λ are thus chosen on the same tours (neither is favoured), at an operating point the router would use.
    A cost None: no λ of that model's grid reaches the quality. Cost in the rule's unit."""
    unit = settings.cascade.cost_unit
    costs = replay.table_costs(t, settings)
    o = replay.cascade(t, replay.beliefs(t, served, _rule(settings)), costs, served_lam, replay.Options.of(settings))
    quality, cost = float(o.correct.mean()), float(o.spent[unit].mean())
    target = settings.cascade.default_target
    asked = Target.of(target).quality_needed(float(t.y[:, -1].mean())) if target else None
    needed = quality if asked is None else asked

    def cheapest(model: BatchPredictor) -> float | None:
        rows = grid(t, replay.beliefs(t, model, _rule(settings)), settings)["grid"]
        matched = [r[f"cost_{unit}"] for r in rows if r["quality"] >= needed - 1e-12]
        return min(matched) if matched else None

    return {"tours": len(t.y), "unit": unit, "served": {"lambda": served_lam, "quality": quality, "cost": cost},
            "quality_matched": needed, "served_cost": cheapest(served), "candidate_cost": cheapest(candidate)}  # fmt: skip


def cheaper(replayed: dict[str, Any], margin: float) -> bool:
    """``matched_cost``'s verdict: the candidate reaches the quality, at no more than the served model's cost
    (``margin``: a share it may exceed it by), or the served model never reaches it."""
    mine, theirs = replayed["candidate_cost"], replayed["served_cost"]
    return mine is not None and (theirs is None or mine <= theirs * (1 + margin) + 1e-12)


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
