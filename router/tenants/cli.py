"""``adaptive-sd tenants ...``: manage tenants directly in the Redis store the routers share.

    adaptive-sd tenants list
    adaptive-sd tenants create team-a --set lambda=5 --set rpm=600
    adaptive-sd tenants show team-a
    adaptive-sd tenants set team-a --set slo='{"metric": "p95_latency_ms", "target": 1500}'
    adaptive-sd tenants rotate-key team-a
    adaptive-sd tenants delete team-a
    adaptive-sd tenants migrate        # rename keys of the layout before hash tags (routers also do it at start-up)

Values given with ``--set`` are parsed as JSON when they parse, else taken as
strings, and validated exactly as the admin API validates them. Routers pick
up changes within ``tenancy.cache_ttl_s``. Without ``tenancy.redis_url`` the
tenants live inside the router process: use its admin API instead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from pydantic import ValidationError

from common.settings import Settings
from router.tenants.model import TenantSettings, check_max_stage, check_tenant_id, hash_key, new_key
from router.tenants.store import TenantExists, UnknownTenant

ACTIONS = ("list", "create", "show", "set", "rotate-key", "delete", "migrate")


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "tenants",
        help="manage tenants in the shared Redis store",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("action", choices=ACTIONS)
    p.add_argument("tenant", nargs="?")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a tenant setting (lambda, slo, max_stage, allowed_models, rpm, tpm)",
    )


def _pairs(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"error: --set expects KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _checked(settings: Settings, tenant: TenantSettings) -> TenantSettings:
    """``tenant`` once its ``max_stage`` names a stage of the configured ladder (``ValueError`` naming ``max_stage``
    otherwise), as the admin API checks it: the cascade refuses a tenant whose top stage it does not have."""
    check_max_stage(tenant.max_stage, [s.name for s in settings.stages])
    return tenant


async def _run(settings: Settings, args: argparse.Namespace) -> int:
    from router.tenants.redis_store import RedisStore

    if not settings.tenancy.redis_url:
        print(
            "error: tenancy.redis_url is not set; tenants live in the router process -- use its admin API (/admin/tenants)", file=sys.stderr
        )
        return 2
    store = RedisStore(settings.tenancy.redis_url, timeout_s=max(1.0, settings.tenancy.redis_timeout_s))
    try:
        if args.action == "list":
            print(json.dumps(await store.list()))
            return 0
        if args.action == "migrate":
            print(json.dumps({"renamed_keys": await store.migrate()}))
            return 0
        if not args.tenant:
            print(f"error: '{args.action}' needs a tenant id", file=sys.stderr)
            return 2
        tid = check_tenant_id(args.tenant)
        if args.action == "create":
            await store.create(tid, _checked(settings, TenantSettings.model_validate(_pairs(args.set))))
            key = new_key()
            await store.add_key(tid, hash_key(key))
            print(json.dumps({"id": tid, "api_key": key}))
        elif args.action == "show":
            print(json.dumps({"id": tid, "settings": (await store.get(tid)).public(), "stats": await store.stats(tid)}, indent=2))
        elif args.action == "set":
            merged = _checked(settings, TenantSettings.model_validate({**(await store.get(tid)).public(), **_pairs(args.set)}))
            await store.put(tid, merged)
            print(json.dumps({"id": tid, "settings": merged.public()}))
        elif args.action == "rotate-key":
            revoked = await store.revoke_keys(tid)
            key = new_key()
            await store.add_key(tid, hash_key(key))
            print(json.dumps({"id": tid, "api_key": key, "revoked": revoked}))
        elif args.action == "delete":
            await store.delete(tid)
            print(json.dumps({"id": tid, "deleted": True}))
        return 0
    except ValidationError as exc:
        for err in exc.errors():
            print(f"error: {'.'.join(str(p) for p in err['loc'])}: {err['msg']}", file=sys.stderr)
        return 2
    except ValueError as exc:  # bad tenant id or max_stage, or TenantExists
        print(f"error: {'tenant already exists: ' if isinstance(exc, TenantExists) else ''}{exc}", file=sys.stderr)
        return 2
    except UnknownTenant as exc:
        print(f"error: no tenant {exc}", file=sys.stderr)
        return 1
    finally:
        await store.close()


def run(settings: Settings, args: argparse.Namespace) -> int:
    return asyncio.run(_run(settings, args))
