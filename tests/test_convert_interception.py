"""anyconv.intercept and anyconv.nn.Intercepted: torch's convolutions computed by anyconv, any caller.

Every functional convolution and argument form, checked against torch (dot) and the naive formula
(l1), with no call left on torch's kernels; composition with convert, torch.compile, nesting.
"""

import pickle

import pytest
import torch
import torch.nn.functional as F
from convolution_spies import NativeConvolutions
from variant_reference import naive_generalized_conv

import anyconv
from anyconv.nn import GeneralizedConv2d, Intercepted, Interception, convert, intercept

DOUBLE = torch.float64


def tensors(*shapes, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, dtype=DOUBLE, generator=generator) for shape in shapes]


# each call: the torch function and its arguments (weight shaped as torch wants it)
CALLS = [
    dict(id="conv1d-positional", func=F.conv1d, shapes=[(2, 4, 9), (6, 2, 3), (6,)], args=(1, 1, 2, 2)),
    dict(id="conv1d-same-even", func=F.conv1d, shapes=[(2, 2, 9), (3, 2, 4)], kwargs=dict(padding="same")),
    dict(id="conv1d-unbatched", func=torch.conv1d, shapes=[(2, 9), (3, 2, 3)], kwargs=dict(padding=1)),
    dict(
        id="conv2d-keywords",
        func=F.conv2d,
        shapes=[(2, 4, 8, 7), (4, 1, 3, 2), (4,)],
        kwargs=dict(stride=(2, 1), padding=[1, 2], dilation=(1, 2), groups=4),
    ),
    dict(
        id="conv2d-valid",
        func=torch.conv2d,
        shapes=[(1, 3, 6, 6), (2, 3, 3, 3)],
        kwargs=dict(padding="valid"),
    ),
    dict(
        id="conv2d-same-dilated",
        func=F.conv2d,
        shapes=[(1, 2, 7, 8), (4, 2, 2, 3)],
        kwargs=dict(padding="same", dilation=2),
    ),
    dict(id="conv3d", func=F.conv3d, shapes=[(1, 2, 5, 4, 6), (3, 2, 2, 3, 2), (3,)], args=((1, 2, 1), 1)),
    dict(
        id="convolution",
        func=torch.convolution,
        shapes=[(2, 2, 6, 6), (3, 2, 3, 3), (3,)],
        args=([2, 1], [1, 0], [1, 1], False, [0, 0], 1),
    ),
]
TRANSPOSED = [
    dict(id="transpose1d", func=F.conv_transpose1d, shapes=[(2, 4, 5), (4, 3, 3)], kwargs=dict(stride=2)),
    dict(
        id="transpose2d-all",
        func=torch.conv_transpose2d,
        shapes=[(1, 4, 4, 5), (4, 1, 3, 2), (2,)],
        args=((2, 1), 1, (1, 0), 2, (1, 2)),
    ),
    dict(id="transpose3d", func=F.conv_transpose3d, shapes=[(1, 2, 3, 3, 3), (2, 2, 2, 2, 2)]),
    dict(
        id="convolution-transposed",
        func=torch.convolution,
        shapes=[(1, 2, 4, 4), (2, 3, 3, 3), (3,)],
        args=([2, 2], [1, 1], [1, 1], True, [1, 0], 1),
    ),
]


def call(case, *args):
    return case["func"](*args, *case.get("args", ()), **case.get("kwargs", {}))


def naive_l1(case, input, weight, bias=None):
    """The l1 formula on the arguments of one CALLS case (bound to conv's signature)."""
    if case["func"] is torch.convolution:
        stride, padding, dilation, _, _, groups = case["args"]
    else:
        arguments = dict(zip(("stride", "padding", "dilation", "groups"), case.get("args", ())))
        arguments.update(case.get("kwargs", {}))
        stride, padding = arguments.get("stride", 1), arguments.get("padding", 0)
        dilation, groups = arguments.get("dilation", 1), arguments.get("groups", 1)
    unbatched = input.dim() == weight.dim() - 1
    batched = input.unsqueeze(0) if unbatched else input
    output = naive_generalized_conv(batched, weight, "l1", bias, stride, padding, dilation, groups)
    return output.squeeze(0) if unbatched else output


