"""Rendering the Kubernetes overlays and reading the objects they hold, for the tests beside this module.

``kubectl kustomize`` renders; when kubectl is missing the tests fail (not skip) and say how to get it: `make test`
installs it (``make system-deps``: Debian's kubernetes-client), and a suite that silently skipped the manifests would
let them rot. ``ADAPTIVE_SD_EXTRA_KUBECTL`` names further kubectl binaries (separated like PATH) whose kustomize must
render the same objects: the manifests are written for kustomize v2.0.3 (kubectl 1.20, Debian's) and v5 alike.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "kubernetes"
OVERLAYS = {
    "cpu": DEPLOY / "overlays" / "cpu",
    "gpu": DEPLOY / "overlays" / "gpu",
    "external-redis": DEPLOY / "examples" / "external-redis",
}
EXTRA_KUBECTL_ENV = "ADAPTIVE_SD_EXTRA_KUBECTL"
NAMESPACE = "adaptive-sd"
ROUTER = "adaptive-sd-router"

Obj = dict[str, Any]


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.fail("kubectl is not installed: `make system-deps` installs it (Debian: apt-get install kubernetes-client)")
    return path


def extra_kubectls() -> list[str]:
    return [p for p in os.environ.get(EXTRA_KUBECTL_ENV, "").split(os.pathsep) if p]


@functools.cache
def _render(directory: Path, binary: str) -> tuple[Obj, ...]:
    out = subprocess.run([binary, "kustomize", str(directory)], capture_output=True, text=True, check=False, timeout=120)
    assert out.returncode == 0, f"{binary} kustomize {directory.relative_to(ROOT)} failed:\n{out.stderr}"
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def render(overlay: str, binary: str | None = None) -> list[Obj]:
    """The overlay's objects as ``binary kustomize`` renders them (rendered once per binary and overlay)."""
    return list(_render(OVERLAYS[overlay], binary or kubectl()))


def key(obj: Obj) -> tuple[str, str, str]:
    return obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"]


def find(objects: list[Obj], kind: str, name: str) -> Obj:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def of_kind(objects: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind]


def pod_templates(objects: list[Obj]) -> dict[str, Obj]:
    """``Kind/name`` -> pod template of every workload in the render."""
    return {f"{o['kind']}/{o['metadata']['name']}": o["spec"]["template"] for o in objects if o["kind"] in ("Deployment", "StatefulSet")}


def selects(selector: Obj, labels: dict[str, str]) -> bool:
    """A label selector (``matchLabels`` only: the manifests use nothing else, and a test says so) against labels."""
    assert set(selector) <= {"matchLabels"}, f"selector uses more than matchLabels: {selector}"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def selected_pods(objects: list[Obj], match_labels: dict[str, str]) -> dict[str, Obj]:
    return {name: t for name, t in pod_templates(objects).items() if selects({"matchLabels": match_labels}, t["metadata"]["labels"])}


def container(template: Obj, name: str | None = None) -> Obj:
    containers = template["spec"]["containers"]
    if name is None:
        assert len(containers) == 1, "expected one container"
        return containers[0]
    found: Obj = next(c for c in containers if c["name"] == name)
    return found


def port_names(template: Obj) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for c in template["spec"]["containers"] for p in c.get("ports", []) if "name" in p}


def env_literals(c: Obj) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}
