"""The cache of compiled native libraries: where it lives, what an entry's key depends on, how it is checked.

An entry is a library plus a manifest of its size and SHA-256, published atomically after it; a
library whose manifest is missing or does not match is never loaded (it is rebuilt instead).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import subprocess
from collections.abc import Iterator, Sequence
from functools import cache
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory file locks; atomic replaces still keep every entry whole
    fcntl = None  # type: ignore[assignment]

#: bumped when the layout of an entry changes, so that old entries are never read as new ones
LAYOUT = "anyconv native cache 2"
#: the lines of /proc/cpuinfo that describe what the CPU is and can do (x86, ARM, POWER, RISC-V,
#: MIPS, s390); the others (clock speed, core ids, bogomips) change at run time or per core
_CPUINFO_KEYS = frozenset(
    {
        "vendor_id",
        "model name",
        "cpu family",
        "model",
        "stepping",
        "flags",
        "Features",
        "CPU implementer",
        "CPU architecture",
        "CPU variant",
        "CPU part",
        "CPU revision",
        "cpu",
        "isa",
        "uarch",
        "cpu model",
        "ASEs implemented",
        "features",
    }
)


def cache_dir() -> Path:
    """``$ANYCONV_CACHE_DIR``, else ``$XDG_CACHE_HOME/anyconv``, else ``~/.cache/anyconv``.

    >>> cache_dir().name == "anyconv" or "ANYCONV_CACHE_DIR" in os.environ
    True
    """
    root = os.environ.get("ANYCONV_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "anyconv"
    )
    return Path(root)


@cache
def cpu_description() -> str:
    """The CPU's model and feature flags as the operating system lists them (what ``-march=native`` reads).

    Linux: /proc/cpuinfo (x86 flags, ARM Features and part numbers, ...); macOS: ``sysctl
    machdep.cpu hw.optional``; elsewhere (or when those say nothing): platform.processor and uname.

    >>> platform.machine() in cpu_description()
    True
    """
    listed = ""
    if platform.system() == "Linux":
        listed = _linux_cpu()
    elif platform.system() == "Darwin":
        listed = command_output(["sysctl", "machdep.cpu", "hw.optional"])
    uname = platform.uname()
    # node name and kernel release left out: a cache shared between hosts or kept across kernel
    # updates stays valid, as the compiled code depends on neither
    return "\n".join(
        [uname.system, uname.machine, uname.processor, os.environ.get("PROCESSOR_IDENTIFIER", ""), listed]
    )


def _linux_cpu() -> str:
    try:
        with open("/proc/cpuinfo", errors="replace") as cpuinfo:
            lines = cpuinfo.read().splitlines()
    except OSError:
        return ""
    # every distinct line over all cores: big.LITTLE ARM chips list two kinds of core
    kept = {line for line in lines if line.partition(":")[0].strip() in _CPUINFO_KEYS}
    return "\n".join(sorted(kept))


@cache
def compiler_identity(compiler: tuple[str, ...]) -> str:
    """The compiler's version and the target macros ``-march=native`` turns on with it on this CPU.

    >>> compiler_identity(("/nonexistent/c++",))
    '/nonexistent/c++\\n\\n'
    """
    macros = [*compiler, "-march=native", "-dM", "-E", "-x", "c++", os.devnull]
    return "\n".join([" ".join(compiler), command_output([*compiler, "--version"]), command_output(macros)])


def command_output(command: Sequence[str]) -> str:
    """The standard output of ``command``, or "" when it cannot run or fails.

    >>> command_output(["/nonexistent/program"])
    ''
    """
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout


def entry_key(*parts: str) -> str:
    """A short hash of everything a library depends on (sources, compiler, flags, CPU).

    >>> entry_key("a", "b") == entry_key("a", "b") != entry_key("a", "c")
    True
    """
    return hashlib.sha256("\0".join([LAYOUT, *parts]).encode()).hexdigest()[:16]


def manifest_path(library: Path) -> Path:
    """Where the manifest of ``library`` lives: next to it.

    >>> manifest_path(Path("/cache/fused_kernels-0123.so")).name
    'fused_kernels-0123.json'
    """
    return library.with_suffix(".json")


def is_intact(library: Path) -> bool:
    """True when ``library`` exists and has the size and SHA-256 its manifest records.

    A truncated or overwritten file fails this before it reaches the dynamic loader, which would
    otherwise map it and die on a bus error when touching the missing pages.

    >>> is_intact(Path("/nonexistent/library.so"))
    False
    """
    try:
        manifest = json.loads(manifest_path(library).read_text())
        content = library.read_bytes()
    except (OSError, ValueError):
        return False
    return (
        isinstance(manifest, dict)
        and manifest.get("size") == len(content)
        and manifest.get("sha256") == hashlib.sha256(content).hexdigest()
    )


def publish(built: Path, library: Path) -> None:
    """Move a freshly built ``built`` to ``library``, then write its manifest; each step atomic.

    The manifest goes first out and last in, so that no reader ever pairs it with another file.
    """
    content = built.read_bytes()
    manifest = {"size": len(content), "sha256": hashlib.sha256(content).hexdigest()}
    manifest_path(library).unlink(missing_ok=True)
    os.replace(built, library)
    written = built.with_suffix(".json")
    written.write_text(json.dumps(manifest))
    os.replace(written, manifest_path(library))


@contextlib.contextmanager
def exclusive(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_file`` (created if missing) while the block runs.

    An advisory ``flock``: the system releases it when the holder exits, even on a crash, so a
    killed build never leaves a lock behind that the next one would wait on forever.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as scratch, exclusive(Path(scratch) / "a.lock"):
    ...     pass
    """
    with open(lock_file, "a") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield
