"""The cosine variants' backwards, from their forward output, against autograd: zero, tiny and
ordinary fields, tiny filters, every exponent and q (numbers and per-channel tensors)."""

import pytest
import torch

from anyconv.engine.product_gradients import field_gradients
from anyconv.variants import cosine

SCALES = [1.0, 1e-3, 1e-6, 1e-9, 1e-12]


def _relative_errors(fields, filters):
    generator = torch.Generator().manual_seed(1)
    grad = torch.randn(*fields.shape[:2], filters.shape[1], dtype=torch.float64, generator=generator)
    exact_fields = fields.double().requires_grad_()
    exact_filters = filters.double().requires_grad_()
    output = cosine.Cosine().contract(exact_fields, exact_filters)
    want_fields, want_filters = torch.autograd.grad(output, (exact_fields, exact_filters), grad)
    # the backward reads the output the forward computed in the fields' own dtype
    own_output = cosine.Cosine().contract(fields, filters)
    got_fields, got_filters = field_gradients(
        cosine.Cosine(), fields, filters, grad.to(fields.dtype), own_output, None, {}
    )
    rows = fields.norm(dim=-1) > 0
    field_error = ((got_fields - want_fields).norm(dim=-1)[rows] / want_fields.norm(dim=-1)[rows]).max()
    filter_scale = want_filters.norm(dim=-1).clamp_min(1e-30)
    filter_error = ((got_filters - want_filters).norm(dim=-1) / filter_scale).max()
    return field_error.item(), filter_error.item()


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize(
    "dtype, magnitude, tolerance",
    [(torch.float32, 1.0, 1e-5), (torch.float64, 1.0, 1e-10), (torch.float64, 1e4, 1e-10)],
    ids=["float32", "float64", "float64-large"],
)
def test_cosine_backward_with_tiny_and_zero_fields(dtype, magnitude, tolerance, scale):
    generator = torch.Generator().manual_seed(0)
    fields = torch.randn(2, 300, 50, dtype=dtype, generator=generator) * magnitude
    filters = torch.randn(2, 7, 50, dtype=dtype, generator=generator) * magnitude
    fields[0, :5] = 0
    filters[1, 2] = 0
    fields[1, 3] *= scale
    fields[0, 7] *= scale
    fields[0, 100] *= scale / 10
    assert max(_relative_errors(fields, filters)) < tolerance


def test_cosine_backward_with_a_tiny_filter():
    generator = torch.Generator().manual_seed(0)
    fields = torch.randn(2, 300, 50, generator=generator)
    filters = torch.randn(2, 7, 50, generator=generator)
    filters[0, 1] *= 1e-9
    assert max(_relative_errors(fields, filters)) < 1e-5


@pytest.mark.parametrize(
    "exponent",
    [0.1, 0.5, 1.0, 1.5, 2.0, 7.0, torch.linspace(0.2, 4.0, 7, dtype=torch.float64).reshape(1, 1, 7)],
    ids=["0.1", "0.5", "1", "1.5", "2", "7", "per-channel"],
)
@pytest.mark.parametrize(
    "q",
    [1e-3, 1.0, torch.logspace(-3, 0, 7, dtype=torch.float64).reshape(1, 1, 7)],
    ids=["1e-3", "1", "per-channel"],
)
def test_sharpened_cosine_backward_from_its_output_matches_autograd(exponent, q):
    # y = sign(s) |s|^e is all the backward sees of s: the slope comes back from y by a power
    generator = torch.Generator().manual_seed(0)
    fields = torch.randn(2, 300, 50, dtype=torch.float64, generator=generator)
    filters = torch.randn(2, 7, 50, dtype=torch.float64, generator=generator)
    fields[1, 3:40] *= 1e-20
    fields[0, :5] = 0
    # a field orthogonal to a filter: s = 0, whose gradient is taken as 0
    fields[0, 10] -= (fields[0, 10] @ filters[0, 0]) / filters[0, 0].square().sum() * filters[0, 0]
    grad = torch.randn(2, 300, 7, dtype=torch.float64, generator=generator)
    variant = cosine.SharpenedCosine()
    exact_fields, exact_filters = fields.clone().requires_grad_(), filters.clone().requires_grad_()
    output = variant.contract(exact_fields, exact_filters, exponent, q)
    want_fields, want_filters = torch.autograd.grad(output, (exact_fields, exact_filters), grad)
    options = {"exponent": exponent, "q": q}
    got_fields, got_filters = field_gradients(variant, fields, filters, grad, output.detach(), None, options)
    # autograd's gradient at s = 0 is 0 * inf for exponents under 1: compare the other fields
    defined = want_fields.isfinite().all(-1)
    if not isinstance(exponent, torch.Tensor) and exponent >= 1:
        assert defined.all()
    torch.testing.assert_close(got_fields[defined], want_fields[defined], rtol=1e-12, atol=1e-14)
    assert got_fields.isfinite().all() and got_filters.isfinite().all()
    if defined.all():
        torch.testing.assert_close(got_filters, want_filters, rtol=1e-12, atol=1e-14)
