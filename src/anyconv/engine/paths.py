"""The paths that compute a generalized convolution, in the order they are tried: the first that fits runs.

Each path is a name, ``fits(plan, variant, input, weight)`` and ``run(plan, input, weight, bias,
variant)``. ``fits`` reads only what a plan's key holds (shapes, dtype, device, the variant's
type and numeric options, the plan's geometry and groups, the environment's switches), because
its answer is cached with the plan; ``input`` is batched, unpadded. Why each path is taken where
it is: ``docs/engine.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, NamedTuple

import torch

from ..functional.transforms import transformed
from ..variants import Variant
from ..variants.fused import record_eager_call
from .contraction import ForwardResult, GeneralizedConvFunction, contract_chunks
from .fields_plan import fields_plan
from .machinery import machinery_watches, records_graph
from .ops import op_padding, op_plan, run_generalized_conv, variant_arguments
from .ops_memory_format import output_memory_format
from .pointwise import pointwise_conv, pointwise_fits
from .tap_loops import tap_loops_conv, tap_loops_fit
from .tap_products import tap_forward_fits, tap_products_conv, tap_products_fit, tap_products_forward
from .triton_conv import triton_conv, triton_conv_fits

if TYPE_CHECKING:
    from .plan import ConvPlan


class Path(NamedTuple):
    """One way to compute a call: its name, whether it computes a planned call, and how."""

    name: str
    fits: Callable[[ConvPlan, Variant, torch.Tensor, torch.Tensor], bool]
    run: Callable[[ConvPlan, torch.Tensor, torch.Tensor, torch.Tensor | None, Variant], torch.Tensor]


def _pointwise(
    plan: ConvPlan, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, variant: Variant
) -> torch.Tensor:
    output = pointwise_conv(input, weight, bias, variant, plan.geometry, plan.groups)
    # torch's layout for the output (channels-last in, channels-last out)
    return output.contiguous(memory_format=output_memory_format(input, weight))


def _tap_loops(
    plan: ConvPlan, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, variant: Variant
) -> torch.Tensor:
    output = tap_loops_conv(input, weight, bias, variant, plan.geometry, plan.groups, plan.budget)
    return output.contiguous(memory_format=output_memory_format(input, weight))


def _tap_products(
    plan: ConvPlan, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, variant: Variant
) -> torch.Tensor:
    output = tap_products_conv(input, weight, bias, variant, plan.geometry, plan.groups, plan.budget)
    return output.contiguous(memory_format=output_memory_format(input, weight))


def _triton(
    plan: ConvPlan, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, variant: Variant
) -> torch.Tensor:
    output = triton_conv(input, weight, bias, variant, plan.geometry, plan.groups)
    return output.contiguous(memory_format=output_memory_format(input, weight))


def _tap_forward(
    plan: ConvPlan, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, variant: Variant
) -> torch.Tensor:
    """The fields path with the tap products' forward (``tap_forward_fits``)."""
    forward = partial(tap_products_forward, variant, plan.geometry, plan.groups, plan.budget)
    return _fields(plan, input, weight, bias, variant, forward)


def _fields(
    plan: ConvPlan,
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    variant: Variant,
    forward: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None, bool], ForwardResult] | None = None,
) -> torch.Tensor:
    arguments = variant_arguments(variant)
    if arguments is not None and machinery_watches(input, weight, bias):
        return run_generalized_conv(
            input, weight, bias, variant, arguments, plan.geometry, plan.groups, plan.budget
        )
    if forward is not None and not records_graph(input, weight, bias):
        return forward(input, weight, bias, False)[0]
    # the plain autograd Function: for a variant not registered by name (no compile, export or
    # torch.func), and in plain eager calls, where the custom operator's dispatch (its arguments
    # bound and flattened, forward and backward) cost as much as a small layer's whole work
    if arguments is None:
        function_plan = fields_plan(input, weight, variant, plan.geometry, plan.groups, plan.budget)
    else:
        # the operator's own plan, cached on its arguments: a plan of many chunks costs to make
        geometry = plan.geometry
        function_plan = op_plan(
            arguments[0],
            arguments[1],
            tuple(input.shape),
            tuple(weight.shape),
            input.dtype,
            geometry.stride,
            tuple(op_padding(geometry)),
            geometry.dilation,
            plan.groups,
            plan.budget,
            torch.is_grad_enabled(),
        )
    if forward is not None:
        function_plan = replace(function_plan, forward=forward)
    tensors = [variant.options[name] for name in function_plan.option_names]
    if not records_graph(input, weight, bias, *tensors):
        # nothing to differentiate (inference): the forward alone, without autograd's Function
        return contract_chunks(input, weight, bias, function_plan, tuple(tensors))[0]
    return GeneralizedConvFunction.apply(input, weight, bias, function_plan, *tensors)


#: the paths, tried in this order; the fields path computes every call
PATHS = (
    Path(
        "pointwise",
        lambda plan, variant, input, weight: pointwise_fits(variant, input, plan.geometry),
        _pointwise,
    ),
    Path(
        "triton",
        lambda plan, variant, input, weight: triton_conv_fits(variant, input, weight, plan.groups),
        _triton,
    ),
    Path(
        "tap loops",
        lambda plan, variant, input, weight: tap_loops_fit(variant, input, weight, plan.groups),
        _tap_loops,
    ),
    Path(
        "tap products",
        lambda plan, variant, input, weight: tap_products_fit(variant, input, weight, plan.groups),
        _tap_products,
    ),
    Path(
        "tap forward",
        lambda plan, variant, input, weight: tap_forward_fits(variant, input, weight, plan.groups),
        _tap_forward,
    ),
    Path("fields", lambda plan, variant, input, weight: True, _fields),
)
_RUN = {path.name: path.run for path in PATHS}


def choose_path(plan: ConvPlan, variant: Variant, input: torch.Tensor, weight: torch.Tensor) -> str:
    """The name of the first path that fits ``plan`` (its own ``path`` is not read yet).

    >>> import torch
    >>> from anyconv.engine.plan import plan_conv
    >>> from anyconv.variants import L1, Cosine
    >>> x, w = torch.randn(1, 4, 6, 6), torch.randn(3, 4, 3, 3)
    >>> plan_conv(x, w, L1(), 1, 0, 1, 1, "zeros", None).path
    'fields'
    >>> plan_conv(x, w[:, :, :1, :1], Cosine(), 1, 0, 1, 1, "zeros", None).path
    'pointwise'
    """
    if transformed():
        # torch.func's transforms and forward mode see through the fields path's custom operator only
        return "fields"
    return next(path.name for path in PATHS if path.fits(plan, variant, input, weight))


def run_path(
    plan: ConvPlan, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, variant: Variant
) -> torch.Tensor:
    """Compute the call on the batched ``input`` (padded in a non-zero mode already) by the plan's path."""
    if not torch.compiler.is_compiling():
        # last_path() answers for this call (a global written in a trace would be a side effect)
        record_eager_call()
    return _RUN[plan.path](plan, input, weight, bias, variant)
