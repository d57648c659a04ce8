"""``GeneralizedConv1d/2d/3d/Nd``: anyconv's conv modules with the multiply-and-sum of a variant.

They subclass the drop-in conv modules and change only the computation, so weights, bias,
``state_dict`` keys and initialisation are those of ``torch.nn.ConvNd``. Tensor-valued variant
options (one value per output channel, learnable where the paper learns them) are registered
as parameters under ``variant_options.<name>``.
"""

from __future__ import annotations

from typing import Any

import torch

from ..engine import generalized_conv
from ..variants import Variant, resolve_variant
from ..variants.checks import check_per_channel_options
from .conv import Conv1d, Conv2d, Conv3d, ConvNd


class _VariantComputation:
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
        self.memory_budget = memory_budget

    def _conv_forward(
        self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        return generalized_conv(
            input,
            weight,
            self.variant,
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


def _generalized(base: type, dims: str) -> type:
    def __init__(
        self,
        *args: Any,
        variant: str | Variant | type[Variant],
        memory_budget: int | None = None,
        **kwargs: Any,
    ) -> None:
        names = ("stride", "padding", "dilation", "groups", "bias", "padding_mode", "device", "dtype")
        conv_kwargs = {name: kwargs.pop(name) for name in names if name in kwargs}
        base.__init__(self, *args, **conv_kwargs)
        self._setup_variant(variant, memory_budget, kwargs)

    doc = (
        f"{base.__name__} ({dims}) whose fields meet the filters through ``variant``.\n\n"
        f"Arguments are those of ``{base.__name__}``, then ``variant=`` (a name, a Variant subclass or\n"
        "instance), ``memory_budget=`` and the variant's options as keywords."
    )
    return type(
        f"Generalized{base.__name__}", (_VariantComputation, base), {"__init__": __init__, "__doc__": doc}
    )


GeneralizedConv1d = _generalized(Conv1d, "1-D")
GeneralizedConv2d = _generalized(Conv2d, "2-D")
GeneralizedConv3d = _generalized(Conv3d, "3-D")
GeneralizedConvNd = _generalized(ConvNd, "any N")
