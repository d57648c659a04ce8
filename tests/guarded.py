"""Run a snippet in a fresh Python with a memory limit and a timeout, for the tests of resources.

A regression in what these tests check would grow the process until the kernel kills it, or
loop for hours: in a child with an address-space limit it fails with a MemoryError instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "src"

#: address space of the child: torch's import maps about 0.7 GiB, the snippets need little more
ADDRESS_SPACE = 3 * 2**30

PREAMBLE = """
import resource
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
"""


def run_guarded(code: str, timeout: float = 60, limit: int = ADDRESS_SPACE, args: tuple[str, ...] = ()):
    """Run ``code`` in a child Python (this checkout's anyconv first on the path); the CompletedProcess.

    A child that runs past ``timeout`` seconds is killed and reported with return code -9.
    """
    environment = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(SOURCE), os.environ.get("PYTHONPATH")]))
    )
    program = PREAMBLE.format(limit=limit) + textwrap.dedent(code)
    try:
        return subprocess.run(
            [sys.executable, "-c", program, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=environment,
        )
    except subprocess.TimeoutExpired as expired:
        return subprocess.CompletedProcess(
            expired.cmd, -9, expired.stdout or "", f"timed out after {timeout} s"
        )


def last_json(completed: subprocess.CompletedProcess):
    """The JSON the child printed last on stdout; an AssertionError with its stderr if it did not."""
    lines = [line for line in completed.stdout.splitlines() if line.startswith(("{", "["))]
    assert lines, f"the child printed no result (exit {completed.returncode}): {completed.stderr[-2000:]}"
    return json.loads(lines[-1])
