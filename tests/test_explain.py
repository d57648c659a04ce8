"""anyconv.explain: the numbers of the table, against hand-computed cases, the geometry and torch."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import anyconv
from anyconv.geometry.summary import format_bytes

# Worked by hand: padded = in + before + after, span = d (k - 1) + 1, out = (padded - span) // s + 1.
CASES = [
    dict(
        id="2d-stride2-pad1",
        args=dict(input_size=(32, 32), kernel_size=3, stride=2, padding=1, channels=3, out_channels=8),
        padded=(34, 34),
        span=(3, 3),
        output=(16, 16),
        unread=(1, 1),  # 34 - (15 * 2 + 3)
        unfold_shape=(1, 27, 256),
        unfold_bytes=27 * 256 * 4,
        view_bytes=3 * 34 * 34 * 4,
        multiply_adds=8 * 256 * 3 * 9,
        coverage=(1, 4),  # per dimension 1 (ends) to 2 (even elements)
    ),
    dict(
        id="1d-dilated-strided-gaps",
        args=dict(input_size=(7,), kernel_size=3, stride=3, dilation=2),
        padded=(7,),
        span=(5,),
        output=(1,),
        unread=(2,),
        unfold_shape=(1, 3, 1),
        unfold_bytes=12,
        view_bytes=0,
        multiply_adds=3,
        coverage=(0, 1),  # elements 1, 3, 5, 6 are read by no field
    ),
    dict(
        id="3d-asymmetric-groups-float64-batch",
        args=dict(
            input_size=(4, 5, 6),
            kernel_size=(2, 3, 1),
            padding=((0, 1), 1, 0),
            channels=4,
            out_channels=6,
            batch=2,
            itemsize=8,
            groups=2,
        ),
        padded=(5, 7, 6),
        span=(2, 3, 1),
        output=(4, 5, 6),
        unread=(0, 0, 0),
        unfold_shape=(2, 24, 120),
        unfold_bytes=2 * 24 * 120 * 8,
        view_bytes=2 * 4 * 5 * 7 * 6 * 8,
        multiply_adds=2 * 6 * 120 * 2 * 6,
        coverage=(1 * 2 * 1, 2 * 3 * 1),
    ),
    dict(
        id="2d-same-dilated",
        args=dict(input_size=(5, 6), kernel_size=(3, 4), padding="same", dilation=(2, 1)),
        padded=(9, 9),  # padding (2, 2) and (1, 2)
        span=(5, 4),
        output=(5, 6),
        unread=(0, 0),
        unfold_shape=(1, 12, 30),
        unfold_bytes=12 * 30 * 4,
        view_bytes=81 * 4,
        multiply_adds=30 * 12,
        coverage=(2 * 2, 3 * 4),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
def test_numbers_match_hand_computed_cases(case):
    summary = anyconv.explain(**case["args"])
    g = summary.geometry
    assert g.padded_size == case["padded"]
    assert g.field_span == case["span"]
    assert g.output_size == case["output"]
    assert summary.unread == case["unread"]
    assert summary.unfold_shape == case["unfold_shape"]
    assert summary.unfold_bytes == case["unfold_bytes"]
    assert summary.view_bytes == case["view_bytes"]
    assert summary.multiply_adds == case["multiply_adds"]
    assert summary.coverage == case["coverage"]


@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
def test_table_shows_every_number(case):
    summary = anyconv.explain(**case["args"])
    table = str(summary)
    g = summary.geometry
    rows = table.splitlines()[2 : 3 + g.ndim]
    for dim, row in enumerate(rows[1:]):
        before, after = g.padding[dim]
        cells = row.split()
        assert cells == [
            str(dim),
            str(g.input_size[dim]),
            str(before),
            "+",
            str(after),
            str(g.padded_size[dim]),
            str(g.kernel_size[dim]),
            str(g.dilation[dim]),
            str(g.field_span[dim]),
            str(g.stride[dim]),
            str(g.output_size[dim]),
            str(summary.unread[dim]),
        ]
    assert f"{summary.multiply_adds:,} =" in table
    assert format_bytes(summary.unfold_bytes) in table
    assert f"x times {summary.coverage[0]} to {summary.coverage[1]}" in table
    assert str(summary.unfold_shape) in table and str(summary.output_shape) in table


geometries = st.integers(1, 3).flatmap(
    lambda ndim: st.fixed_dictionaries(
        dict(
            input_size=st.tuples(*[st.integers(1, 9)] * ndim),
            kernel_size=st.tuples(*[st.integers(1, 4)] * ndim),
            stride=st.tuples(*[st.integers(1, 3)] * ndim),
            padding=st.tuples(*[st.tuples(st.integers(0, 2), st.integers(0, 2))] * ndim),
            dilation=st.tuples(*[st.integers(1, 3)] * ndim),
            channels=st.integers(1, 4),
            out_channels=st.integers(1, 4),
            batch=st.integers(1, 3),
        )
    )
)


@settings(max_examples=60, deadline=None)
@given(geometries)
def test_numbers_agree_with_the_geometry(args):
    try:
        geometry = anyconv.make_geometry(
            args["input_size"], args["kernel_size"], args["stride"], args["padding"], args["dilation"]
        )
    except ValueError:
        with pytest.raises(ValueError):
            anyconv.explain(**args)
        return
    summary = anyconv.explain(**args)
    assert summary.geometry == geometry
    batch, channels, out_channels = args["batch"], args["channels"], args["out_channels"]
    assert summary.num_fields == math.prod(geometry.output_size)
    assert summary.field_length == channels * math.prod(args["kernel_size"])
    assert summary.unfold_bytes == 4 * batch * summary.field_length * summary.num_fields
    padded_bytes = 4 * batch * channels * math.prod(geometry.padded_size)
    assert summary.view_bytes == (padded_bytes if geometry.is_padded else 0)
    assert summary.multiply_adds == batch * out_channels * summary.num_fields * summary.field_length
    for padded, out, step, span, unread in zip(
        geometry.padded_size, geometry.output_size, geometry.stride, geometry.field_span, summary.unread
    ):
        assert 0 <= unread < step and (out - 1) * step + span + unread == padded


@settings(max_examples=40, deadline=None)
@given(
    size=st.tuples(st.integers(1, 8), st.integers(1, 8)),
    kernel=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    padding=st.tuples(st.integers(0, 2), st.integers(0, 2)),
    dilation=st.tuples(st.integers(1, 3), st.integers(1, 3)),
)
def test_coverage_is_what_torch_fold_of_unfold_gives(size, kernel, stride, padding, dilation):
    try:
        summary = anyconv.explain(size, kernel, stride, padding, dilation)
    except ValueError:
        return
    ones = torch.ones(1, 1, *size, dtype=torch.float64)
    arguments = dict(kernel_size=kernel, dilation=dilation, padding=padding, stride=stride)
    counts = F.fold(F.unfold(ones, **arguments), size, **arguments)
    assert summary.coverage == (int(counts.min()), int(counts.max()))


@pytest.mark.parametrize(
    "args, message",
    [
        (dict(channels=3, groups=2), "channels=3 is invalid: expected a multiple of groups=2"),
        (dict(out_channels=5, channels=4, groups=2), "out_channels=5 is invalid"),
        (dict(batch=0), "batch=0 is invalid: expected a positive integer"),
        (dict(itemsize=-4), "itemsize=-4 is invalid"),
        (dict(kernel_size=9), "kernel_size=(9, 9) is invalid: expected a kernel that fits"),
    ],
    ids=["groups-channels", "groups-out-channels", "batch", "itemsize", "kernel-too-large"],
)
def test_refuses_bad_values(args, message):
    arguments = dict(input_size=(5, 5), kernel_size=3) | args
    with pytest.raises(anyconv.ArgumentError) as raised:
        anyconv.explain(**arguments)
    assert message in str(raised.value)


def test_refuses_a_float_channel_count():
    with pytest.raises(anyconv.ArgumentTypeError, match="channels=2.0 has type float"):
        anyconv.explain((5, 5), 3, channels=2.0)


@pytest.mark.parametrize(
    "amount, text",
    [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"), (5 * 2**20, "5.0 MiB")],
)
def test_format_bytes(amount, text):
    assert format_bytes(amount) == text


def test_a_dimension_too_long_to_count_leaves_the_coverage_uncounted():
    summary = anyconv.explain((8,), 3, padding=10**12)
    assert summary.num_fields == 2 * 10**12 + 6
    assert summary.coverage is None
    assert "not counted" in summary.table()


@pytest.mark.parametrize(
    "args, argument",
    [
        (dict(input_size=(8, 8), kernel_size=3, padding=10**12), "padding"),
        (dict(input_size=(2**40, 2**40), kernel_size=2**39), "kernel_size"),
    ],
    ids=["padding", "kernel"],
)
def test_refuses_sizes_no_tensor_can_have(args, argument):
    with pytest.raises(
        anyconv.ArgumentError, match=rf"^{argument}=.* more than the 8.0 EiB torch can address"
    ):
        anyconv.explain(**args)
