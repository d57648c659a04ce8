"""The engine as custom operators in the ``anyconv`` namespace: what compile, export and torch.func see.

``anyconv::generalized_conv`` runs the chunked forward, ``anyconv::generalized_conv_backward``
the backward; each has a fake implementation (shapes only), the forward an autograd formula,
both a vmap rule. Their arguments are schema types: the variant by its registered name and its
fixed options as text, the geometry as int lists, the memory budget as an int; the plan is
re-derived inside, from a cached function. A variant that is not registered by name (see
``anyconv.variants.register_variant``), or whose options are not numbers, bools or None, takes the plain
``GeneralizedConvFunction`` instead.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from dataclasses import replace
from functools import lru_cache
from typing import Any

import torch
from torch.fx.experimental.symbolic_shapes import guard_scalar

from ..functional.transforms import transformed
from ..geometry import Geometry, make_geometry
from ..variants import BUILTIN_VARIANTS, Variant
from .backward_choice import Backward, choose_backward, differentiable_twice, saved_for
from .blocks import bias_grad
from .contraction import Plan, contract_chunks, gradients, options_of
from .fields_plan import fields_plan
from .machinery import records_graph
from .ops_key import plan_of
from .ops_memory_format import empty_like_input
from .ops_second_order import formula_tangent, second_order_gradients
from .ops_vmap import forward_rule, looped


def variant_arguments(variant: Variant) -> tuple[str, str, tuple[torch.Tensor, ...]] | None:
    """(registered name, options as text, option tensors) of ``variant``; None if it has no name.

    The text lists the fixed options as ``name=repr(value)``, then the tensor options' names.

    >>> variant_arguments(BUILTIN_VARIANTS["rbf"](gamma=0.5))
    ('rbf', 'gamma=0.5|', ())
    """
    if BUILTIN_VARIANTS.get(variant.name) is not type(variant):
        return None
    fixed, names, tensors = [], [], []
    for name, value in variant.options.items():
        if isinstance(value, torch.Tensor):
            names.append(name)
            tensors.append(value)
        elif value is None or type(value) is bool:
            fixed.append(f"{name}={value!r}")
        elif type(value) in (int, float):
            # torch.compile(dynamic=True) traces a number it finds as a symbol: an option is a
            # constant of the call instead (a guard on its value, a recompile if it changes)
            fixed.append(f"{name}={guard_scalar(value)!r}")
        else:
            return None
    return variant.name, ",".join(fixed) + "|" + ",".join(names), tuple(tensors)


def op_variant(name: str, options: str) -> Variant:
    """The variant that :func:`variant_arguments` described (cached).

    >>> op_variant(*variant_arguments(BUILTIN_VARIANTS["l1"](adder_grad=True))[:2])
    L1(adder_grad=True)
    """
    return _variant(name, options)[0]


@lru_cache(maxsize=256)
def op_geometry(
    input_size: tuple[int, ...],
    kernel_size: tuple[int, ...],
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
) -> Geometry:
    """The geometry of the ops' schema arguments; ``padding`` flat (before, after per dimension).

    >>> op_geometry((5, 5), (3, 3), (1, 1), (1, 1, 0, 0), (1, 1)).output_size
    (5, 3)
    """
    return make_geometry(input_size, kernel_size, stride, tuple(zip(padding[::2], padding[1::2])), dilation)


def op_padding(geometry: Geometry) -> list[int]:
    """The ops' ``padding`` argument of ``geometry``: (before, after) per spatial dimension, flat.

    >>> op_padding(make_geometry((5, 5), 3, padding=((2, 0), (1, 1))))
    [2, 0, 1, 1]
    """
    return [amount for pair in geometry.padding for amount in pair]


@lru_cache(maxsize=256)
def _variant(name: str, options: str) -> tuple[Variant, tuple[str, ...], tuple[tuple[str, object], ...]]:
    fixed_text, _, names = options.partition("|")
    fixed = tuple(
        (key, ast.literal_eval(value))
        for key, _, value in (item.partition("=") for item in fixed_text.split(",") if item)
    )
    tensor_names = tuple(name for name in names.split(",") if name)
    return BUILTIN_VARIANTS[name](**dict(fixed)), tensor_names, fixed


@lru_cache(maxsize=1024)
def op_plan(
    variant: str,
    options: str,
    input_shape: tuple[int, ...],
    weight_shape: tuple[int, ...],
    dtype: torch.dtype,
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
    groups: int,
    memory_budget: int,
    grad_mode: bool = True,
) -> Plan:
    """The engine's plan for one call of the ops, from their schema arguments (cached); one per
    ``grad_mode`` (whether the call's grad mode records), so that a plain eager call takes its
    plan as it is."""
    instance, tensor_names, fixed = _variant(variant, options)
    geometry = op_geometry(input_shape[2:], weight_shape[2:], stride, padding, dilation)
    meta: dict[str, Any] = {"dtype": dtype, "device": "meta"}
    plan = fields_plan(
        torch.empty(input_shape, **meta),
        torch.empty(weight_shape, **meta),
        instance,
        geometry,
        groups,
        memory_budget,
    )
    return replace(plan, option_names=tensor_names, fixed_options=fixed, grad_mode=grad_mode)


@torch.library.custom_op("anyconv::generalized_conv", mutates_args=())
def generalized_conv_op(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    option_tensors: list[torch.Tensor],
    variant: str,
    options: str,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    memory_budget: int,
    keep_output: bool,
    keep_kept: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(output, kept): the forward over all chunks; ``kept`` is empty unless ``keep_kept``.

    ``padding`` holds (before, after) per spatial dimension; ``keep_output`` (the output is saved
    for the backward, which then reads it) does not change the computation.
    """
    plan = plan_of(op_plan, input, weight, variant, options, stride, padding, dilation, groups, memory_budget)
    output, kept = contract_chunks(input, weight, bias, plan, tuple(option_tensors), keep=keep_kept)
    return output, input.new_empty(0) if kept is None else kept


def output_size(
    input_size: Sequence[int],
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
) -> list:
    """The spatial output size; plain arithmetic, so that symbolic sizes pass through it.

    >>> output_size((7, 6), (3, 3), (2, 1), (1, 1, 0, 0), (1, 1))
    [4, 4]
    """
    return [
        (size + padding[2 * axis] + padding[2 * axis + 1] - spacing * (kernel - 1) - 1) // step + 1
        for axis, (size, kernel, step, spacing) in enumerate(zip(input_size, kernel_size, stride, dilation))
    ]


@generalized_conv_op.register_fake
def _(
    input,
    weight,
    bias,
    option_tensors,
    variant,
    options,
    stride,
    padding,
    dilation,
    groups,
    memory_budget,
    keep_output,
    keep_kept,
):
    shape = (
        input.shape[0],
        weight.shape[0],
        *output_size(input.shape[2:], weight.shape[2:], stride, padding, dilation),
    )
    output = empty_like_input(input, weight, shape)
    return output, input.new_empty(shape if keep_kept else 0)


@torch.library.custom_op("anyconv::generalized_conv_backward", mutates_args=())
def generalized_conv_backward_op(
    grad_output: torch.Tensor,
    input: torch.Tensor,
    weight: torch.Tensor,
    option_tensors: list[torch.Tensor],
    output: torch.Tensor | None,
    kept: torch.Tensor | None,
    variant: str,
    options: str,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    memory_budget: int,
    needs: list[bool],
) -> list[torch.Tensor]:
    """[grad input, grad weight], each empty where ``needs`` (two flags) says False.

    ``output`` and ``kept``: what the forward saved for a variant that reads them, else None.
    Option tensors get no gradient here: autograd takes those (``ops_second_order``).
    """
    plan = plan_of(op_plan, input, weight, variant, options, stride, padding, dilation, groups, memory_budget)
    all_needs = (*needs, *(False for _ in option_tensors))
    grad_input, grad_weight, _ = gradients(
        plan, input, weight, grad_output, tuple(option_tensors), (output, kept), all_needs
    )
    return [input.new_empty(0) if gradient is None else gradient for gradient in (grad_input, grad_weight)]


@generalized_conv_backward_op.register_fake
def _(
    grad_output,
    input,
    weight,
    option_tensors,
    output,
    kept,
    variant,
    options,
    stride,
    padding,
    dilation,
    groups,
    memory_budget,
    needs,
):
    # the engine's gradients: zeros_like the input, the weight's contiguous
    shapes = [torch.empty_like(input), weight.new_empty(weight.shape)]
    return [shape if needed else input.new_empty(0) for shape, needed in zip(shapes, needs)]


def _save(
    ctx: Any,
    input: torch.Tensor,
    weight: torch.Tensor,
    option_tensors: Sequence[torch.Tensor],
    output: tuple[torch.Tensor, torch.Tensor],
    arguments: Sequence[Any],
) -> None:
    """Keep what the backward reads: inputs, and the output and kept values when the forward kept them."""
    *arguments, keep_output, keep_kept = arguments
    result, kept = output
    saved = (result if keep_output else None, kept if keep_kept else None)
    ctx.save_for_backward(input, weight, *saved, *option_tensors)
    ctx.arguments = tuple(arguments)


def _gradients(ctx: Any, grad_output: torch.Tensor, needs: tuple[bool, ...]) -> tuple:
    """(grad input, grad weight, [grad options]) from what :func:`_save` kept; ``needs`` as the
    engine's (input, weight, *options). With ``create_graph`` they can be differentiated again."""
    input, weight, output, kept, *option_tensors = ctx.saved_tensors
    option_tensors = tuple(option_tensors)

    def engine_gradients() -> tuple:
        # through the op, which torch.func and the compilers see (no data pointers of their
        # tensors), on detached tensors: a graph through it is _refused's, never the op's
        tensors = [
            None if tensor is None else tensor.detach()
            for tensor in (grad_output, input, weight, output, kept)
        ]
        grad, values, weights, saved_output, saved_kept = tensors
        detached_options = [tensor.detach() for tensor in option_tensors]
        found = generalized_conv_backward_op(
            grad, values, weights, detached_options, saved_output, saved_kept, *ctx.arguments, list(needs[:2])
        )
        grad_input, grad_weight = (gradient if needed else None for gradient, needed in zip(found, needs))
        return grad_input, grad_weight, (None,) * len(option_tensors)

    sources = (grad_output, input, weight, *option_tensors)
    builds_graph = records_graph(*sources)
    # autograd through contract cannot run inside the op (it runs below autograd): it runs here
    variant = _variant(*ctx.arguments[:2])[0]
    if not builds_graph and choose_backward(variant, needs[2:]) is not Backward.AUTOGRAD:
        grad_input, grad_weight, grad_options = engine_gradients()
        return grad_input, grad_weight, list(grad_options)
    plan = plan_of(op_plan, input, weight, *ctx.arguments)
    options = options_of(plan, option_tensors, weight.shape[0] // plan.groups)
    grad_input, grad_weight, grad_options = second_order_gradients(
        plan, input, weight, grad_output, option_tensors, options, needs, engine_gradients
    )
    return grad_input, grad_weight, list(grad_options)


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    input, weight, _, option_tensors, *arguments = inputs
    _save(ctx, input, weight, option_tensors, output, arguments)


def _backward(ctx: Any, grad_output: torch.Tensor, grad_kept: torch.Tensor) -> tuple:
    needs_input, needs_weight, needs_bias, needs_options = ctx.needs_input_grad[:4]
    grad_input, grad_weight, grad_options = _gradients(
        ctx, grad_output, (needs_input, needs_weight, *needs_options)
    )
    grad_bias = bias_grad(grad_output) if needs_bias else None
    return (grad_input, grad_weight, grad_bias, grad_options, *(None,) * (len(ctx.arguments) + 2))


generalized_conv_op.register_autograd(_backward, setup_context=_setup_context)


class GeneralizedConvOp(torch.autograd.Function):
    """``anyconv::generalized_conv`` with the same autograd formula, in the form torch.func accepts.

    An op's registered autograd formula runs in an autograd.Function without ``setup_context``,
    which torch.func.grad and vmap refuse; this one has it, and a generated vmap rule (the ops').
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(
        input: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        arguments: Sequence[Any],
        *option_tensors: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return generalized_conv_op(input, weight, bias, list(option_tensors), *arguments)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        input, weight, _, arguments, *option_tensors = inputs
        _save(ctx, input, weight, option_tensors, output, arguments)
        ctx.save_for_forward(input, weight, *option_tensors)
        ctx.mark_non_differentiable(output[1])

    @staticmethod
    def jvp(
        ctx: Any,
        input_tangent: torch.Tensor | None,
        weight_tangent: torch.Tensor | None,
        bias_tangent: torch.Tensor | None,
        _: Any,
        *option_tangents: torch.Tensor | None,
    ) -> tuple[torch.Tensor, None]:
        """Forward mode (``jvp``, ``jacfwd``, ``torch.func.hessian``): the formula's own tangent."""
        input, weight, *option_tensors = ctx.saved_tensors
        plan = plan_of(op_plan, input, weight, *ctx.arguments)
        if not differentiable_twice(plan.variant):
            raise RuntimeError(
                f"anyconv: no forward-mode derivative (jvp, jacfwd, torch.func.hessian) for variant "
                f"{plan.variant.name!r}: its derivative is its own backward code; take reverse mode "
                "(torch.func.vjp, jacrev, grad) instead"
            )
        sources = (input, weight, *option_tensors)
        tangent = formula_tangent(plan, sources, (input_tangent, weight_tangent, *option_tangents))
        if bias_tangent is not None:
            tangent = tangent + bias_tangent.reshape(-1, *(1,) * (tangent.dim() - 2))
        return tangent, None

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor, grad_kept: torch.Tensor) -> tuple:
        needs_input, needs_weight, needs_bias, _, *needs_options = ctx.needs_input_grad
        grad_input, grad_weight, grad_options = _gradients(
            ctx, grad_output, (needs_input, needs_weight, *needs_options)
        )
        grad_bias = bias_grad(grad_output) if needs_bias else None
        return grad_input, grad_weight, grad_bias, None, *grad_options


def keeps(variant: Variant, option_tensors: tuple[torch.Tensor, ...]) -> tuple[bool, bool]:
    """(keep the output, keep the kept values) for a backward of ``variant``, when autograd records.

    >>> keeps(BUILTIN_VARIANTS["rbf"](), ())
    (True, False)
    """
    return saved_for(variant, choose_backward(variant, [tensor.requires_grad for tensor in option_tensors]))


def schema_arguments(
    name: str, options: str, geometry: Geometry, groups: int, memory_budget: int
) -> tuple[str, str, list[int], list[int], list[int], int, int]:
    """The operators' arguments after their tensors, as their schemas type them: the variant's name
    and options, the geometry as int lists, groups and the memory budget.

    >>> from anyconv.geometry import make_geometry
    >>> schema_arguments("dot", "", make_geometry((5, 5), 3, padding=1), 1, 2**20)[2:5]
    ([1, 1], [1, 1, 1, 1], [1, 1])
    """
    return (
        name,
        options,
        list(geometry.stride),
        op_padding(geometry),
        list(geometry.dilation),
        groups,
        memory_budget,
    )


def run_generalized_conv(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    variant: Variant,
    arguments: tuple[str, str, tuple[torch.Tensor, ...]],
    geometry: Geometry,
    groups: int,
    memory_budget: int,
) -> torch.Tensor:
    """The engine's forward through ``anyconv::generalized_conv``.

    ``arguments`` come from :func:`variant_arguments`.

    ``geometry`` has zero padding or none (a non-zero mode is padded before).
    """
    name, options, option_tensors = arguments
    tensors = (input, weight, *(() if bias is None else (bias,)), *option_tensors)
    records = records_graph(*tensors)
    keep_output, keep_kept = keeps(variant, option_tensors) if records else (False, False)
    op_arguments = (*schema_arguments(name, options, geometry, groups, memory_budget), keep_output, keep_kept)
    # a backward that reads the output gets it before bias: the bias then goes on after
    bias_in = None if keep_output else bias
    if not torch.compiler.is_compiling() and transformed():
        output, _ = GeneralizedConvOp.apply(input, weight, bias_in, op_arguments, *option_tensors)
    else:
        # the op itself: GeneralizedConvOp.apply binds its arguments by signature on every call
        output, _ = generalized_conv_op(input, weight, bias_in, list(option_tensors), *op_arguments)
    if keep_output and bias is not None:
        output = output + bias.view(-1, *(1,) * geometry.ndim)
    return output


torch.library.register_vmap(generalized_conv_op, forward_rule(generalized_conv_op))
torch.library.register_vmap(
    generalized_conv_backward_op,
    lambda info, in_dims, *args: looped(generalized_conv_backward_op, info, in_dims, *args),
)
