"""Tenants in Redis, shared by every router replica: one server, Sentinel or Cluster.

Admission is one Lua script (one round trip, atomic): check that the key is
the tenant's, read its limits, refill and take from its buckets, and -- only
when the replica's cached settings are stale -- return the settings too.
Because the script runs atomically on the server that holds the tenant,
concurrent requests on any number of replicas can never take more than the
bucket holds. Bucket time is Redis's own clock (``TIME``), so replica clock
skew does not matter.

Key layout. Everything a tenant owns carries its id as a hash tag,
``asd:{<tenant>}:<part>`` (``t`` settings and controller state, ``keys`` its
key hashes, ``st`` counters, ``lat``/``cost`` samples, ``rl:r``/``rl:t``
buckets, and short-lived ``adm:``/``rec:``/``del:``/``rev:`` markers), so under
Redis Cluster all of a tenant's keys share one slot and every script and
multi-key command stays on one node, while different tenants spread over the
nodes. Three keys are not per tenant, and only single-key commands touch
them: ``asd:key:<hash>`` (which tenant a key hash belongs to), the index
``asd:tenants`` (a set: listing tenants is one ``SMEMBERS``, no scan), and
``asd:lock:<name>``. An admission needs the tenant id to name its keys: the
store remembers it per key hash, so only a key's first admission on a replica
costs an extra ``GET``; the script then checks the key is still the tenant's.

Earlier versions named the per-tenant keys ``asd:t:<tenant>``,
``asd:rl:<tenant>:r``, ...; ``migrate`` renames them (idempotent; the service
runs it at start-up, ``adaptive-sd tenants migrate`` on demand).

Every operation is idempotent, so it can be retried after a connection error
or a failover without counting twice: admissions and usage batches carry a
nonce whose marker (kept longer than any retry) makes a second run return the
first run's result; create, delete and key revocation do the same, the rest
are idempotent as they are. ``redis_connect`` does the retrying.
"""

from __future__ import annotations

import builtins
import hashlib
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis import exceptions as rx

from router.tenants.model import Admission, TenantSettings
from router.tenants.redis_connect import Command, RedisConnection, connect
from router.tenants.store import SAMPLE_WINDOW, SLOState, TenantExists, UnknownTenant, Usage, summarize

PREFIX = "asd:"
BUCKET_TTL_MS = 120_000
HINTS_LIMIT = 10_000  # key hash -> tenant id entries remembered (bounded: random keys cannot grow it)
RECORD_CHUNK = 500  # usages per script call, so no single script blocks the server for long
T = TypeVar("T")

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

# KEYS: t, keys, rl:r, rl:t, adm:<nonce>   ARGV: key hash, want settings, lease, marker ttl
ADMIT_LUA = (
    _BUCKET
    + """
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 0 then return {0} end
local f = redis.call('HMGET', KEYS[1], 'settings', 'lambda', 'rpm', 'tpm')
if not f[1] then return {0} end
local settings = false
if ARGV[2] == '1' then settings = f[1] end
local lam = f[2] or false
local done = redis.call('GET', KEYS[5])
if done then
  local a, r, w, g = string.match(done, '^(%d+):(%d+):(%a*):(%d+)$')
  return {1, settings, lam, tonumber(a), tonumber(r), w, tonumber(g)}
end
local rpm, tpm = tonumber(f[3]) or 0, tonumber(f[4]) or 0
local now = now_ms()
local allowed, retry, which, granted = 1, 0, '', tonumber(ARGV[3])
if tpm > 0 then
  local tv = level(KEYS[4], tpm, now)
  if tv <= 0 then allowed, retry, which = 0, math.ceil((1 - tv) * 60000 / tpm), 'tpm' end
end
if allowed == 1 and rpm > 0 then
  local rv = level(KEYS[3], rpm, now)
  if rv < 1 then
    allowed, retry, which, granted = 0, math.ceil((1 - rv) * 60000 / rpm), 'rpm', 0
  else
    granted = math.max(1, math.min(granted, math.floor(rv)))
    redis.call('HSET', KEYS[3], 'v', tostring(rv - granted), 'ts', now)
    redis.call('PEXPIRE', KEYS[3], BUCKET_TTL_MS)
    redis.call('SET', KEYS[5], allowed .. ':' .. retry .. ':' .. which .. ':' .. granted, 'PX', ARGV[4])
  end
end
return {1, settings, lam, allowed, retry, which, granted}
""".replace("BUCKET_TTL_MS", str(BUCKET_TTL_MS))
)

