"""``anyconv.nn.Fold``: the module form of :func:`anyconv.fold`, a drop-in for ``torch.nn.Fold``.

Same constructor, attributes and repr as torch's, for any number of spatial dimensions.
"""

from __future__ import annotations

from typing import Any

import torch

from ..functional import fold
from ..functional.fold import fold_geometry

# torch.fx records a call of fold as one node, as it records torch's own modules, rather than
# tracing into the engine (whose Python arithmetic on sizes a symbolic trace cannot run)
torch.fx.wrap("fold")


class Fold(torch.nn.Module):
    """Sum columns (B, C * prod(kernel_size), L) into an image (B, C, *output_size).

    Arguments are checked here, at construction, as ``anyconv.fold`` would check them.

    >>> import torch
    >>> layer = Fold((4, 4, 4), 2, stride=2)
    >>> layer
    Fold(output_size=(4, 4, 4), kernel_size=2, dilation=1, padding=0, stride=2)
    >>> layer(torch.randn(1, 16, 8)).shape
    torch.Size([1, 2, 4, 4, 4])
    """

    def __init__(
        self,
        output_size: Any,
        kernel_size: Any,
        dilation: Any = 1,
        padding: Any = 0,
        stride: Any = 1,
    ) -> None:
        super().__init__()
        fold_geometry(output_size, kernel_size, dilation, padding, stride)
        self.output_size = output_size
        self.kernel_size = kernel_size
        self.dilation = dilation
        self.padding = padding
        self.stride = stride

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return fold(input, self.output_size, self.kernel_size, self.dilation, self.padding, self.stride)

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, kernel_size={self.kernel_size}, "
            f"dilation={self.dilation}, padding={self.padding}, stride={self.stride}"
        )
