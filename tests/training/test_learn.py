"""Learning from traffic (``training.learn``): the registry, a promotion decided on unseen rows, lineage, rollback.

The "traffic" is real: answers of the real CPU ladder from the committed
collection, logged as the router logs them (a time each, the newest last).
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest

from common.settings import load_settings
from predictor.serving.calibration import LambdaTable, Target
from predictor.serving.loader import resolve
from predictor.serving.rows import split_of
from training import calibrate, learn

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "data" / "cpu" / "collect.jsonl"
BASE = ROOT / "predictor" / "models" / "cpu"


def _traffic(path: Path, families: set[str], t0: float = 1000.0) -> Path:
    """The collection's answers of ``families`` as a traffic log: one row per task, a second apart."""
    with SHIPPED.open() as src, path.open("w") as out:
        rows = [json.loads(line) for line in src]
        for i, row in enumerate(r for r in rows if r["family"] in families):
            out.write(json.dumps({**row, "family": "traffic", "time": t0 + i}) + "\n")
    return path


def test_too_few_unseen_rows_decide_nothing_and_seed_the_registry(tmp_path: Path) -> None:
    registry = tmp_path / "models"
    log = _traffic(tmp_path / "traffic.jsonl", {"dates"})
    outcome = learn.learn(registry, [log], SHIPPED, BASE, min_eval=10_000)
    assert not outcome.promoted and "needed to decide" in outcome.reason
    assert learn.versions(registry) == ["v0001"] and learn.current(registry) == "v0001"
    assert resolve(registry) == registry / "v0001"
    assert learn.lineage(registry, "v0001")["parent"] is None
    with pytest.raises(ValueError, match="no parent"):
        learn.rollback(registry)


def test_a_promoted_candidate_is_in_service_with_its_lineage_and_rolls_back(tmp_path: Path) -> None:
    """The decision is made on the newest rows only; ``margin`` -1 promotes whatever the log-loss (the mechanics),
    and the figures it was decided on are in the card."""
    registry = tmp_path / "models"
    log = _traffic(tmp_path / "traffic.jsonl", {"dates", "units", "open-chat"})
    rows = learn.labelled_rows([log])
    outcome = learn.learn(registry, [log], SHIPPED, BASE, holdout=0.5, min_eval=20, margin=-1.0)
    assert outcome.promoted and outcome.candidate == "v0002" and learn.current(registry) == "v0002", outcome
    assert set(outcome.log_loss) == {"candidate", "v0001"} and all(0 < v < 5 for v in outcome.log_loss.values())
    record = learn.lineage(registry, "v0002")
    assert record["parent"] == "v0001" and record["trained_on"]["logged"] == len(rows) // 2
    assert record["trained_until"] == rows[len(rows) // 2 - 1].order[0]  # the older half only: the newer decided
    assert (registry / "v0002" / "calibration.json").is_file() and (registry / "v0002" / "predictor.onnx").is_file()
    again = learn.learn(registry, [log], SHIPPED, BASE, holdout=0.5, min_eval=20)  # the same rows: the same fit
    assert not again.promoted and "does not beat v0002" in again.reason and learn.current(registry) == "v0002", again
    assert learn.rollback(registry) == "v0001" and resolve(registry) == registry / "v0001"
    assert [v["in_service"] for v in learn.history(registry)] == [True, False]
    # names `current` cannot hold, and the baseline for a registry seeded from a trained model: refused, unchanged
    for to in ("v0002/", "..", "incoming", "baseline"):
        with pytest.raises(ValueError, match="has no version|new ladder"):
            learn.rollback(registry, to)
    assert learn.current(registry) == "v0001" and resolve(registry) == registry / "v0001"


def test_the_commands_list_and_roll_back_a_registry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from training.cli import main

    registry = tmp_path / "models"
    assert main(["rollback", "--registry", str(registry)]) == 1  # nothing in service: said, not a traceback
    learn.seed(registry, BASE)
    shutil.copytree(registry / "v0001", registry / "v0002")
    learn.point(registry, "v0002")
    assert main(["rollback", "--registry", str(registry), "--to", "v0001"]) == 0 and learn.current(registry) == "v0001"
    capsys.readouterr()
    assert main(["models", "--registry", str(registry)]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["version"], r["in_service"]) for r in listed] == [("v0001", True), ("v0002", False)]


