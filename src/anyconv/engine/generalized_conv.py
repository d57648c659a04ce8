"""``generalized_conv``: a convolution whose multiply-and-sum is a variant's, run by the engine."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import invalid
from ..functional.pad import pad
from ..geometry import make_geometry
from ..variants import Variant, resolve_variant
from .arguments import check_conv_tensors
from .chunks import DEFAULT_MEMORY_BUDGET, plan_chunks
from .contraction import GeneralizedConvFunction, Plan
from .paths import fast_path
from .shifted_views import shifted_views_fit


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
    ``memory_budget`` bytes (default 4 MiB), in forward and backward alike; ``bias`` is added last.

    >>> import torch
    >>> x, w = torch.randn(2, 4, 9, 9), torch.randn(6, 2, 3, 3)
    >>> generalized_conv(x, w, "dot", groups=2, padding="same").shape
    torch.Size([2, 6, 9, 9])
    """
    ndim, groups = check_conv_tensors(input, weight, bias, groups)
    variant = resolve_variant(variant, **variant_options)
    was_unbatched = input.dim() == ndim + 1
    batched = input.unsqueeze(0) if was_unbatched else input
    geometry = make_geometry(batched.shape[2:], weight.shape[2:], stride, padding, dilation, padding_mode)
    if geometry.padding_mode != "zeros" and geometry.is_padded:
        # the engine zero-pads chunk by chunk; the other modes pad the whole input once, here
        batched = pad(batched, geometry)
        geometry = make_geometry(
            geometry.padded_size, geometry.kernel_size, geometry.stride, 0, geometry.dilation
        )
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else memory_budget
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
        raise invalid("memory_budget", memory_budget, "a positive number of bytes")
    path = fast_path(batched, weight, variant, geometry, groups, budget)
    if path is not None:
        output = path(batched, weight, bias)
        return output.squeeze(0) if was_unbatched else output
    plan = _plan(batched, weight, variant, geometry, groups, budget)
    tensors = [variant.options[name] for name in plan.option_names]
    output = GeneralizedConvFunction.apply(batched, weight, bias, plan, *tensors)
    return output.squeeze(0) if was_unbatched else output


def _plan(batched, weight, variant, geometry, groups, budget) -> Plan:
    """Chunks sized for copied fields (and for the views, when the backward takes them), and
    the variant's options split into tensors and numbers."""
    fields_per_group = weight[0].numel()
    filters_per_group = weight.shape[0] // groups
    working = groups * variant.working_elements(1, fields_per_group, filters_per_group)
    element = batched.element_size()
    bytes_per_field = element * (groups * (fields_per_group + filters_per_group) + working)
    chunks = plan_chunks(geometry, batched.shape[0], bytes_per_field, budget)
    tap_chunks = None
    if variant.product_backward is not None and shifted_views_fit(geometry, weight):
        # per position: the padded input and its gradient, the pair scales, the variant's work
        bytes_per_position = element * (2 * batched.shape[1] + weight.shape[0] + working)
        tap_chunks = plan_chunks(geometry, batched.shape[0], bytes_per_position, budget)
    tensors = tuple(name for name, value in variant.options.items() if isinstance(value, torch.Tensor))
    fixed = tuple((name, value) for name, value in variant.options.items() if name not in tensors)
    return Plan(geometry, groups, chunks, variant, tensors, fixed, torch.is_grad_enabled(), tap_chunks)
