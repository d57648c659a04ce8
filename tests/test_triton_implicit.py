"""The Triton path's own promises: it is the one taken, it copies no receptive fields, NaN and inf go
where the formulas put them, and its custom operators pass torch's checks. Through the interpreter.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_triton import GROUPED, TRITON_GEOMETRIES
from test_variants import _case
from variant_reference import naive_generalized_conv

import anyconv
from anyconv.engine import contraction
from anyconv.variants import last_path

pytest.importorskip("triton", reason="triton is not installed (pip install anyconv[gpu]): no Triton kernels")

from anyconv.engine.triton_conv import triton_conv_op  # noqa: E402
from anyconv.variants import triton_implicit, triton_kernels  # noqa: E402

DILATED = TRITON_GEOMETRIES[1]
DEPTHWISE = GROUPED[-2]
#: every variant of the path, on a geometry where it takes it
CASES = [
    pytest.param("l1", {}, DILATED, id="l1"),
    pytest.param("l1", {"adder_grad": True}, DILATED, id="l1-adder_grad"),
    pytest.param("lp", {"p": 2.5}, DILATED, id="lp"),
    pytest.param("max_plus", {}, DILATED, id="max_plus"),
    pytest.param("min_plus", {}, DILATED, id="min_plus"),
    pytest.param("dot", {}, DEPTHWISE, id="dot-depthwise"),
    pytest.param("l2", {}, DEPTHWISE, id="l2-depthwise"),
]


@pytest.fixture(autouse=True)
def on_triton(monkeypatch):
    monkeypatch.setenv("ANYCONV_BACKEND", "triton")


def _gradients(x, w, b, name, options, conv_args, grad=None):
    x, w, b = (t.detach().requires_grad_() for t in (x, w, b))
    output = anyconv.generalized_conv(x, w, name, b, **conv_args, **options)
    grad = torch.randn_like(output) if grad is None else grad
    return (output, *torch.autograd.grad(output, (x, w, b), grad)), grad


def _refuse(*args, **kwargs):
    raise AssertionError("receptive fields were copied")


@pytest.mark.parametrize("name, options, geometry", CASES)
def test_the_implicit_path_is_taken_and_copies_no_fields(name, options, geometry, monkeypatch):
    for function in ("chunk_fields", "fields_buffer"):
        monkeypatch.setattr(contraction, function, _refuse)
    for function in ("_winners", "_pair_gradients"):
        monkeypatch.setattr(triton_kernels, function, _refuse)
    x, w, b, conv_args = _case(geometry)
    results, _ = _gradients(x, w, b, name, options, conv_args)
    assert last_path() == "triton"
    assert all(result.isfinite().all() for result in results)


@pytest.mark.parametrize("name, options, geometry", [case for case in CASES if case.id != "l1-adder_grad"])
def test_the_weight_gradient_in_many_shares_of_positions(name, options, geometry, monkeypatch):
    """Few positions per program: the weight gradient is summed from several programs' partials."""
    monkeypatch.setattr(triton_implicit, "POSITIONS_PER_PROGRAM", 5)
    x, w, b, conv_args = _case(geometry)
    mine, grad = _gradients(x, w, b, name, options, conv_args)
    wide = [t.detach().requires_grad_() for t in (x, w)]
    reference = naive_generalized_conv(*wide, name, **conv_args, **options)
    torch.testing.assert_close(mine[2], torch.autograd.grad(reference, wide[1], grad)[0])


def _poisoned(geometry, seed):
    """A case with NaN, inf and -inf in the input and the weight, and one whole field of NaN."""
    x, w, b, conv_args = _case(geometry, seed=seed)
    x[0, 0, :5] = float("nan")
    x[1, 1, 2, 3], x[1, 2, 0, 1] = float("inf"), float("-inf")
    w[1, 0, 0, 0], w[4, 0, 1, 1] = float("inf"), float("nan")
    return x, w, b, conv_args


def _same_specials(mine, theirs, label):
    for special in (torch.isnan, torch.isposinf, torch.isneginf):
        assert torch.equal(special(mine), special(theirs)), f"{label}: {special.__name__}"
    finite = mine.isfinite()
    torch.testing.assert_close(mine[finite], theirs[finite], msg=label)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter's numpy
@pytest.mark.parametrize("name, options", [case.values[:2] for case in CASES])
def test_nan_and_inf_propagate_as_the_formula_and_the_eager_path(name, options, monkeypatch):
    """On a depthwise layer (one tap order on every path), a field of NaN included: the tropical
    gradient goes to its first NaN tap, as on the eager path."""
    x, w, b, conv_args = _poisoned(DEPTHWISE, seed=1)
    mine, grad = _gradients(x, w, b, name, options, conv_args)
    assert last_path() == "triton"
    naive = naive_generalized_conv(x, w, name, b, **conv_args, **options)
    assert naive.isnan().any() and naive.isinf().any()
    _same_specials(mine[0], naive, "output")
    monkeypatch.setenv("ANYCONV_BACKEND", "auto")
    monkeypatch.setenv("ANYCONV_NATIVE", "0")
    eager, _ = _gradients(x, w, b, name, options, conv_args, grad)
    for label, got, want in zip(("input", "weight", "bias"), mine[1:], eager[1:]):
        _same_specials(got, want, label)