def test_a_shadow_checked_row_counts_its_weight_in_expectation_and_others_once() -> None:
    rows = [{"id": i, "weight": 2.5} for i in range(2000)] + [{"id": -1}, {"id": -2, "weight": None}]
    out = list(learn.resampled(rows, seed_=3))
    counts = [sum(1 for r in out if r["id"] == i) for i in range(2000)]
    assert set(counts) == {2, 3} and abs(sum(counts) / 2000 - 2.5) < 0.05
    assert [r["id"] for r in out if r["id"] < 0] == [-1, -2]
    assert out == list(learn.resampled(rows, seed_=3))  # seeded: the same rows for the same run


CPU_LEARN = ROOT / "configs" / "cpu-learn.yaml"


def _new_ladder_traffic(path: Path, families: set[str], t0: float = 1000.0, tours: bool = False) -> Path:
    """The collection's answers of ``families`` logged as a new ladder's router logs them: no checker verdicts; the
    stages below the top labelled by agreement (here the checker's verdict stands in for the verifier's), the top's
    answer unlabelled; every third request went straight to the top (skipped by the prior); with ``tours``, every
    third request (another third) toured the ladder (``tour: true``)."""
    with SHIPPED.open() as src, path.open("w") as out:
        rows = [json.loads(line) for line in src if json.loads(line)["family"] in families]
        for i, row in enumerate(rows):
            top = max(s["stage"] for s in row["stages"])
            stages = [{**s, "passed": None, "agreement": None if s["stage"] == top else float(bool(s["passed"]))}
                      for s in row["stages"] if s["stage"] == top or i % 3]  # fmt: skip
            rid = f"traffic/{i}"
            logged = {**row, "task": rid, "split": split_of(rid), "family": "traffic", "stages": stages, "time": t0 + i}
            out.write(json.dumps(logged | ({"tour": True} if tours and i % 3 == 1 else {})) + "\n")
    return path


def test_a_new_ladder_learns_from_its_traffic_alone(tmp_path: Path) -> None:
    """No collection, no base: the registry stays empty while the baseline serves, the first promotion is v0001
    (no parent, no λ table), decided on the lower stages' labels only while the top's answers train as the
    reference."""
    registry = tmp_path / "models"
    log = _new_ladder_traffic(tmp_path / "traffic.jsonl", {"dates", "units", "arithmetic", "lists"})
    few = learn.learn(registry, [log], None, None, CPU_LEARN, min_eval=10_000)
    assert not few.promoted and few.served == "baseline" and learn.versions(registry) == [], few
    outcome = learn.learn(registry, [log], None, None, CPU_LEARN, holdout=0.5, min_eval=20, margin=-1.0)
    assert outcome.promoted and outcome.candidate == "v0001" and learn.current(registry) == "v0001", outcome
    assert set(outcome.log_loss) == {"candidate", "baseline"}
    rows = learn.labelled_rows([log])  # rows with a lower stage's label: the holdout is taken from these
    newer = rows[len(rows) - math.ceil(len(rows) / 2) :]
    assert outcome.evaluation_rows == sum(s["agreement"] is not None for r in newer for s in r.row["stages"])
    record = learn.lineage(registry, "v0001")
    assert record["parent"] is None and record["trained_on"]["collection"] is None and record["trained_on"]["shipped"] == 0
    every = learn.labelled_rows([log], reference=2)  # the top's answers too: rows with nothing else labelled train
    assert record["trained_on"]["logged"] == sum(r.order < newer[0].order for r in every) > len(rows) - len(newer)
    assert not (registry / "v0001" / "calibration.json").exists() and outcome.calibration.startswith("no λ table: 0 tours")
    assert outcome.replayed == {"skipped": "0 tours outside the train split, 100 needed"}
    card = json.loads((registry / "v0001" / "card.json").read_text())
    assert card["data"]["rows"]["train"] > 0
    labelled = learn.with_reference(every[0].row, 2)
    assert [s["agreement"] for s in labelled["stages"] if s["stage"] == 2] == [1.0]
    with pytest.raises(ValueError, match="--to baseline"):  # v0001 has no parent: the baseline is what came before
        learn.rollback(registry)
    assert learn.rollback(registry, "baseline") == "baseline" and learn.current(registry) is None and resolve(registry) == registry


