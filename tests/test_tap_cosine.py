"""The cosine's backward on the tap loops (engine/tap_cosine.py), the box sum's adjoint (engine/tap_norms.py).

The backward that keeps only the input and the weight is checked against the naive float64 formula
and against the composed form it replaces (the same numbers autograd gives through the loops' dot, the
box sum and the division), on zero fields and filters, NaN and inf, channels-last and 16-bit inputs;
the adjoint against autograd on random geometries.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.autograd import gradcheck, gradgradcheck
from variant_reference import naive_generalized_conv

import anyconv
from anyconv.engine import tap_products
from anyconv.engine.tap_loops import tap_loops_conv, tap_loops_fit
from anyconv.engine.tap_norms import box_passes, box_sum, box_sum_adjoint
from anyconv.geometry import make_geometry
from anyconv.variants import Dot

pytestmark = pytest.mark.skipif(
    not tap_loops_fit(Dot(), torch.ones(1, 2, 4, 4), torch.ones(2, 1, 3, 3), 2),
    reason="the tap loops are not compiled on this machine",
)

#: x shape, weight shape, arguments: depthwise, multiplier, grouped, dense, strides, dilation, 1-D
#: to 3-D, padding wider than the kernel's span (the box sum's adjoint by autograd)
CASES = [
    ((2, 6, 9, 8), (6, 1, 3, 3), {"padding": 1, "groups": 6}),
    ((2, 4, 9, 9), (4, 1, 5, 5), {"padding": 2, "stride": 2, "groups": 4}),
    ((1, 4, 10, 9), (4, 1, 7, 7), {"padding": 3, "groups": 4}),
    ((2, 3, 7, 7), (6, 1, 3, 3), {"padding": 1, "groups": 3}),
    ((1, 8, 7, 6), (8, 4, 3, 3), {"padding": 1, "groups": 2}),
    ((1, 4, 11, 11), (4, 1, 3, 3), {"padding": 2, "dilation": 2, "groups": 4}),
    ((2, 4, 12, 9), (4, 2, 2, 3), {"stride": (2, 1), "dilation": (1, 2), "groups": 2}),
    ((1, 4, 6, 6), (4, 1, 3, 3), {"padding": 3, "groups": 4}),
    ((2, 4, 30), (4, 1, 11), {"padding": 5, "groups": 4}),
    ((1, 3, 5, 6, 5), (3, 1, 3, 3, 3), {"padding": 1, "groups": 3}),
    # dense first layers, few taps on at least MIN_DENSE_POSITIONS (the quotient kept)
    ((1, 3, 34, 33), (5, 3, 3, 3), {"padding": 1, "stride": 2}),
    ((1, 2, 1030), (4, 2, 3), {"padding": 1}),
    # more positions per (sample, group), and filters per group
    ((2, 4, 18, 18), (4, 1, 3, 3), {"padding": 1, "groups": 4}),
    ((1, 8, 17, 16), (8, 4, 3, 3), {"padding": 1, "groups": 2}),
    # dense layers of many taps, whose dot the filter blocks take (the fields path's backward)
    ((2, 8, 9, 10), (6, 8, 3, 3), {"padding": 1}),
    ((2, 16, 40), (8, 16, 3), {"padding": 1, "stride": 2}),
]


def _tensors(x_shape, w_shape, dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(x_shape, generator=generator, dtype=dtype)
    w = torch.randn(w_shape, generator=generator, dtype=dtype)
    b = torch.randn(w_shape[0], generator=generator, dtype=dtype)
    return x, w, b


def _gradients(x, w, b, arguments, grad_seed=1):
    inputs = [tensor.clone().requires_grad_() for tensor in (x, w, b)]
    output = anyconv.generalized_conv(inputs[0], inputs[1], "cosine", inputs[2], **arguments)
    # drawn in float64 whatever the dtype, so that every dtype gets the same numbers
    grad = torch.randn(output.shape, generator=torch.Generator().manual_seed(grad_seed), dtype=torch.float64)
    return output, torch.autograd.grad(output, inputs, grad.to(output.dtype))


@pytest.fixture
def composed(monkeypatch):
    """Make the path take the composed form, as it does where torch's machinery watches the call."""
    monkeypatch.setattr(tap_products, "machinery_watches", lambda *tensors: True)


def _node(x, w, b, arguments):
    output = anyconv.generalized_conv(x.requires_grad_(), w, "cosine", b, **arguments)
    return type(output.grad_fn).__name__


