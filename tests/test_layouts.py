# ruff: noqa: E501  (one case per line: the table reads as a table)
"""Memory layouts and edge shapes: strided views, channels-last, empty batches, one-pixel outputs.

Each input layout is built from the same values as a contiguous reference, so anyconv must give
torch's numbers whatever the strides, in forward and backward.
"""

import pytest
import torch
import torch.nn.functional as F

import anyconv


def _randn(*shape, seed=0):
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


# name -> a function making a (2, 4, 7, 6) input with unusual strides
INPUT_LAYOUTS = {
    "contiguous": lambda: _randn(2, 4, 7, 6),
    "channels-last": lambda: _randn(2, 4, 7, 6).to(memory_format=torch.channels_last),
    "permuted": lambda: _randn(6, 2, 7, 4).permute(1, 3, 2, 0),
    "sliced": lambda: _randn(3, 8, 14, 13)[1:, ::2, ::2, 1::2],
    "transposed-hw": lambda: _randn(2, 4, 6, 7).transpose(2, 3),
    "expanded-batch": lambda: _randn(1, 4, 7, 6).expand(2, 4, 7, 6),
    "expanded-channel": lambda: _randn(2, 1, 7, 6).expand(2, 4, 7, 6),
}

WEIGHT_LAYOUTS = {
    "contiguous": lambda: _randn(6, 2, 3, 3, seed=1),
    "channels-last": lambda: _randn(6, 2, 3, 3, seed=1).to(memory_format=torch.channels_last),
    "transposed": lambda: _randn(2, 6, 3, 3, seed=1).transpose(0, 1),
}

GEOMETRIES = [
    {"id": "plain", "with": {}},
    {"id": "pad-stride-groups", "with": {"padding": 1, "stride": (2, 1), "groups": 2}},
    {"id": "reflect", "with": {"padding": 1, "padding_mode": "reflect", "groups": 2}},
]


def _torch_conv(input, weight, bias=None, **kwargs):
    mode = kwargs.pop("padding_mode", "zeros")
    if mode != "zeros":
        input = F.pad(input, (kwargs.pop("padding"),) * 2 * (weight.dim() - 2), mode=mode)
    return F.conv2d(input, weight, bias, **kwargs)


def _forward_and_grads(function, input, weight, kwargs, grad=None):
    input, weight = input.detach().requires_grad_(), weight.detach().requires_grad_()
    output = function(input, weight, **kwargs)
    grad = torch.ones_like(output) if grad is None else grad
    return (output, *torch.autograd.grad(output, (input, weight), grad))


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda geometry: geometry["id"])
@pytest.mark.parametrize("weight_layout", WEIGHT_LAYOUTS)
@pytest.mark.parametrize("input_layout", INPUT_LAYOUTS)
def test_conv_ignores_the_memory_layout(input_layout, weight_layout, geometry):
    input, weight = INPUT_LAYOUTS[input_layout](), WEIGHT_LAYOUTS[weight_layout]()
    kwargs = dict(geometry["with"])
    if "groups" not in kwargs:
        weight = weight.repeat(1, 2, 1, 1)
    mine = _forward_and_grads(anyconv.conv, input, weight, kwargs)
    theirs = _forward_and_grads(_torch_conv, input.contiguous(), weight.contiguous(), dict(kwargs))
    for got, expected in zip(mine, theirs):
        torch.testing.assert_close(got, expected)


def test_a_non_contiguous_output_gradient():
    input, weight = _randn(2, 3, 8, 8), _randn(4, 3, 3, 3, seed=1)
    grad = _randn(4, 2, 12, 6, seed=2).permute(1, 0, 3, 2)[..., ::2]  # (2, 4, 6, 6), strided
    assert not grad.is_contiguous()
    mine = _forward_and_grads(anyconv.conv, input, weight, {}, grad)
    theirs = _forward_and_grads(F.conv2d, input, weight, {}, grad.contiguous())
    for got, expected in zip(mine, theirs):
        torch.testing.assert_close(got, expected)


