"""anyconv.convert: every conv swapped for its generalized twin, parameters and checkpoints kept."""

import io
import warnings

import pytest
import torch
import torch.nn.utils.prune

import anyconv
from anyconv.nn import (
    Conv1d,
    Conv2d,
    ConvNd,
    GeneralizedConv1d,
    GeneralizedConv2d,
    GeneralizedConv3d,
    GeneralizedConvNd,
    convert,
)
from anyconv.variants import Variant

GENERALIZED = (GeneralizedConv1d, GeneralizedConv2d, GeneralizedConv3d, GeneralizedConvNd)


class Mixed(torch.nn.Module):
    """Conv2d (strided, grouped) -> Conv1d over the flattened grid -> Linear."""

    def __init__(self, dtype=torch.float64):
        super().__init__()
        self.image = torch.nn.Sequential(
            torch.nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=2, dtype=dtype), torch.nn.ReLU()
        )
        self.signal = torch.nn.Conv1d(8, 6, 3, padding=1, bias=False, dtype=dtype)
        self.head = torch.nn.Linear(6, 3, dtype=dtype)

    def forward(self, x):
        return self.head(self.signal(self.image(x).flatten(2)).mean(-1))


class ScaledDot(Variant):
    """A user variant with a per-channel option, to see tensor options copied per layer."""

    name = "scaled_dot"
    defaults = {"scale": 1.0}
    per_channel = ("scale",)

    def contract(self, fields, filters, scale):
        return torch.matmul(fields, filters.transpose(-1, -2)) * scale


def torch_convs_left(model):
    return [
        name
        for name, layer in model.named_modules()
        if isinstance(layer, torch.nn.modules.conv._ConvNd)
        and not layer.transposed
        and not isinstance(layer, GENERALIZED)
    ]


def test_mixed_model_keeps_every_parameter_and_checkpoint():
    torch.manual_seed(0)
    model = Mixed()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    parameters = dict(model.named_parameters())
    checkpoint = io.BytesIO()
    torch.save(model.state_dict(), checkpoint)
    x = torch.randn(2, 4, 9, 9, dtype=torch.float64)
    expected = model(x)

    returned = convert(model, "dot")

    assert returned is model
    assert isinstance(model.image[0], GeneralizedConv2d) and isinstance(model.signal, GeneralizedConv1d)
    assert isinstance(model.head, torch.nn.Linear)
    assert torch_convs_left(model) == []
    assert list(model.state_dict()) == list(before)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]) and value.dtype == before[name].dtype, name
    for name, parameter in model.named_parameters():
        assert parameter is parameters[name], name
    checkpoint.seek(0)
    model.load_state_dict(torch.load(checkpoint), strict=True)
    torch.testing.assert_close(model(x), expected)


CONSTRUCTOR_CASES = [
    dict(id="conv1d-defaults", make=lambda: torch.nn.Conv1d(3, 5, 4)),
    dict(id="conv2d-same-dilated", make=lambda: torch.nn.Conv2d(2, 4, (3, 2), padding="same", dilation=2)),
    dict(
        id="conv2d-reflect-nobias",
        make=lambda: torch.nn.Conv2d(2, 4, 3, padding=1, padding_mode="reflect", bias=False),
    ),
    dict(id="conv3d-grouped", make=lambda: torch.nn.Conv3d(4, 4, 2, stride=(1, 2, 1), groups=4)),
    dict(id="anyconv-conv2d-circular", make=lambda: Conv2d(2, 3, 3, padding=(1, 2), padding_mode="circular")),
    dict(id="anyconv-convNd-4d", make=lambda: ConvNd(2, 3, (2, 2, 2, 2), padding=1, stride=2)),
    dict(id="float64", make=lambda: torch.nn.Conv1d(2, 2, 3, dtype=torch.float64)),
]


