"""The Triton path (the CUDA path of dot, l1, l2, lp, max_plus, min_plus), run through Triton's interpreter.

``ANYCONV_BACKEND=triton`` sends CPU tensors to it; each geometry of the variant tests is compared
with the naive formulas and with the C++ loops, forward and gradients. Sizes stay tiny: interpreted.
The per-chunk kernels (the fallback route of ``fused.py``) are checked at the end.
"""

import inspect

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_variants import GEOMETRIES, _case
from variant_reference import naive_generalized_conv

import anyconv
from anyconv.errors import ArgumentError
from anyconv.variants import fused, last_path

pytest.importorskip("triton", reason="triton is not installed (pip install anyconv[gpu]): no Triton kernels")

#: the variant tests' geometries, plus the padding modes and sizes they leave out: several
#: output-channel tiles (40 > 32) and field tiles (44 > 32), taps past one tap tile (36 > 32)
TRITON_GEOMETRIES = [
    *GEOMETRIES,
    dict(id="1d-many-outputs-circular", size=(20,), channels=2, outputs=40, kernel=3, padding=2,
         padding_mode="circular"),
    dict(id="2d-replicate-wide-taps", size=(6, 5), channels=4, outputs=3, kernel=3, padding=1,
         padding_mode="replicate"),
    dict(id="2d-depthwise-stride-dilation", size=(7, 6), channels=3, outputs=6, kernel=(3, 2), groups=3,
         stride=(2, 1), padding=(2, 1), dilation=(2, 2)),
    dict(id="3d-depthwise-circular", size=(4, 3, 4), channels=2, outputs=2, kernel=2, groups=2,
         padding=1, padding_mode="circular"),
]  # fmt: skip
GEOMETRY_IDS = [geometry["id"] for geometry in TRITON_GEOMETRIES]

#: dot and l2 take the Triton path with few channels per group only (a matrix product otherwise)
GROUPED = [geometry for geometry in TRITON_GEOMETRIES if geometry.get("groups", 1) > 1]
GROUPED_IDS = [geometry["id"] for geometry in GROUPED]
PRODUCTS = [pytest.param("dot", {}, id="dot"), pytest.param("l2", {}, id="l2")]

#: (variant, options) the Triton kernels compute; l1 with adder_grad has no naive formula for
#: its gradient (it is a training rule), so it is compared with the C++ loops only
VARIANTS = [
    pytest.param("l1", {}, id="l1"),
    pytest.param("l1", {"adder_grad": True}, id="l1-adder_grad"),
    pytest.param("lp", {"p": 3.0}, id="lp-3"),
    pytest.param("lp", {"p": 1.5}, id="lp-1.5"),
    pytest.param("max_plus", {}, id="max_plus"),
    pytest.param("min_plus", {}, id="min_plus"),
]
FLOATS = [pytest.param(torch.float64, id="float64"), pytest.param(torch.float32, id="float32")]
HALVES = [pytest.param(torch.bfloat16, id="bfloat16"), pytest.param(torch.float16, id="float16")]


@pytest.fixture(autouse=True)
def on_triton(monkeypatch):
    monkeypatch.setenv("ANYCONV_BACKEND", "triton")


def _run(x, w, b, name, options, conv_args, grad):
    """Output and (input, weight, bias) gradients of generalized_conv, and the path it took."""
    x, w, b = (t.detach().requires_grad_() for t in (x, w, b))
    output = anyconv.generalized_conv(x, w, name, b, **conv_args, **options)
    path = last_path()
    return (output, *torch.autograd.grad(output, (x, w, b), grad.to(output.dtype))), path


def _on_the_loops(monkeypatch, *args):
    monkeypatch.setenv("ANYCONV_BACKEND", "auto")
    results, path = _run(*args)
    monkeypatch.setenv("ANYCONV_BACKEND", "triton")
    return results, path


def _assert_all_close(got, want, labels=("output", "input", "weight", "bias"), **tolerance):
    for label, mine, theirs in zip(labels, got, want):
        torch.testing.assert_close(
            mine, theirs.to(mine.dtype), **tolerance, msg=lambda message, label=label: f"{label}: {message}"
        )


