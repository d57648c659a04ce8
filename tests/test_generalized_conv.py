"""generalized_conv and GeneralizedConv2d with the built-ins and a user-defined variant.

Chunking under a tiny memory budget changes nothing; a user's variant in a few lines gets
grouping, chunking, bias and gradients like the built-ins; bad options are clear errors.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from variant_reference import naive_generalized_conv

import anyconv
from anyconv.variants import BUILTIN_VARIANTS, Variant, register_variant


class Chebyshev(Variant):
    """A user's variant: minus the largest tap difference (the L-infinity distance)."""

    name = "chebyshev"

    def contract(self, fields, filters):
        return -(fields[:, :, None, :] - filters[:, None, :, :]).abs().amax(-1)

    def working_elements(self, fields_per_chunk, taps, filters):
        return fields_per_chunk * filters * taps


def _tensors(channels=4, outputs=6, groups=2, size=(7, 6), seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, channels, *size, generator=generator, dtype=torch.float64, requires_grad=True)
    w = torch.randn(
        outputs, channels // groups, 3, 3, generator=generator, dtype=torch.float64, requires_grad=True
    )
    b = torch.randn(outputs, generator=generator, dtype=torch.float64, requires_grad=True)
    return x, w, b


def test_user_defined_variant_gets_groups_chunks_bias_and_gradients():
    x, w, b = _tensors()
    args = dict(stride=(2, 1), padding=1, groups=2)
    # 200 bytes: one field per chunk at most, so every chunk path of the engine runs
    actual = anyconv.generalized_conv(x, w, Chebyshev, b, memory_budget=200, **args)
    columns = anyconv.unfold(x, 3, padding=1, stride=(2, 1))
    expected = []
    for group in range(2):
        fields = columns[:, group * 18 : (group + 1) * 18].transpose(1, 2)[:, :, None, :]
        filters = w[group * 3 : (group + 1) * 3].reshape(3, -1)
        expected.append(-(fields - filters).abs().amax(-1))
    expected = torch.cat(expected, -1).transpose(1, 2).reshape(actual.shape) + b.reshape(-1, 1, 1)
    torch.testing.assert_close(actual, expected)
    grad = torch.randn_like(actual)
    expected_grads = torch.autograd.grad(expected, (x, w, b), grad)
    for got, want in zip(torch.autograd.grad(actual, (x, w, b), grad), expected_grads):
        torch.testing.assert_close(got, want)


def test_registered_user_variant_is_usable_by_name_in_a_module():
    register_variant(Chebyshev)
    try:
        layer = anyconv.nn.GeneralizedConv2d(4, 6, 3, padding=1, groups=2, variant="chebyshev")
        assert layer(torch.randn(1, 4, 5, 5)).shape == (1, 6, 5, 5)
    finally:
        del BUILTIN_VARIANTS["chebyshev"]


@pytest.mark.parametrize("name", list(BUILTIN_VARIANTS))
def test_chunking_under_a_tiny_budget_changes_nothing(name):
    x, w, b = _tensors()
    whole = anyconv.generalized_conv(x, w, name, b, padding=1, groups=2, memory_budget=2**30)
    chunked = anyconv.generalized_conv(x, w, name, b, padding=1, groups=2, memory_budget=500)
    torch.testing.assert_close(chunked, whole)
    grad = torch.randn_like(whole)
    expected_grads = torch.autograd.grad(whole, (x, w, b), grad)
    for got, want in zip(torch.autograd.grad(chunked, (x, w, b), grad), expected_grads):
        torch.testing.assert_close(got, want)


@settings(max_examples=25, deadline=None)
@given(
    name=st.sampled_from(["l1", "max_plus", "min_plus", "l2", "cosine"]),
    size=st.integers(3, 8),
    kernel=st.integers(1, 3),
    stride=st.integers(1, 3),
    dilation=st.integers(1, 2),
    padding=st.integers(0, 2),
    groups=st.sampled_from([1, 2]),
    seed=st.integers(0, 2**16),
)
def test_random_geometries_match_the_naive_formula(
    name, size, kernel, stride, dilation, padding, groups, seed
):
    if size + 2 * padding < dilation * (kernel - 1) + 1:
        return
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 2 * groups, size, size + 1, generator=generator, dtype=torch.float64)
    w = torch.randn(2 * groups, 2, kernel, kernel, generator=generator, dtype=torch.float64)
    args = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    torch.testing.assert_close(
        anyconv.generalized_conv(x, w, name, **args), naive_generalized_conv(x, w, name, **args)
    )


