"""anyconv.conv_transpose against F.conv_transpose1d/2d/3d (float64, forward and both gradients),
a naive loop for N = 4, torch's output_padding rule, chunking over samples, and bad input; each
table runs through both forms, col2im and phases (``FORM`` of engine/conv_transpose.py forced)."""

from __future__ import annotations

import contextlib
import importlib
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference_conv import naive_conv_transpose
from torch_reference import CONV_TRANSPOSES

import anyconv

DOUBLE = torch.float64
OPTIONS = ("stride", "padding", "output_padding", "groups", "dilation")
#: the forms every table runs through; "auto" picks col2im on these small sizes
FORMS = ("col2im", "phases")
# the module, not the function engine/__init__.py exports under the same name
TRANSPOSE = importlib.import_module("anyconv.engine.conv_transpose")


@contextlib.contextmanager
def forced(form):
    """conv_transpose takes ``form`` inside the block (as ANYCONV_CONV_TRANSPOSE=form would)."""
    saved, TRANSPOSE.FORM = TRANSPOSE.FORM, form
    try:
        yield
    finally:
        TRANSPOSE.FORM = saved


@pytest.fixture(params=FORMS)
def form(request):
    with forced(request.param):
        yield request.param


def _tensors(case, seed=0, requires_grad=False):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(case["input"], dtype=DOUBLE, generator=generator)
    w = torch.randn(case["weight"], dtype=DOUBLE, generator=generator)
    groups = case.get("groups", 1)
    b = (
        torch.randn(case["weight"][1] * groups, dtype=DOUBLE, generator=generator)
        if case.get("bias", True)
        else None
    )
    for tensor in (x, w, b):
        if tensor is not None:
            tensor.requires_grad_(requires_grad)
    return x, w, b


def _options(case):
    return {key: case[key] for key in OPTIONS if key in case}


def _assert_matches_torch(case, seed=0, **extra):
    x, w, b = _tensors(case, seed, requires_grad=True)
    options = _options(case)
    reference = CONV_TRANSPOSES[w.dim() - 2]
    ours = anyconv.conv_transpose(x, w, b, **options, **extra)
    theirs = reference(x, w, b, **options)
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)
    # inference (nothing recorded) takes its own route in the col2im form where it is faster
    # (folded_transpose), and here on every geometry too
    saved = TRANSPOSE._folds_faster
    for rule in (saved, lambda *sizes: True):
        TRANSPOSE._folds_faster = rule
        try:
            with torch.no_grad():
                inferred = anyconv.conv_transpose(x, w, b, **options, **extra)
        finally:
            TRANSPOSE._folds_faster = saved
        torch.testing.assert_close(inferred, theirs, rtol=1e-10, atol=1e-10)
    grad = torch.randn(ours.shape, dtype=DOUBLE, generator=torch.Generator().manual_seed(seed + 1))
    inputs = [tensor for tensor in (x, w, b) if tensor is not None]
    for mine, expected in zip(
        torch.autograd.grad(ours, inputs, grad), torch.autograd.grad(theirs, inputs, grad)
    ):
        torch.testing.assert_close(mine, expected, rtol=1e-10, atol=1e-10)


