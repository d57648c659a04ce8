"""torch's own convolutions as the reference, for every padding form and mode anyconv accepts.

torch's functional convs take only symmetric zero padding (or 'same'/'valid'); the other forms
are spelled out here with F.pad, from the formulas of the torch documentation.
"""

from __future__ import annotations

import torch.nn.functional as F

CONVS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
CONV_TRANSPOSES = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def padding_pairs(padding, kernel, dilation, ndim):
    """Per-dimension (before, after) pairs for an int, tuple, pairs, 'same' or 'valid'."""
    if padding == "valid":
        return [(0, 0)] * ndim
    if padding == "same":
        totals = [d * (k - 1) for k, d in zip(kernel, dilation)]
        return [(total // 2, total - total // 2) for total in totals]
    items = padding if isinstance(padding, (tuple, list)) else (padding,) * ndim
    return [tuple(item) if isinstance(item, (tuple, list)) else (item, item) for item in items]


def torch_conv(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
    """``F.convNd`` with any padding form and mode, on batched or unbatched input."""
    ndim = weight.dim() - 2
    unbatched = x.dim() == ndim + 1
    if unbatched:
        x = x.unsqueeze(0)
    kernel = weight.shape[2:]
    dilations = dilation if isinstance(dilation, (tuple, list)) else (dilation,) * ndim
    pairs = padding_pairs(padding, kernel, dilations, ndim)
    flat = [amount for pair in reversed(pairs) for amount in pair]
    mode = "constant" if padding_mode == "zeros" else padding_mode
    out = CONVS[ndim](F.pad(x, flat, mode=mode), weight, bias, stride, 0, dilation, groups)
    return out.squeeze(0) if unbatched else out
