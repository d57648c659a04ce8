"""Time anyconv's variants on a CUDA GPU against cuDNN's convolution (``F.conv1d/2d/3d``) of the same shape.

Run on a machine with a CUDA GPU and triton (``pip install anyconv[gpu]``), from a source checkout:
``PYTHONPATH=src python benchmarks/bench_gpu.py [--rounds N] [--rows TEXT] [--variants ...]``.

Two tables. Variants: every built-in variant on the layer of ``bench_variants.py`` (batch 8 of
64 x 32 x 32, 64 channels, 3x3, padding 1), with the path it took. Layers: the variants of the
Triton path on the layer shapes of ``bench_layers.py`` (its transposed rows left out:
generalized_conv has no transposed form), and the product-form variants (cosine,
sharpened_cosine, polynomial, rbf) on its rows with few channels per group (depthwise, grouped),
where they take the tap products on the Triton kernels. Each is also timed as "(per-chunk)": the
same call with the Triton path and the tap products turned off, so that the engine copies fields
chunk by chunk (for the per-chunk Triton kernels, or the matrix product of dot, l2 and the product
forms). Each round times cuDNN once and then every method once with CUDA events; a method's ratio
is its time over cuDNN's in that round. The tables give the median and quartiles of those ratios
over the rounds, forward (under ``no_grad``) and forward+backward. The path column: ``triton``
for the implicit kernels, ``tap products (triton)`` for the product forms composed from them,
else ``engine``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from unittest import mock

import torch
import torch.nn.functional as F
from bench_layers import ROWS, Row

import anyconv
from anyconv.engine import paths
from anyconv.engine import plan as planning
from anyconv.engine.tap_loops import MAX_CHANNELS_PER_GROUP
from anyconv.variants import BUILTIN_VARIANTS
from anyconv.variants.triton_backend import forget_triton, took_triton

#: the variants of the Triton path (dot and l2 on few channels per group only)
TRITON = ("l1", "lp", "max_plus", "min_plus", "dot", "l2")
#: the product-form variants, composed from the Triton dot and l2 on few channels per group only
PRODUCTS = ("cosine", "sharpened_cosine", "polynomial", "rbf")
CHUNKED = " (per-chunk)"
#: options that keep each variant's outputs finite on these layers
OPTIONS = {"polynomial": {"degree": 2}}
PASSES = ("forward", "forward+backward")
TORCH_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def gpu_ms(function) -> float:
    """Milliseconds ``function`` keeps the GPU busy, measured with CUDA events."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    function()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def caller(x, w, b, backward: bool):
    """Run a method (input, weight, bias) -> output as one pass: forward only, or forward+backward."""

    def call(function):
        if not backward:
            with torch.no_grad():
                return function(x, w, b)
        output = function(x, w, b)
        output.backward(torch.ones_like(output))
        x.grad = w.grad = b.grad = None
        return output

    return call


def paired_ratios(layer, methods: dict, rounds: int, backward: bool) -> tuple[list[float], dict, dict]:
    """cuDNN's times (ms) and, per method, its ratios to cuDNN round by round, and the path it took."""
    x, w, b = (tensor.detach().requires_grad_(backward) for tensor in layer)
    call = caller(x, w, b, backward)
    reference = methods["cuDNN"]
    paths = {}
    for name, function in methods.items():
        forget_triton()
        call(function)  # warm-up: Triton compiles each kernel on its first call
        implicit = took_triton() and not name.endswith(CHUNKED)
        if name == "cuDNN" or not implicit:
            paths[name] = "" if name == "cuDNN" else "engine"
        else:
            paths[name] = "tap products (triton)" if name in PRODUCTS else "triton"
    torch_ms: list[float] = []
    ratios: dict[str, list[float]] = {name: [] for name in methods if name != "cuDNN"}
    for _ in range(rounds):
        base = gpu_ms(lambda: call(reference))
        torch_ms.append(base)
        for name, values in ratios.items():
            values.append(gpu_ms(lambda name=name: call(methods[name])) / base)
    return torch_ms, ratios, paths


def quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        return values[0], values[0], values[0]
    low, middle, high = statistics.quantiles(values, n=4, method="inclusive")
    return low, statistics.median(values), high


def _methods(variants: list[str], arguments: dict, ndim: int) -> dict:
    methods = {"cuDNN": lambda x, w, b: TORCH_CONV[ndim](x, w, b, **arguments)}
    for variant in variants:
        options = OPTIONS.get(variant, {})
        methods[variant] = lambda x, w, b, variant=variant, options=options: anyconv.generalized_conv(
            x, w, variant, b, **arguments, **options
        )
    return methods


