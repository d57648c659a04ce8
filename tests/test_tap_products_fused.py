"""The cosines' one-pass forward on few channels per group (``anyconv::tap_quotient``, taken by
engine/tap_products.py when no graph is recorded).

Against the naive float64 formulas and the composed route (the loops' dot, a box sum of x^2 and
the division), on depthwise and grouped geometries in 1-D to 3-D; zero fields, NaN and inf;
bfloat16 and float16; the route chosen by grad mode; opcheck and torch.compile fullgraph.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from variant_reference import naive_generalized_conv

import anyconv
from anyconv.engine import tap_products
from anyconv.engine.tap_loops import tap_quotient_op
from anyconv.engine.tap_products import tap_products_fit
from anyconv.variants import resolve_variant

#: x shape, weight shape, arguments (groups always given)
CASES = [
    {"id": "1d-k5", "x": (2, 4, 23), "w": (4, 1, 5), "with": {"padding": 2, "groups": 4}},
    {"id": "1d-stride3-2-per-group", "x": (1, 6, 20), "w": (6, 2, 4), "with": {"stride": 3, "groups": 3}},
    {"id": "depthwise-3x3", "x": (2, 6, 9, 40), "w": (6, 1, 3, 3), "with": {"padding": 1, "groups": 6}},
    {
        "id": "depthwise-3x3-s2",
        "x": (2, 4, 9, 37),
        "w": (4, 1, 3, 3),
        "with": {"padding": 1, "stride": 2, "groups": 4},
    },
    {
        "id": "depthwise-5x5-s2",
        "x": (1, 3, 11, 10),
        "w": (3, 1, 5, 5),
        "with": {"padding": 2, "stride": 2, "groups": 3},
    },
    {"id": "depthwise-7x7", "x": (1, 4, 10, 9), "w": (4, 1, 7, 7), "with": {"padding": 3, "groups": 4}},
    {"id": "multiplier-2", "x": (2, 3, 7, 7), "w": (6, 1, 3, 3), "with": {"padding": 1, "groups": 3}},
    {"id": "grouped-4-per-group", "x": (1, 8, 7, 6), "w": (8, 4, 3, 3), "with": {"padding": 1, "groups": 2}},
    {"id": "grouped-8-per-group", "x": (1, 16, 6, 6), "w": (4, 8, 3, 3), "with": {"groups": 2}},
    {
        "id": "dilated",
        "x": (1, 4, 11, 11),
        "w": (4, 1, 3, 3),
        "with": {"padding": 2, "dilation": 2, "groups": 4},
    },
    {
        "id": "stride-dilation-asymmetric",
        "x": (2, 4, 12, 9),
        "w": (4, 2, 2, 3),
        "with": {"stride": (2, 1), "dilation": (1, 2), "groups": 2},
    },
    {
        "id": "per-side-padding",
        "x": (1, 2, 6, 7),
        "w": (2, 1, 3, 3),
        "with": {"padding": ((2, 0), (0, 1)), "groups": 2},
    },
    {
        "id": "same-even-kernel",
        "x": (1, 4, 7, 8),
        "w": (4, 1, 4, 2),
        "with": {"padding": "same", "groups": 4},
    },
    {"id": "3d-depthwise", "x": (1, 3, 5, 6, 5), "w": (3, 1, 3, 3, 3), "with": {"padding": 1, "groups": 3}},
    {
        "id": "3d-stride2-grouped",
        "x": (1, 4, 6, 5, 7),
        "w": (4, 2, 3, 2, 3),
        "with": {"stride": 2, "padding": 1, "groups": 2},
    },
    {"id": "output-of-one", "x": (3, 4, 3, 3), "w": (4, 1, 3, 3), "with": {"groups": 4}},
    # rows narrower than a vector and channels past one: the vectors hold channels
    {
        "id": "depthwise-5x5-narrow",
        "x": (2, 20, 7, 7),
        "w": (20, 1, 5, 5),
        "with": {"padding": 2, "groups": 20},
    },
]
IDS = [case["id"] for case in CASES]
#: dense layers with 4 filters or more: the loops' quotient takes the dot from the filter blocks (or
#: the filter vectors: 32 filters and 64 taps), then |p| once per field, then divides
DENSE_CASES = [
    {"id": "dense-4-filters", "x": (2, 3, 9, 20), "w": (4, 3, 3, 3), "with": {"padding": 1}},
    {"id": "dense-stem-7x7-s2", "x": (1, 3, 17, 19), "w": (8, 3, 7, 7), "with": {"stride": 2, "padding": 3}},
    {"id": "dense-filter-vectors", "x": (1, 3, 12, 30), "w": (40, 3, 5, 5), "with": {"padding": 2}},
    {"id": "dense-dilated", "x": (1, 6, 12, 12), "w": (5, 6, 3, 3), "with": {"padding": 2, "dilation": 2}},
    {"id": "dense-1d", "x": (2, 8, 40), "w": (6, 8, 3), "with": {"padding": 1}},
    {"id": "dense-3d", "x": (1, 4, 5, 6, 7), "w": (5, 4, 3, 3, 3), "with": {"padding": 1}},
]  # fmt: skip
DENSE_IDS = [case["id"] for case in DENSE_CASES]


def _per_channel(low, high):
    """A per-output-channel option tensor for ``out_channels`` filters (built when the case is)."""
    return lambda out_channels: torch.linspace(low, high, out_channels, dtype=torch.float64)


#: (id, variant name, options): numbers, or callables of out_channels giving per-channel tensors
VARIANTS = [
    ("cosine", "cosine", {}),
    ("sharpened_cosine", "sharpened_cosine", {}),
    ("sharpened_cosine-e0.5-q0.1", "sharpened_cosine", {"exponent": 0.5, "q": 0.1}),
    ("sharpened_cosine-e3", "sharpened_cosine", {"exponent": 3.0, "q": 0.01}),
    ("sharpened_cosine-per-channel", "sharpened_cosine",
     {"exponent": _per_channel(1.0, 3.0), "q": _per_channel(0.01, 1.0)}),
]  # fmt: skip
VARIANT_IDS = [variant[0] for variant in VARIANTS]

pytestmark = pytest.mark.skipif(
    not tap_products_fit(resolve_variant("cosine"), torch.ones(1, 2, 3), torch.ones(2, 1, 3), 2),
    reason="the tap loops are not compiled here (no C++ compiler, or ANYCONV_NATIVE=0)",
)


def _tensors(case, dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(case["x"], generator=generator, dtype=torch.float64).to(dtype)
    w = torch.randn(case["w"], generator=generator, dtype=torch.float64).to(dtype)
    b = torch.randn(case["w"][0], generator=generator, dtype=torch.float64).to(dtype)
    return x, w, b


def _options(options, out_channels, dtype=torch.float64):
    built = {}
    for name, value in options.items():
        value = value(out_channels) if callable(value) else value
        built[name] = value.to(dtype) if torch.is_tensor(value) else value
    return built


def _spy(patch):
    """Count the calls the one pass computes: a list that grows by one on each."""
    calls = []
    quotient = tap_products.tap_quotient_conv

    def spy(*arguments):
        calls.append(arguments[0].shape)
        return quotient(*arguments)

    patch.setattr(tap_products, "tap_quotient_conv", spy)
    return calls


@pytest.fixture
def fused(monkeypatch):
    """The calls the one pass computed in this test."""
    return _spy(monkeypatch)


def _composed(monkeypatch, function):
    """Run ``function`` with the one pass switched off: the composed route computes it."""
    with monkeypatch.context() as patch:
        patch.setattr(tap_products, "FUSED_QUOTIENT", False)
        return function()


@pytest.mark.parametrize(("variant_id", "name", "options"), VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("case", CASES + DENSE_CASES, ids=IDS + DENSE_IDS)
def test_fused_equals_the_naive_formula(case, variant_id, name, options, fused):
    x, w, b = _tensors(case)
    built = _options(options, w.shape[0])
    with torch.no_grad():
        output = anyconv.generalized_conv(x, w, name, b, **case["with"], **built)
    assert len(fused) == 1
    expected = naive_generalized_conv(x, w, name, b, **case["with"], **built)
    torch.testing.assert_close(output, expected)


#: the hypothesis strategies the random geometries below share: where the fields lie, the
#: plane's width (below, between and past vectors of lanes), and the cosine
_PLACEMENTS = dict(
    stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    padding=st.tuples(*(st.integers(0, 2),) * 4),
    width=st.integers(1, 45),
    name=st.sampled_from(["cosine", "sharpened_cosine"]),
)


def _call_arguments(stride, dilation, padding, **more):
    """generalized_conv's keyword arguments of a drawn geometry: padding drawn as four amounts."""
    return {"stride": stride, "dilation": dilation, "padding": (padding[:2], padding[2:]), **more}


