"""``adaptive-sd check-config`` refuses what the router would refuse at start-up, naming the setting."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _check(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "adaptive_sd.cli", "check-config"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)  # fmt: skip


def test_the_shipped_config_is_valid() -> None:
    done = _check()
    assert done.returncode == 0, done.stderr
    assert "config ok: 3 stage(s)" in done.stderr


def test_a_malformed_redis_url_is_a_config_error_naming_it() -> None:
    done = _check(ADAPTIVE_SD_TENANCY__REDIS_URL="redis+cluster://")
    assert done.returncode == 2
    assert "tenancy.redis_url" in done.stderr


def test_a_cost_unit_no_stage_is_priced_in_is_refused() -> None:
    done = _check(ADAPTIVE_SD_CASCADE__COST_UNIT="usd")
    assert done.returncode == 2
    assert "prices.usd" in done.stderr
