"""The plan of a call: made once per call signature, reused only where every input of it is the
same (shapes, arguments as given, variant, grad mode, transforms, switches), and the path it names
computes the call."""

from __future__ import annotations

import pytest
import sympy
import torch
from torch.fx.experimental.proxy_tensor import make_fx

import anyconv
from anyconv.engine import DEFAULT_MEMORY_BUDGET, paths
from anyconv.engine.plan import ConvPlan, plan_conv
from anyconv.engine.tap_loops import tap_loops_fit
from anyconv.errors import ArgumentError, ArgumentTypeError
from anyconv.variants import L1, Dot, Variant, resolve_variant

DOUBLE = torch.float64


def _plan(
    input, weight, variant=None, *, stride=1, padding=0, dilation=1, groups=1, mode="zeros", budget=None
):
    variant = Dot() if variant is None else variant
    return plan_conv(input, weight, variant, stride, padding, dilation, groups, mode, budget)


#: (id, input shape, weight shape, variant, arguments, expected path)
PATHS = [
    ("1x1", (2, 4, 5, 5), (6, 4, 1, 1), "dot", {}, "pointwise"),
    ("1x1-strided-cosine", (2, 4, 5, 5), (6, 2, 1, 1), "cosine", {"stride": 2, "groups": 2}, "pointwise"),
    ("1x1-padded", (2, 4, 5, 5), (6, 4, 1, 1), "dot", {"padding": 1}, "tap loops"),
    ("3x3", (2, 4, 8, 8), (6, 4, 3, 3), "dot", {"padding": 1}, "tap loops"),
    ("3x3-many-channels", (1, 130, 5, 5), (6, 130, 3, 3), "dot", {"padding": 1}, "fields"),
    ("3x3-cosine", (2, 4, 8, 8), (6, 4, 3, 3), "cosine", {"padding": 1}, "tap products"),
    ("3x3-rbf", (2, 4, 8, 8), (6, 4, 3, 3), "rbf", {"padding": 1}, "tap forward"),
    ("3x3-l2", (2, 4, 8, 8), (6, 4, 3, 3), "l2", {}, "tap loops"),
    ("3x3-l1", (2, 4, 8, 8), (6, 4, 3, 3), "l1", {}, "tap loops"),
    ("3x3-l1-many-channels", (1, 130, 5, 5), (6, 130, 3, 3), "l1", {}, "tap loops"),
]


@pytest.mark.parametrize("case", PATHS, ids=[case[0] for case in PATHS])
def test_the_plan_names_the_path(case):
    _, input_shape, weight_shape, name, arguments, expected = case
    if expected.startswith("tap") and not tap_loops_fit(Dot(), torch.ones(1, 4, 3), torch.ones(4, 1, 3), 4):
        pytest.skip("the tap loops are not built here")
    plan = _plan(torch.randn(input_shape), torch.randn(weight_shape), resolve_variant(name), **arguments)
    assert plan.path == expected
    assert plan.path in [path.name for path in paths.PATHS]


#: (id, input shape, weight shape, variant, arguments, expected path): unequal sizes, so that a
#: trace gives each its own symbol
TRACED = [
    ("1x1-strided", (2, 4, 7, 9), (6, 4, 1, 1), "dot", {"stride": 2}, "pointwise"),
    ("3x3-strided", (2, 4, 7, 9), (6, 4, 3, 3), "dot", {"stride": 2, "padding": 1}, "tap loops"),
    ("3x3-strided-l1", (2, 4, 7, 9), (6, 4, 3, 3), "l1", {"stride": 2, "padding": 1}, "tap loops"),
    ("3x3-reflect", (2, 4, 7, 9), (3, 4, 3, 3), "l1", {"padding": (1, 2), "mode": "reflect"}, "fields"),
    ("depthwise", (2, 4, 7, 9), (4, 1, 3, 3), "max_plus", {"groups": 4, "padding": "same"}, "tap loops"),
    ("depthwise-cosine", (2, 4, 7, 9), (8, 1, 3, 3), "cosine", {"groups": 4, "dilation": 2}, "tap products"),
    ("1-d", (3, 2, 11), (5, 2, 4), "rbf", {"padding": "same"}, "fields"),
]


