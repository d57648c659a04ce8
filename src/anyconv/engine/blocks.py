"""A chunk's part of the output (B, O, *out), seen as the (G, M, Og) result of its fields.

The variants compute (G, M, Og): G groups, M fields of the chunk, Og filters per group. These
helpers view a chunk's block of the output (or of its gradient) in that layout, and write such a
result back into it, with the bias added in the same pass.
"""

from __future__ import annotations

import math

import torch

from ..errors import ArgumentError
from ..variants import Variant
from .chunks import Chunk


def output_block(output: torch.Tensor, chunk: Chunk, groups: int) -> torch.Tensor:
    """The part of ``output`` (B, O, *out) a chunk covers, as a (b, G, Og, rows, *rest) view."""
    # indexed in two steps: torch.compile (inductor) failed to write into the view that one
    # combined index gives, when it is the out= of torch.add (test_compile)
    return output.unflatten(1, (groups, -1))[(slice(None),) * 3 + chunk.region][chunk.samples]


def as_chunk_result(block: torch.Tensor) -> torch.Tensor:
    """(b, G, Og, *positions) -> (G, M, Og), M = b * prod(positions); a view when it can be."""
    return block.permute(1, 2, 0, *range(3, block.dim())).flatten(2).transpose(1, 2)


def chunk_results(tensors: tuple[torch.Tensor | None, ...], chunk: Chunk, groups: int) -> tuple:
    """Each of ``tensors`` (B, O, *out), or None, as ``chunk``'s (G, M, Og) view (see as_chunk_result)."""
    return tuple(
        None if tensor is None else as_chunk_result(output_block(tensor, chunk, groups)) for tensor in tensors
    )


def write_block(
    block: torch.Tensor,
    result: torch.Tensor,
    bias: torch.Tensor | None = None,
    variant: Variant | None = None,
) -> None:
    """Write a chunk's ``result`` (G, M, Og) into ``block`` (b, G, Og, *positions), plus ``bias`` (O,).

    ``block`` may be any view, strided in every dimension. Adding the bias in this copy spares a
    pass over the whole output and a second output tensor. A ``result`` of another shape is
    refused, naming ``variant``, whose ``contract`` returned it.
    """
    expected = (block.shape[1], block.shape[0] * math.prod(block.shape[3:]), block.shape[2])
    if tuple(result.shape) != expected:
        source = "a variant" if variant is None else f"variant {variant.name!r}"
        raise ArgumentError(
            f"{source} returned shape {tuple(result.shape)} from contract(): expected {expected}, "
            "(groups, fields of the chunk, filters per group)"
        )
    groups, positions = result.shape[0], block.dim() - 3
    values = result.transpose(1, 2).unflatten(2, (block.shape[0], *block.shape[3:]))
    values = values.permute(2, 0, 1, *range(3, 3 + positions))
    copy_with_bias(block, values, None if bias is None else bias.view(groups, -1, *(1,) * positions))


def copy_with_bias(block: torch.Tensor, values: torch.Tensor, bias: torch.Tensor | None) -> None:
    """``block[...] = values + bias`` (``bias`` broadcast, or none) in one pass over ``block``."""
    if bias is None:
        block.copy_(values)
    else:
        torch.add(values, bias, out=block)


def bias_grad(grad_output: torch.Tensor) -> torch.Tensor:
    """The gradient of a bias added to every position of a (B, O, *out) output."""
    return grad_output.sum((0, *range(2, grad_output.dim())))