# KEYS: t, st, lat, cost, rl:t, rec:<nonce>   ARGV: marker ttl, window, n, then n x (tokens, latency, cost, stage, tpm)
RECORD_LUA = (
    _BUCKET
    + """
if redis.call('HEXISTS', KEYS[1], 'settings') == 0 then return 0 end
if not redis.call('SET', KEYS[6], '1', 'NX', 'PX', ARGV[1]) then return 0 end
local now = nil
for i = 0, tonumber(ARGV[3]) - 1 do
  local b = 4 + i * 5
  local tokens, tpm = tonumber(ARGV[b]), tonumber(ARGV[b + 4])
  if tpm > 0 then
    if not now then now = now_ms() end
    local v = level(KEYS[5], tpm, now) - tokens
    redis.call('HSET', KEYS[5], 'v', tostring(v), 'ts', now)
    redis.call('PEXPIRE', KEYS[5], BUCKET_TTL_MS)
  end
  redis.call('HINCRBY', KEYS[2], 'requests', 1)
  redis.call('HINCRBY', KEYS[2], 'tokens', tokens)
  redis.call('HINCRBY', KEYS[2], 'stop:' .. ARGV[b + 3], 1)
  redis.call('LPUSH', KEYS[3], ARGV[b + 1])
  redis.call('LPUSH', KEYS[4], ARGV[b + 2])
end
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[2]) - 1)
redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[2]) - 1)
return 1
""".replace("BUCKET_TTL_MS", str(BUCKET_TTL_MS))
)

# KEYS: t   ARGV: settings, rpm, tpm, nonce.  1 created (now or by this nonce before), 0 exists
CREATE_LUA = """
local by = redis.call('HGET', KEYS[1], 'created')
if by then
  if by == ARGV[4] then return 1 end
  return 0
end
if redis.call('HEXISTS', KEYS[1], 'settings') == 1 then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'settings', ARGV[1], 'rpm', ARGV[2], 'tpm', ARGV[3], 'created', ARGV[4])
return 1
"""

# KEYS: t   ARGV: settings, rpm, tpm, restart controller
PUT_LUA = """
if redis.call('HEXISTS', KEYS[1], 'settings') == 0 then return 0 end
redis.call('HSET', KEYS[1], 'settings', ARGV[1], 'rpm', ARGV[2], 'tpm', ARGV[3])
if ARGV[4] == '1' then redis.call('HDEL', KEYS[1], 'lambda', 'slo_updates', 'slo_seen') end
return 1
"""

# KEYS: t   ARGV: lambda, updates, seen (a tenant deleted meanwhile is not brought back)
SLO_LUA = """
if redis.call('HEXISTS', KEYS[1], 'settings') == 0 then return 0 end
redis.call('HSET', KEYS[1], 'lambda', ARGV[1], 'slo_updates', ARGV[2], 'slo_seen', ARGV[3])
return 1
"""

# KEYS: t, keys, st, lat, cost, rl:r, rl:t, del:<nonce>   ARGV: marker ttl.  {1, key hashes...} | {0} unknown
DELETE_LUA = """
if redis.call('EXISTS', KEYS[8]) == 1 then return {1} end
if redis.call('HEXISTS', KEYS[1], 'settings') == 0 then return {0} end
local ks = redis.call('SMEMBERS', KEYS[2])
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7])
redis.call('SET', KEYS[8], '1', 'PX', ARGV[1])
local out = {1}
for i, k in ipairs(ks) do out[i + 1] = k end
return out
"""

# KEYS: t, keys, rev:<nonce>   ARGV: marker ttl.  {n, key hashes...} | {-1} unknown
REVOKE_LUA = """
local m = redis.call('GET', KEYS[3])
if m then return {tonumber(m)} end
if redis.call('HEXISTS', KEYS[1], 'settings') == 0 then return {-1} end
local ks = redis.call('SMEMBERS', KEYS[2])
redis.call('DEL', KEYS[2])
redis.call('SET', KEYS[3], #ks, 'PX', ARGV[1])
local out = {#ks}
for i, k in ipairs(ks) do out[i + 1] = k end
return out
"""

