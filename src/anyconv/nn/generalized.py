"""``GeneralizedConv1d/2d/3d/Nd``: anyconv's conv modules with the multiply-and-sum of a variant.

They subclass the drop-in conv modules and change only the computation, so weights, bias,
``state_dict`` keys and initialisation are those of ``torch.nn.ConvNd``. Tensor-valued variant
options (one value per output channel, learnable where the paper learns them) are registered
as parameters under ``variant_options.<name>``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn.common_types import _size_1_t, _size_2_t, _size_3_t

from ..engine import generalized_conv
from ..engine.chunks import check_memory_budget
from ..variants import Variant, resolve_variant
from ..variants.base import with_tensor_options
from ..variants.checks import check_per_channel_options
from .conv import Conv1d, Conv2d, Conv3d, ConvModule, ConvNd, PaddingMode

# torch.fx records a call of generalized_conv as one node, as it records torch's own modules, rather than
# tracing into the engine (whose Python arithmetic on sizes a symbolic trace cannot run)
torch.fx.wrap("generalized_conv")

VariantSpec = str | Variant | type[Variant]


class _VariantComputation(ConvModule):
    """Holds the variant and its tensor options; replaces fields-times-weights by the variant."""

    def _setup_variant(
        self, variant: str | Variant | type[Variant], memory_budget: int | None, options: dict
    ) -> None:
        self.variant_options = torch.nn.ParameterDict(
            {name: value for name, value in options.items() if isinstance(value, torch.Tensor)}
        )
        tensors = dict(self.variant_options.items())
        self.variant = resolve_variant(variant, **{**options, **tensors})
        check_per_channel_options(self.variant, self.weight.shape[0])
        self.memory_budget = check_memory_budget(memory_budget)

    def _conv_forward(
        self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        variant = self.variant
        if self.variant_options:
            # the tensor options as the module holds them now: load_state_dict(assign=True), a
            # dtype or device conversion that makes new Parameters, or an assignment may have
            # replaced the ones the variant was made with
            variant = with_tensor_options(variant, dict(self.variant_options.items()))
        return generalized_conv(
            input,
            weight,
            variant,
            bias,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            padding_mode=self.padding_mode,
            memory_budget=self.memory_budget,
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, variant={self.variant!r}"


class GeneralizedConv1d(_VariantComputation, Conv1d):
    """``Conv1d`` (1-D) whose fields meet the filters through ``variant``.

    Arguments are those of ``Conv1d``, then ``variant`` (a name, a Variant subclass or instance),
    ``memory_budget`` (bytes per chunk, default 4 MiB) and the variant's options as keywords.
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
        *,
        variant: VariantSpec,
        memory_budget: int | None = None,
        **variant_options: Any,
    ) -> None:
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
        self._setup_variant(variant, memory_budget, variant_options)


class GeneralizedConv2d(_VariantComputation, Conv2d):
    """``Conv2d`` (2-D) whose fields meet the filters through ``variant``.

    Arguments are those of ``Conv2d``, then ``variant`` (a name, a Variant subclass or instance),
    ``memory_budget`` (bytes per chunk, default 4 MiB) and the variant's options as keywords.

    >>> import torch
    >>> layer = GeneralizedConv2d(3, 8, 3, padding=1, variant="rbf", gamma=0.5)
    >>> layer(torch.randn(2, 3, 16, 16)).shape
    torch.Size([2, 8, 16, 16])
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
        *,
        variant: VariantSpec,
        memory_budget: int | None = None,
        **variant_options: Any,
    ) -> None:
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
        self._setup_variant(variant, memory_budget, variant_options)


class GeneralizedConv3d(_VariantComputation, Conv3d):
    """``Conv3d`` (3-D) whose fields meet the filters through ``variant``.

    Arguments are those of ``Conv3d``, then ``variant`` (a name, a Variant subclass or instance),
    ``memory_budget`` (bytes per chunk, default 4 MiB) and the variant's options as keywords.
    """

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
        *,
        variant: VariantSpec,
        memory_budget: int | None = None,
        **variant_options: Any,
    ) -> None:
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
        self._setup_variant(variant, memory_budget, variant_options)


class GeneralizedConvNd(_VariantComputation, ConvNd):
    """``ConvNd`` (any N) whose fields meet the filters through ``variant``.

    Arguments are those of ``ConvNd``, then ``variant`` (a name, a Variant subclass or instance),
    ``memory_budget`` (bytes per chunk, default 4 MiB) and the variant's options as keywords.
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
        *,
        variant: VariantSpec,
        memory_budget: int | None = None,
        **variant_options: Any,
    ) -> None:
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
        self._setup_variant(variant, memory_budget, variant_options)