@pytest.mark.parametrize("case", TRACED, ids=[case[0] for case in TRACED])
def test_a_traced_plan_keeps_the_sizes_symbolic(case):
    # a symbolic trace (as torch.export's): the plan's path is eager's, its sizes stay symbols,
    # and no guard fixes a size or relates two: only bounds (a kernel that fits, a reflection
    # smaller than the input, the memory a tensor may take)
    _, input_shape, weight_shape, name, arguments, expected = case
    if expected.startswith("tap") and not tap_loops_fit(Dot(), torch.ones(1, 4, 3), torch.ones(4, 1, 3), 4):
        pytest.skip("the tap loops are not built here")
    seen = {}

    def planned(input, weight):
        seen["plan"] = _plan(input, weight, resolve_variant(name), **arguments)
        seen["symbols"] = {size.node.expr for size in input.shape}
        return input + 1

    traced = make_fx(planned, tracing_mode="symbolic")(torch.randn(input_shape), torch.randn(weight_shape))
    plan = seen["plan"]
    assert plan.path == expected
    assert all(isinstance(size, torch.SymInt) for size in plan.geometry.output_size)
    for guard in traced.shape_env.guards:
        if guard.expr.free_symbols & seen["symbols"]:
            expr = guard.expr
            assert isinstance(expr, sympy.core.relational.Relational), expr
            assert not isinstance(expr, sympy.Eq) and (expr.lhs.is_number or expr.rhs.is_number), expr


def test_a_plan_is_made_once_per_signature():
    x, w = torch.randn(2, 4, 8, 8), torch.randn(6, 4, 3, 3)
    first = _plan(x, w, padding=1)
    assert _plan(torch.randn(2, 4, 8, 8), torch.randn(6, 4, 3, 3), padding=1) is first
    assert _plan(x, w, padding=2) is not first
    assert _plan(torch.randn(3, 4, 8, 8), w, padding=1) is not first
    assert _plan(x.double(), w.double(), padding=1) is not first


def test_the_plan_is_immutable_integers_and_names():
    plan = _plan(torch.randn(4, 8, 8), torch.randn(6, 4, 3, 3), padding=((1, 0), 2), mode="reflect")
    assert isinstance(plan, ConvPlan) and plan.unbatched
    assert plan.padding is not None and plan.padding.padding == ((1, 0), (2, 2))
    assert not plan.geometry.is_padded and plan.geometry.output_size == (7, 10)
    with pytest.raises(AttributeError):
        plan.path = "pointwise"  # type: ignore[misc]


#: arguments equal in Python to ones planned before, but refused: the plan made for the first
#: must not let them through
LOOKALIKES = [
    ("stride-bool", {"stride": 1}, {"stride": True}, ArgumentTypeError),
    ("padding-float", {"padding": 1}, {"padding": 1.0}, ArgumentTypeError),
    ("padding-tuple-of-bools", {"padding": (1, 0)}, {"padding": (True, False)}, ArgumentTypeError),
    ("budget-bool", {"memory_budget": 1}, {"memory_budget": True}, ArgumentTypeError),
    ("budget-float", {"memory_budget": 2**20}, {"memory_budget": float(2**20)}, ArgumentTypeError),
]


@pytest.mark.parametrize("case", LOOKALIKES, ids=[case[0] for case in LOOKALIKES])
def test_arguments_equal_to_planned_ones_are_still_checked(case):
    _, planned, lookalike, error = case
    x, w = torch.randn(1, 2, 6, 6), torch.randn(3, 2, 3, 3)
    anyconv.conv(x, w, **planned)
    with pytest.raises(error):
        anyconv.conv(x, w, **lookalike)


def test_list_arguments_are_planned_as_their_tuples_are():
    x, w = torch.randn(1, 2, 6, 6, dtype=DOUBLE), torch.randn(3, 2, 3, 3, dtype=DOUBLE)
    expected = torch.nn.functional.conv2d(x, w, padding=1, stride=(2, 1))
    for stride, padding in [((2, 1), 1), ([2, 1], [1, 1]), ([2, 1], [[1, 1], (1, 1)])]:
        torch.testing.assert_close(anyconv.conv(x, w, stride=stride, padding=padding), expected)


