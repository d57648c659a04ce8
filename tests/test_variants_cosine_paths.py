"""The cosine backward's three paths (two products, tiny-norm fields, exact) against autograd."""

import pytest
import torch

from anyconv.variants import cosine

SCALES = [1.0, 1e-3, 1e-6, 1e-9, 1e-12]


def _relative_errors(fields, filters):
    generator = torch.Generator().manual_seed(1)
    grad = torch.randn(*fields.shape[:2], filters.shape[1], dtype=torch.float64, generator=generator)
    exact_fields = fields.double().requires_grad_()
    exact_filters = filters.double().requires_grad_()
    output = cosine.Cosine().contract(exact_fields, exact_filters)
    want_fields, want_filters = torch.autograd.grad(output, (exact_fields, exact_filters), grad)
    got_fields, got_filters = cosine.Cosine().contract_backward(fields, filters, grad.to(fields.dtype))
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
