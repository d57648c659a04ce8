"""Field norms on the tap paths, without copied fields: |p|^2 of every field as a box sum of x^2
over the kernel's taps, the adjoint of that box sum, a square root whose derivative is 0 at 0, and
the cosine's division by the norms.

A box sum is the primitive's ``dot`` with a filter of ones (the C++ tap loops or the Triton
kernels: see ``tap_products.tap_primitive``), so these work wherever the tap paths do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..geometry import Geometry, make_geometry
from ..variants import Dot, Variant

_DOT = Dot()
#: taps' worth of time one more pass of the box sum costs (its call, its padded copy)
PASS_COST = 3
#: from this many outputs on, the cosine's division checks whether it may skip making |p| |w| + eps
#: (below, that tensor costs less than the check)
_CHECKED_DIVISION = 2**14

#: a primitive: (input, weight, bias, variant dot or l2, geometry, groups, memory budget) -> output,
#: the generalized convolution summed tap by tap without copying fields
Primitive = Callable[[torch.Tensor, torch.Tensor, Any, Variant, Geometry, int, int], torch.Tensor]


def field_squares(
    primitive: Primitive, input: torch.Tensor, geometry: Geometry, groups: int, memory_budget: int
) -> torch.Tensor:
    """|p|^2 of every field of every group of a batched ``input``: (batch, groups, *output).

    >>> import torch, torch.nn.functional as F
    >>> from anyconv.engine.tap_loops import tap_loops_conv, tap_loops_fit
    >>> x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    >>> if tap_loops_fit(Dot(), x, torch.ones(2, 1, 3, 3), 2):
    ...     squares = field_squares(tap_loops_conv, x, make_geometry((5, 5), 3), 2, 2**20)
    ...     assert torch.allclose(squares, F.unfold(x * x, 3).view(1, 2, 9, 3, 3).sum(2))
    """
    return box_sum(primitive, group_squares(input, groups), geometry, groups, memory_budget)


def group_squares(input: torch.Tensor, groups: int) -> torch.Tensor:
    """x^2 summed over each group's channels: (batch, groups, *spatial)."""
    squares = input * input
    if input.shape[1] > groups:
        squares = squares.unflatten(1, (groups, -1)).sum(2)
    return squares


def box_sum(
    primitive: Primitive, values: torch.Tensor, geometry: Geometry, groups: int, memory_budget: int
) -> torch.Tensor:
    """The sum of ``values`` (batch, groups, *spatial) over each field's taps: (batch, groups, *output).

    One dimension at a time where that takes fewer taps (a k x k box costs 2k, not k^2, taps per
    output).
    """
    for pass_geometry in box_passes(geometry):
        ones = values.new_ones((groups, 1, *pass_geometry.kernel_size))
        values = primitive(values, ones, None, _DOT, pass_geometry, groups, memory_budget)
    return values


def box_sum_adjoint(
    primitive: Primitive, grad: torch.Tensor, geometry: Geometry, groups: int, memory_budget: int
) -> torch.Tensor:
    """The adjoint of :func:`box_sum`: ``grad`` (batch, groups, *output) -> (batch, groups, *input).

    Where no side's padding exceeds the kernel's span, the adjoint of a box sum is a box sum of
    ``grad`` at stride 1 with the padding mirrored: (span - before, span - after) at stride 1; at a
    larger stride, of ``grad`` spread out that many positions apart with zeros between (then the
    padding after is what brings the sum back to the input's size). Otherwise autograd
    differentiates a box sum of zeros (the sum is linear), which holds its graph's tensors.

    >>> import torch
    >>> from anyconv.engine.tap_loops import tap_loops_conv, tap_loops_fit
    >>> geometry = make_geometry((6, 6), 3, padding=1)
    >>> grad, values = torch.randn(2, 1, 2, 6, 6, dtype=torch.float64)
    >>> if tap_loops_fit(Dot(), values, torch.ones(2, 1, 3, 3), 2):
    ...     adjoint = box_sum_adjoint(tap_loops_conv, grad, geometry, 2, 2**20)
    ...     forward = box_sum(tap_loops_conv, values, geometry, 2, 2**20)
    ...     assert torch.allclose((forward * grad).sum(), (values * adjoint).sum())
    """
    passes = box_passes(geometry)
    if all(_mirrors(pass_geometry) for pass_geometry in passes):
        for pass_geometry in reversed(passes):
            ones = grad.new_ones((groups, 1, *pass_geometry.kernel_size))
            grad = primitive(
                _spread(grad, pass_geometry.stride),
                ones,
                None,
                _DOT,
                _mirrored(pass_geometry),
                groups,
                memory_budget,
            )
        return grad
    values = grad.new_zeros((*grad.shape[:2], *geometry.input_size), requires_grad=True)
    with torch.enable_grad():
        (adjoint,) = torch.autograd.grad(
            box_sum(primitive, values, geometry, groups, memory_budget), values, grad
        )
    return adjoint


def box_passes(geometry: Geometry) -> list[Geometry]:
    """The geometries :func:`box_sum` takes: ``geometry`` itself, or one per dimension where
    that takes fewer taps (each slides the kernel, with its stride, padding and dilation, along
    one dimension over the previous pass's output)."""
    separable = sum(geometry.kernel_size) + PASS_COST * (geometry.ndim - 1) < geometry.kernel_volume
    if not separable:
        return [geometry]
    passes, size = [], list(geometry.input_size)
    for axis in range(geometry.ndim):
        passes.append(
            make_geometry(
                tuple(size),
                _along(axis, geometry.kernel_size, 1),
                _along(axis, geometry.stride, 1),
                _along(axis, geometry.padding, (0, 0)),
                _along(axis, geometry.dilation, 1),
            )
        )
        size[axis] = geometry.output_size[axis]
    return passes


