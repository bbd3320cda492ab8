"""λ from a target: the replayed validation table, and the smallest λ that meets each kind of target."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.settings import QualityTarget
from predictor.serving.labels import label
from training import calibrate
from training.cli import main

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data" / "cpu" / "collect.jsonl"
MODEL = ROOT / "predictor" / "models" / "cpu"


def _table() -> dict[str, object]:
    grid = [
        {"lambda": 1.0, "quality": 0.10, "top_share": 0.0},
        {"lambda": 10.0, "quality": 0.50, "top_share": 0.3},
        {"lambda": 100.0, "quality": 0.59, "top_share": 0.6},
        {"lambda": 1000.0, "quality": 0.62, "top_share": 0.9},
    ]
    return {"top_quality": 0.60, "grid": grid}


def test_choose_takes_the_smallest_lambda_that_meets_the_target() -> None:
    cal = _table()
    assert calibrate.choose(cal, calibrate.Target(within_points=2))["lambda"] == 100.0  # type: ignore[index]
    assert calibrate.choose(cal, calibrate.Target(keep=0.8))["lambda"] == 10.0  # type: ignore[index]
    assert calibrate.choose(cal, calibrate.Target(top_share=0.6))["lambda"] == 100.0  # type: ignore[index]
    assert calibrate.choose(cal, calibrate.Target(keep=1.1)) is None


def test_the_replayed_table_rises_from_the_small_stage_to_the_top_one() -> None:
    cal = calibrate.table(DATA, MODEL)
    grid = cal["grid"]
    assert grid[0]["top_share"] < 0.1 < 0.5 < grid[-1]["top_share"]
    assert grid[-1]["quality"] >= cal["top_quality"] - 0.05
    lams = [r["lambda"] for r in grid]
    assert lams == sorted(lams)
    # wins and losses against the top stage account for the accuracy difference, task by task
    for r in grid:
        assert r["quality"] - cal["top_quality"] == pytest.approx((r["wins"] - r["losses"]) / cal["tasks"], abs=1e-9)
        assert r["losses"] <= cal["tasks"] * cal["top_quality"] + 1e-9
    # a confidence asks for more than the point estimate: a larger λ, never a smaller one
    point = calibrate.choose(cal, calibrate.Target(within_points=1))
    sure = calibrate.choose(cal, calibrate.Target(within_points=1, confidence=0.8))
    assert point is not None and sure is not None and sure["lambda"] >= point["lambda"]


def test_the_shipped_default_lambda_is_its_tables_for_the_default_target() -> None:
    """configs/cpu.yaml states its default as a target and repeats the λ as ``default_lambda`` (the fallback, and
    what the benchmarks replay): the two must not drift apart when the model is recalibrated."""
    from common.settings import load_settings
    from predictor.serving.calibration import LambdaTable

    settings = load_settings(ROOT / "configs" / "cpu.yaml")
    table = LambdaTable.load(MODEL)
    assert table is not None and settings.cascade.default_target is not None and table.has_counts
    lam = table.lambda_for(calibrate.Target.of(settings.cascade.default_target))
    assert lam == pytest.approx(settings.cascade.default_lambda, rel=1e-3)


def test_the_cli_needs_exactly_one_target(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["calibrate", "--keep", "0.9", "--top-share", "0.5", "--dry-run"]) == 2
    assert "exactly one of --keep, --within-points, --top-share" in capsys.readouterr().err
    assert main(["calibrate", "--within-points", "2", "--dry-run", "--data", str(DATA), "--model", str(MODEL)]) == 0
    assert "λ =" in capsys.readouterr().out
    assert main(["calibrate", "--top-share", "0.5", "--confidence", "0.8", "--dry-run"]) == 2
    assert "--confidence" in capsys.readouterr().err
    assert main(["calibrate", "--within-points", "1", "--confidence", "0.3", "--dry-run"]) == 2
    assert "--confidence: Input should be greater than or equal to 0.5" in capsys.readouterr().err
    assert main(["calibrate", "--within-points", "1", "--confidence", "0.8", "--dry-run", "--data", str(DATA), "--model", str(MODEL)]) == 0
    assert "with 80% confidence: λ =" in capsys.readouterr().out


def _stage(i: int, text: str, agreement: float | None = None, valid: bool | None = None) -> dict[str, object]:
    return {"stage": i, "text": text, "agreement": agreement, "passed": None, "valid": valid}


def test_tour_rows_label_every_answer_by_its_agreement_with_the_top() -> None:
    """A tour's lower answers are measured against the top's: the one just below by the top's own verification
    (logged), the others on the texts (what the stage above them verified is not the top); rows that did not tour,
    or lack a stage's answer, are not tours."""
    top = "The answer is 42 because six times seven is forty-two."
    tour = {"task": "traffic/a", "split": "val", "tour": True,
            "stages": [_stage(0, top, agreement=0.0), _stage(1, "Nope, 41.", agreement=0.3), _stage(2, top, valid=False)]}  # fmt: skip
    plain = {**tour, "tour": False}
    partial = {**tour, "stages": tour["stages"][1:]}
    rows = calibrate.tour_rows([tour, plain, partial], 3)
    assert len(rows) == 1
    s0, s1, s2 = rows[0]["stages"]
    assert s0["agreement"] == 1.0  # stage 1 disagreed with it, but the top wrote the same text
    assert s1["agreement"] == 0.3  # the top verified it
    assert s2["agreement"] == 1.0 and label(s2) == 0  # the top is the reference, unless it broke the request's rules
    assert tour["stages"][0]["agreement"] == 0.0  # the logged row is not changed


def test_a_short_tour_answer_agrees_only_where_it_is_the_tops_text() -> None:
    """The top kept all of "30" on the texts and wrote "300": a different answer (0); "300" itself agrees."""
    tour = {"task": "traffic/b", "split": "val", "tour": True,
            "stages": [_stage(0, "30"), _stage(1, "300\n", agreement=1.0), _stage(2, "300")]}  # fmt: skip
    s0, s1, _ = calibrate.tour_rows([tour], 3)[0]["stages"]
    assert (s0["agreement"], s0["same"], label(s0)) == (1.0, False, 0)
    assert (s1["same"], label(s1)) == (True, 1)


def test_too_few_tours_give_no_replay_and_say_why() -> None:
    from common.settings import load_settings

    settings = load_settings(ROOT / "configs" / "cpu-learn.yaml")
    table, why = calibrate.held_tours([], settings)
    assert table is None and why == "0 tours outside the train split, 100 needed"  # cpu-learn.yaml: within 1 point


@pytest.mark.parametrize(
    ("target", "needed"),
    [(None, calibrate.MIN_TOURS), ({"within_points": 1}, 100), ({"within_points": 0.5}, 200), ({"keep": 0.98}, 50),
     ({"within_points": 10}, calibrate.MIN_TOURS), ({"within_points": 0}, calibrate.MIN_TOURS), ({"top_share": 0.5}, calibrate.MIN_TOURS)],
)  # fmt: skip
def test_a_table_needs_the_tours_that_resolve_the_default_target(target: dict[str, float] | None, needed: int) -> None:
    """One miss among the tours must fit within the target's slack (1 / slack tours); 30 at least."""
    from common.settings import load_settings

    settings = load_settings(ROOT / "configs" / "cpu-learn.yaml")
    settings.cascade.default_target = None if target is None else QualityTarget(**target)
    assert calibrate.tours_needed(settings) == needed
