"""The admin API (``/admin/tenants``) and a tenant's view of itself (``/v1/tenant``).

Admin routes need ``Authorization: Bearer <tenancy.admin_key>``; without a
configured admin key they answer 403. A tenant key reaches only ``/v1/tenant``,
which shows that tenant's own settings and stats -- never another's. Store
failures answer 503 (writes fail closed).
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from typing import Any

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import Response

from common.errors import APIError, from_validation_error
from router.openapi import (
    ADMIN,
    ADMIN_ERRORS,
    OWN_TENANT,
    PUBLIC,
    KeyAdded,
    KeysRevoked,
    TenantCreated,
    TenantDeleted,
    TenantList,
    TenantView,
    answers,
    extra,
)
from router.tenants.model import TenantSettings, check_max_stage, check_tenant_id, hash_key, new_key
from router.tenants.service import DEFAULT_TENANT, TenantService, bearer
from router.tenants.store import TenantExists, UnknownTenant


class CreateTenant(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="tenant id: a-z, 0-9, '_' or '-'")
    settings: TenantSettings = Field(default_factory=TenantSettings)


class NewKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    revoke_existing: bool = False


def _json(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


async def _body(request: Request, model: type[BaseModel]) -> Any:
    raw = await request.body()
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        raise from_validation_error(exc) from None


def admin_router(service: TenantService, admin_key: str | None, ladder: Sequence[str]) -> APIRouter:
    """The admin and ``/v1/tenant`` routes; ``ladder``: the router's stage names in order, which a tenant's
    ``max_stage`` must name one of (``check_max_stage``)."""
    router = APIRouter()

    def require_admin(request: Request) -> None:
        if admin_key is None:
            raise APIError(
                403, "The admin API is disabled: set tenancy.admin_key (env ADAPTIVE_SD_TENANCY__ADMIN_KEY)", type="permission_error"
            )
        given = bearer(request.headers.get("authorization"))
        if given is None or not hmac.compare_digest(given.encode(), admin_key.encode()):
            raise APIError(401, "Admin API: missing or incorrect admin key", param="authorization", code="invalid_api_key")

    async def call(coro: Any, tenant_id: str | None = None) -> Any:
        ok, result = await service._guarded(_wrap(coro))
        if not ok:
            raise APIError(503, "The tenant store is unavailable; no change was made", type="service_unavailable", code="store_unavailable")
        if isinstance(result, _Failure):
            if isinstance(result.exc, UnknownTenant):
                raise APIError(404, f"No tenant '{tenant_id}'", param="id", code="tenant_not_found")
            if isinstance(result.exc, TenantExists):
                raise APIError(409, f"Tenant '{tenant_id}' already exists", param="id", code="tenant_exists")
            raise result.exc
        return result

    def valid_id(tenant_id: str) -> str:
        try:
            return check_tenant_id(tenant_id)
        except ValueError as exc:
            raise APIError(400, f"Invalid tenant id {tenant_id!r}: {exc}", param="id") from None

    def valid_max_stage(settings: TenantSettings, param: str) -> TenantSettings:
        """``settings`` once its ``max_stage`` names a stage of the ladder; a 400 naming ``param`` otherwise."""
        try:
            check_max_stage(settings.max_stage, ladder)
        except ValueError as exc:
            raise APIError(400, f"Invalid value for '{param}': {exc}", param=param) from None
        return settings

    async def describe(tenant_id: str) -> dict[str, Any]:
        settings = await call(service.store.get(tenant_id), tenant_id)
        state = await call(service.store.slo_state(tenant_id), tenant_id)
        stats = await call(service.store.stats(tenant_id), tenant_id)
        lam = service.lam_for_settings(settings, state.lam if state else None)
        return {"id": tenant_id, "settings": settings.public(), "effective_lambda": lam,
                "slo_controller": {"lambda": state.lam, "updates": state.updates} if state else None, "stats": stats}  # fmt: skip

    @router.post("/admin/tenants", tags=["Admin"], summary="Create a tenant and its first API key", operation_id="createTenant",
                 status_code=201, responses=answers(TenantCreated, "400", "409", *ADMIN_ERRORS, status=201),
                 openapi_extra=extra(CreateTenant, security=ADMIN))  # fmt: skip
    async def create(request: Request) -> Response:
        require_admin(request)
        body: CreateTenant = await _body(request, CreateTenant)
        tid = valid_id(body.id)
        if tid == DEFAULT_TENANT:
            raise APIError(400, f"'{DEFAULT_TENANT}' is reserved for unauthenticated local use", param="id")
        valid_max_stage(body.settings, "settings.max_stage")
        await call(service.store.create(tid, body.settings), tid)
        key = new_key()
        await call(service.store.add_key(tid, hash_key(key)), tid)
        service.key_added(hash_key(key))
        return _json({"id": tid, "settings": body.settings.public(), "api_key": key}, 201)

    @router.get("/admin/tenants", tags=["Admin"], summary="Every tenant's id", operation_id="listTenants",
                responses=answers(TenantList, *ADMIN_ERRORS), openapi_extra=extra(security=ADMIN))  # fmt: skip
    async def list_tenants(request: Request) -> Response:
        require_admin(request)
        return _json({"object": "list", "data": await call(service.store.list())})

    @router.get("/admin/tenants/{tenant_id}", tags=["Admin"], summary="A tenant's settings, λ and stats", operation_id="retrieveTenant",
                responses=answers(TenantView, "400", "404", *ADMIN_ERRORS), openapi_extra=extra(security=ADMIN))  # fmt: skip
    async def show(tenant_id: str, request: Request) -> Response:
        require_admin(request)
        return _json(await describe(valid_id(tenant_id)))

    @router.patch("/admin/tenants/{tenant_id}", tags=["Admin"], summary="Change some of a tenant's settings", operation_id="updateTenant",
                  description="The body holds the settings to change; the others keep their values. An empty body changes nothing.",
                  responses=answers(TenantView, "400", "404", *ADMIN_ERRORS),
                  openapi_extra=extra(TenantSettings, required=False, security=ADMIN))  # fmt: skip
    async def update(tenant_id: str, request: Request) -> Response:
        require_admin(request)
        tid = valid_id(tenant_id)
        current: TenantSettings = await call(service.store.get(tid), tid)
        try:
            patch = orjson.loads(await request.body() or b"{}")
        except orjson.JSONDecodeError as exc:
            raise APIError(400, f"Request body is not valid JSON: {exc}") from None
        if not isinstance(patch, dict):
            raise APIError(400, "Request body must be a JSON object of settings to change")
        try:
            merged = TenantSettings.model_validate({**current.public(), **patch})
        except ValidationError as exc:
            raise from_validation_error(exc) from None
        # the merged settings, not the patch: a stored max_stage the ladder has lost is not written back as it is
        await call(service.store.put(tid, valid_max_stage(merged, "max_stage")), tid)
        service.forget(tid)
        return _json(await describe(tid))

    @router.delete("/admin/tenants/{tenant_id}", tags=["Admin"], summary="Delete a tenant and its keys", operation_id="deleteTenant",
                   responses=answers(TenantDeleted, "400", "404", *ADMIN_ERRORS), openapi_extra=extra(security=ADMIN))  # fmt: skip
    async def delete(tenant_id: str, request: Request) -> Response:
        require_admin(request)
        tid = valid_id(tenant_id)
        await call(service.store.delete(tid), tid)
        service.forget(tid)
        return _json({"id": tid, "deleted": True})

    @router.post("/admin/tenants/{tenant_id}/keys", tags=["Admin"], summary="A new API key for a tenant", operation_id="createTenantKey",
                 status_code=201, responses=answers(KeyAdded, "400", "404", *ADMIN_ERRORS, status=201),
                 openapi_extra=extra(NewKey, required=False, security=ADMIN))  # fmt: skip
    async def add_key(tenant_id: str, request: Request) -> Response:
        require_admin(request)
        tid = valid_id(tenant_id)
        body: NewKey = await _body(request, NewKey)
        revoked = await call(service.store.revoke_keys(tid), tid) if body.revoke_existing else 0
        key = new_key()
        await call(service.store.add_key(tid, hash_key(key)), tid)
        service.key_added(hash_key(key))
        service.forget(tid)
        return _json({"id": tid, "api_key": key, "revoked": revoked}, 201)

    @router.delete("/admin/tenants/{tenant_id}/keys", tags=["Admin"], summary="Revoke every API key of a tenant",
                   operation_id="revokeTenantKeys", responses=answers(KeysRevoked, "400", "404", *ADMIN_ERRORS),
                   openapi_extra=extra(security=ADMIN))  # fmt: skip
    async def revoke(tenant_id: str, request: Request) -> Response:
        require_admin(request)
        tid = valid_id(tenant_id)
        n = await call(service.store.revoke_keys(tid), tid)
        service.forget(tid)
        return _json({"id": tid, "revoked": n})

    @router.get("/v1/tenant", tags=["Tenants"], summary="The calling tenant's own settings and stats", operation_id="retrieveOwnTenant",
                responses=answers(None, "401", "429", "500", "503", content=OWN_TENANT), openapi_extra=extra(security=PUBLIC))  # fmt: skip
    async def me(request: Request) -> Response:
        tenant = await service.authenticate(request.headers.get("authorization"))
        if tenant.id == DEFAULT_TENANT:
            return _json({"id": DEFAULT_TENANT, "settings": tenant.settings.public(), "stats": None})
        return _json(await describe(tenant.id))

    return router


class _Failure:
    """A store exception that is the caller's fault (unknown tenant, duplicate), not an outage."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc


async def _wrap(coro: Any) -> Any:
    try:
        return await coro
    except (UnknownTenant, TenantExists) as exc:
        return _Failure(exc)
