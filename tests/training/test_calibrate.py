"""λ from a target: the replayed validation table, and the smallest λ that meets each kind of target."""

from __future__ import annotations

from pathlib import Path

import pytest

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


def test_the_cli_needs_exactly_one_target(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["calibrate", "--keep", "0.9", "--top-share", "0.5", "--dry-run"]) == 2
    assert "exactly one target" in capsys.readouterr().err
    assert main(["calibrate", "--within-points", "2", "--dry-run", "--data", str(DATA), "--model", str(MODEL)]) == 0
    assert "λ =" in capsys.readouterr().out