@pytest.mark.parametrize("case", CONSTRUCTOR_CASES, ids=[case["id"] for case in CONSTRUCTOR_CASES])
def test_constructor_arguments_and_output_kept(case):
    torch.manual_seed(0)
    layer = case["make"]()
    twin = convert(layer, "dot")
    assert type(twin) is {1: GeneralizedConv1d, 2: GeneralizedConv2d, 3: GeneralizedConv3d}.get(
        len(layer.kernel_size), GeneralizedConvNd
    )
    for attribute in (
        "in_channels",
        "out_channels",
        "kernel_size",
        "stride",
        "padding",
        "dilation",
        "groups",
        "padding_mode",
        "output_padding",
        "transposed",
    ):
        assert getattr(twin, attribute) == getattr(layer, attribute), attribute
    assert twin.weight is layer.weight and twin.bias is layer.bias
    assert twin.weight.device == layer.weight.device
    x = torch.randn(2, layer.in_channels, *(7,) * len(layer.kernel_size), dtype=layer.weight.dtype)
    torch.testing.assert_close(twin(x), layer(x), atol=1e-5, rtol=1e-5)


def test_include_chooses_layers_by_name_and_layer():
    model = Mixed()
    seen = []

    def only_2d(name, layer):
        seen.append(name)
        return isinstance(layer, torch.nn.Conv2d)

    convert(model, "dot", include=only_2d)
    assert seen == ["image.0", "signal"]
    assert isinstance(model.image[0], GeneralizedConv2d)
    assert type(model.signal) is torch.nn.Conv1d


def test_transposed_and_generalized_layers_left_alone():
    up = torch.nn.ConvTranspose2d(2, 2, 3)
    done = GeneralizedConv2d(2, 2, 3, variant=ScaledDot)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 2, 3), up, done)
    convert(model, "dot")
    assert model[1] is up and model[2] is done and done.variant.name == "scaled_dot"
    assert isinstance(model[0], GeneralizedConv2d)


def test_shared_layer_stays_shared():
    shared = torch.nn.Conv1d(2, 2, 3, padding=1)
    model = torch.nn.Sequential(shared, torch.nn.Sequential(shared))
    convert(model, "dot")
    assert isinstance(model[0], GeneralizedConv1d) and model[1][0] is model[0]


class _SameLayerTwice(torch.nn.Module):
    """One convolution applied twice, held under two names of one module (and a None slot)."""

    def __init__(self):
        super().__init__()
        self.first = torch.nn.Conv2d(2, 2, 3, padding=1)
        self.second = self.first
        self.register_module("absent", None)

    def forward(self, x):
        return self.second(torch.relu(self.first(x)))


@pytest.mark.parametrize(
    "build",
    [_SameLayerTwice, lambda: torch.nn.Sequential(*[torch.nn.Conv2d(2, 2, 3, padding=1)] * 2)],
    ids=["two-attributes", "sequential"],
)
def test_a_layer_under_two_names_of_one_parent_is_converted_under_both(build):
    # named_children() yields such a layer once: its second name had kept torch's layer, computing
    # the plain convolution where the variant was asked for
    model = build()
    convert(model, "l1")
    layers = list(model._modules.values())
    assert isinstance(layers[0], GeneralizedConv2d) and layers[1] is layers[0]

    def l1(y):
        return anyconv.generalized_conv(y, layers[0].weight, "l1", layers[0].bias, padding=1)

    x = torch.randn(1, 2, 5, 5)
    expected = l1(torch.relu(l1(x))) if isinstance(model, _SameLayerTwice) else l1(l1(x))
    torch.testing.assert_close(model(x), expected)


def test_nested_model_and_training_mode_kept():
    model = torch.nn.Sequential(
        torch.nn.Sequential(Conv1d(1, 2, 3)), torch.nn.Sequential(torch.nn.Conv1d(2, 2, 1))
    )
    model.eval()
    convert(model, "dot", memory_budget=4096)
    assert all(not layer.training for layer in model.modules())
    assert model[0][0].memory_budget == 4096 and isinstance(model[1][0], GeneralizedConv1d)


def test_tensor_options_copied_per_layer_on_its_dtype():
    model = torch.nn.Sequential(
        torch.nn.Conv1d(2, 3, 1, dtype=torch.float64), torch.nn.Conv1d(3, 3, 1, dtype=torch.float64)
    )
    scale = torch.full((3,), 2.0)
    convert(model, ScaledDot, scale=scale)
    first, second = model[0].variant_options["scale"], model[1].variant_options["scale"]
    assert first is not second and first.dtype == torch.float64 and torch.equal(first, scale.double())
    assert "0.variant_options.scale" in model.state_dict()
    x = torch.randn(1, 2, 4, dtype=torch.float64)
    model(x).sum().backward()
    assert first.grad is not None