def test_a_recorded_call_takes_the_loops_backward_and_watched_calls_the_composition(monkeypatch):
    x, w, b = _tensors(*CASES[0][:2])
    assert _node(x.clone(), w, b, CASES[0][2]) == "_LoopsCosineBackward"
    monkeypatch.setattr(tap_products, "machinery_watches", lambda *tensors: True)
    assert _node(x.clone(), w, b, CASES[0][2]) != "_LoopsCosineBackward"


@pytest.mark.parametrize(("x_shape", "w_shape", "arguments"), CASES)
def test_forward_and_gradients_equal_the_naive_formula(x_shape, w_shape, arguments):
    x, w, b = _tensors(x_shape, w_shape)
    output, got = _gradients(x, w, b, arguments)
    inputs = [tensor.clone().requires_grad_() for tensor in (x, w, b)]
    expected = naive_generalized_conv(inputs[0], inputs[1], "cosine", inputs[2], **arguments)
    grad = torch.randn(output.shape, generator=torch.Generator().manual_seed(1), dtype=output.dtype)
    want = torch.autograd.grad(expected, inputs, grad)
    torch.testing.assert_close(output, expected)
    for value, reference in zip(got, want):
        torch.testing.assert_close(value, reference)


@pytest.mark.parametrize(("x_shape", "w_shape", "arguments"), CASES)
def test_gradients_equal_the_composed_form(x_shape, w_shape, arguments, monkeypatch):
    x, w, b = _tensors(x_shape, w_shape)
    # a zero field and a zero filter (the naive formula's norms have no derivative there): the
    # norms' rule, no direction and a gradient of 0, as the composed form's
    x[0, :, :2] = 0
    w[1] = 0
    output, got = _gradients(x, w, b, arguments)
    monkeypatch.setattr(tap_products, "machinery_watches", lambda *tensors: True)
    expected, want = _gradients(x, w, b, arguments)
    torch.testing.assert_close(output, expected, rtol=1e-12, atol=1e-12)
    for value, reference in zip(got, want):
        torch.testing.assert_close(value, reference, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "case", [1, 12, 14], ids=["depthwise-5x5-stride-2", "depthwise-3x3-18x18", "dense-3x3"]
)
def test_nan_and_inf_give_the_composed_forms_gradients(case, monkeypatch):
    x_shape, w_shape, arguments = CASES[case]
    x, w, b = _tensors(x_shape, w_shape)
    x[0, 1, 3, 4] = float("nan")
    x[1, 2, 0, 0] = float("inf")
    w[3, 0, 1, 1] = float("-inf")
    got = _gradients(x, w, b, arguments)[1]
    monkeypatch.setattr(tap_products, "machinery_watches", lambda *tensors: True)
    want = _gradients(x, w, b, arguments)[1]
    for value, reference in zip(got, want):
        assert torch.equal(value.isnan(), reference.isnan())
        torch.testing.assert_close(value, reference, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lower_precision_is_close_to_float64(dtype):
    x_shape, w_shape, arguments = CASES[2]
    x, w, b = _tensors(x_shape, w_shape)
    exact = _gradients(x, w, b, arguments)[1]
    low = _gradients(x.to(dtype), w.to(dtype), b.to(dtype), arguments)[1]
    tolerance = 1e-4 if dtype == torch.float32 else 5e-2
    for value, reference in zip(low, exact):
        assert value.dtype == dtype
        scale = reference.abs().max()
        torch.testing.assert_close(value.double(), reference, rtol=tolerance, atol=tolerance * scale)


def test_channels_last_input_gives_the_same_gradients():
    x, w, b = _tensors((2, 8, 9, 7), (8, 1, 5, 5))
    arguments = {"padding": 2, "groups": 8}
    output, got = _gradients(x.contiguous(memory_format=torch.channels_last), w, b, arguments)
    expected, want = _gradients(x, w, b, arguments)
    assert output.is_contiguous(memory_format=torch.channels_last)
    assert got[0].is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(output, expected)
    for value, reference in zip(got, want):
        torch.testing.assert_close(value, reference)


def test_gradcheck_and_gradgradcheck():
    x, w, b = _tensors((1, 4, 6, 5), (4, 1, 3, 3))
    inputs = [tensor.requires_grad_() for tensor in (x, w, b)]

    def cosine(x, w, b):
        return anyconv.generalized_conv(x, w, "cosine", b, groups=4)

    assert gradcheck(cosine, inputs)
    # the second derivative through the composed form (no zero padding: |p| has none at 0)
    assert gradgradcheck(cosine, inputs)


def test_only_the_asked_gradients_are_returned():
    x, w, b = _tensors(*CASES[0][:2])
    w.requires_grad_()
    output = anyconv.generalized_conv(x, w, "cosine", b, **CASES[0][2])
    (grad_w,) = torch.autograd.grad(output.sum(), [w])
    inputs = [x.clone().requires_grad_(), w.detach().clone().requires_grad_()]
    expected = naive_generalized_conv(inputs[0], inputs[1], "cosine", b, **CASES[0][2])
    torch.testing.assert_close(grad_w, torch.autograd.grad(expected.sum(), inputs)[1])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ndim=st.integers(1, 3),
    data=st.data(),
)
def test_the_box_sums_adjoint_is_autograds(ndim, data):
    kernel = tuple(data.draw(st.integers(1, 5)) for _ in range(ndim))
    dilation = tuple(data.draw(st.integers(1, 2)) for _ in range(ndim))
    stride = tuple(data.draw(st.integers(1, 3)) for _ in range(ndim))
    padding = tuple((data.draw(st.integers(0, 4)), data.draw(st.integers(0, 4))) for _ in range(ndim))
    size = tuple(data.draw(st.integers((k - 1) * d + 1, 9)) for k, d in zip(kernel, dilation))
    groups = data.draw(st.integers(1, 3))
    geometry = make_geometry(size, kernel, stride, padding, dilation)
    generator = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    values = torch.randn(2, groups, *size, dtype=torch.float64, generator=generator, requires_grad=True)
    summed = box_sum(tap_loops_conv, values, geometry, groups, 2**20)
    assert summed.shape == (2, groups, *geometry.output_size)
    grad = torch.randn(summed.shape, dtype=torch.float64, generator=generator)
    (expected,) = torch.autograd.grad(summed, values, grad)
    adjoint = box_sum_adjoint(tap_loops_conv, grad, geometry, groups, 2**20)
    torch.testing.assert_close(adjoint, expected, rtol=1e-12, atol=1e-12)
    # and each pass' sum equals a plain sum over the unfolded taps
    assert len(box_passes(geometry)) in (1, ndim)


