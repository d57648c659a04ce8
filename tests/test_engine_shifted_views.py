"""The shifted views (one product per kernel tap on views of the input): the standard
convolution's forward on them (``tap_products``) and the engine's backward on them, equal to
torch's for any stride, dilation, padding and groups, and chosen by the engine for the
matrix-product variants at stride 1 only, where it is the faster backward."""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference_conv import naive_conv

import anyconv
from anyconv.engine import contraction, shifted_views
from anyconv.engine.chunks import plan_chunks
from anyconv.engine.shifted_views import TapLayout, spread_over_taps, tap_products, tap_sums
from anyconv.functional.pad import pad
from anyconv.geometry import make_geometry
from anyconv.variants import Dot

DOUBLE = torch.float64
TORCH_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def views_forward(x, w, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros", budget=2**22):
    """``tap_products``, the forward on shifted views, called directly for any stride."""
    geometry = make_geometry(x.shape[2:], w.shape[2:], stride, padding, dilation, padding_mode)
    if geometry.padding_mode != "zeros" and geometry.is_padded:
        x = pad(x, geometry)
        geometry = make_geometry(
            geometry.padded_size, geometry.kernel_size, geometry.stride, 0, geometry.dilation
        )
    chunks = plan_chunks(geometry, x.shape[0], x.element_size() * (x.shape[1] + w.shape[0]), budget)
    return tap_products(x, w, None, geometry, groups, chunks)


def views_conv(x, w, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros", budget=2**22):
    """anyconv.conv: fields forward, and, under ``views_everywhere``, backward on the views."""
    return anyconv.conv(
        x, w, None, stride, padding, dilation, groups, padding_mode=padding_mode, memory_budget=budget
    )


def torch_conv(x, w, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
    """torch's convolution, after an explicit F.pad for padding modes and per-side pairs."""
    ndim = w.dim() - 2
    if padding_mode != "zeros" or not isinstance(padding, (int, str)):
        amount = [padding] * ndim if isinstance(padding, int) else list(padding)
        pairs = [item if isinstance(item, tuple) else (item, item) for item in amount]
        mode = "constant" if padding_mode == "zeros" else padding_mode
        x = F.pad(x, [side for pair in reversed(pairs) for side in pair], mode=mode)
        padding = 0
    return TORCH_CONV[ndim](x, w, stride=stride, padding=padding, dilation=dilation, groups=groups)


def _assert_matches(case, reference=torch_conv, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(case["input"], dtype=DOUBLE, generator=generator, requires_grad=True)
    w = torch.randn(case["weight"], dtype=DOUBLE, generator=generator, requires_grad=True)
    options = {
        key: case[key] for key in ("stride", "padding", "dilation", "groups", "padding_mode") if key in case
    }
    budget = case.get("budget", 2**22)
    expected = reference(x, w, **options)
    with torch.no_grad():
        torch.testing.assert_close(
            views_forward(x, w, **options, budget=budget), expected, rtol=0, atol=1e-10
        )
    ours = views_conv(x, w, **options, budget=budget)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-10)
    if not expected.requires_grad:
        return
    grad = torch.randn(expected.shape, dtype=DOUBLE, generator=generator)
    ours_grads = torch.autograd.grad(ours, (x, w), grad)
    expected_grads = torch.autograd.grad(expected, (x, w), grad)
    for mine, theirs in zip(ours_grads, expected_grads):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-10)


CASES = [
    dict(id="2d-s1-p1", input=(3, 4, 9, 9), weight=(5, 4, 3, 3), padding=1),
    dict(id="2d-s2-p1", input=(3, 4, 10, 9), weight=(6, 4, 3, 3), stride=2, padding=1),
    dict(id="2d-s3-odd", input=(2, 3, 11, 13), weight=(4, 3, 3, 2), stride=(3, 2), padding=(2, 0)),
    dict(id="2d-dilated-strided", input=(2, 6, 12, 11), weight=(6, 2, 3, 3), stride=2, dilation=3, groups=3),
    dict(id="2d-groups", input=(2, 8, 7, 7), weight=(8, 2, 3, 3), padding=1, groups=4),
    dict(id="2d-depthwise", input=(2, 4, 6, 6), weight=(8, 1, 3, 3), padding=1, groups=4),
    dict(id="2d-1x1", input=(2, 5, 6, 7), weight=(3, 5, 1, 1)),
    dict(id="2d-same", input=(2, 3, 8, 7), weight=(4, 3, 5, 3), padding="same"),
    dict(id="2d-per-side", input=(2, 3, 8, 7), weight=(4, 3, 3, 3), padding=((2, 0), (1, 3))),
    dict(id="2d-reflect", input=(2, 3, 8, 8), weight=(4, 3, 3, 3), padding=2, padding_mode="reflect"),
    dict(
        id="2d-circular-s2",
        input=(2, 3, 8, 8),
        weight=(4, 3, 3, 3),
        padding=1,
        stride=2,
        padding_mode="circular",
    ),
    dict(id="2d-replicate", input=(2, 3, 8, 8), weight=(4, 3, 3, 3), padding=1, padding_mode="replicate"),
    dict(id="2d-row-chunks", input=(3, 4, 12, 12), weight=(8, 4, 3, 3), padding=1, budget=200),
    dict(id="2d-row-chunks-s2", input=(3, 4, 12, 12), weight=(8, 2, 3, 3), stride=2, groups=2, budget=1),
    dict(id="1d", input=(3, 4, 20), weight=(5, 4, 5), stride=3, padding=4),
    dict(id="1d-dilated", input=(2, 2, 17), weight=(3, 2, 3), dilation=4, padding=2),
    dict(id="3d", input=(2, 4, 6, 5, 7), weight=(4, 2, 3, 2, 3), padding=1, stride=(1, 2, 1), groups=2),
    dict(id="3d-dilated", input=(2, 2, 7, 6, 5), weight=(3, 2, 2, 2, 2), padding=1, dilation=2),
]


@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
def test_shifted_views_match_torch_forward_and_gradients(case, views_everywhere):
    _assert_matches(case)


FOUR_D_CASES = [
    dict(id="4d-s1", input=(2, 4, 5, 4, 5, 4), weight=(3, 4, 3, 2, 3, 2), padding=1),
    dict(
        id="4d-strided-groups",
        input=(1, 4, 6, 5, 5, 6),
        weight=(4, 2, 2, 3, 2, 3),
        stride=(2, 1, 2, 2),
        groups=2,
    ),
]


@pytest.mark.parametrize("case", FOUR_D_CASES, ids=[case["id"] for case in FOUR_D_CASES])
def test_shifted_views_beyond_3d_match_the_naive_loop(case, views_everywhere):
    _assert_matches(case, reference=naive_conv)


@pytest.mark.parametrize("stride", [1, 2])
def test_shifted_views_gradcheck(stride, views_everywhere):
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 5, 6, dtype=DOUBLE, generator=generator, requires_grad=True)
    w = torch.randn(4, 2, 3, 2, dtype=DOUBLE, generator=generator, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, w: views_conv(x, w, stride=stride, padding=1, dilation=(1, 2), groups=2, budget=64),
        (x, w),
    )


# torch's reference warns that it copies the input for 'same' with an even kernel: not ours
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ndim=st.integers(1, 3),
    data=st.data(),
)
def test_shifted_views_match_torch_on_random_geometries(views_everywhere, ndim, data):
    groups = data.draw(st.sampled_from([1, 2, 3]))
    kernel = tuple(data.draw(st.integers(1, 3)) for _ in range(ndim))
    dilation = tuple(data.draw(st.integers(1, 3)) for _ in range(ndim))
    stride = tuple(data.draw(st.integers(1, 3)) for _ in range(ndim))
    span = [dilation[axis] * (kernel[axis] - 1) + 1 for axis in range(ndim)]
    mode = data.draw(st.sampled_from(["zeros", "zeros", "reflect", "replicate", "circular"]))
    padding_amount = data.draw(st.integers(0, 2))
    size = tuple(max(span[axis] + data.draw(st.integers(0, 5)), padding_amount + 1) for axis in range(ndim))
    padding = data.draw(st.sampled_from(["int", "valid", "same"])) if mode == "zeros" else "int"
    if padding == "same" and any(step > 1 for step in stride):
        padding = "int"
    case = dict(
        input=(data.draw(st.integers(1, 3)), groups * data.draw(st.integers(1, 3)), *size),
        weight=(groups * data.draw(st.integers(1, 2)), None, *kernel),
        stride=stride,
        dilation=dilation,
        groups=groups,
        padding=padding_amount if padding == "int" else padding,
        padding_mode=mode,
        budget=data.draw(st.sampled_from([1, 500, 2**22])),
    )
    case["weight"] = (case["weight"][0], case["input"][1] // groups, *kernel)
    _assert_matches(case, seed=data.draw(st.integers(0, 1000)))


def test_tap_layout_places_every_tap_on_its_phase_and_shift():
    layout = TapLayout(make_geometry((7, 8), (2, 3), stride=(2, 3), dilation=(3, 1)))
    assert layout.phase_size == (4, 3)
    # tap (1, 2): offset (3, 2) -> phase (1, 2) of (2, 3) = 5, shift (1, 0) places = 3
    assert layout.taps[1 * 3 + 2] == (5, 3)
    assert layout.columns == 4 * 3 - 3


def test_engine_takes_the_views_backward_for_matrix_product_variants_at_stride_1_only(
    monkeypatch, fields_for_dense
):
    # the fields path's forward and backward (the tap loops' filter blocks off)
    calls = []
    original = contraction.tap_gradients
    monkeypatch.setattr(
        contraction, "tap_gradients", lambda *args: calls.append(args[0].name) or original(*args)
    )
    x = torch.randn(2, 8, 32, 32, dtype=DOUBLE, requires_grad=True)
    w = torch.randn(4, 8, 3, 3, dtype=DOUBLE)
    for name in ("dot", "l2", "cosine", "l1"):
        anyconv.generalized_conv(x, w, name, padding=1).sum().backward()
    assert calls == ["dot", "l2", "cosine"]
    anyconv.conv(x[..., :8, :8], w, padding=1).sum().backward()
    anyconv.conv(x, w, stride=2).sum().backward()
    depthwise = torch.randn(8, 1, 3, 3, dtype=DOUBLE)
    anyconv.conv(x[..., :8, :8], depthwise, groups=8).sum().backward()
    # a learnable option takes autograd through contract, on copied fields
    gamma = torch.full((4,), 0.1, dtype=DOUBLE, requires_grad=True)
    anyconv.generalized_conv(x, w, "rbf", padding=1, gamma=gamma).sum().backward()
    assert calls == ["dot", "l2", "cosine"] and gamma.grad is not None


def _weight(*shape: int, dtype: torch.dtype = DOUBLE) -> torch.Tensor:
    return torch.empty(*shape, dtype=dtype)


def test_fit_rule_keeps_depthwise_strided_small_and_narrow_on_copied_fields():
    geometry = make_geometry((32, 32), 3, padding=1)
    assert not shifted_views.shifted_views_fit(make_geometry((8, 8), 3, padding=1), _weight(4, 8, 3, 3))
    few = shifted_views.MIN_CHANNELS_PER_GROUP - 1
    assert shifted_views.shifted_views_fit(geometry, _weight(4, shifted_views.MIN_CHANNELS_PER_GROUP, 3, 3))
    assert not shifted_views.shifted_views_fit(geometry, _weight(4, few, 3, 3))
    assert not shifted_views.shifted_views_fit(make_geometry((64, 64), 3, stride=(1, 2)), _weight(4, 8, 3, 3))
    # 16 x 16 takes the views with wide groups only
    mid = make_geometry((16, 16), 3, padding=1)
    wide = shifted_views.WIDE_CHANNELS
    assert shifted_views.shifted_views_fit(mid, _weight(4, wide, 3, 3))
    assert not shifted_views.shifted_views_fit(mid, _weight(4, wide - 1, 3, 3))


def test_fit_rule_leaves_float32_to_the_fields_where_onednn_takes_their_products(monkeypatch):
    geometry = make_geometry((32, 32), 3, padding=1)
    products = importlib.import_module("anyconv.variants.matrix_products")
    onednn = products.inner_product_takes(torch.float32)
    assert shifted_views.shifted_views_fit(geometry, _weight(4, 8, 3, 3, dtype=torch.float32)) is not onednn
    assert shifted_views.shifted_views_fit(geometry, _weight(4, 8, 3, 3, dtype=torch.bfloat16))
    # without oneDNN in torch, float32 takes the views as the other dtypes do
    monkeypatch.setattr(products, "_inner_product_available", lambda: False)
    assert shifted_views.shifted_views_fit(geometry, _weight(4, 8, 3, 3, dtype=torch.float32))


def test_a_subclass_that_redefines_contract_defines_its_product_backward_too():
    with pytest.raises(TypeError, match="define product_backward"):

        class StaleDot(Dot):
            def contract(self, fields, filters):
                return 2 * super().contract(fields, filters)

    class ScaledDot(Dot):
        name = "scaled_dot"

        def contract(self, fields, filters):
            return 2 * super().contract(fields, filters)

        def product_backward(self, grad, filters):
            return 2 * grad, None, None

    class NamedDot(Dot):
        name = "named_dot"

    assert NamedDot.product_backward is Dot.product_backward
    x = torch.randn(2, 4, 6, 6, dtype=DOUBLE, requires_grad=True)
    w = torch.randn(3, 4, 3, 3, dtype=DOUBLE, requires_grad=True)
    _assert_same_gradients_as(
        anyconv.generalized_conv(x, w, ScaledDot(), padding=1), 2 * F.conv2d(x, w, padding=1), (x, w)
    )


def _assert_same_gradients_as(actual, expected, leaves):
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-10)
    grad = torch.randn_like(expected)
    for got, want in zip(
        torch.autograd.grad(actual, leaves, grad), torch.autograd.grad(expected, leaves, grad)
    ):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_tap_sums_are_the_field_sums_and_spread_is_their_adjoint():
    geometry = make_geometry((7, 8), (2, 3), stride=(2, 1), dilation=(2, 2))
    layout = TapLayout(geometry)
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(2, 3, 7, 8, dtype=DOUBLE, generator=generator)
    fields = anyconv.unfold(values, (2, 3), stride=(2, 1), dilation=(2, 2))  # (b, 3 * taps, L)
    expected = fields.unflatten(1, (3, -1)).sum(2).view(2, 3, *geometry.output_size)
    torch.testing.assert_close(tap_sums(values, layout), expected, rtol=0, atol=1e-12)
    outputs = torch.randn(expected.shape, dtype=DOUBLE, generator=generator)
    torch.testing.assert_close(
        (tap_sums(values, layout) * outputs).sum(), (values * spread_over_taps(outputs, layout)).sum()
    )


@pytest.mark.parametrize(
    "name, options",
    [("dot", {}), ("cosine", {}), ("polynomial", {"degree": 3}), ("polynomial", {"degree": 2})],
)
def test_the_views_backward_copies_no_fields_and_folds_nothing(monkeypatch, name, options):
    x = torch.randn(2, 8, 32, 32, dtype=DOUBLE, requires_grad=True)
    w = torch.randn(4, 8, 3, 3, dtype=DOUBLE, requires_grad=True)
    output = anyconv.generalized_conv(x * 0.1, w * 0.1, name, padding=1, **options)
    for helper in ("chunk_fields", "add_field_grads"):
        monkeypatch.setattr(
            contraction, helper, lambda *args, helper=helper: pytest.fail(f"{helper} was called")
        )
    output.sum().backward()
    assert x.grad is not None and w.grad is not None
