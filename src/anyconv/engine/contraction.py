"""The engine's autograd Function: fields meet filters chunk by chunk, forward and backward.

Forward never holds more than one chunk of fields, or takes the plan's own forward, which copies
none (the tap products' on a dense layer: ``Plan.forward``). Backward keeps only the input, the
weight and the variant's option tensors (and the output or kept values its backward reads).
The backward is the one ``backward_choice.choose_backward`` names: a product variant's gradients
as matrix products on shifted views of the input when the plan has ``tap_chunks``
(``product_gradients.tap_gradients``: no fields copied, none folded); otherwise each chunk's
fields are recomputed, the variant gives their gradients (from ``product_backward``, its own
``contract_backward``, or autograd through ``contract`` one chunk at a time) and they are folded
back into the input with col2im.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..geometry import Geometry
from ..variants import Dot, ProductVariant, Variant
from ..variants.filter_sums import FilterGradientSum
from .backward_choice import Backward, choose_backward, reads_of, saved_for
from .blocks import as_chunk_result, bias_grad, chunk_results, output_block, write_block
from .chunks import Chunk
from .field_products import has_plain_gradients, is_plain_product, write_products
from .fields import add_field_grads, chunk_fields, fields_buffer, filters_of, weight_of
from .fields_columns import column_gradients, columns_fit, write_column_products
from .ops_memory_format import empty_like_input
from .ops_second_order import second_order_gradients
from .product_gradients import field_gradients, tap_gradients
from .transposed_gradient import transposed_input_gradient

#: a forward's output and, where the backward reads one, its kept values
ForwardResult = tuple[torch.Tensor, torch.Tensor | None]


@dataclass(frozen=True)
class Plan:
    """What the Function needs besides tensors: geometry, groups, chunks, the variant."""

    geometry: Geometry
    groups: int
    chunks: tuple[Chunk, ...]
    variant: Variant
    option_names: tuple[str, ...]
    fixed_options: tuple[tuple[str, object], ...]
    #: grad mode at the call (forward runs without it, and needs_input_grad ignores it)
    grad_mode: bool = True
    #: chunks for a backward on shifted views (``Backward.VIEWS``), or None
    tap_chunks: tuple[Chunk, ...] | None = None
    #: the forward in place of the chunks' (``tap_products.tap_products_forward``), or None:
    #: ``(input, weight, bias, keep) -> (output, kept or None)``, no graph recorded
    forward: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None, bool], ForwardResult] | None = None
    #: the memory budget the chunks were planned for (None: the default), for the convolution
    #: that gives the standard product's input gradient (``transposed_gradient``)
    budget: int | None = None


def options_of(plan: Plan, option_tensors: tuple[torch.Tensor, ...], filters_per_group: int) -> dict:
    options: dict[str, object] = dict(plan.fixed_options)
    for name, value in zip(plan.option_names, option_tensors):
        # one value per output channel -> (G, 1, Og), broadcasting over the fields of a chunk
        options[name] = value.reshape(plan.groups, 1, filters_per_group) if value.dim() == 1 else value
    return options


def contract_chunks(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    plan: Plan,
    option_tensors: tuple[torch.Tensor, ...] = (),
    keep: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The forward pass without autograd: each chunk's fields meet the filters, written with ``bias``.

    Returns the output and, with ``keep``, what the variant's ``contract_and_keep`` kept for its
    backward (laid out like the output), else None.
    """
    geometry, groups = plan.geometry, plan.groups
    output = empty_like_input(input, weight, (input.shape[0], weight.shape[0], *geometry.output_size))
    buffer = fields_buffer(input, plan.chunks)
    plain = is_plain_product(plan.variant)
    if plain and not keep and columns_fit(input):
        # the standard product from columns: no channels-last slab, no reordered weight
        for chunk in plan.chunks:
            block = output_block(output, chunk, groups)
            write_column_products(block, input, weight, bias, geometry, chunk, groups, buffer)
        return output, None
    filters = filters_of(weight, groups)
    options = options_of(plan, option_tensors, filters.shape[1])
    kept = None
    for chunk in plan.chunks:
        fields = chunk_fields(input, geometry, chunk, groups, buffer)
        if keep:
            assert isinstance(plan.variant, ProductVariant), "only a product variant keeps values"
            result, kept_part = plan.variant.contract_and_keep(fields, filters, **options)
            kept = kept_part.new_empty(output.shape) if kept is None else kept
            write_block(output_block(kept, chunk, groups), kept_part)
        elif plain:
            write_products(output_block(output, chunk, groups), fields, filters, bias)
            continue
        else:
            result = plan.variant.contract(fields, filters, **options)
        write_block(output_block(output, chunk, groups), result, bias, plan.variant)
    return output, kept