@settings(max_examples=30, deadline=None)
@given(
    groups=st.integers(1, 3),
    per_group=st.integers(1, 3),
    multiplier=st.integers(1, 2),
    kernel=st.tuples(st.integers(2, 4), st.integers(1, 4)),  # 1x1 kernels take the pointwise path
    **_PLACEMENTS,
)
def test_random_geometries_equal_the_naive_formula(
    groups, per_group, multiplier, kernel, stride, dilation, padding, width, name
):
    # widths below, between and past one and two vectors of lanes (8 in float64): every block form
    generator = torch.Generator().manual_seed(width)
    x = torch.randn(2, 2 * groups * per_group, 8, width + 7, generator=generator, dtype=torch.float64)
    w = torch.randn(2 * groups * multiplier, per_group, *kernel, generator=generator, dtype=torch.float64)
    arguments = _call_arguments(stride, dilation, padding, groups=2 * groups)
    with torch.no_grad(), pytest.MonkeyPatch.context() as patch:
        calls = _spy(patch)
        output = anyconv.generalized_conv(x, w, name, **arguments)
    assert len(calls) == 1
    torch.testing.assert_close(output, naive_generalized_conv(x, w, name, **arguments))


@settings(max_examples=25, deadline=None)
@given(
    groups=st.integers(2, 3),
    per_group=st.integers(1, 4),
    filters=st.sampled_from([4, 5, 8]),
    kernel=st.tuples(st.integers(2, 4), st.integers(1, 4)),
    **_PLACEMENTS,
    dtype=st.sampled_from([torch.float64, torch.float32]),
)
def test_random_grouped_geometries_of_several_filters_per_group_equal_the_naive_formula(
    groups, per_group, filters, kernel, stride, dilation, padding, width, name, dtype
):
    # the loops lay each group out once: |p| once per field, then each filter's dot and division
    generator = torch.Generator().manual_seed(width)
    x = torch.randn(2, groups * per_group, 8, width + 7, generator=generator, dtype=torch.float64)
    w = torch.randn(groups * filters, per_group, *kernel, generator=generator, dtype=torch.float64)
    arguments = _call_arguments(stride, dilation, padding, groups=groups)
    _assert_one_call_gives_the_formula(x, w, name, dtype, arguments)


