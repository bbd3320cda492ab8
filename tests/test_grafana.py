"""The Grafana dashboard (deploy/grafana/dashboards/adaptive-sd.json) plots only what the router exposes, and docker
compose and the Kubernetes overlays provision it.

Every PromQL expression of every panel (and of the template variables) names metrics; each name must be one the
router's registry (router.metrics.REGISTRY) exposes, in the form Prometheus stores it: a counter as ``<name>_total``,
a histogram as ``_bucket``/``_count``/``_sum``, a gauge by its name. A panel plotting a metric that was renamed or
never existed shows "No data" forever and no one notices; here it fails. The labels an expression selects, groups by
or puts in a legend must be labels of the metrics it reads (or ``job``/``instance``, which Prometheus adds).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from adaptive_sd import kubernetes as k8s_gen
from common.settings import ConfigError
from router import metrics
from router.metrics import ENDPOINTS, MEASURED_PRICES, REGISTRY, EndpointRow, PriceRow
from tests.deploy.k8s import NAMESPACE, OVERLAYS, ROUTER, find, of_kind, port_names, render, selects

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_PATH = ROOT / "deploy" / "grafana" / "dashboards" / "adaptive-sd.json"
DASHBOARD: dict[str, Any] = json.loads(DASHBOARD_PATH.read_text(encoding="utf-8"))
GRAFANA = ROOT / "deploy" / "grafana"
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICE_MONITOR = ROOT / "deploy" / "kubernetes" / "examples" / "monitoring" / "servicemonitor.yaml"

# What Prometheus stores of a metric family of each type (prometheus_client's type names).
SAMPLE_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum"),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
    "summary": ("", "_count", "_sum"),
    "info": ("_info",),
    "stateset": ("",),
    "enum": ("",),
    "unknown": ("",),
}
TARGET_LABELS = {"job", "instance"}  # added by Prometheus to every series it scrapes
BUCKET_LABEL = "le"
# What the issue asked operators to see: labels gathered, shadow checks run and skipped, agreement per stage, the
# model version in service, the realised cost against the top stage's.
PROMISED = {
    "adaptive_sd_labels",
    "adaptive_sd_shadow_checks",
    "adaptive_sd_stage_agreement",
    "adaptive_sd_predictor_info",
    "adaptive_sd_cascade_cost",
}

_METRIC = re.compile(r"\badaptive_sd_[a-z0-9_]+")
_SELECTOR = re.compile(r"\b(adaptive_sd_[a-z0-9_]+)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_LEGEND_LABEL = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")


class Series(NamedTuple):
    """A series name Prometheus would store from the router's registry: its family and the family's labels."""

    family: str
    labels: frozenset[str]


class _Pool:
    """A stage pool for the endpoint collector: without one tracked it yields its families without samples."""

    name = "stage0"

    def endpoint_rows(self) -> list[EndpointRow]:
        return [EndpointRow("stage0", "http://stage0:8000/v1", True, 0, 0.1, 3, 1, 0)]

    def queue_delay_s(self) -> float:
        return 0.0


class _Engine:
    """An engine for the measured-price collector: without one tracked it yields nothing at all."""

    def price_rows(self) -> list[PriceRow]:
        return [PriceRow("stage0", 0.2, 1e-4, 0.02, 5)]


def exposed_series() -> dict[str, Series]:
    """Every series name the router's /metrics can show -> its family and labels. The collectors that read live
    objects (endpoints, measured prices) are given one each while collecting, so their families show."""
    wrapper_labels = {
        w.describe()[0].name: frozenset(w._labelnames)  # the labels of a family no request has touched yet
        for w in vars(metrics).values()
        if isinstance(w, MetricWrapperBase)
    }
    pool, engine = _Pool(), _Engine()
    ENDPOINTS.track([pool])
    MEASURED_PRICES.track(engine)
    try:
        families = list(REGISTRY.collect())
    finally:
        del pool, engine  # weakly held: they drop out of the collectors again
    out: dict[str, Series] = {}
    for family in families:
        sampled = {k for s in family.samples for k in s.labels} - {BUCKET_LABEL, "quantile"}
        labels = wrapper_labels.get(family.name, frozenset(sampled))
        for suffix in SAMPLE_SUFFIXES[family.type]:
            out[family.name + suffix] = Series(family.name, labels)
    return out


EXPOSED = exposed_series()


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # the panels of a collapsed row


PANELS = [p for p in _panels(DASHBOARD["panels"]) if p["type"] != "row"]


def expressions(dashboard: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(where, PromQL, legend) of every panel target and every query variable."""
    out = [
        (f"panel {p['title']!r} {t['refId']}", t["expr"], t.get("legendFormat", ""))
        for p in _panels(dashboard["panels"])
        for t in p.get("targets", [])
        if "expr" in t
    ]
    for var in dashboard.get("templating", {}).get("list", []):
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            out.append((f"variable {var['name']!r}", query, ""))
    return out


