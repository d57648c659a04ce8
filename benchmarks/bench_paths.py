"""Which path should the engine take? Time its candidate paths against F.conv2d, round by round.

Forward: ``fields`` (each chunk's fields copied as rows, one product per chunk: what the engine
takes) against ``views`` (one product per kernel tap on shifted views of the input,
``shifted_views.tap_products``; the standard convolution only). Forward+backward: the same
fields forward, then the backward on ``fields`` (recomputed fields, their gradients folded
back with col2im) or on ``views`` (tap products, nothing copied or folded: what the engine
takes at stride 1). Each round times F.conv2d, then every candidate once; the ratio is taken
round by round and its median printed with the quartiles, so that the machine's changing speed
cancels. One process per (input, pass). Run: ``PYTHONPATH=src python benchmarks/bench_paths.py``
(about two minutes here); ``--variant cosine`` times another variant's two backwards.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import subprocess
import sys
import time

from steady_allocator import steady_allocator

#: (batch, channels, size): input (batch, channels, size, size), as many output channels
INPUTS = ("32,64,32", "8,64,64", "8,64,32")
PASSES = ("forward", "forward+backward")
CANDIDATES = ("fields", "views")


def run_case(shape: str, mode: str, rounds: int, variant: str) -> str:
    import torch
    import torch.nn.functional as F

    import anyconv
    from anyconv.engine.chunks import DEFAULT_MEMORY_BUDGET, plan_chunks
    from anyconv.engine.shifted_views import tap_products
    from anyconv.geometry import make_geometry

    # the engine module, not the function of the same name that anyconv.engine exports
    engine = importlib.import_module("anyconv.engine.generalized_conv")
    fit = engine.shifted_views_fit

    batch, channels, size = map(int, shape.split(","))
    out_channels = channels
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, size, size, generator=generator)
    w = torch.randn(out_channels, channels, 3, 3, generator=generator) * 0.05
    b = torch.randn(out_channels, generator=generator)
    backward = mode == "forward+backward"
    for tensor in (x, w, b):
        tensor.requires_grad_(backward)
    geometry = make_geometry((size, size), 3, padding=1)
    tap_chunks = plan_chunks(geometry, batch, 4 * (channels + out_channels), DEFAULT_MEMORY_BUDGET)

    def call(function):
        def step():
            out = function(x, w, b)
            if backward:
                out.backward(torch.ones_like(out))
                x.grad = w.grad = b.grad = None

        return step

    def engine_with(views: bool):
        def conv(x, w, b):
            # switch the engine's choice of backward from outside, for this benchmark only
            engine.shifted_views_fit = fit if views else (lambda geometry, weight: False)
            return anyconv.generalized_conv(x, w, variant, b, padding=1)

        return call(conv)

    candidates = {"fields": engine_with(views=False), "views": engine_with(views=True)}
    if not backward:
        if variant == "dot":
            candidates["views"] = call(lambda x, w, b: tap_products(x, w, b, geometry, 1, tap_chunks))
        else:
            del candidates["views"]
    reference = call(lambda x, w, b: F.conv2d(x, w, b, padding=1))
    for candidate in candidates.values():
        candidate(), candidate()
    reference(), reference()
    ratios: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        start = time.perf_counter()
        reference()
        reference_time = time.perf_counter() - start
        for name, candidate in candidates.items():
            start = time.perf_counter()
            candidate()
            ratios[name].append((time.perf_counter() - start) / reference_time)

    def summary(values: list[float]) -> str:
        if not values:
            return "n/a"
        ordered = sorted(values)
        quartiles = f"{ordered[len(ordered) // 4]:.2f}-{ordered[3 * len(ordered) // 4]:.2f}"
        return f"{statistics.median(values):.2f}x ({quartiles})"

    cells = " | ".join(summary(ratios.get(name, [])) for name in CANDIDATES)
    return f"| ({batch}, {channels}, {size}, {size}) | {mode} | {cells} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--variant", default="dot", help="a built-in variant (default: dot)")
    parser.add_argument("--case", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    steady_allocator()
    if args.case:
        print(run_case(*args.case, args.rounds, args.variant))
        return
    print(f"variant {args.variant}: time / F.conv2d's in the same round,", end=" ")
    print(f"median (quartiles) of {args.rounds} rounds;")
    print("3x3, padding 1, bias, float32, 2 threads, as many output channels as input channels")
    print()
    print("| input | pass | " + " | ".join(CANDIDATES) + " |")
    print("|---|---|" + "---:|" * len(CANDIDATES))
    for shape in INPUTS:
        for mode in PASSES:
            command = [sys.executable, __file__, "--rounds", str(args.rounds), "--variant", args.variant]
            command += ["--case", shape, mode]
            result = subprocess.run(command, capture_output=True, text=True, check=True)
            print(result.stdout.strip(), flush=True)


if __name__ == "__main__":
    main()