def test_channels_last_3d():
    input = _randn(2, 3, 5, 6, 4).to(memory_format=torch.channels_last_3d)
    weight = _randn(4, 3, 2, 3, 2, seed=1).to(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(anyconv.conv(input, weight, padding=1), F.conv3d(input, weight, padding=1))


@pytest.mark.parametrize("layout", ["permuted", "sliced", "channels-last", "expanded-channel"])
def test_unfold_patches_and_fold_ignore_the_layout(layout):
    input = INPUT_LAYOUTS[layout]()
    assert torch.equal(anyconv.unfold(input, 3, padding=1), F.unfold(input.contiguous(), 3, padding=1))
    view = anyconv.patches(input, (2, 3), stride=2)
    assert torch.equal(view, anyconv.patches(input.contiguous(), (2, 3), stride=2))
    columns = F.unfold(input.contiguous(), 3, padding=1).transpose(1, 2).contiguous().transpose(1, 2)
    assert not columns.is_contiguous()
    torch.testing.assert_close(
        anyconv.fold(columns, (7, 6), 3, padding=1), F.fold(columns, (7, 6), 3, padding=1)
    )


EDGE_SHAPES = [
    {"id": "1x1-kernel", "x": (2, 3, 5, 4), "w": (4, 3, 1, 1), "with": {}},
    {"id": "1x1-kernel-stride", "x": (2, 3, 5, 4), "w": (4, 3, 1, 1), "with": {"stride": 2}},
    {"id": "kernel-equals-input", "x": (2, 3, 5, 4), "w": (4, 3, 5, 4), "with": {}},
    {"id": "kernel-equals-padded-input", "x": (2, 3, 3, 2), "w": (4, 3, 5, 4), "with": {"padding": 1}},
    {"id": "single-pixel-by-stride", "x": (2, 3, 4, 4), "w": (4, 3, 3, 3), "with": {"stride": 5}},
    {"id": "single-pixel-by-dilation", "x": (1, 2, 5, 5), "w": (2, 2, 3, 3), "with": {"dilation": 2}},
    {"id": "one-pixel-input", "x": (2, 3, 1, 1), "w": (4, 3, 1, 1), "with": {}},
    {"id": "one-pixel-input-same", "x": (2, 3, 1, 1), "w": (4, 3, 3, 3), "with": {"padding": "same"}},
    {"id": "empty-batch", "x": (0, 3, 6, 5), "w": (4, 3, 3, 3), "with": {"padding": 1}},
    {"id": "empty-batch-grouped", "x": (0, 4, 6, 5), "w": (4, 2, 3, 3), "with": {"groups": 2, "stride": 2}},
    {"id": "single-channel", "x": (1, 1, 6, 5), "w": (1, 1, 3, 3), "with": {}},
    {"id": "depthwise", "x": (2, 4, 6, 5), "w": (4, 1, 3, 3), "with": {"groups": 4, "padding": 1}},
    {"id": "wide-thin", "x": (1, 2, 1, 40), "w": (3, 2, 1, 7), "with": {"padding": (0, 3)}},
]  # fmt: skip


@pytest.mark.parametrize("case", EDGE_SHAPES, ids=lambda case: case["id"])
def test_edge_shapes_match_torch(case):
    input, weight, bias = _randn(*case["x"]), _randn(*case["w"], seed=1), _randn(case["w"][0], seed=2)
    mine = anyconv.conv(input, weight, bias, **case["with"])
    theirs = F.conv2d(input, weight, bias, **case["with"])
    assert mine.shape == theirs.shape
    torch.testing.assert_close(mine, theirs)
    got = _forward_and_grads(anyconv.conv, input, weight, case["with"])
    expected = _forward_and_grads(F.conv2d, input, weight, case["with"])
    for a, b in zip(got, expected):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b)


def test_unbatched_input():
    input, weight = _randn(3, 6, 5), _randn(4, 3, 3, 3, seed=1)
    torch.testing.assert_close(anyconv.conv(input, weight, padding=1), F.conv2d(input, weight, padding=1))


def test_empty_batch_through_unfold_fold_and_modules():
    input = _randn(0, 3, 6, 5)
    assert anyconv.unfold(input, 3, padding=1).shape == (0, 27, 30)
    assert anyconv.fold(torch.zeros(0, 27, 30), (6, 5), 3, padding=1).shape == (0, 3, 6, 5)
    assert anyconv.patches(input, 3).shape == (0, 3, 4, 3, 3, 3)
    layer = anyconv.nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular").double()
    assert layer(input).shape == (0, 4, 6, 5)


def test_an_input_larger_than_any_memory_budget_chunk():
    # one sample's fields exceed the budget: chunks are row ranges, which must tile exactly
    input, weight = _randn(2, 3, 23, 9), _randn(5, 3, 3, 2, seed=1)
    for budget in (1, 100, 1000, 10**4):
        got = _forward_and_grads(
            anyconv.conv, input, weight, {"padding": 1, "stride": (2, 1), "memory_budget": budget}
        )
        expected = _forward_and_grads(F.conv2d, input, weight, {"padding": 1, "stride": (2, 1)})
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b)
