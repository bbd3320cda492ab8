"""The tenant store on a real three-node Redis Cluster, and a router serving tenants from it end to end.

Under Cluster a multi-key command or script fails unless its keys share a slot;
these tests look at where the keys really are: each tenant's in one slot (its
hash tag), the tenants spread over the nodes, and every store operation --
admission, usage, listing, deletion -- working across them.
"""

from __future__ import annotations

import re
import threading
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from router.tenants.model import SLO, TenantSettings, hash_key
from router.tenants.redis_store import RedisStore
from router.tenants.store import SLOState, Usage
from tests.conftest import RouterProcess, free_port, ladder_config
from tests.router.tenants.conftest import ClusterSet

TENANTS = [f"team-{i:02d}" for i in range(24)]
_TAG = re.compile(r"^asd:\{([^}]+)\}:")
MARKERS = {"adm", "rec", "del", "rev"}  # a retried operation's "done" markers, expiring by themselves


@pytest.fixture
async def store(redis_cluster: ClusterSet) -> AsyncIterator[RedisStore]:
    redis_cluster.flush()
    s = RedisStore(redis_cluster.url, timeout_s=1.0)
    yield s
    await s.close()


async def _populate(store: RedisStore) -> None:
    """Every kind of key a tenant owns: settings, keys, both buckets, counters, samples, controller state."""
    for tid in TENANTS:
        await store.create(tid, TenantSettings(rpm=100, tpm=10_000, slo=SLO(metric="p95_latency_ms", target=500)))
        await store.add_key(tid, hash_key(f"key-{tid}"))
        adm = await store.admit(hash_key(f"key-{tid}"), want_settings=True)
        assert adm is not None and adm.tenant_id == tid and adm.allowed
        await store.set_slo_state(tid, SLOState(3.0, 1, 10))
    await store.record([Usage(tid, 50, 12.5, 1.0, "s0", tpm=10_000) for tid in TENANTS for _ in range(3)])


@pytest.mark.anyio
async def test_each_tenant_in_one_slot_and_the_tenants_spread_over_the_nodes(store: RedisStore, redis_cluster: ClusterSet) -> None:
    await _populate(store)
    where: dict[str, set[int]] = defaultdict(set)
    parts: dict[str, set[str]] = defaultdict(set)
    slots: dict[str, set[int]] = defaultdict(set)
    node = redis_cluster.nodes[0].client()
    for port, keys in redis_cluster.keys_by_node().items():
        for key in keys:
            m = _TAG.match(key)
            if m:
                tid = m.group(1)
                where[tid].add(port)
                parts[tid].add(key[m.end() :].split(":")[0])
                slots[tid].add(int(node.cluster("keyslot", key)))
    assert sorted(where) == TENANTS
    assert all(len(ports) == 1 for ports in where.values()), {t: p for t, p in where.items() if len(p) > 1}
    assert all(len(s) == 1 for s in slots.values()), "every key of a tenant hashes to the tenant's slot"
    assert all({"t", "keys", "st", "lat", "cost", "rl", "adm"} <= p for p in parts.values()), parts[TENANTS[0]]
    assert len({next(iter(p)) for p in where.values()}) == 3, "tenants spread over all three nodes"


@pytest.mark.anyio
async def test_listing_stats_and_deletion_across_nodes(store: RedisStore, redis_cluster: ClusterSet) -> None:
    await _populate(store)
    assert await store.list() == TENANTS
    stats = await store.stats(TENANTS[5])
    assert stats["requests"] == 3 and stats["tokens"] == 150 and stats["stops"] == {"s0": 3}
    samples, total = await store.samples(TENANTS[5], "p95_latency_ms")
    assert samples == [12.5, 12.5, 12.5] and total == 3
    gone = TENANTS[::2]
    for tid in gone:
        await store.delete(tid)
    assert await store.list() == TENANTS[1::2]
    left = [k for keys in redis_cluster.keys_by_node().values() for k in keys if not k.split(":")[1].startswith("{")]
    lookups = {k for k in left if k.startswith("asd:key:")}
    assert lookups == {f"asd:key:{hash_key(f'key-{t}')}" for t in TENANTS[1::2]}, "deleted tenants' key lookups are gone"
    owned = {m.group(1) for keys in redis_cluster.keys_by_node().values() for k in keys
             if (m := _TAG.match(k)) and k[m.end():].split(":")[0] not in MARKERS}  # fmt: skip
    assert owned == set(TENANTS[1::2]), "nothing of a deleted tenant is left but its short-lived markers"
    assert await store.admit(hash_key(f"key-{gone[0]}"), want_settings=True) is None
    assert await store.revoke_keys(TENANTS[1]) == 1
    assert await store.admit(hash_key(f"key-{TENANTS[1]}"), want_settings=True) is None
    assert await store.migrate() == 0, "a Cluster never had the old layout"