@settings(max_examples=30, deadline=None)
@given(
    channels=st.sampled_from([2, 5, 16, 17, 40]),
    kernel=st.tuples(st.integers(1, 4), st.integers(2, 9)),
    rows=st.integers(1, 9),
    bias=st.booleans(),
    **_PLACEMENTS,
    dtype=st.sampled_from([torch.float64, torch.float32]),
)
def test_random_channels_last_depthwise_geometries_equal_the_naive_formula(
    channels, kernel, rows, bias, stride, dilation, padding, width, name, dtype
):
    # the lanes hold channels: the quotient sums |p|^2 from the squares each kernel row's last tap
    # meets, a row of outputs at a time, in blocks of eight outputs and their rest
    generator = torch.Generator().manual_seed(width)
    height, span = rows + (kernel[0] - 1) * dilation[0], (kernel[1] - 1) * dilation[1] + 1
    x = torch.randn(2, channels, height, width + span, generator=generator, dtype=torch.float64)
    x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(channels, 1, *kernel, generator=generator, dtype=torch.float64)
    # a bias float32 holds exactly: the same bias in both dtypes
    b = torch.randn(channels, generator=generator).double() if bias else None
    arguments = _call_arguments(stride, dilation, padding, groups=channels, bias=b)
    _assert_one_call_gives_the_formula(x, w, name, dtype, arguments)


def _assert_one_call_gives_the_formula(x, w, name, dtype, arguments):
    """One call of the loops in DTYPE gives the naive formula of the float64 X and W (and bias)."""
    cast = {key: value.to(dtype) if torch.is_tensor(value) else value for key, value in arguments.items()}
    with torch.no_grad(), pytest.MonkeyPatch.context() as patch:
        calls = _spy(patch)
        output = anyconv.generalized_conv(x.to(dtype), w.to(dtype), name, **cast)
    assert len(calls) == 1
    tolerance = 1e-12 if dtype == torch.float64 else 2e-5
    expected = naive_generalized_conv(x, w, name, **arguments)
    torch.testing.assert_close(output.double(), expected, rtol=tolerance, atol=tolerance)


