"""A tenant's quality target becomes the λ the calibration table gives for it (in-process, scripted stages)."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.settings import Settings
from predictor.serving.calibration import LambdaTable, Target, paired_sd
from router.targets import TargetLambdas
from router.tenants.model import QualityTarget
from tests.router.fake_stage import ScriptedPredictor, fake_stages
from tests.router.inprocess import app_client

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "predictor" / "models" / "cpu"
ADMIN = {"authorization": "Bearer admin-secret"}
TABLE = LambdaTable.of({"top_quality": 0.6, "grid": [
    {"lambda": 1.0, "quality": 0.1, "top_share": 0.0},
    {"lambda": 10.0, "quality": 0.5, "top_share": 0.3},
    {"lambda": 100.0, "quality": 0.59, "top_share": 0.6},
]})  # fmt: skip


def test_a_target_maps_to_the_smallest_lambda_that_meets_it() -> None:
    targets = TargetLambdas(TABLE)
    assert targets.lam(QualityTarget(within_points=2), 7.0) == 100.0
    assert targets.lam(QualityTarget(keep=0.8), 7.0) == 10.0
    assert targets.lam(QualityTarget(top_share=0.2), 7.0) == 10.0
    # a target the table cannot meet, or no table: the λ the tenant had otherwise (and a warning in the log)
    assert targets.lam(QualityTarget(keep=1.0), 7.0) == 7.0
    assert TargetLambdas(None).lam(QualityTarget(keep=0.8), 7.0) == 7.0
    assert TABLE.lambda_for(Target(keep=0.8)) == 10.0


def test_a_confident_target_needs_a_lower_bound_to_meet_it() -> None:
    """With ``confidence`` the accuracy minus z standard errors of its paired difference with the top stage must meet
    the target: a row whose point estimate just meets it on few disagreements does not."""
    table = LambdaTable.of({"top_quality": 0.6, "tasks": 100, "grid": [
        {"lambda": 10.0, "quality": 0.59, "wins": 4, "losses": 5, "top_share": 0.5},  # bound 0.59 - 0.84 x 0.031
        {"lambda": 100.0, "quality": 0.62, "wins": 4, "losses": 2, "top_share": 0.7},  # bound 0.62 - 0.84 x 0.026
    ]})  # fmt: skip
    targets = TargetLambdas(table)
    assert targets.lam(QualityTarget(within_points=1), 7.0) == 10.0
    assert targets.lam(QualityTarget(within_points=1, confidence=0.8), 7.0) == 100.0
    assert targets.lam(QualityTarget(within_points=1, confidence=0.99), 7.0) == 7.0  # 0.62 - 2.33 x 0.026 < 0.59
    # no disagreement at all is not certainty: the bound of a perfect row still sits below its point
    assert paired_sd(0, 0, 100) > 0
    assert table.has_counts and not TABLE.has_counts
    # a table without wins and losses cannot bound its accuracy: a confident target is not met, never met by guess
    assert TargetLambdas(TABLE).lam(QualityTarget(within_points=2, confidence=0.8), 7.0) == 7.0
    assert Target.of(QualityTarget(keep=0.9, confidence=0.8)).describe() == "keep 90% of the top stage's accuracy with 80% confidence"


def test_a_table_calibrated_in_another_unit_gives_no_lambda(caplog: pytest.LogCaptureFixture) -> None:
    """λ is a price in the rule's unit: a table written while the ladder priced stages in compute says nothing of
    a ladder priced in seconds (the router warns and keeps the configured λ); a table that does not say its unit is
    taken at its word."""
    table = LambdaTable.of({"top_quality": 0.6, "rule_unit": "compute", "grid": [{"lambda": 10.0, "quality": 0.59, "top_share": 0.3}]})
    assert table.lambda_for(Target(within_points=2), "compute") == 10.0 and table.lambda_for(Target(within_points=2), "seconds") is None
    assert TargetLambdas(table, "compute").lam(QualityTarget(within_points=2), 7.0) == 10.0
    assert TargetLambdas(table, "seconds").lam(QualityTarget(within_points=2), 7.0) == 7.0
    assert "prices in compute" in caplog.text and "seconds" in caplog.text
    assert TargetLambdas(TABLE, "seconds").lam(QualityTarget(within_points=2), 7.0) == 100.0  # TABLE has no rule_unit
    assert LambdaTable.load(MODEL) is not None and LambdaTable.load(MODEL).unit == "compute"  # type: ignore[union-attr]


def test_a_tour_table_resolves_only_the_targets_its_tours_can_tell(caplog: pytest.LogCaptureFixture) -> None:
    """A new ladder's table (agreement with the top stage) of 40 tours resolves "within 5 points" (30 needed) but not
    "within 1 point" (100: one miss must fit in the slack), whatever its grid says; a checker table is not held to it."""
    grid = [{"lambda": 10.0, "quality": 0.97, "top_share": 0.3}, {"lambda": 50.0, "quality": 1.0, "top_share": 0.6}]
    tours = LambdaTable.of({"top_quality": 1.0, "tasks": 40, "labels": "agreement with the top stage", "grid": grid})
    assert TargetLambdas(tours).lam(QualityTarget(within_points=5), 7.0) == 10.0
    assert TargetLambdas(tours).lam(QualityTarget(within_points=1), 7.0) == 7.0
    assert "holds 40 tours, the target needs 100" in caplog.text
    checker = LambdaTable.of({"top_quality": 1.0, "tasks": 40, "labels": "checker", "grid": grid})
    assert TargetLambdas(checker).lam(QualityTarget(within_points=1), 7.0) == 50.0


def test_a_target_needs_exactly_one_goal() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        QualityTarget(keep=0.9, top_share=0.5)
    with pytest.raises(ValueError, match="exactly one"):
        QualityTarget()
    with pytest.raises(ValueError, match="confidence applies"):
        QualityTarget(top_share=0.5, confidence=0.8)
    with pytest.raises(ValueError, match="confidence"):
        QualityTarget(within_points=1, confidence=1.0)


def _keyed(**cascade: object) -> Settings:
    """Two scripted stages priced in compute (the unit the shipped model's table was calibrated in), tenants by key."""
    stage = {"url": "http://127.0.0.1:9/v1", "dialect": "openai"}
    return Settings.model_validate({
        "cascade": {"cost_unit": "compute", **cascade},
        "tenancy": {"auth": "keys", "admin_key": "admin-secret"},
        "predictor": {"kind": "onnx", "path": str(MODEL)},
        "stages": [{**stage, "name": "s0", "model": "m0", "prices": {"compute": {"request": 1.0}}},
                   {**stage, "name": "s1", "model": "m1", "prices": {"compute": {"request": 4.0}}}],
    })  # fmt: skip


@pytest.mark.anyio
async def test_a_tenant_with_a_target_runs_at_its_calibrated_lambda() -> None:
    settings = _keyed()
    want = LambdaTable.load(MODEL)
    assert want is not None
    lam = want.lambda_for(Target(within_points=2))
    assert lam is not None
    predictor = ScriptedPredictor({0: 0.9, 1: 0.9}, [0.5, 0.9])
    async with app_client(settings, predictor=predictor, stages=fake_stages(settings.stages)) as c:
        made = await c.post("/admin/tenants", json={"id": "acme", "settings": {"target": {"within_points": 2}}}, headers=ADMIN)
        assert made.status_code in (200, 201), made.text
        key = {"authorization": f"Bearer {made.json()['api_key']}"}
        resp = await c.post("/v1/chat/completions", json={"model": "cascade", "messages": [{"role": "user", "content": "hi"}]}, headers=key)
        assert resp.status_code == 200, resp.text
        assert float(resp.headers["x-cascade-lambda"]) == pytest.approx(lam, rel=1e-5)
        view = await c.get("/v1/tenant", headers=key)
        assert view.json()["effective_lambda"] == pytest.approx(lam, rel=1e-9)  # what the tenant is told is what it gets
        for target in ({"keep": 0.9, "top_share": 0.5}, {"top_share": 0.5, "confidence": 0.8}, {"keep": 0.9, "confidence": 1.5}):
            bad = await c.patch("/admin/tenants/acme", json={"target": target}, headers=ADMIN)
            assert bad.status_code == 400 and "target" in (bad.json()["error"]["param"] or ""), bad.text
        assert (await c.get("/v1/tenant", headers=key)).json()["effective_lambda"] == pytest.approx(lam, rel=1e-9)  # unchanged


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("target", "unit", "met"),
    [({"within_points": 2}, "compute", True), ({"top_share": 0.95}, "compute", False), ({"within_points": 2}, "seconds", False)],
)
async def test_the_default_target_sets_the_lambda_of_requests_that_name_none(target: dict[str, float], unit: str, met: bool) -> None:
    """``cascade.default_target``: requests of a tenant without its own λ or target run at the table's λ for it, and
    ``/health`` says so; a target no λ of the table meets, or a table calibrated with the rule in another unit than
    the ladder's (the shipped table's λ are GFLOP), leaves ``default_lambda`` in force, and says that."""
    stage = {"url": "http://127.0.0.1:9/v1", "dialect": "openai"}
    settings = Settings.model_validate({
        "cascade": {"default_lambda": 7.0, "default_target": target, "cost_unit": unit},
        "tenancy": {"auth": "open"},
        "predictor": {"kind": "onnx", "path": str(MODEL)},
        "stages": [{**stage, "name": "s0", "model": "m0", "prices": {unit: {"request": 1.0}}},
                   {**stage, "name": "s1", "model": "m1", "prices": {unit: {"request": 4.0}}}],
    })  # fmt: skip
    table = LambdaTable.load(MODEL)
    assert table is not None
    want = table.lambda_for(Target(**target)) if met else 7.0
    assert want is not None and want != 7.0 or not met
    predictor = ScriptedPredictor({0: 0.9, 1: 0.9}, [0.5, 0.9])
    async with app_client(settings, predictor=predictor, stages=fake_stages(settings.stages)) as c:
        resp = await c.post("/v1/chat/completions", json={"model": "cascade", "messages": [{"role": "user", "content": "hi"}]})
        assert resp.status_code == 200, resp.text
        assert float(resp.headers["x-cascade-lambda"]) == pytest.approx(want, rel=1e-5)
        health = (await c.get("/health")).json()["default_lambda"]
        assert health["value"] == pytest.approx(want, rel=1e-9)
        assert health["source"] == ("target" if met else "default_lambda") and health["target"] == Target(**target).describe()


