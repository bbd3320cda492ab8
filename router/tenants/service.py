"""What a request sees of tenancy: authentication, cached settings, admission, accounting.

Per request: the key's hash is looked up in a short-lived in-process cache;
a tenant with no rate limits and fresh cached settings costs no Redis round
trip at all; a rate-limited tenant one per lease of its budget (``lease_s``),
and a cache miss one (the admission script, which also refreshes stale
settings). Usage is buffered and written in batches by a
background task, which also runs the SLO controllers (one replica at a time
per tenant, by a Redis lock).

A failover (Sentinel, Cluster) is not a failure: the store retries its
idempotent operations while the new master takes over (up to the URL's
``failover_wait_s``), so requests wait instead of falling back; under
Sentinel no admission is lost or counted twice (``redis_connect``). The
breaker only sees a store call that failed for longer than that.

Redis failure -- what fails open and what fails closed:
* known keys keep working with their last cached settings (fail open), and
  rate limits fall back to per-replica buckets with the same limits (so N
  replicas may admit up to N x the limit while Redis is down);
* keys this replica has never seen get 503 (fail closed: they cannot be checked);
  in open mode they are served as the default tenant, as always;
* the admin API answers 503 (fail closed: no change can be stored);
* usage is kept in a bounded buffer and written when Redis is back; SLO
  controllers hold their λ.
A circuit breaker skips Redis during the outage, ``/health`` and
``adaptive_sd_store_up`` report it, and the first successful probe after the
cool-down restores normal service without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from common import defaults
from common.errors import APIError
from common.settings import QualityTarget, TenancyConfig
from router.metrics import STORE_ERRORS, STORE_UP, TENANT_LAMBDA, TENANT_OBSERVED
from router.tenants import slo
from router.tenants.breaker import CircuitBreaker
from router.tenants.model import Admission, Tenant, TenantSettings, hash_key
from router.tenants.store import Bucket, MemoryStore, SLOState, TenantStore, Usage, admit_buckets

log = logging.getLogger("adaptive_sd.tenants")
DEFAULT_TENANT = "default"
BUFFER_LIMIT = 10_000
DEFAULT_CONTROLLER = slo.ControllerConfig()
T = TypeVar("T")


@dataclass
class _Cached:
    tenant_id: str
    settings: TenantSettings
    lam: float | None
    expires: float
    req: Bucket
    tok: Bucket
    lease_left: int = 0  # request tokens already taken from the shared bucket, admitted here without a round trip
    lease_until: float = 0.0


def bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def make_store(cfg: TenancyConfig) -> TenantStore:
    """The shared Redis store when ``redis_url`` is set (a malformed URL raises ``RedisURLError`` here, at start-up)."""
    if cfg.redis_url:
        from router.tenants.redis_store import RedisStore

        return RedisStore(cfg.redis_url, timeout_s=cfg.redis_timeout_s)
    return MemoryStore()


class TenantService:
    def __init__(
        self,
        cfg: TenancyConfig,
        default_lambda: float = defaults.LAMBDA,
        store: TenantStore | None = None,
        controller: slo.ControllerConfig = DEFAULT_CONTROLLER,
        default_target: QualityTarget | None = None,
    ) -> None:
        self.cfg = cfg
        self.default_lambda = default_lambda
        self.default_target = default_target  # cascade.default_target: the default λ from the model's table
        self.store = store or make_store(cfg)
        self.breaker = CircuitBreaker(cfg.breaker_failures, cfg.breaker_cooldown_s)
        self.controller = controller
        # a tenant's quality target as a λ (the predictor's calibration table; router.targets); None: targets unused
        self.target_lambda: Callable[[QualityTarget, float], float] | None = None
        self._cache: dict[str, _Cached] = {}
        self._unknown: dict[str, float] = {}  # key hash -> until when "no such key" is trusted (cache_ttl_s)
        self._buffer: deque[Usage] = deque(maxlen=BUFFER_LIMIT)
        self._slo_tenants: dict[str, TenantSettings] = {}
        self._task: asyncio.Task[None] | None = None
        self.default = Tenant(DEFAULT_TENANT, TenantSettings(), None)
        self._up = True
        self._migrated = False
        STORE_UP.set(1)

    # -- lifecycle ------------------------------------------------------------
    async def start(self) -> None:
        await self.migrate()
        self._task = asyncio.create_task(self._sync_loop())

    async def migrate(self) -> None:
        """Bring keys of an older layout up to date (``RedisStore.migrate``); retried by the sync loop until it ran."""
        ok, moved = await self._guarded(self.store.migrate())
        if ok:
            self._migrated = True
            if moved:
                log.warning("tenant store: renamed %d keys of the previous layout", moved)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()
        await self.store.close()

    @property
    def degraded(self) -> bool:
        return self.breaker.state != "closed"

    def health(self) -> dict[str, object]:
        return {
            "store": self.store.kind,
            "state": "degraded" if self.degraded else "ok",
            "breaker": self.breaker.state,
            "buffered_usage": len(self._buffer),
        }

    # -- store calls through the breaker --------------------------------------
    async def _guarded(self, coro: Coroutine[Any, Any, T]) -> tuple[bool, T | None]:
        """(ok, result); on failure (result None) the breaker counts it and the caller falls back."""
        if not self.breaker.allow():
            coro.close()
            return False, None
        try:
            result = await coro
        except Exception as exc:
            self.breaker.failure()
            STORE_ERRORS.inc()
            self._up = False
            STORE_UP.set(0)
            log.warning("tenant store error (%s): %s", type(exc).__name__, exc)
            return False, None
        if not self._up:
            log.warning("tenant store reachable again")
            self._up = True
            STORE_UP.set(1)
        self.breaker.success()
        return True, result

    # -- per request ----------------------------------------------------------
    async def authenticate(self, authorization: str | None) -> Tenant:
        key = bearer(authorization)
        open_mode = self.cfg.auth == "open"
        if key is None:
            if open_mode:
                return self.default
            raise APIError(
                401,
                "Missing API key: send 'Authorization: Bearer <key>'",
                type="invalid_request_error",
                param="authorization",
                code="invalid_api_key",
            )
        h = hash_key(key)
        now = time.monotonic()
        if self._unknown.get(h, 0.0) > now:  # a key the store just said it does not know: no round trip
            return self._unknown_key(open_mode)
        cached = self._cache.get(h)
        fresh = cached is not None and cached.expires > now
        if cached is not None and fresh:
            if not (cached.settings.rpm or cached.settings.tpm):
                return Tenant(cached.tenant_id, cached.settings, cached.lam)
            if cached.lease_left > 0 and now < cached.lease_until:
                cached.lease_left -= 1
                return Tenant(cached.tenant_id, cached.settings, cached.lam)
        lease = self._lease_size(cached.settings.rpm) if cached is not None else 1
        ok, adm = await self._guarded(self.store.admit(h, want_settings=not fresh, lease=lease))
        if ok:
            if adm is None:
                self._cache.pop(h, None)
                if len(self._unknown) > BUFFER_LIMIT:  # bounded: a flood of random keys cannot grow it
                    self._unknown.clear()
                self._unknown[h] = now + self.cfg.cache_ttl_s
                return self._unknown_key(open_mode)
            cached = self._remember(h, adm, cached, now)
            if not adm.allowed:
                cached.lease_left = 0
                self._refuse(adm.limit, adm.retry_after_ms)
            cached.lease_left, cached.lease_until = adm.granted - 1, now + self.cfg.lease_s
            return Tenant(cached.tenant_id, cached.settings, cached.lam)
        # the store is unreachable: last known settings, per-replica limits
        if cached is None:
            if open_mode:
                return self.default
            raise APIError(
                503,
                "Cannot verify the API key: the tenant store is unavailable; retry shortly",
                type="service_unavailable",
                code="store_unavailable",
            )
        s = cached.settings
        cached.req.capacity, cached.tok.capacity = s.rpm, s.tpm
        allowed, retry, which, _ = admit_buckets(s.rpm, s.tpm, cached.req, cached.tok, now * 1e3)
        if not allowed:
            self._refuse(which, retry)
        return Tenant(cached.tenant_id, s, cached.lam)

    def _lease_size(self, rpm: int) -> int:
        """Request tokens to take per round trip: what the bucket refills in ``lease_s``, at most 10% of it."""
        if rpm <= 0 or self.cfg.lease_s <= 0:
            return 1
        return max(1, min(int(rpm * self.cfg.lease_s / 60), rpm // 10))

    def _unknown_key(self, open_mode: bool) -> Tenant:
        if open_mode:
            return self.default
        raise APIError(401, "Incorrect API key provided", type="invalid_request_error", param="authorization", code="invalid_api_key")

    def _remember(self, h: str, adm: Admission, cached: _Cached | None, now: float) -> _Cached:
        settings = adm.settings or (cached.settings if cached else TenantSettings())
        if cached is None:
            cached = _Cached(adm.tenant_id, settings, adm.lam, 0.0, Bucket(settings.rpm), Bucket(settings.tpm))
            self._cache[h] = cached
        cached.tenant_id, cached.settings, cached.lam = adm.tenant_id, settings, adm.lam
        if adm.settings is not None:
            cached.expires = now + self.cfg.cache_ttl_s
        if settings.slo is not None:
            self._slo_tenants[adm.tenant_id] = settings
        else:
            self._slo_tenants.pop(adm.tenant_id, None)
        if adm.lam is not None:
            TENANT_LAMBDA.labels(adm.tenant_id).set(adm.lam)
        return cached

    @staticmethod
    def _refuse(limit: str, retry_ms: int) -> None:
        seconds = max(1, -(-retry_ms // 1000))
        what = "requests" if limit == "rpm" else "tokens"
        raise APIError(429, f"Rate limit reached for {what} per minute ({limit}); retry in {seconds} s", type="rate_limit_error",
                       param=limit, code="rate_limit_exceeded", headers={"Retry-After": str(seconds)})  # fmt: skip

    def lam_for_settings(self, settings: TenantSettings, controlled: float | None) -> float:
        """λ in force: the controller's for an SLO tenant, else the tenant's own, else the router default."""
        if settings.slo is not None and controlled is not None:
            return controlled
        if settings.lambda_ is not None:
            return settings.lambda_
        if settings.slo is not None:
            return self.cfg.slo_initial_lambda
        if settings.target is not None and self.target_lambda is not None:  # unmet: what it would have had without one
            return self.target_lambda(settings.target, self.lam_default())
        return self.lam_default()

    def lam_default(self) -> float:
        """The router's default λ: ``cascade.default_target`` looked up in the table of the model in service (a new
        model brings its own), else ``cascade.default_lambda``."""
        if self.default_target is not None and self.target_lambda is not None:
            return self.target_lambda(self.default_target, self.default_lambda)
        return self.default_lambda

    def lam_for(self, tenant: Tenant) -> float:
        return self.lam_for_settings(tenant.settings, tenant.lam)

    def key_added(self, key_hash: str) -> None:
        """A key created on this replica is usable here at once (other replicas within cache_ttl_s)."""
        self._unknown.pop(key_hash, None)

    def forget(self, tenant_id: str) -> None:
        """Drop cached entries of a tenant after an admin change (other replicas expire theirs within cache_ttl_s)."""
        for h in [h for h, c in self._cache.items() if c.tenant_id == tenant_id]:
            del self._cache[h]
        self._slo_tenants.pop(tenant_id, None)

    def record(self, tenant: Tenant, tokens: int, latency_ms: float, cost: float, stage: str) -> None:
        if tenant.id == DEFAULT_TENANT and tenant is self.default:
            return
        self._buffer.append(Usage(tenant.id, tokens, latency_ms, cost, stage, tenant.settings.tpm))

    # -- background -------------------------------------------------------------
    async def flush(self) -> None:
        if not self._buffer:
            return
        batch = list(self._buffer)
        self._buffer.clear()
        ok, _ = await self._guarded(self.store.record(batch))
        if not ok:  # keep it for later, newest wins if the buffer fills
            self._buffer.extendleft(reversed(batch[-(BUFFER_LIMIT - len(self._buffer)) :]))

    async def run_controllers(self) -> None:
        for tid, settings in list(self._slo_tenants.items()):
            target = settings.slo
            if target is None:
                continue
            ok, locked = await self._guarded(self.store.try_lock(f"slo:{tid}", int(self.cfg.sync_interval_s * 1000 * 0.9)))
            if not ok or not locked:
                continue
            ok, state = await self._guarded(self.store.slo_state(tid))
            if not ok:
                continue
            if state is None:
                start = settings.lambda_ if settings.lambda_ is not None else self.cfg.slo_initial_lambda
                state = SLOState(start, 0, 0)
            ok, res = await self._guarded(self.store.samples(tid, target.metric))
            if not ok or res is None:
                continue
            samples, total = res
            new = slo.update(state, target, samples, total, self.controller)
            if new is None:
                if state.updates == 0 and state.seen == 0:
                    await self._guarded(self.store.set_slo_state(tid, state))
                continue
            observed = slo.observe(target, samples[: max(1, total - state.seen)])
            if observed is not None:
                TENANT_OBSERVED.labels(tid, target.metric).set(observed)
            TENANT_LAMBDA.labels(tid).set(new.lam)
            await self._guarded(self.store.set_slo_state(tid, new))

    async def _sync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.sync_interval_s)
            try:
                if self.breaker.state == "half-open" and not self._buffer:
                    await self._guarded(self.store.ping())
                if not self._migrated:
                    await self.migrate()
                await self.flush()
                await self.run_controllers()
            except Exception:  # never let the loop die
                log.exception("tenant sync loop")
