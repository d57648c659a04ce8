"""mypy on src/ with the project's configuration (pyproject.toml [tool.mypy]) reports no error,
so that the ``py.typed`` the package ships tells its users the truth."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(
    importlib.util.find_spec("mypy") is None, reason="mypy is not installed: pip install -e '.[dev]'"
)
def test_mypy_is_clean_on_src():
    if not (ROOT / "pyproject.toml").is_file():
        pytest.skip("not a source tree: no pyproject.toml next to tests/")
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert (ROOT / "src/anyconv/py.typed").is_file()
