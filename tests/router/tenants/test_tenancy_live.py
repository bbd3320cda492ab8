"""Tenancy end to end: two router processes sharing one real Redis, a real llama.cpp stage, the OpenAI SDK."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import RedisServer, RouterProcess, free_port, ladder_config

ADMIN = "test-admin-key-0123456789"
STAGE0 = "smollm2-135m"
ASK = [{"role": "user", "content": "Say hi."}]


@pytest.fixture(scope="module")
def routers(stage_ports: list[int], redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RouterProcess]]:
    redis_server.flush()
    tmp = tmp_path_factory.mktemp("tenancy")
    procs = []
    for _ in range(2):
        cfg = ladder_config(stage_ports[:1], free_port())
        cfg["tenancy"] = {"auth": "keys", "redis_url": redis_server.url, "admin_key": ADMIN, "cache_ttl_s": 1.0,
                          "breaker_cooldown_s": 0.5, "sync_interval_s": 0.2}  # fmt: skip
        procs.append(RouterProcess(cfg, Path(tmp)))
    yield procs
    for p in procs:
        p.stop()


def admin(router: RouterProcess, method: str, path: str, **kw: object) -> httpx.Response:
    return httpx.request(method, f"{router.url}{path}", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30, **kw)  # type: ignore[arg-type]


def new_tenant(router: RouterProcess, tid: str, **settings: object) -> str:
    r = admin(router, "POST", "/admin/tenants", json={"id": tid, "settings": settings})
    assert r.status_code == 201, r.text
    return r.json()["api_key"]


def chat(router: RouterProcess, key: str, **kw: object) -> openai.types.chat.ChatCompletion:
    client = openai.OpenAI(base_url=f"{router.url}/v1", api_key=key, max_retries=0, timeout=120)
    return client.chat.completions.create(model=kw.pop("model", STAGE0), messages=ASK, max_tokens=1, temperature=0, **kw)  # type: ignore[arg-type]


def test_missing_and_unknown_keys_get_401(routers: list[RouterProcess]) -> None:
    r = httpx.post(f"{routers[0].url}/v1/chat/completions", json={"model": STAGE0, "messages": ASK})
    assert r.status_code == 401 and r.json()["error"]["param"] == "authorization"
    with pytest.raises(openai.AuthenticationError) as exc:
        chat(routers[0], "asd-not-a-key")
    assert exc.value.body["code"] == "invalid_api_key"  # type: ignore[index]


def test_a_key_created_on_one_replica_works_on_the_other(routers: list[RouterProcess]) -> None:
    key = new_tenant(routers[0], "shared", **{"lambda": 2.5})
    assert chat(routers[1], key).choices[0].message.content is not None
    me = httpx.get(f"{routers[1].url}/v1/tenant", headers={"Authorization": f"Bearer {key}"}).json()
    assert me["id"] == "shared" and me["settings"]["lambda"] == 2.5


def test_tenants_are_isolated(routers: list[RouterProcess]) -> None:
    a = new_tenant(routers[0], "iso-a", **{"lambda": 1.0})
    new_tenant(routers[0], "iso-b", **{"lambda": 99.0})
    me = httpx.get(f"{routers[0].url}/v1/tenant", headers={"Authorization": f"Bearer {a}"}).json()
    assert me["id"] == "iso-a" and "iso-b" not in str(me)
    for method, path in (("GET", "/admin/tenants/iso-b"), ("PATCH", "/admin/tenants/iso-b"), ("GET", "/admin/tenants")):
        r = httpx.request(method, f"{routers[0].url}{path}", headers={"Authorization": f"Bearer {a}"}, json={"lambda": 0})
        assert r.status_code == 401, (method, path)
    assert admin(routers[0], "GET", "/admin/tenants/iso-b").json()["settings"]["lambda"] == 99.0


@pytest.mark.parametrize(
    "body,param",
    [
        ({"id": "Bad Id!"}, "id"),
        ({"id": "ok", "settings": {"lambda": -1}}, "settings.lambda"),
        ({"id": "ok", "settings": {"rpm": "many"}}, "settings.rpm"),
        ({"id": "ok", "settings": {"colour": "blue"}}, "settings.colour"),
        ({"id": "ok", "settings": {"slo": {"metric": "p99", "target": 5}}}, "settings.slo.metric"),
        ({"id": "ok", "settings": {"slo": {"metric": "mean_cost", "target": 0}}}, "settings.slo.target"),
    ],
)
def test_admin_validation_names_the_field(routers: list[RouterProcess], body: dict[str, object], param: str) -> None:
    r = admin(routers[0], "POST", "/admin/tenants", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error" and err["message"]
    assert admin(routers[0], "GET", "/admin/tenants/ok").status_code == 404, "nothing half-created"


def test_admin_needs_the_admin_key_and_patch_validates(routers: list[RouterProcess]) -> None:
    assert httpx.get(f"{routers[0].url}/admin/tenants").status_code == 401
    new_tenant(routers[0], "patched", **{"lambda": 1.0})
    r = admin(routers[0], "PATCH", "/admin/tenants/patched", json={"max_stage": -2})
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_stage"
    assert admin(routers[0], "GET", "/admin/tenants/patched").json()["settings"]["max_stage"] is None
    r = admin(routers[0], "PATCH", "/admin/tenants/patched", json={"allowed_models": ["cascade"]})
    assert r.status_code == 200 and r.json()["settings"]["allowed_models"] == ["cascade"]
    assert admin(routers[0], "POST", "/admin/tenants", json={"id": "patched"}).status_code == 409


def test_allowed_models_is_enforced(routers: list[RouterProcess]) -> None:
    key = new_tenant(routers[0], "casc-only", allowed_models=["cascade"])
    with pytest.raises(openai.PermissionDeniedError) as exc:
        chat(routers[0], key)
    assert exc.value.body["param"] == "model"  # type: ignore[index]


def test_rate_limit_holds_across_two_replicas_under_concurrency(routers: list[RouterProcess]) -> None:
    rpm = 6
    key = new_tenant(routers[0], "limited", rpm=rpm)
    outcomes: list[int] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        r = httpx.post(f"{routers[i % 2].url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                       json={"model": STAGE0, "messages": ASK, "max_tokens": 1}, timeout=120)  # fmt: skip
        with lock:
            outcomes.append(r.status_code)

    t0 = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(40)))
    elapsed = time.monotonic() - t0
    ok = outcomes.count(200)
    refill = int(elapsed * rpm / 60)
    assert outcomes.count(429) + ok == 40, outcomes
    assert rpm <= ok <= rpm + refill, (ok, elapsed)


def test_redis_outage_mid_traffic_fails_no_request_and_recovers(routers: list[RouterProcess], redis_server: RedisServer) -> None:
    key = new_tenant(routers[0], "survivor", **{"lambda": 4.0})
    for r in routers:  # both replicas have seen the key
        chat(r, key)
    failures: list[str] = []
    sent = 0
    stop_at = time.monotonic() + 1.0
    down = False
    restarted = False
    while True:
        now = time.monotonic()
        if not down and now > stop_at:
            redis_server.stop()
            down, down_at = True, now
        if down and not restarted and now > down_at + 3.0:
            health = [httpx.get(f"{r.url}/health").json() for r in routers]
            assert all(h["status"] == "degraded" and h["tenancy"]["state"] == "degraded" for h in health), health
            metrics = httpx.get(f"{routers[0].url}/metrics").text
            assert "adaptive_sd_store_up 0.0" in metrics
            redis_server.start()
            restarted, up_at = True, now
        if restarted and now > up_at + 2.0:
            break
        try:
            chat(routers[sent % 2], key)
        except openai.APIError as exc:
            failures.append(f"{type(exc).__name__}: {exc}")
        sent += 1
    assert sent > 10 and not failures, failures[:3]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if all(httpx.get(f"{r.url}/health").json()["tenancy"]["state"] == "ok" for r in routers):
            break
        chat(routers[0], key)
        time.sleep(0.2)
    health = [httpx.get(f"{r.url}/health").json() for r in routers]
    assert all(h["tenancy"]["state"] == "ok" for h in health), health
    # writes work again, and what was buffered during the outage reached Redis
    assert new_tenant(routers[1], "after-outage")
    # usage reaches Redis every tenancy.sync_interval_s: give the last writes a few intervals, then every request counts
    deadline = time.monotonic() + 5
    while (stats := admin(routers[0], "GET", "/admin/tenants/survivor").json()["stats"])["requests"] < sent and time.monotonic() < deadline:
        time.sleep(0.2)
    assert stats["requests"] >= sent