class GeneralizedConvFunction(torch.autograd.Function):
    """``output = variant(fields(input), weight) + bias`` over all chunks; see the module docstring.

    The input is unpadded, or padded already in a non-zero mode (then ``plan.geometry`` has no
    padding): zero padding is applied per chunk.
    """

    @staticmethod
    def forward(
        ctx: Any,
        input: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        plan: Plan,
        *option_tensors: torch.Tensor,
    ) -> torch.Tensor:
        geometry, variant = plan.geometry, plan.variant
        # a backward that uses the output gets it before bias: the bias then goes on a copy, after
        records_graph = plan.grad_mode and any(ctx.needs_input_grad)
        backward = choose_backward(variant, ctx.needs_input_grad[4:], plan.tap_chunks is not None)
        keeps_output, keeps_kept = saved_for(variant, backward) if records_graph else (False, False)
        if plan.forward is not None:
            output, kept = plan.forward(input, weight, None if keeps_output else bias, keeps_kept)
        else:
            output, kept = contract_chunks(
                input, weight, None if keeps_output else bias, plan, option_tensors, keep=keeps_kept
            )
        ctx.plan = plan
        ctx.keeps_output, ctx.keeps_kept = keeps_output, keeps_kept
        extra = (*((output,) if keeps_output else ()), *((kept,) if keeps_kept else ()))
        ctx.save_for_backward(input, weight, *option_tensors, *extra)
        if keeps_output and bias is not None:
            return output + bias.view(-1, *(1,) * len(geometry.output_size))
        # without bias the tensor saved is the one returned: torch's version counter catches an
        # in-place change of it before the backward reads it
        return output

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        plan: Plan = ctx.plan
        input, weight, *option_tensors = ctx.saved_tensors
        kept = option_tensors.pop() if ctx.keeps_kept else None
        output = option_tensors.pop() if ctx.keeps_output else None
        needs = (*ctx.needs_input_grad[:2], *ctx.needs_input_grad[4:])
        if torch.is_grad_enabled():
            # create_graph: gradients that can be differentiated again (or refuse to be)
            option_tensors = tuple(option_tensors)
            options = options_of(plan, option_tensors, weight.shape[0] // plan.groups)
            grad_input, grad_weight, grad_options = second_order_gradients(
                plan,
                input,
                weight,
                grad_output,
                option_tensors,
                options,
                needs,
                lambda: gradients(plan, input, weight, grad_output, option_tensors, (output, kept), needs),
            )
        else:
            grad_input, grad_weight, grad_options = gradients(
                plan, input, weight, grad_output, tuple(option_tensors), (output, kept), needs
            )
        grad_bias = bias_grad(grad_output) if ctx.needs_input_grad[2] else None
        return grad_input, grad_weight, grad_bias, None, *grad_options


def gradients(
    plan: Plan,
    input: torch.Tensor,
    weight: torch.Tensor,
    grad_output: torch.Tensor,
    option_tensors: tuple[torch.Tensor, ...],
    saved: tuple[torch.Tensor | None, torch.Tensor | None],
    needs: tuple[bool, ...],
) -> tuple[torch.Tensor | None, torch.Tensor | None, tuple[torch.Tensor | None, ...]]:
    """The backward pass without autograd: gradients of the input, the weight and the option tensors.

    ``saved``: the forward's output (before bias) and kept values, each None unless the variant
    reads it; ``needs``: which of (input, weight, *option_tensors) want a gradient (None if not).
    """
    output, kept = saved
    filters_per_group = weight.shape[0] // plan.groups
    options = options_of(plan, option_tensors, filters_per_group)
    needs_input, needs_weight = needs[:2]
    needs_options = tuple(needs[2:])
    grad_options: tuple = (None,) * len(option_tensors)
    backward = choose_backward(plan.variant, needs_options, plan.tap_chunks is not None)
    grad_input = grad_weight = None
    geometry = plan.geometry
    if (
        needs_input
        and backward is Backward.PRODUCT
        and type(plan.variant) is Dot
        and (geometry.padding_mode == "zeros" or not geometry.is_padded)
    ):
        # the standard product's input gradient as a convolution, where it is one and measured faster
        grad_input = transposed_input_gradient(
            grad_output,
            weight,
            geometry.stride,
            geometry.padding,
            geometry.dilation,
            plan.groups,
            plan.budget,
        )
        needs_input = grad_input is None
        needs = (needs_input, *needs[1:])
    if backward is Backward.VIEWS:
        assert isinstance(plan.variant, ProductVariant) and plan.tap_chunks is not None
        grad_input, grad_weight = tap_gradients(
            plan.variant,
            input,
            weight,
            grad_output,
            output,
            kept,
            plan.geometry,
            plan.groups,
            plan.tap_chunks,
            options,
            needs_input,
            needs_weight,
        )
    elif any(needs):
        found, grad_weight, grad_options = _fields_backward(
            plan, backward, input, weight, grad_output, (output, kept), options, option_tensors, needs
        )
        grad_input = found if needs_input else grad_input
    if grad_weight is not None:
        # contiguous like the parameter: DDP buckets and optimisers expect its strides
        grad_weight = grad_weight.contiguous()
    return grad_input, grad_weight, grad_options


def _fields_backward(
    plan: Plan,
    backward: Backward,
    input: torch.Tensor,
    weight: torch.Tensor,
    grad_output: torch.Tensor,
    saved: tuple[torch.Tensor | None, torch.Tensor | None],
    options: dict,
    option_tensors: tuple[torch.Tensor, ...],
    needs: tuple[bool, ...],
) -> tuple[torch.Tensor | None, torch.Tensor | None, tuple[torch.Tensor | None, ...]]:
    """Recompute each chunk's fields, take their gradients as ``backward`` says and fold them back.

    ``saved``: the forward's output and kept values, each None unless the variant reads it.
    """
    output, kept = saved
    geometry, groups, variant = plan.geometry, plan.groups, plan.variant
    filters = filters_of(weight, groups)
    needs_input, needs_weight = needs[:2]
    needs_options = needs[2:]
    # the forward's centre, once for every chunk (a product variant of p - w far from zero)
    centre = None
    if backward is Backward.PRODUCT and isinstance(variant, ProductVariant):
        centre = variant.gradient_centre(filters)
    grad_input = torch.zeros_like(input) if needs_input else None
    # a backward that sums its own filter gradient over the chunks (the fused loops, in their
    # layout) is handed one running sum, read once at the end
    filter_sum = None
    if backward is Backward.OWN and needs_weight and "filter_sum" in variant.reads:
        filter_sum = FilterGradientSum(filters)
    # the standard product's backward: its weight gradient from the native columns, in the
    # weight's own order (G, Og, Cg * K), no fields copied
    by_columns = backward is Backward.PRODUCT and has_plain_gradients(variant) and columns_fit(input)
    grad_filters = None
    if needs_weight and filter_sum is None:
        per_group = (groups, weight.shape[0] // groups, weight[0].numel())
        grad_filters = weight.new_zeros(per_group) if by_columns else torch.zeros_like(filters)
    grad_options = [
        torch.zeros_like(value) if needed else None for value, needed in zip(option_tensors, needs_options)
    ]
    buffer = fields_buffer(input, plan.chunks)
    for chunk in plan.chunks:
        grad = as_chunk_result(output_block(grad_output, chunk, groups))
        chunk_option_grads: tuple = ()
        grad_fields: torch.Tensor | None
        grad_chunk_filters: torch.Tensor | None
        if by_columns:
            grad_fields, grad_chunk_filters = column_gradients(
                input, filters, grad, geometry, chunk, buffer, needs_input, needs_weight
            )
        else:
            fields = chunk_fields(input, geometry, chunk, groups, buffer)
            own_output, own_kept = chunk_results((output, kept), chunk, groups)
            if backward is Backward.PRODUCT:
                assert isinstance(variant, ProductVariant)
                grad_fields, grad_chunk_filters = field_gradients(
                    variant, fields, filters, grad, own_output, own_kept, options, centre
                )
            elif backward is Backward.OWN:
                assert variant.contract_backward is not None
                reads = reads_of(variant, own_output, filter_sum=filter_sum)
                grad_fields, grad_chunk_filters = variant.contract_backward(
                    fields, filters, grad, **reads, **options
                )
            else:
                grad_fields, grad_chunk_filters, chunk_option_grads = _autograd_chunk(
                    plan, fields, filters, options, grad, needs_input, needs_weight, needs_options
                )
        if needs_input:
            assert grad_input is not None and grad_fields is not None
            add_field_grads(grad_input, grad_fields, geometry, chunk)
        if needs_weight and filter_sum is None:
            assert grad_filters is not None and grad_chunk_filters is not None
            grad_filters += grad_chunk_filters
        for total, part in zip(grad_options, chunk_option_grads):
            if total is not None and part is not None:
                total += part.reshape(total.shape) if total.dim() == 1 else part
        # dropped before the next chunk's are made: a filter-sized part (and the buffers it is a
        # view of) held across the next call would double the backward's filter-sized memory
        grad_fields = grad_chunk_filters = None
        chunk_option_grads = ()
    if filter_sum is not None:
        grad_filters = filter_sum.total()
    grad_weight = None
    if needs_weight:
        assert grad_filters is not None
        grad_weight = grad_filters.view_as(weight) if by_columns else weight_of(grad_filters, weight)
    return grad_input, grad_weight, tuple(grad_options)


def _autograd_chunk(
    plan: Plan,
    fields: torch.Tensor,
    filters: torch.Tensor,
    options: dict,
    grad: torch.Tensor,
    needs_input: bool,
    needs_weight: bool,
    needs_options: tuple[bool, ...],
) -> tuple[torch.Tensor | None, torch.Tensor | None, tuple[torch.Tensor | None, ...]]:
    """Differentiate the variant's ``contract`` on one chunk, freeing the chunk's graph after."""
    with torch.enable_grad():
        fields = fields.detach().requires_grad_(needs_input)
        filters = filters.detach().requires_grad_(needs_weight)
        tensor_options = {}
        for name, needed in zip(plan.option_names, needs_options):
            tensor_options[name] = options[name].detach().requires_grad_(needed)
        result = plan.variant.contract(fields, filters, **{**options, **tensor_options})
        wanted = [fields, filters, *tensor_options.values()]
        mask = [needs_input, needs_weight, *needs_options]
        inputs = [tensor for tensor, needed in zip(wanted, mask) if needed]
        grads = iter(torch.autograd.grad(result, inputs, grad, allow_unused=True))
        answers = [next(grads) if needed else None for needed in mask]
    return answers[0], answers[1], tuple(answers[2:])
