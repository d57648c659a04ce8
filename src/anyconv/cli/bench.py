"""``anyconv bench``: run the benchmark scripts of ``benchmarks/`` one after the other, with progress.

Each ``bench_*.py`` runs in its own process (fresh memory counters, as the benchmarks need) with
this Python and this anyconv; its output is passed through as it comes.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from ..errors import ArgumentError

PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register the ``bench`` subcommand."""
    parser = commands.add_parser(
        "bench",
        help="run the benchmark scripts (benchmarks/bench_*.py) with a progress display",
        description="Run every benchmarks/bench_*.py (or those whose name contains one of NAMES) "
        "in a subprocess with this Python, printing their output.",
    )
    parser.add_argument("names", nargs="*", help="run only the scripts whose file name contains one of these")
    parser.add_argument(
        "--directory",
        help="where the bench_*.py scripts are (default: ./benchmarks, else the one next to src/)",
    )
    parser.add_argument("--list", action="store_true", help="list the scripts and stop")
    parser.set_defaults(run=run)


def run(arguments: argparse.Namespace) -> int:
    """Run the chosen scripts; 0 if all exit 0, else 1."""
    directory = find_directory(arguments.directory)
    scripts = sorted(directory.glob("bench_*.py"))
    if arguments.names:
        scripts = [script for script in scripts if any(name in script.name for name in arguments.names)]
    if not scripts:
        wanted = f" matching {' '.join(arguments.names)}" if arguments.names else ""
        raise ArgumentError(f"no benchmark script bench_*.py{wanted} in {directory}")
    if arguments.list:
        for script in scripts:
            print(script.name)
        return 0
    failed = run_scripts(scripts)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def find_directory(given: str | None) -> Path:
    """The benchmarks folder: the one given, else ./benchmarks, else the checkout's next to src/."""
    candidates = [Path(given)] if given else [Path.cwd() / "benchmarks", PACKAGE_ROOT.parent / "benchmarks"]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise ArgumentError(
        f"--directory {given} is invalid: not a folder"
        if given
        else "no benchmarks/ folder here or next to anyconv's src/: the benchmarks are a tool of a "
        "source checkout (or of the unpacked sdist), not of the installed package; run this there "
        "or pass --directory"
    )


def run_scripts(scripts: list[Path]) -> list[str]:
    """Run each script with a progress bar (tqdm if installed, a counter if not); the names that failed."""
    environment = dict(os.environ)
    # the scripts import anyconv: make it this anyconv, installed or not
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(PACKAGE_ROOT), environment.get("PYTHONPATH")])
    )
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    progress = tqdm(total=len(scripts), unit="script", file=sys.stderr) if tqdm is not None else None
    failed = []
    for number, script in enumerate(scripts, start=1):
        if progress is not None:
            progress.set_description(script.name)
            write = progress.write
        else:
            print(f"[{number}/{len(scripts)}] {script.name}", file=sys.stderr, flush=True)
            write = _print_now
        write(f"== {script.name}")
        code = _run_one(script, environment, write)
        if code != 0:
            failed.append(f"{script.name} (exit {code})")
        if progress is not None:
            progress.update()
    if progress is not None:
        progress.close()
    return failed


def _print_now(line: str) -> None:
    print(line, flush=True)


def _run_one(script: Path, environment: dict[str, str], write: Callable[[str], object]) -> int:
    process = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=script.parent.parent,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    for line in process.stdout or ():
        write(line.rstrip("\n"))
    return process.wait()