# KEYS: n old names, then their n new names.  Renames what exists under the old name only; returns how many.
MIGRATE_LUA = """
local n = #KEYS / 2
local moved = 0
for i = 1, n do
  if redis.call('EXISTS', KEYS[i]) == 1 and redis.call('EXISTS', KEYS[i + n]) == 0 then
    redis.call('RENAME', KEYS[i], KEYS[i + n])
    moved = moved + 1
  end
end
return moved
"""

SCRIPTS = {
    "admit": ADMIT_LUA,
    "record": RECORD_LUA,
    "create": CREATE_LUA,
    "put": PUT_LUA,
    "slo": SLO_LUA,
    "delete": DELETE_LUA,
    "revoke": REVOKE_LUA,
    "migrate": MIGRATE_LUA,
}
SHAS = {name: hashlib.sha1(body.encode()).hexdigest() for name, body in SCRIPTS.items()}
TENANT_PARTS = ("t", "keys", "st", "lat", "cost", "rl:r", "rl:t")  # what a tenant owns (markers expire by themselves)
LEGACY_NAMES = ("t:{id}", "keys:{id}", "st:{id}", "lat:{id}", "cost:{id}", "rl:{id}:r", "rl:{id}:t")  # same order


def _s(v: bytes | str) -> str:
    """A Redis reply as text (the client returns bytes)."""
    return v.decode() if isinstance(v, bytes) else v


def _nonce() -> str:
    return uuid.uuid4().hex


