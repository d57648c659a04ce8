"""Every dtype torch's CPU convolution supports, compared with torch at that dtype's precision.

Floating point: the error against a float64 reference of the same (rounded) inputs is bounded by
a few units of the dtype's epsilon times ``conv(|x|, |w|)``, the scale a sum of products carries
(a bound that holds at every output, also where the output itself is near zero). Integers:
receptive fields, fold and conv are exact.
"""

import pytest
import torch
import torch.nn.functional as F
from conftest import take_views_everywhere

import anyconv

FLOATING = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
COMPLEX = [torch.complex128, torch.complex64]
INTEGERS = [torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8]

TORCH_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}

CONV_CASES = [
    {"id": "1d-same", "x": (2, 4, 17), "w": (6, 4, 3), "with": {"padding": "same"}},
    {"id": "2d-pad-stride", "x": (2, 8, 11, 9), "w": (16, 8, 3, 3), "with": {"padding": 1, "stride": 2}},
    {"id": "2d-grouped", "x": (1, 12, 10, 10), "w": (6, 4, 3, 3), "with": {"groups": 3, "dilation": 2}},
    {"id": "mode", "x": (2, 3, 8, 8), "w": (5, 3, 5, 5), "with": {"padding": 2, "padding_mode": "reflect"}},
    {"id": "3d", "x": (1, 4, 6, 5, 7), "w": (4, 2, 3, 3, 2), "with": {"groups": 2, "padding": 1}},
]  # fmt: skip


def _supported(dtype: torch.dtype) -> bool:
    """Whether torch's own CPU conv2d runs at ``dtype`` (the reference this file compares with)."""
    try:
        F.conv2d(torch.ones(1, 1, 3, 3, dtype=dtype), torch.ones(1, 1, 2, 2, dtype=dtype))
    except (RuntimeError, NotImplementedError):
        return False
    return True


def _torch_conv(input, weight, kwargs):
    kwargs = dict(kwargs)
    mode = kwargs.pop("padding_mode", "zeros")
    ndim = weight.dim() - 2
    if mode != "zeros":
        padding = kwargs.pop("padding")
        input = F.pad(input, (padding,) * (2 * ndim), mode=mode)
    return TORCH_CONV[ndim](input, weight, **kwargs)


def _scale(input, weight, kwargs):
    return _torch_conv(input.double().abs(), weight.double().abs(), kwargs)


def _bound(dtype: torch.dtype) -> float:
    # measured here: at most about one epsilon, for anyconv and torch alike; two leaves headroom
    return 2 * torch.finfo(dtype).eps


@pytest.mark.parametrize("views", [False, True], ids=["fields", "views"])
@pytest.mark.parametrize("dtype", FLOATING, ids=str)
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda case: case["id"])
def test_conv_forward_and_backward_at_each_floating_dtype(case, dtype, views, monkeypatch):
    if not _supported(dtype):
        pytest.skip(f"torch's CPU convolution does not support {dtype} here")
    if views:
        take_views_everywhere(monkeypatch)
    generator = torch.Generator().manual_seed(0)
    input = torch.randn(case["x"], generator=generator).to(dtype).requires_grad_()
    weight = torch.randn(case["w"], generator=generator).to(dtype).requires_grad_()
    output = anyconv.conv(input, weight, **case["with"])
    assert output.dtype == dtype
    exact_input = input.detach().double().requires_grad_()
    exact_weight = weight.detach().double().requires_grad_()
    reference = _torch_conv(exact_input, exact_weight, case["with"])
    scale = _scale(input, weight, case["with"])
    assert ((output.double() - reference).abs() <= _bound(dtype) * scale + 1e-12).all()
    # torch at the same dtype lands within the same bound: both are as precise as the dtype allows
    native = _torch_conv(input.detach(), weight.detach(), case["with"]).double()
    assert ((native - reference).abs() <= _bound(dtype) * scale + 1e-12).all()

    grad = torch.randn(output.shape, generator=generator).to(dtype)
    grad_input, grad_weight = torch.autograd.grad(output, (input, weight), grad)
    assert grad_input.dtype == dtype and grad_weight.dtype == dtype
    exact = torch.autograd.grad(reference, (exact_input, exact_weight), grad.double())
    # the scales of the two gradients: the same products, with absolute values
    abs_input = exact_input.detach().abs().requires_grad_()
    abs_weight = exact_weight.detach().abs().requires_grad_()
    scaled = _torch_conv(abs_input, abs_weight, case["with"])
    input_scale, weight_scale = torch.autograd.grad(scaled, (abs_input, abs_weight), grad.double().abs())
    assert ((grad_input.double() - exact[0]).abs() <= _bound(dtype) * input_scale + 1e-12).all()
    assert ((grad_weight.double() - exact[1]).abs() <= _bound(dtype) * weight_scale + 1e-12).all()


