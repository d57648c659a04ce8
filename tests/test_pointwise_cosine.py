"""The pointwise path's cosine backward that keeps only the fields and filters (engine/pointwise_cosine.py).

Checked against the naive float64 formula and against the composed form it replaces (the gradients
autograd takes through the product, the norms and the division), in both layouts (channels first,
any groups; channels-last rows), with strides, zero fields and filters, NaN and inf, and 16-bit inputs.
"""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck
from variant_reference import eps_zero_cosine, naive_generalized_conv

import anyconv
from anyconv.engine import cosine_rows, pointwise, pointwise_cosine

#: x shape, weight shape, arguments, channels-last input
CASES = [
    ((2, 6, 5, 4), (8, 6, 1, 1), {}, False),
    ((2, 6, 5, 4), (9, 2, 1, 1), {"groups": 3}, False),
    ((2, 6, 7, 5), (4, 6, 1, 1), {"stride": 2}, False),
    ((3, 5, 9), (7, 5, 1), {}, False),
    ((1, 4, 3, 4, 5), (6, 4, 1, 1, 1), {}, False),
    ((2, 6, 5, 4), (8, 6, 1, 1), {}, True),
    ((2, 6, 7, 5), (4, 6, 1, 1), {"stride": (2, 1)}, True),
    ((8, 12, 1, 1), (3, 12, 1, 1), {}, False),
]
IDS = ["columns", "grouped", "strided", "1d", "3d", "channels-last", "channels-last-strided", "one-position"]


@pytest.fixture(autouse=True)
def recompute_every_call(monkeypatch):
    """The recomputing backward also for the small layers of these tests (the small rows' native
    cosine, tests/test_cosine_rows.py, set aside)."""
    monkeypatch.setattr(pointwise_cosine, "RECOMPUTE_OUTPUTS", 0)
    monkeypatch.setattr(cosine_rows, "MAX_WORK", 0)


def _tensors(case, dtype=torch.float64):
    x_shape, w_shape, _, channels_last = case
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(x_shape, generator=generator, dtype=torch.float64).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(w_shape, generator=generator, dtype=torch.float64).to(dtype)
    b = torch.randn(w_shape[0], generator=generator, dtype=torch.float64).to(dtype)
    return x, w, b


