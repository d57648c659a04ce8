"""The fields path's standard product from columns (engine/fields_columns.py, the native copy
variants/fields_columns.cpp).

The columns against torch's im2col (``F.unfold``) in 2-D and against the naive loop over every
(field, tap) in any N, on random geometries and regions of chunks; the products against
``F.conv1d/2d/3d`` and the naive convolution (N = 4) in float64, with groups, bias, every padding
and chunks that split a sample; bfloat16 and float16 within torch's own error; NaN and inf; and
where the columns are not taken (channels-last input, ANYCONV_NATIVE=0, variants that are no plain
product).
"""

from __future__ import annotations

import itertools
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import count_calls
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import case_tensors
from reference_conv import naive_conv

import anyconv
from anyconv.engine import contraction, fields_columns, paths, transposed_gradient
from anyconv.engine.chunks import plan_chunks
from anyconv.engine.fields_columns import columns_fit
from anyconv.engine.plan import clear_plans
from anyconv.geometry import make_geometry

needs_native = pytest.mark.skipif(
    not columns_fit(torch.ones(1, 1, 2)), reason="the native copy is not built here (no C++ compiler)"
)
#: two threads, for the copy's split of its columns among them
pytestmark = [needs_native, pytest.mark.usefixtures("two_threads")]

#: x shape, weight shape, arguments; more than 8 channels per group (the tap loops take fewer) and
#: more than 128 input channels, or a grouped layer, where the filter blocks step aside
CASES = [
    {"id": "2-D 3x3", "x": (2, 130, 7, 6), "w": (6, 130, 3, 3), "with": {"padding": 1}},
    {"id": "2-D grouped", "x": (3, 40, 9, 11), "w": (16, 20, 3, 2), "with": {"padding": 1, "groups": 2}},
    {
        "id": "2-D stride dilation",
        "x": (2, 40, 13, 11),
        "w": (12, 10, 3, 2),
        "with": {"stride": (2, 3), "dilation": (2, 1), "padding": (2, 0), "groups": 4},
    },
    {
        "id": "2-D per-side padding",
        "x": (1, 18, 6, 7),
        "w": (4, 9, 3, 3),
        "with": {"padding": ((2, 0), (0, 3)), "groups": 2},
    },
    {"id": "2-D same", "x": (2, 20, 7, 8), "w": (6, 10, 4, 2), "with": {"padding": "same", "groups": 2}},
    {
        "id": "2-D reflect",
        "x": (1, 20, 6, 6),
        "w": (4, 10, 3, 3),
        "with": {"padding": 1, "padding_mode": "reflect", "groups": 2},
    },
    {
        "id": "2-D padding past the kernel",
        "x": (1, 20, 4, 5),
        "w": (4, 10, 2, 2),
        "with": {"padding": 3, "groups": 2},
    },
    {"id": "1-D", "x": (2, 20, 50), "w": (12, 10, 5), "with": {"padding": 2, "stride": 3, "groups": 2}},
    {"id": "1-D dilated", "x": (1, 300, 30), "w": (4, 300, 3), "with": {"padding": 4, "dilation": 4}},
    {
        "id": "3-D",
        "x": (1, 20, 5, 6, 7),
        "w": (8, 10, 3, 3, 3),
        "with": {"padding": (1, 0, 2), "dilation": (1, 2, 1), "groups": 2},
    },
    {
        "id": "4-D",
        "x": (1, 18, 3, 4, 3, 4),
        "w": (4, 9, 2, 3, 1, 2),
        "with": {"padding": 1, "stride": (1, 2, 1, 1), "groups": 2},
    },
]
IDS = [case["id"] for case in CASES]
TORCH_CONV = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}


@pytest.fixture
def taken(monkeypatch):
    """The number of chunks whose products the columns wrote: a list that grows by one per chunk."""
    return count_calls(monkeypatch, contraction, "write_column_products")


