"""The tap-loops path: few input channels per group (depthwise), a dense first layer with few
taps, or the standard convolution of a dense layer (or of groups of many channels) with up to
MAX_BLOCKED_CHANNELS channels per group (MAX_BLOCKED_CHANNELS_1D in 1-D); no receptive fields
copied.

Compiled loops (``variants/tap_loops.cpp``) run over the kernel taps of each output row, reading
the zero-padded input in place, forward and backward, for ``dot``, ``l1``, ``l2``, ``max_plus``,
``min_plus`` and ``lp`` (the loops' sums of |p - w|^p, the root taken after: :func:`loops_power`;
a p other than a whole 1 to 4 only where the loops sum every tap of few channels). A grouped
layer's loops that sum its taps pad the input themselves, forward and backward, a (sample, group)
at a time in a buffer that stays in cache, and crop its gradient the same way. A (fields x
filters) product would multiply matrices only a few columns wide. The forward of a dense layer
(and of groups of many channels) takes its filters in blocks, so that every input value loaded
feeds every filter of a block: with 32 filters or more (16 in float64), two vectors of filters at
14 positions of a row, each input value broadcast; with fewer, FILTERS_TOGETHER filters at a time,
tile by tile of the output. Its backward with many taps is the fields path's. They run as the
custom operators ``anyconv::tap_loops`` and ``anyconv::tap_loops_backward`` (fake implementations,
an autograd formula), which torch.compile and torch.export keep as single calls.
``anyconv::tap_quotient`` is the cosine family's forward without a graph in one pass of the loops;
the cosine's backward on a grouped layer in eager calls is one pass per (sample, group) too
(:func:`tap_cosine_gradients`).
"""

from __future__ import annotations

import ctypes
import itertools
import math
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any

import torch
import torch.nn.functional as F

from ..geometry import Geometry
from ..variants import L1, L2, Dot, Lp, MaxPlus, MinPlus, Variant
from ..variants.fused import NATIVE_DTYPES, record_native_call
from ..variants.native import int64_arrays, load_library, native_enabled, native_path
from ..variants.power_roots import negated_root_, root_slope
from ..variants.triton_backend import backend
from .blocks import bias_grad
from .graph_gradients import gradients_as_graph
from .machinery import machinery_watches, records_graph
from .ops import (
    generalized_conv_backward_op,
    op_geometry,
    op_variant,
    output_size,
    run_generalized_conv,
    schema_arguments,
    variant_arguments,
)
from .ops_key import plan_of
from .ops_memory_format import CHANNELS_LAST, channels_last_format

#: at most this many input channels per group take the tap loops: each output then costs that
#: many taps per kernel position, and the matrix product of the fields path has too few columns
MAX_CHANNELS_PER_GROUP = 8
#: the same for l1, lp, max_plus and min_plus, whose fields path has no matrix product: the loops
#: measured faster up to 24 channels per group (ResNeXt's and RegNet's grouped layers), forward
#: and forward+backward (docs/benchmarks.md)
MAX_DISTANCE_CHANNELS_PER_GROUP = 24
#: and for ``dot``, up to MAX_GROUPED_PRODUCT_CHANNELS per group on inputs of at least
#: MIN_GROUPED_PRODUCT_POSITIONS positions per sample: on smaller images its forward+backward
#: measured slower than the fields path's (docs/benchmarks.md)
MAX_GROUPED_PRODUCT_CHANNELS = 16
MIN_GROUPED_PRODUCT_POSITIONS = 784
#: a dense convolution (one group) takes the tap loops when its fields have at most this many taps
#: and its samples at least MIN_DENSE_POSITIONS positions: a network's first layer on a few image
#: channels, whose fields path copies many short fields for a matrix product of few columns
#: (docs/benchmarks.md); on small inputs the copy costs little
MAX_DENSE_TAPS = 32
MIN_DENSE_POSITIONS = 1024
#: the forward of a dense layer takes this many filters at once (``kFiltersTogether`` of the loops)
FILTERS_TOGETHER = 4
#: a dense layer takes the loops' filter blocks for ``dot`` and ``l2`` up to this many input
#: channels: with more, the fields path's copies weigh less against its matrix product and it
#: measured as fast or faster; l1, max_plus and min_plus, which have no matrix product, take the
#: blocks at any channel count
MAX_BLOCKED_CHANNELS = 128
#: the same for a 1-D layer, whose filter blocks (filter vectors from 32 filters) still measured
#: faster than the fields path at 256 channels (docs/benchmarks.md)
MAX_BLOCKED_CHANNELS_1D = 256
#: a dense layer with more filters takes the fields path's backward after the loops' forward
#: (docs/benchmarks.md: a 1x1 layer 24 -> 144 against first layers 3 -> 16 to 64)
MAX_DENSE_LOOPS_BACKWARD_FILTERS = 64
_OPERATIONS = {Dot: 0, L1: 1, L2: 3, MaxPlus: 4, MinPlus: 5}
_L1_ADDER = 2
#: lp's operation per whole p: the loops' sums -sum |p - w|^p (l1's for 1, l2's for 2); any other
#: p > 0 takes _REAL_POWER, |p - w|^p as exp(p log |p - w|) with p an argument of the loops
_POWER_OPERATIONS = {1: 1, 2: 3, 3: 6, 4: 7}
_REAL_POWER = 8
#: the variants the loops know that are no matrix product (their fields path is fused loops)
_DISTANCES = (L1, Lp, MaxPlus, MinPlus)
#: tap steps (one output, one tap) a thread must get for the loops to split between threads
_WORK_PER_THREAD = 2**18
#: elements of the padded input a thread must get for its copy to split between threads
_COPY_PER_THREAD = 2**16
_SOURCE = "tap_loops.cpp"
_POINTER, _SIZE, _FLAG = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
_GEOMETRY_ARGUMENTS = (_SIZE,) * 6 + (_POINTER, _POINTER, _SIZE, _POINTER, _SIZE, _SIZE, _FLAG)
_LAYOUT_ARGUMENTS = (_SIZE, _POINTER, _POINTER, _POINTER, _SIZE, _FLAG)
#: entry point -> (whether it takes the operation code first, how many tensors it takes); each
#: takes the layout of an unpadded input last
_ENTRY_POINTS = {
    "tap_forward": (1, 4),
    "tap_backward": (1, 6),
    "tap_quotient": (0, 6),
    "tap_cosine_backward": (0, 8),
}


