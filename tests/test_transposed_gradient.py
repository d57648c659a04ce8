"""The standard convolution's input gradient of stride 1 as a convolution (engine/transposed_gradient.py).

The output's gradient convolved with the flipped, channel-swapped filters where the tap loops
compute that convolution (after a forward by the loops or by the fields path) and on 1-D layers
that do not widen their channels, against torch's gradients in float64 and float32; where it is not
taken (a stride, padding past the kernel's reach, 2-D layers of many channels per group, layers
widening their channels), the fields path's gradient, equal to torch's too.
"""

from __future__ import annotations

import pytest
import torch
from conftest import count_calls
from hypothesis import given, settings
from hypothesis import strategies as st
from torch_reference import torch_conv

import anyconv
from anyconv.engine import transposed_gradient

pytestmark = pytest.mark.usefixtures("two_threads")

#: id, input shape, weight shape, arguments: the input gradient as a convolution
TAKEN = [
    ("loops-3x3", (2, 8, 9, 21), (12, 8, 3, 3), {"padding": 1}),
    ("loops-same-even-kernel", (1, 6, 10, 17), (8, 6, 4, 4), {"padding": "same"}),
    ("loops-valid", (2, 5, 9, 19), (7, 5, 3, 3), {}),
    ("loops-pairs", (1, 8, 9, 20), (9, 8, 3, 5), {"padding": ((0, 2), (4, 1))}),
    ("loops-dilation-2", (1, 8, 13, 30), (40, 8, 3, 3), {"padding": 2, "dilation": 2}),
    ("loops-dilation-per-dimension", (1, 8, 9, 21), (12, 8, 3, 3), {"padding": 1, "dilation": (1, 2)}),
    ("loops-filter-vectors", (2, 16, 9, 30), (48, 16, 3, 3), {"padding": 1}),
    ("loops-1-d", (2, 16, 300), (20, 16, 5), {"padding": 2}),
    ("loops-3-d", (1, 4, 5, 6, 15), (6, 4, 3, 3, 3), {"padding": 1}),
    ("loops-fewer-filters", (1, 40, 8, 18), (4, 40, 3, 3), {"padding": 1}),
    ("loops-reflect", (1, 8, 9, 21), (12, 8, 3, 3), {"padding": 1, "padding_mode": "reflect"}),
    ("fields-narrowing", (1, 200, 5, 9), (20, 200, 3, 3), {"padding": 1}),
    ("fields-groups-narrowing", (1, 40, 6, 9), (8, 20, 3, 3), {"padding": 1, "groups": 2}),
    ("fields-1-d-columns", (2, 40, 50), (40, 40, 3), {"padding": 1}),
    ("fields-1-d-groups", (1, 40, 30), (20, 20, 3), {"padding": 1, "groups": 2}),
    ("loops-groups-in-blocks", (1, 40, 6, 9), (20, 20, 3, 3), {"padding": 1, "groups": 2}),
]
#: the fields path's gradient: a stride, padding past the reach, a 2-D layer whose transposed
#: convolution the loops do not take, a layer widening its channels
NOT_TAKEN = [
    ("stride-2", (1, 8, 10, 21), (12, 8, 3, 3), {"padding": 1, "stride": 2}),
    ("padding-past-the-reach", (1, 8, 9, 21), (12, 8, 3, 3), {"padding": 3}),
    ("fields-many-channels", (1, 160, 6, 7), (150, 160, 3, 3), {"padding": 1}),
    ("fields-dilated", (1, 140, 9, 9), (140, 140, 3, 3), {"padding": 2, "dilation": 2}),
    ("fields-groups", (1, 40, 6, 9), (300, 20, 3, 3), {"padding": 1, "groups": 2}),
    ("fields-widening", (1, 140, 6, 7), (280, 140, 3, 3), {"padding": 1}),
    ("1-d-widening", (1, 140, 40), (280, 140, 3), {"padding": 1}),
]


@pytest.fixture
def taken(monkeypatch):
    """How many times the input gradient was taken as a convolution."""
    return count_calls(monkeypatch, transposed_gradient, "flipped_filters")


def _gradients(function, x, w, arguments, grad, dtype):
    tensors = [tensor.to(dtype).requires_grad_() for tensor in (x, w)]
    output = function(*tensors, **arguments)
    return torch.autograd.grad(output, tensors, grad.to(dtype))


