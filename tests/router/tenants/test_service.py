"""TenantService over the in-process store: cache, leases and what a request costs in store calls."""

from __future__ import annotations

import pytest

from router.config import TenancyConfig
from router.errors import APIError
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
    svc2, store2 = await _service(TenantSettings(rpm=50))
    admitted = 0
    for _ in range(80):
        try:
            await svc2.authenticate("Bearer k")
            admitted += 1
        except APIError as exc:
            assert exc.status == 429 and exc.headers["Retry-After"]
    assert admitted == 50