def tap_loops_fit(variant: Variant, input: torch.Tensor, weight: torch.Tensor, groups: int) -> bool:
    """Whether the tap loops compute this call: where they sum every tap of a variant they know
    (:func:`tap_sums_fit`), or a dense layer whose filters they take in blocks
    (:func:`filter_blocks_fit`).

    >>> import torch
    >>> tap_loops_fit(L1(), torch.randn(1, 8, 5, 5), torch.randn(8, 1, 3, 3), 8) in (True, False)
    True
    """
    per_group = _per_group_limit(variant, math.prod(input.shape[2:]))
    if type(variant) is Lp:
        power = loops_power(variant)
        if power is None:
            return False
        if power not in _POWER_OPERATIONS:
            # an exp and a log per term: only where the loops sum every tap of a few channels; on
            # a dense layer the fields path's fused loops, which vectorise the power too, measured
            # faster (docs/benchmarks.md)
            return tap_sums_fit(input, weight, groups, per_group)
    elif type(variant) not in _OPERATIONS:
        return False
    any_channels = type(variant) in _DISTANCES
    return tap_sums_fit(input, weight, groups, per_group) or filter_blocks_fit(
        input, weight, groups, any_channels=any_channels
    )


def _per_group_limit(variant: Variant, positions: int) -> int:
    """The most input channels per group of a grouped layer whose taps the loops sum for ``variant``
    on samples of ``positions`` positions; with more, its filters go in blocks
    (:func:`filter_blocks_fit`).

    >>> _per_group_limit(L1(), 25), _per_group_limit(Dot(), 25), _per_group_limit(Dot(), 28 * 28)
    (24, 8, 16)
    """
    if type(variant) in _DISTANCES:
        return MAX_DISTANCE_CHANNELS_PER_GROUP
    if type(variant) is Dot and positions >= MIN_GROUPED_PRODUCT_POSITIONS:
        return MAX_GROUPED_PRODUCT_CHANNELS
    return MAX_CHANNELS_PER_GROUP


def _lays_out(variant: Variant, groups: int, per_group: int, positions: int) -> bool:
    """Whether the loops sum the taps of a grouped layer, laying out each (sample, group) of its
    input themselves, rather than take its filters in blocks (as a dense layer's) on an input
    padded a few samples at a time: ``per_group`` input channels per group, samples of
    ``positions`` positions (shapes only: the backward asks under torch's tracing too).

    >>> _lays_out(L1(), 32, 16, 196), _lays_out(Dot(), 32, 16, 196), _lays_out(Dot(), 1, 3, 196)
    (True, False, False)
    """
    return groups > 1 and per_group <= _per_group_limit(variant, positions)


def loops_power(variant: Lp) -> float | None:
    """The exponent of an ``lp`` whose sums the loops take: its p, given as a number (None for
    anything else).

    The loops sum -|p - w|^p tap by tap (p = 1 and 2: as ``l1`` and ``l2``; 3 and 4 by products,
    exactly, as the fused loops take them; any other p as exp(p log |p - w|), 0 where p = w), and
    the root of the sum is taken after them, in the forward and, through the sum's gradient, in
    the backward.

    >>> loops_power(Lp(p=3)), loops_power(Lp(p=2.5))
    (3.0, 2.5)
    """
    p = variant.options["p"]
    if type(p) not in (int, float) or not p > 0:
        return None
    return float(p)


def tap_sums_fit(
    input: torch.Tensor, weight: torch.Tensor, groups: int, per_group: int = MAX_CHANNELS_PER_GROUP
) -> bool:
    """Whether the loops take a call of any variant they know: floating CPU tensors (float16 where
    the compiler has ``_Float16``), at most ``per_group`` input channels per group in a grouped
    convolution (the variant's limit: :func:`_per_group_limit`) or few taps on a large input in a
    dense one (see MAX_DENSE_TAPS), the loops compiled, and no ``ANYCONV_BACKEND=triton``. The tap
    products sum their ``dot`` there, at the default limit.

    >>> import torch
    >>> tap_sums_fit(torch.randn(1, 8, 5, 5), torch.randn(8, 8, 3, 3), 1)
    False
    """
    return (weight.shape[1] <= per_group if groups > 1 else _dense_fits(input, weight)) and _runs_here(input)


