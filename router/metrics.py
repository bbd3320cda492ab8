"""Prometheus metrics of the router (exposed at ``GET /metrics``)."""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

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
EARLY_EXITS = Counter(
    "adaptive_sd_early_exits",
    "Stages aborted while writing (early exit), by stage and checkpoint",
    ["stage", "checkpoint"],
    registry=REGISTRY,
)
DRAFT_TOKENS = Counter(
    "adaptive_sd_draft_tokens", "Draft tokens verified by a larger stage, accepted or rejected", ["stage", "verdict"], registry=REGISTRY
)
STORE_UP = Gauge("adaptive_sd_store_up", "1 while the tenant store (Redis) answers, 0 while the router runs degraded", registry=REGISTRY)
STORE_ERRORS = Counter("adaptive_sd_store_errors", "Failed tenant-store calls (timeouts, refused connections)", registry=REGISTRY)
TENANT_LAMBDA = Gauge("adaptive_sd_tenant_lambda", "Current λ of tenants under SLO control", ["tenant"], registry=REGISTRY)
DEFAULT_LAMBDA = Gauge(
    "adaptive_sd_default_lambda",
    "λ of requests whose tenant sets none, before untrained_lambda_scale; source: target (cascade.default_target in the "
    "calibration table of the model in service) or default_lambda",
    ["source"],
    registry=REGISTRY,
)
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
# The router's own labels (``router.labels``): what its traffic says of the answers it escalated.
LABELS = Counter(
    "adaptive_sd_labels",
    "Labels read off the cascade's own traffic, by stage, source (verification, validity, shadow) and label (1 acceptable, 0 not)",
    ["stage", "source", "label"],
    registry=REGISTRY,
)
PREDICTOR_INFO = Gauge(
    "adaptive_sd_predictor_info",
    "The predictor in service (1): its name, model version, and whether it is trained on this ladder (false: the baseline's "
    "guess, and the router runs safe: cascade.untrained_lambda_scale, shadow.untrained_rate)",
    ["name", "version", "trained"],
    registry=REGISTRY,
)
PREDICTOR_RELOADS = Counter(
    "adaptive_sd_predictor_reloads",
    "Promoted (or rolled back) models this replica loaded without a restart, or failed to load (the old one stays)",
    ["outcome"],
    registry=REGISTRY,
)
CASCADE_TOURS = Counter(
    "adaptive_sd_cascade_tours",
    "Requests that toured the whole ladder for labels (cascade.explore): every stage in order, the top's answer returned",
    registry=REGISTRY,
)
SHADOW_CHECKS = Counter(
    "adaptive_sd_shadow_checks",
    "Shadow checks of answers returned from a lower stage, by verifying stage and outcome (checked, busy, unverifiable, failed)",
    ["stage", "outcome"],
    registry=REGISTRY,
)
STAGE_AGREEMENT = Histogram(
    "adaptive_sd_stage_agreement",
    "Share of a stage's escalated answer that the next stage kept when it verified the answer as a draft",
    ["stage"],
    registry=REGISTRY,
    buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.99, 1.0),
)
CASCADE_COST = Counter(
    "adaptive_sd_cascade_cost",
    "Cost of cascade answers in cascade.cost_unit: what they were charged (basis=realised), and what the top stage alone "
    "would have cost for the same answers' tokens (basis=top_stage); a streamed answer once its stream has ended",
    ["basis"],
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
    "Stages the cascade left out of a request: for a missing capability, or unavailable (no endpoint taking traffic)",
    ["stage", "capability"],
    registry=REGISTRY,
)

# -- stages as pools of endpoints (``router.stage_pool``) -------------------------------------------------------------
# The per-endpoint figures are plain attributes of each endpoint, updated on the hot path without a metrics call, and
# read here only when /metrics is scraped.
STAGE_RETRIES = Counter(
    "adaptive_sd_stage_retries",
    "Requests retried on another endpoint of the same stage after failing before any byte reached the client, by failure",
    ["stage", "failure"],
    registry=REGISTRY,
)
ANSWERS_WITHOUT_LOGPROBS = Counter(
    "adaptive_sd_answers_without_logprobs",
    "Stage answers judged from text features only because they carried no token logprobs",
    ["stage"],
    registry=REGISTRY,
)


class EndpointRow(NamedTuple):
    """One endpoint's state as /metrics shows it."""

    stage: str
    endpoint: str
    up: bool  # takes traffic now (healthy or on probation)
    in_flight: int
    latency_s: float | None  # EWMA of its service time
    requests: int
    failures: int
    ejections: int


