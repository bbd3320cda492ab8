"""Prometheus metrics of the router (exposed at ``GET /metrics``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

REQUESTS = Counter("adaptive_sd_requests", "Chat completion requests by model and HTTP status", ["model", "status"], registry=REGISTRY)
STAGE_CALLS = Counter("adaptive_sd_stage_calls", "Calls to each stage by outcome", ["stage", "outcome"], registry=REGISTRY)
STAGE_SECONDS = Histogram(
    "adaptive_sd_stage_seconds",
    "Wall time of stage calls",
    ["stage"],
    registry=REGISTRY,
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300),
)
CASCADE_STOPS = Counter("adaptive_sd_cascade_stops", "Cascade requests by the stage that answered", ["stage"], registry=REGISTRY)
CASCADE_ESCALATIONS = Counter(
    "adaptive_sd_cascade_escalations", "Escalations between stages", ["from_stage", "to_stage"], registry=REGISTRY
)
OVERHEAD_SECONDS = Histogram(
    "adaptive_sd_router_overhead_seconds",
    "Router time per request outside stage calls",
    registry=REGISTRY,
    buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.1),
)
DRAFT_TOKENS = Counter(
    "adaptive_sd_draft_tokens", "Draft tokens verified by a larger stage, accepted or rejected", ["stage", "verdict"], registry=REGISTRY
)
STORE_UP = Gauge("adaptive_sd_store_up", "1 while the tenant store (Redis) answers, 0 while the router runs degraded", registry=REGISTRY)
STORE_ERRORS = Counter("adaptive_sd_store_errors", "Failed tenant-store calls (timeouts, refused connections)", registry=REGISTRY)
TENANT_LAMBDA = Gauge("adaptive_sd_tenant_lambda", "Current λ of tenants under SLO control", ["tenant"], registry=REGISTRY)
TENANT_OBSERVED = Gauge("adaptive_sd_tenant_slo_observed", "Latest observed SLO metric per tenant", ["tenant", "metric"], registry=REGISTRY)
RATE_LIMITED = Counter("adaptive_sd_rate_limited", "Requests refused by a tenant rate limit", ["limit"], registry=REGISTRY)
# How requests with tools or a JSON format were served (``router.validity``): the kind of request by the stage
# that answered (cascade and pass-through), answers that broke the request's rules, stages left out for a capability.
REQUESTS_BY_KIND = Counter(
    "adaptive_sd_requests_by_kind",
    "Answered chat requests by kind (tools, json_object, json_schema, text) and answering stage",
    ["kind", "stage"],
    registry=REGISTRY,
)
INVALID_ANSWERS = Counter(
    "adaptive_sd_invalid_answers",
    "Stage answers that broke the request's tool or format rules, by stage and reason (a lower stage's is escalated)",
    ["stage", "reason"],
    registry=REGISTRY,
)
STAGES_SKIPPED = Counter(
    "adaptive_sd_stages_skipped",
    "Stages the cascade left out of a request for a missing capability",
    ["stage", "capability"],
    registry=REGISTRY,
)
