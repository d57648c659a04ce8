"""Which path should the standard convolution take? Time the engine's candidate paths against F.conv2d.

Candidates: ``fields`` (fields copied as rows, forward and backward), ``views`` (products on
shifted views of the input, forward and backward) and ``fields+views`` (fields forward, views
backward: what the engine takes). Each round times F.conv2d, then every candidate once; the
ratio is taken round by round and its median printed with the quartiles, so that the machine's
changing speed cancels. One process per (input, pass). Run:
``PYTHONPATH=src python benchmarks/bench_paths.py`` (about two minutes here).
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import subprocess
import sys
import time

#: (batch, channels, size): input (batch, channels, size, size), as many output channels
INPUTS = ("32,64,32", "8,64,64", "8,64,32")
PASSES = ("forward", "forward+backward")
CANDIDATES = ("fields", "views", "fields+views")


def run_case(shape: str, mode: str, rounds: int) -> str:
    import torch
    import torch.nn.functional as F

    import anyconv

    # the engine module, not the function of the same name that anyconv.engine exports
    engine = importlib.import_module("anyconv.engine.generalized_conv")
    fit, tapwise_plan = engine.shifted_views_fit, engine.TapwisePlan

    def choose(candidate: str) -> None:
        # switch the engine's choice from outside, for this benchmark only
        engine.shifted_views_fit = fit if "views" in candidate else (lambda *args: False)
        engine.TapwisePlan = (
            tapwise_plan
            if candidate == "fields+views"
            else lambda geometry, groups, chunks, fields_plan: tapwise_plan(geometry, groups, chunks, None)
        )

    batch, channels, size = map(int, shape.split(","))
    out_channels = channels
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, size, size, generator=generator)
    w = torch.randn(out_channels, channels, 3, 3, generator=generator) * 0.05
    b = torch.randn(out_channels, generator=generator)
    backward = mode == "forward+backward"
    for tensor in (x, w, b):
        tensor.requires_grad_(backward)

    def call(function):
        def step():
            out = function(x, w, b)
            if backward:
                out.backward(torch.ones_like(out))
                x.grad = w.grad = b.grad = None

        return step

    reference = call(lambda x, w, b: F.conv2d(x, w, b, padding=1))
    ours = call(lambda x, w, b: anyconv.conv(x, w, b, padding=1))
    for candidate in CANDIDATES:
        choose(candidate)
        ours(), ours()
    reference(), reference()
    ratios: dict[str, list[float]] = {candidate: [] for candidate in CANDIDATES}
    for _ in range(rounds):
        start = time.perf_counter()
        reference()
        reference_time = time.perf_counter() - start
        for candidate in CANDIDATES:
            choose(candidate)
            start = time.perf_counter()
            ours()
            ratios[candidate].append((time.perf_counter() - start) / reference_time)

    def summary(values: list[float]) -> str:
        ordered = sorted(values)
        quartiles = f"{ordered[len(ordered) // 4]:.2f}-{ordered[3 * len(ordered) // 4]:.2f}"
        return f"{statistics.median(values):.2f}x ({quartiles})"

    cells = " | ".join(summary(ratios[candidate]) for candidate in CANDIDATES)
    return f"| ({batch}, {channels}, {size}, {size}) | {mode} | {cells} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--case", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(run_case(*args.case, args.rounds))
        return
    print("time / F.conv2d's in the same round, median (quartiles) of", args.rounds, "rounds;")
    print("3x3, padding 1, bias, float32, 2 threads, as many output channels as input channels")
    print()
    print("| input | pass | " + " | ".join(CANDIDATES) + " |")
    print("|---|---|" + "---:|" * len(CANDIDATES))
    for shape in INPUTS:
        for mode in PASSES:
            command = [sys.executable, __file__, "--rounds", str(args.rounds), "--case", shape, mode]
            result = subprocess.run(command, capture_output=True, text=True, check=True)
            print(result.stdout.strip(), flush=True)


if __name__ == "__main__":
    main()
