"""``anyconv.nn.Unfold``: the module form of :func:`anyconv.unfold`, a drop-in for ``torch.nn.Unfold``.

Same constructor, attributes and repr as torch's, any number of spatial dimensions, plus padding_mode.
"""

from __future__ import annotations

from typing import Any

import torch

from ..functional import unfold
from ..geometry import infer_ndim, spatial_tuple
from ..geometry.arguments import check_padding_mode
from ..geometry.padding import padding_pairs

# torch.fx records a call of unfold as one node, as it records torch's own modules, rather than
# tracing into the engine (whose Python arithmetic on sizes a symbolic trace cannot run)
torch.fx.wrap("unfold")


class Unfold(torch.nn.Module):
    """Extract the receptive fields of (B, C, *spatial) as columns (B, C * prod(kernel_size), L).

    Arguments are checked here, at construction; the input decides N when all of them are ints.

    >>> import torch
    >>> layer = Unfold((2, 2, 2), padding=1)
    >>> layer
    Unfold(kernel_size=(2, 2, 2), dilation=1, padding=1, stride=1)
    >>> layer(torch.randn(1, 3, 4, 4, 4)).shape
    torch.Size([1, 24, 125])
    """

    def __init__(
        self,
        kernel_size: Any,
        dilation: Any = 1,
        padding: Any = 0,
        stride: Any = 1,
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__()
        check_unfold_arguments(kernel_size, dilation, padding, stride, padding_mode)
        self.kernel_size = kernel_size
        self.dilation = dilation
        self.padding = padding
        self.stride = stride
        self.padding_mode = padding_mode

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return unfold(
            input, self.kernel_size, self.dilation, self.padding, self.stride, padding_mode=self.padding_mode
        )

    def extra_repr(self) -> str:
        text = (
            f"kernel_size={self.kernel_size}, dilation={self.dilation}, "
            f"padding={self.padding}, stride={self.stride}"
        )
        # torch's repr, plus the one argument torch's Unfold lacks when it is not the default
        return text if self.padding_mode == "zeros" else f"{text}, padding_mode={self.padding_mode!r}"


def check_unfold_arguments(
    kernel_size: Any, dilation: Any, padding: Any, stride: Any, padding_mode: str
) -> None:
    """Raise the error a call would raise for these arguments, whatever the input (none yet).

    Every check that needs no input size: N is read from the arguments (1 when all are ints).

    >>> check_unfold_arguments(3, 1, "same", 2, "zeros")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    anyconv.errors.ArgumentError: padding='same' is invalid: ... not supported for strided convolutions
    """
    ndim = infer_ndim(kernel_size=kernel_size, dilation=dilation, padding=padding, stride=stride) or 1
    kernel = spatial_tuple("kernel_size", kernel_size, ndim, 1)
    steps = spatial_tuple("stride", stride, ndim, 1)
    spacings = spatial_tuple("dilation", dilation, ndim, 1)
    padding_pairs(padding, ndim, kernel, spacings, steps)
    check_padding_mode(padding_mode)
