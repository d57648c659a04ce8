"""``anyconv check``: anyconv's unfold, fold and convolution against torch's, for the user's geometry.

Random float64 tensors, forward and gradients; prints the largest difference of each check and
exits 1 if one is above the tolerance, so it doubles as a sanity check in a script.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import anyconv

from ..engine.cosine_rows import cosine_rows_path
from ..engine.fields_columns import columns_path
from ..engine.fields_fold import fold_path
from ..engine.tap_loops import loops_paths
from ..errors import ArgumentError
from ..functional.allocation import device_memory
from ..geometry import Geometry, Summary
from ..geometry.limits import format_bytes
from ..variants.fused import native_paths
from .failures import is_allocation_failure
from .geometry_options import add_geometry_options, integer, summary_from
from .references import (
    NATIVE_CONVOLUTIONS,
    recipe_convolution,
    reference_convolution,
    reference_fold,
    reference_unfold,
)

TOLERANCE = 1e-9
#: how many float64 tensors as large as the largest one a check makes (input, padded input,
#: columns or output) it holds at once, at most: its own and the reference's results, their
#: gradients, the random cotangent, the difference
COPIES_HELD = 8


@dataclass(frozen=True)
class Outcome:
    """One line of the report: what was compared with what, and the largest differences."""

    check: str
    reference: str
    forward: float | None = None
    gradient: float | None = None
    error: str | None = None

    @property
    def passed(self) -> bool:
        if self.error is not None or self.forward is None or self.gradient is None:
            return False
        return max(self.forward, self.gradient) <= TOLERANCE


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register the ``check`` subcommand."""
    parser = commands.add_parser(
        "check",
        help="anyconv's unfold, fold and convolution against torch's for one geometry",
        description="Run anyconv.unfold, anyconv.fold and the convolution on random float64 tensors "
        "of the given geometry, against torch's functions (or a loop reference where torch has "
        "none), forward and gradients, and print the largest difference of each.",
    )
    add_geometry_options(parser, channels=4, out_channels=6, batch=2)
    parser.add_argument("--seed", default="0", help="of the random tensors (default 0)")
    parser.set_defaults(run=run)


def run(arguments: argparse.Namespace) -> int:
    """Print the report; 0 if every difference is within the tolerance, else 1."""
    summary = summary_from(arguments, "float64")
    check_memory(summary)
    generator = torch.Generator().manual_seed(integer("--seed", arguments.seed))
    g = summary.geometry
    print(
        f"anyconv check: {g.ndim}-d, input {(summary.batch, summary.channels, *g.input_size)}, "
        f"kernel {g.kernel_size}, stride {g.stride}, padding {g.padding}, dilation {g.dilation}, "
        f"groups {summary.groups}, padding_mode {g.padding_mode!r}, float64, seed {arguments.seed}"
    )
    outcomes = run_checks(summary, generator)
    widths = (max(len(o.check) for o in outcomes), max(len(o.reference) for o in outcomes))
    print(f"{'check'.ljust(widths[0])}  {'reference'.ljust(widths[1])}  {'forward':>9}  {'gradient':>9}")
    for outcome in outcomes:
        start = f"{outcome.check.ljust(widths[0])}  {outcome.reference.ljust(widths[1])}"
        if outcome.error is not None:
            print(f"{start}  ERROR {outcome.error}")
        else:
            verdict = "ok" if outcome.passed else "MISMATCH"
            print(f"{start}  {outcome.forward:9.2e}  {outcome.gradient:9.2e}  {verdict}")
    if not hasattr(anyconv, "conv"):
        print("(anyconv.conv is not in this version: its check is left out)")
    print("fused loops on this machine (float32, float64, bfloat16, float16 on CPU):")
    for variant, path in native_paths().items():
        print(f"  {variant.ljust(8)}  {path}")
    print("tap loops on this machine (depthwise, grouped and few-channel layers), by dtype:")
    for dtype, path in loops_paths().items():
        print(f"  {dtype.ljust(8)}  {path}")
    print(f"the columns of the fields path's forward: {columns_path()}")
    print(f"the fold of the fields path's backward: {fold_path()}")
    print(f"the cosine of small rows (squeeze-excitation): {cosine_rows_path()}")
    if all(outcome.passed for outcome in outcomes):
        print(f"OK: every largest difference is at most {TOLERANCE:.0e}")
        return 0
    print(f"FAILED: {sum(not outcome.passed for outcome in outcomes)} check(s) above {TOLERANCE:.0e}")
    return 1


def check_memory(summary: Summary) -> None:
    """Refuse sizes whose check would not fit in this machine's memory, before making a tensor."""
    g = summary.geometry
    shapes = (
        (summary.batch, summary.channels, *g.padded_size),
        summary.unfold_shape,
        summary.output_shape,
    )
    largest = max(math.prod(shape) for shape in shapes) * summary.itemsize
    memory = device_memory(torch.device("cpu"))
    if memory is not None and COPIES_HELD * largest > memory:
        raise ArgumentError(
            f"the check would hold about {format_bytes(COPIES_HELD * largest)} ({COPIES_HELD} float64 "
            f"tensors of {format_bytes(largest)}), more than the {format_bytes(memory)} of memory of "
            "this machine: choose a smaller --input-size, --channels, --out-channels or --batch"
        )


