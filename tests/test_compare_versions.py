"""benchmarks/compare_versions.py: another commit of anyconv imported beside this tree and timed in turn.

Run in a subprocess (the commit's package and its custom operators stay out of the test process);
skipped outside a git checkout (the sdist).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "compare_versions.py"

pytestmark = pytest.mark.skipif(
    shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs a git checkout"
)


def _run(*arguments: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *arguments],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=environment,
        timeout=600,
    )


def test_compares_the_conv_suite_with_the_last_commit():
    done = _run("HEAD", "--suite", "conv", "--passes", "forward", "--rounds", "2", "--threads", "1")
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| conv |")]
    assert [row.split("|")[2].strip() for row in rows] == ["64->64, 3x3, s1", "64->128, 3x3, s2"]
    for row in rows:
        this_ms, other_ms, ratio = (cell.strip() for cell in row.split("|")[5:8])
        assert float(this_ms) > 0 and float(other_ms) > 0
        assert re.fullmatch(r"\d+\.\d\d \[\d+\.\d\d, \d+\.\d\d\]", ratio)
    assert "geometric mean of the median ratios" in done.stdout


def test_refuses_what_is_not_a_commit():
    done = _run("no-such-revision", "--suite", "conv", "--rounds", "2")
    assert done.returncode != 0
    assert "REV 'no-such-revision' is not a commit" in done.stderr
