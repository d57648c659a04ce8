"""The cosine on the C++ tap loops when autograd records it: a backward that keeps only the input
and the weight (and, on a dense layer, the quotient).

Composed from the loops' dot, a box sum of x^2 and the division, autograd would keep the products,
the squares, the norms and the denominator for the backward, each as large as the output (or the
input): several activations per layer. Here the forward is one pass of the loops
(``anyconv::tap_quotient``), and the backward recomputes the field norms |p| and the quotient y
(kept from the forward on a dense layer: :func:`keeps_quotient`), then takes, with
D = |p| |w| + eps and a = grad / D,

- the input's gradient: the loops' dot gradient of ``a`` plus 2 x times the box sum's adjoint of
  -(sum over the group's filters of a y |w|) / (2 |p|), 0 where |p| is 0 (a zero field has no
  direction: the fields path's rule);
- the weight's gradient: the loops' dot gradient of ``a`` minus (sum over fields of a y |p|) w / |w|.

In an eager float32 or float64 call on a grouped layer, or a dense one whose backward the loops
take, all of it is one pass of the loops per (sample, group) in buffers that stay in cache
(:func:`~anyconv.engine.tap_loops.tap_cosine_gradients`); elsewhere (bfloat16 and float16, calls
torch's machinery watches) it is composed from the loops' passes and torch's elementwise ops.

A second derivative (a backward asked for a graph) differentiates the composed form instead.
"""

from __future__ import annotations

from typing import Any

import torch

from ..geometry import Geometry
from ..variants import Dot
from .blocks import bias_grad
from .graph_gradients import gradients_as_graph
from .tap_loops import (
    cosine_gradients_fit,
    loops_arguments,
    loops_gradients,
    tap_cosine_gradients,
    tap_loops_conv,
    tap_quotient_conv,
)
from .tap_norms import Primitive, box_sum_adjoint, direction, divide_by_norms, field_squares, safe_sqrt

_DOT = Dot()


def keeps_quotient(groups: int) -> bool:
    """Whether the forward keeps the quotient for the backward: on a dense layer (one group, the
    few-channel first layers the loops take) recomputing it is a pass over every filter's taps,
    the forward's whole cost again, where keeping it costs one output-sized tensor beside
    activations larger than the input; a depthwise or grouped layer recomputes it, keeping its
    backward's memory near torch's (measurements in docs/benchmarks.md).

    >>> keeps_quotient(1), keeps_quotient(32)
    (True, False)
    """
    return groups == 1


def loops_cosine(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    eps: float,
    geometry: Geometry,
    groups: int,
    memory_budget: int,
) -> torch.Tensor:
    """The cosine of every field of a batched ``input`` with every filter, plus ``bias``, by the tap
    loops, for calls that record a graph; see the module docstring.

    >>> import torch
    >>> from anyconv.geometry import make_geometry
    >>> from anyconv.engine.tap_loops import tap_loops_fit
    >>> x = torch.randn(2, 4, 6, 6, dtype=torch.float64, requires_grad=True)
    >>> w = torch.randn(4, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    >>> geometry = make_geometry((6, 6), 3, padding=1)
    >>> if tap_loops_fit(_DOT, x, w, 4):
    ...     cosine = lambda x, w: loops_cosine(x, w, None, 1e-8, geometry, 4, 2**20)
    ...     assert torch.autograd.gradcheck(cosine, (x, w))
    """
    return _LoopsCosine.apply(input, weight, bias, eps, geometry, groups, memory_budget)


