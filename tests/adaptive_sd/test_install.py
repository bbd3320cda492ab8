"""A non-editable install works outside the source tree: the default config and the model are package data.

The wheel is built from this checkout and installed into a fresh virtualenv; the
third-party dependencies come from the test environment's site-packages (a
``.pth`` line), so the test costs a wheel build, not a download. ``check-config``
then runs from an empty directory: it resolves the default config and loads the
shipped predictor, both from the installed package.
"""

from __future__ import annotations

import os
import site
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(*cmd: str | Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False)


def test_wheel_installs_and_check_config_runs_from_another_directory(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    built = _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", wheels, ROOT, cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    wheel = next(wheels.glob("adaptive_sd-*.whl"))

    env_dir = tmp_path / "fresh"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    purelib = _run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path).stdout.strip()
    deps = [p for p in site.getsitepackages() if Path(p).is_dir()]
    # dependencies only: the test environment's own (editable) adaptive-sd is not on this path, since
    # .pth files inside a directory added by a .pth line are not processed
    (Path(purelib) / "test-deps.pth").write_text("\n".join(deps) + "\n")
    installed = _run(python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel, cwd=tmp_path)
    assert installed.returncode == 0, installed.stderr

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADAPTIVE_SD_") and k != "PYTHONPATH"}
    probe = "import common.settings, predictor.serving.loader; print(common.settings.DEFAULT_CONFIG)"
    where = _run(python, "-c", probe, cwd=elsewhere, env=env)
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(purelib), f"imported from the source tree, not the install: {where.stdout}"

    checked = _run(env_dir / "bin" / "adaptive-sd", "check-config", cwd=elsewhere, env=env)
    assert checked.returncode == 0, checked.stderr
    assert '"model_name": "cascade"' in checked.stdout
    assert "predictor onnx-" in checked.stderr and "top-k 5" in checked.stderr