@pytest.mark.parametrize("case", CALLS + TRANSPOSED, ids=[case["id"] for case in CALLS + TRANSPOSED])
def test_dot_equals_torch_and_leaves_nothing_to_its_kernels(case):
    arguments = tensors(*case["shapes"])
    expected = call(case, *arguments)
    with NativeConvolutions() as native, intercept("dot") as interception:
        output = call(case, *arguments)
    assert interception.calls == 1 and native.seen == []
    torch.testing.assert_close(output, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", CALLS, ids=[case["id"] for case in CALLS])
def test_l1_equals_its_formula_and_backpropagates(case):
    arguments = [tensor.requires_grad_() for tensor in tensors(*case["shapes"])]
    with NativeConvolutions() as native, intercept("l1") as interception:
        output = call(case, *arguments)
        output.square().sum().backward()  # the backward inside the mode: nothing intercepted twice
    assert interception.calls == 1 and native.seen == []
    torch.testing.assert_close(output, naive_l1(case, *arguments), rtol=1e-12, atol=1e-12)
    assert all(tensor.grad is not None and tensor.grad.isfinite().all() for tensor in arguments)


def test_gradients_match_finite_differences():
    input, weight, bias = (tensor.requires_grad_() for tensor in tensors((1, 1, 3, 3), (2, 1, 2, 2), (2,)))

    def intercepted(input, weight, bias):
        with intercept("l2"):
            return F.conv2d(input, weight, bias, padding="same")

    assert torch.autograd.gradcheck(intercepted, (input, weight, bias))


@pytest.mark.parametrize("case", TRANSPOSED, ids=[case["id"] for case in TRANSPOSED])
def test_transposed_left_to_torch_for_other_variants(case):
    arguments = tensors(*case["shapes"])
    with NativeConvolutions() as native, intercept("l1") as interception:
        output = call(case, *arguments)
    assert interception.calls == 0 and native.seen
    torch.testing.assert_close(output, call(case, *arguments))


def test_a_call_torch_refuses_keeps_its_error():
    input, weight = tensors((1, 2, 5, 5), (3, 2, 3, 3, 3))
    with pytest.raises(RuntimeError) as expected:
        F.conv2d(input, weight)
    with intercept("l1"), pytest.raises(RuntimeError) as refused:
        F.conv2d(input, weight)
    assert str(refused.value) == str(expected.value)


class StandardisedSame(torch.nn.Conv2d):
    """A layer computing its own way, as timm's StdConv2dSame: 'same' padding and a standardised weight."""

    def forward(self, input):
        weight = (self.weight - self.weight.mean((1, 2, 3), keepdim=True)) / self.weight.std(
            (1, 2, 3), keepdim=True
        )
        return F.conv2d(F.pad(input, (0, 1, 0, 1)), weight, self.bias, self.stride)


def test_own_preprocessing_kept_and_refused_by_convert():
    torch.manual_seed(0)
    layer = StandardisedSame(2, 3, 2, stride=2, dtype=DOUBLE)
    input = torch.randn(1, 2, 7, 7, dtype=DOUBLE)
    weight = (layer.weight - layer.weight.mean((1, 2, 3), keepdim=True)) / layer.weight.std(
        (1, 2, 3), keepdim=True
    )
    expected = naive_generalized_conv(F.pad(input, (0, 1, 0, 1)), weight, "l1", layer.bias, 2)
    with intercept("l1"):
        torch.testing.assert_close(layer(input), expected)
    with pytest.raises(ValueError, match=r"computes in its own way \(forward\).*anyconv.intercept"):
        convert(layer, "l1")


def test_composes_with_convert_whose_layers_keep_their_options():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.Tanh(), StandardisedSame(4, 3, 2)
    ).to(DOUBLE)
    gamma = torch.full((4,), 0.1)
    convert(model, "rbf", include=lambda name, layer: type(layer) is torch.nn.Conv2d, gamma=gamma)
    assert isinstance(model[0], GeneralizedConv2d)
    input = torch.randn(2, 2, 6, 6, dtype=DOUBLE)
    with NativeConvolutions() as native, intercept("l1") as interception:
        model(input).sum().backward()
    assert interception.calls == 1 and native.seen == []  # only the self-computing layer
    assert model[0].variant.name == "rbf" and model[0].variant_options["gamma"].grad is not None


