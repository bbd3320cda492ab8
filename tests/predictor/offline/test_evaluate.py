"""Offline replay over the committed collection: the invariants every frontier must satisfy."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from predictor.offline import dataset, evaluate
from predictor.serving.runtime import OnnxPredictor

ROOT = Path(__file__).resolve().parents[3]
DATA = ROOT / "data" / "cpu" / "collect.jsonl"
MODEL = ROOT / "predictor" / "models" / "cpu"


def test_frontier_invariants(tmp_path: Path) -> None:
    res = evaluate.run(DATA, MODEL, tmp_path / "f.json", tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 10_000
    singles = res["singles"]
    assert res["oracle"]["quality"] >= max(s["quality"] for s in singles)
    assert res["oracle"]["cost"] <= singles[-1]["cost"] + 1e-9
    for p in res["frontiers"]["random"]:
        assert min(s["quality"] for s in singles) - 1e-9 <= p["quality"] <= max(s["quality"] for s in singles) + 1e-9
    for name, pts in res["frontiers"].items():
        costs = [p["cost"] for p in pts]
        quals = [p["quality"] for p in pts]
        assert costs == sorted(costs) and quals == sorted(quals), name
    sweep = res["lambda_sweep"]
    assert sweep[0]["escalation_rate"] <= sweep[-1]["escalation_rate"], "more λ, more escalation"


def test_replay_is_the_router_policy_at_the_extremes() -> None:
    t = evaluate.table(dataset.load(DATA)).part("test")
    predictor = OnnxPredictor.load(MODEL)
    costs = [float(t.sec[:, s].mean()) for s in range(t.y.shape[1])]
    final, cost, calls = evaluate.cascade(t, predictor, costs, lam=1e-6, skip=False, strength=8.0, risk=(1.0, 1.0))
    assert (final == 0).all() and (calls == 1).all() and np.allclose(cost, t.sec[:, 0])
    final_hi, cost_hi, calls_hi = evaluate.cascade(t, predictor, costs, lam=1e9, skip=False, strength=8.0, risk=(1.0, 1.0))
    # with quality priced this high a request stops below the top only where the predictor says the
    # next stage is not expected to do better; most requests escalate, and all cost at least as much
    assert calls_hi.mean() > 1.5 and (final_hi >= final).all() and (cost_hi >= cost - 1e-12).all()
