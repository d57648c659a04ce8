"""torch.compile with dynamic shapes: a new spatial size or batch size traces no new graph.

Every public function and module on each CPU path (fields, tap loops, tap products, pointwise)
runs over three spatial sizes and two batch sizes, forward and backward, equal to eager; the
graphs dynamo made are counted (``unique_graphs``: a restart inside one compile is not a graph).
"""

import importlib

import pytest
import torch
import torch._dynamo
from hypothesis import given, settings
from hypothesis import strategies as st
from torch._dynamo.testing import CompileCounterWithBackend
from torch._dynamo.utils import counters

import anyconv
from anyconv.engine.plan import plan_conv
from anyconv.variants import BUILTIN_VARIANTS, resolve_variant

TRANSPOSE = importlib.import_module("anyconv.engine.conv_transpose")

# torch's own tracing machinery warns that torch.jit.script_method is deprecated: not ours
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

#: (batch, *spatial) of the calls: three spatial sizes, two batch sizes, none equal to a channel
#: count or to another size of its input (dynamo would take them for one symbol)
SIZES_2D = [(2, 9, 8), (3, 11, 6), (2, 13, 15)]
SIZES_1D = [(2, 9), (3, 12), (2, 17)]
SIZES_3D = [(2, 5, 6, 7), (3, 7, 5, 6), (2, 6, 8, 5)]
OPTIONS = {"lp": {"p": 3.0}, "polynomial": {"degree": 2}, "rbf": {"gamma": 0.1}}


def _generalized(name, channels=4, out_channels=8, kernel=3, **arguments):
    options = OPTIONS.get(name, {})
    return lambda: anyconv.nn.GeneralizedConv2d(
        channels, out_channels, kernel, variant=name, **options, **arguments
    )


#: the dense layers' paths other than the fields path: the tap loops' filter blocks take the
#: variants the loops know (and, with gradients off, the tap products compose the others from them;
#: with gradients on, the cosine in eager calls, and the other product variants' forward in eager
#: calls that the fields path's backward follows: their compiled traces take the fields path)
_DENSE_PATHS = {
    **dict.fromkeys(("dot", "l1", "l2", "lp", "max_plus", "min_plus"), "tap loops"),
    "cosine": "tap products",
    **dict.fromkeys(("polynomial", "rbf", "sharpened_cosine"), "tap forward"),
}

#: id -> (module factory, input sizes, the path eager takes for it)
MODULES = {
    **{
        f"{name}-dense": (_generalized(name, padding=1), SIZES_2D, _DENSE_PATHS.get(name, "fields"))
        for name in sorted(BUILTIN_VARIANTS)
    },
    **{
        f"{name}-depthwise": (
            _generalized(name, padding=1, stride=(1, 2), groups=4),
            SIZES_2D,
            "tap loops" if name in ("dot", "l1", "l2", "lp", "max_plus", "min_plus") else "tap products",
        )
        for name in (
            "dot",
            "l1",
            "l2",
            "lp",
            "max_plus",
            "min_plus",
            "cosine",
            "sharpened_cosine",
            "polynomial",
            "rbf",
        )
    },
    # fewer filters than a block: the fields path's fused loops
    **{
        f"{name}-dense-few-filters": (_generalized(name, padding=1, out_channels=3), SIZES_2D, "fields")
        for name in ("l1", "max_plus")
    },
    "dot-pointwise": (_generalized("dot", kernel=1, stride=2), SIZES_2D, "pointwise"),
    "cosine-pointwise": (_generalized("cosine", kernel=1), SIZES_2D, "pointwise"),
    "conv2d-reflect-groups": (
        lambda: anyconv.nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect", groups=2),
        SIZES_2D,
        "tap loops",
    ),
    "conv2d-strided-dilated": (
        lambda: anyconv.nn.Conv2d(4, 6, 3, padding=(2, 1), stride=2, dilation=(2, 1)),
        SIZES_2D,
        "tap loops",
    ),
    "conv1d-same": (lambda: anyconv.nn.Conv1d(4, 3, 3, padding="same", dilation=2), SIZES_1D, "fields"),
    "conv3d-circular": (
        lambda: anyconv.nn.Conv3d(4, 3, 3, padding=1, padding_mode="circular"),
        SIZES_3D,
        "fields",
    ),
}


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def _input(channels, size, seed):
    generator = torch.Generator().manual_seed(seed)
    batch, *spatial = size
    return torch.randn(
        batch, channels, *spatial, dtype=torch.float64, generator=generator, requires_grad=True
    )


def _output_and_grads(function, input, parameters):
    output = function(input)
    return (output, *torch.autograd.grad(output.square().sum(), (input, *parameters)))