def _compare_with_the_formula_and_the_loops(name, options, geometry, dtype, monkeypatch):
    x, w, b, conv_args = _case(geometry, dtype=dtype)
    grad = torch.randn(naive_generalized_conv(x, w, name, b, **conv_args, **options).shape, dtype=dtype)
    mine, path = _run(x, w, b, name, options, conv_args, grad)
    assert path == "triton"
    tolerance = {} if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
    if not options.get("adder_grad"):
        # the naive formula, run by autograd in float64 (not through anyconv's engine)
        wide = [t.detach().double().requires_grad_() for t in (x, w, b)]
        naive_output = naive_generalized_conv(*wide[:2], name, wide[2], **conv_args, **options)
        naive = (naive_output, *torch.autograd.grad(naive_output, wide, grad.double()))
        _assert_all_close(mine, naive, **tolerance)
    loops, loop_path = _on_the_loops(monkeypatch, x, w, b, name, options, conv_args, grad)
    if name not in ("dot", "l2"):
        assert loop_path == ("native" if fused.native_kernels_available() else "eager")
    _assert_all_close(mine, loops, **tolerance)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("geometry", TRITON_GEOMETRIES, ids=GEOMETRY_IDS)
@pytest.mark.parametrize("name, options", VARIANTS)
def test_triton_equals_the_naive_formula_and_the_cpp_loops(name, options, geometry, dtype, monkeypatch):
    _compare_with_the_formula_and_the_loops(name, options, geometry, dtype, monkeypatch)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("geometry", GROUPED, ids=GROUPED_IDS)
@pytest.mark.parametrize("name, options", PRODUCTS)
def test_dot_and_l2_on_few_channels_per_group(name, options, geometry, dtype, monkeypatch):
    """The tap loops' family on CUDA: dot and l2 where the C++ tap loops take them on CPU."""
    _compare_with_the_formula_and_the_loops(name, options, geometry, dtype, monkeypatch)


@pytest.mark.parametrize("dtype", HALVES)
@pytest.mark.parametrize("geometry", TRITON_GEOMETRIES[:3], ids=GEOMETRY_IDS[:3])
@pytest.mark.parametrize("name, options", VARIANTS)
def test_half_precision_inputs_within_their_epsilon(name, options, geometry, dtype, monkeypatch):
    _compare_halves(name, options, geometry, dtype, monkeypatch)


@pytest.mark.parametrize("dtype", HALVES)
@pytest.mark.parametrize("name, options", PRODUCTS)
def test_half_precision_dot_and_l2_on_a_depthwise_layer(name, options, dtype, monkeypatch):
    _compare_halves(name, options, GROUPED[-2], dtype, monkeypatch)


def _compare_halves(name, options, geometry, dtype, monkeypatch):
    """Half inputs are summed in float32: the float64 formula of the rounded inputs, to a few epsilons."""
    x, w, b, conv_args = _case(geometry, dtype=dtype)
    grad = torch.randn(naive_generalized_conv(x, w, name, b, **conv_args, **options).shape).to(dtype)
    mine, path = _run(x, w, b, name, options, conv_args, grad)
    assert path == "triton" and mine[0].dtype == dtype
    # the C++ loops in float64 on the same rounded numbers: exact but for the final rounding
    wide, _ = _on_the_loops(
        monkeypatch, *(t.double() for t in (x, w, b)), name, options, conv_args, grad.double()
    )
    eps = torch.finfo(dtype).eps
    for label, got, want in zip(("output", "input", "weight", "bias"), mine, wide):
        scale = want.abs().amax().item() + 1
        torch.testing.assert_close(got.double(), want, rtol=4 * eps, atol=4 * eps * scale, msg=label)


@pytest.mark.parametrize("name", ["max_plus", "min_plus"])
def test_ties_go_to_the_first_tap_as_on_the_eager_path(name, monkeypatch):
    """Small integers make many ties; the first winning tap takes the whole gradient on both paths."""
    generator = torch.Generator().manual_seed(3)
    x = torch.randint(-2, 3, (2, 4, 6, 5), generator=generator).double()
    w = torch.randint(-1, 2, (6, 2, 3, 3), generator=generator).double()
    b = torch.zeros(6, dtype=torch.float64)
    args = (x, w, b, name, {}, {"groups": 2, "padding": 1}, torch.randn(2, 6, 6, 5, generator=generator))
    mine, _ = _run(*args)
    monkeypatch.setenv("ANYCONV_NATIVE", "0")
    eager, path = _on_the_loops(monkeypatch, *args)
    assert path == "eager"
    _assert_all_close(mine, eager, rtol=0, atol=0)


