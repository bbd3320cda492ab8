"""Model weights: located without import, assembled once, verified by checksum and GGUF identity."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from servers import weights
from servers.gguf import GGUFError, read_metadata


def _fake_gguf(path: Path, name: str, template: str | None = "{{ messages }}") -> Path:
    kv = [("general.name", name)] + ([("tokenizer.chat_template", template)] if template else [])
    with open(path, "wb") as f:
        f.write(b"GGUF" + struct.pack("<IQQ", 3, 0, len(kv)))
        for key, value in kv:
            f.writelines(struct.pack("<Q", len(s)) + s.encode() for s in (key,))
            f.write(struct.pack("<I", 8) + struct.pack("<Q", len(value)) + value.encode())
    return path


@pytest.mark.parametrize("key", sorted(weights.CATALOG))
def test_catalog_resolves_to_the_named_model(key: str, tmp_path: Path) -> None:
    path = weights.resolve(key, cache_dir=tmp_path)
    meta = read_metadata(path)
    assert weights.CATALOG[key].expect_name.lower() in meta["general.name"].lower()
    assert meta["tokenizer.chat_template"]
    # second call trusts the marker and does not re-hash
    marker = tmp_path / f"{weights.CATALOG[key].filename}.ok"
    assert marker.exists()
    assert weights.resolve(key, cache_dir=tmp_path) == path


def test_corrupt_assembled_file_is_rebuilt(tmp_path: Path) -> None:
    key = "qwen2.5-coder-0.5b-instruct"
    path = weights.resolve(key, cache_dir=tmp_path)
    with open(path, "r+b") as f:
        f.seek(1000)
        f.write(b"\0" * 16)
    assert weights.resolve(key, cache_dir=tmp_path) == path
    assert weights._sha256_of([path]) == weights.CATALOG[key].sha256


def test_identity_check_refuses_another_model(tmp_path: Path) -> None:
    spec = weights.CATALOG["qwen2.5-coder-0.5b-instruct"]
    with pytest.raises(weights.WeightsError, match="general.name"):
        weights.check_identity(spec, _fake_gguf(tmp_path / "a.gguf", "Llama 3 8B"))
    with pytest.raises(weights.WeightsError, match="chat template"):
        weights.check_identity(spec, _fake_gguf(tmp_path / "b.gguf", "Qwen2.5 Coder 0.5B Instruct", template=None))


def test_not_a_gguf_file(tmp_path: Path) -> None:
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"PK\x03\x04 not gguf")
    with pytest.raises(GGUFError, match="bad magic"):
        read_metadata(bad)
    truncated = tmp_path / "t.gguf"
    truncated.write_bytes(b"GGUF" + struct.pack("<I", 3))
    with pytest.raises(GGUFError, match="truncated"):
        read_metadata(truncated)


def test_unknown_key_and_missing_package() -> None:
    with pytest.raises(weights.WeightsError, match="unknown weights"):
        weights.resolve("gpt-5")
    missing = weights.WeightsSpec("x", ("no_such_pkg_here",), "*.gguf", "", "x", ("no-such-pkg-here",))
    with pytest.raises(weights.WeightsError, match="not installed"):
        weights._package_files(missing)
