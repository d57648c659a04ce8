# ruff: noqa: E501  (one case per line: the table reads as a table)
"""NaN and inf propagate exactly as in torch's convolution: nothing masks them, nothing invents them.

Compared position by position with ``F.convNd`` (and ``F.unfold``/``F.fold``), in forward and
in the input and weight gradients, across padding modes, groups, strides, chunk boundaries and the
engine's paths.
"""

import pytest
import torch
import torch.nn.functional as F

import anyconv

TORCH_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}

CASES = [
    {"id": "2d-pad", "x": (2, 3, 9, 8), "w": (4, 3, 3, 3), "with": {"padding": 1}},
    {"id": "2d-stride-dilation", "x": (1, 4, 11, 11), "w": (4, 2, 3, 2), "with": {"stride": 2, "dilation": 2, "groups": 2}},
    {"id": "2d-reflect", "x": (1, 2, 7, 7), "w": (3, 2, 3, 3), "with": {"padding": 2, "padding_mode": "reflect"}},
    {"id": "2d-circular", "x": (1, 2, 6, 5), "w": (3, 2, 3, 3), "with": {"padding": 1, "padding_mode": "circular"}},
    {"id": "1d-same", "x": (2, 2, 13), "w": (3, 2, 5), "with": {"padding": "same"}},
    {"id": "3d", "x": (1, 2, 5, 6, 4), "w": (2, 2, 2, 3, 2), "with": {"padding": 1}},
    # a tiny budget: many chunks, so a bad value sits on a chunk boundary
    {"id": "2d-chunked", "x": (3, 2, 12, 10), "w": (3, 2, 3, 3), "with": {"padding": 1, "memory_budget": 512}},
    # the tap loops' filter blocks, whose input gradient of stride 1 is a convolution where the weight is finite
    {"id": "2d-filter-blocks", "x": (1, 8, 9, 21), "w": (12, 8, 3, 3), "with": {"padding": 1}},
    {"id": "2d-filter-blocks-stride-2", "x": (1, 8, 10, 21), "w": (12, 8, 3, 3), "with": {"padding": 1, "stride": 2}},
    {"id": "1d-columns", "x": (2, 40, 30), "w": (40, 40, 3), "with": {"padding": 1}},
    {"id": "2d-depthwise", "x": (2, 6, 9, 17), "w": (6, 1, 3, 3), "with": {"padding": 1, "groups": 6}},
    {"id": "2d-first-layer", "x": (1, 3, 40, 40), "w": (8, 3, 3, 3), "with": {"padding": 1}},
    {"id": "2d-pointwise", "x": (2, 8, 5, 6), "w": (12, 8, 1, 1), "with": {}},
]  # fmt: skip


def _torch_conv(input, weight, kwargs):
    kwargs = {name: value for name, value in kwargs.items() if name != "memory_budget"}
    mode = kwargs.pop("padding_mode", "zeros")
    ndim = weight.dim() - 2
    if mode != "zeros":
        input = F.pad(input, (kwargs.pop("padding"),) * (2 * ndim), mode=mode)
    return TORCH_CONV[ndim](input, weight, **kwargs)


def _poison(tensor, generator, count):
    """Put NaN, +inf and -inf at random positions of ``tensor`` (in place), ``count`` of each."""
    flat = tensor.view(-1)
    positions = torch.randperm(flat.numel(), generator=generator)[: 3 * count]
    for values, value in zip(positions.split(count), (float("nan"), float("inf"), float("-inf"))):
        flat[values] = value
    return tensor


def _same_specials(mine, theirs):
    assert torch.equal(mine.isnan(), theirs.isnan())
    assert torch.equal(mine == float("inf"), theirs == float("inf"))
    assert torch.equal(mine == float("-inf"), theirs == float("-inf"))
    finite = mine.isfinite()
    torch.testing.assert_close(mine[finite], theirs[finite])


