"""The pointwise path's cosine when autograd records it: a backward that keeps only the fields and
the filters.

Composed, autograd keeps the products and the denominator |p| |w| + eps for the division's backward,
each as large as the output (a 1x1 layer that widens 96 channels to 384 has an output four times its
input). Here the forward computes the cosine without a graph, and the backward recomputes the
products s and the norms, then takes, with D = |p| |w| + eps, a = grad / D and r = a s / D,

- the fields' gradient: a times the filters, minus (sum over filters of r |w|) p / |p|;
- the filters' gradient: a times the fields, minus (sum over fields of r |p|) w / |w|,

the radial terms 0 where a norm is 0 (a zero field or filter has no direction: the fields path's
rule). Where eps is negligible against every |p| |w|, the same gradients come from the unit vectors
alone, with no output-sized tensor and no recomputed product (:func:`_unit_gradients`). A second
derivative (a backward asked for a graph) differentiates the composed form instead.

Two layouts, as the pointwise path multiplies them: ``rows`` (M, C) fields and (O, C) filters
giving (M, O) (a channels-last input, one group), or columns, (B, G, Cg, L) fields and (G, Og, Cg)
filters giving (B, G, Og, L).
"""

from __future__ import annotations

from typing import Any

import torch

from ..variants.matrix_products import (
    filters_gradient,
    filters_times_columns,
    row_product,
    rows_transposed_product,
)
from .graph_gradients import gradients_as_graph
from .tap_norms import direction, divide_by_norms, eps_negligible, safe_sqrt

#: fields (elements) up to which torch's vector_norm takes their norms in columns: over the
#: channels, a middle dimension, it is slower than a sum of squares on larger fields, but on small
#: ones it is one autograd node where the sum and the safe root are three
SMALL_FIELDS = 2**14
#: outputs from which a recorded call takes the recomputing backward: below, memory is no matter and
#: the composed form's few autograd nodes cost less than this backward's Python (a squeeze-excitation
#: layer, 1x1 on 1x1 images, ran slower with it: docs/benchmarks.md)
RECOMPUTE_OUTPUTS = 2**16


def pointwise_cosine(
    fields: torch.Tensor, filters: torch.Tensor, bias: torch.Tensor | None, eps: float, rows: bool
) -> torch.Tensor:
    """The cosine of every field with every filter, plus ``bias``, in the layout ``rows`` names
    (module docstring), for calls that record a graph.

    >>> import torch
    >>> fields = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    >>> filters = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    >>> torch.autograd.gradcheck(lambda p, w: pointwise_cosine(p, w, None, 1e-8, True), (fields, filters))
    True
    """
    return _PointwiseCosine.apply(fields, filters, bias, eps, rows)


def recomputes(fields: torch.Tensor, filters: torch.Tensor, rows: bool) -> bool:
    """Whether a recorded call takes :func:`pointwise_cosine`: its output has at least
    ``RECOMPUTE_OUTPUTS`` elements.

    >>> recomputes(torch.ones(8, 96), torch.ones(24, 96), rows=True)
    False
    """
    return _output_count(fields, filters, rows) >= RECOMPUTE_OUTPUTS


def composed_cosine(
    fields: torch.Tensor, filters: torch.Tensor, eps: float, rows: bool, recording: bool
) -> torch.Tensor:
    """The cosine composed from the product, the norms and the division, autograd through each
    where ``recording``; no bias. Not recording, where eps is negligible against every |p| |w|
    (:func:`eps_negligible`), the product of the unit vectors p / |p| and w / |w|: one pass over
    the fields where the division took two over the output (a 1x1 layer that widens its channels
    has an output several times its input)."""
    output, _ = _cosine_and_units(fields, filters, eps, rows, recording)
    return output


