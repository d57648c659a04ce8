"""A real architecture for the demo: ResNet-18 (He et al., CVPR 2016), converted whole and timed.

The network is written here with ``torch.nn`` alone (no torchvision, whose builds need the matching
torch), with the layers and shapes of torchvision's ``resnet18``.
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..nn import convert


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and a shortcut (a 1x1 stride-2 projection when the
    shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        output = torch.relu(self.bn1(self.conv1(input)))
        return torch.relu(self.bn2(self.conv2(output)) + self.downsample(input))


def resnet18(num_classes: int = 1000) -> nn.Sequential:
    """ResNet-18: a 7x7 stride-2 stem, four stages of two basic blocks, a linear classifier.

    >>> model = resnet18(num_classes=10)
    >>> model(torch.randn(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    >>> sum(isinstance(layer, nn.Conv2d) for layer in model.modules())
    20
    """
    layers: list[nn.Module] = [
        nn.Conv2d(3, 64, 7, 2, 3, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, 1),
    ]
    channels = 64
    for width, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [BasicBlock(channels, width, stride), BasicBlock(width, width, 1)]
        channels = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes)]
    return nn.Sequential(*layers)


@dataclass
class StepTime:
    """The median time of one SGD training step of a model."""

    label: str
    seconds: float


def training_step_times(
    variant: str, options: dict[str, Any], batch: int = 8, size: int = 224, steps: int = 3, seed: int = 0
) -> list[StepTime]:
    """ResNet-18 as built, converted to ``dot``, and converted to ``variant``: the median time of
    ``steps`` SGD steps each (after one warm-up step) on a random batch of ``batch`` images.

    >>> times = training_step_times("l1", {"adder_grad": True}, batch=2, size=32, steps=1)
    >>> [time.label for time in times]
    ['original', 'dot', 'l1']
    """
    torch.manual_seed(seed)
    original = resnet18()
    images, labels = torch.randn(batch, 3, size, size), torch.randint(0, 1000, (batch,))
    models = [
        ("original", original),
        ("dot", convert(copy.deepcopy(original), "dot")),
        (variant, convert(copy.deepcopy(original), variant, **options)),
    ]
    return [StepTime(label, _median_step(model, images, labels, steps)) for label, model in models]


def _median_step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, steps: int) -> float:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    seconds = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds[1:])


def format_step_times(times: list[StepTime], batch: int, size: int) -> str:
    """The step times as a Markdown table, each against the original's.

    >>> print(format_step_times([StepTime("original", 0.5), StepTime("l1", 1.5)], 8, 224))
    | ResNet-18, batch 8 x 3 x 224 x 224 | seconds / training step | x original |
    |---|---:|---:|
    | original | 0.500 | 1.00 |
    | l1 | 1.500 | 3.00 |
    """
    rows = [
        f"| ResNet-18, batch {batch} x 3 x {size} x {size} | seconds / training step | x original |",
        "|---|---:|---:|",
    ]
    for step in times:
        rows.append(f"| {step.label} | {step.seconds:.3f} | {step.seconds / times[0].seconds:.2f} |")
    return "\n".join(rows)