def test_a_plan_made_while_torchs_machinery_watches_is_not_reused_in_a_plain_call():
    # a dense layer's recorded cosine takes the loops' one-pass backward in plain eager calls only
    x, w = torch.randn(2, 4, 8, 8), torch.randn(6, 4, 3, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        watched = _plan(x, w, resolve_variant("cosine"), padding=1)
    plain = _plan(x, w, resolve_variant("cosine"), padding=1)
    assert (watched.path, plain.path) == ("fields", "tap products")


class _Squares(Variant):
    """An unregistered variant: the plain autograd Function, whose plan reads the grad mode."""

    name = "squares_for_test_plan"

    def contract(self, fields, filters):
        return torch.matmul(fields.square(), filters.mT)


def test_a_plan_made_without_grad_is_not_reused_with_grad():
    x = torch.randn(1, 2, 6, 6, dtype=DOUBLE, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, dtype=DOUBLE, requires_grad=True)
    with torch.no_grad():
        without = _plan(x, w, _Squares())
        anyconv.generalized_conv(x, w, _Squares())
    assert _plan(x, w, _Squares()) is not without
    assert torch.autograd.gradcheck(lambda x, w: anyconv.generalized_conv(x, w, _Squares()), (x, w))


def test_the_numeric_options_are_part_of_the_signature():
    x, w = torch.randn(1, 4, 6, 6), torch.randn(4, 1, 3, 3)
    assert _plan(x, w, L1(), groups=4) is _plan(x, w, L1(), groups=4)
    assert _plan(x, w, L1(adder_grad=True), groups=4) is not _plan(x, w, L1(), groups=4)


def test_torch_func_transforms_take_the_fields_path():
    x, w = torch.randn(3, 1, 4, 5, 5), torch.randn(6, 4, 1, 1)
    assert _plan(x[0], w).path == "pointwise"
    paths_seen = []

    def record(sample):
        paths_seen.append(_plan(sample, w).path)
        return anyconv.conv(sample, w)

    got = torch.func.vmap(record)(x)
    assert paths_seen == ["fields"]
    torch.testing.assert_close(got, torch.stack([torch.nn.functional.conv2d(sample, w) for sample in x]))


def test_autocast_plans_in_its_own_dtype():
    generator = torch.Generator().manual_seed(0)
    x, w = torch.randn(1, 4, 8, 8, generator=generator), torch.randn(6, 4, 3, 3, generator=generator)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = anyconv.conv(x, w, padding=1)
        torch_output = torch.nn.functional.conv2d(x, w, padding=1)
    assert output.dtype == torch_output.dtype == torch.bfloat16
    exact = torch.nn.functional.conv2d(x.double(), w.double(), padding=1)
    # within a few times torch's own bfloat16 error
    torch_error = (torch_output.double() - exact).abs().max()
    assert (output.double() - exact).abs().max() <= 4 * torch_error


@pytest.mark.skipif(
    not tap_loops_fit(resolve_variant("dot"), torch.ones(1, 2, 3), torch.ones(2, 1, 3), 2),
    reason="the tap loops are not compiled here (no C++ compiler, or ANYCONV_NATIVE=0)",
)
def test_the_environment_switch_is_part_of_the_signature(monkeypatch):
    x, w = torch.randn(1, 4, 6, 6), torch.randn(4, 1, 3, 3)
    assert _plan(x, w, L1(), groups=4).path == "tap loops"
    monkeypatch.setenv("ANYCONV_NATIVE", "0")
    assert _plan(x, w, L1(), groups=4).path == "fields"
    monkeypatch.setenv("ANYCONV_NATIVE", "1")
    assert _plan(x, w, L1(), groups=4).path == "tap loops"


def test_refused_calls_leave_no_plan_behind():
    x, w = torch.randn(1, 2, 4, 4), torch.randn(3, 2, 3, 3)
    for _ in range(2):
        with pytest.raises(ArgumentError, match="padding='same' is invalid"):
            anyconv.conv(x, w, padding="same", stride=2)


def test_modules_keep_their_arguments_normalised():
    layer = anyconv.nn.Conv2d(2, 3, 3, stride=[2, 1], padding=1, dilation=(1, 2))
    assert (layer.stride, layer.padding, layer.dilation) == ((2, 1), (1, 1), (1, 2))
    with pytest.raises(ArgumentError, match="memory_budget=0"):
        anyconv.nn.GeneralizedConv2d(2, 3, 3, variant="l1", memory_budget=0)
    with pytest.raises(ArgumentTypeError, match="memory_budget=1.5"):
        anyconv.nn.GeneralizedConv2d(2, 3, 3, variant="l1", memory_budget=1.5)


def test_unfold_module_checks_arguments_without_an_input():
    # any kernel fits some input: only the call can tell whether it fits this one
    assert anyconv.nn.Unfold(2**21).kernel_size == 2**21
    with pytest.raises(ArgumentError, match="stride"):
        anyconv.nn.Unfold(3, stride=0)
    with pytest.raises(ArgumentError, match="padding_mode"):
        anyconv.nn.Unfold(3, padding_mode="mirror")
    with pytest.raises(ArgumentError, match="kernel_size"):
        anyconv.nn.Unfold(5)(torch.randn(1, 1, 3, 3))


def test_without_grad_a_plain_products_chunks_hold_at_least_its_filters():
    # filters of 4.5 MiB, over the default budget: one chunk of fields per call without grad
    x, w = torch.randn(2, 256, 7, 7, dtype=DOUBLE), torch.randn(256, 256, 3, 3, dtype=DOUBLE)
    filters = w.numel() * w.element_size()
    with torch.no_grad():
        plan = _plan(x, w, padding=1)
        assert plan.path == "fields" and plan.budget == filters
        assert _plan(x, w, resolve_variant("l1"), padding=1).budget == DEFAULT_MEMORY_BUDGET
        assert _plan(x, w, padding=1, budget=2**20).budget == 2**20
        out = anyconv.conv(x, w, padding=1)
    assert _plan(x, w, padding=1).budget == DEFAULT_MEMORY_BUDGET
    torch.testing.assert_close(out, torch.nn.functional.conv2d(x, w, padding=1))