@settings(max_examples=25, deadline=None)
@given(
    channels=st.integers(1, 4),
    filters=st.sampled_from([4, 5, 9, 33, 40]),
    kernel=st.tuples(st.integers(2, 5), st.integers(1, 5)),
    **_PLACEMENTS,
    dtype=st.sampled_from([torch.float64, torch.float32]),
)
def test_random_dense_geometries_equal_the_naive_formula(
    channels, filters, kernel, stride, dilation, padding, width, name, dtype
):
    # the dot from the filter blocks or vectors, |p| once per field, the division
    generator = torch.Generator().manual_seed(width)
    x = torch.randn(2, channels, 9, width + 8, generator=generator, dtype=torch.float64)
    w = torch.randn(filters, channels, *kernel, generator=generator, dtype=torch.float64)
    arguments = _call_arguments(stride, dilation, padding)
    _assert_one_call_gives_the_formula(x, w, name, dtype, arguments)


def test_zero_fields_of_a_dense_layer_give_the_formulas(fused):
    x, w, b = _tensors(DENSE_CASES[2])
    x[0, :, :3] = 0
    x[0, :, :, :4] = 0
    with torch.no_grad():
        output = anyconv.generalized_conv(x, w, "cosine", b, padding=2)
    assert len(fused) == 1
    torch.testing.assert_close(output, naive_generalized_conv(x, w, "cosine", b, padding=2))
    # the fields of zeros only: every output is its bias
    torch.testing.assert_close(output[0, :, 0, 0], b)


@pytest.mark.parametrize(("variant_id", "name", "options"), VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("case", CASES + DENSE_CASES, ids=IDS + DENSE_IDS)
def test_fused_float32_equals_the_composed_route(case, variant_id, name, options, fused, monkeypatch):
    x, w, b = _tensors(case, torch.float32, seed=1)
    built = _options(options, w.shape[0], torch.float32)

    def forward():
        # no graph: a dense layer takes this path only then
        with torch.no_grad():
            return anyconv.generalized_conv(x, w, name, b, **case["with"], **built)

    output = forward()
    assert len(fused) == 1
    expected = _composed(monkeypatch, forward)
    assert len(fused) == 1
    torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "mode",
    ["no_grad", "inference_mode", "grad-enabled-no-grad-inputs", "requires-grad", "switched-off"],
)
def test_the_one_pass_is_taken_only_where_no_graph_is_recorded(mode, fused, monkeypatch):
    x, w, b = _tensors(CASES[2])
    if mode == "requires-grad":
        w.requires_grad_()
    if mode == "switched-off":
        monkeypatch.setattr(tap_products, "FUSED_QUOTIENT", False)
    context = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}.get(mode, torch.enable_grad)
    with context():
        output = anyconv.generalized_conv(x, w, "cosine", b, padding=1, groups=6)
    assert len(fused) == (mode not in ("requires-grad", "switched-off"))
    assert output.requires_grad == (mode == "requires-grad")
    torch.testing.assert_close(output, naive_generalized_conv(x, w, "cosine", b, padding=1, groups=6))


#: zero fields: padding corners past a zero border, a zero sample (0 / (eps or q (|w| + q)) = 0)
ZERO_FIELD_VARIANTS = [
    ("cosine", {}),
    ("sharpened_cosine", {}),
    ("sharpened_cosine", {"q": 1e-6}),
    ("sharpened_cosine", {"exponent": 0.5, "q": 0.1}),
]


@pytest.mark.parametrize(("name", "options"), ZERO_FIELD_VARIANTS, ids=lambda value: str(value))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_zero_fields_give_what_the_formula_and_the_composed_route_give(
    name, options, dtype, fused, monkeypatch
):
    x, w, b = _tensors({"x": (3, 4, 8, 9), "w": (4, 1, 3, 3)}, dtype)
    x[0, :, :2] = 0
    x[0, :, :, :2] = 0
    x[1] = 0

    def forward():
        return anyconv.generalized_conv(x, w, name, b, padding=2, groups=4, **options)

    output = forward()
    assert len(fused) == 1
    expected = naive_generalized_conv(
        x.double(), w.double(), name, b.double(), padding=2, groups=4, **options
    )
    composed = _composed(monkeypatch, forward)
    assert torch.equal(output.isnan(), expected.isnan())
    assert torch.equal(output.isnan(), composed.isnan())
    torch.testing.assert_close(output, expected.to(dtype), equal_nan=True)
    torch.testing.assert_close(output, composed, equal_nan=True)
    # the all-zero sample: every output is its bias
    torch.testing.assert_close(output[1], b.view(-1, 1, 1).expand_as(output[1]))


