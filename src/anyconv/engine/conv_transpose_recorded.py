"""The col2im form of ``conv_transpose`` when autograd records it: the inference forward, and a
backward of two matrix products on the columns of the output's gradient.

The forward is :func:`~anyconv.engine.conv_transpose_col2im.folded_transpose`, run without a graph:
its columns are freed once folded, and only the input, the weight and the bias are kept. The
backward reads the output's gradient as the transposed convolution's adjoint, the convolution of
the same kernel, stride, padding and dilation, reads its input: as columns (G, Og * K, b * positions),
one column per input position, copied out natively (``fields_columns``) where the copy is built,
in chunks of samples and input positions (:func:`recorded_chunks`). Per group, with the weight as
it lies, (Cg, Og * K):

- the input's gradient is the weight times the columns: (Cg, b * positions);
- the weight's gradient, transposed, is the columns times the input's rows, (Cg, b * positions),
  summed over the chunks and put in the weight's layout once at the end: the columns are the
  product's first operand, so that oneDNN lays out a copy of the rows, not of the columns.

Where autograd kept the col2im form's graph instead, its backward took four products per chunk and
a strided add per kernel tap, and kept the products' operands. A second derivative (a backward
asked for a graph) differentiates that autograd form, recomputed.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..functional.im2col import im2col
from ..geometry import Geometry, make_geometry
from ..variants.matrix_products import row_product
from .blocks import bias_grad
from .chunks import Chunk, plan_chunks
from .conv_transpose_col2im import col2im_transpose, folded_transpose
from .fields_columns import columns_fit, copy_columns
from .graph_gradients import gradients_as_graph


def adjoint_geometry(
    input_size: tuple[int, ...],
    kernel_size: tuple[int, ...],
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
    output_size: tuple[int, ...],
) -> Geometry | None:
    """The convolution of the transposed one's output whose fields are one per input position (its
    adjoint), or None where that convolution has more positions than the input (an
    ``output_padding`` of a stride or more, which a dilation allows).

    >>> adjoint_geometry((16, 16), (4, 4), (2, 2), (1, 1), (1, 1), (32, 32)).output_size
    (16, 16)
    >>> adjoint_geometry((2,), (1,), (2,), (0,), (3,), (5,)) is None
    True
    """
    geometry = make_geometry(output_size, kernel_size, stride, padding, dilation)
    return geometry if geometry.output_size == input_size else None


#: the share of the memory budget a chunk of the backward's columns takes: beside them stand
#: oneDNN's copy of them, the weight gradient and its product per chunk, and oneDNN's primitives,
#: which the budget does not count (a quarter kept the U-Net decoder row of bench_layers within
#: twice torch's peak; half took 2.04x: docs/benchmarks.md)
BACKWARD_SHARE = 4


def recorded_chunks(
    adjoint: Geometry, batch: int, rows: int, element_size: int, budget: int
) -> tuple[Chunk, ...]:
    """The chunks (samples x input positions) of the backward: each holds the columns of its
    positions, ``rows`` (out channels x taps) each, and the copy of them that oneDNN's inner
    product lays out as its weights, within ``budget / BACKWARD_SHARE`` bytes (``plan_chunks``).

    >>> adjoint = adjoint_geometry((16, 16), (4, 4), (2, 2), (1, 1), (1, 1), (32, 32))
    >>> chunks = recorded_chunks(adjoint, 2, 1024, 4, 4 * 2**20)
    >>> [(chunk.samples.start, chunk.region[0].start, chunk.region[0].stop) for chunk in chunks]
    [(0, 0, 8), (1, 0, 8), (0, 8, 16), (1, 8, 16)]
    """
    return plan_chunks(adjoint, batch, 2 * rows * element_size, budget // BACKWARD_SHARE)


def recorded_transpose(
    batched: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, arguments: tuple[Any, ...]
) -> torch.Tensor:
    """The col2im form's output (before its memory format is set) with the backward of the module
    docstring. ``arguments``: the groups, ``col2im_geometry``'s geometry, :func:`adjoint_geometry`'s,
    the padding and output_padding, the samples of each chunk of the forward, and the bytes of
    each chunk of the backward (:func:`recorded_chunks`).

    >>> from anyconv.engine.conv_transpose_col2im import col2im_geometry
    >>> x = torch.randn(2, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    >>> w = torch.randn(4, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    >>> geometry = col2im_geometry((5, 5), (4, 4), (2, 2), (1, 1))
    >>> adjoint = adjoint_geometry((5, 5), (4, 4), (2, 2), (1, 1), (1, 1), (10, 10))
    >>> arguments = (1, geometry, adjoint, (1, 1), (0, 0), 2, 2**18)
    >>> function = lambda x, w: recorded_transpose(x, w, None, arguments)
    >>> torch.autograd.gradcheck(function, (x, w)) and torch.autograd.gradgradcheck(function, (x, w))
    True
    """
    output: torch.Tensor = _RecordedTranspose.apply(batched, weight, bias, arguments)
    return output


class _RecordedTranspose(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, arguments: tuple
    ) -> torch.Tensor:
        groups, geometry, adjoint, padding, output_padding, samples_per_chunk, _ = arguments
        ctx.save_for_backward(input, weight, bias)
        ctx.arguments = arguments
        output_size = adjoint.input_size
        return folded_transpose(
            input, weight, bias, groups, geometry, padding, output_padding, output_size, samples_per_chunk
        )

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        input, weight, bias = ctx.saved_tensors
        needs = ctx.needs_input_grad[:3]
        if torch.is_grad_enabled():
            # a graph of the gradients is asked for: the autograd col2im form's, recomputed
            def recompute() -> torch.Tensor:
                groups, geometry, _, padding, output_padding, samples_per_chunk, _ = ctx.arguments
                output = col2im_transpose(
                    input, weight, groups, geometry, padding, output_padding, samples_per_chunk
                )
                return output if bias is None else output + bias.view(-1, *(1,) * geometry.ndim)

            return (*gradients_as_graph(recompute, (input, weight, bias), needs, grad), None)
        grad_input = grad_weight = None
        if needs[0] or needs[1]:
            grad_input, grad_weight = _gradients(grad.contiguous(), input, weight, needs, ctx.arguments)
        return grad_input, grad_weight, bias_grad(grad) if needs[2] else None, None


def _gradients(
    grad: torch.Tensor, input: torch.Tensor, weight: torch.Tensor, needs: tuple[bool, ...], arguments: tuple
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The input's and the weight's gradients (module docstring), chunk by chunk."""
    groups, _, adjoint, _, _, _, budget = arguments
    batch, channels = input.shape[:2]
    per_group = channels // groups
    # (C, Og, *kernel) as it lies, (G, Cg, Og * K): the rows of the columns are (Og, K) per group
    matrices = weight.reshape(groups, per_group, -1)
    # autograd's gradients of complex tensors are the adjoints: the conjugates of the factors
    factor = input.conj() if input.is_complex() else input
    matrices = matrices.conj() if matrices.is_complex() else matrices
    grad_input = input.new_empty(input.shape) if needs[0] else None
    # per group, the weight's gradient transposed, (Og * K, Cg): the columns are the product's
    # first operand, so that oneDNN lays out a copy of the input's rows, not of the columns
    transposed: list[torch.Tensor] = []
    native, rows = columns_fit(grad), grad.shape[1] * adjoint.kernel_volume
    for index, chunk in enumerate(recorded_chunks(adjoint, batch, rows, grad.element_size(), budget)):
        columns = _columns(grad, adjoint, chunk, groups, native)
        counts = (
            chunk.samples.stop - chunk.samples.start,
            *(part.stop - part.start for part in chunk.region),
        )
        for group in range(groups):
            # (b, Cg, *region) of the input and of its gradient
            place = (chunk.samples, slice(group * per_group, (group + 1) * per_group), *chunk.region)
            if grad_input is not None:
                product = row_product(matrices[group], columns[group].mT, None)
                # (Cg, b * positions) -> (b, Cg, *region)
                grad_input[place] = product.view(per_group, *counts).transpose(0, 1)
                del product
            if needs[1]:
                values = factor[place].transpose(0, 1).reshape(per_group, -1)
                product = row_product(columns[group], values, None)
                if index == 0:
                    transposed.append(product)
                else:
                    transposed[group] += product
                del product
        # freed before the next chunk's are made
        del columns
    if not needs[1]:
        return grad_input, None
    if not transposed:
        return grad_input, torch.zeros_like(weight)
    # (G, Cg, Og * K) in one copy: the weight's layout
    return grad_input, torch.stack([part.mT for part in transposed]).view(weight.shape)


def _columns(grad: torch.Tensor, adjoint: Geometry, chunk: Chunk, groups: int, native: bool) -> torch.Tensor:
    """The columns of ``chunk`` of the output's gradient: (G, Og * K, b * positions)."""
    rows = grad.shape[1] * adjoint.kernel_volume
    if native:
        columns = grad.new_empty((rows, chunk.num_fields))
        copy_columns(grad, adjoint, chunk.samples, chunk.region, columns)
        return columns.view(groups, rows // groups, -1)
    amounts = tuple(amount for pair in reversed(adjoint.padding) for amount in pair)
    slab = F.pad(grad[chunk.samples], amounts)[(slice(None), slice(None), *chunk.slab)]
    # (b, C * K, positions) -> (C * K, b * positions): the native copy's layout
    unfolded = im2col(slab, chunk.geometry).transpose(0, 1)
    return unfolded.reshape(groups, rows // groups, -1)