def filter_blocks_fit(
    input: torch.Tensor, weight: torch.Tensor, groups: int, *, any_channels: bool = False
) -> bool:
    """Whether the loops' forward takes a layer's filters in blocks: at most MAX_BLOCKED_CHANNELS
    input channels per group (MAX_BLOCKED_CHANNELS_1D for a 1-D layer; any number with
    ``any_channels``) and at least FILTERS_TOGETHER filters per group, where the loops run
    (:func:`tap_sums_fit`), in one group or in groups of more than MAX_CHANNELS_PER_GROUP input
    channels (ResNeXt's later stages: 16 and 32). Each input value the loops load then feeds every
    filter of a block, and no fields are copied; with more channels the fields path, whose copies
    weigh less against a product of many filters, measured as fast or faster for ``dot``
    (docs/benchmarks.md).

    >>> import torch
    >>> filter_blocks_fit(torch.randn(1, 64, 9, 9), torch.randn(64, 64, 3, 3), 1) in (True, False)
    True
    >>> filter_blocks_fit(torch.randn(1, 256, 9, 9), torch.randn(64, 256, 3, 3), 1)
    False
    >>> filter_blocks_fit(torch.randn(1, 64, 9, 9), torch.randn(64, 4, 3, 3), 16)
    False
    """
    limit = MAX_BLOCKED_CHANNELS_1D if weight.dim() == 3 else MAX_BLOCKED_CHANNELS
    return (
        (groups == 1 or weight.shape[1] > MAX_CHANNELS_PER_GROUP)
        and (any_channels or weight.shape[1] <= limit)
        and weight.shape[0] // groups >= FILTERS_TOGETHER
        and not _pointwise_channels_last(input, weight)
        and _runs_here(input)
    )


def _pointwise_channels_last(input: torch.Tensor, weight: torch.Tensor) -> bool:
    """A 1x1 kernel on a channels-last input: the fields path reads its fields in place, where the
    loops would copy the input channels first and the output back."""
    layout = CHANNELS_LAST.get(input.dim())
    return (
        all(size == 1 for size in weight.shape[2:])
        and layout is not None
        and input.is_contiguous(memory_format=layout)
    )


def _runs_here(input: torch.Tensor) -> bool:
    """The loops compiled for the input's device and dtype, and not stepped aside."""
    return (
        input.device.type == "cpu"
        and input.dtype in NATIVE_DTYPES
        and _loops_built(NATIVE_DTYPES[input.dtype])
    )


def _dense_fits(input: torch.Tensor, weight: torch.Tensor) -> bool:
    """A dense layer's fields have at most MAX_DENSE_TAPS taps and its samples at least
    MIN_DENSE_POSITIONS positions."""
    return math.prod(weight.shape[1:]) <= MAX_DENSE_TAPS and math.prod(input.shape[2:]) >= MIN_DENSE_POSITIONS


@torch.compiler.assume_constant_result
def _loops_built(part: str) -> bool:
    """The loops of one dtype (``part``, its NATIVE_DTYPES suffix) enabled and compiled (a compiler
    without ``_Float16`` builds no float16 loops), the Triton kernels not asked for; torch.compile
    takes the answer as a constant of the graph instead of tracing the build and the environment."""
    # ANYCONV_BACKEND=triton asks for the Triton kernels on CPU tensors too
    if not native_enabled() or backend() == "triton":
        return False
    return _has_loops(part)


def _has_loops(part: str) -> bool:
    """The library of ``part`` loaded and holding its loops (a compiler without ``_Float16``
    builds a float16 library without them)."""
    return hasattr(load_library(_SOURCE, part), f"tap_forward_{part}")


def loops_paths() -> dict[str, str]:
    """For each dtype the tap loops compile for, ``"native: <library>"`` or ``"eager: <why, and
    the fix>"``, as ``anyconv check`` reports it (asking builds that dtype's library).

    >>> sorted(loops_paths())
    ['bfloat16', 'float16', 'float32', 'float64']
    """
    paths = {}
    for dtype, part in NATIVE_DTYPES.items():
        path = native_path(_SOURCE, part)
        if path.startswith("native: ") and not _has_loops(part):
            path = "eager: this compiler has no _Float16 (GCC 12 or Clang 15 and later have it)"
        paths[str(dtype).removeprefix("torch.")] = path
    return paths


def tap_loops_conv(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    variant: Variant,
    geometry: Geometry,
    groups: int,
    memory_budget: int,
) -> torch.Tensor:
    """The generalized convolution of a batched ``input`` by the tap loops (see :func:`tap_loops_fit`),
    through the custom operator ``anyconv::tap_loops``.

    A dense layer's forward and backward pad samples a few at a time, their padded copy (and its
    gradient) under ``memory_budget`` bytes when one sample fits, as does a grouped layer whose
    filters go in blocks; a grouped layer whose taps the loops sum is padded one (sample, group)
    at a time by the loops themselves.

    >>> import torch, torch.nn.functional as F
    >>> from anyconv.geometry import make_geometry
    >>> x, w = torch.randn(2, 4, 6, 6, dtype=torch.float64), torch.randn(4, 1, 3, 3, dtype=torch.float64)
    >>> if tap_loops_fit(Dot(), x, w, 4):
    ...     y = tap_loops_conv(x, w, None, Dot(), make_geometry((6, 6), 3, padding=1), 4, 2**20)
    ...     assert torch.allclose(y, F.conv2d(x, w, padding=1, groups=4))
    """
    arguments = loops_arguments(variant, geometry, groups, memory_budget)
    if machinery_watches(input, weight, bias):
        return tap_loops_op(input, weight, bias, *arguments)
    # a plain eager call: the same bodies without the custom operators' dispatch (their arguments
    # bound and flattened, forward and backward), as much as a small layer's whole work
    if not records_graph(input, weight, bias):
        return _loops_forward(input, weight, bias, *arguments)
    return _TapLoopsFunction.apply(input, weight, bias, *arguments)


