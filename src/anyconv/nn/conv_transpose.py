"""Drop-in ``ConvTranspose1d/2d/3d`` that compute with :func:`anyconv.conv_transpose`.

They subclass torch's modules and replace only ``forward``: constructor, parameters,
``state_dict`` keys, initialisation, ``extra_repr`` and the ``output_size`` argument are torch's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch.nn.modules.conv import _ConvTransposeNd

from ..engine import conv_transpose

# the mixin is placed before a torch transposed-conv module; the type checker reads them as one
if TYPE_CHECKING:
    TransposedModule = _ConvTransposeNd
else:
    TransposedModule = object


class _TransposedConvolutions(TransposedModule):
    """The forward shared by the transposed modules: :func:`anyconv.conv_transpose`."""

    memory_budget: int | None = None

    def forward(self, input: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        """Transposed convolution of ``input``; ``output_size`` picks output_padding as in torch."""
        if self.padding_mode != "zeros":
            raise ValueError(f"Only 'zeros' padding mode is supported for {type(self).__name__}")
        ndim = len(self.kernel_size)
        # torch's annotations say list[int]; torch passes these same tuples in its own forward
        output_padding = self._output_padding(
            input,
            output_size,
            self.stride,  # type: ignore[arg-type]
            self.padding,  # type: ignore[arg-type]
            self.kernel_size,  # type: ignore[arg-type]
            ndim,
            self.dilation,  # type: ignore[arg-type]
        )
        return conv_transpose(
            input,
            self.weight,
            self.bias,
            self.stride,
            self.padding,
            output_padding,
            self.groups,
            self.dilation,
            memory_budget=self.memory_budget,
        )


class ConvTranspose1d(_TransposedConvolutions, torch.nn.ConvTranspose1d):
    """``torch.nn.ConvTranspose1d``, computed by :func:`anyconv.conv_transpose` (col2im or phases)."""


class ConvTranspose2d(_TransposedConvolutions, torch.nn.ConvTranspose2d):
    """``torch.nn.ConvTranspose2d``, computed by :func:`anyconv.conv_transpose` (col2im or phases).

    >>> import torch
    >>> layer = ConvTranspose2d(4, 2, 3, stride=2, padding=1)
    >>> layer(torch.randn(1, 4, 5, 5), output_size=(10, 10)).shape
    torch.Size([1, 2, 10, 10])
    """


class ConvTranspose3d(_TransposedConvolutions, torch.nn.ConvTranspose3d):
    """``torch.nn.ConvTranspose3d``, computed by :func:`anyconv.conv_transpose` (col2im or phases)."""