CASES = [
    dict(id="1d", input=(2, 3, 7), weight=(3, 4, 3)),
    dict(
        id="1d-stride-output-padding",
        input=(2, 2, 6),
        weight=(2, 3, 4),
        stride=3,
        padding=1,
        output_padding=2,
    ),
    dict(id="1d-unbatched", input=(3, 5), weight=(3, 2, 3), stride=2),
    dict(id="2d", input=(2, 3, 5, 6), weight=(3, 4, 3, 2)),
    dict(
        id="2d-stride2-pad1-op1",
        input=(2, 4, 5, 5),
        weight=(4, 3, 3, 3),
        stride=2,
        padding=1,
        output_padding=1,
    ),
    dict(
        id="2d-tuples",
        input=(2, 2, 4, 6),
        weight=(2, 3, 3, 2),
        stride=(2, 3),
        padding=(1, 0),
        dilation=(1, 2),
    ),
    dict(
        id="2d-output-padding-below-dilation",
        input=(1, 2, 4, 4),
        weight=(2, 2, 3, 3),
        dilation=3,
        output_padding=2,
    ),
    dict(
        id="2d-output-padding-past-padding",
        input=(1, 2, 4, 4),
        weight=(2, 2, 2, 2),
        stride=4,
        output_padding=3,
    ),
    dict(id="2d-groups", input=(2, 6, 4, 4), weight=(6, 2, 3, 3), groups=3, stride=2, padding=1),
    dict(id="2d-depthwise", input=(2, 4, 5, 5), weight=(4, 1, 3, 3), groups=4, padding=1),
    dict(id="2d-no-bias", input=(2, 3, 4, 4), weight=(3, 2, 3, 3), bias=False, stride=2),
    dict(id="2d-large-padding", input=(1, 2, 6, 6), weight=(2, 2, 3, 3), padding=2),
    dict(id="2d-unbatched", input=(3, 4, 5), weight=(3, 2, 3, 3), stride=2, output_padding=1),
    dict(id="2d-empty-batch", input=(0, 3, 4, 4), weight=(3, 2, 3, 3)),
    dict(
        id="3d", input=(2, 2, 3, 4, 3), weight=(2, 3, 2, 3, 2), stride=2, padding=1, output_padding=(1, 0, 1)
    ),
    dict(
        id="3d-groups-dilation", input=(1, 4, 3, 3, 4), weight=(4, 2, 2, 2, 3), groups=2, dilation=(2, 1, 2)
    ),
    # the phase geometries: one phase, several of one tap shape, empty ones, negative offsets
    dict(id="2d-stride1-crop", input=(2, 3, 6, 5), weight=(3, 2, 3, 2), padding=(2, 1)),
    dict(id="2d-4x4-stride2-merged-phases", input=(2, 4, 5, 6), weight=(4, 3, 4, 4), stride=2, padding=1),
    dict(id="2d-kernel-equals-stride", input=(2, 4, 4, 3), weight=(4, 3, 2, 2), stride=2),
    dict(id="2d-kernel-below-stride", input=(2, 2, 3, 4), weight=(2, 3, 2, 1), stride=(3, 4)),
    dict(
        id="2d-kernel-below-stride-output-padding",
        input=(1, 2, 3, 3),
        weight=(2, 2, 1, 2),
        stride=3,
        output_padding=2,
    ),
    dict(id="2d-dilation-above-stride", input=(2, 2, 4, 4), weight=(2, 3, 3, 3), stride=2, dilation=3),
    dict(id="1d-dilation-shares-stride", input=(2, 2, 7), weight=(2, 2, 5), stride=4, dilation=2, padding=3),
    dict(id="1d-padding-past-kernel-span", input=(2, 2, 9), weight=(2, 3, 3), stride=2, padding=4),
    dict(id="1d-padding-past-kernel-no-bias", input=(1, 2, 9), weight=(2, 3, 2), padding=4, bias=False),
    dict(
        id="1d-no-tap-reaches-output",
        input=(2, 1, 1),
        weight=(1, 2, 1),
        stride=3,
        padding=1,
        output_padding=2,
    ),
    dict(id="2d-depthwise-stride2", input=(2, 3, 4, 4), weight=(3, 1, 4, 4), groups=3, stride=2, padding=1),
    dict(id="3d-stride2-merged-groups", input=(1, 4, 3, 2, 3), weight=(4, 1, 2, 4, 2), groups=2, stride=2),
]


@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
def test_conv_transpose_matches_torch(case, form):
    _assert_matches_torch(case)


