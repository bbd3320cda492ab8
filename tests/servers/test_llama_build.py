"""The installed llama.cpp runs on any x86-64-v3 machine: no AMX and no AVX-512 instructions in its libraries.

A native build (llama.cpp's default, ``-march=native``) compiles in what the build
machine's CPU advertises; a VM may advertise AMX without letting a process run it,
and every stage then dies at its first matrix product (``ldtilecfg``, a general
protection fault). ``make install`` builds with a fixed baseline instead
(``LLAMA_CMAKE_ARGS`` in the Makefile, ``scripts/llama-cpp-wheel.sh``); this reads
the machine code of the libraries the stage servers load and proves it.
"""

from __future__ import annotations

import importlib.util
import platform
import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(platform.machine() != "x86_64", reason="the instruction baseline is x86-64's")

# AMX: tile configuration, loads, stores and the tile dot products
AMX = re.compile(r"\b(ldtilecfg|sttilecfg|tilerelease|tilezero|tileloadd|tileloaddt1|tilestored|tdpb[su]{2}d|tdpbf16ps|tdpfp16ps)\b")
ZMM = re.compile(r"%zmm\d+|%k[1-7]\b")  # AVX-512: 512-bit registers, opmask registers
YMM = re.compile(r"%ymm\d+")  # AVX2: the baseline's vectors, present (so the disassembly is real)


def _libraries() -> list[Path]:
    spec = importlib.util.find_spec("llama_cpp")
    assert spec is not None and spec.origin is not None, "llama-cpp-python is not installed"
    libs = sorted((Path(spec.origin).parent / "lib").glob("libggml*.so"))
    assert libs, "no ggml libraries next to llama_cpp"
    return libs


def _disassembly(lib: Path) -> str:
    objdump = shutil.which("objdump")
    assert objdump, "objdump (binutils, which the llama.cpp build itself needs) is missing"
    return subprocess.run([objdump, "-d", "--no-show-raw-insn", str(lib)], capture_output=True, text=True, check=True).stdout


def test_no_amx_and_no_avx512_in_the_installed_llama_cpp() -> None:
    found: dict[str, dict[str, int]] = {}
    for lib in _libraries():
        code = _disassembly(lib)
        found[lib.name] = {"amx": len(AMX.findall(code)), "avx512": len(ZMM.findall(code)), "avx2": len(YMM.findall(code))}
    assert all(v["amx"] == 0 for v in found.values()), found
    assert all(v["avx512"] == 0 for v in found.values()), found
    assert found["libggml-cpu.so"]["avx2"] > 1000, found  # the CPU kernels are vectorised at the baseline


def test_the_patterns_find_what_they_look_for() -> None:
    """The scan is not blind: each pattern matches objdump's spelling of the instructions it is meant to catch."""
    assert AMX.search("  4010:\tldtilecfg (%rdi)") and AMX.search("\ttdpbssd %tmm2,%tmm1,%tmm0")
    assert ZMM.search("\tvpaddd %zmm1,%zmm2,%zmm3") and ZMM.search("\tvmovdqu8 (%rax),%zmm0{%k1}")
    assert not ZMM.search("\tvpaddd %ymm1,%ymm2,%ymm3") and not AMX.search("\tvpdpbusd %ymm1,%ymm2,%ymm3")