def _check_one_graph(function, reference, channels, sizes, parameters, backend="aot_eager", dynamic=True):
    """Run ``function`` compiled with ``dynamic`` over ``sizes``, each equal to ``reference``;
    return (graphs dynamo made, frames the backend compiled after the first call, in all)."""
    counter = CompileCounterWithBackend(backend)
    compiled = torch.compile(function, fullgraph=True, backend=counter, dynamic=dynamic)
    first = None
    for seed, size in enumerate(sizes):
        input = _input(channels, size, seed)
        got = _output_and_grads(compiled, input, parameters)
        expected = _output_and_grads(reference, input, parameters)
        for value, wanted in zip(got, expected):
            torch.testing.assert_close(value, wanted, rtol=1e-9, atol=1e-9)
        first = counter.frame_count if first is None else first
    return counters["stats"]["unique_graphs"], counter.frame_count - first


@pytest.mark.parametrize("name", MODULES)
def test_new_sizes_trace_no_new_graph(name):
    factory, sizes, path = MODULES[name]
    torch.manual_seed(0)
    module = factory().double()
    channels = module.weight.shape[1] * module.groups
    probe = _input(channels, sizes[0], 0)
    variant = getattr(module, "variant", resolve_variant("dot"))
    arguments = (module.stride, module.padding, module.dilation, module.groups, module.padding_mode, None)
    assert plan_conv(probe.detach(), module.weight.detach(), variant, *arguments).path == path
    graphs, recompiles = _check_one_graph(module, module, channels, sizes, list(module.parameters()))
    assert (graphs, recompiles) == (1, 0)


#: the functional forms, with the weight (and bias) as inputs of the compiled function
FUNCTIONS = {
    "conv": lambda x, w, b: anyconv.conv(x, w, b, padding=1, stride=(2, 1)),
    "generalized-l1": lambda x, w, b: anyconv.generalized_conv(x, w, "l1", b, padding="same"),
    "generalized-lp": lambda x, w, b: anyconv.generalized_conv(x, w, "lp", b, p=3.0),
    "generalized-max_plus-depthwise": lambda x, w, b: anyconv.generalized_conv(
        x, w[:, :1], "max_plus", b, padding=1, groups=4
    ),
    "generalized-cosine-depthwise": lambda x, w, b: anyconv.generalized_conv(
        x, w[:, :1], "cosine", b, groups=4
    ),
}


@pytest.mark.parametrize("name", FUNCTIONS)
def test_functions_trace_no_new_graph(name):
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(4, 4, 3, 3, dtype=torch.float64, generator=generator, requires_grad=True)
    bias = torch.randn(4, dtype=torch.float64, generator=generator, requires_grad=True)

    def function(input):
        return FUNCTIONS[name](input, weight, bias)

    graphs, recompiles = _check_one_graph(function, function, 4, SIZES_2D, [weight, bias])
    assert (graphs, recompiles) == (1, 0)


def test_unbatched_input_traces_no_new_graph():
    torch.manual_seed(0)
    module = anyconv.nn.Conv2d(4, 3, 3, padding=1).double()

    def unbatched(input):
        return module(input[0])

    graphs, recompiles = _check_one_graph(unbatched, unbatched, 4, SIZES_2D, list(module.parameters()))
    assert (graphs, recompiles) == (1, 0)


@pytest.mark.parametrize("name", ["dot-dense", "l1-depthwise"])
def test_inductor_traces_no_new_graph(name):
    factory, sizes, _ = MODULES[name]
    torch.manual_seed(0)
    module = factory().double()
    channels = module.weight.shape[1] * module.groups
    graphs, recompiles = _check_one_graph(
        module, module, channels, sizes, list(module.parameters()), backend="inductor"
    )
    assert (graphs, recompiles) == (1, 0)


@pytest.mark.parametrize("name", ["dot-dense", "cosine-depthwise", "rbf-dense"])
def test_automatic_dynamic_shapes_recompile_once(name):
    # without dynamic=True, dynamo compiles the first sizes as constants and marks them dynamic at
    # the second: one recompile, then none
    factory, sizes, _ = MODULES[name]
    torch.manual_seed(0)
    module = factory().double()
    channels = module.weight.shape[1] * module.groups
    _, recompiles = _check_one_graph(module, module, channels, sizes, list(module.parameters()), dynamic=None)
    assert recompiles == 1


def test_a_new_float_option_recompiles():
    # the options are constants of the graph, guarded by value: a changed one is never stale
    torch.manual_seed(0)
    module = anyconv.nn.GeneralizedConv2d(4, 8, 3, variant="rbf", gamma=0.1).double()
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager", dynamic=True)
    input = _input(4, SIZES_2D[0], 0).detach()
    torch.testing.assert_close(compiled(input), module(input))
    module.variant.options["gamma"] = 0.3
    torch.testing.assert_close(compiled(input), module(input))