@pytest.mark.parametrize("rule", [triton_implicit.L1, triton_implicit.MAX_PLUS, triton_implicit.POWER])
def test_the_custom_operator_passes_opcheck(rule):
    x, w, _, _ = _case(dict(size=(5, 4), channels=2, outputs=3, kernel=2))
    arguments = (x.requires_grad_(), w.requires_grad_(), rule, 3.0, [1, 2], [1, 0, 0, 1], [1, 1], 1)
    torch.library.opcheck(triton_conv_op, arguments)


@pytest.mark.filterwarnings("ignore:Dynamo detected a call to a `functools.lru_cache`")
def test_torch_compile_sees_through_the_path():
    x, w, b, conv_args = _case(DILATED)

    def layer(x, w, b):
        return anyconv.generalized_conv(x, w, "l1", b, **conv_args)

    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x, w, b), naive_generalized_conv(x, w, "l1", b, **conv_args))


def test_a_double_backward_takes_the_engine_operator():
    x, w, _, conv_args = _case(DEPTHWISE)
    x, w = x.requires_grad_(), w.requires_grad_()
    output = anyconv.generalized_conv(x, w, "l2", **conv_args)
    (grad_x,) = torch.autograd.grad(output.square().sum(), x, create_graph=True)
    (mine,) = torch.autograd.grad(grad_x.sum(), w)
    reference = naive_generalized_conv(x, w, "l2", **conv_args)
    (grad_x,) = torch.autograd.grad(reference.square().sum(), x, create_graph=True)
    torch.testing.assert_close(mine, torch.autograd.grad(grad_x.sum(), w)[0])


def test_torch_export_keeps_the_operator():
    x, w, _, conv_args = _case(DEPTHWISE)

    class Layer(torch.nn.Module):
        def forward(self, x, w):
            return anyconv.generalized_conv(x, w, "max_plus", **conv_args)

    program = torch.export.export(Layer(), (x, w))
    targets = [node.target for node in program.graph.nodes if node.op == "call_function"]
    assert torch.ops.anyconv.triton_conv.default in targets
    torch.testing.assert_close(program.module()(x, w), Layer()(x, w))


@st.composite
def _geometries(draw):
    """A random N-d call (N = 1 to 3) of a variant of the path: groups, stride, dilation, padding."""
    name = draw(st.sampled_from(["l1", "lp", "max_plus", "min_plus", "dot", "l2"]))
    ndim = draw(st.integers(1, 3))
    groups = draw(st.integers(2 if name in ("dot", "l2") else 1, 3))
    kernel = draw(st.lists(st.integers(1, 3), min_size=ndim, max_size=ndim))
    dilation = draw(st.lists(st.integers(1, 2), min_size=ndim, max_size=ndim))
    stride = draw(st.lists(st.integers(1, 2), min_size=ndim, max_size=ndim))
    padding = draw(st.lists(st.integers(0, 2), min_size=ndim, max_size=ndim))
    reach = [spacing * (size - 1) + 1 for spacing, size in zip(dilation, kernel)]
    size = [draw(st.integers(max(1, extent - 2 * pad), extent + 2)) for extent, pad in zip(reach, padding)]
    geometry = dict(
        size=tuple(size), channels=groups * draw(st.integers(1, 2)), outputs=groups * draw(st.integers(1, 3)),
        kernel=tuple(kernel), groups=groups, stride=tuple(stride), padding=tuple(padding),
        dilation=tuple(dilation),
    )  # fmt: skip
    return name, {"p": 2.5} if name == "lp" else {}, geometry


@settings(max_examples=8, deadline=None)
@given(call=_geometries(), seed=st.integers(0, 2**16))
def test_any_geometry_equals_the_naive_formula(call, seed):
    name, options, geometry = call
    x, w, b, conv_args = _case(geometry, seed=seed)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ANYCONV_BACKEND", "triton")
        mine, grad = _gradients(x, w, b, name, options, conv_args)
        # a one-tap dot without padding is a plain matrix product: the pointwise path's, first
        one_tap = name == "dot" and max(geometry["kernel"]) == 1 and max(geometry["padding"]) == 0
        assert last_path() == ("eager" if one_tap else "triton")
    wide = [t.detach().requires_grad_() for t in (x, w, b)]
    reference = naive_generalized_conv(*wide[:2], name, wide[2], **conv_args, **options)
    for got, want in zip(mine, (reference, *torch.autograd.grad(reference, wide, grad))):
        torch.testing.assert_close(got, want)
