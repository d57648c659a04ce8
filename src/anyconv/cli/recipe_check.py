"""The receptive-field check: the PyTorch docs' unfold -> matmul -> fold recipe, any N, against torch."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..functional import unfold


def recipe_convolution(input: torch.Tensor, weight: torch.Tensor, padding: int) -> torch.Tensor:
    """Convolution written as fields times weights: unfold, one matmul, reshape to the output grid."""
    ndim = weight.dim() - 2
    columns = unfold(input, weight.shape[2:], padding=padding)
    output = weight.flatten(1) @ columns
    output_size = [size + 2 * padding - kernel + 1 for size, kernel in zip(input.shape[2:], weight.shape[2:])]
    return output.reshape(input.shape[0], weight.shape[0], *output_size[:ndim])


def run() -> int:
    """Print, for N = 1, 2, 3, the largest difference between the recipe and torch's convolution."""
    generator = torch.Generator().manual_seed(0)
    native = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
    print("convolution as unfold + matmul, float64, against torch's native convolution")
    worst = 0.0
    for ndim, convolution in native.items():
        input = torch.randn(4, 3, *(9,) * ndim, dtype=torch.float64, generator=generator)
        weight = torch.randn(5, 3, *(3,) * ndim, dtype=torch.float64, generator=generator)
        difference = (
            (recipe_convolution(input, weight, 1) - convolution(input, weight, padding=1)).abs().max()
        )
        worst = max(worst, difference.item())
        shape = tuple(convolution(input, weight, padding=1).shape)
        print(f"  N={ndim}: output {shape}, max |difference| {difference:.2e}")
    print("OK" if worst < 1e-10 else "MISMATCH")
    return 0 if worst < 1e-10 else 1