@dataclass(frozen=True)
class TapPlan:
    """The geometry (its padding applied by the loops), groups, the loops' operation code, how
    many samples share one padded copy of the input, the exponent of an ``lp`` whose root is
    taken after the loops' sums (1: no root), and whether the loops lay out each (sample, group)
    of a contiguous input themselves: a grouped layer whose taps they sum (a dense one, or one
    whose filters go in blocks, takes the input padded a few samples at a time)."""

    geometry: Geometry
    groups: int
    operation: int
    samples_per_chunk: int
    power: float = 1.0
    lays_out: bool = False


@lru_cache(maxsize=1024)
def _tap_plan(
    variant: str,
    options: str,
    input_shape: tuple[int, ...],
    weight_shape: tuple[int, ...],
    dtype: torch.dtype,
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
    groups: int,
    memory_budget: int,
) -> TapPlan:
    """The loops' plan for one call of the ops, from their schema arguments (cached)."""
    instance = op_variant(variant, options)
    power = 1.0
    if isinstance(instance, Lp):
        power = loops_power(instance) or 1.0
        operation = _POWER_OPERATIONS[int(power)] if power in _POWER_OPERATIONS else _REAL_POWER
    else:
        operation = _OPERATIONS[type(instance)]
        if operation == _OPERATIONS[L1] and instance.options["adder_grad"]:
            operation = _L1_ADDER
    geometry = op_geometry(input_shape[2:], weight_shape[2:], stride, padding, dilation)
    sample_bytes = 2 * dtype.itemsize * input_shape[1] * _layout(geometry, weight_shape[1])[3]
    lays_out = _lays_out(instance, groups, weight_shape[1], math.prod(input_shape[2:]))
    return TapPlan(geometry, groups, operation, max(1, memory_budget // sample_bytes), power, lays_out)


def _loops_forward(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    variant: str,
    options: str,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    memory_budget: int,
) -> torch.Tensor:
    """``loops(pad(input), weight) + bias``; the arguments are those of ``anyconv::generalized_conv``
    (a variant of the loops, no option tensors). The body of the custom operator ``anyconv::tap_loops``
    (``tap_loops_op``), called directly by the eager calls that nothing watches."""
    arguments = (variant, options, stride, padding, dilation, groups, memory_budget)
    plan = plan_of(_tap_plan, input, weight, *arguments)
    record_native_call()
    weight = weight.contiguous()
    bias = None if bias is None else bias.to(input.dtype).contiguous()
    if plan.power == 1:
        # the loops add the bias as they store each output
        return _sums(input, weight, bias, plan)
    # lp: -S^(1/p) from the loops' -S, as the fields path takes the root of its sums, then the bias
    output = negated_root_(_sums(input, weight, None, plan), plan.power)
    return output if bias is None else output.add_(bias.view(-1, *(1,) * plan.geometry.ndim))


def _sums(
    input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, plan: TapPlan
) -> torch.Tensor:
    """The loops' forward of ``plan``'s operation on a contiguous ``weight``, plus ``bias``."""
    output = _output(input, weight, plan.geometry.output_size, plan.groups, plan.geometry.stride[-1])
    if not output.is_contiguous():
        # a depthwise layer on a channels-last input: read in place, a vector of channels per
        # position, into a channels-last output
        _call("tap_forward", plan, input, weight, output, bias, unpadded=True, channels_last=True)
        return output
    if plan.lays_out and not input.is_contiguous():
        # a grouped layer's loops lay out each (sample, group) themselves from a channels-first
        # input: one copy into that layout (torch's transposing copy) is faster than padding a
        # channels-last input sample by sample (docs/benchmarks.md)
        input = input.contiguous()
    if _lays_out_itself(input, plan):
        _call("tap_forward", plan, input, weight, output, bias, unpadded=True)
    else:
        for samples in _sample_chunks(input.shape[0], plan.samples_per_chunk):
            _call("tap_forward", plan, _padded(input[samples], plan.geometry), weight, output[samples], bias)
    return output


tap_loops_op = torch.library.custom_op("anyconv::tap_loops", mutates_args=())(_loops_forward)


@tap_loops_op.register_fake
def _(input, weight, bias, variant, options, stride, padding, dilation, groups, memory_budget):
    sizes = output_size(input.shape[2:], weight.shape[2:], stride, padding, dilation)
    return _output(input, weight, tuple(sizes), groups, stride[-1])


def _output(
    input: torch.Tensor, weight: torch.Tensor, sizes: tuple[int, ...], groups: int, last_stride: int
) -> torch.Tensor:
    """The forward's output: channels-last where the loops read a channels-last input in place
    (one channel per group, one filter per channel, a stride of 1 along the last dimension, a
    4-D or 5-D input channels-last and not channels first too), else channels first."""
    shape = (input.shape[0], weight.shape[0], *sizes)
    layout = channels_last_format(input)
    if layout is None or not groups == input.shape[1] == weight.shape[0] or last_stride != 1:
        return input.new_empty(shape)
    return torch.empty(shape, dtype=input.dtype, device=input.device, memory_format=layout)


@torch.library.custom_op("anyconv::tap_loops_backward", mutates_args=())
def tap_loops_backward_op(
    grad_output: torch.Tensor,
    input: torch.Tensor,
    weight: torch.Tensor,
    variant: str,
    options: str,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    memory_budget: int,
    needs: list[bool],
) -> list[torch.Tensor]:
    """[grad input, grad weight] by the loops' own gradients, each empty where ``needs`` says False."""
    arguments = (variant, options, stride, padding, dilation, groups, memory_budget)
    return _loops_backward(grad_output, input, weight, arguments, needs)


def _loops_backward(
    grad_output: torch.Tensor,
    input: torch.Tensor,
    weight: torch.Tensor,
    arguments: tuple[Any, ...],
    needs: list[bool],
) -> list[torch.Tensor]:
    """The body of ``anyconv::tap_loops_backward``, called directly where nothing watches (see
    :func:`loops_gradients`)."""
    plan = plan_of(_tap_plan, input, weight, *arguments)
    record_native_call()
    weight = weight.contiguous()
    if plan.power != 1:
        # lp = -S^(1/p) of the loops' -S: their gradient of S^(1/p - 1) / p times the output's
        grad_output = root_slope(_sums(input, weight, None, plan), grad_output, plan.power)
    grad_output = grad_output.contiguous()
    grad_input = torch.empty_like(input)
    if _lays_out_itself(input, plan):
        # the loops lay out each (sample, group) and crop its gradient themselves
        grad_per_sample = weight.new_zeros((input.shape[0], *weight.shape))
        _call(
            "tap_backward", plan, input, weight, None, grad_output, grad_input, grad_per_sample, unpadded=True
        )
        return [
            gradient if needed else input.new_empty(0)
            for gradient, needed in zip((grad_input, grad_per_sample.sum(0)), needs)
        ]
    grad_weight = torch.zeros_like(weight)
    for samples in _sample_chunks(input.shape[0], plan.samples_per_chunk):
        padded = _padded(input[samples], plan.geometry)
        grad_padded = torch.zeros_like(padded)
        # one weight gradient per sample: the loops split samples between threads
        grad_per_sample = weight.new_zeros((padded.shape[0], *weight.shape))
        _call("tap_backward", plan, padded, weight, None, grad_output[samples], grad_padded, grad_per_sample)
        _crop_into(grad_input[samples], grad_padded, plan.geometry)
        grad_weight += grad_per_sample.sum(0)
    return [
        gradient if needed else input.new_empty(0)
        for gradient, needed in zip((grad_input, grad_weight), needs)
    ]


@tap_loops_backward_op.register_fake
def _(grad_output, input, weight, variant, options, stride, padding, dilation, groups, memory_budget, needs):
    shapes = [torch.empty_like(input), weight.new_empty(weight.shape)]
    return [shape if needed else input.new_empty(0) for shape, needed in zip(shapes, needs)]


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    input, weight, _, *arguments = inputs
    ctx.save_for_backward(input, weight)
    ctx.arguments = tuple(arguments)


def _backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    input, weight = ctx.saved_tensors
    needs = ctx.needs_input_grad[:3]
    grad_input = grad_weight = None
    if torch.is_grad_enabled():
        # a graph of the gradients is asked for (double backward): the loops' gradients are
        # not differentiable, the custom operator's are (or it refuses, for a non-smooth variant)
        grad_input, grad_weight = _differentiable_gradients(ctx.arguments, input, weight, grad_output, needs)
    elif needs[0] or needs[1]:
        grad_input, grad_weight = loops_gradients(ctx.arguments, input, weight, grad_output, needs[:2])
    grad_bias = bias_grad(grad_output) if needs[2] else None
    return grad_input, grad_weight, grad_bias, *(None,) * len(ctx.arguments)


tap_loops_op.register_autograd(_backward, setup_context=_setup_context)


class _TapLoopsFunction(torch.autograd.Function):
    """``anyconv::tap_loops`` and its autograd formula without the operators' dispatch: for eager
    calls that nothing watches (``machinery_watches``), the same bodies and the same backward."""

    @staticmethod
    def forward(
        ctx: Any, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *arguments: Any
    ) -> torch.Tensor:
        ctx.save_for_backward(input, weight)
        ctx.arguments = arguments
        return _loops_forward(input, weight, bias, *arguments)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        return _backward(ctx, grad_output)


def loops_gradients(
    arguments: tuple[Any, ...],
    input: torch.Tensor,
    weight: torch.Tensor,
    grad_output: torch.Tensor,
    needs: tuple[bool, ...],
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The input and weight gradients of ``anyconv::tap_loops`` (its schema ``arguments`` after the
    bias), None where ``needs`` says False; no graph. Through ``anyconv::tap_loops_backward`` where
    torch's machinery watches (``machinery_watches``), else its body without the dispatch."""
    variant, options, groups = arguments[0], arguments[1], arguments[5]
    lays_out = _lays_out(op_variant(variant, options), groups, weight.shape[1], math.prod(input.shape[2:]))
    if not lays_out and not _dense_loops_backward(weight):
        # the fields path's backward, its input gradient of dot at stride 1 the convolution the
        # loops take (engine/transposed_gradient.py)
        found = generalized_conv_backward_op(
            grad_output, input, weight, [], None, None, *arguments, list(needs)
        )
    elif machinery_watches(grad_output, input, weight):
        found = tap_loops_backward_op(grad_output, input, weight, *arguments, list(needs))
    else:
        found = _loops_backward(grad_output, input, weight, arguments, list(needs))
    grad_input, grad_weight = (gradient if needed else None for gradient, needed in zip(found, needs))
    return grad_input, grad_weight


def loops_arguments(variant: Variant, geometry: Geometry, groups: int, memory_budget: int) -> tuple[Any, ...]:
    """The schema arguments of ``anyconv::tap_loops`` after the bias, for a built-in ``variant``."""
    arguments = variant_arguments(variant)
    assert arguments is not None, "the tap loops take built-in variants only"
    name, options, _ = arguments
    return schema_arguments(name, options, geometry, groups, memory_budget)


def _differentiable_gradients(
    arguments: tuple[Any, ...],
    input: torch.Tensor,
    weight: torch.Tensor,
    grad_output: torch.Tensor,
    needs: tuple[bool, ...],
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The input and weight gradients of ``anyconv::tap_loops`` as a graph: its output recomputed by
    the custom operator ``anyconv::generalized_conv`` and differentiated with ``create_graph``."""
    variant, options, stride, padding, dilation, groups, memory_budget = arguments

    def recompute() -> torch.Tensor:
        geometry = op_geometry(
            tuple(input.shape[2:]), tuple(weight.shape[2:]), tuple(stride), tuple(padding), tuple(dilation)
        )
        instance = op_variant(variant, options)
        return run_generalized_conv(
            input, weight, None, instance, (variant, options, ()), geometry, groups, memory_budget
        )

    grad_input, grad_weight = gradients_as_graph(recompute, (input, weight), needs[:2], grad_output)
    return grad_input, grad_weight


def tap_quotient_conv(
    input: torch.Tensor,
    weight: torch.Tensor,
    scale: torch.Tensor,
    offset: torch.Tensor,
    geometry: Geometry,
    groups: int,
    memory_budget: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """(p . w) / (|p| scale + offset) (+ ``bias``) for every field p of a batched ``input`` and
    filter w, by one pass of the tap loops (see :func:`tap_loops_fit` for ``dot``), through
    ``anyconv::tap_quotient`` where torch's machinery watches (``machinery_watches``), else its
    body without the dispatch.

    ``scale`` and ``offset`` hold one value per filter (the cosine: |w| and eps). The loops read each
    field once for both p . w and |p|^2 and write only the quotient, the bias added as they store
    it. No autograd formula: for calls that record no graph.

    >>> import torch
    >>> from anyconv.geometry import make_geometry
    >>> x, w = torch.randn(2, 4, 6, 6), torch.randn(4, 1, 3, 3)
    >>> if tap_loops_fit(Dot(), x, w, 4):
    ...     norms = torch.linalg.vector_norm(w.flatten(1), dim=1)
    ...     y = tap_quotient_conv(x, w, norms, torch.zeros(4), make_geometry((6, 6), 3), 4, 2**20)
    ...     assert y.shape == (2, 4, 4, 4) and y.abs().max() <= 1 + 1e-6
    """
    arguments = _dot_arguments(geometry, groups, memory_budget)[2:]
    if machinery_watches(input, weight, scale, offset, bias):
        return tap_quotient_op(input, weight, scale, offset, *arguments, bias)
    # a plain eager call: the operator's body without its dispatch (see tap_loops_conv)
    return _quotient_forward(input, weight, scale, offset, *arguments, bias)


def cosine_gradients_fit(input: torch.Tensor, weight: torch.Tensor, groups: int) -> bool:
    """Whether :func:`tap_cosine_gradients` takes the cosine's backward: a grouped layer of at most
    MAX_CHANNELS_PER_GROUP channels per group, or a layer whose backward the loops take
    (:func:`_dense_loops_backward`), on a float32 or float64 input, in an eager call that nothing
    watches. The loops' pass goes filter by filter: with more channels per group (whose forward
    takes filter blocks) the composition's fields backward takes all filters of a group at once."""
    return (
        ((groups > 1 and weight.shape[1] <= MAX_CHANNELS_PER_GROUP) or _dense_loops_backward(weight))
        and input.dtype in (torch.float32, torch.float64)
        and not machinery_watches(input)
    )


def _dense_loops_backward(weight: torch.Tensor) -> bool:
    """Whether the loops take the backward of a layer whose forward takes filter blocks (a dense
    one, or a grouped one of many channels per group): with more filters or more taps, the fields
    path's backward, which takes all filters of a block of fields at once, is faster than the
    loops' filter by filter."""
    return (
        weight.shape[0] <= MAX_DENSE_LOOPS_BACKWARD_FILTERS and math.prod(weight.shape[1:]) <= MAX_DENSE_TAPS
    )


def tap_cosine_gradients(
    grad: torch.Tensor,
    input: torch.Tensor,
    weight: torch.Tensor,
    scale: torch.Tensor,
    offset: torch.Tensor,
    geometry: Geometry,
    groups: int,
    memory_budget: int,
    kept: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The cosine's gradients by one pass of the loops per (sample, group) (where
    :func:`cosine_gradients_fit`): the input's and the weight's (its radial term included), with
    ``scale`` = |w| and ``offset`` = eps per filter, and the quotient y where the forward ``kept``
    it; see ``engine/tap_cosine.py``."""
    plan = plan_of(_tap_plan, input, weight, *_dot_arguments(geometry, groups, memory_budget))
    record_native_call()
    # a channels-last input read as one contiguous copy, its gradient given back in its layout
    given, input = input, input.contiguous()
    weight, grad = weight.contiguous(), grad.contiguous()
    scale, offset = (values.to(input.dtype).contiguous() for values in (scale, offset))
    kept = None if kept is None else kept.contiguous()
    grad_input = torch.empty_like(input)
    grad_per_sample = weight.new_zeros((input.shape[0], *weight.shape))
    _call(
        "tap_cosine_backward",
        plan,
        input,
        weight,
        scale,
        offset,
        kept,
        grad,
        grad_input,
        grad_per_sample,
        unpadded=True,
    )
    if given is not input:
        grad_input = torch.empty_like(given).copy_(grad_input)
    return grad_input, grad_per_sample.sum(0)


#: the loops' dot, whose plan (geometry, chunks of samples) the quotient shares
_DOT_ARGUMENTS = variant_arguments(Dot())


def _dot_arguments(
    geometry: Geometry, groups: int, memory_budget: int
) -> tuple[str, str, list[int], list[int], list[int], int, int]:
    """The schema arguments of the loops' dot after the bias (see :func:`loops_arguments`), which
    the quotient and the cosine's backward plan with."""
    assert _DOT_ARGUMENTS is not None
    name, options, _ = _DOT_ARGUMENTS
    return schema_arguments(name, options, geometry, groups, memory_budget)


def _quotient_forward(
    input: torch.Tensor,
    weight: torch.Tensor,
    scale: torch.Tensor,
    offset: torch.Tensor,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    memory_budget: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(loops' dot) / (|p| scale + offset) + bias`` with the padding, stride, dilation and groups
    of ``anyconv::tap_loops``; ``scale`` and ``offset`` (out_channels,), taken in the loops' compute
    type. The body of the custom operator ``anyconv::tap_quotient`` (``tap_quotient_op``)."""
    assert _DOT_ARGUMENTS is not None
    name, options, _ = _DOT_ARGUMENTS
    plan = plan_of(_tap_plan, input, weight, name, options, stride, padding, dilation, groups, memory_budget)
    record_native_call()
    weight = weight.contiguous()
    # bfloat16 and float16 loops compute in float32 (storage_types.h)
    compute = torch.promote_types(input.dtype, torch.float32)
    scale, offset = (values.to(compute).contiguous() for values in (scale, offset))
    bias = None if bias is None else bias.to(input.dtype).contiguous()
    output = _output(input, weight, plan.geometry.output_size, plan.groups, plan.geometry.stride[-1])
    if not output.is_contiguous():
        # a depthwise layer on a channels-last input, read in place (see tap_loops_op)
        _call(
            "tap_quotient",
            plan,
            input,
            weight,
            scale,
            offset,
            output,
            bias,
            unpadded=True,
            channels_last=True,
        )
    elif _lays_out_itself(input, plan):
        _call("tap_quotient", plan, input, weight, scale, offset, output, bias, unpadded=True)
    else:
        for samples in _sample_chunks(input.shape[0], plan.samples_per_chunk):
            padded = _padded(input[samples], plan.geometry)
            _call("tap_quotient", plan, padded, weight, scale, offset, output[samples], bias)
    return output


tap_quotient_op = torch.library.custom_op("anyconv::tap_quotient", mutates_args=())(_quotient_forward)


@tap_quotient_op.register_fake
def _(input, weight, scale, offset, stride, padding, dilation, groups, memory_budget, bias=None):
    sizes = output_size(input.shape[2:], weight.shape[2:], stride, padding, dilation)
    return _output(input, weight, tuple(sizes), groups, stride[-1])


def _threads(work: int) -> int:
    """torch's thread count, or 1 for work too small to repay waking the threads."""
    return max(1, min(torch.get_num_threads(), work // _WORK_PER_THREAD))


def _sample_chunks(batch: int, samples_per_chunk: int) -> list[slice]:
    return [
        slice(start, min(start + samples_per_chunk, batch)) for start in range(0, batch, samples_per_chunk)
    ]


def _lays_out_itself(input: torch.Tensor, plan: TapPlan) -> bool:
    """Whether the forward loops take the unpadded ``input`` and lay out each (sample, group) into
    a buffer of their own: a grouped convolution whose taps they sum (one (sample, group) per
    step, many steps to share between threads; a dense one has one per sample) on a contiguous
    input."""
    return plan.lays_out and input.is_contiguous()


def _padded(input: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """The zero-padded input, its last dimension split into ``stride`` phases (see :func:`_layout`):
    (b, C, phases, *padded[:-1], padded[-1] / phases)."""
    phases = geometry.stride[-1]
    length = -(-geometry.padded_size[-1] // phases)
    if phases > 1 and input.is_contiguous():
        # the loops' own pass: torch's pad and then strided copy took two, the second slow
        # (with one phase torch's pad alone is the faster copy)
        padded = input.new_empty((*input.shape[:2], phases, *geometry.padded_size[:-1], length))
        _phase_layout(input, padded, geometry, adjoint=False)
        return padded
    # zeros after the last column so that the phases have one length
    extra = length * phases - geometry.padded_size[-1]
    amounts = (geometry.torch_pad[0], geometry.torch_pad[1] + extra, *geometry.torch_pad[2:])
    padded = F.pad(input, amounts) if any(amounts) else input
    return padded.unflatten(-1, (-1, phases)).movedim(-1, 2).contiguous()


def _crop_into(grad_input: torch.Tensor, grad_padded: torch.Tensor, geometry: Geometry) -> None:
    """Write the gradient of the unpadded input from that of :func:`_padded`'s result (its adjoint)."""
    if geometry.stride[-1] > 1 and grad_input.is_contiguous():
        _phase_layout(grad_input, grad_padded, geometry, adjoint=True)
        return
    image = grad_padded.movedim(2, -1).flatten(-2)
    interior = tuple(
        slice(before, before + size) for (before, _), size in zip(geometry.padding, geometry.input_size)
    )
    grad_input.copy_(image[(slice(None), slice(None), *interior)])


def _phase_layout(image: torch.Tensor, padded: torch.Tensor, geometry: Geometry, adjoint: bool) -> None:
    """``padded`` = :func:`_padded` (``image``) by the loops' copy, or with ``adjoint`` ``image`` from
    ``padded``: both contiguous, of one dtype."""
    elements = padded.numel()
    # the copy moves elements by size: any dtype's library has it, the image's own where it has one
    _phase_layout_function(NATIVE_DTYPES.get(image.dtype, NATIVE_DTYPES[torch.float32]))(
        image.data_ptr(),
        padded.data_ptr(),
        image.element_size(),
        image.shape[0] * image.shape[1],
        *_layout_arguments(geometry),
        int(adjoint),
        max(1, min(torch.get_num_threads(), elements // _COPY_PER_THREAD)),
    )


def _layout_arguments(geometry: Geometry) -> tuple[Any, ...]:
    """The layout of :func:`_padded` as the loops take it: the number of dimensions, the input's
    size, the padding before, the padded size (its last a multiple of the phases), the phases."""
    phases = geometry.stride[-1]
    sizes = (*geometry.padded_size[:-1], -(-geometry.padded_size[-1] // phases) * phases)
    before = tuple(amount for amount, _ in geometry.padding)
    return geometry.ndim, *int64_arrays(geometry.input_size, before, sizes), phases


@lru_cache(maxsize=256)
def _layout(
    geometry: Geometry, channels_per_group: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Flat offsets into one group's input as :func:`_padded` lays it out: of each tap (kernel,
    then channel order, as the fields'), of its weight column (channel, then kernel: the weight's
    layout), and of the first input element each output row (all but the last dimension) reads;
    and the elements per channel.

    A stride s along the last dimension would make the loops read every s-th element; split into s
    phases (columns j with j % s = phase, one after the other) the input is read contiguously
    instead: column i * s + k * dilation is column i + (k * dilation) // s of phase (k * dilation) % s.
    """
    phases = geometry.stride[-1]
    shape = (phases, *geometry.padded_size[:-1], -(-geometry.padded_size[-1] // phases))
    strides = [math.prod(shape[axis + 1 :]) for axis in range(len(shape))]
    plane = math.prod(shape)
    taps, columns = [], []
    for flat_tap, tap in enumerate(_indices(geometry.kernel_size)):
        reach = [index * spacing for index, spacing in zip(tap, geometry.dilation)]
        leading = sum(amount * stride for amount, stride in zip(reach[:-1], strides[1:-1]))
        spatial = (reach[-1] % phases) * strides[0] + leading + reach[-1] // phases
        for channel in range(channels_per_group):
            taps.append(channel * plane + spatial)
            columns.append(channel * geometry.kernel_volume + flat_tap)
    rows = [
        sum(index * step * stride for index, step, stride in zip(row, geometry.stride, strides[1:-1]))
        for row in _indices(geometry.output_size[:-1])
    ]

    def as_tensor(values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.int64)

    return as_tensor(taps), as_tensor(columns), as_tensor(rows), plane


def _indices(sizes: tuple[int, ...]) -> itertools.product:
    """Every index of an array of ``sizes``, in row-major order."""
    return itertools.product(*map(range, sizes))


@cache
def _phase_layout_function(part: str) -> Any:
    library = load_library(_SOURCE, part)
    assert library is not None, "the tap loops run only where their library loaded"
    function = library.tap_phase_layout
    function.argtypes = (_POINTER, _POINTER, *(_SIZE,) * 3, *(_POINTER,) * 3, _SIZE, _FLAG, _FLAG)
    function.restype = None
    return function


@cache
def _function(name: str, dtype: torch.dtype) -> Any:
    part = NATIVE_DTYPES[dtype]
    function = getattr(load_library(_SOURCE, part), f"{name}_{part}")
    operation, pointers = _ENTRY_POINTS[name]
    function.argtypes = (
        *(_FLAG,) * operation,
        *(_POINTER,) * pointers,
        *_GEOMETRY_ARGUMENTS,
        *_LAYOUT_ARGUMENTS,
        # the operation's entry points take lp's exponent last
        *(ctypes.c_double,) * operation,
    )
    function.restype = None
    return function


def _call(
    name: str,
    plan: TapPlan,
    padded: torch.Tensor,
    weight: torch.Tensor,
    *tensors: torch.Tensor | None,
    unpadded: bool = False,
    channels_last: bool = False,
) -> None:
    """Run the loops' entry point ``name`` on ``padded`` as :func:`_padded` lays it out or, with
    ``unpadded``, on the input itself, which they then lay out
    (``channels_last``: the input and the output are channels-last, a depthwise layer read in
    place; see :func:`_output`)."""
    geometry = plan.geometry
    taps, columns, rows, plane = _layout(geometry, weight.shape[1])
    # the entry points read ndim 0 as "the input is laid out already"
    layout: tuple[Any, ...] = (0, None, None, None, 1, 0)
    if unpadded:
        layout = (*_layout_arguments(geometry), int(channels_last))
    pointers = [tensor.data_ptr() if tensor is not None else None for tensor in (padded, weight, *tensors)]
    _function(name, padded.dtype)(
        *(plan.operation,) * _ENTRY_POINTS[name][0],
        *pointers,
        padded.shape[0],
        padded.shape[1],
        weight.shape[0],
        plan.groups,
        plane,
        taps.numel(),
        taps.data_ptr(),
        columns.data_ptr(),
        rows.numel(),
        rows.data_ptr(),
        geometry.output_size[-1],
        1,
        _threads(padded.shape[0] * weight.shape[0] * geometry.num_positions * taps.numel()),
        *layout,
        *(plan.power,) * _ENTRY_POINTS[name][0],
    )