def run_checks(summary: Summary, generator: torch.Generator) -> list[Outcome]:
    """Compare unfold, fold, unfold + matmul (N <= 3) and anyconv.conv (when present) with references."""
    g = summary.geometry

    def random(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, dtype=torch.float64, generator=generator).requires_grad_()

    input = random(summary.batch, summary.channels, *g.input_size)
    columns = random(*summary.unfold_shape)
    weight = random(summary.out_channels, summary.channels // summary.groups, *g.kernel_size)
    bias = random(summary.out_channels)
    zeros = _with_zero_padding(g)
    outcomes = []

    def ours_unfold(x):
        return anyconv.unfold(x, g.kernel_size, g.dilation, g.padding, g.stride, padding_mode=g.padding_mode)

    torch_unfold = _is_torch_2d(g)
    outcomes.append(
        compare(
            "anyconv.unfold",
            "F.unfold" if torch_unfold else "loop over taps",
            ours_unfold,
            (lambda x: F.unfold(x, g.kernel_size, g.dilation, _symmetric(g), g.stride))
            if torch_unfold
            else (lambda x: reference_unfold(x, g)),
            (input,),
            generator,
        )
    )

    torch_fold = _is_torch_2d(zeros)
    outcomes.append(
        compare(
            "anyconv.fold (zero padding)" if g.padding_mode != "zeros" else "anyconv.fold",
            "F.fold" if torch_fold else "adjoint of the loop",
            lambda c: anyconv.fold(c, g.input_size, g.kernel_size, g.dilation, g.padding, g.stride),
            (lambda c: F.fold(c, g.input_size, g.kernel_size, g.dilation, _symmetric(g), g.stride))
            if torch_fold
            else (lambda c: reference_fold(c, zeros, summary.channels)),
            (columns,),
            generator,
        )
    )

    def reference(x, w, b):
        return reference_convolution(x, w, b, g, summary.groups)[0]

    reference_name = reference_convolution(input.detach(), weight.detach(), bias.detach(), g, summary.groups)[
        1
    ]
    if g.ndim in NATIVE_CONVOLUTIONS:
        outcomes.append(
            compare(
                "anyconv.unfold + matmul",
                reference_name,
                lambda x, w, b: recipe_convolution(ours_unfold(x), w, b, g, summary.groups),
                reference,
                (input, weight, bias),
                generator,
            )
        )
    if hasattr(anyconv, "conv"):
        outcomes.append(
            compare(
                "anyconv.conv",
                reference_name,
                lambda x, w, b: anyconv.conv(
                    x, w, b, g.stride, g.padding, g.dilation, summary.groups, padding_mode=g.padding_mode
                ),
                reference,
                (input, weight, bias),
                generator,
            )
        )
    return outcomes


def compare(
    check: str,
    reference_name: str,
    ours: Callable[..., torch.Tensor],
    reference: Callable[..., torch.Tensor],
    inputs: Sequence[torch.Tensor],
    generator: torch.Generator,
) -> Outcome:
    """The largest difference of the outputs, and of the gradients for one random output gradient."""
    try:
        expected = reference(*inputs)
        actual = ours(*inputs)
        cotangent = torch.randn(expected.shape, dtype=expected.dtype, generator=generator)
        expected_grads = torch.autograd.grad(expected, inputs, cotangent)
        actual_grads = torch.autograd.grad(actual, inputs, cotangent)
    except Exception as error:  # a failing call is a failed check, reported with the others
        if is_allocation_failure(error):
            raise  # the sizes, not a wrong number: refused in one line by the command
        return Outcome(check, reference_name, error=f"{type(error).__name__}: {error}")
    if actual.shape != expected.shape:
        return Outcome(
            check, reference_name, error=f"shape {tuple(actual.shape)}, expected {tuple(expected.shape)}"
        )
    gradient = max(_largest_difference(a, e) for a, e in zip(actual_grads, expected_grads))
    return Outcome(check, reference_name, _largest_difference(actual, expected), gradient)


def _largest_difference(actual: torch.Tensor, expected: torch.Tensor) -> float:
    if expected.numel() == 0:
        return 0.0
    return (actual - expected).abs().max().item()


def _is_torch_2d(geometry: Geometry) -> bool:
    # F.unfold and F.fold take 2-d, zero, symmetric padding only
    return (
        geometry.ndim == 2
        and geometry.padding_mode == "zeros"
        and all(before == after for before, after in geometry.padding)
    )


def _symmetric(geometry: Geometry) -> tuple[int, ...]:
    return tuple(before for before, _ in geometry.padding)


def _with_zero_padding(geometry: Geometry) -> Geometry:
    # fold has no padding mode: whatever the convolution's mode, fold's padding is zeros
    return anyconv.make_geometry(
        geometry.input_size, geometry.kernel_size, geometry.stride, geometry.padding, geometry.dilation
    )
