"""``conv_transpose``: the transposed convolution in one of two forms, col2im or phases, chosen per call.

The col2im form (``engine/conv_transpose_col2im.py``) multiplies the weights with the input and
sums the columns back with col2im, a few samples at a time; :func:`transposed_form` takes it
wherever one sample's columns fit the memory budget, and the phase form below elsewhere.

The phase form: a transposed convolution of stride s writes output ``o = q * s + r`` from the
input near ``q`` through the kernel taps of residue r only, so the output positions of one
residue (a "phase", per dimension) are an ordinary stride-1 convolution of the input with those
taps, flipped, their in and out channels swapped per group, and dilation
``dilation / gcd(dilation, s)``; its padding (cropping where negative) comes from the residue
(``geometry.transposed_phase_groups``). Phases with as many taps read windows of the input a
position or two apart, so one convolution over the union of the windows, with their taps stacked
as filters, computes them all (for a 4x4 kernel at stride 2, one 2x2 convolution with 4x the
filters instead of four). Each group runs through :func:`anyconv.conv`, which chunks it under the
memory budget along samples and any spatial dimension, and its phases are written into the
strided views ``output[..., r::s]`` by a small autograd Function whose adjoint gathers them back.
No column matrix (out_channels x taps per input position) and no col2im are made, and gradients
of any order come from autograd through the engine.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ..errors import invalid
from ..functional.allocation import check_fits
from ..geometry import PhaseGroup, spatial_tuple, transposed_output_size, transposed_phase_groups
from ..geometry.arguments import is_traced
from .arguments import check_conv_tensors
from .chunks import resolve_budget
from .conv import conv
from .conv_transpose_col2im import col2im_geometry, col2im_sample_bytes, col2im_transpose, folded_transpose
from .conv_transpose_recorded import adjoint_geometry, recorded_transpose
from .machinery import machinery_watches, records_graph
from .ops_autocast import autocast_dtype, cast
from .ops_memory_format import output_memory_format

#: the forms :func:`transposed_form` knows
FORMS = ("auto", "col2im", "phases")
#: the form every call takes, from ``ANYCONV_CONV_TRANSPOSE`` read once at import: "auto" (the
#: rule of :func:`transposed_form`), or "col2im" or "phases" always, to time one against the other
FORM = os.environ.get("ANYCONV_CONV_TRANSPOSE", "auto")


def conv_transpose(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: Any = 1,
    padding: Any = 0,
    output_padding: Any = 0,
    groups: int = 1,
    dilation: Any = 1,
    *,
    memory_budget: int | None = None,
) -> torch.Tensor:
    """``F.conv_transpose1d/2d/3d`` for any N (``weight.dim() - 2``), by col2im or by phases.

    ``weight`` is (in_channels, out_channels // groups, *kernel_size), as in torch. The output
    size is ``(in - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1``;
    ``output_padding`` must be smaller than the stride or the dilation, as torch requires.
    Where one sample's columns (out_channels x taps per input position) fit ``memory_budget``
    bytes: weights times input, summed back by col2im, as many samples at a time as fit
    (:func:`transposed_form`). Elsewhere by phases: the output positions ``r::stride`` (per
    dimension) are a stride-1 :func:`anyconv.conv` of the input with the kernel taps that reach
    them (at most ``prod(min(kernel, stride))`` phases, those with as many taps in one
    convolution; positions no tap reaches get the bias alone), each chunked under the budget
    along samples and any spatial dimension; the phases' outputs take at most one output-sized
    tensor before they are interleaved. Gradients come from autograd, twice differentiable.
    Under ``torch.autocast`` it runs in autocast's dtype, and a channels-last input or weight
    gives a channels-last output, as torch's does.

    >>> import torch, torch.nn.functional as F
    >>> x, w = torch.randn(2, 4, 5, 5, dtype=torch.float64), torch.randn(4, 3, 3, 3, dtype=torch.float64)
    >>> y = conv_transpose(x, w, stride=2, padding=1, output_padding=1)
    >>> y.shape, torch.allclose(y, F.conv_transpose2d(x, w, stride=2, padding=1, output_padding=1))
    (torch.Size([2, 3, 10, 10]), True)
    """
    lowered = autocast_dtype(input)
    if lowered is not None:
        # torch's policy for convolutions: run in autocast's dtype, with autocast off inside
        with torch.autocast(input.device.type, enabled=False):
            return conv_transpose(
                cast(input, lowered),
                cast(weight, lowered),
                cast(bias, lowered),
                stride,
                padding,
                output_padding,
                groups,
                dilation,
                memory_budget=memory_budget,
            )
    ndim, groups = check_conv_tensors(input, weight, bias, groups, transposed=True)
    was_unbatched = input.dim() == ndim + 1
    batched = input.unsqueeze(0) if was_unbatched else input
    kernel_size = tuple(weight.shape[2:])
    steps = spatial_tuple("stride", stride, ndim, 1)
    if isinstance(padding, str):
        raise invalid("padding", padding, f"an int or a tuple of {ndim} ints (no strings when transposed)")
    amounts = spatial_tuple("padding", padding, ndim, 0)
    spacings = spatial_tuple("dilation", dilation, ndim, 1)
    extra = spatial_tuple("output_padding", output_padding, ndim, 0)
    # checks output_padding against torch's rule and that the output is not empty
    output_size = transposed_output_size(
        tuple(batched.shape[2:]), kernel_size, steps, amounts, output_padding, spacings
    )
    out_channels = weight.shape[1] * groups
    output_shape = (batched.shape[0], out_channels, *output_size)
    # what made the output that large: a stride or a dilation that spreads it, else the kernel
    spread = ("stride", stride) if max(steps) > 1 else ("dilation", dilation) if max(spacings) > 1 else None
    check_fits("the output", output_shape, batched, spread or ("weight", weight))
    layout = output_memory_format(batched, weight)
    geometry = col2im_geometry(tuple(batched.shape[2:]), kernel_size, steps, spacings)
    sample_bytes = col2im_sample_bytes(geometry, out_channels, output_size, batched.element_size())
    budget = resolve_budget(memory_budget)
    form, samples_per_chunk = transposed_form(
        batched.shape[0], sample_bytes, budget, FORM, traced=is_traced(output_shape)
    )
    folds = form == "col2im" and _folds_faster(kernel_size, steps, spacings, batched.shape[1] // groups)
    recorded, watched = records_graph(batched, weight, bias), machinery_watches(batched, weight, bias)
    adjoint = None
    if form == "col2im" and _taps_overlap(kernel_size, steps, spacings) and recorded and not watched:
        # the recorded fold's backward reads the gradient as the adjoint convolution does
        adjoint = adjoint_geometry(
            tuple(batched.shape[2:]), kernel_size, steps, amounts, spacings, output_size
        )
    if folds and not (recorded or watched):
        output = folded_transpose(
            batched, weight, bias, groups, geometry, amounts, extra, output_size, samples_per_chunk
        )
    elif adjoint is not None:
        arguments = (groups, geometry, adjoint, amounts, extra, samples_per_chunk, budget)
        output = recorded_transpose(batched, weight, bias, arguments)
    elif form == "col2im":
        output = col2im_transpose(batched, weight, groups, geometry, amounts, extra, samples_per_chunk)
        if bias is not None:
            output = output + bias.reshape(-1, *(1,) * ndim)
    else:
        output = _phases(batched, weight, bias, groups, steps, amounts, spacings, output_size, memory_budget)
    output = output.contiguous(memory_format=layout)
    return output.squeeze(0) if was_unbatched else output


#: a transposed convolution whose taps do not overlap (2x2 at stride 2) takes the fold when
#: nothing is recorded from this many input channels per group: there the product, taken over
#: every input position at once, outweighs what the fold adds (docs/engine.md)
MIN_TILING_FOLD_CHANNELS = 256


def _folds_faster(
    kernel_size: tuple[int, ...], steps: tuple[int, ...], spacings: tuple[int, ...], channels: int
) -> bool:
    """Whether the col2im form's inference route (:func:`folded_transpose`) is the faster one: a
    stride above 1 with taps that overlap (a 3x3 or 4x4 kernel at stride 2), or taps that do not
    (2x2 at stride 2) on at least MIN_TILING_FOLD_CHANNELS input ``channels`` per group. With
    overlapping taps col2im's adds, one per tap, are strided and the fold's single pass wins; at
    stride 1 the adds are contiguous; where taps never overlap col2im is one reordering copy, and
    the fold's one product over every input position wins where the product weighs most
    (measurements in docs/engine.md).

    >>> _folds_faster((4, 4), (2, 2), (1, 1), 64), _folds_faster((2, 2), (2, 2), (1, 1), 64)
    (True, False)
    >>> _folds_faster((2, 2), (2, 2), (1, 1), 256), _folds_faster((3,), (1,), (1,), 256)
    (True, False)
    """
    return _taps_overlap(kernel_size, steps, spacings) or (
        max(steps) > 1 and channels >= MIN_TILING_FOLD_CHANNELS
    )


def _taps_overlap(kernel_size: tuple[int, ...], steps: tuple[int, ...], spacings: tuple[int, ...]) -> bool:
    """Whether two taps of the transposed convolution write one output position: a field's span
    reaches past the stride along some dimension, where a stride above 1 makes the recorded fold
    (:func:`recorded_transpose`) the faster route under autograd.

    >>> _taps_overlap((4, 4), (2, 2), (1, 1)), _taps_overlap((2, 2), (2, 2), (1, 1))
    (True, False)
    """
    return max(steps) > 1 and any(
        spacing * (kernel - 1) >= step for kernel, step, spacing in zip(kernel_size, steps, spacings)
    )


def transposed_form(
    batch: int, sample_bytes: int, budget: int, form: str = "auto", *, traced: bool = False
) -> tuple[str, int]:
    """The form :func:`conv_transpose` takes, and for col2im how many samples each chunk holds.

    ``form`` "auto" (the rule), "col2im" or "phases" (either one always, col2im at least one
    sample at a time). The rule: col2im wherever what it makes per sample beyond one
    output-sized tensor (``sample_bytes``, its columns: :func:`col2im_sample_bytes`) fits
    ``budget``, in chunks of as many samples as fit; the phases where one sample's does not.
    Why: col2im is one matrix product and K strided adds per chunk, the phases several
    convolutions and an interleaving copy, so col2im is the faster form on the layers networks
    use; the phases are the form whose memory stays bounded for a sample of any size.

    ``traced`` (the sizes may be symbols of torch.compile or torch.export): a graph cannot loop a
    size-dependent number of times, so col2im takes the whole batch in one chunk, and "auto"
    takes it only where the whole batch fits the budget (a guard on a range of sizes, never on
    one size); the phases, which chunk inside :func:`anyconv.conv`, elsewhere.

    >>> transposed_form(32, 2**20, 4 * 2**20), transposed_form(1, 2**30, 4 * 2**20)
    (('col2im', 4), ('phases', 0))
    >>> transposed_form(4, 2**20, 4 * 2**20, traced=True), transposed_form(5, 2**20, 4 * 2**20, traced=True)
    (('col2im', 4), ('phases', 0))
    """
    if form not in FORMS:
        raise invalid("ANYCONV_CONV_TRANSPOSE", form, f"one of {', '.join(map(repr, FORMS))}")
    if traced:
        # one comparison of sizes with the budget: a range guard, no min() or max() of sizes
        if form == "phases" or (form == "auto" and batch * sample_bytes > budget):
            return "phases", 0
        return "col2im", batch
    fitting = budget // max(1, sample_bytes)
    if form == "phases" or (form == "auto" and fitting < 1):
        return "phases", 0
    return "col2im", max(1, min(batch, fitting))


def _phases(
    batched: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    groups: int,
    steps: tuple[int, ...],
    amounts: tuple[int, ...],
    spacings: tuple[int, ...],
    output_size: tuple[int, ...],
    memory_budget: int | None,
) -> torch.Tensor:
    """The phase form: one stride-1 :func:`anyconv.conv` per group of phases, interleaved."""
    ndim = len(output_size)
    kernel_size = tuple(weight.shape[2:])
    output_shape = (batched.shape[0], weight.shape[1] * groups, *output_size)
    phase_groups = transposed_phase_groups(
        tuple(batched.shape[2:]), kernel_size, steps, amounts, spacings, output_size
    )
    channels = batched.shape[1]
    # (C, Og, *kernel) -> (G, Og, Cg, *kernel), flipped once: the filters of every phase
    filters = (
        weight.reshape(groups, channels // groups, weight.shape[1], *kernel_size)
        .transpose(1, 2)
        .flip(tuple(range(3, ndim + 3)))
    )
    layout = output_memory_format(batched, weight)
    members = tuple(
        (index, member, window, place)
        for index, group in enumerate(phase_groups)
        for member, (window, place) in enumerate(zip(group.windows, group.places))
    )
    covered = _covers(members, steps, output_size)
    if not phase_groups:
        # no tap reaches the output: keep input and weight in the graph, with zero
        # gradients as torch gives, through sums of nothing (no NaN or inf gets in)
        nothing = batched.reshape(-1)[:0].sum() + weight.reshape(-1)[:0].sum()
        output = batched.new_zeros(output_shape).contiguous(memory_format=layout) + nothing
    else:
        # the bias goes with each group's convolution, unless some positions are in no phase
        computed = [
            _phase_group(batched, filters, bias if covered else None, group, memory_budget)
            for group in phase_groups
        ]
        output = (
            computed[0]
            if covered and computed[0].shape == output_shape
            else _Interleave.apply(output_shape, layout, groups, members, covered, *computed)
        )
    if bias is not None and not covered:
        output = output + bias.reshape(-1, *(1,) * ndim)
    return output


def _phase_group(
    batched: torch.Tensor,
    filters: torch.Tensor,
    bias: torch.Tensor | None,
    group: PhaseGroup,
    memory_budget: int | None,
) -> torch.Tensor:
    """The outputs of a group of phases: one stride-1 convolution whose filters are the members'
    taps (of the flipped filters), stacked within each group of channels: (B, G * P * Og, ...)."""
    kernel_size = filters.shape[3:]
    taps = torch.stack(
        [
            filters[
                (
                    slice(None),
                    slice(None),
                    slice(None),
                    *(
                        slice(kernel - part.stop, kernel - part.start, part.step)
                        for part, kernel in zip(member, kernel_size)
                    ),
                )
            ]
            for member in group.taps
        ],
        dim=1,
    )
    groups, members, per_group = taps.shape[:3]
    if bias is not None:
        bias = bias.reshape(groups, 1, per_group).expand(groups, members, per_group).reshape(-1)
    return conv(
        batched[(slice(None), slice(None), *group.crop)],
        taps.flatten(0, 2),
        bias,
        padding=group.padding,
        dilation=group.dilation,
        groups=groups,
        memory_budget=memory_budget,
    )


def _covers(
    members: tuple[tuple[Any, ...], ...], steps: tuple[int, ...], output_size: tuple[int, ...]
) -> bool:
    """Whether the phases write every output position: along each dimension, every residue
    modulo the stride that is an output position is some phase's (the phases are products of
    one residue per dimension). One comparison per size: no count of positions, which would
    relate a trace's sizes."""
    for dimension, (step, size) in enumerate(zip(steps, output_size)):
        starts = {place[dimension].start for *_, place in members}
        if any(residue not in starts and residue < size for residue in range(step)):
            return False
    return True


class _Interleave(torch.autograd.Function):
    """The phases, read from their groups' outputs, written into their strided views of one
    output, zeros elsewhere; the backward hands each group the strided views of the gradient
    (no full-size copy per phase, as in-place writes under autograd would make)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(
        shape: tuple[int, ...],
        layout: torch.memory_format,
        groups: int,
        members: tuple[tuple[Any, ...], ...],
        covered: bool,
        *computed: torch.Tensor,
    ) -> torch.Tensor:
        # new_empty, not torch.empty: under torch.vmap it allocates a batched buffer
        if layout == torch.contiguous_format:
            output = computed[0].new_empty(shape)
        else:
            output = computed[0].new_empty((shape[0], *shape[2:], shape[1])).movedim(-1, 1)
        if not covered:
            output.zero_()
        for (*_, place), source in zip(members, _members(computed, groups, members)):
            output[(slice(None), slice(None), *place)].unflatten(1, (groups, -1)).copy_(source)
        return output

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        ctx.groups, ctx.members, ctx.covered = inputs[2], inputs[3], inputs[4]
        ctx.shapes = tuple(tuple(tensor.shape) for tensor in inputs[5:])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        return (
            None,
            None,
            None,
            None,
            None,
            *_Deinterleave.apply(grad, ctx.shapes, ctx.groups, ctx.members, ctx.covered),
        )


class _Deinterleave(torch.autograd.Function):
    """The adjoint of :class:`_Interleave`: each group's output gathered from the strided views
    of one output, zeros where its convolution computes positions no phase keeps."""

    generate_vmap_rule = True

    @staticmethod
    def forward(
        output: torch.Tensor,
        shapes: tuple[tuple[int, ...], ...],
        groups: int,
        members: tuple[tuple[Any, ...], ...],
        covered: bool,
    ) -> tuple[torch.Tensor, ...]:
        computed = [output.new_zeros(shape) for shape in shapes]
        for (*_, place), target in zip(members, _members(computed, groups, members)):
            target.copy_(output[(slice(None), slice(None), *place)].unflatten(1, (groups, -1)))
        return tuple(computed)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, ...]) -> None:
        ctx.shape, ctx.groups, ctx.members, ctx.covered = inputs[0].shape, inputs[2], inputs[3], inputs[4]
        ctx.layout = output_memory_format(inputs[0], inputs[0])

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        return (
            _Interleave.apply(tuple(ctx.shape), ctx.layout, ctx.groups, ctx.members, ctx.covered, *grads),
            None,
            None,
            None,
            None,
        )


def _members(
    computed: list[torch.Tensor] | tuple[torch.Tensor, ...], groups: int, members: tuple[tuple[Any, ...], ...]
) -> list[torch.Tensor]:
    """Each phase's view (B, G, Og, *positions) of its group's output (B, G * P * Og, ...)."""
    views = []
    for index, member, window, _ in members:
        source = computed[index]
        count = sum(1 for other, *_ in members if other == index)
        views.append(
            source.unflatten(1, (groups, count, -1))[(slice(None), slice(None), member, slice(None), *window)]
        )
    return views
