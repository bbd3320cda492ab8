"""Tenant settings, API keys and the admission result."""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from common.protocol import MAX_INT
from common.settings import QualityTarget

KEY_PREFIX = "asd-"
_TENANT_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


def new_key() -> str:
    """A fresh API key: 32 random bytes, url-safe. Shown once, stored only as its hash."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """SHA-256 of the key. Keys are 256-bit random, so an unsalted hash cannot be brute-forced."""
    return hashlib.sha256(key.encode()).hexdigest()


class SLO(BaseModel):
    """A target the controller tunes λ to meet instead of a fixed λ."""

    model_config = ConfigDict(extra="forbid")

    metric: Literal["p95_latency_ms", "mean_cost"] = Field(description="p95 end-to-end latency, or mean stage cost per request")
    target: float = Field(gt=0.0, allow_inf_nan=False)  # JSON's 1e999 is infinity: it was stored, and answered as null


class TenantSettings(BaseModel):
    """What an operator sets per tenant (admin API, CLI). Unset fields use the router's defaults."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    lambda_: float | None = Field(None, alias="lambda", ge=0.0, allow_inf_nan=False, description="cost of one bad answer, in cost units")
    slo: SLO | None = None
    target: QualityTarget | None = Field(None, description="a quality or top-stage-share target, mapped to λ by the calibration table")
    max_stage: int | str | None = Field(None, description="highest stage (index or name) the cascade may use")
    allowed_models: list[str] | None = Field(None, description="models this tenant may call; null = all")
    learn: bool = Field(
        True,
        description="this tenant's cascade requests may be logged (predictor.log_path) and shadow-checked, to learn from; "
        "false keeps them out (their answers are still labelled in the metrics, which hold no prompt)",
    )
    # bounded to 64 bits: the settings are answered and stored as JSON (orjson), which holds no larger integer
    rpm: int = Field(0, ge=0, le=MAX_INT, description="requests per minute, 0 = unlimited")
    tpm: int = Field(0, ge=0, le=MAX_INT, description="tokens per minute, 0 = unlimited")

    @field_validator("max_stage")
    @classmethod
    def _stage(cls, v: int | str | None) -> int | str | None:
        if isinstance(v, int) and v < 0:
            raise ValueError("must be >= 0")
        if isinstance(v, int) and v > MAX_INT:
            raise ValueError(f"must be <= {MAX_INT}")
        return v

    def public(self) -> dict[str, object]:
        return self.model_dump(by_alias=True, mode="json")


def check_max_stage(max_stage: int | str | None, ladder: Sequence[str]) -> None:
    """Raise ``ValueError`` (listing the ladder) when ``max_stage`` names no stage of ``ladder``, the stage names in order.

    ``TenantSettings`` cannot check this itself: it is also read back from a store that several routers share, and
    the ladder is the router's. Writers (the admin API, the CLI) check it, so that no new record holds a top stage
    the cascade cannot honour (the cascade refuses a tenant whose stored one is stale: ``OpenAIServing._tenant_cap``).
    An index counts as ``Settings.stage_index`` counts it; a string is a stage's name, never an index.
    """
    if max_stage is None:
        return
    if isinstance(max_stage, int) and 0 <= max_stage < len(ladder):
        return
    if isinstance(max_stage, str) and max_stage in ladder:
        return
    raise ValueError(
        f"max_stage {max_stage!r} is not a stage of the cascade; give a stage name ({', '.join(ladder)}), "
        f"an index from 0 to {len(ladder) - 1}, or null"
    )


def check_tenant_id(tenant_id: str) -> str:
    if not _TENANT_ID.match(tenant_id):
        raise ValueError("tenant id must be 1-64 characters of a-z, 0-9, '_' or '-', starting with a letter or digit")
    return tenant_id


@dataclass(frozen=True)
class Tenant:
    """A resolved tenant for one request."""

    id: str
    settings: TenantSettings
    lam: float | None  # the SLO controller's current λ, when it has one


@dataclass(frozen=True)
class Admission:
    """The store's answer for one request's key."""

    tenant_id: str
    settings: TenantSettings | None  # None when the caller already had fresh settings
    lam: float | None
    allowed: bool
    retry_after_ms: int = 0
    limit: str = ""  # "rpm" or "tpm" when refused
    granted: int = 1  # request tokens taken from the shared bucket (a lease: this one plus ones to admit locally)