@pytest.fixture
def without_loops(monkeypatch):
    """The tap loops stepped aside, so that the fields path takes the grouped layers of many
    channels per group whose filters the loops take in blocks."""
    monkeypatch.setattr(paths, "tap_loops_fit", lambda *arguments: False)
    clear_plans()
    yield
    clear_plans()


def _reference(x, w, b, arguments):
    """torch's convolution of the case (per-side padding and other modes applied first), or the
    naive one for N = 4."""
    arguments = dict(arguments)
    padding, mode = arguments.get("padding", 0), arguments.pop("padding_mode", "zeros")
    if mode != "zeros" or (isinstance(padding, tuple) and isinstance(padding[0], tuple)):
        pairs = padding if isinstance(padding, tuple) else ((padding, padding),) * (x.dim() - 2)
        x = F.pad(
            x,
            [side for pair in reversed(pairs) for side in pair],
            mode="constant" if mode == "zeros" else mode,
        )
        arguments["padding"] = 0
    if x.dim() not in TORCH_CONV:
        return naive_conv(x, w, b, **arguments)
    with warnings.catch_warnings():
        # torch's own note on 'same' with an even kernel (a padded copy of the input)
        warnings.simplefilter("ignore", UserWarning)
        return TORCH_CONV[x.dim()](x, w, b, **arguments)


@pytest.mark.parametrize("budget", [None, 1], ids=["default budget", "chunks within a sample"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_products_equal_torchs_convolution(case, budget, taken, without_loops):
    x, w, b = case_tensors(case)
    expected = _reference(x, w, b, case["with"])
    got = anyconv.conv(x, w, b, memory_budget=budget, **case["with"])
    assert taken, "the columns wrote no chunk"
    torch.testing.assert_close(got, expected)


def _naive_columns(x, geometry, start, count):
    """(C, *kernel, b, *count): each tap's value at each output position of the region, by loops."""
    samples, channels = x.shape[:2]
    ndim = geometry.ndim
    befores = [before for before, _ in geometry.padding]
    columns = x.new_zeros((channels, *geometry.kernel_size, samples, *count))
    for tap in itertools.product(*(range(k) for k in geometry.kernel_size)):
        for place in itertools.product(*(range(n) for n in count)):
            at = [
                (start[d] + place[d]) * geometry.stride[d] + tap[d] * geometry.dilation[d] - befores[d]
                for d in range(ndim)
            ]
            if all(0 <= at[d] < geometry.input_size[d] for d in range(ndim)):
                columns[(slice(None), *tap, slice(None), *place)] = x[(slice(None), slice(None), *at)].t()
    return columns


@settings(max_examples=40, deadline=None)
@given(
    ndim=st.integers(1, 3),
    data=st.data(),
    dtype=st.sampled_from([torch.float64, torch.float32, torch.bfloat16, torch.float16]),
)
def test_columns_equal_a_loop_over_fields_and_taps(ndim, data, dtype):
    draw = data.draw
    size = tuple(draw(st.integers(1, 7)) for _ in range(ndim))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(ndim))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(ndim))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(ndim))
    padding = tuple((draw(st.integers(0, 3)), draw(st.integers(0, 3))) for _ in range(ndim))
    spans = [(k - 1) * d + 1 for k, d in zip(kernel, dilation)]
    if any(s + sum(p) < span for s, p, span in zip(size, padding, spans)):
        return  # no output position
    geometry = make_geometry(size, kernel, stride, padding, dilation)
    samples, channels = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    x = torch.randn(samples, channels, *size).to(dtype)
    # a region of output positions, as a chunk has one
    start = tuple(draw(st.integers(0, n - 1)) for n in geometry.output_size)
    count = tuple(draw(st.integers(1, n - s)) for s, n in zip(start, geometry.output_size))
    # NaN where the copy writes nothing: every element must be written
    columns = x.new_full((channels, *kernel, samples, *count), float("nan"))
    fields_columns._function(x.element_size())(
        x.data_ptr(),
        columns.data_ptr(),
        samples,
        channels,
        ndim,
        *fields_columns._sizes(geometry),
        *fields_columns._region(start, count),
        2,
    )
    assert torch.equal(columns, _naive_columns(x, geometry, start, count))