def _spans(geometry: Geometry) -> tuple[int, ...]:
    return tuple((size - 1) * step for size, step in zip(geometry.kernel_size, geometry.dilation))


def _mirrors(geometry: Geometry) -> bool:
    """Whether the adjoint of a box sum of ``geometry`` is a box sum (see :func:`box_sum_adjoint`)."""
    return all(
        before <= span and after <= span for (before, after), span in zip(geometry.padding, _spans(geometry))
    )


def _spread_size(geometry: Geometry) -> tuple[int, ...]:
    """The output's size with ``stride - 1`` zeros between neighbours."""
    return tuple((size - 1) * step + 1 for size, step in zip(geometry.output_size, geometry.stride))


def _mirrored(geometry: Geometry) -> Geometry:
    """The box sum at stride 1 from ``geometry``'s spread-out output back to its input size."""
    padding = tuple(
        (span - before, size + before - spread)
        for (before, _), span, size, spread in zip(
            geometry.padding, _spans(geometry), geometry.input_size, _spread_size(geometry)
        )
    )
    return make_geometry(_spread_size(geometry), geometry.kernel_size, 1, padding, geometry.dilation)


def _spread(grad: torch.Tensor, stride: tuple[int, ...]) -> torch.Tensor:
    """``grad`` (batch, groups, *output) with ``step - 1`` zeros between neighbours along each dimension."""
    if all(step == 1 for step in stride):
        return grad
    size = tuple((length - 1) * step + 1 for length, step in zip(grad.shape[2:], stride))
    spread = grad.new_zeros((*grad.shape[:2], *size))
    spread[(slice(None), slice(None), *(slice(None, None, step) for step in stride))] = grad
    return spread


def _along(axis: int, values: tuple, other: object) -> tuple:
    """``values`` at ``axis``, ``other`` at every other dimension."""
    return tuple(value if index == axis else other for index, value in enumerate(values))


def divide_by_norms(
    products: torch.Tensor, field_norms: torch.Tensor, filter_norms: torch.Tensor, eps: float, recording: bool
) -> torch.Tensor:
    """``products / (field_norms * filter_norms + eps)``, the cosine, for norms that broadcast.

    Without a graph to record it writes into ``products``; and where eps is under a quarter of a
    unit in the last place of every |p| |w| (ordinary data in float32) dividing by |p| |w| + eps
    rounds as multiplying by 1 / |p| and 1 / |w| does, which needs no tensor of the output's size.

    >>> import torch
    >>> products, field_norms = torch.tensor([[3.0, 0.0]]), torch.tensor([[2.0, 0.0]])
    >>> divide_by_norms(products, field_norms, torch.tensor(3.0), 1e-8, False)
    tensor([[0.5000, 0.0000]])
    """
    if recording:
        return products / (field_norms * filter_norms + eps)
    if eps_negligible(field_norms, filter_norms, eps, products.numel()):
        return products.mul_(field_norms.reciprocal()).mul_(filter_norms.reciprocal())
    return products.div_(field_norms * filter_norms + eps)


def eps_negligible(field_norms: torch.Tensor, filter_norms: torch.Tensor, eps: float, outputs: int) -> bool:
    """Whether eps is under a quarter of a unit in the last place of every |p| |w| (so that
    dividing by |p| |w| + eps rounds as dividing by |p| |w| does), checked for calls of at least
    ``_CHECKED_DIVISION`` outputs outside a compiler's trace (below, the check costs more than it
    saves). NaN and zero norms say no.

    >>> eps_negligible(torch.tensor([2.0, 3.0]), torch.tensor([1.0]), 1e-8, 2**20)
    True
    >>> eps_negligible(torch.tensor([2.0, 0.0]), torch.tensor([1.0]), 1e-8, 2**20)
    False
    """
    if outputs < _CHECKED_DIVISION or torch.compiler.is_compiling():
        return False
    # amin propagates NaN, and NaN > x is False: one number read back and compared in Python,
    # where the comparison in tensors took five more small operations
    smallest = (field_norms.amin() * filter_norms.amin()).item()
    return smallest * torch.finfo(field_norms.dtype).eps > 4 * eps


def direction(vectors: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """``vectors / norms``, 0 where the norm is 0 (a zero vector has no direction).

    >>> direction(torch.tensor([[3.0, 4.0], [0.0, 0.0]]), torch.tensor([[2.0], [0.0]])).tolist()
    [[1.5, 2.0], [0.0, 0.0]]
    """
    return (vectors / norms).masked_fill_(norms == 0, 0)


def safe_sqrt(squares: torch.Tensor) -> torch.Tensor:
    """The square root, its derivative taken as 0 at 0 (a zero field, such as padding, has no
    direction: the fields path's rule), NaN where the squares are NaN.

    >>> import torch
    >>> squares = torch.tensor([0.0, 4.0], requires_grad=True)
    >>> torch.autograd.grad(safe_sqrt(squares).sum(), squares)[0]
    tensor([0.0000, 0.2500])
    """
    if not squares.requires_grad:
        return squares.sqrt()
    return _SafeSqrt.apply(squares)


class _SafeSqrt(torch.autograd.Function):
    """sqrt whose backward gives 0 where the root is 0 (not inf * 0 = NaN); twice differentiable."""

    @staticmethod
    def forward(ctx: Any, squares: torch.Tensor) -> torch.Tensor:
        root = squares.sqrt()
        ctx.save_for_backward(root)
        return root

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (root,) = ctx.saved_tensors
        return (grad / (2 * root)).masked_fill(root == 0, 0)
