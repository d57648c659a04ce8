"""The tap-products path on the Triton kernels: cosine, sharpened_cosine, polynomial and rbf on few
channels per group under ``ANYCONV_BACKEND=triton``, through Triton's interpreter (sizes stay tiny).

Against the naive float64 formulas and the CPU's tap products (the C++ loops), forward, gradients
(learnable options included), half precision, first and second derivatives by gradcheck, the path
taken, torch.compile, and random N-d calls (hypothesis).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.autograd import gradcheck, gradgradcheck
from variant_reference import naive_generalized_conv

import anyconv
from anyconv.engine import contraction, paths, tap_loops
from anyconv.engine.plan import plan_conv
from anyconv.engine.tap_products import tap_primitive
from anyconv.variants import last_path, resolve_variant

pytest.importorskip("triton", reason="triton is not installed (pip install anyconv[gpu]): no Triton kernels")

#: x shape, weight shape, arguments (groups always given): depthwise and few channels per group,
#: N = 1 to 3; the 5x5 and 3x3x3 kernels take the box sum of x^2 one dimension at a time
GEOMETRIES = [
    {"id": "1d-depthwise-stride2", "x": (2, 3, 9), "w": (3, 1, 3),
     "with": {"padding": 1, "stride": 2, "groups": 3}},
    {"id": "1d-2-per-group-dilated", "x": (1, 4, 11), "w": (4, 2, 3),
     "with": {"dilation": 2, "stride": 3, "groups": 2}},
    {"id": "2d-depthwise-stride-dilation", "x": (2, 4, 7, 6), "w": (4, 1, 3, 3),
     "with": {"stride": (2, 1), "dilation": (1, 2), "padding": (2, 1), "groups": 4}},
    {"id": "2d-3-per-group-multiplier", "x": (1, 6, 6, 5), "w": (8, 3, 2, 3),
     "with": {"padding": ((1, 0), (0, 1)), "groups": 2}},
    {"id": "2d-depthwise-5x5-reflect", "x": (1, 2, 7, 6), "w": (2, 1, 5, 5),
     "with": {"padding": 2, "padding_mode": "reflect", "groups": 2}},
    {"id": "3d-depthwise", "x": (1, 2, 4, 5, 4), "w": (2, 1, 3, 3, 3), "with": {"padding": 1, "groups": 2}},
]  # fmt: skip
IDS = [geometry["id"] for geometry in GEOMETRIES]


def _per_channel(low, high):
    """A per-output-channel option tensor for ``out_channels`` filters (built when the case is)."""
    return lambda out_channels: torch.linspace(low, high, out_channels, dtype=torch.float64)


#: (variant, options): numbers, or callables of out_channels giving per-channel tensors
VARIANTS = [
    pytest.param("cosine", {}, id="cosine"),
    pytest.param("sharpened_cosine", {"exponent": 1.5, "q": 0.1}, id="sharpened_cosine"),
    pytest.param("polynomial", {"degree": 3, "c": 0.5}, id="polynomial"),
    pytest.param("rbf", {}, id="rbf"),
]
PER_CHANNEL = [
    pytest.param(
        "sharpened_cosine", {"exponent": _per_channel(1.0, 3.0), "q": _per_channel(0.01, 1.0)},
        id="sharpened_cosine-per-channel",
    ),
    pytest.param("polynomial", {"degree": 2, "c": _per_channel(-1.0, 1.0)}, id="polynomial-per-channel"),
    pytest.param("rbf", {"gamma": _per_channel(0.05, 0.5)}, id="rbf-per-channel"),
]  # fmt: skip
FLOATS = [pytest.param(torch.float64, id="float64"), pytest.param(torch.float32, id="float32")]
HALVES = [pytest.param(torch.bfloat16, id="bfloat16"), pytest.param(torch.float16, id="float16")]
#: every variant on every geometry, the per-channel options on two (the interpreter is slow)
CASES = [
    pytest.param(geometry, *variant.values, id=f"{geometry['id']}-{variant.id}")
    for geometry in GEOMETRIES
    for variant in VARIANTS + (PER_CHANNEL if geometry in GEOMETRIES[2:4] else [])
]


@pytest.fixture(autouse=True)
def on_triton(monkeypatch):
    monkeypatch.setenv("ANYCONV_BACKEND", "triton")


def _tensors(geometry, dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x, w = (torch.randn(geometry[key], generator=generator, dtype=torch.float64) for key in ("x", "w"))
    b = torch.randn(geometry["w"][0], generator=generator, dtype=torch.float64)
    return x.to(dtype), w.to(dtype), b.to(dtype)


def _options(options, out_channels, dtype=torch.float64):
    """The options with their per-channel tensors built, learnable."""
    built = {name: value(out_channels) if callable(value) else value for name, value in options.items()}
    return {
        name: value.to(dtype).requires_grad_() if torch.is_tensor(value) else value
        for name, value in built.items()
    }


def _run(geometry, name, options, tensors, grad=None):
    """(output, then the gradients of x, w, b and the option tensors), and the output's gradient."""
    inputs = [tensor.detach().clone().requires_grad_() for tensor in tensors]
    built = _options(options, inputs[1].shape[0], inputs[0].dtype)
    output = anyconv.generalized_conv(*inputs[:2], name, inputs[2], **geometry["with"], **built)
    if grad is None:
        grad = torch.randn(output.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    learnable = [value for value in built.values() if torch.is_tensor(value)]
    gradients = torch.autograd.grad(output, inputs + learnable, grad.to(output.dtype))
    return (output, *gradients), grad


def _assert_all_close(got, want, **tolerance):
    for label, mine, theirs in zip(("output", "input", "weight", "bias", "options"), got, want):
        torch.testing.assert_close(
            mine, theirs.to(mine.dtype), **tolerance, msg=lambda message, label=label: f"{label}: {message}"
        )


def _naive(geometry, name, options, tensors, grad):
    """The naive formula's output and gradients, in float64."""
    inputs = [tensor.double().requires_grad_() for tensor in tensors]
    built = _options(options, inputs[1].shape[0])
    expected = naive_generalized_conv(*inputs[:2], name, inputs[2], **geometry["with"], **built)
    learnable = [value for value in built.values() if torch.is_tensor(value)]
    return (expected, *torch.autograd.grad(expected, inputs + learnable, grad))


@pytest.mark.parametrize(("geometry", "name", "options"), CASES)
def test_forward_and_gradients_equal_the_naive_formula(geometry, name, options):
    tensors = _tensors(geometry)
    mine, grad = _run(geometry, name, options, tensors)
    assert last_path() == "triton"
    _assert_all_close(mine, _naive(geometry, name, options, tensors, grad))


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize(("name", "options"), VARIANTS)
@pytest.mark.parametrize("geometry", GEOMETRIES[1:4], ids=IDS[1:4])
def test_equal_to_the_cpu_tap_products(geometry, name, options, dtype, monkeypatch):
    """The same composition on the C++ tap loops, in the same dtype (only the sums' order differs),
    and the naive float64 formula on the same numbers."""
    tensors = _tensors(geometry, dtype)
    mine, grad = _run(geometry, name, options, tensors)
    assert last_path() == "triton"
    tolerance = {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {}
    _assert_all_close(mine, _naive(geometry, name, options, tensors, grad), **tolerance)
    monkeypatch.setenv("ANYCONV_BACKEND", "auto")
    x, w, _ = tensors
    if tap_primitive(x, w, geometry["with"]["groups"]) is not tap_loops.tap_loops_conv:
        pytest.skip("the C++ tap loops are not compiled here (no C++ compiler, or ANYCONV_NATIVE=0)")
    theirs, _ = _run(geometry, name, options, tensors, grad)
    assert last_path() == "native"
    _assert_all_close(mine, theirs, **tolerance)


@pytest.mark.parametrize("dtype", HALVES)
@pytest.mark.parametrize(("name", "options"), VARIANTS)
def test_half_precision_within_a_few_epsilons(name, options, dtype):
    """Half inputs: the sums are float32's, the formula's steps round to the half type (as on the
    CPU's tap products); the float64 formula of the rounded inputs, to a few epsilons of the scale."""
    geometry = GEOMETRIES[2]
    tensors = _tensors(geometry, dtype)
    mine, grad = _run(geometry, name, options, tensors)
    assert last_path() == "triton" and mine[0].dtype == dtype
    eps = torch.finfo(dtype).eps
    # the output's gradient as the half-precision call took it
    expected = _naive(geometry, name, options, tensors, grad.to(dtype).double())
    for label, got, want in zip(("output", "input", "weight", "bias"), mine, expected):
        scale = want.abs().amax().item() + 1
        torch.testing.assert_close(
            got.double(),
            want,
            rtol=8 * eps,
            atol=8 * eps * scale,
            msg=lambda text, label=label: f"{label}: {text}",
        )


def _refuse(*args, **kwargs):
    raise AssertionError("the call took another primitive than the Triton kernels, or copied fields")


@pytest.mark.parametrize(("name", "options"), VARIANTS + PER_CHANNEL)
def test_the_path_is_tap_products_on_triton_and_copies_no_fields(name, options, monkeypatch):
    geometry = GEOMETRIES[2]
    x, w, _ = _tensors(geometry)
    variant = resolve_variant(name, **_options(options, w.shape[0]))
    arguments = geometry["with"]
    plan = plan_conv(
        x, w, variant, arguments["stride"], arguments["padding"], arguments["dilation"], arguments["groups"],
        "zeros", None,
    )  # fmt: skip
    assert plan.path == "tap products"
    for function in ("chunk_fields", "fields_buffer"):
        monkeypatch.setattr(contraction, function, _refuse)
    monkeypatch.setattr(tap_loops, "tap_loops_op", _refuse)
    monkeypatch.setattr(paths, "run_generalized_conv", _refuse)
    results, _ = _run(geometry, name, options, _tensors(geometry))
    assert last_path() == "triton"
    assert all(result.isfinite().all() for result in results)


def test_dense_calls_keep_the_fields_path():
    x, w = torch.randn(1, 4, 5, 5), torch.randn(4, 4, 3, 3)
    assert plan_conv(x, w, resolve_variant("cosine"), 1, 0, 1, 1, "zeros", None).path == "fields"
    assert tap_primitive(x, w, 1) is None


#: small shapes: gradcheck perturbs every element, each a run of the interpreter (fast mode: one
#: direction per input instead of one per element)
SMALL = {"x": (1, 4, 4, 5), "w": (4, 2, 3, 2), "with": {"padding": 1, "stride": (1, 2), "groups": 2}}


@pytest.mark.parametrize(("name", "options"), VARIANTS[:3] + PER_CHANNEL[2:])
def test_gradcheck(name, options):
    x, w, b = (tensor.requires_grad_() for tensor in _tensors(SMALL))
    built = _options(options, w.shape[0])
    learnable = {option: value for option, value in built.items() if torch.is_tensor(value)}
    fixed = {option: value for option, value in built.items() if option not in learnable}

    def function(x, w, b, *values):
        return anyconv.generalized_conv(
            x, w, name, b, **SMALL["with"], **fixed, **dict(zip(learnable, values))
        )

    assert gradcheck(function, (x, w, b, *learnable.values()), fast_mode=True)
    assert last_path() == "triton"


#: second derivatives as on the CPU's tap products: no zero padding for the cosines (their norm has
#: none at a zero field), sharpened_cosine's exponent >= 2, two channels per group for rbf
SECOND_ORDER = [
    pytest.param("cosine", {}, {"groups": 4}, id="cosine"),
    pytest.param("sharpened_cosine", {"exponent": 2.0, "q": 0.1}, {"groups": 2, "stride": 2},
                 id="sharpened_cosine"),
    pytest.param("polynomial", {"degree": 3, "c": 0.5}, {"groups": 4, "padding": 1}, id="polynomial"),
    pytest.param("rbf", {"gamma": 0.05}, {"groups": 2, "padding": 1}, id="rbf"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "options", "arguments"), SECOND_ORDER)
def test_gradgradcheck(name, options, arguments):
    """The Triton operator's backward is differentiable (recomputed by the engine's operator)."""
    generator = torch.Generator().manual_seed(3)
    x = (torch.randn(1, 4, 4, 4, dtype=torch.float64, generator=generator) * 0.5).requires_grad_()
    w = torch.randn(4, 4 // arguments["groups"], 3, 2, dtype=torch.float64, generator=generator)
    w, b = (w * 0.5).requires_grad_(), torch.randn(4, dtype=torch.float64, requires_grad=True)

    def function(x, w, b):
        return anyconv.generalized_conv(x, w, name, b, **arguments, **options)

    assert gradgradcheck(function, (x, w, b), fast_mode=True)


@pytest.mark.filterwarnings("ignore:Dynamo detected a call to a `functools.lru_cache`")
def test_torch_compile_fullgraph_equals_eager():
    """The composition on the Triton operator is traced whole, with no graph break."""
    geometry = GEOMETRIES[2]
    x, w, _ = (tensor.requires_grad_() for tensor in _tensors(geometry))

    def layer(x, w):
        return anyconv.generalized_conv(x, w, "cosine", **geometry["with"])

    eager = layer(x, w)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")(x, w)
    torch.testing.assert_close(compiled, eager)
    grad = torch.randn_like(eager)
    for got, want in zip(
        torch.autograd.grad(compiled, (x, w), grad), torch.autograd.grad(eager, (x, w), grad)
    ):
        torch.testing.assert_close(got, want)


@st.composite
def _calls(draw):
    """A random N-d call (N = 1 to 3) with few channels per group: stride, dilation, padding."""
    name, options = draw(st.sampled_from([param.values for param in VARIANTS]))
    ndim, groups = draw(st.integers(1, 3)), draw(st.integers(2, 3))
    # a first dimension of 2 taps or more: a 1x1 kernel takes the pointwise path
    kernel = [
        draw(st.integers(2, 3)),
        *draw(st.lists(st.integers(1, 3), min_size=ndim - 1, max_size=ndim - 1)),
    ]
    dilation = draw(st.lists(st.integers(1, 2), min_size=ndim, max_size=ndim))
    stride = draw(st.lists(st.integers(1, 2), min_size=ndim, max_size=ndim))
    reach = [spacing * (size - 1) + 1 for spacing, size in zip(dilation, kernel)]
    # padding under the kernel's reach: no field all of padding (a zero field, where the naive
    # cosine's gradient is NaN and the path's is 0, the fields path's rule)
    padding = [draw(st.integers(0, min(1, extent - 1))) for extent in reach]
    size = [draw(st.integers(max(1, extent - 2 * pad), extent + 2)) for extent, pad in zip(reach, padding)]
    per_group = draw(st.integers(1, 3))
    geometry = {
        "x": (draw(st.integers(1, 2)), groups * per_group, *size),
        "w": (groups * draw(st.integers(1, 2)), per_group, *kernel),
        "with": {
            "stride": tuple(stride),
            "padding": tuple(padding),
            "dilation": tuple(dilation),
            "groups": groups,
        },
    }
    return geometry, name, options


@settings(max_examples=6, deadline=None)
@given(call=_calls(), seed=st.integers(0, 2**16))
def test_any_geometry_equals_the_naive_formula(call, seed):
    geometry, name, options = call
    tensors = _tensors(geometry, seed=seed)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ANYCONV_BACKEND", "triton")
        mine, grad = _run(geometry, name, options, tensors)
        assert last_path() == "triton"
    _assert_all_close(mine, _naive(geometry, name, options, tensors, grad))
