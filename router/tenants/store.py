"""Where tenants live: the interface, a token bucket, and the in-process store.

Both stores implement the same semantics: a key hash resolves to a tenant;
admission applies the tenant's request and token buckets atomically (capacity
= the per-minute limit, refilled continuously); usage is recorded in batches
(token charges, counters, recent latency and cost samples). ``MemoryStore``
serves a single replica (the embedded default, no Redis); ``RedisStore``
shares all of it between replicas.
"""

from __future__ import annotations

import builtins
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from router.tenants.model import Admission, TenantSettings

SAMPLE_WINDOW = 500  # recent latency/cost samples kept per tenant
BUCKET_PERIOD_MS = 60_000


@dataclass(frozen=True)
class Usage:
    """One finished request, as recorded (batched) after the response."""

    tenant_id: str
    tokens: int
    latency_ms: float
    cost: float
    stage: str
    tpm: int = 0


@dataclass
class SLOState:
    """The controller's memory, shared by replicas: λ, how many updates, the request count at the last one."""

    lam: float
    updates: int = 0
    seen: int = 0


class TenantExists(ValueError):
    pass


class UnknownTenant(KeyError):
    pass


class TenantStore(Protocol):
    kind: str

    async def ping(self) -> None: ...
    async def admit(self, key_hash: str, want_settings: bool, lease: int = 1) -> Admission | None: ...
    async def create(self, tenant_id: str, settings: TenantSettings) -> None: ...
    async def get(self, tenant_id: str) -> TenantSettings: ...
    async def put(self, tenant_id: str, settings: TenantSettings) -> None: ...
    async def delete(self, tenant_id: str) -> None: ...
    async def list(self) -> list[str]: ...
    async def add_key(self, tenant_id: str, key_hash: str) -> None: ...
    async def revoke_keys(self, tenant_id: str) -> int: ...
    async def record(self, batch: builtins.list[Usage]) -> None: ...
    async def stats(self, tenant_id: str) -> dict[str, object]: ...
    async def samples(self, tenant_id: str, metric: str) -> tuple[builtins.list[float], int]: ...
    async def slo_state(self, tenant_id: str) -> SLOState | None: ...
    async def set_slo_state(self, tenant_id: str, state: SLOState) -> None: ...
    async def try_lock(self, name: str, ttl_ms: int) -> bool: ...
    async def migrate(self) -> int: ...
    async def close(self) -> None: ...


@dataclass
class Bucket:
    """Continuous token bucket: ``capacity`` per minute, full at first use."""

    capacity: float
    level: float = math.nan
    stamp_ms: float = 0.0

    def refill(self, now_ms: float) -> float:
        if math.isnan(self.level):
            self.level, self.stamp_ms = self.capacity, now_ms
        self.level = min(self.capacity, self.level + (now_ms - self.stamp_ms) * self.capacity / BUCKET_PERIOD_MS)
        self.stamp_ms = now_ms
        return self.level

    def retry_ms(self, need: float) -> int:
        return math.ceil((need - self.level) * BUCKET_PERIOD_MS / self.capacity)


def admit_buckets(rpm: int, tpm: int, req: Bucket | None, tok: Bucket | None, now_ms: float, lease: int = 1) -> tuple[bool, int, str, int]:
    """The admission rule (the Lua script in ``redis_store`` is the same rule).

    The token bucket must be above 0; a request takes 1 from the request
    bucket, or up to ``lease`` when the caller wants a lease (it then admits
    the extra ones itself). Returns (allowed, retry_after_ms, limit, granted).
    """
    if tpm > 0 and tok is not None and tok.refill(now_ms) <= 0:
        return False, tok.retry_ms(1), "tpm", 0
    granted = lease
    if rpm > 0 and req is not None:
        level = req.refill(now_ms)
        if level < 1:
            return False, req.retry_ms(1), "rpm", 0
        granted = max(1, min(lease, int(level)))
        req.level -= granted
    return True, 0, "", granted


@dataclass
class _Tenant:
    settings: TenantSettings
    keys: set[str] = field(default_factory=set)
    req: Bucket = field(default_factory=lambda: Bucket(0))
    tok: Bucket = field(default_factory=lambda: Bucket(0))
    counters: dict[str, int] = field(default_factory=dict)
    latency: deque[float] = field(default_factory=lambda: deque(maxlen=SAMPLE_WINDOW))
    cost: deque[float] = field(default_factory=lambda: deque(maxlen=SAMPLE_WINDOW))
    slo: SLOState | None = None