def test_the_default_target_is_validated_as_a_tenants_is() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        Settings.model_validate({"cascade": {"default_target": {"keep": 0.9, "within_points": 1}}})


@pytest.mark.anyio
async def test_a_tenant_whose_target_no_lambda_meets_runs_at_the_default_targets_lambda() -> None:
    """A target the table cannot meet leaves the tenant the λ it would have had without one: the default target's,
    not the bare ``default_lambda`` (which may be far looser than what every other request gets)."""
    settings = _keyed(default_lambda=7.0, default_target={"within_points": 2})
    table = LambdaTable.load(MODEL)
    assert table is not None and table.lambda_for(Target(top_share=0.999)) is None
    default = table.lambda_for(Target(within_points=2))
    assert default is not None and default != 7.0
    predictor = ScriptedPredictor({0: 0.9, 1: 0.9}, [0.5, 0.9])
    async with app_client(settings, predictor=predictor, stages=fake_stages(settings.stages)) as c:
        made = await c.post("/admin/tenants", json={"id": "strict", "settings": {"target": {"top_share": 0.999}}}, headers=ADMIN)
        assert made.status_code in (200, 201), made.text
        view = await c.get("/v1/tenant", headers={"authorization": f"Bearer {made.json()['api_key']}"})
        assert view.json()["effective_lambda"] == pytest.approx(default, rel=1e-9)