#: (kernel, stride, padding, dilation) in 2-D: strided and dilated lines, and 'same' padding at
#: stride 1, whose lines inside the input the copy takes as one run with their edges zeroed after
UNFOLDS = [
    ((3, 2), (2, 1), (1, 2), (1, 3)),
    ((3, 3), (1, 1), (1, 1), (1, 1)),
    ((5, 3), (1, 1), (4, 2), (2, 2)),
]


@pytest.mark.parametrize(("kernel", "stride", "padding", "dilation"), UNFOLDS, ids=lambda value: str(value))
def test_columns_are_torchs_unfold_in_2d(kernel, stride, padding, dilation):
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64)
    pairs = tuple((side, side) for side in padding)
    geometry = make_geometry((9, 8), kernel, stride, pairs, dilation)
    count, taps = geometry.output_size, math.prod(kernel)
    # NaN where the copy writes nothing: every element must be written
    columns = x.new_full((3 * taps, 2 * math.prod(count)), float("nan"))
    fields_columns._function(8)(
        x.data_ptr(),
        columns.data_ptr(),
        2,
        3,
        2,
        *fields_columns._sizes(geometry),
        *fields_columns._region((0, 0), count),
        1,
    )
    unfolded = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)  # (b, C * K, L)
    assert torch.equal(columns.view(3 * taps, 2, -1).transpose(0, 1), unfolded)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_is_within_torchs_own_error(dtype, taken, without_loops):
    case = CASES[1]
    x, w, b = case_tensors(case)
    expected = F.conv2d(x, w, b, **case["with"])
    got = anyconv.conv(x.to(dtype), w.to(dtype), b.to(dtype), **case["with"])
    theirs = F.conv2d(x.to(dtype), w.to(dtype), b.to(dtype), **case["with"])
    assert taken and got.dtype == dtype
    error, torch_error = (got.double() - expected).abs().max(), (theirs.double() - expected).abs().max()
    assert error <= 2 * torch_error + 1e-2


def test_nan_and_inf_reach_the_outputs_torch_gives_them(taken):
    case = CASES[0]
    x, w, b = case_tensors(case)
    x[0, 3, 2, 2] = float("nan")
    x[1, 5, 0, 0] = float("inf")
    w[2, 7, 1, 1] = float("-inf")
    expected = F.conv2d(x, w, b, padding=1)
    got = anyconv.conv(x, w, b, padding=1)
    assert taken
    assert torch.equal(got.isnan(), expected.isnan())
    torch.testing.assert_close(got, expected, equal_nan=True)


def test_gradients_through_the_columns_forward_equal_torchs(taken):
    case = CASES[2]
    x, w, b = (tensor.requires_grad_() for tensor in case_tensors(case))
    got = anyconv.conv(x, w, b, **case["with"])
    expected = F.conv2d(x, w, b, **case["with"])
    grad = torch.randn_like(expected)
    assert taken
    for mine, theirs in zip(
        torch.autograd.grad(got, (x, w, b), grad), torch.autograd.grad(expected, (x, w, b), grad)
    ):
        torch.testing.assert_close(mine, theirs)


@pytest.fixture
def backward_taken(monkeypatch):
    """(needs input, needs weight) of each chunk whose gradients the columns' backward took, with
    the input gradient of stride 1 left to them too (not taken as a convolution:
    tests/test_transposed_gradient.py)."""
    monkeypatch.setattr(transposed_gradient, "transposed_padding", lambda *arguments: None)
    calls = []
    gradients = contraction.column_gradients

    def spy(*arguments):
        calls.append(arguments[-2:])
        return gradients(*arguments)

    monkeypatch.setattr(contraction, "column_gradients", spy)
    return calls


