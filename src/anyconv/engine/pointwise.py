"""The pointwise path: a 1x1 convolution is a matrix product over channels, with no fields at all.

The (strided) input, seen as (B, G, Cg, L), is multiplied by the weight (G, Og, Cg) for ``dot``,
and divided by the norms for ``cosine`` (``engine/pointwise_cosine.py``).
"""

from __future__ import annotations

import torch

from ..geometry import Geometry
from ..variants import Cosine, Dot, Variant
from ..variants.matrix_products import filters_times_columns, row_product
from .cosine_rows import cosine_rows, cosine_rows_fit
from .machinery import machinery_watches, records_graph
from .ops_memory_format import channels_last_format
from .pointwise_cosine import bias_view, composed_cosine, pointwise_cosine, recomputes
from .tap_products import add_bias


def pointwise_fits(variant: Variant, input: torch.Tensor, geometry: Geometry) -> bool:
    """Whether the pointwise path computes this call: ``dot`` or ``cosine``, a floating dtype,
    a kernel of one tap and no zero padding left to apply.

    >>> import torch
    >>> from anyconv.geometry import make_geometry
    >>> pointwise_fits(Dot(), torch.randn(1, 4, 5, 5), make_geometry((5, 5), 1, stride=2))
    True
    >>> pointwise_fits(Dot(), torch.randn(1, 4, 5, 5), make_geometry((5, 5), 3))
    False
    """
    return (
        type(variant) in (Dot, Cosine)
        and input.dtype.is_floating_point
        and geometry.kernel_volume == 1
        and not geometry.is_padded
    )


def pointwise_conv(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    variant: Variant,
    geometry: Geometry,
    groups: int,
) -> torch.Tensor:
    """The 1x1 generalized convolution of a batched ``input`` (see :func:`pointwise_fits`).

    >>> import torch, torch.nn.functional as F
    >>> from anyconv.geometry import make_geometry
    >>> x, w = torch.randn(2, 4, 5, 5, dtype=torch.float64), torch.randn(6, 2, 1, 1, dtype=torch.float64)
    >>> y = pointwise_conv(x, w, None, Dot(), make_geometry((5, 5), 1, stride=2), 2)
    >>> torch.allclose(y, F.conv2d(x, w, stride=2, groups=2))
    True
    """
    layout = channels_last_format(input)
    if groups == 1 and layout is not None:
        return _channels_last(input, weight, bias, variant, geometry, layout)
    if groups == 1 and all(size == 1 for size in input.shape[2:]):
        # one position per sample (squeeze-excitation): the samples are the rows of one plain
        # matrix product, where the columns' form takes a batched product of one column each
        return _one_position(input, weight, bias, variant)
    steps = tuple(slice(None, None, step) for step in geometry.stride)
    strided = input
    if any(step > 1 for step in geometry.stride):
        # copied as the reshape below would copy it, but always: whether a reshape can view a
        # strided input depends on its sizes, a guard that torch.export refuses for symbolic sizes
        strided = input[(slice(None), slice(None), *steps)].clone(memory_format=torch.contiguous_format)
    batch = input.shape[0]
    # sizes from the strided input, not the geometry: for symbolic sizes the two are equal, but
    # not provably so (and no reshape's -1, which an empty batch leaves ambiguous)
    fields = strided.flatten(2).unflatten(1, (groups, input.shape[1] // groups))
    filters = weight.reshape(groups, weight.shape[0] // groups, -1)
    recording = records_graph(input, weight, bias)
    if isinstance(variant, Cosine):
        output = _cosine(fields, filters, bias, variant, recording, rows=False)
        return output.reshape(batch, weight.shape[0], *strided.shape[2:])
    if bias is not None and recording:
        output = _biased_products(fields, filters, bias)
        return output.reshape(batch, weight.shape[0], *strided.shape[2:])
    # without a graph, the product and an add in place: baddbmm's copy of the broadcast bias
    # into its output before the product measured slower
    output = filters_times_columns(filters, fields)
    return add_bias(output.reshape(batch, weight.shape[0], *strided.shape[2:]), bias, recording)


def _biased_products(fields: torch.Tensor, filters: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``filters @ fields`` plus the bias of each filter, (B, G, Og, L) from fields (B, G, Cg, L) and
    filters (G, Og, Cg): one baddbmm, whose product starts from the bias, where a recorded product
    and add make the output twice and keep both.

    >>> f, w, b = torch.randn(2, 3, 4, 5), torch.randn(3, 6, 4), torch.randn(18)
    >>> torch.allclose(_biased_products(f, w, b), w @ f + b.view(3, 6, 1), atol=1e-6)
    True
    """
    batch, groups, channels, positions = fields.shape
    per_group = filters.shape[1]
    shifts = bias.view(1, groups, per_group, 1).expand(batch, groups, per_group, 1)
    output = torch.baddbmm(
        shifts.reshape(batch * groups, per_group, 1),
        filters.expand(batch, groups, per_group, channels).reshape(batch * groups, per_group, channels),
        fields.reshape(batch * groups, channels, positions),
    )
    return output.view(batch, groups, per_group, positions)


def _channels_last(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    variant: Variant,
    geometry: Geometry,
    layout: torch.memory_format,
) -> torch.Tensor:
    """One group, a channels-last input: its positions are already the rows (B * positions, C) of
    the product, and the (rows, O) result is a channels-last output, so nothing is transposed."""
    if any(step > 1 for step in geometry.stride):
        steps = tuple(slice(None, None, step) for step in geometry.stride)
        input = input[(slice(None), slice(None), *steps)].contiguous(memory_format=layout)
    positions = input.movedim(1, -1)
    output = _row_products(positions.reshape(-1, input.shape[1]), input, weight, bias, variant)
    return output.view(*positions.shape[:-1], -1).movedim(-1, 1)


def _one_position(
    input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, variant: Variant
) -> torch.Tensor:
    """One group, one position per sample: (B, C) rows times the filters, as (B, O, 1, ...)."""
    output = _row_products(input.reshape(input.shape[0], input.shape[1]), input, weight, bias, variant)
    return output.reshape(input.shape[0], weight.shape[0], *input.shape[2:])


def _row_products(
    rows: torch.Tensor, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, variant: Variant
) -> torch.Tensor:
    """One group: the ``rows`` (M, C) of ``input`` times the filters of ``weight``, plus ``bias``: (M, O)."""
    filters = weight.reshape(weight.shape[0], -1)
    if isinstance(variant, Cosine):
        return _cosine(rows, filters, bias, variant, records_graph(input, weight, bias), rows=True)
    return row_product(rows, filters, bias)


def _cosine(
    fields: torch.Tensor,
    filters: torch.Tensor,
    bias: torch.Tensor | None,
    variant: Cosine,
    recording: bool,
    rows: bool,
) -> torch.Tensor:
    """The cosine plus ``bias`` of ``fields`` and ``filters`` in either layout (``pointwise_cosine``)."""
    if rows and cosine_rows_fit(fields, filters, bias):
        # a few rows and filters (squeeze-excitation): one native call each way
        return cosine_rows(fields, filters, bias, variant.eps)
    if recording and recomputes(fields, filters, rows) and not machinery_watches(fields, filters, bias):
        # a backward that keeps the fields and filters only, where the composition keeps the
        # products and the denominator, each the output's size
        return pointwise_cosine(fields, filters, bias, variant.eps, rows)
    output = composed_cosine(fields, filters, variant.eps, rows, recording)
    if bias is None:
        return output
    shaped = bias_view(bias, filters, rows)
    return output + shaped if recording else output.add_(shaped)
