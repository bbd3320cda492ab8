"""The Kubernetes overlays render, validate against the Kubernetes schema, and hang together.

Each overlay (and the external-Redis example) is rendered by ``kubectl kustomize``; every object is checked with
kubernetes-validate in strict mode (unknown fields are errors) against fixed Kubernetes versions it bundles, and then
for what the schema cannot see: the router is replicated, probed on /health, covered by its PodDisruptionBudget and
HorizontalPodAutoscaler, and shuts down within its grace period; every Service and NetworkPolicy selects pods that
exist; every ``ADAPTIVE_SD_`` variable names a real settings field and, with the generated config, gives settings
that load and agree with the objects (ports, Redis, the vLLM command lines, GPU counts). kubectl missing is a failure.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import SchemaNotFoundError

from adaptive_sd import kubernetes as k8s_gen
from common.settings import CONFIG_ENV, LlamaCppLaunch, Settings, VLLMLaunch, load_settings
from servers.launcher import _STOP_GRACE_S as LADDER_STOP_GRACE_S
from servers.launcher import vllm_command
from tests.deploy.k8s import (
    NAMESPACE,
    OVERLAYS,
    ROOT,
    ROUTER,
    Obj,
    container,
    env_literals,
    extra_kubectls,
    find,
    key,
    of_kind,
    pod_templates,
    port_names,
    render,
    selected_pods,
    selects,
)
from tests.test_docs import settings_fields

KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")  # the oldest and the newest this suite vouches for, both bundled by the pin
ALL = list(OVERLAYS)
CONFIG_MOUNT = "/etc/adaptive-sd"
SETTINGS_ENV = {var for _, var in settings_fields() if var is not None}
OTHER_ENV = {CONFIG_ENV, "ADAPTIVE_SD_CACHE"}  # read by the CLI and the launcher, not settings fields
SECRET_PLACEHOLDER = {"ADAPTIVE_SD_TENANCY__REDIS_URL": "redis://redis.example.com:6379/0"}


def _router(objects: list[Obj]) -> Obj:
    return find(objects, "Deployment", ROUTER)


def _router_container(objects: list[Obj]) -> Obj:
    return container(_router(objects)["spec"]["template"], "router")


def _effective_settings(objects: list[Obj], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings a router pod starts with: the ConfigMap's config file (at the path its args name) under the pod's
    environment, Secret-held values replaced by placeholders (the Secrets exist only in a cluster)."""
    c = _router_container(objects)
    args = c["args"]
    config_path = Path(args[args.index("--config") + 1])
    mount = next(m for m in c["volumeMounts"] if config_path.is_relative_to(m["mountPath"]))
    volume = next(v for v in _router(objects)["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    config_map = find(objects, "ConfigMap", volume["configMap"]["name"])
    local = tmp_path / "config.yaml"
    local.write_text(config_map["data"][str(config_path.relative_to(mount["mountPath"]))])
    for name in list(os.environ):
        if name.startswith("ADAPTIVE_SD_"):
            monkeypatch.delenv(name)
    for e in c["env"]:
        monkeypatch.setenv(e["name"], e["value"] if "value" in e else SECRET_PLACEHOLDER.get(e["name"], "from-a-secret"))
    return load_settings(local)


# -- rendering and the schema -----------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", ALL)
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_validates_against_the_kubernetes_schema(overlay: str, version: str) -> None:
    objects = render(overlay)
    assert objects
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{overlay}: {obj['kind']}/{obj['metadata']['name']} is invalid for Kubernetes {version}: {path}: {exc.message}")
        except SchemaNotFoundError as exc:
            pytest.fail(f"{overlay}: {exc.message}")


@pytest.mark.parametrize("overlay", ALL)
def test_every_kubectl_renders_the_same_objects(overlay: str) -> None:
    """kustomize v2.0.3 (Debian's kubectl 1.20, what CI installs) orders kinds differently from v5; the objects
    themselves must be the same, so an overlay never means one thing on one machine and another on the next."""
    others = extra_kubectls()
    if not others:
        pytest.skip("set ADAPTIVE_SD_EXTRA_KUBECTL to other kubectl binaries to compare their renders (docs/kubernetes.md)")
    mine = sorted(render(overlay), key=key)
    for binary in others:
        assert sorted(render(overlay, binary), key=key) == mine, f"{binary} renders {overlay} differently"


@pytest.mark.parametrize("overlay", ALL)
def test_everything_is_in_the_namespace_and_no_secret_is_shipped(overlay: str) -> None:
    objects = render(overlay)
    assert find(objects, "Namespace", NAMESPACE)
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == NAMESPACE, f"{obj['kind']}/{obj['metadata']['name']} outside {NAMESPACE}"
    assert not of_kind(objects, "Secret"), "the overlays must not carry a Secret: keys are created in the cluster"


# -- the router -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", ALL)
def test_the_router_is_replicated_probed_and_bounded(overlay: str) -> None:
    objects = render(overlay)
    router = _router(objects)
    assert router["spec"]["replicas"] >= 2
    assert selects(router["spec"]["selector"], router["spec"]["template"]["metadata"]["labels"])
    c = _router_container(objects)
    ports = port_names(router["spec"]["template"])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = c[probe]["httpGet"]
        assert get["path"] == "/health", probe
        assert get["port"] in ports, f"{probe} names port {get['port']}, the container has {sorted(ports)}"
    for section in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][section]), section


