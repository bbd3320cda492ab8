"""Tenants: API keys, per-tenant λ / SLO / limits, shared by router replicas through Redis.

``model`` holds the settings and key handling, ``store`` the in-process store
(one replica), ``redis_store`` the Redis one (many replicas; atomic admission
in one Lua script), ``breaker`` the circuit breaker around Redis, ``slo`` the
λ controller, ``service`` what a request sees (auth, cache, admission,
accounting), ``admin`` the admin routes.
"""
