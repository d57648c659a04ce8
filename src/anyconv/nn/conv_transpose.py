"""Drop-in ``ConvTranspose1d/2d/3d`` that compute with :func:`anyconv.conv_transpose`.

They subclass torch's modules and replace only ``forward``: constructor, parameters,
``state_dict`` keys, initialisation, ``extra_repr`` and the ``output_size`` argument are torch's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch.nn.modules.conv import _ConvTransposeNd

from ..engine import conv_transpose

# torch.fx records a call of _conv_transpose_to as one node, as it records torch's own modules,
# rather than tracing into the engine (whose Python arithmetic on sizes a symbolic trace cannot run)
torch.fx.wrap("_conv_transpose_to")

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
        return _conv_transpose_to(
            input,
            output_size,
            self.weight,
            self.bias,
            self.stride,
            self.padding,  # type: ignore[arg-type]  # a transposed module's padding is never a string
            self.output_padding,
            self.kernel_size,
            self.groups,
            self.dilation,
            self.memory_budget,
        )


def _conv_transpose_to(
    input: torch.Tensor,
    output_size: list[int] | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    output_padding: tuple[int, ...],
    kernel_size: tuple[int, ...],
    groups: int,
    dilation: tuple[int, ...],
    memory_budget: int | None,
) -> torch.Tensor:
    """:func:`anyconv.conv_transpose` with the output_padding that gives ``output_size`` (if not
    None) by torch's own rule; one function, so that torch.fx records the call, ``output_size``
    among its arguments, as one node (torch.fx hands the forward a proxy for it)."""
    if output_size is not None:
        # torch's rule reads its module's output_padding only where no output_size is given
        output_padding = tuple(
            _ConvTransposeNd._output_padding(
                None,  # type: ignore[arg-type]
                input,
                output_size,
                stride,  # type: ignore[arg-type]
                padding,  # type: ignore[arg-type]
                kernel_size,  # type: ignore[arg-type]
                len(kernel_size),
                dilation,  # type: ignore[arg-type]
            )
        )
    return conv_transpose(
        input,
        weight,
        bias,
        stride,
        padding,
        output_padding,
        groups,
        dilation,
        memory_budget=memory_budget,
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
