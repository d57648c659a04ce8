"""Fault injection on the native build: damaged cache entries, no compiler, an unwritable cache, races.

Every test uses its own ANYCONV_CACHE_DIR. Damage and races run in subprocesses, so that a crash
(the bus error a truncated library used to cause) is a failed test and not a dead test run.
"""

import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

import anyconv
from anyconv.cli import check
from anyconv.cli.main import main
from anyconv.engine import fields_columns, fields_fold, tap_loops
from anyconv.variants import fused, native, native_cache

needs_compiler = pytest.mark.skipif(native.compiler() is None, reason="no C++ compiler here")
SOURCE_PATH = str(Path(anyconv.__file__).parents[1])

#: runs every fused kernel forward and backward on float64 data and prints, as JSON, its largest
#: error against the naive formula, the path each took and every warning raised
SCRIPT = """
import json, sys, time, warnings
from pathlib import Path
import torch
from anyconv.variants import fused

if len(sys.argv) > 1:  # wait for the signal, so that racing processes start their builds together
    Path(sys.argv[1]).touch()
    while not Path(sys.argv[2]).exists():
        time.sleep(0.02)
generator = torch.Generator().manual_seed(0)
f = torch.randn(1, 9, 5, dtype=torch.float64, generator=generator)
w = torch.randn(1, 3, 5, dtype=torch.float64, generator=generator)
g = torch.randn(1, 9, 3, dtype=torch.float64, generator=generator)
e = f[:, :, None] - w[:, None]
errors, paths = {}, {}
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    for name, got, want in [
        ("l1", lambda: fused.l1_distances(f, w), lambda: -e.abs().sum(-1)),
        ("l1 backward", lambda: fused.l1_backward(f, w, g)[0], lambda: -(e.sign() * g[..., None]).sum(2)),
        ("lp", lambda: fused.power_sums(f, w, 3.0), lambda: e.abs().pow(3).sum(-1)),
        ("max_plus", lambda: fused.tropical(f, w, minimum=False), lambda: (e + 2 * w[:, None]).amax(-1)),
        ("min_plus", lambda: fused.tropical(f, w, minimum=True), lambda: e.amin(-1)),
    ]:
        errors[name] = (got() - want()).abs().max().item()
        paths[name] = fused.last_path()
# loading the libraries leaves the process's floating point alone: subnormals stay representable
subnormals = 5e-324 * 1.0 > 0 and (torch.tensor([1e-40]) * 1).item() != 0
report = {"errors": errors, "paths": paths, "warnings": [str(w.message) for w in caught]}
print(json.dumps({**report, "subnormals": subnormals}))
"""


def run_script(cache: Path, *arguments: str, **environment: str) -> subprocess.Popen:
    """Start SCRIPT in a fresh interpreter with ``cache`` as its ANYCONV_CACHE_DIR."""
    env = {**os.environ, "PYTHONPATH": SOURCE_PATH, "ANYCONV_CACHE_DIR": str(cache), **environment}
    env.pop("ANYCONV_NATIVE", None)
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, *arguments],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def report(process: subprocess.Popen) -> dict:
    """The JSON report of a SCRIPT process; a crash or an error fails the test with its stderr."""
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, f"exit code {process.returncode}:\n{err}"
    return json.loads(out.strip().splitlines()[-1])


def assert_correct(result: dict, path: str) -> None:
    assert all(error < 1e-12 for error in result["errors"].values()), result["errors"]
    assert result["subnormals"], "a native library turned on flush-to-zero for the process"
    assert set(result["paths"].values()) == {path}, result["paths"]


def entries(cache: Path) -> dict[str, Path]:
    """The cached libraries by source stem."""
    return {library.name.rsplit("-", 1)[0]: library for library in cache.glob("*.so")}


@pytest.fixture(scope="module")
def built_cache(tmp_path_factory) -> Path:
    """A cache holding both libraries, built once for the module by a first use."""
    cache = tmp_path_factory.mktemp("built") / "cache"
    result = report(run_script(cache))
    assert_correct(result, "native")
    assert result["warnings"] == []
    return cache


