"""The fused lp loops' power: whole exponents by products, any other by exp and log, same rules.

Forward and gradients of ``power_sums`` against the float64 formula, for whole and fractional p,
with differences that are exactly zero, NaN and inf among the taps.
"""

import pytest
import torch

from anyconv.variants import fused

POWERS = [1.0, 2.0, 3.0, 4.0, 5.0, 2.5, 0.7]
DTYPES = [pytest.param(torch.float32, id="float32"), pytest.param(torch.float64, id="float64")]

needs_native = pytest.mark.skipif(not fused.native_kernels_available(), reason="no C++ compiler here")


def _formula(fields, filters, p):
    """sum_k |p_k - w_k|^p in float64, 0 where the difference is 0 (every power, as the loops)."""
    magnitude = (fields.double()[:, :, None] - filters.double()[:, None]).abs()
    return torch.where(magnitude == 0, 0, magnitude.pow(p)).sum(-1)


def _formula_gradients(fields, filters, scale, p):
    """The gradients of -sum scale * S / p in float64: d|e|^p / de = p |e|^(p-1) sign(e), 0 at e = 0."""
    wide = [fields.double().requires_grad_(), filters.double().requires_grad_()]
    difference = wide[0][:, :, None] - wide[1][:, None]
    slope = torch.where(difference == 0, 0, difference.abs().pow(p - 1) * difference.sign())
    return torch.autograd.grad(-(slope.detach() * difference * scale.double()[..., None]).sum(), wide)


def _same_specials(got, want):
    assert torch.equal(got.isnan(), want.isnan())
    assert torch.equal(got == float("inf"), want == float("inf"))
    assert torch.equal(got == float("-inf"), want == float("-inf"))
    finite = want.isfinite()
    torch.testing.assert_close(got[finite], want[finite])


def _data(dtype, specials=False):
    generator = torch.Generator().manual_seed(0)
    fields = torch.randn(2, 37, 11, generator=generator).to(dtype)
    filters = torch.randn(2, 70, 11, generator=generator).to(dtype)
    # exact zero differences: a filter equal to a field, and a tap shared by all
    filters[0, 3] = fields[0, 5]
    fields[:, :, 4] = filters[:, 0, 4, None]
    if specials:
        fields[0, 2, 1], fields[1, 7, 9], filters[0, 9, 2] = float("nan"), float("inf"), float("-inf")
    return fields, filters


@needs_native
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", POWERS, ids=str)
def test_power_sums_match_the_formula(p, dtype):
    fields, filters = _data(dtype)
    got = fused.power_sums(fields, filters, p)
    assert fused.last_path() == "native"
    # the whole powers are products, rounded as the sum is; exp and log add a few units more
    ulps = 4 if p in (1, 2, 3, 4) else 32
    torch.testing.assert_close(
        got.double(), _formula(fields, filters, p), rtol=ulps * torch.finfo(dtype).eps, atol=0
    )


@needs_native
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", POWERS, ids=str)
def test_power_sums_gradients_match_the_formula(p, dtype):
    fields, filters = _data(dtype)
    scale = torch.randn(2, 37, 70, generator=torch.Generator().manual_seed(1)).to(dtype)
    grad_fields, grad_filters = fused.power_sums_backward(fields, filters, scale, p)
    assert fused.last_path() == "native"
    expected = _formula_gradients(fields, filters, scale, p)
    tolerance = {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {}
    torch.testing.assert_close(grad_fields.double(), expected[0], **tolerance)
    torch.testing.assert_close(grad_filters.double(), expected[1], **tolerance)


@needs_native
@pytest.mark.parametrize("p", POWERS, ids=str)
def test_nan_and_inf_follow_the_formula(p):
    fields, filters = _data(torch.float64, specials=True)
    _same_specials(fused.power_sums(fields, filters, p), _formula(fields, filters, p))
    scale = torch.rand(2, 37, 70, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    # a NaN difference makes its gradients NaN whatever the power (|NaN|^0 included)
    for got, want in zip(
        fused.power_sums_backward(fields, filters, scale, p), _formula_gradients(fields, filters, scale, p)
    ):
        _same_specials(got, want)


@needs_native
@pytest.mark.parametrize("p", [1.0, 3.0, 2.5], ids=str)
def test_native_and_eager_powers_agree(p, monkeypatch):
    fields, filters = _data(torch.float32)
    native = fused.power_sums(fields, filters, p)
    monkeypatch.setenv("ANYCONV_NATIVE", "0")
    torch.testing.assert_close(native, fused.power_sums(fields, filters, p))