def _gradients(x, w, b, arguments):
    inputs = [tensor.clone(memory_format=torch.preserve_format).requires_grad_() for tensor in (x, w, b)]
    output = anyconv.generalized_conv(inputs[0], inputs[1], "cosine", inputs[2], **arguments)
    grad = torch.randn(output.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return output, torch.autograd.grad(output, inputs, grad.to(output.dtype))


def _graph(output):
    """The names of the autograd nodes of ``output``'s graph."""
    names, nodes = set(), [output.grad_fn]
    while nodes:
        node = nodes.pop()
        if node is not None and type(node).__name__ not in names:
            names.add(type(node).__name__)
            nodes.extend(parent for parent, _ in node.next_functions)
    return names


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_the_recomputing_backward_is_taken_and_watched_calls_take_the_composition(case, monkeypatch):
    x, w, b = _tensors(case)
    output = anyconv.generalized_conv(x.requires_grad_(), w, "cosine", b, **case[2])
    assert "_PointwiseCosineBackward" in _graph(output)
    monkeypatch.setattr(pointwise, "machinery_watches", lambda *tensors: True)
    output = anyconv.generalized_conv(x, w, "cosine", b, **case[2])
    assert "_PointwiseCosineBackward" not in _graph(output)


def test_small_layers_take_the_composition(monkeypatch):
    monkeypatch.setattr(pointwise_cosine, "RECOMPUTE_OUTPUTS", 8 * 3 + 1)
    x, w, b = _tensors(CASES[-1])
    assert "_PointwiseCosineBackward" not in _graph(
        anyconv.generalized_conv(x.requires_grad_(), w, "cosine", b)
    )
    monkeypatch.setattr(pointwise_cosine, "RECOMPUTE_OUTPUTS", 8 * 3)
    assert "_PointwiseCosineBackward" in _graph(anyconv.generalized_conv(x, w, "cosine", b))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_forward_and_gradients_equal_the_naive_formula(case):
    x, w, b = _tensors(case)
    output, got = _gradients(x, w, b, case[2])
    inputs = [tensor.clone().requires_grad_() for tensor in (x, w, b)]
    expected = naive_generalized_conv(inputs[0], inputs[1], "cosine", inputs[2], **case[2])
    grad = torch.randn(output.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(output, expected)
    if case[3]:
        assert output.is_contiguous(memory_format=torch.channels_last)
    for value, reference in zip(got, torch.autograd.grad(expected, inputs, grad)):
        torch.testing.assert_close(value, reference)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gradients_equal_the_composed_form_with_zero_fields_and_filters(case, monkeypatch):
    x, w, b = _tensors(case)
    # no direction: the radial terms are 0 there, in both forms (the naive formula has NaN)
    x[0, :, 0] = 0
    w[1] = 0
    output, got = _gradients(x, w, b, case[2])
    monkeypatch.setattr(pointwise, "machinery_watches", lambda *tensors: True)
    expected, want = _gradients(x, w, b, case[2])
    torch.testing.assert_close(output, expected, rtol=1e-12, atol=1e-12)
    for value, reference in zip(got, want):
        torch.testing.assert_close(value, reference, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", [CASES[0], CASES[5]], ids=["columns", "channels-last"])
def test_nan_and_inf_give_the_composed_forms_gradients(case, monkeypatch):
    x, w, b = _tensors(case)
    x[0, 1, 2, 3] = float("nan")
    x[1, 2, 0, 0] = float("inf")
    w[3, 4, 0, 0] = float("-inf")
    got = _gradients(x, w, b, case[2])[1]
    monkeypatch.setattr(pointwise, "machinery_watches", lambda *tensors: True)
    want = _gradients(x, w, b, case[2])[1]
    for value, reference in zip(got, want):
        assert torch.equal(value.isnan(), reference.isnan())
        torch.testing.assert_close(value, reference, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", [CASES[1], CASES[5]], ids=["grouped", "channels-last"])
def test_lower_precision_is_close_to_float64(case, dtype):
    exact = _gradients(*_tensors(case), case[2])[1]
    low = _gradients(*_tensors(case, dtype), case[2])[1]
    tolerance = 1e-4 if dtype == torch.float32 else 5e-2
    for value, reference in zip(low, exact):
        assert value.dtype == dtype
        scale = reference.abs().max()
        torch.testing.assert_close(value.double(), reference, rtol=tolerance, atol=tolerance * scale)


@pytest.mark.parametrize("case", [CASES[1], CASES[6]], ids=["grouped", "channels-last-strided"])
def test_gradcheck_and_gradgradcheck(case):
    x, w, b = _tensors(case)
    inputs = [tensor.requires_grad_() for tensor in (x, w, b)]

    def cosine(x, w, b):
        return anyconv.generalized_conv(x, w, "cosine", b, **case[2])

    assert gradcheck(cosine, inputs)
    # the second derivative through the composed form
    assert gradgradcheck(cosine, inputs)


def test_only_the_weight_gradient():
    x, w, b = _tensors(CASES[0])
    w.requires_grad_()
    (grad_w,) = torch.autograd.grad(anyconv.generalized_conv(x, w, "cosine", b).sum(), [w])
    reference = w.detach().clone().requires_grad_()
    expected = naive_generalized_conv(x, reference, "cosine", b)
    torch.testing.assert_close(grad_w, torch.autograd.grad(expected.sum(), [reference])[0])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_inference_product_of_unit_vectors_equals_the_naive_formula(case, dtype, monkeypatch):
    # without a graph, where eps is negligible against every |p| |w|, the product of p / |p| and
    # w / |w| (layers with no more channels per group than filters per group); a zero field or a
    # NaN takes the division
    from anyconv.engine import tap_norms

    monkeypatch.setattr(tap_norms, "_CHECKED_DIVISION", 0)
    x, w, b = _tensors(case)
    arguments = case[2]
    taken = []

    def recorded(*args):
        taken.append(tap_norms.eps_negligible(*args))
        return taken[-1]

    monkeypatch.setattr(pointwise_cosine, "eps_negligible", recorded)
    for special in (None, "zero", "nan"):
        if special == "zero":
            x[0, :, 0] = 0
        elif special == "nan":
            x[(-1,) * x.dim()] = float("nan")
        expected = naive_generalized_conv(x, w, "cosine", b, **arguments)
        taken.clear()
        with torch.no_grad():
            got = anyconv.generalized_conv(x.to(dtype), w.to(dtype), "cosine", b.to(dtype), **arguments)
        tolerance = 1e-12 if dtype == torch.float64 else 1e-5
        torch.testing.assert_close(got.double(), expected, rtol=tolerance, atol=tolerance, equal_nan=True)
        # float64's eps is not negligible against unit-sized norms (1e-8 against 2e-16 |p| |w|),
        # nor float32's against the norms of a group's two channels, some of them small
        if dtype == torch.float32 and x.shape[1] <= w.shape[0] and "groups" not in arguments:
            assert taken == [special is None]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gradients_of_unit_vectors_equal_the_naive_formula(case, monkeypatch):
    # where eps is negligible against every |p| |w|, the backward takes 1 / D as 1 / |p| times
    # 1 / |w| (_unit_gradients); eps 0 takes it in float64, where the formula checks it tightly
    taken = eps_zero_cosine(monkeypatch, pointwise_cosine)
    x, w, b = _tensors(case)
    inputs = [tensor.clone(memory_format=torch.preserve_format).requires_grad_() for tensor in (x, w, b)]
    output = anyconv.generalized_conv(inputs[0], inputs[1], "cosine", inputs[2], **case[2])
    grad = torch.randn(output.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = torch.autograd.grad(output, inputs, grad)
    assert taken
    references = [tensor.clone().requires_grad_() for tensor in (x, w, b)]
    expected = naive_generalized_conv(references[0], references[1], "exact_cosine", references[2], **case[2])
    torch.testing.assert_close(output, expected, rtol=1e-12, atol=1e-12)
    for value, reference in zip(got, torch.autograd.grad(expected, references, grad)):
        torch.testing.assert_close(value, reference, rtol=1e-10, atol=1e-12)
    assert gradcheck(
        lambda x, w, b: anyconv.generalized_conv(x, w, "cosine", b, **case[2]),
        [tensor.detach().requires_grad_() for tensor in (x, w, b)],
    )