@pytest.mark.parametrize("dtype", COMPLEX, ids=str)
@pytest.mark.parametrize("case", CONV_CASES[:3], ids=lambda case: case["id"])
def test_complex_conv_and_its_gradients_match_torch(case, dtype):
    generator = torch.Generator().manual_seed(1)
    input = torch.randn(case["x"], dtype=dtype, generator=generator).requires_grad_()
    weight = torch.randn(case["w"], dtype=dtype, generator=generator).requires_grad_()
    output = anyconv.conv(input, weight, **case["with"])
    reference = _torch_conv(input, weight, case["with"])
    tolerance = {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.complex64 else {}
    torch.testing.assert_close(output, reference, **tolerance)
    grad = torch.randn(output.shape, dtype=dtype, generator=generator)
    got = torch.autograd.grad(output, (input, weight), grad)
    expected = torch.autograd.grad(reference, (input, weight), grad)
    for mine, theirs in zip(got, expected):
        torch.testing.assert_close(mine, theirs, **tolerance)


def test_complex_gradcheck():
    generator = torch.Generator().manual_seed(2)
    input = torch.randn(1, 2, 5, 4, dtype=torch.complex128, generator=generator, requires_grad=True)
    weight = torch.randn(3, 2, 2, 3, dtype=torch.complex128, generator=generator, requires_grad=True)
    call = lambda x, w: anyconv.conv(x, w, padding=1, stride=(1, 2))  # noqa: E731
    assert torch.autograd.gradcheck(call, (input, weight))


def _small_integers(shape, dtype, generator, high=10):
    low = 0 if dtype == torch.uint8 else -high
    return torch.randint(low, high, shape, generator=generator).to(dtype)


FIELD_CASES = [
    {"id": "2d", "x": (2, 3, 7, 6), "kernel": (3, 2), "with": {"padding": 1, "stride": (2, 1)}},
    {"id": "2d-dilation", "x": (1, 2, 9, 9), "kernel": 3, "with": {"dilation": 2, "padding": (1, 2)}},
    {"id": "3d", "x": (1, 2, 5, 4, 6), "kernel": (2, 3, 2), "with": {"padding": 1, "stride": 2}},
    {"id": "4d", "x": (1, 2, 4, 3, 4, 3), "kernel": (2, 2, 3, 2), "with": {"padding": 1}},
]  # fmt: skip


@pytest.mark.parametrize("dtype", INTEGERS, ids=str)
@pytest.mark.parametrize("case", FIELD_CASES, ids=lambda case: case["id"])
def test_integer_unfold_patches_and_fold_are_exact(case, dtype):
    generator = torch.Generator().manual_seed(3)
    input = _small_integers(case["x"], dtype, generator)
    kwargs = case["with"]
    columns = anyconv.unfold(input, case["kernel"], **kwargs)
    assert columns.dtype == dtype
    # float64 holds these small integers exactly: the float result is the integer reference
    assert torch.equal(columns, anyconv.unfold(input.double(), case["kernel"], **kwargs).to(dtype))
    if input.dim() == 4:
        assert torch.equal(columns.double(), F.unfold(input.double(), case["kernel"], **kwargs))
    view = anyconv.patches(input, case["kernel"], **kwargs)
    assert view.dtype == dtype
    assert torch.equal(view, anyconv.patches(input.double(), case["kernel"], **kwargs).to(dtype))
    # fold sums up to prod(kernel) values of at most 10 each: no overflow even in int8
    blocks = _small_integers(columns.shape, dtype, generator, high=4)
    image = anyconv.fold(blocks, case["x"][2:], case["kernel"], **kwargs)
    assert image.dtype == dtype
    expected = anyconv.fold(blocks.double(), case["x"][2:], case["kernel"], **kwargs)
    assert torch.equal(image, expected.to(dtype))
    if input.dim() == 4:
        expected = F.fold(blocks.double(), case["x"][2:], case["kernel"], **kwargs)
        assert torch.equal(image.double(), expected)


@pytest.mark.parametrize("dtype", INTEGERS, ids=str)
@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_integer_padding_modes_are_exact(dtype, mode):
    generator = torch.Generator().manual_seed(4)
    input = _small_integers((2, 3, 5, 6), dtype, generator)
    columns = anyconv.unfold(input, 3, padding=2, padding_mode=mode)
    expected = F.unfold(F.pad(input.double(), (2, 2, 2, 2), mode=mode), 3)
    assert torch.equal(columns.double(), expected)


@pytest.mark.parametrize("dtype", INTEGERS, ids=str)
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda case: case["id"])
def test_integer_conv_is_exact(case, dtype):
    # float64 holds these sums exactly; torch's CPU conv runs at some integer dtypes, not all
    generator = torch.Generator().manual_seed(5)
    input = _small_integers(case["x"], dtype, generator, high=3)
    weight = _small_integers(case["w"], dtype, generator, high=3)
    output = anyconv.conv(input, weight, **case["with"])
    assert output.dtype == dtype
    expected = _torch_conv(input.double(), weight.double(), case["with"])
    assert torch.equal(output, expected.to(dtype))
    try:
        native = _torch_conv(input, weight, case["with"])
    except (RuntimeError, NotImplementedError):
        return  # torch's kernel for this geometry (e.g. dilated) has no integer version
    assert torch.equal(output, native)


def test_unfold_of_bool_keeps_the_dtype():
    input = torch.rand(1, 2, 5, 5, generator=torch.Generator().manual_seed(6)) > 0.5
    columns = anyconv.unfold(input, 3, padding=1)
    assert columns.dtype == torch.bool
    assert torch.equal(columns, F.unfold(input.double(), 3, padding=1).bool())
