"""A promoted model loaded without a restart (``router.model_reload``): the real shipped ONNX model, in a registry."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import httpx
import pytest

from predictor.serving.calibration import LambdaTable, Target
from tests.router.fake_stage import fake_stages
from tests.router.inprocess import PROMPT, S0, S1, app_client, make_settings

pytestmark = pytest.mark.anyio
BASE = Path(__file__).resolve().parents[2] / "predictor" / "models" / "cpu"


def _point(registry: Path, version: str) -> None:
    (registry / "current.tmp").write_text(version + "\n")
    (registry / "current.tmp").replace(registry / "current")


async def _serving(client: httpx.AsyncClient, version: str) -> bool:
    for _ in range(100):
        if (await client.get("/health")).json()["model_version"] == version:
            return True
        await asyncio.sleep(0.02)
    return False


async def test_a_promoted_version_is_served_without_a_restart_and_a_broken_one_is_not(tmp_path: Path) -> None:
    registry = tmp_path / "models"
    for version in ("v0001", "v0002"):
        shutil.copytree(BASE, registry / version)
    (registry / "v0003").mkdir()  # promoted by mistake: no model in it
    (registry / "v0003" / "card.json").write_text("{}")
    _point(registry, "v0001")
    settings = make_settings(predictor={"kind": "onnx", "path": str(registry), "reload_s": 0.01})
    async with app_client(settings, stages=fake_stages(settings.stages, S0, S1)) as client:
        assert (await client.get("/health")).json()["model_version"] == "v0001"

        async def traffic() -> list[int]:
            body = {"model": "cascade", "messages": PROMPT, "max_tokens": 16}
            return [(await client.post("/v1/chat/completions", json=body)).status_code for _ in range(40)]

        flips = asyncio.create_task(traffic())
        for version in ("v0002", "v0001", "v0002"):  # swapped while requests are in flight
            _point(registry, version)
            assert await _serving(client, version)
        assert set(await flips) == {200}
        metrics = (await client.get("/metrics")).text
        assert 'adaptive_sd_predictor_info{name="onnx-gbt",trained="true",version="v0002"} 1.0' in metrics
        assert 'version="v0001"' not in metrics  # one model in service, one series

        _point(registry, "v0003")
        await asyncio.sleep(0.2)
        assert (await client.get("/health")).json()["model_version"] == "v0002"  # the broken one never replaced it
        assert (await client.post("/v1/chat/completions", json={"model": "cascade", "messages": PROMPT})).status_code == 200
        failed = 'adaptive_sd_predictor_reloads_total{outcome="failed"}'
        assert f"{failed} 1.0" in (await client.get("/metrics")).text  # once, not at every look


async def test_a_new_ladder_serves_the_baseline_until_its_registry_names_a_version(tmp_path: Path) -> None:
    """``kind: baseline`` with a ``path``: untrained (the rule runs safe) until ``training learn --data none``
    promotes a first version into the registry, which is then served without a restart; rolled back to no
    version, the baseline serves again. The default λ follows: ``default_lambda`` while the baseline serves, the
    promoted version's table λ for ``cascade.default_target`` once it does."""
    registry = tmp_path / "models"  # not there yet: the learner creates it
    compute = [{"prices": {"compute": {"request": r}}} for r in (1.0, 4.0)]  # the unit the shipped table's λ are in
    settings = make_settings(*compute, predictor={"kind": "baseline", "path": str(registry), "reload_s": 0.01},
                             default_target={"within_points": 1}, explore={"rate": 0.1, "untrained_rate": 0.9},
                             cost_unit="compute")  # fmt: skip
    table = LambdaTable.load(BASE)
    assert table is not None
    lam = table.lambda_for(Target(within_points=1))
    async with app_client(settings, stages=fake_stages(settings.stages, S0, S1)) as client:
        health = (await client.get("/health")).json()
        assert health["model_version"] == "builtin" and health["predictor_trained"] is False
        assert health["default_lambda"] | {"target": None} == {"value": 10.0, "source": "default_lambda", "target": None}
        assert health["explore"] == {"rate": 0.9, "untrained_rate": 0.9}  # still learning: tours at the untrained rate
        shutil.copytree(BASE, registry / "v0001")
        _point(registry, "v0001")
        assert await _serving(client, "v0001")
        health = (await client.get("/health")).json()
        assert health["predictor_trained"] is True and health["default_lambda"]["value"] == lam != 10.0
        assert f'adaptive_sd_default_lambda{{source="target"}} {lam}' in (await client.get("/metrics")).text
        assert health["explore"]["rate"] == 0.1  # trained, and the target resolved: the trained rate
        body = {"model": "cascade", "messages": PROMPT, "max_tokens": 16}
        answered = await client.post("/v1/chat/completions", json=body)
        assert answered.status_code == 200 and float(answered.headers["x-cascade-lambda"]) == pytest.approx(lam, rel=1e-5)
        shutil.copytree(BASE, registry / "v0002", ignore=shutil.ignore_patterns("calibration.json"))  # too few tours for a table
        _point(registry, "v0002")
        assert await _serving(client, "v0002")
        health = (await client.get("/health")).json()
        assert health["predictor_trained"] is True and health["default_lambda"]["source"] == "default_lambda"
        assert health["explore"]["rate"] == 0.9  # trained, but the target has no λ yet: still learning
        (registry / "current").unlink()  # `training rollback --to baseline`
        assert await _serving(client, "builtin")
        health = (await client.get("/health")).json()
        assert health["predictor_trained"] is False and health["default_lambda"]["source"] == "default_lambda"
        metrics = (await client.get("/metrics")).text
        assert 'adaptive_sd_default_lambda{source="default_lambda"} 10.0' in metrics and 'source="target"' not in metrics
        assert (await client.post("/v1/chat/completions", json=body)).status_code == 200


