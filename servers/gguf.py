"""Minimal GGUF header reader.

Why our own: we verify a model's identity (``general.name``, architecture,
chat template) *before* handing the file to llama.cpp, without loading
hundreds of megabytes of tensors and without importing packages that pull in
other code. Only the key/value header is parsed; tensor data is never read.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, BinaryIO

_MAGIC = b"GGUF"
# GGUF value type ids -> struct format (scalars only; 8 = string, 9 = array).
_SCALARS: dict[int, str] = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING = 8
_ARRAY = 9
# Arrays longer than this (token lists, merges) are skipped, not materialised.
_MAX_ARRAY_KEPT = 64


class GGUFError(ValueError):
    """The file is not a readable GGUF file."""


def _read(f: BinaryIO, fmt: str) -> Any:
    size = struct.calcsize("<" + fmt)
    data = f.read(size)
    if len(data) != size:
        raise GGUFError("truncated GGUF header")
    return struct.unpack("<" + fmt, data)[0]


def _read_string(f: BinaryIO) -> str:
    n = _read(f, "Q")
    data = f.read(n)
    if len(data) != n:
        raise GGUFError("truncated GGUF string")
    return data.decode("utf-8", errors="replace")


def _read_value(f: BinaryIO, vtype: int) -> Any:
    if vtype in _SCALARS:
        return _read(f, _SCALARS[vtype])
    if vtype == _STRING:
        return _read_string(f)
    if vtype == _ARRAY:
        item_type = _read(f, "I")
        count = _read(f, "Q")
        if count > _MAX_ARRAY_KEPT and item_type in _SCALARS:
            f.seek(count * struct.calcsize("<" + _SCALARS[item_type]), 1)
            return None
        items = [_read_value(f, item_type) for _ in range(count)]
        return items if count <= _MAX_ARRAY_KEPT else None
    raise GGUFError(f"unknown GGUF value type {vtype}")


def read_metadata(path: str | Path) -> dict[str, Any]:
    """Return the GGUF key/value metadata (large arrays are reported as None)."""
    with open(path, "rb") as f:
        if f.read(4) != _MAGIC:
            raise GGUFError(f"{path} is not a GGUF file (bad magic)")
        version = _read(f, "I")
        if version < 2:
            raise GGUFError(f"{path}: GGUF version {version} is not supported")
        _read(f, "Q")  # tensor count
        n_kv = _read(f, "Q")
        meta: dict[str, Any] = {"gguf.version": version}
        for _ in range(n_kv):
            key = _read_string(f)
            meta[key] = _read_value(f, _read(f, "I"))
        return meta