def with_chunked(methods: dict) -> dict:
    """``methods`` and, after each variant, the same call with the implicit Triton path and the tap
    products turned off (the engine's fields path)."""
    # plans are cached by the call's signature, which the patches do not change: the calls with
    # the paths turned off keep plans of their own, or they would run the first call's path again
    chunked_plans: dict = {}

    def chunked(function):
        def call(x, w, b):
            with (
                mock.patch.object(paths, "triton_conv_fits", lambda *args: False),
                mock.patch.object(paths, "tap_products_fit", lambda *args: False),
                mock.patch.object(planning, "_PLANS", chunked_plans),
            ):
                return function(x, w, b)

        return call

    both = {}
    for name, function in methods.items():
        both[name] = function
        if name != "cuDNN":
            both[name + CHUNKED] = chunked(function)
    return both


def _layer(input_shape, out_channels, kernel_size, groups, device):
    generator = torch.Generator(device=device).manual_seed(0)
    ndim = len(input_shape) - 2
    weight_shape = (out_channels, input_shape[1] // groups, *(kernel_size,) * ndim)
    x = torch.randn(input_shape, generator=generator, device=device)
    w = torch.randn(weight_shape, generator=generator, device=device) / math.sqrt(math.prod(weight_shape[1:]))
    b = torch.randn(out_channels, generator=generator, device=device)
    return x, w, b


def print_rows(title: str, shape: str, layer, methods: dict, rounds: int, medians: dict) -> None:
    for mode in PASSES:
        torch_ms, ratios, paths = paired_ratios(layer, methods, rounds, mode == "forward+backward")
        for method, values in ratios.items():
            low, middle, high = quartiles(values)
            if mode == "forward":
                medians.setdefault(method, []).append((middle, title))
            print(
                f"| {title} | {shape} | {mode} | {statistics.median(torch_ms):.3f} | {method} | "
                f"{middle:.2f} [{low:.2f}, {high:.2f}] | {paths[method]} |",
                flush=True,
            )


def variant_table(rounds: int, device: torch.device) -> None:
    """Every built-in variant on bench_variants.py's layer."""
    print("\n| layer | shape | pass | cuDNN ms | variant | x cuDNN | path |")
    print("|---|---|---|---:|---|---|---|")
    layer = _layer((8, 64, 32, 32), 64, 3, 1, device)
    methods = _methods(list(BUILTIN_VARIANTS), {"padding": 1}, 2)
    print_rows("bench_variants 3x3", "8x64x32x32 -> 64", layer, methods, rounds, {})


def few_channels_per_group(row: Row) -> bool:
    """Whether the row is grouped with few input channels per group (depthwise and the like)."""
    return row.groups > 1 and row.input_shape[1] // row.groups <= MAX_CHANNELS_PER_GROUP


def layer_table(rows: list[Row], variants: list[str], rounds: int, device: torch.device) -> None:
    """The Triton path's variants (and per-chunk) on the layer shapes of real networks, the product
    forms on the rows with few channels per group only, and a summary."""
    print("\n| row | shape | pass | cuDNN ms | variant | x cuDNN | path |")
    print("|---|---|---|---:|---|---|---|")
    medians: dict[str, list[tuple[float, str]]] = {}
    for row in rows:
        arguments = dict(stride=row.stride, padding=row.padding, dilation=row.dilation, groups=row.groups)
        layer = _layer(row.input_shape, row.out_channels, row.kernel_size, row.groups, device)
        shape = "x".join(map(str, row.input_shape)) + f" -> {row.out_channels}"
        chosen = [variant for variant in variants if variant not in PRODUCTS or few_channels_per_group(row)]
        methods = with_chunked(_methods(chosen, arguments, row.ndim))
        print_rows(f"{row.name} ({row.network})", shape, layer, methods, rounds, medians)
    print("\n| variant | geometric mean of forward medians | worst row (forward median) |")
    print("|---|---:|---|")
    for method, values in medians.items():
        geometric = math.exp(statistics.fmean(math.log(value) for value, _ in values))
        worst, worst_row = max(values)
        print(f"| {method} | {geometric:.2f} | {worst_row} ({worst:.2f}) |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=15, help="rounds per row and pass (default 15)")
    parser.add_argument("--rows", help="only the layer rows whose name contains this text")
    parser.add_argument("--variants", nargs="*", default=[*TRITON, *PRODUCTS], choices=TRITON + PRODUCTS)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit(
            "bench_gpu.py times CUDA kernels and needs a CUDA GPU: torch.cuda.is_available() is False "
            f"(torch {torch.__version__}). The kernels' numbers are checked on CPU by tests/test_triton.py."
        )
    device = torch.device("cuda")
    rows = [row for row in ROWS if not row.transposed and (args.rows is None or args.rows in row.name)]
    print(
        f"torch {torch.__version__}, {torch.cuda.get_device_name(device)}, float32, {args.rounds} rounds; "
        "ratio = time / cuDNN's time in the same round (CUDA events): median [quartiles]"
    )
    variant_table(args.rounds, device)
    layer_table(rows, args.variants, args.rounds, device)


if __name__ == "__main__":
    main()