@pytest.mark.parametrize("overlay", ALL)
def test_the_disruption_budget_and_the_autoscaler_cover_the_router(overlay: str) -> None:
    objects = render(overlay)
    router = _router(objects)
    labels = router["spec"]["template"]["metadata"]["labels"]
    (pdb,) = of_kind(objects, "PodDisruptionBudget")
    assert selects(pdb["spec"]["selector"], labels)
    assert list(selected_pods(objects, pdb["spec"]["selector"]["matchLabels"])) == [f"Deployment/{ROUTER}"], "the PDB selects other pods"
    assert pdb["spec"]["maxUnavailable"] < router["spec"]["replicas"], "a drain could take every router at once"
    (hpa,) = of_kind(objects, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": ROUTER}
    assert 2 <= hpa["spec"]["minReplicas"] <= router["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]
    for metric in hpa["spec"]["metrics"]:  # a Resource metric on a resource the container does not request never scales
        assert metric["resource"]["name"] in _router_container(objects)["resources"]["requests"]


@pytest.mark.parametrize("overlay", ALL)
def test_the_environment_names_real_settings(overlay: str) -> None:
    for name, template in pod_templates(render(overlay)).items():
        for c in template["spec"]["containers"]:
            for e in c.get("env", []):
                if e["name"].startswith("ADAPTIVE_SD_"):
                    assert e["name"] in SETTINGS_ENV | OTHER_ENV, f"{name}: {e['name']} is no settings field (common/settings.py)"


@pytest.mark.parametrize("overlay", ALL)
def test_shutdown_fits_the_grace_period(overlay: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """preStop sleep (endpoints drain), then SIGTERM and ``server.shutdown_grace_s`` for requests in flight, as the pod
    reads it (its environment over the config), and for ``up`` the stages' own stop: all before the SIGKILL."""
    objects = render(overlay)
    c = _router_container(objects)
    assert "ADAPTIVE_SD_SERVER__SHUTDOWN_GRACE_S" in env_literals(c), "the grace must be set in the pod, beside the period it must fit"
    grace = _effective_settings(objects, tmp_path, monkeypatch).server.shutdown_grace_s
    assert grace == float(env_literals(c)["ADAPTIVE_SD_SERVER__SHUTDOWN_GRACE_S"])
    pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    budget = float(pre_stop[1]) + grace + (LADDER_STOP_GRACE_S if c["args"][-1] == "up" else 0.0)
    assert _router(objects)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > budget


@pytest.mark.parametrize("overlay", ALL)
def test_the_config_map_gives_settings_the_objects_agree_with(overlay: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    objects = render(overlay)
    settings = _effective_settings(objects, tmp_path, monkeypatch)
    c = _router_container(objects)
    assert settings.server.host == "0.0.0.0"
    assert settings.server.port == port_names(_router(objects)["spec"]["template"])["http"]
    assert settings.tenancy.auth == "keys"
    admin = next(e for e in c["env"] if e["name"] == "ADAPTIVE_SD_TENANCY__ADMIN_KEY")
    assert "secretKeyRef" in admin["valueFrom"], "the admin key comes from a Secret, never a literal"
    assert settings.tenancy.admin_key is not None
    redis = next(e for e in c["env"] if e["name"] == "ADAPTIVE_SD_TENANCY__REDIS_URL")
    if overlay == "external-redis":
        assert "secretKeyRef" in redis["valueFrom"]
        assert not [o for o in objects if o["metadata"]["name"] == "redis"], "the in-cluster Redis is still there"
    else:
        url = settings.tenancy.redis_url or ""
        host, port = url.removeprefix("redis://").split("/")[0].split(":")
        service = find(objects, "Service", host)
        assert int(port) in [p["port"] for p in service["spec"]["ports"]]


@pytest.mark.parametrize("overlay", ALL)
def test_the_config_checksum_rolls_the_routers(overlay: str) -> None:
    objects = render(overlay)
    config = find(objects, "ConfigMap", "adaptive-sd-config")["data"][k8s_gen.CONFIG_FILE]
    annotations = _router(objects)["spec"]["template"]["metadata"]["annotations"]
    assert annotations[k8s_gen.CONFIG_CHECKSUM_ANNOTATION] == hashlib.sha256(config.encode()).hexdigest()


# -- Services, NetworkPolicies, Redis ---------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", ALL)
def test_every_service_selects_pods_with_its_target_ports(overlay: str) -> None:
    objects = render(overlay)
    for service in of_kind(objects, "Service"):
        pods = selected_pods(objects, service["spec"]["selector"])
        assert pods, f"Service {service['metadata']['name']} selects no pods"
        for template in pods.values():
            ports = port_names(template)
            for p in service["spec"]["ports"]:
                assert p["targetPort"] in ports, f"Service {service['metadata']['name']}: no port {p['targetPort']} on its pods"


@pytest.mark.parametrize("overlay", ALL)
def test_only_the_routers_reach_the_stages_and_redis(overlay: str) -> None:
    objects = render(overlay)
    router_name = f"Deployment/{ROUTER}"
    covered: set[str] = set()
    for policy in of_kind(objects, "NetworkPolicy"):
        spec = policy["spec"]
        targets = selected_pods(objects, spec["podSelector"]["matchLabels"])
        assert targets, f"NetworkPolicy {policy['metadata']['name']} selects no pods"
        assert router_name not in targets
        assert spec["policyTypes"] == ["Ingress"]
        covered |= set(targets)
        for rule in spec["ingress"]:
            for peer in rule["from"]:
                assert set(peer) == {"podSelector"}, "peers are router pods of this namespace only"
                assert list(selected_pods(objects, peer["podSelector"]["matchLabels"])) == [router_name]
            for template in targets.values():
                for p in rule["ports"]:
                    assert p["port"] in port_names(template), f"NetworkPolicy {policy['metadata']['name']}: no port {p['port']}"
    assert covered == set(pod_templates(objects)) - {router_name}, "a pod besides the router is reachable by anyone"


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_redis_keeps_an_append_only_file_on_a_volume_claim(overlay: str) -> None:
    objects = render(overlay)
    redis = find(objects, "StatefulSet", "redis")
    args = container(redis["spec"]["template"])["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    data = args[args.index("--dir") + 1]
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    mounts = {m["mountPath"]: m["name"] for m in container(redis["spec"]["template"])["volumeMounts"]}
    assert mounts[data] == claim["metadata"]["name"]
    service = find(objects, "Service", redis["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"


# -- the ladders ------------------------------------------------------------------------------------------------


def test_the_cpu_router_runs_the_ladder_inside_its_pod(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    objects = render("cpu")
    settings = _effective_settings(objects, tmp_path, monkeypatch)
    c = _router_container(objects)
    assert c["args"][-1] == "up"
    assert settings.stages and all(isinstance(s.launch, LlamaCppLaunch) and s.host == "127.0.0.1" for s in settings.stages)
    probe = c["startupProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] > settings.server.startup_timeout_s, "the pod is killed while `up` waits"
    threads = sum(s.launch.threads for s in settings.stages if isinstance(s.launch, LlamaCppLaunch))
    assert float(c["resources"]["requests"]["cpu"]) >= threads + 1, "the stages' threads and the router need their cores"
    cache = env_literals(c)["ADAPTIVE_SD_CACHE"]
    assert cache in {m["mountPath"] for m in c["volumeMounts"]}
    assert {s["metadata"]["name"] for s in of_kind(objects, "Service")} == {"adaptive-sd", "redis"}, "the stages live in the router pod"


def _compose_commands() -> dict[str, list[str]]:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    return {name: ["vllm", "serve", *s["command"]] for name, s in services.items() if "gpu" in s.get("profiles", [])}


@pytest.mark.parametrize("overlay", ["gpu", "external-redis"])
def test_the_gpu_stages_run_the_configured_vllm_commands(overlay: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each vLLM stage of the config the routers read is a Deployment running exactly ``vllm_command`` (the command
    compose runs, too) on as many GPUs as the stage lists, behind the Service its URL names."""
    objects = render(overlay)
    settings = _effective_settings(objects, tmp_path, monkeypatch)
    compose = _compose_commands()
    stages = [(s, s.launch) for s in settings.stages if isinstance(s.launch, VLLMLaunch)]
    assert len(stages) == len(settings.stages) == 4
    for stage, launch in stages:
        service = find(objects, "Service", stage.host)
        assert [p["port"] for p in service["spec"]["ports"]] == [stage.port]
        (name, template), *rest = selected_pods(objects, service["spec"]["selector"]).items()
        assert not rest and name == f"Deployment/{stage.host}"
        c = container(template)
        cmd, env = vllm_command(stage, launch, host="0.0.0.0")
        assert [*c["command"], *c["args"]] == cmd == compose[stage.host]
        assert "CUDA_VISIBLE_DEVICES" not in env_literals(c), "the device plugin picks the GPUs; host ids mean nothing in a pod"
        assert env["CUDA_VISIBLE_DEVICES"].count(",") + 1 == len(launch.gpus)
        for section in ("requests", "limits"):
            assert c["resources"][section]["nvidia.com/gpu"] == str(len(launch.gpus)) and len(launch.gpus) >= launch.tensor_parallel_size
        spec = template["spec"]
        assert spec["nodeSelector"] and spec["tolerations"]
        assert c["startupProbe"]["httpGet"]["path"] == "/health"
        startup = c["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= settings.server.startup_timeout_s
        claims = [v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"] if "persistentVolumeClaim" in v]
        for claim in claims:
            find(objects, "PersistentVolumeClaim", claim)
        assert math.isclose(launch.gpu_memory_utilization, float(cmd[cmd.index("--gpu-memory-utilization") + 1]))


def _deep_keys(obj: Any) -> set[str]:
    if isinstance(obj, dict):
        return set(obj) | {k for v in obj.values() for k in _deep_keys(v)}
    if isinstance(obj, list):
        return {k for v in obj for k in _deep_keys(v)}
    return set()


@pytest.mark.parametrize("overlay", ALL)
def test_selectors_use_match_labels_only(overlay: str) -> None:
    """The helpers above read ``matchLabels``; a ``matchExpressions`` would be checked by nobody."""
    assert "matchExpressions" not in _deep_keys(render(overlay))
