"""The backward of a ``ProductVariant``: from the per-pair terms of its ``product_backward`` to gradients.

The variant returns, per chunk, a scale per (field, filter) pair and radial terms per field and
per filter (see ``ProductVariant``); the gradients are then

    d loss / d p_m = sum_o pair_scale[m, o] w_o - field_radial[m] p_m
    d loss / d w_o = sum_m pair_scale[m, o] p_m - filter_radial[o] w_o

:func:`field_gradients` takes them from a chunk's copied fields (two matrix products, the field
gradients then folded back by the caller); :func:`tap_gradients` takes them for the whole input
on shifted views, one product per kernel tap, where nothing is copied or folded: the field norms
come from tap sums of the squared input and the radial terms spread back over the taps.

A variant of p - w (``l2``, ``rbf``) names a centre c (``gradient_centre``): both sums are then
taken on p - c and w - c, the same gradients without the cancellation of data far from zero.
On copied fields c is the forward's, tap by tap; on the views, whose one image serves every tap,
it is its mean over the taps, one value per input channel.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch

from ..geometry import Geometry
from ..variants import ProductVariant
from ..variants.matrix_products import batched_product
from ..variants.squared import centred_blocks
from .backward_choice import reads_of
from .blocks import as_chunk_result, chunk_results, output_block, write_block
from .chunks import Chunk
from .fields import add_image_grad, chunk_image, filters_of
from .shifted_views import (
    TapLayout,
    add_tap_products,
    crop,
    merge_phases,
    split_phases,
    spread_over_taps,
    tap_filters,
    tap_sums,
)


def pair_terms(
    variant: ProductVariant,
    grad: torch.Tensor,
    filters: torch.Tensor,
    options: dict,
    output: torch.Tensor | None,
    kept: torch.Tensor | None,
    field_norms: Callable[[], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Call ``variant.product_backward`` with what it reads; ``field_norms`` makes them lazily."""
    return variant.product_backward(grad, filters, **reads_of(variant, output, kept, field_norms), **options)


