"""A small network of GeneralizedConv2d(variant="l1") layers (AdderNet) learns: its loss falls."""

import pytest
import torch

import anyconv


def _bars(count, generator):
    """8x8 images with a horizontal (class 0) or vertical (class 1) bar, plus noise."""
    labels = torch.randint(0, 2, (count,), generator=generator)
    images = 0.3 * torch.randn(count, 1, 8, 8, generator=generator)
    positions = torch.randint(1, 7, (count,), generator=generator)
    for index, (label, position) in enumerate(zip(labels, positions)):
        if label == 0:
            images[index, 0, position, :] += 1.0
        else:
            images[index, 0, :, position] += 1.0
    return images, labels


@pytest.mark.parametrize("adder_grad", [False, True], ids=["exact-gradient", "adder-grad"])
def test_adder_network_learns(adder_grad):
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(
        anyconv.nn.GeneralizedConv2d(1, 8, 3, padding=1, variant="l1", adder_grad=adder_grad),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        anyconv.nn.GeneralizedConv2d(8, 8, 3, padding=1, variant="l1", adder_grad=adder_grad),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 2),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    images, labels = _bars(128, generator)
    losses = []
    for _ in range(40):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, losses