@pytest.mark.anyio
async def test_a_fresh_cluster_gets_the_scripts_on_first_use(store: RedisStore, redis_cluster: ClusterSet) -> None:
    await store.create("fresh", TenantSettings(rpm=5))
    for n in redis_cluster.nodes:
        n.client().script_flush()
    await store.add_key("fresh", hash_key("k"))
    results = [await store.admit(hash_key("k"), want_settings=False) for _ in range(7)]
    assert [r.allowed for r in results if r] == [True] * 5 + [False] * 2


# -- end to end: a router on the cluster ---------------------------------------------------------------

ADMIN = "cluster-admin-key-0123456789"
STAGE0 = "smollm2-135m"
ASK = [{"role": "user", "content": "Say hi."}]


@pytest.fixture(scope="module")
def cluster_router(stage_ports: list[int], redis_cluster: ClusterSet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    redis_cluster.flush()
    cfg = ladder_config(stage_ports[:1], free_port())
    cfg["tenancy"] = {"auth": "keys", "redis_url": redis_cluster.url, "admin_key": ADMIN, "cache_ttl_s": 1.0, "sync_interval_s": 0.2}
    proc = RouterProcess(cfg, Path(tmp_path_factory.mktemp("cluster-router")))
    yield proc
    proc.stop()


def _admin(router: RouterProcess, method: str, path: str, **kw: object) -> httpx.Response:
    return httpx.request(method, f"{router.url}{path}", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30, **kw)  # type: ignore[arg-type]


def test_router_on_a_cluster_serves_tenants_end_to_end(cluster_router: RouterProcess, redis_cluster: ClusterSet) -> None:
    keys = {}
    for tid, settings in (("alpha", {"lambda": 2.0}), ("beta", {"rpm": 3}), ("gamma", {"allowed_models": ["cascade"]})):
        r = _admin(cluster_router, "POST", "/admin/tenants", json={"id": tid, "settings": settings})
        assert r.status_code == 201, r.text
        keys[tid] = r.json()["api_key"]
    assert _admin(cluster_router, "GET", "/admin/tenants").json()["data"] == ["alpha", "beta", "gamma"]
    health = httpx.get(f"{cluster_router.url}/health").json()
    assert health["tenancy"]["store"] == "redis" and health["tenancy"]["state"] == "ok", health

    def chat(tid: str) -> int:
        return httpx.post(f"{cluster_router.url}/v1/chat/completions", headers={"Authorization": f"Bearer {keys[tid]}"},
                          json={"model": STAGE0, "messages": ASK, "max_tokens": 1}, timeout=120).status_code  # fmt: skip

    assert chat("alpha") == 200
    assert chat("gamma") == 403, "allowed_models read from the cluster"
    lock = threading.Lock()
    codes: list[int] = []

    def limited(_: int) -> None:
        code = chat("beta")
        with lock:
            codes.append(code)

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(limited, range(8)))
    assert codes.count(200) == 3 and codes.count(429) == 5, codes
    me = httpx.get(f"{cluster_router.url}/v1/tenant", headers={"Authorization": f"Bearer {keys['alpha']}"}).json()
    assert me["id"] == "alpha" and me["settings"]["lambda"] == 2.0
    homes = {tid: {p for p, ks in redis_cluster.keys_by_node().items() if any(k.startswith(f"asd:{{{tid}}}:") for k in ks)}
             for tid in keys}  # fmt: skip
    assert all(len(h) == 1 for h in homes.values()), homes
    assert _admin(cluster_router, "DELETE", "/admin/tenants/beta").status_code == 200
    assert chat("beta") == 401
