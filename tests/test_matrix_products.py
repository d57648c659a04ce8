"""The float32 matrix products (variants/matrix_products.py) and the engine paths that take them.

oneDNN's inner product serves float32 CPU products from ``MIN_WORK`` multiply-adds; each product
and each path that takes it (the columns' forward, the fields' backward, the pointwise path
without a graph) is checked against the float64 product or torch's convolution, on strided
operands, hostile values, and with oneDNN switched off.
"""

from __future__ import annotations

import importlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch_reference import torch_conv

import anyconv
from anyconv.engine.plan import clear_plans

PRODUCTS = importlib.import_module("anyconv.variants.matrix_products")
ONEDNN = PRODUCTS.inner_product_takes(torch.float32)
needs_onednn = pytest.mark.skipif(not ONEDNN, reason="torch is built without oneDNN's inner product")


@pytest.fixture
def calls(monkeypatch):
    """The inner products called, one entry (left shape, right shape) per call."""
    seen = []
    original = torch.ops.mkldnn._linear_pointwise

    def spy(left, right, *rest):
        seen.append((tuple(left.shape), tuple(right.shape)))
        return original(left, right, *rest)

    if ONEDNN:
        monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", spy)
    return seen


@pytest.fixture
def every_size(monkeypatch):
    """oneDNN for products of every size, so that small test shapes take it."""
    monkeypatch.setattr(PRODUCTS, "MIN_WORK", 1)
    monkeypatch.setattr(PRODUCTS, "MIN_SPLIT_WORK", 1)


def _product64(left, right):
    return (left.double() @ right.double()).float()


@needs_onednn
@settings(max_examples=30, deadline=None)
@given(
    groups=st.integers(1, 3),
    m=st.integers(1, 40),
    k=st.integers(1, 40),
    n=st.integers(1, 40),
    transposed=st.booleans(),
)
def test_batched_product_equals_the_float64_product_on_strided_operands(groups, m, k, n, transposed):
    generator = torch.Generator().manual_seed(m * 10_000 + k * 100 + n)
    left = torch.randn(groups, m, k, generator=generator)
    right = torch.randn(groups, n, k, generator=generator).mT if transposed else torch.randn(groups, k, n)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(PRODUCTS, "MIN_WORK", 1)
        got = PRODUCTS.batched_product(left, right)
    torch.testing.assert_close(got, _product64(left, right), rtol=1e-5, atol=1e-5)


@needs_onednn
def test_row_product_adds_the_bias_and_spreads_nan_and_inf_as_the_float64_product(every_size):
    left, right, bias = torch.randn(6, 5), torch.randn(4, 5), torch.randn(4)
    left[1, 2], left[3, 0], right[2, 4] = float("nan"), float("inf"), float("-inf")
    got = PRODUCTS.row_product(left, right, bias)
    expected = (left.double() @ right.double().T + bias.double()).float()
    torch.testing.assert_close(got, expected, equal_nan=True)


@needs_onednn
@pytest.mark.parametrize("which", ["left", "right", "both"])
def test_operands_with_rows_apart_reach_onednn_laid_out(monkeypatch, which, every_size):
    # slices of wider matrices: oneDNN read such weights hundreds of times slower than laid out
    seen = []
    original = torch.ops.mkldnn._linear_pointwise

    def spy(left, right, *rest):
        seen.append((left.stride(), right.stride()))
        return original(left, right, *rest)

    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", spy)
    generator = torch.Generator().manual_seed(3)
    left, right = torch.randn(6, 9, generator=generator), torch.randn(4, 9, generator=generator)
    if which in ("left", "both"):
        left = torch.randn(6, 16, generator=generator)[:, :9]
    if which in ("right", "both"):
        right = torch.randn(4, 16, generator=generator)[:, :9]
    got = PRODUCTS.row_product(left, right, None)
    assert seen == [((9, 1), (9, 1))]
    torch.testing.assert_close(got, _product64(left, right.T), rtol=1e-5, atol=1e-5)


@needs_onednn
def test_small_products_take_the_blas_and_large_ones_onednn(calls):
    small = PRODUCTS.row_product(torch.ones(8, 96), torch.ones(24, 96), None)
    assert calls == [] and small.shape == (8, 24)
    large = PRODUCTS.row_product(torch.ones(128, 128), torch.ones(128, 128), None)
    assert calls == [((128, 128), (128, 128))] and torch.all(large == 128)
    # a product per sample and group pays later than one product
    filters, columns = torch.ones(1, 128, 128), torch.ones(2, 1, 128, 128)
    assert torch.all(PRODUCTS.filters_times_columns(filters, columns) == 128) and len(calls) == 1
    columns = torch.ones(2, 1, 128, 1024)
    assert torch.all(PRODUCTS.filters_times_columns(filters, columns) == 128) and len(calls) == 3