class RedisStore:
    kind = "redis"

    def __init__(self, url: str, timeout_s: float = 0.1, prefix: str = PREFIX) -> None:
        self.url = url
        self.p = prefix
        self.conn: RedisConnection = connect(url, timeout_s)
        self.r: Any = self.conn.client
        self.marker_ttl_ms = int((2 * self.conn.wait_s + 5.0) * 1000)  # outlives every retry of the operation it marks
        self._tid: dict[str, str] = {}

    # -- key names --------------------------------------------------------------
    def tk(self, tenant_id: str, part: str) -> str:
        """A key the tenant owns: hash-tagged by its id, so all of them share one Cluster slot."""
        return f"{self.p}{{{tenant_id}}}:{part}"

    def _lookup(self, key_hash: str) -> str:
        return f"{self.p}key:{key_hash}"

    @property
    def _index(self) -> str:
        return f"{self.p}tenants"

    # -- plumbing -----------------------------------------------------------------
    async def _call(self, op: Callable[[], Awaitable[T]]) -> T:
        """Run an idempotent operation with retries; a server without our scripts gets them first."""

        async def once() -> T:
            try:
                return await op()
            except rx.NoScriptError:
                for body in SCRIPTS.values():
                    await self.r.script_load(body)
                return await op()

        return await self.conn.call(once)

    @staticmethod
    def _eval(name: str, keys: list[str], args: list[object]) -> Command:
        return ("EVALSHA", SHAS[name], len(keys), *keys, *args)

    async def _script(self, name: str, keys: list[str], args: list[object]) -> Any:
        """One script call, as a write (fenced against failover loss under Sentinel); its reply."""
        return (await self.conn.execute([self._eval(name, keys, args)]))[0]

    async def ping(self) -> None:
        await self._call(self.r.ping)

    # -- admission ----------------------------------------------------------------
    async def admit(self, key_hash: str, want_settings: bool, lease: int = 1) -> Admission | None:
        nonce = _nonce()
        return await self._call(lambda: self._admit(key_hash, want_settings, lease, nonce))

    async def _admit(self, key_hash: str, want_settings: bool, lease: int, nonce: str) -> Admission | None:
        tid = self._tid.get(key_hash)
        hinted = tid is not None
        while True:
            if tid is None:
                raw = await self.r.get(self._lookup(key_hash))
                if raw is None:
                    return None
                tid = _s(raw)
            keys = [self.tk(tid, "t"), self.tk(tid, "keys"), self.tk(tid, "rl:r"), self.tk(tid, "rl:t"), self.tk(tid, f"adm:{nonce}")]
            args: list[object] = [key_hash, "1" if want_settings else "0", lease, self.marker_ttl_ms]
            res = await self._script("admit", keys, args)
            if int(res[0]) == 1:
                break
            self._tid.pop(key_hash, None)  # revoked, or the tenant is gone: ask the lookup key once more
            if not hinted:
                return None
            tid, hinted = None, False
        if len(self._tid) >= HINTS_LIMIT:
            self._tid.clear()
        self._tid[key_hash] = tid
        _, raw, lam, allowed, retry, which, granted = res
        settings = TenantSettings.model_validate_json(raw) if raw else None
        limit = _s(which) if which else ""
        return Admission(tid, settings, float(lam) if lam else None, bool(int(allowed)), int(retry), limit, int(granted))

    # -- tenants ------------------------------------------------------------------
    async def create(self, tenant_id: str, settings: TenantSettings) -> None:
        nonce = _nonce()
        args: list[object] = [settings.model_dump_json(by_alias=True), settings.rpm, settings.tpm, nonce]
        created = await self._call(lambda: self._script("create", [self.tk(tenant_id, "t")], args))
        await self._call(lambda: self.conn.execute([("SADD", self._index, tenant_id)]))  # (also repairs an index entry lost mid-create)
        if not int(created):
            raise TenantExists(tenant_id)

    async def get(self, tenant_id: str) -> TenantSettings:
        raw = await self._call(lambda: self.r.hget(self.tk(tenant_id, "t"), "settings"))
        if raw is None:
            raise UnknownTenant(tenant_id)
        return TenantSettings.model_validate_json(raw)

    async def put(self, tenant_id: str, settings: TenantSettings) -> None:
        old = await self.get(tenant_id)
        args: list[object] = [settings.model_dump_json(by_alias=True), settings.rpm, settings.tpm, "1" if old.slo != settings.slo else "0"]
        done = await self._call(lambda: self._script("put", [self.tk(tenant_id, "t")], args))
        if not int(done):
            raise UnknownTenant(tenant_id)

    async def delete(self, tenant_id: str) -> None:
        nonce = _nonce()
        keys = [self.tk(tenant_id, part) for part in TENANT_PARTS] + [self.tk(tenant_id, f"del:{nonce}")]
        res = await self._call(lambda: self._script("delete", keys, [self.marker_ttl_ms]))
        hashes = [_s(k) for k in res[1:]]
        cleanup: list[Command] = [("DEL", self._lookup(h)) for h in hashes] + [("SREM", self._index, tenant_id)]
        await self._call(lambda: self.conn.execute(cleanup))
        for h in hashes:
            self._tid.pop(h, None)
        if not int(res[0]):
            raise UnknownTenant(tenant_id)

    async def list(self) -> list[str]:
        return sorted(_s(x) for x in await self._call(lambda: self.r.smembers(self._index)))

    async def add_key(self, tenant_id: str, key_hash: str) -> None:
        if not await self._call(lambda: self.r.hexists(self.tk(tenant_id, "t"), "settings")):
            raise UnknownTenant(tenant_id)
        writes: list[Command] = [("SADD", self.tk(tenant_id, "keys"), key_hash), ("SET", self._lookup(key_hash), tenant_id)]
        await self._call(lambda: self.conn.execute(writes))  # the set first: the admission script checks membership

    async def revoke_keys(self, tenant_id: str) -> int:
        nonce = _nonce()
        keys = [self.tk(tenant_id, "t"), self.tk(tenant_id, "keys"), self.tk(tenant_id, f"rev:{nonce}")]
        res = await self._call(lambda: self._script("revoke", keys, [self.marker_ttl_ms]))
        if int(res[0]) < 0:
            raise UnknownTenant(tenant_id)
        hashes = [_s(k) for k in res[1:]]
        if hashes:  # the keys stopped working with the script; the lookups are only tidied up
            cleanup: list[Command] = [("DEL", self._lookup(h)) for h in hashes]
            await self._call(lambda: self.conn.execute(cleanup))
        for h in hashes:
            self._tid.pop(h, None)
        return int(res[0])

    # -- usage and SLO state -----------------------------------------------------------
    async def record(self, batch: builtins.list[Usage]) -> None:
        by_tenant: dict[str, builtins.list[Usage]] = defaultdict(list)
        for u in batch:
            by_tenant[u.tenant_id].append(u)
        calls: builtins.list[Command] = []
        for tid, usages in by_tenant.items():
            for i in range(0, len(usages), RECORD_CHUNK):
                chunk = usages[i : i + RECORD_CHUNK]
                keys = [self.tk(tid, p) for p in ("t", "st", "lat", "cost", "rl:t")] + [self.tk(tid, f"rec:{_nonce()}")]
                args: builtins.list[object] = [self.marker_ttl_ms, SAMPLE_WINDOW, len(chunk)]
                for u in chunk:
                    args += [u.tokens, f"{u.latency_ms:.3f}", f"{u.cost:.3f}", u.stage, u.tpm]
                calls.append(self._eval("record", keys, args))
        if calls:
            await self._call(lambda: self.conn.execute(calls))

    async def stats(self, tenant_id: str) -> dict[str, object]:
        async def read() -> list[Any]:
            pipe = self.conn.pipeline()
            pipe.hexists(self.tk(tenant_id, "t"), "settings")
            pipe.hgetall(self.tk(tenant_id, "st"))
            pipe.lrange(self.tk(tenant_id, "lat"), 0, -1)
            pipe.lrange(self.tk(tenant_id, "cost"), 0, -1)
            return list(await pipe.execute())

        exists, counters, lat, cost = await self._call(read)
        if not exists:
            raise UnknownTenant(tenant_id)
        return summarize({_s(k): int(v) for k, v in counters.items()}, [float(x) for x in lat], [float(x) for x in cost])

    async def samples(self, tenant_id: str, metric: str) -> tuple[builtins.list[float], int]:
        """Newest first, and the tenant's request count (so the controller can tell how many are new)."""
        name = "lat" if metric == "p95_latency_ms" else "cost"

        async def read() -> list[Any]:
            pipe = self.conn.pipeline()
            pipe.lrange(self.tk(tenant_id, name), 0, -1)
            pipe.hget(self.tk(tenant_id, "st"), "requests")
            return list(await pipe.execute())

        xs, n = await self._call(read)
        return [float(x) for x in xs], int(n or 0)

    async def slo_state(self, tenant_id: str) -> SLOState | None:
        lam, updates, seen = await self._call(lambda: self.r.hmget(self.tk(tenant_id, "t"), "lambda", "slo_updates", "slo_seen"))
        return SLOState(float(lam), int(updates or 0), int(seen or 0)) if lam is not None else None

    async def set_slo_state(self, tenant_id: str, state: SLOState) -> None:
        args: list[object] = [repr(state.lam), state.updates, state.seen]
        await self._call(lambda: self._script("slo", [self.tk(tenant_id, "t")], args))

    async def try_lock(self, name: str, ttl_ms: int) -> bool:
        key, token = f"{self.p}lock:{name}", _nonce()

        async def lock() -> bool:
            (ok,) = await self.conn.execute([("SET", key, token, "NX", "PX", ttl_ms)])
            return bool(ok) or _s(await self.r.get(key) or b"") == token  # a retry of our own successful SET

        return await self._call(lock)

    # -- upgrades -------------------------------------------------------------------
    async def migrate(self) -> int:
        """Rename the per-tenant keys of the layout before hash tags; returns how many keys moved.

        Idempotent (a key is renamed only while its new name is free), so every replica may run
        it at start-up. Cluster deployments never had the old layout: nothing to do there.
        """
        if self.conn.kind == "cluster":
            return 0
        tenants = [_s(t) for t in await self._call(lambda: self.r.smembers(self._index))]
        if not tenants:
            return 0
        calls = [self._eval("migrate", [self.p + n.format(id=t) for n in LEGACY_NAMES] + [self.tk(t, p) for p in TENANT_PARTS], [])
                 for t in tenants]  # fmt: skip
        return sum(int(n) for n in await self._call(lambda: self.conn.execute(calls)))

    async def close(self) -> None:
        await self.conn.aclose()
