"""The roots of lp's sums where the tap loops take them (variants/power_roots.py): the native cube
root and torch's square roots against torch's ``pow``, special values included, in every layout
and dtype the loops give, and the fallback where the native library is not built."""

from __future__ import annotations

import pytest
import torch

from anyconv.variants import power_roots

SPECIALS = [0.0, -0.0, float("inf"), float("-inf"), float("nan"), 1e-30, 3e38, 1e-40]


def _values(dtype=torch.float32):
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(5000, generator=generator, dtype=torch.float64).mul_(100)
    return torch.cat([values, torch.tensor(SPECIALS * 3, dtype=torch.float64)]).to(dtype)


def _sums(dtype=torch.float32):
    """-S as the loops give it: S >= 0 or NaN (0, tiny, huge and infinite sums among them)."""
    return -_values(dtype).abs()


def _same(got, expected, rtol):
    assert torch.equal(got.isnan(), expected.isnan())
    assert torch.equal(got.isinf(), expected.isinf())
    torch.testing.assert_close(got, expected, rtol=rtol, atol=0, equal_nan=True)


@pytest.fixture(params=["native", "torch"])
def route(request, monkeypatch):
    if request.param == "torch":
        monkeypatch.setattr(power_roots, "_function", lambda tensor: None)
    elif power_roots._function(torch.ones(1)) is None:
        pytest.skip("the native library is not built here")
    return request.param


#: relative tolerances: libmvec's cube roots within a few units in the last place; torch's pow
#: (the fallback) takes the exponent 1/3 rounded to float32, off by 1e-8, which moves the root of
#: 3e38 by 9e-7 of itself
RTOL = {
    "native": {torch.float32: 3e-7, torch.float64: 4e-15, torch.bfloat16: 8e-3},
    "torch": {torch.float32: 1e-6, torch.float64: 4e-15, torch.bfloat16: 8e-3},
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_cube_roots_equal_pows(route, dtype):
    values = _values(dtype)
    expected = values.double().abs().pow(1 / 3).mul(values.double().sign())
    _same(power_roots.cube_root(values).double(), expected, RTOL[route][dtype])


@pytest.mark.parametrize("p", [2, 3, 4])
def test_the_negated_root_and_its_slope_equal_pows(route, p):
    sums = _sums()
    wide = sums.double().neg()
    rtol = RTOL[route][torch.float32]
    _same(power_roots.negated_root_(sums.clone(), p).double(), wide.pow(1 / p).neg(), rtol)
    grad = torch.linspace(-2, 2, sums.numel())
    expected = grad.double() * wide.pow(1 / p - 1) / p
    _same(power_roots.root_slope(sums, grad, p).double(), expected, 2 * rtol)


@pytest.mark.parametrize("p", [2, 3, 4])
def test_a_channels_last_sum_keeps_its_layout(p):
    sums = -torch.rand(2, 16, 5, 7).add_(0.1).contiguous(memory_format=torch.channels_last)
    expected = sums.neg().pow(1 / p).neg()
    root = power_roots.negated_root_(sums.clone(memory_format=torch.channels_last), p)
    assert root.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(root, expected)
    grad = torch.randn(2, 16, 5, 7)
    torch.testing.assert_close(power_roots.root_slope(sums, grad, p), grad * sums.neg().pow(1 / p - 1) / p)


@pytest.mark.parametrize("p", [2, 3, 4, 0.5, 2.5])
def test_the_negated_root_and_its_slope_for_any_p(p):
    # a p other than 2, 3 and 4 (the tap loops' other exponents) takes torch's pow
    sums = _sums(torch.float64)
    wide = sums.neg()
    _same(power_roots.negated_root_(sums.clone(), p), wide.pow(1 / p).neg(), 4e-15)
    grad = torch.linspace(-2, 2, sums.numel(), dtype=torch.float64)
    _same(power_roots.root_slope(sums, grad, p), grad * wide.pow(1 / p - 1) / p, 8e-15)


@pytest.mark.parametrize("p", [2, 3, 4])
@pytest.mark.parametrize("columns", [144, 3], ids=["past-the-native-threshold", "below-it"])
def test_the_root_factor_of_a_slice_of_a_wider_buffer_equals_pow(route, p, columns):
    # the fields path's sums: rows of a wider buffer (Lp.contract_backward), special values included
    buffer = _values().abs().repeat(40)[: 50 * (columns + 48)].view(50, columns + 48)
    sums = buffer[:, :columns]
    expected = sums.double().pow(1 / p - 1)
    got = power_roots.root_factor_(sums.clone(), p)
    _same(got.double(), expected, 2 * RTOL[route][torch.float32])
    _same(power_roots.cube_root(sums).double(), sums.double().pow(1 / 3), RTOL[route][torch.float32])