@pytest.mark.parametrize("name, options", VARIANTS)
def test_nan_propagates_like_the_naive_formula(name, options, monkeypatch):
    """A NaN input reaches the outputs the naive formula makes NaN; max/min give it the gradient."""
    x, w, b, conv_args = _case(GEOMETRIES[1])
    x[0, 1, 3, 4] = float("nan")
    x.requires_grad_()
    output = anyconv.generalized_conv(x, w, name, b, **conv_args, **options)
    naive = naive_generalized_conv(x.detach(), w, name, b, **conv_args, **options)
    assert naive.isnan().any()
    assert torch.equal(output.isnan(), naive.isnan())
    torch.testing.assert_close(output[~naive.isnan()], naive[~naive.isnan()])
    if name in ("max_plus", "min_plus"):
        grad = torch.randn_like(output)
        mine, _ = _run(x, w, b, name, options, conv_args, grad)
        monkeypatch.setenv("ANYCONV_NATIVE", "0")
        eager, _ = _on_the_loops(monkeypatch, x, w, b, name, options, conv_args, grad)
        _assert_all_close(mine[1:], eager[1:], labels=("input", "weight", "bias"), equal_nan=True)


#: the per-chunk kernels of fused.py by name, each a (forward, backward) pair
KERNELS = {
    "l1": (fused.l1_distances, fused.l1_backward),
    "l1-adder": (fused.l1_distances, lambda f, w, g: fused.l1_backward(f, w, g, adder=True)),
    "lp-0.7": (
        lambda f, w: fused.power_sums(f, w, 0.7),
        lambda f, w, g: fused.power_sums_backward(f, w, g, 0.7),
    ),
    "max_plus": (
        lambda f, w: fused.tropical(f, w, minimum=False),
        lambda f, w, g: fused.tropical_backward(f, w, g, minimum=False),
    ),
    "min_plus": (
        lambda f, w: fused.tropical(f, w, minimum=True),
        lambda f, w, g: fused.tropical_backward(f, w, g, minimum=True),
    ),
}


@settings(max_examples=6, deadline=None)
@given(
    kernel=st.sampled_from(sorted(KERNELS)),
    groups=st.integers(1, 2),
    rows=st.integers(1, 140),
    outputs=st.integers(1, 40),
    taps=st.integers(1, 40),
    seed=st.integers(0, 2**16),
)
def test_the_chunk_kernels_equal_the_eager_path_at_any_shape(kernel, groups, rows, outputs, taps, seed):
    """Tile edges anywhere: the tiles' widths follow the filters (forward) or taps (backward), up to 32."""
    generator = torch.Generator().manual_seed(seed)
    f = torch.randn(groups, rows, taps, generator=generator, dtype=torch.float64)
    w = torch.randn(groups, outputs, taps, generator=generator, dtype=torch.float64)
    g = torch.randn(groups, rows, outputs, generator=generator, dtype=torch.float64)
    forward, backward = KERNELS[kernel]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ANYCONV_BACKEND", "triton")
        mine = (forward(f, w), *backward(f, w, g))
        assert last_path() == "triton"
        patch.setenv("ANYCONV_BACKEND", "auto")
        patch.setenv("ANYCONV_NATIVE", "0")
        eager = (forward(f, w), *backward(f, w, g))
        assert last_path() == "eager"
    for got, want in zip(mine, eager):
        if want is None:
            assert got is None
        else:
            torch.testing.assert_close(got, want)


@pytest.mark.parametrize("rows, outputs", [(0, 3), (4, 0)], ids=["no-fields", "no-filters"])
@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_empty_chunks_are_not_launched(kernel, rows, outputs):
    f, w, g = torch.randn(2, rows, 5), torch.randn(2, outputs, 5), torch.randn(2, rows, outputs)
    forward, backward = KERNELS[kernel]
    output, grad_fields, grad_filters = forward(f, w), *backward(f, w, g)
    assert output.shape == (2, rows, outputs) and grad_fields.shape == f.shape
    assert torch.equal(grad_fields, torch.zeros_like(f))
    assert grad_filters is None or torch.equal(grad_filters, torch.zeros_like(w))


def test_gradcheck_of_lp_through_the_kernels():
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(1, 1, 3, 2, dtype=torch.float64, generator=generator, requires_grad=True)
    w = torch.randn(2, 1, 2, 2, dtype=torch.float64, generator=generator, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, w: anyconv.generalized_conv(x, w, "lp", p=3.0, padding=1), (x, w)
    )


def test_cpu_tensors_take_the_cpp_loops_unless_asked(monkeypatch):
    monkeypatch.setenv("ANYCONV_BACKEND", "auto")
    fused.l1_distances(torch.randn(1, 3, 2), torch.randn(1, 2, 2))
    assert last_path() in ("native", "eager")
    monkeypatch.setenv("ANYCONV_BACKEND", "triton")
    fused.l1_distances(torch.randn(1, 3, 2), torch.randn(1, 2, 2))
    assert last_path() == "triton"


