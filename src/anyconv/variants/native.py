"""The fused C++ loop nests of the non-matrix-product variants, compiled once and loaded with ctypes.

The sources ship next to this file; the first use compiles them with the system C++ compiler into
a per-machine cache (see :mod:`.native_cache` and docs/native.md). Where that cannot be done, one
warning names the reason and the fix, and :mod:`anyconv.variants.fused` runs its eager path, which
gives the same numbers; ``ANYCONV_NATIVE=0`` asks for the eager path without a word.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from .native_cache import (
    cache_dir,
    compiler_identity,
    cpu_description,
    entry_key,
    exclusive,
    is_intact,
    publish,
)

#: source file -> compiler flags; the power kernels need fast math for a vectorised pow, the tap
#: loops' quotient a sqrt free of errno (which nothing reads) to vectorise it
SOURCES = {
    "fused_kernels.cpp": ("-O3", "-march=native", "-std=c++17", "-fopenmp-simd"),
    "fused_power.cpp": ("-O3", "-march=native", "-std=c++17", "-fopenmp-simd", "-ffast-math"),
    "tap_loops.cpp": ("-O3", "-march=native", "-std=c++17", "-fopenmp-simd", "-fno-math-errno"),
    "fields_fold.cpp": ("-O3", "-march=native", "-std=c++17", "-fopenmp-simd"),
    "fields_columns.cpp": ("-O3", "-march=native", "-std=c++17", "-fno-tree-loop-distribute-patterns"),
    "cosine_rows.cpp": ("-O3", "-march=native", "-std=c++17", "-fopenmp-simd", "-fno-math-errno"),
}
#: sources built as one library per part, each part's compile defining ANYCONV_PART_<PART>: the tap
#: loops one per dtype, so that a first call waits for its own dtype's loops only (the four
#: together took about four times as long to compile)
PARTS = {"tap_loops.cpp": ("f32", "f64", "bf16", "f16")}
#: tried first: the forward loops split their rows on OpenMP threads, which (libgomp being
#: loaded already by torch under the same name) are torch's own; without it, Python threads do
OPENMP_FLAGS = ("-fopenmp",)
#: the headers the sources include; part of every source's cache key
HEADERS = ("fused_blocks.h", "storage_types.h")
#: glibc's vector math library, whose pow the vectorised power loops call; other C libraries
#: (macOS, musl) have none and declare no vector pow, so their builds need nothing extra. The tap
#: loops call its x86-64 exp and log by name, weak symbols (lanes one by one where it lacks them),
#: which the linker's --as-needed does not count as a need: hence --no-as-needed
_EXTRA_LIBRARIES: dict[str, tuple[str, ...]] = (
    {"fused_power.cpp": ("-lmvec",)} if platform.libc_ver()[0] == "glibc" else {}
)
if _EXTRA_LIBRARIES and platform.machine().lower() in ("x86_64", "amd64"):
    _EXTRA_LIBRARIES["tap_loops.cpp"] = ("-Wl,--no-as-needed", "-lmvec")
_FALLBACK = (
    "the native loops (of l1, lp, max_plus, min_plus, the tap loops, the fields path's copies and the "
    "small layers' cosine) run their eager path (same numbers, slower)"
)
_lock = threading.Lock()
_warned: set[str] = set()


@dataclass(frozen=True)
class Loaded:
    """The outcome of loading one source: the library, or None and why (with the fix)."""

    library: ctypes.CDLL | None
    detail: str


class _CacheNotWritable(Exception):
    pass


def native_enabled() -> bool:
    """False when the user asked for the eager path with the environment ``ANYCONV_NATIVE=0``.

    >>> isinstance(native_enabled(), bool)
    True
    """
    return os.environ.get("ANYCONV_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")


def compiler() -> tuple[str, ...] | None:
    """The C++ compiler command: ``$CXX`` when set (None if it names no program), else the first
    of ``c++``, ``g++``, ``clang++`` on the PATH.

    >>> compiler() is None or os.path.isabs(compiler()[0])
    True
    """
    chosen = os.environ.get("CXX", "").strip()
    if chosen:
        # CXX may carry a launcher or options ("ccache g++"), as build tools accept
        try:
            program, *options = shlex.split(chosen)
        except ValueError:  # an unbalanced quote: no program can be read from it
            return None
        found = shutil.which(program)
        return None if found is None else (found, *options)
    found = next((path for name in ("c++", "g++", "clang++") if (path := shutil.which(name))), None)
    return None if found is None else (found,)


def load_library(source_name: str, part: str | None = None) -> ctypes.CDLL | None:
    """The compiled library of ``source_name`` (its ``part``, for a source of ``PARTS``), or None
    (with one warning) when it cannot be had.

    >>> library = load_library("fused_kernels.cpp")
    >>> library is None or hasattr(library, "anyconv_openmp")
    True
    >>> library = load_library("tap_loops.cpp", "f64")
    >>> library is None or hasattr(library, "tap_forward_f64") and not hasattr(library, "tap_forward_f32")
    True
    """
    return load(source_name, part).library


def native_path(source_name: str, part: str | None = None) -> str:
    """``"native: <library>"`` or ``"eager: <why, and the fix>"`` for ``source_name`` (and
    ``part``), as ``anyconv check`` reports it.

    >>> native_path("fields_fold.cpp").startswith(("native: ", "eager: "))
    True
    """
    if not native_enabled():
        return "eager: ANYCONV_NATIVE=0 asks for it"
    return load(source_name, part).detail


def int64_arrays(*sequences: tuple[int, ...]) -> tuple[ctypes.Array, ...]:
    """Each of ``sequences`` as a C array of int64, for the native functions' size arguments (the
    caller keeps them alive as long as a call may read them).

    >>> [list(array) for array in int64_arrays((1, 2), (3,))]
    [[1, 2], [3]]
    """
    return tuple((ctypes.c_int64 * len(values))(*values) for values in sequences)


@cache
def load(source_name: str, part: str | None = None) -> Loaded:
    """Build ``source_name`` (its ``part``) if its cache entry is missing or damaged, then load it;
    once per process.

    >>> load("fused_power.cpp").detail.startswith(("native", "eager"))
    True
    """
    if part not in PARTS.get(source_name, (None,)):
        raise ValueError(f"part={part!r} of {source_name}: expected one of {PARTS.get(source_name, (None,))}")
    cxx = compiler()
    if cxx is None:
        chosen = os.environ.get("CXX", "").strip()
        missing = f"CXX={chosen!r} names no program" if chosen else "no c++, g++ or clang++ on the PATH"
        return _fallback(
            f"no C++ compiler ({missing})",
            "install g++ or clang++, or set CXX to a C++ compiler (ANYCONV_NATIVE=0 silences this)",
        )
    with _lock:
        try:
            path = _build(source_name, cxx, part)
        except _CacheNotWritable as error:
            return _fallback(
                f"cannot write the native cache ({error})", "set ANYCONV_CACHE_DIR to a writable directory"
            )
        except (OSError, subprocess.CalledProcessError) as error:
            output = (getattr(error, "stderr", "") or str(error)).strip()
            first_error = next((line for line in output.splitlines() if "error" in line), output[:200])
            return _fallback(
                f"could not compile {source_name}{'' if part is None else f' ({part})'} with "
                f"{' '.join(cxx)}: {first_error}",
                "set CXX to a working C++ compiler (ANYCONV_NATIVE=0 silences this)",
                output[:2000],
            )
        try:
            return Loaded(ctypes.CDLL(str(path)), f"native: {path}")
        except OSError as error:
            return _fallback(
                f"could not load {path}: {error}",
                "remove that file to rebuild it, or set CXX to another compiler",
            )


def _fallback(reason: str, fix: str, output: str = "") -> Loaded:
    """Warn once per distinct reason (both sources share most of them); the outcome keeps it too."""
    message = f"anyconv {reason}; {_FALLBACK}. To fix: {fix}." + (f"\n{output}" if output else "")
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=4)
    return Loaded(None, f"eager: {reason}; to fix: {fix}")


def _build(source_name: str, cxx: tuple[str, ...], part: str | None) -> Path:
    """Compile one source (or one part of it) into the cache, with OpenMP when the compiler has
    it, else without."""
    flags = SOURCES[source_name]
    if part is not None:
        flags = (*flags, f"-DANYCONV_PART_{part.upper()}")
    try:
        return _build_with(source_name, cxx, (*flags, *OPENMP_FLAGS), part)
    except subprocess.CalledProcessError:
        return _build_with(source_name, cxx, flags, part)


def _build_with(source_name: str, cxx: tuple[str, ...], flags: tuple[str, ...], part: str | None) -> Path:
    """The cache entry of this source, compiler, flags and CPU: checked, else built under a lock."""
    source = Path(__file__).with_name(source_name)
    stem = source.stem if part is None else f"{source.stem}_{part}"
    libraries = _EXTRA_LIBRARIES.get(source_name, ())
    link_flags = tuple(flag for flag in flags if flag in OPENMP_FLAGS)
    key = entry_key(
        source.read_text(),
        *(source.with_name(header).read_text() for header in HEADERS),
        compiler_identity(cxx),
        *flags,
        "linked with",
        *link_flags,
        *libraries,
        cpu_description(),
    )
    directory = cache_dir()
    target = directory / f"{stem}-{key}.so"
    # an intact entry is loaded without a lock, so a read-only cache filled beforehand still serves
    if is_intact(target):
        return target
    with contextlib.ExitStack() as held:
        with _writing(directory):
            directory.mkdir(parents=True, exist_ok=True)
            held.enter_context(exclusive(target.with_suffix(".lock")))
            # another process may have built it while this one waited for the lock
            if is_intact(target):
                return target
            scratch = Path(held.enter_context(tempfile.TemporaryDirectory(dir=directory)))
        built, compiled = scratch / target.name, scratch / f"{stem}.o"
        # compiled and linked apart: a link with -ffast-math adds gcc's crtfastmath.o, whose
        # constructor would turn on flush-to-zero for the whole process when the library loads
        compile_command = [*cxx, *flags, "-fPIC", "-c", str(source), "-o", str(compiled)]
        subprocess.run(compile_command, check=True, capture_output=True, text=True)
        link_command = [*cxx, *link_flags, "-shared", str(compiled), "-o", str(built), *libraries]
        subprocess.run(link_command, check=True, capture_output=True, text=True)
        with _writing(directory):
            publish(built, target)
    return target


@contextlib.contextmanager
def _writing(directory: Path) -> Iterator[None]:
    """Report a failure to write into the cache as such, not as a failed compile."""
    try:
        yield
    except OSError as error:
        raise _CacheNotWritable(f"{directory}: {error.strerror or error}") from error
