"""``adaptive-sd tenants`` against a real Redis: the CLI path of the admin operations."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import ROOT, RedisServer


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "adaptive_sd.cli", "--config", str(config), "tenants", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _config(tmp_path: Path, redis_url: str) -> Path:
    """configs/cpu.yaml with API keys in the tenant store at ``redis_url``, written to ``tmp_path``."""
    cfg = yaml.safe_load((ROOT / "configs" / "cpu.yaml").read_text())
    cfg["tenancy"] = {"auth": "keys", "redis_url": redis_url}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_create_show_set_rotate_delete(redis_server: RedisServer, tmp_path: Path) -> None:
    redis_server.flush()
    path = _config(tmp_path, redis_server.url)
    out = _cli(path, "create", "team-a", "--set", "lambda=5", "--set", "rpm=600")
    assert out.returncode == 0, out.stderr
    key = json.loads(out.stdout)["api_key"]
    assert key.startswith("asd-")
    shown = json.loads(_cli(path, "show", "team-a").stdout)
    assert shown["settings"]["lambda"] == 5 and shown["settings"]["rpm"] == 600
    assert key not in _cli(path, "show", "team-a").stdout, "keys are stored hashed and never shown again"
    bad = _cli(path, "set", "team-a", "--set", "rpm=-1")
    assert bad.returncode == 2 and "rpm" in bad.stderr
    out = _cli(path, "set", "team-a", "--set", 'slo={"metric": "p95_latency_ms", "target": 1500}')
    assert out.returncode == 0 and json.loads(out.stdout)["settings"]["slo"]["target"] == 1500
    rotated = json.loads(_cli(path, "rotate-key", "team-a").stdout)
    assert rotated["revoked"] == 1 and rotated["api_key"] != key
    assert _cli(path, "create", "team-a").returncode == 2
    assert json.loads(_cli(path, "list").stdout) == ["team-a"]
    assert _cli(path, "delete", "team-a").returncode == 0
    assert _cli(path, "show", "team-a").returncode == 1


def test_migrate_runs_and_is_idempotent(redis_server: RedisServer, tmp_path: Path) -> None:
    redis_server.flush()
    path = _config(tmp_path, redis_server.url)
    assert _cli(path, "create", "team-m").returncode == 0
    out = _cli(path, "migrate")
    assert out.returncode == 0 and json.loads(out.stdout) == {"renamed_keys": 0}, out.stderr


def test_a_malformed_redis_url_stops_the_cli_and_the_router_naming_the_field(tmp_path: Path) -> None:
    path = _config(tmp_path, "redis+sentinel://:hunter2@s1:26379")
    out = _cli(path, "list")
    assert out.returncode == 2 and "tenancy.redis_url" in out.stderr and "service name" in out.stderr, out.stderr
    assert "hunter2" not in out.stderr
    served = subprocess.run([sys.executable, "-m", "adaptive_sd.cli", "--config", str(path), "serve"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, check=False)  # fmt: skip
    assert served.returncode == 2 and "tenancy.redis_url" in served.stderr, served.stderr[-2000:]