@pytest.mark.parametrize("wanted", ["all", "weight", "input"])
@pytest.mark.parametrize("budget", [None, 1], ids=["default budget", "chunks within a sample"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_the_columns_backward_equals_torchs_gradients(case, budget, wanted, backward_taken):
    # the weight gradient from the columns, in the weight's own order, and the fields' gradient
    # folded back: against autograd through torch's convolution, or gradcheck for N = 4
    x, w, b = case_tensors(case)
    inputs = {"all": (x, w, b), "weight": (w,), "input": (x,)}[wanted]
    for tensor in inputs:
        tensor.requires_grad_()
    if x.dim() in TORCH_CONV:
        got = anyconv.conv(x, w, b, memory_budget=budget, **case["with"])
        expected = _reference(x, w, b, case["with"])
        grad = torch.randn_like(expected)
        for mine, theirs in zip(
            torch.autograd.grad(got, inputs, grad), torch.autograd.grad(expected, inputs, grad)
        ):
            torch.testing.assert_close(mine, theirs)
    else:

        def function(*tensors):
            given = dict(zip({"all": "xwb", "weight": "w", "input": "x"}[wanted], tensors))
            arguments = (given.get("x", x), given.get("w", w), given.get("b", b))
            return anyconv.conv(*arguments, memory_budget=budget, **case["with"])

        assert torch.autograd.gradcheck(function, inputs, fast_mode=True)
    needs = {"all": (True, True), "weight": (False, True), "input": (True, False)}[wanted]
    assert backward_taken and all(taken == needs for taken in backward_taken)


def test_where_the_columns_are_not_taken(taken, monkeypatch):
    x, w, b = case_tensors(CASES[0])
    # a channels-last input: the fields path's channels-last slab, read in place
    got = anyconv.conv(x.contiguous(memory_format=torch.channels_last), w, b, padding=1)
    torch.testing.assert_close(got, F.conv2d(x, w, b, padding=1))
    # a variant that is no plain product
    anyconv.generalized_conv(x, w, "l2", b, padding=1)
    assert not taken
    assert not columns_fit(x.to(memory_format=torch.channels_last))
    monkeypatch.setenv("ANYCONV_NATIVE", "0")
    assert not columns_fit(x)


def test_a_chunk_plan_covers_the_output_once(taken):
    # chunks within a sample write their regions of the output and nothing else
    case = CASES[0]
    x, w, b = case_tensors(case)
    geometry = make_geometry(x.shape[2:], 3, padding=1)
    assert len(plan_chunks(geometry, x.shape[0], 8 * (130 * 9 + 6), 2**12)) > x.shape[0]
    torch.testing.assert_close(
        anyconv.conv(x, w, b, padding=1, memory_budget=1), F.conv2d(x, w, b, padding=1)
    )
    assert len(taken) > x.shape[0]


@pytest.mark.parametrize(
    ("channels", "kernel"), [(32, 3), (128, 2), (16, 3), (64, 5)], ids=lambda value: str(value)
)
def test_a_1d_dense_dot_takes_the_filter_blocks_not_the_columns(channels, kernel, taken):
    # the filter blocks measured faster than the columns' one product over a field's taps on 1-D
    # dense layers of every kernel size, three taps included (docs/benchmarks.md)
    from anyconv.engine.plan import plan_conv
    from anyconv.engine.tap_loops import filter_blocks_fit
    from anyconv.variants import Dot

    x, w, b = case_tensors({"x": (2, channels, 1100), "w": (8, channels, kernel)})
    if not filter_blocks_fit(x, w, 1):
        pytest.skip("the tap loops are not built here")
    assert plan_conv(x, w, Dot(), 1, 1, 1, 1, "zeros", None).path == "tap loops"
    torch.testing.assert_close(anyconv.conv(x, w, b, padding=1), F.conv1d(x, w, b, padding=1))
    assert not taken
