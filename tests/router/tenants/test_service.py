"""TenantService over the in-process store: cache, leases and what a request costs in store calls."""

from __future__ import annotations

import pytest

from common.errors import APIError
from common.settings import TenancyConfig
from router.tenants.model import TenantSettings, hash_key
from router.tenants.service import TenantService
from router.tenants.store import MemoryStore

pytestmark = pytest.mark.anyio


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.admits = 0

    async def admit(self, key_hash: str, want_settings: bool, lease: int = 1):  # type: ignore[no-untyped-def]
        self.admits += 1
        return await super().admit(key_hash, want_settings, lease)


async def _service(settings: TenantSettings, **cfg: object) -> tuple[TenantService, CountingStore]:
    store = CountingStore()
    await store.create("t", settings)
    await store.add_key("t", hash_key("k"))
    return TenantService(TenancyConfig(auth="keys", **cfg), store=store), store  # type: ignore[arg-type]


async def test_unlimited_tenant_costs_no_store_call_while_cached() -> None:
    svc, store = await _service(TenantSettings(**{"lambda": 2.0}))
    for _ in range(50):
        assert (await svc.authenticate("Bearer k")).id == "t"
    assert store.admits == 1


async def test_leases_cut_round_trips_and_keep_the_limit() -> None:
    svc, store = await _service(TenantSettings(rpm=600), lease_s=1.0)  # lease: 10 requests per round trip
    for _ in range(100):
        await svc.authenticate("Bearer k")
    assert store.admits == 11  # the first call does not know the limit yet (lease 1), then 10 per round trip
    svc2, _ = await _service(TenantSettings(rpm=50))
    admitted = 0
    for _ in range(80):
        try:
            await svc2.authenticate("Bearer k")
            admitted += 1
        except APIError as exc:
            assert exc.status == 429 and exc.headers["Retry-After"]
    assert admitted == 50


async def test_slo_tenant_lambda_follows_observed_latency_through_the_service() -> None:
    """The service's controller loop: usage recorded -> samples in the store -> λ updated and served."""
    import math

    from router.tenants.model import SLO

    svc, store = await _service(
        TenantSettings(slo=SLO(metric="p95_latency_ms", target=1000.0)), slo_initial_lambda=200.0, sync_interval_s=0.01
    )
    lams = []
    for _ in range(150):
        tenant = await svc.authenticate("Bearer k")
        lam = svc.lam_for(tenant)
        lams.append(lam)
        latency = 300 + 1500 / (1 + math.exp(-(math.log(lam) - 1.5)))  # the system: more λ, slower
        for _ in range(25):
            svc.record(tenant, tokens=10, latency_ms=latency, cost=1.0, stage="s0")
        await svc.flush()
        store._locks.clear()  # the lock only spaces real-time steps; this loop is simulated time
        await svc.run_controllers()
        svc.forget("t")  # next request reads the new λ (a replica would after cache_ttl_s)
    final = lams[-1]
    achieved = 300 + 1500 / (1 + math.exp(-(math.log(final) - 1.5)))
    assert lams[0] == 200.0 and abs(achieved / 1000.0 - 1) < 0.05, (final, achieved)
    state = await store.slo_state("t")
    assert state is not None and state.updates > 10


async def test_unknown_keys_are_remembered_briefly() -> None:
    svc, store = await _service(TenantSettings())
    for _ in range(20):
        with pytest.raises(APIError) as exc:
            await svc.authenticate("Bearer not-a-key")
        assert exc.value.status == 401
    assert store.admits == 1, "one store lookup, then the negative cache answers"
    open_svc = TenantService(TenancyConfig(auth="open"), store=store)
    for _ in range(20):
        assert (await open_svc.authenticate("Bearer sdk-placeholder")).id == "default"
    assert store.admits == 2