def test_top_level_anyconv_module():
    layer = anyconv.nn.Conv3d(1, 1, 2)
    twin = anyconv.convert(layer, "dot")
    assert isinstance(twin, GeneralizedConv3d) and isinstance(twin, torch.nn.Conv3d)


class OwnComputation(torch.nn.Conv2d):
    def forward(self, input):
        return super().forward(input) * 2


class OwnPadding:
    """A mixin computing: whichever class name it is mixed into, the MRO shows its forward."""

    def _conv_forward(self, input, weight, bias):
        return super()._conv_forward(torch.nn.functional.pad(input, (1, 1)), weight, bias)


class Conv2dSubclassOfOwn(OwnComputation):
    """Adds nothing, but inherits a computation from a class between it and torch's."""


class Conv1dPadded(OwnPadding, torch.nn.Conv1d):
    pass


class NamedLikeTorch(torch.nn.Conv2d):
    """Renamed below to torch's own name: the check is on the methods, not the class name."""

    def forward(self, input):
        return super().forward(input).relu()


NamedLikeTorch.__name__ = NamedLikeTorch.__qualname__ = "Conv2d"


class Simple3d(torch.nn.Conv3d):
    """As torchvision's Conv3DSimple: a static helper and extra state, computed as Conv3d."""

    @staticmethod
    def downsample_stride(stride):
        return stride, stride, stride

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("calls", torch.zeros(()))
        self.register_buffer("scratch", torch.zeros(2), persistent=False)
        self.scale = torch.nn.Parameter(torch.ones(()))


class SimpleOfAnyconv(anyconv.nn.Conv2d):
    pass


def test_subclass_computing_as_its_base_is_converted_as_it():
    torch.manual_seed(0)
    layer = Simple3d(2, 3, 2, padding=1, dtype=torch.float64)
    keys, parameters = list(layer.state_dict()), dict(layer.named_parameters())
    x = torch.randn(1, 2, 4, 4, 4, dtype=torch.float64)
    expected = layer(x)
    twin = convert(torch.nn.Sequential(layer), "dot")[0]
    assert type(twin) is GeneralizedConv3d and list(twin.state_dict()) == keys
    assert dict(twin.named_parameters()) == parameters and "scratch" in dict(twin.named_buffers())
    torch.testing.assert_close(twin(x), expected)
    assert type(convert(SimpleOfAnyconv(1, 2, 3), "l1")) is GeneralizedConv2d


SELF_COMPUTING = [
    dict(id="own-forward", make=lambda: OwnComputation(1, 1, 1), owner="OwnComputation", method="forward"),
    dict(
        id="inherited-forward",
        make=lambda: Conv2dSubclassOfOwn(1, 1, 1),
        owner="OwnComputation",
        method="forward",
    ),
    dict(id="mixin", make=lambda: Conv1dPadded(1, 1, 1), owner="OwnPadding", method="_conv_forward"),
    dict(id="torch-name", make=lambda: NamedLikeTorch(1, 1, 1), owner="Conv2d", method="forward"),
]


@pytest.mark.parametrize("case", SELF_COMPUTING, ids=[case["id"] for case in SELF_COMPUTING])
def test_subclass_computing_its_own_way_is_refused_pointing_to_intercept(case):
    layer = case["make"]()
    message = rf"layer '0' is a {type(layer).__name__}, whose class {case['owner']} computes in its own way "
    with pytest.raises(ValueError, match=message + rf"\({case['method']}\).*anyconv.intercept\(variant\)"):
        convert(torch.nn.Sequential(layer), "dot")


def test_include_is_asked_before_any_refusal():
    own, lazy = OwnComputation(1, 1, 1), torch.nn.LazyConv2d(1, 3)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1), own, lazy)
    seen = []

    def plain_only(name, layer):
        seen.append(name)
        return type(layer) is torch.nn.Conv2d

    convert(model, "dot", include=plain_only)
    assert seen == ["0", "1", "2"] and model[1] is own and model[2] is lazy
    assert isinstance(model[0], GeneralizedConv2d)