def test_a_new_ladder_with_tours_gets_a_lambda_table_in_agreement_with_the_top(tmp_path: Path) -> None:
    """With enough tours outside the train split, the candidate's λ table is replayed on them, accuracy being
    agreement with the top stage: the top's own is 1, and the table meets an agreement target."""
    registry = tmp_path / "models"
    log = _new_ladder_traffic(tmp_path / "traffic.jsonl", {"dates", "units", "arithmetic", "lists", "extraction"}, tours=True)
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    held = sum(bool(r.get("tour")) and r["split"] != "train" for r in rows)
    assert calibrate.tours_needed(load_settings(CPU_LEARN)) == 100 > held  # too few to resolve within 1 point: no table
    unresolved = learn.learn(tmp_path / "unresolved", [log], None, None, CPU_LEARN, holdout=0.5, min_eval=20, margin=-100.0)
    assert unresolved.promoted and unresolved.calibration == f"no λ table: {held} tours outside the train split, 100 needed"
    config = tmp_path / "five-points.yaml"  # a target 40 tours resolve: within 5 points (30 tours at least)
    config.write_text(CPU_LEARN.read_text().replace("default_target: {within_points: 1}", "default_target: {within_points: 5}"))
    assert calibrate.tours_needed(load_settings(config)) == calibrate.MIN_TOURS <= held, held
    # the served version got no table; once the tours resolve the target it gets one, as a version of its own
    again = learn.learn(tmp_path / "unresolved", [log], None, None, config, holdout=0.5, min_eval=20, margin=100.0)
    assert again.promoted and again.candidate == "v0002" and "v0001 recalibrated on" in again.reason, again
    record = learn.lineage(tmp_path / "unresolved", "v0002")
    assert record["source"] == "recalibrated" and record["parent"] == "v0001"
    assert record["trained_until"] == learn.lineage(tmp_path / "unresolved", "v0001")["trained_until"]
    same = [(tmp_path / "unresolved" / v / "predictor.onnx").read_bytes() for v in ("v0001", "v0002")]
    assert same[0] == same[1] and (tmp_path / "unresolved" / "v0002" / "calibration.json").is_file()
    learn.learn(tmp_path / "unresolved", [log], None, None, config, holdout=0.5, min_eval=20, margin=100.0)
    assert learn.versions(tmp_path / "unresolved") == ["v0001", "v0002"]  # its table is in force: no version per round
    # the ladder's rule now prices stages in seconds: the table's λ are GFLOP, so the tours give it one in seconds
    seconds = tmp_path / "five-points-seconds.yaml"
    seconds.write_text(config.read_text().replace("cost_unit: compute", "cost_unit: seconds"))
    moved = learn.learn(tmp_path / "unresolved", [log], None, None, seconds, holdout=0.5, min_eval=20, margin=100.0)
    assert moved.promoted and moved.candidate == "v0003" and "v0002 recalibrated on" in moved.reason, moved
    assert json.loads((tmp_path / "unresolved" / "v0003" / "calibration.json").read_text())["rule_unit"] == "seconds"
    outcome = learn.learn(registry, [log], None, None, config, holdout=0.5, min_eval=20, margin=-100.0)  # promoted whatever
    assert outcome.promoted and outcome.calibration == f"λ table from {held} tours outside the train split (agreement with the top stage)"
    replayed = outcome.replayed  # the second test: the rule replayed on the same tours, the baseline against the candidate
    assert replayed["tours"] == held and replayed["unit"] == "compute" and replayed["candidate_cost"] is not None
    assert replayed["quality_matched"] == pytest.approx(0.95)  # the default target: within 5 points of the top
    assert calibrate.cheaper(replayed, learn.DEFAULT_COST_MARGIN)  # promoted: it passed the second test too
    strict = learn.learn(tmp_path / "strict", [log], None, None, config, holdout=0.5, min_eval=20, margin=-100.0, cost_margin=-0.99)
    assert not strict.promoted and "replayed on" in strict.reason and learn.versions(tmp_path / "strict") == [], strict
    table = json.loads((registry / "v0001" / "calibration.json").read_text())
    assert table["tasks"] == held and table["top_quality"] == 1.0 and table["labels"] == "agreement with the top stage"
    assert learn.lineage(registry, "v0001")["calibration"] == outcome.calibration
    lam = LambdaTable.of(table).lambda_for(Target(within_points=5))
    assert lam is not None and table["grid"][0]["lambda"] < lam
    assert table["grid"][0]["quality"] < 0.95 <= table["grid"][-1]["quality"]  # agreement rises with λ to the top's