async def test_a_table_rewritten_in_place_is_read_again_and_a_broken_one_leaves_the_old(tmp_path: Path) -> None:
    """``training calibrate --model <the version in service>`` rewrites its table in place: running replicas take
    the new λ for the default target (as a restarted one would); a table that does not parse leaves the old one."""
    model = tmp_path / "model"
    shutil.copytree(BASE, model)
    compute = [{"prices": {"compute": {"request": r}}} for r in (1.0, 4.0)]  # the unit the shipped table's λ are in
    settings = make_settings(*compute, predictor={"kind": "onnx", "path": str(model), "reload_s": 0.01},
                             default_target={"within_points": 1}, cost_unit="compute")  # fmt: skip
    table = LambdaTable.load(BASE)
    assert table is not None
    lam = table.lambda_for(Target(within_points=1))
    assert lam is not None

    async def default_lambda(want: float) -> bool:
        for _ in range(100):
            if (await client.get("/health")).json()["default_lambda"]["value"] == pytest.approx(want, rel=1e-9):
                return True
            await asyncio.sleep(0.02)
        return False

    async def reloads(outcome: str) -> float:
        """This process's count so far (the registry is shared by every test of the session)."""
        line = f'adaptive_sd_predictor_reloads_total{{outcome="{outcome}"}} '
        found = [x for x in (await client.get("/metrics")).text.splitlines() if x.startswith(line)]
        return float(found[0].split()[-1]) if found else 0.0

    async with app_client(settings, stages=fake_stages(settings.stages, S0, S1)) as client:
        assert await default_lambda(lam)
        tables, failed = await reloads("table"), await reloads("failed")
        text = (model / "calibration.json").read_text()
        (model / "calibration.json").write_text(text.replace('"rule_unit": "compute"', '"rule_unit": "seconds"'))
        assert await default_lambda(10.0)  # λ in seconds say nothing of this ladder: default_lambda is in force
        (model / "calibration.json").write_text(text)
        assert await default_lambda(lam)
        assert await reloads("table") == tables + 2
        (model / "calibration.json").write_text("{not json")
        await asyncio.sleep(0.2)
        assert (await client.get("/health")).json()["default_lambda"]["value"] == pytest.approx(lam, rel=1e-9)
        assert await reloads("failed") == failed + 1  # once, not at every look
        assert (await client.get("/health")).json()["model_version"] == "model"  # the model itself never reloaded
