"""The col2im form under autograd (engine/conv_transpose_recorded.py): the inference fold forward and
a backward of two products on the gradient's columns give torch's output and gradients, in
float64, through the native columns and the eager ones, in chunks of samples, for every layout."""

from __future__ import annotations

import importlib

import pytest
import torch
from test_conv_transpose import forced
from torch_reference import CONV_TRANSPOSES

import anyconv

TRANSPOSE = importlib.import_module("anyconv.engine.conv_transpose")
RECORDED = importlib.import_module("anyconv.engine.conv_transpose_recorded")

# (id, input shape, weight shape, options, memory budget): stride above 1 with overlapping taps,
# the geometries the recorded fold takes
CASES = [
    ("unet-4x4-stride-2", (2, 6, 5, 5), (6, 4, 4, 4), dict(stride=2, padding=1), None),
    ("groups-output-padding", (3, 6, 4, 5), (6, 2, 3, 3), dict(stride=2, output_padding=1, groups=3), None),
    # about 270 KiB of float64 columns per sample: one sample per chunk
    ("chunks-of-one-sample", (5, 8, 16, 16), (8, 4, 4, 4), dict(stride=2, padding=1, groups=2), 300 * 2**10),
    ("1d-dilated", (2, 3, 9), (3, 5, 3), dict(stride=2, padding=2, dilation=2), None),
    ("3d", (1, 4, 3, 4, 3), (4, 3, 3, 2, 3), dict(stride=2, padding=1), None),
    ("empty-batch", (0, 4, 3, 3), (4, 2, 3, 3), dict(stride=2), None),
    ("asymmetric-strides", (2, 2, 4, 3), (2, 3, 3, 4), dict(stride=(2, 3), padding=(1, 0)), None),
]


def _tensors(input, weight, options, channels_last=False):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(input, dtype=torch.float64, generator=generator)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(weight, dtype=torch.float64, generator=generator)
    b = torch.randn(weight[1] * options.get("groups", 1), dtype=torch.float64, generator=generator)
    return [tensor.requires_grad_() for tensor in (x, w, b)]


def _spied(monkeypatch):
    taken = []
    for name in ("recorded_transpose", "col2im_transpose"):
        original = getattr(TRANSPOSE, name)
        monkeypatch.setattr(
            TRANSPOSE, name, lambda *args, _f=original, _n=name, **kw: taken.append(_n) or _f(*args, **kw)
        )
    return taken