def test_module_registers_tensor_options_as_parameters():
    layer = anyconv.nn.GeneralizedConv2d(
        3, 4, 3, variant="sharpened_cosine", exponent=torch.full((4,), 2.0), q=torch.full((4,), 0.1)
    )
    names = {name for name, _ in layer.named_parameters()}
    assert names == {"weight", "bias", "variant_options.exponent", "variant_options.q"}
    layer(torch.randn(2, 3, 6, 6)).sum().backward()
    assert layer.variant_options["exponent"].grad is not None and layer.variant_options["q"].grad is not None


BAD_OPTIONS = [
    pytest.param("lp", dict(p=0), "p=0", id="lp-p-zero"),
    pytest.param("lp", dict(p=torch.ones(4)), "not per channel", id="lp-p-tensor"),
    pytest.param("rbf", dict(gamma=-1.0), "gamma=-1.0", id="rbf-gamma-negative"),
    pytest.param("rbf", dict(gamma=torch.tensor([0.5, -0.1])), "gamma=-0.1", id="rbf-gamma-tensor-entry"),
    pytest.param("polynomial", dict(degree=2.5), "degree=2.5", id="polynomial-degree-float"),
    pytest.param("polynomial", dict(degree=0), "degree=0", id="polynomial-degree-zero"),
    pytest.param("polynomial", dict(c=float("nan")), "c=nan", id="polynomial-c-nan"),
    pytest.param("sharpened_cosine", dict(q=0.0), "q=0.0", id="sharpened-q-zero"),
    pytest.param("sharpened_cosine", dict(exponent=torch.ones(2, 2)), "exponent", id="sharpened-2d"),
    pytest.param("l1", dict(adder_grad="yes"), "adder_grad='yes'", id="l1-adder-grad-str"),
    pytest.param("l1", dict(gamma=1.0), "not an option of variant 'l1'", id="unknown-option"),
    pytest.param("cosine", dict(eps=1.0), "not an option of variant 'cosine'", id="cosine-no-options"),
    pytest.param("manhattan", {}, "variant='manhattan' is invalid", id="unknown-variant"),
]


@pytest.mark.parametrize("name, options, message", BAD_OPTIONS)
def test_invalid_options_are_clear_errors(name, options, message):
    x, w = torch.randn(1, 4, 5, 5), torch.randn(4, 4, 3, 3)
    with pytest.raises((ValueError, TypeError), match=message.replace("(", r"\(")):
        anyconv.generalized_conv(x, w, name, **options)


@pytest.mark.parametrize("variant", ["dot", "l1", "cosine", "max_plus", "rbf"])
@pytest.mark.parametrize(
    "arguments",
    [dict(padding=1), dict(groups=2, stride=2), dict(groups=4, dilation=2)],
    ids=["dense", "groups", "depthwise"],
)
def test_meta_tensors_give_torchs_shapes(variant, arguments):
    """On the meta device (shape inference, models built before their memory) the operators' fake
    kernels answer: the eager paths, which read data, had failed asking autocast about 'meta'."""
    input = torch.empty(2, 4, 9, 9, device="meta", requires_grad=True)
    weight = torch.empty(4, 4 // arguments.get("groups", 1), 3, 3, device="meta", requires_grad=True)
    output = anyconv.generalized_conv(input, weight, variant, **arguments)
    expected = torch.nn.functional.conv2d(input, weight, **arguments)
    assert output.device.type == "meta" and output.shape == expected.shape
    output.sum().backward()
    assert input.grad.shape == input.shape and weight.grad.shape == weight.shape


def test_meta_tensors_through_the_other_entry_points():
    input = torch.empty(2, 4, 9, 9, device="meta")
    transposed = anyconv.conv_transpose(input, torch.empty(4, 3, 3, 3, device="meta"), stride=2)
    assert (
        transposed.shape
        == torch.nn.functional.conv_transpose2d(input, torch.empty(4, 3, 3, 3), stride=2).shape
    )
    assert anyconv.unfold(input, 3).shape == (2, 36, 49)
    model = anyconv.convert(torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3), torch.nn.Conv2d(4, 2, 1)), "l1")
    assert model.to("meta")(input).shape == (2, 2, 7, 7)