class MemoryStore:
    """In-process store for a single replica; nothing survives a restart."""

    kind = "memory"

    def __init__(self) -> None:
        self._tenants: dict[str, _Tenant] = {}
        self._keys: dict[str, str] = {}
        self._locks: dict[str, float] = {}

    def _t(self, tenant_id: str) -> _Tenant:
        try:
            return self._tenants[tenant_id]
        except KeyError:
            raise UnknownTenant(tenant_id) from None

    async def ping(self) -> None:
        return None

    async def admit(self, key_hash: str, want_settings: bool, lease: int = 1) -> Admission | None:
        tid = self._keys.get(key_hash)
        if tid is None:
            return None
        t = self._tenants[tid]
        s = t.settings
        t.req.capacity, t.tok.capacity = s.rpm, s.tpm
        ok, retry, which, granted = admit_buckets(s.rpm, s.tpm, t.req, t.tok, time.monotonic() * 1e3, lease)
        return Admission(tid, s if want_settings else None, t.slo.lam if t.slo else None, ok, retry, which, granted)

    async def create(self, tenant_id: str, settings: TenantSettings) -> None:
        if tenant_id in self._tenants:
            raise TenantExists(tenant_id)
        self._tenants[tenant_id] = _Tenant(settings)

    async def get(self, tenant_id: str) -> TenantSettings:
        return self._t(tenant_id).settings

    async def put(self, tenant_id: str, settings: TenantSettings) -> None:
        t = self._t(tenant_id)
        if t.settings.slo != settings.slo:
            t.slo = None
        t.settings = settings

    async def delete(self, tenant_id: str) -> None:
        t = self._tenants.pop(tenant_id, None)
        if t is None:
            raise UnknownTenant(tenant_id)
        for k in t.keys:
            self._keys.pop(k, None)

    async def list(self) -> list[str]:
        return sorted(self._tenants)

    async def add_key(self, tenant_id: str, key_hash: str) -> None:
        self._t(tenant_id).keys.add(key_hash)
        self._keys[key_hash] = tenant_id

    async def revoke_keys(self, tenant_id: str) -> int:
        t = self._t(tenant_id)
        for k in t.keys:
            self._keys.pop(k, None)
        n = len(t.keys)
        t.keys.clear()
        return n

    async def record(self, batch: builtins.list[Usage]) -> None:
        now = time.monotonic() * 1e3
        for u in batch:
            t = self._tenants.get(u.tenant_id)
            if t is None:
                continue
            if u.tpm > 0:
                t.tok.capacity = u.tpm
                t.tok.refill(now)
                t.tok.level -= u.tokens
            for name, inc in (("requests", 1), ("tokens", u.tokens), (f"stop:{u.stage}", 1)):
                t.counters[name] = t.counters.get(name, 0) + inc
            t.latency.append(u.latency_ms)
            t.cost.append(u.cost)

    async def stats(self, tenant_id: str) -> dict[str, object]:
        t = self._t(tenant_id)
        return summarize(dict(t.counters), list(t.latency), list(t.cost))

    async def samples(self, tenant_id: str, metric: str) -> tuple[builtins.list[float], int]:
        t = self._t(tenant_id)
        window = t.latency if metric == "p95_latency_ms" else t.cost
        return list(reversed(window)), t.counters.get("requests", 0)

    async def slo_state(self, tenant_id: str) -> SLOState | None:
        return self._t(tenant_id).slo

    async def set_slo_state(self, tenant_id: str, state: SLOState) -> None:
        if tenant_id in self._tenants:
            self._tenants[tenant_id].slo = state

    async def try_lock(self, name: str, ttl_ms: int) -> bool:
        now = time.monotonic() * 1e3
        if self._locks.get(name, 0.0) > now:
            return False
        self._locks[name] = now + ttl_ms
        return True

    async def migrate(self) -> int:
        """Nothing to upgrade: nothing outlives the process."""
        return 0

    async def close(self) -> None:
        return None


def percentile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def summarize(counters: dict[str, int], latency: list[float], cost: list[float]) -> dict[str, object]:
    """The per-tenant stats object: counters plus recent latency and cost figures."""
    stops = {k.split(":", 1)[1]: v for k, v in counters.items() if k.startswith("stop:")}
    return {
        "requests": counters.get("requests", 0),
        "tokens": counters.get("tokens", 0),
        "stops": stops,
        "recent": {
            "n": len(latency),
            "latency_ms_p50": percentile(latency, 0.5),
            "latency_ms_p95": percentile(latency, 0.95),
            "mean_cost": sum(cost) / len(cost) if cost else None,
        },
    }