@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")
def test_other_dtypes_and_switched_off_onednn_take_the_blas(calls, every_size):
    left, right = torch.randn(2, 6, 5, dtype=torch.float64), torch.randn(2, 5, 4, dtype=torch.float64)
    torch.testing.assert_close(PRODUCTS.batched_product(left, right), left @ right)
    with torch.backends.mkldnn.flags(enabled=False):
        single = left.float()
        torch.testing.assert_close(PRODUCTS.batched_product(single, right.float()), single @ right.float())
    assert calls == []


DENSE = [
    {"id": "2d-3x3", "x": (2, 16, 12, 11), "w": (12, 16, 3, 3), "with": {"padding": 1}},
    {"id": "2d-groups", "x": (2, 32, 10, 9), "w": (12, 16, 3, 3), "with": {"padding": 1, "groups": 2}},
    {"id": "1d-k3", "x": (2, 32, 64), "w": (16, 32, 3), "with": {"padding": 1}},
    {"id": "3d", "x": (1, 8, 5, 6, 7), "w": (6, 8, 3, 3, 3), "with": {"padding": 1, "stride": 2}},
]


def _case(case, requires_grad=False):
    generator = torch.Generator().manual_seed(0)
    tensors = [torch.randn(shape, generator=generator) for shape in (case["x"], case["w"], case["w"][:1])]
    return [tensor.requires_grad_(requires_grad) for tensor in tensors]


@needs_onednn
@pytest.mark.parametrize("case", DENSE, ids=[case["id"] for case in DENSE])
def test_the_fields_path_forward_and_backward_take_onednn_and_equal_torch(
    case, calls, every_size, fields_for_dense
):
    x, w, b = _case(case, requires_grad=True)
    clear_plans()
    got = anyconv.conv(x, w, b, **case["with"])
    forward_calls = len(calls)
    got.backward(torch.ones_like(got))
    assert forward_calls > 0 and len(calls) > forward_calls
    doubles = [tensor.detach().double().requires_grad_() for tensor in (x, w, b)]
    expected = torch_conv(*doubles, **case["with"])
    expected.backward(torch.ones_like(expected))
    torch.testing.assert_close(got, expected.float(), rtol=1e-4, atol=1e-4)
    for mine, theirs in zip((x, w, b), doubles):
        torch.testing.assert_close(mine.grad, theirs.grad.float(), rtol=1e-4, atol=1e-3)


POINTWISE = [
    {"id": "channels-first", "x": (2, 24, 9, 8), "w": (40, 24, 1, 1), "with": {}, "last": False},
    {"id": "groups", "x": (2, 24, 9, 8), "w": (40, 12, 1, 1), "with": {"groups": 2}, "last": False},
    {"id": "stride", "x": (3, 24, 9, 8), "w": (40, 24, 1, 1), "with": {"stride": 2}, "last": False},
    {"id": "channels-last", "x": (2, 24, 9, 8), "w": (40, 24, 1, 1), "with": {}, "last": True},
    {"id": "squeeze-excitation", "x": (8, 96, 1, 1), "w": (24, 96, 1, 1), "with": {}, "last": False},
]


@needs_onednn
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("case", POINTWISE, ids=[case["id"] for case in POINTWISE])
def test_the_pointwise_path_without_a_graph_takes_onednn_and_equals_torch(case, bias, calls, every_size):
    x, w, b = _case(case)
    if case["last"]:
        x = x.contiguous(memory_format=torch.channels_last)
    b = b if bias else None
    with torch.no_grad():
        got = anyconv.conv(x, w, b, **case["with"])
    assert calls
    expected = torch_conv(x.double(), w.double(), None if b is None else b.double(), **case["with"])
    torch.testing.assert_close(got, expected.float(), rtol=1e-5, atol=1e-5)
    if case["last"]:
        assert got.is_contiguous(memory_format=torch.channels_last)