def _check(case, dtype, taken, expected_calls):
    _, x_shape, w_shape, arguments = case
    generator = torch.Generator().manual_seed(x_shape[-1] * 7 + w_shape[0])
    x = torch.randn(x_shape, generator=generator, dtype=torch.float64)
    w = torch.randn(w_shape, generator=generator, dtype=torch.float64)
    grad = torch.randn(torch_conv(x, w, **arguments).shape, generator=generator, dtype=torch.float64)
    got = _gradients(anyconv.conv, x, w, arguments, grad, dtype)
    want = _gradients(torch_conv, x, w, arguments, grad, torch.float64)
    assert len(taken) == expected_calls
    # float32: within a few units of its precision of the largest sums of magnitudes
    scale = (x.abs().max() + grad.abs().max()).item() * w.abs().sum().item() * max(1, grad.shape[0])
    tolerance = 1e-12 if dtype == torch.float64 else 2**-20 * scale
    for value, reference in zip(got, want):
        assert value.dtype == dtype and value.shape == reference.shape
        torch.testing.assert_close(value.double(), reference, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", TAKEN, ids=[case[0] for case in TAKEN])
def test_input_gradient_as_a_convolution_equals_torch(case, dtype, taken):
    _check(case, dtype, taken, expected_calls=1)


@pytest.mark.parametrize("case", NOT_TAKEN, ids=[case[0] for case in NOT_TAKEN])
def test_where_it_is_not_taken_the_fields_path_equals_torch(case, taken):
    _check(case, torch.float64, taken, expected_calls=0)


@pytest.mark.parametrize("case", [TAKEN[0], TAKEN[11]], ids=["loops", "fields"])
def test_the_input_or_the_weight_alone(case, taken):
    _, x_shape, w_shape, arguments = case
    generator = torch.Generator().manual_seed(8)
    x = torch.randn(x_shape, generator=generator, dtype=torch.float64)
    w = torch.randn(w_shape, generator=generator, dtype=torch.float64)
    for wanted in (0, 1):
        mine = [tensor.clone().requires_grad_(which == wanted) for which, tensor in enumerate((x, w))]
        theirs = [tensor.clone().requires_grad_(which == wanted) for which, tensor in enumerate((x, w))]
        (got,) = torch.autograd.grad(anyconv.conv(*mine, **arguments).square().sum(), mine[wanted])
        (want,) = torch.autograd.grad(torch_conv(*theirs, **arguments).square().sum(), theirs[wanted])
        torch.testing.assert_close(got, want)
    # the weight's gradient alone asks for no input gradient
    assert len(taken) == 1


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", [TAKEN[0], TAKEN[11]], ids=["loops", "fields"])
def test_low_precision_rounds_each_sum_once(case, dtype, taken):
    # each input gradient a float32 sum rounded once to the dtype, as torch's own kernels round it
    _, x_shape, w_shape, arguments = case
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(x_shape, generator=generator).to(dtype)
    w = torch.randn(w_shape, generator=generator).to(dtype)
    grad = torch.randn(torch_conv(x.float(), w.float(), **arguments).shape, generator=generator).to(dtype)
    exact = torch.nn.grad.conv2d_input(x.shape, w.double(), grad.double(), **arguments)
    x.requires_grad_()
    (got,) = torch.autograd.grad(anyconv.conv(x, w, **arguments), x, grad)
    assert len(taken) == 1
    # within an ulp of the exact sum, beyond float32's sum of the magnitudes' rounding
    magnitudes = torch.nn.grad.conv2d_input(x.shape, w.double().abs(), grad.double().abs(), **arguments)
    bound = exact.abs() * torch.finfo(dtype).eps + magnitudes * 2**-22
    assert ((got.double() - exact).abs() <= bound).all()


def test_second_derivatives_still_equal_torchs():
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(1, 8, 6, 7, generator=generator, dtype=torch.float64, requires_grad=True)
    w = torch.randn(12, 8, 3, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradgradcheck(lambda *t: anyconv.conv(*t, padding=1), (x, w))


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 2),  # batch
    st.integers(1, 3),  # groups
    st.integers(1, 12),  # channels per group
    st.integers(2, 14),  # filters per group
    st.integers(1, 9),  # rows
    st.integers(1, 30),  # width
    st.integers(2, 5),  # kernel
    st.integers(1, 2),  # dilation
    st.integers(0, 4),  # padding before, along the rows
    st.integers(0, 4),  # padding after
)
def test_random_geometries_equal_torch(
    batch, groups, per_group, filters, rows, width, kernel, dilation, before, after
):
    span = dilation * (kernel - 1) + 1
    if rows + before + after < span or width + 2 < span:
        return
    generator = torch.Generator().manual_seed(batch * 1000 + width * 10 + kernel)
    x = torch.randn(batch, groups * per_group, rows, width, generator=generator, dtype=torch.float64)
    w = torch.randn(groups * filters, per_group, kernel, kernel, generator=generator, dtype=torch.float64)
    arguments = {"padding": ((before, after), (1, 1)), "dilation": dilation, "groups": groups}
    mine = [tensor.clone().requires_grad_() for tensor in (x, w)]
    theirs = [tensor.clone().requires_grad_() for tensor in (x, w)]
    output = torch_conv(*theirs, **arguments)
    grad = torch.randn(output.shape, generator=generator, dtype=torch.float64)
    got = torch.autograd.grad(anyconv.conv(*mine, **arguments), mine, grad)
    want = torch.autograd.grad(output, theirs, grad)
    for value, reference in zip(got, want):
        torch.testing.assert_close(value, reference, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("where", ["weight", "output gradient"])
@pytest.mark.parametrize("value", [float("inf"), float("nan")], ids=["inf", "nan"])
@pytest.mark.parametrize("case", [TAKEN[0], TAKEN[11], TAKEN[13]], ids=["loops", "fields", "1-d"])
def test_special_values_give_torchs_gradients(case, value, where, taken):
    # an inf or NaN of the weight would meet the zero padding of the output's gradient in the
    # convolution (0 * inf = NaN where the formula has no term): such a weight keeps the fields
    # path's gradient; special values of the output's gradient meet the filters as in the formula
    _, x_shape, w_shape, arguments = case
    generator = torch.Generator().manual_seed(6)
    x = torch.randn(x_shape, generator=generator, dtype=torch.float64)
    w = torch.randn(w_shape, generator=generator, dtype=torch.float64)
    grad = torch.randn(torch_conv(x, w, **arguments).shape, generator=generator, dtype=torch.float64)
    (w if where == "weight" else grad).view(-1)[5] = value
    got = _gradients(anyconv.conv, x, w, arguments, grad, torch.float64)
    want = _gradients(torch_conv, x, w, arguments, grad, torch.float64)
    assert len(taken) == (0 if where == "weight" else 1)
    for value, reference in zip(got, want):
        torch.testing.assert_close(value, reference, equal_nan=True)