def test_nested_interceptions_the_innermost_computes():
    input, weight = tensors((1, 2, 6, 6), (3, 2, 3, 3))
    with intercept("l2") as outer, intercept("l1") as inner:
        output = F.conv2d(input, weight)
    assert (outer.calls, inner.calls) == (0, 1)
    torch.testing.assert_close(output, naive_generalized_conv(input, weight, "l1"))


def test_an_interception_can_be_entered_again_and_counts_on():
    input, weight = tensors((1, 2, 5, 5), (3, 2, 3, 3))
    interception = intercept("l1")
    with interception:
        F.conv2d(input, weight)
    with interception:
        F.conv2d(input, weight)
        F.conv1d(input[:, :, 0], weight[..., 0])
    assert interception.calls == 3


def small_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3, padding="same"),
        torch.nn.Tanh(),
        StandardisedSame(4, 4, 2, stride=2),
        torch.nn.Conv2d(4, 3, 1),
    ).to(DOUBLE)


def test_wrapper_is_an_ordinary_module():
    model = small_model()
    wrapped = Intercepted(model, "l1")
    assert list(wrapped.parameters()) == list(model.parameters())
    assert list(wrapped.state_dict()) == [f"module.{name}" for name in model.state_dict()]
    assert repr(wrapped).startswith("Intercepted(\n  variant=L1(")
    input = torch.randn(2, 2, 6, 6, dtype=DOUBLE)
    with intercept("l1"):
        expected = model(input)
    with NativeConvolutions() as native:
        output = wrapped(input)
    assert native.seen == [] and torch.equal(output, expected)
    output.sum().backward()
    assert all(parameter.grad is not None for parameter in model.parameters())
    torch.testing.assert_close(pickle.loads(pickle.dumps(wrapped))(input), output, rtol=0, atol=0)


# two cases (compiling is slow): a matrix-product variant and one of the native loops; the
# variants' own traceability is test_compile's subject
COMPILED = [
    dict(id="l2-fullgraph", variant="l2", fullgraph=True, backend="aot_eager"),
    dict(id="l1-fullgraph", variant="l1", fullgraph=True, backend="aot_eager"),
]


@pytest.mark.parametrize("case", COMPILED, ids=[case["id"] for case in COMPILED])
def test_compiled_wrapper_matches_eager(case):
    torch._dynamo.reset()
    wrapped = Intercepted(small_model(), case["variant"])
    input = torch.randn(2, 2, 6, 6, dtype=DOUBLE)
    compiled = torch.compile(wrapped, backend=case["backend"], fullgraph=case["fullgraph"])
    output = compiled(input)
    torch.testing.assert_close(output, wrapped(input), rtol=1e-12, atol=1e-12)
    output.sum().backward()


def test_top_level_names():
    assert anyconv.intercept is intercept and isinstance(intercept("dot"), Interception)


BAD_CALLS = [
    dict(id="unknown-variant", call=lambda: intercept("nope"), error=ValueError, match="variant='nope'"),
    dict(id="unknown-option", call=lambda: intercept("l1", gamma=1.0), error=ValueError, match="gamma"),
    dict(
        id="tensor-option",
        call=lambda: intercept("rbf", gamma=torch.ones(3)),
        error=ValueError,
        match="gamma=.*convert gives each layer",
    ),
    dict(
        id="budget-zero",
        call=lambda: intercept("l1", memory_budget=0),
        error=ValueError,
        match="memory_budget=0",
    ),
    dict(
        id="budget-float",
        call=lambda: intercept("l1", memory_budget=1.5),
        error=TypeError,
        match="memory_budget",
    ),
    dict(
        id="wrapper-not-module",
        call=lambda: Intercepted("model", "l1"),
        error=TypeError,
        match="module='model'",
    ),
]


@pytest.mark.parametrize("case", BAD_CALLS, ids=[case["id"] for case in BAD_CALLS])
def test_bad_calls_are_refused(case):
    with pytest.raises(case["error"], match=case["match"]):
        case["call"]()