class EndpointSource(Protocol):
    """What the collector reads: a stage pool."""

    def endpoint_rows(self) -> Iterable[EndpointRow]: ...

    def queue_delay_s(self) -> float: ...

    @property
    def name(self) -> str: ...


class EndpointCollector:
    """Prometheus collector over the live stage pools (held weakly: an app that is gone drops out)."""

    def __init__(self) -> None:
        self._sources: weakref.WeakSet[Any] = weakref.WeakSet()

    def track(self, sources: Iterable[EndpointSource]) -> None:
        for s in sources:
            self._sources.add(s)

    def describe(self) -> list[Any]:
        return []  # no collect() at registration time; names are checked at scrape

    def collect(self) -> Iterator[Any]:
        labels = ["stage", "endpoint"]
        up = GaugeMetricFamily("adaptive_sd_endpoint_up", "1 while the endpoint takes traffic, 0 while it is ejected", labels=labels)
        in_flight = GaugeMetricFamily(
            "adaptive_sd_endpoint_in_flight", "Requests the router has outstanding at the endpoint", labels=labels
        )
        latency = GaugeMetricFamily("adaptive_sd_endpoint_latency_seconds", "EWMA of the endpoint's service time", labels=labels)
        requests = CounterMetricFamily(
            "adaptive_sd_endpoint_requests", "Requests sent to the endpoint, by outcome", labels=[*labels, "outcome"]
        )
        ejections = CounterMetricFamily("adaptive_sd_endpoint_ejections", "Times the endpoint was ejected", labels=labels)
        delay = GaugeMetricFamily(
            "adaptive_sd_stage_queue_delay_seconds",
            "Expected queueing delay of a new request at the stage (load-aware cost)",
            labels=["stage"],
        )
        for source in list(self._sources):
            for row in source.endpoint_rows():
                key = [row.stage, row.endpoint]
                up.add_metric(key, 1.0 if row.up else 0.0)
                in_flight.add_metric(key, float(row.in_flight))
                if row.latency_s is not None:
                    latency.add_metric(key, row.latency_s)
                requests.add_metric([*key, "ok"], float(row.requests - row.failures))
                requests.add_metric([*key, "error"], float(row.failures))
                ejections.add_metric(key, float(row.ejections))
            delay.add_metric([source.name], source.queue_delay_s())
        yield from (up, in_flight, latency, requests, ejections, delay)


ENDPOINTS = EndpointCollector()
REGISTRY.register(ENDPOINTS)


# -- measured prices (``router.measured_prices``) ---------------------------------------------------------------------
# Each stage's fitted seconds are plain attributes of its estimator, updated on the hot path without a metrics call, and
# read here only when /metrics is scraped.
class PriceRow(NamedTuple):
    """One stage's measured prices as /metrics shows them."""

    stage: str
    request: float  # seconds per request
    prompt_token: float  # seconds per prompt token
    output_token: float  # seconds per generated token
    visits: int  # visits fitted


class PriceSource(Protocol):
    """What the collector reads: an engine's pricing."""

    def price_rows(self) -> Iterable[PriceRow]: ...


class PriceCollector:
    """Prometheus collector over the live engines' measured prices (held weakly; a stage named by two live engines
    shows the one tracked last)."""

    def __init__(self) -> None:
        self._sources: list[weakref.ref[Any]] = []

    def track(self, source: PriceSource) -> None:
        self._sources = [r for r in self._sources if r() is not None] + [weakref.ref(source)]

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        live = [s for s in (r() for r in self._sources) if s is not None]
        rows = {row.stage: row for source in live for row in source.price_rows()}
        if not rows:
            return
        labels = ["stage"]
        families = (
            (GaugeMetricFamily("adaptive_sd_measured_seconds_per_request", "Measured seconds per request of the stage "
                               "(its fitted time to first token, network and queueing)", labels=labels), "request"),
            (GaugeMetricFamily("adaptive_sd_measured_seconds_per_prompt_token", "Measured seconds per prompt token the "
                               "stage reads", labels=labels), "prompt_token"),
            (GaugeMetricFamily("adaptive_sd_measured_seconds_per_output_token", "Measured seconds per token the stage "
                               "generates", labels=labels), "output_token"),
        )  # fmt: skip
        visits = CounterMetricFamily("adaptive_sd_measured_price_visits", "Stage visits the measured prices were fitted to", labels=labels)
        for row in rows.values():
            for family, part in families:
                family.add_metric([row.stage], getattr(row, part))
            visits.add_metric([row.stage], float(row.visits))
        yield from (f for f, _ in families)
        yield visits


MEASURED_PRICES = PriceCollector()
REGISTRY.register(MEASURED_PRICES)