@pytest.mark.parametrize("poisoned", ["input", "weight", "both"])
@pytest.mark.parametrize("case", CASES, ids=lambda case: case["id"])
def test_nan_and_inf_land_where_torch_puts_them(case, poisoned):
    generator = torch.Generator().manual_seed(0)
    input = torch.randn(case["x"], dtype=torch.float64, generator=generator)
    weight = torch.randn(case["w"], dtype=torch.float64, generator=generator)
    if poisoned in ("input", "both"):
        _poison(input, generator, 2)
    if poisoned in ("weight", "both"):
        _poison(weight, generator, 1)
    # a zero weight meets inf: 0 * inf is NaN in torch, so it must be here too
    weight.view(-1)[-1] = 0.0
    input.requires_grad_()
    weight.requires_grad_()
    output = anyconv.conv(input, weight, **case["with"])
    reference = _torch_conv(input, weight, case["with"])
    assert reference.isnan().any() or reference.isinf().any()
    _same_specials(output, reference)
    grad = torch.randn(output.shape, dtype=torch.float64, generator=generator)
    for mine, theirs in zip(
        torch.autograd.grad(output, (input, weight), grad),
        torch.autograd.grad(reference, (input, weight), grad),
    ):
        _same_specials(mine, theirs)


def test_nan_in_the_output_gradient_reaches_the_input_gradient():
    generator = torch.Generator().manual_seed(1)
    input = torch.randn(1, 2, 6, 6, dtype=torch.float64, generator=generator, requires_grad=True)
    weight = torch.randn(3, 2, 3, 3, dtype=torch.float64, generator=generator, requires_grad=True)
    grad = _poison(torch.randn(1, 3, 6, 6, dtype=torch.float64, generator=generator), generator, 1)
    mine = torch.autograd.grad(anyconv.conv(input, weight, padding=1), (input, weight), grad)
    theirs = torch.autograd.grad(F.conv2d(input, weight, padding=1), (input, weight), grad)
    for got, expected in zip(mine, theirs):
        _same_specials(got, expected)


def test_bias_inf_and_nan_propagate():
    input = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    weight = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    bias = torch.tensor([float("nan"), float("inf"), 1.0], dtype=torch.float64)
    _same_specials(anyconv.conv(input, weight, bias), F.conv2d(input, weight, bias))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_unfold_and_fold_carry_nan_and_inf_through(dtype):
    generator = torch.Generator().manual_seed(2)
    input = _poison(torch.randn(2, 3, 7, 6, generator=generator).to(dtype), generator, 2)
    columns = anyconv.unfold(input, (3, 2), padding=1, stride=(2, 1))
    expected = F.unfold(input.double(), (3, 2), padding=1, stride=(2, 1))
    assert torch.equal(columns.double().isnan(), expected.isnan())
    assert torch.equal(columns.double()[~expected.isnan()], expected[~expected.isnan()])
    blocks = _poison(torch.randn(columns.shape, generator=generator, dtype=torch.float64), generator, 3)
    image = anyconv.fold(blocks, (7, 6), (3, 2), padding=1, stride=(2, 1))
    _same_specials(image, F.fold(blocks, (7, 6), (3, 2), padding=1, stride=(2, 1)))


@pytest.mark.usefixtures("two_threads")
@pytest.mark.parametrize("variant", ["max_plus", "min_plus"])
def test_a_tropical_forward_finds_a_nan_in_any_part_of_a_large_input(variant):
    # the tap loops check the input's finiteness before their plain maximum, split over threads
    # past 2**16 values each: a NaN, and an inf meeting an opposite inf in the weight, in the last
    # part reach the output as in the formula (float64: fields of unfold, max or min over them)
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(1, 8, 128, 130, generator=generator, dtype=torch.float64)
    w = torch.randn(6, 8, 3, 3, generator=generator, dtype=torch.float64)
    x[0, 7, 127, 129] = float("nan")
    x[0, 6, 100, 3] = float("inf")
    w[2, 6, 1, 1] = float("-inf")
    with torch.no_grad():
        got = anyconv.generalized_conv(x, w, variant, padding=1)
    terms = F.unfold(x, 3, padding=1).unsqueeze(1) + (1 if variant == "max_plus" else -1) * w.view(
        1, 6, -1, 1
    )
    reduce = torch.amax if variant == "max_plus" else torch.amin
    expected = reduce(terms, dim=2).view(1, 6, 128, 130)
    assert got.isnan().any()
    torch.testing.assert_close(got, expected, equal_nan=True)
