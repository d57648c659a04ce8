"""Benchmark of every built-in variant against F.conv2d and the naive broadcast, time and memory.

Run: ``PYTHONPATH=src python benchmarks/bench_variants.py`` (about two minutes here). Times are
medians of several runs, each variant timed next to F.conv2d in the same process; peak memory
is measured in a fresh subprocess per case (VmHWM minus the resident size before the call).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from steady_allocator import steady_allocator

import anyconv
from anyconv.variants import BUILTIN_VARIANTS, last_path

MATRIX_PRODUCT = ("l2", "rbf", "polynomial", "cosine", "sharpened_cosine")
FUSED = ("l1", "lp", "max_plus", "min_plus")
#: options that keep each variant's outputs finite at this layer size (64 x 3 x 3 = 576 taps)
OPTIONS = {"polynomial": {"degree": 2}}


def layer(batch: int, channels: int = 64, size: int = 32, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, size, size, generator=generator)
    w = torch.randn(channels, channels, 3, 3, generator=generator) * 0.05
    return x, w


def run(name: str, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    if name == "F.conv2d":
        return F.conv2d(x, w, padding=1)
    return anyconv.generalized_conv(x, w, name, padding=1, **OPTIONS.get(name, {}))


def naive(name: str, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The recipe users write by hand: unfold, broadcast every field against every filter, reduce."""
    fields = F.unfold(x, 3, padding=1).transpose(1, 2)[:, :, None, :]  # (B, L, 1, K)
    filters = w.reshape(w.shape[0], -1)  # (O, K)
    if name == "l1":
        out = -(fields - filters).abs().sum(-1)
    else:  # max_plus
        out = (fields + filters).amax(-1)
    return out.transpose(1, 2).reshape(x.shape[0], w.shape[0], *x.shape[2:])


def median_ms(function, repeat: int) -> float:
    function()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def paired(reference, function, repeat: int) -> tuple[float, float]:
    """Median time of ``function`` (ms) and the median of its ratio to ``reference``, timed in turns.

    Timing the two alternately and taking the ratio run by run keeps the ratio honest on a
    machine whose load changes during the benchmark.
    """
    reference(), function()
    times, ratios = [], []
    for _ in range(repeat):
        start = time.perf_counter()
        reference()
        middle = time.perf_counter()
        function()
        end = time.perf_counter()
        times.append(end - middle)
        ratios.append((end - middle) / (middle - start))
    return statistics.median(times) * 1e3, statistics.median(ratios)


def forward_backward(function, x, w):
    x = x.detach().requires_grad_()
    w = w.detach().requires_grad_()

    def step():
        output = function(x, w)
        output.backward(torch.ones_like(output))

    return step


def timing(batch: int, repeat: int) -> None:
    x, w = layer(batch)
    print(
        f"batch {batch} of (64, 32, 32) -> 64 channels, 3x3, padding 1, float32, "
        f"{torch.get_num_threads()} threads; median of {repeat} runs, ms"
    )
    print(f"{'variant':<18}{'forward':>9}{'x conv':>8}{'fwd+bwd':>9}{'x conv':>8}{'x dot':>7}  path")
    conv_step = forward_backward(lambda a, b: run("F.conv2d", a, b), x, w)
    dot_step = forward_backward(lambda a, b: run("dot", a, b), x, w)
    for name in ("F.conv2d", *BUILTIN_VARIANTS):
        step = forward_backward(lambda a, b, name=name: run(name, a, b), x, w)
        forward, forward_ratio = paired(
            lambda: run("F.conv2d", x, w), lambda name=name: run(name, x, w), repeat
        )
        path = last_path() if name in FUSED else ("torch" if name == "F.conv2d" else "matmul")
        both, both_ratio = paired(conv_step, step, repeat)
        versus_dot = " " * 7
        if name in MATRIX_PRODUCT:
            dot_forward = paired(lambda: run("dot", x, w), lambda name=name: run(name, x, w), repeat)[1]
            dot_both = paired(dot_step, step, repeat)[1]
            versus_dot = f"{max(dot_forward, dot_both):7.2f}"
        print(
            f"{name:<18}{forward:9.1f}{forward_ratio:8.2f}{both:9.1f}{both_ratio:8.2f}{versus_dot}  {path}",
            flush=True,
        )
    print(
        "x conv: median over runs of time / F.conv2d's, each timed in turn with it (forward, "
        "forward+backward);\nx dot: the same against dot, the larger of the two"
    )
    naive_batch = 1
    xs = x[:naive_batch]
    for name in ("l1", "max_plus"):
        naive_ms = median_ms(lambda name=name: naive(name, xs, w), max(1, repeat // 2))
        ours = median_ms(lambda name=name: run(name, xs, w), repeat)
        print(
            f"naive broadcast {name} at batch {naive_batch} (batch {batch} needs "
            f"{batch * 1024 * 64 * 576 * 4 / 2**30:.1f} GiB for the broadcast): {naive_ms:.1f} ms, "
            f"anyconv {ours:.1f} ms ({naive_ms / ours:.0f}x faster)"
        )


def resident_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field))


def memory_case(name: str, batch: int) -> None:
    """Run in a fresh process: peak resident memory added by one forward+backward."""
    x, w = layer(batch)
    x.requires_grad_(), w.requires_grad_()
    small_x, small_w = layer(1, size=8)
    forward_backward(lambda a, b: run(name, a, b), small_x, small_w)()  # load kernels and libraries
    before = resident_kib("VmRSS")
    output = run(name, x, w)
    output.backward(torch.ones_like(output))
    print((resident_kib("VmHWM") - before) / 1024)


def memory(batch: int) -> None:
    print(f"peak extra resident memory of forward+backward, batch {batch}, fresh process per case, MiB")
    print(
        "(includes the output, its gradient and the input and weight gradients: "
        f"{4 * batch * 64 * 32 * 32 * 3 / 2**20:.0f} MiB)"
    )
    for name in ("F.conv2d", "dot", "l1", "max_plus", "l2", "cosine"):
        result = subprocess.run(
            [sys.executable, __file__, "--memory-case", name, "--batch", str(batch)],
            capture_output=True,
            text=True,
            check=True,
        )
        print(f"{name:<18}{float(result.stdout.strip()):9.0f}")
    broadcast = batch * 1024 * 64 * 576 * 4 / 2**20
    print(f"{'naive broadcast':<18}{broadcast:9.0f}  (its (B, L, O, K) tensor alone, not run)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--memory-batch", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--memory-case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    steady_allocator()
    if args.memory_case:
        memory_case(args.memory_case, args.batch)
        return
    print(f"fused kernels: {'native C++' if anyconv.variants.native_kernels_available() else 'eager'}")
    timing(args.batch, args.repeat)
    memory(args.memory_batch)


if __name__ == "__main__":
    main()