def _random_case(rng: random.Random, index: int) -> dict:
    ndim = rng.choice((1, 2, 3))
    groups = rng.choice((1, 1, 2, 3))
    kernel = tuple(rng.randint(1, 4) for _ in range(ndim))
    stride = tuple(rng.randint(1, 3) for _ in range(ndim))
    dilation = tuple(rng.randint(1, 3) for _ in range(ndim))
    output_padding = tuple(rng.randint(0, max(s, d) - 1) for s, d in zip(stride, dilation))
    sizes = tuple(rng.randint(1, 5) for _ in range(ndim))
    # padding that leaves a positive output size
    padding = tuple(
        rng.randint(0, max(0, ((n - 1) * s + d * (k - 1) + op) // 2))
        for n, s, d, k, op in zip(sizes, stride, dilation, kernel, output_padding)
    )
    batch = rng.randint(0, 3)
    in_channels = groups * rng.randint(1, 3)
    return dict(
        id=f"random-{index}",
        input=(in_channels, *sizes) if batch == 0 else (batch, in_channels, *sizes),
        weight=(in_channels, rng.randint(1, 3), *kernel),
        stride=stride,
        padding=padding,
        output_padding=output_padding,
        dilation=dilation,
        groups=groups,
        bias=rng.random() < 0.7,
    )


_rng = random.Random(7)
RANDOM_CASES = [_random_case(_rng, index) for index in range(120)]


@pytest.mark.parametrize("case", RANDOM_CASES, ids=[case["id"] for case in RANDOM_CASES])
def test_conv_transpose_matches_torch_on_seeded_random_geometries(case, form):
    _assert_matches_torch(case)


@pytest.mark.parametrize("form", FORMS)
@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_conv_transpose_matches_torch_on_hypothesis_geometries(form, seed):
    with forced(form):
        _assert_matches_torch(_random_case(random.Random(seed), seed), seed % 1000)


def test_tiny_memory_budget_gives_the_same_result(form):
    case = dict(input=(5, 4, 5, 5), weight=(4, 3, 3, 3), stride=2, padding=1, output_padding=1, groups=2)
    _assert_matches_torch(case, memory_budget=1)


GRADCHECK_CASES = [
    dict(id="2d-4x4-stride2", input=(1, 2, 3, 3), weight=(2, 2, 4, 4), stride=2, padding=1),
    dict(id="2d-kernel-below-stride", input=(1, 2, 2, 3), weight=(2, 2, 1, 2), stride=3, output_padding=1),
    dict(id="1d-dilation-groups", input=(2, 4, 4), weight=(4, 1, 3), stride=2, dilation=3, groups=2),
    dict(id="3d-stride-padding", input=(1, 2, 2, 2, 3), weight=(2, 1, 3, 2, 2), stride=(2, 1, 2), padding=1),
]


@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=[case["id"] for case in GRADCHECK_CASES])
def test_conv_transpose_gradcheck_and_gradgradcheck(case, form):
    tensors = _tensors(case, requires_grad=True)

    def function(*tensors):
        return anyconv.conv_transpose(*tensors, **_options(case))

    assert torch.autograd.gradcheck(function, tensors)
    assert torch.autograd.gradgradcheck(function, tensors)


LAYOUT_CASES = [
    dict(id="2d", input=(2, 4, 5, 6), weight=(4, 3, 4, 4), stride=2, padding=1),
    dict(id="2d-kernel-below-stride", input=(2, 4, 3, 3), weight=(4, 2, 1, 2), stride=3),
]


@pytest.mark.parametrize("case", LAYOUT_CASES, ids=[case["id"] for case in LAYOUT_CASES])
@pytest.mark.parametrize("which", ["input", "weight"])
def test_channels_last_in_gives_torchs_layout_out(case, which, form):
    x, w, b = _tensors(case)
    layout = torch.channels_last
    if which == "input":
        x = x.contiguous(memory_format=layout)
    else:
        w = w.contiguous(memory_format=layout)
    ours = anyconv.conv_transpose(x, w, b, **_options(case))
    theirs = CONV_TRANSPOSES[w.dim() - 2](x, w, b, **_options(case))
    torch.testing.assert_close(ours, theirs)
    assert ours.stride() == theirs.stride()


def test_conv_transpose_gradcheck(form):
    case = dict(
        input=(2, 4, 3, 3),
        weight=(4, 1, 2, 3),
        stride=(2, 1),
        padding=(0, 1),
        output_padding=(1, 0),
        groups=2,
    )
    x, w, b = _tensors(case, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *t: anyconv.conv_transpose(*t, **_options(case)), (x, w, b))


FOUR_D_CASES = [
    dict(id="4d", input=(2, 2, 3, 2, 3, 2), weight=(2, 3, 2, 2, 3, 2)),
    dict(
        id="4d-stride-padding",
        input=(1, 2, 3, 3, 2, 3),
        weight=(2, 2, 3, 2, 2, 3),
        stride=2,
        padding=1,
        output_padding=(1, 0, 1, 0),
    ),
    dict(
        id="4d-groups-dilation",
        input=(1, 4, 2, 3, 2, 3),
        weight=(4, 1, 2, 2, 2, 2),
        groups=2,
        dilation=(1, 2, 2, 1),
    ),
]


@pytest.mark.parametrize("case", FOUR_D_CASES, ids=[case["id"] for case in FOUR_D_CASES])
def test_conv_transpose_beyond_3d_matches_naive_loop(case, form):
    x, w, b = _tensors(case)
    options = _options(case)
    torch.testing.assert_close(
        anyconv.conv_transpose(x, w, b, **options), naive_conv_transpose(x, w, b, **options)
    )


def test_conv_transpose_is_the_adjoint_of_conv(form):
    # <conv(x, w), y> == <x, conv_transpose(y, w)> for the same geometry and no bias
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 6, 5, 4, 5, dtype=DOUBLE, generator=generator)
    w = torch.randn(6, 2, 3, 2, 2, 3, dtype=DOUBLE, generator=generator)
    forward = anyconv.conv(x, w, stride=2, padding=1, groups=2)
    y = torch.randn(forward.shape, dtype=DOUBLE, generator=generator)
    back = anyconv.conv_transpose(y, w, stride=2, padding=1, groups=2, output_padding=(1, 1, 0, 0))
    assert back.shape == x.shape
    torch.testing.assert_close((forward * y).sum(), (x * back).sum())


