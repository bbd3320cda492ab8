"""Every store, same behaviour: the in-process one and real Redis as one server, behind Sentinel, and as a Cluster."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import pytest
import redis

from common.settings import TenancyConfig
from router.tenants.model import SLO, TenantSettings, hash_key
from router.tenants.redis_store import RedisStore
from router.tenants.service import TenantService
from router.tenants.store import MemoryStore, SLOState, TenantExists, TenantStore, UnknownTenant, Usage
from tests.conftest import RedisServer
from tests.router.tenants.conftest import ClusterSet, SentinelSet

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["memory", *(pytest.param(kind, marks=pytest.mark.redis) for kind in ("redis", "sentinel", "cluster"))])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[TenantStore]:
    if request.param == "memory":
        yield MemoryStore()
        return
    server: RedisServer | SentinelSet | ClusterSet = request.getfixturevalue(
        {"redis": "redis_server", "sentinel": "redis_sentinel", "cluster": "redis_cluster"}[request.param]
    )
    if isinstance(server, SentinelSet):
        server.current_master().client().flushall()
    else:
        server.flush()
    s = RedisStore(server.url, timeout_s=1.0)
    yield s
    await s.close()


async def test_lifecycle_keys_and_isolation(store: TenantStore) -> None:
    await store.create("a", TenantSettings(**{"lambda": 3.0}))
    await store.create("b", TenantSettings(max_stage=1))
    with pytest.raises(TenantExists):
        await store.create("a", TenantSettings())
    await store.add_key("a", hash_key("key-a"))
    await store.add_key("b", hash_key("key-b"))
    adm = await store.admit(hash_key("key-a"), want_settings=True)
    assert adm is not None and adm.tenant_id == "a" and adm.allowed and adm.settings.lambda_ == 3.0
    adm = await store.admit(hash_key("key-b"), want_settings=False)
    assert adm is not None and adm.tenant_id == "b" and adm.settings is None
    assert await store.admit(hash_key("nope"), want_settings=True) is None
    await store.put("a", TenantSettings(**{"lambda": 7.0}))
    assert (await store.get("a")).lambda_ == 7.0
    assert await store.list() == ["a", "b"]
    assert await store.revoke_keys("a") == 1
    assert await store.admit(hash_key("key-a"), want_settings=True) is None
    await store.delete("b")
    assert await store.admit(hash_key("key-b"), want_settings=True) is None
    with pytest.raises(UnknownTenant):
        await store.get("b")


async def test_concurrent_admissions_never_exceed_the_request_limit(store: TenantStore) -> None:
    await store.create("t", TenantSettings(rpm=10))
    await store.add_key("t", hash_key("k"))
    results = await asyncio.gather(*(store.admit(hash_key("k"), want_settings=False) for _ in range(60)))
    allowed = [r for r in results if r.allowed]
    assert len(allowed) == 10
    refused = [r for r in results if not r.allowed]
    assert all(r.limit == "rpm" and r.retry_after_ms > 0 for r in refused)


async def test_token_limit_refuses_after_usage_is_charged(store: TenantStore) -> None:
    await store.create("t", TenantSettings(tpm=1000))
    await store.add_key("t", hash_key("k"))
    assert (await store.admit(hash_key("k"), False)).allowed
    await store.record([Usage("t", 1500, 12.0, 1.5, "s0", tpm=1000)])
    adm = await store.admit(hash_key("k"), False)
    assert not adm.allowed and adm.limit == "tpm" and adm.retry_after_ms > 0
    stats = await store.stats("t")
    assert stats["requests"] == 1 and stats["tokens"] == 1500 and stats["stops"] == {"s0": 1}


async def test_slo_state_and_samples(store: TenantStore) -> None:
    await store.create("t", TenantSettings(slo=SLO(metric="p95_latency_ms", target=500)))
    assert await store.slo_state("t") is None
    await store.set_slo_state("t", SLOState(4.5, 2, 40))
    assert await store.slo_state("t") == SLOState(4.5, 2, 40)
    await store.record([Usage("t", 10, float(i), 1.0, "s0") for i in range(5)])
    samples, total = await store.samples("t", "p95_latency_ms")
    assert samples == [4.0, 3.0, 2.0, 1.0, 0.0] and total == 5
    assert await store.try_lock("x", 5000) and not await store.try_lock("x", 5000)
    await store.put("t", TenantSettings(slo=SLO(metric="mean_cost", target=2)))
    assert await store.slo_state("t") is None, "a new target restarts the controller"


async def test_leases_never_take_more_than_the_bucket_holds(store: TenantStore) -> None:
    await store.create("t", TenantSettings(rpm=100))
    await store.add_key("t", hash_key("k"))
    grants = [await store.admit(hash_key("k"), False, lease=30) for _ in range(5)]
    assert [g.granted for g in grants[:4]] == [30, 30, 30, 10] and all(g.allowed for g in grants[:4])
    assert not grants[4].allowed and grants[4].granted == 0


async def test_keys_of_the_layout_before_hash_tags_are_migrated_at_start_up(redis_server: RedisServer) -> None:
    """A tenant written by an earlier version (asd:t:<id>, asd:rl:<id>:r, ...) keeps its settings, key, bucket and history."""
    redis_server.flush()
    r = redis.Redis.from_url(redis_server.url)
    h = hash_key("legacy-key")
    r.sadd("asd:tenants", "legacy")
    r.hset("asd:t:legacy", mapping={"settings": TenantSettings(rpm=5).model_dump_json(by_alias=True), "rpm": 5, "tpm": 0,
                                    "lambda": "3.5", "slo_updates": 2, "slo_seen": 40})  # fmt: skip
    r.sadd("asd:keys:legacy", h)
    r.set(f"asd:key:{h}", "legacy")
    r.hset("asd:st:legacy", mapping={"requests": 7, "tokens": 70, "stop:s0": 7})
    r.lpush("asd:lat:legacy", "10.000")
    r.lpush("asd:cost:legacy", "1.000")
    seconds, micros = r.time()
    r.hset("asd:rl:legacy:r", mapping={"v": "2", "ts": seconds * 1000 + micros // 1000})  # 3 of 5 requests already taken
    store = RedisStore(redis_server.url, timeout_s=1.0)
    try:
        assert await store.admit(h, want_settings=True) is None, "the new layout does not read the old names"
        service = TenantService(TenancyConfig(redis_url=redis_server.url), store=store)
        await service.start()  # migrates
        assert not [k for k in r.keys("asd:*") if re.match(rb"asd:(t|keys|st|lat|cost|rl):", k)], "nothing left under old names"
        assert await store.migrate() == 0, "idempotent"
        assert await store.list() == ["legacy"]
        grants = [await store.admit(h, want_settings=True) for _ in range(3)]
        assert [g.allowed for g in grants if g] == [True, True, False], "the bucket's state came along"
        assert grants[0] is not None and grants[0].settings == TenantSettings(rpm=5) and grants[0].lam == 3.5
        assert await store.slo_state("legacy") == SLOState(3.5, 2, 40)
        stats = await store.stats("legacy")
        assert stats["requests"] == 7 and stats["tokens"] == 70 and stats["recent"]["n"] == 1  # type: ignore[index]
        await service.close()
    finally:
        await store.close()
