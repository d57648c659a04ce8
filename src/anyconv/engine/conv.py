"""``conv``: the standard convolution as receptive fields times weights, equal to torch's."""

from __future__ import annotations

from typing import Any

import torch

from ..variants import Dot
from .generalized_conv import generalized_conv

_DOT = Dot()


def conv(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: int = 1,
    *,
    padding_mode: str = "zeros",
    memory_budget: int | None = None,
) -> torch.Tensor:
    """``F.conv1d/2d/3d`` for any N (``weight.dim() - 2``), computed as fields times weights.

    Every padding form ('same', 'valid', ints, per-side pairs) and mode (zeros, reflect,
    replicate, circular), groups, unbatched input. Chunks of at most ``memory_budget`` bytes
    multiply the fields, copied as rows, with the weights, one product per chunk; at stride 1 the
    backward reads them as shifted views of the input, one product per kernel tap
    (``engine.shifted_views``). torch's native convolution is never called.

    >>> import torch, torch.nn.functional as F
    >>> x, w = torch.randn(2, 3, 8, 8, dtype=torch.float64), torch.randn(4, 3, 3, 3, dtype=torch.float64)
    >>> torch.allclose(conv(x, w, padding=1, stride=2), F.conv2d(x, w, padding=1, stride=2))
    True
    >>> conv(torch.randn(1, 2, 5, 5, 5, 5), torch.randn(3, 2, 3, 3, 3, 3), padding="same").shape
    torch.Size([1, 3, 5, 5, 5, 5])
    """
    return generalized_conv(
        input,
        weight,
        _DOT,
        bias,
        stride,
        padding,
        dilation,
        groups,
        padding_mode=padding_mode,
        memory_budget=memory_budget,
    )
