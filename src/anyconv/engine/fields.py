"""Fields of one chunk in the engine's layout, and their gradient folded back (col2im).

Fields are handed to a variant as (G, M, Kg) whose memory is (G, Kg, M): one copy out of the
padded input, the layout a matrix product reads without another copy.
"""

from __future__ import annotations

import torch

from ..functional.im2col import add_blocks, field_view
from .chunks import Chunk


def chunk_fields(padded: torch.Tensor, chunk: Chunk, groups: int) -> torch.Tensor:
    """Copy the receptive fields of ``chunk`` out of the padded input as (G, M, Kg)."""
    geometry = chunk.geometry
    ndim = geometry.ndim
    slab = padded[chunk.samples, :, chunk.slab]
    samples, channels = slab.shape[:2]
    view = field_view(slab, geometry).unflatten(1, (groups, channels // groups))
    # (b, G, Cg, *out, *kernel) -> (G, Cg, *kernel, b, *out)
    order = (1, 2, *range(3 + ndim, 3 + 2 * ndim), 0, *range(3, 3 + ndim))
    fields = torch.empty(
        (groups, channels // groups, *geometry.kernel_size, samples, *geometry.output_size),
        dtype=padded.dtype,
        device=padded.device,
    )
    fields.copy_(view.permute(order))
    return fields.view(groups, -1, samples * geometry.num_positions).transpose(1, 2)


def add_field_grads(grad_padded: torch.Tensor, grad_fields: torch.Tensor, chunk: Chunk) -> None:
    """Fold the gradient of the fields (G, M, Kg) of ``chunk`` into the padded input's gradient."""
    geometry = chunk.geometry
    groups = grad_fields.shape[0]
    samples = chunk.samples.stop - chunk.samples.start
    channels = grad_padded.shape[1]
    ndim = geometry.ndim
    blocks = grad_fields.transpose(1, 2).reshape(
        groups, channels // groups, *geometry.kernel_size, samples, *geometry.output_size
    )
    # (G, Cg, *kernel, b, *out) -> (b, G, Cg, *kernel, *out) -> (b, C, *kernel, *out)
    order = (2 + ndim, 0, 1, *range(2, 2 + ndim), *range(3 + ndim, 3 + 2 * ndim))
    blocks = blocks.permute(order).flatten(1, 2)
    add_blocks(grad_padded[chunk.samples, :, chunk.slab], blocks, geometry)
