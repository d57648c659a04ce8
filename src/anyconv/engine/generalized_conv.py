"""``generalized_conv``: a convolution whose multiply-and-sum is a variant's, run by the engine."""

from __future__ import annotations

from typing import Any

import torch

from ..functional.inputs import prepare_input
from ..variants import Variant, resolve_variant
from ..variants.checks import check_call
from .arguments import check_conv_tensors
from .ops_autocast import autocast_dtype, cast
from .ops_memory_format import output_memory_format
from .paths import run_path
from .plan import plan_conv


def generalized_conv(
    input: torch.Tensor,
    weight: torch.Tensor,
    variant: str | Variant | type[Variant],
    bias: torch.Tensor | None = None,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: int = 1,
    *,
    padding_mode: str = "zeros",
    memory_budget: int | None = None,
    **variant_options: Any,
) -> torch.Tensor:
    """An N-d convolution in which each field p meets each filter w through ``variant``.

    Same arguments as :func:`anyconv.conv` (N is ``weight.dim() - 2``), plus the variant: a
    built-in name (see ``anyconv.variants.BUILTIN_VARIANTS``), a :class:`~anyconv.variants.Variant`
    subclass or instance, and its options. The fields are made chunk by chunk, each chunk under
    ``memory_budget`` bytes (default 4 MiB, or without autograd the filters' bytes where a plain
    product's filters are larger), in forward and backward alike; ``bias`` is added last.
    Under ``torch.autocast`` it runs in autocast's dtype, as torch's convolutions do; a
    channels-last input gives a channels-last output.

    >>> import torch
    >>> x, w = torch.randn(2, 4, 9, 9), torch.randn(6, 2, 3, 3)
    >>> generalized_conv(x, w, "dot", groups=2, padding="same").shape
    torch.Size([2, 6, 9, 9])
    """
    lowered = autocast_dtype(input)
    if lowered is not None:
        # torch's policy for convolutions: run in autocast's dtype, with autocast off inside
        with torch.autocast(input.device.type, enabled=False):
            return generalized_conv(
                cast(input, lowered),
                cast(weight, lowered),
                variant,
                cast(bias, lowered),
                stride,
                padding,
                dilation,
                groups,
                padding_mode=padding_mode,
                memory_budget=memory_budget,
                **variant_options,
            )
    _, groups = check_conv_tensors(input, weight, bias, groups)
    variant = resolve_variant(variant, **variant_options)
    check_call(variant, input, weight)
    plan = plan_conv(input, weight, variant, stride, padding, dilation, groups, padding_mode, memory_budget)
    output = run_path(plan, prepare_input(input, plan.unbatched, plan.padding), weight, bias, variant)
    if plan.unbatched:
        return output.squeeze(0)
    if plan.padding is not None:
        # padded in a non-zero mode, the input the path saw is channels first whatever the caller's
        # layout: the output takes the caller's, as torch's padded convolution keeps it
        output = output.contiguous(memory_format=output_memory_format(input, weight))
    return output
