"""A new ladder replayed (``training.unseen_ladder``) on the committed collection of the real CPU ladder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from predictor.serving.loader import baseline_predictor
from training import replay
from training import unseen_ladder as ul

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data" / "cpu" / "collect.jsonl"
CONFIG = ROOT / "configs" / "cpu-learn.yaml"


@pytest.fixture(scope="module")
def setup() -> ul.Setup:
    return ul.setup(DATA, CONFIG)


def test_the_baseline_in_batches_is_the_router_s_baseline(setup: ul.Setup) -> None:
    b = baseline_predictor(setup.settings)
    batch = replay.BaselineBatch(b)
    x = setup.full.x[:40].reshape(-1, setup.full.x.shape[-1])
    assert np.allclose(batch.predict_batch(x), [b.predict(row) for row in x])
    prior_x = setup.full.prior_x[:5].reshape(-1, setup.full.prior_x.shape[-1])
    assert np.allclose(batch.prior_batch(prior_x).reshape(5, -1), [b.priors(None, 3)] * 5)  # type: ignore[arg-type]


def test_a_short_replay_learns_only_from_what_production_logs(setup: ul.Setup, tmp_path: Path) -> None:
    res = ul.run(DATA, CONFIG, learn_every=60, out_json=tmp_path / "u.json", out_png=tmp_path / "u.png", progress=False, limit=120)
    assert (tmp_path / "u.json").is_file() and (tmp_path / "u.png").is_file()
    traffic = res["traffic"]
    assert traffic["requests"] == 120 and len(res["rounds"]) == 2
    by = traffic["labels_by_source"]
    assert sum(by.values()) == traffic["labels"] and by["reference"] <= 120 and by["shadow"] == traffic["shadow_checks"]
    assert res["curve"][0]["version"] == "baseline" and res["curve"][0]["seen"] == 0
    for r in res["rounds"]:  # a round decides on lower stages' labels only, and needs enough of them
        served = [v for k, v in r.get("log_loss", {}).items() if k != "candidate"]
        assert r["promoted"] == (bool(served) and r["log_loss"]["candidate"] < served[0])
    shipped = res["shipped"]
    assert shipped["tasks"] == res["curve"][0]["tasks"] == int((setup.full.split == "test").sum())
    assert 0 < shipped["compute_vs_top"] < 1.0


def test_other_traffic_orders_end_where_their_own_replay_does(setup: ul.Setup) -> None:
    kw = {"data_path": DATA, "config": CONFIG, "learn_every": 60, "limit": 120}
    first = ul.run(**kw, seed=0, out_json=None, out_png=None, progress=False)
    res = ul.across_orders(first, [1], progress=False, **kw)
    again = ul.run(**kw, seed=1, out_json=None, out_png=None, progress=False)
    assert res["orders"] == 2 and [e["seed"] for e in res["ends"]] == [0, 1]
    assert res["ends"][1]["compute_vs_shipped"] == round(again["curve"][-1]["compute_vs_shipped"], 4)
    both = sorted(e["points_below_top"] for e in res["ends"])
    assert res["median"]["points_below_top"] == pytest.approx(sum(both) / 2)
    assert res["within_points"] == sum(e["points_below_top"] <= ul.TARGET_POINTS for e in res["ends"])


def test_a_config_with_a_trained_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="kind: baseline"):
        ul.run(DATA, ROOT / "configs" / "cpu.yaml", out_json=None, out_png=None, progress=False, limit=1)