BAD_CALLS = [
    dict(id="not-a-module", call=lambda: convert("model", "dot"), error=TypeError, match="module='model'"),
    dict(
        id="unknown-variant", call=lambda: convert(Mixed(), "nope"), error=ValueError, match="variant='nope'"
    ),
    dict(
        id="unknown-option", call=lambda: convert(Mixed(), "dot", gamma=1.0), error=ValueError, match="gamma"
    ),
    dict(
        id="include-not-callable",
        call=lambda: convert(Mixed(), "dot", include="image"),
        error=TypeError,
        match="include='image'",
    ),
    dict(
        id="budget-zero",
        call=lambda: convert(Mixed(), "dot", memory_budget=0),
        error=ValueError,
        match="memory_budget=0",
    ),
    dict(
        id="budget-float",
        call=lambda: convert(Mixed(), "dot", memory_budget=1e6),
        error=TypeError,
        match="memory_budget=1000000.0",
    ),
    dict(
        id="own-computation",
        call=lambda: convert(torch.nn.Sequential(OwnComputation(1, 1, 1)), "dot"),
        error=ValueError,
        match="layer '0' is a OwnComputation",
    ),
    dict(
        id="lazy",
        call=lambda: convert(torch.nn.Sequential(torch.nn.LazyConv2d(2, 3)), "dot"),
        error=ValueError,
        match="run one forward",
    ),
]


@pytest.mark.parametrize("case", BAD_CALLS, ids=[case["id"] for case in BAD_CALLS])
def test_bad_calls_are_refused_before_any_change(case):
    with pytest.raises(case["error"], match=case["match"]):
        case["call"]()


def test_refusal_leaves_model_untouched():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1), OwnComputation(1, 1, 1))
    with pytest.raises(ValueError):
        convert(model, "dot")
    assert type(model[0]) is torch.nn.Conv2d


#: a parametrization as audio and GAN models register it: (name, how to register it on a layer)
PARAMETRIZED = {
    "weight_norm": lambda layer: torch.nn.utils.parametrizations.weight_norm(layer),
    "spectral_norm": lambda layer: torch.nn.utils.parametrizations.spectral_norm(layer),
    "weight_norm-and-the-bias-halved": lambda layer: torch.nn.utils.parametrize.register_parametrization(
        torch.nn.utils.parametrizations.weight_norm(layer), "bias", _Halved()
    ),
}


class _Halved(torch.nn.Module):
    def forward(self, tensor):
        return tensor / 2

    def right_inverse(self, tensor):
        return tensor * 2


@pytest.mark.parametrize("variant", ["dot", "l1"])
@pytest.mark.parametrize("case", PARAMETRIZED)
def test_parametrized_layers_keep_their_parametrizations_and_originals(case, variant):
    """A parametrized layer's weight is computed (torch.nn.utils.parametrize): the twin computes it
    the same way from the same original Parameters, under the same state_dict keys."""
    model = torch.nn.Sequential(
        PARAMETRIZED[case](torch.nn.Conv1d(3, 4, 5, padding=2)), torch.nn.ReLU(), torch.nn.Conv1d(4, 2, 3)
    ).eval()
    x = torch.randn(2, 3, 16)
    keys, parameters = list(model.state_dict()), list(model.parameters())
    weight, bias = model[0].weight.detach(), model[0].bias.detach()
    expected = anyconv.generalized_conv(x, weight, variant, bias, padding=2)
    converted = anyconv.convert(model, variant)
    assert isinstance(converted[0], GeneralizedConv1d)
    assert list(converted.state_dict()) == keys
    assert all(a is b for a, b in zip(converted.parameters(), parameters, strict=True))
    torch.testing.assert_close(converted[0](x), expected)
    # the gradient reaches the originals through the parametrization
    converted[0](x).square().sum().backward()
    assert all(original.grad is not None for original in converted[0].parametrizations.parameters())