@needs_onednn
@pytest.mark.parametrize(
    "wanted",
    [(True, True, True), (False, False, True), (True, False, False)],
    ids=["all", "bias-only", "input-only"],
)
def test_the_channels_last_pointwise_path_with_a_graph_takes_onednn_both_ways(wanted, calls, every_size):
    x, w, b = _case(POINTWISE[3])
    x = x.contiguous(memory_format=torch.channels_last)
    tensors = [tensor.requires_grad_(want) for tensor, want in zip((x, w, b), wanted)]
    got = anyconv.conv(*tensors)
    grad = torch.randn(got.shape, generator=torch.Generator().manual_seed(3))
    forward_calls = len(calls)
    got.backward(grad)
    assert forward_calls > 0 and (len(calls) > forward_calls) == any(wanted[:2])
    doubles = [tensor.detach().double().requires_grad_(want) for tensor, want in zip(tensors, wanted)]
    expected = torch_conv(*doubles)
    expected.backward(grad.double())
    torch.testing.assert_close(got, expected.float(), rtol=1e-5, atol=1e-5)
    for mine, theirs, want in zip(tensors, doubles, wanted):
        assert (mine.grad is not None) == want
        if want:
            torch.testing.assert_close(mine.grad, theirs.grad.float(), rtol=1e-5, atol=1e-4)


@needs_onednn
def test_the_recorded_row_product_is_twice_differentiable(every_size):
    generator = torch.Generator().manual_seed(4)
    left, right, bias = (torch.randn(shape, generator=generator) for shape in ((6, 5), (4, 5), (4,)))
    grad = torch.randn(6, 4, generator=generator)

    def second_order(product, *tensors):
        tensors = [tensor.clone().requires_grad_() for tensor in tensors]
        first = torch.autograd.grad(product(*tensors), tensors, grad.to(tensors[0].dtype), create_graph=True)
        # the bias' second derivative is zero (materialized: autograd finds no path to it)
        return torch.autograd.grad(sum((g * g).sum() for g in first), tensors, materialize_grads=True)

    mine = second_order(PRODUCTS.row_product, left, right, bias)
    theirs = second_order(lambda a, b, c: a @ b.T + c, left.double(), right.double(), bias.double())
    for a, b in zip(mine, theirs):
        torch.testing.assert_close(a, b.float(), rtol=1e-5, atol=1e-4)


TRANSPOSED = [
    {"id": "2x2-s2", "x": (2, 16, 7, 6), "w": (16, 8, 2, 2), "with": {"stride": 2}},
    {
        "id": "4x4-s2-groups",
        "x": (2, 16, 5, 5),
        "w": (16, 4, 4, 4),
        "with": {"stride": 2, "padding": 1, "groups": 2},
    },
]


@needs_onednn
@pytest.mark.parametrize("case", TRANSPOSED, ids=[case["id"] for case in TRANSPOSED])
def test_conv_transpose_products_with_a_graph_take_onednn_both_ways_and_equal_torch(case, calls, every_size):
    generator = torch.Generator().manual_seed(1)
    out_channels = case["w"][1] * case["with"].get("groups", 1)
    x, w, b = (torch.randn(shape, generator=generator) for shape in (case["x"], case["w"], (out_channels,)))
    tensors = [tensor.requires_grad_() for tensor in (x, w, b)]
    got = anyconv.conv_transpose(*tensors, **case["with"])
    grad = torch.randn(got.shape, generator=generator)
    forward_calls = len(calls)
    got.backward(grad)
    assert forward_calls > 0 and len(calls) > forward_calls
    doubles = [tensor.detach().double().requires_grad_() for tensor in tensors]
    expected = torch.nn.functional.conv_transpose2d(*doubles, **case["with"])
    expected.backward(grad.double())
    torch.testing.assert_close(got, expected.float(), rtol=1e-5, atol=1e-4)
    for mine, theirs in zip(tensors, doubles):
        torch.testing.assert_close(mine.grad, theirs.grad.float(), rtol=1e-5, atol=1e-4)


@needs_onednn
def test_the_recorded_product_is_twice_differentiable(every_size):
    generator = torch.Generator().manual_seed(2)
    filters = torch.randn(2, 5, 4, generator=generator)
    columns = torch.randn(3, 2, 4, 6, generator=generator)
    grad = torch.randn(3, 2, 5, 6, generator=generator)

    def second_order(product, left, right):
        left, right = left.clone().requires_grad_(), right.clone().requires_grad_()
        first = torch.autograd.grad(product(left, right), (left, right), grad, create_graph=True)
        return torch.autograd.grad(sum((g * g).sum() for g in first), (left, right))

    mine = second_order(PRODUCTS.filters_times_columns, filters, columns)
    theirs = second_order(torch.matmul, filters.double(), columns.double())
    for a, b in zip(mine, theirs):
        torch.testing.assert_close(a, b.float(), rtol=1e-5, atol=1e-4)


