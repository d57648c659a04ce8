# ruff: noqa: E501  (the strategies read best one draw per line)
"""Hypothesis fuzzing over random geometries, dtypes and variants, against independent references.

Geometries: N = 1..3, batch 0..2, groups, stride, dilation, padding as an int, per-dimension
ints, (before, after) pairs, 'same' or 'valid', and the four padding modes. References: torch's
``F.convNd`` on an input padded by ``F.pad`` (dot), a tap-by-tap strided-slice im2col (unfold),
the adjoint identity (fold), and properties every variant must keep (chunking changes nothing,
unbatched equals batched). ``ANYCONV_FUZZ_EXAMPLES`` sets the examples per test (default 50).
"""

import math
import os

import pytest
import torch
import torch.nn.functional as F
from conftest import take_views_everywhere
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import anyconv

EXAMPLES = int(os.environ.get("ANYCONV_FUZZ_EXAMPLES", "50"))
fuzz = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

TORCH_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
TORCH_PAD_MODE = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate", "circular": "circular"}
#: the largest spatial size per N, so that 3-D examples stay quick
MAX_SIZE = {1: 12, 2: 8, 3: 5}


@st.composite
def geometries(draw, modes=tuple(TORCH_PAD_MODE)):
    """A valid convolution geometry: sizes, arguments as the user writes them, and explicit pairs."""
    ndim = draw(st.integers(1, 3))
    kernel = tuple(draw(st.lists(st.integers(1, 3), min_size=ndim, max_size=ndim)))
    dilation = tuple(draw(st.lists(st.integers(1, 2), min_size=ndim, max_size=ndim)))
    stride = tuple(draw(st.lists(st.integers(1, 3), min_size=ndim, max_size=ndim)))
    span = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation))
    form = draw(st.sampled_from(["int", "tuple", "pairs", "same", "valid"]))
    if form == "same" and any(step != 1 for step in stride):
        stride = (1,) * ndim
    if form == "int":
        amount = draw(st.integers(0, 2))
        padding, pairs = amount, ((amount, amount),) * ndim
    elif form == "tuple":
        padding = tuple(draw(st.lists(st.integers(0, 2), min_size=ndim, max_size=ndim)))
        pairs = tuple((amount, amount) for amount in padding)
    elif form == "pairs":
        pairs = tuple(
            draw(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2)), min_size=ndim, max_size=ndim))
        )
        padding = pairs
    elif form == "same":
        # torch's rule, written out here: total d * (k - 1), the odd element after
        padding = "same"
        pairs = tuple(((s - 1) // 2, (s - 1) - (s - 1) // 2) for s in span)
    else:
        padding, pairs = "valid", ((0, 0),) * ndim
    sizes = tuple(
        draw(st.integers(max(1, s - before - after), max(1, s - before - after) + MAX_SIZE[ndim] - 1))
        for s, (before, after) in zip(span, pairs)
    )
    mode = draw(st.sampled_from(modes))
    if mode == "reflect" and any(max(pair) >= size for pair, size in zip(pairs, sizes)):
        mode = "zeros"
    if mode == "circular" and any(max(pair) > size for pair, size in zip(pairs, sizes)):
        mode = "zeros"
    return {
        "ndim": ndim,
        "sizes": sizes,
        "kernel": kernel,
        "stride": stride,
        "dilation": dilation,
        "padding": padding,
        "pairs": pairs,
        "mode": mode,
        "batch": draw(st.integers(0, 2)),
    }


@st.composite
def convolutions(draw, dtypes=(torch.float64, torch.float32)):
    geometry = draw(geometries())
    groups = draw(st.integers(1, 3))
    in_per_group, out_per_group = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    return {
        **geometry,
        "groups": groups,
        "in_channels": groups * in_per_group,
        "out_channels": groups * out_per_group,
        "bias": draw(st.booleans()),
        "dtype": draw(st.sampled_from(dtypes)),
        "seed": draw(st.integers(0, 2**31 - 1)),
    }


def _tensors(case, requires_grad=False):
    generator = torch.Generator().manual_seed(case["seed"])
    input = torch.randn(case["batch"], case["in_channels"], *case["sizes"], generator=generator)
    weight = torch.randn(
        case["out_channels"], case["in_channels"] // case["groups"], *case["kernel"], generator=generator
    )
    bias = torch.randn(case["out_channels"], generator=generator) if case["bias"] else None
    tensors = [
        None if t is None else t.to(case["dtype"]).requires_grad_(requires_grad)
        for t in (input, weight, bias)
    ]
    return tensors


def _torch_pad(input, case):
    amounts = tuple(amount for pair in reversed(case["pairs"]) for amount in pair)
    if not any(amounts):
        return input
    return F.pad(input, amounts, mode=TORCH_PAD_MODE[case["mode"]])


def _reference_conv(input, weight, bias, case):
    padded = _torch_pad(input, case)
    return TORCH_CONV[case["ndim"]](padded, weight, bias, case["stride"], 0, case["dilation"], case["groups"])


def _anyconv_kwargs(case):
    return {
        "stride": case["stride"],
        "padding": case["padding"],
        "dilation": case["dilation"],
        "groups": case["groups"],
        "padding_mode": case["mode"],
    }


def _bound(dtype):
    # rounding of a sum of products: within a few epsilons of sum |x| |w| at every output
    return 4 * torch.finfo(dtype).eps


@fuzz
@given(convolutions(dtypes=(torch.float64, torch.float32, torch.bfloat16)))
def test_dot_matches_torch_conv(case):
    input, weight, bias = _tensors(case, requires_grad=True)
    output = anyconv.conv(input, weight, bias, **_anyconv_kwargs(case))
    exact = [None if t is None else t.detach().double().requires_grad_() for t in (input, weight, bias)]
    reference = _reference_conv(*exact, case)
    assert output.shape == reference.shape and output.dtype == case["dtype"]
    absolute = [None if t is None else t.detach().abs() for t in exact]
    scale = _reference_conv(*absolute, case)
    assert ((output.double() - reference).abs() <= _bound(case["dtype"]) * scale + 1e-12).all()
    if case["dtype"] != torch.float64 or output.numel() == 0:
        return
    grad = torch.randn(
        output.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(case["seed"])
    )
    wanted = [t for t in (input, weight, bias) if t is not None]
    mine = torch.autograd.grad(output, wanted, grad)
    theirs = torch.autograd.grad(reference, [t for t in exact if t is not None], grad)
    for got, expected in zip(mine, theirs):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


def _reference_unfold(input, case):
    """im2col tap by tap: one strided slice of the padded input per kernel tap, F.unfold's order."""
    padded = _torch_pad(input, case)
    out = [
        (size + before + after - d * (k - 1) - 1) // s + 1
        for size, (before, after), k, d, s in zip(
            case["sizes"], case["pairs"], case["kernel"], case["dilation"], case["stride"]
        )
    ]
    taps = []
    for tap in (
        torch.cartesian_prod(*[torch.arange(k) for k in case["kernel"]]).reshape(-1, case["ndim"]).tolist()
    ):
        index = tuple(
            slice(t * d, t * d + s * (o - 1) + 1, s)
            for t, d, s, o in zip(tap, case["dilation"], case["stride"], out)
        )
        taps.append(padded[(..., *index)])
    batch, channels = input.shape[:2]
    return torch.stack(taps, 2).reshape(batch, channels * math.prod(case["kernel"]), math.prod(out))


def _field_kwargs(case):
    return {"dilation": case["dilation"], "padding": case["padding"], "stride": case["stride"]}


@fuzz
@given(
    geometries(), st.sampled_from([torch.float64, torch.float32, torch.int64, torch.uint8]), st.integers(1, 3)
)
def test_unfold_and_patches_match_a_tap_by_tap_reference(case, dtype, channels):
    input = torch.randint(0, 100, (case["batch"], channels, *case["sizes"])).to(dtype)
    columns = anyconv.unfold(input, case["kernel"], padding_mode=case["mode"], **_field_kwargs(case))
    assert (
        torch.equal(columns, _reference_unfold(input, case).to(dtype))
        if dtype.is_floating_point
        else torch.equal(columns, _reference_unfold(input.double(), case).to(dtype))
    )
    if (
        case["ndim"] == 2
        and case["mode"] == "zeros"
        and case["padding"] != "same"
        and dtype.is_floating_point
    ):
        padded = _torch_pad(input, case)
        assert torch.equal(columns, F.unfold(padded, case["kernel"], case["dilation"], 0, case["stride"]))
    view = anyconv.patches(input, case["kernel"], padding_mode=case["mode"], **_field_kwargs(case))
    ndim = case["ndim"]
    # (B, C, *out, *kernel) -> unfold's (B, C * K, L)
    order = (0, 1, *range(2 + ndim, 2 + 2 * ndim), *range(2, 2 + ndim))
    assert torch.equal(view.permute(order).reshape(columns.shape), columns)


@fuzz
@given(geometries(modes=("zeros",)), st.integers(1, 3), st.integers(0, 2**31 - 1))
def test_fold_is_the_adjoint_of_unfold(case, channels, seed):
    generator = torch.Generator().manual_seed(seed)
    input = torch.randn(case["batch"], channels, *case["sizes"], dtype=torch.float64, generator=generator)
    columns = anyconv.unfold(input, case["kernel"], **_field_kwargs(case))
    blocks = torch.randn(columns.shape, dtype=torch.float64, generator=generator)
    image = anyconv.fold(blocks, case["sizes"], case["kernel"], **_field_kwargs(case))
    assert image.shape == input.shape
    # <unfold(x), y> == <x, fold(y)>, the definition of the adjoint
    torch.testing.assert_close((columns * blocks).sum(), (input * image).sum(), rtol=1e-10, atol=1e-10)
    if case["ndim"] == 2 and case["padding"] != "same" and not any(a != b for a, b in case["pairs"]):
        padding = tuple(before for before, _ in case["pairs"])
        expected = F.fold(blocks, case["sizes"], case["kernel"], case["dilation"], padding, case["stride"])
        torch.testing.assert_close(image, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("variant", sorted(anyconv.variants.BUILTIN_VARIANTS))
@fuzz
@given(case=convolutions(dtypes=(torch.float64,)), budget=st.integers(1, 4096))
def test_every_variant_is_the_same_whatever_the_chunks(variant, case, budget):
    # a property of the engine, for any variant: a tiny memory budget (many chunks, split rows)
    # gives the numbers of one big chunk, forward and backward; unbatched equals batched
    input, weight, bias = _tensors(case, requires_grad=True)
    kwargs = _anyconv_kwargs(case)
    whole = anyconv.generalized_conv(input, weight, variant, bias, **kwargs)
    pieces = anyconv.generalized_conv(input, weight, variant, bias, memory_budget=budget, **kwargs)
    assert (
        whole.shape
        == _reference_conv(
            *(t.detach() if t is not None else None for t in (input, weight, bias)), case
        ).shape
    )
    torch.testing.assert_close(pieces, whole, rtol=1e-10, atol=1e-10)
    if whole.numel() == 0:
        return
    grad = torch.randn(
        whole.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(case["seed"])
    )
    for got, expected in zip(
        torch.autograd.grad(pieces, (input, weight), grad), torch.autograd.grad(whole, (input, weight), grad)
    ):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    single = anyconv.generalized_conv(input[0], weight, variant, bias, **kwargs)
    torch.testing.assert_close(single, whole[0], rtol=1e-10, atol=1e-10)


#: the variants whose backward the engine may take on shifted views of the input
PRODUCT_VARIANTS = sorted(
    name
    for name in anyconv.variants.BUILTIN_VARIANTS
    if issubclass(anyconv.variants.BUILTIN_VARIANTS[name], anyconv.variants.ProductVariant)
)


@pytest.mark.parametrize("variant", PRODUCT_VARIANTS)
@fuzz
@given(case=convolutions(dtypes=(torch.float64,)), budget=st.integers(1, 4096))
def test_the_backward_on_shifted_views_equals_the_one_on_copied_fields(variant, case, budget):
    # the engine takes the views only where they are faster (stride 1, large images): forced
    # here onto every geometry, they must give the copied fields' gradients
    input, weight, bias = _tensors(case, requires_grad=True)
    kwargs = _anyconv_kwargs(case)
    fields = anyconv.generalized_conv(input, weight, variant, bias, memory_budget=budget, **kwargs)
    with pytest.MonkeyPatch.context() as patch:
        take_views_everywhere(patch)
        views = anyconv.generalized_conv(input, weight, variant, bias, memory_budget=budget, **kwargs)
    torch.testing.assert_close(views, fields, rtol=0, atol=0)
    if fields.numel() == 0:
        return
    grad = torch.randn(
        fields.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(case["seed"])
    )
    leaves = (input, weight, bias) if bias is not None else (input, weight)
    for got, expected in zip(
        torch.autograd.grad(views, leaves, grad), torch.autograd.grad(fields, leaves, grad)
    ):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)
