"""``generalized_conv``: a convolution whose multiply-and-sum is a variant's, run by the engine."""

from __future__ import annotations

from typing import Any

import torch

from ..functional.pad import pad
from ..geometry import Geometry, make_geometry
from ..variants import Variant, resolve_variant
from ..variants.checks import check_call
from .arguments import check_conv_tensors
from .backward_choice import Backward, choose_backward
from .chunks import plan_chunks, resolve_budget
from .contraction import GeneralizedConvFunction, Plan
from .fields import check_conv_sizes
from .ops import run_generalized_conv, variant_arguments
from .ops_autocast import autocast_dtype, cast
from .ops_memory_format import output_memory_format
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
    Under ``torch.autocast`` it runs in autocast's dtype, as torch's convolutions do; a
    channels-last input gives a channels-last output.

    >>> import torch
    >>> x, w = torch.randn(2, 4, 9, 9), torch.randn(6, 2, 3, 3)
    >>> generalized_conv(x, w, "dot", groups=2, padding="same").shape
    torch.Size([2, 6, 9, 9])
    """
    ndim, groups = check_conv_tensors(input, weight, bias, groups)
    variant = resolve_variant(variant, **variant_options)
    check_call(variant, input, weight)
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
            )
    was_unbatched = input.dim() == ndim + 1
    batched = input.unsqueeze(0) if was_unbatched else input
    geometry = make_geometry(batched.shape[2:], weight.shape[2:], stride, padding, dilation, padding_mode)
    check_conv_sizes(batched, weight, geometry, padding, dilation)
    if geometry.padding_mode != "zeros" and geometry.is_padded:
        # the engine zero-pads chunk by chunk; the other modes pad the whole input once, here
        batched = pad(batched, geometry)
        geometry = make_geometry(
            geometry.padded_size, geometry.kernel_size, geometry.stride, 0, geometry.dilation
        )
    budget = resolve_budget(memory_budget)
    path = fast_path(batched, weight, variant, geometry, groups, budget)
    if path is not None:
        # torch's layout for the output (channels-last in, channels-last out)
        output = path(batched, weight, bias).contiguous(memory_format=output_memory_format(batched, weight))
    elif (arguments := variant_arguments(variant)) is not None:
        output = run_generalized_conv(batched, weight, bias, variant, arguments, geometry, groups, budget)
    else:
        # a variant not registered by name: the plain autograd Function (no compile, export or torch.func)
        plan = _plan(batched, weight, variant, geometry, groups, budget)
        tensors = [variant.options[name] for name in plan.option_names]
        output = GeneralizedConvFunction.apply(batched, weight, bias, plan, *tensors)
    return output.squeeze(0) if was_unbatched else output


def _plan(
    batched: torch.Tensor,
    weight: torch.Tensor,
    variant: Variant,
    geometry: Geometry,
    groups: int,
    budget: int,
) -> Plan:
    """Chunks sized for copied fields (and for the views, when the backward takes them), and
    the variant's options split into tensors and numbers."""
    fields_per_group = weight[0].numel()
    filters_per_group = weight.shape[0] // groups
    working = groups * variant.working_elements(1, fields_per_group, filters_per_group)
    element = batched.element_size()
    bytes_per_field = element * (groups * (fields_per_group + filters_per_group) + working)
    chunks = plan_chunks(geometry, batched.shape[0], bytes_per_field, budget)
    tap_chunks = None
    if choose_backward(variant, (), shifted_views_fit(geometry, weight)) is Backward.VIEWS:
        # per position: the padded input and its gradient, the pair scales, the variant's work
        bytes_per_position = element * (2 * batched.shape[1] + weight.shape[0] + working)
        tap_chunks = plan_chunks(geometry, batched.shape[0], bytes_per_position, budget)
    tensors = tuple(name for name, value in variant.options.items() if isinstance(value, torch.Tensor))
    fixed = tuple((name, value) for name, value in variant.options.items() if name not in tensors)
    return Plan(geometry, groups, chunks, variant, tensors, fixed, torch.is_grad_enabled(), tap_chunks)