def composed_cosine(
    primitive: Primitive,
    input: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    geometry: Geometry,
    groups: int,
    memory_budget: int,
    recording: bool,
) -> torch.Tensor:
    """The cosine composed from the ``primitive``'s dot, the field norms and the division, autograd
    through each where ``recording``: (batch, out channels, *output), no bias."""
    batch, ndim = input.shape[0], geometry.ndim
    grouped = (batch, groups, weight.shape[0] // groups, *geometry.output_size)
    products = primitive(input, weight, None, _DOT, geometry, groups, memory_budget).view(grouped)
    field_norms = safe_sqrt(field_squares(primitive, input, geometry, groups, memory_budget)).unsqueeze(2)
    filter_norms = torch.linalg.vector_norm(weight.flatten(1), dim=1).view(grouped[1:3] + (1,) * ndim)
    output = divide_by_norms(products, field_norms, filter_norms, eps, recording)
    return output.view(batch, weight.shape[0], *geometry.output_size)


class _LoopsCosine(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        input: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        eps: float,
        geometry: Geometry,
        groups: int,
        memory_budget: int,
    ) -> torch.Tensor:
        if keeps_quotient(groups):
            # the output is the caller's to change in place: the kept quotient is another tensor
            kept = _quotient(input, weight, eps, geometry, groups, memory_budget)
            output = kept.clone() if bias is None else kept + bias.view(-1, *(1,) * geometry.ndim)
        else:
            # the bias added as the loops store the quotient
            kept, output = None, _quotient(input, weight, eps, geometry, groups, memory_budget, bias)
        ctx.save_for_backward(input, weight, bias, kept)
        ctx.arguments = (eps, geometry, groups, memory_budget)
        return output

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        input, weight, bias, kept = ctx.saved_tensors
        eps, geometry, groups, memory_budget = ctx.arguments
        needs = ctx.needs_input_grad[:3]
        if torch.is_grad_enabled():
            # a graph of the gradients is asked for (a second derivative): the composed form's
            gradients = _composed_gradients(grad, input, weight, bias, needs, ctx.arguments)
            return (*gradients, None, None, None, None)
        grad_input, grad_weight = None, None
        if needs[0] or needs[1]:
            grad_input, grad_weight = _gradients(
                grad, input, weight, kept, eps, geometry, groups, memory_budget, needs
            )
        grad_bias = bias_grad(grad) if needs[2] else None
        return grad_input, grad_weight, grad_bias, None, None, None, None


def _quotient(
    input: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    geometry: Geometry,
    groups: int,
    memory_budget: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """p . w / (|p| |w| + eps) (+ ``bias``) by one pass of the loops, in the input's dtype."""
    # the loops' compute type (float32 for bfloat16 and float16)
    filter_norms = torch.linalg.vector_norm(weight.flatten(1), dim=1, dtype=_compute_type(input))
    offsets = torch.full_like(filter_norms, eps)
    return tap_quotient_conv(input, weight, filter_norms, offsets, geometry, groups, memory_budget, bias)


def _compute_type(input: torch.Tensor) -> torch.dtype:
    return torch.promote_types(input.dtype, torch.float32)


def _gradients(
    grad: torch.Tensor,
    input: torch.Tensor,
    weight: torch.Tensor,
    kept: torch.Tensor | None,
    eps: float,
    geometry: Geometry,
    groups: int,
    memory_budget: int,
    needs: tuple[bool, ...],
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The input and weight gradients of the cosine (module docstring), from the ``kept`` quotient
    or one recomputed, each tensor freed as soon as it is used, so that at most a few
    output-sized ones live at once."""
    compute, ndim = _compute_type(input), geometry.ndim
    filter_norms = torch.linalg.vector_norm(weight.flatten(1), dim=1, dtype=compute)
    if cosine_gradients_fit(input, weight, groups):
        offsets = torch.full_like(filter_norms, eps)
        found = tap_cosine_gradients(
            grad, input, weight, filter_norms, offsets, geometry, groups, memory_budget, kept
        )
        return found[0] if needs[0] else None, found[1] if needs[1] else None
    # (groups, filters per group, 1, ...): broadcast against (batch, groups, filters, *output)
    filter_column = filter_norms.view(groups, -1, *(1,) * ndim)
    field_norms = field_squares(tap_loops_conv, input, geometry, groups, memory_budget).to(compute).sqrt_()
    norms = field_norms.unsqueeze(2)
    # D = |p| |w| + eps, then a = grad / D in its place: one pass each
    scaled = torch.addcmul(norms.new_tensor(eps), norms, filter_column)
    torch.div(grad.to(compute).unflatten(1, (groups, -1)), scaled, out=scaled)
    # r = a y, then what goes to the field norms and to the filter norms
    quotient = _quotient(input, weight, eps, geometry, groups, memory_budget) if kept is None else kept
    radial = quotient.unflatten(1, (groups, -1))
    if kept is None and radial.dtype == compute:
        radial.mul_(scaled)
    else:
        # out of place: a kept quotient serves a second backward (retain_graph) unchanged
        radial = radial.to(compute) * scaled
    del quotient
    to_filter_norms, to_field_squares = _radial_sums(radial, norms, filter_norms, groups)
    to_field_squares.div_(field_norms).masked_fill_(field_norms == 0, 0)
    del radial, norms, field_norms
    arguments = loops_arguments(_DOT, geometry, groups, memory_budget)
    scaled_grad = scaled.flatten(1, 2).to(input.dtype)
    del scaled
    grad_input, grad_weight = loops_gradients(arguments, input, weight, scaled_grad, needs[:2])
    del scaled_grad
    if grad_input is not None:
        adjoint = box_sum_adjoint(
            tap_loops_conv, to_field_squares.to(input.dtype), geometry, groups, memory_budget
        )
        grad_input.unflatten(1, (groups, -1)).addcmul_(
            input.unflatten(1, (groups, -1)), adjoint.unsqueeze(2), value=2
        )
    if grad_weight is not None:
        radial_weight = to_filter_norms[:, None] * direction(
            weight.flatten(1).to(compute), filter_norms[:, None]
        )
        grad_weight -= radial_weight.view(weight.shape).to(weight.dtype)
    return grad_input, grad_weight


def _radial_sums(
    radial: torch.Tensor, norms: torch.Tensor, filter_norms: torch.Tensor, groups: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """From r (batch, groups, filters, *output): what goes to the filter norms, the sum of r |p| over
    samples and positions (out channels,), and to the field squares, -(sum over the group's
    filters of r |w|) / 2 (batch, groups, *output), still to be divided by |p|.

    >>> r, p, w = torch.rand(2, 3, 2, 4, 5), torch.rand(2, 3, 1, 4, 5), torch.rand(6)
    >>> to_filters, to_fields = _radial_sums(r, p, w, 3)
    >>> torch.allclose(to_filters, (r * p).sum((0, 3, 4)).flatten())
    True
    >>> torch.allclose(to_fields, (r * w.view(3, 2, 1, 1)).sum(2) * -0.5)
    True
    """
    ndim = radial.dim() - 3
    to_filter_norms = (radial * norms).sum((0, *range(3, 3 + ndim))).flatten()
    half_norms = filter_norms.view(groups, -1, *(1,) * ndim) * -0.5
    to_field_squares = (radial * half_norms).sum(2)
    return to_filter_norms, to_field_squares


def _composed_gradients(
    grad: torch.Tensor,
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    needs: tuple[bool, ...],
    arguments: tuple[Any, ...],
) -> list[torch.Tensor | None]:
    """The gradients as a graph: the composed form recomputed and differentiated with ``create_graph``."""
    eps, geometry, groups, memory_budget = arguments

    def recompute() -> torch.Tensor:
        output = composed_cosine(tap_loops_conv, input, weight, eps, geometry, groups, memory_budget, True)
        return output if bias is None else output + bias.view(-1, *(1,) * geometry.ndim)

    return gradients_as_graph(recompute, (input, weight, bias), needs, grad)
