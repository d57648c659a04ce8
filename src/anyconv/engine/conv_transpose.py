"""``conv_transpose``: the transposed convolution as weights times input, folded back with col2im.

Each input position spreads its channel vector, multiplied by the weights, over the receptive
field it would have read in the matching convolution; col2im sums those fields into the output.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..errors import invalid
from ..functional.allocation import check_fits
from ..functional.im2col import Col2Im
from ..geometry import make_geometry, spatial_tuple, transposed_output_size
from .arguments import check_conv_tensors
from .chunks import resolve_budget
from .ops_autocast import autocast_dtype, cast
from .ops_memory_format import output_memory_format


def conv_transpose(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: Any = 1,
    padding: Any = 0,
    output_padding: Any = 0,
    groups: int = 1,
    dilation: Any = 1,
    *,
    memory_budget: int | None = None,
) -> torch.Tensor:
    """``F.conv_transpose1d/2d/3d`` for any N (``weight.dim() - 2``), as weights times input + col2im.

    ``weight`` is (in_channels, out_channels // groups, *kernel_size), as in torch. The output
    size is ``(in - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1``;
    ``output_padding`` must be smaller than the stride or the dilation, as torch requires. The
    columns (out_channels * K per input position) are made a few samples at a time, each batch
    of samples under ``memory_budget`` bytes; gradients come from autograd (col2im's is im2col),
    twice differentiable. Under ``torch.autocast`` it runs in autocast's dtype, as torch's does.

    >>> import torch, torch.nn.functional as F
    >>> x, w = torch.randn(2, 4, 5, 5, dtype=torch.float64), torch.randn(4, 3, 3, 3, dtype=torch.float64)
    >>> y = conv_transpose(x, w, stride=2, padding=1, output_padding=1)
    >>> y.shape, torch.allclose(y, F.conv_transpose2d(x, w, stride=2, padding=1, output_padding=1))
    (torch.Size([2, 3, 10, 10]), True)
    """
    ndim, groups = check_conv_tensors(input, weight, bias, groups, transposed=True)
    lowered = autocast_dtype(input)
    if lowered is not None:
        # torch's policy for convolutions: run in autocast's dtype, with autocast off inside
        with torch.autocast(input.device.type, enabled=False):
            return conv_transpose(
                cast(input, lowered),
                cast(weight, lowered),
                cast(bias, lowered),
                stride,
                padding,
                output_padding,
                groups,
                dilation,
                memory_budget=memory_budget,
            )
    was_unbatched = input.dim() == ndim + 1
    batched = input.unsqueeze(0) if was_unbatched else input
    kernel_size = tuple(weight.shape[2:])
    steps = spatial_tuple("stride", stride, ndim, 1)
    if isinstance(padding, str):
        raise invalid("padding", padding, f"an int or a tuple of {ndim} ints (no strings when transposed)")
    amounts = spatial_tuple("padding", padding, ndim, 0)
    spacings = spatial_tuple("dilation", dilation, ndim, 1)
    extra = spatial_tuple("output_padding", output_padding, ndim, 0)
    # checks output_padding against torch's rule and that the output is not empty
    transposed_output_size(tuple(batched.shape[2:]), kernel_size, steps, amounts, output_padding, spacings)
    # the smallest image whose fields are exactly one per input position: the output before
    # its padding is cropped and output_padding's extra zeros (no field reaches them) added
    full_size = tuple(
        (size - 1) * step + spacing * (kernel - 1) + 1
        for size, step, spacing, kernel in zip(batched.shape[2:], steps, spacings, kernel_size)
    )
    # what made the output that large: a stride or a dilation that spreads it, else the kernel
    spread = ("stride", stride) if max(steps) > 1 else ("dilation", dilation) if max(spacings) > 1 else None
    full_shape = (batched.shape[0], weight.shape[1] * groups, *full_size)
    check_fits("the output before cropping", full_shape, batched, spread or ("weight", weight))
    geometry = make_geometry(full_size, kernel_size, steps, 0, spacings)
    budget = resolve_budget(memory_budget)

    batch, channels = batched.shape[:2]
    out_channels = weight.shape[1] * groups
    # (C, Og, *kernel) -> (G, Og * K, Cg): one matrix per group, rows in col2im's (channel, tap) order
    matrices = weight.reshape(groups, channels // groups, -1).transpose(1, 2)
    bytes_per_sample = batched.element_size() * out_channels * geometry.kernel_volume * geometry.num_positions
    samples_per_chunk = max(1, budget // max(1, bytes_per_sample))
    # crop the padding (a negative pad) and add output_padding's zeros in one F.pad
    reshape = tuple(
        amount for pad, more in zip(reversed(amounts), reversed(extra)) for amount in (-pad, more - pad)
    )
    outputs = []
    for start in range(0, max(batch, 1), samples_per_chunk):
        chunk = batched[start : start + samples_per_chunk]
        values = chunk.reshape(chunk.shape[0], groups, channels // groups, geometry.num_positions)
        columns = torch.matmul(matrices, values).flatten(1, 2)
        outputs.append(F.pad(Col2Im.apply(columns, geometry), reshape))
    output = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
    if bias is not None:
        output = output + bias.reshape(-1, *(1,) * ndim)
    # channels-last in, channels-last out, as torch's (col2im writes channels first)
    output = output.contiguous(memory_format=output_memory_format(batched, weight))
    return output.squeeze(0) if was_unbatched else output
