"""Time anyconv on the layer shapes real networks use, each against torch's own op of that shape.

One row per layer family, its shape taken from a named network. Run from a source checkout:
``PYTHONPATH=src python benchmarks/bench_layers.py [--rounds N] [--rows TEXT] [--memory]``.

Each round times torch's op (``F.conv1d/2d/3d`` or ``F.conv_transpose2d``), then every method, and
takes each method's ratio to torch's time in that round: the ratios of a round share the machine's
load. A call shorter than ``BLOCK_SECONDS`` is repeated back to back to fill about that long and
its time is the mean, so that a fast call is not timed with the state the previous method left
(threads asleep or spinning, caches). The table gives the median and quartiles of those ratios
over the rounds, forward (under ``no_grad``) and forward+backward. ``cosine`` is also given as a
ratio to ``dot`` (the same layer through ``anyconv.conv``), and ``lp`` (p = 3, or ``--lp-p``) as a
ratio to ``l1``. With ``--memory`` each (row, method)
runs its forward+backward once in a fresh process, whose peak resident memory above its inputs is
reported next to torch's.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field

from steady_allocator import steady_allocator

#: a call shorter than this is repeated back to back to fill about this long (seconds), at most
#: MAX_REPEATS times, and timed as the mean of the block
BLOCK_SECONDS = 0.02
MAX_REPEATS = 200


@dataclass(frozen=True)
class Row:
    """One layer: its network, input shape (batch, channels, *spatial) and convolution arguments."""

    name: str
    network: str
    input_shape: tuple[int, ...]
    out_channels: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    groups: int = 1
    transposed: bool = False
    channels_last: bool = False
    """the input laid out channels-last, as the network hands it to the layer"""
    extra: dict = field(default_factory=dict)

    @property
    def ndim(self) -> int:
        return len(self.input_shape) - 2

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """(out, in / groups, *kernel), or torch's (in, out / groups, *kernel) for a transposed layer."""
        kernel, channels = (self.kernel_size,) * self.ndim, self.input_shape[1]
        if self.transposed:
            return (channels, self.out_channels // self.groups, *kernel)
        return (self.out_channels, channels // self.groups, *kernel)


# batch sizes keep one torch call of every row in the milliseconds to tens of milliseconds
ROWS = (
    Row("stem 7x7 s2", "ResNet-18 conv1", (2, 3, 224, 224), 64, 7, stride=2, padding=3),
    Row("stem 3x3 s2", "MobileNetV3-small features.0", (2, 3, 224, 224), 16, 3, stride=2, padding=1),
    Row("3x3 @56", "ResNet-18 layer1", (2, 64, 56, 56), 64, 3, padding=1),
    Row("3x3 @14", "ResNet-18 layer3", (2, 256, 14, 14), 256, 3, padding=1),
    Row("3x3 s2", "ResNet-18 layer2.0.conv1", (2, 64, 56, 56), 128, 3, stride=2, padding=1),
    Row("1x1 pointwise", "MobileNetV2 expansion (24 -> 144)", (2, 24, 56, 56), 144, 1),
    Row("1x1 s2 downsample", "ResNet-18 layer2.0.downsample", (2, 64, 56, 56), 128, 1, stride=2),
    Row(
        "depthwise 3x3", "MobileNetV2 block 2 (144 channels)", (2, 144, 56, 56), 144, 3, padding=1, groups=144
    ),
    Row(
        "depthwise 3x3 s2",
        "MobileNetV3-small block 1",
        (2, 16, 112, 112),
        16,
        3,
        stride=2,
        padding=1,
        groups=16,
    ),
    Row(
        "depthwise 5x5",
        "EfficientNet-B0 stage 4 (240 channels)",
        (2, 240, 28, 28),
        240,
        5,
        padding=2,
        groups=240,
    ),
    Row(
        "depthwise 5x5 s2",
        "EfficientNet-B0 stage 3.0 (144 channels)",
        (2, 144, 56, 56),
        144,
        5,
        stride=2,
        padding=2,
        groups=144,
    ),
    Row("depthwise 7x7", "ConvNeXt-T stage 1 (96 channels)", (2, 96, 56, 56), 96, 7, padding=3, groups=96),
    # timm's ConvNeXt hands its convolutions channels-last tensors (its norms run on the last dimension)
    Row(
        "depthwise 7x7 channels-last",
        "ConvNeXt-T stage 1, as timm runs it",
        (2, 96, 56, 56),
        96,
        7,
        padding=3,
        groups=96,
        channels_last=True,
    ),
    Row(
        "1x1 channels-last",
        "ConvNeXt-T stage 1 MLP (96 -> 384), as timm runs it",
        (2, 96, 56, 56),
        384,
        1,
        channels_last=True,
    ),
    Row(
        "depthwise 5x5 @7",
        "MobileNetV3-small features.10 (576 channels)",
        (2, 576, 7, 7),
        576,
        5,
        padding=2,
        groups=576,
    ),
    Row(
        "grouped 3x3, 4 per group", "ResNeXt-50 32x4d layer1", (2, 128, 56, 56), 128, 3, padding=1, groups=32
    ),
    Row(
        "grouped 3x3, 16 per group", "ResNeXt-50 32x4d layer3", (2, 512, 14, 14), 512, 3, padding=1, groups=32
    ),
    Row(
        "grouped 3x3, 32 per group", "ResNeXt-50 32x4d layer4", (2, 1024, 7, 7), 1024, 3, padding=1, groups=32
    ),
    Row("dilated 3x3 d2", "DeepLabV3-ResNet-50 layer3 (output stride 8)", (1, 256, 28, 28), 256, 3, 1, 2, 2),
    Row("dilated 3x3 d4", "DeepLabV3-ResNet-50 layer4 (output stride 8)", (1, 512, 28, 28), 512, 3, 1, 4, 4),
    Row("1-D k3", "TCN / WaveNet-style audio block", (4, 128, 4096), 128, 3, padding=1),
    Row("1-D k5", "Wav2Letter-style audio layer", (4, 128, 4096), 128, 5, padding=2),
    Row("1-D k11", "Jasper block 1 (256 channels)", (2, 256, 2048), 256, 11, padding=5),
    Row("3-D 3x3x3", "R3D-18 layer2 (16x112x112 clip)", (1, 128, 8, 28, 28), 128, 3, padding=1),
    Row(
        "transposed 4x4 s2",
        "U-Net / pix2pix decoder",
        (2, 128, 16, 16),
        64,
        4,
        stride=2,
        padding=1,
        transposed=True,
    ),
    Row(
        "transposed 2x2 s2",
        "U-Net decoder up-convolution",
        (2, 256, 28, 28),
        128,
        2,
        stride=2,
        transposed=True,
    ),
    Row("1x1 on 1x1", "MobileNetV3 squeeze-excitation (96 -> 24)", (8, 96, 1, 1), 24, 1),
)
METHODS = ("anyconv", "l1", "max_plus", "cosine", "lp")
#: the variants' options: lp's p a whole number other than l1's 1 and l2's 2
METHOD_OPTIONS = {"lp": {"p": 3.0}}
#: (name, numerator, denominator): method over method, timed in the same round
METHOD_RATIOS = (("cosine / dot", "cosine", "anyconv"), ("lp / l1", "lp", "l1"))
PASSES = ("forward", "forward+backward")


def _rows(text: str | None) -> list[Row]:
    return [row for row in ROWS if text is None or text.lower() in row.name.lower()]


def _layer(row: Row, tiny: bool = False):
    """Input, weight, bias and the callables of every method and of torch, for ``row``.

    ``tiny``: one sample whose image is just large enough for one output position.
    """
    import torch.nn.functional as F

    import anyconv

    shape = row.input_shape
    if tiny:
        span = 1 if row.transposed else (row.kernel_size - 1) * row.dilation + 1
        shape = (1, shape[1], *(span,) * row.ndim)
    x, w, b = random_tensors(shape, row.weight_shape, row.out_channels, row.channels_last)
    assert b is not None
    arguments = dict(stride=row.stride, padding=row.padding, dilation=row.dilation, groups=row.groups)
    if row.transposed:
        torch_op = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[row.ndim - 1]
        methods = {"anyconv": lambda x, w, b: anyconv.conv_transpose(x, w, b, **arguments)}
    else:
        torch_op = (F.conv1d, F.conv2d, F.conv3d)[row.ndim - 1]
        methods = {"anyconv": lambda x, w, b: anyconv.conv(x, w, b, **arguments)}
        for variant in METHODS[1:]:
            methods[variant] = lambda x, w, b, variant=variant: anyconv.generalized_conv(
                x, w, variant, b, **arguments, **METHOD_OPTIONS.get(variant, {})
            )
    methods["torch"] = lambda x, w, b: torch_op(x, w, b, **arguments)
    return x, w, b, methods


def random_tensors(
    input_shape: tuple[int, ...],
    weight_shape: tuple[int, ...],
    bias_size: int | None,
    channels_last: bool = False,
    weight_scale: float | None = None,
):
    """Input, weight and bias (None for no ``bias_size``) drawn from normal numbers, seed 0; the
    weight times ``weight_scale``, by default 1 / sqrt(its fan-in); the input channels-last if asked."""
    import torch

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(input_shape, generator=generator)
    if channels_last:
        x = x.contiguous(memory_format=(torch.channels_last, torch.channels_last_3d)[x.dim() - 4])
    if weight_scale is None:
        weight_scale = 1 / math.sqrt(math.prod(weight_shape[1:]))
    w = torch.randn(weight_shape, generator=generator) * weight_scale
    b = None if bias_size is None else torch.randn(bias_size, generator=generator)
    return x, w, b


def caller(x, w, b, backward: bool):
    import torch

    def call(function):
        if not backward:
            with torch.no_grad():
                return function(x, w, b)
        out = function(x, w, b)
        out.backward(torch.ones_like(out))
        x.grad = w.grad = None
        if b is not None:
            b.grad = None
        return out

    return call


def time_row(row: Row, methods: list[str], rounds: int, backward: bool) -> dict[str, list[float]]:
    """Per method, its time / torch's time in each round (plus 'torch_ms', torch's times)."""
    x, w, b, functions = _layer(row)
    for tensor in (x, w, b):
        tensor.requires_grad_(backward)
    call = caller(x, w, b, backward)
    methods = [method for method in methods if method in functions]
    repeats = {}
    for name in ("torch", *methods):
        call(functions[name])  # warm-up: one-time allocations and native-library loading
        start = time.perf_counter()
        call(functions[name])
        repeats[name] = max(1, min(MAX_REPEATS, round(BLOCK_SECONDS / (time.perf_counter() - start))))
    ratios: dict[str, list[float]] = {name: [] for name in methods}
    ratios["torch_ms"] = []
    pairs = [ratio for ratio in METHOD_RATIOS if ratio[1] in methods and ratio[2] in methods]
    for name, _, _ in pairs:
        ratios[name] = []
    for _ in range(rounds):
        times = {}
        for name in ("torch", *methods):
            start = time.perf_counter()
            for _ in range(repeats[name]):
                call(functions[name])
            times[name] = (time.perf_counter() - start) / repeats[name]
        ratios["torch_ms"].append(1000 * times["torch"])
        for name in methods:
            ratios[name].append(times[name] / times["torch"])
        for name, top, bottom in pairs:
            ratios[name].append(times[top] / times[bottom])
    return ratios


def _high_water_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("VmHWM not found in /proc/self/status")


def peak_memory(row: Row, method: str) -> float:
    """In this process: MiB of resident memory that one forward+backward of ``method`` adds.

    A warm-up on a tiny input first loads what every call shares (native libraries, threads),
    and one small product through oneDNN's inner product initialises that library (about 5 MiB
    here, once per process), as torch's own tiny convolution does for torch: the tiny input's
    products are too small to reach oneDNN in anyconv.
    """
    import torch

    x, w, b, functions = _layer(row, tiny=True)
    for tensor in (x, w, b):
        tensor.requires_grad_(True)
    caller(x, w, b, True)(functions[method])
    if torch.backends.mkldnn.is_available():
        torch.ops.mkldnn._linear_pointwise(torch.ones(4, 4), torch.ones(4, 4), None, "none", [], "")
    x, w, b, functions = _layer(row)
    for tensor in (x, w, b):
        tensor.requires_grad_(True)
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # resets VmHWM to the current resident size (Linux)
    before = _high_water_mib()
    caller(x, w, b, True)(functions[method])
    return _high_water_mib() - before


def _memory_in_subprocess(row: Row, method: str, threads: int | None) -> str:
    command = [sys.executable, __file__, "--peak", row.name, method]
    command += ["--threads", str(threads)] if threads else []
    command += ["--lp-p", str(METHOD_OPTIONS["lp"]["p"])]
    # glibc keeps freed blocks under its adaptive mmap threshold resident, so the high-water mark
    # would depend on the order of frees; a fixed threshold returns large blocks at once
    environment = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    done = subprocess.run(command, capture_output=True, text=True, env=environment)
    if done.returncode:
        return "failed"
    return f"{json.loads(done.stdout):.1f}"


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        return values[0], values[0], values[0]
    low, middle, high = statistics.quantiles(values, n=4, method="inclusive")
    return low, statistics.median(values), high


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=15, help="rounds per row and pass (default 15)")
    parser.add_argument("--rows", help="only the rows whose name contains this text")
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--memory", action="store_true", help="also the peak memory, one process per method")
    parser.add_argument(
        "--lp-p", type=float, default=METHOD_OPTIONS["lp"]["p"], help="lp's exponent p (default 3)"
    )
    parser.add_argument("--peak", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    METHOD_OPTIONS["lp"]["p"] = args.lp_p
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.peak:
        row = next(row for row in ROWS if row.name == args.peak[0])
        print(json.dumps(peak_memory(row, args.peak[1])))
        return
    steady = steady_allocator()
    rows = _rows(args.rows)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, {args.rounds} rounds"
        f"{', glibc thresholds fixed' if steady else ''}, lp's p = {args.lp_p:g}; "
        "ratio = time / torch's time in the same round: median [quartiles]"
    )
    print()
    print(
        "| row | network | shape | pass | torch ms | method | x torch |"
        + (" MiB (torch) |" if args.memory else "")
    )
    print("|---|---|---|---|---:|---|---|" + ("---:|" if args.memory else ""))
    forward_medians: dict[str, list[tuple[float, str]]] = {}
    for row in rows:
        shape = "x".join(map(str, row.input_shape)) + f" -> {row.out_channels}"
        torch_memory = _memory_in_subprocess(row, "torch", args.threads) if args.memory else ""
        for mode in PASSES:
            ratios = time_row(row, args.methods, args.rounds, mode == "forward+backward")
            torch_ms = statistics.median(ratios.pop("torch_ms"))
            for method, values in ratios.items():
                low, middle, high = _quartiles(values)
                if mode == "forward" and method not in {name for name, _, _ in METHOD_RATIOS}:
                    forward_medians.setdefault(method, []).append((middle, row.name))
                memory = ""
                if args.memory and mode == "forward+backward" and method in METHODS:
                    memory = f" {_memory_in_subprocess(row, method, args.threads)} ({torch_memory}) |"
                elif args.memory:
                    memory = " |"
                print(
                    f"| {row.name} | {row.network} | {shape} | {mode} | {torch_ms:.2f} | {method} | "
                    f"{middle:.2f} [{low:.2f}, {high:.2f}] |{memory}",
                    flush=True,
                )
    print()
    print("| method | geometric mean of forward medians | worst row (forward median) |")
    print("|---|---:|---|")
    for method, medians in forward_medians.items():
        geometric = math.exp(statistics.fmean(math.log(value) for value, _ in medians))
        worst, worst_row = max(medians)
        print(f"| {method} | {geometric:.2f} | {worst_row} ({worst:.2f}) |")


if __name__ == "__main__":
    main()
