"""The Triton path: dot, l1, l2, lp, max_plus and min_plus by kernels that read the padded input in place.

Custom operators (``anyconv::triton_conv`` and its backward, with fake implementations) around
:mod:`anyconv.variants.triton_implicit`; taken on CUDA, or on CPU under ``ANYCONV_BACKEND=triton``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from ..geometry import Geometry, make_geometry
from ..variants import L1, L2, Dot, Lp, MaxPlus, MinPlus, Variant
from ..variants.triton_backend import triton_chosen
from ..variants.triton_implicit import (
    ADDER,
    DOT,
    MAX_PLUS,
    MIN_PLUS,
    POWER,
    TROPICAL,
    Layout,
    implicit_backward,
    implicit_forward,
    tables,
)
from ..variants.triton_implicit import L1 as L1_RULE
from ..variants.triton_implicit import L2 as L2_RULE
from .chunks import resolve_budget
from .graph_gradients import gradients_as_graph
from .ops import output_size, run_generalized_conv, variant_arguments
from .tap_loops import MAX_CHANNELS_PER_GROUP

_RULES = {Dot: DOT, L1: L1_RULE, L2: L2_RULE, Lp: POWER, MaxPlus: MAX_PLUS, MinPlus: MIN_PLUS}
#: matrix products on many channels per group (cuBLAS does them best): here only on few, as depthwise
_PRODUCTS = (Dot, L2)


def triton_conv_fits(variant: Variant, input: torch.Tensor, weight: torch.Tensor, groups: int) -> bool:
    """Whether the Triton path computes this call: one of its variants, and :func:`triton_chosen`
    (floating CUDA tensors, or CPU under ``ANYCONV_BACKEND=triton``); dot and l2 only with few input
    channels per group in a grouped convolution, the tap loops' case.

    >>> import torch
    >>> triton_conv_fits(L1(), torch.randn(1, 2, 5), torch.randn(3, 2, 3), 1) == triton_chosen(torch.ones(1))
    True
    """
    kind = type(variant)
    if kind not in _RULES or not triton_chosen(input):
        return False
    return kind not in _PRODUCTS or (groups > 1 and weight.shape[1] <= MAX_CHANNELS_PER_GROUP)


def triton_conv(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    variant: Variant,
    geometry: Geometry,
    groups: int,
) -> torch.Tensor:
    """The generalized convolution of a batched ``input`` by the Triton kernels (:func:`triton_conv_fits`).

    ``geometry``'s zero padding is applied here, once; no receptive fields are copied.

    >>> import torch
    >>> x, w = torch.randn(1, 2, 5), torch.randn(3, 2, 3)
    >>> if triton_conv_fits(L1(), x, w, 1):
    ...     assert triton_conv(x, w, None, L1(), make_geometry((5,), 3), 1).shape == (1, 3, 3)
    """
    rule = _RULES[type(variant)]
    if rule == L1_RULE and variant.options["adder_grad"]:
        rule = ADDER
    power = float(variant.options["p"]) if rule == POWER else 1.0
    pairs = [amount for pair in geometry.padding for amount in pair]
    output, _ = triton_conv_op(
        input, weight, rule, power, list(geometry.stride), pairs, list(geometry.dilation), groups
    )
    if rule == POWER:
        # the kernels sum |p - w|^p; the root is torch's, and so is its gradient
        output = output.pow(1 / power).neg()
    if bias is not None:
        output = output + bias.view(-1, *(1,) * geometry.ndim)
    return output


def _prepared(
    input: torch.Tensor,
    weight: torch.Tensor,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
) -> tuple[torch.Tensor, torch.Tensor, Layout, tuple[torch.Tensor, torch.Tensor], list[int]]:
    """(padded input, weight as (O, taps), layout, offset tables, output size) of one call."""
    amounts = [amount for axis in reversed(range(len(stride))) for amount in padding[2 * axis : 2 * axis + 2]]
    padded = (F.pad(input, amounts) if any(amounts) else input).contiguous()
    out = output_size(input.shape[2:], weight.shape[2:], stride, padding, dilation)
    layout = Layout(
        channels=input.shape[1],
        plane=math.prod(padded.shape[2:]),
        groups=groups,
        outputs=weight.shape[0] // groups,
        taps=math.prod(weight.shape[1:]),
        locations=math.prod(out),
    )
    offsets = tables(
        tuple(padded.shape[2:]),
        tuple(weight.shape[2:]),
        tuple(stride),
        tuple(dilation),
        tuple(out),
        weight.shape[1],
        input.device,
    )
    # the filters with their taps in the tables' order, (*kernel, channel)
    filters = weight.movedim(1, -1).reshape(weight.shape[0], -1).contiguous()
    return padded, filters, layout, offsets, out


@torch.library.custom_op("anyconv::triton_conv", mutates_args=())
def triton_conv_op(
    input: torch.Tensor,
    weight: torch.Tensor,
    rule: int,
    power: float,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(raw output, winning taps): see :func:`~anyconv.variants.triton_implicit.implicit_forward`;
    ``padding`` holds (before, after) per spatial dimension; the taps are empty unless tropical."""
    padded, filters, layout, offsets, out = _prepared(input, weight, stride, padding, dilation, groups)
    output, taps_won = implicit_forward(padded, filters, layout, offsets, rule, power)
    shape = (input.shape[0], weight.shape[0], *out)
    return output.view(shape), taps_won.view(shape) if rule in TROPICAL else taps_won


