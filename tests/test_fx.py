"""torch.fx over anyconv's modules: a symbolic trace records each module's call of the engine as one
node (as it records torch's own convolution modules), and the traced graph gives the module's
numbers; torchvision's feature extraction, which traces with torch.fx, takes converted networks.
"""

import copy

import pytest
import torch
from test_models import NEEDS_TORCHVISION, torchvision

import anyconv
from anyconv.variants.base import with_tensor_options

MODULES = {
    "conv1d": (lambda: anyconv.nn.Conv1d(3, 4, 3, padding="same", padding_mode="reflect"), (2, 3, 10)),
    "conv2d-grouped": (lambda: anyconv.nn.Conv2d(4, 6, 3, stride=2, groups=2), (2, 4, 9, 9)),
    "conv3d": (lambda: anyconv.nn.Conv3d(2, 3, 2, dilation=2), (1, 2, 5, 6, 5)),
    "convnd-4d": (lambda: anyconv.nn.ConvNd(2, 3, (2, 2, 2, 2), padding=1), (1, 2, 3, 3, 3, 3)),
    "conv-transpose2d": (lambda: anyconv.nn.ConvTranspose2d(4, 2, 4, stride=2, padding=1), (2, 4, 5, 5)),
    "l1": (lambda: anyconv.nn.GeneralizedConv2d(3, 4, 3, variant="l1"), (2, 3, 8, 8)),
    "lp-depthwise": (
        lambda: anyconv.nn.GeneralizedConv2d(4, 4, 3, groups=4, variant="lp", p=1.5),
        (2, 4, 8, 8),
    ),
    # a per-channel option: a parameter of the module, which the variant holds
    "rbf-per-channel": (
        lambda: anyconv.nn.GeneralizedConv2d(3, 4, 3, variant="rbf", gamma=torch.linspace(0.1, 1, 4)),
        (2, 3, 8, 8),
    ),
    "unfold-fold": (
        lambda: torch.nn.Sequential(anyconv.nn.Unfold(2, stride=2), anyconv.nn.Fold((8, 8), 2, stride=2)),
        (2, 3, 8, 8),
    ),
}


@pytest.mark.parametrize("name", MODULES)
def test_the_symbolic_trace_gives_the_modules_numbers(name):
    build, shape = MODULES[name]
    torch.manual_seed(0)
    module = build()
    graph = torch.fx.symbolic_trace(module)
    # one call of the engine per anyconv module (and one giving a variant the graph's tensors)
    calls = [node for node in graph.graph.nodes if node.op == "call_function"]
    engine_calls = [node for node in calls if node.target is not with_tensor_options]
    layers = [child for child in module.modules() if type(child).__module__.startswith("anyconv")]
    assert len(engine_calls) == len(layers)
    x = torch.randn(shape)
    with torch.no_grad():
        torch.testing.assert_close(graph(x), module(x))
        # and on another input size: the engine's geometry is worked out when the graph runs
        other = torch.randn(3, *shape[1:-1], shape[-1] + 2) if name != "unfold-fold" else x[:1]
        torch.testing.assert_close(graph(other), module(other))
        torch.testing.assert_close(copy.deepcopy(graph)(x), module(x))


def test_the_traced_graph_holds_and_trains_the_modules_parameters():
    # a per-channel option is a parameter of the module: the graph's too, so that an optimizer
    # over the graph's parameters trains it and its state_dict saves it
    module = anyconv.nn.GeneralizedConv2d(3, 4, 3, variant="rbf", gamma=torch.full((4,), 0.5))
    graph = torch.fx.symbolic_trace(module)
    assert graph.state_dict().keys() == module.state_dict().keys()
    assert {id(parameter) for parameter in graph.parameters()} == {id(p) for p in module.parameters()}
    x = torch.randn(2, 3, 6, 6)
    graph(x).square().sum().backward()
    gradients = [parameter.grad.clone() for parameter in module.parameters()]
    module.zero_grad()
    module(x).square().sum().backward()
    for got, expected in zip(gradients, (parameter.grad for parameter in module.parameters())):
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("variant", ["l1", "rbf-per-channel"])
def test_a_saved_graph_loads_and_gives_the_modules_numbers(variant, tmp_path):
    # torch.load retraces the graph's code: the variant's call is recorded, not run on proxies
    module = MODULES[variant][0]()
    torch.save(torch.fx.symbolic_trace(module), tmp_path / "graph.pt")
    loaded = torch.load(tmp_path / "graph.pt", weights_only=False)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), module(x))
    assert loaded.state_dict().keys() == module.state_dict().keys()


@NEEDS_TORCHVISION
@pytest.mark.parametrize("variant", ["dot", "l1", "cosine"])
def test_torchvision_feature_extraction_takes_a_converted_network(variant):
    from torchvision.models.feature_extraction import create_feature_extractor

    torch.manual_seed(0)
    network = anyconv.convert(torchvision.models.resnet18(), variant).eval()
    extractor = create_feature_extractor(network, {"layer2": "middle", "layer4": "last"})
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        features = extractor(x)
        middle = network.layer2(network.layer1(network.maxpool(network.relu(network.bn1(network.conv1(x))))))
        torch.testing.assert_close(features["middle"], middle)
        torch.testing.assert_close(features["last"], network.layer4(network.layer3(middle)))


def test_a_traced_transposed_module_takes_an_output_size():
    module = anyconv.nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1)
    graph = torch.fx.symbolic_trace(module)
    x = torch.randn(1, 4, 5, 5)
    with torch.no_grad():
        for size in (None, (9, 9), (10, 10), [1, 2, 10, 9]):
            torch.testing.assert_close(graph(x, size), module(x, size))
