"""torch.compile, torch.export and torch.func over anyconv: whole graphs, eager numbers, the limits.

Compiling is slow, so the cases are few and small: a few inductor compiles, every variant through
the ``aot_eager`` backend (which traces the same whole graphs, forward and backward, without
generating C++) and through ``torch.export``.
"""

import warnings

import pytest
import torch
import torch._dynamo
from functorch.compile import make_boxed_func
from torch._dynamo.backends.common import aot_autograd
from torch._dynamo.testing import CompileCounterWithBackend
from torch.func import grad, vmap

import anyconv
from anyconv.variants import BUILTIN_VARIANTS, Variant

# torch's own tracing machinery warns that torch.jit.script_method is deprecated: not ours
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

#: the variants compiled here: the standard one, a matrix-product variant, one whose backward keeps its output
COMPILED_VARIANTS = ["dot", "l2", "rbf"]

MODULES = {
    "conv2d-reflect-groups": lambda: anyconv.nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect", groups=2),
    "conv1d-same-dilation": lambda: anyconv.nn.Conv1d(4, 3, 3, padding="same", dilation=2),
    "convnd-4d": lambda: anyconv.nn.ConvNd(4, 2, (2, 2, 2, 2), padding=1, stride=2),
    **{
        f"generalized-{name}": lambda name=name: anyconv.nn.GeneralizedConv2d(4, 6, 3, variant=name)
        for name in COMPILED_VARIANTS
    },
    # 32 x 32: the backward on shifted views, with the output kept (cosine) or s + c (polynomial)
    "views-cosine": lambda: anyconv.nn.GeneralizedConv2d(4, 6, 3, padding=1, variant="cosine"),
    "views-polynomial-even": lambda: anyconv.nn.GeneralizedConv2d(
        4, 6, 3, padding=1, variant="polynomial", degree=2
    ),
}
INPUT_SHAPES = {
    "conv1d-same-dilation": (2, 4, 9),
    "convnd-4d": (1, 4, 3, 4, 3, 4),
    "views-cosine": (2, 4, 32, 32),
    "views-polynomial-even": (2, 4, 32, 32),
}


def _input(name, seed=0):
    shape = INPUT_SHAPES.get(name, (2, 4, 7, 6))
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), requires_grad=True)


def _eager_and_grads(module, input):
    output = module(input)
    return (output, *torch.autograd.grad(output.square().sum(), (input, module.weight)))


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    with warnings.catch_warnings():
        # dynamo notes that it traces through make_geometry's lru_cache: intended, a pure function
        warnings.filterwarnings("ignore", message=".*lru_cache.*")
        yield
    torch._dynamo.reset()


@pytest.mark.parametrize("name", MODULES)
def test_no_graph_breaks(name):
    module, input = MODULES[name](), _input(name)
    explanation = torch._dynamo.explain(module)(input)
    assert explanation.graph_break_count == 0, [reason.reason for reason in explanation.break_reasons]
    assert explanation.graph_count == 1


