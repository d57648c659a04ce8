"""Time this source tree against another commit of anyconv in one process, call by call.

Run from a git checkout: ``PYTHONPATH=src python benchmarks/compare_versions.py REV [--suite
conv variants layers] [--rows TEXT] [--rounds N]``.

On a shared machine a whole process lands on one of a few speed levels (docs/benchmarks.md,
"How the layers are timed"), so two versions timed in two processes compare their levels as much
as their code. Here the commit's ``src/anyconv`` is taken out with ``git archive``, renamed
``anyconv_<commit>`` (its custom operators in a namespace of that name) and imported beside this
tree's ``anyconv``; each round times both on the same tensors, the order alternating from round
to round, and takes this tree's time over the commit's. A call shorter than ``BLOCK_SECONDS`` is
repeated back to back and timed as the mean of the block, as in ``bench_layers.py``. The table
gives the median and quartiles of those ratios (below 1: this tree is faster) and each version's
median time.

Suites: ``conv`` is ``bench_conv.py``'s two layers through ``anyconv.conv``; ``variants`` is
``bench_variants.py``'s layer through every built-in variant; ``layers`` is every row of
``bench_layers.py`` through its methods (``anyconv`` is ``anyconv.conv`` or
``anyconv.conv_transpose``).
"""

from __future__ import annotations

import argparse
import importlib
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import torch
from bench_layers import METHOD_OPTIONS as LAYER_OPTIONS
from bench_layers import METHODS as LAYER_METHODS
from bench_layers import ROWS, Row, caller, random_tensors
from bench_variants import OPTIONS as VARIANT_OPTIONS
from steady_allocator import steady_allocator

import anyconv
from anyconv.variants import BUILTIN_VARIANTS

BLOCK_SECONDS = 0.02
MAX_REPEATS = 200
PASSES = ("forward", "forward+backward")
SUITES = ("conv", "variants", "layers")
#: bench_conv.py's layers: (batch, channels, size, out_channels, stride), 3x3, padding 1
CONV_LAYERS = {"64->64, 3x3, s1": (32, 64, 32, 64, 1), "64->128, 3x3, s2": (32, 64, 32, 128, 2)}


def import_commit(revision: str, folder: Path) -> ModuleType:
    """The package ``src/anyconv`` of ``revision``, imported as ``anyconv_<commit>`` from ``folder``.

    Its custom operators are renamed into that namespace, so that both versions register theirs.
    """
    root = Path(__file__).resolve().parent.parent
    commit = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--short=7", f"{revision}^{{commit}}"],
        capture_output=True,
        text=True,
    )
    if commit.returncode:
        raise SystemExit(f"REV {revision!r} is not a commit of {root}: {commit.stderr.strip()}")
    name = f"anyconv_{commit.stdout.strip()}"
    archive = subprocess.run(
        ["git", "-C", str(root), "archive", "--format=tar", revision, "src/anyconv"],
        capture_output=True,
        check=True,
    )
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    package = folder / name
    (folder / "src" / "anyconv").rename(package)
    for source in package.rglob("*.py"):
        text = source.read_text()
        renamed = text.replace('"anyconv::', f'"{name}::').replace("torch.ops.anyconv.", f"torch.ops.{name}.")
        if renamed != text:
            source.write_text(renamed)
    sys.path.insert(0, str(folder))
    return importlib.import_module(name)


def flushes_subnormals() -> bool:
    """Whether this process flushes subnormal floats to zero (a native library built with fast math
    turns that on for the whole process, which changes every timing of it)."""
    return float(torch.tensor([1e-39]).mul(1.0).item()) == 0.0


def cases(suites: list[str], rows: str | None) -> list[tuple[str, str, dict]]:
    """(suite, case, layer description) for every case of ``suites``."""
    found = []
    if "conv" in suites:
        for case, (batch, channels, size, out_channels, stride) in CONV_LAYERS.items():
            layer = dict(
                input_shape=(batch, channels, size, size),
                weight_shape=(out_channels, channels, 3, 3),
                arguments=dict(stride=stride, padding=1),
                methods=("anyconv",),
            )
            found.append(("conv", case, layer))
    if "variants" in suites:
        layer = dict(
            input_shape=(8, 64, 32, 32),
            weight_shape=(64, 64, 3, 3),
            weight_scale=0.05,
            bias=False,
            arguments=dict(padding=1),
            methods=tuple(BUILTIN_VARIANTS),
        )
        found.append(("variants", "8x64x32x32 -> 64, 3x3", layer))
    if "layers" in suites:
        for row in ROWS:
            if rows is None or rows.lower() in row.name.lower():
                found.append(("layers", row.name, _row_layer(row)))
    return found


def _row_layer(row: Row) -> dict:
    return dict(
        input_shape=row.input_shape,
        weight_shape=row.weight_shape,
        channels_last=row.channels_last,
        transposed=row.transposed,
        arguments=dict(stride=row.stride, padding=row.padding, dilation=row.dilation, groups=row.groups),
        methods=("anyconv",) if row.transposed else LAYER_METHODS,
        options=LAYER_OPTIONS,
    )