EXPRESSIONS = expressions(DASHBOARD)


def missing_metrics(exprs: list[tuple[str, str, str]], exposed: dict[str, Series]) -> list[str]:
    return [f"{where}: {name}" for where, expr, _ in exprs for name in _METRIC.findall(expr) if name not in exposed]


def foreign_labels(exprs: list[tuple[str, str, str]], exposed: dict[str, Series]) -> list[str]:
    """Labels an expression selects on, groups by or shows in its legend that none of its metrics has."""
    wrong: list[str] = []
    for where, expr, legend in exprs:
        names = [n for n in _METRIC.findall(expr) if n in exposed]
        known = set().union(*(exposed[n].labels for n in names)) | TARGET_LABELS
        for name, matchers in _SELECTOR.findall(expr):
            if name in exposed:
                wrong += [f"{where}: {name} has no label {label!r}" for label in _MATCHER.findall(matchers)
                          if label not in exposed[name].labels | TARGET_LABELS]  # fmt: skip
        grouped = {g.strip() for clause in _GROUPING.findall(expr) for g in clause.split(",") if g.strip()}
        wrong += [f"{where}: groups by {g!r}, which {names} lack" for g in sorted(grouped - known - {BUCKET_LABEL})]
        if "histogram_quantile" in expr and BUCKET_LABEL not in grouped:
            wrong.append(f"{where}: histogram_quantile over a sum that drops {BUCKET_LABEL!r}")
        wrong += [f"{where}: legend shows {g!r}, which {names} lack" for g in sorted(set(_LEGEND_LABEL.findall(legend)) - known)]
    return wrong


# -- the dashboard against the registry ------------------------------------------------------------------------


def test_every_plotted_metric_is_one_the_router_exposes() -> None:
    assert EXPRESSIONS and all(_METRIC.search(expr) for _, expr, _ in EXPRESSIONS), "an expression reads no router metric"
    missing = missing_metrics(EXPRESSIONS, EXPOSED)
    assert not missing, "the dashboard plots metrics router/metrics.py does not expose:\n" + "\n".join(missing)


def test_every_metric_named_anywhere_in_the_dashboard_exists() -> None:
    """Titles and descriptions name metrics too (for whoever reads the panel): they must not name ghosts either."""
    named = set(_METRIC.findall(DASHBOARD_PATH.read_text(encoding="utf-8")))
    families = {s.family for s in EXPOSED.values()}
    assert not named - set(EXPOSED) - families, sorted(named - set(EXPOSED) - families)


def test_selected_grouped_and_shown_labels_belong_to_the_metrics() -> None:
    wrong = foreign_labels(EXPRESSIONS, EXPOSED)
    assert not wrong, "\n".join(wrong)


def test_the_check_catches_a_metric_that_does_not_exist() -> None:
    """The two checks above are not vacuous: a made-up name, a counter without ``_total`` and a histogram read
    without ``_bucket`` are caught, and so is a label the metric does not have."""
    bad = [
        ("ghost", "sum(rate(adaptive_sd_no_such_metric_total[5m]))", ""),
        ("bare counter", "sum(rate(adaptive_sd_requests[5m]))", ""),
        ("bare histogram", "histogram_quantile(0.5, sum by (le) (rate(adaptive_sd_stage_seconds[5m])))", ""),
    ]
    assert len(missing_metrics(bad, EXPOSED)) == 3
    assert "adaptive_sd_requests_total" in EXPOSED and "adaptive_sd_stage_seconds_bucket" in EXPOSED
    labels = [("label", 'sum by (tenant) (rate(adaptive_sd_requests_total{basis="x"}[5m]))', "{{stage}}")]
    assert len(foreign_labels(labels, EXPOSED)) == 3
    quantile = [("quantile", "histogram_quantile(0.5, sum by (stage) (rate(adaptive_sd_stage_seconds_bucket[5m])))", "")]
    assert len(foreign_labels(quantile, EXPOSED)) == 1


def test_the_dashboard_shows_what_operators_were_promised() -> None:
    plotted = {EXPOSED[n].family for _, expr, _ in EXPRESSIONS for n in _METRIC.findall(expr) if n in EXPOSED}
    assert plotted >= PROMISED, f"not plotted: {sorted(PROMISED - plotted)}"
    saved = [expr for _, expr, _ in EXPRESSIONS if 'basis="realised"' in expr and 'basis="top_stage"' in expr]
    assert saved and all(expr.startswith("1 - ") for expr in saved), "the share saved: 1 - realised / top_stage"