@pytest.mark.parametrize("name", ["dot-dense", "l1-depthwise", "cosine-depthwise"])
def test_any_size_after_the_first_traces_no_new_graph(name):
    factory, _, _ = MODULES[name]
    torch.manual_seed(0)
    module = factory().double()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(module, fullgraph=True, backend=counter, dynamic=True)
    compiled(_input(4, SIZES_2D[0], 0))
    compiled_frames = counter.frame_count

    # sizes of 1 are specialised by torch itself (dynamo's symbols are at least 2, AOT autograd
    # tells an output dimension of 1 apart): at stride 2 an input of 3 gives an output of 2.
    # Sizes may equal each other after the first call.
    @settings(max_examples=12, deadline=None)
    @given(
        st.tuples(st.integers(2, 6), st.integers(3, 20), st.integers(3, 20)),
        st.integers(0, 2**16),
    )
    def equal_to_eager(size, seed):
        input = _input(4, size, seed)
        for got, expected in zip(
            _output_and_grads(compiled, input, list(module.parameters())),
            _output_and_grads(module, input, list(module.parameters())),
        ):
            torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)

    equal_to_eager()
    assert counter.frame_count == compiled_frames


#: id -> (transposed module factory, input sizes), run in either form (``ANYCONV_CONV_TRANSPOSE``)
TRANSPOSED = {
    "transpose2d-stride-output-padding": (
        lambda: anyconv.nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1),
        SIZES_2D,
    ),
    "transpose2d-groups-dilated": (
        lambda: anyconv.nn.ConvTranspose2d(4, 6, 3, stride=(1, 2), padding=(2, 0), groups=2, dilation=2),
        SIZES_2D,
    ),
    "transpose2d-output-padding-past-padding": (
        lambda: anyconv.nn.ConvTranspose2d(4, 3, 4, stride=3, padding=(0, 1), output_padding=2),
        SIZES_2D,
    ),
    "transpose1d-kernel-4": (lambda: anyconv.nn.ConvTranspose1d(4, 3, 4, stride=2, padding=1), SIZES_1D),
    "transpose3d": (lambda: anyconv.nn.ConvTranspose3d(4, 3, 3, stride=2, padding=1), SIZES_3D),
}


@pytest.mark.parametrize("form", ["col2im", "phases"])
@pytest.mark.parametrize("name", TRANSPOSED)
def test_transposed_modules_trace_no_new_graph(monkeypatch, name, form):
    monkeypatch.setattr(TRANSPOSE, "FORM", form)
    factory, sizes = TRANSPOSED[name]
    torch.manual_seed(0)
    module = factory().double()
    graphs, recompiles = _check_one_graph(module, module, 4, sizes, list(module.parameters()))
    assert (graphs, recompiles) == (1, 0)


@pytest.mark.parametrize(
    ("form", "budget", "taken"),
    [("auto", None, "col2im"), ("phases", None, "phases"), ("auto", 1, "phases")],
    ids=["col2im-fits", "phases", "phases-past-the-budget"],
)
def test_conv_transpose_traces_no_new_graph_and_equals_torch(monkeypatch, form, budget, taken):
    # a budget of 1 (the floor of 256 KiB): one sample's columns fit (eager takes col2im, a
    # sample at a time), the whole batch's do not (the trace takes the phases)
    monkeypatch.setattr(TRANSPOSE, "FORM", form)
    generator = torch.Generator().manual_seed(2)
    weight = torch.randn(4, 24, 4, 3, dtype=torch.float64, generator=generator, requires_grad=True)
    bias = torch.randn(24, dtype=torch.float64, generator=generator, requires_grad=True)
    arguments = dict(stride=(2, 3), padding=(1, 0), output_padding=(1, 2))

    def function(input):
        return anyconv.conv_transpose(input, weight, bias, **arguments, memory_budget=budget)

    def reference(input):
        return torch.nn.functional.conv_transpose2d(input, weight, bias, **arguments)

    graphs, recompiles = _check_one_graph(function, reference, 4, SIZES_2D, [weight, bias])
    assert (graphs, recompiles) == (1, 0)
    # the form the trace took, by spies apart (a list the graph appends to is guarded on)
    torch._dynamo.reset()
    forms = []
    for name, kind in (("col2im_transpose", "col2im"), ("_phases", "phases")):
        original = getattr(TRANSPOSE, name)

        def spy(*args, original=original, kind=kind):
            forms.append(kind)
            return original(*args)

        monkeypatch.setattr(TRANSPOSE, name, spy)
    torch.compile(function, fullgraph=True, backend="aot_eager", dynamic=True)(_input(4, SIZES_2D[0], 0))
    assert forms == [taken]
