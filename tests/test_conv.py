"""anyconv.conv against torch's F.conv1d/2d/3d (float64, forward and both gradients) and, for N = 4,
against a naive loop; every padding form and mode, groups, unbatched input, chunking, bad input."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from reference_conv import naive_conv
from torch_reference import torch_conv

import anyconv

DOUBLE = torch.float64


def _tensors(case, seed=0, requires_grad=False):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(case["input"], dtype=DOUBLE, generator=generator)
    w = torch.randn(case["weight"], dtype=DOUBLE, generator=generator)
    b = torch.randn(case["weight"][0], dtype=DOUBLE, generator=generator) if case.get("bias", True) else None
    for tensor in (x, w, b):
        if tensor is not None:
            tensor.requires_grad_(requires_grad)
    return x, w, b


def _options(case):
    return {
        key: case[key] for key in ("stride", "padding", "dilation", "groups", "padding_mode") if key in case
    }


def _grads(function, x, w, b, seed=1):
    out = function(x, w, b)
    grad = torch.randn(out.shape, dtype=DOUBLE, generator=torch.Generator().manual_seed(seed))
    inputs = [tensor for tensor in (x, w, b) if tensor is not None]
    return out, torch.autograd.grad(out, inputs, grad)


def _assert_matches_torch(case, seed=0):
    x, w, b = _tensors(case, seed, requires_grad=True)
    options = _options(case)
    ours, our_grads = _grads(lambda *t: anyconv.conv(*t, **options), x, w, b)
    theirs, their_grads = _grads(lambda *t: torch_conv(*t, **options), x, w, b)
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)
    for mine, reference, name in zip(our_grads, their_grads, ("input", "weight", "bias")):
        torch.testing.assert_close(mine, reference, rtol=1e-10, atol=1e-10, msg=f"grad of {name}")


CASES = [
    dict(id="1d", input=(2, 3, 11), weight=(4, 3, 3)),
    dict(id="1d-stride-dilation", input=(3, 2, 17), weight=(5, 2, 4), stride=3, dilation=2, padding=2),
    dict(id="1d-pairs", input=(2, 2, 9), weight=(2, 2, 3), padding=((0, 2),)),
    dict(id="1d-same-even-kernel", input=(2, 3, 8), weight=(3, 3, 4), padding="same"),
    dict(id="1d-unbatched", input=(3, 10), weight=(4, 3, 3), padding=1),
    dict(id="2d", input=(2, 3, 8, 7), weight=(5, 3, 3, 2)),
    dict(id="2d-padding-int", input=(2, 3, 8, 8), weight=(4, 3, 3, 3), padding=1),
    dict(id="2d-padding-tuple", input=(2, 3, 8, 9), weight=(4, 3, 3, 3), padding=(2, 0)),
    dict(id="2d-padding-pairs", input=(1, 2, 6, 7), weight=(3, 2, 3, 3), padding=((1, 0), (2, 3))),
    dict(id="2d-same-dilated", input=(2, 2, 9, 8), weight=(2, 2, 3, 4), padding="same", dilation=(2, 3)),
    dict(id="2d-valid", input=(2, 2, 6, 6), weight=(2, 2, 3, 3), padding="valid"),
    dict(id="2d-stride-tuple", input=(2, 3, 9, 10), weight=(4, 3, 3, 3), stride=(2, 3), padding=1),
    dict(id="2d-groups", input=(2, 6, 7, 7), weight=(9, 2, 3, 3), groups=3, padding=1),
    dict(id="2d-depthwise", input=(2, 4, 7, 7), weight=(4, 1, 3, 3), groups=4, padding=1),
    dict(id="2d-depthwise-multiplier", input=(2, 3, 6, 6), weight=(6, 1, 3, 3), groups=3, stride=2),
    dict(id="2d-no-bias", input=(2, 3, 6, 6), weight=(2, 3, 3, 3), bias=False),
    dict(id="2d-1x1", input=(2, 5, 4, 4), weight=(3, 5, 1, 1)),
    dict(id="2d-kernel-equals-input", input=(2, 2, 5, 5), weight=(3, 2, 5, 5)),
    dict(id="2d-unbatched", input=(3, 6, 6), weight=(4, 3, 3, 3), padding="same"),
    dict(id="2d-reflect", input=(2, 3, 7, 7), weight=(4, 3, 3, 3), padding=2, padding_mode="reflect"),
    dict(
        id="2d-replicate", input=(2, 3, 7, 6), weight=(4, 3, 3, 3), padding=(1, 2), padding_mode="replicate"
    ),
    dict(id="2d-circular", input=(2, 3, 6, 6), weight=(4, 3, 3, 3), padding=3, padding_mode="circular"),
    dict(
        id="2d-reflect-same-groups",
        input=(2, 4, 6, 6),
        weight=(4, 2, 4, 3),
        padding="same",
        padding_mode="reflect",
        groups=2,
    ),
    dict(
        id="2d-circular-pairs",
        input=(2, 2, 5, 5),
        weight=(2, 2, 3, 3),
        padding=((0, 2), (1, 1)),
        padding_mode="circular",
    ),
    dict(id="2d-reflect-unbatched", input=(3, 6, 6), weight=(2, 3, 3, 3), padding=1, padding_mode="reflect"),
    dict(id="2d-empty-batch", input=(0, 3, 6, 6), weight=(2, 3, 3, 3), padding=1),
    dict(id="3d", input=(2, 2, 5, 6, 4), weight=(3, 2, 3, 3, 2), padding=1),
    dict(id="3d-groups-stride", input=(2, 4, 7, 6, 5), weight=(6, 2, 2, 3, 3), groups=2, stride=(2, 1, 2)),
    dict(
        id="3d-replicate", input=(1, 2, 5, 5, 5), weight=(2, 2, 3, 3, 3), padding=1, padding_mode="replicate"
    ),
    dict(id="3d-same-dilated", input=(1, 2, 6, 5, 6), weight=(2, 2, 2, 3, 2), padding="same", dilation=2),
]


@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
def test_conv_matches_torch(case):
    _assert_matches_torch(case)


def _random_case(rng: random.Random, index: int) -> dict:
    ndim = rng.choice((1, 2, 3))
    groups = rng.choice((1, 1, 2, 3))
    in_channels, out_channels = groups * rng.randint(1, 3), groups * rng.randint(1, 3)
    kernel = tuple(rng.randint(1, 4) for _ in range(ndim))
    dilation = tuple(rng.randint(1, 2) for _ in range(ndim))
    stride = tuple(rng.randint(1, 3) for _ in range(ndim))
    mode = rng.choice(("zeros", "zeros", "reflect", "replicate", "circular"))
    form = rng.choice(("int", "pairs", "same", "valid"))
    spans = [d * (k - 1) + 1 for k, d in zip(kernel, dilation)]
    if form == "same":
        stride = (1,) * ndim
        padding = "same"
        pairs = [((span - 1) // 2, span - 1 - (span - 1) // 2) for span in spans]
    elif form == "valid":
        padding, pairs = "valid", [(0, 0)] * ndim
    elif form == "int":
        amount = rng.randint(0, 2)
        padding, pairs = amount, [(amount, amount)] * ndim
    else:
        pairs = [(rng.randint(0, 2), rng.randint(0, 2)) for _ in range(ndim)]
        padding = tuple(pairs)
    # sizes large enough for the kernel and for the padding mode's limits
    sizes = tuple(
        max(span - before - after, max(before, after) + 1, 1) + rng.randint(0, 4)
        for span, (before, after) in zip(spans, pairs)
    )
    batch = rng.randint(0, 3)
    shape = (in_channels, *sizes) if batch == 0 else (batch, in_channels, *sizes)
    return dict(
        id=f"random-{index}",
        input=shape,
        weight=(out_channels, in_channels // groups, *kernel),
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        padding_mode=mode,
        bias=rng.random() < 0.7,
    )


_rng = random.Random(2024)
RANDOM_CASES = [_random_case(_rng, index) for index in range(150)]


@pytest.mark.parametrize("case", RANDOM_CASES, ids=[case["id"] for case in RANDOM_CASES])
def test_conv_matches_torch_on_seeded_random_geometries(case):
    _assert_matches_torch(case)


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_conv_matches_torch_on_hypothesis_geometries(seed):
    _assert_matches_torch(_random_case(random.Random(seed), seed), seed % 1000)


GRADCHECK_CASES = [
    dict(id="1d-stride-groups", input=(2, 4, 7), weight=(2, 2, 3), stride=2, groups=2, padding=1),
    dict(
        id="2d-dilation-pairs",
        input=(1, 2, 5, 5),
        weight=(2, 2, 2, 3),
        dilation=(2, 1),
        padding=((1, 0), (0, 2)),
    ),
    dict(id="2d-reflect", input=(1, 2, 4, 5), weight=(3, 2, 3, 3), padding=1, padding_mode="reflect"),
    dict(id="3d-circular", input=(1, 1, 3, 4, 3), weight=(2, 1, 2, 2, 2), padding=1, padding_mode="circular"),
    dict(id="4d-same", input=(1, 2, 3, 3, 2, 3), weight=(2, 1, 2, 3, 1, 2), padding="same", groups=2),
]


@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=[case["id"] for case in GRADCHECK_CASES])
def test_conv_gradcheck(case):
    x, w, b = _tensors(case, requires_grad=True)
    options = _options(case)
    assert torch.autograd.gradcheck(lambda *t: anyconv.conv(*t, **options), (x, w, b))


FOUR_D_CASES = [
    dict(id="4d", input=(2, 2, 4, 5, 3, 4), weight=(3, 2, 2, 3, 2, 2)),
    dict(
        id="4d-padding-stride",
        input=(1, 3, 5, 4, 4, 5),
        weight=(2, 3, 3, 2, 3, 3),
        padding=1,
        stride=(2, 1, 1, 2),
    ),
    dict(
        id="4d-groups-dilation",
        input=(2, 4, 5, 5, 4, 4),
        weight=(4, 2, 2, 2, 2, 2),
        groups=2,
        dilation=(2, 1, 2, 1),
    ),
    dict(
        id="4d-reflect",
        input=(1, 2, 4, 4, 4, 4),
        weight=(2, 2, 3, 3, 3, 3),
        padding=1,
        padding_mode="reflect",
    ),
    dict(
        id="4d-circular-pairs",
        input=(1, 2, 3, 4, 3, 4),
        weight=(2, 2, 2, 2, 2, 2),
        padding=((0, 1), (1, 0), (1, 1), (0, 0)),
        padding_mode="circular",
    ),
    dict(
        id="4d-replicate",
        input=(1, 1, 3, 3, 3, 3),
        weight=(2, 1, 3, 1, 3, 1),
        padding=2,
        padding_mode="replicate",
    ),
    dict(id="5d", input=(1, 2, 3, 3, 3, 3, 3), weight=(2, 2, 2, 2, 2, 2, 2), padding=1),
]


@pytest.mark.parametrize("case", FOUR_D_CASES, ids=[case["id"] for case in FOUR_D_CASES])
def test_conv_beyond_3d_matches_naive_loop(case):
    x, w, b = _tensors(case)
    options = _options(case)
    torch.testing.assert_close(anyconv.conv(x, w, b, **options), naive_conv(x, w, b, **options))


def test_unbatched_4d_is_the_batched_result_of_one_sample():
    x, w, b = _tensors(dict(input=(2, 4, 4, 3, 4), weight=(3, 2, 2, 2, 2, 2)))
    torch.testing.assert_close(anyconv.conv(x, w, b, padding=1), anyconv.conv(x[None], w, b, padding=1)[0])


def test_the_original_question_batch_128_float64_equals_nn_conv2d():
    torch.manual_seed(0)
    layer = torch.nn.Conv2d(3, 16, 3).double()
    x = torch.randn(128, 3, 32, 32, dtype=DOUBLE)
    assert torch.allclose(anyconv.conv(x, layer.weight, layer.bias), layer(x))


def test_float32_is_close_to_torch():
    x, w = torch.randn(4, 8, 12, 12), torch.randn(16, 8, 3, 3)
    torch.testing.assert_close(anyconv.conv(x, w, padding=1), F.conv2d(x, w, padding=1), rtol=1e-4, atol=1e-4)


def test_conv_never_calls_torch_native_convolution(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("torch's native convolution was called")

    for name in ("conv1d", "conv2d", "conv3d", "convolution"):
        monkeypatch.setattr(torch, name, refuse, raising=False)
        monkeypatch.setattr(F, name, refuse, raising=False)
    x, w = torch.randn(2, 3, 6, 6, requires_grad=True), torch.randn(4, 3, 3, 3, requires_grad=True)
    anyconv.conv(x, w, padding=1).sum().backward()


BAD_INPUTS = [
    dict(
        id="wrong-channels",
        input=(2, 4, 6, 6),
        weight=(2, 3, 3, 3),
        error=ValueError,
        match=r"has 4 channels.*expects 3",
    ),
    dict(
        id="groups-not-dividing-out",
        input=(2, 4, 6, 6),
        weight=(3, 2, 3, 3),
        groups=2,
        error=ValueError,
        match=r"groups=2 is invalid: expected a divisor of out_channels=3",
    ),
    dict(
        id="groups-not-matching-in",
        input=(2, 5, 6, 6),
        weight=(4, 2, 3, 3),
        groups=2,
        error=ValueError,
        match=r"has 5 channels.*groups=2 expects 4",
    ),
    dict(
        id="groups-zero",
        input=(2, 4, 6, 6),
        weight=(4, 4, 3, 3),
        groups=0,
        error=ValueError,
        match=r"groups=0 is invalid",
    ),
    dict(
        id="weight-rank",
        input=(2, 3, 6, 6),
        weight=(4, 3),
        error=ValueError,
        match=r"weight of shape \(4, 3\) is invalid",
    ),
    dict(
        id="input-rank",
        input=(2, 3, 6, 6, 6),
        weight=(4, 3, 3, 3),
        error=ValueError,
        match=r"expected 4-D .* or 3-D unbatched input",
    ),
    dict(
        id="bias-length",
        input=(2, 3, 6, 6),
        weight=(4, 3, 3, 3),
        bias=(5,),
        error=ValueError,
        match=r"bias of shape \(5,\) is invalid: expected \(4,\)",
    ),
    dict(
        id="same-strided",
        input=(2, 3, 6, 6),
        weight=(4, 3, 3, 3),
        padding="same",
        stride=2,
        error=ValueError,
        match=r"padding='same' is not supported for strided convolutions",
    ),
    dict(
        id="kernel-too-large",
        input=(2, 3, 2, 2),
        weight=(4, 3, 3, 3),
        error=ValueError,
        match=r"kernel_size=\(3, 3\) is invalid",
    ),
    dict(
        id="padding-mode",
        input=(2, 3, 6, 6),
        weight=(4, 3, 3, 3),
        padding=1,
        padding_mode="mirror",
        error=ValueError,
        match=r"padding_mode='mirror' is invalid",
    ),
    dict(
        id="reflect-too-much",
        input=(2, 3, 3, 3),
        weight=(4, 3, 3, 3),
        padding=3,
        padding_mode="reflect",
        error=ValueError,
        match=r"padding_mode='reflect'",
    ),
    dict(
        id="negative-padding",
        input=(2, 3, 6, 6),
        weight=(4, 3, 3, 3),
        padding=-1,
        error=ValueError,
        match=r"padding=-1 is invalid",
    ),
    dict(
        id="float-stride",
        input=(2, 3, 6, 6),
        weight=(4, 3, 3, 3),
        stride=1.5,
        error=TypeError,
        match=r"stride=1.5 has type float",
    ),
    dict(
        id="stride-length",
        input=(2, 3, 6, 6),
        weight=(4, 3, 3, 3),
        stride=(1, 2, 3),
        error=ValueError,
        match=r"stride=\(1, 2, 3\) is invalid: expected an int or a tuple of 2 ints",
    ),
    dict(
        id="memory-budget",
        input=(2, 3, 6, 6),
        weight=(4, 3, 3, 3),
        memory_budget=0,
        error=ValueError,
        match=r"memory_budget=0 is invalid",
    ),
]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[case["id"] for case in BAD_INPUTS])
def test_bad_input_gets_a_clear_error(case):
    x, w = torch.randn(case["input"]), torch.randn(case["weight"])
    bias = torch.randn(case["bias"]) if "bias" in case else None
    options = _options(case)
    if "memory_budget" in case:
        options["memory_budget"] = case["memory_budget"]
    with pytest.raises(case["error"], match=case["match"]):
        anyconv.conv(x, w, bias, **options)


def test_dtype_mismatch_is_a_type_error():
    with pytest.raises(TypeError, match=r"weight has dtype torch.float64 but input has dtype torch.float32"):
        anyconv.conv(torch.randn(1, 3, 5, 5), torch.randn(2, 3, 3, 3, dtype=DOUBLE))
    with pytest.raises(TypeError, match=r"bias has dtype torch.float64"):
        anyconv.conv(torch.randn(1, 3, 5, 5), torch.randn(2, 3, 3, 3), torch.randn(2, dtype=DOUBLE))


def test_non_tensor_input_is_a_type_error():
    with pytest.raises(TypeError, match=r"input=.* has type list: expected a torch.Tensor"):
        anyconv.conv([[1.0]], torch.randn(2, 3, 3, 3))