@pytest.mark.parametrize(
    "case", [CASES[7], DENSE_CASES[0], DENSE_CASES[2]], ids=["grouped", "dense", "vectors"]
)
@pytest.mark.parametrize("name", ["cosine", "sharpened_cosine"])
@pytest.mark.parametrize("poisoned", ["input", "weight", "both"])
def test_nan_and_inf_propagate_as_in_the_composed_route(case, name, poisoned, fused, monkeypatch):
    x, w, b = _tensors(case)
    if poisoned in ("input", "both"):
        x[0, 1, 3, 4] = float("nan")
        x[0, -1, 0, 0] = float("inf")
        x[0, 2, 6, 5] = float("-inf")
    if poisoned in ("weight", "both"):
        w[1, -1, 1, 1] = float("nan")
        w[-1, 0, 0, 2] = float("inf")

    def forward():
        with torch.no_grad():
            return anyconv.generalized_conv(x, w, name, b, **case["with"])

    output = forward()
    assert len(fused) == 1
    expected = naive_generalized_conv(x, w, name, b, **case["with"])
    composed = _composed(monkeypatch, forward)
    assert output.isnan().any()
    assert torch.equal(output.isnan(), expected.isnan())
    assert torch.equal(output.isnan(), composed.isnan())
    torch.testing.assert_close(output, expected, equal_nan=True)


@pytest.mark.parametrize("budget", [1, 10**9], ids=["a-sample-per-chunk", "one-chunk"])
def test_chunks_of_samples_give_the_same_numbers(budget, fused):
    x, w, b = _tensors({"x": (5, 4, 6, 6), "w": (4, 1, 3, 3)})
    with torch.no_grad():
        output = anyconv.generalized_conv(x, w, "cosine", b, padding=1, groups=4, memory_budget=budget)
    assert len(fused) == 1
    torch.testing.assert_close(output, naive_generalized_conv(x, w, "cosine", b, padding=1, groups=4))


def test_channels_last_input_keeps_its_layout(fused):
    x, w, b = _tensors(CASES[2])
    last = x.to(memory_format=torch.channels_last)
    output = anyconv.generalized_conv(last, w, "sharpened_cosine", b, padding=1, groups=6)
    assert len(fused) == 1
    assert output.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(
        output, naive_generalized_conv(x, w, "sharpened_cosine", b, padding=1, groups=6)
    )


LOW = [pytest.param(torch.bfloat16, id="bf16"), pytest.param(torch.float16, id="fp16")]
LOW_CASES = [
    case for case in CASES if case["id"] in ("depthwise-3x3", "depthwise-5x5-s2", "grouped-4-per-group")
]


def _relative_error(got, want):
    return ((got.double() - want).abs().max() / want.abs().max()).item()


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize(("variant_id", "name", "options"), VARIANTS[:3], ids=VARIANT_IDS[:3])
@pytest.mark.parametrize("case", LOW_CASES, ids=lambda case: case["id"])
def test_low_precision_is_within_torch_convolutions_error(case, variant_id, name, options, dtype, fused):
    x, w, b = _tensors(case)
    if not tap_products_fit(
        resolve_variant(name, **options), x.to(dtype), w.to(dtype), case["with"]["groups"]
    ):
        pytest.skip("no tap loops in this dtype with this compiler")
    output = anyconv.generalized_conv(x.to(dtype), w.to(dtype), name, **case["with"], **options)
    assert output.dtype == dtype and len(fused) == 1
    wide = [t.to(dtype).double() for t in (x, w)]
    expected = naive_generalized_conv(*wide, name, **case["with"], **options)
    # as tests/test_native_low_precision.py: a few times torch's own convolution's error in this
    # dtype on these data, and at least the dtype's rounding
    torch_error = _relative_error(
        F.conv2d(*(t.to(dtype) for t in wide), **case["with"]), F.conv2d(*wide, **case["with"])
    )
    bound = max(4 * torch_error, 4 * torch.finfo(dtype).eps)
    assert _relative_error(output, expected) <= bound