BAD_INPUTS = [
    dict(
        id="output-padding",
        input=(1, 2, 4, 4),
        weight=(2, 2, 3, 3),
        stride=2,
        output_padding=2,
        error=ValueError,
        match=r"output_padding=2 is invalid: expected values smaller than either stride",
    ),
    dict(
        id="channels",
        input=(1, 3, 4, 4),
        weight=(2, 2, 3, 3),
        error=ValueError,
        match=r"has 3 channels, but weight of shape \(2, 2, 3, 3\) expects 2",
    ),
    dict(
        id="groups",
        input=(1, 3, 4, 4),
        weight=(3, 2, 3, 3),
        groups=2,
        error=ValueError,
        match=r"groups=2 is invalid: expected a divisor of in_channels=3",
    ),
    dict(
        id="bias",
        input=(1, 2, 4, 4),
        weight=(2, 3, 3, 3),
        bias=(2,),
        error=ValueError,
        match=r"bias of shape \(2,\) is invalid: expected \(3,\)",
    ),
    dict(
        id="same",
        input=(1, 2, 4, 4),
        weight=(2, 3, 3, 3),
        padding="same",
        error=ValueError,
        match=r"padding='same' is invalid",
    ),
    dict(
        id="empty-output",
        input=(1, 2, 1, 1),
        weight=(2, 3, 2, 2),
        padding=1,
        error=ValueError,
        match=r"padding=\(1, 1\) is invalid: expected an amount that leaves a positive output size",
    ),
    dict(
        id="weight-rank",
        input=(1, 2, 4),
        weight=(2,),
        error=ValueError,
        match=r"weight of shape \(2,\) is invalid",
    ),
]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[case["id"] for case in BAD_INPUTS])
def test_bad_input_gets_a_clear_error(case, form):
    x, w = torch.randn(case["input"]), torch.randn(case["weight"])
    bias = torch.randn(case["bias"]) if "bias" in case else None
    with pytest.raises(case["error"], match=case["match"]):
        anyconv.conv_transpose(x, w, bias, **_options(case))


def test_dtype_mismatch_is_a_type_error():
    with pytest.raises(TypeError, match=r"weight has dtype torch.float64"):
        anyconv.conv_transpose(torch.randn(1, 2, 4, 4), torch.randn(2, 3, 3, 3, dtype=DOUBLE))
