"""A first check that the package imports and unfold matches torch's in 2-D."""

import torch
import torch.nn.functional as F

import anyconv


def test_unfold_matches_torch_in_2d():
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64)
    assert torch.equal(
        anyconv.unfold(x, (3, 2), padding=1, stride=2), F.unfold(x, (3, 2), padding=1, stride=2)
    )