def _cosine_and_units(
    fields: torch.Tensor, filters: torch.Tensor, eps: float, rows: bool, recording: bool
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
    """:func:`composed_cosine`, and where it multiplied the unit vectors, those with the norms:
    (p / |p|, w / |w|, |p|, |w|), which the recorded call's backward takes as they are."""
    if rows or fields.numel() <= SMALL_FIELDS:
        # a zero field gets the fields path's gradient (0) from either
        field_norms = torch.linalg.vector_norm(fields, dim=_channels(rows), keepdim=True)
    else:
        field_norms = safe_sqrt((fields * fields).sum(_channels(rows), keepdim=True))
    filter_norms = torch.linalg.vector_norm(filters, dim=-1, keepdim=not rows)
    if not recording and fields.shape[_channels(rows)] <= filters.shape[-2]:
        if eps_negligible(field_norms, filter_norms, eps, _output_count(fields, filters, rows)):
            units = filters / (filter_norms[:, None] if rows else filter_norms)
            unit_fields = fields / field_norms
            return _products(unit_fields, units, rows), (unit_fields, units, field_norms, filter_norms)
    output = divide_by_norms(_products(fields, filters, rows), field_norms, filter_norms, eps, recording)
    return output, None


def _unit_gradients(
    grad: torch.Tensor,
    unit_fields: torch.Tensor,
    units: torch.Tensor,
    field_norms: torch.Tensor,
    filter_norms: torch.Tensor,
    rows: bool,
    needs: tuple[bool, ...],
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """:func:`_gradients` where eps is negligible against every |p| |w| (:func:`eps_negligible`:
    no norm is zero or NaN), so that y = p^ . w^ with the unit vectors p^ = p / |p| and
    w^ = w / |w|. The gradients are then the dot's, of the unit vectors, each projected off its own
    direction and divided by its norm:

    - the fields': with T = the sum over filters of grad w^, (T - p^ (p^ . T)) / |p|;
    - the filters': with Q = the sum over fields of grad p^, (Q - w^ (w^ . Q)) / |w|.

    No output-sized tensor is made beyond the gradient itself, and the products are not recomputed.
    """
    norms = filter_norms[:, None] if rows else filter_norms
    grad_fields = grad_filters = None
    if needs[0]:
        along = filters_times_columns(units.mT, grad) if not rows else row_product(grad, units.mT, None)
        along.addcmul_(unit_fields, (unit_fields * along).sum(_channels(rows), keepdim=True), value=-1)
        grad_fields = along.div_(field_norms)
    if needs[1]:
        if rows:
            across = rows_transposed_product(grad, unit_fields)
        else:
            # (B, G, Og, L) x (B, G, L, Cg), summed over the samples: (G, Og, Cg)
            across = filters_gradient(grad, unit_fields)
        across.addcmul_(units, (units * across).sum(-1, keepdim=True), value=-1)
        grad_filters = across.div_(norms)
    return grad_fields, grad_filters


def _output_count(fields: torch.Tensor, filters: torch.Tensor, rows: bool) -> int:
    """The number of outputs: fields (M, C) or (B, G, Cg, L) meet filters (O, C) or (G, Og, Cg)."""
    return fields.numel() // fields.shape[_channels(rows)] * filters.shape[-2]


def _channels(rows: bool) -> int:
    """The fields' channel dimension."""
    return -1 if rows else -2


def _products(fields: torch.Tensor, filters: torch.Tensor, rows: bool) -> torch.Tensor:
    return row_product(fields, filters, None) if rows else filters_times_columns(filters, fields)


def bias_view(bias: torch.Tensor, filters: torch.Tensor, rows: bool) -> torch.Tensor:
    """``bias`` (O,) as it broadcasts against the output: along the rows' last dimension, or
    (G, Og, 1) against the columns' (B, G, Og, L)."""
    return bias if rows else bias.view(*filters.shape[:2], 1)


class _PointwiseCosine(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        fields: torch.Tensor,
        filters: torch.Tensor,
        bias: torch.Tensor | None,
        eps: float,
        rows: bool,
    ) -> torch.Tensor:
        output, unit_vectors = _cosine_and_units(fields, filters, eps, rows, recording=False)
        if bias is not None:
            output += bias_view(bias, filters, rows)
        # the unit vectors and norms the product was made of, where it was (the backward's own,
        # which it would otherwise make again): a tensor of the input's size more to keep
        ctx.save_for_backward(fields, filters, bias, *(unit_vectors or ()))
        ctx.eps, ctx.rows = eps, rows
        return output

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        fields, filters, bias, *unit_vectors = ctx.saved_tensors
        needs = ctx.needs_input_grad[:3]
        if torch.is_grad_enabled():
            # a graph of the gradients is asked for (a second derivative): the composed form's,
            # recomputed and differentiated by autograd
            def recompute() -> torch.Tensor:
                output = composed_cosine(fields, filters, ctx.eps, ctx.rows, recording=True)
                return output if bias is None else output + bias_view(bias, filters, ctx.rows)

            return (*gradients_as_graph(recompute, (fields, filters, bias), needs, grad), None, None)
        if unit_vectors:
            unit_fields, units, field_norms, filter_norms = unit_vectors
            grad_fields, grad_filters = _unit_gradients(
                grad, unit_fields, units, field_norms, filter_norms, ctx.rows, needs
            )
        else:
            grad_fields, grad_filters = _gradients(grad, fields, filters, ctx.eps, ctx.rows, needs)
        grad_bias = None
        if needs[2]:
            grad_bias = grad.sum(0) if ctx.rows else grad.sum((0, 3)).flatten()
        return grad_fields, grad_filters, grad_bias, None, None


def _gradients(
    grad: torch.Tensor,
    fields: torch.Tensor,
    filters: torch.Tensor,
    eps: float,
    rows: bool,
    needs: tuple[bool, ...],
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The fields' and filters' gradients (module docstring), with at most three tensors of the
    output's size alive at once: the gradient, the products (then y = s / D, then r = a y) and the
    denominator (then a = grad / D)."""
    field_norms = (fields * fields).sum(_channels(rows), keepdim=True).sqrt_()
    filter_norms = torch.linalg.vector_norm(filters, dim=-1, keepdim=not rows)
    if eps_negligible(field_norms, filter_norms, eps, _output_count(fields, filters, rows)):
        norms = filter_norms[:, None] if rows else filter_norms
        units, unit_fields = filters / norms, fields / field_norms
        return _unit_gradients(grad, unit_fields, units, field_norms, filter_norms, rows, needs)
    products = _products(fields, filters, rows)
    denominator = field_norms * filter_norms + eps
    products.div_(denominator)
    scaled = denominator.reciprocal_().mul_(grad)
    radial = products.mul_(scaled)
    grad_fields = grad_filters = None
    if needs[0]:
        to_fields = (radial * filter_norms).sum(-1 if rows else -2, keepdim=True)
        if rows:
            grad_fields = row_product(scaled, filters.mT, None)
        else:
            grad_fields = filters_times_columns(filters.mT, scaled)
        grad_fields -= direction(fields, field_norms) * to_fields
        del to_fields
    if needs[1]:
        reduced = (0,) if rows else (0, 3)
        to_filters = (radial * field_norms).sum(reduced)
        if rows:
            grad_filters = rows_transposed_product(scaled, fields)
            to_filters = to_filters[:, None]
        else:
            grad_filters = filters_gradient(scaled, fields)
            to_filters = to_filters[..., None]
        grad_filters -= direction(filters, filter_norms if not rows else filter_norms[:, None]) * to_filters
    return grad_fields, grad_filters