@pytest.mark.parametrize(
    "case", [CASES[0], CASES[10], CASES[14]], ids=["depthwise", "dense-few-taps", "dense"]
)
def test_a_second_backward_of_the_same_graph_gives_the_same_gradients(case):
    # retain_graph: the dense layer's kept quotient serves both backwards unchanged, and an
    # in-place change of the output does not reach it
    x, w, b = _tensors(*case[:2])
    inputs = [tensor.requires_grad_() for tensor in (x, w, b)]
    output = anyconv.generalized_conv(*inputs[:2], "cosine", inputs[2], **case[2])
    assert type(output.grad_fn).__name__ == "_LoopsCosineBackward"
    grad = torch.randn(output.shape, generator=torch.Generator().manual_seed(2), dtype=output.dtype)
    first = torch.autograd.grad(output, inputs, grad, retain_graph=True)
    second = torch.autograd.grad(output, inputs, grad)
    for value, reference in zip(second, first):
        torch.testing.assert_close(value, reference, rtol=0, atol=0)
    changed = anyconv.generalized_conv(*inputs[:2], "cosine", inputs[2], **case[2])
    changed.detach().zero_()
    for value, reference in zip(torch.autograd.grad(changed, inputs, grad), first):
        torch.testing.assert_close(value, reference, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("x_shape", "w_shape", "arguments"),
    [
        ((2, 4, 21, 35), (4, 1, 3, 3), {"padding": 1, "groups": 4}),
        ((1, 3, 18, 16), (3, 1, 5, 5), {"padding": 2, "groups": 3}),
    ],
    ids=["3x3-rows-of-two-vectors", "5x5-a-vector-wide"],
)
def test_float32_depthwise_gradients_equal_the_float64_formula(x_shape, w_shape, arguments):
    """float32 rows at least a vector wide: the backward's y and |p| from the four-row quotient in
    one pass (quotient_and_norms_plane), the rows past the last four by the two sums' passes."""
    x, w, b = _tensors(x_shape, w_shape)
    inputs = [tensor.float().requires_grad_() for tensor in (x, w, b)]
    output = anyconv.generalized_conv(*inputs[:2], "cosine", inputs[2], **arguments)
    assert type(output.grad_fn).__name__ == "_LoopsCosineBackward"
    naive_inputs = [tensor.clone().requires_grad_() for tensor in (x, w, b)]
    expected = naive_generalized_conv(*naive_inputs[:2], "cosine", naive_inputs[2], **arguments)
    grad = torch.randn(output.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    got = torch.autograd.grad(output, inputs, grad.float())
    for value, reference in zip(got, torch.autograd.grad(expected, naive_inputs, grad)):
        torch.testing.assert_close(value.double(), reference, rtol=1e-4, atol=1e-4)
