"""Drop-in ``Conv1d/2d/3d`` (and ``ConvNd`` for any N) that compute with :func:`anyconv.conv`.

Each subclasses torch's own module and replaces only the computation, so the constructor,
parameters, ``state_dict`` keys, initialisation, ``extra_repr`` and error wording are torch's,
and a checkpoint loads both ways.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import torch
from torch.nn.common_types import _size_1_t, _size_2_t, _size_3_t
from torch.nn.modules.conv import _ConvNd

from ..engine import conv
from ..errors import invalid, wrong_type
from ..geometry import spatial_tuple
from ..geometry.arguments import as_int

# torch.fx records a call of conv as one node, as it records torch's own modules, rather than
# tracing into the engine (whose Python arithmetic on sizes a symbolic trace cannot run)
torch.fx.wrap("conv")

PaddingMode = Literal["zeros", "reflect", "replicate", "circular"]

# the mixins are placed before a torch conv module; the type checker reads them as one
if TYPE_CHECKING:
    ConvModule = _ConvNd
else:
    ConvModule = object


class _FieldsTimesWeights(ConvModule):
    """The computation shared by every anyconv conv module: receptive fields times weights."""

    memory_budget: int | None = None

    @staticmethod
    def _check_channels(in_channels: Any, out_channels: Any, groups: Any) -> None:
        # torch's constructors accept a zero stride, a negative padding or a float channel count
        # and fail later, deep in the forward pass; refuse them here, naming the argument (what
        # torch's constructor checks itself, such as groups, keeps torch's exact message)
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
            if as_int(name, value) < 1:
                raise invalid(name, value, "a positive integer")

    def _keep_normalised(self) -> None:
        """Check the spatial arguments torch stored and keep them as tuples of ints, once."""
        ndim = len(self.kernel_size)
        self.kernel_size = spatial_tuple("kernel_size", self.kernel_size, ndim, 1)
        self.stride = spatial_tuple("stride", self.stride, ndim, 1)
        self.dilation = spatial_tuple("dilation", self.dilation, ndim, 1)
        if not isinstance(self.padding, str):
            self.padding = spatial_tuple("padding", self.padding, ndim, 0)

    def _conv_forward(
        self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        return conv(
            input,
            weight,
            bias,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            padding_mode=self.padding_mode,
            memory_budget=self.memory_budget,
        )


class Conv1d(_FieldsTimesWeights, torch.nn.Conv1d):
    """``torch.nn.Conv1d``, computed as receptive fields times weights.

    >>> import torch
    >>> layer = Conv1d(2, 4, 3, padding="same")
    >>> layer(torch.randn(5, 2, 10)).shape
    torch.Size([5, 4, 10])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: _size_1_t,
        stride: _size_1_t = 1,
        padding: str | _size_1_t = 0,
        dilation: _size_1_t = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: PaddingMode = "zeros",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self._check_channels(in_channels, out_channels, groups)
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            padding_mode,
            device=device,
            dtype=dtype,
        )
        self._keep_normalised()


class Conv2d(_FieldsTimesWeights, torch.nn.Conv2d):
    """``torch.nn.Conv2d``, computed as receptive fields times weights.

    >>> import torch
    >>> torch_layer = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1, padding_mode="reflect")
    >>> layer = Conv2d(3, 8, 3, stride=2, padding=1, padding_mode="reflect")
    >>> _ = layer.load_state_dict(torch_layer.state_dict())
    >>> x = torch.randn(2, 3, 16, 16)
    >>> torch.allclose(layer(x), torch_layer(x), atol=1e-5)
    True
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: _size_2_t,
        stride: _size_2_t = 1,
        padding: str | _size_2_t = 0,
        dilation: _size_2_t = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: PaddingMode = "zeros",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self._check_channels(in_channels, out_channels, groups)
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            padding_mode,
            device=device,
            dtype=dtype,
        )
        self._keep_normalised()


class Conv3d(_FieldsTimesWeights, torch.nn.Conv3d):
    """``torch.nn.Conv3d``, computed as receptive fields times weights."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: _size_3_t,
        stride: _size_3_t = 1,
        padding: str | _size_3_t = 0,
        dilation: _size_3_t = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: PaddingMode = "zeros",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self._check_channels(in_channels, out_channels, groups)
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            padding_mode,
            device=device,
            dtype=dtype,
        )
        self._keep_normalised()


class ConvNd(_FieldsTimesWeights, _ConvNd):
    """A convolution with any number N of spatial dimensions, N = ``len(kernel_size)``.

    The constructor is that of ``torch.nn.Conv2d`` with ``kernel_size`` a tuple of N ints.

    >>> import torch
    >>> layer = ConvNd(2, 3, (3, 3, 3, 3), padding=1)
    >>> layer.weight.shape
    torch.Size([3, 2, 3, 3, 3, 3])
    >>> layer(torch.randn(1, 2, 4, 4, 4, 4)).shape
    torch.Size([1, 3, 4, 4, 4, 4])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, ...],
        stride: int | tuple[int, ...] = 1,
        padding: str | int | tuple[int, ...] = 0,
        dilation: int | tuple[int, ...] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: PaddingMode = "zeros",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self._check_channels(in_channels, out_channels, groups)
        if not isinstance(kernel_size, (tuple, list)):
            raise wrong_type("kernel_size", kernel_size, "a tuple of N ints (N spatial dimensions)")
        ndim = len(kernel_size)
        kernel = spatial_tuple("kernel_size", kernel_size, ndim, 1)
        padding = padding if isinstance(padding, str) else spatial_tuple("padding", padding, ndim, 0)
        super().__init__(
            in_channels,
            out_channels,
            kernel,
            spatial_tuple("stride", stride, ndim, 1),
            padding,
            spatial_tuple("dilation", dilation, ndim, 1),
            False,
            (0,) * ndim,
            groups,
            bias,
            padding_mode,
            device=device,
            dtype=dtype,
        )

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Convolve ``input`` (B, C, *N spatial) or (C, *N spatial)."""
        return self._conv_forward(input, self.weight, self.bias)
