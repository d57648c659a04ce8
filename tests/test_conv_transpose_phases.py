"""geometry.transposed_phase_groups against a brute-force enumeration of (input, tap) -> output:
every phase member reads exactly the inputs and taps torch's formula pairs with its outputs."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from anyconv.geometry import transposed_output_size, transposed_phase_groups


@st.composite
def geometries(draw):
    ndim = draw(st.integers(1, 2))
    sizes = tuple(draw(st.integers(1, 5)) for _ in range(ndim))
    kernel = tuple(draw(st.integers(1, 5)) for _ in range(ndim))
    stride = tuple(draw(st.integers(1, 4)) for _ in range(ndim))
    dilation = tuple(draw(st.integers(1, 4)) for _ in range(ndim))
    extra = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation))
    padding = tuple(
        draw(st.integers(0, max(0, ((n - 1) * s + d * (k - 1) + e) // 2)))
        for n, k, s, d, e in zip(sizes, kernel, stride, dilation, extra)
    )
    output = transposed_output_size(sizes, kernel, stride, padding, extra, dilation)
    return sizes, kernel, stride, padding, dilation, output


def _pairs(sizes, kernel, stride, padding, dilation, output):
    """Every (output position, input position, tap) torch's formula pairs: o = i * s - p + k * d."""
    found = set()
    for position in itertools.product(*(range(size) for size in sizes)):
        for tap in itertools.product(*(range(k) for k in kernel)):
            target = tuple(
                i * s - p + k * d for i, k, s, p, d in zip(position, tap, stride, padding, dilation)
            )
            if all(0 <= o < size for o, size in zip(target, output)):
                found.add((target, position, tap))
    return found


def _member_pairs(group, member, sizes, kernel, output):
    """The (output, input, tap) pairs a member's stride-1 convolution computes, reading zeros
    outside the input."""
    found = set()
    places, windows, taps = group.places[member], group.windows[member], group.taps[member]
    outputs = [range(size)[part] for part, size in zip(places, output)]
    counts = [len(range(10**6)[part]) for part in taps]
    for index in itertools.product(*(range(len(part)) for part in outputs)):
        for flipped in itertools.product(*(range(count) for count in counts)):
            target = tuple(part[i] for part, i in zip(outputs, index))
            # the convolution's position (window start + q) reads padded input at position + m * dilation
            read = tuple(
                crop.start - before + window.start + q + m * spacing
                for crop, (before, _), window, q, m, spacing in zip(
                    group.crop, group.padding, windows, index, flipped, group.dilation
                )
            )
            # flipped tap m of the member is kernel tap taps[count - 1 - m]
            tap = tuple(
                range(k)[part][count - 1 - m] for part, k, count, m in zip(taps, kernel, counts, flipped)
            )
            if all(0 <= r < size for r, size in zip(read, sizes)):
                found.add((target, read, tap))
    return found


@settings(max_examples=150, deadline=None)
@given(geometries())
def test_phase_members_compute_exactly_the_pairs_of_the_formula(geometry):
    sizes, kernel, stride, padding, dilation, output = geometry
    groups = transposed_phase_groups(sizes, kernel, stride, padding, dilation, output)
    computed = set()
    written = []
    for group in groups:
        for member in range(len(group.places)):
            computed |= _member_pairs(group, member, sizes, kernel, output)
            written.extend(
                itertools.product(*(range(size)[part] for part, size in zip(group.places[member], output)))
            )
    assert len(written) == len(set(written)), "two phases write the same output position"
    assert computed == _pairs(sizes, kernel, stride, padding, dilation, output)
