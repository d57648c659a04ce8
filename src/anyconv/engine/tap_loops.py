"""The tap-loops path: few input channels per group (depthwise), no receptive fields copied.

Compiled loops (``variants/tap_loops.cpp``) run over the kernel taps of each output row, reading
the zero-padded input in place, forward and backward, for ``dot``, ``l1``, ``l2``, ``max_plus``
and ``min_plus``. A (fields x filters) product would multiply matrices only a few columns wide.
"""

from __future__ import annotations

import ctypes
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any

import torch
import torch.nn.functional as F

from ..geometry import Geometry
from ..variants import L1, L2, Dot, MaxPlus, MinPlus, Variant
from ..variants.fused import NATIVE_DTYPES, record_native_call
from ..variants.native import load_library, native_enabled
from ..variants.triton_backend import backend
from .blocks import bias_grad
from .ops import run_generalized_conv, variant_arguments

#: at most this many input channels per group take the tap loops: each output then costs that
#: many taps per kernel position, and the matrix product of the fields path has too few columns
MAX_CHANNELS_PER_GROUP = 8
_OPERATIONS = {Dot: 0, L1: 1, L2: 3, MaxPlus: 4, MinPlus: 5}
_L1_ADDER = 2
_TROPICAL = (_OPERATIONS[MaxPlus], _OPERATIONS[MinPlus])
#: tap steps (one output, one tap) a thread must get for the loops to split between threads
_WORK_PER_THREAD = 2**20
_SOURCE = "tap_loops.cpp"
_POINTER, _SIZE, _FLAG = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
_GEOMETRY_ARGUMENTS = (_SIZE,) * 6 + (_POINTER, _POINTER, _SIZE, _POINTER, _SIZE, _SIZE, _FLAG)


def tap_loops_fit(variant: Variant, input: torch.Tensor, weight: torch.Tensor, groups: int) -> bool:
    """Whether the tap loops compute this call: a variant they know, floating CPU tensors, few
    input channels per group in a grouped convolution, the loops compiled, no torch.compile
    tracing the call, and no ``ANYCONV_BACKEND=triton``.

    >>> import torch
    >>> tap_loops_fit(L1(), torch.randn(1, 8, 5, 5), torch.randn(8, 1, 3, 3), 8) in (True, False)
    True
    """
    return (
        type(variant) in _OPERATIONS
        # the loops are called through ctypes, which torch.compile cannot trace
        and not torch.compiler.is_compiling()
        and groups > 1
        and weight.shape[1] <= MAX_CHANNELS_PER_GROUP
        and input.device.type == "cpu"
        and input.dtype in NATIVE_DTYPES
        and native_enabled()
        # ANYCONV_BACKEND=triton asks for the Triton kernels on CPU tensors too
        and backend() != "triton"
        # a compiler without _Float16 builds no float16 loops
        and hasattr(load_library(_SOURCE), f"tap_forward_{NATIVE_DTYPES[input.dtype]}")
    )


@dataclass(frozen=True)
class TapPlan:
    """The geometry (its padding applied by the path), groups, the loops' operation code, and how
    many samples share one padded copy of the input."""

    geometry: Geometry
    groups: int
    operation: int
    samples_per_chunk: int
    #: the same variant and budget, for a backward that must itself be differentiable
    variant: Variant
    memory_budget: int


