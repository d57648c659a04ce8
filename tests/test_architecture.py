"""The demo's real architecture: ResNet-18 with torchvision's layers, converted whole, timed."""

import re

import torch
from test_models import NEEDS_TORCHVISION, torchvision

import anyconv
from anyconv.cli.architecture import resnet18
from anyconv.cli.main import main


def _conv_shapes(model):
    return [tuple(layer.weight.shape) for layer in model.modules() if isinstance(layer, torch.nn.Conv2d)]


@NEEDS_TORCHVISION
def test_resnet18_has_torchvisions_convolutions():
    reference = torchvision.models.resnet18()
    ours = resnet18()
    assert _conv_shapes(ours) == _conv_shapes(reference)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in reference.parameters())


def test_resnet18_converted_to_dot_gives_its_outputs():
    torch.manual_seed(0)
    model = resnet18(num_classes=10).double().eval()
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    expected = model(images)
    converted = anyconv.convert(model, "dot")
    assert not any(type(layer) is torch.nn.Conv2d for layer in converted.modules())
    torch.testing.assert_close(converted(images), expected, rtol=1e-10, atol=1e-10)


def test_demo_times_the_architecture(capsys):
    argv = ["demo", "--epochs", "1", "--limit", "120", "--architecture"]
    status = main([*argv, "--architecture-size", "32", "--architecture-batch", "2"])
    output = capsys.readouterr().out
    assert status == 0, output
    rows = re.findall(r"^\| (original|dot|l1 adder_grad=True) \| ([\d.]+) \| ([\d.]+) \|$", output, re.M)
    assert [row[0] for row in rows] == ["original", "dot", "l1 adder_grad=True"]
    assert rows[0][2] == "1.00" and all(float(seconds) > 0 for _, seconds, _ in rows)