def test_inductor_fullgraph_gives_the_eager_numbers():
    # inference only: generating and building the backward's C++ too costs ~30 s more here; the
    # backward graphs are traced (fullgraph) by the aot_eager tests below
    module = anyconv.nn.Conv2d(4, 6, 3, padding=1, stride=(2, 1), groups=2)
    compiled = torch.compile(module, fullgraph=True, backend="inductor")
    input = _input("conv2d").detach()
    with torch.no_grad():
        torch.testing.assert_close(compiled(input), module(input), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", MODULES)
def test_aot_fullgraph_gives_the_eager_numbers(name):
    # float64: traced, a backward may take its sums in another order or fuse other operations
    # than eager, and l2's weight gradient is a difference of sums far larger than itself
    module, input = MODULES[name]().double(), _input(name).double().detach().requires_grad_()
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    for got, expected in zip(_eager_and_grads(compiled, input), _eager_and_grads(module, input)):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    # a new input size re-traces with new geometry, no error and no stale cached sizes
    other = torch.randn(3, *input.shape[1:-1], input.shape[-1] + 2, dtype=torch.float64)
    torch.testing.assert_close(compiled(other), module(other), rtol=1e-10, atol=1e-10)


class _NegativeSquaredDistance(Variant):
    """A matrix-product variant with no contract_backward: the engine differentiates contract."""

    name = "negative_squared_distance_for_tests"

    def contract(self, fields, filters):
        cross = torch.matmul(fields, filters.transpose(-1, -2))
        return 2 * cross - fields.square().sum(-1, keepdim=True) - filters.square().sum(-1).unsqueeze(-2)


def _compile_autograd_variant():
    module = anyconv.nn.GeneralizedConv2d(4, 6, 3, padding=1, variant=_NegativeSquaredDistance)
    input = _input("variant")
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    for got, expected in zip(_eager_and_grads(compiled, input), _eager_and_grads(module, input)):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.xfail(
    strict=True,
    raises=torch._dynamo.exc.Unsupported,
    reason="the engine's backward differentiates a variant without contract_backward with "
    "torch.autograd.grad, which dynamo traces only with trace_autograd_ops=True",
)
def test_a_variant_without_contract_backward_breaks_fullgraph_by_default():
    _compile_autograd_variant()


def test_a_variant_without_contract_backward_compiles_with_trace_autograd_ops():
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        _compile_autograd_variant()


@pytest.mark.parametrize("variant", ["dot", "rbf", "l1"])
def test_func_grad_through_generalized_conv_matches_autograd(variant):
    generator = torch.Generator().manual_seed(1)
    input = torch.randn(2, 3, 6, 5, dtype=torch.float64, generator=generator)
    weight = torch.randn(4, 3, 3, 3, dtype=torch.float64, generator=generator, requires_grad=True)

    def loss(weight):
        return anyconv.generalized_conv(input, weight, variant, padding=1).square().sum()

    expected = torch.autograd.grad(loss(weight), weight)[0]
    torch.testing.assert_close(grad(loss)(weight.detach()), expected)


def test_func_grad_through_conv_matches_autograd():
    generator = torch.Generator().manual_seed(1)
    input = torch.randn(2, 3, 6, 5, dtype=torch.float64, generator=generator)
    weight = torch.randn(4, 3, 3, 3, dtype=torch.float64, generator=generator, requires_grad=True)

    def loss(weight):
        return anyconv.conv(input, weight, padding=1).square().sum()

    expected = torch.autograd.grad(loss(weight), weight)[0]
    torch.testing.assert_close(grad(loss)(weight.detach()), expected)


def test_per_sample_gradients_with_vmap_of_grad():
    generator = torch.Generator().manual_seed(3)
    input = torch.randn(3, 2, 5, 5, dtype=torch.float64, generator=generator)
    weight = torch.randn(4, 2, 3, 3, dtype=torch.float64, generator=generator, requires_grad=True)

    def loss(weight, sample):
        return anyconv.conv(sample.unsqueeze(0), weight, padding=1).square().sum()

    per_sample = vmap(grad(loss), in_dims=(None, 0))(weight.detach(), input)
    expected = torch.stack([torch.autograd.grad(loss(weight, sample), weight)[0] for sample in input])
    torch.testing.assert_close(per_sample, expected)


@pytest.mark.parametrize(
    "function",
    [
        pytest.param(lambda x: anyconv.unfold(x, 3, padding=1, stride=2), id="unfold"),
        pytest.param(lambda x: anyconv.patches(x, (2, 3), padding=1), id="patches"),
        pytest.param(lambda x: anyconv.fold(anyconv.unfold(x, 3), (6, 5), 3), id="fold"),
    ],
)
def test_vmap_over_receptive_fields_matches_a_loop(function):
    stack = torch.randn(3, 2, 4, 6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    expected = torch.stack([function(sample) for sample in stack])
    torch.testing.assert_close(vmap(function)(stack), expected)
    # and grad through them, as functorch sees them
    gradient = grad(lambda x: function(x).square().sum())(stack[0])
    torch.testing.assert_close(gradient, torch.func.vjp(function, stack[0])[1](2 * function(stack[0]))[0])


@pytest.mark.parametrize("variant", ["dot", "polynomial", "max_plus"])
@pytest.mark.parametrize("batched", ["input", "weight"])
def test_vmap_over_generalized_conv_matches_a_loop(variant, batched):
    generator = torch.Generator().manual_seed(4)
    stack = torch.randn(3, 2, 4, 6, 5, dtype=torch.float64, generator=generator)
    weights = torch.randn(3, 2, 4, 3, 3, dtype=torch.float64, generator=generator) / 6
    if batched == "input":
        expected = torch.stack([anyconv.generalized_conv(x, weights[0], variant) for x in stack])
        got = vmap(lambda x: anyconv.generalized_conv(x, weights[0], variant))(stack)
    else:
        expected = torch.stack([anyconv.generalized_conv(stack[0], w, variant) for w in weights])
        got = vmap(lambda w: anyconv.generalized_conv(stack[0], w, variant))(weights)
    torch.testing.assert_close(got, expected)


def test_vmap_over_conv():
    stack = torch.randn(3, 2, 4, 6, 5)
    weight = torch.randn(2, 4, 3, 3)
    expected = torch.stack([anyconv.conv(x, weight) for x in stack])
    torch.testing.assert_close(vmap(lambda x: anyconv.conv(x, weight))(stack), expected)


#: one small module per built-in variant, with options where the variant has them
VARIANT_OPTIONS = {"lp": {"p": 3.0}, "polynomial": {"degree": 2}, "rbf": {"gamma": 0.1}}


def _variant_module(name):
    torch.manual_seed(0)
    return anyconv.nn.GeneralizedConv2d(3, 4, 3, padding=1, variant=name, **VARIANT_OPTIONS.get(name, {}))


@pytest.mark.parametrize("name", sorted(BUILTIN_VARIANTS))
def test_every_variant_compiles_fullgraph_with_aot_eager(name):
    module = _variant_module(name).double()
    input = torch.randn(2, 3, 6, 5, dtype=torch.float64, requires_grad=True)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    for got, expected in zip(_eager_and_grads(compiled, input), _eager_and_grads(module, input)):
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("name", ["dot", "cosine", "l1"])
def test_dynamic_shapes_compile_once(name):
    module = _variant_module(name).double()
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager", dynamic=True)
    for shape in [(2, 3, 6, 5), (3, 3, 8, 7), (1, 3, 5, 9)]:
        input = torch.randn(shape, dtype=torch.float64, requires_grad=True)
        for got, expected in zip(_eager_and_grads(compiled, input), _eager_and_grads(module, input)):
            torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("name", ["dot", "l1"])
def test_inductor_training_step_gives_the_eager_numbers(name):
    module = _variant_module(name)
    compiled = torch.compile(module, fullgraph=True)
    input = torch.randn(2, 3, 6, 5, requires_grad=True)
    for got, expected in zip(_eager_and_grads(compiled, input), _eager_and_grads(module, input)):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


EXPORTED = {
    **{f"generalized-{name}": (lambda name=name: _variant_module(name)) for name in sorted(BUILTIN_VARIANTS)},
    "conv2d": lambda: anyconv.nn.Conv2d(3, 4, 3, padding=1, stride=2),
    "conv2d-reflect": lambda: anyconv.nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"),
}


@pytest.mark.parametrize("name", EXPORTED)
def test_export_runs_with_gradients_after_save_and_load(name, tmp_path):
    module = EXPORTED[name]()
    input = torch.randn(2, 3, 6, 5)
    program = torch.export.export(module, (input,))
    path = tmp_path / "program.pt2"
    torch.export.save(program, path)
    loaded = torch.export.load(path).module()
    trainable = input.clone().requires_grad_()
    output = loaded(trainable)
    torch.testing.assert_close(output, module(input))
    output.square().sum().backward()
    expected = torch.autograd.grad(module(trainable).square().sum(), trainable)[0]
    torch.testing.assert_close(trainable.grad, expected, rtol=1e-4, atol=1e-4)


#: depthwise and few-channels-per-group layers of every variant the tap loops compute
TAP_LOOP_VARIANTS = ["dot", "l1", "l2", "max_plus", "min_plus"]


def _depthwise_module(name, groups=4):
    torch.manual_seed(0)
    return anyconv.nn.GeneralizedConv2d(4, 8, 3, padding=1, stride=(1, 2), groups=groups, variant=name)


def _recording_backend(graphs):
    """aot_eager that keeps the forward and backward graphs it is given."""

    def record(graph, example_inputs):
        graphs.append(graph)
        return make_boxed_func(graph.forward)

    return aot_autograd(fw_compiler=record, bw_compiler=record)


def _targets(graph):
    return {node.target for node in graph.graph.nodes if node.op == "call_function"}


@pytest.mark.parametrize("groups", [4, 2], ids=["depthwise", "2-per-group"])
@pytest.mark.parametrize("name", TAP_LOOP_VARIANTS)
def test_tap_loops_compile_fullgraph_as_their_ops(name, groups):
    module = _depthwise_module(name, groups).double()
    input = torch.randn(2, 4, 7, 8, dtype=torch.float64, requires_grad=True)
    graphs = []
    compiled = torch.compile(module, fullgraph=True, backend=_recording_backend(graphs))
    for got, expected in zip(_eager_and_grads(compiled, input), _eager_and_grads(module, input)):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    forward, backward = graphs
    assert torch.ops.anyconv.tap_loops.default in _targets(forward)
    assert torch.ops.anyconv.tap_loops_backward.default in _targets(backward)
    assert torch.ops.anyconv.generalized_conv.default not in _targets(forward)


def test_tap_loops_inductor_training_step_gives_the_eager_numbers():
    module = _depthwise_module("l1")
    compiled = torch.compile(module, fullgraph=True)
    input = torch.randn(2, 4, 7, 8, requires_grad=True)
    for got, expected in zip(_eager_and_grads(compiled, input), _eager_and_grads(module, input)):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["l1", "max_plus"])
def test_tap_loops_with_dynamic_shapes_compile_once_for_every_batch_size(name):
    # a batch of 1 is specialised by dynamo itself (new spatial sizes: test_compile_dynamic.py)
    module = _depthwise_module(name).double()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(module, fullgraph=True, backend=counter, dynamic=True)
    for shape in [(2, 4, 7, 8), (3, 4, 7, 8), (5, 4, 7, 8), (8, 4, 7, 8)]:
        input = torch.randn(shape, dtype=torch.float64, requires_grad=True)
        for got, expected in zip(_eager_and_grads(compiled, input), _eager_and_grads(module, input)):
            torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    assert counter.frame_count == 1


def test_tap_loops_batch_sizes_compile_once_after_the_first_recompile():
    # without dynamic=True, dynamo marks the batch dynamic at its second size and stays there
    module = _depthwise_module("l1").double()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(module, fullgraph=True, backend=counter)
    for batch in (2, 3, 4, 7):
        compiled(torch.randn(batch, 4, 7, 8, dtype=torch.float64)).sum().backward()
    assert counter.frame_count == 2


@pytest.mark.parametrize("name", TAP_LOOP_VARIANTS)
def test_tap_loops_export_as_their_op_and_run_with_gradients_after_save_and_load(name, tmp_path):
    module = _depthwise_module(name)
    input = torch.randn(2, 4, 7, 8)
    program = torch.export.export(module, (input,))
    assert torch.ops.anyconv.tap_loops.default in _targets(program.graph_module)
    path = tmp_path / "program.pt2"
    torch.export.save(program, path)
    loaded = torch.export.load(path).module()
    trainable = input.clone().requires_grad_()
    output = loaded(trainable)
    torch.testing.assert_close(output, module(input))
    output.square().sum().backward()
    expected = torch.autograd.grad(module(trainable).square().sum(), trainable)[0]
    torch.testing.assert_close(trainable.grad, expected, rtol=1e-4, atol=1e-4)