def tap_loops_conv(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    variant: Variant,
    geometry: Geometry,
    groups: int,
    memory_budget: int,
) -> torch.Tensor:
    """The generalized convolution of a batched ``input`` by the tap loops (see :func:`tap_loops_fit`).

    Samples are padded a few at a time, their padded copy (and its gradient) under ``memory_budget``
    bytes when one sample fits.

    >>> import torch, torch.nn.functional as F
    >>> from anyconv.geometry import make_geometry
    >>> x, w = torch.randn(2, 4, 6, 6, dtype=torch.float64), torch.randn(4, 1, 3, 3, dtype=torch.float64)
    >>> if tap_loops_fit(Dot(), x, w, 4):
    ...     y = tap_loops_conv(x, w, None, Dot(), make_geometry((6, 6), 3, padding=1), 4, 2**20)
    ...     assert torch.allclose(y, F.conv2d(x, w, padding=1, groups=4))
    """
    record_native_call()
    operation = _OPERATIONS[type(variant)]
    if operation == _OPERATIONS[L1] and variant.options["adder_grad"]:
        operation = _L1_ADDER
    sample_bytes = 2 * input.element_size() * input.shape[1] * _layout(geometry, weight.shape[1])[3]
    samples_per_chunk = max(1, memory_budget // sample_bytes)
    return TapLoopsFunction.apply(
        input, weight, bias, TapPlan(geometry, groups, operation, samples_per_chunk, variant, memory_budget)
    )


class TapLoopsFunction(torch.autograd.Function):
    """``output = loops(pad(input), weight) + bias``; the backward runs the loops' own gradients."""

    @staticmethod
    def forward(
        ctx: Any, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, plan: TapPlan
    ) -> torch.Tensor:
        ctx.plan = plan
        ctx.save_for_backward(input, weight)
        weight = weight.contiguous()
        output = input.new_empty((input.shape[0], weight.shape[0], *plan.geometry.output_size))
        for samples in _sample_chunks(input.shape[0], plan.samples_per_chunk):
            _call("tap_forward", plan, _padded(input[samples], plan.geometry), weight, output[samples])
        if bias is not None:
            output += bias.view(-1, *(1,) * plan.geometry.ndim)
        return output

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        plan: TapPlan = ctx.plan
        input, weight = ctx.saved_tensors
        needs_input, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        if torch.is_grad_enabled():
            # a graph of the gradients is asked for (double backward): the loops' gradients are
            # not differentiable, the custom operator's are (or it refuses, for a non-smooth variant)
            return _differentiable_gradients(plan, input, weight, grad_output, ctx.needs_input_grad[:3])
        grad_input = grad_weight = None
        if needs_input or needs_weight:
            weight, grad_output = weight.contiguous(), grad_output.contiguous()
            grad_input = torch.empty_like(input) if needs_input else None
            grad_weight = torch.zeros_like(weight)
            for samples in _sample_chunks(input.shape[0], plan.samples_per_chunk):
                padded = _padded(input[samples], plan.geometry)
                # the tropical gradient goes to the tap that won: the forward's output shows which
                output = None
                if plan.operation in _TROPICAL:
                    output = padded.new_empty(grad_output[samples].shape)
                    _call("tap_forward", plan, padded, weight, output)
                grad_padded = torch.zeros_like(padded)
                # one weight gradient per sample: the loops split samples between threads
                grad_per_sample = weight.new_zeros((padded.shape[0], *weight.shape))
                _call(
                    "tap_backward",
                    plan,
                    padded,
                    weight,
                    output,
                    grad_output[samples],
                    grad_padded,
                    grad_per_sample,
                )
                if grad_input is not None:
                    grad_input[samples] = _cropped(grad_padded, plan.geometry)
                grad_weight += grad_per_sample.sum(0)
            grad_weight = grad_weight if needs_weight else None
        grad_bias = bias_grad(grad_output) if needs_bias else None
        return grad_input, grad_weight, grad_bias, None


def _differentiable_gradients(
    plan: TapPlan,
    input: torch.Tensor,
    weight: torch.Tensor,
    grad_output: torch.Tensor,
    needs: tuple[bool, ...],
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, None]:
    """The gradients of :class:`TapLoopsFunction` as a graph: its output recomputed by the custom
    operator ``anyconv::generalized_conv`` and differentiated with ``create_graph``."""
    arguments = variant_arguments(plan.variant)
    assert arguments is not None, "the tap loops take built-in variants only"
    wanted = [tensor for tensor, needed in zip((input, weight), needs[:2]) if needed]
    grads: Iterator[torch.Tensor] = iter(())
    if wanted:
        output = run_generalized_conv(
            input, weight, None, plan.variant, arguments, plan.geometry, plan.groups, plan.memory_budget
        )
        grads = iter(torch.autograd.grad(output, wanted, grad_output, create_graph=True))
    grad_input = next(grads) if needs[0] else None
    grad_weight = next(grads) if needs[1] else None
    return grad_input, grad_weight, bias_grad(grad_output) if needs[2] else None, None


def _threads(work: int) -> int:
    """torch's thread count, or 1 for work too small to repay waking the threads."""
    return max(1, min(torch.get_num_threads(), work // _WORK_PER_THREAD))


def _sample_chunks(batch: int, samples_per_chunk: int) -> list[slice]:
    return [
        slice(start, min(start + samples_per_chunk, batch)) for start in range(0, batch, samples_per_chunk)
    ]


def _padded(input: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """The zero-padded input, its last dimension split into ``stride`` phases (see :func:`_layout`):
    (b, C, phases, *padded[:-1], padded[-1] / phases)."""
    phases = geometry.stride[-1]
    # zeros after the last column so that the phases have one length
    extra = -geometry.padded_size[-1] % phases
    amounts = (geometry.torch_pad[0], geometry.torch_pad[1] + extra, *geometry.torch_pad[2:])
    padded = F.pad(input, amounts) if any(amounts) else input
    return padded.unflatten(-1, (-1, phases)).movedim(-1, 2).contiguous()


def _cropped(grad_padded: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """The gradient of the unpadded input from that of :func:`_padded`'s result (its adjoint)."""
    image = grad_padded.movedim(2, -1).flatten(-2)
    interior = tuple(
        slice(before, before + size) for (before, _), size in zip(geometry.padding, geometry.input_size)
    )
    return image[(slice(None), slice(None), *interior)]


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
def _function(name: str, dtype: torch.dtype) -> Any:
    function = getattr(load_library(_SOURCE), f"{name}_{NATIVE_DTYPES[dtype]}")
    pointers = 4 if name == "tap_forward" else 7
    function.argtypes = (_FLAG, *(_POINTER,) * (pointers - 1), *_GEOMETRY_ARGUMENTS)
    function.restype = None
    return function


def _call(
    name: str, plan: TapPlan, padded: torch.Tensor, weight: torch.Tensor, *tensors: torch.Tensor | None
) -> None:
    geometry = plan.geometry
    taps, columns, rows, plane = _layout(geometry, weight.shape[1])
    pointers = [tensor.data_ptr() if tensor is not None else None for tensor in (padded, weight, *tensors)]
    _function(name, padded.dtype)(
        plan.operation,
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
    )
