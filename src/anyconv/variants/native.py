"""The fused C++ loop nests of the non-matrix-product variants, compiled once and loaded with ctypes.

The sources ship next to this file; the first use compiles them with the system C++ compiler
into a per-machine cache. Without a compiler (or with ``ANYCONV_NATIVE=0``) nothing is built
and :mod:`anyconv.variants.fused` runs its chunked eager path, which gives the same numbers.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from functools import cache
from pathlib import Path

#: source file -> compiler flags; the power kernels need fast math for a vectorised pow
SOURCES = {
    "fused_kernels.cpp": ("-O3", "-march=native", "-std=c++17", "-fopenmp-simd"),
    "fused_power.cpp": ("-O3", "-march=native", "-std=c++17", "-fopenmp-simd", "-ffast-math"),
    "tap_loops.cpp": ("-O3", "-march=native", "-std=c++17", "-fopenmp-simd"),
}
#: tried first: the forward loops split their rows on OpenMP threads, which (libgomp being
#: loaded already by torch under the same name) are torch's own; without it, Python threads do
OPENMP_FLAGS = ("-fopenmp",)
#: the header both sources include; part of the cache key
HEADER = "fused_blocks.h"
_EXTRA_LIBRARIES = {"fused_power.cpp": ("-lmvec",)}
_lock = threading.Lock()


def native_enabled() -> bool:
    """False when the user asked for the eager path with the environment ``ANYCONV_NATIVE=0``."""
    return os.environ.get("ANYCONV_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")


def compiler() -> str | None:
    """The C++ compiler to use: ``$CXX``, else ``c++`` or ``g++`` or ``clang++`` on the PATH."""
    candidates = [os.environ.get("CXX"), "c++", "g++", "clang++"]
    return next((found for name in candidates if name and (found := shutil.which(name))), None)


def _machine_key() -> str:
    """What a ``-march=native`` build depends on: the CPU's feature flags where Linux lists them."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line for line in cpuinfo if line.startswith("flags")), "")
    except OSError:
        flags = ""
    return f"{platform.machine()} {platform.processor()} {flags}"


def _cache_dir() -> Path:
    root = os.environ.get("ANYCONV_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "anyconv"
    )
    return Path(root)


def _build(source_name: str, cxx: str) -> Path:
    """Compile one source into the cache, with OpenMP when the compiler has it, else without."""
    try:
        return _build_with(source_name, cxx, (*SOURCES[source_name], *OPENMP_FLAGS))
    except subprocess.CalledProcessError:
        return _build_with(source_name, cxx, SOURCES[source_name])


def _build_with(source_name: str, cxx: str, flags: tuple[str, ...]) -> Path:
    """Compile one source into the cache (atomically, so parallel processes do not collide)."""
    source = Path(__file__).with_name(source_name)
    libraries = _EXTRA_LIBRARIES.get(source_name, ())
    key = hashlib.sha256(
        "\n".join(
            [source.read_text(), source.with_name(HEADER).read_text(), cxx, *flags, *libraries]
            + [_machine_key()]
        ).encode()
    ).hexdigest()[:16]
    target = _cache_dir() / f"{source.stem}-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        built = Path(scratch) / target.name
        command = [cxx, *flags, "-shared", "-fPIC", str(source), "-o", str(built), *libraries]
        subprocess.run(command, check=True, capture_output=True, text=True)
        os.replace(built, target)
    return target


@cache
def load_library(source_name: str) -> ctypes.CDLL | None:
    """The compiled library of ``source_name``, or None (with one warning) when it cannot be built."""
    cxx = compiler()
    if cxx is None:
        return None
    with _lock:
        try:
            return ctypes.CDLL(str(_build(source_name, cxx)))
        except (OSError, subprocess.CalledProcessError) as error:
            detail = getattr(error, "stderr", "") or str(error)
            warnings.warn(
                f"anyconv could not compile {source_name} with {cxx}; the fused variants use their "
                f"eager path instead (same numbers, slower): {detail.strip()[:500]}",
                RuntimeWarning,
                stacklevel=2,
            )
            return None