def field_gradients(
    variant: ProductVariant,
    fields: torch.Tensor,
    filters: torch.Tensor,
    grad: torch.Tensor,
    output: torch.Tensor | None,
    kept: torch.Tensor | None,
    options: dict,
    centre: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradients of one chunk's fields (G, M, Kg) and of the filters (G, Og, Kg).

    ``output``, ``kept``: the chunk's (None unless read); ``centre``: the variant's
    ``gradient_centre`` (G, 1, Kg) or None. Conjugated as torch's autograd does for complex
    tensors (a no-op view for real ones).
    """
    pair_scale, field_radial, filter_radial = pair_terms(
        variant,
        grad,
        filters,
        options,
        output,
        kept,
        field_norms=lambda: torch.linalg.vector_norm(fields, dim=-1, keepdim=True),
    )
    if centre is not None:
        filters = filters - centre
    grad_fields = batched_product(pair_scale, filters.conj())
    if centre is None:
        grad_filters = batched_product(pair_scale.mT, fields.conj())
        if field_radial is not None:
            grad_fields.addcmul_(fields, field_radial, value=-1)
    else:
        grad_filters = torch.zeros_like(filters)
        # the centred fields block by block, as the forward took them (see centred_blocks)
        for rows in centred_blocks(fields.shape[1], fields.shape[2], filters.shape[1]):
            centred = fields[:, rows] - centre
            grad_filters.baddbmm_(pair_scale[:, rows].mT, centred.conj())
            if field_radial is not None:
                grad_fields[:, rows].addcmul_(centred, field_radial[:, rows], value=-1)
    if filter_radial is not None:
        grad_filters.addcmul_(filters, filter_radial, value=-1)
    return grad_fields, grad_filters


def tap_gradients(
    variant: ProductVariant,
    input: torch.Tensor,
    weight: torch.Tensor,
    grad_output: torch.Tensor,
    output: torch.Tensor | None,
    kept: torch.Tensor | None,
    geometry: Geometry,
    groups: int,
    chunks: tuple[Chunk, ...],
    options: dict,
    needs_input: bool,
    needs_weight: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The gradients of the input (B, C, *spatial) and the weight, on shifted views chunk by chunk.

    ``chunks`` as planned for ``geometry`` (any stride); ``output`` the forward's, before bias,
    and ``kept`` what its ``contract_and_keep`` kept, when the variant reads them.
    """
    out_channels, in_group = weight.shape[:2]
    filters = filters_of(weight, groups)
    # one centre per input channel (see the module docstring), broadcast over (b, C, *slab)
    centre = _channel_centre(variant.gradient_centre(filters), in_group, weight.dim() - 2)
    if centre is not None:
        per_filter_channel = centre.reshape(groups, 1, in_group, *centre.shape[2:])
        weight = (weight.unflatten(0, (groups, -1)) - per_filter_channel).flatten(0, 1)
    taps = tap_filters(weight, groups)
    grad_input = torch.zeros_like(input) if needs_input else None
    grad_taps = torch.zeros_like(taps) if needs_weight else None
    filter_radial_total = None
    for chunk in chunks:
        layout = TapLayout(chunk.geometry)
        image = chunk_image(input, geometry, chunk)
        samples = image.shape[0]
        # the padding is zeros before the centring: a field's tap there is 0 - c, as in the forward
        centred = image if centre is None else image - centre
        own_output, own_kept = chunk_results((output, kept), chunk, groups)
        grad = as_chunk_result(output_block(grad_output, chunk, groups))
        pair_scale, field_radial, filter_radial = pair_terms(
            variant,
            grad,
            filters,
            options,
            own_output,
            own_kept,
            field_norms=partial(_field_norms, image, layout, groups),
        )
        grid = grad_output.new_zeros((samples, out_channels, layout.places))
        write_block(crop(grid, layout).unflatten(1, (groups, -1)), pair_scale)
        phases = split_phases(centred, layout) if needs_weight else None
        grad_phases = (
            grad_output.new_zeros((layout.phases, samples, input.shape[1], layout.places))
            if needs_input
            else None
        )
        add_tap_products(phases, grid, taps, layout, grad_taps, grad_phases)
        if grad_phases is not None and grad_input is not None:  # both made when needs_input
            grad_image = merge_phases(grad_phases, layout)
            if field_radial is not None:
                radial = field_radial.reshape(groups, samples, *chunk.geometry.output_size).transpose(0, 1)
                spread = spread_over_taps(radial, layout).unsqueeze(2)
                grad_image.unflatten(1, (groups, in_group)).addcmul_(
                    centred.unflatten(1, (groups, in_group)), spread, value=-1
                )
            add_image_grad(grad_input, grad_image, geometry, chunk)
        if filter_radial is not None and needs_weight:
            filter_radial_total = (
                filter_radial if filter_radial_total is None else filter_radial_total + filter_radial
            )
    # the filters in two layouts, freed before the weight's layout is copied out of grad_taps: on
    # a wide layer (512 x 512 x 3 x 3) each is as large as the whole input and output together
    del filters, taps
    grad_weight = None
    if grad_taps is not None:  # made when needs_weight
        grad_weight = grad_taps.permute(1, 2, 3, 0).reshape(weight.shape)
        if filter_radial_total is not None:
            per_filter = filter_radial_total.reshape(out_channels, *(1,) * (weight.dim() - 1))
            grad_weight.addcmul_(weight, per_filter, value=-1)
    return grad_input, grad_weight


def _channel_centre(centre: torch.Tensor | None, in_group: int, ndim: int) -> torch.Tensor | None:
    """A tap-by-tap centre (G, 1, Kg), taps in the fields' (*kernel, channel) order, as its mean
    over the taps per input channel: (1, C, 1, ...) with ``ndim`` spatial ones, or None."""
    if centre is None:
        return None
    groups = centre.shape[0]
    per_channel = centre.reshape(groups, -1, in_group).mean(1)
    return per_channel.reshape(1, groups * in_group, *(1,) * ndim)


def _field_norms(image: torch.Tensor, layout: TapLayout, groups: int) -> torch.Tensor:
    """|p| (G, M, 1) of a chunk's fields, from its padded input (b, C, *slab), fields uncopied."""
    squares = image.square().unflatten(1, (groups, -1)).sum(2)
    sums = tap_sums(squares, layout)  # (b, G, *out)
    return sums.transpose(0, 1).reshape(groups, -1, 1).sqrt_()
