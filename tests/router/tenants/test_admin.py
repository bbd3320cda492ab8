"""``router.tenants.admin`` in-process: a tenant's ``max_stage`` must name a stage of the router's ladder.

A ``max_stage`` that names no stage was stored as given, and the cascade then
served that tenant from the whole ladder; the admin API now refuses it with a
400 naming the field and listing the ladder's stages (``settings.max_stage`` in
a create, whose settings are nested; ``max_stage`` in a patch).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from router.tenants import model
from router.tenants.model import TenantSettings
from router.tenants.redis_store import RedisStore
from tests.conftest import RedisServer
from tests.router.fake_stage import ScriptedPredictor, fake_stages
from tests.router.inprocess import app_client, make_settings
from tests.router.tenants.test_cli import _cli, _config

ADMIN = {"authorization": "Bearer admin-secret"}
LADDER = ("s0", "s1")


@asynccontextmanager
async def admin_client(redis_url: str | None = None) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(tenancy={"auth": "keys", "admin_key": "admin-secret", "redis_url": redis_url})
    async with app_client(settings, predictor=ScriptedPredictor({0: 0.9, 1: 0.9}, [0.5, 0.9]), stages=fake_stages(settings.stages)) as c:
        yield c


def _refused(resp: httpx.Response, param: str, value: Any) -> None:
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert (err["type"], err["param"]) == ("invalid_request_error", param)
    assert repr(value) in err["message"] and "s0, s1" in err["message"], err["message"]


def test_check_max_stage_accepts_the_ladders_stages_only() -> None:
    for ok in (None, 0, 1, "s0", "s1"):
        model.check_max_stage(ok, LADDER)
    for bad in (2, 99, "s2", "S0", "", "0"):
        with pytest.raises(ValueError, match="s0, s1"):
            model.check_max_stage(bad, LADDER)


@pytest.mark.anyio
@pytest.mark.parametrize("stale", ["s9", 2])
async def test_create_refuses_a_max_stage_outside_the_ladder(stale: int | str) -> None:
    async with admin_client() as c:
        resp = await c.post("/admin/tenants", json={"id": "acme", "settings": {"max_stage": stale}}, headers=ADMIN)
        _refused(resp, "settings.max_stage", stale)
        assert (await c.get("/admin/tenants/acme", headers=ADMIN)).status_code == 404, "nothing half-created"
        for good in ("s1", 1):
            made = await c.post("/admin/tenants", json={"id": f"ok-{good}", "settings": {"max_stage": good}}, headers=ADMIN)
            assert made.status_code == 201, made.text
            assert made.json()["settings"]["max_stage"] == good


@pytest.mark.anyio
@pytest.mark.parametrize("stale", ["s9", 2])
async def test_patch_refuses_a_max_stage_outside_the_ladder(stale: int | str) -> None:
    async with admin_client() as c:
        assert (await c.post("/admin/tenants", json={"id": "acme", "settings": {"max_stage": "s0"}}, headers=ADMIN)).status_code == 201
        _refused(await c.patch("/admin/tenants/acme", json={"max_stage": stale}, headers=ADMIN), "max_stage", stale)
        assert (await c.get("/admin/tenants/acme", headers=ADMIN)).json()["settings"]["max_stage"] == "s0", "unchanged"
        moved = await c.patch("/admin/tenants/acme", json={"max_stage": None}, headers=ADMIN)
        assert moved.status_code == 200 and moved.json()["settings"]["max_stage"] is None


@pytest.mark.anyio
async def test_patch_of_a_tenant_stored_with_a_stale_max_stage_must_fix_it(redis_server: RedisServer) -> None:
    """A record from before the ladder changed: any patch that would write it back as it is says what to fix;
    the same patch with ``max_stage`` set to a stage of the ladder (or null) goes through."""
    redis_server.flush()
    store = RedisStore(redis_server.url, timeout_s=1.0)
    try:
        await store.create("old", TenantSettings(max_stage="retired-stage", rpm=10))
    finally:
        await store.close()
    async with admin_client(redis_server.url) as c:
        _refused(await c.patch("/admin/tenants/old", json={"rpm": 20}, headers=ADMIN), "max_stage", "retired-stage")
        fixed = await c.patch("/admin/tenants/old", json={"rpm": 20, "max_stage": "s1"}, headers=ADMIN)
        assert fixed.status_code == 200, fixed.text
        assert fixed.json()["settings"]["rpm"] == 20 and fixed.json()["settings"]["max_stage"] == "s1"


def test_the_cli_refuses_a_max_stage_outside_the_ladder(redis_server: RedisServer, tmp_path: Path) -> None:
    redis_server.flush()
    path = _config(tmp_path, redis_server.url)
    names = [s["name"] for s in yaml.safe_load(path.read_text())["stages"]]
    bad = _cli(path, "create", "team-x", "--set", "max_stage=no-such-stage")
    assert bad.returncode == 2 and "max_stage" in bad.stderr and ", ".join(names) in bad.stderr, bad.stderr
    assert _cli(path, "show", "team-x").returncode == 1, "nothing created"
    assert _cli(path, "create", "team-x", "--set", f"max_stage={names[0]}").returncode == 0
    bad = _cli(path, "set", "team-x", "--set", f"max_stage={len(names)}")
    assert bad.returncode == 2 and "max_stage" in bad.stderr, bad.stderr
