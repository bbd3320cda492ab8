"""Tenants in Redis, shared by every router replica.

Admission is one Lua script (one round trip, atomic): resolve the key hash,
read the tenant's limits, refill and take from its buckets, and -- only when
the replica's cached settings are stale -- return the settings too. Because
the script runs atomically on the Redis server, concurrent requests on any
number of replicas can never take more than the bucket holds. Bucket time is
Redis's own clock (``TIME``), so replica clock skew does not matter.

The script touches keys it derives from the tenant id, which a single Redis
(or a primary with replicas) allows; Redis Cluster would need hash tags.
"""

from __future__ import annotations

import builtins
from typing import Any

import redis.asyncio as aioredis

from router.tenants.model import Admission, TenantSettings
from router.tenants.store import SAMPLE_WINDOW, SLOState, TenantExists, UnknownTenant, Usage, summarize

PREFIX = "asd:"
BUCKET_TTL_MS = 120_000

_BUCKET = """
local function level(key, cap, now)
  local b = redis.call('HMGET', key, 'v', 'ts')
  local v, ts = tonumber(b[1]), tonumber(b[2])
  if not v then return cap end
  return math.min(cap, v + (now - ts) * cap / 60000)
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

ADMIT_LUA = (
    _BUCKET
    + """
local p = ARGV[1]
local tid = redis.call('GET', p .. 'key:' .. ARGV[2])
if not tid then return {0} end
local f = redis.call('HMGET', p .. 't:' .. tid, 'settings', 'lambda', 'rpm', 'tpm')
if not f[1] then return {0} end
local rpm, tpm = tonumber(f[3]) or 0, tonumber(f[4]) or 0
local now = now_ms()
local allowed, retry, which, granted = 1, 0, '', tonumber(ARGV[4])
if tpm > 0 then
  local tv = level(p .. 'rl:' .. tid .. ':t', tpm, now)
  if tv <= 0 then allowed, retry, which = 0, math.ceil((1 - tv) * 60000 / tpm), 'tpm' end
end
if allowed == 1 and rpm > 0 then
  local rk = p .. 'rl:' .. tid .. ':r'
  local rv = level(rk, rpm, now)
  if rv < 1 then
    allowed, retry, which, granted = 0, math.ceil((1 - rv) * 60000 / rpm), 'rpm', 0
  else
    granted = math.max(1, math.min(granted, math.floor(rv)))
    redis.call('HSET', rk, 'v', tostring(rv - granted), 'ts', now)
    redis.call('PEXPIRE', rk, BUCKET_TTL_MS)
  end
end
local settings = false
if ARGV[3] == '1' then settings = f[1] end
return {1, tid, settings, f[2] or false, allowed, retry, which, granted}
""".replace("BUCKET_TTL_MS", str(BUCKET_TTL_MS))
)

CHARGE_LUA = (
    _BUCKET
    + """