def calls(layer: dict, package: ModuleType, method: str):
    """``f(x, w, b)`` computing ``method`` of ``layer`` with ``package`` (a version of anyconv)."""
    arguments = layer["arguments"]
    if method == "anyconv":
        operation = package.conv_transpose if layer.get("transposed") else package.conv
        return lambda x, w, b: operation(x, w, b, **arguments)
    options = layer.get("options", VARIANT_OPTIONS).get(method, {})
    return lambda x, w, b: package.generalized_conv(x, w, method, b, **arguments, **options)


def tensors(layer: dict, backward: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    weight_shape, groups = layer["weight_shape"], layer["arguments"].get("groups", 1)
    out_channels = weight_shape[1] * groups if layer.get("transposed") else weight_shape[0]
    x, w, b = random_tensors(
        layer["input_shape"],
        weight_shape,
        out_channels if layer.get("bias", True) else None,
        layer.get("channels_last", False),
        layer.get("weight_scale"),
    )
    for tensor in (x, w, b):
        if tensor is not None:
            tensor.requires_grad_(backward)
    return x, w, b


def compare(function_a, function_b, x, w, b, backward: bool, rounds: int) -> tuple[list, list]:
    """Each round's time (s) of ``function_a`` and of ``function_b``, alternating which goes first."""
    call = caller(x, w, b, backward)
    repeats = []
    for function in (function_a, function_b):
        call(function)  # warm-up: plans, native libraries
        start = time.perf_counter()
        call(function)
        repeats.append(max(1, min(MAX_REPEATS, round(BLOCK_SECONDS / (time.perf_counter() - start)))))
    repeat = max(repeats)
    times: tuple[list, list] = ([], [])
    for round_index in range(rounds):
        order = (0, 1) if round_index % 2 == 0 else (1, 0)
        for which in order:
            function = (function_a, function_b)[which]
            start = time.perf_counter()
            for _ in range(repeat):
                call(function)
            times[which].append((time.perf_counter() - start) / repeat)
    return times


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    low, middle, high = statistics.quantiles(values, n=4, method="inclusive")
    return low, middle, high


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("revision", metavar="REV", help="the commit to compare this source tree with")
    parser.add_argument("--suite", nargs="*", default=list(SUITES), choices=SUITES)
    parser.add_argument("--rows", help="layers suite: only the rows whose name contains this text")
    parser.add_argument("--methods", nargs="*", help="only these methods (anyconv, or variant names)")
    parser.add_argument("--passes", nargs="*", default=list(PASSES), choices=PASSES)
    parser.add_argument("--rounds", type=int, default=11, help="rounds per case and pass (default 11)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    arguments = parser.parse_args()
    if arguments.rounds < 2:
        parser.error(f"--rounds must be at least 2, got {arguments.rounds}")
    if arguments.threads:
        torch.set_num_threads(arguments.threads)
    steady = steady_allocator()
    with tempfile.TemporaryDirectory(prefix="anyconv-versions-") as folder:
        other = import_commit(arguments.revision, Path(folder))
        label = other.__name__.removeprefix("anyconv_")
        print(
            f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, "
            f"{arguments.rounds} rounds, "
            f"glibc thresholds {'fixed' if steady else 'as glibc sets them'}; ratio = this tree's time / "
            f"{label}'s time in the same round: median [quartiles]\n"
        )
        print(f"| suite | case | pass | method | this ms | {label} ms | this / {label} |")
        print("|---|---|---|---|---:|---:|---|")
        medians = []
        for suite, case, layer in cases(arguments.suite, arguments.rows):
            methods = [m for m in layer["methods"] if not arguments.methods or m in arguments.methods]
            for pass_name in arguments.passes:
                backward = pass_name == "forward+backward"
                x, w, b = tensors(layer, backward)
                for method in methods:
                    ours, theirs = compare(
                        calls(layer, anyconv, method),
                        calls(layer, other, method),
                        x,
                        w,
                        b,
                        backward,
                        arguments.rounds,
                    )
                    ratios = [a / b for a, b in zip(ours, theirs)]
                    low, middle, high = _quartiles(ratios)
                    medians.append((middle, f"{case}, {pass_name}, {method}"))
                    ours_ms, theirs_ms = 1000 * statistics.median(ours), 1000 * statistics.median(theirs)
                    print(
                        f"| {suite} | {case} | {pass_name} | {method} | {ours_ms:.2f} | {theirs_ms:.2f} | "
                        f"{middle:.2f} [{low:.2f}, {high:.2f}] |",
                        flush=True,
                    )
        if medians:
            mean = math.exp(statistics.fmean(math.log(value) for value, _ in medians))
            worst = max(medians)
            print(f"\ngeometric mean of the median ratios {mean:.3f}; largest {worst[0]:.2f} ({worst[1]})")
        if flushes_subnormals():
            print(
                "note: this process flushes subnormal floats to zero (a native library built with fast math)"
            )


if __name__ == "__main__":
    main()
