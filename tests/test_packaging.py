"""Packaging: the sdist carries what its own tests, benchmarks and docs need; the wheel carries the
C++ sources, py.typed and the license; ``anyconv --version`` and ``python -m anyconv --version``."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import anyconv
from anyconv.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "src" / "anyconv"


def _setuptools_supports_license_expressions() -> bool:
    try:
        from setuptools import __version__
    except ImportError:
        return False
    return int(__version__.split(".")[0]) >= 77


def _build_command(outdir: Path) -> list[str]:
    """``python -m build`` where installed, else setuptools' PEP 517 backend called directly."""
    if importlib.util.find_spec("build") is not None:
        return [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(outdir), str(ROOT)]
    script = (
        "import sys; from setuptools import build_meta as backend; "
        "backend.build_sdist(sys.argv[1]); backend.build_wheel(sys.argv[1])"
    )
    return [sys.executable, "-c", script, str(outdir)]


@pytest.fixture(scope="module")
def distributions(tmp_path_factory):
    if not (ROOT / "pyproject.toml").is_file():
        pytest.skip("not a source tree: no pyproject.toml next to tests/")
    if not _setuptools_supports_license_expressions():
        pytest.skip("setuptools >= 77 (SPDX license expressions) is not installed")
    outdir = tmp_path_factory.mktemp("dist")
    result = subprocess.run(_build_command(outdir), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (sdist,) = outdir.glob("*.tar.gz")
    (wheel,) = outdir.glob("*.whl")
    with tarfile.open(sdist) as archive:
        # names relative to the sdist's top folder, anyconv-VERSION/
        sdist_names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    with zipfile.ZipFile(wheel) as archive:
        wheel_names = set(archive.namelist())
        metadata = next(archive.read(n).decode() for n in wheel_names if n.endswith(".dist-info/METADATA"))
    return sdist_names, wheel_names, metadata


def _relative(paths):
    return {path.relative_to(ROOT).as_posix() for path in paths}


def test_sdist_can_run_its_tests_benchmarks_and_docs(distributions):
    sdist_names, _, _ = distributions
    wanted = _relative(ROOT.glob("tests/*.py")) | _relative(ROOT.glob("benchmarks/*.py"))
    wanted |= _relative(ROOT.glob("docs/*.md")) | {"LICENSE", "README.md", "pyproject.toml"}
    if (ROOT / "mkdocs.yml").is_file():
        wanted.add("mkdocs.yml")
    assert {"tests/conftest.py", "tests/reference.py"} <= wanted
    assert wanted - sdist_names == set()


def test_wheel_carries_native_sources_py_typed_and_license(distributions):
    _, wheel_names, metadata = distributions
    native = {
        f"anyconv/{path.relative_to(SOURCE).as_posix()}"
        for pattern in ("*.cpp", "*.h")
        for path in SOURCE.rglob(pattern)
    }
    assert native, "no C++ sources found under src/anyconv"
    assert native | {"anyconv/py.typed"} <= wheel_names
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in wheel_names)
    assert not any(name.startswith("tests/") for name in wheel_names)
    assert "License-Expression: MIT" in metadata.splitlines()
    assert f"Version: {anyconv.__version__}" in metadata.splitlines()


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"anyconv {anyconv.__version__}"


def test_python_m_anyconv_version():
    environment = dict(os.environ, PYTHONPATH=str(Path(anyconv.__file__).parents[1]))
    result = subprocess.run(
        [sys.executable, "-m", "anyconv", "--version"],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"anyconv {anyconv.__version__}"


def test_bench_outside_a_checkout_says_it_is_a_source_tool(tmp_path, monkeypatch, capsys):
    from anyconv.cli import bench

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(bench, "PACKAGE_ROOT", tmp_path / "site-packages")
    assert main(["bench", "--list"]) == 2
    assert "tool of a source checkout" in capsys.readouterr().err
