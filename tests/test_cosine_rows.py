"""The small rows' cosine in one native call each way (engine/cosine_rows.py).

Checked against the naive float64 formula (forward and gradients), against the composed form it
replaces where values are hostile (NaN, inf, zero rows and filters: the same NaN and the same
numbers), for magnitudes whose float32 squares overflow, with gradcheck and gradgradcheck, and for
where it is and is not taken.
"""

from __future__ import annotations

import pytest
import torch
from conftest import count_calls
from test_pointwise_cosine import _graph
from torch.autograd import gradcheck, gradgradcheck
from variant_reference import naive_generalized_conv

import anyconv
from anyconv.engine import cosine_rows, pointwise

pytestmark = pytest.mark.skipif(
    not cosine_rows.cosine_rows_fit(torch.ones(1, 1), torch.ones(1, 1), None),
    reason="native cosine not built",
)

#: x shape, weight shape, with a bias
CASES = [
    ((8, 96, 1, 1), (24, 96, 1, 1), True),
    ((3, 5, 1), (7, 5, 1), False),
    ((1, 1, 1, 1, 1), (1, 1, 1, 1, 1), True),
    ((5, 17, 1, 1), (1, 17, 1, 1), True),
    ((4, 6, 3, 2), (9, 6, 1, 1), True),
]
IDS = ["squeeze-excitation", "1d-no-bias", "one-channel-3d", "one-filter", "channels-last-rows"]


def _tensors(case, dtype=torch.float64, seed=0):
    x_shape, w_shape, biased = case
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(x_shape, generator=generator, dtype=torch.float64).to(dtype)
    if x.dim() == 4 and x.shape[2:] != (1, 1):
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(w_shape, generator=generator, dtype=torch.float64).to(dtype)
    b = torch.randn(w_shape[0], generator=generator, dtype=torch.float64).to(dtype) if biased else None
    return x, w, b


def _gradients(x, w, b, grad_seed=1):
    inputs = [
        t.clone(memory_format=torch.preserve_format).requires_grad_() for t in (x, w, b) if t is not None
    ]
    output = anyconv.generalized_conv(inputs[0], inputs[1], "cosine", inputs[2] if b is not None else None)
    grad = torch.randn(output.shape, generator=torch.Generator().manual_seed(grad_seed), dtype=torch.float64)
    return output, torch.autograd.grad(output, inputs, grad.to(output.dtype))


