"""Time and peak memory of anyconv.unfold/fold against F.unfold/F.fold (2-D) and unfoldNd (3-D).

Run: PYTHONPATH=src python benchmarks/bench_unfold.py   (about a minute; prints a markdown table)

Each allocator setting is timed in a fresh subprocess, anyconv and its reference in the same
process, alternating, median of several runs. Settings: torch's defaults; the same without
anyconv's huge-page advice (to show what it brings); and THP_MEM_ALLOC_ENABLE=1, torch's own switch
that gives huge pages to every allocation, the reference's included. Peak memory is the peak
resident size (VmHWM) of a fresh process per case, minus its peak before the call.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
import unfoldNd
from steady_allocator import steady_allocator

import anyconv
from anyconv.functional import allocation

CASES = {
    "unfold 2-D": "(32, 64, 32, 32), 3x3, padding 1, vs F.unfold",
    "unfold 3-D": "(4, 16, 32, 32, 32), 3x3x3, padding 1, vs unfoldNd.unfoldNd",
    "fold 2-D": "(32, 576, 1024) -> (32, 64, 32, 32), vs F.fold",
    "fold 3-D": "(4, 432, 32768) -> (4, 16, 32, 32, 32), vs unfoldNd.FoldNd",
}
TARGETS = {"unfold 2-D": 0.5, "unfold 3-D": 1 / 3, "fold 2-D": 1.0, "fold 3-D": 1.0}
SETTINGS = {
    "default": ({}, True),
    "default, no huge-page advice": ({}, False),
    "THP_MEM_ALLOC_ENABLE=1": ({"THP_MEM_ALLOC_ENABLE": "1"}, True),
}


def make_case(name: str):
    """The input and the two functions, anyconv's and the reference's, of one case."""
    generator = torch.Generator().manual_seed(0)
    if name == "unfold 2-D":
        input = torch.randn(32, 64, 32, 32, generator=generator)
        return input, lambda x: anyconv.unfold(x, 3, padding=1), lambda x: F.unfold(x, 3, padding=1)
    if name == "unfold 3-D":
        input = torch.randn(4, 16, 32, 32, 32, generator=generator)
        reference = unfoldNd.UnfoldNd(3, padding=1)
        return input, lambda x: anyconv.unfold(x, 3, padding=1), reference
    if name == "fold 2-D":
        input = torch.randn(32, 576, 1024, generator=generator)
        return (
            input,
            lambda x: anyconv.fold(x, (32, 32), 3, padding=1),
            lambda x: F.fold(x, (32, 32), 3, padding=1),
        )
    input = torch.randn(4, 432, 32768, generator=generator)
    reference = unfoldNd.FoldNd((32, 32, 32), 3, padding=1)
    return input, lambda x: anyconv.fold(x, (32, 32, 32), 3, padding=1), reference


def time_cases(repeats: int) -> dict:
    """Median milliseconds of anyconv and the reference per case, timed alternately in this process."""
    results = {}
    for name in CASES:
        input, ours, reference = make_case(name)
        ours(input), reference(input)  # warm-up: allocator, lazy initialisation
        samples = {"anyconv": [], "reference": []}
        for _ in range(repeats):
            for label, function in (("anyconv", ours), ("reference", reference)):
                start = time.perf_counter()
                function(input)
                samples[label].append((time.perf_counter() - start) * 1e3)
        results[name] = {label: statistics.median(values) for label, values in samples.items()}
    return results


def peak_resident_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def measure_memory(name: str, which: str) -> dict:
    """Peak resident memory of one call in this (fresh) process, above the peak before the call."""
    input, ours, reference = make_case(name)
    before = peak_resident_mib()
    (ours if which == "anyconv" else reference)(input)
    return {"extra_mib": peak_resident_mib() - before}


def run_worker(arguments: list[str], environment: dict) -> dict:
    command = [sys.executable, __file__, *arguments]
    completed = subprocess.run(
        command, env={**os.environ, **environment}, capture_output=True, text=True, check=True
    )
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per function (median)")
    parser.add_argument("--time", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-advice", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--memory", nargs=2, metavar=("CASE", "WHICH"), help=argparse.SUPPRESS)
    options = parser.parse_args()
    steady_allocator()
    if options.no_advice:
        allocation.use_huge_pages = False
    if options.time:
        print(json.dumps(time_cases(options.repeats)))
        return
    if options.memory:
        print(json.dumps(measure_memory(*options.memory)))
        return

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores")
    timings = {}
    for setting, (environment, advice) in SETTINGS.items():
        flags = ["--time", "--repeats", str(options.repeats)] + ([] if advice else ["--no-advice"])
        timings[setting] = run_worker(flags, environment)
    memory = {
        (name, which): run_worker(["--memory", name, which], {})["extra_mib"]
        for name in CASES
        for which in ("anyconv", "reference")
    }

    print("\n| case | setting | anyconv ms | reference ms | ratio | target |")
    print("|---|---|---:|---:|---:|---:|")
    for name in CASES:
        for setting, results in timings.items():
            ours, reference = results[name]["anyconv"], results[name]["reference"]
            ratio = ours / reference
            verdict = "met" if ratio <= TARGETS[name] else "missed"
            print(
                f"| {name} | {setting} | {ours:.1f} | {reference:.1f} | {ratio:.2f} "
                f"| <= {TARGETS[name]:.2f} {verdict} |"
            )
    print("\n| case | shapes, reference | anyconv peak MiB | reference peak MiB |")
    print("|---|---|---:|---:|")
    for name, description in CASES.items():
        print(f"| {name} | {description} | {memory[name, 'anyconv']:.0f} | {memory[name, 'reference']:.0f} |")


if __name__ == "__main__":
    main()