local now = now_ms()
local cap = tonumber(ARGV[1])
local v = level(KEYS[1], cap, now) - tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'v', tostring(v), 'ts', now)
redis.call('PEXPIRE', KEYS[1], BUCKET_TTL_MS)
return 1
""".replace("BUCKET_TTL_MS", str(BUCKET_TTL_MS))
)


def _s(v: bytes | str) -> str:
    """A Redis reply as text (the client returns bytes)."""
    return v.decode() if isinstance(v, bytes) else v


class RedisStore:
    kind = "redis"

    def __init__(self, url: str, timeout_s: float = 0.1, prefix: str = PREFIX) -> None:
        self.url = url
        self.p = prefix
        self.r = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry_on_timeout=False, health_check_interval=0
        )
        self._admit = self.r.register_script(ADMIT_LUA)
        self._charge = self.r.register_script(CHARGE_LUA)

    def _k(self, *parts: str) -> str:
        return self.p + ":".join(parts)

    async def ping(self) -> None:
        await self.r.ping()

    async def admit(self, key_hash: str, want_settings: bool, lease: int = 1) -> Admission | None:
        res = await self._admit(args=[self.p, key_hash, "1" if want_settings else "0", lease])
        if not res or int(res[0]) == 0:
            return None
        _, tid, raw, lam, allowed, retry, which, granted = res
        settings = TenantSettings.model_validate_json(raw) if raw else None
        return Admission(
            _s(tid), settings, float(lam) if lam else None, bool(int(allowed)), int(retry), _s(which) if which else "", int(granted)
        )

    async def _write_settings(self, pipe: Any, tenant_id: str, settings: TenantSettings) -> None:
        pipe.hset(
            self._k("t", tenant_id), mapping={"settings": settings.model_dump_json(by_alias=True), "rpm": settings.rpm, "tpm": settings.tpm}
        )

    async def create(self, tenant_id: str, settings: TenantSettings) -> None:
        if not await self.r.sadd(self._k("tenants"), tenant_id):
            raise TenantExists(tenant_id)
        async with self.r.pipeline(transaction=True) as pipe:
            await self._write_settings(pipe, tenant_id, settings)
            await pipe.execute()

    async def get(self, tenant_id: str) -> TenantSettings:
        raw = await self.r.hget(self._k("t", tenant_id), "settings")
        if raw is None:
            raise UnknownTenant(tenant_id)
        return TenantSettings.model_validate_json(raw)

    async def put(self, tenant_id: str, settings: TenantSettings) -> None:
        old = await self.get(tenant_id)
        async with self.r.pipeline(transaction=True) as pipe:
            await self._write_settings(pipe, tenant_id, settings)
            if old.slo != settings.slo:  # a new target restarts the controller
                pipe.hdel(self._k("t", tenant_id), "lambda", "slo_updates", "slo_seen")
            await pipe.execute()

    async def delete(self, tenant_id: str) -> None:
        if not await self.r.srem(self._k("tenants"), tenant_id):
            raise UnknownTenant(tenant_id)
        keys = await self.r.smembers(self._k("keys", tenant_id))
        names = [self._k("t", tenant_id), self._k("keys", tenant_id), self._k("st", tenant_id), self._k("lat", tenant_id),
                 self._k("cost", tenant_id), self._k("rl", tenant_id, "r"), self._k("rl", tenant_id, "t")]  # fmt: skip
        names += [self._k("key", _s(k)) for k in keys]
        await self.r.delete(*names)

    async def list(self) -> list[str]:
        return sorted(_s(x) for x in await self.r.smembers(self._k("tenants")))

    async def add_key(self, tenant_id: str, key_hash: str) -> None:
        if not await self.r.sismember(self._k("tenants"), tenant_id):
            raise UnknownTenant(tenant_id)
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.set(self._k("key", key_hash), tenant_id)
            pipe.sadd(self._k("keys", tenant_id), key_hash)
            await pipe.execute()

    async def revoke_keys(self, tenant_id: str) -> int:
        if not await self.r.sismember(self._k("tenants"), tenant_id):
            raise UnknownTenant(tenant_id)
        keys = await self.r.smembers(self._k("keys", tenant_id))
        if keys:
            await self.r.delete(*[self._k("key", _s(k)) for k in keys], self._k("keys", tenant_id))
        return len(keys)

    async def record(self, batch: builtins.list[Usage]) -> None:
        async with self.r.pipeline(transaction=False) as pipe:
            for u in batch:
                if u.tpm > 0:
                    await self._charge(keys=[self._k("rl", u.tenant_id, "t")], args=[u.tpm, u.tokens], client=pipe)
                st = self._k("st", u.tenant_id)
                pipe.hincrby(st, "requests", 1)
                pipe.hincrby(st, "tokens", u.tokens)
                pipe.hincrby(st, f"stop:{u.stage}", 1)
                for name, value in (("lat", u.latency_ms), ("cost", u.cost)):
                    pipe.lpush(self._k(name, u.tenant_id), f"{value:.3f}")
                    pipe.ltrim(self._k(name, u.tenant_id), 0, SAMPLE_WINDOW - 1)
            await pipe.execute()

    async def stats(self, tenant_id: str) -> dict[str, object]:
        async with self.r.pipeline(transaction=False) as pipe:
            pipe.sismember(self._k("tenants"), tenant_id)
            pipe.hgetall(self._k("st", tenant_id))
            pipe.lrange(self._k("lat", tenant_id), 0, -1)
            pipe.lrange(self._k("cost", tenant_id), 0, -1)
            exists, counters, lat, cost = await pipe.execute()
        if not exists:
            raise UnknownTenant(tenant_id)
        return summarize({_s(k): int(v) for k, v in counters.items()}, [float(x) for x in lat], [float(x) for x in cost])

    async def samples(self, tenant_id: str, metric: str) -> tuple[builtins.list[float], int]:
        """Newest first, and the tenant's request count (so the controller can tell how many are new)."""
        name = "lat" if metric == "p95_latency_ms" else "cost"
        async with self.r.pipeline(transaction=False) as pipe:
            pipe.lrange(self._k(name, tenant_id), 0, -1)
            pipe.hget(self._k("st", tenant_id), "requests")
            xs, n = await pipe.execute()
        return [float(x) for x in xs], int(n or 0)

    async def slo_state(self, tenant_id: str) -> SLOState | None:
        lam, updates, seen = await self.r.hmget(self._k("t", tenant_id), "lambda", "slo_updates", "slo_seen")
        return SLOState(float(lam), int(updates or 0), int(seen or 0)) if lam is not None else None

    async def set_slo_state(self, tenant_id: str, state: SLOState) -> None:
        await self.r.hset(
            self._k("t", tenant_id), mapping={"lambda": repr(state.lam), "slo_updates": state.updates, "slo_seen": state.seen}
        )

    async def try_lock(self, name: str, ttl_ms: int) -> bool:
        return bool(await self.r.set(self._k("lock", name), "1", nx=True, px=ttl_ms))

    async def close(self) -> None:
        await self.r.aclose()
