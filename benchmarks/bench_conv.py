"""Time anyconv.conv against F.conv2d and the usual fields-times-weights recipes; print a table.

Each (geometry, method, pass) runs in a fresh process: its first call alone gives the peak
memory above the inputs (VmHWM), then the method and F.conv2d are timed in alternation, so
the ratio is taken under the same machine load. Run: ``PYTHONPATH=src python benchmarks/bench_conv.py``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from steady_allocator import steady_allocator

CASES = {
    "64->64, 3x3, s1": dict(batch=32, in_channels=64, size=32, out_channels=64, stride=1),
    "64->128, 3x3, s2": dict(batch=32, in_channels=64, size=32, out_channels=128, stride=2),
}
METHODS = ("F.conv2d", "anyconv.conv", "recipe (F.unfold+matmul)", "unfoldNd+matmul", "einconv")
PASSES = ("forward", "forward+backward")


def _high_water_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("VmHWM not found in /proc/self/status")


def _reset_high_water() -> None:
    # writing 5 to clear_refs resets VmHWM to the current RSS (Linux)
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


def _convolutions(stride: int):
    import einconv.functionals
    import torch
    import torch.nn.functional as F
    import unfoldNd

    import anyconv

    def recipe(x, w, b):
        # the PyTorch docs' recipe (torch.nn.Unfold): unfold, transpose, matmul, transpose, view
        out_size = (x.shape[2] + 2 - 3) // stride + 1
        columns = F.unfold(x, 3, padding=1, stride=stride)
        out = columns.transpose(1, 2).matmul(w.view(w.shape[0], -1).t()).transpose(1, 2)
        return out.reshape(x.shape[0], w.shape[0], out_size, out_size) + b.view(1, -1, 1, 1)

    def unfoldnd(x, w, b):
        out_size = (x.shape[2] + 2 - 3) // stride + 1
        columns = unfoldNd.unfoldNd(x, 3, padding=1, stride=stride)
        out = torch.matmul(w.view(w.shape[0], -1), columns)
        return out.reshape(x.shape[0], w.shape[0], out_size, out_size) + b.view(1, -1, 1, 1)

    return {
        "F.conv2d": lambda x, w, b: F.conv2d(x, w, b, stride=stride, padding=1),
        "anyconv.conv": lambda x, w, b: anyconv.conv(x, w, b, stride=stride, padding=1),
        "recipe (F.unfold+matmul)": recipe,
        "unfoldNd+matmul": unfoldnd,
        "einconv": lambda x, w, b: einconv.functionals.convNd(x, w, b, stride=stride, padding=1),
    }


def run_case(case: str, method: str, mode: str, repeats: int, threads: int | None) -> dict:
    """In this process: peak memory of one call of ``method``, then alternated timings."""
    import torch

    if threads:
        torch.set_num_threads(threads)

    spec = CASES[case]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(spec["batch"], spec["in_channels"], spec["size"], spec["size"], generator=generator)
    w = torch.randn(spec["out_channels"], spec["in_channels"], 3, 3, generator=generator) * 0.05
    b = torch.randn(spec["out_channels"], generator=generator)
    backward = mode == "forward+backward"
    for tensor in (x, w, b):
        tensor.requires_grad_(backward)
    convolutions = _convolutions(spec["stride"])

    def call(function):
        out = function(x, w, b)
        if backward:
            out.backward(torch.ones_like(out))
            x.grad = w.grad = b.grad = None
        return out

    _reset_high_water()
    before = _high_water_mib()
    call(convolutions[method])
    peak = _high_water_mib() - before
    timings = {method: [], "F.conv2d": []}
    for _ in range(2):
        call(convolutions["F.conv2d"])
        call(convolutions[method])
    for _ in range(repeats):
        for name in timings:
            start = time.perf_counter()
            call(convolutions[name])
            timings[name].append(time.perf_counter() - start)
    return {
        "ms": 1000 * statistics.median(timings[method]),
        "reference_ms": 1000 * statistics.median(timings["F.conv2d"]),
        "peak_mib": peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=15, help="timed calls per method (median)")
    parser.add_argument("--threads", type=int, help="torch threads in each case (default: torch's)")
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    args = parser.parse_args()
    steady_allocator()
    if args.case:
        print(json.dumps(run_case(args.case, args.method, args.mode, args.repeats, args.threads)))
        return
    import torch

    threads = args.threads or torch.get_num_threads()
    print(
        f"torch {torch.__version__}, {threads} threads, float32, padding 1, "
        f"median of {args.repeats}; ratio = time / F.conv2d's time in the same process"
    )
    print()
    print("| case | pass | method | ms | x F.conv2d | peak MiB |")
    print("|---|---|---|---:|---:|---:|")
    for case in CASES:
        for mode in PASSES:
            for method in args.methods:
                command = [
                    sys.executable,
                    __file__,
                    "--case",
                    case,
                    "--method",
                    method,
                    "--mode",
                    mode,
                    "--repeats",
                    str(args.repeats),
                    *(["--threads", str(args.threads)] if args.threads else []),
                ]
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode:
                    print(
                        f"| {case} | {mode} | {method} | failed: {done.stderr.strip().splitlines()[-1]} |||"
                    )
                    continue
                result = json.loads(done.stdout)
                ratio = result["ms"] / result["reference_ms"]
                print(
                    f"| {case} | {mode} | {method} | {result['ms']:.1f} | {ratio:.2f} | "
                    f"{result['peak_mib']:.0f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
