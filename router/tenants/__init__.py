"""Tenants: API keys, per-tenant λ / SLO / limits, shared by router replicas through Redis.

``model`` holds the settings and key handling, ``store`` the in-process store
(one replica), ``redis_store`` the Redis one (many replicas; atomic admission
in one Lua script; keys hash-tagged per tenant for Redis Cluster),
``redis_connect`` the ``tenancy.redis_url`` forms (one server, Sentinel,
Cluster) and retries and write fencing through failovers, ``breaker`` the circuit breaker around Redis, ``slo`` the
λ controller, ``service`` what a request sees (auth, cache, admission,
accounting), ``admin`` the admin routes.
"""