def test_cheaper_asks_for_the_quality_at_no_more_than_the_served_cost() -> None:
    assert calibrate.cheaper({"candidate_cost": 10.0, "served_cost": 10.0}, 0.0)
    assert not calibrate.cheaper({"candidate_cost": 10.6, "served_cost": 10.0}, 0.05)
    assert calibrate.cheaper({"candidate_cost": 10.0, "served_cost": None}, 0.0)  # the served model never reaches it
    assert not calibrate.cheaper({"candidate_cost": None, "served_cost": None}, 0.0)


def test_an_empty_registry_needs_a_base_unless_the_ladder_is_new(tmp_path: Path) -> None:
    log = _traffic(tmp_path / "traffic.jsonl", {"dates"})
    with pytest.raises(ValueError, match="base model"):
        learn.learn(tmp_path / "models", [log], SHIPPED, None)


def test_a_logged_shadow_rows_weight_is_on_its_stage_answer() -> None:
    """``TrafficLog.record`` writes a shadow check's weight on the stage answer it labels: that counts too."""
    rows = [{"id": i, "stages": [{"stage": 0, "agreement": 1.0, "weight": 4.0}]} for i in range(500)]
    out = list(learn.resampled(rows, seed_=1))
    assert len(out) == 2000


def test_a_new_ladder_needs_its_config(tmp_path: Path) -> None:
    from training.cli import main

    log = _new_ladder_traffic(tmp_path / "traffic.jsonl", {"dates"})
    with pytest.raises(ValueError, match="needs its config"):
        learn.learn(tmp_path / "models", [log], None, None)
    assert main(["learn", "--registry", str(tmp_path / "models"), "--log", str(log), "--data", "none"]) == 2


def test_a_new_ladder_priced_in_its_own_unit_alone_learns_its_table(tmp_path: Path) -> None:
    """A ladder priced per request in the default unit ``cost`` only (no compute, no seconds): its tour table and the
    promotion's replayed cost are in that unit, and the learner promotes, instead of failing for want of the units
    the offline replay reports."""
    log = _new_ladder_traffic(tmp_path / "traffic.jsonl", {"dates", "units", "arithmetic", "lists", "extraction"}, tours=True)
    text = CPU_LEARN.read_text().replace("default_target: {within_points: 1}", "default_target: {within_points: 5}")
    prices = iter([1.0, 3.0, 10.0])
    stage_prices = r"    prices:.*\n      compute: .*\n      seconds: .*\n"
    text = re.sub(stage_prices, lambda _: f"    prices:\n      cost: {{request: {next(prices)}}}\n", text)
    config = tmp_path / "cost.yaml"
    config.write_text(text.replace("cost_unit: compute", "cost_unit: cost"))
    assert all(set(s.prices) == {"cost"} for s in load_settings(config).stages)
    outcome = learn.learn(tmp_path / "models", [log], None, None, config, holdout=0.5, min_eval=20, margin=-100.0)
    assert outcome.promoted and outcome.replayed["unit"] == "cost" and outcome.replayed["candidate_cost"] is not None, outcome
    table = json.loads((tmp_path / "models" / "v0001" / "calibration.json").read_text())
    assert table["rule_unit"] == "cost" and set(table["top_cost"]) == {"cost"} and table["top_cost"]["cost"] == 10.0