def test_the_dashboard_is_one_grafana_provisions() -> None:
    assert DASHBOARD["uid"] == "adaptive-sd" and DASHBOARD["title"]
    assert DASHBOARD.get("id") is None, "a provisioned dashboard carries no database id"
    assert DASHBOARD["schemaVersion"] >= 36
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in _panels(DASHBOARD["panels"])]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in PANELS:
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, f"panel {panel['title']!r} is wider than the grid"
        for obj in (panel, *panel["targets"]):
            assert obj["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, f"panel {panel['title']!r}: fixed data source"


# -- docker compose -------------------------------------------------------------------------------------------


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> host path (relative to the repository) of a service's bind mounts."""
    out = {}
    for volume in service.get("volumes", []):
        host, container, *_ = volume.split(":")
        if host.startswith("./"):
            out[container] = host.removeprefix("./")
    return out


def test_compose_runs_prometheus_and_grafana_only_under_the_monitoring_profile() -> None:
    services = COMPOSE["services"]
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"], f"{name} would start with a plain `docker compose up`"
        image = services[name]["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: pin the image ({image})"
    assert all("monitoring" not in s.get("profiles", []) for n, s in services.items() if n not in ("prometheus", "grafana"))


def test_compose_provisions_the_data_source_and_the_dashboard() -> None:
    grafana = _mounts(COMPOSE["services"]["grafana"])
    assert grafana["/etc/grafana/provisioning"] == "deploy/grafana/provisioning"
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "adaptive-sd.yaml").read_text())
    (files,) = [p for p in provider["providers"] if p["type"] == "file"]
    mounted = grafana[files["options"]["path"]]
    assert (ROOT / mounted / DASHBOARD_PATH.name).read_text() == DASHBOARD_PATH.read_text()
    home = COMPOSE["services"]["grafana"]["environment"].get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    assert home is None or home == f"{files['options']['path']}/{DASHBOARD_PATH.name}"
    (source,) = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yaml").read_text())["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    assert "prometheus" in COMPOSE["services"]


def test_compose_prometheus_scrapes_every_router() -> None:
    prometheus = COMPOSE["services"]["prometheus"]
    config_path = next(a.split("=", 1)[1] for a in prometheus["command"] if a.startswith("--config.file="))
    config = yaml.safe_load((ROOT / _mounts(prometheus)[config_path]).read_text())
    targets = {
        f"{name}:{sd.get('port', '')}"
        for job in config["scrape_configs"]
        if job.get("metrics_path", "/metrics") == "/metrics"
        for sd in job.get("dns_sd_configs", [])
        for name in sd["names"]
    } | {t for job in config["scrape_configs"] for sc in job.get("static_configs", []) for t in sc["targets"]}
    routers = {n: s for n, s in COMPOSE["services"].items() if s.get("command", [None])[0] == "adaptive-sd"}
    assert routers
    for name, service in routers.items():
        port = service["ports"][0].rsplit(":", 1)[1]
        assert f"{name}:{port}" in targets, f"Prometheus does not scrape {name}"


# -- Kubernetes -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", list(OVERLAYS))
def test_every_overlay_carries_the_dashboard_for_the_grafana_sidecar(overlay: str) -> None:
    objects = render(overlay)
    (config_map,) = [o for o in of_kind(objects, "ConfigMap") if o["metadata"].get("labels", {}).get(k8s_gen.GRAFANA_DASHBOARD_LABEL)]
    assert config_map["metadata"]["labels"][k8s_gen.GRAFANA_DASHBOARD_LABEL] == "1"
    assert config_map["metadata"]["namespace"] == NAMESPACE
    assert config_map["data"] == {DASHBOARD_PATH.name: DASHBOARD_PATH.read_text(encoding="utf-8")}


@pytest.mark.parametrize("overlay", list(OVERLAYS))
def test_the_router_pods_say_where_their_metrics_are(overlay: str) -> None:
    template = find(render(overlay), "Deployment", ROUTER)["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == port_names(template)["http"]
    assert annotations["prometheus.io/path"] == "/metrics"


def test_the_service_monitor_example_selects_the_router_service() -> None:
    monitor = yaml.safe_load(SERVICE_MONITOR.read_text())
    assert monitor["kind"] == "ServiceMonitor" and monitor["metadata"]["namespace"] == NAMESPACE
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [NAMESPACE]
    services = [s for s in of_kind(render("gpu"), "Service") if selects(monitor["spec"]["selector"], s["metadata"]["labels"])]
    assert [s["metadata"]["name"] for s in services] == ["adaptive-sd"], "the ServiceMonitor must select the router Service only"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in [p["name"] for p in services[0]["spec"]["ports"]] and endpoint["path"] == "/metrics"
    assert services[0]["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "adaptive-sd"


def test_the_generator_refuses_a_dashboard_that_is_not_one(tmp_path: Path) -> None:
    broken = tmp_path / "adaptive-sd.json"
    broken.write_text("{not json")
    with pytest.raises(ConfigError, match="Grafana dashboard"):
        k8s_gen.dashboard_config_map(broken)
    with pytest.raises(ConfigError, match="Grafana dashboard"):
        k8s_gen.dashboard_config_map(tmp_path / "missing.json")