def _composed(monkeypatch):
    """Set the native cosine aside: the composed form computes the calls that follow."""
    monkeypatch.setattr(cosine_rows, "MAX_WORK", -1)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_forward_and_gradients_equal_the_naive_formula(case):
    x, w, b = _tensors(case)
    output, got = _gradients(x, w, b)
    assert "_CosineRowsBackward" in _graph(output)
    references = [t.clone().requires_grad_() for t in (x, w, b) if t is not None]
    expected = naive_generalized_conv(*references[:2], "cosine", references[2] if b is not None else None)
    torch.testing.assert_close(output, expected, rtol=1e-12, atol=1e-12)
    grad = torch.randn(output.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for value, reference in zip(got, torch.autograd.grad(expected, references, grad)):
        torch.testing.assert_close(value, reference, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_float32_is_within_rounding_of_float64(case):
    x, w, b = _tensors(case)
    exact, exact_grads = _gradients(x, w, b)
    low, low_grads = _gradients(*(None if t is None else t.float() for t in (x, w, b)))
    assert low.dtype == torch.float32
    torch.testing.assert_close(low.double(), exact, rtol=1e-6, atol=1e-6)
    for value, reference in zip(low_grads, exact_grads):
        torch.testing.assert_close(value.double(), reference, rtol=1e-5, atol=1e-5 * reference.abs().max())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_nan_inf_and_zero_vectors_give_the_composed_forms_numbers(dtype, monkeypatch):
    x, w, b = _tensors(CASES[0], dtype)
    x[0, 3] = float("nan")
    x[1, 5] = float("inf")
    x[2] = 0  # a zero field: output 0, no radial term
    w[4, 7] = float("-inf")
    w[6] = 0
    output, got = _gradients(x, w, b)
    _composed(monkeypatch)
    expected, want = _gradients(x, w, b)
    assert "_CosineRowsBackward" not in _graph(expected)
    tolerance = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {}
    torch.testing.assert_close(output, expected, equal_nan=True, **tolerance)
    for value, reference in zip(got, want):
        assert torch.equal(value.isnan(), reference.isnan())
        torch.testing.assert_close(value, reference, equal_nan=True, **tolerance)


@pytest.mark.parametrize("scale", [1e30, 1e-30, 1e6], ids=["huge", "tiny", "offset"])
def test_extreme_magnitudes_in_float32_equal_the_float64_formula(scale):
    # every sum in double: the float32 squares of 1e30 overflow, those of 1e-30 underflow; an
    # offset of 1e6 puts the values far from zero
    x, w, b = _tensors(CASES[0])
    x = x * scale if scale != 1e6 else x + scale
    output = anyconv.generalized_conv(x.float(), w.float(), "cosine", b.float())
    expected = naive_generalized_conv(x.float().double(), w.float().double(), "cosine", b.float().double())
    if scale == 1e-30:
        # |p| |w| is under eps: the formula's own (tiny) quotient
        assert expected.sub(b.float().double()[:, None, None]).abs().max() < 1e-6
    torch.testing.assert_close(output.double(), expected, rtol=1e-6, atol=1e-6)


def test_gradcheck_and_gradgradcheck():
    x, w, b = _tensors(CASES[4])
    inputs = [t.requires_grad_() for t in (x, w, b)]

    def cosine(x, w, b):
        return anyconv.generalized_conv(x, w, "cosine", b)

    assert "_CosineRowsBackward" in _graph(cosine(*inputs))
    assert gradcheck(cosine, inputs)
    # the second derivative through the composed form
    assert gradgradcheck(cosine, inputs)


@pytest.mark.parametrize("needed", [(True, False, False), (False, True, False), (False, False, True)])
def test_only_the_gradients_asked_for(needed):
    x, w, b = _tensors(CASES[0])
    inputs = [t.clone().requires_grad_(flag) for t, flag in zip((x, w, b), needed)]
    output = anyconv.generalized_conv(*inputs[:2], "cosine", inputs[2])
    (got,) = torch.autograd.grad(output.sum(), [t for t in inputs if t.requires_grad])
    references = [t.clone().requires_grad_(flag) for t, flag in zip((x, w, b), needed)]
    expected = naive_generalized_conv(*references[:2], "cosine", references[2])
    (want,) = torch.autograd.grad(expected.sum(), [t for t in references if t.requires_grad])
    torch.testing.assert_close(got, want)


def test_inference_takes_it_without_a_graph(monkeypatch):
    x, w, b = _tensors(CASES[0])
    calls = count_calls(monkeypatch, cosine_rows, "_forward")
    with torch.no_grad():
        output = anyconv.generalized_conv(x, w, "cosine", b)
    assert calls and output.grad_fn is None
    torch.testing.assert_close(output, naive_generalized_conv(x, w, "cosine", b))


def test_where_it_is_not_taken(monkeypatch):
    x, w, b = _tensors(CASES[0])
    x.requires_grad_()
    # over the work bound, 16-bit, or watched by torch's machinery: the composition
    monkeypatch.setattr(cosine_rows, "MAX_WORK", x.numel() * w.shape[0] - 1)
    assert "_CosineRowsBackward" not in _graph(anyconv.generalized_conv(x, w, "cosine", b))
    monkeypatch.undo()
    assert "_CosineRowsBackward" not in _graph(
        anyconv.generalized_conv(x.half(), w.half(), "cosine", b.half())
    )
    monkeypatch.setattr(pointwise, "cosine_rows_fit", lambda *tensors: False)
    assert "_CosineRowsBackward" not in _graph(anyconv.generalized_conv(x, w, "cosine", b))
    monkeypatch.undo()
    monkeypatch.setenv("ANYCONV_NATIVE", "0")
    assert "_CosineRowsBackward" not in _graph(anyconv.generalized_conv(x, w, "cosine", b))


def test_torch_func_sees_the_composition():
    x, w, b = _tensors(CASES[0])
    grads = torch.func.grad(lambda w: anyconv.generalized_conv(x, w, "cosine", b).square().sum())(w)
    reference = w.clone().requires_grad_()
    (want,) = torch.autograd.grad(
        naive_generalized_conv(x, reference, "cosine", b).square().sum(), [reference]
    )
    torch.testing.assert_close(grads, want)
    batched = torch.func.vmap(lambda x: anyconv.generalized_conv(x, w, "cosine", b))(x[:, None])
    torch.testing.assert_close(batched[:, 0], naive_generalized_conv(x, w, "cosine", b))