def test_an_unknown_backend_is_named_in_the_error(monkeypatch):
    monkeypatch.setenv("ANYCONV_BACKEND", "cuda-graphs")
    with pytest.raises(
        ArgumentError, match="ANYCONV_BACKEND='cuda-graphs' is invalid: expected one of auto, triton"
    ):
        fused.l1_distances(torch.randn(1, 3, 2), torch.randn(1, 2, 2))


def _signature(kernel, dtype: str, winners: str = "*i64") -> dict[str, str]:
    """Triton types of a kernel's arguments: pointers of ``dtype``, the settings and the implicit
    kernels' sums in the summing dtype, offsets int64."""
    summing = "*fp64" if dtype == "fp64" else "*fp32"
    special = {"settings": summing, "grad_padded": summing, "partials": summing, "taps_won": winners}
    special.update(tap_offsets="*i64", positions="*i64")
    pointers = ("fields", "filters", "output", "left", "right", "grad", "result", "padded", "weight")
    return {
        name: "constexpr" if name.isupper() else special.get(name, f"*{dtype}" if name in pointers else "i32")
        for name in inspect.signature(kernel).parameters
    }


@pytest.mark.filterwarnings("ignore:TRITON_DEFAULT_FP_FUSION is unset")
@pytest.mark.parametrize("dtype", ["fp64", "fp32", "bf16", "fp16"])
def test_every_kernel_compiles_for_a_cuda_gpu(dtype, tmp_path, monkeypatch):
    """The interpreter is lenient about types; Triton's compiler, down to PTX for sm_80, is not."""
    pytest.importorskip("triton.backends.nvidia", reason="triton has no CUDA backend here")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from anyconv.variants import triton_implicit, triton_kernels

    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    upcast = dtype != "fp64"
    builds = [(triton_kernels._forward_kernel, dict(FORMULA=f, BLOCK_M=32, BLOCK_O=32)) for f in range(4)]
    builds += [(triton_kernels._pair_gradient_kernel, dict(TERM=t, BLOCK_L=64, BLOCK_K=16)) for t in range(3)]
    implicit = (
        (triton_implicit._forward_kernel, dict(BLOCK_M=64, BLOCK_O=16)),
        (triton_implicit._input_gradient_kernel, dict(BLOCK_M=32, BLOCK_K=32)),
        (triton_implicit._weight_gradient_kernel, dict(BLOCK_P=8, BLOCK_O=16, BLOCK_K=32)),
    )
    if dtype in ("fp64", "bf16"):  # both summing dtypes; fewer builds, the test stays short
        builds += [(kernel, dict(given, RULE=rule)) for kernel, given in implicit for rule in range(7)]
    for kernel, constants in builds:
        winners = "*i32" if "RULE" in constants else "*i64"
        signature = _signature(kernel, dtype, winners)
        source = ASTSource(triton.jit(kernel), signature, {**constants, "UPCAST": upcast})
        compiled = triton.compile(source, target=GPUTarget("cuda", 80, 32))
        assert ".entry" in compiled.asm["ptx"]


def test_integer_tensors_keep_the_exact_path():
    fields, filters = torch.randint(-5, 5, (1, 4, 3)), torch.randint(-5, 5, (1, 2, 3))
    assert torch.equal(
        fused.l1_distances(fields, filters), -(fields[:, :, None] - filters[:, None]).abs().sum(-1)
    )
    assert last_path() != "triton"


@pytest.mark.parametrize("p", [3.0, 0.7])
def test_a_nan_field_gives_the_lp_gradients_of_autograd(p):
    """Through a NaN difference the power's slope is NaN: the NaN reaches the gradients that meet it.

    (Not p = 1, where torch's own autograd takes sign(NaN) = 0 and NaN^0 = 1.)
    """
    generator = torch.Generator().manual_seed(7)
    f = torch.randn(1, 3, 4, dtype=torch.float64, generator=generator)
    w = torch.randn(1, 2, 4, dtype=torch.float64, generator=generator)
    scale = torch.randn(1, 3, 2, dtype=torch.float64, generator=generator)
    f[0, 1, 2] = float("nan")
    wide_f, wide_w = f.clone().requires_grad_(), w.clone().requires_grad_()
    sums = (wide_f[:, :, None] - wide_w[:, None]).abs().pow(p).sum(-1)
    expected = torch.autograd.grad(-(scale * sums).sum() / p, (wide_f, wide_w))
    got = fused.power_sums_backward(f, w, scale, p)
    for mine, theirs in zip(got, expected):
        torch.testing.assert_close(mine, theirs, equal_nan=True)