def test_a_pruned_layer_keeps_its_mask():
    """Pruning (torch.nn.utils.prune) recomputes the weight from weight_orig and weight_mask in a
    forward pre-hook: the twin keeps both and the hook, so a later change of weight_orig stays
    masked, and prune.remove still makes the pruning permanent."""
    layer = torch.nn.Conv2d(3, 4, 3, padding=1)
    torch.nn.utils.prune.l1_unstructured(layer, "weight", amount=0.5)
    keys = list(layer.state_dict())
    twin = anyconv.convert(layer, "dot")
    assert list(twin.state_dict()) == keys
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        twin.weight_orig.add_(1.0)
    expected = torch.nn.functional.conv2d(
        x, (layer.weight_orig * layer.weight_mask).detach(), layer.bias, padding=1
    )
    torch.testing.assert_close(twin(x), expected)
    assert int((twin.weight == 0).sum()) == 54
    torch.nn.utils.prune.remove(twin, "weight")
    assert isinstance(twin.weight, torch.nn.Parameter)
    torch.testing.assert_close(twin(x), expected)


def test_a_layer_of_the_older_weight_norm_recomputes_its_weight():
    """torch.nn.utils.weight_norm (still in audio networks) recomputes the weight from weight_g and
    weight_v in a forward pre-hook: the converted layer runs it too, so training g and v moves the
    weight the variant computes with."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch deprecates it for the parametrization
        layer = torch.nn.utils.weight_norm(torch.nn.Conv1d(2, 3, 3, padding=1))
    keys = list(layer.state_dict())
    twin = anyconv.convert(torch.nn.Sequential(layer), "l1")[0]
    assert list(twin.state_dict()) == keys and twin.weight_g is layer.weight_g
    with torch.no_grad():
        twin.weight_g.mul_(2.0)
    x = torch.randn(2, 2, 7)
    weight = torch._weight_norm(twin.weight_v, twin.weight_g, 0).detach()
    torch.testing.assert_close(twin(x), anyconv.generalized_conv(x, weight, "l1", twin.bias, padding=1))
    twin(x).square().sum().backward()
    assert twin.weight_g.grad is not None and twin.weight_v.grad is not None


def test_hooks_go_with_the_converted_layer():
    layer = torch.nn.Conv2d(2, 3, 3)
    calls = []
    handles = [
        layer.register_forward_pre_hook(lambda module, args: calls.append(("pre", type(module).__name__))),
        layer.register_forward_hook(lambda module, args, output: calls.append(("forward", output.shape))),
        layer.register_full_backward_hook(lambda module, grad_in, grad_out: calls.append(("backward",))),
        layer.register_state_dict_post_hook(lambda module, state, prefix, local: calls.append(("state",))),
    ]
    model = anyconv.convert(torch.nn.Sequential(layer), "cosine")
    model(torch.randn(1, 2, 5, 5, requires_grad=True)).sum().backward()
    model.state_dict()
    assert calls == [("pre", "GeneralizedConv2d"), ("forward", (1, 3, 3, 3)), ("backward",), ("state",)]
    # a handle taken on the layer before the conversion removes its hook from the converted one
    for handle in handles:
        handle.remove()
    model(torch.randn(1, 2, 5, 5))
    assert len(calls) == 4


# torch 2.13 deprecates torch.jit.script and trace, which models still hold
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_torchscript_module_holding_convolutions_is_refused():
    # its compiled code calls torch's convolutions: converting it had silently changed nothing
    network = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.ReLU())
    x = torch.randn(1, 2, 5, 5)
    for scripted, where in [
        (torch.jit.script(network), "the module"),
        (torch.jit.trace(network, x), "the module"),
        (torch.nn.Sequential(torch.nn.Conv2d(2, 2, 1), torch.jit.script(network)), "layer '1'"),
    ]:
        with pytest.raises(anyconv.errors.ArgumentError, match=f"{where} is a TorchScript module"):
            convert(scripted, "l1")
    # left out by include, or holding no convolution: the rest is converted
    model = torch.nn.Sequential(
        torch.nn.Conv2d(2, 2, 1), torch.jit.script(network), torch.jit.script(torch.nn.ReLU())
    )
    convert(model, "l1", include=lambda name, layer: name != "1")
    assert isinstance(model[0], GeneralizedConv2d)