def _assert_gradients_match_torch(input, weight, options, budget, channels_last=False):
    x, w, b = _tensors(input, weight, options, channels_last)
    with forced("auto"):
        ours = anyconv.conv_transpose(x, w, b, **options, memory_budget=budget)
    theirs = CONV_TRANSPOSES[w.dim() - 2](x, w, b, **options)
    torch.testing.assert_close(ours, theirs)
    assert ours.stride() == theirs.stride()
    grad = torch.randn(ours.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for mine, reference in zip(
        torch.autograd.grad(ours, (x, w, b), grad), torch.autograd.grad(theirs, (x, w, b), grad)
    ):
        torch.testing.assert_close(mine, reference)


@pytest.mark.parametrize(
    ("input", "weight", "options", "budget"), [case[1:] for case in CASES], ids=[case[0] for case in CASES]
)
def test_gradients_equal_torchs(monkeypatch, input, weight, options, budget):
    taken = _spied(monkeypatch)
    _assert_gradients_match_torch(input, weight, options, budget)
    assert taken == ["recorded_transpose"]


@pytest.mark.parametrize(
    ("input", "weight", "options", "budget"), [case[1:] for case in CASES], ids=[case[0] for case in CASES]
)
def test_eager_columns_give_the_same_gradients(monkeypatch, input, weight, options, budget):
    # where the native copy is not built, or the dtype is not one it takes: im2col on the padded gradient
    monkeypatch.setattr(RECORDED, "columns_fit", lambda tensor: False)
    _assert_gradients_match_torch(input, weight, options, budget)


def test_a_channels_last_input_and_gradient(monkeypatch):
    taken = _spied(monkeypatch)
    _assert_gradients_match_torch(
        (2, 4, 5, 5), (4, 3, 4, 4), dict(stride=2, padding=1), None, channels_last=True
    )
    assert taken == ["recorded_transpose"]


@pytest.mark.parametrize(
    ("input", "weight", "options", "budget"),
    [case[1:] for case in CASES[:4]],
    ids=[case[0] for case in CASES[:4]],
)
def test_gradcheck_and_gradgradcheck(input, weight, options, budget):
    # the second derivative differentiates the autograd col2im form, recomputed
    small = (min(input[0], 2), *input[1:])
    tensors = _tensors(small, weight, options)
    function = lambda *t: anyconv.conv_transpose(*t, **options, memory_budget=budget)  # noqa: E731
    # the chunked case has thousands of inputs: its checks take random directions (fast mode),
    # not one finite difference per input
    fast = budget is not None
    assert torch.autograd.gradcheck(function, tensors, fast_mode=fast)
    assert torch.autograd.gradgradcheck(function, tensors, fast_mode=fast)


def test_only_the_needed_gradients_are_computed(monkeypatch):
    x, w, b = _tensors((2, 4, 5, 5), (4, 3, 4, 4), dict(stride=2, padding=1))
    products = []
    original = RECORDED.row_product
    monkeypatch.setattr(RECORDED, "row_product", lambda *args: products.append(1) or original(*args))
    out = anyconv.conv_transpose(x.detach(), w, b, stride=2, padding=1)
    (grad_weight,) = torch.autograd.grad(out, (w,), torch.ones_like(out))
    assert len(products) == 1
    reference = torch.nn.functional.conv_transpose2d(x.detach(), w, b, stride=2, padding=1)
    torch.testing.assert_close(
        grad_weight, torch.autograd.grad(reference, (w,), torch.ones_like(reference))[0]
    )


def test_an_output_padding_past_the_stride_keeps_the_autograd_form(monkeypatch):
    # output_padding 2 at stride 2 (a dilation of 3 allows it): the adjoint convolution has a
    # position more than the input, so the autograd col2im form takes the call
    options = dict(stride=2, dilation=3, output_padding=2)
    assert RECORDED.adjoint_geometry((4,), (3,), (2,), (0,), (3,), (15,)) is None
    taken = _spied(monkeypatch)
    _assert_gradients_match_torch((2, 3, 4), (3, 2, 3), options, None)
    assert taken == ["col2im_transpose"]


def test_a_bias_alone_needs_no_product(monkeypatch):
    x, w, b = _tensors((2, 4, 5, 5), (4, 3, 4, 4), dict(stride=2, padding=1))
    products = []
    original = RECORDED.row_product
    monkeypatch.setattr(RECORDED, "row_product", lambda *args: products.append(1) or original(*args))
    out = anyconv.conv_transpose(x.detach(), w.detach(), b, stride=2, padding=1)
    (grad_bias,) = torch.autograd.grad(out, (b,), torch.ones_like(out))
    assert products == [] and torch.equal(grad_bias, torch.full_like(b, out[:, 0].numel()))


def test_complex_gradients_are_the_adjoints_torch_gives(monkeypatch):
    taken = _spied(monkeypatch)
    generator = torch.Generator().manual_seed(0)
    x, w = (
        torch.randn(shape, dtype=torch.complex128, generator=generator)
        for shape in ((2, 4, 5, 5), (4, 3, 4, 4))
    )
    x.requires_grad_(), w.requires_grad_()
    ours = anyconv.conv_transpose(x, w, stride=2, padding=1)
    theirs = torch.nn.functional.conv_transpose2d(x, w, stride=2, padding=1)
    grad = torch.randn(ours.shape, dtype=torch.complex128, generator=generator)
    for mine, reference in zip(
        torch.autograd.grad(ours, (x, w), grad), torch.autograd.grad(theirs, (x, w), grad)
    ):
        torch.testing.assert_close(mine, reference)
    assert taken == ["recorded_transpose"]
