"""The input gradient of the standard convolution of stride 1, as the engine's own convolution.

With stride 1 the input gradient of ``dot`` (a transposed convolution) is the convolution of the
output's gradient with the filters flipped along every spatial dimension and, group by group, their
input and output channels swapped, padded on each side by ``dilation * (kernel - 1)`` less the
forward's padding there. The engine plans that convolution as any other (the tap loops read the
gradient in place; the fields path copies its fields once), where the fields path's backward made
each chunk's fields' gradients (a matrix as large as its fields) and summed them back into the
input (col2im). Taken where that convolution measured faster (docs/benchmarks.md): where the tap
loops compute it, and in 1-D where it has no more input channels than outputs (the fields path's
own backward measured faster on 2-D layers of many channels, and on layers widening their
channels, whose transposed convolution has long fields and few filters).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..variants import Dot


def transposed_padding(
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[tuple[int, int]],
    dilation: Sequence[int],
) -> tuple[tuple[int, int], ...] | None:
    """The (before, after) padding per dimension of the convolution that gives the input gradient
    of a stride-1 convolution padded by ``padding`` (zeros), or None where it has a stride or pads
    past the kernel's reach (the gradient would then crop).

    >>> transposed_padding((3, 3), (1, 1), ((0, 2), (1, 1)), (2, 1))
    ((4, 2), (1, 1))
    >>> transposed_padding((3,), (2,), ((1, 1),), (1,)) is None
    True
    """
    if any(step != 1 for step in stride):
        return None
    pairs = []
    for (before, after), size, spacing in zip(padding, kernel_size, dilation):
        reach = spacing * (int(size) - 1)
        if before > reach or after > reach:
            return None
        pairs.append((reach - before, reach - after))
    return tuple(pairs)


def flipped_filters(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """The weight (O, C / groups, *kernel) of a convolution as the weight (C, O / groups, *kernel)
    of its transposed convolution of stride 1: each group's channels swapped, every tap flipped,
    contiguous (the fields path copies a strided weight chunk by chunk).

    >>> w = torch.arange(8.0).view(4, 1, 2)
    >>> flipped_filters(w, 2).flatten().tolist()
    [1.0, 0.0, 3.0, 2.0, 5.0, 4.0, 7.0, 6.0]
    """
    out_channels, in_group, *kernel = weight.shape
    per_group = weight.view(groups, out_channels // groups, in_group, *kernel).transpose(1, 2)
    swapped = per_group.reshape(groups * in_group, out_channels // groups, *kernel)
    return swapped.flip(tuple(range(2, weight.dim()))).contiguous()


def transposed_input_gradient(
    grad_output: torch.Tensor,
    weight: torch.Tensor,
    stride: Sequence[int],
    padding: Sequence[tuple[int, int]],
    dilation: Sequence[int],
    groups: int,
    memory_budget: int | None,
) -> torch.Tensor | None:
    """The input gradient of ``dot`` with ``weight`` (its zero ``padding`` as (before, after) pairs),
    as a convolution of ``grad_output``, or None where it is not one (:func:`transposed_padding`) or
    the fields path's backward measured faster: the convolution is taken where the tap loops
    compute it, and in 1-D where it has no more input channels per group than outputs; elsewhere
    the fields path would compute it, and measured slower than its own backward in 2-D. A complex
    weight enters conjugated, as in autograd's gradient of a complex convolution; a weight with an
    inf or NaN keeps the fields path's gradient. Called with real tensors only (inside the
    operators' bodies and the eager Function's backward): the finiteness check reads values.

    >>> import torch
    >>> w = torch.randn(4, 6, 5, dtype=torch.float64)
    >>> g = torch.randn(2, 4, 9, dtype=torch.float64)
    >>> found = transposed_input_gradient(g, w, (1,), ((2, 2),), (1,), 1, None)
    >>> torch.allclose(found, torch.nn.grad.conv1d_input((2, 6, 9), w, g, padding=2))
    True
    """
    transposed = transposed_padding(weight.shape[2:], stride, padding, dilation)
    if transposed is None:
        return None
    # the engine's entry point and the loops' rule, imported here: the paths whose backwards call
    # this are below them
    from .generalized_conv import generalized_conv
    from .tap_loops import tap_loops_fit

    out_channels, in_group, *kernel = weight.shape
    # the transposed convolution's weight, its shape alone, for the loops' rule
    shape = weight.new_zeros(()).expand(groups * in_group, out_channels // groups, *kernel)
    narrows_in_1d = len(kernel) == 1 and out_channels // groups <= in_group
    if not (narrows_in_1d or tap_loops_fit(Dot(), grad_output, shape, groups)):
        return None
    # after the rule, which reads shapes only: this reads every value of the weight
    if not bool(torch.isfinite(weight).all()):
        # the convolution would meet an inf or NaN of the weight with the zero padding of the
        # output's gradient (0 * inf = NaN) where the formula has no such term
        return None
    filters = flipped_filters(weight.conj() if weight.is_complex() else weight, groups)
    return generalized_conv(
        grad_output,
        filters.resolve_conj(),
        "dot",
        padding=transposed,
        dilation=tuple(dilation),
        groups=groups,
        memory_budget=memory_budget,
    )