def _truncate_half(library: Path) -> None:
    library.write_bytes(library.read_bytes()[: library.stat().st_size // 2])


def _garbage_same_size(library: Path) -> None:
    library.write_bytes(os.urandom(library.stat().st_size))


def _garbage_manifest(library: Path) -> None:
    native_cache.manifest_path(library).write_text("{not json")


def _no_manifest(library: Path) -> None:
    native_cache.manifest_path(library).unlink()


#: damage to the library itself: the dynamic loader would crash on it, so the runs are subprocesses
LIBRARY_DAMAGE = [
    pytest.param("fused_power", _truncate_half, id="power-truncated"),
    pytest.param("fused_kernels", _truncate_half, id="kernels-truncated"),
    pytest.param("fused_power", lambda library: library.write_bytes(b""), id="power-empty"),
    pytest.param("fused_power", _garbage_same_size, id="power-garbage-bytes"),
]
#: damage to the manifest only: the library is whole, so the runs can share this process
MANIFEST_DAMAGE = [
    pytest.param("fused_power", _garbage_manifest, id="power-garbage-manifest"),
    pytest.param("fused_kernels", _no_manifest, id="kernels-no-manifest"),
]


@needs_compiler
@pytest.mark.parametrize("stem, damage", LIBRARY_DAMAGE)
def test_damaged_library_is_rebuilt_not_loaded(stem, damage, built_cache, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(built_cache, cache)
    library = entries(cache)[stem]
    damage(library)
    assert not native_cache.is_intact(library)
    result = report(run_script(cache))
    assert_correct(result, "native")
    assert result["warnings"] == []
    assert native_cache.is_intact(library)
    assert sorted(entries(cache)) == ["fused_kernels", "fused_power"]


@needs_compiler
@pytest.mark.parametrize("stem, damage", MANIFEST_DAMAGE)
def test_damaged_manifest_is_rebuilt(stem, damage, built_cache, fresh_native):
    cache = fresh_native / "cache"
    shutil.copytree(built_cache, cache)
    library = entries(cache)[stem]
    damage(library)
    assert not native_cache.is_intact(library)
    assert _run_every_kernel() == []
    assert fused.last_path() == "native"
    assert native_cache.is_intact(library)


@needs_compiler
def test_concurrent_first_uses_build_each_library_once(tmp_path):
    # a compiler that logs each source it compiles and takes its time, so that the builds overlap
    log = tmp_path / "builds.log"
    wrapper = tmp_path / "logging-c++"
    compiler = native.compiler()[0]
    wrapper.write_text(
        f'#!/bin/sh\ncase "$*" in *" -c "*) echo "$*" >> {log}; sleep 1;; esac\nexec {compiler} "$@"\n'
    )
    wrapper.chmod(0o755)
    cache, go = tmp_path / "cache", tmp_path / "go"
    ready = [tmp_path / f"ready-{index}" for index in range(2)]
    processes = [run_script(cache, str(flag), str(go), CXX=str(wrapper)) for flag in ready]
    deadline = time.monotonic() + 300
    while not all(flag.exists() for flag in ready) and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()
    for process in processes:
        result = report(process)
        assert_correct(result, "native")
        assert result["warnings"] == []
    built = log.read_text().splitlines()
    assert sorted(Path(line.split(" -o ")[0].split()[-1]).name for line in built) == [
        "fused_kernels.cpp",
        "fused_power.cpp",
    ]
    assert all(native_cache.is_intact(library) for library in entries(cache).values())
    assert [path for path in cache.iterdir() if path.is_dir()] == []  # no scratch left behind


@pytest.fixture
def fresh_native(monkeypatch, tmp_path):
    """The native loader in this process as if it had never run, with an empty cache of its own."""
    monkeypatch.setenv("ANYCONV_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("ANYCONV_NATIVE", raising=False)
    monkeypatch.setattr(native, "_warned", set())
    _forget()
    yield tmp_path
    _forget()  # before monkeypatch restores the environment: the next use loads afresh


def _forget():
    native.load.cache_clear()
    fused._splits_rows_itself.cache_clear()
    fields_fold._function.cache_clear()
    fields_columns._function.cache_clear()


def _run_every_kernel() -> list[warnings.WarningMessage]:
    """Every fused kernel forward and backward, checked against the naive formula; the warnings raised."""
    generator = torch.Generator().manual_seed(1)
    f = torch.randn(1, 7, 4, dtype=torch.float64, generator=generator)
    w = torch.randn(1, 3, 4, dtype=torch.float64, generator=generator)
    g = torch.randn(1, 7, 3, dtype=torch.float64, generator=generator)
    e = f[:, :, None] - w[:, None]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.testing.assert_close(fused.l1_distances(f, w), -e.abs().sum(-1))
        torch.testing.assert_close(fused.l1_backward(f, w, g)[1], (e.sign() * g[..., None]).sum(1))
        torch.testing.assert_close(fused.power_sums(f, w, 2.5), e.abs().pow(2.5).sum(-1))
        fused.power_sums_backward(f, w, g, 2.5)
        torch.testing.assert_close(fused.tropical(f, w, minimum=True), e.amin(-1))
        fused.tropical_backward(f, w, g, minimum=False)
    return [warning for warning in caught if issubclass(warning.category, RuntimeWarning)]


def _empty_directory(tmp_path: Path) -> str:
    (tmp_path / "bin").mkdir()
    return str(tmp_path / "bin")


NO_COMPILER = [
    pytest.param({"CXX": "/nonexistent/c++"}, "CXX='/nonexistent/c++'", id="CXX-missing-binary"),
    pytest.param({"CXX": "/nonexistent/c++", "PATH": None}, "CXX=", id="CXX-missing-and-empty-PATH"),
    pytest.param({"CXX": "", "PATH": None}, "on the PATH", id="empty-PATH"),
    pytest.param({"CXX": "g++ '-O3"}, "CXX=", id="CXX-unbalanced-quote"),
]


@pytest.mark.parametrize("environment, named", NO_COMPILER)
def test_no_compiler_warns_once_and_computes_eager(environment, named, fresh_native, monkeypatch):
    for variable, value in environment.items():
        monkeypatch.setenv(variable, _empty_directory(fresh_native) if value is None else value)
    caught = _run_every_kernel()
    assert fused.last_path() == "eager"
    assert len(caught) == 1, [str(warning.message) for warning in caught]
    message = str(caught[0].message)
    assert "no C++ compiler" in message and named in message and "install g++" in message
    assert "set CXX" in message


UNWRITABLE = [
    pytest.param(lambda tmp_path: tmp_path / "a-file" / "cache", id="under-a-file"),
    pytest.param(lambda tmp_path: tmp_path / "a-file", id="is-a-file"),
]


@needs_compiler
@pytest.mark.parametrize("where", UNWRITABLE)
def test_unwritable_cache_warns_once_naming_the_variable(where, fresh_native, monkeypatch):
    (fresh_native / "a-file").write_text("not a directory")
    monkeypatch.setenv("ANYCONV_CACHE_DIR", str(where(fresh_native)))
    caught = _run_every_kernel()
    assert fused.last_path() == "eager"
    assert len(caught) == 1, [str(warning.message) for warning in caught]
    assert "ANYCONV_CACHE_DIR" in str(caught[0].message)


@needs_compiler
def test_full_disk_warns_naming_the_variable(fresh_native, monkeypatch):
    def full_disk(**arguments):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(native.tempfile, "TemporaryDirectory", full_disk)
    caught = _run_every_kernel()
    assert fused.last_path() == "eager"
    assert len(caught) == 1, [str(warning.message) for warning in caught]
    assert "No space left on device" in str(caught[0].message)
    assert "ANYCONV_CACHE_DIR" in str(caught[0].message)


@needs_compiler
def test_compile_error_warns_with_the_compiler_message(fresh_native, monkeypatch):
    monkeypatch.setenv("CXX", f"{native.compiler()[0]} -include {fresh_native / 'missing.h'}")
    caught = _run_every_kernel()
    assert fused.last_path() == "eager"
    messages = [str(warning.message) for warning in caught]
    assert len(messages) == 2, messages  # one per source file: each failed on its own
    assert all("could not compile" in message and "missing.h" in message for message in messages)


def test_tap_loops_build_the_asked_dtype_only(fresh_native, monkeypatch):
    """The tap loops are one library per dtype: a float64 call waits for the float64 loops only."""
    asked = []

    def build(source_name, cxx, part):
        asked.append((source_name, part))
        raise OSError("not built in this test")

    monkeypatch.setattr(native, "_build", build)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not tap_loops._loops_built("f64")
    assert asked == [("tap_loops.cpp", "f64")]
    assert any("could not compile tap_loops.cpp (f64)" in str(warning.message) for warning in caught)
    with pytest.raises(ValueError, match="part='f8' of tap_loops.cpp"):
        native.load("tap_loops.cpp", "f8")
    with pytest.raises(ValueError, match="part='f32' of fused_kernels.cpp"):
        native.load("fused_kernels.cpp", "f32")


def test_native_off_is_silent(fresh_native, monkeypatch):
    monkeypatch.setenv("ANYCONV_NATIVE", "0")
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    assert _run_every_kernel() == []
    assert fused.last_path() == "eager"
    assert set(fused.native_paths().values()) == {"eager: ANYCONV_NATIVE=0 asks for it"}


@needs_compiler
def test_read_only_cache_filled_beforehand_still_serves(built_cache, fresh_native, monkeypatch):
    # the build is what needs to write; an intact entry is loaded without taking the lock
    monkeypatch.setenv("ANYCONV_CACHE_DIR", str(built_cache))
    monkeypatch.setattr(native, "exclusive", lambda lock_file: pytest.fail(f"took the lock {lock_file}"))
    assert _run_every_kernel() == []
    assert fused.last_path() == "native"


def test_cache_key_follows_cpu_and_compiler(monkeypatch):
    key = native_cache.entry_key(
        "source", native_cache.compiler_identity(("c++",)), native_cache.cpu_description()
    )
    assert key != native_cache.entry_key("source", native_cache.compiler_identity(("c++",)), "another CPU")
    assert key != native_cache.entry_key("source", "another compiler", native_cache.cpu_description())


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="Linux only")
def test_linux_cpu_description_names_model_and_features():
    description = native_cache.cpu_description()
    assert any(line.startswith(("model name", "CPU part", "cpu model")) for line in description.splitlines())
    assert any(line.startswith(("flags", "Features", "isa")) for line in description.splitlines())
    assert "MHz" not in description  # clock speeds change at run time


def test_macos_cpu_description_asks_sysctl(monkeypatch):
    asked = []

    def sysctl(command):
        asked.append(command)
        return "machdep.cpu.brand_string: Apple M2\nhw.optional.arm.FEAT_DotProd: 1"

    monkeypatch.setattr(native_cache.platform, "system", lambda: "Darwin")
    monkeypatch.setattr(native_cache, "command_output", sysctl)
    native_cache.cpu_description.cache_clear()
    try:
        description = native_cache.cpu_description()
    finally:
        native_cache.cpu_description.cache_clear()
    assert asked == [["sysctl", "machdep.cpu", "hw.optional"]]
    assert "Apple M2" in description and "FEAT_DotProd" in description


def test_compiler_identity_has_the_version_and_native_target():
    cxx = native.compiler()
    if cxx is None:
        pytest.skip("no C++ compiler here")
    identity = native_cache.compiler_identity(cxx)
    assert "__VERSION__" in identity  # gcc and clang list the version among the target macros
    assert any(word in identity for word in ("__x86_64__", "__aarch64__", "__arm64__", "__powerpc64__"))


@pytest.mark.parametrize(
    "environment, expected",
    [
        pytest.param({"ANYCONV_NATIVE": "0"}, "eager: ANYCONV_NATIVE=0", id="native-off"),
        # the fallback warns (once) as the check's calls reach the loops: expected here
        pytest.param(
            {"CXX": "/nonexistent/c++"},
            "eager: no C++ compiler",
            id="no-compiler",
            marks=pytest.mark.filterwarnings("ignore:anyconv no C\\+\\+ compiler:RuntimeWarning"),
        ),
    ],
)
def test_check_reports_the_path_of_every_fused_variant(
    environment, expected, fresh_native, monkeypatch, capsys
):
    for variable, value in environment.items():
        monkeypatch.setenv(variable, value)
    assert main(["check", "--input-size", "5", "--kernel-size", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for variant in ("l1", "lp", "max_plus", "min_plus"):
        assert any(line.split()[:1] == [variant] and expected in line for line in lines), lines
    for copy in (
        "the columns of the fields path's forward",
        "the fold of the fields path's backward",
        "the cosine of small rows (squeeze-excitation)",
    ):
        reported = [line for line in lines if line.startswith(copy)]
        assert len(reported) == 1 and expected in reported[0], lines
    for dtype in ("float32", "float64", "bfloat16", "float16"):
        assert any(line.split()[:1] == [dtype] and expected in line for line in lines), lines


@needs_compiler
def test_check_reports_the_tap_loops_of_each_dtype(capsys):
    assert main(["check", "--input-size", "5", "--kernel-size", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for dtype, part in (("float32", "f32"), ("float64", "f64")):
        reported = [line for line in lines if line.split()[:2] == [dtype, "native:"]]
        assert len(reported) == 1 and f"tap_loops_{part}-" in reported[0], lines


@needs_compiler
def test_check_reports_native_libraries(built_cache, fresh_native, monkeypatch, capsys):
    monkeypatch.setenv("ANYCONV_CACHE_DIR", str(built_cache))
    # the tap loops' lines are test_check_reports_the_tap_loops_of_each_dtype's, on the suite's
    # cache: asked here, their four libraries would be built into this one, minutes of compiling
    monkeypatch.setattr(check, "loops_paths", dict)
    assert main(["check", "--input-size", "5", "--kernel-size", "3"]) == 0
    out = capsys.readouterr().out
    # the four fused variants, the fields path's columns and fold, and the small rows' cosine
    assert out.count(f"native: {built_cache}") == 7