@needs_onednn
def test_torch_func_sees_torch_ops_only(calls, every_size):
    filters, columns = torch.randn(2, 5, 4), torch.randn(3, 2, 4, 6)
    gradient = torch.func.grad(lambda f: PRODUCTS.filters_times_columns(f, columns).square().sum())(filters)
    expected = torch.func.grad(lambda f: torch.matmul(f, columns).square().sum())(filters)
    torch.testing.assert_close(gradient, expected)
    assert calls == []


def _pointwise_cosine(x, w, b, eps):
    """The 1x1 cosine by its formula: (p . w) / (|p| |w| + eps) + b at every position."""
    fields, filters = x.movedim(1, -1), w.flatten(1)
    products = fields @ filters.T
    norms = torch.linalg.vector_norm(fields, dim=-1, keepdim=True)
    denominator = norms * torch.linalg.vector_norm(filters, dim=-1)
    return (products / (denominator + eps) + b).movedim(-1, 1)


@needs_onednn
@pytest.mark.parametrize("eps", [1e-8, 10.0], ids=["unit-vectors", "eps-counts"])
@pytest.mark.parametrize(
    "case",
    [
        # outputs enough for the backward that recomputes (pointwise_cosine.RECOMPUTE_OUTPUTS)
        {"x": (2, 24, 32, 32), "w": (40, 24, 1, 1), "last": False},
        {"x": (2, 24, 32, 32), "w": (40, 24, 1, 1), "last": True},
    ],
    ids=["channels-first", "channels-last"],
)
def test_the_pointwise_cosines_backward_takes_onednn_and_equals_the_formula(
    case, eps, calls, every_size, monkeypatch
):
    # eps 10 keeps the backward from its unit-vector form (eps negligible against every |p| |w|)
    monkeypatch.setattr(anyconv.variants.Cosine, "eps", eps)
    clear_plans()
    x, w, b = _case(case)
    if case["last"]:
        x = x.contiguous(memory_format=torch.channels_last)
    tensors = [tensor.requires_grad_() for tensor in (x, w, b)]
    got = anyconv.generalized_conv(tensors[0], tensors[1], "cosine", tensors[2])
    assert got.numel() >= importlib.import_module("anyconv.engine.pointwise_cosine").RECOMPUTE_OUTPUTS
    grad = torch.randn(got.shape, generator=torch.Generator().manual_seed(6))
    forward_calls = len(calls)
    got.backward(grad)
    assert len(calls) > forward_calls
    doubles = [tensor.detach().double().requires_grad_() for tensor in tensors]
    expected = _pointwise_cosine(*doubles, eps)
    expected.backward(grad.double())
    torch.testing.assert_close(got, expected.float(), rtol=1e-5, atol=1e-5)
    for mine, theirs in zip(tensors, doubles):
        torch.testing.assert_close(mine.grad, theirs.grad.float(), rtol=1e-4, atol=1e-4)


@needs_onednn
def test_weight_gradients_over_many_positions_take_the_blas(calls, every_size):
    # a sum at least LONG_REDUCTION times longer than either side of the result: the BLAS
    generator = torch.Generator().manual_seed(5)
    long_rows = PRODUCTS.LONG_REDUCTION * 24
    left, right = (
        torch.randn(long_rows, 24, generator=generator),
        torch.randn(long_rows, 20, generator=generator),
    )
    torch.testing.assert_close(PRODUCTS.rows_transposed_product(left, right), _product64(left.T, right))
    grad, columns = torch.randn(2, 1, 20, long_rows, generator=generator), torch.randn(2, 1, 24, long_rows)
    expected = (grad.double() @ columns.double().mT).sum(0).float()
    torch.testing.assert_close(PRODUCTS.filters_gradient(grad, columns), expected, rtol=1e-5, atol=1e-4)
    assert calls == []
    # a shorter sum: oneDNN
    PRODUCTS.rows_transposed_product(left[:48], right[:48])
    PRODUCTS.filters_gradient(grad[..., :48], columns[..., :48])
    assert len(calls) == 3