#: tap_quotient_op's arguments after input and weight: stride, padding, dilation, groups, budget
OP_CASES = {
    "1d-depthwise": ((2, 4, 9), (4, 1, 3), [1], [1, 1], [1], 4),
    "2d-strided-dilated": ((2, 4, 7, 9), (8, 2, 2, 3), [2, 3], [1, 0, 2, 1], [1, 2], 2),
    "3d": ((1, 2, 4, 5, 4), (2, 1, 2, 2, 2), [1, 1, 1], [1, 0] * 3, [1, 1, 1], 2),
}


@pytest.mark.parametrize("budget", [1, 2**20], ids=["a-sample-per-chunk", "one-chunk"])
@pytest.mark.parametrize("case", OP_CASES)
def test_tap_quotient_op_passes_opcheck(case, budget):
    input_shape, weight_shape, stride, padding, dilation, groups = OP_CASES[case]
    generator = torch.Generator().manual_seed(0)
    input = torch.randn(input_shape, dtype=torch.float64, generator=generator)
    weight = torch.randn(weight_shape, dtype=torch.float64, generator=generator)
    scale = torch.linalg.vector_norm(weight.flatten(1), dim=1)
    offset = torch.full_like(scale, 0.25)
    arguments = (input, weight, scale, offset, stride, padding, dilation, groups, budget)
    torch.library.opcheck(tap_quotient_op, arguments)


def test_tap_quotient_op_passes_opcheck_on_a_channels_last_depthwise_input():
    """Read in place into a channels-last output: the fake gives the same strides."""
    generator = torch.Generator().manual_seed(0)
    input = torch.randn((2, 18, 5, 19), dtype=torch.float64, generator=generator)
    weight = torch.randn((18, 1, 3, 3), dtype=torch.float64, generator=generator)
    scale = torch.linalg.vector_norm(weight.flatten(1), dim=1)
    offset = torch.full_like(scale, 0.25)
    last = input.contiguous(memory_format=torch.channels_last)
    arguments = (last, weight, scale, offset, [1, 1], [1, 1, 1, 1], [1, 1], 18, 2**20)
    torch.library.opcheck(tap_quotient_op, arguments)
    output = tap_quotient_op(*arguments)
    assert output.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(output, tap_quotient_op(input, *arguments[1:]))


def _recording_backend(graphs):
    def backend(graph, example_inputs):
        graphs.append(graph)
        return graph.forward

    return backend


# option tensors stop dynamo before any path (resolve_variant checks them with tolist), so numbers
@pytest.mark.parametrize(("variant_id", "name", "options"), VARIANTS[:4], ids=VARIANT_IDS[:4])
def test_compiled_fullgraph_equals_eager(variant_id, name, options):
    x, w, b = _tensors(CASES[3])
    built = _options(options, w.shape[0])

    def layer(x, w, b):
        return anyconv.generalized_conv(x, w, name, b, **CASES[3]["with"], **built)

    graphs = []
    compiled = torch.compile(layer, fullgraph=True, backend=_recording_backend(graphs))
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, w, b), layer(x, w, b))
    targets = {node.target for graph in graphs for node in graph.graph.nodes if node.op == "call_function"}
    assert torch.ops.anyconv.tap_quotient.default in targets


def test_inductor_with_dynamic_batch_under_inference_mode_gives_the_eager_numbers(fused):
    w = torch.randn(8, 1, 3, 3)

    def layer(x):
        return anyconv.generalized_conv(x, w, "sharpened_cosine", padding=1, groups=8)

    compiled = torch.compile(layer, fullgraph=True, dynamic=True)
    with torch.inference_mode():
        for batch in (2, 3, 5):
            x = torch.randn(batch, 8, 9, 20)
            torch.testing.assert_close(compiled(x), layer(x))
    assert fused


@pytest.mark.parametrize("name", ["cosine", "sharpened_cosine"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["channels-first", "channels-last"])
@pytest.mark.parametrize("case", [CASES[2], CASES[7]], ids=[CASES[2]["id"], CASES[7]["id"]])
def test_the_bias_in_the_loops_store_is_the_formulas(case, channels_last, name, fused):
    # the cosine's bias is added by the loops as they store the quotient: special values too
    x, w, b = _tensors(case)
    b[0], b[1] = float("nan"), float("-inf")
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        output = anyconv.generalized_conv(x, w, name, b, **case["with"])
    assert len(fused) == 1
    expected = naive_generalized_conv(x, w, name, b, **case["with"])
    assert output[:, 0].isnan().all() and (output[:, 1] == float("-inf")).all()
    torch.testing.assert_close(output[:, 2:], expected[:, 2:])