@triton_conv_op.register_fake
def _(input, weight, rule, power, stride, padding, dilation, groups):
    shape = (
        input.shape[0],
        weight.shape[0],
        *output_size(input.shape[2:], weight.shape[2:], stride, padding, dilation),
    )
    taps_won = input.new_empty(shape if rule in TROPICAL else (0,), dtype=torch.int32)
    return input.new_empty(shape), taps_won


@torch.library.custom_op("anyconv::triton_conv_backward", mutates_args=())
def triton_conv_backward_op(
    grad_output: torch.Tensor,
    input: torch.Tensor,
    weight: torch.Tensor,
    taps_won: torch.Tensor,
    rule: int,
    power: float,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    needs: list[bool],
) -> list[torch.Tensor]:
    """[grad input, grad weight] of the raw output, each empty where ``needs`` (two flags) says False."""
    padded, filters, layout, offsets, _ = _prepared(input, weight, stride, padding, dilation, groups)
    grad = grad_output.reshape(grad_output.shape[0], grad_output.shape[1], -1)
    if rule == POWER:
        # the kernels' power rule is the gradient of -S/p: that of S is -p times it
        grad = grad * -power
    grad_padded, grad_filters = implicit_backward(
        padded, filters, grad.contiguous(), taps_won, layout, offsets, rule, power, (needs[0], needs[1])
    )
    empty = input.new_empty(0)
    grad_input = empty
    if grad_padded is not None:
        interior = (slice(None), slice(None)) + tuple(
            slice(padding[2 * axis], padding[2 * axis] + size) for axis, size in enumerate(input.shape[2:])
        )
        grad_input = grad_padded[interior].contiguous()
    if grad_filters is None:
        return [grad_input, empty]
    channels_last = (weight.shape[0], *weight.shape[2:], weight.shape[1])
    return [grad_input, grad_filters.view(channels_last).movedim(-1, 1).contiguous()]


@triton_conv_backward_op.register_fake
def _(grad_output, input, weight, taps_won, rule, power, stride, padding, dilation, groups, needs):
    shapes = [torch.empty_like(input), weight.new_empty(weight.shape)]
    return [shape if needed else input.new_empty(0) for shape, needed in zip(shapes, needs)]


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    input, weight, *arguments = inputs
    ctx.save_for_backward(input, weight, output[1])
    ctx.arguments = tuple(arguments)


def _backward(ctx: Any, grad_output: torch.Tensor, grad_taps_won: Any) -> tuple:
    input, weight, taps_won = ctx.saved_tensors
    needs = list(ctx.needs_input_grad[:2])
    if torch.is_grad_enabled():
        # a graph of the gradients is asked for (double backward): the kernels' gradients are not
        # differentiable, the engine's custom operator's are (or it refuses, for a non-smooth variant)
        gradients = _differentiable_gradients(input, weight, grad_output, needs, *ctx.arguments)
    else:
        gradients = triton_conv_backward_op(grad_output, input, weight, taps_won, *ctx.arguments, needs)
    grad_input, grad_weight = (gradient if needed else None for gradient, needed in zip(gradients, needs))
    return (grad_input, grad_weight, *(None,) * len(ctx.arguments))


def _differentiable_gradients(
    input: torch.Tensor,
    weight: torch.Tensor,
    grad_output: torch.Tensor,
    needs: list[bool],
    rule: int,
    power: float,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
) -> list[torch.Tensor | None]:
    """The gradients of the raw output as a graph, by ``anyconv::generalized_conv`` and autograd."""
    variant = {
        DOT: Dot(),
        L1_RULE: L1(),
        ADDER: L1(adder_grad=True),
        L2_RULE: L2(),
        POWER: Lp(p=power),
        MAX_PLUS: MaxPlus(),
        MIN_PLUS: MinPlus(),
    }[rule]
    arguments = variant_arguments(variant)
    assert arguments is not None, "the Triton path takes built-in variants only"
    pairs = tuple(zip(padding[::2], padding[1::2]))
    geometry = make_geometry(input.shape[2:], weight.shape[2:], stride, pairs, dilation)

    def recompute() -> torch.Tensor:
        output = run_generalized_conv(
            input, weight, None, variant, arguments, geometry, groups, resolve_budget(None)
        )
        # the raw output is the sum of powers
        return output.neg().pow(power) if rule == POWER else output

    return gradients_as_graph(recompute, (input, weight), needs, grad_output)


triton_conv_op.register_autograd(_backward, setup_context=_setup_context)
